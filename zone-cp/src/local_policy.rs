//! Zone-local policies (`--policy-dir`): policy documents an operator keeps
//! in a folder of the zone, applied to this zone's proxies only. The global's
//! policies win at equal specificity, and a request the global's access
//! rules deny stays denied whatever zone-local rules say (docs/policies.md).
//!
//! The folder is read at start (a bad document stops the start, naming the
//! file, document and field) and then every two seconds; a change that does
//! not validate is logged and ignored, keeping the last good set.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use model::resource::{self, Resource};
use tokio::sync::watch;

/// The kinds a zone may declare for itself.
pub const LOCAL_KINDS: &[&str] = &[
    "AccessPolicy",
    "MtlsPolicy",
    "HttpRoute",
    "TcpRoute",
    "Retry",
    "Timeout",
    "CircuitBreaker",
    "LoadBalancer",
    "HealthCheck",
    "AccessLog",
    "Trace",
    "RateLimit",
    "FaultInjection",
];
const POLL: Duration = Duration::from_secs(2);

pub struct LocalPolicies {
    dir: Option<PathBuf>,
    current: Mutex<(Stamps, Vec<Resource>)>,
    /// Bumped on every change.
    pub changed: watch::Sender<u64>,
}

impl LocalPolicies {
    /// Read the folder (if any); errors name each bad document.
    pub fn load(dir: Option<PathBuf>) -> Result<Self, String> {
        let (stamp, docs) = match &dir {
            Some(d) => read(d)?,
            None => (vec![], vec![]),
        };
        if let Some(d) = &dir {
            tracing::info!(dir = %d.display(), policies = docs.len(), "zone-local policies loaded");
        }
        Ok(Self {
            dir,
            current: Mutex::new((stamp, docs)),
            changed: watch::channel(0).0,
        })
    }

    pub fn resources(&self) -> Vec<Resource> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Re-read the folder when a file in it changed.
    pub fn poll(&self) {
        let Some(dir) = &self.dir else { return };
        let stamp = match stamps(dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the zone policy folder; keeping the last policies");
                return;
            }
        };
        let mut g = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == stamp {
            return;
        }
        match read(dir) {
            Ok((stamp, docs)) => {
                tracing::info!(dir = %dir.display(), policies = docs.len(), "zone-local policies changed");
                *g = (stamp, docs);
                drop(g);
                self.changed.send_modify(|v| *v += 1);
            }
            Err(e) => {
                // Remember the stamp so the same bad file is reported once.
                g.0 = stamp;
                tracing::error!(dir = %dir.display(), error = %e, "zone-local policies not applied; keeping the last good ones");
            }
        }
    }

    pub fn spawn_poller(self: &std::sync::Arc<Self>) {
        if self.dir.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                let m = me.clone();
                let _ = tokio::task::spawn_blocking(move || m.poll()).await;
            }
        });
    }
}

type Stamps = Vec<(PathBuf, SystemTime, u64)>;

fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

fn stamps(dir: &Path) -> std::io::Result<Stamps> {
    policy_files(dir)?
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p)?;
            Ok((p, m.modified()?, m.len()))
        })
        .collect()
}

fn read(dir: &Path) -> Result<(Stamps, Vec<Resource>), String> {
    let stamp = stamps(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (p, _, _) in &stamp {
        let name = p.display().to_string();
        let text = std::fs::read_to_string(p).map_err(|e| format!("{name}: {e}"))?;
        match resource::parse_documents(&name, &text) {
            Ok(rs) => {
                for r in rs {
                    if !LOCAL_KINDS.contains(&r.kind.as_str()) {
                        errors.push(format!(
                            "{name}: {}/{}: a zone may declare only {}; other kinds are applied at the global",
                            r.kind,
                            r.metadata.name,
                            LOCAL_KINDS.join(", ")
                        ));
                    } else if !seen.insert(r.key()) {
                        errors.push(format!("{name}: {} is declared twice", r.key()));
                    } else {
                        docs.push(r);
                    }
                }
            }
            Err(es) => errors.extend(es.iter().map(|e| e.to_string())),
        }
    }
    if errors.is_empty() {
        Ok((stamp, docs))
    } else {
        Err(errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_of_policies_loads_reloads_and_keeps_the_last_good_set() {
        let dir = std::env::temp_dir().join(format!("tern-local-policy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let doc = |name: &str| {
            format!("apiVersion: tern.dev/v1alpha1\nkind: MtlsPolicy\nmetadata: {{name: {name}}}\nspec: {{mode: permissive}}\n")
        };
        std::fs::write(dir.join("a.yaml"), doc("legacy")).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a policy").unwrap();
        let lp = LocalPolicies::load(Some(dir.clone())).unwrap();
        assert_eq!(lp.resources().len(), 1);
        assert_eq!(lp.version(), 0);
        // A new file is picked up.
        std::fs::write(dir.join("b.yml"), doc("other")).unwrap();
        lp.poll();
        assert_eq!(lp.resources().len(), 2);
        assert_eq!(lp.version(), 1);
        // A bad one is refused as a whole; the last good set stays.
        std::fs::write(
            dir.join("c.yaml"),
            "apiVersion: tern.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n",
        )
        .unwrap();
        lp.poll();
        assert_eq!(lp.resources().len(), 2);
        assert_eq!(lp.version(), 1);
        // A start with it fails, naming the file and why.
        let e = LocalPolicies::load(Some(dir.clone())).err().unwrap();
        assert!(
            e.contains("c.yaml") && e.contains("a zone may declare only"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
