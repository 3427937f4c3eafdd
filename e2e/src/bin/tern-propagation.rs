//! Policy propagation at scale: a real global control plane and real zone
//! control planes (child processes), and simulated proxies — real gRPC
//! streams over TLS that speak the proxy protocol: they register with a
//! dataplane token, send a CSR, receive trust, certificates and config
//! deltas, and ACK each config. No data plane runs.
//!
//! After every proxy holds its first config, the global applies an
//! `AccessPolicy` named `probe` `--applies` times, each with a new rule name;
//! each simulated proxy notes when a config carrying that rule reaches it.
//! Printed: per-apply time until every proxy in every zone has it, and
//! per-proxy times (p50, p99, max), from the moment the global stored the
//! apply; and each zone-cp's memory per connected proxy (RSS growth from
//! before the proxies connected, divided by their number, once they are
//! settled; and the same for the peak, VmHWM, the connect burst included).
//!
//! Usage (see bench/propagation.sh):
//!   tern-propagation --bin-dir target/release --zones 10 --proxies 1000 --applies 200

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use common::tls::{self, Expect, PinnedCaVerifier};
use model::ident::SpiffeId;
use proto::v1::proxy_discovery_client::ProxyDiscoveryClient;
use proto::v1::{self as pb, proxy_message, zone_to_proxy};
use proto::ProxyItem;

#[derive(Parser)]
#[command(about = "Policy propagation from the global to simulated proxies in many zones")]
struct Args {
    /// Folder with global-cp and zone-cp.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value_t = 10)]
    zones: usize,
    /// Simulated proxies per zone.
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Services the proxies of a zone are spread over.
    #[arg(long, default_value_t = 10)]
    services: usize,
    #[arg(long, default_value_t = 200)]
    applies: u64,
    /// Proxy streams per gRPC connection (1, as real proxies connect; more
    /// makes the simulation cheaper and understates the zone-cp's
    /// per-connection TLS and HTTP/2 costs).
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// Register the simulated proxies as gateways (their configs are
    /// tiny: no zone's sidecars): isolates the zone-cp's per-connection
    /// cost from the size of the configs it sends.
    #[arg(long)]
    as_gateways: bool,
    /// Each simulated proxy declares it calls this many services (the next
    /// ones after its own, by number): its config holds only those, as a
    /// sidecar's with `--reachable-services`. 0: every service.
    #[arg(long, default_value_t = 0)]
    reachable: usize,
    /// Work folder (removed first).
    #[arg(long, default_value = "/tmp/tern-propagation")]
    work: PathBuf,
    /// First octet pair of the loopback addresses: the global on
    /// 127.0.NET.1, zone z on 127.0.(NET+z).1.
    #[arg(long, default_value_t = 150)]
    net: u8,
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(bin: &Path, name: &str, args: &[String], logs: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    Command::new(bin)
        .args(args)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// A memory figure (kB) from /proc/PID/status: `VmRSS:` now, `VmHWM:` the
/// most it ever was.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The global's admin API.
struct Api {
    base: String,
    token: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        use http_body_util::BodyExt;
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))?;
        let resp = self.client.request(req).await?;
        let status = resp.status();
        let b = resp.into_body().collect().await?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {path}: {status}: {}", String::from_utf8_lossy(&b));
        }
        Ok(v)
    }

    async fn token(&self, body: serde_json::Value) -> anyhow::Result<String> {
        let v = self.call("POST", "/api/v1/tokens", Some(body)).await?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .context("no token in the answer")
    }
}

async fn wait_ready(url: &str, what: &str) -> anyhow::Result<()> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for _ in 0..600 {
        if let Ok(r) = client.get(url.parse()?).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not become ready at {url}")
}

/// What the simulated proxies saw: per proxy, the last probe revision and
/// when each revision arrived.
struct Seen {
    /// Per proxy: the newest probe revision it holds.
    latest: Vec<AtomicU64>,
    /// Per proxy: it got its first config.
    configured: Vec<std::sync::atomic::AtomicBool>,
    /// (revision, proxy) → arrival.
    arrivals: Mutex<BTreeMap<u64, Vec<Instant>>>,
    connected: AtomicUsize,
    reconnects: AtomicUsize,
}

fn probe_revision(p: &pb::InboundPolicy) -> Option<u64> {
    p.rules
        .iter()
        .find_map(|r| r.name.strip_prefix("AccessPolicy/probe/rev-"))
        .and_then(|n| n.parse().ok())
}

/// One simulated proxy.
#[derive(Clone)]
struct Sim {
    token: String,
    service: String,
    zone_index: usize,
    index: usize,
    /// Its place in [`Seen`].
    slot: usize,
    gateway: bool,
    reachable: Vec<String>,
}

async fn simulate(
    channel: tonic::transport::Channel,
    sim: Sim,
    seen: Arc<Seen>,
) -> anyhow::Result<()> {
    let Sim {
        token,
        service,
        zone_index,
        index,
        slot,
        gateway,
        reachable,
    } = sim;
    let mut client = ProxyDiscoveryClient::new(channel).max_decoding_message_size(64 << 20);
    let key = common::pki::new_key_and_csr(&service)?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::ProxyMessage {
        msg: Some(proxy_message::Msg::Hello(pb::ProxyHello {
            token,
            registration: Some(pb::Registration {
                service: service.clone(),
                address: format!("10.{}.{}.{}", zone_index, index / 250, index % 250 + 1),
                inbound_port: 15006,
                protocol: "http".into(),
                instance: format!("sim-{index}"),
                instance_uid: model::token::random_id(),
                kind: if gateway {
                    "gateway".into()
                } else {
                    String::new()
                },
                public_address: if gateway {
                    format!(
                        "10.{}.{}.{}:15444",
                        zone_index,
                        index / 250,
                        index % 250 + 1
                    )
                } else {
                    String::new()
                },
                reachable_services: reachable,
                ..Default::default()
            }),
            csr: Some(pb::CertificateRequest {
                csr_pem: key.csr_pem,
            }),
        })),
    })
    .await?;
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut items: BTreeMap<String, ProxyItem> = BTreeMap::new();
    let mut first = true;
    while let Some(m) = inbound.message().await? {
        if let Some(zone_to_proxy::Msg::Config(c)) = m.msg {
            let version = c.version;
            let full = c.full && c.chunk == 0;
            let last = c.last_chunk;
            let (upserts, removed) = proto::proxy_items(c);
            if full {
                items.clear();
            }
            for k in removed {
                items.remove(&k);
            }
            items.extend(upserts);
            if !last {
                continue;
            }
            if let Some(ProxyItem::Inbound(p)) = items.get(proto::INBOUND_KEY) {
                let rev = probe_revision(p).unwrap_or(0);
                if rev > seen.latest[slot].load(Ordering::Relaxed) {
                    let now = Instant::now();
                    seen.latest[slot].store(rev, Ordering::Relaxed);
                    seen.arrivals
                        .lock()
                        .unwrap()
                        .entry(rev)
                        .or_default()
                        .push(now);
                }
            }
            tx.send(pb::ProxyMessage {
                msg: Some(proxy_message::Msg::Ack(pb::Ack { version })),
            })
            .await?;
            if first {
                first = false;
                if !seen.configured[slot].swap(true, Ordering::Relaxed) {
                    seen.connected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    common::tls::install_provider();
    let _ = std::fs::remove_dir_all(&a.work);
    let logs = a.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&a.work, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut procs = Procs(vec![]);
    let ip = |n: usize| format!("127.0.{}.1", a.net as usize + n);
    let gdata = a.work.join("global");
    procs.0.push(spawn(
        &a.bin_dir.join("global-cp"),
        "global",
        &[
            "--data-dir".into(),
            gdata.display().to_string(),
            "--sync-addr".into(),
            format!("{}:5685", ip(0)),
            "--admin-addr".into(),
            format!("{}:5681", ip(0)),
        ],
        &logs,
    )?);
    wait_ready(&format!("http://{}:5681/ready", ip(0)), "the global").await?;
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gdata.join("ternctl.json"))?)?;
    let api = Api {
        base: format!("http://{}:5681", ip(0)),
        token: cfg["token"].as_str().context("admin token")?.to_string(),
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
    };
    let mut zone_pids = Vec::new();
    for z in 1..=a.zones {
        let name = format!("zone-{z}");
        let tok = api
            .token(serde_json::json!({"kind": "zone", "zone": name}))
            .await?;
        let tf = a.work.join(format!("{name}.token"));
        model::fsutil::write_private(&tf, tok)?;
        let child = spawn(
            &a.bin_dir.join("zone-cp"),
            &name,
            &[
                "--zone".into(),
                name.clone(),
                "--region".into(),
                format!("region-{}", z % 3),
                "--token-file".into(),
                tf.display().to_string(),
                "--data-dir".into(),
                a.work.join(&name).display().to_string(),
                "--proxy-addr".into(),
                format!("{}:5678", ip(z)),
                "--admin-addr".into(),
                format!("{}:5680", ip(z)),
                "--ack-timeout".into(),
                "60s".into(),
            ],
            &logs,
        )?;
        zone_pids.push(child.id());
        procs.0.push(child);
    }
    for z in 1..=a.zones {
        wait_ready(&format!("http://{}:5680/ready", ip(z)), "a zone-cp").await?;
    }
    // Let the zones join and settle before measuring their base memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base_rss: Vec<u64> = zone_pids.iter().map(|p| rss_kb(*p)).collect();

    let total = a.zones * a.proxies;
    let seen = Arc::new(Seen {
        latest: (0..total).map(|_| AtomicU64::new(0)).collect(),
        configured: (0..total).map(|_| Default::default()).collect(),
        arrivals: Mutex::new(BTreeMap::new()),
        connected: AtomicUsize::new(0),
        reconnects: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let per_service = a.proxies.div_ceil(a.services) as u32;
    for z in 1..=a.zones {
        let name = format!("zone-{z}");
        let mut tokens = Vec::new();
        for s in 0..a.services {
            tokens.push(
                api.token(serde_json::json!({
                    "kind": if a.as_gateways { "gateway" } else { "dataplane" }, "zone": name, "service": format!("svc-{s}"),
                    "maxInstances": per_service,
                }))
                .await?,
            );
        }
        let claims = model::token::decode_unverified(&tokens[0])?;
        let expect = Expect::Exact(SpiffeId::zone_cp(&claims.td, &name));
        let verifier = Arc::new(PinnedCaVerifier::new(&claims.ca, expect));
        let cfg = Arc::new(tls::client_config(None, verifier, &[tls::ALPN_H2])?);
        let mut channel = None;
        for i in 0..a.proxies {
            if i % a.streams_per_connection == 0 {
                channel = Some(common::grpc::tls_channel(
                    format!("{}:5678", ip(z)),
                    cfg.clone(),
                ));
            }
            let s = i % a.services;
            let (ch, seen) = (channel.clone().expect("set"), seen.clone());
            let slot = (z - 1) * a.proxies + i;
            let sim = Sim {
                token: tokens[s].clone(),
                service: format!("svc-{s}"),
                zone_index: z,
                index: i,
                slot,
                gateway: a.as_gateways,
                reachable: (1..=a.reachable.min(a.services))
                    .map(|k| format!("svc-{}", (s + k) % a.services))
                    .collect(),
            };
            tokio::spawn(async move {
                // As a real proxy does: reconnect with backoff (a zone-cp
                // taking a thousand connections at once times some out).
                let mut delay = Duration::from_millis(200);
                loop {
                    let r = simulate(ch.clone(), sim.clone(), seen.clone()).await;
                    if let Err(e) = r {
                        if seen.reconnects.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("proxy {slot}: {e:#}; reconnecting");
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
            });
            // Proxies start over a moment, as they do when a zone comes up.
            if i % 200 == 199 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    while seen.connected.load(Ordering::Relaxed) < total {
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {} of {total} proxies got a config in 10 minutes",
                seen.connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_time = started.elapsed();
    // Settle: the registry churn of the connections ends, and the zone-cps
    // hand back what the burst freed (they trim their heap every 10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let per_proxy = |field: &str| -> Vec<f64> {
        zone_pids
            .iter()
            .zip(&base_rss)
            .map(|(p, base)| {
                let kb = status_kb(*p, field).saturating_sub(*base) as f64 / a.proxies as f64;
                (kb * 10.0).round() / 10.0
            })
            .collect()
    };
    let per_proxy_kb = per_proxy("VmRSS:");
    let peak_per_proxy_kb = per_proxy("VmHWM:");
    eprintln!(
        "{total} proxies in {} zones connected and configured in {:.1}s",
        a.zones,
        connect_time.as_secs_f64()
    );

    let global_pid = procs.0[0].id();
    let me = std::process::id();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    let cpu_before = (cpu(&[global_pid]), cpu(&zone_pids), cpu(&[me]));
    let apply_started = Instant::now();
    let mut all_ms = Vec::new();
    let mut last_ms = Vec::new();
    for rev in 1..=a.applies {
        let doc = serde_json::json!({
            "apiVersion": model::resource::API_VERSION, "kind": "AccessPolicy",
            "metadata": {"name": "probe"},
            "spec": {"rules": [{"name": format!("rev-{rev}"), "action": "allow"}]},
        });
        let t0 = Instant::now();
        api.call("PUT", "/api/v1/accesspolicies/probe", Some(doc))
            .await?;
        loop {
            let done = seen.latest.iter().all(|l| l.load(Ordering::Relaxed) >= rev);
            if done {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let behind = seen
                    .latest
                    .iter()
                    .filter(|l| l.load(Ordering::Relaxed) < rev)
                    .count();
                bail!("apply {rev}: {behind} proxies still without it after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let arrivals = seen
            .arrivals
            .lock()
            .unwrap()
            .remove(&rev)
            .unwrap_or_default();
        let ms: Vec<f64> = arrivals
            .iter()
            .map(|t| t.saturating_duration_since(t0).as_secs_f64() * 1000.0)
            .collect();
        last_ms.push(ms.iter().cloned().fold(0.0, f64::max));
        all_ms.extend(ms);
        // Between applies, as an operator's would be.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = apply_started.elapsed().as_secs_f64();
    let per_apply =
        |now: f64, before: f64| ((now - before) / a.applies as f64 * 1e4).round() / 10.0;
    let cpu_ms_per_apply = serde_json::json!({
        "global": per_apply(cpu(&[global_pid]), cpu_before.0),
        "zoneCps": per_apply(cpu(&zone_pids), cpu_before.1),
        "simulatedProxies": per_apply(cpu(&[me]), cpu_before.2),
        "wallMs": (wall / a.applies as f64 * 1e4).round() / 10.0,
    });
    let zone_rss_mb: Vec<f64> = zone_pids
        .iter()
        .map(|p| rss_kb(*p) as f64 / 1024.0)
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "zones": a.zones,
            "proxiesPerZone": a.proxies,
            "applies": a.applies,
            "connectSeconds": (connect_time.as_secs_f64() * 10.0).round() / 10.0,
            "reconnects": seen.reconnects.load(Ordering::Relaxed),
            "everyProxyMs": {
                "p50": pct(&mut last_ms.clone(), 50.0),
                "p99": pct(&mut last_ms.clone(), 99.0),
                "max": pct(&mut last_ms, 100.0),
            },
            "perProxyMs": {
                "p50": pct(&mut all_ms.clone(), 50.0),
                "p99": pct(&mut all_ms.clone(), 99.0),
                "max": pct(&mut all_ms, 100.0),
            },
            "cpuMsPerApply": cpu_ms_per_apply,
            "zoneCpKbPerProxy": per_proxy_kb,
            "zoneCpPeakKbPerProxy": peak_per_proxy_kb,
            "zoneCpRssMb": zone_rss_mb,
        })
    );
    drop(procs);
    Ok(())
}
