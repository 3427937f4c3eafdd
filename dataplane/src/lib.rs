//! Tern sidecar proxy.
//!
//! Two modes: driven by a zone control plane (`--cp-address` and a
//! dataplane token), or standalone from a static bootstrap file
//! (`--bootstrap`), for benchmarks and debugging.
#![forbid(unsafe_code)]
pub mod access;
pub mod access_log;
mod admin;
pub mod appcheck;
pub mod balance;
pub mod bootstrap;
pub mod breaker;
pub mod budget;
pub mod choose;
pub mod config;
pub mod connect;
pub mod cp_client;
pub mod drill;
mod error;
pub mod fault;
pub mod first_bytes;
pub mod header_first;
pub mod health;
pub mod inbound;
pub mod inbound_http;
pub mod inbound_tcp;
pub mod inbound_tls;
pub mod last_known;
pub mod live;
pub mod metrics;
pub mod observe;
pub mod otlp;
pub mod outbound;
pub mod outbound_tcp;
pub mod outlier;
pub mod path;
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
use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use tokio::sync::watch;

use crate::config::{early_data_needs_tcp, parse_outbound_port, Listeners};
use crate::protocol::Protocol;
use crate::state::Shared;

pub use bootstrap::Bootstrap;
pub use config::{positive_duration, Config};
pub use error::Error;

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

pub async fn start(cfg: Config) -> Result<Running, Error> {
    // Checked before waiting for a certificate from the zone-cp.
    let admin_token = common::telemetry::admin_token(cfg.admin_token_file.as_deref())
        .map_err(Error::AdminToken)?;
    let defaults = resilience::Defaults {
        per_try_timeout: cfg.per_try_timeout,
        request_timeout: (!cfg.request_timeout.is_zero()).then_some(cfg.request_timeout),
        tcp_idle: cfg.tcp_idle_timeout,
    };
    let mut reg = prometheus_client::registry::Registry::with_prefix("tern_proxy");
    let metrics = metrics::Metrics::new(&mut reg);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (status_tx, status_rx) = watch::channel(cp_client::CpStatus::default());
    let standalone = cfg.bootstrap.is_some();
    let (shared, listeners, admin_addr, cp) = match &cfg.bootstrap {
        Some(path) => {
            let (shared, listeners, admin) = bootstrap::load(path, &cfg, defaults)?;
            (shared, listeners, admin, None)
        }
        None => {
            let (shared, listeners, cp) =
                registered(&cfg, defaults, metrics.clone(), status_tx, shutdown_rx)?;
            (shared, listeners, cfg.admin, Some(cp))
        }
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
            .map_err(common::bind::failed("bind inbound", listen))?;
        tokio::spawn(proxy.clone().serve_inbound(l));
        tokio::spawn(proxy.clone().app_check_loop());
    }
    for (listen, service, protocol) in listeners.outbound {
        if protocol == Protocol::Tcp && service.is_none() {
            return Err(Error::Config(
                "a TCP outbound listener needs a service".into(),
            ));
        }
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(common::bind::failed("bind outbound", listen))?;
        tokio::spawn(
            proxy
                .clone()
                .serve_outbound(l, service.map(Arc::from), protocol),
        );
    }

    let admin = admin::admin(reg, &shared, status_rx, standalone);
    let admin_addr = admin
        .with_token(admin_token)
        .serve(admin_addr)
        .await
        .map_err(common::bind::failed("bind admin", admin_addr))?;
    Ok(Running {
        shared,
        admin: admin_addr,
        shutdown: shutdown_tx,
        cp,
    })
}

/// A sidecar driven by its zone control plane: registered with what its
/// flags say, its certificate and config to come from the control-plane
/// client spawned here.
fn registered(
    cfg: &Config,
    defaults: resilience::Defaults,
    metrics: metrics::Metrics,
    status_tx: watch::Sender<cp_client::CpStatus>,
    shutdown_rx: watch::Receiver<bool>,
) -> Result<(Arc<Shared>, Listeners, tokio::task::JoinHandle<()>), Error> {
    let (Some(addr), Some(tf), Some(service)) = (&cfg.cp_address, &cfg.token_file, &cfg.service)
    else {
        return Err(Error::Config(
            "give --bootstrap FILE, or all of --cp-address, --token-file and --service".into(),
        ));
    };
    let token = model::fsutil::read_secret(tf).map_err(|source| Error::TokenFile {
        kind: "dataplane",
        source,
    })?;
    model::token::decode_unverified(&token).map_err(|source| Error::Token {
        kind: "dataplane",
        source,
    })?;
    let protocol = Protocol::parse(&cfg.protocol).map_err(Error::Config)?;
    early_data_needs_tcp(cfg.accept_early_data, protocol)?;
    let mut labels = BTreeMap::new();
    for l in &cfg.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("--label {l:?}: expected key=value")))?;
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
            cfg.outbound.parse().map_err(|source| Error::Address {
                what: format!("--outbound {:?}", cfg.outbound),
                source,
            })?,
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
        metrics,
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
    Ok((shared, Listeners { inbound, outbound }, cp))
}
