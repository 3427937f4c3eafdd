//! Zone membership and proxy registration cannot be taken over:
//!
//! * a zone token joins once: a second zone control plane (another data
//!   folder) with the same token is refused, and so is a fresh token for a
//!   zone that has joined; the zone that joined keeps syncing;
//! * re-joining is an admin action (`--rejoin`), recorded in the audit
//!   trail; it gives the zone a new CA and cuts off the old control plane;
//! * a proxy cannot register under another proxy's instance name, nor a
//!   second process under a live one's, and one token registers a bounded
//!   number of instances.
mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn refused(z: &mut ZoneCp, why: &str) {
    assert_eq!(z.proc.wait_exit(T), Some(1), "zone-cp {} must exit", z.name);
    let log = z.proc.log_text();
    assert!(log.contains(why), "zone-cp log lacks {why:?}:\n{log}");
}

#[test]
fn a_zone_token_joins_once_and_only_an_admin_rejoin_replaces_a_zone() {
    let s = Scratch::new("join-once");
    let net = Net(45);
    let g = Global::start(&s.0, net);
    let t1 = g.zone_token("z1");
    // A second token for z1, issued before z1 joins.
    let t2 = g.token_file(
        "z1-again.token",
        &["generate", "zone-token", "--zone", "z1"],
    );
    let first = ZoneCp::start(&s.0, net, 2, "z1", "r1", Some(&t1));
    wait_for("z1 online", T, || {
        g.zone("z1").filter(|z| z["online"] == true)
    });
    let joined_at = g.zone("z1").unwrap()["joinedAt"].clone();

    // A second party (its own data folder) with the same token.
    let mut second = ZoneCp::start_in(&s.0, net, 3, "z1", "r1", Some(&t1), "second");
    refused(&mut second, "was already used to join zone z1");
    // ... or with another token, issued before z1 joined.
    let mut third = ZoneCp::start_in(&s.0, net, 4, "z1", "r1", Some(&t2), "third");
    refused(&mut third, "has already joined");
    // Nor is a plain token issued for a zone that has joined: it could never
    // be used, and the refusal says how to re-join.
    let o = g.ternctl(&["generate", "zone-token", "--zone", "z1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("has already joined") && err.contains("--rejoin"),
        "{err}"
    );
    let tokens = g.ctl(&["get", "tokens"]);
    let used = model::token::decode_unverified(&std::fs::read_to_string(&t1).unwrap())
        .unwrap()
        .jti;
    assert!(
        tokens
            .lines()
            .any(|l| l.starts_with(&used) && l.contains("used by z1")),
        "{tokens}"
    );
    // The zone that joined is untouched.
    let z = g.zone("z1").unwrap();
    assert_eq!(
        (z["online"].clone(), z["joinedAt"].clone()),
        (true.into(), joined_at)
    );

    // An explicit re-join: recorded, new CA, the old control plane is cut.
    let t3 = g.token_file(
        "z1-rejoin.token",
        &["generate", "zone-token", "--zone", "z1", "--rejoin"],
    );
    let old_ca = first.dump()["caFingerprint"].as_str().unwrap().to_string();
    let new = ZoneCp::start_in(&s.0, net, 5, "z1", "r1", Some(&t3), "rejoined");
    wait_for("the old zone-cp is cut off", T, || {
        first
            .proc
            .log_text()
            .contains("no longer trusted")
            .then_some(())
    });
    wait_for("the re-joined zone-cp syncs", T, || {
        (new.dump()["globalConnected"] == true).then_some(())
    });
    let new_ca = new.dump()["caFingerprint"].as_str().unwrap().to_string();
    assert_ne!(old_ca, new_ca);
    let cas = g.ctl(&["get", "zoneca", "z1", "-o", "json"]);
    assert!(cas.contains(&new_ca) && !cas.contains(&old_ca), "{cas}");
    let audit = g.ctl(&["audit"]);
    for action in ["zone.rejoin-authorized", "zone.rejoined", "zone.joined"] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(action) && l.contains("z1")),
            "{action} missing:\n{audit}"
        );
    }
}

#[test]
fn registrations_belong_to_their_identity_and_tokens_are_bounded() {
    let net = Net(46);
    let (s, g, z) = one_zone("registration", net);
    let api = Workload::start(&s.0, net, 11, "api", &z, &g.dp_token("z1", "api"));
    let web = Workload::start(&s.0, net, 10, "web", &z, &g.dp_token("z1", "web"));
    let api_ep = vec![format!("{}:15006", net.ip(11))];
    wait_for("web sees api", T, || {
        (web.endpoints("api") == api_ep).then_some(())
    });
    let api_instance = format!("api-{}-15006", net.ip(11));
    let registry = |z: &ZoneCp| z.dump()["proxies"].clone();

    // Another service's token, claiming api's instance name: refused, and
    // api's registration is untouched.
    let intruder = start_sidecar(
        &s,
        net,
        20,
        "web",
        &z,
        &g.dp_token("z1", "web"),
        &api_instance,
    );
    wait_for("the intruder is refused", T, || {
        last_error(&intruder)
            .filter(|e| e.contains("is registered by spiffe://tern/zone/z1/svc/api"))
    });
    // The same service from a second process, while the first is live.
    let twin = start_sidecar(
        &s,
        net,
        21,
        "api",
        &z,
        &g.dp_token("z1", "api"),
        &api_instance,
    );
    wait_for("the twin is refused", T, || {
        last_error(&twin).filter(|e| e.contains("connected from another proxy process"))
    });
    let entry = registry(&z)
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["instance"] == api_instance.as_str())
        .cloned()
        .unwrap();
    assert_eq!(entry["address"], net.ip(11));
    assert_eq!(entry["identity"], "spiffe://tern/zone/z1/svc/api");
    assert_eq!(web.endpoints("api"), api_ep);
    let r = get(web.outbound(), "api", "/").unwrap();
    assert_eq!(r.json()["instance"], format!("{}:8080", net.ip(11)));
    drop(api);

    // One token, at most --max-instances registrations.
    let db_t = g.token_file(
        "db.token",
        &[
            "generate",
            "dataplane-token",
            "--zone",
            "z1",
            "--service",
            "db",
            "--max-instances",
            "1",
        ],
    );
    let _db1 = Workload::start(&s.0, net, 22, "db", &z, &db_t);
    let db2 = start_sidecar(&s, net, 23, "db", &z, &db_t, "db-second");
    wait_for("the second db is refused", T, || {
        last_error(&db2).filter(|e| e.contains("already has 1 registered instances"))
    });
}

/// A sidecar that may be refused (no readiness wait), with an instance name.
fn start_sidecar(
    s: &Scratch,
    net: Net,
    host: u8,
    service: &str,
    z: &ZoneCp,
    token: &std::path::Path,
    instance: &str,
) -> Proc {
    let mut args = sidecar_args(net, host, service, z, token);
    args.extend(["--instance".to_string(), instance.to_string()]);
    spawn(
        &s.0,
        &format!("sidecar-{service}-{host}"),
        "dataplane",
        &args,
    )
}

/// The reason of the sidecar's last refused connection to its zone-cp, as it
/// logs it.
fn last_error(p: &Proc) -> Option<String> {
    let log = p.log_text();
    log.lines()
        .rev()
        .find(|l| l.contains("control plane stream failed"))
        .map(str::to_string)
}
