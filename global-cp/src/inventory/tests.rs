use super::*;
use proto::Message;

fn ep(zone: &str, svc: &str) -> pb::Endpoint {
    pb::Endpoint {
        address: "10.0.0.1".into(),
        port: 15006,
        healthy: true,
        zone: zone.into(),
        identity: format!("spiffe://tern/zone/{zone}/svc/{svc}"),
        protocol: "http".into(),
        ..Default::default()
    }
}

fn svc(name: &str, zone: &str) -> pb::ServiceInventory {
    pb::ServiceInventory {
        name: name.into(),
        endpoints: vec![ep(zone, name)],
    }
}

fn inv(full: bool, upserts: Vec<pb::ServiceInventory>, removed: &[&str]) -> pb::Inventory {
    pb::Inventory {
        full,
        upserts,
        removed: removed.iter().map(|s| s.to_string()).collect(),
        region: "eu".into(),
        gateways: vec!["127.0.1.5:15444".into()],
        last_chunk: true,
        ..Default::default()
    }
}

fn accept(v: Verdict) -> Report {
    match v {
        Verdict::Accept(r, ingress) => {
            assert_eq!(ingress.kind, "ZoneIngress");
            *r
        }
        other => panic!("expected Accept, got {other:?}"),
    }
}

fn refuse(v: Verdict, contains: &str) {
    match v {
        Verdict::Refuse(why) => assert!(why.contains(contains), "{why}"),
        other => panic!("expected a refusal naming {contains:?}, got {other:?}"),
    }
}

const NO: &BTreeSet<String> = &BTreeSet::new();

/// z1's first report, full, of these services (other zones publish `taken`).
fn first(services: Vec<pb::ServiceInventory>, taken: &BTreeSet<String>) -> Verdict {
    judge(
        "tern",
        "z1",
        &Report::default(),
        &inv(true, services, &[]),
        taken,
    )
}

#[test]
fn a_valid_report_is_accepted_and_deltas_apply_to_it() {
    let held = accept(first(vec![svc("api", "z1"), svc("web", "z1")], NO));
    assert_eq!(held.services.len(), 2);
    let held = accept(judge(
        "tern",
        "z1",
        &held,
        &inv(false, vec![svc("db", "z1")], &["web"]),
        NO,
    ));
    assert_eq!(held.services.keys().collect::<Vec<_>>(), vec!["api", "db"]);
}

/// The 8,000-service report that froze sync mesh-wide is refused for its
/// zone alone, and so is one whose ZoneIngress would exceed the resource
/// size limit every zone enforces.
#[test]
fn oversized_reports_are_refused() {
    let many: Vec<_> = (0..8000).map(|i| svc(&format!("s{i}"), "z1")).collect();
    refuse(
        judge("tern", "z1", &Report::default(), &inv(true, many, &[]), NO),
        "more than 2000 services",
    );
    let mut big = svc("api", "z1");
    big.endpoints = (0..MAX_ENDPOINTS + 1).map(|_| ep("z1", "api")).collect();
    refuse(first(vec![big], NO), "endpoints");
    let mut i = inv(true, vec![svc("api", "z1")], &[]);
    i.gateways = (0..=MAX_GATEWAYS)
        .map(|n| format!("10.0.{}.{}:15444", n / 200, n % 200))
        .collect();
    refuse(judge("tern", "z1", &Report::default(), &i, NO), "gateways");
}

/// A zone may speak only for itself.
#[test]
fn a_zone_cannot_advertise_what_it_does_not_own() {
    refuse(first(vec![svc("api", "z2")], NO), "claims zone");
    let mut s = svc("api", "z1");
    s.endpoints[0].identity = "spiffe://tern/zone/z2/svc/api".into();
    refuse(first(vec![s], NO), "not in zone z1");
    let mut s = svc("api", "z1");
    s.endpoints[0].identity = "spiffe://tern/global".into();
    refuse(first(vec![s], NO), "not in zone z1");
    let mut s = svc("api", "z1");
    s.endpoints[0].via_gateway = true;
    refuse(first(vec![s], NO), "through a gateway");
    let taken: BTreeSet<String> = ["127.0.1.5:15444".to_string()].into();
    refuse(
        first(vec![svc("api", "z1")], &taken),
        "published by another zone",
    );
}

#[test]
fn malformed_reports_are_refused() {
    let r = Report::default();
    refuse(first(vec![svc("Bad_Name", "z1")], NO), "Bad_Name");
    let mut s = svc("api", "z1");
    s.endpoints[0].protocol = "smtp".into();
    refuse(first(vec![s], NO), "protocol");
    let mut s = svc("api", "z1");
    s.endpoints[0].identity = "not a spiffe id".into();
    refuse(first(vec![s], NO), "identity");
    for g in ["nohost", "h:0", ":15444", "a..b:1", "h:99999"] {
        let mut i = inv(true, vec![svc("api", "z1")], &[]);
        i.gateways = vec![g.into()];
        refuse(judge("tern", "z1", &r, &i, NO), "not host:port");
    }
    let mut i = inv(true, vec![svc("api", "z1")], &[]);
    i.region = "EU West".into();
    refuse(judge("tern", "z1", &r, &i, NO), "region");
    let mut i = inv(true, vec![svc("api", "z1")], &[]);
    i.gateways = vec!["gw.example.com:15444".into(), "[::1]:15444".into()];
    accept(judge("tern", "z1", &r, &i, NO));
}

/// After a refusal the global's copy and the zone's own diverge, so deltas
/// are ignored until a full report is accepted.
#[test]
fn after_a_refusal_only_a_full_report_is_taken() {
    let held = accept(first(vec![svc("api", "z1")], NO));
    let refused = Report {
        refused: Some("x".into()),
        ..held.clone()
    };
    assert_eq!(
        judge(
            "tern",
            "z1",
            &refused,
            &inv(false, vec![svc("db", "z1")], &[]),
            NO
        ),
        Verdict::Ignore
    );
    let r = accept(judge(
        "tern",
        "z1",
        &refused,
        &inv(true, vec![svc("db", "z1")], &[]),
        NO,
    ));
    assert_eq!(r.refused, None);
    assert_eq!(r.services.keys().collect::<Vec<_>>(), vec!["db"]);
}

/// The bounds keep the worst accepted report under the resource size limit
/// every zone enforces: 2000 services with 63-character names and 64
/// gateway addresses of 255 characters are accepted.
#[test]
fn the_largest_report_within_the_bounds_fits_a_zone_ingress() {
    let names: Vec<_> = (0..MAX_SERVICES)
        .map(|i| {
            let n = format!("s{i}-");
            format!("{n}{}", "x".repeat(63 - n.len()))
        })
        .collect();
    let mut i = inv(true, names.iter().map(|n| svc(n, "z1")).collect(), &[]);
    for s in &mut i.upserts {
        s.endpoints[0].healthy = true;
    }
    i.gateways = (0..MAX_GATEWAYS)
        .map(|n| {
            let mut host = format!("g{n}");
            while host.len() < 249 {
                host.push('.');
                host.push_str(&"a".repeat(61));
            }
            host.truncate(249);
            format!("{}:15444", host.trim_end_matches('.'))
        })
        .collect();
    assert!(i.gateways.iter().all(|g| g.len() <= 255));
    accept(judge("tern", "z1", &Report::default(), &i, NO));
}

fn ingress(v: Verdict) -> ZoneIngressSpec {
    match v {
        Verdict::Accept(_, ingress) => ZoneIngressSpec::from_resource(&ingress).expect("spec"),
        other => panic!("expected Accept, got {other:?}"),
    }
}

fn labelled(svc_name: &str, healthy: bool, labels: &[(&str, &str)]) -> pb::Endpoint {
    pb::Endpoint {
        healthy,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ep("z1", svc_name)
    }
}

/// A service's summary lists the distinct label sets of its healthy
/// instances with how many have each, largest first; unhealthy instances
/// and labels no policy could select are left out, and a service with more
/// than MAX_SUBSETS sets publishes the largest ones and says so.
#[test]
fn label_sets_of_healthy_instances_are_published_largest_first() {
    let long_key = "k".repeat(100);
    let s = pb::ServiceInventory {
        name: "api".into(),
        endpoints: vec![
            labelled("api", true, &[("version", "v1")]),
            labelled("api", true, &[("version", "v1")]),
            labelled("api", true, &[("version", "v1")]),
            labelled("api", true, &[("version", "v2")]),
            labelled("api", true, &[("version", "v2"), (&long_key, "x")]),
            labelled("api", false, &[("version", "v3")]),
            labelled("api", true, &[]),
        ],
    };
    let spec = ingress(first(vec![s], NO));
    let api = &spec.services["api"];
    assert_eq!(api.healthy, 6);
    let got: Vec<(String, u32)> = api
        .subsets
        .iter()
        .map(|s| (format!("{:?}", s.labels), s.healthy))
        .collect();
    assert_eq!(
        got,
        [
            (r#"{"version": "v1"}"#.to_string(), 3),
            (r#"{"version": "v2"}"#.to_string(), 2)
        ]
    );
    assert!(!api.subsets_truncated);

    let many = pb::ServiceInventory {
        name: "api".into(),
        endpoints: (0..MAX_SUBSETS + 4)
            .map(|i| labelled("api", true, &[("pod", &format!("p{i}"))]))
            .collect(),
    };
    let spec = ingress(first(vec![many], NO));
    assert_eq!(spec.services["api"].subsets.len(), MAX_SUBSETS);
    assert!(spec.services["api"].subsets_truncated);
}

/// The largest report within the bounds, every service with MAX_SUBSETS
/// label sets of the longest labels: the ZoneIngress still fits the
/// resource size limit (the report is accepted): label sets give way,
/// one rank at a time (no service keeps two while another has none, so here
/// some keep their largest and the rest none), and every service that lost
/// some says so.
#[test]
fn label_sets_give_way_to_the_size_limit() {
    let services: Vec<pb::ServiceInventory> = (0..MAX_SERVICES)
        .map(|i| {
            let n = format!("s{i}-");
            let name = format!("{n}{}", "x".repeat(63 - n.len()));
            pb::ServiceInventory {
                endpoints: (0..MAX_SUBSETS)
                    .map(|j| {
                        let v = format!("{j}{}", "v".repeat(62));
                        labelled(&name, true, &[(&"k".repeat(63), &v)])
                    })
                    .collect(),
                name,
            }
        })
        .collect();
    let spec = ingress(first(services, NO));
    let kept: Vec<usize> = spec.services.values().map(|s| s.subsets.len()).collect();
    let (lo, hi) = (kept.iter().min().unwrap(), kept.iter().max().unwrap());
    assert!(*hi >= 1 && hi - lo <= 1, "kept between {lo} and {hi}");
    assert!(spec
        .services
        .values()
        .all(|s| s.subsets_truncated == (s.subsets.len() < MAX_SUBSETS)));
}

// Chunked updates (`proto::inventory::split`, `Assembler`).

const MIB: usize = 1024 * 1024;
/// The gRPC message limit of the sync stream, both ways.
const MAX_MESSAGE_BYTES: usize = 8 * MIB;

/// An endpoint as a zone reports it, with six typical labels.
fn typical(svc_name: &str, i: usize) -> pb::Endpoint {
    let labels = [
        ("app.kubernetes.io/name", svc_name.to_string()),
        ("app.kubernetes.io/version", "v1.42.0".into()),
        ("pod-template-hash", "7d9f8c6b5d".into()),
        ("topology.kubernetes.io/zone", "eu-west-1a".into()),
        ("team", "payments".into()),
        (
            "statefulset.kubernetes.io/pod-name",
            format!("{svc_name}-{i}"),
        ),
    ];
    pb::Endpoint {
        address: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
        region: "eu".into(),
        instance: format!("{svc_name}-7d9f8c6b5d-{i:05}"),
        weight: 1,
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..ep("z1", svc_name)
    }
}

fn service_of(name: &str, endpoints: usize) -> pb::ServiceInventory {
    pb::ServiceInventory {
        name: name.into(),
        endpoints: (0..endpoints).map(|i| typical(name, i)).collect(),
    }
}

/// 30,000 endpoints of six labels: one service of 20,000 (alone larger
/// than a chunk) and 100 of 100. Over the message limit as one message.
fn thirty_thousand() -> pb::Inventory {
    let mut services = vec![service_of("big", 20_000)];
    services.extend((0..100).map(|i| service_of(&format!("s{i}"), 100)));
    let whole = inv(true, services, &[]);
    assert!(
        whole.encoded_len() > MAX_MESSAGE_BYTES,
        "not a large report"
    );
    whole
}

/// Feed `chunks` in order: nothing is judged before the last.
fn assemble(asm: &mut Assembler, chunks: Vec<pb::Inventory>) -> Assembled {
    let n = chunks.len();
    let mut out = None;
    for (i, c) in chunks.into_iter().enumerate() {
        let a = asm.push(c);
        if i + 1 < n {
            assert_eq!(a, None, "chunk {i} of {n} was taken as a whole update");
        } else {
            out = a;
        }
    }
    assert!(!asm.pending());
    out.expect("the last chunk completes the update")
}

fn judged(a: &Assembled, held: &Report) -> Verdict {
    a.judge("tern", "z1", held, BTreeSet::new)
}

/// A full report over the message limit, cut into chunks each well under
/// it, is the same report to the global as the one message: the same
/// services, endpoints, region and gateways, the same ZoneIngress. Before,
/// the zone sent it whole and the stream was reset on every connect; each
/// chunk judged alone would publish a part (the last part of `big`).
#[test]
fn a_chunked_full_report_is_judged_as_the_one_message() {
    let whole = thirty_thousand();
    let chunks = proto::inventory::split(whole.clone(), MIB);
    assert!(chunks.len() > 8, "{} chunks", chunks.len());
    assert!(chunks
        .iter()
        .all(|c| c.encoded_len() < MAX_MESSAGE_BYTES && c.encoded_len() <= MIB));
    // Replaces what was held, as a full report does.
    let held = accept(first(vec![svc("old", "z1")], NO));
    let expected = judge("tern", "z1", &held, &whole, NO);
    let report = match &expected {
        Verdict::Accept(r, _) => r.clone(),
        other => panic!("expected Accept, got {other:?}"),
    };
    assert_eq!(report.services.len(), 101);
    assert_eq!(report.services["big"].endpoints.len(), 20_000);
    let got = assemble(&mut Assembler::default(), chunks);
    assert_eq!(got.connected_proxies(), whole.connected_proxies);
    assert_eq!(judged(&got, &held), expected);
}

/// An incremental update in chunks (a service removed, one replaced by a
/// larger one in parts, one added) applies to the held report as one
/// message does, keeping what it does not name; chunk by chunk, `web`
/// would end up with its last part only.
#[test]
fn a_chunked_incremental_update_applies_as_one() {
    let held = accept(first(
        vec![svc("api", "z1"), svc("web", "z1"), svc("old", "z1")],
        NO,
    ));
    let whole = inv(
        false,
        vec![service_of("web", 5000), service_of("db", 10)],
        &["old"],
    );
    let chunks = proto::inventory::split(whole.clone(), 256 * 1024);
    assert!(chunks.len() > 3, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| !c.full));
    let got = assemble(&mut Assembler::default(), chunks);
    let verdict = judged(&got, &held);
    assert_eq!(verdict, judge("tern", "z1", &held, &whole, NO));
    let r = accept(verdict);
    assert_eq!(
        r.services.keys().collect::<Vec<_>>(),
        vec!["api", "db", "web"]
    );
    assert_eq!(r.services["web"].endpoints, whole.upserts[0].endpoints);
}

/// Chunks of another kind of update do not mix: a chunk with `full`
/// starts a new update (the unfinished one is dropped), and a one-message
/// update after a finished one stands alone.
#[test]
fn a_full_chunk_restarts_an_unfinished_update() {
    let mut asm = Assembler::default();
    let mut part = inv(true, vec![svc("a", "z1")], &[]);
    part.last_chunk = false;
    assert_eq!(asm.push(part), None);
    assert!(asm.pending());
    let mut b1 = inv(true, vec![svc("b", "z1")], &[]);
    b1.last_chunk = false;
    let b2 = inv(false, vec![svc("c", "z1")], &[]);
    let r = accept(judged(
        &assemble(&mut asm, vec![b1, b2]),
        &Report::default(),
    ));
    assert_eq!(r.services.keys().collect::<Vec<_>>(), vec!["b", "c"]);
    let next = inv(false, vec![svc("d", "z1")], &[]);
    assert_eq!(asm.push(next.clone()), Some(Assembled::Whole(next)));
}

/// An update whose chunks together exceed a bound is refused at the chunk
/// that crosses it, before that chunk is taken in; the buffer is dropped
/// at once and so are the update's remaining chunks. The zone's next full
/// report is taken as usual.
#[test]
fn an_assembled_update_over_the_bounds_is_refused() {
    fn chunked(services: Vec<pb::ServiceInventory>, full: bool) -> Vec<pb::Inventory> {
        let n = services.len();
        services
            .into_iter()
            .enumerate()
            .map(|(i, s)| pb::Inventory {
                last_chunk: i + 1 == n,
                ..inv(full && i == 0, vec![s], &[])
            })
            .collect()
    }
    let cases: [(Vec<pb::ServiceInventory>, &str); 3] = [
        // 6 × 10,000 endpoints, each chunk small.
        (
            (0..6)
                .map(|i| pb::ServiceInventory {
                    endpoints: vec![ep("z1", "x"); 10_000],
                    ..svc(&format!("s{i}"), "z1")
                })
                .collect(),
            "more than 50000 endpoints",
        ),
        // 2,001 services of one endpoint.
        (
            (0..=MAX_SERVICES)
                .map(|i| svc(&format!("s{i}"), "z1"))
                .collect(),
            "more than 2000 services",
        ),
        // 10 × 7 MiB of labels.
        (
            (0..10)
                .map(|i| {
                    let mut s = svc(&format!("s{i}"), "z1");
                    s.endpoints[0]
                        .labels
                        .insert("blob".into(), "x".repeat(7 * MIB));
                    s
                })
                .collect(),
            "more than 64 MiB",
        ),
    ];
    for (services, why) in cases {
        let mut asm = Assembler::default();
        let mut verdicts = Vec::new();
        for c in chunked(services, true) {
            if let Some(a) = asm.push(c) {
                assert!(!asm.pending(), "{why}: the buffer was kept");
                verdicts.push(judged(&a, &Report::default()));
            }
        }
        assert_eq!(verdicts.len(), 1, "{why}: {verdicts:?}");
        refuse(verdicts.remove(0), why);
        // A refused zone's incremental update, too large, is ignored.
        let refused = Report {
            refused: Some("x".into()),
            ..Report::default()
        };
        let mut asm = Assembler::default();
        let mut first = true;
        for c in chunked(
            (0..6)
                .map(|i| pb::ServiceInventory {
                    endpoints: vec![ep("z1", "x"); 10_000],
                    ..svc(&format!("s{i}"), "z1")
                })
                .collect(),
            false,
        ) {
            if let Some(a) = asm.push(c) {
                assert!(first);
                first = false;
                assert_eq!(judged(&a, &refused), Verdict::Ignore);
            }
        }
        // A full report after a refused one stands on its own.
        let r = accept(judged(
            &asm.push(inv(true, vec![svc("api", "z1")], &[])).unwrap(),
            &refused,
        ));
        assert_eq!(r.services.keys().collect::<Vec<_>>(), vec!["api"]);
    }
    // The parts of one service count once: 2,000 services, one of them in
    // two parts, are taken.
    let mut asm = Assembler::default();
    let services: Vec<_> = (0..MAX_SERVICES)
        .map(|i| svc(&format!("s{i}"), "z1"))
        .chain([svc("s0", "z1")])
        .collect();
    let r = accept(judged(
        &assemble(&mut asm, chunked(services, true)),
        &Report::default(),
    ));
    assert_eq!(r.services.len(), MAX_SERVICES);
    assert_eq!(r.services["s0"].endpoints.len(), 2);
}
