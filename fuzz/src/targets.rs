//! The targets. Each drives its input through the code that handles that
//! input in the running components, then asserts what must hold for
//! whatever was accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::flow::FlowHeader;
use common::sync::{DeltaReceiver, DeltaSender, DiffSender, Outcome};
use model::ident::SpiffeId;
use model::resource;
use model::token::{self, TokenKind};
use prost::Message;
use proto::v1 as pb;

use crate::frames;
use crate::material::{self, TD, ZONE};

/// Far in the past of every seed's expiry, so signed seed tokens verify.
const NOW: u64 = 1_800_000_000;
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The flow header a gateway reads from a sidecar or another gateway:
/// whatever decodes re-encodes to bytes that decode to the same header,
/// and never to more than the limit.
pub fn flow_header(data: &[u8]) {
    let Ok(h) = FlowHeader::decode(data) else {
        return;
    };
    let bytes = h
        .encode()
        .expect("a header that decoded must encode (encode checks what decode checks)");
    assert!(bytes.len() <= common::flow::MAX_HEADER);
    assert_eq!(FlowHeader::decode(&bytes).as_ref(), Ok(&h));
}

/// A token as zones and the global read it: unverified claims (a zone's
/// first contact) and a signature check with the mesh's key, for every
/// kind. A token verifies only with the claims its payload holds.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let unverified = token::decode_unverified(text);
    let key = &material::get().token_public_key;
    for kind in [TokenKind::Zone, TokenKind::Dataplane, TokenKind::Gateway] {
        if let Ok(claims) = token::verify(text, key, kind, NOW) {
            assert_eq!(claims.kind, kind);
            assert!(claims.exp > NOW);
            assert_eq!(unverified.as_ref(), Ok(&claims));
            let _ = claims.check_scope(ZONE, Some(material::SERVICE));
        }
    }
}

/// `ternctl apply` input (YAML or JSON documents) and the admin API's JSON
/// bodies: an accepted resource survives a JSON round trip unchanged, and
/// passes the check every zone applies to what it receives.
pub fn resources(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(docs) = resource::parse_documents("fuzz.yaml", text) {
        for r in docs {
            round_trips(&r);
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(r) = resource::from_value(v) {
            round_trips(&r);
        }
    }
}

fn round_trips(r: &resource::Resource) {
    let v = serde_json::to_value(r).expect("a resource serializes");
    zone_cp::global_client::validate("", &v).expect("an accepted resource passes zone checks");
    assert_eq!(resource::from_value(v).as_ref(), Ok(r));
}

/// A sidecar's standalone bootstrap file (`--bootstrap`), checked for
/// nesting as the sidecar does before parsing.
pub fn bootstrap(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if resource::too_deep(text).is_some() {
        return;
    }
    if let Ok(b) = serde_yaml::from_str::<dataplane::Bootstrap>(text) {
        if let Some(i) = &b.inbound {
            let _ = dataplane::protocol::Protocol::parse(&i.protocol);
        }
    }
}

/// The state a sidecar keeps on disk (`--state-dir`), read back at start:
/// a state that installs leaves the proxy with trust, an identity and the
/// kept config.
pub fn proxy_state(data: &[u8]) {
    let shared = dataplane::state::Shared::new(dataplane::protocol::Protocol::Http1);
    if let Ok(Some(st)) = dataplane::last_known::install(data, "fuzz", TD, &shared) {
        assert!(shared.trust().is_some());
        assert!(st.trust.is_some());
    }
}

/// What a zone sends the global on its sync stream (after the hello):
/// ACKs, NACKs and inventory reports. An accepted report speaks only for
/// its own zone, and its `ZoneIngress` passes every other zone's check
/// (one zone must not be able to stop sync for the others).
pub fn zone_to_global(data: &[u8]) {
    let mut held = global_cp::inventory::Report::default();
    // Inventory messages are chunks of updates, joined as the global joins
    // them (`sync.rs`), then judged whole.
    let mut assembler = global_cp::inventory::Assembler::default();
    let others: BTreeSet<String> = ["127.0.2.5:4433".to_string()].into();
    let mut sender = DeltaSender::new(0, ACK_TIMEOUT);
    let now = Instant::now();
    let mut version = 0;
    for m in frames(data) {
        let Ok(m) = pb::ZoneMessage::decode(m) else {
            continue;
        };
        version += 1;
        sender.sent(version, now);
        match m.msg {
            Some(pb::zone_message::Msg::Ack(a)) => {
                let _ = sender.on_ack(a.version);
            }
            // Answers to the global's own questions; nothing to judge.
            Some(pb::zone_message::Msg::Explain(_)) => {}
            Some(pb::zone_message::Msg::Nack(n)) => {
                let _ = sender.on_nack(n.version, n.reason);
            }
            Some(pb::zone_message::Msg::Inventory(inv)) => {
                use global_cp::inventory::{Assembled, Verdict};
                let Some(update) = assembler.push(inv) else {
                    continue;
                };
                let full = match &update {
                    Assembled::Whole(inv) => inv.full,
                    Assembled::TooLarge { full, .. } => *full,
                };
                match update.judge(TD, ZONE, &held, || others.clone()) {
                    Verdict::Accept(report, ingress) => {
                        check_ingress(&report, &ingress, &others);
                        held = *report;
                    }
                    Verdict::Ignore => assert!(held.refused.is_some() && !full),
                    Verdict::Refuse(why) => held.refused = Some(why),
                }
            }
            Some(pb::zone_message::Msg::Hello(h)) => {
                let _ = resource::check_name("zone", &h.zone);
            }
            Some(pb::zone_message::Msg::RenewCa(r)) => {
                let _ = common::pki::csr_key_fingerprint(&r.csr_pem);
            }
            Some(pb::zone_message::Msg::Traffic(t)) => {
                // Bounded whatever a zone sends.
                let mesh = global_cp::traffic::MeshTraffic::default();
                mesh.record(ZONE, &t);
                let w = std::time::Duration::from_secs(60);
                assert!(mesh.services(w).len() <= global_cp::traffic::MAX_SERVICES);
                assert!(mesh.traffic(w).edges.len() <= global_cp::traffic::MAX_FLOWS);
            }
            None => {}
        }
    }
}

fn check_ingress(
    report: &global_cp::inventory::Report,
    ingress: &resource::Resource,
    others: &BTreeSet<String>,
) {
    assert_eq!(ingress.kind, "ZoneIngress");
    assert_eq!(ingress.metadata.name, ZONE);
    let v = serde_json::to_value(ingress).expect("an ingress serializes");
    assert!(v.to_string().len() <= resource::MAX_RESOURCE_BYTES);
    zone_cp::global_client::validate("", &v).expect("other zones accept an accepted ingress");
    let own = format!("{}/", SpiffeId::zone(TD, ZONE));
    for s in report.services.values() {
        for e in &s.endpoints {
            assert!(
                e.identity.starts_with(&own),
                "{} is not in {ZONE}",
                e.identity
            );
            assert!(e.zone.is_empty() || e.zone == ZONE);
            assert!(!e.via_gateway);
        }
    }
    assert!(report.gateways.iter().all(|g| !others.contains(g)));
}

/// What the global sends a zone: chunked deltas of resources, issued CAs,
/// inventory refusals. A delta applies whole or not at all, and what
/// applied holds only resources that pass the zone's checks.
pub fn global_to_zone(data: &[u8]) {
    let mut receiver = DeltaReceiver::new(0, BTreeMap::new());
    for m in frames(data) {
        let Ok(m) = pb::GlobalMessage::decode(m) else {
            continue;
        };
        match m.msg {
            Some(pb::global_message::Msg::Delta(d)) => {
                let before = receiver.clone();
                match receiver.on_chunk(
                    zone_cp::global_client::chunk_of(d),
                    zone_cp::global_client::validate,
                ) {
                    Err(_) => receiver = before,
                    Ok(Some(Outcome::Nack(..))) => {
                        assert_eq!(
                            receiver.state(),
                            before.state(),
                            "a NACKed delta changed the state"
                        );
                    }
                    Ok(Some(Outcome::Ack(v))) => {
                        assert_eq!(receiver.version(), v);
                        for (k, r) in receiver.state() {
                            zone_cp::global_client::validate(k, r)
                                .expect("applied state passes the zone's checks");
                        }
                    }
                    Ok(None) => {}
                }
            }
            Some(pb::global_message::Msg::CaIssued(c)) => {
                let _ = common::pki::certs_from_pem(&c.intermediate_pem);
                let _ = common::pki::certs_from_pem(&c.chain_extra_pem);
            }
            Some(pb::global_message::Msg::InventoryRefused(_))
            | Some(pb::global_message::Msg::Explain(_))
            | None => {}
        }
    }
}

/// What a proxy sends its zone-cp: the hello (token, registration, CSR),
/// later CSRs, ACKs and NACKs. A registration that passes validation names
/// a real service, address and port.
pub fn proxy_to_zone(data: &[u8]) {
    let m = material::get();
    let mut sender: DiffSender<u32> = DiffSender::new(ACK_TIMEOUT);
    let desired: std::sync::Arc<BTreeMap<String, u32>> =
        std::sync::Arc::new([("web".to_string(), 1)].into());
    let now = Instant::now();
    for f in frames(data) {
        let Ok(msg) = pb::ProxyMessage::decode(f) else {
            continue;
        };
        let _ = sender.next(&desired, now);
        match msg.msg {
            Some(pb::proxy_message::Msg::Hello(h)) => {
                if let Some(reg) = &h.registration {
                    if zone_cp::registration::validate(reg).is_ok() {
                        assert!(reg.address.parse::<std::net::IpAddr>().is_ok());
                        assert!((1..=65535).contains(&reg.inbound_port));
                        resource::check_name("", &reg.service)
                            .expect("a valid registration names a valid service");
                    }
                }
                let kind = match h.registration.as_ref().map(|r| r.kind.as_str()) {
                    Some("gateway") => TokenKind::Gateway,
                    _ => TokenKind::Dataplane,
                };
                let _ = token::verify(&h.token, &m.token_public_key, kind, NOW);
                if let Some(csr) = &h.csr {
                    let _ = common::pki::csr_key_fingerprint(&csr.csr_pem);
                }
            }
            Some(pb::proxy_message::Msg::Csr(c)) => {
                let _ = common::pki::csr_key_fingerprint(&c.csr_pem);
            }
            Some(pb::proxy_message::Msg::Traffic(t)) => {
                let zone = zone_cp::traffic::ZoneTraffic::new("z");
                zone.add("web", &t);
                let out = zone.take(&Default::default());
                assert!(out.flows.len() <= zone_cp::traffic::MAX_FLOWS);
                assert!(out
                    .flows
                    .iter()
                    .all(|f| f.source_service == "web" && f.source_zone == "z"));
            }
            Some(pb::proxy_message::Msg::Ack(a)) => {
                let _ = sender.on_ack(a.version);
            }
            Some(pb::proxy_message::Msg::Nack(n)) => {
                let _ = sender.on_nack(n.version, n.reason);
            }
            // A verdict only flips a flag of the sender's own registration.
            Some(pb::proxy_message::Msg::Health(_)) | None => {}
        }
    }
}

/// What a zone-cp sends a proxy: trust, certificates and configs. A config
/// the proxy ACKs must apply (a proxy never ACKs what it then fails to
/// serve), and a NACKed one changes nothing.
pub fn zone_to_proxy(data: &[u8]) {
    let m = material::get();
    let shared = dataplane::state::Shared::new(dataplane::protocol::Protocol::Http1);
    let mut receiver = DeltaReceiver::new(0, BTreeMap::new());
    for f in frames(data) {
        let Ok(msg) = pb::ZoneToProxy::decode(f) else {
            continue;
        };
        match msg.msg {
            Some(pb::zone_to_proxy::Msg::Trust(t)) => {
                if let Ok(p) = dataplane::cp_client::trust_policy(TD, &t) {
                    let _ = shared.set_trust(p);
                }
            }
            Some(pb::zone_to_proxy::Msg::Certificate(c)) => {
                if let Ok(ident) = common::tls::Identity::from_pem(&c.chain_pem, &m.key_pem) {
                    let _ = shared.set_identity(ident);
                }
            }
            Some(pb::zone_to_proxy::Msg::Config(c)) => {
                let before = receiver.clone();
                match receiver.on_chunk(
                    dataplane::cp_client::chunk_of(c),
                    dataplane::cp_client::validate_item,
                ) {
                    Ok(Some(Outcome::Ack(v))) => {
                        let (clusters, inbound) =
                            dataplane::cp_client::split_items(receiver.state().values());
                        shared
                            .apply(&clusters, inbound.as_ref(), v)
                            .expect("a config that passed validation applies");
                    }
                    Ok(Some(Outcome::Nack(..))) => {
                        assert_eq!(
                            receiver.state(),
                            before.state(),
                            "a NACKed config changed the state"
                        );
                    }
                    Ok(None) => {}
                    Err(_) => receiver = before,
                }
            }
            None => {}
        }
    }
}
