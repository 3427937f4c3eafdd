//! Attacks on identity against real sidecars, each one that worked before
//! the trust rules and the inbound protocol rules:
//!
//! * a zone's CA minting identities outside its zone (the global's, another
//!   zone's, its own CA ID) is refused by a sidecar's inbound;
//! * a caller cannot reach an HTTP app with its own headers (a forged
//!   `x-tern-client-id`) by negotiating the opaque TCP mode, or no mode at
//!   all; a TCP app cannot be spoken HTTP to;
//! * an app's own `x-tern-error` header does not reach callers, so an app
//!   cannot make them eject and retry.
mod support;

use std::time::Duration;

use model::ident::SpiffeId;
use support::*;

const T: Duration = Duration::from_secs(30);
const FORGED: &str = "x-tern-client-id: spiffe://tern/zone/z1/svc/admin\r\n";

fn answered(r: &Result<String, String>) -> bool {
    r.as_ref().is_ok_and(|s| s.contains("HTTP/1.1"))
}

#[test]
fn minted_identities_forged_headers_and_fake_mesh_errors_are_refused() {
    let net = Net(42);
    let (s, g, z) = one_zone("identity", net);
    let api = Workload::start(&s.0, net, 11, "api", &z, &g.dp_token("z1", "api"));
    let echo = Workload::start_full(
        &s.0,
        net,
        12,
        "echo",
        &z,
        &g.dp_token("z1", "echo"),
        &["--tcp-echo"],
        &["--protocol", "tcp"],
    );
    let web = Workload::start(&s.0, net, 10, "web", &z, &g.dp_token("z1", "web"));
    wait_for("web knows api", T, || {
        (!web.endpoints("api").is_empty()).then_some(())
    });

    let web_id = SpiffeId::workload("tern", "z1", "web");
    let (member, roots) = zone_member(&z.data, &web_id);

    // HTTP mode: the app sees the identity the sidecar verified, whatever
    // the caller sent.
    let r = tls_request(
        api.inbound(),
        Some(&member),
        roots.clone(),
        &[b"http/1.1"],
        &raw_get("/h", FORGED),
    )
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains(&format!("\"clientId\":\"{web_id}\"")),
        "the app must see the verified caller: {r}"
    );
    // Each refusal below is counted once as a TLS failure on the target.
    let failures = |admin| metric_sum(admin, "tern_proxy_tls_handshake_failures_total", "");
    let counted_once = |admin, what: &str, before: f64| {
        let n = wait_for(&format!("{what} counted"), T, || {
            let n = failures(admin);
            (n > before).then_some(n)
        });
        assert_eq!(n, before + 1.0, "{what} counted once");
    };
    // Opaque TCP mode to an HTTP app, and no mode at all: refused, so the
    // caller's own bytes never reach the app unparsed.
    for alpns in [&[b"tern/tcp".as_slice()][..], &[]] {
        let before = failures(api.admin());
        let r = tls_request(
            api.inbound(),
            Some(&member),
            roots.clone(),
            alpns,
            &raw_get("/h", FORGED),
        );
        assert!(!answered(&r), "ALPN {alpns:?} reached the HTTP app: {r:?}");
        counted_once(api.admin(), &format!("ALPN {alpns:?}"), before);
    }
    // A TCP app takes opaque TCP only.
    let r = tls_request(
        echo.inbound(),
        Some(&member),
        roots.clone(),
        &[b"tern/tcp"],
        b"ping",
    );
    // (The echo app keeps the connection open; the read ends on its
    // timeout with what arrived.)
    assert!(
        r.as_ref().is_ok_and(|s| s.starts_with("ping")),
        "positive control: opaque TCP to the TCP app echoes: {r:?}"
    );
    let r = tls_request(
        echo.inbound(),
        Some(&member),
        roots.clone(),
        &[b"http/1.1"],
        &raw_get("/h", ""),
    );
    assert!(
        !r.as_ref().is_ok_and(|s| s.contains("GET /h")),
        "HTTP to a TCP app must be refused: {r:?}"
    );

    // Identities zone z1's CA may not issue: refused by the sidecar.
    for id in [
        SpiffeId::global("tern"),
        SpiffeId::workload("tern", "z9", "web"),
        SpiffeId::zone_cp("tern", "z9"),
        SpiffeId::zone("tern", "z1"),
        SpiffeId::parse("spiffe://tern/ns/default/sa/web").unwrap(),
    ] {
        let (minted, _) = zone_member(&z.data, &id);
        let before = failures(api.admin());
        let r = tls_request(
            api.inbound(),
            Some(&minted),
            roots.clone(),
            &[b"http/1.1"],
            &raw_get("/h", ""),
        );
        assert!(
            !answered(&r),
            "{id} minted by zone z1's CA was accepted: {r:?}"
        );
        counted_once(api.admin(), &format!("{id} minted by z1's CA"), before);
    }

    // An app cannot fake the mesh's error header: the caller gets the
    // app's own 503, nothing is retried, nothing ejected.
    let r = get(web.outbound(), "api", "/fake-mesh-error").unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("app error"), "{r:?}");
    assert!(
        !r.headers.to_ascii_lowercase().contains("x-tern-error"),
        "{r:?}"
    );
    assert_eq!(metric_sum(web.admin(), "tern_proxy_retries_total", ""), 0.0);
    let ejected = web.dump()["clusters"]["api"]["endpoints"][0]["ejected"].clone();
    assert_eq!(ejected, false, "the app's 503 must not eject it");
}
