//! rustls configurations for the mesh: TLS 1.3 only, identities are SPIFFE
//! URI SANs, not DNS names.
//!
//! * [`SpiffeServerVerifier`]: a client checks the server chains to the mesh
//!   root and presents the expected SPIFFE ID.
//! * [`SpiffeClientVerifier`]: a server requires a client certificate that
//!   chains to the mesh root, within the trust domain.
//! * [`PinnedCaVerifier`]: first contact, where the client has only a
//!   fingerprint of the mesh root from its token.
//!
//! All three also check that a workload leaf under `/zone/Z/...` was issued by
//! the intermediate of zone `Z`, so one zone cannot mint another's identities.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::ident::SpiffeId;
use crate::pki::{self, PkiError};

pub const ALPN_H2: &[u8] = b"h2";

/// A private key and the certificate chain (leaf first) that names it, plus
/// the roots it trusts.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

impl Identity {
    pub fn from_pem(chain_pem: &str, key_pem: &str, roots_pem: &str) -> Result<Self, PkiError> {
        let chain = pki::certs_from_pem(chain_pem)?;
        let roots = pki::certs_from_pem(roots_pem)?;
        let key = pki::key_from_pem(key_pem)?;
        let id = pki::spiffe_id_of(&chain[0])?;
        let not_after = pki::not_after(&chain[0])?;
        Ok(Self {
            id,
            chain,
            key: Arc::new(key),
            roots,
            not_after,
        })
    }

    pub fn root_store(&self) -> Arc<RootCertStore> {
        root_store(&self.roots)
    }
}

pub fn root_store(roots: &[CertificateDer<'static>]) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    for r in roots {
        // A malformed root is skipped; verification then fails closed.
        let _ = store.add(r.clone());
    }
    Arc::new(store)
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Install ring as the process-wide rustls provider. Call once from main.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] TlsError),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Server side, with mTLS: the client must chain to `roots` and present a
/// SPIFFE ID in `trust_domain`.
pub fn server_config_mtls(
    ident: &Identity,
    trust_domain: &str,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
    let verifier = SpiffeClientVerifier::new(ident.root_store(), trust_domain)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(ident.chain.clone(), ident.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// Server side, server-authenticated only (first contact: join, proxy hello).
pub fn server_config_no_client_auth(
    ident: &Identity,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(ident.chain.clone(), ident.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// Server side that asks for a client certificate but lets a client without
/// one through; the handler decides. Used where one port serves both first
/// contact (token) and authenticated streams.
pub fn server_config_optional_mtls(
    ident: &Identity,
    trust_domain: &str,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
    let mut verifier = SpiffeClientVerifier::new(ident.root_store(), trust_domain)?;
    verifier.mandatory = false;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(ident.chain.clone(), ident.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// Client side. `ident` is presented when given (mTLS).
pub fn client_config(
    ident: Option<&Identity>,
    verifier: Arc<dyn ServerCertVerifier>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsConfigError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match ident {
        Some(i) => b.with_client_auth_cert(i.chain.clone(), i.key.clone_key())?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// The server name we send; identity is checked by SPIFFE ID, not by this.
pub fn sni() -> ServerName<'static> {
    ServerName::try_from("tern.mesh").expect("static name")
}

fn webpki_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::General(e.to_string())
}

/// A workload leaf under /zone/Z/ must be issued by zone Z's intermediate.
fn check_zone_scope(leaf: &SpiffeId, intermediates: &[CertificateDer<'_>]) -> Result<(), TlsError> {
    let Some(leaf_zone) = leaf.zone_name() else {
        return Ok(());
    };
    for i in intermediates {
        if let Ok(ca_id) = pki::spiffe_id_of(i) {
            if let Some(z) = ca_id.zone_name() {
                if z != leaf_zone {
                    return Err(TlsError::General(format!(
                        "identity {leaf} was issued by the CA of zone {z}"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn leaf_identity(end_entity: &CertificateDer<'_>) -> Result<SpiffeId, TlsError> {
    pki::spiffe_id_of(end_entity).map_err(webpki_err)
}

/// What a client expects of the server's identity.
#[derive(Clone, Debug)]
pub enum Expect {
    Exact(SpiffeId),
    TrustDomain(String),
}

impl Expect {
    fn check(&self, got: &SpiffeId) -> Result<(), TlsError> {
        let ok = match self {
            Expect::Exact(want) => want == got,
            Expect::TrustDomain(td) => got.trust_domain() == td,
        };
        if ok {
            Ok(())
        } else {
            Err(TlsError::General(format!(
                "peer identity {got} is not the expected {}",
                match self {
                    Expect::Exact(w) => w.to_string(),
                    Expect::TrustDomain(td) => format!("spiffe://{td}/*"),
                }
            )))
        }
    }
}

#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expect: Expect,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, expect: Expect) -> Self {
        Self {
            roots,
            expect,
            provider: provider(),
        }
    }
}

fn verify_chain(
    roots: &RootCertStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    provider: &CryptoProvider,
) -> Result<SpiffeId, TlsError> {
    let cert = ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &cert,
        roots,
        intermediates,
        now,
        provider.signature_verification_algorithms.all,
    )?;
    let id = leaf_identity(end_entity)?;
    check_zone_scope(&id, intermediates)?;
    Ok(id)
}

macro_rules! handshake_sigs {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let id = verify_chain(&self.roots, end_entity, intermediates, now, &self.provider)?;
        self.expect.check(&id)?;
        Ok(ServerCertVerified::assertion())
    }
    handshake_sigs!();
}

/// Trusts whichever certificate in the presented chain has the pinned
/// SHA-256 fingerprint, then requires the expected SPIFFE ID.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: String,
    expect: Expect,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(pin: &str, expect: Expect) -> Self {
        Self {
            pin: pin.to_ascii_lowercase(),
            expect,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let anchor = intermediates
            .iter()
            .find(|c| pki::fingerprint(c) == self.pin)
            .ok_or_else(|| {
                TlsError::General(format!(
                    "server's CA does not match the pinned fingerprint {} from the token; \
                     the token belongs to another mesh, or the address points elsewhere",
                    self.pin
                ))
            })?;
        let roots = root_store(&[anchor.clone().into_owned()]);
        let id = verify_chain(&roots, end_entity, intermediates, now, &self.provider)?;
        self.expect.check(&id)?;
        Ok(ServerCertVerified::assertion())
    }
    handshake_sigs!();
}

#[derive(Debug)]
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    pub fn new(roots: Arc<RootCertStore>, trust_domain: &str) -> Result<Self, TlsConfigError> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsConfigError::Verifier(e.to_string()))?;
        Ok(Self {
            inner,
            trust_domain: trust_domain.to_string(),
            mandatory: true,
            provider: provider(),
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = leaf_identity(end_entity)?;
        if id.trust_domain() != self.trust_domain {
            return Err(TlsError::General(format!(
                "client identity {id} is outside trust domain {}",
                self.trust_domain
            )));
        }
        check_zone_scope(&id, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }
    handshake_sigs!();
}

/// The SPIFFE ID of a finished connection's peer, if it presented one.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    certs
        .and_then(|c| c.first())
        .and_then(|c| pki::spiffe_id_of(c).ok())
}
