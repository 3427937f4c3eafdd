//! Joining the global: first start with a token, later starts from disk.
//! [`Boot`] holds what membership gave the zone: its CA (swapped when it is
//! renewed, see `ca.rs`), the mesh roots, and the zone-cp's own identity.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use common::pki::{self, Ca, PkiError};
use common::tls::{self, Expect, Identity, PinnedCaVerifier};
use common::trust::{TrustPolicy, ZoneCas};
use model::fsutil::write_private;
use model::ident::SpiffeId;
use model::token;
use proto::v1::global_sync_client::GlobalSyncClient;
use proto::v1::JoinRequest;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Config, Error};

const IDENTITY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    pub zone: String,
    pub token_id: String,
    pub global: String,
    pub trust_domain: String,
    pub token_public_key: Vec<u8>,
}

/// A join in progress: the key whose CSR went to the global with a token.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    token_id: String,
    key_pem: String,
    csr_pem: String,
}

/// Certificates presented after the zone CA (a cross-signed root while the
/// mesh rotates its root); usually empty.
pub const CHAIN_EXTRA: &str = "zone-ca-chain-extra.pem";

/// The CA the zone signs with, and what follows it in chains.
pub struct ZoneCa {
    pub ca: Ca,
    pub fingerprint: String,
    /// Certificates after the CA in every chain (a cross-signed root while
    /// the mesh rotates its root); usually empty.
    pub chain_extra: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl ZoneCa {
    pub fn new(cert_pem: &str, key_pem: &str, chain_extra: &str) -> Result<Self, Error> {
        let ca = Ca::from_pem(cert_pem, key_pem).map_err(Error::certificate("load zone CA"))?;
        let der = ca.cert_der()?;
        let (not_before, not_after) = pki::validity(&der)?;
        Ok(Self {
            fingerprint: pki::fingerprint(&der),
            ca,
            chain_extra: chain_extra.to_string(),
            not_before,
            not_after,
        })
    }
    /// The CA and what follows it, to append to a leaf.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.ca.cert_pem(), self.chain_extra)
    }
}

pub struct Boot {
    pub zone: String,
    pub trust_domain: String,
    pub global_addr: String,
    pub token_public_key: Vec<u8>,
    pub data_dir: PathBuf,
    ca: RwLock<Arc<ZoneCa>>,
    roots: RwLock<Arc<String>>,
    /// Bumped when the CA or the roots change.
    pub ca_changed: watch::Sender<u64>,
    /// The zone-cp's own identity (spiffe://TD/zone/Z/cp); chain is leaf,
    /// zone CA, roots.
    pub identity: watch::Sender<Arc<Identity>>,
}

/// Files in the data dir that hold keys. (Everything the zone-cp writes is
/// mode 0600 in a 0700 folder; these are also checked at start.)
pub const SECRET_FILES: &[&str] = &["zone-ca.key", "join-pending.json"];

pub fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    (
        dir.join("zone.json"),
        dir.join("zone-ca.pem"),
        dir.join("zone-ca.key"),
        dir.join("root.pem"),
    )
}

impl Boot {
    pub async fn load_or_join(cfg: &Config) -> Result<Self, Error> {
        let (meta_p, ca_p, key_p, root_p) = paths(&cfg.data_dir);
        let token = match &cfg.token_file {
            Some(p) => Some(
                model::fsutil::read_secret(p)
                    .map_err(Error::TokenFile)?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let stored: Option<Joined> = std::fs::read(&meta_p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let rejoin = match (&stored, &token) {
            (None, None) => {
                return Err(Error::Config(format!(
                    "zone {} has not joined yet and no --token-file was given; generate one with \
                     `ternctl generate zone-token --zone {}`",
                    cfg.zone, cfg.zone
                )))
            }
            (None, Some(_)) => true,
            (Some(s), _) if s.zone != cfg.zone => {
                return Err(Error::Config(format!(
                    "data dir {} belongs to zone {}, not {}",
                    cfg.data_dir.display(),
                    s.zone,
                    cfg.zone
                )))
            }
            (Some(s), Some(t)) => token::decode_unverified(t)
                .map(|c| c.jti != s.token_id)
                .unwrap_or(true),
            (Some(_), None) => false,
        };
        if rejoin {
            let t = token.expect("checked above");
            join(cfg, &t).await?;
        }
        let joined: Joined =
            serde_json::from_slice(&std::fs::read(&meta_p)?).map_err(|source| Error::Decode {
                what: "read zone.json".into(),
                source,
            })?;
        crate::ca::recover(&cfg.data_dir)?;
        let extra = std::fs::read_to_string(cfg.data_dir.join(CHAIN_EXTRA)).unwrap_or_default();
        let ca = ZoneCa::new(
            &std::fs::read_to_string(&ca_p)?,
            &std::fs::read_to_string(&key_p)?,
            &extra,
        )?;
        let root_pem = std::fs::read_to_string(&root_p)?;
        let identity = issue_identity(&ca, &root_pem, &joined.trust_domain, &joined.zone)?;
        Ok(Self {
            zone: joined.zone,
            trust_domain: joined.trust_domain,
            global_addr: joined.global,
            token_public_key: joined.token_public_key,
            data_dir: cfg.data_dir.clone(),
            ca: RwLock::new(Arc::new(ca)),
            roots: RwLock::new(Arc::new(root_pem)),
            ca_changed: watch::channel(0).0,
            identity: watch::channel(Arc::new(identity)).0,
        })
    }
}

impl Boot {
    pub fn ca(&self) -> Arc<ZoneCa> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The mesh roots (PEM, one or more).
    pub fn roots_pem(&self) -> Arc<String> {
        self.roots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What the zone-cp trusts as a client of the global: the mesh roots.
    pub fn policy(&self) -> TrustPolicy {
        TrustPolicy::from_pem(&self.trust_domain, &self.roots_pem(), ZoneCas::Any)
            .unwrap_or_else(|_| TrustPolicy::new(&self.trust_domain, vec![], ZoneCas::Any))
    }

    /// Start signing with a new CA (already on disk) and re-issue the
    /// zone-cp's identity from it.
    pub fn install_ca(&self, ca: ZoneCa) -> Result<(), PkiError> {
        let id = issue_identity(&ca, &self.roots_pem(), &self.trust_domain, &self.zone)?;
        *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ca);
        self.identity.send_replace(Arc::new(id));
        self.ca_changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Take a new set of mesh roots (already on disk).
    pub fn install_roots(&self, roots_pem: String) {
        *self.roots.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(roots_pem);
        self.ca_changed.send_modify(|n| *n += 1);
    }

    /// Re-issue the zone-cp's identity at a third of its life, and at once
    /// when the CA or the roots change.
    pub fn spawn_rotation_for(z: Arc<crate::Zone>) {
        tokio::spawn(async move {
            let mut changed = z.boot.ca_changed.subscribe();
            loop {
                let wait = z.boot.identity.borrow().renew_in();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    r = changed.changed() => if r.is_err() { return },
                }
                let ca = z.boot.ca();
                match issue_identity(&ca, &z.boot.roots_pem(), &z.boot.trust_domain, &z.boot.zone) {
                    Ok(id) => {
                        z.boot.identity.send_replace(Arc::new(id));
                        tracing::info!("rotated the zone control plane identity");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "identity rotation failed; retrying in 60s");
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
            }
        });
    }
}

fn issue_identity(ca: &ZoneCa, root_pem: &str, td: &str, zone: &str) -> Result<Identity, PkiError> {
    let kc = pki::new_key_and_csr("zone-cp")?;
    // Never past the CA's own expiry.
    let left = ca
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let leaf = ca.ca.sign_leaf(
        &kc.csr_pem,
        &SpiffeId::zone_cp(td, zone),
        &["localhost".into()],
        IDENTITY_VALIDITY.min(left).max(Duration::from_secs(1)),
    )?;
    let chain = format!("{leaf}{}{root_pem}", ca.chain_pem());
    Identity::from_pem(&chain, &kc.key_pem)
}

async fn join(cfg: &Config, token_text: &str) -> Result<(), Error> {
    let claims = token::decode_unverified(token_text).map_err(Error::Token)?;
    // Zone and expiry are checked by the global, which logs the refusal too.
    let global = claims.global.clone().ok_or_else(|| {
        Error::Config("the token carries no global address; is it a zone token?".into())
    })?;
    let verifier = PinnedCaVerifier::new(&claims.ca, Expect::Exact(SpiffeId::global(&claims.td)));
    let tls = tls::client_config(None, Arc::new(verifier), &[tls::ALPN_H2])?;
    let channel = common::grpc::tls_channel(global.clone(), Arc::new(tls));
    // The key is kept before asking, so that a join whose answer is lost can
    // be retried with the same token: the global recognizes the same key.
    let pending_p = cfg.data_dir.join("join-pending.json");
    let kc = match std::fs::read(&pending_p)
        .ok()
        .and_then(|b| serde_json::from_slice::<Pending>(&b).ok())
        .filter(|p| p.token_id == claims.jti)
    {
        Some(p) => pki::KeyAndCsr {
            key_pem: p.key_pem,
            csr_pem: p.csr_pem,
        },
        None => {
            let kc = pki::new_key_and_csr(&format!("zone {}", cfg.zone))?;
            let p = Pending {
                token_id: claims.jti.clone(),
                key_pem: kc.key_pem.clone(),
                csr_pem: kc.csr_pem.clone(),
            };
            write_private(&pending_p, &serde_json::to_string(&p)?)?;
            kc
        }
    };
    tracing::info!(zone = %cfg.zone, %global, token = %claims.jti, "joining the global control plane");
    let resp = GlobalSyncClient::new(channel)
        .join(JoinRequest {
            token: token_text.to_string(),
            zone: cfg.zone.clone(),
            ca_csr_pem: kc.csr_pem.clone(),
        })
        .await
        .map_err(|s| {
            tracing::error!(zone = %cfg.zone, reason = %s.message(), "the global refused the join");
            Error::Global(format!(
                "the global refused to join zone {}: {}",
                cfg.zone,
                s.message()
            ))
        })?
        .into_inner();
    let roots = pki::certs_from_pem(&resp.root_pem)
        .map_err(Error::certificate("the roots the global sent"))?;
    if !roots.iter().any(|r| pki::fingerprint(r) == claims.ca) {
        return Err(Error::Global(
            "the global sent roots that do not include the one the token pins".into(),
        ));
    }
    let (meta_p, ca_p, key_p, root_p) = paths(&cfg.data_dir);
    write_private(&key_p, &kc.key_pem)?;
    write_private(&ca_p, &resp.intermediate_pem)?;
    write_private(&root_p, &resp.root_pem)?;
    write_private(&cfg.data_dir.join(CHAIN_EXTRA), &resp.chain_extra_pem)?;
    let joined = Joined {
        zone: cfg.zone.clone(),
        token_id: claims.jti,
        global,
        trust_domain: resp.trust_domain,
        token_public_key: resp.token_public_key,
    };
    // The resume point belongs to the previous membership.
    let _ = std::fs::remove_file(cfg.data_dir.join("global-state.json"));
    write_private(&meta_p, &serde_json::to_string_pretty(&joined)?)?;
    let _ = std::fs::remove_file(&pending_p);
    tracing::info!(zone = %cfg.zone, "joined; zone CA stored");
    Ok(())
}
