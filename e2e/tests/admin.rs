//! Operating a component through its admin port and logs: `--json-logs`
//! writes one JSON object per line, and `PUT /log-level` changes the log
//! filter of a running process (authenticated where the admin port is).
mod support;

use std::net::TcpStream;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A sidecar started with `--json-logs` writes only JSON lines, each with a
/// level, a target and a message (its start-up lines included).
/// `PUT /log-level debug` makes debug events appear at once (a connection
/// closed before its TLS hello is logged at debug), and an invalid filter
/// is refused with 400 naming it. The global's `PUT /log-level` requires
/// its admin bearer token.
#[test]
fn json_logs_and_the_log_level_can_be_set_on_a_running_process() {
    let net = Net(53);
    let (s, g, z) = one_zone("admin-logs", net);
    let w = Workload::start_with(
        &s.0,
        net,
        10,
        "web",
        &z,
        &g.dp_token("z1", "web"),
        &["--json-logs"],
    );
    let lines = json_lines(&w.sidecar.log_text());
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l["level"].is_string() && l["target"].is_string() && l["fields"]["message"].is_string(),
            "{l}"
        );
    }
    let debug_count = |w: &Workload| {
        json_lines(&w.sidecar.log_text())
            .iter()
            .filter(|l| l["level"] == "DEBUG")
            .count()
    };
    assert_eq!(debug_count(&w), 0, "info is the default level");

    let r = http_body(w.admin(), "PUT", "x", "/log-level", &[], "debug").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    wait_for("a debug event is logged", T, || {
        drop(TcpStream::connect(w.inbound()).ok()?);
        (debug_count(&w) > 0).then_some(())
    });
    let r = http_body(w.admin(), "PUT", "x", "/log-level", &[], "=[bad").unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("=[bad"), "{r:?}");

    let admin = net.addr(1, 5681);
    let r = http_body(admin, "PUT", "x", "/log-level", &[], "debug").unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    let token = std::fs::read_to_string(g.data.join("admin-token")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let r = http_body(
        admin,
        "PUT",
        "x",
        "/log-level",
        &[("authorization", &bearer)],
        "debug",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}
