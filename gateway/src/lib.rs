//! Tern east-west gateway.
//!
//! * **Local side** (`outbound.rs`): sidecars of this zone open an mTLS connection (ALPN
//!   `tern/gw`) to the gateway, send a flow header naming the destination
//!   zone and service, then the bytes of their own end-to-end mTLS session.
//! * **Between zones** (`remote.rs`): one long-lived QUIC connection per remote gateway
//!   (TLS 1.3, both sides present gateway identities chained to the mesh
//!   root), keep-alives, reconnect, RTT and loss measured. Each flow is one
//!   bidirectional stream that opens with the same bounded header, so a
//!   lost packet on one flow does not stall the others.
//! * **Remote side** (`inbound.rs`): the receiving gateway picks a healthy endpoint of the
//!   service in its own zone and splices bytes. It never decrypts the inner
//!   session; the destination sidecar sees the caller's identity.
//!
//! Registration, certificates and config come from the zone control plane
//! through the same client the sidecar uses (`dataplane::cp_client`).
#![forbid(unsafe_code)]

mod capture;
pub mod dup;
mod error;
mod inbound;
pub mod metrics;
mod outbound;
pub mod remote;
pub mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::flow::FlowHeader;
use common::telemetry::Admin;
use dataplane::protocol::{Protocol, ALPN_GATEWAY};
use dataplane::state::Shared;
use model::ident::SpiffeId;
use proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::Error;

pub const QUIC_ALPN: &[u8] = b"tern-gw/1";
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a sidecar's spare connection may wait for its flow header
/// (sidecars drop spares after 20 s).
const SPARE_IDLE: Duration = Duration::from_secs(30);
/// A flow on which nothing moves this long is closed. A little longer than
/// the sidecars' default, so an idle flow is normally closed end to end by
/// the sidecar that owns it.
const FLOW_IDLE: Duration = Duration::from_secs(3660);

#[derive(Parser, Debug, Clone)]
#[command(name = "gateway", version, about = "Tern east-west gateway")]
pub struct Config {
    /// Zone control plane address, host:port.
    #[arg(long, env = "TERN_CP_ADDRESS")]
    pub cp_address: String,
    /// File holding a gateway token (`ternctl generate gateway-token`).
    #[arg(long, env = "TERN_GATEWAY_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// mTLS listener for this zone's sidecars.
    #[arg(long, default_value = "127.0.0.1:15443")]
    pub local: SocketAddr,
    /// UDP address the QUIC endpoint binds.
    #[arg(long, default_value = "127.0.0.1:15444")]
    pub quic_bind: SocketAddr,
    /// Address other zones dial, when it differs from --quic-bind (NAT,
    /// load balancer).
    #[arg(long)]
    pub public_address: Option<SocketAddr>,
    #[arg(long, default_value = "127.0.0.1:15090")]
    pub admin: SocketAddr,
    /// File holding a bearer token for `/config_dump` and `PUT /log-level`
    /// on the admin port (closed to other users). Without one those answer
    /// only on a loopback admin address.
    #[arg(long, env = "TERN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Instance name, unique in the zone.
    #[arg(long)]
    pub instance: Option<String>,
    /// QUIC keep-alive interval.
    #[arg(long, default_value = "1s", value_parser = dataplane::positive_duration)]
    pub keep_alive: Duration,
    /// A QUIC connection silent this long is dead (link cut, peer gone).
    /// Must be longer than --keep-alive.
    #[arg(long, default_value = "3s", value_parser = dataplane::positive_duration)]
    pub idle_timeout: Duration,
    /// Debugging aid: write the first 64 KiB of each inbound flow's payload
    /// (after the header) to files in this folder. Off by default.
    #[arg(long)]
    pub debug_capture: Option<PathBuf>,
    /// Duplicate datagrams to a remote gateway while the path's measured
    /// loss is at least this fraction (doubles WAN bytes while on; see
    /// docs/architecture.md). 1 disables.
    #[arg(long, default_value_t = 0.005, value_parser = loss_fraction)]
    pub duplicate_above_loss: f64,
    /// Congestion control on the QUIC paths to other zones: `bbr` paces
    /// by the path's measured rate and RTT, so random WAN loss does not
    /// shrink the window that every flow to that zone shares; `cubic`
    /// halves it on each loss. See docs/performance.md.
    #[arg(long, default_value = "bbr", value_parser = ["bbr", "cubic"])]
    pub congestion: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Keep the last certificate, trust and config here (a 0700 folder),
    /// so a restart while the zone control plane is down still serves.
    #[arg(long)]
    pub state_dir: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json_logs: bool,
}

/// A loss fraction above 0, at most 1 (which disables duplication).
fn loss_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: expected a fraction above 0 and at most 1, like 0.005"
        )),
    }
}

pub struct Gateway {
    pub cfg: Config,
    pub zone: String,
    pub trust_domain: String,
    pub shared: Arc<Shared>,
    pub metrics: metrics::Metrics,
    pub remotes: remote::Remotes,
    local_tls: arc_swap_lite::Slot<common::rustls::ServerConfig>,
}

/// A tiny swap slot (the dataplane already depends on arc-swap; the
/// gateway keeps to std).
mod arc_swap_lite {
    use std::sync::{Arc, RwLock};
    pub struct Slot<T>(RwLock<Option<Arc<T>>>);
    impl<T> Default for Slot<T> {
        fn default() -> Self {
            Self(RwLock::new(None))
        }
    }
    impl<T> Slot<T> {
        pub fn get(&self) -> Option<Arc<T>> {
            self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
        }
        pub fn set(&self, v: Arc<T>) {
            *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(v);
        }
    }
}

pub struct Running {
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    cp: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.cp).await;
        self.gateway.remotes.close_all();
    }
}

pub async fn start(cfg: Config) -> Result<Running, Error> {
    if cfg.idle_timeout <= cfg.keep_alive {
        return Err(dataplane::Error::Config(format!(
            "--idle-timeout ({:?}) must be longer than --keep-alive ({:?}), or idle connections die between keep-alives",
            cfg.idle_timeout,
            cfg.keep_alive
        ))
        .into());
    }
    // Checked before waiting for an identity from the zone-cp.
    let admin_token = common::telemetry::admin_token(cfg.admin_token_file.as_deref())
        .map_err(dataplane::Error::AdminToken)?;
    let token = model::fsutil::read_secret(&cfg.token_file).map_err(|source| {
        dataplane::Error::TokenFile {
            kind: "gateway",
            source,
        }
    })?;
    let claims =
        model::token::decode_unverified(&token).map_err(|source| dataplane::Error::Token {
            kind: "gateway",
            source,
        })?;
    let mut reg = prometheus_client::registry::Registry::with_prefix("tern_gateway");
    let dp_metrics = dataplane::metrics::Metrics::new(&mut reg);
    let metrics = metrics::Metrics::new(&mut reg);
    // The gateway serves no app; its own listeners pick their ALPN.
    let shared = Arc::new(Shared::new(Protocol::Quic));
    let public = cfg.public_address.unwrap_or(cfg.quic_bind);
    let instance = cfg.instance.clone().unwrap_or_else(|| {
        format!("gateway-{}-{}", cfg.local.ip(), cfg.local.port()).replace(':', "-")
    });
    let registration = pb::Registration {
        service: "gateway".into(),
        address: cfg.local.ip().to_string(),
        inbound_port: cfg.local.port() as u32,
        protocol: "tcp".into(),
        instance,
        kind: "gateway".into(),
        public_address: public.to_string(),
        instance_uid: model::token::random_id(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (status_tx, status_rx) = watch::channel(dataplane::cp_client::CpStatus::default());
    let cp = dataplane::cp_client::spawn(
        shared.clone(),
        dp_metrics,
        dataplane::cp_client::CpOptions {
            address: cfg.cp_address.clone(),
            token: token.trim().to_string(),
            registration,
            last_known: match &cfg.state_dir {
                Some(d) => Some(Arc::new(dataplane::last_known::LastKnown::open(d)?)),
                None => None,
            },
        },
        status_tx,
        shutdown_rx,
    );
    let socket = std::net::UdpSocket::bind(cfg.quic_bind)
        .map_err(common::bind::failed("bind QUIC", cfg.quic_bind))?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let dup = Arc::new(dup::DupSocket::new(Arc::new(udp::QuietSocket::new(
        socket,
    )?)));
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        dup.clone(),
        runtime,
    )?;
    let remotes = remote::Remotes::new(
        endpoint.clone(),
        &cfg,
        &claims.td,
        metrics.clone(),
        dup.clone(),
        shared.clone(),
    );
    let gw = Arc::new(Gateway {
        zone: claims.zone.clone(),
        trust_domain: claims.td.clone(),
        shared: shared.clone(),
        metrics,
        remotes,
        local_tls: Default::default(),
        cfg: cfg.clone(),
    });
    // Follow identity changes: QUIC server config, local TLS, client configs.
    {
        let gw = gw.clone();
        let endpoint = endpoint.clone();
        let mut rx = shared.identity_changed.subscribe();
        tokio::spawn(async move {
            loop {
                if let Some(tls) = gw.shared.tls.load_full() {
                    match gw.install_identity(&tls, &endpoint) {
                        Ok(()) => tracing::info!(id = %tls.ident.id, "gateway identity installed"),
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "could not install the gateway identity")
                        }
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let local = TcpListener::bind(cfg.local)
        .await
        .map_err(common::bind::failed("bind", cfg.local))?;
    tokio::spawn(gw.clone().serve_local(local));
    tokio::spawn(gw.clone().serve_quic(endpoint));
    tokio::spawn(
        gw.clone()
            .remotes
            .clone_handle()
            .maintain(gw.shared.clone()),
    );
    let (g_ready, g_dump) = (gw.clone(), gw.clone());
    let status_dump = status_rx.clone();
    Admin::new(
        reg,
        move || {
            if g_ready.shared.tls.load().is_none() {
                return Err("no gateway certificate yet".into());
            }
            if !status_rx.borrow().has_config {
                return Err("no config from the control plane yet".into());
            }
            Ok(())
        },
        move || {
            serde_json::json!({
                "zone": g_dump.zone,
                "identity": g_dump.shared.tls.load().as_ref().map(|t| t.ident.id.to_string()),
                "certificateNotAfter": g_dump.shared.tls.load().as_ref().map(|t| humantime::format_rfc3339_seconds(t.ident.not_after).to_string()),
                "certificateIssuer": g_dump.shared.tls.load().as_ref().and_then(|t| t.ident.chain.get(1).map(|c| common::pki::fingerprint(c))),
                "trust": g_dump.shared.tls.load().as_ref().map(|t| serde_json::json!({ "roots": t.policy.root_fingerprints() })),
                "publicAddress": public.to_string(),
                "remotes": g_dump.remotes.dump(),
                "clusters": g_dump.shared.clusters.load().dump(),
                "trace": g_dump.shared.tracer.dump(),
                "drills": g_dump.shared.gateway_drills.borrow().dump(),
                "controlPlane": serde_json::to_value(&*status_dump.borrow()).unwrap_or_default(),
            })
        },
    )
    .with_token(admin_token)
    .serve(cfg.admin)
    .await
    .map_err(common::bind::failed("bind admin", cfg.admin))?;
    tracing::info!(zone = %claims.zone, local = %cfg.local, quic = %cfg.quic_bind, %public, "gateway started");
    Ok(Running {
        gateway: gw,
        shutdown,
        cp,
    })
}

impl Gateway {
    fn install_identity(
        &self,
        tls: &dataplane::state::Tls,
        endpoint: &quinn::Endpoint,
    ) -> Result<(), Error> {
        let server = common::tls::server_config_mtls(&tls.ident, tls.policy.clone(), &[QUIC_ALPN])?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server)?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
        sc.transport_config(self.remotes.transport());
        endpoint.set_server_config(Some(sc));
        let local =
            common::tls::server_config_mtls(&tls.ident, tls.policy.clone(), &[ALPN_GATEWAY])?;
        self.local_tls.set(Arc::new(local));
        self.remotes.set_identity(&tls.ident, tls.policy.clone());
        Ok(())
    }

    /// A span for a flow whose header carries a sampled trace, if this
    /// gateway has a Trace policy.
    fn span_for(&self, h: &FlowHeader) -> Option<dataplane::trace::Active> {
        let parent = h
            .traceparent
            .as_deref()
            .and_then(dataplane::trace::Context::parse_str)
            .filter(|c| c.sampled)?;
        self.shared.tracer.start_from(Some(parent))
    }

    /// Record a flow's span: `outbound` covers opening the stream to the
    /// other zone, `inbound` connecting to the endpoint in ours.
    fn finish_span(
        &self,
        a: dataplane::trace::Active,
        h: &FlowHeader,
        direction: &'static str,
        failed: bool,
        peer: Option<SocketAddr>,
    ) {
        use dataplane::otlp::{kv, Value};
        let mut attrs = vec![
            kv("tern.direction", Value::Str(format!("gateway-{direction}"))),
            kv("tern.source.zone", Value::Str(h.source_zone.clone())),
            kv("tern.destination.zone", Value::Str(h.dest_zone.clone())),
            kv("tern.destination.service", Value::Str(h.service.clone())),
        ];
        if let Some(p) = peer {
            attrs.push(kv("network.peer.address", Value::Str(p.to_string())));
        }
        let name = match direction {
            "outbound" => format!("gateway {} → {}", self.zone, h.dest_zone),
            _ => format!("gateway {} → {}", h.source_zone, h.service),
        };
        self.shared
            .tracer
            .finish(a, name, direction == "inbound", attrs, failed);
    }
}

/// Expected identity of the gateways of `zone`.
pub fn gateway_id(td: &str, zone: &str) -> SpiffeId {
    SpiffeId::gateway(td, zone)
}
