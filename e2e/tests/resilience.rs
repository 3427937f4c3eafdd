//! Retry and Timeout policies applied at the global and enforced by callers'
//! sidecars in another zone. The two-zone mesh of `support::mesh`: `api`
//! runs in z1 (.12), its callers in z2 (.40, .41), so every call crosses
//! the gateways. Tests steer the api app through its `/control/` paths.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::mesh::*;
use support::*;

const H: &str = "apiVersion: tern.dev/v1alpha1\n";

/// Tell the app at `app` (its own address, not through the mesh) to fail
/// or slow down.
fn control(app: std::net::SocketAddr, path: &str) {
    let r = http(app, "GET", "x", path, &[]).expect("control request");
    assert_eq!(r.status, 200, "{path}: {}", r.body);
}

/// The raw response to a GET of `path` to api through `at`, as far as it
/// came before the connection ended (normally or cut).
fn stream_text(at: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(patient(Duration::from_secs(10))))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Requests the app at `app` has received.
fn served(app: std::net::SocketAddr) -> u64 {
    http(app, "GET", "x", "/stats", &[]).unwrap().json()["requests"]
        .as_u64()
        .unwrap()
}

/// `n` requests from `caller` to api: (answered 200, answered 503).
fn outcomes(caller: &Workload, n: usize, method: &str, body: &str) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..n {
        let r = http_body(caller.outbound(), method, "api", "/r", &[], body).unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                assert!(r.body.contains("failing on purpose"), "{}", r.body);
                failed += 1
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    (ok, failed)
}

/// An api instance that fails every other request (503), called from
/// another zone:
///
/// * with no Retry policy, exactly half the GETs fail: the default
///   conditions never retry an app's own answer;
/// * with `on: [5xx]`, every GET succeeds, and the app sees exactly two
///   requests per GET (each one retried once), as the retry counter does;
/// * a POST with a body is never sent twice (half fail) until the policy
///   lists POST in `idempotentMethods`;
/// * a budget of 10% + 1/s caps a retry storm against an instance that
///   fails everything: 100 GETs with 5 attempts each reach the app at most
///   100 + 10 + 10 times (500 without the budget), and the GETs whose retry
///   was refused (at least 80) are counted.
#[test]
fn retries_hide_a_flaky_upstream_and_a_budget_caps_a_retry_storm() {
    let net = Net(64);
    let m = Mesh::start("resilience-retries", net, None);
    let _api = m.workload("z1", 12, "api", &[]);
    let web = m.workload("z2", 40, "web", &[]);
    let app = net.addr(12, 8080);
    wait_for("api reachable from z2", T, || {
        let r = http(web.outbound(), "GET", "api", "/r", &[]).ok()?;
        (r.status == 200).then_some(())
    });

    control(app, "/control/fail?status=503&every=2");
    assert_eq!(
        outcomes(&web, 100, "GET", ""),
        (50, 50),
        "no retry by default"
    );

    m.g.apply(&format!(
        "{H}kind: Retry\nmetadata: {{name: api-retries}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  http: {{attempts: 3, on: [5xx], budget: {{percent: 100, minPerSecond: 10}}}}\n"
    ));
    wait_dump(&web, "/clusters/api/resilience/on", |v| {
        v.as_array().is_some_and(|a| a.iter().any(|c| c == "5xx"))
    });
    control(app, "/control/fail?status=503&every=2");
    let (before, retried) = (
        served(app),
        metric_sum(web.admin(), "tern_proxy_retries_total", ""),
    );
    assert_eq!(
        outcomes(&web, 200, "GET", ""),
        (200, 0),
        "every GET retried"
    );
    assert_eq!(served(app) - before, 400, "each GET sent exactly twice");
    assert_eq!(
        metric_sum(web.admin(), "tern_proxy_retries_total", "") - retried,
        200.0
    );

    // A POST with a body is not repeated; listed as idempotent, it is.
    control(app, "/control/fail?status=503&every=2");
    assert_eq!(outcomes(&web, 20, "POST", "order"), (10, 10));
    m.g.apply(&format!(
        "{H}kind: Retry\nmetadata: {{name: api-retries}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  http: {{attempts: 3, on: [5xx], budget: {{percent: 100, minPerSecond: 10}}, idempotentMethods: [POST]}}\n"
    ));
    wait_dump(&web, "/clusters/api/resilience/idempotentMethods", |v| {
        v.as_array().is_some_and(|a| a.iter().any(|c| c == "POST"))
    });
    control(app, "/control/fail?status=503&every=2");
    assert_eq!(outcomes(&web, 20, "POST", "order"), (20, 0));

    // The storm: everything fails, five attempts each, a small budget.
    m.g.apply(&format!(
        "{H}kind: Retry\nmetadata: {{name: api-retries}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  http: {{attempts: 5, on: [5xx], backoff: {{base: 1ms, max: 2ms}}, budget: {{percent: 10, minPerSecond: 1}}}}\n"
    ));
    wait_dump(&web, "/clusters/api/resilience/budget/percent", |v| {
        v.as_f64() == Some(10.0)
    });
    control(app, "/control/fail?status=503");
    let (before, refused) = (
        served(app),
        metric_sum(web.admin(), "tern_proxy_retries_refused_total", ""),
    );
    assert_eq!(outcomes(&web, 100, "GET", ""), (0, 100));
    let reached = served(app) - before;
    // 100 first attempts; retries at most 1/s × 10 s + 10% of 100.
    assert!(
        (100..=120).contains(&reached),
        "the app saw {reached} requests for 100 GETs"
    );
    // Each GET whose retry the budget refused ends there: at least 80.
    assert!(metric_sum(web.admin(), "tern_proxy_retries_refused_total", "") - refused >= 80.0);
}

/// Timeouts from a Timeout policy, per caller and destination:
///
/// * api answering after 1 s: web (named) gets a 504 that names its 300 ms
///   request timeout; batch (not named) waits for the 200 under the
///   default;
/// * batch's HTTP limits on api (idle 1 s, stream duration 3 s): a
///   response whose chunks come 200 ms apart arrives whole; one that goes
///   silent for 3 s is cut after its first chunk; one still sending at 3 s
///   is cut there, without its last chunk;
/// * an idle limit of 1 s closes web's opaque TCP flow to db once nothing
///   has moved, while a flow that talks every 100 ms for 1.5 s stays open
///   past it.
#[test]
fn timeouts_bound_requests_and_idle_tcp_flows_across_zones() {
    let net = Net(65);
    let m = Mesh::start("resilience-timeouts", net, None);
    let (_api, _db, web, batch) = m.api_db_and_callers();
    let app = net.addr(12, 8080);
    m.g.apply(&format!(
        "{H}kind: Timeout\nmetadata: {{name: web-api}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  request: 300ms\n---\n{H}kind: Timeout\nmetadata: {{name: db}}\nspec:\n  to: {{service: db}}\n  idle: 1s\n---\n{H}kind: Timeout\nmetadata: {{name: batch-api}}\nspec:\n  targetRef: {{service: batch}}\n  to: {{service: api}}\n  idle: 1s\n  streamDuration: 3s\n"
    ));
    wait_dump(&batch, "/clusters/api/resilience/httpIdleTimeout", |v| {
        v == "1s"
    });
    wait_dump(&web, "/clusters/api/resilience/requestTimeout", |v| {
        v == "300ms"
    });
    wait_dump(&web, "/clusters/db/resilience/idleTimeout", |v| v == "1s");
    wait_dump(&batch, "/clusters/api/resilience/requestTimeout", |v| {
        v == "15s"
    });
    control(app, "/control/delay?ms=1000");
    let r = http(web.outbound(), "GET", "api", "/slow", &[]).unwrap();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("request timeout of 300ms"), "{}", r.body);
    let r = http(batch.outbound(), "GET", "api", "/slow", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    control(app, "/control/delay?ms=0");

    // HTTP streams (batch's limits): chunks 200 ms apart get through whole;
    // 3 s of silence is cut at 1 s, after the first chunk; a stream still
    // sending at 3 s (25 chunks 200 ms apart: 4.8 s) is cut there.
    let whole = stream_text(batch.outbound(), "/drip/200/5");
    assert!(
        whole.contains("chunk 4") && whole.ends_with("0\r\n\r\n"),
        "{whole}"
    );
    let idle = stream_text(batch.outbound(), "/drip/3000/2");
    assert!(
        idle.contains("chunk 0") && !idle.contains("chunk 1"),
        "{idle}"
    );
    let long = stream_text(batch.outbound(), "/drip/200/25");
    assert!(
        long.contains("chunk 4") && !long.contains("chunk 24"),
        "{long}"
    );
    assert!(
        !long.ends_with("0\r\n\r\n"),
        "the cut stream has no last chunk: {long}"
    );

    // A flow that talks every 100 ms for 1.5 s outlives the idle limit.
    let mut s = TcpStream::connect(net.addr(40, 16000)).unwrap();
    s.set_read_timeout(Some(patient(Duration::from_secs(10))))
        .unwrap();
    let mut buf = [0u8; 16];
    for i in 0..15 {
        s.write_all(b"ping\n").unwrap();
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping\n", "echo {i}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Then silence: the sidecar closes it.
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected {n} bytes"),
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    };
    assert!(closed, "the idle flow was closed");
}

/// The endpoints of `service` in `w`'s config that are ejected now.
fn ejected(w: &Workload, service: &str) -> Vec<String> {
    w.dump()["clusters"][service]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["ejected"] == true)
        .map(|e| e["address"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A CircuitBreaker in a two-zone mesh, for callers of api in its own zone
/// (z1: api on .12 and .13, web on .14):
///
/// * outlier detection: .13 answering 500 to everything is ejected after 3
///   in a row (counted under `consecutive-5xx`), then the GETs sent while
///   it is out (at least 10, at most 50) all reach .12; once .13 recovers
///   and its ejection ends, it serves again;
/// * `maxRequests: 1` with no queue: while one slow request waits for its
///   answer, a second gets 503 at once with `x-tern-circuit: max-requests`
///   (counted), and the first still succeeds;
/// * `maxConnections: 1` to `report` (.15): while one request holds the
///   only connection, a second gets 503 with `x-tern-circuit:
///   max-connections`.
#[test]
fn outlier_detection_ejects_and_restores_and_a_request_limit_answers_503() {
    let net = Net(66);
    let m = Mesh::start("resilience-breaker", net, None);
    let _a = m.workload("z1", 12, "api", &[]);
    let _b = m.workload("z1", 13, "api", &[]);
    let web = m.workload("z1", 14, "web", &[]);
    let _report = m.workload("z1", 15, "report", &[]);
    let report_app = net.addr(15, 8080);
    wait_for("both api instances and report in web's config", T, || {
        (web.endpoints("api").len() == 2 && web.endpoints("report").len() == 1).then_some(())
    });
    m.g.apply(&format!(
        "{H}kind: CircuitBreaker\nmetadata: {{name: api}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  outlierDetection: {{consecutive5xx: 3, interval: 1s, baseEjectionTime: 2s}}\n"
    ));
    wait_dump(
        &web,
        "/clusters/api/resilience/outlierDetection/consecutive5xx",
        |v| v == 3,
    );
    let bad = net.ip(13);
    control(net.addr(13, 8080), "/control/fail?status=500");
    wait_for(".13 ejected by web", T, || {
        let _ = http(web.outbound(), "GET", "api", "/r", &[]);
        ejected(&web, "api")
            .iter()
            .any(|a| a.starts_with(&format!("{bad}:")))
            .then_some(())
    });
    assert!(
        metric_sum(
            web.admin(),
            "tern_proxy_ejections_total",
            "reason=\"consecutive-5xx\""
        ) >= 1.0
    );
    let mut while_ejected = 0;
    for _ in 0..50 {
        if ejected(&web, "api").is_empty() {
            break; // the 2 s ejection ended: the rest proves nothing
        }
        while_ejected += 1;
        let r = http(web.outbound(), "GET", "api", "/r", &[]).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.json()["instance"]
                .as_str()
                .unwrap()
                .starts_with(&net.ip(12)),
            "{}",
            r.body
        );
    }
    assert!(
        while_ejected >= 10,
        "only {while_ejected} GETs while ejected"
    );
    control(net.addr(13, 8080), "/control/fail?status=0");
    wait_for(".13 serving web again", T, || {
        let r = http(web.outbound(), "GET", "api", "/r", &[]).ok()?;
        (r.status == 200 && r.json()["instance"].as_str()?.starts_with(&bad)).then_some(())
    });

    // One request at a time, no queue.
    m.g.apply(&format!(
        "{H}kind: CircuitBreaker\nmetadata: {{name: api}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  limits: {{maxRequests: 1, maxPendingRequests: 0}}\n"
    ));
    wait_dump(&web, "/clusters/api/resilience/limits/maxRequests", |v| {
        v == 1
    });
    for host in [12, 13] {
        control(net.addr(host, 8080), "/control/delay?ms=2000");
    }
    let r = refused_while_one_holds(&web, "api", "requestsInFlight", "max-requests");
    assert!(r.body.contains("circuit open"), "{}", r.body);
    assert_eq!(
        metric_sum(
            web.admin(),
            "tern_proxy_circuit_open_total",
            "reason=\"max-requests\""
        ),
        1.0
    );

    // One connection to `report` (never called before, so no connection to
    // it is pooled): a second request while the first holds it gets 503.
    m.g.apply(&format!(
        "{H}kind: CircuitBreaker\nmetadata: {{name: report}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: report}}\n  limits: {{maxConnections: 1}}\n"
    ));
    wait_dump(
        &web,
        "/clusters/report/resilience/limits/maxConnections",
        |v| v == 1,
    );
    control(report_app, "/control/delay?ms=2000");
    refused_while_one_holds(&web, "report", "openConnections", "max-connections");
}

/// While one slow GET to `service` from `caller` holds the only place the
/// breaker allows (its `/config_dump` gauge `held` shows 1), a second gets
/// 503 with `x-tern-circuit: LIMIT`; the first still gets its 200. Returns
/// the refusal.
fn refused_while_one_holds(
    caller: &Workload,
    service: &'static str,
    held: &str,
    limit: &str,
) -> HttpResponse {
    let out = caller.outbound();
    let first = std::thread::spawn(move || http(out, "GET", service, "/slow", &[]).unwrap());
    wait_dump(
        caller,
        &format!("/clusters/{service}/resilience/limits/{held}"),
        |v| v == 1,
    );
    let r = http(caller.outbound(), "GET", service, "/r", &[]).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains(&format!("x-tern-circuit: {limit}")),
        "{}",
        r.headers
    );
    assert_eq!(first.join().unwrap().status, 200);
    r
}

/// `n` GETs from each of `threads` concurrent clients through `caller`:
/// requests answered per instance address.
fn spread(
    caller: &Workload,
    threads: usize,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> std::collections::BTreeMap<String, usize> {
    let out = caller.outbound();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut m = std::collections::BTreeMap::<String, usize>::new();
                for _ in 0..n {
                    let r = http(out, "GET", "api", "/r", headers).unwrap();
                    assert_eq!(r.status, 200, "{}", r.body);
                    *m.entry(r.json()["instance"].as_str().unwrap().to_string())
                        .or_default() += 1;
                }
                m
            })
        })
        .collect();
    let mut all = std::collections::BTreeMap::new();
    for h in handles {
        for (k, v) in h.join().unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

/// LoadBalancer policies for web (z1) calling api:
///
/// * with api .15 answering after 500 ms and .12, .13 at once, round robin
///   sends .15 a third of 240 GETs from 8 concurrent clients, least
///   request under a quarter (.15 nearly always has requests waiting, so
///   it wins only when both draws land on it: about 1 in 9);
/// * a ring hash on `x-user` keeps each user's requests on one instance;
/// * failover: once z1's instances are gone, web's GETs go to z2 by
///   default; `scope: zone` keeps them in z1 (503, none reach z2); a zone
///   list naming z2 lets them go there again.
#[test]
fn load_balancing_least_request_ring_hash_and_failover_order() {
    let net = Net(67);
    let m = Mesh::start("resilience-lb", net, None);
    let api: Vec<Workload> = [12, 13, 15]
        .iter()
        .map(|h| m.workload("z1", *h, "api", &[]))
        .collect();
    let _far = m.workload("z2", 40, "api", &[]);
    let web = m.workload("z1", 14, "web", &[]);
    wait_for("api's three z1 instances and z2 in web's config", T, || {
        (web.endpoints("api").len() == 5).then_some(())
    });
    let policy = |spec: &str| {
        m.g.apply(&format!(
            "{H}kind: LoadBalancer\nmetadata: {{name: web-api}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n{spec}"
        ))
    };
    control(net.addr(15, 8080), "/control/delay?ms=500");
    let slow = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter()
            .filter(|(k, _)| k.starts_with(&net.ip(15)))
            .map(|(_, v)| *v)
            .sum::<usize>() as f64
            / 240.0
    };
    policy("  algorithm: round-robin\n");
    wait_dump(
        &web,
        "/clusters/api/resilience/loadBalancer/algorithm",
        |v| v == "round-robin",
    );
    let rr = spread(&web, 8, 30, &[]);
    policy("  algorithm: least-request\n");
    wait_dump(
        &web,
        "/clusters/api/resilience/loadBalancer/algorithm",
        |v| v == "least-request",
    );
    let lr = spread(&web, 8, 30, &[]);
    eprintln!("round robin {rr:?}; least request {lr:?}");
    assert!(slow(&rr) > 0.3, "round robin: {rr:?}");
    // Expected about 1 in 8 (1 in 9, plus ties while the clients start);
    // a quarter is over 5 standard deviations above that.
    assert!(slow(&lr) < 0.25, "least request: {lr:?}");
    control(net.addr(15, 8080), "/control/delay?ms=0");

    policy("  algorithm: ring-hash\n  hash: {header: x-user}\n");
    wait_dump(
        &web,
        "/clusters/api/resilience/loadBalancer/algorithm",
        |v| v == "ring-hash",
    );
    let mut homes = std::collections::BTreeSet::new();
    for u in 0..12 {
        let user = format!("user-{u}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let r = http(web.outbound(), "GET", "api", "/r", &[("x-user", &user)]).unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            seen.insert(r.json()["instance"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
        homes.extend(seen);
    }
    assert!(homes.len() >= 2, "12 users all on {homes:?}");

    // Failover: z1's instances go away.
    drop(api);
    policy("  algorithm: random\n");
    wait_for("web's GETs served in z2", T, || {
        let r = http(web.outbound(), "GET", "api", "/r", &[]).ok()?;
        (r.status == 200 && r.json()["zone"] == "z2").then_some(())
    });
    policy("  failover: [{from: {zone: z1}, scope: zone}]\n");
    wait_for("web's GETs kept in z1", T, || {
        let r = http(web.outbound(), "GET", "api", "/r", &[]).ok()?;
        (r.status == 503).then_some(())
    });
    for _ in 0..20 {
        let r = http(web.outbound(), "GET", "api", "/r", &[]).unwrap();
        assert_eq!(r.status, 503, "never leaves z1: {}", r.body);
    }
    policy("  failover: [{from: {region: us}, scope: zone}, {from: {zone: z1}, zones: [z2]}]\n");
    wait_for("web's GETs served in z2 again", T, || {
        let r = http(web.outbound(), "GET", "api", "/r", &[]).ok()?;
        (r.status == 200 && r.json()["zone"] == "z2").then_some(())
    });
}

/// A HealthCheck on api (HTTP GET /healthz every 200 ms, unhealthy after 2
/// failures, healthy after 2 successes), with api on .12 and .13 in z1 and
/// callers web in z1 (.14) and z2 (.40):
///
/// * each api sidecar checks its own app and counts the results;
/// * when .13's app fails its checks, the zone-cp withdraws .13: web's
///   config loses it and z2 sees one healthy instance of api in z1; every
///   GET from web meanwhile is served by .12;
/// * when the app passes again, .13 is published again;
/// * web's sidecar makes no probes of its own to api's instances
///   (`tern_proxy_health_checks_total` stays 0 there: it has no check).
#[test]
fn health_checks_withdraw_an_unhealthy_instance_and_publish_it_again() {
    let net = Net(68);
    let m = Mesh::start("resilience-health", net, None);
    let a = m.workload("z1", 12, "api", &[]);
    let b = m.workload("z1", 13, "api", &[]);
    let web = m.workload("z1", 14, "web", &[]);
    let far = m.workload("z2", 40, "web", &[]);
    wait_for("both api instances in web's config", T, || {
        (web.endpoints("api").len() == 2).then_some(())
    });
    m.g.apply(&format!(
        "{H}kind: HealthCheck\nmetadata: {{name: api}}\nspec:\n  targetRef: {{service: api}}\n  interval: 200ms\n  timeout: 1s\n  unhealthyThreshold: 2\n  healthyThreshold: 2\n  http: {{path: /healthz}}\n"
    ));
    for w in [&a, &b] {
        wait_for("api's sidecars checking their apps", T, || {
            (metric_sum(
                w.admin(),
                "tern_proxy_health_checks_total",
                "result=\"healthy\"",
            ) >= 2.0)
                .then_some(())
        });
    }
    let z2_sees = || {
        far.dump()["clusters"]["api"]["endpoints"]
            .as_array()
            .and_then(|a| a.first().and_then(|e| e["weight"].as_u64()))
            .unwrap_or(0)
    };
    wait_for("z2 sees two healthy api instances in z1", T, || {
        (z2_sees() == 2).then_some(())
    });
    control(net.addr(13, 8080), "/control/fail?status=503");
    wait_for(".13 withdrawn from web's config", T, || {
        (web.endpoints("api") == [format!("{}", net.addr(12, 15006))]).then_some(())
    });
    wait_for("z2 sees one healthy api instance in z1", T, || {
        (z2_sees() == 1).then_some(())
    });
    for _ in 0..30 {
        let r = http(web.outbound(), "GET", "api", "/r", &[]).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.json()["instance"]
                .as_str()
                .unwrap()
                .starts_with(&net.ip(12)),
            "{}",
            r.body
        );
    }
    control(net.addr(13, 8080), "/control/fail?status=0");
    wait_for(".13 published again", T, || {
        (web.endpoints("api").len() == 2).then_some(())
    });
    assert!(
        metric_sum(
            b.admin(),
            "tern_proxy_health_checks_total",
            "result=\"unhealthy\""
        ) >= 2.0
    );
    assert_eq!(
        metric_sum(web.admin(), "tern_proxy_health_checks_total", ""),
        0.0
    );
}
