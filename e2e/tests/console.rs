//! The web console, in a real browser: headless Chromium (Debian's
//! `chromium`; `.ci/run` installs it) driven over the DevTools protocol by
//! `e2e/py/console.py`, against the global of a running two-zone mesh
//! with traffic. Screenshots of every page are kept as test artefacts in
//! the target folder (`console-screenshots/`).
mod support;

use std::path::PathBuf;

use support::mesh::*;
use support::*;

const H: &str = "apiVersion: tern.dev/v1alpha1\n";

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .map(move |d| d.join(name))
        })
        .find(|p| p.is_file())
        .expect("this test needs Chromium: `apt-get install chromium` (Debian's package; .ci/run installs it)")
}

/// Signed out, the console sends a browser to its login page and the API
/// refuses it; a wrong token is refused with a message; the admin token,
/// typed into the form, signs in. Then each page shows the mesh's live
/// data: zones online with their regions; services per zone with their
/// instance counts and charts of their rates and latency (a zone's rate the sum of its
/// services' rates, never more than the traffic sent), and the opaque TCP service db with
/// its connections counted and, for the instance whose app is gone, its
/// failed connections in red (pay, plain HTTP, shows none); one service's
/// charts, and db's chart of connections alone; the zone-to-zone matrix with
/// web's TCP connections to db, and the service edges; the policies with where each
/// applies; the dataplanes with their state; and one dataplane's explain
/// view. A running drill shows on the drills page, its Abort button (the
/// console's one write, sent with the session's CSRF token) ends it, and
/// its report shows the timeline and charts. Every page's screenshot is
/// a real image.
#[test]
fn the_console_shows_the_live_mesh_in_a_real_browser() {
    let browser = chromium();
    let m = Mesh::start("console", Net(75), None);
    let _pay = m.workload("z1", 12, "pay", &[]);
    let _api1 = m.workload("z1", 13, "api", &[]);
    let _api2 = m.workload("z2", 42, "api", &[]);
    // db: an opaque TCP echo on two instances; db-15's app is stopped, so
    // the flows its sidecar gets reach no app and count as failed.
    let _db = m.tcp_echo_db(14);
    let (db_gone, _db_gone_sidecar) = m.tcp_echo_db(15);
    drop(db_gone);
    let tcp_port = format!("tcp:db={}:16000", m.net.ip(40));
    let web = m.workload("z2", 40, "web", &["--outbound-port", &tcp_port]);
    wait_for("pay, api and both dbs in web's config", T, || {
        (!web.endpoints("pay").is_empty()
            && !web.endpoints("api").is_empty()
            && web.endpoints("db").len() == 2)
            .then_some(())
    });
    m.g.apply(&format!(
        "{H}kind: Retry\nmetadata: {{name: pay-retries}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: pay}}\n  http: {{attempts: 3, on: [5xx], budget: {{percent: 100, minPerSecond: 100}}}}\n---\n{H}kind: AccessLog\nmetadata: {{name: pay-log}}\nspec: {{targetRef: {{service: pay}}}}\n"
    ));
    let _traffic = Traffic::start(&web, &["pay", "api"], Some(m.net.addr(40, 16000)));
    // Two reports from each zone at least, so charts have lines.
    wait_for("services with traffic at the global", patient(T), || {
        let v: serde_json::Value = serde_json::from_str(
            &m.g.ctl(&["inspect", "services", "--window", "10m", "-o", "json"]),
        )
        .ok()?;
        let busy = v
            .as_array()?
            .iter()
            .filter(|s| s["total"]["requests"].as_u64().unwrap_or(0) > 100)
            .count();
        // db in z1: connections, some of them failed.
        let db_z1 = v.as_array()?.iter().find(|s| s["service"] == "db")?["zones"]
            .as_array()?
            .iter()
            .find(|z| z["zone"] == "z1")?
            .clone();
        let tcp = |k: &str| db_z1[k].as_f64().unwrap_or(0.0) > 0.0;
        (busy == 2 && tcp("tcpCps") && tcp("tcpFailedCps")).then_some(())
    });
    // pay's points at the global, per report interval (z1's).
    let token = std::fs::read_to_string(m.g.data.join("admin-token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let pay_series = || {
        let r = http(
            m.net.addr(1, 5681),
            "GET",
            "global",
            "/api/v1/inspect/services/pay/series?window=10m",
            &[("authorization", auth.as_str())],
        )
        .unwrap();
        let series: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let points = series["zones"]["z1"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (series, points)
    };
    // Charts with lines: three reports of pay at the global.
    wait_for("three reports of pay at the global", patient(T), || {
        (pay_series().1.len() >= 3).then_some(())
    });
    m.g.apply(&format!(
        "{H}kind: Drill\nmetadata: {{name: api-z1}}\nspec:\n  target: {{zone: z1, services: [api]}}\n  method: drain\n  stages: [{{percent: 100, hold: 10m}}]\n  guard: {{slos: [{{service: api, maxErrorRate: 100}}]}}\n  observe: {{before: 60s, after: 5s}}\n"
    ));
    m.g.ctl(&["drill", "run", "api-z1"]);
    // The zones report every second while the drill runs: three such
    // reports at the global before the browser looks.
    wait_for("reports every second during the drill", patient(T), || {
        let (_, points) = pay_series();
        let fast = points
            .iter()
            .filter(|p| p["intervalMs"].as_u64() < Some(2000))
            .count();
        (fast >= 3).then_some(())
    });

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&out);
    let checks = serde_json::json!([
        {"page": "#/zones", "expect": ["z1", "z2", "online"],
         "present": ["tr[data-zone='z1'] td[data-region='eu']", "tr[data-zone='z2'] td[data-region='us']"]},
        {"page": "#/services", "expect": ["pay", "api", "db", "z1", "z2", "1/1", "2/2", "Requests per second by zone"],
         "present": ["tr[data-service='db'][data-zone='z1'] td.tcp-cps:not(.muted)",
                     "tr[data-service='db'][data-zone='z1'] td.tcp-failed.bad",
                     "tr[data-service='pay'][data-zone='z1'] td.tcp-failed.muted"]},
        {"page": "#/service/db", "name": "service-db", "expect": ["Service db", "TCP connections per second (and failed)"],
         "present": ["tr[data-zone='z1'] td.tcp-failed.bad"]},
        {"page": "#/service/pay", "name": "service-pay", "expect": ["Service pay", "z1", "Requests per second", "p99 latency"]},
        {"page": "#/traffic", "expect": ["z2", "z1", "req/s", "web", "pay", "conn/s"],
         "present": ["tr[data-edge='web.z2>db.z1'] td.tcp-cps:not(.muted)"]},
        {"page": "#/policies", "expect": ["Retry", "pay-retries", "AccessLog", "pay-log", "service web → service pay"]},
        {"page": "#/dataplanes", "expect": ["pay-12", "web-40", "serving", "gateway", "z1", "z2"]},
        {"page": "#/dataplane/z1/pay-12", "name": "dataplane-pay-12", "expect": ["Dataplane pay-12", "outbound"]},
        {"page": "#/drills", "expect": ["Running: api-z1", "Abort now", "drain", "running"],
         "click": "button[data-abort='api-z1']", "after": ["No drill running", "aborted"]},
        {"page": "#/drill/api-z1", "name": "drill-api-z1", "expect": ["Drill api-z1", "aborted by an operator in the console", "Timeline", "restored", "requests per second by serving zone"]},
    ]);
    let o = std::process::Command::new(python())
        .arg(py_script("console.py"))
        .arg(&browser)
        .arg(format!("http://{}", m.net.addr(1, 5681)))
        .arg(m.g.data.join("admin-token"))
        .arg(&out)
        .arg(checks.to_string())
        .output()
        .expect("run console.py");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {stdout}"))
            .clone()
    };
    assert_eq!(step("signed-out")["api"], 401);
    let r: serde_json::Value =
        serde_json::from_str(&m.g.ctl(&["drill", "report", "api-z1", "-o", "json"])).unwrap();
    assert_eq!(r["outcome"], "aborted");
    assert_eq!(r["reason"], "aborted by an operator in the console");
    assert_eq!(step("write-without-csrf")["status"], 401);
    let audit = m.g.ctl(&["audit", "-o", "json"]);
    assert!(audit.contains("drill.abort"), "{audit}");
    assert!(step("wrong-token")["error"]
        .as_str()
        .is_some_and(|e| e.contains("not the admin token")));
    for (page, min_lines) in [("services", 2), ("service-pay", 3), ("service-db", 2)] {
        let lines = step(page)["charts"].as_u64().unwrap_or(0);
        assert!(lines >= min_lines, "{page}: {lines} chart lines: {stdout}");
    }
    // web calls pay and api one request at a time, 20 ms apart: under 50
    // req/s each, so no zone serves 100. While the drill runs, zones report
    // every second; the 5 s buckets of the rate-by-zone chart must average
    // a service's reports, not add them up (which read 2-5x the rate).
    let peak = step("services")["maxima"]["Requests per second by zone"]
        .as_f64()
        .unwrap_or(f64::MAX);
    assert!(
        peak > 10.0 && peak < 100.0,
        "rate by zone peaks at {peak} req/s: {stdout}"
    );
    // The same from the API: no report interval of pay, before, during or
    // after the drill, reads more than web sends (under 50 req/s), though
    // zones and proxies reported every second during it and every 5 s
    // around it (their reports fall on the same wall-clock boundaries).
    // (A report that reached its zone late would read about twice the
    // rate, 80 here; a 5 s report in a 1 s interval read 118-127.)
    let (series, points) = pay_series();
    for p in &points {
        let rps = p["rps"].as_f64().unwrap_or(f64::MAX);
        assert!(
            rps < 100.0,
            "pay at {rps} req/s over {}: {series}",
            p["intervalMs"]
        );
    }
    // A TCP-only service charts its connections, not empty request charts.
    let db = step("service-db")["maxima"].clone();
    assert!(
        db.get("Requests per second").is_none()
            && db["TCP connections per second (and failed)"].as_f64() > Some(1.0),
        "{db}"
    );
    for name in [
        "login-refused",
        "zones",
        "services",
        "service-pay",
        "service-db",
        "traffic",
        "policies",
        "dataplanes",
        "dataplane-pay-12",
        "drills",
        "drills-after",
        "drill-api-z1",
    ] {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}.png: {} bytes",
            png.len()
        );
    }
}
