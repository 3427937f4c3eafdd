//! Tern east-west gateway.
//!
//! * **Local side**: sidecars of this zone open an mTLS connection (ALPN
//!   `tern/gw`) to the gateway, send a flow header naming the destination
//!   zone and service, then the bytes of their own end-to-end mTLS session.
//! * **Between zones**: one long-lived QUIC connection per remote gateway
//!   (TLS 1.3, both sides present gateway identities chained to the mesh
//!   root), keep-alives, reconnect, RTT and loss measured. Each flow is one
//!   bidirectional stream that opens with the same bounded header, so a
//!   lost packet on one flow does not stall the others.
//! * **Remote side**: the receiving gateway picks a healthy endpoint of the
//!   service in its own zone and splices bytes. It never decrypts the inner
//!   session; the destination sidecar sees the caller's identity.
//!
//! Registration, certificates and config come from the zone control plane
//! through the same client the sidecar uses (`dataplane::cp_client`).
#![forbid(unsafe_code)]

pub mod dup;
pub mod metrics;
pub mod remote;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use common::flow::{self, code, FlowHeader};
use common::telemetry::Admin;
use dataplane::protocol::{Protocol, ALPN_GATEWAY};
use dataplane::state::Shared;
use model::ident::SpiffeId;
use proto::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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

pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    if cfg.idle_timeout <= cfg.keep_alive {
        anyhow::bail!(
            "--idle-timeout ({:?}) must be longer than --keep-alive ({:?}), or idle connections die between keep-alives",
            cfg.idle_timeout,
            cfg.keep_alive
        );
    }
    let token = model::fsutil::read_secret(&cfg.token_file)?;
    let claims = model::token::decode_unverified(&token).context("the gateway token")?;
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
        .with_context(|| format!("bind QUIC {}", cfg.quic_bind))?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let dup = Arc::new(dup::DupSocket::new(runtime.wrap_udp_socket(socket)?));
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
        .with_context(|| format!("bind {}", cfg.local))?;
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
    .serve(cfg.admin)
    .await
    .with_context(|| format!("bind admin {}", cfg.admin))?;
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
    ) -> anyhow::Result<()> {
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

    // ----- local side: sidecars of this zone -----

    async fn serve_local(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, peer) = common::grpc::accept(&listener, "gateway local").await;
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.local_flow(tcp).await {
                    tracing::debug!(%peer, error = %e, "local flow ended with an error");
                }
            });
        }
    }

    async fn local_flow(&self, tcp: TcpStream) -> anyhow::Result<()> {
        let cfg = self
            .local_tls
            .get()
            .context("no certificate yet (failing closed)")?;
        let mut tls = tokio::time::timeout(
            HEADER_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(cfg).accept(tcp),
        )
        .await
        .context("TLS handshake timed out")??;
        let peer = common::tls::peer_identity(tls.get_ref().1.peer_certificates())
            .context("no client identity")?;
        let chain: Arc<[common::rustls::pki_types::CertificateDer<'static>]> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        if peer.zone_name() != Some(self.zone.as_str()) {
            anyhow::bail!("{peer} is not a workload of zone {}", self.zone);
        }
        // Sidecars keep spare connections ready for new flows, so the header
        // may come a while after the handshake.
        let mut header = tokio::time::timeout(SPARE_IDLE, flow::read(&mut tls))
            .await
            .context("no flow header on an idle connection")??;
        if header.dest_zone == self.zone {
            anyhow::bail!(
                "flow for our own zone {}; sidecars reach it directly",
                self.zone
            );
        }
        // The source zone is what we authenticated, not what was claimed.
        header.source_zone = self.zone.clone();
        let zone = header.dest_zone.clone();
        let ticket = self.shared.gateway_drills.borrow().ticket();
        if let Some(drill) = self
            .shared
            .gateway_drills
            .borrow()
            .refuse_outbound(&zone, ticket)
        {
            // Closing before any stream opens: the sidecar sees the
            // connection fail and fails over, as in a real partition.
            self.metrics.reset(code::DRILL_REFUSED);
            anyhow::bail!("flow to zone {zone} refused by {drill}");
        }
        // A flow opened for a sampled trace: our span (until the stream to
        // the other zone is open) joins it, and the other gateway's span
        // is our child.
        let span = self.span_for(&header);
        if let Some(a) = &span {
            header.traceparent = a.ctx.header().to_str().ok().map(str::to_string);
        }
        let opened = async {
            let (mut send, recv) = self.remotes.open_stream(&self.shared, &zone).await?;
            send.write_all(&header.encode()?).await?;
            anyhow::Ok((send, recv))
        }
        .await;
        if let Some(a) = span {
            self.finish_span(a, &header, "outbound", opened.is_err(), None);
        }
        let (send, recv) = opened?;
        self.metrics.stream_opened(&zone, "outbound");
        let mut quic = tokio::io::join(recv, send);
        let (sent, received) = self.metrics.byte_counters(&zone);
        let (sent, received) = ([&sent], [&received]);
        let drill_cut = {
            let zone = zone.clone();
            dataplane::drill::cut_when(self.shared.gateway_drills.subscribe(), move |d| {
                d.refuse_outbound(&zone, ticket).map(str::to_string)
            })
        };
        let metrics = self.metrics.clone();
        let splice = async {
            tokio::select! {
                r = common::splice::copy_bidirectional_metered(
                    &mut tls, &mut quic, FLOW_IDLE, &sent, &received,
                ) => r,
                why = drill_cut => {
                    metrics.reset(code::DRILL_REFUSED);
                    Err(std::io::Error::other(format!("flow cut by {why}")))
                }
            }
        };
        let distrusted = self.metrics.distrusted.clone();
        let cut = move || {
            distrusted.inc();
        };
        match self.shared.live.while_trusted(chain, splice, cut).await {
            Ok(_) => {}
            Err(why) => {
                anyhow::bail!("closed a flow from {peer}: no longer trusted ({why})");
            }
        }
        Ok(())
    }

    // ----- remote side: flows from other zones -----

    async fn serve_quic(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        me.metrics.handshake_failure("unknown");
                        tracing::info!(%remote, error = %e, "QUIC handshake refused");
                        return;
                    }
                };
                let peer = remote::peer_id(&conn);
                let Some(peer) = peer.filter(|p| p.is_gateway()) else {
                    conn.close(0x1u32.into(), b"only gateways may connect");
                    me.metrics.handshake_failure("unknown");
                    return;
                };
                let zone = peer.zone_name().unwrap_or_default().to_string();
                tracing::info!(%remote, %zone, "gateway connected");
                let _live = me.remotes.close_when_distrusted(&conn);
                me.remotes.watch_loss(&conn, &zone);
                loop {
                    match conn.accept_bi().await {
                        Ok((send, recv)) => {
                            let me = me.clone();
                            let zone = zone.clone();
                            tokio::spawn(async move { me.remote_flow(&zone, send, recv).await });
                        }
                        Err(e) => {
                            tracing::info!(%remote, %zone, reason = %e, "gateway connection closed");
                            return;
                        }
                    }
                }
            });
        }
    }

    async fn remote_flow(
        &self,
        from_zone: &str,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let reset = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, c: u32| {
            let _ = send.reset(c.into());
            let _ = recv.stop(c.into());
        };
        let header = match tokio::time::timeout(HEADER_TIMEOUT, flow::read(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::info!(zone = from_zone, error = %e, "malformed flow header; resetting the stream");
                self.metrics.reset(code::MALFORMED_HEADER);
                return reset(&mut send, &mut recv, code::MALFORMED_HEADER);
            }
            Err(_) => {
                self.metrics.reset(code::MALFORMED_HEADER);
                return reset(&mut send, &mut recv, code::MALFORMED_HEADER);
            }
        };
        if header.dest_zone != self.zone {
            self.metrics.reset(code::UNKNOWN_ZONE);
            return reset(&mut send, &mut recv, code::UNKNOWN_ZONE);
        }
        let ticket = self.shared.gateway_drills.borrow().ticket();
        let refused = self
            .shared
            .gateway_drills
            .borrow()
            .refuse_inbound(from_zone, &header.service, ticket)
            .map(str::to_string);
        if let Some(drill) = refused {
            tracing::debug!(zone = from_zone, service = %header.service, %drill, "flow refused by a drill");
            self.metrics.reset(code::DRILL_REFUSED);
            return reset(&mut send, &mut recv, code::DRILL_REFUSED);
        }
        self.metrics.stream_opened(from_zone, "inbound");
        let span = self.span_for(&header);
        let connected = self.connect_local(&header).await;
        if let Some(a) = span {
            let peer = connected.as_ref().ok().and_then(|s| s.peer_addr().ok());
            self.finish_span(a, &header, "inbound", connected.is_err(), peer);
        }
        let upstream = match connected {
            Ok(s) => s,
            Err(c) => {
                self.metrics.reset(c);
                return reset(&mut send, &mut recv, c);
            }
        };
        let quic = tokio::io::join(recv, send);
        match &self.cfg.debug_capture {
            Some(dir) => {
                if let Ok((down, up)) = capture::splice(quic, upstream, dir).await {
                    self.metrics.bytes(from_zone, up, down);
                }
            }
            None => {
                let (mut q, mut u) = (quic, upstream);
                let (sent, received) = self.metrics.byte_counters(from_zone);
                let (from, service) = (from_zone.to_string(), header.service.clone());
                let drill_cut =
                    dataplane::drill::cut_when(self.shared.gateway_drills.subscribe(), move |d| {
                        d.refuse_inbound(&from, &service, ticket)
                            .map(str::to_string)
                    });
                let (up, down) = ([&received], [&sent]);
                tokio::select! {
                    _ = common::splice::copy_bidirectional_metered(
                        &mut q,
                        &mut u,
                        FLOW_IDLE,
                        &up,
                        &down,
                    ) => {}
                    why = drill_cut => {
                        tracing::debug!(zone = from_zone, %why, "flow cut by a drill");
                        self.metrics.reset(code::DRILL_REFUSED);
                    }
                }
            }
        }
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

    /// A healthy endpoint of the service in this zone (with the flow's
    /// subset labels, if any): its sidecar's inbound port. Tries up to
    /// three, ejecting the ones that refuse.
    async fn connect_local(&self, h: &FlowHeader) -> Result<TcpStream, u32> {
        let clusters = self.shared.clusters.load_full();
        let Some(cluster) = clusters.by_service.get(&h.service).cloned() else {
            return Err(code::UNKNOWN_SERVICE);
        };
        if cluster.protocol == Protocol::Quic {
            return Err(code::UNKNOWN_SERVICE);
        }
        // A flow for a label subset: only instances with all its labels.
        let cluster = if h.subset.is_empty() {
            cluster
        } else {
            let fits = |e: &&Arc<dataplane::balance::Endpoint>| {
                h.subset
                    .iter()
                    .all(|(k, v)| e.labels.get(k).is_some_and(|x| x == v))
            };
            Arc::new(dataplane::balance::Cluster::new(
                cluster.service.clone(),
                cluster.protocol,
                cluster.endpoints.iter().filter(fits).cloned().collect(),
            ))
        };
        let mut tried = Vec::new();
        for _ in 0..3 {
            let Some((ep, _)) = cluster.pick(&tried, 0) else {
                break;
            };
            tried.push(ep.clone());
            if ep.target.via.is_some() || ep.zone != self.zone {
                continue;
            }
            match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(ep.target.addr))
                .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                _ => ep.eject(Duration::from_secs(5)),
            }
        }
        Err(if tried.is_empty() {
            code::NO_HEALTHY_ENDPOINT
        } else {
            code::UPSTREAM_FAILED
        })
    }
}

/// Expected identity of the gateways of `zone`.
pub fn gateway_id(td: &str, zone: &str) -> SpiffeId {
    SpiffeId::gateway(td, zone)
}

mod capture {
    //! `--debug-capture`: a splice that also writes what it forwards (up to
    //! 64 KiB per direction) to files, so an operator can confirm that a
    //! gateway carries only the inner session's ciphertext.
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    static N: AtomicU64 = AtomicU64::new(0);
    const LIMIT: usize = 64 * 1024;

    async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        mut r: R,
        mut w: W,
        file: std::path::PathBuf,
    ) -> std::io::Result<u64> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut seen = Vec::new();
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                let _ = w.shutdown().await;
                break;
            }
            if seen.len() < LIMIT {
                let take = n.min(LIMIT - seen.len());
                seen.extend_from_slice(&buf[..take]);
                let _ = tokio::fs::write(&file, &seen).await;
            }
            w.write_all(&buf[..n]).await?;
            total += n as u64;
        }
        Ok(total)
    }

    pub async fn splice<Q, U>(quic: Q, upstream: U, dir: &Path) -> std::io::Result<(u64, u64)>
    where
        Q: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let _ = std::fs::create_dir_all(dir);
        let (qr, qw) = tokio::io::split(quic);
        let (ur, uw) = tokio::io::split(upstream);
        let a = pump(qr, uw, dir.join(format!("flow-{n}-in.bin")));
        let b = pump(ur, qw, dir.join(format!("flow-{n}-out.bin")));
        let (x, y) = tokio::join!(a, b);
        Ok((x.unwrap_or(0), y.unwrap_or(0)))
    }
}
