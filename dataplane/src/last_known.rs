//! The proxy's last certificate, trust and config, kept on disk
//! (`--state-dir`, a 0700 folder; the file is 0600 since it holds the
//! private key). A proxy restarted while its zone control plane is down
//! starts from them and serves, instead of failing closed until the
//! zone-cp returns. A certificate that has expired is never used: the
//! proxy then waits for the zone-cp as without a state folder. Once the
//! zone-cp answers, what it sends replaces all of it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use common::tls::Identity;
use prost::Message;
use proto::v1 as pb;

use crate::state::Shared;
use crate::Error;

const FILE: &str = "proxy-state.pb";

pub struct LastKnown {
    path: PathBuf,
    state: Mutex<pb::ProxyState>,
}

impl LastKnown {
    /// Open (creating it 0700) the state folder; refuse one other users can
    /// read, or a state file they can.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        model::fsutil::private_dir(dir, &[FILE])?;
        Ok(Self {
            path: dir.join(FILE),
            state: Mutex::new(pb::ProxyState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, pb::ProxyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Install the kept state into `shared`: `Some(config version)` when a
    /// usable one was there, `None` when there was none or its certificate
    /// has expired.
    pub fn restore(&self, trust_domain: &str, shared: &Shared) -> Result<Option<u64>, Error> {
        if !self.path.exists() {
            return Ok(None);
        }
        let bytes = model::fsutil::read_secret_bytes(&self.path)?;
        let what = self.path.display().to_string();
        let Some(st) = install(&bytes, &what, trust_domain, shared)? else {
            return Ok(None);
        };
        let v = st.config_version;
        *self.lock() = st;
        Ok(Some(v))
    }

    pub fn set_trust(&self, t: &pb::Trust) {
        self.update(|s| s.trust = Some(t.clone()));
    }

    pub fn set_identity(&self, chain_pem: &str, key_pem: &str) {
        self.update(|s| {
            s.chain_pem = chain_pem.to_string();
            s.key_pem = key_pem.to_string();
        });
    }

    pub fn set_config(
        &self,
        version: u64,
        clusters: &[pb::Cluster],
        inbound: Option<&pb::InboundPolicy>,
    ) {
        self.update(|s| {
            s.config_version = version;
            s.clusters = clusters.to_vec();
            s.inbound = inbound.cloned();
        });
    }

    fn update(&self, f: impl FnOnce(&mut pb::ProxyState)) {
        let mut g = self.lock();
        f(&mut g);
        if let Err(e) = model::fsutil::write_private(&self.path, g.encode_to_vec()) {
            tracing::warn!(error = %e, "could not keep the proxy state on disk");
        }
    }
}

/// Decode a kept state (`what` names it in errors) and install it into
/// `shared`. Returns the state when it was usable, `None` when its
/// certificate has expired or it holds no trust.
pub fn install(
    bytes: &[u8],
    what: &str,
    trust_domain: &str,
    shared: &Shared,
) -> Result<Option<pb::ProxyState>, Error> {
    let st = pb::ProxyState::decode(bytes).map_err(|source| Error::Corrupt {
        what: what.to_string(),
        source,
    })?;
    let ident = Identity::from_pem(&st.chain_pem, &st.key_pem)
        .map_err(Error::certificate(format!("{what}: the kept certificate")))?;
    if ident.not_after <= SystemTime::now() {
        tracing::info!(path = %what, "the kept certificate has expired; waiting for the zone control plane");
        return Ok(None);
    }
    let Some(trust) = &st.trust else {
        return Ok(None);
    };
    let policy = crate::cp_client::trust_policy(trust_domain, trust)
        .map_err(Error::certificate(format!("{what}: the kept trust")))?;
    for c in &st.clusters {
        crate::cp_client::validate(&c.service, c)
            .map_err(|e| Error::Config(format!("{what}: the kept config: {}: {e}", c.service)))?;
    }
    shared.set_trust(policy)?;
    shared.set_identity(ident)?;
    shared
        .apply(&st.clusters, st.inbound.as_ref(), st.config_version)
        .map_err(|e| Error::Config(format!("{what}: the kept config: {e}")))?;
    tracing::info!(version = st.config_version, services = st.clusters.len(), "serving with the last certificate, trust and config kept on disk until the zone control plane answers");
    Ok(Some(st))
}
