//! Crashes and restarts: the global loses nothing it acknowledged and zones
//! resume; sidecars keep serving while their zone-cp restarts; a zone keeps
//! working while the global is down.
mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn synced(g: &Global, zone: &str) -> serde_json::Value {
    wait_for(&format!("{zone} online and synced"), T, || {
        g.zone(zone)
            .filter(|z| z["online"] == true && z["ackedVersion"] == z["globalVersion"])
    })
}

#[test]
fn killed_global_loses_nothing_and_zones_resume() {
    let s = Scratch::new("global-restart");
    let net = Net(25);
    let mut g = Global::start(&s.0, net);
    let docs = "apiVersion: tern.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: default\nspec:\n  mtls:\n    workloadCertTtl: 2h\n---\napiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: z1\n  labels: {team: infra}\nspec:\n  description: first\n";
    g.apply(docs);
    let zt = g.token_file("z.token", &["generate", "zone-token", "--zone", "z1"]);
    let z = ZoneCp::start(&s.0, net, 2, "z1", "r1", Some(&zt));
    let before = synced(&g, "z1");
    // A second global or zone-cp started on a running one's data folder
    // (other ports) exits at once, saying who holds it, instead of sharing
    // and overwriting the store.
    let path = |p: &std::path::Path| p.display().to_string();
    let at = |h: u8, port: u16| net.addr(h, port).to_string();
    for (name, program, args, holder) in [
        (
            "global-2",
            "global-cp",
            vec![
                "--data-dir".into(),
                path(&g.data),
                "--sync-addr".into(),
                at(9, 5685),
                "--admin-addr".into(),
                at(9, 5681),
            ],
            g.proc.pid(),
        ),
        (
            "zone-2",
            "zone-cp",
            vec![
                "--zone".into(),
                "z1".into(),
                "--region".into(),
                "r1".into(),
                "--data-dir".into(),
                path(&z.data),
                "--proxy-addr".into(),
                at(8, 5678),
                "--admin-addr".into(),
                at(8, 5680),
            ],
            z.proc.pid(),
        ),
    ] {
        let mut second = spawn(&s.0, name, program, &args);
        assert_eq!(second.wait_exit(T), Some(1), "{}", second.log_text());
        let log = second.log_text();
        assert!(
            log.contains("in use by another process") && log.contains(&format!("pid {holder}")),
            "{log}"
        );
    }
    // A write acknowledged just before the crash: the global is killed
    // (SIGKILL) the moment `apply` returns. (A process crash keeps the
    // page cache, so this proves the write is committed before the
    // acknowledgement, not that it reached the disk; the store's
    // synchronous=FULL setting is checked by a store unit test.)
    let upd0 = docs.replace("description: first", "description: just-acked");
    g.apply(&upd0);
    g.restart();
    let zone_after = g.ctl(&["get", "zone", "z1", "-o", "json"]);
    assert!(
        zone_after.contains("just-acked"),
        "an acknowledged write survives a crash: {zone_after}"
    );
    let tokens = g.ctl(&["get", "tokens"]);
    assert!(tokens.contains("zone") && tokens.contains("z1"), "{tokens}");
    // The zone reconnects with its stored identity and resumes from what
    // it had applied (before the last change, or with it), not from 0;
    // the restart itself made no new revision.
    let after = synced(&g, "z1");
    let v0 = before["globalVersion"].as_u64().unwrap();
    assert_eq!(after["globalVersion"].as_u64(), Some(v0 + 1));
    let glog = g.proc.log_text();
    assert!(
        glog.lines().any(|l| l.contains("zone connected")
            && (l.contains(&format!("resume_from={v0} "))
                || l.contains(&format!("resume_from={} ", v0 + 1)))),
        "the zone resumed from its applied version:\n{glog}"
    );

    // A change after the restart reaches the zone as a delta, not a resync:
    // the restarted global has sent incremental deltas only.
    let upd = docs.replace("description: first", "description: second");
    g.apply(&upd);
    let after2 = synced(&g, "z1");
    assert!(after2["globalVersion"].as_u64() > after["globalVersion"].as_u64());
    let admin = net.addr(1, 5681);
    let sent = |kind: &str| {
        metric_sum(
            admin,
            "tern_global_sync_deltas_total",
            &format!("kind=\"{kind}\""),
        )
    };
    assert!(
        sent("incremental") >= 1.0,
        "no incremental delta sent after the restart"
    );
    assert_eq!(
        sent("full"),
        0.0,
        "the restarted global resent the zone's whole state"
    );
}

#[test]
fn sidecars_keep_serving_while_their_zone_cp_restarts() {
    let net = Net(26);
    let (s, g, mut z) = one_zone("zone-restart", net);
    let web_t = g.dp_token("z1", "web");
    let api_t = g.dp_token("z1", "api");
    let _api = Workload::start(&s.0, net, 11, "api", &z, &api_t);
    let web = Workload::start(&s.0, net, 10, "web", &z, &web_t);
    wait_for("web sees api", T, || {
        (!web.endpoints("api").is_empty()).then_some(())
    });
    let load = Load::start(web.outbound(), "api", "GET");
    load.wait_more(20);

    // The zone-cp crashes: sidecars keep their config and keep serving.
    z.proc.kill();
    wait_for("web notices the zone-cp is gone", T, || {
        (web.dump()["controlPlane"]["connected"] == false).then_some(())
    });
    load.wait_more(50);

    // It comes back without a token (stored identity); sidecars reconnect.
    z.restart();
    wait_for("both proxies reconnected", T, || {
        let d = z.dump();
        let n = d["proxies"]
            .as_array()
            .map(|a| a.iter().filter(|p| p["connected"] == true).count());
        (n == Some(2)).then_some(())
    });
    wait_for("web reconnected", T, || {
        (web.dump()["controlPlane"]["connected"] == true).then_some(())
    });
    load.wait_more(30);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    synced(&g, "z1");
}

/// While the global is down (killed), its zone keeps working on its own:
/// traffic between its services fails no request, a new proxy registers,
/// gets a certificate and receives traffic, and running proxies renew their
/// 20 s certificates from the zone CA. When the global returns, the zone
/// reconnects and syncs without a restart.
#[test]
fn a_zone_serves_registers_and_renews_while_the_global_is_down() {
    let net = Net(27);
    let s = Scratch::new("global-outage");
    let mut g = Global::start(&s.0, net);
    g.set_cert_ttl("20s");
    let z = ZoneCp::start(&s.0, net, 2, "z1", "r1", Some(&g.zone_token("z1")));
    synced(&g, "z1");
    // Tokens come from the global: made before it goes down.
    let api_t = g.dp_token("z1", "api");
    let web_t = g.dp_token("z1", "web");
    let api2_t = g.dp_token("z1", "api");
    let _api = Workload::start(&s.0, net, 11, "api", &z, &api_t);
    let web = Workload::start(&s.0, net, 10, "web", &z, &web_t);
    wait_for("web sees api", T, || {
        (!web.endpoints("api").is_empty()).then_some(())
    });
    let load = Load::start(web.outbound(), "api", "GET");
    load.wait_more(20);

    g.proc.kill();
    wait_for("the zone notices the global is gone", T, || {
        (z.dump()["globalConnected"] == false).then_some(())
    });
    let cert_at_kill = web.dump()["certificateNotAfter"].clone();
    load.wait_more(30);

    // A new proxy joins the zone and serves.
    let _api2 = Workload::start(&s.0, net, 12, "api", &z, &api2_t);
    wait_for("web sees the new api instance", T, || {
        (web.endpoints("api").len() == 2).then_some(())
    });
    wait_for("the new instance answers", T, || {
        load.snapshot()
            .served_by
            .iter()
            .any(|i| i.contains(&net.ip(12)))
            .then_some(())
    });
    // Certificates renew from the zone CA.
    wait_for("web renews its certificate", T, || {
        (web.dump()["certificateNotAfter"] != cert_at_kill).then_some(())
    });
    load.wait_more(30);
    assert_eq!(z.dump()["globalConnected"], false, "the global stayed down");

    // The global returns; the zone reconnects on its own.
    g.start_again();
    synced(&g, "z1");
    load.wait_more(10);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
}

/// With `--state-dir`, a sidecar and a gateway restarted while their
/// zone-cp is down start from the certificate, trust and config they kept
/// on disk (a 0700 folder, the state file 0600): both become ready without
/// the zone-cp, and the sidecar's cross-zone requests through the
/// restarted gateway succeed. When the zone-cp returns, both reconnect.
#[test]
fn a_sidecar_and_a_gateway_restarted_during_a_zone_cp_outage_serve_from_their_kept_state() {
    use std::os::unix::fs::PermissionsExt;
    let net = Net(28);
    let s = Scratch::new("kept-state");
    let g = Global::start(&s.0, net);
    let mut z1 = ZoneCp::start(&s.0, net, 2, "z1", "eu", Some(&g.zone_token("z1")));
    let z2 = ZoneCp::start(&s.0, net, 3, "z2", "us", Some(&g.zone_token("z2")));
    let gw_token = |z: &str| {
        g.token_file(
            &format!("gw-{z}"),
            &["generate", "gateway-token", "--zone", z],
        )
    };
    let (gw1_t, gw2_t) = (gw_token("z1"), gw_token("z2"));
    let gw1_state = s.path("gw1-state").display().to_string();
    let gw1_flags = ["--state-dir", gw1_state.as_str()];
    let mut gw1 = GatewayProc::start(&s.0, net, 21, &z1, &gw1_t, &gw1_flags);
    let _gw2 = GatewayProc::start(&s.0, net, 31, &z2, &gw2_t, &[]);
    let _api = Workload::start(&s.0, net, 13, "api", &z2, &g.dp_token("z2", "api"));
    let web_t = g.dp_token("z1", "web");
    let web_state = s.path("web-state").display().to_string();
    let web_flags = ["--state-dir", web_state.as_str()];
    let mut web = Workload::start_with(&s.0, net, 10, "web", &z1, &web_t, &web_flags);
    wait_for("web reaches api in z2", T, || {
        get(web.outbound(), "api", "/")
            .ok()
            .filter(|r| r.status == 200 && r.json()["zone"] == "z2")
    });
    for dir in [&web_state, &gw1_state] {
        let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir), 0o700, "{dir}");
        assert_eq!(mode(&format!("{dir}/proxy-state.pb")), 0o600, "{dir}");
    }

    // z1's zone-cp goes down; then its gateway and web's sidecar restart.
    z1.proc.kill();
    gw1.proc.kill();
    gw1 = GatewayProc::start(&s.0, net, 21, &z1, &gw1_t, &gw1_flags);
    web.sidecar.kill();
    web.sidecar = start_sidecar(&s.0, net, 10, "web", &z1, &web_t, &web_flags);
    assert_eq!(web.dump()["controlPlane"]["connected"], false);
    let load = Load::start(web.outbound(), "api", "GET");
    load.wait_more(30);
    assert!(load.snapshot().last_from(30, "z2"));

    // The zone-cp returns: both reconnect to it.
    z1.restart();
    wait_for("web and the gateway reconnected", T, || {
        (web.dump()["controlPlane"]["connected"] == true
            && gw1.dump()["controlPlane"]["connected"] == true)
            .then_some(())
    });
    load.wait_more(10);
    let stats = load.finish();
    assert_eq!(
        stats.failed,
        0,
        "failed requests (first 3): {:?}",
        &stats.failures[..stats.failures.len().min(3)]
    );
}
