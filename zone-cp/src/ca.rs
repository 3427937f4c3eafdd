//! The zone's intermediate CA over time: when it is due for renewal, asking
//! the global for a new one over the authenticated sync stream, and
//! installing it so that a crash never leaves a certificate and a key on
//! disk that do not belong together.
//!
//! The new key is generated and kept (`ca-renew-pending.json`) before the
//! request goes out; the answer is checked to certify that key and to name
//! this zone's CA; the certificate is written before the key, and a start
//! after a crash in between completes the swap (`recover`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::pki;
use model::fsutil::write_private;
use model::ident::SpiffeId;
use proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::bootstrap::{paths, Boot, ZoneCa, CHAIN_EXTRA};
use crate::{Error, Zone};

pub const PENDING: &str = "ca-renew-pending.json";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    key_pem: String,
    csr_pem: String,
}

/// Why the CA should be renewed at `now`, if it should: two thirds of its
/// life have passed, or it was not issued by the mesh's active root.
pub fn due(ca: &ZoneCa, now: SystemTime, signed_by_active_root: bool) -> Option<String> {
    let life = ca
        .not_after
        .duration_since(ca.not_before)
        .unwrap_or_default();
    if now >= ca.not_before + life * 2 / 3 {
        return Some(format!(
            "it expires at {}",
            humantime::format_rfc3339_seconds(ca.not_after)
        ));
    }
    if !signed_by_active_root {
        return Some("the mesh has a new active root".into());
    }
    None
}

/// True once less than a sixth of the CA's life is left: renewal should
/// have happened long before, so operators are warned.
pub fn expiry_near(ca: &ZoneCa, now: SystemTime) -> bool {
    let life = ca
        .not_after
        .duration_since(ca.not_before)
        .unwrap_or_default();
    now + life / 6 >= ca.not_after
}

fn load_pending(dir: &Path) -> Option<Pending> {
    std::fs::read(dir.join(PENDING))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The renewal request: for the pending key when there is one (a request
/// whose answer was lost), else for a new key, kept before it is sent.
pub fn request(dir: &Path, current: &ZoneCa, zone: &str) -> Result<pb::CaRenewal, Error> {
    let p = match load_pending(dir) {
        Some(p) => p,
        None => {
            let kc = pki::new_key_and_csr(&format!("zone {zone}"))?;
            let p = Pending {
                key_pem: kc.key_pem,
                csr_pem: kc.csr_pem,
            };
            write_private(&dir.join(PENDING), &serde_json::to_string(&p)?)?;
            p
        }
    };
    Ok(pb::CaRenewal {
        csr_pem: p.csr_pem,
        current_fingerprint: current.fingerprint.clone(),
    })
}

/// Check and install a renewed CA; returns its fingerprint.
pub fn install(boot: &Boot, issued: &pb::CaIssued) -> Result<String, Error> {
    let dir = &boot.data_dir;
    let p = load_pending(dir)
        .ok_or_else(|| Error::Renewal("a renewed CA arrived, but no renewal is pending".into()))?;
    let der =
        pki::first_cert(&issued.intermediate_pem).map_err(Error::certificate("the renewed CA"))?;
    if pki::cert_key_fingerprint(&der)? != pki::csr_key_fingerprint(&p.csr_pem)? {
        return Err(Error::Renewal(
            "the renewed CA does not certify the key this zone asked for".into(),
        ));
    }
    let want = SpiffeId::zone(&boot.trust_domain, &boot.zone);
    if pki::spiffe_id_of(&der)? != want {
        return Err(Error::Renewal(format!(
            "the renewed CA does not name {want}"
        )));
    }
    let new = ZoneCa::new(
        &issued.intermediate_pem,
        &p.key_pem,
        &issued.chain_extra_pem,
    )?;
    let (_, ca_p, key_p, _) = paths(dir);
    // Certificate first, then key: `recover` completes a swap cut short.
    write_private(&ca_p, &issued.intermediate_pem)?;
    write_private(&key_p, &p.key_pem)?;
    write_private(&dir.join(CHAIN_EXTRA), &issued.chain_extra_pem)?;
    let _ = std::fs::remove_file(dir.join(PENDING));
    let fp = new.fingerprint.clone();
    boot.install_ca(new)?;
    Ok(fp)
}

/// True unless the mesh has an active root that did not sign `ca` (a root
/// rotation started: renew under the new root).
pub fn on_active_root(z: &Zone, ca: &ZoneCa) -> bool {
    let Some(t) = z.global.mesh_trust() else {
        return true;
    };
    let Some(root) = t.roots.iter().find(|r| r.fingerprint == t.active) else {
        return true;
    };
    match (pki::first_cert(&root.certificate), ca.ca.cert_der()) {
        (Ok(root), Ok(ca)) => pki::issued_by(&ca, &root),
        _ => true,
    }
}

/// Take the roots and cross-signed chain the mesh publishes (`MeshTrust`):
/// kept on disk, handed to proxies, and presented after the zone CA.
pub fn follow_mesh_trust(z: &Zone) -> Result<(), Error> {
    let Some(t) = z.global.mesh_trust() else {
        return Ok(());
    };
    let dir = &z.boot.data_dir;
    let bundle = t.roots_pem();
    if !bundle.is_empty() && bundle != *z.boot.roots_pem() {
        let (_, _, _, root_p) = paths(dir);
        write_private(&root_p, &bundle)?;
        z.boot.install_roots(bundle);
        tracing::info!(roots = t.roots.len(), active = %&t.active[..16.min(t.active.len())], "took the mesh's roots");
    }
    let extra = t.cross_signed.concat();
    let ca = z.boot.ca();
    if extra != ca.chain_extra {
        write_private(&dir.join(CHAIN_EXTRA), &extra)?;
        z.boot
            .install_ca(ZoneCa::new(ca.ca.cert_pem(), &ca.ca.key_pem(), &extra)?)?;
    }
    Ok(())
}

/// At start: if a crash came between writing a renewed CA's certificate and
/// its key, the pending key belongs to the certificate on disk; finish.
pub fn recover(dir: &Path) -> Result<(), Error> {
    let Some(p) = load_pending(dir) else {
        return Ok(());
    };
    let (_, ca_p, key_p, _) = paths(dir);
    let cert = pki::first_cert(&std::fs::read_to_string(&ca_p)?)?;
    let cert_key = pki::cert_key_fingerprint(&cert)?;
    let on_disk = pki::key_fingerprint(&std::fs::read_to_string(&key_p)?)?;
    if cert_key != on_disk && cert_key == pki::key_fingerprint(&p.key_pem)? {
        tracing::warn!("completing a zone CA renewal that a crash interrupted");
        write_private(&key_p, &p.key_pem)?;
        let _ = std::fs::remove_file(dir.join(PENDING));
    }
    Ok(())
}

/// How often the zone checks whether its CA is due for renewal.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long to wait for an answer, or after a refusal, before asking again.
const CA_RETRY: Duration = Duration::from_secs(60);

/// The zone's side of CA renewal on one sync stream.
#[derive(Default)]
pub struct Renewal {
    asked: Option<std::time::Instant>,
    warned: Option<std::time::Instant>,
    /// A renewed CA waiting for the mesh to list it (the global publishes
    /// the new `ZoneCa` before it answers; the zone signs with the new CA
    /// only once that list has arrived, so peers already trust it).
    ready: Option<pb::CaIssued>,
}

impl Renewal {
    /// A renewal request, when one is due and none is waiting.
    pub fn next(&mut self, z: &Zone) -> Option<pb::CaRenewal> {
        let ca = z.boot.ca();
        let now = std::time::SystemTime::now();
        if expiry_near(&ca, now)
            && self
                .warned
                .is_none_or(|t| t.elapsed() > Duration::from_secs(3600))
        {
            self.warned = Some(std::time::Instant::now());
            tracing::warn!(
                not_after = %humantime::format_rfc3339_seconds(ca.not_after),
                "the zone CA expires soon and has not been renewed; check the sync stream to the global"
            );
        }
        let why = due(&ca, now, on_active_root(z, &ca))?;
        if self.ready.is_some() || self.asked.is_some_and(|t| t.elapsed() < CA_RETRY) {
            return None;
        }
        match request(&z.boot.data_dir, &ca, &z.boot.zone) {
            Ok(req) => {
                tracing::info!(reason = %why, "asking the global to renew the zone CA");
                self.asked = Some(std::time::Instant::now());
                Some(req)
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "could not prepare a zone CA renewal");
                None
            }
        }
    }

    pub fn answered(&mut self, z: &Zone, c: pb::CaIssued) {
        if !c.error.is_empty() {
            tracing::warn!(reason = %c.error, "the global refused to renew the zone CA; retrying later");
            self.count(z, "refused");
            return;
        }
        self.ready = Some(c);
        self.install_when_listed(z);
    }

    /// Install the renewed CA once the mesh's `ZoneCa` list has it.
    pub fn install_when_listed(&mut self, z: &Zone) {
        let Some(c) = &self.ready else { return };
        let fp = common::pki::pem_fingerprint(&c.intermediate_pem).unwrap_or_default();
        let listed = z
            .global
            .zone_cas()
            .get(&z.boot.zone)
            .is_some_and(|l| l.contains(&fp));
        if !listed {
            return;
        }
        let c = self.ready.take().expect("checked");
        match install(&z.boot, &c) {
            Ok(fp) => {
                self.asked = None;
                z.metrics.ca_expiry.set(crate::unix(z.boot.ca().not_after));
                tracing::info!(ca = %&fp[..16], "installed the renewed zone CA");
                self.count(z, "ok");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "could not install the renewed zone CA");
                self.count(z, "failed");
            }
        }
    }

    fn count(&self, z: &Zone, result: &str) {
        z.metrics
            .ca_renewals
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn zone_ca(valid_for: Duration) -> (ZoneCa, pki::Ca) {
        let root = pki::Ca::new_root("tern", Duration::from_secs(3600)).unwrap();
        let kc = pki::new_key_and_csr("z").unwrap();
        let pem = root
            .sign_intermediate(&kc.csr_pem, &SpiffeId::zone("tern", "z"), valid_for)
            .unwrap();
        (ZoneCa::new(&pem, &kc.key_pem, "").unwrap(), root)
    }

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_life() {
        let (ca, _) = zone_ca(Duration::from_secs(3 * 3600));
        let life = ca.not_after.duration_since(ca.not_before).unwrap();
        assert_eq!(due(&ca, ca.not_before + life / 2, true), None);
        let two_thirds = ca.not_before + life * 2 / 3;
        assert_eq!(due(&ca, two_thirds - Duration::from_secs(1), true), None);
        assert!(due(&ca, two_thirds, true).is_some());
        assert!(due(&ca, ca.not_before, false).is_some(), "new active root");
        assert!(!expiry_near(&ca, ca.not_before + life / 2));
        assert!(expiry_near(&ca, ca.not_before + life * 5 / 6));
    }

    #[test]
    fn a_crash_between_certificate_and_key_is_completed_at_start() {
        let dir = std::env::temp_dir().join(format!("tern-ca-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (old, root) = zone_ca(Duration::from_secs(3600));
        let (_, ca_p, key_p, _) = paths(&dir);
        write_private(&ca_p, old.ca.cert_pem()).unwrap();
        write_private(&key_p, old.ca.key_pem()).unwrap();
        // Nothing pending: nothing changes.
        let files = |d: &std::path::Path| {
            let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().to_string(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let before = files(&dir);
        recover(&dir).unwrap();
        assert_eq!(files(&dir), before);
        let req = request(&dir, &old, "z").unwrap();
        assert_eq!(req.current_fingerprint, old.fingerprint);
        // Asking again reuses the pending key.
        assert_eq!(request(&dir, &old, "z").unwrap().csr_pem, req.csr_pem);
        let new_pem = root
            .sign_intermediate(
                &req.csr_pem,
                &SpiffeId::zone("tern", "z"),
                Duration::from_secs(600),
            )
            .unwrap();
        // The crash: the new certificate is on disk, the key is still old.
        write_private(&ca_p, &new_pem).unwrap();
        recover(&dir).unwrap();
        let key = std::fs::read_to_string(&key_p).unwrap();
        ZoneCa::new(&new_pem, &key, "").unwrap();
        assert_eq!(
            pki::key_fingerprint(&key).unwrap(),
            pki::cert_key_fingerprint(&pki::first_cert(&new_pem).unwrap()).unwrap()
        );
        assert!(!dir.join(PENDING).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
