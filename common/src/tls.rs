//! rustls configurations for the mesh: TLS 1.3 only, identities are SPIFFE
//! URI SANs, not DNS names. Every verifier applies one [`TrustPolicy`]
//! (`crate::trust`): the chain must reach a mesh root, and its issuer must be
//! allowed to issue the identity it names.
//!
//! * [`SpiffeServerVerifier`]: a client checks the server and that it
//!   presents the expected SPIFFE ID.
//! * [`SpiffeClientVerifier`]: a server requires (or, for first-contact
//!   ports, allows) a client certificate.
//! * [`PinnedCaVerifier`]: first contact, where the client has only a
//!   fingerprint of the mesh root from its token.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError, ServerConfig,
    SignatureScheme,
};

use crate::pki::{self, PkiError};
use crate::trust::{TrustPolicy, ZoneCas};
use model::ident::SpiffeId;

pub const ALPN_H2: &[u8] = b"h2";

/// A private key and the certificate chain (leaf first) that names it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this process loaded it; renewal is counted from here.
    pub received: SystemTime,
}

impl Identity {
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let chain = pki::certs_from_pem(chain_pem)?;
        let key = pki::key_from_pem(key_pem)?;
        let id = pki::spiffe_id_of(&chain[0])?;
        let (not_before, not_after) = pki::validity(&chain[0])?;
        Ok(Self {
            id,
            chain,
            key: Arc::new(key),
            not_before,
            not_after,
            received: SystemTime::now(),
        })
    }

    /// How long until this certificate should be renewed (at least 1s).
    pub fn renew_in(&self) -> std::time::Duration {
        pki::renew_at(self.received, self.not_after)
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(std::time::Duration::from_secs(1))
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    static P: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        use rustls::crypto::ring::cipher_suite as cs;
        let mut p = rustls::crypto::ring::default_provider();
        // TLS 1.3 only, AES-128-GCM first (BoringSSL's order on AES
        // hardware): its key schedule hashes with SHA-256, which current
        // x86 and ARM CPUs accelerate, while AES-256-GCM's SHA-384 runs in
        // software. Each new session (the end-to-end ones through gateways
        // above all) runs a dozen HMACs; under AES-256-GCM-SHA384 SHA-512
        // blocks were the top user-space symbol of a sidecar opening
        // connections (bench/crosszone.sh, new connections).
        p.cipher_suites = vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        Arc::new(p)
    })
    .clone()
}

/// Install [`provider`] as the process-wide rustls provider. Call once
/// from main.
pub fn install_provider() {
    let _ = CryptoProvider::install_default((*provider()).clone());
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] TlsError),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Server side, with mTLS: the client must pass `policy`.
pub fn server_config_mtls(
    ident: &Identity,
    policy: Arc<TrustPolicy>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
    server_config_with(ident, SpiffeClientVerifier::new(policy), alpn)
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
/// contact (token) and authenticated streams. A certificate that is
/// presented must pass `policy`.
pub fn server_config_optional_mtls(
    ident: &Identity,
    policy: Arc<TrustPolicy>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
    let mut verifier = SpiffeClientVerifier::new(policy);
    verifier.mandatory = false;
    server_config_with(ident, verifier, alpn)
}

fn server_config_with(
    ident: &Identity,
    verifier: SpiffeClientVerifier,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
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
    policy: Arc<TrustPolicy>,
    expect: Expect,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(policy: Arc<TrustPolicy>, expect: Expect) -> Self {
        Self {
            policy,
            expect,
            provider: provider(),
        }
    }
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
        let v = self.policy.verify(end_entity, intermediates, now)?;
        self.expect.check(&v.id)?;
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
        let td = match &self.expect {
            Expect::Exact(id) => id.trust_domain().to_string(),
            Expect::TrustDomain(td) => td.clone(),
        };
        // First contact: the client does not know the zone list yet.
        let policy = TrustPolicy::new(&td, vec![anchor.clone().into_owned()], ZoneCas::Any);
        let v = policy.verify(end_entity, intermediates, now)?;
        self.expect.check(&v.id)?;
        Ok(ServerCertVerified::assertion())
    }
    handshake_sigs!();
}

#[derive(Debug)]
pub struct SpiffeClientVerifier {
    policy: Arc<TrustPolicy>,
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    pub fn new(policy: Arc<TrustPolicy>) -> Self {
        Self {
            policy,
            mandatory: true,
            provider: provider(),
        }
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
        // Mesh leaves carry both serverAuth and clientAuth; the policy
        // checks the chain as webpki does for servers.
        self.policy.verify(end_entity, intermediates, now)?;
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
