//! Packet-level WAN emulator between two network namespaces (see
//! `e2e::netemu`). The namespaces must exist (`ip netns add`); this creates a
//! TUN device `tern0` in each, gives it its address (/24), and forwards
//! packets both ways until killed:
//!   tern-netemu --ns-a za --addr-a 10.201.0.1 --ns-b zb --addr-b 10.201.0.2 \
//!               --delay 20ms --loss 0.01 [--burst 3] [--control FILE]
//! With `--control FILE`, a line such as `delay=20ms loss=0.03 burst=3`
//! written to FILE replaces the conditions within 0.2 s, without taking the
//! link down. Every 5 s it prints the packets passed and lost each way.
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use e2e::netemu::{forward, open_tun, parse_conditions, Conditions, Control, Counters, LossModel};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    ns_a: String,
    #[arg(long)]
    addr_a: std::net::Ipv4Addr,
    #[arg(long)]
    ns_b: String,
    #[arg(long)]
    addr_b: std::net::Ipv4Addr,
    /// One-way delay, each direction.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Long-run share of packets lost, each direction, 0..1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Lose packets in bursts of this mean length (Gilbert-Elliott);
    /// absent: each packet independently.
    #[arg(long)]
    burst: Option<f64>,
    /// Seed of the loss decisions (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Re-read conditions from this file when it changes.
    #[arg(long)]
    control: Option<std::path::PathBuf>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("ip").args(args).status().context("run ip")?;
    if !st.success() {
        bail!("ip {} failed", args.join(" "));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !(0.0..=1.0).contains(&a.loss) || a.burst.is_some_and(|b| b < 1.0) {
        eprintln!("tern-netemu: --loss must be in 0..1 and --burst at least 1");
        std::process::exit(64);
    }
    let model = a.burst.map_or(LossModel::Independent, LossModel::Bursty);
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let ta = open_tun(&a.ns_a, "tern0").with_context(|| format!("TUN in {}", a.ns_a))?;
    let tb = open_tun(&a.ns_b, "tern0").with_context(|| format!("TUN in {}", a.ns_b))?;
    for (ns, addr) in [(&a.ns_a, a.addr_a), (&a.ns_b, a.addr_b)] {
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "tern0",
        ])?;
        ip(&["-n", ns, "link", "set", "tern0", "up"])?;
    }
    let ctl = Control::new(Conditions {
        delay: a.delay,
        loss: a.loss,
        model,
    });
    let ab = Arc::new(Counters::default());
    let ba = Arc::new(Counters::default());
    forward(
        ta.try_clone()?,
        tb.try_clone()?,
        ctl.clone(),
        seed,
        ab.clone(),
    );
    forward(
        tb,
        ta,
        ctl.clone(),
        seed.rotate_left(17) ^ 0x9e37,
        ba.clone(),
    );
    if let Some(path) = a.control.clone() {
        // What the file holds at start applies at once (it overrides the
        // flags); later changes are logged as `conditions:`.
        let mut last = std::fs::read_to_string(&path).unwrap_or_default();
        if !last.trim().is_empty() {
            ctl.set(
                parse_conditions(&last).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            );
        }
        let ctl = ctl.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if text == last {
                continue;
            }
            match parse_conditions(&text) {
                Ok(c) => {
                    ctl.set(c);
                    eprintln!("conditions: {c:?}");
                }
                Err(e) => eprintln!("tern-netemu: {}: {e}", path.display()),
            }
            last = text;
        });
    }
    println!("ready: {} <-> {}, {:?}", a.ns_a, a.ns_b, ctl.get());
    loop {
        std::thread::sleep(Duration::from_secs(5));
        let f = |c: &Counters| {
            (
                c.passed.load(Ordering::Relaxed),
                c.lost.load(Ordering::Relaxed),
            )
        };
        let ((p1, l1), (p2, l2)) = (f(&ab), f(&ba));
        eprintln!("a->b passed {p1} lost {l1}; b->a passed {p2} lost {l2}");
    }
}
