//! Every wait has a limit: a request that is not retried, an idle opaque
//! flow, a client that stalls in its first bytes on a sidecar's inbound
//! port, a client that sends a partial request head to an admin port, and
//! a client that opens more admin connections than the port serves.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

/// Read until the peer closes (Ok with what came) or the limit passes
/// (Err): the limit is generous, only there so a broken server fails the
/// test instead of hanging it.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(patient(limit))).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(out),
        Err(e) => Err(format!("still open after {limit:?}: {e}")),
    }
}

/// A POST (not retried) to an app that takes 5 s to answer, through a
/// sidecar with `--request-timeout 1s`: the caller gets 504 naming the
/// request timeout, not a wait as long as the app's. A GET through the
/// same sidecar to a prompt app still succeeds.
#[test]
fn a_request_that_is_not_retried_gets_504_after_the_request_timeout() {
    let net = Net(55);
    let (s, g, z) = one_zone("request-timeout", net);
    let _api = Workload::start(&s.0, net, 11, "api", &z, &g.dp_token("z1", "api"));
    let web = Workload::start_with(
        &s.0,
        net,
        10,
        "web",
        &z,
        &g.dp_token("z1", "web"),
        &["--request-timeout", "1s"],
    );
    wait_for("api reachable", T, || {
        get(web.outbound(), "api", "/")
            .ok()
            .filter(|r| r.status == 200)
    });
    let r = http_body(web.outbound(), "POST", "api", "/sleep/5000", &[], "x").unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.contains("within the request timeout of 1s"), "{r:?}");
    assert_eq!(get(web.outbound(), "api", "/").unwrap().status, 200);
}

/// An opaque TCP flow through a sidecar pair echoes while it is used, and
/// is closed by the caller's sidecar once nothing has moved for
/// `--tcp-idle-timeout` (1 s here): the client sees the connection end.
#[test]
fn an_idle_tcp_flow_is_closed_after_the_idle_timeout() {
    let net = Net(56);
    let (s, g, z) = one_zone("tcp-idle", net);
    let _echo = Workload::start_full(
        &s.0,
        net,
        12,
        "echo",
        &z,
        &g.dp_token("z1", "echo"),
        &["--tcp-echo"],
        &["--protocol", "tcp"],
    );
    let port = net.addr(10, 16000);
    let web = Workload::start_with(
        &s.0,
        net,
        10,
        "web",
        &z,
        &g.dp_token("z1", "web"),
        &[
            "--outbound-port",
            &format!("tcp:echo={port}"),
            "--tcp-idle-timeout",
            "1s",
        ],
    );
    wait_for("web knows echo", T, || {
        (!web.endpoints("echo").is_empty()).then_some(())
    });
    let mut c = TcpStream::connect(port).unwrap();
    c.set_read_timeout(Some(patient(T))).unwrap();
    for i in 0..3 {
        let msg = format!("ping {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    let rest = read_until_closed(&mut c, T).expect("the idle flow is closed");
    assert!(rest.is_empty(), "{rest:?}");
}

/// An admin port closes a connection that sent only part of a request head
/// (after its 10 s header timeout); serves a 256th connection, closes new
/// connections at once while 256 are open, and once they are gone serves
/// again.
#[test]
fn admin_ports_bound_partial_requests_and_connections() {
    let net = Net(57);
    let (s, g, z) = one_zone("admin-limits", net);
    let w = Workload::start(&s.0, net, 10, "web", &z, &g.dp_token("z1", "web"));
    // The sidecar's, the zone-cp's and the global's admin ports.
    let mut partials: Vec<TcpStream> = [w.admin(), net.addr(2, 5680), net.addr(1, 5681)]
        .into_iter()
        .map(|admin| {
            let mut p = TcpStream::connect(admin).unwrap();
            p.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n").unwrap();
            p
        })
        .collect();
    for p in &mut partials {
        read_until_closed(p, T).expect("a partial request head is closed");
    }
    let admin = w.admin();
    let mut held: Vec<TcpStream> = (0..255)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    // The 256th connection is still served (the limit is not lower) ...
    let last = wait_for("the 256th connection is served", T, || {
        let mut c = TcpStream::connect(admin).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        c.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut head = [0u8; 12];
        c.read_exact(&mut head).ok()?;
        (&head == b"HTTP/1.1 200").then_some(c)
    });
    held.push(last);
    // ... and with all 256 held, a new one is closed.
    wait_for("a connection past the limit is closed at once", T, || {
        let mut extra = TcpStream::connect(admin).ok()?;
        extra
            .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let got = read_until_closed(&mut extra, Duration::from_secs(5)).ok()?;
        got.is_empty().then_some(())
    });
    drop(held);
    wait_for("the port serves again", T, || {
        get(admin, "x", "/ready").ok().filter(|r| r.status == 200)
    });
}

/// A client that connects to a sidecar's inbound HTTP port (plaintext, in
/// permissive mode) and sends one byte of the HTTP/2 preface is cut off
/// after the 10 s first-bytes deadline (before, the server waited for the
/// rest of the preface for ever); a client that sends a whole request on
/// the same port is answered.
#[test]
fn a_client_that_stalls_in_its_first_bytes_is_cut_off() {
    let net = Net(84);
    let (s, g, z) = one_zone("first-bytes", net);
    let api = Workload::start(&s.0, net, 11, "api", &z, &g.dp_token("z1", "api"));
    g.apply("apiVersion: tern.dev/v1alpha1\nkind: MtlsPolicy\nmetadata: {name: api-open}\nspec:\n  targetRef: {service: api}\n  mode: permissive\n");
    wait_for("plaintext served by api", T, || {
        get(api.inbound(), "api", "/")
            .ok()
            .filter(|r| r.status == 200)
    });
    let mut c = TcpStream::connect(api.inbound()).unwrap();
    c.write_all(b"P").unwrap();
    let rest = read_until_closed(&mut c, T).expect("a stalled preface is closed");
    assert!(rest.is_empty(), "{rest:?}");
}
