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

/// A sidecar, a gateway and a zone-cp started with `--admin-token-file`: their
/// `/config_dump` and `PUT /log-level` answer 401 without the bearer token
/// and with a wrong one, and 200 with it; `/ready` and `/metrics` stay open
/// for probes and scrapers.
#[test]
fn a_token_file_guards_the_sidecar_gateway_and_zone_cp_admin_ports() {
    use std::os::unix::fs::PermissionsExt;
    let net = Net(58);
    let (s, g, z) = one_zone("admin-token", net);
    let file = s.0.join("admin.token");
    std::fs::write(&file, "a-long-random-admin-string\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file_arg = file.display().to_string();
    let w = Workload::start_with(
        &s.0,
        net,
        10,
        "web",
        &z,
        &g.dp_token("z1", "web"),
        &["--admin-token-file", &file_arg],
    );
    let gt = g.token_file(
        "z1-gw.token",
        &["generate", "gateway-token", "--zone", "z1"],
    );
    let gw = GatewayProc::start(&s.0, net, 21, &z, &gt, &["--admin-token-file", &file_arg]);
    let zt = g.zone_token("z2");
    let _z2 = ZoneCp::start_with(
        &s.0,
        net,
        3,
        "z2",
        "r1",
        Some(&zt),
        &["--admin-token-file", &file_arg],
    );
    wait_for("z2's admin port serves", T, || {
        get(net.addr(3, 5680), "x", "/ready")
            .ok()
            .filter(|r| r.status == 200)
    });
    let good = "Bearer a-long-random-admin-string";
    for admin in [w.admin(), gw.admin(), net.addr(3, 5680)] {
        for (auth, want) in [(None, 401), (Some("Bearer nope"), 401), (Some(good), 200)] {
            let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
            let r = http_body(admin, "GET", "x", "/config_dump", &h, "")
                .unwrap_or_else(|e| panic!("{admin}: {e}"));
            assert_eq!(r.status, want, "{admin} config_dump with {auth:?}: {r:?}");
            let r = http_body(admin, "PUT", "x", "/log-level", &h, "info").unwrap();
            assert_eq!(r.status, want, "{admin} log-level with {auth:?}: {r:?}");
        }
        assert_eq!(get(admin, "x", "/ready").unwrap().status, 200);
        assert_eq!(get(admin, "x", "/metrics").unwrap().status, 200);
    }
}
