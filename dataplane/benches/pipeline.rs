//! Per-request cost of the policy layers of the data path with a large
//! policy set: 100 access rules and 100 HTTP route rules, the request
//! matching only the last of each (the worst case: every rule is tried).
//! Also the cost of writing one access log line.
//! `cargo bench -p dataplane --bench pipeline`.

use std::collections::HashMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dataplane::access::{Access, Caller, Request};
use dataplane::route::Routes;
use dataplane::split::{Mirror, Split};
use http::{HeaderMap, Method, Uri};
use proto::v1 as pb;

fn prefix(p: &str) -> Option<pb::StringMatch> {
    Some(pb::StringMatch {
        r#match: Some(pb::string_match::Match::Prefix(p.into())),
    })
}

fn access(n: usize) -> Access {
    let rules = (0..n)
        .map(|i| pb::AccessRule {
            name: format!("AccessPolicy/p/rule-{i}"),
            deny: false,
            from: vec![pb::Caller {
                service: format!("svc-{i}"),
                zones: vec!["z1".into(), "z2".into()],
                zones_given: true,
                ..Default::default()
            }],
            methods: vec!["GET".into()],
            paths: vec![prefix(&format!("/api/v{i}")).unwrap()],
            http_only: true,
            ..Default::default()
        })
        .collect();
    Access::build(&pb::InboundPolicy {
        rules,
        default_deny: true,
        ..Default::default()
    })
    .unwrap()
}

fn routes(n: usize) -> Routes {
    let http_routes = (0..n)
        .map(|i| pb::HttpRouteRule {
            name: format!("HttpRoute/r/rule-{i}"),
            matches: vec![pb::HttpMatch {
                path: prefix(&format!("/api/v{i}")),
                method: "GET".into(),
                headers: vec![pb::NamedMatch {
                    name: "x-tenant".into(),
                    r#match: Some(pb::StringMatch {
                        r#match: Some(pb::string_match::Match::Exact(format!("t{i}"))),
                    }),
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let c = pb::Cluster {
        service: "api".into(),
        http_routes,
        ..Default::default()
    };
    let none = HashMap::new();
    Routes::build(&c, &|b| Split::build(b, "api", &none), &|m| {
        Mirror::build(m, "api", &none)
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let a = access(100);
    let caller = Caller::from_peer(
        &model::ident::SpiffeId::workload("tern", "z2", "svc-99"),
        None,
    );
    let method = Method::GET;
    c.bench_function("access: 100 rules, last one matches", |b| {
        b.iter(|| {
            let d = a.decide(
                Some(black_box(&caller)),
                Some(Request {
                    method: &method,
                    path: black_box("/api/v99/items"),
                }),
            );
            assert!(d.allow);
        })
    });
    let r = routes(100);
    let uri: Uri = "/api/v99/items?page=2".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "t99".parse().unwrap());
    headers.insert("accept", "*/*".parse().unwrap());
    c.bench_function("routes: 100 rules, last one matches", |b| {
        b.iter(|| {
            let s = r.select(&method, black_box(&uri), black_box(&headers));
            assert!(s.is_some());
        })
    });
    let one = routes(1);
    let uri1: Uri = "/api/v0/items".parse().unwrap();
    let mut h1 = HeaderMap::new();
    h1.insert("x-tenant", "t0".parse().unwrap());
    c.bench_function("routes: 1 rule", |b| {
        b.iter(|| {
            one.select(&method, black_box(&uri1), black_box(&h1))
                .is_some()
        })
    });
}

/// An access log line as the observed benchmark writes it (JSON, an
/// inbound HTTP request with every field), into a reused buffer.
fn access_log_line(c: &mut Criterion) {
    use dataplane::metrics::Direction;
    use dataplane::observe::Line;
    let line = Line {
        start: std::time::SystemTime::now(),
        direction: Direction::Inbound,
        protocol: "http",
        source_service: "web",
        source_zone: "eu-west-1",
        source_identity: Some("spiffe://tern/zone/eu-west-1/svc/web"),
        destination_service: "api",
        destination_zone: "eu-west-1",
        upstream: Some("127.0.0.1:8080".parse().unwrap()),
        method: Some("GET"),
        authority: Some("api"),
        path: Some("/api/v1/items?page=2"),
        route: None,
        status: Some(200),
        decision: common::traffic::Decision::None,
        duration: std::time::Duration::from_micros(412),
        bytes_sent: None,
        bytes_received: None,
    };
    let mut buf = String::with_capacity(64 * 1024);
    c.bench_function("access log: one JSON line", |b| {
        b.iter(|| {
            if buf.len() > 60 * 1024 {
                buf.clear();
            }
            black_box(&line).json_into(&mut buf);
        })
    });
}

criterion_group!(benches, bench, access_log_line);
criterion_main!(benches);
