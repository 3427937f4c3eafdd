//! Traffic policies applied at the global and enforced by sidecars in
//! every zone. Two zones, each with its own addresses and two gateways:
//!
//! | zone | region | zone-cp | gateways | workloads |
//! |---|---|---|---|---|
//! | z1 | eu | .2 | .21 .22 | .10-.19 |
//! | z2 | us | .3 | .31 .32 | .40-.49 |
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::mesh::*;
use support::*;

/// What a TCP echo through the outbound port `at` sends back to "ping\n";
/// None when the connection was refused, reset or closed first.
fn tcp_echo(at: SocketAddr) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(at).ok()?;
    s.set_read_timeout(Some(patient(Duration::from_secs(10))))
        .unwrap();
    s.write_all(b"ping\n").ok()?;
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// The zones that answered `n` GETs of `path` through `caller`, by name.
fn tally(caller: &Workload, n: usize, path: &str, headers: &[(&str, &str)]) -> Tally {
    let mut t = Tally::default();
    for _ in 0..n {
        let r = http(caller.outbound(), "GET", "api", path, headers).expect("request");
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        *t.by
            .entry(format!(
                "{}/{}",
                j["zone"].as_str().unwrap_or(""),
                j["instance"].as_str().unwrap_or("")
            ))
            .or_default() += 1;
        t.n += 1;
    }
    t
}

#[derive(Default, Debug)]
struct Tally {
    n: usize,
    by: std::collections::BTreeMap<String, usize>,
}

impl Tally {
    fn share(&self, pred: impl Fn(&str) -> bool) -> f64 {
        self.by
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, v)| *v)
            .sum::<usize>() as f64
            / self.n as f64
    }
}

const H: &str = "apiVersion: tern.dev/v1alpha1\n";

/// Access control end to end, across zones: callers in z2 reach `api` and
/// `db` (TCP), which run only in z1, through the gateways.
///
/// * an enforced AccessPolicy gives a 403 naming the rule to a caller it
///   denies, and counts it under that rule; the allowed caller gets 200;
/// * a denied TCP connection is reset (no echo), an allowed one echoes;
/// * a shadow-mode policy counts exactly the requests it would deny and
///   denies none;
/// * a zone-local policy of z1 cannot allow what the global denies, and its
///   own deny is enforced and named `(zone)`, also for other spellings of
///   its path (`/%61dmin`, `//admin`, `/x/../admin`);
/// * permissive mTLS lets a plaintext client in (counted, no client ID),
///   only where a rule names no callers; strict mode does not; the inbound
///   port matches rules on, and forwards, the canonical path
///   (`//x/../%68ealth` is the allowed `/health`) and refuses `/%zz`;
/// * `ternctl inspect dataplane` shows the policies applied to `api`;
///   `apply --dry-run` stores nothing and warns about a target that
///   matches nothing.
#[test]
fn access_rules_deny_across_zones_shadow_counts_and_permissive_accepts_plaintext() {
    let net = Net(60);
    let local = Scratch::new("policies-local-dir");
    std::fs::write(
        local.path("local.yaml"),
        format!("{H}kind: AccessPolicy\nmetadata: {{name: z1-local}}\nspec:\n  targetRef: {{service: api, zone: z1}}\n  rules:\n    - {{name: batch-please, action: allow, from: [{{service: batch}}]}}\n    - {{name: no-admin, action: deny, when: {{paths: [{{prefix: /admin}}]}}}}\n"),
    )
    .unwrap();
    let m = Mesh::start("policies-access", net, Some(&local.0));
    let (api, db, web, batch) = m.api_db_and_callers();
    assert_eq!(
        http(web.outbound(), "GET", "api", "/", &[]).unwrap().status,
        200
    );
    assert_eq!(
        http(batch.outbound(), "GET", "api", "/", &[])
            .unwrap()
            .status,
        200
    );

    // A dry run stores nothing and warns about a service nobody reports.
    let o = m.g.ternctl_stdin(
        &["apply", "--dry-run", "-f", "-"],
        Some(&format!("{H}kind: AccessPolicy\nmetadata: {{name: ghost}}\nspec:\n  targetRef: {{service: apii}}\n  rules: [{{action: deny}}]\n")),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("accesspolicy/ghost created (dry run)"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning:") && err.contains("apii"), "{err}");
    assert!(!m
        .g
        .ternctl(&["get", "accesspolicies", "ghost"])
        .status
        .success());

    m.g.apply(&format!("{H}kind: AccessPolicy\nmetadata: {{name: api-callers}}\nspec:\n  targetRef: {{service: api}}\n  rules:\n    - {{name: web, action: allow, from: [{{service: web, region: us}}]}}\n    - {{name: health, action: allow, when: {{paths: [{{exact: /health}}]}}}}\n    - {{name: others, action: deny}}\n---\n{H}kind: AccessPolicy\nmetadata: {{name: db-callers}}\nspec:\n  targetRef: {{service: db}}\n  rules:\n    - {{name: web, action: allow, from: [{{service: web}}]}}\n    - {{name: others, action: deny}}\n"));
    wait_for("batch denied api", T, || {
        let r = http(batch.outbound(), "GET", "api", "/", &[]).ok()?;
        (r.status == 403).then_some(r)
    });
    let r = http(batch.outbound(), "GET", "api", "/x", &[]).unwrap();
    assert_eq!(r.status, 403);
    assert!(
        r.body
            .contains("access denied by AccessPolicy/api-callers/others"),
        "{}",
        r.body
    );
    assert!(r
        .headers
        .to_ascii_lowercase()
        .contains("x-tern-error: denied"));
    let r = http(web.outbound(), "GET", "api", "/x", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["clientId"], "spiffe://tern/zone/z2/svc/web");
    let denied = |rule: &str| {
        metric_sum(
            api.admin(),
            "tern_proxy_access_denied_total",
            &format!("rule=\"{rule}\""),
        )
    };
    let before = denied("AccessPolicy/api-callers/others");
    for _ in 0..5 {
        assert_eq!(
            http(batch.outbound(), "GET", "api", "/", &[])
                .unwrap()
                .status,
            403
        );
    }
    assert_eq!(denied("AccessPolicy/api-callers/others") - before, 5.0);

    // TCP: web's connection echoes; batch's is reset without a byte.
    let echo = |w: &Workload| -> std::io::Result<String> {
        let mut s = TcpStream::connect(w.net.addr(w.host, 16000))?;
        s.set_read_timeout(Some(patient(Duration::from_secs(5))))?;
        s.write_all(b"ping\n")?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    wait_for("batch's TCP connection to db refused", T, || {
        match echo(&batch) {
            Ok(s) if s.is_empty() => Some(()),
            Err(_) => Some(()),
            Ok(_) => None,
        }
    });
    assert_eq!(echo(&web).unwrap(), "ping\n");
    assert!(
        metric_sum(
            net.addr(13, 15000),
            "tern_proxy_access_denied_total",
            "kind=\"tcp\""
        ) >= 1.0
    );

    // z1's own policy (more specific, so first): its allow of batch does
    // not open what the global's rules deny; its /admin deny applies.
    let r = http(web.outbound(), "GET", "api", "/admin/x", &[]).unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("AccessPolicy/z1-local (zone)/no-admin"),
        "{}",
        r.body
    );
    // Other spellings of /admin are /admin to the rules (the caller's
    // sidecar sends the canonical path).
    for p in ["/%61dmin/x", "//admin/x", "/x/../admin", "/./admin"] {
        let r = http(web.outbound(), "GET", "api", p, &[]).unwrap();
        assert_eq!(r.status, 403, "{p}: {}", r.body);
        assert!(r.body.contains("no-admin"), "{p}: {}", r.body);
    }
    let r = http(batch.outbound(), "GET", "api", "/", &[]).unwrap();
    assert!(
        r.body.contains("AccessPolicy/api-callers/others"),
        "{}",
        r.body
    );

    // Shadow mode: web's reads of /v1 would be denied; they are counted,
    // one for one, and still answered.
    m.g.apply(&format!("{H}kind: AccessPolicy\nmetadata: {{name: trial}}\nspec:\n  targetRef: {{service: api, zone: z1}}\n  mode: shadow\n  rules:\n    - {{name: no-v1, action: deny, from: [{{service: web}}], when: {{paths: [{{prefix: /v1}}]}}}}\n"));
    wait_dump(&api, "/inbound/policies", |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p == "AccessPolicy/trial"))
    });
    let shadow = || {
        metric_sum(
            api.admin(),
            "tern_proxy_access_shadow_denied_total",
            "rule=\"AccessPolicy/trial/no-v1\"",
        )
    };
    let (before_shadow, before_denied) = (shadow(), denied("AccessPolicy/api-callers/others"));
    for _ in 0..7 {
        assert_eq!(
            http(web.outbound(), "GET", "api", "/v1/items", &[])
                .unwrap()
                .status,
            200
        );
    }
    assert_eq!(
        http(web.outbound(), "GET", "api", "/v2/items", &[])
            .unwrap()
            .status,
        200
    );
    assert_eq!(shadow() - before_shadow, 7.0);
    assert_eq!(denied("AccessPolicy/api-callers/others"), before_denied);

    // Strict mode: plaintext to api's inbound port gets no HTTP answer.
    let plain = get(api.inbound(), "api", "/health");
    assert!(
        plain.as_ref().map_or(true, |r| r.status != 200),
        "strict mode served plaintext: {plain:?}"
    );
    // Permissive: plaintext is served where a rule names no callers, its
    // client ID is never set, and it is counted.
    m.g.apply(&format!("{H}kind: MtlsPolicy\nmetadata: {{name: api-move}}\nspec:\n  targetRef: {{service: api}}\n  mode: permissive\n"));
    let r = wait_for("plaintext served by api", T, || {
        get(api.inbound(), "api", "/health")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(r.json()["clientId"], "");
    let r = http(
        api.inbound(),
        "GET",
        "api",
        "/health",
        &[("x-tern-client-id", "spiffe://tern/zone/z2/svc/web")],
    )
    .unwrap();
    assert_eq!(
        r.json()["clientId"],
        "",
        "a plaintext caller's ID is removed"
    );
    // Straight to api's inbound (no sidecar of the caller's on the way):
    // the rules see, and the app receives, the canonical path (only the
    // exact /health is allowed to plaintext callers); a malformed escape
    // is refused.
    let r = get(api.inbound(), "api", "//x/../%68ealth").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/health");
    assert_eq!(get(api.inbound(), "api", "/%zz").unwrap().status, 400);
    let r = get(api.inbound(), "api", "/data").unwrap();
    assert_eq!(
        r.status, 403,
        "plaintext matches no rule that names callers"
    );
    assert!(metric_sum(api.admin(), "tern_proxy_plaintext_total", "kind=\"http\"") >= 3.0);
    // mTLS callers are unaffected.
    assert_eq!(
        http(web.outbound(), "GET", "api", "/x", &[])
            .unwrap()
            .status,
        200
    );

    // Explain: the global asks z1 what applies to api-12.
    let out = m.g.ctl(&[
        "inspect",
        "dataplane",
        "api-12",
        "--zone",
        "z1",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pols: Vec<&str> = v["inbound"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(
        pols,
        [
            "MtlsPolicy/api-move",
            "AccessPolicy/trial",
            "AccessPolicy/z1-local (zone)",
            "AccessPolicy/api-callers"
        ]
    );
    assert_eq!(v["inbound"]["mtlsMode"], "permissive");
    assert_eq!(v["inbound"]["rules"][0]["name"], "AccessPolicy/trial/no-v1");
    let text = m.g.ctl(&["inspect", "dataplane", "api-12", "--zone", "z1"]);
    assert!(
        text.contains("AccessPolicy/api-callers/others: deny from any caller"),
        "{text}"
    );
    let o =
        m.g.ternctl(&["inspect", "dataplane", "nope", "--zone", "z1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no dataplane \"nope\" in zone z1"));
    drop(db);
}

/// HTTP and TCP routes end to end. `api` runs v1 (.12) and v2 (.13) in z1
/// and v1 (.40) and v3 (.42) in z2; `web` (.10, z1) calls it.
///
/// * a 90/10 split between v1 and v2 lands within 5 points of 10% over 1000
///   requests (the binomial standard deviation is 0.95 points: a false
///   failure is below one in a million);
/// * a 70/30 split across zones sends 30% (within 6 points over 1000: 4.1
///   standard deviations) to z2, through the gateways (their byte counters
///   grow);
/// * a backend that selects labels reaches the instances that have them in
///   another zone, and only those: every one of 200 requests for `version:
///   v3` (only in z2) is served by .42, and every one of 200 for `version:
///   v1` in z2 by .40, although z2's gateway could pick either (on the
///   previous main, a labels backend held only this zone's instances, so
///   the first got 503 and the second could not be said);
/// * a mirror's target receives a copy of each matched request, marked,
///   while the caller sees only the primary's answers;
/// * a rewrite, header changes, a redirect and a route timeout act on the
///   requests they match;
/// * a TcpRoute sends each new connection to the backend its weights pick;
/// * a caller that declares the services it calls holds only those and the
///   services their routes send or mirror to, and is refused others.
#[test]
fn http_and_tcp_routes_split_by_labels_and_zones_mirror_and_rewrite() {
    let net = Net(61);
    let m = Mesh::start("policies-routes", net, None);
    let _v1 = m.workload("z1", 12, "api", &["--label", "version=v1"]);
    let _v2 = m.workload("z1", 13, "api", &["--label", "version=v2"]);
    let _far = m.workload("z2", 40, "api", &["--label", "version=v1"]);
    let _far_v3 = m.workload("z2", 42, "api", &["--label", "version=v3"]);
    let shadow = m.workload("z1", 14, "api-shadow", &[]);
    let greet = |zone: &str| -> Vec<String> {
        vec![
            "--tcp-echo".into(),
            "--greet".into(),
            "--zone".into(),
            zone.into(),
            "--name".into(),
            "db".into(),
        ]
    };
    let mut dbs = Vec::new();
    for (zone, host) in [("z1", 15u8), ("z2", 41)] {
        let mut args = vec!["--listen".to_string(), format!("{}:8080", net.ip(host))];
        args.extend(greet(zone));
        let app = spawn(&m.s.0, &format!("app-db-{host}"), "demo-app", &args);
        let t = m.g.token_file(
            &format!("db-{zone}.token"),
            &[
                "generate",
                "dataplane-token",
                "--zone",
                zone,
                "--service",
                "db",
            ],
        );
        let sc = start_sidecar(
            &m.s.0,
            net,
            host,
            "db",
            m.zone(zone),
            &t,
            &["--protocol", "tcp"],
        );
        dbs.push((app, sc));
    }
    let web = m.workload(
        "z1",
        10,
        "web",
        &["--outbound-port", &format!("tcp:db={}:16000", net.ip(10))],
    );
    wait_for(
        "api's three instances and db's two in web's config",
        T,
        || (web.endpoints("api").len() >= 4 && web.endpoints("db").len() >= 3).then_some(()),
    );

    m.g.apply(&format!(
        "{H}kind: HttpRoute\nmetadata: {{name: api-routes}}\nspec:\n  to: {{service: api}}\n  rules:\n\
         \x20   - name: mirrored\n      matches: [{{path: {{prefix: /mirror}}}}]\n      backends: [{{labels: {{version: v1}}, zones: [z1]}}]\n      mirror: {{service: api-shadow}}\n\
         \x20   - name: zones\n      matches: [{{headers: [{{name: x-split, exact: zones}}]}}]\n      backends: [{{weight: 70, zones: [z1]}}, {{weight: 30, zones: [z2]}}]\n\
         \x20   - name: far-v3\n      matches: [{{headers: [{{name: x-split, exact: far-v3}}]}}]\n      backends: [{{labels: {{version: v3}}}}]\n\
         \x20   - name: far-v1\n      matches: [{{headers: [{{name: x-split, exact: far-v1}}]}}]\n      backends: [{{labels: {{version: v1}}, zones: [z2]}}]\n\
         \x20   - name: old\n      matches: [{{path: {{prefix: /old}}}}]\n      rewrite: {{pathPrefix: /new}}\n      requestHeaders: {{set: {{x-route: old}}, remove: [x-drop]}}\n      responseHeaders: {{add: {{x-served-by: old-route}}}}\n      backends: [{{zones: [z1]}}]\n\
         \x20   - name: moved\n      matches: [{{path: {{exact: /moved}}}}]\n      redirect: {{host: example.org, path: /here, statusCode: 301}}\n\
         \x20   - name: slow\n      matches: [{{path: {{prefix: /sleep}}}}]\n      timeout: 300ms\n      backends: [{{zones: [z1]}}]\n\
         \x20   - name: canary\n      backends: [{{weight: 90, labels: {{version: v1}}, zones: [z1]}}, {{weight: 10, labels: {{version: v2}}}}]\n\
         ---\n{H}kind: TcpRoute\nmetadata: {{name: db-move}}\nspec:\n  to: {{service: db}}\n  backends: [{{weight: 1, zones: [z2]}}]\n"
    ));
    wait_dump(&web, "/routes/api/http", |v| {
        v.as_array().is_some_and(|a| a.len() == 8)
    });

    // A caller that declares what it calls (--reachable-services api) holds
    // only api and api-shadow, which api's route mirrors to: not db, web
    // or anything else. It reaches api; a call to web is refused, saying
    // why.
    let lean = m.workload("z1", 16, "web", &["--reachable-services", "api"]);
    wait_dump(&lean, "/routes/api/http", |v| {
        v.as_array().is_some_and(|a| a.len() == 8)
    });
    let d = lean.dump();
    let held: Vec<&String> = d["clusters"]
        .as_object()
        .expect("clusters")
        .keys()
        .collect();
    assert_eq!(held, ["api", "api-shadow"], "{d}");
    assert!(
        web.dump()["clusters"].get("db").is_some(),
        "an undeclared caller holds every service"
    );
    let r = http(lean.outbound(), "GET", "api", "/", &[]).expect("request");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(lean.outbound(), "GET", "web", "/", &[]).expect("request");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("--reachable-services"), "{}", r.body);
    drop(lean);

    // 90/10 between the two versions in z1.
    let t = tally(&web, 1000, "/", &[]);
    let v2 = t.share(|k| k.ends_with(&format!("{}:8080", net.ip(13))));
    let v1 = t.share(|k| k.ends_with(&format!("{}:8080", net.ip(12))));
    assert!((v2 - 0.10).abs() < 0.05, "v2 share {v2} ({t:?})");
    assert!(
        (v1 + v2 - 1.0).abs() < 1e-9,
        "only z1's two versions: {t:?}"
    );

    // 70/30 across zones, through the gateways.
    let gw_bytes = || -> f64 {
        [21u8, 22]
            .iter()
            .map(|h| {
                metric_sum(
                    net.addr(*h, 15090),
                    "tern_gateway_bytes_sent_total",
                    "zone=\"z2\"",
                )
            })
            .sum()
    };
    let before = gw_bytes();
    let t = tally(&web, 1000, "/", &[("x-split", "zones")]);
    let z2 = t.share(|k| k.starts_with("z2/"));
    assert!((z2 - 0.30).abs() < 0.06, "z2 share {z2} ({t:?})");
    assert!(gw_bytes() > before, "the z2 share crossed the gateways");

    // Label subsets in another zone: once z2 publishes that it runs v3,
    // every v3 request is served there by .42, and every z2-v1 request by
    // .40.
    wait_dump(&web, "/clusters/api/endpoints", |v| {
        v.as_array().is_some_and(|eps| {
            eps.iter().any(|e| {
                e["subsets"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["labels"]["version"] == "v3"))
            })
        })
    });
    let t = tally(&web, 200, "/", &[("x-split", "far-v3")]);
    assert_eq!(t.by.len(), 1, "{t:?}");
    assert_eq!(
        t.share(|k| k == format!("z2/{}:8080", net.ip(42))),
        1.0,
        "{t:?}"
    );
    let t = tally(&web, 200, "/", &[("x-split", "far-v1")]);
    assert_eq!(t.by.len(), 1, "{t:?}");
    assert_eq!(
        t.share(|k| k == format!("z2/{}:8080", net.ip(40))),
        1.0,
        "{t:?}"
    );

    // Mirror: the caller sees only v1's answers; the mirror gets a marked
    // copy of each.
    let copies = || {
        get(net.addr(14, 8080), "x", "/stats").unwrap().json()["mirrored"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(copies(), 0);
    for _ in 0..20 {
        let r = http(web.outbound(), "GET", "api", "/mirror/x", &[]).unwrap();
        assert_eq!(r.json()["service"], "api", "{}", r.body);
        assert_eq!(r.json()["instance"], format!("{}:8080", net.ip(12)));
    }
    wait_for("20 mirrored copies", T, || (copies() == 20).then_some(()));
    // The caller counts a copy as sent when its answer is back, which is
    // after the mirror counted it: wait for that too.
    wait_for("20 copies counted as sent", T, || {
        (metric_sum(web.admin(), "tern_proxy_mirrored_total", "result=\"sent\"") >= 20.0)
            .then_some(())
    });
    drop(shadow);

    // Rewrite and header changes.
    let r = http(
        web.outbound(),
        "GET",
        "api",
        "/old/items?x=1",
        &[("x-drop", "1"), ("x-keep", "2")],
    )
    .unwrap();
    let j = r.json();
    assert_eq!(j["path"], "/new/items", "{}", r.body);
    assert_eq!(j["headers"]["x-route"], "old");
    assert_eq!(j["headers"]["x-keep"], "2");
    assert!(j["headers"].get("x-drop").is_none());
    assert!(r
        .headers
        .to_ascii_lowercase()
        .contains("x-served-by: old-route"));
    // A redirect is answered by the caller's sidecar.
    let r = http(web.outbound(), "GET", "api:8080", "/moved?a=b", &[]).unwrap();
    assert_eq!(r.status, 301);
    assert!(
        r.headers.contains("location: http://example.org/here?a=b"),
        "{}",
        r.headers
    );
    // The route timeout cuts a slow answer.
    let r = http(web.outbound(), "GET", "api", "/sleep/2000", &[]).unwrap();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("route timeout"), "{}", r.body);

    // TCP: every new connection goes to z2's db.
    for _ in 0..5 {
        let mut s = TcpStream::connect(net.addr(10, 16000)).unwrap();
        s.set_read_timeout(Some(patient(Duration::from_secs(5))))
            .unwrap();
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"db z2\n");
    }
    let _ = SocketAddr::from(([127, 0, 0, 1], 0));
}

/// FaultInjection end to end, across zones: `api` (HTTP) and `db` (TCP)
/// run in z1; `web` and `batch` call them from z2 through the gateways.
///
/// * an abort of 50% of web's `/flaky` requests: over 400 requests the
///   503s (each naming the fault, in its body and `x-tern-fault`) are
///   50% within 10 points (the binomial standard deviation is 2.5 points:
///   four of them, a false failure about one in 15,000), every other
///   answer is the app's 200, and api's sidecar counts exactly as many
///   aborts as web saw;
/// * batch, which no fault names, gets 100 answers of 200;
/// * a 5 s delay of web's `/slow` requests: web's route timeout of 500 ms
///   cuts every one (504), and batch's same request is answered (200), so
///   the delay was injected and only for web;
/// * a 100 ms delay of 30% of web's `/share` requests: the delayed answers
///   carry `x-tern-fault`, are 30% within 11 points over 300 requests, each
///   took at least 100 ms, and api's sidecar counts exactly as many;
/// * a reset of web's TCP connections to db: web's connection gets no echo,
///   batch's does, and api's and db's sidecars count what they injected.
#[test]
fn fault_injection_aborts_delays_and_resets_what_it_names_across_zones() {
    let net = Net(62);
    let m = Mesh::start("policies-faults", net, None);
    let (api, _db, web, batch) = m.api_db_and_callers();
    m.g.apply(&format!(
        "{H}kind: FaultInjection\nmetadata: {{name: api-faults}}\nspec:\n  targetRef: {{service: api}}\n  faults:\n\
         \x20   - {{name: web-aborts, from: [{{service: web}}], when: {{paths: [{{prefix: /flaky}}]}}, abort: {{httpStatus: 503, percent: 50}}}}\n\
         \x20   - {{name: web-slow, from: [{{service: web}}], when: {{paths: [{{prefix: /slow}}]}}, delay: {{duration: 5s, percent: 100}}}}\n\
         \x20   - {{name: web-share, from: [{{service: web}}], when: {{paths: [{{prefix: /share}}]}}, delay: {{duration: 100ms, percent: 30}}}}\n\
         ---\n{H}kind: FaultInjection\nmetadata: {{name: db-faults}}\nspec:\n  targetRef: {{service: db}}\n  faults:\n\
         \x20   - {{name: resets, from: [{{service: web}}], abort: {{reset: true, percent: 100}}}}\n\
         ---\n{H}kind: HttpRoute\nmetadata: {{name: api-slow}}\nspec:\n  to: {{service: api}}\n  rules:\n\
         \x20   - {{name: slow, matches: [{{path: {{prefix: /slow}}}}], timeout: 500ms}}\n"
    ));
    let fault = "FaultInjection/api-faults/web-aborts";
    wait_for("web's /flaky aborted by the fault", T, || {
        let r = http(web.outbound(), "GET", "api", "/flaky", &[]).ok()?;
        (r.status == 503).then_some(())
    });
    wait_dump(&web, "/routes/api/http", |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    });
    let counted = || {
        metric_sum(
            api.admin(),
            "tern_proxy_faults_injected_total",
            &format!("fault=\"{fault}\",action=\"abort\""),
        )
    };
    let before = counted();
    let (mut aborted, n) = (0usize, 400usize);
    for _ in 0..n {
        let r = http(web.outbound(), "GET", "api", "/flaky", &[]).unwrap();
        match r.status {
            503 => {
                assert!(
                    r.body.contains(&format!("fault injected by {fault}")),
                    "{}",
                    r.body
                );
                assert!(
                    r.headers
                        .to_ascii_lowercase()
                        .contains(&format!("x-tern-fault: {}", fault.to_ascii_lowercase())),
                    "{}",
                    r.headers
                );
                aborted += 1;
            }
            200 => assert_eq!(r.json()["service"], "api", "{}", r.body),
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    let share = aborted as f64 / n as f64;
    assert!((share - 0.5).abs() < 0.10, "aborted share {share}");
    assert_eq!(counted() - before, aborted as f64, "counted one for one");
    for _ in 0..100 {
        let r = http(batch.outbound(), "GET", "api", "/flaky", &[]).unwrap();
        assert_eq!(r.status, 200, "batch is not named: {}", r.body);
    }

    // The delay: web's own route timeout cuts it; batch is not delayed.
    for _ in 0..3 {
        let r = http(web.outbound(), "GET", "api", "/slow", &[]).unwrap();
        assert_eq!(r.status, 504, "{}", r.body);
        assert!(r.body.contains("route timeout"), "{}", r.body);
    }
    let r = http(batch.outbound(), "GET", "api", "/slow", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        metric_sum(
            api.admin(),
            "tern_proxy_faults_injected_total",
            "fault=\"FaultInjection/api-faults/web-slow\",action=\"delay\"",
        ) >= 3.0
    );

    // A delay on a share: the delayed answers say so, are 30% within 11
    // points over 300 requests (standard deviation 2.65 points: 4.2 of
    // them), and each took at least the delay.
    let share_fault = "FaultInjection/api-faults/web-share";
    let mut delayed = 0usize;
    for _ in 0..300 {
        let t0 = std::time::Instant::now();
        let r = http(web.outbound(), "GET", "api", "/share", &[]).unwrap();
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "{}", r.body);
        if r.headers.to_ascii_lowercase().contains(&format!(
            "x-tern-fault: {}",
            share_fault.to_ascii_lowercase()
        )) {
            delayed += 1;
            assert!(
                took >= Duration::from_millis(100),
                "a delayed answer took {took:?}"
            );
        }
    }
    let share = delayed as f64 / 300.0;
    assert!((share - 0.3).abs() < 0.11, "delayed share {share}");
    assert_eq!(
        metric_sum(
            api.admin(),
            "tern_proxy_faults_injected_total",
            &format!("fault=\"{share_fault}\",action=\"delay\""),
        ),
        delayed as f64
    );

    // TCP: web's connections to db are reset, batch's echo.
    let echo = |host: u8| tcp_echo(net.addr(host, 16000));
    assert_eq!(echo(41).as_deref(), Some(&b"ping\n"[..]));
    for _ in 0..3 {
        assert_eq!(echo(40), None, "web's connection was reset");
    }
    wait_for("db's sidecar counted the resets", T, || {
        (metric_sum(
            net.addr(13, 15000),
            "tern_proxy_faults_injected_total",
            "fault=\"FaultInjection/db-faults/resets\",action=\"reset\"",
        ) >= 3.0)
            .then_some(())
    });
}

/// RateLimit end to end, across zones: `api` (HTTP) and `db` (TCP) run in
/// z1; `web` and `batch` call them from z2 through the gateways. The
/// buckets refill once an hour, so what passes is exactly the burst:
///
/// * web's bucket (burst 5): 5 requests pass, the next 5 get 429 naming
///   the limit with a `retry-after` of at least 1 s, and api's sidecar
///   counts exactly those 5;
/// * batch matches the per-header limit (burst 2 per `x-api-key` value):
///   key `a` gets 2 answers then 429, key `b` still gets its own 2;
/// * batch's `/steady` requests (10 per second, burst 1), sent back to
///   back for 3 s: at most 1 + 10 per second elapsed (+1) pass, which a
///   bucket that let more through would break, and at least half the rate;
/// * web's TCP connections to db (burst 2): 2 echo, the third is reset.
#[test]
fn rate_limits_refuse_past_their_buckets_across_zones() {
    let net = Net(63);
    let m = Mesh::start("policies-limits", net, None);
    let (api, _db, web, batch) = m.api_db_and_callers();
    m.g.apply(&format!(
        "{H}kind: RateLimit\nmetadata: {{name: api-limits}}\nspec:\n  targetRef: {{service: api}}\n  limits:\n\
         \x20   - {{name: web-burst, from: [{{service: web}}], http: {{requests: 1, interval: 1h, burst: 5}}}}\n\
         \x20   - {{name: steady, from: [{{service: batch}}], when: {{paths: [{{prefix: /steady}}]}}, http: {{requests: 10, interval: 1s, burst: 1}}}}\n\
         \x20   - {{name: keys, http: {{requests: 1, interval: 1h, burst: 2}}, per: {{header: x-api-key}}}}\n\
         ---\n{H}kind: RateLimit\nmetadata: {{name: db-limits}}\nspec:\n  targetRef: {{service: db}}\n  limits:\n\
         \x20   - {{name: conns, from: [{{service: web}}], tcp: {{connections: 1, interval: 1h, burst: 2}}}}\n"
    ));
    wait_dump(&api, "/rateLimits", |v| {
        v.as_array().is_some_and(|a| a.len() == 3)
    });
    wait_for("db's sidecar holds its limit", T, || {
        let d = get(net.addr(13, 15000), "x", "/config_dump").ok()?.json();
        d["rateLimits"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
            .then_some(())
    });

    let limit = "RateLimit/api-limits/web-burst";
    let statuses: Vec<u16> = (0..10)
        .map(|_| http(web.outbound(), "GET", "api", "/", &[]).unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
    let r = http(web.outbound(), "GET", "api", "/", &[]).unwrap();
    assert_eq!(r.status, 429);
    assert!(
        r.body.contains(&format!("rate limited by {limit}")),
        "{}",
        r.body
    );
    let h = r.headers.to_ascii_lowercase();
    let retry: u64 = h
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("retry-after")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(
        metric_sum(
            api.admin(),
            "tern_proxy_rate_limited_total",
            &format!("rule=\"{limit}\",kind=\"http\""),
        ),
        6.0
    );

    let key = |k: &str| {
        http(batch.outbound(), "GET", "api", "/", &[("x-api-key", k)])
            .unwrap()
            .status
    };
    assert_eq!([key("a"), key("a"), key("a")], [200, 200, 429]);
    assert_eq!([key("b"), key("b")], [200, 200]);

    // The rate: batch's /steady requests, sent back to back for 3 s, pass
    // at 10 per second after a burst of 1. The token bucket allows at most
    // 1 + 10 per second elapsed (+1 for the clock's edges); a client that
    // sends much faster than 10 per second gets at least half the rate.
    let t0 = std::time::Instant::now();
    let mut passed = 0usize;
    while t0.elapsed() < Duration::from_secs(3) {
        let r = http(batch.outbound(), "GET", "api", "/steady", &[]).unwrap();
        match r.status {
            200 => passed += 1,
            429 => {}
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let most = 2.0 + 10.0 * elapsed;
    assert!(
        (passed as f64) <= most && (passed as f64) >= 5.0 * elapsed,
        "{passed} passed in {elapsed:.2} s at 10/s (at most {most:.0})"
    );

    let echo = |host: u8| tcp_echo(net.addr(host, 16000));
    let got: Vec<bool> = (0..3).map(|_| echo(40).is_some()).collect();
    assert_eq!(got, [true, true, false], "web's third connection is reset");
    assert_eq!(
        echo(41).as_deref(),
        Some(&b"ping\n"[..]),
        "batch is not limited"
    );
}
