//! Traffic figures across zones: sidecars' per-peer metrics, their reports
//! to the zone, the zone's reports to the global, and what `ternctl
//! inspect` shows. The two-zone mesh of `support::mesh`: `pay` runs only
//! in z1 (.12), `api` in z1 (.13) and z2 (.42), and their caller `web` in
//! z2 (.40), so web's calls to pay cross the gateways and its calls to api
//! stay in z2.
mod support;

use std::net::SocketAddr;

use support::mesh::*;
use support::*;

const H: &str = "apiVersion: tern.dev/v1alpha1\n";

/// The sum of a metric's lines that contain every one of `labels`.
fn metric(admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let body = get(admin, "x", "/metrics")
        .map(|r| r.body)
        .unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `n` GETs from `caller` to `service`, each answered 200.
fn calls(caller: &Workload, service: &str, n: usize) {
    for i in 0..n {
        let r = http(caller.outbound(), "GET", service, "/r", &[]).unwrap();
        assert_eq!(r.status, 200, "call {i} to {service}: {}", r.body);
    }
}

/// The JSON of `ternctl inspect ...  -o json`.
fn inspect(m: &Mesh, what: &[&str]) -> serde_json::Value {
    let mut args = vec!["inspect"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&m.g.ctl(&args)).expect("inspect prints JSON")
}

fn service_in<'a>(
    items: &'a serde_json::Value,
    service: &str,
    zone: &str,
) -> Option<&'a serde_json::Value> {
    items.as_array()?.iter().find(|s| s["service"] == service)?["zones"]
        .as_array()?
        .iter()
        .find(|z| z["zone"] == zone)
}

/// web sends 40 GETs to pay (in z1 only, every other answer a 503 that a
/// Retry policy retries) and 40 to api (served in z2). Proves that:
/// - web's sidecar labels its outbound requests with both ends' service
///   and zone and the policy decision (`retried` for exactly the requests
///   pay failed once), and pay's sidecar labels its inbound ones with the
///   caller's verified service and zone;
/// - the zones report these figures to the global, and `ternctl inspect
///   services` shows each service per zone with exact request and error
///   counts (pay: 80 served, 40 failed; api in z2: 40, none failed; api
///   in z1: none) and its serving instances;
/// - `ternctl inspect traffic` shows the zone-to-zone matrix (z2→z1: the
///   40 calls to pay, no errors seen by the caller, retries counted;
///   z2→z2: the 40 to api), and `-o wide` lists the service edges.
#[test]
fn figures_follow_requests_from_sidecars_through_zones_to_the_global() {
    let m = Mesh::start("obs-figures", Net(69), None);
    let pay = m.workload("z1", 12, "pay", &[]);
    let _api1 = m.workload("z1", 13, "api", &[]);
    let _api2 = m.workload("z2", 42, "api", &[]);
    let web = m.workload("z2", 40, "web", &[]);
    wait_for("pay and api in web's config", T, || {
        let local_api = m.net.addr(42, 15006).to_string();
        (!web.endpoints("pay").is_empty() && web.endpoints("api").contains(&local_api))
            .then_some(())
    });
    m.g.apply(&format!(
        "{H}kind: Retry\nmetadata: {{name: pay-retries}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: pay}}\n  http: {{attempts: 3, on: [5xx], budget: {{percent: 100, minPerSecond: 50}}}}\n"
    ));
    wait_dump(&web, "/clusters/pay/resilience/on", |v| {
        v.as_array().is_some_and(|a| a.iter().any(|c| c == "5xx"))
    });
    let app = pay_app(&m);
    let r = http(app, "GET", "x", "/control/fail?status=503&every=2", &[]).unwrap();
    assert_eq!(r.status, 200);

    calls(&web, "pay", 40);
    calls(&web, "api", 40);

    // The caller's sidecar: both ends, zones and decisions.
    let out = |status: &str, decision: &str| {
        metric(
            web.admin(),
            "tern_proxy_traffic_requests_total",
            &[
                "direction=\"outbound\"",
                "source_service=\"web\"",
                "source_zone=\"z2\"",
                "destination_service=\"pay\"",
                "destination_zone=\"z1\"",
                &format!("status=\"{status}\""),
                &format!("decision=\"{decision}\""),
            ],
        )
    };
    assert_eq!(out("2xx", "retried"), 40.0, "each call to pay retried once");
    assert_eq!(out("2xx", "none") + out("5xx", "none"), 0.0);
    let local_api = metric(
        web.admin(),
        "tern_proxy_traffic_requests_total",
        &["destination_service=\"api\"", "destination_zone=\"z2\""],
    );
    assert_eq!(local_api, 40.0, "api is served in web's own zone");
    // The destination's sidecar: the caller's verified identity.
    let inbound = |status: &str| {
        metric(
            pay.admin(),
            "tern_proxy_traffic_requests_total",
            &[
                "direction=\"inbound\"",
                "source_service=\"web\"",
                "source_zone=\"z2\"",
                "destination_service=\"pay\"",
                "destination_zone=\"z1\"",
                &format!("status=\"{status}\""),
            ],
        )
    };
    assert_eq!((inbound("2xx"), inbound("5xx")), (40.0, 40.0));
    assert!(
        metric(
            web.admin(),
            "tern_proxy_traffic_request_duration_seconds_count",
            &["destination_service=\"pay\""],
        ) == 40.0
    );

    // The global's view, once both zones have reported everything.
    let window = ["--window", "10m"];
    let services = wait_for("the zones' reports at the global", patient(T), || {
        let v = inspect(&m, &["services", window[0], window[1]]);
        let pay = service_in(&v, "pay", "z1")?;
        let api = service_in(&v, "api", "z2")?;
        (pay["requests"] == 80 && api["requests"] == 40).then_some(v)
    });
    let pay_z1 = service_in(&services, "pay", "z1").unwrap();
    assert_eq!(pay_z1["errors"], 40, "{pay_z1}");
    assert_eq!(pay_z1["errorRate"], 0.5);
    assert_eq!(
        (pay_z1["healthy"].as_u64(), pay_z1["instances"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        pay_z1["p99Ms"].as_f64().is_some_and(|p| p > 0.0),
        "{pay_z1}"
    );
    let api_z1 = service_in(&services, "api", "z1").expect("api listed in z1 too");
    assert_eq!(
        (api_z1["requests"].as_u64(), api_z1["healthy"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(service_in(&services, "api", "z2").unwrap()["errors"], 0);

    let traffic = wait_for("the zone-to-zone matrix", patient(T), || {
        let v = inspect(&m, &["traffic", window[0], window[1]]);
        let cross = v["matrix"]
            .as_array()?
            .iter()
            .find(|f| f["sourceZone"] == "z2" && f["destinationZone"] == "z1")?
            .clone();
        (cross["requests"] == 40).then_some(v)
    });
    let cross = traffic["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["sourceZone"] == "z2" && f["destinationZone"] == "z1")
        .unwrap();
    assert_eq!(cross["errors"], 0, "the caller saw no error: {cross}");
    assert!(
        cross["decisions"]["retried"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{cross}"
    );
    let local = traffic["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["sourceZone"] == "z2" && f["destinationZone"] == "z2")
        .expect("z2 to z2");
    assert_eq!(local["requests"], 40);
    let edge = traffic["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sourceService"] == "web" && e["destinationService"] == "pay")
        .expect("the web→pay edge");
    assert_eq!(
        (
            edge["sourceZone"].as_str(),
            edge["destinationZone"].as_str()
        ),
        (Some("z2"), Some("z1"))
    );

    // The tables a person reads.
    let table = m.g.ctl(&["inspect", "services", "--window", "10m"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("pay"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("z1") && row.contains("1/1") && row.contains("50.00%"),
        "{table}"
    );
    let wide =
        m.g.ctl(&["inspect", "traffic", "--window", "10m", "-o", "wide"]);
    assert!(
        wide.lines()
            .any(|l| l.contains("web") && l.contains("pay") && l.contains("retried=")),
        "{wide}"
    );
}

/// `ternctl inspect dataplanes` asks every zone online for its proxies.
/// Proves that each sidecar and gateway of both zones is listed with the
/// version it runs, its serving state, when its certificate expires and
/// the config version it acknowledged; that the table and `--zone` work;
/// that a zone that cannot answer is reported, not silently missing; and
/// that the control planes' metrics show the same: the zone's proxies by
/// state and their earliest certificate expiry, the global's zones online
/// and in sync (lag 0), and store call timings.
#[test]
fn dataplanes_are_listed_across_zones_with_version_certificate_and_sync_state() {
    let m = Mesh::start("obs-dataplanes", Net(71), None);
    let _pay = m.workload("z1", 12, "pay", &[]);
    let _web = m.workload("z2", 40, "web", &[]);
    let v = wait_for("both sidecars acknowledged a config", patient(T), || {
        let v = inspect(&m, &["dataplanes"]);
        let items = v.as_array()?;
        let acked = |name: &str| {
            items
                .iter()
                .any(|d| d["name"] == name && d["ackedVersion"].as_u64().unwrap_or(0) > 0)
        };
        (acked("pay-12") && acked("web-40")).then(|| v.clone())
    });
    let items = v.as_array().unwrap();
    let pay = items.iter().find(|d| d["name"] == "pay-12").unwrap();
    assert_eq!(pay["zone"], "z1");
    assert_eq!(pay["kind"], "sidecar");
    assert_eq!(pay["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (pay["connected"].as_bool(), pay["serving"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(
        pay["certificateNotAfter"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{pay}"
    );
    assert!(pay["lastNack"].is_null(), "{pay}");
    let gateways = items.iter().filter(|d| d["kind"] == "gateway").count();
    assert_eq!(gateways, 4, "two gateways per zone: {v}");

    let table = m.g.ctl(&["inspect", "dataplanes", "--zone", "z2"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("web-40"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("serving") && row.contains("acked v"),
        "{table}"
    );
    assert!(
        !table.contains("pay-12"),
        "--zone z2 lists only z2: {table}"
    );

    // The same in figures: the zone's proxies by state and the earliest
    // certificate expiry; the global's per-zone sync state and store timing.
    let zone_admin = m.net.addr(2, 5680);
    assert_eq!(
        metric(
            zone_admin,
            "tern_zone_proxies",
            &["kind=\"sidecar\"", "state=\"serving\""]
        ),
        1.0
    );
    assert_eq!(
        metric(zone_admin, "tern_zone_proxies", &["kind=\"gateway\""]),
        2.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(
        metric(
            zone_admin,
            "tern_zone_proxy_certificate_expiry_earliest_timestamp_seconds",
            &[]
        ) > now
    );
    let global_admin = m.net.addr(1, 5681);
    wait_for("both zones in sync at the global", patient(T), || {
        let online = metric(global_admin, "tern_global_zone_online", &[]);
        let lag = metric(global_admin, "tern_global_zone_sync_lag_revisions", &[]);
        (online == 2.0 && lag == 0.0).then_some(())
    });
    assert!(
        metric(
            global_admin,
            "tern_global_store_call_duration_seconds_count",
            &[]
        ) > 0.0
    );

    // A zone that never joined is named as such (404), not "ask again".
    let out = m.g.ternctl(&["inspect", "dataplanes", "--zone", "nowhere"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("zone \"nowhere\" has not joined"), "{err}");
}

/// Access log lines (JSON) in a sidecar's output.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.starts_with('{') && l.contains("\"protocol\""))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Access logs are off until an AccessLog policy turns them on, then
/// follow it. Proves that: without a policy, api's sidecar writes no line
/// for 5 requests; with a JSON-to-stdout policy for api, each inbound
/// request gets one line with the caller's verified service, zone and
/// SPIFFE ID, both zones, method, path, status, decision and timing; with
/// a text-to-file policy for web (inside its --access-log-dir), its
/// outbound requests get text lines naming the destination zone and the
/// endpoint it went through, an opaque TCP connection gets a line with
/// the bytes each way, and one that no endpoint took (an unknown service)
/// gets a line with no upstream and is counted in
/// `tern_proxy_traffic_tcp_failed_connections_total` (db's is not; once
/// db's app is stopped, db's sidecar counts a flow it could not hand over
/// as failed inbound); lines for web never go to api's log and vice versa.
#[test]
fn access_logs_are_off_by_default_and_follow_the_policy() {
    use std::io::{Read, Write};
    let m = Mesh::start("obs-logs", Net(72), None);
    let api = m.workload("z1", 12, "api", &[]);
    let (db_app, _db_sidecar) = m.tcp_echo_db(13);
    let dir = m.s.path("web-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let tcp_port = format!("tcp:db={}:16000", m.net.ip(40));
    let ghost_port = format!("tcp:ghost={}:16001", m.net.ip(40));
    let web = m.workload(
        "z2",
        40,
        "web",
        &[
            "--outbound-port",
            &tcp_port,
            "--outbound-port",
            &ghost_port,
            "--access-log-dir",
            dir.to_str().unwrap(),
        ],
    );
    wait_for("api and db in web's config", T, || {
        (!web.endpoints("api").is_empty() && !web.endpoints("db").is_empty()).then_some(())
    });
    calls(&web, "api", 5);
    assert!(
        json_lines(&api.sidecar.log_text()).is_empty(),
        "off by default"
    );

    m.g.apply(&format!(
        "{H}kind: AccessLog\nmetadata: {{name: api-in}}\nspec: {{targetRef: {{service: api}}, directions: [inbound]}}\n"
    ));
    wait_dump(&api, "/accessLog/policy", |v| v == "AccessLog/api-in");
    for i in 0..3 {
        let r = http(web.outbound(), "GET", "api", &format!("/r?n={i}"), &[]).unwrap();
        assert_eq!(r.status, 200);
    }
    let lines = wait_for("three lines in api's log", patient(T), || {
        let l = json_lines(&api.sidecar.log_text());
        (l.len() >= 3).then_some(l)
    });
    assert_eq!(lines.len(), 3, "one line per request: {lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["direction"], "inbound");
        assert_eq!(l["protocol"], "http");
        assert_eq!(
            (l["sourceService"].as_str(), l["sourceZone"].as_str()),
            (Some("web"), Some("z2"))
        );
        assert_eq!(l["sourceIdentity"], "spiffe://tern/zone/z2/svc/web");
        assert_eq!(
            (
                l["destinationService"].as_str(),
                l["destinationZone"].as_str()
            ),
            (Some("api"), Some("z1"))
        );
        assert_eq!(
            (l["method"].as_str(), l["status"].as_u64()),
            (Some("GET"), Some(200))
        );
        assert_eq!(l["path"], format!("/r?n={i}"));
        assert_eq!(l["decision"], "none");
        assert!(l["durationMs"].as_f64().is_some_and(|d| d > 0.0), "{l}");
        assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
    }

    m.g.apply(&format!(
        "{H}kind: AccessLog\nmetadata: {{name: web-out}}\nspec: {{targetRef: {{service: web}}, format: text, to: file, file: web.log, directions: [outbound]}}\n"
    ));
    wait_dump(&web, "/accessLog/policy", |v| v == "AccessLog/web-out");
    calls(&web, "api", 2);
    let mut s = std::net::TcpStream::connect(m.net.addr(40, 16000)).unwrap();
    s.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    drop(s);
    // A flow no endpoint takes (no such service) is closed, and logged.
    let mut s = std::net::TcpStream::connect(m.net.addr(40, 16001)).unwrap();
    let _ = s.write_all(b"hello");
    let mut rest = Vec::new();
    s.set_read_timeout(Some(patient(T))).unwrap();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    let file = dir.join("web.log");
    let text = wait_for("web's text lines", patient(T), || {
        let t = std::fs::read_to_string(&file).ok()?;
        (t.lines().count() >= 4).then_some(t)
    });
    let http_lines: Vec<&str> = text.lines().filter(|l| l.contains(" http ")).collect();
    assert_eq!(http_lines.len(), 2, "{text}");
    for l in &http_lines {
        assert!(
            l.contains(" outbound http web.z2 -> api.z1 \"GET api /r\" 200 none "),
            "{l}"
        );
        assert!(
            l.contains(" upstream=127.0.72."),
            "the gateway it went through: {l}"
        );
    }
    let tcp = text
        .lines()
        .find(|l| l.contains(" tcp ") && l.contains(" -> db."))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        tcp.contains(" outbound tcp web.z2 -> db.z1 - - none "),
        "{tcp}"
    );
    assert!(tcp.contains(" sent=5 received=5"), "{tcp}");
    let ghost = text
        .lines()
        .find(|l| l.contains(" -> ghost."))
        .unwrap_or_else(|| panic!("a line for the flow nobody took: {text}"));
    assert!(
        ghost.contains(" outbound tcp web.z2 -> ghost.unknown - - none ")
            && !ghost.contains("upstream=")
            && ghost.contains(" sent=0 received=0"),
        "{ghost}"
    );
    // ... and counted as a connection that failed; db's did not fail.
    let failed = |svc: &str| {
        metric(
            web.admin(),
            "tern_proxy_traffic_tcp_failed_connections_total",
            &[
                "direction=\"outbound\"",
                &format!("destination_service=\"{svc}\""),
            ],
        )
    };
    assert_eq!((failed("ghost"), failed("db")), (1.0, 0.0));
    let opened = |svc: &str| {
        metric(
            web.admin(),
            "tern_proxy_traffic_tcp_connections_total",
            &[&format!("destination_service=\"{svc}\"")],
        )
    };
    assert_eq!((opened("ghost"), opened("db")), (1.0, 1.0));
    // With db's app gone (its endpoint still published: no HealthCheck),
    // a flow reaches db's sidecar, which cannot hand it to the app: db's
    // sidecar counts it as failed inbound, with web as its source.
    let db_admin = m.net.addr(13, 15000);
    let inbound_failed = || {
        metric(
            db_admin,
            "tern_proxy_traffic_tcp_failed_connections_total",
            &[
                "direction=\"inbound\"",
                "source_service=\"web\"",
                "destination_service=\"db\"",
            ],
        )
    };
    assert_eq!(inbound_failed(), 0.0);
    drop(db_app);
    let mut s = std::net::TcpStream::connect(m.net.addr(40, 16000)).unwrap();
    let _ = s.write_all(b"hello");
    let mut rest = Vec::new();
    s.set_read_timeout(Some(patient(T))).unwrap();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    wait_for(
        "db's sidecar counting the flow its app refused",
        patient(T),
        || (inbound_failed() == 1.0).then_some(()),
    );
    assert!(
        json_lines(&web.sidecar.log_text()).is_empty(),
        "web logs to its file only"
    );
    // Lines reach stdout within the writer's flush interval (1 s).
    let api_lines = wait_for("api's lines for the two new requests", patient(T), || {
        let l = json_lines(&api.sidecar.log_text());
        (l.len() >= 5).then_some(l)
    });
    assert_eq!(api_lines.len(), 5, "api logged the two new requests");
}

/// The pay app's own address (not through the mesh).
fn pay_app(m: &Mesh) -> SocketAddr {
    m.net.addr(12, 8080)
}

/// A window the global does not keep, or that is not a duration, is a
/// usage error that says what is allowed, not an empty answer.
#[test]
fn a_bad_window_is_refused_with_what_is_allowed() {
    let s = Scratch::new("obs-window");
    let g = Global::start(&s.0, Net(70));
    for w in ["1h", "soon"] {
        let out = g.ternctl(&["inspect", "services", "--window", w]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("at most 10m"), "{w}: {err}");
    }
}
