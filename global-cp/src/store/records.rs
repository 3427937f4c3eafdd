//! Records the global keeps beside resources: issued tokens (and which zone
//! token was used, once), zones, every zone intermediate it issued, and an
//! audit trail of membership and CA events.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{Store, StoreError, Tx};

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub kind: String,
    pub zone: String,
    pub service: Option<String>,
    pub issued_at: u64,
    pub expires_at: u64,
    /// Zone tokens: when it was used to join (a zone token joins once).
    pub used_at: Option<u64>,
    pub used_by: Option<String>,
    /// Zone tokens: "join", or "rejoin" (an admin authorized replacing a
    /// joined zone's CA).
    pub purpose: String,
    /// Fingerprint of the root the token pins for first contact (empty for
    /// tokens recorded before pins were: they pin the mesh's first root).
    pub pin: String,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneRecord {
    pub name: String,
    /// The token of the zone's current membership.
    pub token_id: String,
    /// Fingerprint of the zone's newest intermediate.
    pub intermediate_fingerprint: String,
    pub joined_at: u64,
    pub last_seen: u64,
    pub acked_version: u64,
    pub last_nack: Option<String>,
    pub last_nack_version: Option<u64>,
}

/// One zone intermediate the global issued.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneCaRecord {
    pub fingerprint: String,
    pub zone: String,
    #[serde(skip)]
    pub pem: Option<String>,
    pub issued_at: u64,
    pub not_after: u64,
    /// Fingerprint of the root that signed it.
    pub root_fingerprint: String,
    /// SHA-256 of the public key it certifies (to recognize a retried join).
    #[serde(skip)]
    pub key_fingerprint: String,
    /// The join token, for intermediates issued at a join.
    pub token_id: Option<String>,
    pub retired_at: Option<u64>,
    pub retired_why: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub at: u64,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

const TOKEN_COLS: &str =
    "id, kind, zone, service, issued_at, expires_at, used_at, used_by, purpose, pin";

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        zone: r.get(2)?,
        service: r.get(3)?,
        issued_at: r.get(4)?,
        expires_at: r.get(5)?,
        used_at: r.get(6)?,
        used_by: r.get(7)?,
        purpose: r.get(8)?,
        pin: r.get(9)?,
    })
}

const ZONE_COLS: &str = "name, token_id, intermediate_fp, joined_at, last_seen, acked_version, \
                         last_nack, last_nack_version";

fn zone_row(r: &Row<'_>) -> rusqlite::Result<ZoneRecord> {
    Ok(ZoneRecord {
        name: r.get(0)?,
        token_id: r.get(1)?,
        intermediate_fingerprint: r.get(2)?,
        joined_at: r.get(3)?,
        last_seen: r.get(4)?,
        acked_version: r.get(5)?,
        last_nack: r.get(6)?,
        last_nack_version: r.get(7)?,
    })
}

const CA_COLS: &str = "fingerprint, zone, pem, issued_at, not_after, root_fp, key_fp, token_id, \
                       retired_at, retired_why";

fn ca_row(r: &Row<'_>) -> rusqlite::Result<ZoneCaRecord> {
    Ok(ZoneCaRecord {
        fingerprint: r.get(0)?,
        zone: r.get(1)?,
        pem: r.get(2)?,
        issued_at: r.get(3)?,
        not_after: r.get(4)?,
        root_fingerprint: r.get(5)?,
        key_fingerprint: r.get(6)?,
        token_id: r.get(7)?,
        retired_at: r.get(8)?,
        retired_why: r.get(9)?,
    })
}

fn token_in(c: &rusqlite::Connection, id: &str) -> Result<Option<TokenRecord>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ?1"),
        [id],
        token_row,
    )
    .optional()?)
}

fn zone_in(c: &rusqlite::Connection, name: &str) -> Result<Option<ZoneRecord>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {ZONE_COLS} FROM zones WHERE name = ?1"),
        [name],
        zone_row,
    )
    .optional()?)
}

fn zone_cas_in(c: &rusqlite::Connection, zone: &str) -> Result<Vec<ZoneCaRecord>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {CA_COLS} FROM zone_cas WHERE zone = ?1 ORDER BY issued_at DESC, rowid DESC"
    ))?;
    let rows = stmt.query_map([zone], ca_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Store {
    pub fn record_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (id, kind, zone, service, issued_at, expires_at, purpose, pin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    t.id,
                    t.kind,
                    t.zone,
                    t.service,
                    t.issued_at,
                    t.expires_at,
                    t.purpose,
                    t.pin
                ],
            )
        })?;
        Ok(())
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {TOKEN_COLS} FROM tokens ORDER BY issued_at"
            ))?;
            let rows = stmt.query_map([], token_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|c| token_in(c, id))
    }

    pub fn zone_seen(
        &self,
        name: &str,
        last_seen: u64,
        acked: u64,
        nack: Option<(u64, &str)>,
    ) -> Result<(), StoreError> {
        self.with(|c| c.execute(
            "UPDATE zones SET last_seen = ?2, acked_version = ?3,
               last_nack_version = COALESCE(?4, last_nack_version), last_nack = COALESCE(?5, last_nack)
             WHERE name = ?1",
            params![name, last_seen, acked, nack.map(|n| n.0), nack.map(|n| n.1)],
        ))?;
        Ok(())
    }

    pub fn zones(&self) -> Result<Vec<ZoneRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {ZONE_COLS} FROM zones ORDER BY name"))?;
            let rows = stmt.query_map([], zone_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub fn zone(&self, name: &str) -> Result<Option<ZoneRecord>, StoreError> {
        self.with(|c| zone_in(c, name))
    }

    /// Every intermediate issued to `zone`, newest first.
    pub fn zone_cas(&self, zone: &str) -> Result<Vec<ZoneCaRecord>, StoreError> {
        self.with(|c| zone_cas_in(c, zone))
    }

    /// The newest audit events, newest first.
    pub fn audit(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT at, action, subject, detail FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(AuditRecord {
                    at: r.get(0)?,
                    action: r.get(1)?,
                    subject: r.get(2)?,
                    detail: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub fn record_audit(
        &self,
        action: &str,
        subject: &str,
        detail: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.transact(|tx| tx.audit(action, subject, detail, now))
    }
}

impl Tx<'_> {
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        token_in(self.sql(), id)
    }

    /// Mark a zone token used by `zone`. False when it was already used
    /// (checked and set in one statement, so two joins cannot both win).
    pub fn use_token(&self, id: &str, zone: &str, now: u64) -> Result<bool, StoreError> {
        let n = self.sql().execute(
            "UPDATE tokens SET used_at = ?2, used_by = ?3 WHERE id = ?1 AND used_at IS NULL",
            params![id, now, zone],
        )?;
        Ok(n == 1)
    }

    pub fn zone(&self, name: &str) -> Result<Option<ZoneRecord>, StoreError> {
        zone_in(self.sql(), name)
    }

    pub fn zones(&self) -> Result<Vec<ZoneRecord>, StoreError> {
        let mut stmt = self
            .sql()
            .prepare(&format!("SELECT {ZONE_COLS} FROM zones ORDER BY name"))?;
        let rows = stmt.query_map([], zone_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn zone_joined(&self, z: &ZoneRecord) -> Result<(), StoreError> {
        self.sql().execute(
            "INSERT INTO zones (name, token_id, intermediate_fp, joined_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET token_id = excluded.token_id,
               intermediate_fp = excluded.intermediate_fp, joined_at = excluded.joined_at,
               acked_version = 0",
            params![z.name, z.token_id, z.intermediate_fingerprint, z.joined_at],
        )?;
        Ok(())
    }

    /// A renewed intermediate becomes the zone's newest.
    pub fn zone_renewed(&self, zone: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.sql().execute(
            "UPDATE zones SET intermediate_fp = ?2 WHERE name = ?1",
            params![zone, fingerprint],
        )?;
        Ok(())
    }

    pub fn zone_cas(&self, zone: &str) -> Result<Vec<ZoneCaRecord>, StoreError> {
        zone_cas_in(self.sql(), zone)
    }

    pub fn add_zone_ca(&self, c: &ZoneCaRecord) -> Result<(), StoreError> {
        self.sql().execute(
            &format!(
                "INSERT INTO zone_cas ({CA_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                c.fingerprint,
                c.zone,
                c.pem,
                c.issued_at,
                c.not_after,
                c.root_fingerprint,
                c.key_fingerprint,
                c.token_id,
                c.retired_at,
                c.retired_why
            ],
        )?;
        Ok(())
    }

    /// Retire the zone's intermediates (all, or all but `keep`).
    pub fn retire_zone_cas(
        &self,
        zone: &str,
        keep: Option<&str>,
        why: &str,
        now: u64,
    ) -> Result<usize, StoreError> {
        Ok(self.sql().execute(
            "UPDATE zone_cas SET retired_at = ?3, retired_why = ?4
             WHERE zone = ?1 AND retired_at IS NULL AND (?2 IS NULL OR fingerprint != ?2)",
            params![zone, keep, now, why],
        )?)
    }

    pub fn retire_zone_ca(&self, fingerprint: &str, why: &str, now: u64) -> Result<(), StoreError> {
        self.sql().execute(
            "UPDATE zone_cas SET retired_at = ?2, retired_why = ?3
             WHERE fingerprint = ?1 AND retired_at IS NULL",
            params![fingerprint, now, why],
        )?;
        Ok(())
    }

    pub fn audit(
        &self,
        action: &str,
        subject: &str,
        detail: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.sql().execute(
            "INSERT INTO audit (at, action, subject, detail) VALUES (?1, ?2, ?3, ?4)",
            params![now, action, subject, detail],
        )?;
        Ok(())
    }
}
