//! Membership rules against a real store (SQLite in a temporary folder).

use std::sync::Arc;

use clap::Parser;
use model::resource::Metadata;
use model::token::TokenKind;

use super::*;
use crate::authority::Authority;
use crate::store::Store;
use crate::sync::Metrics;
use crate::zones::ZoneTable;
use crate::Config;

/// A global's state over a fresh store; the folder is removed on drop.
/// Shared with the crate's other tests (`crate::membership::tests::fixture`).
pub(crate) struct Fixture {
    pub(crate) st: Arc<State>,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn fixture(name: &str) -> Fixture {
    common::tls::install_provider();
    let dir = std::env::temp_dir().join(format!("tern-membership-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    model::fsutil::private_dir(&dir, &[]).unwrap();
    let config = Config::parse_from([
        "global-cp",
        "--data-dir",
        dir.to_str().unwrap(),
        "--zone-ca-validity",
        "1h",
    ]);
    let store = Store::open(&dir.join("global.db")).unwrap();
    let authority = Authority::load_or_init(&store, &config).unwrap();
    let mut reg = prometheus_client::registry::Registry::default();
    let st = Arc::new(State {
        _data_lock: model::fsutil::lock_dir(&dir).unwrap(),
        store,
        authority,
        zones: ZoneTable::default(),
        metrics: Metrics::new(&mut reg),
        traffic: Default::default(),
        drills: Default::default(),
        config,
    });
    Fixture { st, dir }
}

pub(crate) fn token(st: &State, zone: &str, purpose: &str) -> (String, String) {
    let (t, c) = st
        .authority
        .issue_token(
            &st.store,
            TokenKind::Zone,
            zone,
            None,
            Duration::from_secs(3600),
            "127.0.0.1:5685",
            purpose,
            None,
        )
        .unwrap();
    (t, c.jti)
}

pub(crate) fn csr() -> String {
    pki::new_key_and_csr("zone").unwrap().csr_pem
}

fn listed(st: &State, zone: &str) -> Vec<String> {
    st.store
        .get("ZoneCa", zone)
        .unwrap()
        .and_then(|s| ZoneCaSpec::from_resource(&s.resource))
        .map(|s| s.certificates.into_iter().map(|c| c.fingerprint).collect())
        .unwrap_or_default()
}

pub(crate) fn fp(pem: &str) -> String {
    pki::pem_fingerprint(pem).unwrap()
}

fn denied_with(r: Result<Admitted, Refused>, why: &str) {
    match r {
        Ok(_) => panic!("admitted, but must refuse ({why})"),
        Err(Refused::Denied(m)) => assert!(m.contains(why), "{m:?} lacks {why:?}"),
        Err(e) => panic!("refused with {e}, not a denial with {why:?}"),
    }
}

#[test]
fn a_zone_token_joins_once_and_only_a_rejoin_replaces_a_zone() {
    let f = fixture("once");
    let st = &f.st;
    let (t1, _) = token(st, "eu-1", "join");
    let c1 = csr();
    let first = join(st, "eu-1", &t1, &c1).unwrap();
    let fp1 = fp(&first.intermediate_pem);
    assert_eq!(listed(st, "eu-1"), vec![fp1.clone()]);
    assert!(authorized(st, "eu-1", &fp1).is_ok());
    assert!(st.store.get("Zone", "eu-1").unwrap().is_some());

    // The same zone-cp retrying (same token, same key) gets the same answer.
    let again = join(st, "eu-1", &t1, &c1).unwrap();
    assert_eq!(again.intermediate_pem, first.intermediate_pem);
    // A second party with the same token (another key) is refused.
    denied_with(
        join(st, "eu-1", &t1, &csr()),
        "already used to join zone eu-1",
    );
    // A fresh token for a joined zone is refused too.
    let (t2, _) = token(st, "eu-1", "join");
    denied_with(join(st, "eu-1", &t2, &csr()), "has already joined");
    assert_eq!(listed(st, "eu-1"), vec![fp1.clone()], "nothing changed");

    // An admin-authorized re-join replaces the CA: the old one is no
    // longer trusted, anywhere.
    let (t3, _) = token(st, "eu-1", "rejoin");
    let second = join(st, "eu-1", &t3, &csr()).unwrap();
    let fp2 = fp(&second.intermediate_pem);
    assert_eq!(listed(st, "eu-1"), vec![fp2.clone()]);
    let why = authorized(st, "eu-1", &fp1).unwrap_err();
    assert!(why.contains("no longer trusted"), "{why}");
    assert!(authorized(st, "eu-1", &fp2).is_ok());
    // The rejoin token is used up as well.
    denied_with(join(st, "eu-1", &t3, &csr()), "already used");
    let actions: Vec<String> = st
        .store
        .audit(10)
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert!(
        actions.contains(&"zone.rejoined".to_string()),
        "{actions:?}"
    );
    // Tokens for another zone, or of another kind, do not join.
    let (t4, _) = token(st, "eu-2", "join");
    denied_with(join(st, "eu-1", &t4, &csr()), "was issued for zone");
    for kind in [TokenKind::Dataplane, TokenKind::Gateway] {
        let (t5, _) = st
            .authority
            .issue_token(
                &st.store,
                kind,
                "eu-1",
                (kind == TokenKind::Dataplane).then_some("api"),
                Duration::from_secs(3600),
                "127.0.0.1:5685",
                "",
                None,
            )
            .unwrap();
        let Err(e) = join(st, "eu-1", &t5, &csr()) else {
            panic!("{kind:?} token joined");
        };
        let e = e.to_string();
        assert!(e.contains("a zone token is required"), "{kind:?}: {e}");
    }
}

#[test]
fn revoking_a_zone_withdraws_its_trust_at_once() {
    let f = fixture("revoke");
    let st = &f.st;
    let (t, jti) = token(st, "us-1", "join");
    let a = join(st, "us-1", &t, &csr()).unwrap();
    let fp1 = fp(&a.intermediate_pem);
    st.store
        .put(
            Resource {
                api_version: resource::API_VERSION.into(),
                kind: "ZoneIngress".into(),
                metadata: Metadata {
                    name: "us-1".into(),
                    ..Default::default()
                },
                spec: serde_json::json!({ "region": "us" }),
            },
            "now",
        )
        .unwrap();
    let zone = st
        .store
        .transact(|tx| {
            tx.put(
                system_resource(
                    "Revocation",
                    &jti,
                    serde_json::json!({ "revokedAt": "now" }),
                ),
                "now",
            )?;
            on_revoked(tx, &jti, token::now_unix())
        })
        .unwrap();
    assert_eq!(zone.as_deref(), Some("us-1"));
    assert!(listed(st, "us-1").is_empty(), "nobody trusts the zone's CA");
    assert!(st.store.get("ZoneCa", "us-1").unwrap().is_none());
    assert!(st.store.get("ZoneIngress", "us-1").unwrap().is_none());
    let why = authorized(st, "us-1", &fp1).unwrap_err();
    assert!(why.contains("has been revoked"), "{why}");
    // The zone can come back with a new token: nobody holds a trusted CA.
    let (t2, _) = token(st, "us-1", "join");
    let b = join(st, "us-1", &t2, &csr()).unwrap();
    assert!(authorized(st, "us-1", &fp(&b.intermediate_pem)).is_ok());
    // Revoking a token nobody joined with changes no zone.
    let (_, other) = token(st, "us-2", "join");
    let z = st.store.transact(|tx| on_revoked(tx, &other, 0)).unwrap();
    assert_eq!(z, None);
}

/// A join re-checks revocation and `enabled` in the transaction that
/// writes: a token revoked (or a zone disabled) after `join`'s first check
/// and before its transaction admits nothing. The revocation is written
/// between the two by running the transaction part (`join_in`) after it.
/// Without the re-check the zone joined with the revoked token and its CA
/// was published in `ZoneCa`, trusted mesh-wide.
#[test]
fn a_join_refuses_a_token_revoked_after_its_first_check() {
    let f = fixture("join-race");
    let st = &f.st;
    let now = token::now_unix();
    let join_now = |zone: &str, jti: &str| {
        let c = csr();
        let key_fp = pki::csr_key_fingerprint(&c).unwrap();
        st.store
            .transact(|tx| join_in(tx, st, zone, jti, &c, &key_fp, now))
    };
    let (_, jti) = token(st, "eu-1", "join");
    st.store
        .put(
            system_resource(
                "Revocation",
                &jti,
                serde_json::json!({ "revokedAt": "now" }),
            ),
            "now",
        )
        .unwrap();
    denied_with(join_now("eu-1", &jti), "has been revoked");
    assert!(st.store.get("ZoneCa", "eu-1").unwrap().is_none());
    assert!(st.store.zone("eu-1").unwrap().is_none());
    assert!(st.store.token(&jti).unwrap().unwrap().used_at.is_none());
    // The same for a zone disabled in between.
    let (_, jti2) = token(st, "eu-2", "join");
    st.store
        .put(
            system_resource("Zone", "eu-2", serde_json::json!({ "enabled": false })),
            "now",
        )
        .unwrap();
    denied_with(join_now("eu-2", &jti2), "disabled");
    assert!(st.store.get("ZoneCa", "eu-2").unwrap().is_none());
}

#[test]
fn renewal_keeps_the_ca_in_use_and_retires_the_rest() {
    let f = fixture("renew");
    let st = &f.st;
    let (t, _) = token(st, "ap-1", "join");
    let fp1 = fp(&join(st, "ap-1", &t, &csr()).unwrap().intermediate_pem);
    let fp2 = fp(&renew(st, "ap-1", &fp1, &csr(), &fp1).unwrap());
    assert_eq!(listed(st, "ap-1"), vec![fp2.clone(), fp1.clone()]);
    // The zone still syncs with its old identity, and with a new one.
    assert!(authorized(st, "ap-1", &fp1).is_ok());
    assert!(authorized(st, "ap-1", &fp2).is_ok());
    let fp3 = fp(&renew(st, "ap-1", &fp1, &csr(), &fp2).unwrap());
    assert_eq!(listed(st, "ap-1"), vec![fp3.clone(), fp2.clone()]);
    // Renewing from a CA that is no longer live is refused.
    match renew(st, "ap-1", &fp2, &csr(), &fp1) {
        Err(Refused::Denied(m)) => assert!(m.contains("not one of its live CAs"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A disabled zone can neither sync nor renew.
    st.store
        .put(
            system_resource("Zone", "ap-1", serde_json::json!({ "enabled": false })),
            "now",
        )
        .unwrap();
    assert!(authorized(st, "ap-1", &fp3)
        .unwrap_err()
        .contains("disabled"));
    let Err(e) = renew(st, "ap-1", &fp3, &csr(), &fp3) else {
        panic!("a disabled zone renewed its CA");
    };
    let e = e.to_string();
    assert!(e.contains("disabled"), "{e}");
    let (t2, _) = token(st, "ap-2", "join");
    st.store
        .put(
            system_resource("Zone", "ap-2", serde_json::json!({ "enabled": false })),
            "now",
        )
        .unwrap();
    denied_with(join(st, "ap-2", &t2, &csr()), "disabled");
}

#[test]
fn records_from_earlier_versions_are_brought_up_to_date() {
    let f = fixture("reconcile");
    let st = &f.st;
    // A zone that joined before CA records existed: no zone_cas row, token
    // not marked used.
    let (_, jti) = token(st, "old-1", "join");
    let fake_fp = "ab".repeat(32);
    st.store
        .transact(|tx| {
            tx.zone_joined(&crate::store::ZoneRecord {
                name: "old-1".into(),
                token_id: jti.clone(),
                intermediate_fingerprint: fake_fp.clone(),
                joined_at: token::now_unix(),
                ..Default::default()
            })
        })
        .unwrap();
    reconcile(st, Duration::from_secs(3600)).unwrap();
    assert_eq!(listed(st, "old-1"), vec![fake_fp.clone()]);
    assert!(authorized(st, "old-1", &fake_fp).is_ok());
    assert_eq!(
        st.store.token(&jti).unwrap().unwrap().used_by.as_deref(),
        Some("old-1")
    );
    // Running it again changes nothing.
    let rev = st.store.revision();
    reconcile(st, Duration::from_secs(3600)).unwrap();
    assert_eq!(st.store.revision(), rev);
}
