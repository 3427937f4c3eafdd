//! The packet-level WAN emulator (`tern-netemu`) that `bench/lossy.sh`
//! compares TCP and QUIC over: two network namespaces made by the test,
//! joined by TUN devices. Needs root (as CI runs); anywhere else it says so
//! and does nothing.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::netemu::in_netns;
use support::*;

const AIP: &str = "10.201.0.1";
const BIP: &str = "10.201.0.2";

/// Two namespaces, deleted on drop (after the emulator holding their TUN
/// devices is gone).
struct Namespaces {
    a: String,
    b: String,
}

impl Namespaces {
    fn new(test: &str) -> Self {
        let id = std::process::id();
        let ns = Self {
            a: format!("tern-{test}-{id}-a"),
            b: format!("tern-{test}-{id}-b"),
        };
        for n in [&ns.a, &ns.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(std::process::Stdio::null())
                .status();
            let st = Command::new("ip")
                .args(["netns", "add", n])
                .status()
                .expect("run ip");
            assert!(st.success(), "ip netns add {n} failed");
        }
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// TCP segments the kernel of namespace `ns` has retransmitted.
fn retransmitted(ns: &str) -> u64 {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .expect("read /proc/net/snmp");
    let text = String::from_utf8_lossy(&o.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .expect("RetransSegs in /proc/net/snmp");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn connect(ns: &str, to: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    in_netns(ns, move || TcpStream::connect_timeout(&to, limit))
}

/// Proves, with the kernels' own TCP on both sides: packets cross from one
/// namespace to the other no sooner than the configured delay each way;
/// under 5% bursty loss a 4 MiB echo arrives intact while the sender's
/// kernel retransmits segments (so packets were really dropped, not held);
/// at 100% loss no connection can be made; and conditions written to the
/// control file take effect on a running link.
#[test]
fn the_packet_emulator_delays_and_really_drops_packets_between_namespaces() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root; this test needs root for ip netns and /dev/net/tun"
        );
        eprintln!("skipped: needs root for ip netns and /dev/net/tun");
        return;
    }
    let s = Scratch::new("netemu");
    let ns = Namespaces::new("emu");
    let control = s.path("link.conf");
    std::fs::write(&control, "delay=50ms loss=0").unwrap();
    let emu = spawn(
        &s.0,
        "netemu",
        "tern-netemu",
        &[
            "--ns-a".into(),
            ns.a.clone(),
            "--addr-a".into(),
            AIP.into(),
            "--ns-b".into(),
            ns.b.clone(),
            "--addr-b".into(),
            BIP.into(),
            "--delay".into(),
            "50ms".into(),
            "--control".into(),
            control.display().to_string(),
        ],
    );
    wait_for(
        "the emulator is ready",
        patient(Duration::from_secs(10)),
        || emu.log_text().contains("ready:").then_some(()),
    );
    let set = |conds: &str, nth: usize| {
        std::fs::write(&control, conds).unwrap();
        wait_for(
            "the emulator takes the new conditions",
            patient(Duration::from_secs(10)),
            || (emu.log_text().matches("conditions:").count() >= nth).then_some(()),
        );
    };

    let listener = in_netns(&ns.b, || TcpListener::bind((BIP, 0))).expect("listen in zone B");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });

    // The delay: one byte's round trip takes at least two one-way delays.
    let mut c = connect(&ns.a, addr, patient(Duration::from_secs(5))).expect("connect A -> B");
    c.set_read_timeout(Some(patient(Duration::from_secs(30))))
        .unwrap();
    let t = Instant::now();
    c.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "round trip {:?}",
        t.elapsed()
    );

    // Real loss: TCP recovers every byte, and the sender's kernel says it
    // had to retransmit.
    set("delay=5ms loss=0.05 burst=3", 1);
    let before = retransmitted(&ns.a);
    let t = Instant::now();
    let data: Vec<u8> = (0..4 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back)
        .expect("the echo arrives under loss");
    writer.join().unwrap().unwrap();
    assert!(back == data, "the echo differs from what was sent");
    let after = retransmitted(&ns.a);
    eprintln!("4 MiB echo under loss: {:?}", t.elapsed());
    assert!(
        after > before,
        "no TCP retransmission in zone A ({before} -> {after}): nothing was lost"
    );

    // A link that loses everything lets no connection through ...
    set("delay=5ms loss=1", 2);
    assert!(
        connect(&ns.a, addr, Duration::from_secs(1)).is_err(),
        "connected through a link that loses every packet"
    );
    // ... and one restored at run time does.
    set("delay=5ms loss=0", 3);
    connect(&ns.a, addr, patient(Duration::from_secs(5)))
        .expect("connect after the link is restored");
}
