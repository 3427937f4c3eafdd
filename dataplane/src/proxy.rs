//! The data path: outbound (app -> mesh) and inbound (mesh -> app).
//!
//! Outbound: the app sends plain HTTP (or TCP) to a local listener. HTTP is
//! routed by the listener's fixed service, or by the `Host` header on the
//! shared listener; then carried over mTLS as HTTP/2 to a destination
//! sidecar picked round-robin among healthy endpoints, on a pooled,
//! multiplexed connection. A request that failed to connect is retried on
//! another endpoint; an idempotent bodyless request is retried on any error.
//!
//! Inbound: mTLS only. The caller must pass the trust rules
//! (`common::trust`); its SPIFFE ID is passed to the app in
//! `x-tern-client-id`, replacing any the caller sent. The mode must be the
//! one the app's protocol declares (HTTP/2 or HTTP/1.1 for HTTP apps,
//! `tern/tcp` for TCP apps). Open connections close when the trust policy
//! stops accepting their peer.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ident::SpiffeId;
use common::rustls::pki_types::CertificateDer;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client::TlsStream, TlsAcceptor, TlsConnector};

use crate::metrics::{DirLabel, Direction, Metrics};
use crate::state::{Alpn, Endpoint, Protocol, Shared, Target, ALPN_TCP};
use tokio::io::AsyncWriteExt;

/// A proxied body, or one the proxy wrote itself (errors, empty retries).
/// An enum rather than a box: no allocation per request.
pub type Body = Either<Incoming, Full<Bytes>>;

pub const CLIENT_ID_HEADER: &str = "x-tern-client-id";
/// Response header on errors a mesh proxy generated itself. Callers eject
/// and retry on them, so an app's own value is removed.
pub const ERROR_HEADER: &str = "x-tern-error";
/// Request header marking a request idempotent (safe to retry elsewhere).
pub const IDEMPOTENT_HEADER: &str = "x-tern-idempotent";
/// Largest body buffered to replay a marked-idempotent request.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;
const EJECT_FOR: Duration = Duration::from_secs(5);
const MAX_ATTEMPTS: usize = 3;

fn empty() -> Body {
    Either::Right(Full::new(Bytes::new()))
}

fn error_response(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(msg + "\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static("proxy"));
    r
}

/// Hop-by-hop headers are per connection and never forwarded.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(conn) = h.get(header::CONNECTION).cloned() {
        if let Ok(s) = conn.to_str() {
            for name in s.split(',') {
                if let Ok(n) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    h.remove(n);
                }
            }
        }
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TRAILER,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

// ---------------------------------------------------------------------------
// Mesh connector: TCP + mTLS to a destination sidecar, checking its identity.
// ---------------------------------------------------------------------------

/// A mesh connection: straight to the destination sidecar, or through a
/// local gateway, with the end-to-end mTLS session inside the gateway hop.
// The direct stream is the common case and stays inline; the rarer
// gateway path is boxed.
#[allow(clippy::large_enum_variant)]
pub enum MeshStream {
    Direct(TlsStream<TcpStream>),
    Gateway(Box<TlsStream<TlsStream<TcpStream>>>),
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
    h2: bool,
}

impl Connection for MeshConn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 {
            c.negotiated_h2()
        } else {
            c
        }
    }
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

#[derive(Clone)]
pub struct MeshConnector {
    shared: Arc<Shared>,
    metrics: Metrics,
    alpn: Alpn,
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
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
pub async fn connect_mesh(
    shared: &Arc<Shared>,
    target: &Target,
    alpn: Alpn,
) -> Result<(MeshStream, bool), ConnectError> {
    let tls = shared.tls.load_full().ok_or(ConnectError::NoCertificate)?;
    let addr = target.addr;
    let cfg = tls
        .client_for(&target.identity, alpn)
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let stream = match &target.via {
        None => {
            let tcp = timed(addr, TcpStream::connect(addr)).await?;
            let _ = tcp.set_nodelay(true);
            MeshStream::Direct(
                timed(
                    addr,
                    TlsConnector::from(cfg).connect(common::tls::sni(), tcp),
                )
                .await?,
            )
        }
        Some(via) => {
            let own_zone = tls.ident.id.zone_name().unwrap_or_default().to_string();
            // A pre-handshaked connection to the gateway when there is one,
            // so a new flow pays only for its end-to-end handshake.
            let mut outer = match shared.spares.take(addr) {
                Some(s) => s,
                None => dial_gateway(shared, addr).await?,
            };
            shared.spares.refill(shared.clone(), addr);
            let header = common::flow::FlowHeader {
                service: via.service.clone(),
                dest_zone: via.dest_zone.clone(),
                source_zone: own_zone,
                port: None,
                traceparent: None,
            }
            .encode()?;
            timed(addr, outer.write_all(&header)).await?;
            let inner = timed(
                addr,
                TlsConnector::from(cfg).connect(common::tls::sni(), outer),
            )
            .await?;
            MeshStream::Gateway(Box::new(inner))
        }
    };
    let alpn_got = match &stream {
        MeshStream::Direct(s) => s.get_ref().1.alpn_protocol().map(|a| a.to_vec()),
        MeshStream::Gateway(s) => s.get_ref().1.alpn_protocol().map(|a| a.to_vec()),
    };
    let h2 = alpn_got.as_deref() == Some(common::tls::ALPN_H2);
    Ok((stream, h2))
}

impl tower::Service<Uri> for MeshConnector {
    type Response = MeshConn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<MeshConn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let shared = self.shared.clone();
        let metrics = self.metrics.clone();
        let alpn = self.alpn;
        Box::pin(async move {
            let auth = uri.authority().map(|a| a.as_str()).unwrap_or("");
            let target = shared
                .targets
                .load()
                .get(auth)
                .cloned()
                .ok_or_else(|| ConnectError::UnknownEndpoint(auth.to_string()))?;
            match connect_mesh(&shared, &target, alpn).await {
                Ok((io, h2)) => Ok(MeshConn {
                    io: TokioIo::new(io),
                    h2,
                }),
                Err(e) => {
                    metrics.upstream_connect_errors.inc();
                    Err(e)
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------

pub struct Proxy {
    pub shared: Arc<Shared>,
    pub metrics: Metrics,
    upstream_h2: Client<MeshConnector, Body>,
    upstream_h1: Client<MeshConnector, Body>,
    app: Client<HttpConnector, Body>,
    app_addr: Option<SocketAddr>,
    app_authority: http::uri::Authority,
    app_protocol: Protocol,
    per_try_timeout: Duration,
}

impl Proxy {
    pub fn new(
        shared: Arc<Shared>,
        metrics: Metrics,
        app_addr: Option<SocketAddr>,
        app_protocol: Protocol,
        per_try_timeout: Duration,
    ) -> Arc<Self> {
        let connector = |alpn| MeshConnector {
            shared: shared.clone(),
            metrics: metrics.clone(),
            alpn,
        };
        let upstream_h2 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector(Alpn::H2));
        let upstream_h1 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector(Alpn::Http1));
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(3)));
        let app = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(app_protocol == Protocol::Http2)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(http);
        Arc::new(Self {
            shared,
            metrics,
            upstream_h2,
            upstream_h1,
            app,
            app_addr,
            app_authority: app_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "127.0.0.1:0".into())
                .parse()
                .expect("socket address is an authority"),
            app_protocol,
            per_try_timeout,
        })
    }

    // ----- outbound -----

    /// Serve an outbound listener. `service` fixes the destination; `None`
    /// routes HTTP by Host header.
    pub async fn serve_outbound(
        self: Arc<Self>,
        listener: TcpListener,
        service: Option<Arc<str>>,
        protocol: Protocol,
    ) {
        loop {
            let (tcp, _) = common::grpc::accept(&listener, "outbound").await;
            let me = self.clone();
            let service = service.clone();
            tokio::spawn(async move {
                let dir = DirLabel {
                    direction: Direction::Outbound,
                };
                me.metrics.connections.get_or_create(&dir).inc();
                me.metrics.connections_open.get_or_create(&dir).inc();
                if protocol == Protocol::Tcp {
                    if let Some(s) = service {
                        me.outbound_tcp(tcp, &s).await;
                    }
                } else {
                    let svc = {
                        let me = me.clone();
                        hyper::service::service_fn(move |req| {
                            let me = me.clone();
                            let service = service.clone();
                            async move { Ok::<_, Infallible>(me.outbound_http(service, req).await) }
                        })
                    };
                    let _ = server_builder()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                }
                me.metrics.connections_open.get_or_create(&dir).dec();
            });
        }
    }

    async fn outbound_tcp(&self, mut client: TcpStream, service: &str) {
        let cluster = self.shared.clusters.load().by_service.get(service).cloned();
        let Some(cluster) = cluster else {
            tracing::info!(service, "TCP: no such service");
            return;
        };
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut min_tier = 0;
        for _ in 0..MAX_ATTEMPTS {
            let Some((ep, tier)) = cluster.pick(&tried, min_tier) else {
                break;
            };
            tried.push(ep.clone());
            min_tier = tier + 1;
            match connect_mesh(&self.shared, &ep.target, Alpn::Tcp).await {
                Ok((mut up, _)) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                    return;
                }
                Err(e) => {
                    self.metrics.upstream_connect_errors.inc();
                    ep.eject(EJECT_FOR);
                    tracing::info!(service, endpoint = %ep.authority, error = %e, "TCP connect failed; trying another endpoint");
                }
            }
        }
    }

    pub async fn outbound_http(
        &self,
        fixed: Option<Arc<str>>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let start = Instant::now();
        let resp = self.route_outbound(fixed, req).await;
        self.metrics.observe(
            Direction::Outbound,
            resp.status().as_u16(),
            start.elapsed().as_secs_f64(),
        );
        resp
    }

    async fn route_outbound(
        &self,
        fixed: Option<Arc<str>>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let service: String = match &fixed {
            Some(s) => s.to_string(),
            None => match host_service(&req) {
                Some(s) => s,
                None => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "no Host header: name the destination service in Host".into(),
                    )
                }
            },
        };
        let clusters = self.shared.clusters.load();
        let Some(cluster) = clusters.by_service.get(&service).cloned() else {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unknown service {service:?}: it has no endpoints in this proxy's config"),
            );
        };
        drop(clusters);
        if self.shared.tls.load().is_none() {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no workload certificate yet; the proxy fails closed until it has one".into(),
            );
        }
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(CLIENT_ID_HEADER);
        // Retried in the next locality: GET/HEAD/OPTIONS/TRACE without a
        // body, and anything the caller marks idempotent (gRPC has no wire
        // marker; a client interceptor sets the header). Marked requests
        // are buffered so each attempt can replay them.
        let marked = parts
            .headers
            .remove(IDEMPOTENT_HEADER)
            .is_some_and(|v| v == "true" || v == "1");
        let safe_method = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let bodyless = body.is_end_stream();
        let (replay, mut body): (Option<Bytes>, Option<Body>) = if marked && !bodyless {
            match http_body_util::Limited::new(body, MAX_REPLAY_BODY)
                .collect()
                .await
            {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(_) => {
                    return error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "{IDEMPOTENT_HEADER} requests are buffered for retries; \
                             the body exceeds {MAX_REPLAY_BODY} bytes or failed to arrive"
                        ),
                    )
                }
            }
        } else {
            (None, Some(Either::Left(body)))
        };
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let (client, version) = match cluster.protocol {
            Protocol::Http2 => (&self.upstream_h2, Version::HTTP_2),
            _ => (&self.upstream_h1, Version::HTTP_11),
        };
        let retryable = (safe_method && bodyless) || marked;
        // Allocated only when an attempt fails.
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut min_tier = 0;
        let mut last_err = String::new();
        for attempt in 0..MAX_ATTEMPTS {
            let Some((ep, tier)) = cluster.pick(&tried, min_tier) else {
                break;
            };
            let b = match (&replay, body.take()) {
                (Some(bytes), _) => Either::Right(Full::new(bytes.clone())),
                (None, Some(b)) => b,
                (None, None) if bodyless => empty(),
                (None, None) => break,
            };
            if attempt > 0 {
                self.metrics.retries.inc();
            }
            let mut r = Request::new(b);
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = Uri::builder()
                .scheme(http::uri::Scheme::HTTP)
                .authority(ep.authority.clone())
                .path_and_query(path.clone())
                .build()
                .expect("valid parts");
            *r.headers_mut() = parts.headers.clone();
            *r.version_mut() = version;
            let res = if retryable {
                match tokio::time::timeout(self.per_try_timeout, client.request(r)).await {
                    Ok(r) => r.map_err(|e| (e.is_connect(), error_chain(&e))),
                    Err(_) => Err((
                        false,
                        format!(
                            "no response within the per-try timeout of {:?}",
                            self.per_try_timeout
                        ),
                    )),
                }
            } else {
                client
                    .request(r)
                    .await
                    .map_err(|e| (e.is_connect(), error_chain(&e)))
            };
            match res {
                // A proxy on the way could not reach the app: for a
                // retryable request that is a failed attempt, not an answer.
                Ok(resp) if retryable && is_proxy_failure(&resp) => {
                    ep.eject(EJECT_FOR);
                    last_err = format!("{}: {} from the mesh", ep.authority, resp.status());
                }
                Ok(resp) => return resp.map(Either::Left),
                Err((connect, msg)) => {
                    // A failed connect sent nothing, so it is always safe to
                    // retry; otherwise only idempotent requests with no body.
                    ep.eject(EJECT_FOR);
                    last_err = format!("{}: {msg}", ep.authority);
                    tracing::debug!(service, endpoint = %ep.authority, error = %last_err, "attempt failed");
                    if !(connect || retryable) {
                        break;
                    }
                }
            }
            tried.push(ep);
            // Cross-locality retry: the next attempt goes to the next tier.
            min_tier = tier + 1;
        }
        error_response(
            StatusCode::BAD_GATEWAY,
            format!("service {service}: no endpoint answered ({last_err})"),
        )
    }

    // ----- inbound -----

    pub async fn serve_inbound(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, remote) = common::grpc::accept(&listener, "inbound").await;
            let me = self.clone();
            tokio::spawn(async move {
                let dir = DirLabel {
                    direction: Direction::Inbound,
                };
                me.metrics.connections.get_or_create(&dir).inc();
                me.metrics.connections_open.get_or_create(&dir).inc();
                me.inbound_conn(tcp, remote).await;
                me.metrics.connections_open.get_or_create(&dir).dec();
            });
        }
    }

    async fn inbound_conn(self: &Arc<Self>, tcp: TcpStream, remote: SocketAddr) {
        let dir = DirLabel {
            direction: Direction::Inbound,
        };
        // Fail closed: no certificate, no service.
        let Some(tls) = self.shared.tls.load_full() else {
            self.metrics.tls_failures.get_or_create(&dir).inc();
            return;
        };
        let stream = match tokio::time::timeout(
            Duration::from_secs(10),
            TlsAcceptor::from(tls.server.clone()).accept(tcp),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    // A TCP health probe: connected, sent nothing, closed.
                    tracing::debug!(%remote, "inbound connection closed before a TLS hello");
                } else {
                    self.metrics.tls_failures.get_or_create(&dir).inc();
                    tracing::info!(%remote, error = %e, "inbound TLS refused");
                }
                return;
            }
            Err(_) => {
                self.metrics.tls_failures.get_or_create(&dir).inc();
                return;
            }
        };
        let (_, conn) = stream.get_ref();
        let Some(peer) = common::tls::peer_identity(conn.peer_certificates()) else {
            return;
        };
        let chain: Arc<[CertificateDer<'static>]> = conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        // The caller gets the mode the app's protocol allows, nothing else:
        // an HTTP app's bytes are always parsed here, so the identity
        // header is always ours. (rustls already refused an ALPN outside
        // the list; a caller that offered none is refused here.)
        let alpn = conn.alpn_protocol();
        if !alpn.is_some_and(|a| tls.inbound_alpns().contains(&a)) {
            self.metrics.tls_failures.get_or_create(&dir).inc();
            tracing::info!(%remote, %peer, alpn = ?alpn.map(String::from_utf8_lossy), app = ?self.app_protocol, "inbound refused: mode does not match the app's protocol");
            return;
        }
        let tcp_mode = alpn == Some(ALPN_TCP);
        let Some(app) = self.app_addr else {
            tracing::info!(%remote, "inbound connection, but this proxy has no local app");
            return;
        };
        let serve = async {
            if tcp_mode {
                let mut stream = stream;
                match TcpStream::connect(app).await {
                    Ok(mut up) => {
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
                    }
                    Err(e) => tracing::warn!(%app, error = %e, "local app refused the connection"),
                }
                return;
            }
            let peer: HeaderValue = match HeaderValue::from_str(peer.as_str()) {
                Ok(v) => v,
                Err(_) => return,
            };
            let me = self.clone();
            let svc = hyper::service::service_fn(move |req| {
                let me = me.clone();
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(me.inbound_http(app, peer, req).await) }
            });
            let _ = server_builder()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        };
        // A peer whose zone is revoked (or whose root is retired) loses its
        // open connections too, not only new handshakes.
        if let Err(why) = self.shared.live.while_trusted(chain, serve).await {
            self.metrics.connections_distrusted.inc();
            tracing::warn!(%remote, %peer, reason = %why, "closed an inbound connection: its peer is no longer trusted");
        }
    }

    async fn inbound_http(
        &self,
        app: SocketAddr,
        peer: HeaderValue,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(CLIENT_ID_HEADER, peer);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(self.app_authority.clone())
            .path_and_query(path)
            .build()
            .expect("valid parts");
        parts.version = if self.app_protocol == Protocol::Http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let req = Request::from_parts(parts, Either::Left(body));
        let resp = match self.app.request(req).await {
            Ok(mut r) => {
                // Only a mesh proxy may say "this failure was the mesh's".
                r.headers_mut().remove(ERROR_HEADER);
                r.map(Either::Left)
            }
            Err(e) => error_response(
                StatusCode::BAD_GATEWAY,
                format!("local app at {app}: {}", error_chain(&e)),
            ),
        };
        self.metrics.observe(
            Direction::Inbound,
            resp.status().as_u16(),
            start.elapsed().as_secs_f64(),
        );
        resp
    }
}

fn is_proxy_failure<B>(resp: &Response<B>) -> bool {
    matches!(
        resp.status(),
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
    ) && resp.headers().contains_key(ERROR_HEADER)
}

fn server_builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new());
    b.http2().timer(TokioTimer::new());
    b
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The destination service named by Host or :authority: `web`,
/// `web:8080` and `web.mesh` all mean `web`.
pub fn host_service<B>(req: &Request<B>) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let host = host.strip_suffix(".mesh").unwrap_or(host);
    if host.is_empty() {
        None
    } else {
        Some(host.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routing() {
        let r = |h: &str| Request::builder().header("host", h).body(()).unwrap();
        assert_eq!(host_service(&r("web")).as_deref(), Some("web"));
        assert_eq!(host_service(&r("web:8080")).as_deref(), Some("web"));
        assert_eq!(host_service(&r("Web.mesh")).as_deref(), Some("web"));
        let r2 = Request::builder().uri("http://api:80/x").body(()).unwrap();
        assert_eq!(host_service(&r2).as_deref(), Some("api"));
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", "x-custom, keep-alive".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("x-app", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-app"));
    }
}
