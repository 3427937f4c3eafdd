use super::*;
use crate::membership::tests::{csr, fixture, fp, token};

/// A zone's NACK reason is kept (in the zone table and the store, for
/// `ternctl inspect zones`) cut to MAX_NACK_REASON_BYTES with an
/// ellipsis: a 100 KiB reason is not kept whole. Uncut, each NACK
/// stored and logged the zone's text in full.
#[test]
fn a_zones_nack_reason_is_stored_cut() {
    let f = fixture("sync-nack-reason");
    let st = &f.st;
    let (t, _) = token(st, "eu-1", "join");
    let issuer = fp(&membership::join(st, "eu-1", &t, &csr())
        .unwrap()
        .intermediate_pem);
    let (out, _rx) = mpsc::channel(4);
    let (session, _) = st.zones.begin("eu-1", &pb::ZoneHello::default(), out);
    let mut sender = DeltaSender::new(0, std::time::Duration::from_secs(30));
    sender.sent(3, Instant::now());
    let nack = pb::ZoneMessage {
        msg: Some(zone_message::Msg::Nack(pb::Nack {
            version: 3,
            reason: "x".repeat(100 * 1024),
        })),
    };
    let asm = &mut Assembler::default();
    handle(st, "eu-1", session, &issuer, (&mut sender, asm), nack).unwrap();
    let stored = st.store.zone("eu-1").unwrap().unwrap().last_nack.unwrap();
    assert_eq!(stored.len(), MAX_NACK_REASON_BYTES);
    assert!(
        stored.starts_with("xxx") && stored.ends_with('…'),
        "{stored:.40}"
    );
    let live = st.zones.snapshot()["eu-1"].last_nack.clone().unwrap();
    assert_eq!(live, (3, stored));
}

/// A zone's report in chunks is judged once its last chunk is in, as
/// one message; one whose chunks together exceed the bounds (60,000
/// endpoints) is refused for its zone alone at the chunk that crosses
/// them. Here us-1's chunks are interleaved with eu-1's and with other
/// messages: us-1's report is published whole, eu-1 is told why its
/// report was refused, and nothing of eu-1's is published. Judged
/// chunk by chunk (before), each zone published its first chunk's
/// services at once, a part of its report, and eu-1's part stayed.
#[test]
fn a_chunked_report_over_the_bounds_is_refused_for_its_zone_alone() {
    let f = fixture("sync-chunked-inventory");
    let st = &f.st;
    let td = st.config.trust_domain.clone();
    let mut sessions = Vec::new();
    for zone in ["eu-1", "us-1"] {
        let (t, _) = token(st, zone, "join");
        let issuer = fp(&membership::join(st, zone, &t, &csr())
            .unwrap()
            .intermediate_pem);
        let (out, rx) = mpsc::channel(4);
        let (session, _) = st.zones.begin(zone, &pb::ZoneHello::default(), out);
        let sender = DeltaSender::new(0, std::time::Duration::from_secs(30));
        sessions.push((zone, session, issuer, sender, Assembler::default(), rx));
    }
    let report = |zone: &str, services: usize, endpoints: usize| -> Vec<pb::ZoneMessage> {
        let inv = pb::Inventory {
            full: true,
            last_chunk: true,
            region: "eu".into(),
            connected_proxies: 3,
            upserts: (0..services)
                .map(|i| pb::ServiceInventory {
                    name: format!("svc-{i}"),
                    endpoints: vec![
                        pb::Endpoint {
                            address: "10.0.0.1".into(),
                            port: 15006,
                            healthy: true,
                            zone: zone.into(),
                            identity: format!("spiffe://{td}/zone/{zone}/svc/svc-{i}"),
                            protocol: "http".into(),
                            ..Default::default()
                        };
                        endpoints
                    ],
                })
                .collect(),
            ..Default::default()
        };
        proto::inventory::split(inv, 1024 * 1024)
            .into_iter()
            .map(|c| pb::ZoneMessage {
                msg: Some(zone_message::Msg::Inventory(c)),
            })
            .collect()
    };
    let eu = report("eu-1", 6, 10_000);
    let us = report("us-1", 2, 20_000);
    assert!(
        eu.len() > 2 && us.len() > 2,
        "{} and {}",
        eu.len(),
        us.len()
    );
    let traffic = || pb::ZoneMessage {
        msg: Some(zone_message::Msg::Traffic(pb::ZoneTraffic::default())),
    };
    let ingress = |zone: &str| st.store.get("ZoneIngress", zone).unwrap();
    let mut replies: [Vec<pb::GlobalMessage>; 2] = Default::default();
    let (mut eu, mut us) = (eu.into_iter(), us.into_iter().peekable());
    loop {
        let mut fed = false;
        for (k, m) in [(0, eu.next()), (0, Some(traffic())), (1, us.next())] {
            let Some(m) = m else { continue };
            fed |= k == 1 || matches!(m.msg, Some(zone_message::Msg::Inventory(_)));
            let (zone, session, issuer, sender, asm, _) = &mut sessions[k];
            let r = handle(st, zone, *session, issuer, (sender, asm), m).unwrap();
            replies[k].extend(r);
        }
        if us.peek().is_some() {
            assert!(ingress("us-1").is_none(), "published before its last chunk");
        }
        if !fed {
            break;
        }
    }
    let refusals: Vec<String> = replies[0]
        .iter()
        .filter_map(|m| match &m.msg {
            Some(pb::global_message::Msg::InventoryRefused(r)) => Some(r.reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("more than 50000 endpoints"),
        "{refusals:?}"
    );
    assert!(ingress("eu-1").is_none());
    let live = st.zones.snapshot();
    assert!(live["eu-1"].inventory_refused.is_some());
    assert!(replies[1].is_empty());
    let spec = ZoneIngressSpec::from_resource(&ingress("us-1").unwrap().resource).unwrap();
    assert_eq!(spec.services.len(), 2);
    assert!(spec.services.values().all(|s| s.healthy == 20_000));
    assert_eq!(live["us-1"].inventory_refused, None);
    assert_eq!(live["us-1"].connected_proxies, 3);
    assert_eq!(live["us-1"].services["svc-1"], 20_000);
}

/// A revoked zone's inventory does not re-publish its ingress: the
/// zone's authorization is checked in the transaction that writes its
/// `ZoneIngress`, so a report handled after the revocation committed
/// (before the session noticed it) writes nothing. Unchecked, the
/// ingress the revocation withdrew was written again.
#[test]
fn an_inventory_after_a_revocation_does_not_republish_the_zones_ingress() {
    let f = fixture("sync-revoked-inventory");
    let st = &f.st;
    let (t, jti) = token(st, "eu-1", "join");
    let issuer = fp(&membership::join(st, "eu-1", &t, &csr())
        .unwrap()
        .intermediate_pem);
    let (out, _rx) = mpsc::channel(4);
    let (session, _) = st.zones.begin("eu-1", &pb::ZoneHello::default(), out);
    let inv = pb::Inventory {
        full: true,
        region: "eu".into(),
        last_chunk: true,
        ..Default::default()
    };
    let ingress = || st.store.get("ZoneIngress", "eu-1").unwrap();
    // A member's report is published.
    let asm = &mut Assembler::default();
    assert!(on_inventory(st, "eu-1", session, &issuer, asm, inv.clone()).is_none());
    assert!(ingress().is_some());
    let now = token::now_unix();
    st.store
        .transact(|tx| {
            tx.put(
                Resource {
                    api_version: model::resource::API_VERSION.into(),
                    kind: "Revocation".into(),
                    metadata: model::resource::Metadata {
                        name: jti.clone(),
                        ..Default::default()
                    },
                    spec: serde_json::json!({ "revokedAt": token::fmt_unix(now) }),
                },
                &token::fmt_unix(now),
            )?;
            membership::on_revoked(tx, &jti, now)
        })
        .unwrap();
    assert!(ingress().is_none(), "the revocation withdrew it");
    // The session has not closed yet; its next report changes nothing.
    on_inventory(st, "eu-1", session, &issuer, asm, inv);
    assert!(ingress().is_none(), "a revoked zone's ingress came back");
}
