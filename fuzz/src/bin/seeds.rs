//! Write the fuzz material (if missing) and one folder of seed inputs per
//! target under `fuzz/corpus/<target>/seed-*`: well-formed inputs built with
//! the project's own encoders, from which AFL++ mutates. Run it again after
//! a wire format changes: `cargo run -p fuzz --bin seeds`.

use std::path::Path;

use anyhow::Context;
use common::flow::FlowHeader;
use fuzz::material::{self, SERVICE, TD, ZONE};
use model::ident::SpiffeId;
use model::token::{Claims, TokenKind};
use prost::Message;
use proto::v1 as pb;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    material::generate(&material::dir()).context("write fuzz/material")?;
    for (target, seeds) in seeds() {
        anyhow::ensure!(fuzz::target(target).is_some(), "no target {target}");
        let dir = root.join("corpus").join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}

fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let m = material::get();
    let signer = material::signer();
    let claims = |kind, service: Option<&str>| Claims {
        jti: "t1".into(),
        kind,
        zone: ZONE.into(),
        service: service.map(str::to_string),
        iat: 1_700_000_000,
        exp: 4_000_000_000,
        global: (kind == TokenKind::Zone).then(|| "127.0.0.1:5685".into()),
        ca: "ab".repeat(32),
        td: TD.into(),
        max_instances: Some(4),
    };
    let dp_token = signer.sign(&claims(TokenKind::Dataplane, Some(SERVICE)));
    let gw_token = signer.sign(&claims(TokenKind::Gateway, None));
    let zone_token = signer.sign(&claims(TokenKind::Zone, None));
    let mut tampered = zone_token.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;

    let header = |port, trace: Option<&str>| {
        FlowHeader {
            service: SERVICE.into(),
            dest_zone: "z2".into(),
            source_zone: ZONE.into(),
            port,
            traceparent: trace.map(str::to_string),
            subset: if port.is_some() {
                vec![("version".into(), "v2".into())]
            } else {
                vec![]
            },
        }
        .encode()
        .expect("seed header encodes")
    };

    let identity = SpiffeId::workload(TD, ZONE, SERVICE).to_string();
    let endpoint = |addr: &str, healthy| pb::Endpoint {
        address: addr.into(),
        port: 15006,
        healthy,
        labels: [("version".to_string(), "v1".to_string())].into(),
        region: "eu".into(),
        zone: ZONE.into(),
        identity: identity.clone(),
        protocol: "http".into(),
        instance: format!("web-{addr}"),
        weight: 1,
        via_gateway: false,
        priority: 0,
        subsets: vec![pb::Subset {
            labels: [("version".to_string(), "v2".to_string())].into(),
            healthy: 2,
        }],
    };
    let service = pb::ServiceInventory {
        name: SERVICE.into(),
        endpoints: vec![endpoint("127.0.1.10", true), endpoint("127.0.1.11", false)],
    };
    let zmsg = |msg| pb::ZoneMessage { msg: Some(msg) }.encode_to_vec();
    use pb::zone_message::Msg as Z;
    let full_inv = zmsg(Z::Inventory(pb::Inventory {
        full: true,
        upserts: vec![service.clone()],
        removed: vec![],
        connected_proxies: 2,
        last_chunk: true,
        region: "eu".into(),
        gateways: vec!["127.0.1.5:4433".into(), "127.0.1.6:4433".into()],
    }));
    let delta_inv = zmsg(Z::Inventory(pb::Inventory {
        full: false,
        upserts: vec![],
        removed: vec![SERVICE.into()],
        connected_proxies: 0,
        last_chunk: true,
        region: "eu".into(),
        gateways: vec!["127.0.1.5:4433".into()],
    }));
    let hello = zmsg(Z::Hello(pb::ZoneHello {
        zone: ZONE.into(),
        resume_from: 3,
        instance_id: "i-1".into(),
        software_version: "0.1.0".into(),
    }));
    let ack = zmsg(Z::Ack(pb::Ack { version: 1 }));
    let nack = zmsg(Z::Nack(pb::Nack {
        version: 2,
        reason: "bad".into(),
    }));
    let renew = zmsg(Z::RenewCa(pb::CaRenewal {
        csr_pem: m.csr_pem.clone(),
        ..Default::default()
    }));

    let mesh = r#"{"apiVersion":"tern.dev/v1alpha1","kind":"Mesh","metadata":{"name":"default"},"spec":{"mtls":{"workloadCertTtl":"1h"}}}"#;
    let zone = r#"{"apiVersion":"tern.dev/v1alpha1","kind":"Zone","metadata":{"name":"z2","labels":{"team":"a"}},"spec":{"enabled":true,"description":"x","regionOrder":["us"]}}"#;
    let ingress = r#"{"apiVersion":"tern.dev/v1alpha1","kind":"ZoneIngress","metadata":{"name":"z2"},"spec":{"region":"us","gateways":["127.0.2.5:4433"],"services":{"web":{"protocol":"http","healthy":2}}}}"#;
    let revocation = r#"{"apiVersion":"tern.dev/v1alpha1","kind":"Revocation","metadata":{"name":"t9"},"spec":{"revokedAt":"2026-01-01T00:00:00Z","reason":"leaked"}}"#;
    let policies = "apiVersion: tern.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: api}\nspec:\n  targetRef: {service: api, labels: {v: '2'}}\n  mode: shadow\n  rules:\n    - {name: web, action: allow, from: [{service: web, region: eu}], when: {methods: [GET], paths: [{prefix: /v1}, {regex: '/x/[0-9]+'}]}}\n    - {action: deny}\n---\napiVersion: tern.dev/v1alpha1\nkind: MtlsPolicy\nmetadata: {name: m}\nspec: {targetRef: {zone: z1}, mode: permissive}\n---\napiVersion: tern.dev/v1alpha1\nkind: HttpRoute\nmetadata: {name: r}\nspec:\n  to: {service: api}\n  rules:\n    - matches: [{path: {prefix: /a}, headers: [{name: x-u, exact: b}], query: [{name: q, present: true}]}]\n      backends: [{weight: 90, labels: {version: v1}}, {weight: 10, zones: [z2]}]\n      mirror: {service: s, percent: 5}\n      rewrite: {pathPrefix: /b}\n      requestHeaders: {set: {x-a: '1'}, add: {x-b: '2'}, remove: [x-c]}\n      timeout: 2s\n    - {name: moved, redirect: {host: example.org, statusCode: 301}}\n---\napiVersion: tern.dev/v1alpha1\nkind: TcpRoute\nmetadata: {name: t}\nspec: {to: {service: db}, backends: [{weight: 1, zones: [z2]}]}\n";
    let res = |kind: &str, name: &str, body: &str| pb::Resource {
        kind: kind.into(),
        name: name.into(),
        body: body.as_bytes().to_vec(),
        ..Default::default()
    };
    let gmsg = |msg| pb::GlobalMessage { msg: Some(msg) }.encode_to_vec();
    use pb::global_message::Msg as G;
    let delta = |version, chunk, last, full, upserts| {
        gmsg(G::Delta(pb::Delta {
            version,
            full,
            chunk,
            last_chunk: last,
            upserts,
            removals: vec![pb::ResourceKey {
                kind: "Zone".into(),
                name: "z3".into(),
            }],
        }))
    };
    let d_full = delta(
        1,
        0,
        true,
        true,
        vec![res("Mesh", "default", mesh), res("Zone", "z2", zone)],
    );
    let d_c0 = delta(2, 0, false, false, vec![res("ZoneIngress", "z2", ingress)]);
    let d_c1 = delta(2, 1, true, false, vec![res("Revocation", "t9", revocation)]);
    let ca_issued = gmsg(G::CaIssued(pb::CaIssued {
        intermediate_pem: m.zone_ca_pem.clone(),
        chain_extra_pem: m.root_pem.clone(),
        error: String::new(),
    }));

    let registration = |kind: &str| pb::Registration {
        service: SERVICE.into(),
        address: "127.0.1.10".into(),
        inbound_port: 15006,
        protocol: "http".into(),
        labels: [("version".to_string(), "v2".to_string())].into(),
        region: "eu".into(),
        instance: "web-1".into(),
        kind: kind.into(),
        public_address: if kind == "gateway" {
            "127.0.1.5:4433".into()
        } else {
            String::new()
        },
        instance_uid: "u-1".into(),
        serving: false,
        reachable_services: vec!["api".into(), "db".into()],
        version: "0.1.0".into(),
    };
    let pmsg = |msg| pb::ProxyMessage { msg: Some(msg) }.encode_to_vec();
    use pb::proxy_message::Msg as P;
    let csr = pb::CertificateRequest {
        csr_pem: m.csr_pem.clone(),
    };
    let p_hello = |token: &str, kind| {
        pmsg(P::Hello(pb::ProxyHello {
            token: token.into(),
            registration: Some(registration(kind)),
            csr: Some(csr.clone()),
        }))
    };

    let trust = pb::Trust {
        roots_pem: m.root_pem.clone(),
        zone_cas: [(
            ZONE.to_string(),
            pb::ZoneCaList {
                fingerprints: vec![m.zone_ca_fingerprint.clone()],
            },
        )]
        .into(),
    };
    let cluster = |svc: &str, protocol: &str| pb::Cluster {
        service: svc.into(),
        protocol: protocol.into(),
        endpoints: vec![
            endpoint("127.0.1.10", true),
            pb::Endpoint {
                address: "127.0.1.5".into(),
                port: 15443,
                zone: "z2".into(),
                region: "us".into(),
                via_gateway: true,
                priority: 2,
                weight: 3,
                ..endpoint("127.0.1.5", true)
            },
        ],
        ..Default::default()
    };
    use pb::string_match::Match as M;
    let sm = |m| Some(pb::StringMatch { r#match: Some(m) });
    let routed = pb::Cluster {
        http_routes: vec![pb::HttpRouteRule {
            name: "HttpRoute/r/canary".into(),
            matches: vec![pb::HttpMatch {
                path: sm(M::Prefix("/v2".into())),
                method: "GET".into(),
                headers: vec![pb::NamedMatch {
                    name: "x-user".into(),
                    r#match: sm(M::Regex("a.*".into())),
                }],
                query: vec![pb::NamedMatch {
                    name: "q".into(),
                    r#match: sm(M::Present(true)),
                }],
            }],
            backends: vec![
                pb::Backend {
                    weight: 90,
                    labels: [("version".to_string(), "v1".to_string())].into(),
                    ..Default::default()
                },
                pb::Backend {
                    weight: 10,
                    zones: vec!["z2".into()],
                    ..Default::default()
                },
            ],
            mirror: Some(pb::Mirror {
                backend: Some(pb::Backend {
                    weight: 1,
                    service: "db".into(),
                    ..Default::default()
                }),
                per_million: 50_000,
            }),
            request_headers: Some(pb::HeaderOps {
                set: [("x-a".to_string(), "1".to_string())].into(),
                add: Default::default(),
                remove: vec!["x-b".into()],
            }),
            rewrite_prefix: "/v1".into(),
            timeout_ms: 500,
            ..Default::default()
        }],
        tcp_route: Some(pb::TcpRoute {
            name: "TcpRoute/t".into(),
            backends: vec![pb::Backend {
                weight: 1,
                zones: vec!["z2".into()],
                ..Default::default()
            }],
        }),
        policies: vec!["HttpRoute/r".into()],
        ..cluster("api", "http")
    };
    let inbound = pb::InboundPolicy {
        health_check: Some(pb::HealthCheck {
            name: "HealthCheck/api".into(),
            kind: "http".into(),
            path: "/healthz".into(),
            interval_ms: 500,
            ..Default::default()
        }),
        access_log: Some(pb::AccessLog {
            name: "AccessLog/api".into(),
            format: "text".into(),
            file: "api.log".into(),
            inbound: true,
            outbound: false,
            ..Default::default()
        }),
        trace: Some(pb::Trace {
            name: "Trace/mesh".into(),
            sampling: 0.01,
            endpoint: "127.0.0.1:4317".into(),
            protocol: "grpc".into(),
        }),
        mtls_mode: "permissive".into(),
        rules: vec![pb::AccessRule {
            name: "AccessPolicy/a/web".into(),
            deny: false,
            shadow: false,
            from: vec![pb::Caller {
                service: "web".into(),
                zones: vec!["z1".into()],
                zones_given: true,
                labels: Default::default(),
            }],
            methods: vec!["GET".into()],
            paths: vec![pb::StringMatch {
                r#match: Some(M::Exact("/x".into())),
            }],
            http_only: true,
            zone_local: false,
        }],
        default_deny: true,
        default_shadow: true,
        policies: vec!["AccessPolicy/a".into(), "FaultInjection/f".into()],
        faults: vec![pb::Fault {
            name: "FaultInjection/f/slow".into(),
            methods: vec!["GET".into()],
            http_only: true,
            delay_ms: 200,
            delay_per_million: 100_000,
            abort_per_million: 50_000,
            abort_http_status: 503,
            ..Default::default()
        }],
        rate_limits: vec![pb::RateLimit {
            name: "RateLimit/l/reads".into(),
            http_only: true,
            tokens: 100,
            interval_ms: 1000,
            burst: 20,
            per_header: "x-api-key".into(),
            ..Default::default()
        }],
        gateway_drills: vec![pb::GatewayDrill {
            name: "Drill/cut".into(),
            peer_zones: vec!["z2".into()],
            per_million: 500_000,
            until_unix_ms: 4_000_000_000_000,
            ..Default::default()
        }],
        traffic_report_ms: 1000,
    };
    let tmsg = |msg| pb::ZoneToProxy { msg: Some(msg) }.encode_to_vec();
    use pb::zone_to_proxy::Msg as T;
    let config = |version, full, upserts: Vec<pb::Cluster>, removed| {
        tmsg(T::Config(pb::ProxyConfig {
            version,
            full,
            upserts: upserts.into_iter().map(std::sync::Arc::new).collect(),
            removed,
            inbound: full.then(|| std::sync::Arc::new(inbound.clone())),
            chunk: 0,
            last_chunk: true,
        }))
    };
    let certificate = tmsg(T::Certificate(pb::Certificate {
        chain_pem: m.chain_pem.clone(),
        not_after_unix: 4_000_000_000,
        spiffe_id: identity.clone(),
    }));
    let state = pb::ProxyState {
        chain_pem: m.chain_pem.clone(),
        key_pem: m.key_pem.clone(),
        trust: Some(trust.clone()),
        config_version: 7,
        clusters: vec![
            cluster(SERVICE, "http"),
            cluster("db", "tcp"),
            routed.clone(),
        ],
        inbound: Some(inbound.clone()),
    };

    let yaml = |s: &str| s.as_bytes().to_vec();
    let fr = fuzz::frame;
    vec![
        ("flow_header", vec![header(None, None), header(Some(8080), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))]),
        ("token", vec![dp_token.clone().into_bytes(), gw_token.clone().into_bytes(), zone_token.into_bytes(), tampered]),
        ("resources", vec![
            yaml("apiVersion: tern.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: default\nspec:\n  mtls:\n    workloadCertTtl: 1h\n---\napiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: eu-west-1\n  labels: {team: infra}\n  resourceVersion: 3\nspec:\n  enabled: true\n  description: Frankfurt\n  regionOrder: [us, ap]\n"),
            yaml("# comment\n---\napiVersion: tern.dev/v1alpha1\nkind: Revocation\nmetadata: {name: abc}\nspec: {revokedAt: now, reason: leaked}\n"),
            yaml(mesh), yaml(zone), yaml(ingress), yaml(revocation), yaml(policies),
        ]),
        ("bootstrap", vec![
            yaml("identity: { cert: /c.pem, key: /k.pem, roots: /r.pem }\ntrustDomain: bench\ninbound: { listen: 127.0.0.1:15006, app: 127.0.0.1:18080, protocol: http }\nadmin: 127.0.0.1:19106\n"),
            yaml("identity: { cert: /c.pem, key: /k.pem, roots: /r.pem }\ntrustDomain: bench\noutbound:\n  - { listen: 127.0.0.1:15001, service: server }\n  - { listen: 127.0.0.1:15002, protocol: tcp }\nclusters:\n  - service: server\n    protocol: http2\n    endpoints: [ { address: 127.0.0.1:15006, identity: \"spiffe://bench/ns/default/sa/server\" } ]\n"),
        ]),
        ("proxy_state", vec![state.encode_to_vec(), pb::ProxyState { trust: None, ..state.clone() }.encode_to_vec()]),
        ("zone_to_global", vec![
            fr(&[full_inv.clone(), ack.clone(), delta_inv.clone(), nack.clone()]),
            fr(&[hello, full_inv.clone(), renew]),
            fr(&[delta_inv, full_inv]),
        ]),
        ("global_to_zone", vec![fr(&[d_full.clone(), d_c0, d_c1]), fr(&[ca_issued, d_full])]),
        ("proxy_to_zone", vec![
            fr(&[p_hello(&dp_token, "sidecar"), pmsg(P::Ack(pb::Ack { version: 1 })), pmsg(P::Nack(pb::Nack { version: 2, reason: "x".into() }))]),
            fr(&[p_hello(&gw_token, "gateway"), pmsg(P::Csr(csr.clone()))]),
        ]),
        ("zone_to_proxy", vec![
            fr(&[tmsg(T::Trust(trust)), certificate, config(1, true, vec![cluster(SERVICE, "http"), cluster("db", "tcp"), routed.clone()], vec![]), config(2, false, vec![cluster("api", "grpc")], vec!["db".into()])]),
        ]),
    ]
}
