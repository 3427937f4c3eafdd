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

/// An admin token file that other users can read stops a zone-cp and a
/// sidecar at start, before either waits for its control plane: with the
/// global and the zone-cp down, both exit non-zero with an error naming
/// `--admin-token-file` (a zone-cp used to check the file only after
/// joining the global: with the global down it reported the failed join,
/// never the file).
#[test]
fn a_bad_admin_token_file_stops_a_zone_cp_and_a_sidecar_before_they_wait_for_their_control_plane() {
    use std::os::unix::fs::PermissionsExt;
    let net = Net(59);
    let (s, mut g, mut z) = one_zone("admin-token-open", net);
    let zt = g.zone_token("z2");
    let dt = g.dp_token("z1", "web");
    let file = s.0.join("open.token");
    std::fs::write(&file, "a-long-random-admin-string\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file_arg = file.display().to_string();
    g.proc.kill();
    z.proc.kill();
    let mut z2 = ZoneCp::start_with(
        &s.0,
        net,
        3,
        "z2",
        "r1",
        Some(&zt),
        &["--admin-token-file", &file_arg],
    );
    let mut args = sidecar_args(net, 10, "web", &z, &dt);
    args.extend(["--admin-token-file".to_string(), file_arg.clone()]);
    let mut dp = spawn(&s.0, "sidecar-web-open-token", "dataplane", &args);
    for p in [&mut z2.proc, &mut dp] {
        let code = p.wait_exit(T);
        assert!(
            matches!(code, Some(c) if c != 0),
            "{} exit code {code:?}; log:\n{}",
            p.name,
            p.log_text()
        );
        let log = p.log_text();
        assert!(log.contains("--admin-token-file"), "{}: {log}", p.name);
    }
}
