//! WAN link emulator for benchmarks and drills:
//!   tern-linkemu --udp --listen 127.0.0.1:25444 --target 127.0.0.1:15444 --delay 20ms --loss 0.01
use std::time::Duration;

use clap::Parser;
use e2e::linkemu::{Conditions, Link};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: std::net::SocketAddr,
    #[arg(long)]
    target: std::net::SocketAddr,
    /// Relay UDP (default: TCP).
    #[arg(long)]
    udp: bool,
    /// One-way delay.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// Loss probability, 0..1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !(0.0..=1.0).contains(&a.loss) {
        eprintln!("tern-linkemu: --loss must be between 0 and 1");
        std::process::exit(64);
    }
    let c = Conditions {
        delay: a.delay,
        jitter: a.jitter,
        loss: a.loss,
        cut: false,
    };
    let _link = if a.udp {
        Link::udp(a.listen, a.target, c).await?
    } else {
        Link::tcp(a.listen, a.target, c).await?
    };
    tokio::signal::ctrl_c().await?;
    Ok(())
}
