//! Certificates: the mesh root CA, zone intermediates, and workload leaves.
//!
//! Keys are generated where they are used. Only CSRs and certificates move
//! between components.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use model::ident::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("invalid certificate: {0}")]
    Parse(String),
    #[error("certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
}

/// A CA (root or intermediate) that can sign: its certificate as issued
/// (the exact bytes that peers chain to) and its key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    /// The issuer form that rcgen signs with, rebuilt from `cert_pem`.
    issuer: rcgen::Certificate,
}

impl Ca {
    /// Create a self-signed mesh root CA.
    pub fn new_root(trust_domain: &str, valid_for: Duration) -> Result<Self, PkiError> {
        Self::new_root_named(&format!("Tern mesh root CA ({trust_domain})"), valid_for)
    }

    /// Create a self-signed root with this common name (each generation of
    /// a mesh's root gets its own, so chains never confuse them).
    pub fn new_root_named(common_name: &str, valid_for: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tern");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, valid_for);
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Load a CA from its PEM certificate and PEM PKCS#8 key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        let issuer = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn cert_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        first_cert(&self.cert_pem)
    }

    /// SHA-256 fingerprint of the certificate as issued, in lowercase hex.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        Ok(fingerprint(&self.cert_der()?))
    }

    /// Certify `other` (a newer root) with this CA's key: the same subject
    /// and key as `other`, issued by us, valid no longer than we are. Peers
    /// that trust only us can then build a path through the newer root.
    pub fn cross_sign(&self, other: &Ca) -> Result<String, PkiError> {
        let mut params = CertificateParams::from_ca_cert_pem(other.cert_pem())?;
        let mine = CertificateParams::from_ca_cert_pem(&self.cert_pem)?;
        if params.not_after > mine.not_after {
            params.not_after = mine.not_after;
        }
        Ok(params.signed_by(&other.key, &self.issuer, &self.key)?.pem())
    }

    /// Sign a CSR as an intermediate CA (path length 0) for a zone. The
    /// requested subject and SANs are ignored: the identity comes from us.
    pub fn sign_intermediate(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        valid_for: Duration,
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Tern zone CA {}", id.as_str()));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![uri_san(id)?];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, valid_for);
        csr.params = params;
        Ok(csr.signed_by(&self.issuer, &self.key)?.pem())
    }

    /// Sign a CSR as a workload/leaf certificate for `id`, usable for both
    /// TLS client and server authentication.
    pub fn sign_leaf(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        dns: &[String],
        valid_for: Duration,
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = leaf_params(id, dns, valid_for)?;
        Ok(csr.signed_by(&self.issuer, &self.key)?.pem())
    }

    /// A workload's leaf, carrying its registered labels (see
    /// [`labels_of`]), which access rules may name.
    pub fn sign_workload(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        labels: &BTreeMap<String, String>,
        valid_for: Duration,
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = leaf_params(id, &[], valid_for)?;
        if !labels.is_empty() {
            csr.params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    LABELS_OID,
                    der_utf8(&encode_labels(labels)),
                ));
        }
        Ok(csr.signed_by(&self.issuer, &self.key)?.pem())
    }
}

/// The (non-critical) extension in which a zone CA records a workload's
/// labels: a DER UTF8String of sorted `key=value` lines. The OID is a
/// UUID-based one (ITU-T X.667, arc 2.25). A workload certificate has one
/// SPIFFE ID, as X509-SVIDs must, so labels cannot be more URI SANs.
pub const LABELS_OID: &[u64] = &[2, 25, 1_970_518_444_835_869_939];
/// Largest labels extension read back.
const MAX_LABELS_BYTES: usize = 8 * 1024;

fn encode_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn der_utf8(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = vec![0x0c];
    match b.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(b);
    out
}

fn parse_der_utf8(b: &[u8]) -> Option<&str> {
    let (&tag, rest) = b.split_first()?;
    if tag != 0x0c {
        return None;
    }
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = match l0 {
        n if n < 0x80 => (n as usize, rest),
        0x81 => (*rest.first()? as usize, rest.get(1..)?),
        0x82 => (
            (*rest.first()? as usize) << 8 | *rest.get(1)? as usize,
            rest.get(2..)?,
        ),
        _ => return None,
    };
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// The labels a workload certificate (DER) carries; none when it has no
/// labels extension or an unreadable one.
pub fn labels_of(der: &[u8]) -> BTreeMap<String, String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return BTreeMap::new();
    };
    let Ok(oid) = x509_parser::der_parser::oid::Oid::from(LABELS_OID) else {
        return BTreeMap::new();
    };
    cert.extensions()
        .iter()
        .find(|e| e.oid == oid)
        .filter(|e| e.value.len() <= MAX_LABELS_BYTES)
        .and_then(|e| parse_der_utf8(e.value))
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
impl Ca {
    /// Tests: sign arbitrary parameters (to make certificates that break a rule).
    pub(crate) fn sign_params(
        &self,
        params: CertificateParams,
        key: &KeyPair,
    ) -> Result<String, PkiError> {
        Ok(params.signed_by(key, &self.issuer, &self.key)?.pem())
    }
}

fn leaf_params(
    id: &SpiffeId,
    dns: &[String],
    valid_for: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, id.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![uri_san(id)?];
    for d in dns {
        params.subject_alt_names.push(SanType::DnsName(
            d.clone()
                .try_into()
                .map_err(|_| PkiError::Parse(format!("bad DNS name {d}")))?,
        ));
    }
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, valid_for);
    Ok(params)
}

fn uri_san(id: &SpiffeId) -> Result<SanType, PkiError> {
    Ok(SanType::URI(id.as_str().to_string().try_into().map_err(
        |_| PkiError::Parse(format!("bad URI {}", id.as_str())),
    )?))
}

fn set_validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // Small backdating absorbs clock skew between components.
    params.not_before = now
        - time::Duration::minutes(5).min(time::Duration::seconds(
            (valid_for.as_secs() / 2).max(1) as i64
        ));
    params.not_after = now + time::Duration::seconds(valid_for.as_secs().max(1) as i64);
}

/// SHA-256 (hex) of the public key a CSR certifies. Parsing also checks the
/// CSR's own signature, i.e. that its sender holds the key.
pub fn csr_key_fingerprint(csr_pem: &str) -> Result<String, PkiError> {
    use rcgen::PublicKeyData;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
    Ok(fingerprint(csr.public_key.der_bytes()))
}

/// SHA-256 (hex) of the public key a DER certificate certifies (same bytes
/// as [`csr_key_fingerprint`] and [`key_fingerprint`] hash).
pub fn cert_key_fingerprint(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(fingerprint(
        &cert.tbs_certificate.subject_pki.subject_public_key.data,
    ))
}

/// SHA-256 (hex) of the public half of a PEM private key.
pub fn key_fingerprint(key_pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint(KeyPair::from_pem(key_pem)?.public_key_raw()))
}

/// A freshly generated key and a CSR for it. The key never leaves the caller.
pub struct KeyAndCsr {
    pub key_pem: String,
    pub csr_pem: String,
}

pub fn new_key_and_csr(common_name: &str) -> Result<KeyAndCsr, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let csr = params.serialize_request(&key)?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
    })
}

pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.map_err(|e| PkiError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

pub fn first_cert(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    Ok(certs_from_pem(pem)?.remove(0))
}

pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| PkiError::Pem(e.to_string()))?
        .ok_or_else(|| PkiError::Pem("no PRIVATE KEY block found".into()))
}

pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The SPIFFE ID of a DER certificate: its one URI SAN. A certificate with
/// several URI SANs is refused (the SPIFFE X.509 profile allows exactly one),
/// so no two readers can disagree about whom it names.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    spiffe_id_in(&cert)
}

fn spiffe_id_in(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<SpiffeId, PkiError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(e.to_string()))?
        .ok_or(PkiError::NoSpiffeId)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err(PkiError::Parse(
            "a mesh certificate must carry exactly one URI SAN".into(),
        ));
    };
    SpiffeId::parse(uri).map_err(|e| PkiError::Parse(e.to_string()))
}

/// What the trust rules read from a leaf: its SPIFFE ID and the raw DER
/// name of its issuer.
pub struct LeafNames {
    pub id: SpiffeId,
    pub issuer: Vec<u8>,
}

impl LeafNames {
    pub fn parse(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
        Ok(Self {
            id: spiffe_id_in(&cert)?,
            issuer: cert.issuer().as_raw().to_vec(),
        })
    }
}

/// The raw DER subject name of a certificate.
pub fn subject_raw(der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(cert.subject().as_raw().to_vec())
}

/// The expiry of a DER certificate.
pub fn not_after(der: &[u8]) -> Result<SystemTime, PkiError> {
    Ok(validity(der)?.1)
}

/// True when `issuer`'s key signed `cert` (both DER).
pub fn issued_by(cert: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, i))) = (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(issuer),
    ) else {
        return false;
    };
    c.verify_signature(Some(i.public_key())).is_ok()
}

/// When a DER certificate starts and stops being valid.
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let at = |ts: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
    Ok((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// When a certificate is renewed: once a third of the life it had when its
/// holder `received` it has passed. (Counted from receipt, not from
/// `notBefore`, which is backdated for clock skew.) Two thirds are then
/// still left, so a certificate authority unreachable for up to that long
/// (16 h of a 24 h certificate) stops nothing; the holder keeps retrying.
pub fn renew_at(received: SystemTime, not_after: SystemTime) -> SystemTime {
    let left = not_after.duration_since(received).unwrap_or_default();
    received + left / 3
}

/// The SHA-256 fingerprint of a PEM file's first certificate.
pub fn pem_fingerprint(pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint(&first_cert(pem)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_labels_travel_in_the_certificate_and_it_still_chains() {
        crate::tls::install_provider();
        let root = Ca::new_root("tern", Duration::from_secs(3600)).unwrap();
        let zk = new_key_and_csr("zone").unwrap();
        let inter_pem = root
            .sign_intermediate(
                &zk.csr_pem,
                &SpiffeId::zone("tern", "z1"),
                Duration::from_secs(600),
            )
            .unwrap();
        let inter = Ca::from_pem(&inter_pem, &zk.key_pem).unwrap();
        let wid = SpiffeId::workload("tern", "z1", "api");
        let wk = new_key_and_csr("x").unwrap();
        // Long enough to need a two-byte DER length.
        let labels: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("key-{i}"), format!("value-{i}-{}", "v".repeat(20))))
            .chain([("version".to_string(), "v2".to_string())])
            .collect();
        let leaf = inter
            .sign_workload(&wk.csr_pem, &wid, &labels, Duration::from_secs(60))
            .unwrap();
        let der = first_cert(&leaf).unwrap();
        assert_eq!(labels_of(&der), labels);
        assert_eq!(spiffe_id_of(&der).unwrap(), wid);
        // The extension is not critical: the trust rules accept the leaf.
        let policy = crate::trust::TrustPolicy::from_pem(
            "tern",
            root.cert_pem(),
            crate::trust::ZoneCas::Any,
        )
        .unwrap();
        let chain = [der.clone(), first_cert(&inter_pem).unwrap()];
        assert_eq!(policy.verify_chain_now(&chain).unwrap().id, wid);
        // No labels: no extension, and nothing read back.
        let plain = inter
            .sign_workload(&wk.csr_pem, &wid, &BTreeMap::new(), Duration::from_secs(60))
            .unwrap();
        assert!(labels_of(&first_cert(&plain).unwrap()).is_empty());
        assert_eq!(
            parse_der_utf8(&der_utf8(&"x".repeat(300))),
            Some(&*"x".repeat(300))
        );
        assert_eq!(parse_der_utf8(&[0x0c, 0x05, b'a']), None);
    }

    #[test]
    fn root_intermediate_leaf_chain_carries_spiffe_ids() {
        let root = Ca::new_root("tern", Duration::from_secs(3600)).unwrap();
        let zone_id = SpiffeId::zone("tern", "eu-west-1");
        let zk = new_key_and_csr("zone").unwrap();
        let inter_pem = root
            .sign_intermediate(&zk.csr_pem, &zone_id, Duration::from_secs(600))
            .unwrap();
        let inter = Ca::from_pem(&inter_pem, &zk.key_pem).unwrap();
        let wid = SpiffeId::workload("tern", "eu-west-1", "web");
        let wk = new_key_and_csr("ignored").unwrap();
        let leaf = inter
            .sign_leaf(&wk.csr_pem, &wid, &[], Duration::from_secs(60))
            .unwrap();
        assert_eq!(spiffe_id_of(&first_cert(&leaf).unwrap()).unwrap(), wid);
        assert_eq!(
            spiffe_id_of(&first_cert(&inter_pem).unwrap()).unwrap(),
            zone_id
        );
        // Reloading the CA keeps the fingerprint of the issued bytes.
        let again = Ca::from_pem(root.cert_pem(), &root.key_pem()).unwrap();
        assert_eq!(again.fingerprint().unwrap(), root.fingerprint().unwrap());
        let exp = not_after(&first_cert(&leaf).unwrap()).unwrap();
        assert!(exp > SystemTime::now() && exp < SystemTime::now() + Duration::from_secs(120));
    }

    #[test]
    fn a_cross_signed_root_links_the_new_root_to_the_old() {
        use crate::trust::{TrustPolicy, ZoneCas};
        crate::tls::install_provider();
        let old = Ca::new_root("tern", Duration::from_secs(3600)).unwrap();
        let new =
            Ca::new_root_named("Tern mesh root CA (tern) 2", Duration::from_secs(7200)).unwrap();
        let cross = first_cert(&old.cross_sign(&new).unwrap()).unwrap();
        assert!(issued_by(&cross, &old.cert_der().unwrap()));
        assert!(!issued_by(&cross, &new.cert_der().unwrap()));
        // Never outlives the old root.
        assert!(not_after(&cross).unwrap() <= not_after(&old.cert_der().unwrap()).unwrap());
        // A zone CA under the new root, presented with the cross-signed
        // root, verifies for a member that trusts only the old root.
        let kc = new_key_and_csr("z").unwrap();
        let zone = Ca::from_pem(
            &new.sign_intermediate(
                &kc.csr_pem,
                &SpiffeId::zone("tern", "a"),
                Duration::from_secs(600),
            )
            .unwrap(),
            &kc.key_pem,
        )
        .unwrap();
        assert!(issued_by(
            &zone.cert_der().unwrap(),
            &new.cert_der().unwrap()
        ));
        let wk = new_key_and_csr("w").unwrap();
        let leaf = first_cert(
            &zone
                .sign_leaf(
                    &wk.csr_pem,
                    &SpiffeId::workload("tern", "a", "web"),
                    &[],
                    Duration::from_secs(60),
                )
                .unwrap(),
        )
        .unwrap();
        let old_only = TrustPolicy::new("tern", vec![old.cert_der().unwrap()], ZoneCas::Any);
        let now = rustls::pki_types::UnixTime::now();
        assert!(old_only
            .verify(&leaf, &[zone.cert_der().unwrap(), cross.clone()], now)
            .is_ok());
        assert!(old_only
            .verify(&leaf, &[zone.cert_der().unwrap()], now)
            .is_err());
        let new_only = TrustPolicy::new("tern", vec![new.cert_der().unwrap()], ZoneCas::Any);
        assert!(new_only
            .verify(&leaf, &[zone.cert_der().unwrap(), cross], now)
            .is_ok());
    }

    /// With the default workload certificate lifetime, a zone-cp outage of
    /// 12 hours that starts at any moment of a certificate's life ends
    /// before the certificate in hand expires.
    #[test]
    fn the_default_lifetime_outlasts_a_twelve_hour_outage() {
        let ttl = model::resource::MtlsSpec::default().workload_cert_ttl.0;
        let outage = Duration::from_secs(12 * 3600);
        let received = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = received + ttl;
        let renew = renew_at(received, na);
        // Worst case: the outage starts just before the renewal is due; the
        // certificate in hand must last the whole outage.
        let left = na.duration_since(renew).unwrap();
        assert!(
            left > outage,
            "{left:?} left at renewal is not more than the {outage:?} outage"
        );
        // Renewal is not absurdly frequent either (every 8 h for 24 h certs),
        // and short test lifetimes renew a third of the way in, not at once.
        assert!(renew.duration_since(received).unwrap() >= Duration::from_secs(3600));
        let short = renew_at(received, received + Duration::from_secs(30));
        assert_eq!(
            short.duration_since(received).unwrap(),
            Duration::from_secs(10)
        );
    }
}
