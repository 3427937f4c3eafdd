//! Every trust rule, each with a certificate made to break it, through the
//! policy and through the three rustls verifiers that apply it.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;

use super::*;
use crate::pki::{self, Ca};
use crate::tls::{Expect, PinnedCaVerifier, SpiffeClientVerifier, SpiffeServerVerifier};

const TD: &str = "tern";
const HOUR: Duration = Duration::from_secs(3600);

struct Mesh {
    root: Ca,
    za: Ca,
    zb: Ca,
}

fn zone_ca(root: &Ca, zone: &str) -> Ca {
    let kc = pki::new_key_and_csr("zone").unwrap();
    let pem = root
        .sign_intermediate(&kc.csr_pem, &SpiffeId::zone(TD, zone), HOUR)
        .unwrap();
    Ca::from_pem(&pem, &kc.key_pem).unwrap()
}

fn mesh() -> Mesh {
    crate::tls::install_provider();
    let root = Ca::new_root(TD, HOUR).unwrap();
    let za = zone_ca(&root, "a");
    let zb = zone_ca(&root, "b");
    Mesh { root, za, zb }
}

fn der(pem: &str) -> CertificateDer<'static> {
    pki::first_cert(pem).unwrap()
}

fn leaf_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "leaf");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
        .collect();
    p.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(1);
    p.not_after = now + time::Duration::hours(1);
    p
}

/// A leaf signed by `ca` with exactly these URI SANs.
fn leaf(ca: &Ca, uris: &[&str]) -> CertificateDer<'static> {
    leaf_with(ca, leaf_params(uris))
}

fn leaf_with(ca: &Ca, params: CertificateParams) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    der(&ca.sign_params(params, &key).unwrap())
}

fn policy(m: &Mesh, zones: ZoneCas) -> TrustPolicy {
    TrustPolicy::new(TD, vec![m.root.cert_der().unwrap()], zones)
}

fn only(entries: &[(&str, &Ca)]) -> ZoneCas {
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (z, ca) in entries {
        map.entry(z.to_string())
            .or_default()
            .insert(ca.fingerprint().unwrap());
    }
    ZoneCas::Only(map)
}

fn verify(
    p: &TrustPolicy,
    leaf: &CertificateDer<'static>,
    via: &[&Ca],
) -> Result<Verified, String> {
    let inter: Vec<CertificateDer<'static>> = via.iter().map(|c| c.cert_der().unwrap()).collect();
    p.verify(leaf, &inter, UnixTime::now())
        .map_err(|e| e.to_string())
}

fn refused_by<T>(r: Result<T, rustls::Error>, why: &str) {
    match r {
        Ok(_) => panic!("accepted but must refuse ({why})"),
        Err(e) => assert!(e.to_string().contains(why), "refusal {e:?} lacks {why:?}"),
    }
}

fn refused(r: Result<Verified, String>, why: &str) {
    match r {
        Ok(v) => panic!("accepted {} but must refuse ({why})", v.id),
        Err(e) => assert!(e.contains(why), "refusal {e:?} lacks {why:?}"),
    }
}

#[test]
fn a_zone_ca_issues_identities_inside_its_zone() {
    let m = mesh();
    let p = policy(&m, ZoneCas::Any);
    let v = verify(
        &p,
        &leaf(&m.za, &["spiffe://tern/zone/a/svc/web"]),
        &[&m.za],
    )
    .unwrap();
    assert_eq!(v.id.as_str(), "spiffe://tern/zone/a/svc/web");
    assert_eq!(
        v.issuer,
        Issuer::Zone {
            zone: "a".into(),
            fingerprint: m.za.fingerprint().unwrap()
        }
    );
    // Extra certificates in the chain do not change who the issuer is.
    let v = verify(
        &p,
        &leaf(&m.za, &["spiffe://tern/zone/a/cp"]),
        &[&m.zb, &m.za, &m.root],
    )
    .unwrap();
    assert!(matches!(v.issuer, Issuer::Zone { ref zone, .. } if zone == "a"));
}

#[test]
fn a_zone_ca_cannot_mint_the_global_or_anything_outside_its_zone() {
    let m = mesh();
    let p = policy(&m, ZoneCas::Any);
    let za = |uri: &str| verify(&p, &leaf(&m.za, &[uri]), &[&m.za]);
    refused(za("spiffe://tern/global"), "issued by the CA of zone a");
    refused(
        za("spiffe://tern/zone/b/svc/web"),
        "issued by the CA of zone a",
    );
    refused(za("spiffe://tern/zone/b/cp"), "issued by the CA of zone a");
    refused(
        za("spiffe://tern/ns/default/sa/x"),
        "issued by the CA of zone a",
    );
    refused(za("spiffe://tern/zone/a"), "issued by the CA of zone a");
    refused(za("spiffe://tern"), "issued by the CA of zone a");
    refused(
        za("spiffe://other/zone/a/svc/web"),
        "outside trust domain tern",
    );
}

#[test]
fn the_mesh_root_issues_the_global_but_no_zone_identity() {
    let m = mesh();
    let p = policy(&m, ZoneCas::Any);
    let v = verify(&p, &leaf(&m.root, &["spiffe://tern/global"]), &[]).unwrap();
    assert_eq!(
        (v.id.as_str(), v.issuer),
        ("spiffe://tern/global", Issuer::Root)
    );
    // The global's chain carries the root itself; still root-issued.
    let v = verify(&p, &leaf(&m.root, &["spiffe://tern/global"]), &[&m.root]).unwrap();
    assert_eq!(v.issuer, Issuer::Root);
    refused(
        verify(&p, &leaf(&m.root, &["spiffe://tern/zone/a/svc/web"]), &[]),
        "issued by the mesh root",
    );
    refused(
        verify(&p, &leaf(&m.root, &["spiffe://tern/zone/a/cp"]), &[&m.za]),
        "issued by the mesh root",
    );
}

#[test]
fn a_leaf_must_name_exactly_one_well_formed_spiffe_id() {
    let m = mesh();
    let p = policy(&m, ZoneCas::Any);
    refused(
        verify(
            &p,
            &leaf(
                &m.za,
                &["spiffe://tern/zone/a/svc/web", "spiffe://tern/global"],
            ),
            &[&m.za],
        ),
        "exactly one URI SAN",
    );
    refused(
        verify(
            &p,
            &leaf(&m.za, &["spiffe://tern/zone/a/svc/web", "https://x"]),
            &[&m.za],
        ),
        "exactly one URI SAN",
    );
    refused(verify(&p, &leaf(&m.za, &[]), &[&m.za]), "SPIFFE");
    refused(
        verify(&p, &leaf(&m.za, &["https://tern/zone/a/svc/web"]), &[&m.za]),
        "invalid SPIFFE ID",
    );
    refused(
        verify(
            &p,
            &leaf(&m.za, &["spiffe://tern/zone/a/../b/svc/web"]),
            &[&m.za],
        ),
        "invalid SPIFFE ID",
    );
}

#[test]
fn the_issuer_is_the_certificate_whose_key_signed_the_leaf() {
    let m = mesh();
    let p = policy(&m, ZoneCas::Any);
    // Zone a's key signs a leaf for zone b whose issuer *name* is zone b's
    // CA: the presented zone-b CA does not verify it.
    let forger = Ca::from_pem(m.zb.cert_pem(), &m.za.key_pem()).unwrap();
    let forged = leaf(&forger, &["spiffe://tern/zone/b/svc/web"]);
    refused(verify(&p, &forged, &[&m.zb, &m.za]), "BadSignature");
    // An intermediate the root did not issue: another mesh's zone CA, with
    // the same names as ours (same trust domain and zone).
    let other_root = Ca::new_root(TD, HOUR).unwrap();
    let other_a = zone_ca(&other_root, "a");
    refused(
        verify(
            &p,
            &leaf(&other_a, &["spiffe://tern/zone/a/svc/web"]),
            &[&other_a],
        ),
        "BadSignature",
    );
    // Another mesh's root, and no chain at all.
    refused(
        verify(&p, &leaf(&other_root, &["spiffe://tern/global"]), &[]),
        "BadSignature",
    );
    refused(
        verify(&p, &leaf(&m.za, &["spiffe://tern/zone/a/svc/web"]), &[]),
        "UnknownIssuer",
    );
}

#[test]
fn an_intermediate_must_be_a_zone_ca_and_cannot_delegate() {
    let m = mesh();
    let p = policy(&m, ZoneCas::Any);
    // A CA the root issued that is not a zone CA (no SPIFFE ID).
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "not a zone CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let now = time::OffsetDateTime::now_utc();
    ca_params.not_before = now - time::Duration::minutes(1);
    ca_params.not_after = now + time::Duration::hours(1);
    let k = KeyPair::generate().unwrap();
    let odd = Ca::from_pem(
        &m.root.sign_params(ca_params.clone(), &k).unwrap(),
        &k.serialize_pem(),
    )
    .unwrap();
    refused(
        verify(&p, &leaf(&odd, &["spiffe://tern/zone/a/svc/web"]), &[&odd]),
        "not a Tern zone CA",
    );
    // An intermediate whose SPIFFE ID is not a zone CA's.
    ca_params.subject_alt_names = vec![SanType::URI(
        "spiffe://tern/zone/a/svc/web"
            .to_string()
            .try_into()
            .unwrap(),
    )];
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "x");
    let k = KeyPair::generate().unwrap();
    let odd = Ca::from_pem(
        &m.root.sign_params(ca_params, &k).unwrap(),
        &k.serialize_pem(),
    )
    .unwrap();
    refused(
        verify(&p, &leaf(&odd, &["spiffe://tern/zone/a/svc/web"]), &[&odd]),
        "which is not a zone CA",
    );
    // Zone a's CA (path length 0) signs a sub-CA: its leaves are refused.
    let mut sub = CertificateParams::default();
    sub.distinguished_name.push(DnType::CommonName, "sub");
    sub.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    sub.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    sub.subject_alt_names = vec![SanType::URI(
        "spiffe://tern/zone/a".to_string().try_into().unwrap(),
    )];
    sub.not_before = now - time::Duration::minutes(1);
    sub.not_after = now + time::Duration::hours(1);
    let k = KeyPair::generate().unwrap();
    let sub = Ca::from_pem(&m.za.sign_params(sub, &k).unwrap(), &k.serialize_pem()).unwrap();
    refused(
        verify(
            &p,
            &leaf(&sub, &["spiffe://tern/zone/a/svc/web"]),
            &[&sub, &m.za],
        ),
        "PathLenConstraintViolated",
    );
}

#[test]
fn a_ca_certificate_is_not_a_leaf_and_expired_certificates_are_refused() {
    let m = mesh();
    let p = policy(&m, ZoneCas::Any);
    refused(
        verify(&p, &m.za.cert_der().unwrap(), &[]),
        "CaUsedAsEndEntity",
    );
    let mut old = leaf_params(&["spiffe://tern/zone/a/svc/web"]);
    let now = time::OffsetDateTime::now_utc();
    old.not_before = now - time::Duration::hours(3);
    old.not_after = now - time::Duration::hours(2);
    refused(verify(&p, &leaf_with(&m.za, old), &[&m.za]), "expired");
    let expired_ca = {
        let kc = pki::new_key_and_csr("zone").unwrap();
        let pem = m
            .root
            .sign_intermediate(
                &kc.csr_pem,
                &SpiffeId::zone(TD, "a"),
                Duration::from_secs(1),
            )
            .unwrap();
        Ca::from_pem(&pem, &kc.key_pem).unwrap()
    };
    // A minute later the leaf is still valid, but its CA is not.
    let l = leaf(&expired_ca, &["spiffe://tern/zone/a/svc/web"]);
    let later = UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            + Duration::from_secs(60),
    );
    let err = p
        .verify(&l, &[expired_ca.cert_der().unwrap()], later)
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn only_listed_zone_cas_are_accepted() {
    let m = mesh();
    let a = leaf(&m.za, &["spiffe://tern/zone/a/svc/web"]);
    assert!(verify(&policy(&m, only(&[("a", &m.za)])), &a, &[&m.za]).is_ok());
    // Zone a re-joined: its old CA is no longer listed.
    let za2 = zone_ca(&m.root, "a");
    refused(
        verify(&policy(&m, only(&[("a", &za2)])), &a, &[&m.za]),
        "no longer trusts",
    );
    // Zone a revoked: not listed at all.
    refused(
        verify(&policy(&m, only(&[("b", &m.zb)])), &a, &[&m.za]),
        "no longer trusts",
    );
    // During a CA renewal both of a zone's CAs are listed.
    let both = policy(&m, only(&[("a", &m.za), ("a", &za2)]));
    assert!(verify(&both, &a, &[&m.za]).is_ok());
    assert!(verify(
        &both,
        &leaf(&za2, &["spiffe://tern/zone/a/svc/web"]),
        &[&za2]
    )
    .is_ok());
    // A zone's listing does not vouch for another zone's identities.
    refused(
        verify(
            &both,
            &leaf(&m.za, &["spiffe://tern/zone/b/svc/web"]),
            &[&m.za],
        ),
        "issued by the CA of zone a",
    );
    // Root-issued identities do not depend on the zone list.
    let g = leaf(&m.root, &["spiffe://tern/global"]);
    assert!(verify(&policy(&m, ZoneCas::Only(BTreeMap::new())), &g, &[]).is_ok());
}

#[test]
fn during_a_root_rotation_both_roots_are_trusted() {
    let m = mesh();
    let r2 = Ca::new_root(TD, HOUR).unwrap();
    let z2 = zone_ca(&r2, "a");
    let both = TrustPolicy::new(
        TD,
        vec![m.root.cert_der().unwrap(), r2.cert_der().unwrap()],
        ZoneCas::Any,
    );
    assert!(verify(
        &both,
        &leaf(&m.za, &["spiffe://tern/zone/a/svc/x"]),
        &[&m.za]
    )
    .is_ok());
    assert!(verify(&both, &leaf(&z2, &["spiffe://tern/zone/a/svc/x"]), &[&z2]).is_ok());
    assert!(verify(&both, &leaf(&r2, &["spiffe://tern/global"]), &[]).is_ok());
    let old_only = policy(&m, ZoneCas::Any);
    refused(
        verify(
            &old_only,
            &leaf(&z2, &["spiffe://tern/zone/a/svc/x"]),
            &[&z2],
        ),
        "BadSignature",
    );
}

#[test]
fn verifiers_apply_the_rules() {
    let m = mesh();
    let now = UnixTime::now();
    let p = Arc::new(policy(&m, ZoneCas::Any));
    let forged_global = leaf(&m.za, &["spiffe://tern/global"]);
    let za = [m.za.cert_der().unwrap()];
    let za_and_root = [m.za.cert_der().unwrap(), m.root.cert_der().unwrap()];
    let sni = crate::tls::sni();

    // A client that expects the global refuses a zone-minted global.
    let server_v = SpiffeServerVerifier::new(p.clone(), Expect::Exact(SpiffeId::global(TD)));
    refused_by(
        server_v.verify_server_cert(&forged_global, &za, &sni, &[], now),
        "spiffe://tern/global was issued by the CA of zone a",
    );
    let real_global = leaf(&m.root, &["spiffe://tern/global"]);
    assert!(server_v
        .verify_server_cert(&real_global, &[], &sni, &[], now)
        .is_ok());
    // ... and the expected identity is enforced.
    let web = leaf(&m.za, &["spiffe://tern/zone/a/svc/web"]);
    refused_by(
        server_v.verify_server_cert(&web, &za, &sni, &[], now),
        "is not the expected spiffe://tern/global",
    );

    // First contact with only the root's fingerprint from a token.
    let pin = m.root.fingerprint().unwrap();
    let pinned = PinnedCaVerifier::new(&pin, Expect::Exact(SpiffeId::global(TD)));
    refused_by(
        pinned.verify_server_cert(&forged_global, &za_and_root, &sni, &[], now),
        "spiffe://tern/global was issued by the CA of zone a",
    );
    assert!(pinned
        .verify_server_cert(&real_global, &[m.root.cert_der().unwrap()], &sni, &[], now)
        .is_ok());
    let err = pinned
        .verify_server_cert(&real_global, &[], &sni, &[], now)
        .unwrap_err();
    assert!(err.to_string().contains("pinned fingerprint"), "{err}");
    let cp = leaf(&m.za, &["spiffe://tern/zone/a/cp"]);
    let pinned_cp = PinnedCaVerifier::new(&pin, Expect::Exact(SpiffeId::zone_cp(TD, "a")));
    assert!(pinned_cp
        .verify_server_cert(&cp, &za_and_root, &sni, &[], now)
        .is_ok());
    let cp_b = leaf(&m.za, &["spiffe://tern/zone/b/cp"]);
    let pinned_cp_b = PinnedCaVerifier::new(&pin, Expect::Exact(SpiffeId::zone_cp(TD, "b")));
    refused_by(
        pinned_cp_b.verify_server_cert(&cp_b, &za_and_root, &sni, &[], now),
        "spiffe://tern/zone/b/cp was issued by the CA of zone a",
    );

    // A server (sidecar inbound, gateway) refuses a zone-minted caller
    // outside the zone, and honours the zone list.
    let client_v = SpiffeClientVerifier::new(p.clone());
    assert!(client_v.verify_client_cert(&web, &za, now).is_ok());
    refused_by(
        client_v.verify_client_cert(&forged_global, &za, now),
        "spiffe://tern/global was issued by the CA of zone a",
    );
    let b_by_a = leaf(&m.za, &["spiffe://tern/zone/b/svc/web"]);
    refused_by(
        client_v.verify_client_cert(&b_by_a, &za, now),
        "spiffe://tern/zone/b/svc/web was issued by the CA of zone a",
    );
    let listed = SpiffeClientVerifier::new(Arc::new(policy(&m, only(&[("b", &m.zb)]))));
    refused_by(
        listed.verify_client_cert(&web, &za, now),
        "that this mesh no longer trusts",
    );
}

#[test]
fn the_rules_as_a_table() {
    let id = |s: &str| SpiffeId::parse(s).unwrap();
    let ca = |z: &str| IssuedBy::Intermediate(Some(SpiffeId::zone(TD, z)));
    let cases: &[(&str, IssuedBy, bool)] = &[
        ("spiffe://tern/global", IssuedBy::Root, true),
        ("spiffe://tern/ns/x/sa/y", IssuedBy::Root, true),
        ("spiffe://tern/zone/a/svc/x", IssuedBy::Root, false),
        ("spiffe://tern/zone/a/svc/x", ca("a"), true),
        ("spiffe://tern/zone/a/cp", ca("a"), true),
        ("spiffe://tern/zone/a/gateway", ca("a"), true),
        ("spiffe://tern/zone/a", ca("a"), false),
        ("spiffe://tern/zone/b/svc/x", ca("a"), false),
        ("spiffe://tern/global", ca("a"), false),
        ("spiffe://other/zone/a/svc/x", ca("a"), false),
        (
            "spiffe://tern/zone/a/svc/x",
            IssuedBy::Intermediate(Some(SpiffeId::parse("spiffe://other/zone/a").unwrap())),
            false,
        ),
        (
            "spiffe://tern/zone/a/svc/x",
            IssuedBy::Intermediate(Some(SpiffeId::zone_cp(TD, "a"))),
            false,
        ),
        (
            "spiffe://tern/zone/a/svc/x",
            IssuedBy::Intermediate(None),
            false,
        ),
    ];
    for (leaf, by, ok) in cases {
        let r = check_issuance(TD, &id(leaf), by);
        assert_eq!(r.is_ok(), *ok, "{leaf} issued by {by:?}: {r:?}");
    }
}
