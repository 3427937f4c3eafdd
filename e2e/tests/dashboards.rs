//! The Grafana dashboards in `deploy/grafana/` against a real Prometheus
//! (Debian's `prometheus` package; `.ci/run` installs it) scraping a
//! running two-zone mesh with traffic: every panel's query, and every
//! template variable's, must parse and return series.
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::mesh::*;
use support::*;

const H: &str = "apiVersion: tern.dev/v1alpha1\n";

/// The `prometheus` binary on PATH, or a failure that says how to get it.
fn prometheus_bin() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .expect(
            "this test needs Prometheus: `apt-get install prometheus` (Debian's package; .ci/run installs it)",
        )
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result of an instant query: `Err` when Prometheus refuses it (it
/// does not parse), else the number of series.
fn query(prom: SocketAddr, q: &str) -> Result<usize, String> {
    let r =
        get(prom, "x", &format!("/api/v1/query?query={}", encode(q))).map_err(|e| e.to_string())?;
    let v = r.json();
    if v["status"] != "success" {
        return Err(format!("{} {}", r.status, r.body));
    }
    Ok(v["data"]["result"].as_array().map(|a| a.len()).unwrap_or(0))
}

/// A panel or variable query made concrete, as Grafana would send it with
/// "All" selected.
fn concrete(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "30s")
        .replace("$zone", ".+")
        .replace("$service", ".+");
    // A variable's `label_values(SELECTOR, LABEL)` is Grafana's, not
    // PromQL: ask for the label's values the same way.
    match e
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.rsplit_once(','))
    {
        Some((sel, label)) => format!("count by ({}) ({sel})", label.trim()),
        None => e,
    }
}

/// Every (dashboard, title, query) in `deploy/grafana/`.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for f in files {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).expect("dashboard JSON");
        let title = d["title"].as_str().expect("a title").to_string();
        assert!(
            d["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{title}: uid"
        );
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                let q = v["query"]["query"].as_str().expect("variable query");
                out.push((
                    title.clone(),
                    format!("variable {}", v["name"]),
                    q.to_string(),
                ));
            }
        }
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                out.push((
                    title.clone(),
                    format!("panel {:?}", p["title"].as_str().unwrap()),
                    t["expr"].as_str().expect("a PromQL expr").to_string(),
                ));
            }
        }
    }
    out
}

/// Every query of every dashboard (and of its variables) returns series
/// from a real Prometheus scraping the global, both zone control planes,
/// all four gateways and the sidecars of a two-zone mesh with HTTP
/// traffic (within and across zones, some of it failing and retried) and
/// opaque TCP traffic (some to a db instance whose app is gone, some to a
/// service that does not exist: the failed-connection panels need real
/// failures, inbound and outbound). A query that does not parse fails at once; one
/// that returns nothing fails after the patience limit, naming it.
#[test]
fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 35, "{} queries", queries.len());
    let prometheus = prometheus_bin();

    let m = Mesh::start("dashboards", Net(73), None);
    let _pay = m.workload("z1", 12, "pay", &[]);
    let _api1 = m.workload("z1", 13, "api", &[]);
    let _db = m.tcp_echo_db(14);
    let (db_gone, _db_gone_sidecar) = m.tcp_echo_db(15);
    drop(db_gone);
    let _api2 = m.workload("z2", 42, "api", &[]);
    let tcp_port = format!("tcp:db={}:16000", m.net.ip(40));
    let ghost_port = format!("tcp:ghost={}:16001", m.net.ip(40));
    let web = m.workload(
        "z2",
        40,
        "web",
        &["--outbound-port", &tcp_port, "--outbound-port", &ghost_port],
    );
    wait_for("pay, api and both dbs in web's config", T, || {
        let ok = ["pay", "api"].iter().all(|s| !web.endpoints(s).is_empty())
            && web.endpoints("db").len() == 2;
        ok.then_some(())
    });
    m.g.apply(&format!(
        "{H}kind: Retry\nmetadata: {{name: pay-retries}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: pay}}\n  http: {{attempts: 3, on: [5xx], budget: {{percent: 100, minPerSecond: 100}}}}\n"
    ));
    wait_dump(&web, "/clusters/pay/resilience/on", |v| {
        v.as_array().is_some_and(|a| a.iter().any(|c| c == "5xx"))
    });
    let r = http(
        m.net.addr(12, 8080),
        "GET",
        "x",
        "/control/fail?status=503&every=2",
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let _traffic = Traffic::start(&web, &["pay", "api"], Some(m.net.addr(40, 16000)));
    let _to_ghost = Traffic::start(&web, &[], Some(m.net.addr(40, 16001)));

    // Prometheus on this test's own loopback address, scraping every
    // admin port each second.
    let n = m.net;
    let targets = |hosts: &[u8], port: u16| -> String {
        hosts
            .iter()
            .map(|h| format!("'{}'", n.addr(*h, port)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - {{job_name: tern-global, static_configs: [{{targets: [{}]}}]}}\n  - {{job_name: tern-zone, static_configs: [{{targets: [{}]}}]}}\n  - {{job_name: tern-gateway, static_configs: [{{targets: [{}]}}]}}\n  - {{job_name: tern-sidecar, static_configs: [{{targets: [{}]}}]}}\n",
        targets(&[1], 5681),
        targets(&[2, 3], 5680),
        targets(&[21, 22, 31, 32], 15090),
        targets(&[12, 13, 14, 15, 42, 40], 15000),
    );
    let cfg = m.s.path("prometheus.yml");
    std::fs::write(&cfg, config).unwrap();
    let prom = n.addr(250, 9090);
    let _prom = spawn(
        &m.s.0,
        "prometheus",
        prometheus.to_str().unwrap(),
        &[
            format!("--config.file={}", cfg.display()),
            format!("--storage.tsdb.path={}", m.s.path("tsdb").display()),
            format!("--web.listen-address={prom}"),
            "--log.level=warn".into(),
        ],
    );
    wait_for("Prometheus scraping all 13 targets", patient(T), || {
        let up = query(prom, "sum(up)").ok()?;
        let v = get(
            prom,
            "x",
            &format!("/api/v1/query?query={}", encode("sum(up)")),
        )
        .ok()?
        .json();
        let n = v["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()?;
        (up == 1 && n == 13.0).then_some(())
    });

    // Each query must parse now, and return series within the limit.
    for (dash, what, q) in &queries {
        if let Err(e) = query(prom, &concrete(q)) {
            panic!("{dash} {what}: Prometheus refused {q:?}: {e}");
        }
    }
    let limit = patient(Duration::from_secs(90));
    let start = Instant::now();
    loop {
        let empty: Vec<String> = queries
            .iter()
            .filter(|(_, _, q)| query(prom, &concrete(q)).unwrap_or(0) == 0)
            .map(|(d, w, q)| format!("{d} {w}: {q}"))
            .collect();
        if empty.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "queries without series after {limit:?}:\n{}",
            empty.join("\n")
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
