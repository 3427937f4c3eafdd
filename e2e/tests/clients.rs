//! Protocols as third-party clients and servers speak them, through a
//! sidecar pair in one zone and through sidecars and both zones' QUIC
//! gateways across zones. The peers are real implementations from PyPI
//! (`e2e/py/interop.py`): grpcio (gRPC C-core) and `websockets`.
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(60);
/// The client sidecar's identity: what servers must see as the caller.
const WEB_ID: &str = "spiffe://tern/zone/z1/svc/web";

/// Two zones with a gateway each; a client sidecar (no app) in z1 on host
/// 10; `{kind}-near` on host 11 in z1 and `{kind}-far` on host 31 in z2,
/// each a Python server (`interop.py {kind}-server`) behind a sidecar.
struct Topology {
    net: Net,
    _procs: Vec<Proc>,
    _zones: Vec<ZoneCp>,
    _gws: Vec<GatewayProc>,
    g: Global,
    s: Scratch,
}

impl Topology {
    fn start(test: &str, net: Net, kind: &str, protocol: &str) -> Topology {
        let s = Scratch::new(test);
        let g = Global::start(&s.0, net);
        let z1 = ZoneCp::start(&s.0, net, 2, "z1", "eu", Some(&g.zone_token("z1")));
        let z2 = ZoneCp::start(&s.0, net, 3, "z2", "us", Some(&g.zone_token("z2")));
        let gw = |z: &ZoneCp, host: u8| {
            let t = g.token_file(
                &format!("gw-{}", z.name),
                &["generate", "gateway-token", "--zone", &z.name],
            );
            GatewayProc::start(&s.0, net, host, z, &t, &[])
        };
        let gws = vec![gw(&z1, 21), gw(&z2, 32)];
        let mut procs = Vec::new();
        for (z, host, svc) in [
            (&z1, 11, format!("{kind}-near")),
            (&z2, 31, format!("{kind}-far")),
        ] {
            procs.push(spawn(
                &s.0,
                &format!("app-{svc}"),
                &python().display().to_string(),
                &[
                    py_script("interop.py"),
                    format!("{kind}-server"),
                    net.addr(host, 8080).to_string(),
                ],
            ));
            let t = g.dp_token(&z.name, &svc);
            procs.push(start_sidecar(
                &s.0,
                net,
                host,
                &svc,
                z,
                &t,
                &["--protocol", protocol],
            ));
        }
        let t = g.dp_token("z1", "web");
        let mut args = sidecar_args(net, 10, "web", &z1, &t);
        args.retain(|a| a != "--app" && !a.ends_with(":8080"));
        procs.push(spawn(&s.0, "sidecar-web-10", "dataplane", &args));
        // The apps (Python servers) take a while to import and listen: a
        // first call before that would be refused by the app, not the mesh.
        for host in [11, 31] {
            wait_for(&format!("the app on .{host} listening"), T, || {
                std::net::TcpStream::connect(net.addr(host, 8080)).ok()
            });
        }
        let admin = net.addr(10, 15000);
        for svc in [format!("{kind}-near"), format!("{kind}-far")] {
            wait_for(&format!("the client sidecar knows {svc}"), T, || {
                let d = get(admin, "x", "/config_dump").ok()?.json();
                d["clusters"][&svc]["endpoints"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                    .then_some(())
            });
        }
        Topology {
            net,
            _procs: procs,
            _zones: vec![z1, z2],
            _gws: gws,
            g,
            s,
        }
    }

    fn client_outbound(&self) -> SocketAddr {
        self.net.addr(10, 15001)
    }

    /// Run `interop.py` with these arguments to its end (killed after a
    /// generous limit); its exit status and output.
    fn run_client(&self, args: &[&str]) -> (bool, String) {
        let out = self.s.path(&format!("client-{}.out", args[2]));
        let f = std::fs::File::create(&out).unwrap();
        let mut child = Command::new(python())
            .arg(py_script("interop.py"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start the Python client");
        let deadline = Instant::now() + patient(Duration::from_secs(240));
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        (status.is_some_and(|s| s.success()), text)
    }
}

fn assert_checks(what: &str, (ok, out): (bool, String), checks: &[&str]) {
    assert!(ok, "{what}: the client reported failures:\n{out}");
    for c in checks {
        assert!(
            out.lines().any(|l| l == format!("ok {c}")),
            "{what}: check {c} did not pass:\n{out}"
        );
    }
}

/// A grpcio client calls a grpcio server through the sidecars, in the zone
/// and across zones: unary, server-, client- and bidirectional streaming,
/// an 8 MiB message each way, a deadline the server exceeds
/// (DEADLINE_EXCEEDED well before the server would answer), an error
/// status with text and binary metadata in the trailers, and the caller's
/// verified identity (not the one it forged) reaching the server. On the
/// previous main every call failed: the sidecars stripped `te: trailers`.
#[test]
fn grpcio_calls_of_every_shape_pass_through_sidecars_in_a_zone_and_across_zones() {
    let t = Topology::start("grpcio", Net(50), "grpc", "grpc");
    let target = t.client_outbound().to_string();
    let checks = [
        "unary",
        "identity",
        "large",
        "error_in_trailers",
        "deadline",
        "server_streaming",
        "client_streaming",
        "bidi",
    ];
    for svc in ["grpc-near", "grpc-far"] {
        assert_checks(
            svc,
            t.run_client(&["grpc-client", &target, svc, WEB_ID]),
            &checks,
        );
    }
}

/// A `websockets` client opens WebSocket sessions to a `websockets` server
/// through the sidecars' HTTP listeners, in the zone and across zones: the
/// upgrade succeeds with the negotiated subprotocol, 100 text messages and
/// a 4 MiB binary message echo back intact, and the server sees the
/// caller's verified identity on the upgrade request; the sessions' bytes
/// count as TCP bytes of their peer pair on both sidecars. Then an HttpRoute on
/// `ws-near` applies to upgrades as to any request: a session opened to
/// `ws-near` under `/far` lands on `ws-far`'s server (in the other zone)
/// with the path rewritten and the route's header set; a redirect rule
/// answers the upgrade with its 301; a path no rule matches still reaches
/// `ws-near` untouched. Last, a CircuitBreaker of one connection to
/// `ws-near` refuses a second upgrade (503, `max-connections`) while a
/// session is open, and admits one again after it closes; and a Timeout's
/// `streamDuration` of 2 s closes a quiet session (within 60 s).
#[test]
fn websockets_cross_sidecars_and_zones_and_obey_routes_breakers_and_timeouts() {
    let t = Topology::start("websocket", Net(51), "ws", "http");
    let proxy = t.client_outbound().to_string();
    for svc in ["ws-near", "ws-far"] {
        assert_checks(
            svc,
            t.run_client(&["ws-client", &proxy, svc, WEB_ID]),
            &["text", "binary_large", "identity"],
        );
    }
    // The sessions' bytes count as the peer pair's TCP bytes on both
    // sidecars (over a KiB each way to each service: `websockets`
    // compresses, so the 4 MiB message crosses as about 17 KB; before,
    // upgraded connections counted nothing).
    let admin = t.net.addr(10, 15000);
    let bytes = |at: SocketAddr, name: &str, filter: &str| metric_sum(at, name, filter);
    const KIB: f64 = 1024.0;
    for svc in ["ws-near", "ws-far"] {
        let to = format!("destination_service=\"{svc}\"");
        for name in [
            "tern_proxy_traffic_tcp_sent_bytes_total{direction=\"outbound\"",
            "tern_proxy_traffic_tcp_received_bytes_total{direction=\"outbound\"",
        ] {
            let n = bytes(admin, name, &to);
            assert!(n > KIB, "{name} {svc}: {n}");
        }
    }
    let near_admin = t.net.addr(11, 15000);
    for name in [
        "tern_proxy_traffic_tcp_sent_bytes_total{direction=\"inbound\",source_service=\"web\"",
        "tern_proxy_traffic_tcp_received_bytes_total{direction=\"inbound\",source_service=\"web\"",
    ] {
        let n = bytes(near_admin, name, "");
        assert!(n > KIB, "{name} at ws-near: {n}");
    }

    t.g.apply(
        "apiVersion: tern.dev/v1alpha1\nkind: HttpRoute\nmetadata: {name: ws-routes}\nspec:\n  to: {service: ws-near}\n  rules:\n\
         \x20   - name: to-far\n      matches: [{path: {prefix: /far}}]\n      rewrite: {pathPrefix: /chat}\n      requestHeaders: {set: {x-route: to-far}}\n      backends: [{service: ws-far}]\n\
         \x20   - name: moved\n      matches: [{path: {exact: /moved}}]\n      redirect: {path: /chat, statusCode: 301}\n",
    );
    wait_for("the client sidecar holds ws-near's two routes", T, || {
        let d = get(admin, "x", "/config_dump").ok()?.json();
        (d["routes"]["ws-near"]["http"].as_array()?.len() == 2).then_some(())
    });
    let near = t.net.addr(11, 8080);
    let far = t.net.addr(31, 8080);
    let where_ = |path: &str| t.run_client(&["ws-where", &proxy, "ws-near", path]);
    let (ok, out) = where_("/far/room");
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("where: {far} /chat/room to-far")),
        "{out}"
    );
    let (ok, out) = where_("/chat");
    assert!(ok, "{out}");
    assert!(out.contains(&format!("where: {near} /chat -")), "{out}");
    let (ok, out) = where_("/moved");
    assert!(!ok, "a redirect is not an upgrade: {out}");
    assert!(out.contains("refused: HTTP 301"), "{out}");

    // With ws-near's CircuitBreaker at one connection, an open WebSocket
    // holds it: a second upgrade gets 503 naming max-connections, and a
    // new session opens once the first is closed.
    t.g.apply(
        "apiVersion: tern.dev/v1alpha1\nkind: CircuitBreaker\nmetadata: {name: ws-one}\nspec:\n  to: {service: ws-near}\n  limits: {maxConnections: 1}\n",
    );
    wait_for("the client sidecar's limit for ws-near", T, || {
        let d = get(admin, "x", "/config_dump").ok()?.json();
        (d["clusters"]["ws-near"]["resilience"]["limits"]["maxConnections"] == 1).then_some(())
    });
    assert_checks(
        "ws-near",
        t.run_client(&["ws-limit", &proxy, "ws-near"]),
        &["limit"],
    );

    // A Timeout's streamDuration closes an upgraded connection at its
    // limit, although it is not idle-timed-out (1h by default).
    t.g.apply(
        "apiVersion: tern.dev/v1alpha1\nkind: Timeout\nmetadata: {name: ws-short}\nspec:\n  to: {service: ws-near}\n  streamDuration: 2s\n",
    );
    wait_for(
        "the client sidecar's stream duration for ws-near",
        T,
        || {
            let d = get(admin, "x", "/config_dump").ok()?.json();
            (d["clusters"]["ws-near"]["resilience"]["streamDuration"] == "2s").then_some(())
        },
    );
    assert_checks(
        "ws-near",
        t.run_client(&["ws-closed", &proxy, "ws-near"]),
        &["closed"],
    );
}

/// curl speaking HTTP/2 with prior knowledge (`:authority: api`, no
/// `Host`) through a sidecar pair reaches an HTTP/1.1 app that receives
/// `Host: api`, the name it was called by (before, it received its own
/// endpoint's address: the caller's authority was lost when the caller's
/// sidecar rewrote the URI for the hop). The other way round, an HTTP/2
/// app called over HTTP/1.1 as `api2` receives `:authority: api2` (before,
/// its own address, with the name only in a `Host` header beside it).
#[test]
fn an_http2_callers_authority_reaches_the_app_as_host() {
    let net = Net(85);
    let (s, g, z) = one_zone("h2-authority", net);
    let _api = Workload::start(&s.0, net, 11, "api", &z, &g.dp_token("z1", "api"));
    let web = Workload::start(&s.0, net, 10, "web", &z, &g.dp_token("z1", "web"));
    wait_for("api reachable", T, || {
        get(web.outbound(), "api", "/")
            .ok()
            .filter(|r| r.status == 200)
    });
    let out = web.outbound();
    let o = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "20"])
        .arg("--connect-to")
        .arg(format!("api:80:{}:{}", out.ip(), out.port()))
        .arg("http://api/who")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["host"], "api", "{v}");
    assert_eq!(v["version"], "HTTP/1.1", "{v}");

    // An app declared HTTP/2, called as `api2` over HTTP/1.1: the app's
    // `:authority` is `api2`, not its own address.
    let _api2 = Workload::start_with(
        &s.0,
        net,
        12,
        "api2",
        &z,
        &g.dp_token("z1", "api2"),
        &["--protocol", "http2"],
    );
    let v = wait_for("api2 reachable", T, || {
        get(web.outbound(), "api2", "/who")
            .ok()
            .filter(|r| r.status == 200)
    })
    .json();
    assert_eq!(v["version"], "HTTP/2.0", "{v}");
    assert_eq!(v["authority"], "api2", "{v}");
    assert_eq!(v["host"], "api2", "{v}");
}
