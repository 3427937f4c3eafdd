//! Revocation acts on what is already connected:
//!
//! * disabling a `Zone` cuts its live sync stream (without a restart), and
//!   enabling it lets it back;
//! * revoking a zone's token cuts its live sync stream, withdraws its
//!   `ZoneCa` and `ZoneIngress` in the same change, and within seconds every
//!   sidecar and gateway of the other zones refuses its certificates: new
//!   handshakes fail and open connections are closed;
//! * revoking a dataplane token disconnects and deregisters its proxy at
//!   once, and it gets no more certificates.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::rustls;
use common::tls::{self, Expect, Identity, SpiffeServerVerifier};
use common::trust::TrustPolicy;
use model::ident::SpiffeId;
use support::*;

const T: Duration = Duration::from_secs(30);

/// A keep-alive HTTP/1.1 connection over mTLS that stays open between
/// requests.
struct Kept {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Kept {
    fn open(addr: std::net::SocketAddr, ident: &Identity, roots: Arc<TrustPolicy>) -> Kept {
        tls::install_provider();
        let v = SpiffeServerVerifier::new(roots, Expect::TrustDomain("tern".into()));
        let cfg = tls::client_config(Some(ident), Arc::new(v), &[b"http/1.1"]).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(cfg), tls::sni()).unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Kept {
            s: rustls::StreamOwned::new(conn, sock),
        }
    }
    /// One request; the JSON answer.
    fn get(&mut self) -> String {
        self.s
            .write_all(b"GET /kept HTTP/1.1\r\nHost: api\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        wait_for("an answer on the kept connection", T, || {
            match self.s.read(&mut chunk) {
                Ok(0) => panic!("the kept connection closed"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("kept connection: {e}"),
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            text.ends_with("}\n").then_some(text)
        })
    }
    /// True once the peer has closed the connection.
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        match self.s.read(&mut chunk) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

fn apply(g: &Global, doc: &str) {
    g.apply(doc);
}

fn online(g: &Global, zone: &str, want: bool) {
    wait_for(&format!("{zone} online={want}"), T, || {
        g.zone(zone).filter(|z| z["online"] == want)
    });
}

#[test]
fn a_revoked_zone_is_cut_off_live_and_its_certificates_are_refused_mesh_wide() {
    let s = Scratch::new("revoke-zone");
    let net = Net(43);
    // A long offline TTL: withdrawal must come from the revocation itself.
    let g = Global::start_with(&s.0, net, &["--zone-offline-ttl", "1h"]);
    let z1 = ZoneCp::start(&s.0, net, 2, "z1", "r1", Some(&g.zone_token("z1")));
    let z2_token = g.zone_token("z2");
    let z2 = ZoneCp::start(&s.0, net, 3, "z2", "r2", Some(&z2_token));
    online(&g, "z1", true);
    online(&g, "z2", true);
    let gw1 = GatewayProc::start(
        &s.0,
        net,
        21,
        &z1,
        &g.token_file("gw1", &["generate", "gateway-token", "--zone", "z1"]),
        &[],
    );
    let _gw2 = GatewayProc::start(
        &s.0,
        net,
        31,
        &z2,
        &g.token_file("gw2", &["generate", "gateway-token", "--zone", "z2"]),
        &[],
    );
    let api = Workload::start(&s.0, net, 11, "api", &z1, &g.dp_token("z1", "api"));
    wait_for("z1's gateway connected to z2's", T, || {
        gw1.dump()["remotes"]
            .as_array()?
            .iter()
            .any(|r| r["zone"] == "z2" && r["connected"] == true)
            .then_some(())
    });
    // A workload of z2 (as z2's CA issues it) holds an open connection to
    // api in z1.
    let (z2_web, roots) = zone_member(&z2.data, &SpiffeId::workload("tern", "z2", "web"));
    let mut kept = Kept::open(api.inbound(), &z2_web, roots.clone());
    assert!(kept.get().contains("spiffe://tern/zone/z2/svc/web"));

    // Disabled: the live stream is cut at once; enabled: it comes back.
    // Disabling is not a revocation: z2's certificates stay trusted.
    apply(
        &g,
        "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata: {name: z2}\nspec: {enabled: false}\n",
    );
    online(&g, "z2", false);
    wait_for("z2's zone-cp told why", T, || {
        z2.proc.log_text().contains("is disabled").then_some(())
    });
    apply(
        &g,
        "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata: {name: z2}\nspec: {enabled: true}\n",
    );
    online(&g, "z2", true);
    assert!(kept.get().contains("z2/svc/web"), "still trusted");
    wait_for("api trusts z2's CA", T, || {
        api.dump()["trust"]["zoneCas"]["z2"].as_array().map(|_| ())
    });

    // Revoke z2's join token.
    let jti = model::token::decode_unverified(&std::fs::read_to_string(&z2_token).unwrap())
        .unwrap()
        .jti;
    let out = g.ctl(&["revoke", &jti, "--reason", "test"]);
    assert!(out.contains("revoked"), "{out}");
    // In the same change: no trust, no ingress for z2 (not after the TTL).
    let cas = g.ctl(&["get", "zonecas", "-o", "json"]);
    assert!(cas.contains("\"z1\"") && !cas.contains("\"z2\""), "{cas}");
    let ingress = g.ctl(&["get", "zoneingresses", "-o", "json"]);
    assert!(!ingress.contains("\"z2\""), "{ingress}");
    // The live sync stream is cut.
    online(&g, "z2", false);
    wait_for("z2's zone-cp told why", T, || {
        z2.proc
            .log_text()
            .contains("has been revoked")
            .then_some(())
    });
    // Sidecars of z1 drop z2 from their trust and close its connection.
    wait_for("api no longer trusts z2", T, || {
        api.dump()["trust"]["zoneCas"]
            .get("z2")
            .is_none()
            .then_some(())
    });
    wait_for("api closed z2's open connection", T, || {
        kept.closed().then_some(())
    });
    assert!(metric_sum(api.admin(), "tern_proxy_connections_distrusted_total", "") >= 1.0);
    let r = tls_request(
        api.inbound(),
        Some(&z2_web),
        roots,
        &[b"http/1.1"],
        &raw_get("/x", ""),
    );
    assert!(
        !r.as_ref().is_ok_and(|s| s.contains("HTTP/1.1")),
        "a new handshake with z2's certificate must fail: {r:?}"
    );
    // z1's gateway closed its QUIC connection with z2's gateway.
    wait_for("z1's gateway dropped z2", T, || {
        (gw1.metric("tern_gateway_connections_distrusted_total", "") >= 1.0).then_some(())
    });
    let audit = g.ctl(&["audit"]);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("zone.revoked") && l.contains("z2")),
        "{audit}"
    );
}

#[test]
fn a_revoked_dataplane_token_disconnects_and_deregisters_its_proxy() {
    let net = Net(44);
    let (s, g, mut z) = one_zone("revoke-proxy", net);
    // A long grace for broken streams: a revoked proxy must go at once.
    online(&g, "z1", true);
    z.restart_with(&["--deregister-after", "10m"]);
    let api_t = g.dp_token("z1", "api");
    let api = Workload::start(&s.0, net, 11, "api", &z, &api_t);
    let web = Workload::start(&s.0, net, 10, "web", &z, &g.dp_token("z1", "web"));
    wait_for("web sees api", T, || {
        (!web.endpoints("api").is_empty()).then_some(())
    });
    let jti = model::token::decode_unverified(&std::fs::read_to_string(&api_t).unwrap())
        .unwrap()
        .jti;
    // Certificates issued so far: none may follow the revocation.
    let issued = metric_sum(
        z.net.addr(z.host, 5680),
        "tern_zone_certificates_issued_total",
        "",
    );
    g.ctl(&["revoke", &jti]);
    // Deregistered at once (not after the grace period), so callers stop
    // routing to it.
    wait_for("api gone from the registry", T, || {
        let d = z.dump();
        (!d["proxies"]
            .as_array()?
            .iter()
            .any(|p| p["service"] == "api"))
        .then_some(())
    });
    // The proxy's own stream is closed too (its sweep from the registry
    // and its stream's close may come in either order).
    wait_for("api's stream closed", T, || {
        z.proc
            .log_text()
            .contains("token revoked; closing the proxy's stream and deregistering it")
            .then_some(())
    });
    wait_for("web dropped api", T, || {
        web.endpoints("api").is_empty().then_some(())
    });
    // Its reconnects are refused: no more certificates.
    wait_for("api's sidecar told its token is revoked", T, || {
        api.dump()["controlPlane"]["lastError"]
            .as_str()
            .filter(|e| e.contains("revoked"))
            .map(|_| ())
    });
    wait_for("a few refused reconnects", T, || {
        (metric_sum(
            z.net.addr(z.host, 5680),
            "tern_zone_proxy_refused_total",
            "",
        ) >= 2.0)
            .then_some(())
    });
    assert_eq!(
        metric_sum(
            z.net.addr(z.host, 5680),
            "tern_zone_certificates_issued_total",
            ""
        ),
        issued,
        "no certificate was issued to the revoked token"
    );
}
