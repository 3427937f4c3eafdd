//! Crashes and restarts: the global loses nothing it acknowledged and zones
//! resume; sidecars keep serving while their zone-cp restarts.
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
    let o = g.ternctl_stdin(&["apply", "-f", "-"], Some(docs));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let zt = g.token_file("z.token", &["generate", "zone-token", "--zone", "z1"]);
    let _z = ZoneCp::start(&s.0, net, 2, "z1", "r1", Some(&zt));
    let before = synced(&g, "z1");
    let mesh_before = g.ctl(&["get", "mesh", "default", "-o", "json"]);

    // Crash the global (SIGKILL) and start it again on the same data dir.
    g.restart();
    let mesh_after = g.ctl(&["get", "mesh", "default", "-o", "json"]);
    assert_eq!(
        mesh_before, mesh_after,
        "an acknowledged write survives a crash"
    );
    let tokens = g.ctl(&["get", "tokens"]);
    assert!(tokens.contains("zone") && tokens.contains("z1"), "{tokens}");
    // The zone reconnects with its stored identity and resumes.
    let after = synced(&g, "z1");
    assert_eq!(before["globalVersion"], after["globalVersion"]);

    // A change after the restart reaches the zone as a delta, not a resync.
    let upd = docs.replace("description: first", "description: second");
    let o = g.ternctl_stdin(&["apply", "-f", "-"], Some(&upd));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after2 = synced(&g, "z1");
    assert!(after2["globalVersion"].as_u64() > after["globalVersion"].as_u64());
    let glog = g.proc.log_text();
    let resumed = format!("resume_from={}", before["globalVersion"]);
    assert!(
        glog.lines()
            .any(|l| l.contains("zone connected") && l.contains(&resumed)),
        "the zone resumed from its applied version:\n{glog}"
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
