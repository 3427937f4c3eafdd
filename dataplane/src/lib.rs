//! Tern sidecar proxy.
//!
//! Two modes: driven by a zone control plane (`--cp-address` and a
//! dataplane token), or standalone from a static bootstrap file
//! (`--bootstrap`), for benchmarks and debugging.
#![forbid(unsafe_code)]

pub mod access;
pub mod access_log;
pub mod appcheck;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod choose;
pub mod connect;
pub mod cp_client;
pub mod drill;
pub mod fault;
pub mod header_first;
pub mod health;
pub mod inbound;
pub mod inbound_tcp;
pub mod inbound_tls;
pub mod last_known;
pub mod live;
pub mod metrics;
pub mod observe;
pub mod otlp;
pub mod outbound;
pub mod outlier;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod ratelimit;
pub mod resilience;
pub mod retry;
pub mod rng;
pub mod route;
pub mod spares;
pub mod split;
pub mod state;
pub mod stream_limit;
pub mod trace;
pub mod traffic;
pub mod upgrade;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use common::telemetry::Admin;
use proto::v1 as pb;
use serde::Deserialize;
use tokio::sync::watch;

use crate::protocol::Protocol;
use crate::state::Shared;

#[derive(Parser, Debug, Clone)]
#[command(name = "dataplane", version, about = "Tern sidecar proxy")]
pub struct Config {
    /// Run standalone from this bootstrap file (no control plane).
    #[arg(long, conflicts_with_all = ["cp_address", "token_file", "service", "outbound_ports"])]
    pub bootstrap: Option<PathBuf>,
    /// Zone control plane address, host:port.
    #[arg(long, env = "TERN_CP_ADDRESS")]
    pub cp_address: Option<String>,
    /// File holding the dataplane token.
    #[arg(long, env = "TERN_DATAPLANE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Service this proxy fronts.
    #[arg(long)]
    pub service: Option<String>,
    /// Instance name (unique in the zone). Defaults to SERVICE-ADDRESS-PORT.
    #[arg(long)]
    pub instance: Option<String>,
    /// IP other sidecars use to reach this proxy's inbound listener.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// Inbound mTLS listener.
    #[arg(long, default_value = "127.0.0.1:15006")]
    pub inbound: SocketAddr,
    /// The local app.
    #[arg(long)]
    pub app: Option<SocketAddr>,
    /// What the local app speaks: http, http2, grpc or tcp.
    #[arg(long, default_value = "http")]
    pub protocol: String,
    /// Host-routed outbound HTTP listener; empty to disable.
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound: String,
    /// Extra outbound listeners bound to one service: `SERVICE=ADDR`
    /// (HTTP) or `tcp:SERVICE=ADDR` (opaque TCP). Repeatable.
    #[arg(long = "outbound-port")]
    pub outbound_ports: Vec<String>,
    /// Labels of this instance, `key=value`. Repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// The services this app calls, comma-separated (repeatable). Its config
    /// then holds only these (and what their routes send to); a call to
    /// any other service is refused. Default: every service.
    #[arg(long = "reachable-services", value_delimiter = ',')]
    pub reachable_services: Vec<String>,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// TCP apps: accept TLS 1.3 early data (0-RTT) from callers resuming a
    /// session, so a new connection's first bytes (up to 16 KiB) reach the
    /// app a round trip sooner (across zones, one round trip instead of
    /// two). Tickets are single-use, but an attacker on the network path
    /// between sidecars who replays a caller's hello first makes the caller
    /// send those bytes again on a new handshake: turn this on only for apps
    /// whose protocol tolerates its first bytes arriving twice.
    #[arg(long, env = "TERN_ACCEPT_EARLY_DATA")]
    pub accept_early_data: bool,
    /// File holding a bearer token for `/config_dump` and `PUT /log-level`
    /// on the admin port (closed to other users). Without one those answer
    /// only on a loopback admin address.
    #[arg(long, env = "TERN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Worker threads for the data path.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Per-attempt timeout of requests that may be retried, when no Retry
    /// policy sets `perTryTimeout`; a timed-out attempt is retried in the
    /// next locality.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub per_try_timeout: Duration,
    /// How long a request waits for its response head, across all its
    /// attempts, when no Timeout policy sets `request` for its destination
    /// (also the limit on the local app's answer to an inbound request);
    /// 0 waits as long as the caller. Streaming bodies are not limited by
    /// it.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// An opaque TCP flow or upgraded connection (WebSocket) on which
    /// nothing moves either way this long is closed.
    #[arg(long, default_value = "1h", value_parser = positive_duration)]
    pub tcp_idle_timeout: Duration,
    /// Most header lines an HTTP/1.1 request or response may have, on every
    /// hop. A request over it gets 431; a response over it, a 502 that
    /// names the limit (the endpoint is not ejected).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(8..=10_000))]
    pub max_headers: u32,
    /// Largest HTTP/2 header block (decoded; name + value + 32 bytes per
    /// field), on every hop.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub max_header_bytes: u32,
    /// How often this zone's gateways (the paths to other zones) are
    /// probed (TCP connect); 0 disables. Other sidecars are never probed:
    /// each checks its own app (HealthCheck policy).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// On SIGTERM: deregister, keep serving this long, then exit.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Keep the last certificate, trust and config here (a 0700 folder),
    /// so a restart while the zone control plane is down still serves.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The folder an AccessLog policy with `to: file` writes in (the policy
    /// names only the file). Without it, such a policy writes to stdout.
    #[arg(long)]
    pub access_log_dir: Option<PathBuf>,
    #[arg(long)]
    pub json_logs: bool,
}

/// Standalone bootstrap file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bootstrap {
    pub identity: IdentityFiles,
    /// Callers must present a SPIFFE ID in this trust domain.
    pub trust_domain: String,
    #[serde(default)]
    pub inbound: Option<InboundSpec>,
    #[serde(default)]
    pub outbound: Vec<OutboundSpec>,
    #[serde(default)]
    pub clusters: Vec<ClusterSpec>,
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Policies compiled for this sidecar, as a zone control plane would.
    #[serde(default)]
    pub policies: Option<PoliciesSpec>,
}

/// Policy documents (AccessPolicy, MtlsPolicy, HttpRoute, TcpRoute, as
/// `ternctl apply` takes them) and what they see this sidecar as.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PoliciesSpec {
    pub files: Vec<PathBuf>,
    pub service: String,
    #[serde(default = "local")]
    pub zone: String,
    #[serde(default = "local")]
    pub region: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn local() -> String {
    "local".into()
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub roots: PathBuf,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct InboundSpec {
    pub listen: SocketAddr,
    pub app: SocketAddr,
    #[serde(default = "http")]
    pub protocol: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct OutboundSpec {
    pub listen: SocketAddr,
    /// Fixed destination; absent routes HTTP by Host header.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default = "http")]
    pub protocol: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub service: String,
    #[serde(default = "http")]
    pub protocol: String,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub identity: String,
}

/// Compile a standalone sidecar's policy files into its clusters' routes
/// and its inbound policy, as its zone control plane would.
fn compile_policies(
    p: &PoliciesSpec,
    mut clusters: Vec<pb::Cluster>,
) -> anyhow::Result<(Vec<pb::Cluster>, Option<pb::InboundPolicy>)> {
    let mut docs = Vec::new();
    for f in &p.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        match model::resource::parse_documents(&f.display().to_string(), &text) {
            Ok(rs) => docs.extend(rs),
            Err(es) => bail!(
                "{}",
                es.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    let values: Vec<serde_json::Value> = docs
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let set = common::policy::PolicySet::build(
        values.iter(),
        &[],
        [(p.zone.clone(), p.region.clone())].into(),
    );
    let facts = common::policy::ProxyFacts {
        service: p.service.clone(),
        zone: p.zone.clone(),
        region: p.region.clone(),
        labels: p.labels.clone(),
    };
    for c in &mut clusters {
        let (http, tcp, policies) = set.routes(&facts, &c.service);
        c.http_routes = http;
        c.tcp_route = tcp;
        c.policies = policies;
        let (resilience, more) = set.resilience(&facts, &c.service);
        if let Some(lb) = resilience.as_ref().and_then(|r| r.balancer.as_ref()) {
            common::resilience::apply_locality(lb, &facts, &mut c.endpoints);
        }
        c.resilience = resilience;
        c.policies.extend(more);
    }
    Ok((clusters, Some(set.inbound(&facts))))
}

/// A duration above zero (flag value parser).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A byte size: `65536`, `64KiB` or `1MiB`.
fn parse_size(s: &str) -> Result<u32, String> {
    let (n, mult) = if let Some(n) = s.strip_suffix("KiB") {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1024 * 1024)
    } else {
        (s, 1)
    };
    n.trim()
        .parse::<u32>()
        .ok()
        .and_then(|v| v.checked_mul(mult))
        .filter(|v| (1024..=16 * 1024 * 1024).contains(v))
        .ok_or_else(|| format!("{s:?}: expected a size from 1KiB to 16MiB, like 65536 or 64KiB"))
}

fn http() -> String {
    "http".into()
}

struct Listeners {
    inbound: Option<(SocketAddr, SocketAddr, Protocol)>,
    outbound: Vec<(SocketAddr, Option<String>, Protocol)>,
}

fn parse_outbound_port(s: &str) -> anyhow::Result<(SocketAddr, Option<String>, Protocol)> {
    let (proto, rest) = match s.strip_prefix("tcp:") {
        Some(r) => (Protocol::Tcp, r),
        None => (Protocol::Http1, s),
    };
    let (svc, addr) = rest.split_once('=').with_context(|| {
        format!("--outbound-port {s:?}: expected SERVICE=ADDR or tcp:SERVICE=ADDR")
    })?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--outbound-port {s:?}: {addr:?} is not host:port"))?;
    Ok((addr, Some(svc.to_string()), proto))
}

/// `--accept-early-data` is for opaque TCP apps; an HTTP app's callers
/// pool their connections and never send early data.
fn early_data_needs_tcp(on: bool, app: Protocol) -> anyhow::Result<()> {
    if on && app != Protocol::Tcp {
        anyhow::bail!(
            "--accept-early-data applies to TCP apps only (this app speaks {app:?}); drop the flag or start the sidecar with --protocol tcp"
        );
    }
    Ok(())
}

pub struct Running {
    pub shared: Arc<Shared>,
    pub admin: SocketAddr,
    shutdown: watch::Sender<bool>,
    cp: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Deregister (close the CP stream cleanly), then keep serving for
    /// `drain` so callers learn of the removal before we stop.
    pub async fn shutdown(self, drain: Duration) {
        self.shutdown.send_replace(true);
        if let Some(cp) = self.cp {
            let _ = tokio::time::timeout(Duration::from_secs(3), cp).await;
        }
        tokio::time::sleep(drain).await;
        let shared = self.shared.clone();
        let _ =
            tokio::task::spawn_blocking(move || shared.access_logs.close(Duration::from_secs(3)))
                .await;
    }
}

pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    // Checked before waiting for a certificate from the zone-cp.
    let admin_token = common::telemetry::admin_token(cfg.admin_token_file.as_deref())
        .context("--admin-token-file")?;
    let defaults = resilience::Defaults {
        per_try_timeout: cfg.per_try_timeout,
        request_timeout: (!cfg.request_timeout.is_zero()).then_some(cfg.request_timeout),
        tcp_idle: cfg.tcp_idle_timeout,
    };
    let mut reg = prometheus_client::registry::Registry::with_prefix("tern_proxy");
    let metrics = metrics::Metrics::new(&mut reg);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (status_tx, status_rx) = watch::channel(cp_client::CpStatus::default());
    let (shared, listeners, admin_addr, cp, standalone) = if let Some(path) = &cfg.bootstrap {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        if let Some(line) = model::resource::too_deep(&text) {
            bail!(
                "{}:{}: nested deeper than {} levels",
                path.display(),
                line + 1,
                model::resource::MAX_NESTING
            );
        }
        let b: Bootstrap =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))
        };
        let key_path = &b.identity.key;
        model::fsutil::check_private_file(key_path)?;
        let ident = common::tls::Identity::from_pem(&read(&b.identity.cert)?, &read(key_path)?)
            .with_context(|| format!("{}: identity", path.display()))?;
        // Standalone: trust whatever the roots file holds; no zones here.
        let policy = common::trust::TrustPolicy::from_pem(
            &b.trust_domain,
            &read(&b.identity.roots)?,
            common::trust::ZoneCas::Any,
        )
        .with_context(|| format!("{}: identity.roots", path.display()))?;
        let inbound_protocol = match &b.inbound {
            Some(i) => Protocol::parse(&i.protocol).map_err(anyhow::Error::msg)?,
            None => Protocol::Http1,
        };
        early_data_needs_tcp(cfg.accept_early_data, inbound_protocol)?;
        let shared = Arc::new(
            Shared::new(inbound_protocol)
                .with_defaults(defaults)
                .with_early_data(cfg.accept_early_data)
                .with_access_log_dir(cfg.access_log_dir.clone()),
        );
        shared.set_trust(policy)?;
        shared.set_identity(ident)?;
        let clusters: Vec<pb::Cluster> = b
            .clusters
            .iter()
            .map(|c| pb::Cluster {
                service: c.service.clone(),
                protocol: c.protocol.clone(),
                endpoints: c
                    .endpoints
                    .iter()
                    .map(|e| pb::Endpoint {
                        address: e.address.ip().to_string(),
                        port: e.address.port() as u32,
                        healthy: true,
                        identity: e.identity.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let (clusters, inbound) = match &b.policies {
            None => (clusters, None),
            Some(p) => compile_policies(p, clusters)
                .with_context(|| format!("{}: policies", path.display()))?,
        };
        shared
            .apply(&clusters, inbound.as_ref(), 1)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut outbound = Vec::new();
        for o in &b.outbound {
            outbound.push((
                o.listen,
                o.service.clone(),
                Protocol::parse(&o.protocol).map_err(anyhow::Error::msg)?,
            ));
        }
        let inbound = match &b.inbound {
            Some(i) => Some((
                i.listen,
                i.app,
                Protocol::parse(&i.protocol).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        };
        (
            shared,
            Listeners { inbound, outbound },
            b.admin.unwrap_or(cfg.admin),
            None,
            true,
        )
    } else {
        let (Some(addr), Some(tf), Some(service)) =
            (&cfg.cp_address, &cfg.token_file, &cfg.service)
        else {
            bail!("give --bootstrap FILE, or all of --cp-address, --token-file and --service");
        };
        let token = model::fsutil::read_secret(tf)?;
        model::token::decode_unverified(&token).context("the dataplane token")?;
        let protocol = Protocol::parse(&cfg.protocol).map_err(anyhow::Error::msg)?;
        early_data_needs_tcp(cfg.accept_early_data, protocol)?;
        let mut labels = BTreeMap::new();
        for l in &cfg.labels {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--label {l:?}: expected key=value"))?;
            labels.insert(k.to_string(), v.to_string());
        }
        let instance = cfg.instance.clone().unwrap_or_else(|| {
            format!("{service}-{}-{}", cfg.address, cfg.inbound.port()).replace(':', "-")
        });
        for s in &cfg.reachable_services {
            // The zone-cp checks it too; a typo stops the start instead of
            // a sidecar that retries a refused registration forever.
            model::resource::check_name("--reachable-services", s)?;
        }
        let shared = Arc::new(
            Shared::new(protocol)
                .with_defaults(defaults)
                .with_early_data(cfg.accept_early_data)
                .with_access_log_dir(cfg.access_log_dir.clone()),
        );
        let registration = pb::Registration {
            service: service.clone(),
            address: cfg.address.to_string(),
            inbound_port: cfg.inbound.port() as u32,
            protocol: cfg.protocol.clone(),
            labels: labels.into_iter().collect(),
            region: String::new(),
            instance,
            kind: "sidecar".into(),
            public_address: String::new(),
            instance_uid: model::token::random_id(),
            serving: false,
            reachable_services: cfg.reachable_services.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let mut outbound = Vec::new();
        if !cfg.outbound.is_empty() {
            outbound.push((
                cfg.outbound
                    .parse()
                    .with_context(|| format!("--outbound {:?}", cfg.outbound))?,
                None,
                Protocol::Http1,
            ));
        }
        for o in &cfg.outbound_ports {
            outbound.push(parse_outbound_port(o)?);
        }
        let inbound = cfg.app.map(|app| (cfg.inbound, app, protocol));
        let cp = cp_client::spawn(
            shared.clone(),
            metrics.clone(),
            cp_client::CpOptions {
                address: addr.clone(),
                token: token.trim().to_string(),
                registration,
                last_known: match &cfg.state_dir {
                    Some(d) => Some(Arc::new(last_known::LastKnown::open(d)?)),
                    None => None,
                },
            },
            status_tx,
            shutdown_rx,
        );
        (
            shared,
            Listeners { inbound, outbound },
            cfg.admin,
            Some(cp),
            false,
        )
    };

    let app_addr = listeners.inbound.map(|i| i.1);
    let app_proto = listeners.inbound.map(|i| i.2).unwrap_or(Protocol::Http1);
    let proxy = proxy::Proxy::new(
        shared.clone(),
        metrics.clone(),
        app_addr,
        app_proto,
        proxy::Options {
            request_timeout: (!cfg.request_timeout.is_zero()).then_some(cfg.request_timeout),
            limits: proxy::HeaderLimits {
                max_headers: cfg.max_headers as usize,
                max_header_bytes: cfg.max_header_bytes,
            },
            tcp_idle: cfg.tcp_idle_timeout,
        },
    );
    if !cfg.health_interval.is_zero() {
        tokio::spawn(health::probe_loop(shared.clone(), cfg.health_interval));
    }
    tokio::spawn(outlier::sweep_loop(shared.clone(), metrics.clone()));
    if let Some((listen, _, _)) = listeners.inbound {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind inbound {listen}"))?;
        tokio::spawn(proxy.clone().serve_inbound(l));
        tokio::spawn(proxy.clone().app_check_loop());
    }
    for (listen, service, protocol) in listeners.outbound {
        if protocol == Protocol::Tcp && service.is_none() {
            bail!("a TCP outbound listener needs a service");
        }
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind outbound {listen}"))?;
        tokio::spawn(
            proxy
                .clone()
                .serve_outbound(l, service.map(Arc::from), protocol),
        );
    }

    let sh_ready = shared.clone();
    reg.register_collector(Box::new(traffic::Collector(shared.traffic.clone())));
    reg.register(
        "access_log_lines",
        "Access log lines written",
        shared.access_logs.written.clone(),
    );
    reg.register(
        "spans_exported",
        "Spans sent to the OTLP collector",
        shared.tracer.exported.clone(),
    );
    reg.register(
        "spans_dropped",
        "Spans dropped: the exporter fell behind or the collector did not take them",
        shared.tracer.dropped.clone(),
    );
    reg.register(
        "access_log_dropped",
        "Access log lines dropped because the writer fell behind",
        shared.access_logs.dropped.clone(),
    );
    let sh_dump = shared.clone();
    let st_ready = status_rx.clone();
    let st_dump = status_rx;
    let admin = Admin::new(
        reg,
        move || {
            if sh_ready.tls.load().is_none() {
                return Err("no workload certificate yet".into());
            }
            if !standalone && !st_ready.borrow().has_config {
                return Err("no config from the control plane yet".into());
            }
            Ok(())
        },
        move || {
            let tls = sh_dump.tls.load();
            serde_json::json!({
                "identity": tls.as_ref().map(|t| t.ident.id.to_string()),
                "certificateNotBefore": tls.as_ref().map(|t| humantime::format_rfc3339_seconds(t.ident.not_before).to_string()),
                "certificateNotAfter": tls.as_ref().map(|t| humantime::format_rfc3339_seconds(t.ident.not_after).to_string()),
                "certificateIssuer": tls.as_ref().and_then(|t| t.ident.chain.get(1)).map(|c| common::pki::fingerprint(c)),
                "trust": tls.as_ref().map(|t| serde_json::json!({
                    "roots": t.policy.root_fingerprints(),
                    "zoneCas": match t.policy.zones() {
                        common::trust::ZoneCas::Any => serde_json::json!("any"),
                        common::trust::ZoneCas::Only(m) => serde_json::to_value(m).unwrap_or_default(),
                    },
                })),
                "configVersion": sh_dump.clusters.load().version,
                "clusters": sh_dump.clusters.load().dump(),
                "inbound": sh_dump.access.load().dump(),
                "faults": sh_dump.faults.load().dump(),
                "rateLimits": sh_dump.limits.load().dump(),
                "accessLog": sh_dump.access_logs.dump(),
                "trace": sh_dump.tracer.dump(),
                "routes": sh_dump.routes.load().iter().map(|(k, r)| (k.clone(), r.dump())).collect::<serde_json::Map<_, _>>(),
                "controlPlane": if standalone { serde_json::Value::Null } else { serde_json::to_value(&*st_dump.borrow()).unwrap_or_default() },
            })
        },
    );
    let admin_addr = admin
        .with_token(admin_token)
        .serve(admin_addr)
        .await
        .with_context(|| format!("bind admin {admin_addr}"))?;
    Ok(Running {
        shared,
        admin: admin_addr,
        shutdown: shutdown_tx,
        cp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // --accept-early-data on an HTTP app is refused, naming the fix.
    #[test]
    fn early_data_is_refused_for_http_apps() {
        assert!(early_data_needs_tcp(true, Protocol::Tcp).is_ok());
        assert!(early_data_needs_tcp(false, Protocol::Http1).is_ok());
        let e = early_data_needs_tcp(true, Protocol::Http2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TCP apps only") && e.contains("--protocol tcp"),
            "{e}"
        );
    }
}
