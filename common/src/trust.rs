//! The mesh's trust rules: who may issue which identity, and what a mesh
//! member accepts. The rustls verifiers in [`crate::tls`] apply them at every
//! handshake; components also re-apply them to live connections when their
//! trust changes (a zone revoked or re-joined, a root retired).
//!
//! | issuer | may issue |
//! |---|---|
//! | a mesh root | zone intermediates (path length 0), and identities outside every zone (`spiffe://TD/global`) |
//! | zone Z's intermediate (`spiffe://TD/zone/Z`) | only identities strictly below `spiffe://TD/zone/Z/` |
//! | anything else | nothing |
//!
//! A leaf is judged by its *direct* issuer: the mesh root, or the one
//! presented intermediate whose subject names the leaf's issuer and whose
//! key signed it. Where a member knows which zone intermediates are current
//! ([`ZoneCas::Only`]), an intermediate must also be on that list: that is
//! how a revoked or replaced zone CA stops being accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, Error as TlsError, RootCertStore};

use crate::pki::{self, PkiError};
use model::ident::SpiffeId;

/// Which zone intermediates a member accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneCas {
    /// Any intermediate the roots issued, if it is a zone CA (first contact,
    /// standalone proxies, and the global, which checks zones itself).
    Any,
    /// Only these, by SHA-256 fingerprint of the certificate, per zone.
    Only(BTreeMap<String, BTreeSet<String>>),
}

/// Who issued a verified leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Issuer {
    Root,
    Zone { zone: String, fingerprint: String },
}

/// A leaf that passed every rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub id: SpiffeId,
    pub issuer: Issuer,
}

/// What a member trusts: its trust domain, the mesh roots (more than one
/// while a root rotation overlaps), and which zone intermediates.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    trust_domain: String,
    roots: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
    /// Raw DER subjects of the roots, to spot root-issued leaves cheaply.
    root_subjects: Vec<Vec<u8>>,
    zones: ZoneCas,
}

fn invalid(msg: impl Into<String>) -> TlsError {
    TlsError::General(msg.into())
}

impl TrustPolicy {
    pub fn new(trust_domain: &str, roots: Vec<CertificateDer<'static>>, zones: ZoneCas) -> Self {
        let mut store = RootCertStore::empty();
        let mut root_subjects = Vec::new();
        for r in &roots {
            // A malformed root is skipped; verification then fails closed.
            if store.add(r.clone()).is_ok() {
                if let Ok(s) = pki::subject_raw(r) {
                    root_subjects.push(s);
                }
            }
        }
        Self {
            trust_domain: trust_domain.to_string(),
            roots,
            store: Arc::new(store),
            root_subjects,
            zones,
        }
    }

    pub fn from_pem(trust_domain: &str, roots_pem: &str, zones: ZoneCas) -> Result<Self, PkiError> {
        Ok(Self::new(
            trust_domain,
            pki::certs_from_pem(roots_pem)?,
            zones,
        ))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
    pub fn root_fingerprints(&self) -> Vec<String> {
        self.roots.iter().map(|r| pki::fingerprint(r)).collect()
    }
    pub fn zones(&self) -> &ZoneCas {
        &self.zones
    }
    /// The same roots with another zone list.
    pub fn with_zones(&self, zones: ZoneCas) -> Self {
        Self {
            zones,
            ..self.clone()
        }
    }

    /// Verify a presented chain (leaf first) at `now` and apply the rules.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Verified, TlsError> {
        let leaf = pki::LeafNames::parse(end_entity).map_err(|e| invalid(e.to_string()))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let algs = crate::tls::provider().signature_verification_algorithms.all;
        let chains_to = |via: &[CertificateDer<'_>]| {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &self.store,
                via,
                now,
                algs,
            )
        };
        let mut first_err = None;
        if self.root_subjects.contains(&leaf.issuer) {
            match chains_to(&[]) {
                Ok(()) => {
                    check_issuance(&self.trust_domain, &leaf.id, &IssuedBy::Root)
                        .map_err(invalid)?;
                    return Ok(Verified {
                        id: leaf.id,
                        issuer: Issuer::Root,
                    });
                }
                Err(e) => first_err = Some(e),
            }
        }
        // The direct issuer is the one candidate (subject = the leaf's issuer)
        // that verifies; the other candidates are left out so that it is
        // known which one did. Certificates with other subjects (a
        // cross-signed root) may complete the path above it.
        let subjects: Vec<Option<Vec<u8>>> = intermediates
            .iter()
            .map(|c| pki::subject_raw(c).ok())
            .collect();
        let is_candidate = |k: usize| subjects[k].as_deref() == Some(leaf.issuer.as_slice());
        for (k, i) in intermediates.iter().enumerate() {
            if !is_candidate(k) {
                continue;
            }
            let mut via = vec![i.clone()];
            via.extend(
                intermediates
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| !is_candidate(*j))
                    .map(|(_, c)| c.clone()),
            );
            match chains_to(&via) {
                Ok(()) => {
                    let ca = pki::spiffe_id_of(i).ok();
                    check_issuance(&self.trust_domain, &leaf.id, &IssuedBy::Intermediate(ca))
                        .map_err(invalid)?;
                    let zone = leaf.id.zone_name().unwrap_or_default().to_string();
                    let fingerprint = pki::fingerprint(i);
                    if let ZoneCas::Only(allowed) = &self.zones {
                        if !allowed.get(&zone).is_some_and(|s| s.contains(&fingerprint)) {
                            return Err(invalid(format!(
                                "{} was issued by a CA of zone {zone} that this mesh no longer \
                                 trusts (zone revoked or re-joined), or does not know yet \
                                 (CA {})",
                                leaf.id,
                                &fingerprint[..16]
                            )));
                        }
                    }
                    return Ok(Verified {
                        id: leaf.id,
                        issuer: Issuer::Zone { zone, fingerprint },
                    });
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )))
    }

    /// Re-check a live connection's chain (leaf first) against the policy now.
    pub fn verify_chain_now(&self, chain: &[CertificateDer<'_>]) -> Result<Verified, TlsError> {
        let (leaf, rest) = chain
            .split_first()
            .ok_or_else(|| invalid("no certificate"))?;
        self.verify(leaf, rest, UnixTime::now())
    }
}

/// The direct issuer of a leaf, as far as the rules care.
#[derive(Debug)]
pub enum IssuedBy {
    Root,
    /// A presented intermediate, with its SPIFFE ID when it has exactly one.
    Intermediate(Option<SpiffeId>),
}

/// The issuance rules (see the module docs), as a pure function.
pub fn check_issuance(td: &str, leaf: &SpiffeId, by: &IssuedBy) -> Result<(), String> {
    if leaf.trust_domain() != td {
        return Err(format!("identity {leaf} is outside trust domain {td}"));
    }
    match by {
        IssuedBy::Root => match leaf.zone_name() {
            None => Ok(()),
            Some(z) => Err(format!(
                "{leaf} is an identity of zone {z} but was issued by the mesh root; \
                 only zone {z}'s CA may issue it"
            )),
        },
        IssuedBy::Intermediate(None) => Err(format!(
            "{leaf} was issued by an intermediate that is not a Tern zone CA"
        )),
        IssuedBy::Intermediate(Some(ca)) => {
            let Some(zone) = ca.zone_ca_of().filter(|_| ca.trust_domain() == td) else {
                return Err(format!(
                    "{leaf} was issued by {ca}, which is not a zone CA of trust domain {td}"
                ));
            };
            if leaf.is_inside_zone(zone) {
                Ok(())
            } else {
                Err(format!(
                    "{leaf} was issued by the CA of zone {zone}, which may only issue \
                     identities under spiffe://{td}/zone/{zone}/"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests;
