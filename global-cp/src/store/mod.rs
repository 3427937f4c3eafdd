//! The global store: resources with per-resource versions and a mesh-wide
//! revision, tombstones for deletes (so zones can resume), and key material
//! (`meta`). Token, zone, zone-CA and audit records are in [`records`].
//!
//! SQLite in WAL mode with `synchronous=FULL`: a write is on disk before it
//! is acknowledged, so a killed process loses nothing it acknowledged.
//! Several writes that belong together (a zone joining: its token used, its
//! CA recorded, its `ZoneCa` published) go in one transaction
//! ([`Store::transact`]). The database holds the mesh root CA key: it is
//! created mode 0600 (SQLite gives its WAL and SHM files the same mode). The
//! SQL is plain enough to run on PostgreSQL for HA replicas; that backend is
//! not built yet.

pub mod records;

use std::path::Path;
use std::sync::Mutex;

use model::resource::{Key, Resource};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::watch;

pub use records::{AuditRecord, TokenRecord, ZoneCaRecord, ZoneRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored resource is corrupt: {0}")]
    Corrupt(String),
    #[error("{key} was changed concurrently: you sent resourceVersion {sent}, the stored one is {current}; get it again and reapply")]
    Conflict { key: Key, sent: u64, current: u64 },
    #[error("{key} does not exist, but resourceVersion {sent} was given")]
    Missing { key: Key, sent: u64 },
    #[error("{0}")]
    Files(#[from] model::fsutil::FsError),
}

pub struct Store {
    conn: Mutex<Connection>,
    revision: watch::Sender<u64>,
    /// Time per call, waiting for the connection included.
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

/// A stored resource with the mesh revision of its last change.
#[derive(Clone, Debug)]
pub struct Stored {
    pub revision: u64,
    pub resource: Resource,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
  kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
  revision INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, name));
CREATE INDEX IF NOT EXISTS resources_revision ON resources (revision);
CREATE TABLE IF NOT EXISTS tombstones (
  kind TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL, PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, zone TEXT NOT NULL, service TEXT,
  issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS zones (
  name TEXT PRIMARY KEY, token_id TEXT NOT NULL, intermediate_fp TEXT NOT NULL,
  joined_at INTEGER NOT NULL, last_seen INTEGER NOT NULL DEFAULT 0,
  acked_version INTEGER NOT NULL DEFAULT 0, last_nack TEXT, last_nack_version INTEGER);
CREATE TABLE IF NOT EXISTS zone_cas (
  fingerprint TEXT PRIMARY KEY, zone TEXT NOT NULL, pem TEXT,
  issued_at INTEGER NOT NULL, not_after INTEGER NOT NULL, root_fp TEXT NOT NULL,
  key_fp TEXT NOT NULL, token_id TEXT, retired_at INTEGER, retired_why TEXT);
CREATE INDEX IF NOT EXISTS zone_cas_zone ON zone_cas (zone);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, action TEXT NOT NULL,
  subject TEXT NOT NULL, detail TEXT NOT NULL);
";

/// Columns added after the first release of a table: (table, column, type).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("tokens", "used_at", "INTEGER"),
    ("tokens", "used_by", "TEXT"),
    ("tokens", "purpose", "TEXT NOT NULL DEFAULT ''"),
    ("tokens", "pin", "TEXT NOT NULL DEFAULT ''"),
];

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    for (table, column, decl) in COLUMNS {
        let exists: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([column])?;
        if !exists {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        model::fsutil::create_private_file(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if p.exists() {
                model::fsutil::check_private_file(&p)?;
            }
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let rev = Self::read_revision(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            revision: watch::channel(rev).0,
            // 50 µs doubling to about 3 s.
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16),
            ),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the connection, off the async threads: SQLite calls
    /// block, and commits fsync.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let start = std::time::Instant::now();
        let out = model::fsutil::off_async(|| f(&mut self.lock()));
        self.latency.observe(start.elapsed().as_secs_f64());
        out
    }

    fn read_revision(conn: &Connection) -> Result<u64, StoreError> {
        let v: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.and_then(|b| String::from_utf8(b).ok()?.parse().ok())
            .unwrap_or(0))
    }

    /// The current mesh revision, and a watch that changes with it.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }
    pub fn watch_revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
    /// Changes since this revision can be computed (tombstones are kept).
    pub fn floor(&self) -> u64 {
        self.meta_get("floor")
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Insert only if absent; returns the value now stored.
    pub fn meta_init(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
            Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))?)
        })
    }

    pub fn get(&self, kind: &str, name: &str) -> Result<Option<Stored>, StoreError> {
        self.with(|c| get_in(c, kind, name))
    }

    pub fn list(&self, kind: Option<&str>) -> Result<Vec<Stored>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT revision, body FROM resources WHERE (?1 IS NULL OR kind = ?1) ORDER BY kind, name",
            )?;
            let rows = stmt.query_map([kind], |r| {
                Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (rev, body) = row?;
                out.push(decode(rev, &body)?);
            }
            Ok(out)
        })
    }

    /// Run `f` in one transaction: every resource it writes gets the same new
    /// revision, published once the transaction is on disk. An error rolls
    /// everything back.
    pub fn transact<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let (out, rev) = self.with(|conn| {
            let tx = conn.transaction().map_err(StoreError::from)?;
            let mut t = Tx { tx, rev: None };
            let out = f(&mut t)?;
            let rev = t.rev;
            t.tx.commit().map_err(StoreError::from)?;
            Ok::<_, E>((out, rev))
        })?;
        if let Some(rev) = rev {
            self.publish(rev);
        }
        Ok(out)
    }

    /// Publish a committed revision. Two transactions publish after
    /// releasing the lock, possibly out of order: the watch only moves
    /// forward, so a watcher never sees the revision go back.
    fn publish(&self, rev: u64) {
        self.revision.send_if_modified(|cur| {
            if rev > *cur {
                *cur = rev;
                true
            } else {
                false
            }
        });
    }

    /// Create or update; see [`Tx::put`].
    pub fn put(&self, r: Resource, now: &str) -> Result<(Resource, bool), StoreError> {
        self.transact(|tx| tx.put(r, now))
    }

    /// Delete; see [`Tx::delete`].
    pub fn delete(&self, key: &Key, expected: Option<u64>) -> Result<bool, StoreError> {
        self.transact(|tx| tx.delete(key, expected))
    }

    /// Resources changed after `since`, and keys deleted after it.
    pub fn changes_since(&self, since: u64) -> Result<(Vec<Stored>, Vec<Key>), StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT revision, body FROM resources WHERE revision > ?1 ORDER BY revision",
            )?;
            let mut upserts = Vec::new();
            for row in stmt.query_map([since], |r| {
                Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?))
            })? {
                let (rev, body) = row?;
                upserts.push(decode(rev, &body)?);
            }
            let mut stmt = conn.prepare("SELECT kind, name FROM tombstones WHERE revision > ?1")?;
            let removals = stmt
                .query_map([since], |r| {
                    Ok(Key {
                        kind: r.get(0)?,
                        name: r.get(1)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((upserts, removals))
        })
    }

    /// Drop tombstones older than `before`; zones behind it get a full resync.
    pub fn compact(&self, before: u64) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute("DELETE FROM tombstones WHERE revision <= ?1", [before])?;
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('floor', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [before.to_string().into_bytes()],
            )?;
            Ok(())
        })
    }
}

/// One transaction on the store (see [`Store::transact`]).
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
    rev: Option<u64>,
}

impl Tx<'_> {
    pub(crate) fn sql(&self) -> &rusqlite::Transaction<'_> {
        &self.tx
    }

    /// The revision this transaction's resource writes get.
    fn bump(&mut self) -> Result<u64, StoreError> {
        if let Some(r) = self.rev {
            return Ok(r);
        }
        let rev = Store::read_revision(&self.tx)? + 1;
        self.tx.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [rev.to_string().into_bytes()],
        )?;
        self.rev = Some(rev);
        Ok(rev)
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn meta_set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn meta_delete(&self, key: &str) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM meta WHERE key = ?1", [key])?;
        Ok(())
    }

    pub fn get(&self, kind: &str, name: &str) -> Result<Option<Stored>, StoreError> {
        get_in(&self.tx, kind, name)
    }

    /// Create or update. When `r.metadata.resource_version` is set it must
    /// match the stored version. Returns the stored form and whether it was
    /// created. An update that changes nothing keeps version and revision.
    pub fn put(&mut self, mut r: Resource, now: &str) -> Result<(Resource, bool), StoreError> {
        let key = r.key();
        let cur: Option<(u64, String)> = self
            .tx
            .query_row(
                "SELECT version, body FROM resources WHERE kind = ?1 AND name = ?2",
                [&key.kind, &key.name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let sent = r.metadata.resource_version;
        let (version, created, created_at) = match (&cur, sent) {
            (Some((v, _)), Some(s)) if *v != s => {
                return Err(StoreError::Conflict {
                    key,
                    sent: s,
                    current: *v,
                })
            }
            (None, Some(s)) => return Err(StoreError::Missing { key, sent: s }),
            (Some((v, body)), _) => {
                let old: Resource =
                    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if old.spec == r.spec && old.metadata.labels == r.metadata.labels {
                    return Ok((old, false));
                }
                (v + 1, false, old.metadata.creation_timestamp)
            }
            (None, None) => (1, true, Some(now.to_string())),
        };
        r.metadata.resource_version = Some(version);
        r.metadata.creation_timestamp = created_at;
        r.metadata.update_timestamp = Some(now.to_string());
        let body = serde_json::to_string(&r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rev = self.bump()?;
        self.tx.execute(
            "INSERT INTO resources (kind, name, version, revision, body) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(kind, name) DO UPDATE SET version = excluded.version,
               revision = excluded.revision, body = excluded.body",
            params![key.kind, key.name, version, rev, body],
        )?;
        self.tx.execute(
            "DELETE FROM tombstones WHERE kind = ?1 AND name = ?2",
            [&key.kind, &key.name],
        )?;
        Ok((r, created))
    }

    /// Delete; with `expected` set, only if the stored version matches.
    /// Returns false when there was nothing to delete.
    pub fn delete(&mut self, key: &Key, expected: Option<u64>) -> Result<bool, StoreError> {
        let cur: Option<u64> = self
            .tx
            .query_row(
                "SELECT version FROM resources WHERE kind = ?1 AND name = ?2",
                [&key.kind, &key.name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(cur) = cur else { return Ok(false) };
        if let Some(s) = expected {
            if s != cur {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    sent: s,
                    current: cur,
                });
            }
        }
        let rev = self.bump()?;
        self.tx.execute(
            "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
            [&key.kind, &key.name],
        )?;
        self.tx.execute(
            "INSERT INTO tombstones (kind, name, revision) VALUES (?1, ?2, ?3)
             ON CONFLICT(kind, name) DO UPDATE SET revision = excluded.revision",
            params![key.kind, key.name, rev],
        )?;
        Ok(true)
    }
}

fn get_in(c: &Connection, kind: &str, name: &str) -> Result<Option<Stored>, StoreError> {
    let row: Option<(u64, String)> = c
        .query_row(
            "SELECT revision, body FROM resources WHERE kind = ?1 AND name = ?2",
            [kind, name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(revision, body)| decode(revision, &body))
        .transpose()
}

fn decode(revision: u64, body: &str) -> Result<Stored, StoreError> {
    let resource = serde_json::from_str(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Stored { revision, resource })
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::resource::{Metadata, API_VERSION};

    fn zone(name: &str, desc: &str) -> Resource {
        Resource {
            api_version: API_VERSION.into(),
            kind: "Zone".into(),
            metadata: Metadata {
                name: name.into(),
                ..Default::default()
            },
            spec: serde_json::json!({ "description": desc }),
        }
    }

    /// Acknowledged writes are on disk: WAL with synchronous=FULL (a
    /// commit fsyncs the log before it returns).
    #[test]
    fn commits_are_fsynced_before_they_return() {
        let dir = std::env::temp_dir().join(format!("tern-store-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Store::open(&dir.join("g.db")).unwrap();
        let (mode, sync): (String, i64) = s.with(|c| {
            (
                c.pragma_query_value(None, "journal_mode", |r| r.get(0))
                    .unwrap(),
                c.pragma_query_value(None, "synchronous", |r| r.get(0))
                    .unwrap(),
            )
        });
        assert_eq!(mode.to_ascii_lowercase(), "wal");
        assert_eq!(sync, 2, "synchronous=FULL");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A database from before tokens had a purpose and a pin opens: the
    /// columns are added (its tokens get ''), and new tokens are recorded
    /// with their pin.
    #[test]
    fn a_database_from_before_pins_opens_and_records_pins() {
        let dir = std::env::temp_dir().join(format!("tern-store-pin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.db");
        {
            model::fsutil::create_private_file(&path).unwrap();
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE tokens (
                   id TEXT PRIMARY KEY, kind TEXT NOT NULL, zone TEXT NOT NULL, service TEXT,
                   issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
                 INSERT INTO tokens VALUES ('old', 'zone', 'eu-1', NULL, 1, 2);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        s.record_token(&TokenRecord {
            id: "new".into(),
            kind: "zone".into(),
            zone: "eu-1".into(),
            service: None,
            issued_at: 3,
            expires_at: 4,
            used_at: None,
            used_by: None,
            purpose: "join".into(),
            pin: "ab".repeat(32),
        })
        .unwrap();
        let pins: Vec<(String, String)> = s
            .tokens()
            .unwrap()
            .into_iter()
            .map(|t| (t.id, t.pin))
            .collect();
        assert_eq!(
            pins,
            [
                ("old".into(), String::new()),
                ("new".into(), "ab".repeat(32))
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_revision_watch_never_goes_back() {
        let dir = std::env::temp_dir().join(format!("tern-store-rev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Store::open(&dir.join("g.db")).unwrap();
        let mut w = s.watch_revision();
        // Two commits publishing out of order (as racing transactions can).
        s.publish(6);
        s.publish(5);
        assert_eq!(*w.borrow_and_update(), 6);
        assert!(
            !w.has_changed().unwrap(),
            "the late, lower revision is not sent"
        );
        s.publish(7);
        assert_eq!(*w.borrow_and_update(), 7);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn versions_conflicts_tombstones_and_reopen() {
        let dir = std::env::temp_dir().join(format!("tern-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.db");
        {
            let s = Store::open(&path).unwrap();
            let (r, created) = s.put(zone("a", "one"), "t").unwrap();
            assert!(created);
            assert_eq!(r.metadata.resource_version, Some(1));
            // Unchanged: no new version or revision.
            s.put(zone("a", "one"), "t").unwrap();
            assert_eq!(s.revision(), 1);
            let mut upd = zone("a", "two");
            upd.metadata.resource_version = Some(1);
            let (r, _) = s.put(upd.clone(), "t").unwrap();
            assert_eq!(r.metadata.resource_version, Some(2));
            // A stale writer conflicts instead of overwriting.
            let err = s.put(upd, "t").unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::Conflict {
                        sent: 1,
                        current: 2,
                        ..
                    }
                ),
                "{err}"
            );
            s.put(zone("b", "x"), "t").unwrap();
            assert!(s
                .delete(
                    &Key {
                        kind: "Zone".into(),
                        name: "a".into()
                    },
                    None
                )
                .unwrap());
            let (up, rm) = s.changes_since(2).unwrap();
            assert_eq!(up.len(), 1);
            assert_eq!(
                rm,
                vec![Key {
                    kind: "Zone".into(),
                    name: "a".into()
                }]
            );
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.revision(), 4);
        assert_eq!(s.list(Some("Zone")).unwrap().len(), 1);
        assert_eq!(s.changes_since(0).unwrap().1.len(), 1);
        s.compact(4).unwrap();
        assert_eq!(s.floor(), 4);
        assert!(s.changes_since(0).unwrap().1.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
