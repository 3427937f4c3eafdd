//! The mesh connector: TCP and mTLS to a destination sidecar, checking that
//! it presents the identity the config names; or, for another zone, an mTLS
//! hop to a gateway of this zone, the flow header, and the end-to-end
//! handshake inside it. The pools (`pool.rs`) keep what it returns. Also
//! the plain TCP connector to the local app.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::rt::TokioIo;
use model::ident::SpiffeId;
use tokio::io::AsyncWrite as _;
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::balance::Target;
use crate::header_first::HeaderFirst;
use crate::metrics::Metrics;
use crate::protocol::Alpn;
use crate::state::Shared;

/// A mesh connection: straight to the destination sidecar, or through a
/// local gateway, with the end-to-end mTLS session inside the gateway hop.
// The direct stream is the common case and stays inline; the rarer
// gateway path is boxed.
#[allow(clippy::large_enum_variant)]
pub enum MeshStream {
    Direct(TlsStream<TcpStream>),
    Gateway(Box<TlsStream<HeaderFirst<TlsStream<TcpStream>>>>),
}

impl MeshStream {
    /// The end-to-end session.
    pub fn session(&self) -> &common::rustls::ClientConnection {
        match self {
            MeshStream::Direct(s) => s.get_ref().1,
            MeshStream::Gateway(s) => s.get_ref().1,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MeshStream::Direct($s) => {
                let $s = Pin::new($s);
                $e
            }
            MeshStream::Gateway($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MeshStream::Direct(s) => s.is_write_vectored(),
            MeshStream::Gateway(s) => s.is_write_vectored(),
        }
    }
}

pub struct MeshConn {
    io: TokioIo<MeshStream>,
    /// Counts the connection against its destination's limit while open.
    _slot: crate::breaker::ConnSlot,
}

impl hyper::rt::Read for MeshConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Opens mesh connections for a pool, by endpoint authority.
pub struct MeshConnector {
    pub(crate) shared: Arc<Shared>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) alpn: Alpn,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no workload certificate yet; the proxy fails closed until it has one")]
    NoCertificate,
    #[error("endpoint {0} is not in the current config")]
    UnknownEndpoint(String),
    #[error("connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("TLS config: {0}")]
    Tls(String),
    #[error("flow header: {0}")]
    Header(#[from] common::flow::HeaderError),
    /// Starts with [`CIRCUIT_OPEN`], which callers look for.
    #[error(
        "circuit open: {0} connections are open to the destination (CircuitBreaker maxConnections)"
    )]
    CircuitOpen(usize),
}

/// How a refused connection's error begins.
pub const CIRCUIT_OPEN: &str = "circuit open:";

/// Each step of the hop to a local gateway (TCP, then TLS).
const CONNECT_TIMEOUT: Duration = crate::resilience::DEFAULT_CONNECT_TIMEOUT;

async fn timed<T>(
    addr: SocketAddr,
    f: impl Future<Output = io::Result<T>>,
) -> Result<T, ConnectError> {
    tokio::time::timeout(CONNECT_TIMEOUT, f)
        .await
        .map_err(|_| ConnectError::Io {
            addr,
            source: io::Error::new(io::ErrorKind::TimedOut, "timed out"),
        })?
        .map_err(|source| ConnectError::Io { addr, source })
}

/// The mTLS hop to a gateway of our own zone (ALPN `tern/gw`).
pub async fn dial_gateway(
    shared: &Shared,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let tls = shared.tls.load_full().ok_or(ConnectError::NoCertificate)?;
    let own_zone = tls.ident.id.zone_name().unwrap_or_default().to_string();
    let gw_id = SpiffeId::gateway(tls.ident.id.trust_domain(), &own_zone);
    let gw_cfg = tls
        .client_for(&gw_id, Alpn::Gateway)
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let tcp = timed(addr, TcpStream::connect(addr)).await?;
    let _ = tcp.set_nodelay(true);
    timed(
        addr,
        TlsConnector::from(gw_cfg).connect(common::tls::sni(), tcp),
    )
    .await
}

/// Open the end-to-end mTLS session to `target`: directly, or through the
/// local gateway named by `target.addr` (an mTLS hop to the gateway, the
/// flow header, then the end-to-end handshake inside).
/// The whole is bounded by the destination's connect timeout.
pub async fn connect_mesh(
    shared: &Arc<Shared>,
    target: &Target,
    alpn: Alpn,
) -> Result<MeshStream, ConnectError> {
    let up = bounded(target, connect_mesh_unbounded(shared, target, alpn, false)).await;
    refill_spares(shared, target);
    up
}

/// Top up the spare connections to the gateway a flow went through. Called
/// once the flow's own handshake is over, so that the spare's handshake
/// does not compete with it for the CPU here and on the gateway.
fn refill_spares(shared: &Arc<Shared>, target: &Target) {
    if target.via.is_none() {
        return;
    }
    let (sh, addr) = (shared.clone(), target.addr);
    shared.spares.refill(addr, move || {
        let sh = sh.clone();
        async move { dial_gateway(&sh, addr).await }
    });
}

/// An opaque TCP flow's session: as [`connect_mesh`], but the app's first
/// bytes leave while the handshake is in flight, as TLS 1.3 early data
/// when a session resumed from an earlier one allows it (the destination
/// sidecar hands them to its app at once, `inbound_tls.rs`: one round trip
/// through the gateways instead of two), else right after the handshake.
///
/// `first` holds every byte taken from the app so far: a failed attempt
/// leaves them there and the next attempt sends them first. It returns
/// once the handshake is complete, so a destination that never answers
/// still fails over to the next endpoint. (The destination passes early
/// bytes to its app only after its answer has left; they reach a second
/// endpoint only if a hop dies after that answer left and before it
/// arrived.)
pub async fn connect_mesh_tcp(
    shared: &Arc<Shared>,
    target: &Target,
    app: &TcpStream,
    first: &mut Vec<u8>,
    metrics: &Metrics,
) -> Result<MeshStream, ConnectError> {
    let addr = target.addr;
    let up = bounded(target, async {
        let mut up = connect_mesh_unbounded(shared, target, Alpn::Tcp, true).await?;
        let early = up.session().is_handshaking();
        send_first(&mut up, app, first)
            .await
            .map_err(|source| ConnectError::Io { addr, source })?;
        if early {
            let result = match up.session().is_early_data_accepted() {
                true => "accepted",
                false => "rejected",
            };
            metrics
                .early_data
                .get_or_create(&crate::metrics::ResultLabel { result })
                .inc();
        }
        Ok(up)
    })
    .await;
    // A failed flow leaves the pool to the next one (the spare it took is
    // gone either way).
    refill_spares(shared, target);
    up
}

/// At most this much of the app's first bytes is held while a handshake
/// is in flight (what the destination accepts as early data).
const MAX_FIRST: usize = crate::inbound_tls::MAX_EARLY_DATA as usize;

/// Send `first`, and, while the session's handshake is in flight, whatever
/// more the app sends (early data while the session allows, the rest held
/// until the handshake is over); return once the handshake is complete and
/// everything taken from the app is sent. Early data the destination
/// refused is sent again after the handshake (tokio-rustls does that).
async fn send_first(up: &mut MeshStream, app: &TcpStream, first: &mut Vec<u8>) -> io::Result<()> {
    let mut sent = 0;
    let mut app_open = true;
    let mut chunk = vec![0u8; 4096];
    std::future::poll_fn(|cx| loop {
        while sent < first.len() {
            match Pin::new(&mut *up).poll_write(cx, &first[sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Early data is full: the rest waits for the handshake.
                Poll::Pending => break,
            }
        }
        if app_open
            && sent == first.len()
            && first.len() < MAX_FIRST
            && up.session().is_handshaking()
        {
            match app.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let room = (MAX_FIRST - first.len()).min(chunk.len());
                    match app.try_read(&mut chunk[..room]) {
                        // The app closed its side: the splice sees that too.
                        Ok(0) => app_open = false,
                        Ok(n) => first.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        // Sends what is buffered and drives the handshake.
        return match Pin::new(&mut *up).poll_flush(cx) {
            Poll::Ready(Ok(())) if sent < first.len() => continue,
            Poll::Ready(Ok(())) if up.session().is_handshaking() => continue,
            other => other,
        };
    })
    .await
}

/// Bound `f` by the destination's connect timeout.
async fn bounded(
    target: &Target,
    f: impl Future<Output = Result<MeshStream, ConnectError>>,
) -> Result<MeshStream, ConnectError> {
    let limit = target.policy.connect_timeout;
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
        Err(ConnectError::Io {
            addr: target.addr,
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not connected within the connect timeout of {limit:?}"),
            ),
        })
    })
}

/// `early`: return before the handshake when a resumed session allows
/// early data (the caller sends it and finishes the handshake).
async fn connect_mesh_unbounded(
    shared: &Arc<Shared>,
    target: &Target,
    alpn: Alpn,
    early: bool,
) -> Result<MeshStream, ConnectError> {
    let tls = shared.tls.load_full().ok_or(ConnectError::NoCertificate)?;
    let addr = target.addr;
    let cfg = tls
        .client_for(&target.identity, alpn)
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let stream = match &target.via {
        None => {
            let io = |source| ConnectError::Io { addr, source };
            let tcp = TcpStream::connect(addr).await.map_err(io)?;
            let _ = tcp.set_nodelay(true);
            MeshStream::Direct(
                TlsConnector::from(cfg)
                    .early_data(early)
                    .connect(common::tls::sni(), tcp)
                    .await
                    .map_err(io)?,
            )
        }
        Some(via) => {
            let own_zone = tls.ident.id.zone_name().unwrap_or_default().to_string();
            // A pre-handshaked connection to the gateway when there is one,
            // so a new flow pays only for its end-to-end handshake.
            let outer = match shared.spares.take(addr) {
                Some(s) => s,
                None => dial_gateway(shared, addr).await?,
            };
            let header = common::flow::FlowHeader {
                service: via.service.clone(),
                dest_zone: via.dest_zone.clone(),
                source_zone: own_zone,
                port: None,
                traceparent: crate::trace::current_flow_traceparent(),
                subset: via.subset.clone(),
            }
            .encode()?;
            let inner = TlsConnector::from(cfg)
                .early_data(early)
                .connect(common::tls::sni(), HeaderFirst::new(header, outer))
                .await
                .map_err(|source| ConnectError::Io { addr, source });
            MeshStream::Gateway(Box::new(inner?))
        }
    };
    Ok(stream)
}

impl crate::pool::Connect for MeshConnector {
    type Io = MeshConn;

    async fn connect(
        &self,
        to: &Authority,
    ) -> Result<MeshConn, Box<dyn std::error::Error + Send + Sync>> {
        let target = self
            .shared
            .targets
            .load()
            .get(to.as_str())
            .cloned()
            .ok_or_else(|| ConnectError::UnknownEndpoint(to.to_string()))?;
        let slot = target
            .policy
            .limits
            .connection_slot()
            .ok_or(ConnectError::CircuitOpen(
                target.policy.limits.max_connections,
            ))?;
        match connect_mesh(&self.shared, &target, self.alpn).await {
            Ok(io) => Ok(MeshConn {
                io: TokioIo::new(io),
                _slot: slot,
            }),
            Err(e) => {
                self.metrics.upstream_connect_errors.inc();
                Err(e.into())
            }
        }
    }
}

/// Opens plain TCP connections to the local app.
pub struct AppConnector {
    pub(crate) addr: Option<SocketAddr>,
}

impl crate::pool::Connect for AppConnector {
    type Io = TokioIo<TcpStream>;

    async fn connect(
        &self,
        _: &Authority,
    ) -> Result<Self::Io, Box<dyn std::error::Error + Send + Sync>> {
        let Some(addr) = self.addr else {
            return Err("this sidecar has no local app (--app)".into());
        };
        let tcp = timed(addr, TcpStream::connect(addr)).await?;
        let _ = tcp.set_nodelay(true);
        Ok(TokioIo::new(tcp))
    }
}
