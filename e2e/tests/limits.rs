//! HTTP header limits (`--max-headers`, `--max-header-bytes`): documented,
//! configurable, answered with an error that says so, and never a reason to
//! eject an endpoint.
mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn ejected(w: &Workload, service: &str) -> Vec<bool> {
    w.dump()["clusters"][service]["endpoints"]
        .as_array()
        .map(|a| a.iter().map(|e| e["ejected"] == true).collect())
        .unwrap_or_default()
}

fn x_h_lines(r: &HttpResponse) -> usize {
    r.headers
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-h-"))
        .count()
}

/// A response with 150 header lines, over the default limit of 100: the
/// destination's sidecar answers 502 with `x-tern-error: limit` and a body
/// naming `--max-headers 100`, and the caller's sidecar neither retries nor
/// ejects the endpoint (the next request succeeds and config_dump shows it
/// not ejected). With `--max-headers 300` on both sidecars the 150 lines
/// pass intact. Raised only on the destination's sidecar, the caller's
/// sidecar refuses in the same way and still does not eject. A request
/// with 150 header lines gets 431 from the caller's own sidecar. On the
/// previous main, the first request got a plain 502 and the endpoint was
/// ejected for 5 s.
#[test]
fn responses_over_the_header_limit_get_an_error_that_says_so_and_eject_nothing() {
    let net = Net(52);
    let (s, g, z) = one_zone("header-limits", net);
    let wide = ["--max-headers", "300"];
    let _api = Workload::start(&s.0, net, 11, "api", &z, &g.dp_token("z1", "api"));
    let _wide = Workload::start_with(&s.0, net, 12, "wide", &z, &g.dp_token("z1", "wide"), &wide);
    let web = Workload::start(&s.0, net, 10, "web", &z, &g.dp_token("z1", "web"));
    let web2 = Workload::start_with(&s.0, net, 13, "web2", &z, &g.dp_token("z1", "web2"), &wide);
    for (w, svc) in [(&web, "api"), (&web, "wide"), (&web2, "wide")] {
        wait_for(&format!("{svc} reachable"), T, || {
            get(w.outbound(), svc, "/").ok().filter(|r| r.status == 200)
        });
    }

    // Default limits everywhere: refused at the destination's sidecar.
    let retries = || metric_sum(web.admin(), "tern_proxy_retries_total", "");
    let retries_before = retries();
    let r = get(web.outbound(), "api", "/many-headers/150").unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("x-tern-error: limit"),
        "{r:?}"
    );
    assert!(
        r.body.contains("the app's response head exceeds") && r.body.contains("--max-headers 100"),
        "{r:?}"
    );
    assert_eq!(ejected(&web, "api"), vec![false], "api was ejected");
    assert_eq!(
        retries(),
        retries_before,
        "an over-limit answer is not retried"
    );
    let ok = get(web.outbound(), "api", "/many-headers/90").unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(x_h_lines(&ok), 90);

    // Raised on both sidecars: the response passes intact.
    let r = get(web2.outbound(), "wide", "/many-headers/150").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(x_h_lines(&r), 150);

    // Raised only at the destination: the caller's sidecar refuses it.
    let r = get(web.outbound(), "wide", "/many-headers/150").unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.body
            .contains(&format!("{}'s response head exceeds", net.addr(12, 15006)))
            && r.body.contains("--max-headers 100"),
        "{r:?}"
    );
    assert_eq!(ejected(&web, "wide"), vec![false], "wide was ejected");
    assert_eq!(get(web.outbound(), "wide", "/").unwrap().status, 200);

    // A request over the limit is refused by the caller's own sidecar.
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("x-q-{i}"), i.to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = http(web.outbound(), "GET", "api", "/", &refs).unwrap();
    assert_eq!(r.status, 431, "{r:?}");
}

/// Bad flag values stop the sidecar, gateway, global or zone-cp with exit
/// code 64 and a message that names the flag, rather than being replaced
/// by a default (the global's: a sync address on every interface with no
/// --advertise, which would put 0.0.0.0 in zone tokens; the zone-cp's: a
/// zero grace period).
#[test]
fn bad_flag_values_are_refused_at_start() {
    let dataplane = [
        &["--max-headers", "3"][..],
        &["--max-headers", "lots"],
        &["--max-header-bytes", "12"],
        &["--max-header-bytes", "64MB"],
        &["--per-try-timeout", "0s"],
        &["--tcp-idle-timeout", "0s"],
        &["--request-timeout", "soon"],
    ];
    let gateway = [
        &["--duplicate-above-loss", "1.5"][..],
        &["--duplicate-above-loss", "0"],
        &["--keep-alive", "0s"],
        &["--keep-alive", "5s", "--idle-timeout", "3s"],
    ];
    let cases = dataplane
        .iter()
        .map(|a| ("dataplane", &["--bootstrap", "/nonexistent.yaml"][..], *a))
        .chain(gateway.iter().map(|a| {
            (
                "gateway",
                &[
                    "--cp-address",
                    "127.0.0.1:1",
                    "--token-file",
                    "/nonexistent",
                ][..],
                *a,
            )
        }))
        .chain([
            (
                "global-cp",
                &["--data-dir", "/nonexistent"][..],
                &["--sync-addr", "0.0.0.0:5685"][..],
            ),
            (
                "zone-cp",
                &["--zone", "z1", "--data-dir", "/nonexistent"][..],
                &["--deregister-after", "0s"][..],
            ),
        ]);
    for (program, base, args) in cases {
        let o = std::process::Command::new(bin(program))
            .args(base)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "{program} {args:?}: {err}");
        let flag = args[args.len() - 2];
        assert!(err.contains(flag), "{program} {args:?}: {err}");
    }
}
