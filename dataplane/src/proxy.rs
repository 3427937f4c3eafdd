//! The sidecar's data path, assembled: the [`Proxy`] holds the clients it
//! forwards with (to other sidecars over mTLS, and to the local app), and
//! the pieces both directions share. The path itself is one file per layer:
//!
//! * `outbound.rs` — app → mesh: routing by service, the locality-aware
//!   balancer, retries across localities; `outbound_tcp.rs` for opaque TCP;
//! * `pool.rs` — the connections kept open to each endpoint and to the app;
//! * `connect.rs` — the mTLS connection to a destination sidecar, direct or
//!   through a gateway of this zone;
//! * `inbound.rs` — mesh → app: the caller's identity and mode checked, the
//!   verified identity handed to the app;
//! * `upgrade.rs` — HTTP/1.1 upgrades (WebSocket) in both directions,
//!   spliced once the app switches protocols.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::connect::{AppConnector, MeshConnector};
use crate::metrics::Metrics;
use crate::pool::{self, Pool};
use crate::protocol::{Alpn, Protocol};
use crate::state::Shared;

/// A proxied body (with the destination's stream limits, if any), or one
/// the proxy wrote itself (errors, empty retries). An enum rather than a
/// box: no allocation per request.
pub type Body = Either<crate::stream_limit::Limited<Incoming>, Full<Bytes>>;

/// A received body, passed on with no limits of its own.
pub(crate) fn passed(b: Incoming) -> Body {
    Either::Left(crate::stream_limit::Limited::plain(b))
}

pub const CLIENT_ID_HEADER: &str = "x-tern-client-id";
/// Response header on errors a mesh proxy generated itself. Callers eject
/// and retry on them, so an app's own value is removed.
pub const ERROR_HEADER: &str = "x-tern-error";
/// Request header marking a request idempotent (safe to retry elsewhere).
pub const IDEMPOTENT_HEADER: &str = "x-tern-idempotent";
/// Largest body buffered to replay a marked-idempotent request.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

pub(crate) fn empty() -> Body {
    Either::Right(Full::new(Bytes::new()))
}

/// The mesh could not deliver: callers eject the endpoint and, for an
/// idempotent request, retry elsewhere.
pub(crate) fn error_response(status: StatusCode, msg: String) -> Response<Body> {
    mesh_error(status, ERROR_UNAVAILABLE, msg)
}

/// `x-tern-error` values. Only `unavailable` makes a caller eject and retry.
pub const ERROR_UNAVAILABLE: &str = "proxy";
pub const ERROR_LIMIT: &str = "limit";

fn mesh_error(status: StatusCode, kind: &'static str, msg: String) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(msg + "\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(kind));
    r
}

/// Bounds on HTTP message heads, on every listener and client of a sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Header lines in an HTTP/1.1 request or response head.
    pub max_headers: usize,
    /// Size of an HTTP/2 header block, decoded (as HTTP/2 counts it: name
    /// + value + 32 bytes per field).
    pub max_header_bytes: u32,
}

/// hyper's own HTTP/1.1 default; setting it explicitly costs an allocation
/// per message, so it is only set when it differs.
const HYPER_MAX_HEADERS: usize = 100;

/// How often an idle inbound HTTP/2 connection is pinged, and how long the
/// answer may take before the connection is closed.
const H2_PING_EVERY: Duration = Duration::from_secs(20);

impl Default for HeaderLimits {
    fn default() -> Self {
        Self {
            max_headers: HYPER_MAX_HEADERS,
            max_header_bytes: 64 * 1024,
        }
    }
}

impl HeaderLimits {
    pub(crate) fn h1_max_headers(&self) -> Option<usize> {
        (self.max_headers != HYPER_MAX_HEADERS).then_some(self.max_headers)
    }

    /// A response head over the limits: a 502 that says which limit and
    /// where to raise it. Callers neither eject the endpoint nor retry: the
    /// same response would come back.
    pub(crate) fn exceeded(&self, whose: &str) -> Response<Body> {
        mesh_error(
            StatusCode::BAD_GATEWAY,
            ERROR_LIMIT,
            format!(
                "{whose} response head exceeds this sidecar's header limits \
                 (--max-headers {}, --max-header-bytes {}); raise them on the sidecars on the path",
                self.max_headers, self.max_header_bytes
            ),
        )
    }
}

/// Hop-by-hop headers are per connection and never forwarded, with one
/// exception: `te: trailers`, which HTTP/2 allows end to end and gRPC
/// servers require (gRPC C-core resets a stream without it).
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    remove_nominated(h);
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
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The headers every `Connection` field line names (all of its lines, not
/// only the first).
fn remove_nominated(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
}

/// A response's hop-by-hop headers, removed before it is passed on (an
/// app's `Connection: close` is about its own connection, not the caller's
/// kept-alive one). A 101 keeps them: they are the upgrade. `Trailer` is
/// end to end and stays.
pub(crate) fn strip_response_hop_by_hop<B>(resp: &mut Response<B>) {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let h = resp.headers_mut();
    remove_nominated(h);
    for n in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// An HTTP/2 caller names its destination in `:authority` and sends no
/// `Host`, and each hop rewrites the URI: the caller's authority is kept as
/// `Host`, which every hop carries, so the app receives the name it was
/// called by, not an endpoint's or a gateway's address.
pub(crate) fn keep_authority<B>(req: &mut http::Request<B>) {
    if req.headers().contains_key(header::HOST) {
        return;
    }
    if let Some(v) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, v);
    }
}

/// The URI of a request to a mesh endpoint.
pub(crate) fn mesh_uri(authority: &http::uri::Authority, path: &PathAndQuery) -> Uri {
    Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path.clone())
        .build()
        .expect("valid parts")
}

/// A request's path and query, byte for byte (`/` when it has none).
pub(crate) fn path_of(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The URI of a request to the local app: the caller's path and query,
/// byte for byte, on the app's address.
pub(crate) fn app_uri(app: &http::uri::Authority, from: &Uri) -> Uri {
    mesh_uri(app, &path_of(from))
}

/// One attempt of the caller's request (method, headers) to a mesh
/// endpoint.
pub(crate) fn mesh_request(
    parts: &http::request::Parts,
    authority: &http::uri::Authority,
    path: &PathAndQuery,
    version: http::Version,
    body: Body,
) -> http::Request<Body> {
    let mut r = http::Request::new(body);
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = mesh_uri(authority, path);
    *r.headers_mut() = parts.headers.clone();
    *r.version_mut() = version;
    r
}

pub struct Proxy {
    pub shared: Arc<Shared>,
    pub metrics: Metrics,
    pub(crate) upstream_h2: Pool<MeshConnector>,
    pub(crate) upstream_h1: Pool<MeshConnector>,
    pub(crate) app: Pool<AppConnector>,
    pub(crate) app_addr: Option<SocketAddr>,
    pub(crate) app_authority: http::uri::Authority,
    pub(crate) app_protocol: Protocol,
    /// For the local app's answer to an inbound request.
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) limits: HeaderLimits,
    pub(crate) tcp_idle: Duration,
    /// For retry backoff jitter.
    pub(crate) rng: crate::balance::Rng,
}

/// Limits of the data path, from the command line. The outbound side's
/// timeouts come per destination from `Cluster::resilience`.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Until the local app's response head arrives (inbound); `None` waits
    /// as long as the caller does.
    pub request_timeout: Option<Duration>,
    pub limits: HeaderLimits,
    /// An opaque or upgraded flow on which nothing moves this long closes.
    pub tcp_idle: Duration,
}

impl Proxy {
    pub fn new(
        shared: Arc<Shared>,
        metrics: Metrics,
        app_addr: Option<SocketAddr>,
        app_protocol: Protocol,
        opts: Options,
    ) -> Arc<Self> {
        let limits = opts.limits;
        let connector_metrics = Arc::new(metrics.clone());
        let connector = |alpn| MeshConnector {
            shared: shared.clone(),
            metrics: connector_metrics.clone(),
            alpn,
        };
        let settings = |version| pool::Settings {
            version,
            limits,
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 1024,
            h2_keepalive: Some(Duration::from_secs(10)),
        };
        let upstream_h2 = Pool::new(connector(Alpn::H2), settings(pool::Version::Http2));
        let upstream_h1 = Pool::new(connector(Alpn::Http1), settings(pool::Version::Http1));
        let app = Pool::new(
            AppConnector { addr: app_addr },
            pool::Settings {
                h2_keepalive: None,
                ..settings(if app_protocol == Protocol::Http2 {
                    pool::Version::Http2
                } else {
                    pool::Version::Http1
                })
            },
        );
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
            request_timeout: opts.request_timeout,
            rng: crate::balance::Rng::new(),
            limits,
            tcp_idle: opts.tcp_idle,
        })
    }

    /// Wait for `f` (a response head) at most the request timeout; `Err`
    /// carries the limit that passed.
    pub(crate) async fn within_request_timeout<F: std::future::Future>(
        &self,
        f: F,
    ) -> Result<F::Output, Duration> {
        match self.request_timeout {
            Some(limit) => tokio::time::timeout(limit, f).await.map_err(|_| limit),
            None => Ok(f.await),
        }
    }

    /// The HTTP server both directions serve with, under the header limits.
    pub(crate) fn server_builder(&self) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        b.http1().timer(TokioTimer::new());
        if let Some(n) = self.limits.h1_max_headers() {
            b.http1().max_headers(n);
        }
        // An idle HTTP/1.1 connection is closed by hyper's header-read
        // timeout (30 s); an HTTP/2 one whose peer vanished (no FIN: a node
        // lost, a partition) is found by pings.
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(self.limits.max_header_bytes)
            .keep_alive_interval(Some(H2_PING_EVERY))
            .keep_alive_timeout(H2_PING_EVERY);
        b
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every `Connection` line counts, not only the first.
    #[test]
    fn headers_named_on_a_second_connection_line_are_dropped() {
        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive".parse().unwrap());
        h.append("connection", "x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("x-app", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-app"));
    }

    /// An app's `Connection: close` and the headers it names stay on its
    /// own hop; `Trailer` is end to end; a 101 keeps its upgrade headers.
    #[test]
    fn a_responses_hop_by_hop_headers_are_dropped_except_for_an_upgrade() {
        let mut r = Response::new(());
        let h = r.headers_mut();
        h.append("connection", "close, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("trailer", "grpc-status".parse().unwrap());
        h.insert("x-app", "kept".parse().unwrap());
        strip_response_hop_by_hop(&mut r);
        let mut left: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["trailer", "x-app"]);

        let mut r = Response::new(());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        strip_response_hop_by_hop(&mut r);
        assert_eq!(r.headers().len(), 2);
    }

    /// An HTTP/2 request's `:authority` becomes its `Host`; a `Host` sent
    /// is kept as it is.
    #[test]
    fn an_http2_callers_authority_is_kept_as_host() {
        let mut r = http::Request::new(());
        *r.uri_mut() = "http://api:8080/x".parse().unwrap();
        *r.version_mut() = http::Version::HTTP_2;
        keep_authority(&mut r);
        assert_eq!(r.headers()["host"], "api:8080");
        let mut r = http::Request::new(());
        *r.uri_mut() = "http://10.0.0.1/x".parse().unwrap();
        r.headers_mut().insert("host", "api".parse().unwrap());
        keep_authority(&mut r);
        assert_eq!(r.headers()["host"], "api");
        let mut r = http::Request::new(());
        *r.uri_mut() = "/x".parse().unwrap();
        keep_authority(&mut r);
        assert!(r.headers().is_empty());
    }

    #[test]
    fn te_trailers_is_forwarded_and_other_te_values_are_not() {
        let mut h = HeaderMap::new();
        h.insert("te", "gzip, Trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
        let mut h = HeaderMap::new();
        h.insert("te", "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }
}
