//! Requests cross two sidecars over mTLS and the destination sees the
//! caller's SPIFFE ID; plain and foreign-CA clients are refused; opaque TCP
//! is carried too.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::pki::{self, Ca};
use common::tls::Identity;
use model::ident::SpiffeId;
use support::*;

const T: Duration = Duration::from_secs(30);

fn leaf_from(ca: &Ca, chain_extra: &str, id: &SpiffeId) -> Identity {
    let kc = pki::new_key_and_csr("test").unwrap();
    let leaf = ca
        .sign_leaf(&kc.csr_pem, id, &[], Duration::from_secs(600))
        .unwrap();
    Identity::from_pem(&format!("{leaf}{chain_extra}"), &kc.key_pem).unwrap()
}

#[test]
fn requests_cross_two_sidecars_with_caller_identity_and_bad_clients_are_refused() {
    let net = Net(22);
    let (s, g, z) = one_zone("mtls", net);
    let web_t = g.dp_token("z1", "web");
    let api_t = g.dp_token("z1", "api");
    let echo_t = g.dp_token("z1", "echo");
    let grpc_t = g.dp_token("z1", "grpc");
    let api = Workload::start(&s.0, net, 11, "api", &z, &api_t);
    let _grpc = Workload::start_with(&s.0, net, 13, "grpc", &z, &grpc_t, &["--protocol", "grpc"]);
    let _echo = Workload::start_full(
        &s.0,
        net,
        12,
        "echo",
        &z,
        &echo_t,
        &["--tcp-echo"],
        &["--protocol", "tcp", "--accept-early-data"],
    );
    let tcp_port = net.addr(10, 16000).to_string();
    let web = Workload::start_with(
        &s.0,
        net,
        10,
        "web",
        &z,
        &web_t,
        &["--outbound-port", &format!("tcp:echo={tcp_port}")],
    );
    wait_for("web knows api and echo", T, || {
        (!web.endpoints("api").is_empty() && !web.endpoints("echo").is_empty()).then_some(())
    });

    // HTTP/1.1 through both sidecars: the app sees the caller's identity.
    let r = get(web.outbound(), "api", "/hello").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["service"], "api");
    assert_eq!(j["clientId"], "spiffe://tern/zone/z1/svc/web");
    assert_eq!(j["version"], "HTTP/1.1", "HTTP/1.1 apps get HTTP/1.1");
    // An HTTP/2 (gRPC) service: carried as HTTP/2 end to end, even when the
    // caller spoke HTTP/1.1 to its sidecar.
    wait_for("web knows grpc", T, || {
        (!web.endpoints("grpc").is_empty()).then_some(())
    });
    let r = http(
        web.outbound(),
        "POST",
        "grpc",
        "/tern.Echo/Say",
        &[("content-type", "application/grpc")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(r.json()["clientId"], "spiffe://tern/zone/z1/svc/web");
    // A caller cannot forge the identity header: the sidecars replace it.
    let r = http(
        web.outbound(),
        "GET",
        "api",
        "/",
        &[("x-tern-client-id", "spiffe://tern/zone/z1/svc/admin")],
    )
    .unwrap();
    assert_eq!(r.json()["clientId"], "spiffe://tern/zone/z1/svc/web");
    // Unknown service: a clear error from the proxy.
    let r = get(web.outbound(), "nope", "/").unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body.contains("unknown service \"nope\""), "{}", r.body);

    // Opaque TCP through both sidecars.
    let mut c = TcpStream::connect(&tcp_port).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping over mtls").unwrap();
    let mut buf = [0u8; 14];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping over mtls");
    drop(c);
    // Later connections resume the session and send their first bytes as
    // TLS 1.3 early data (echo's sidecar opted in with --accept-early-data),
    // which echo's sidecar hands to the app before the
    // handshake ends: each echo is byte-exact (several KiB, past one TLS
    // record), the destination counts early bytes and the caller counts
    // accepted early data. A caller that speaks only after a pause (nothing
    // to send early) is served too.
    let early_before = metric_sum(_echo.admin(), "tern_proxy_early_data_bytes_total", "");
    for i in 0..5u8 {
        let payload: Vec<u8> = (0..6000u32).map(|j| (j as u8) ^ i).collect();
        let got = tcp_echo_exchange(tcp_port.parse().unwrap(), &payload, Duration::ZERO).unwrap();
        assert!(
            got == payload,
            "connection {i}: echo of {} bytes differs",
            got.len()
        );
    }
    let got = tcp_echo_exchange(
        tcp_port.parse().unwrap(),
        b"late speaker",
        Duration::from_millis(300),
    )
    .unwrap();
    assert_eq!(got, b"late speaker");
    wait_for("echo's sidecar counted early data", T, || {
        (metric_sum(_echo.admin(), "tern_proxy_early_data_bytes_total", "") > early_before)
            .then_some(())
    });
    assert!(
        metric_sum(
            web.admin(),
            "tern_proxy_early_data_total",
            "result=\"accepted\""
        ) >= 1.0,
        "web's sidecar saw early data accepted"
    );

    // The sidecar's TLS material: what a real mesh member would have.
    let (member, roots) = zone_member(&z.data, &SpiffeId::workload("tern", "z1", "web"));

    // Positive control: a certificate from the mesh gets through.
    let ok = tls_request(
        api.inbound(),
        Some(&member),
        roots.clone(),
        &[b"http/1.1"],
        &raw_get("/raw", ""),
    )
    .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "mesh member refused: {ok}");

    // Each refusal below is counted once as a TLS failure on api's
    // sidecar (health probes, which connect and close, are not counted).
    let failures = || metric_sum(api.admin(), "tern_proxy_tls_handshake_failures_total", "");
    let counted_once = |before: f64, what: &str| {
        let n = wait_for(&format!("{what} counted"), T, || {
            let n = failures();
            (n > before).then_some(n)
        });
        assert_eq!(n, before + 1.0, "{what} counted once");
        n
    };
    let n0 = failures();
    // A plain-text client gets no HTTP answer.
    let plain = get(api.inbound(), "api", "/");
    assert!(plain.is_err(), "plain HTTP must be refused: {plain:?}");
    let n1 = counted_once(n0, "plain text");
    // TLS without a client certificate is refused.
    let r = tls_request(
        api.inbound(),
        None,
        roots.clone(),
        &[b"http/1.1"],
        &raw_get("/raw", ""),
    );
    assert!(
        r.as_ref().map_or(true, |s| !s.contains("HTTP/1.1")),
        "no client cert must be refused: {r:?}"
    );
    let n2 = counted_once(n1, "no client certificate");
    // A certificate from another CA, claiming a mesh identity, is refused.
    let foreign = Ca::new_root("tern", Duration::from_secs(3600)).unwrap();
    let forged = leaf_from(&foreign, "", &SpiffeId::workload("tern", "z1", "web"));
    let r = tls_request(
        api.inbound(),
        Some(&forged),
        roots,
        &[b"http/1.1"],
        &raw_get("/raw", ""),
    );
    assert!(
        r.as_ref().map_or(true, |s| !s.contains("HTTP/1.1")),
        "foreign CA must be refused: {r:?}"
    );
    counted_once(n2, "a foreign CA");
}
