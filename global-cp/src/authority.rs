//! The mesh root CA(s), the global's own serving certificate, and the token
//! signer. All created on first start and kept in the store.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::pki::{self, Ca, PkiError};
use common::tls::{self, Identity};
use common::trust::{TrustPolicy, ZoneCas};
use model::ident::SpiffeId;
use model::token::{self, Claims, Signer, TokenKind};
use tokio::sync::watch;

use crate::store::{Store, StoreError, TokenRecord};
use crate::{Config, Error};

pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Store keys (meta) of a root rotation in progress.
pub const META_PREVIOUS_ROOT: &str = "root_previous";
pub const META_CROSS: &str = "root_cross";
pub const META_ROTATION: &str = "root_rotation";
pub const ZONE_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const SERVING_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The roots: the active one signs; all of `trusted` are accepted.
pub struct Roots {
    pub active: Ca,
    pub active_fingerprint: String,
    /// PEM of every trusted root, active first.
    pub trusted_pem: Vec<String>,
    /// Certificates sent after a leaf or intermediate so that members that
    /// trust only an older root can still build a path (cross-signed roots
    /// during a rotation). Usually empty.
    pub chain_extra_pem: String,
}

impl Roots {
    pub fn trusted_bundle(&self) -> String {
        self.trusted_pem.concat()
    }
}

pub struct Authority {
    pub trust_domain: String,
    roots: RwLock<Arc<Roots>>,
    pub signer: Signer,
    /// The global's serving identity (spiffe://TD/global), rotated.
    pub serving: watch::Sender<Arc<Identity>>,
    pub zone_ca_validity: Duration,
}

impl Authority {
    pub fn load_or_init(store: &Store, config: &Config) -> Result<Self, Error> {
        let td =
            String::from_utf8(store.meta_init("trust_domain", config.trust_domain.as_bytes())?)?;
        if td != config.trust_domain {
            tracing::warn!(stored = %td, flag = %config.trust_domain,
                "trust domain is fixed at first start; keeping the stored one");
        }
        let root = match (store.meta_get("root_cert")?, store.meta_get("root_key")?) {
            (Some(c), Some(k)) => Ca::from_pem(&String::from_utf8(c)?, &String::from_utf8(k)?)
                .map_err(Error::RootCa)?,
            _ => {
                let ca = Ca::new_root(&td, ROOT_VALIDITY)?;
                // meta_init keeps the first writer's CA if two starts race.
                let c = store.meta_init("root_cert", ca.cert_pem().as_bytes())?;
                let k = store.meta_init("root_key", ca.key_pem().as_bytes())?;
                tracing::info!("created mesh root CA");
                Ca::from_pem(&String::from_utf8(c)?, &String::from_utf8(k)?)?
            }
        };
        let signer = match store.meta_get("token_key")? {
            Some(k) => Signer::from_pkcs8(&k)?,
            None => {
                let (_, bytes) = Signer::generate();
                Signer::from_pkcs8(&store.meta_init("token_key", &bytes)?)?
            }
        };
        // During a root rotation the previous root stays trusted, and the
        // active one certified by it travels in chains.
        let text = |k: &str| -> Result<Option<String>, Error> {
            Ok(store.meta_get(k)?.map(String::from_utf8).transpose()?)
        };
        let mut trusted_pem = vec![root.cert_pem().to_string()];
        trusted_pem.extend(text(META_PREVIOUS_ROOT)?);
        let roots = Roots {
            active_fingerprint: root.fingerprint()?,
            trusted_pem,
            chain_extra_pem: text(META_CROSS)?.unwrap_or_default(),
            active: root,
        };
        let serving = issue_serving(&roots, &td)?;
        Ok(Self {
            trust_domain: td,
            roots: RwLock::new(Arc::new(roots)),
            signer,
            serving: watch::channel(Arc::new(serving)).0,
            zone_ca_validity: config.zone_ca_validity,
        })
    }

    pub fn roots(&self) -> Arc<Roots> {
        self.roots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Switch to a new set of roots (already in the store) and re-issue the
    /// serving certificate under the active one.
    pub fn install_roots(&self, roots: Roots) -> Result<(), PkiError> {
        *self.roots.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(roots);
        self.reissue()
    }

    pub fn root_fingerprint(&self) -> String {
        self.roots().active_fingerprint.clone()
    }

    /// What the global accepts from clients: any trusted root; zones are
    /// checked by the sync handler against their records.
    pub fn policy(&self) -> Result<TrustPolicy, PkiError> {
        TrustPolicy::from_pem(
            &self.trust_domain,
            &self.roots().trusted_bundle(),
            ZoneCas::Any,
        )
    }

    /// Issue a fresh serving certificate and publish it.
    pub fn reissue(&self) -> Result<(), PkiError> {
        let id = issue_serving(&self.roots(), &self.trust_domain)?;
        self.serving.send_replace(Arc::new(id));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn issue_token(
        &self,
        store: &Store,
        kind: TokenKind,
        zone: &str,
        service: Option<&str>,
        valid_for: Duration,
        global_addr: &str,
        purpose: &str,
        max_instances: Option<u32>,
    ) -> Result<(String, Claims), StoreError> {
        let now = token::now_unix();
        let claims = Claims {
            jti: token::random_id(),
            kind,
            zone: zone.to_string(),
            service: service.map(str::to_string),
            iat: now,
            exp: now + valid_for.as_secs(),
            global: (kind == TokenKind::Zone).then(|| global_addr.to_string()),
            ca: self.root_fingerprint(),
            td: self.trust_domain.clone(),
            max_instances,
        };
        store.record_token(&TokenRecord {
            id: claims.jti.clone(),
            kind: kind.as_str().into(),
            zone: zone.into(),
            service: claims.service.clone(),
            issued_at: claims.iat,
            expires_at: claims.exp,
            used_at: None,
            used_by: None,
            purpose: purpose.into(),
            pin: claims.ca.clone(),
        })?;
        Ok((self.signer.sign(&claims), claims))
    }
}

/// Re-issue the global's serving certificate at two thirds of its life;
/// the sync listener picks the new one up from the watch.
pub fn spawn_rotation(state: Arc<crate::State>) {
    tokio::spawn(async move {
        loop {
            let not_after = state.authority.serving.borrow().not_after;
            tokio::time::sleep(renew_in(not_after, SERVING_VALIDITY)).await;
            match state.authority.reissue() {
                Ok(()) => tracing::info!("rotated the global's serving certificate"),
                Err(e) => {
                    tracing::error!(error = %e, "could not rotate the serving certificate; retrying in 60s");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    });
}

/// Time until a certificate that expires at `not_after` should be renewed.
pub fn renew_in(not_after: std::time::SystemTime, lifetime: Duration) -> Duration {
    let renew_at = not_after - lifetime / 3;
    renew_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::from_secs(1))
}

fn issue_serving(roots: &Roots, td: &str) -> Result<Identity, PkiError> {
    let kc = pki::new_key_and_csr("tern-global")?;
    let id = SpiffeId::global(td);
    let leaf = roots
        .active
        .sign_leaf(&kc.csr_pem, &id, &["localhost".into()], SERVING_VALIDITY)?;
    // The roots travel in the chain so that a zone can match its token's
    // pin (whichever trusted root that is).
    let chain = format!("{leaf}{}{}", roots.chain_extra_pem, roots.trusted_bundle());
    tls::Identity::from_pem(&chain, &kc.key_pem)
}

#[cfg(test)]
mod tests {
    use crate::membership::tests::{fixture, token};

    /// An issued token's record keeps the root it pins (what
    /// `rotation::pinned_tokens` compares with the previous root). The
    /// INSERT left the pin out, so every record had '' and rotation fell
    /// back to guessing by issue time.
    #[test]
    fn an_issued_tokens_stored_pin_is_the_active_root() {
        let f = fixture("authority-pin");
        let (_, jti) = token(&f.st, "eu-1", "join");
        let rec = f.st.store.token(&jti).unwrap().unwrap();
        assert_eq!(rec.pin, f.st.authority.root_fingerprint());
        assert_eq!(rec.pin.len(), 64);
    }
}
