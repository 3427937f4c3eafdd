//! Failover drills on three zones in two regions, real processes:
//!
//! | zone | region | zone-cp | gateways | api | other |
//! |---|---|---|---|---|---|
//! | z1 | eu | .2 | .21 .22 | .12 | web .10 (the caller) |
//! | z2 | eu | .3 | .31 .32 | .13 | |
//! | z3 | us | .4 | .41 .42 | .14 | billing .15 (only here) |
//!
//! web calls api through its sidecar; api in z1 is the local tier, so
//! every drill of api in z1 must move web's traffic to z2 (then z3).
mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(30);
const H: &str = "apiVersion: tern.dev/v1alpha1\n";
const SIDECAR_FLAGS: &[&str] = &["--per-try-timeout", "1s", "--health-interval", "300ms"];

struct World {
    _s: Scratch,
    g: Global,
    _zones: Vec<ZoneCp>,
    gateways: Vec<(String, GatewayProc)>,
    apis: Vec<Workload>,
    web: Workload,
    _billing: Workload,
}

fn zone_of(i: usize) -> &'static str {
    ["z1", "z2", "z3"][i]
}

impl World {
    fn build(test: &str, net: Net) -> World {
        let s = Scratch::new(test);
        let g = Global::start(&s.0, net);
        let mut zones = Vec::new();
        for (i, region) in ["eu", "eu", "us"].iter().enumerate() {
            let z = zone_of(i);
            let t = g.zone_token(z);
            zones.push(ZoneCp::start(&s.0, net, 2 + i as u8, z, region, Some(&t)));
        }
        let mut gateways = Vec::new();
        for (i, hosts) in [[21u8, 22], [31, 32], [41, 42]].iter().enumerate() {
            let z = zone_of(i);
            let t = g.token_file(
                &format!("{z}-gw.token"),
                &["generate", "gateway-token", "--zone", z],
            );
            for h in hosts {
                gateways.push((
                    z.to_string(),
                    GatewayProc::start(&s.0, net, *h, &zones[i], &t, &[]),
                ));
            }
        }
        let apis = (0..3)
            .map(|i| {
                let t = g.dp_token(zone_of(i), "api");
                Workload::start_with(&s.0, net, 12 + i as u8, "api", &zones[i], &t, SIDECAR_FLAGS)
            })
            .collect();
        let bt = g.dp_token("z3", "billing");
        let billing = Workload::start_with(&s.0, net, 15, "billing", &zones[2], &bt, SIDECAR_FLAGS);
        let wt = g.dp_token("z1", "web");
        let web = Workload::start_with(&s.0, net, 10, "web", &zones[0], &wt, SIDECAR_FLAGS);
        let w = World {
            _s: s,
            g,
            _zones: zones,
            gateways,
            apis,
            web,
            _billing: billing,
        };
        wait_for("web sees api in all three zones", T, || {
            let zs = w.api_zones();
            (zs.contains(&"z1".to_string())
                && zs.contains(&"z2".to_string())
                && zs.contains(&"z3".to_string()))
            .then_some(())
        });
        w
    }

    fn api_zones(&self) -> Vec<String> {
        self.web.endpoint_zones("api")
    }

    /// Steady GETs from web to api, counted by the test itself.
    fn load(&self) -> Load {
        let load = Load::start(self.web.outbound(), "api", "GET");
        wait_for("load served by api in z1", T, || {
            load.snapshot().last_from(20, "z1").then_some(())
        });
        load
    }

    fn report(&self, drill: &str) -> Value {
        let out = self.g.ctl(&["drill", "report", drill, "-o", "json"]);
        serde_json::from_str(&out).unwrap()
    }

    fn wait_report(&self, drill: &str, state: &str, limit: Duration) -> Value {
        wait_for(&format!("drill {drill} report {state}"), limit, || {
            let r = self.report(drill);
            (r["state"] == state).then_some(r)
        })
    }

    /// The drill faults api's sidecar in z1 has now.
    fn api_z1_drill_faults(&self) -> usize {
        self.apis[0].dump()["faults"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|f| f["name"].as_str().is_some_and(|n| n.starts_with("Drill/")))
                    .count()
            })
            .unwrap_or(0)
    }

    fn web_drain_active(&self) -> bool {
        self.web.dump()["clusters"]["api"]["drain"]["active"] == true
    }
}

/// Now plus `secs`, as RFC 3339.
fn rfc3339_in(secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs((now + secs) as u64),
    )
    .to_string()
}

/// What the report counts for api across its whole window.
fn totals(r: &Value) -> (u64, u64) {
    let api = r["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "api")
        .expect("api in the report");
    (
        api["total"]["requests"].as_u64().unwrap(),
        api["total"]["failed"].as_u64().unwrap(),
    )
}

fn retries_across_localities(g: &Global) {
    g.apply(&format!(
        "{H}kind: Retry\nmetadata: {{name: api-retries}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  http: {{attempts: 3, on: [5xx, reset, connect-failure], attemptsPerLocality: 1, budget: {{percent: 100, minPerSecond: 50}}}}\n"
    ));
}

/// A blackhole of api in z1, in two stages, passes: web's retries move
/// every failed attempt to z2, the drill's faults reach api's sidecar in
/// z1 and z1's gateways while it runs and are gone after the restore,
/// and the report's counts for api (all of its window) are exactly the
/// load generator's own: requests and failed requests. Preflight refuses,
/// saying why: a second drill while one runs, a drill of a service that
/// runs nowhere else, and one whose declared capacity outside the target
/// is below the observed rate.
#[test]
fn a_blackhole_drill_passes_and_its_report_counts_what_the_callers_saw() {
    let w = World::build("drill-blackhole", Net(77));
    retries_across_localities(&w.g);
    wait_for("web's retry policy for api", T, || {
        (w.web.dump()["clusters"]["api"]["resilience"]["attemptsPerLocality"] == 1).then_some(())
    });
    w.g.apply(&format!(
        "{H}kind: Drill\nmetadata: {{name: api-z1}}\nspec:\n  target: {{zone: z1, services: [api]}}\n  method: blackhole\n  stages: [{{percent: 50, hold: 6s}}, {{percent: 100, hold: 8s}}]\n  guard: {{for: 4s, slos: [{{service: api, maxErrorRate: 5}}]}}\n  observe: {{before: 60s, after: 20s}}\n---\n{H}kind: Drill\nmetadata: {{name: billing-z3}}\nspec:\n  target: {{zone: z3, services: [billing]}}\n  method: drain\n  stages: [{{percent: 100, hold: 5s}}]\n  guard: {{slos: [{{service: billing, maxErrorRate: 1}}]}}\n---\n{H}kind: Drill\nmetadata: {{name: api-z1-small}}\nspec:\n  target: {{zone: z1, services: [api]}}\n  method: drain\n  stages: [{{percent: 100, hold: 5s}}]\n  guard: {{slos: [{{service: api, maxErrorRate: 1}}]}}\n  capacity: [{{service: api, perInstanceRps: 0.001}}]\n"
    ));
    let refused = w.g.ternctl(&["drill", "run", "billing-z3"]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        why.contains("no healthy instance of billing outside z3"),
        "{why}"
    );
    let load = w.load();
    wait_for("the global sees api's rate", T, || {
        let v: Value =
            serde_json::from_str(&w.g.ctl(&["inspect", "services", "-o", "json"])).unwrap();
        v.as_array()?
            .iter()
            .any(|s| s["service"] == "api" && s["total"]["rps"].as_f64() > Some(1.0))
            .then_some(())
    });
    let small = w.g.ternctl(&["drill", "run", "api-z1-small"]);
    let why = String::from_utf8_lossy(&small.stderr);
    assert!(!small.status.success());
    assert!(
        why.contains("instances outside z1 can take 0.0 rps"),
        "{why}"
    );
    let out = w.g.ctl(&["drill", "run", "api-z1"]);
    assert!(out.contains("drill api-z1 started"), "{out}");
    let second = w.g.ternctl(&["drill", "run", "billing-z3"]);
    let why = String::from_utf8_lossy(&second.stderr);
    assert!(why.contains("one drill runs at a time"), "{why}");
    wait_for("blackhole faults on api's sidecar in z1", T, || {
        (w.api_z1_drill_faults() == 2).then_some(())
    });
    for (z, gw) in &w.gateways {
        let drills = gw.dump()["drills"].as_array().cloned().unwrap_or_default();
        assert_eq!(!drills.is_empty(), z == "z1", "gateway of {z}: {drills:?}");
    }
    wait_for("load served by z2 while z1 is blackholed", T, || {
        load.snapshot().last_from(20, "z2").then_some(())
    });
    let r = w.wait_report("api-z1", "observing", patient(Duration::from_secs(60)));
    assert_eq!(r["outcome"], "passed", "{r:#}");
    wait_for("api's sidecar in z1 restored", T, || {
        (w.api_z1_drill_faults() == 0).then_some(())
    });
    wait_for("load served by z1 again", T, || {
        load.snapshot().last_from(20, "z1").then_some(())
    });
    let seen = load.finish();
    let r = w.wait_report("api-z1", "done", patient(Duration::from_secs(60)));
    assert_eq!(
        totals(&r),
        (seen.ok + seen.failed, seen.failed),
        "report vs load generator; report: {:#}",
        r["services"]
    );
    let events: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "started",
            "stage",
            "stage",
            "completed",
            "restored",
            "report complete"
        ],
        "{r:#}"
    );
    assert_eq!(r["slos"][0]["met"], true, "{r:#}");
    let table = w.g.ctl(&["drill", "report", "api-z1"]);
    assert!(table.contains("outcome passed"), "{table}");
    let html = w.g.ctl(&["drill", "report", "api-z1", "-o", "html"]);
    assert!(html.contains("<svg") && html.contains("api"), "{html}");
    let status = w.g.ctl(&["drill", "status"]);
    assert!(
        status.contains("no drill running") && status.contains("api-z1"),
        "{status}"
    );
}

/// A blackhole whose callers cannot fail over (no retries, no outlier
/// detection) breaks api's SLO: the guard aborts the drill after the
/// breach has held for `for`, the target is restored at once (the faults
/// leave api's sidecar and z1 serves again), and the report says why and
/// marks the SLO breached.
#[test]
fn a_drill_that_breaks_its_slo_is_aborted_by_its_guard_and_restored() {
    let w = World::build("drill-guard", Net(78));
    w.g.apply(&format!(
        "{H}kind: Retry\nmetadata: {{name: no-retries}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  http: {{attempts: 1}}\n---\n{H}kind: CircuitBreaker\nmetadata: {{name: no-ejection}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  outlierDetection: {{consecutive5xx: 0, consecutiveGatewayErrors: 0, consecutiveLocalFailures: 0}}\n---\n{H}kind: Drill\nmetadata: {{name: api-z1}}\nspec:\n  target: {{zone: z1, services: [api]}}\n  method: blackhole\n  stages: [{{percent: 100, hold: 2m}}]\n  guard: {{for: 2s, slos: [{{service: api, maxErrorRate: 1}}]}}\n  observe: {{before: 30s, after: 10s}}\n"
    ));
    wait_for("web's retry policy for api", T, || {
        (w.web.dump()["clusters"]["api"]["resilience"]["attempts"] == 1).then_some(())
    });
    let load = w.load();
    w.g.ctl(&["drill", "run", "api-z1"]);
    let r = w.wait_report("api-z1", "observing", patient(Duration::from_secs(60)));
    assert_eq!(r["outcome"], "aborted", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.starts_with("SLO guard: api: error rate"), "{reason}");
    // Aborted long before the stage's 2 minutes.
    let ran = r["restoredAt"].as_u64().unwrap() - r["startedAt"].as_u64().unwrap();
    assert!(ran < 60_000, "ran {ran} ms");
    wait_for("api's sidecar in z1 restored", T, || {
        (w.api_z1_drill_faults() == 0).then_some(())
    });
    wait_for("load served by z1 again", T, || {
        load.snapshot().last_from(20, "z1").then_some(())
    });
    let seen = load.finish();
    assert!(seen.failed > 0, "the blackhole failed requests");
    let r = w.wait_report("api-z1", "done", patient(Duration::from_secs(60)));
    assert_eq!(r["slos"][0]["met"], false, "{r:#}");
    assert_eq!(totals(&r).1, seen.failed, "{:#}", r["services"]);
}

/// A drain of api in region eu (z1 and z2, resolved by the global) moves
/// web's traffic to z3 in us; the global is killed mid-drill: the zones
/// keep the drain until the drill's deadline and then restore on their
/// own, not before (web's sidecar stops draining and z1 serves again, with
/// no global; no request failed); the restarted global marks the run
/// interrupted.
#[test]
fn zones_restore_a_drain_at_its_deadline_when_the_global_dies_mid_drill() {
    let mut w = World::build("drill-deadline", Net(79));
    w.g.apply(&format!(
        "{H}kind: Drill\nmetadata: {{name: drain-eu}}\nspec:\n  target: {{region: eu, services: [api]}}\n  method: drain\n  stages: [{{percent: 100, hold: 15s}}]\n  deadline: 20s\n  guard: {{slos: [{{service: api, maxErrorRate: 50}}]}}\n  observe: {{before: 30s, after: 5s}}\n"
    ));
    let load = w.load();
    w.g.ctl(&["drill", "run", "drain-eu"]);
    let started = w.report("drain-eu");
    let deadline = started["deadlineAt"].as_u64().unwrap();
    assert_eq!(
        started["zones"],
        serde_json::json!(["z1", "z2"]),
        "the region's zones"
    );
    wait_for("web drains api in eu (z1 and z2)", T, || {
        w.web_drain_active().then_some(())
    });
    wait_for("load served by z3 (us) during the drain", T, || {
        load.snapshot().last_from(20, "z3").then_some(())
    });
    w.g.proc.kill();
    // Restored by the deadline (20 s from the start), the global dead...
    wait_for("web stops draining", patient(T), || {
        (!w.web_drain_active()).then_some(())
    });
    // ...and not before it: losing the global does not end a drill.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now >= deadline, "restored {} ms early", deadline - now);
    wait_for("load served by z1 again", T, || {
        load.snapshot().last_from(20, "z1").then_some(())
    });
    wait_for("z1's zone-cp withdrew the drain from web", T, || {
        w.web.dump()["clusters"]["api"]["drain"]
            .is_null()
            .then_some(())
    });
    let seen = load.finish();
    assert_eq!(seen.failed, 0, "{:?}", seen.failures);
    w.g.start_again();
    let r = w.wait_report("drain-eu", "done", T);
    assert_eq!(r["outcome"], "interrupted", "{r:#}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("restored on their own"),
        "{r:#}"
    );
}

/// A partition of the z1–z2 link: with api gone from z1, web's traffic
/// runs through z1's gateways to z2; while the partition holds, z1's
/// gateways refuse flows to z2 and z2's refuse flows from z1, so web's
/// retries move every request to z3 (no request fails), and after the
/// restore z2 serves again.
#[test]
fn a_partition_between_two_zones_moves_traffic_to_the_third() {
    let mut w = World::build("drill-partition", Net(80));
    retries_across_localities(&w.g);
    w.g.apply(&format!(
        "{H}kind: Drill\nmetadata: {{name: cut-z1-z2}}\nspec:\n  target: {{link: [z1, z2]}}\n  method: partition\n  stages: [{{percent: 100, hold: 10s}}]\n  guard: {{slos: [{{service: api, maxErrorRate: 5}}]}}\n  observe: {{before: 30s, after: 5s}}\n"
    ));
    wait_for("web's retry policy for api", T, || {
        (w.web.dump()["clusters"]["api"]["resilience"]["attemptsPerLocality"] == 1).then_some(())
    });
    let mut gone = w.apis.remove(0);
    gone.sidecar.kill();
    gone.app.kill();
    wait_for("api gone from z1 in web's config", T, || {
        (!w.api_zones().contains(&"z1".to_string())).then_some(())
    });
    let load = Load::start(w.web.outbound(), "api", "GET");
    wait_for("load served by z2", T, || {
        load.snapshot().last_from(20, "z2").then_some(())
    });
    w.g.ctl(&["drill", "run", "cut-z1-z2"]);
    wait_for(
        "the z1 and z2 gateways refuse each other's flows",
        T,
        || {
            w.gateways
                .iter()
                .filter(|(z, _)| z != "z3")
                .all(|(z, g)| {
                    let peer = if z == "z1" { "z2" } else { "z1" };
                    g.dump()["drills"][0]["peerZones"][0] == peer
                })
                .then_some(())
        },
    );
    wait_for("load served by z3 during the partition", T, || {
        load.snapshot().last_from(20, "z3").then_some(())
    });
    let r = w.wait_report("cut-z1-z2", "observing", patient(Duration::from_secs(60)));
    assert_eq!(r["outcome"], "passed", "{r:#}");
    wait_for("load served by z2 again", T, || {
        load.snapshot().last_from(20, "z2").then_some(())
    });
    let seen = load.finish();
    assert_eq!(seen.failed, 0, "{:?}", seen.failures);
    let refused: f64 = w
        .gateways
        .iter()
        .map(|(_, g)| g.metric("tern_gateway_stream_resets_total", "code=\"21\""))
        .sum();
    assert!(refused >= 1.0, "gateways counted refused flows");
}

/// A drill scheduled every minute starts on its own at the minute (by the
/// global's clock, within the patience-scaled slack), its blackhole reaches
/// api's sidecar, and an operator's abort restores at once: the faults
/// leave the sidecar and the report says who ended it. A drill inside a
/// blackout window is refused, naming the window; one running when a
/// blackout window opens is ended by it, and `drill run --wait` follows
/// that run to its report and exits with an error saying why.
#[test]
fn a_scheduled_drill_starts_on_time_and_an_abort_restores_at_once() {
    let w = World::build("drill-schedule", Net(81));
    w.g.apply(&format!(
        "{H}kind: Drill\nmetadata: {{name: every-minute}}\nspec:\n  target: {{zone: z1, services: [api]}}\n  method: blackhole\n  stages: [{{percent: 100, hold: 5m}}]\n  guard: {{slos: [{{service: api, maxErrorRate: 50}}]}}\n  observe: {{before: 10s, after: 1s}}\n  schedule: {{cron: '* * * * *', timeZone: Asia/Kolkata}}\n---\n{H}kind: Drill\nmetadata: {{name: in-blackout}}\nspec:\n  target: {{zone: z2}}\n  method: drain\n  stages: [{{percent: 100, hold: 5s}}]\n  guard: {{slos: [{{service: api, maxErrorRate: 1}}]}}\n  blackouts: [{{start: '{}', end: '{}'}}]\n",
        rfc3339_in(-3600),
        rfc3339_in(3600)
    ));
    let o = w.g.ternctl(&["drill", "run", "in-blackout"]);
    let why = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && why.contains("inside a blackout window"),
        "{why}"
    );
    let run = wait_for(
        "the scheduled drill starts",
        patient(Duration::from_secs(90)),
        || {
            let v: Value =
                serde_json::from_str(&w.g.ctl(&["drill", "status", "-o", "json"])).unwrap();
            v["runs"]
                .as_array()?
                .iter()
                .find(|r| r["drill"] == "every-minute" && r["state"] == "running")
                .cloned()
        },
    );
    let late = run["startedAt"].as_u64().unwrap() % 60_000;
    assert!(
        late < patient(Duration::from_secs(5)).as_millis() as u64,
        "started {late} ms after the minute"
    );
    wait_for("blackhole faults on api's sidecar in z1", T, || {
        (w.api_z1_drill_faults() == 2).then_some(())
    });
    let out = w.g.ctl(&["drill", "abort", "every-minute"]);
    assert!(out.contains("aborted"), "{out}");
    wait_for("api's sidecar in z1 restored", T, || {
        (w.api_z1_drill_faults() == 0).then_some(())
    });
    let r = w.wait_report("every-minute", "done", T);
    assert_eq!(r["outcome"], "aborted", "{r:#}");
    assert_eq!(r["reason"], "aborted by an operator");
    assert!(r["events"][0]["detail"]
        .as_str()
        .unwrap()
        .ends_with("by the schedule"));

    // A blackout that opens while a drill runs ends it.
    w.g.apply(&format!(
        "{H}kind: Drill\nmetadata: {{name: blackout-soon}}\nspec:\n  target: {{zone: z1, services: [api]}}\n  method: drain\n  stages: [{{percent: 100, hold: 5m}}]\n  guard: {{slos: [{{service: api, maxErrorRate: 50}}]}}\n  observe: {{before: 10s, after: 1s}}\n  blackouts: [{{start: '{}', end: '{}'}}]\n",
        rfc3339_in(8),
        rfc3339_in(3600)
    ));
    // `--wait` follows the run to its report and fails unless it passed.
    let o = w.g.ternctl(&["drill", "run", "blackout-soon", "--wait"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success(), "{out}");
    assert!(
        err.contains("did not pass: a blackout window opened"),
        "{err}"
    );
    assert!(
        out.contains("aborted") && out.contains("outcome aborted"),
        "{out}"
    );
    let r = w.wait_report("blackout-soon", "done", patient(T));
    assert_eq!(r["outcome"], "aborted", "{r:#}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("a blackout window opened"),
        "{r:#}"
    );
}

/// A blackhole of an opaque-TCP service cuts the connections already open
/// to it, not only new ones: web (z2) holds a connection to db in z2 (its
/// local tier) through its sidecar, echoing; once the drill's blackhole
/// reaches db's sidecar in z2 that connection is closed; after the drill
/// is aborted, a new connection echoes again.
#[test]
fn a_blackhole_cuts_live_tcp_connections_to_the_target() {
    use std::io::{Read, Write};
    use support::mesh::Mesh;
    let m = Mesh::start("drill-tcp", Net(82), None);
    let _db1 = m.tcp_echo_db(13);
    let t = m.g.dp_token("z2", "db");
    let _db2_app = spawn(
        &m.s.0,
        "app-db-43",
        "demo-app",
        &[
            "--listen".into(),
            format!("{}:8080", m.net.ip(43)),
            "--tcp-echo".into(),
        ],
    );
    let _db2 = start_sidecar(
        &m.s.0,
        m.net,
        43,
        "db",
        m.zone("z2"),
        &t,
        &["--protocol", "tcp", "--instance", "db-43"],
    );
    let port = format!("tcp:db={}:16000", m.net.ip(40));
    let web = m.workload("z2", 40, "web", &["--outbound-port", &port]);
    wait_for("db in both zones in web's config", T, || {
        let zs = web.endpoint_zones("db");
        (zs.contains(&"z1".to_string()) && zs.contains(&"z2".to_string())).then_some(())
    });
    let echo = |c: &mut std::net::TcpStream| -> bool {
        let mut b = [0u8; 5];
        c.write_all(b"ping!").is_ok() && c.read_exact(&mut b).is_ok() && &b == b"ping!"
    };
    let mut live = std::net::TcpStream::connect(m.net.addr(40, 16000)).unwrap();
    live.set_read_timeout(Some(patient(T))).unwrap();
    assert!(echo(&mut live), "the connection echoes before the drill");
    m.g.apply(&format!(
        "{H}kind: Drill\nmetadata: {{name: db-z2}}\nspec:\n  target: {{zone: z2, services: [db]}}\n  method: blackhole\n  stages: [{{percent: 100, hold: 5m}}]\n  guard: {{slos: [{{service: db, maxErrorRate: 100}}]}}\n  observe: {{before: 10s, after: 1s}}\n"
    ));
    m.g.ctl(&["drill", "run", "db-z2"]);
    // The open connection is closed by db's sidecar (EOF or a reset; a
    // read that times out means it was not).
    let mut b = [0u8; 5];
    let _ = live.write_all(b"ping!");
    let ended = |r: std::io::Result<usize>| match r {
        Ok(0) => Some(true),
        Ok(_) => None,
        Err(e) => Some(!matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
    };
    // The echo may beat the drill's config: then the next read ends.
    let cut = ended(live.read(&mut b))
        .or_else(|| ended(live.read(&mut b)))
        .unwrap_or(false);
    assert!(cut, "the live connection was not cut");
    m.g.ctl(&["drill", "abort", "db-z2"]);
    wait_for("a new connection echoes after the abort", T, || {
        let mut c = std::net::TcpStream::connect(m.net.addr(40, 16000)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        echo(&mut c).then_some(())
    });
}
