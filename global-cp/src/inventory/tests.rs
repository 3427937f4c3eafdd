use super::*;

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
