//! Certificate lifetimes, with shortened clocks:
//!
//! * a zone's intermediate CA is renewed over its sync stream before it
//!   expires; both are trusted while certificates from the old one live;
//!   requests keep flowing through the renewal and past the old CA's expiry;
//! * a zone-cp outage of half the workload certificate lifetime (12 h of
//!   the default 24 h), starting right before the sidecars' renewal is due,
//!   stops no request: the certificate in hand outlives the outage.
mod support;

use std::time::{Duration, SystemTime};

use support::*;

const T: Duration = Duration::from_secs(60);

fn rfc3339(v: &serde_json::Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("a timestamp")).unwrap()
}

#[test]
fn a_zone_ca_is_renewed_before_it_expires_without_failed_requests() {
    let s = Scratch::new("ca-renewal");
    let net = Net(47);
    // Zone CAs live 30 s here; zones renew at two thirds of that.
    let g = Global::start_with(&s.0, net, &["--zone-ca-validity", "30s"]);
    let z = ZoneCp::start(&s.0, net, 2, "z1", "r1", Some(&g.zone_token("z1")));
    let api = Workload::start(&s.0, net, 11, "api", &z, &g.dp_token("z1", "api"));
    let web = Workload::start(&s.0, net, 10, "web", &z, &g.dp_token("z1", "web"));
    wait_for("web sees api", T, || {
        (!web.endpoints("api").is_empty()).then_some(())
    });
    let first = z.dump()["caFingerprint"].as_str().unwrap().to_string();
    let first_end = rfc3339(&z.dump()["caNotAfter"]);
    let load = Load::start(web.outbound(), "api", "GET");
    load.wait_more(10);

    let second = wait_for("the zone CA renewed", T, || {
        z.dump()["caFingerprint"]
            .as_str()
            .filter(|f| *f != first)
            .map(str::to_string)
    });
    assert!(
        SystemTime::now() < first_end,
        "renewed before the old CA expired"
    );
    // While certificates from the old CA live, both are trusted mesh-wide:
    // listed by the global and in every sidecar's trust.
    let cas = g.ctl(&["get", "zoneca", "z1", "-o", "json"]);
    assert!(cas.contains(&first) && cas.contains(&second), "{cas}");
    for w in [&web, &api] {
        wait_for("the sidecar trusts both z1 CAs", T, || {
            let l = w.dump()["trust"]["zoneCas"]["z1"].clone();
            let has = |f: &str| l.as_array().is_some_and(|a| a.iter().any(|x| x == f));
            (has(&first) && has(&second)).then_some(())
        });
    }
    // Sidecars move to certificates from the new CA.
    for w in [&web, &api] {
        wait_for("a certificate from the renewed CA", T, || {
            (w.dump()["certificateIssuer"] == second.as_str()).then_some(())
        });
    }
    // Traffic keeps flowing past the old CA's expiry.
    wait_for("the first CA expired", T, || {
        (SystemTime::now() > first_end + Duration::from_secs(2)).then_some(())
    });
    load.wait_more(20);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    let zadmin = net.addr(2, 5680);
    assert!(metric_sum(zadmin, "tern_zone_ca_renewals_total", "result=\"ok\"") >= 1.0);
    let expiry = metric_sum(zadmin, "tern_zone_ca_expiry_timestamp_seconds", "");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now,
        "the expiry metric shows the renewed CA: {expiry}"
    );
    assert!(g
        .ctl(&["audit"])
        .lines()
        .any(|l| l.contains("zone.ca-renewed") && l.contains("z1")));
}

#[test]
fn a_zone_cp_outage_of_half_the_certificate_lifetime_stops_no_request() {
    let s = Scratch::new("cp-outage");
    let net = Net(48);
    let g = Global::start(&s.0, net);
    // 60 s certificates: the outage below is 30 s, as 12 h is of 24 h.
    // The proxies' reconnect backoff (at most 3 s) is noise against 24 h
    // but not against 60 s; proxies also retry faster as expiry nears.
    let ttl = Duration::from_secs(60);
    g.set_cert_ttl("60s");
    let zt = g.zone_token("z1");
    let mut z = ZoneCp::start(&s.0, net, 2, "z1", "r1", Some(&zt));
    wait_for("z1 synced the mesh", T, || {
        g.zone("z1")
            .filter(|v| v["online"] == true && v["ackedVersion"] == v["globalVersion"])
    });
    let api = Workload::start(&s.0, net, 11, "api", &z, &g.dp_token("z1", "api"));
    let web = Workload::start(&s.0, net, 10, "web", &z, &g.dp_token("z1", "web"));
    wait_for("web sees api", T, || {
        (!web.endpoints("api").is_empty()).then_some(())
    });
    let load = Load::start(web.outbound(), "api", "GET");
    load.wait_more(10);

    // Take the zone-cp down just before web's renewal is due: the worst
    // moment. The interval is measured from web's first renewal, so the
    // test holds whatever the renewal schedule is.
    let first_end = rfc3339(&web.dump()["certificateNotAfter"]);
    let end = wait_for("web's first renewal", T * 2, || {
        let na = rfc3339(&web.dump()["certificateNotAfter"]);
        (na != first_end).then_some(na)
    });
    let interval = SystemTime::now()
        .duration_since(first_end - ttl)
        .unwrap_or_default();
    // Kill 2 s (times the patience) before the next renewal is due. If a
    // busy machine let that renewal happen first, aim at the one after.
    let mut end = end;
    loop {
        let renew_due = end - ttl + interval;
        wait_for("just before the next renewal is due", T * 2, || {
            (SystemTime::now() + patient(Duration::from_secs(2)) >= renew_due).then_some(())
        });
        let now_end = rfc3339(&web.dump()["certificateNotAfter"]);
        if now_end == end {
            break;
        }
        end = now_end;
    }
    z.proc.kill();
    let down_at = SystemTime::now();
    wait_for("web notices the zone-cp is gone", T, || {
        (web.dump()["controlPlane"]["connected"] == false).then_some(())
    });
    // Half the lifetime without a control plane, under load.
    while SystemTime::now() < down_at + ttl / 2 {
        load.wait_more(5);
    }
    // The same certificates served throughout, and are still valid.
    for w in [&web, &api] {
        let na = rfc3339(&w.dump()["certificateNotAfter"]);
        assert!(
            na > SystemTime::now(),
            "a certificate expired during the outage"
        );
    }
    assert_eq!(rfc3339(&web.dump()["certificateNotAfter"]), end);
    let stats = load.snapshot();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);

    // The zone-cp returns; sidecars reconnect and renew.
    z.restart();
    wait_for("web renewed its certificate", T, || {
        (rfc3339(&web.dump()["certificateNotAfter"]) > end).then_some(())
    });
    load.wait_more(10);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
}
