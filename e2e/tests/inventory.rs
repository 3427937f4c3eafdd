//! A zone's inventory report is bounded and may speak only for its own
//! zone; a bad one is refused for that zone alone and never stops sync for
//! the others. The bad reporter here is zone z1's own control-plane
//! identity (a compromised or broken zone-cp), speaking the real Sync
//! protocol to the real global.
mod support;

use std::sync::Arc;
use std::time::Duration;

use common::tls::{self, Expect, SpiffeServerVerifier};
use model::ident::SpiffeId;
use proto::v1 as pb;
use support::*;

const T: Duration = Duration::from_secs(30);

/// Connect to the global as `zone_data`'s zone-cp, send `inv`, and return
/// the reason of the InventoryRefused that comes back (or panic).
fn report_as_zone(
    g: &Global,
    zone_data: &std::path::Path,
    zone: &str,
    inv: pb::Inventory,
) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tls::install_provider();
        let (ident, policy) = zone_member(zone_data, &SpiffeId::zone_cp("tern", zone));
        let verifier = SpiffeServerVerifier::new(policy, Expect::Exact(SpiffeId::global("tern")));
        let cfg = tls::client_config(Some(&ident), Arc::new(verifier), &[tls::ALPN_H2]).unwrap();
        let channel = common::grpc::tls_channel(g.sync_addr().to_string(), Arc::new(cfg));
        let mut client = pb::global_sync_client::GlobalSyncClient::new(channel)
            .max_encoding_message_size(64 * 1024 * 1024)
            .max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let msg = |m| pb::ZoneMessage { msg: Some(m) };
        tx.send(msg(pb::zone_message::Msg::Hello(pb::ZoneHello {
            zone: zone.into(),
            resume_from: 0,
            instance_id: "bad-reporter".into(),
            software_version: "test".into(),
        })))
        .await
        .unwrap();
        tx.send(msg(pb::zone_message::Msg::Inventory(inv)))
            .await
            .unwrap();
        let mut inbound = client
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("the global accepts the session")
            .into_inner();
        let wait = async {
            loop {
                match inbound.message().await {
                    Ok(Some(pb::GlobalMessage {
                        msg: Some(pb::global_message::Msg::InventoryRefused(r)),
                    })) => return r.reason,
                    Ok(Some(_)) => continue,
                    other => panic!("the stream ended without a refusal: {other:?}"),
                }
            }
        };
        let reason = tokio::time::timeout(patient(T), wait)
            .await
            .expect("an InventoryRefused within the limit");
        drop(tx);
        reason
    })
}

/// A full report from a zone in region `eu`.
fn full_report(upserts: Vec<pb::ServiceInventory>, gateways: Vec<String>) -> pb::Inventory {
    pb::Inventory {
        full: true,
        upserts,
        region: "eu".into(),
        gateways,
        last_chunk: true,
        ..Default::default()
    }
}

fn services(zone: &str, n: usize) -> Vec<pb::ServiceInventory> {
    (0..n)
        .map(|i| pb::ServiceInventory {
            name: format!("svc-{i}"),
            endpoints: vec![pb::Endpoint {
                address: "10.0.0.1".into(),
                port: 15006,
                healthy: true,
                zone: zone.into(),
                identity: format!("spiffe://tern/zone/{zone}/svc/svc-{i}"),
                protocol: "http".into(),
                ..Default::default()
            }],
        })
        .collect()
}

/// z1 reports 8,000 services (the report that froze sync mesh-wide on the
/// previous main: every zone NACKed the oversized ZoneIngress), then its
/// own services but z2's gateway address. Both are refused, each with a
/// reason the global shows in z1's status; z1's published ZoneIngress stays
/// the one its real zone-cp reported; and z2 keeps syncing: a change made
/// afterwards reaches it with no NACK.
#[test]
fn a_zone_cannot_stop_sync_for_the_others_or_advertise_what_it_does_not_own() {
    let s = Scratch::new("inventory");
    let net = Net(54);
    let g = Global::start(&s.0, net);
    let mut z1 = ZoneCp::start(&s.0, net, 2, "z1", "eu", Some(&g.zone_token("z1")));
    let z2 = ZoneCp::start(&s.0, net, 3, "z2", "us", Some(&g.zone_token("z2")));
    let gw_t = g.token_file("gw-z2", &["generate", "gateway-token", "--zone", "z2"]);
    let gw2 = GatewayProc::start(&s.0, net, 32, &z2, &gw_t, &[]);
    let _api = Workload::start(&s.0, net, 11, "api", &z1, &g.dp_token("z1", "api"));
    let ingress = |zone: &str| -> serde_json::Value {
        let all: serde_json::Value =
            serde_json::from_str(&g.ctl(&["get", "zoneingresses", "-o", "json"])).unwrap();
        all["items"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["metadata"]["name"] == zone).cloned())
            .map(|r| r["spec"].clone())
            .unwrap_or_default()
    };
    wait_for("z1 publishes api, z2 its gateway", T, || {
        (ingress("z1")["services"].get("api").is_some()
            && ingress("z2")["gateways"]
                .as_array()
                .is_some_and(|a| !a.is_empty()))
        .then_some(())
    });
    let z1_before = ingress("z1");
    let z2_gateway = ingress("z2")["gateways"][0].as_str().unwrap().to_string();
    assert_eq!(z2_gateway, gw2.quic().to_string());
    // z1's zone-cp goes; its identity speaks instead.
    z1.proc.kill();
    let z1_data = s.path("zone-z1");

    let reason = report_as_zone(
        &g,
        &z1_data,
        "z1",
        full_report(services("z1", 8000), vec![]),
    );
    assert!(reason.contains("more than 2000 services"), "{reason}");
    let status = g.zone("z1").unwrap();
    assert!(
        status["inventoryRefused"]
            .as_str()
            .is_some_and(|r| r.contains("more than 2000 services")),
        "{status}"
    );

    let reason = report_as_zone(
        &g,
        &z1_data,
        "z1",
        full_report(services("z1", 3), vec![z2_gateway.clone()]),
    );
    assert!(reason.contains("published by another zone"), "{reason}");
    assert_eq!(ingress("z1"), z1_before, "z1's ZoneIngress is unchanged");

    // Sync goes on for z2: a change after the refusals reaches it.
    g.set_cert_ttl("2h");
    let want = g.zone("z2").unwrap()["globalVersion"].clone();
    wait_for("z2 acknowledges the change", T, || {
        g.zone("z2")
            .filter(|z| z["ackedVersion"] == z["globalVersion"] && z["globalVersion"] == want)
    });
    let z2_status = g.zone("z2").unwrap();
    assert!(z2_status["lastNack"].is_null(), "{z2_status}");
    assert!(z2.dump()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "Mesh/default"));
}
