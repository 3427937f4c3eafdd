//! The sidecar's data path, assembled: the [`Proxy`] holds the clients it
//! forwards with (to other sidecars over mTLS, and to the local app), and
//! the pieces both directions share. The path itself is one file per layer:
//!
//! * `outbound.rs` — app → mesh: routing by service, the locality-aware
//!   balancer, retries across localities;
//! * `connect.rs` — the mTLS connection to a destination sidecar, direct or
//!   through a gateway of this zone;
//! * `inbound.rs` — mesh → app: the caller's identity and mode checked, the
//!   verified identity handed to the app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::connect::MeshConnector;
use crate::metrics::Metrics;
use crate::protocol::{Alpn, Protocol};
use crate::state::Shared;

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
pub(crate) const EJECT_FOR: Duration = Duration::from_secs(5);
pub(crate) const MAX_ATTEMPTS: usize = 3;

pub(crate) fn empty() -> Body {
    Either::Right(Full::new(Bytes::new()))
}

pub(crate) fn error_response(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(msg + "\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static("proxy"));
    r
}

/// Hop-by-hop headers are per connection and never forwarded.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
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

pub struct Proxy {
    pub shared: Arc<Shared>,
    pub metrics: Metrics,
    pub(crate) upstream_h2: Client<MeshConnector, Body>,
    pub(crate) upstream_h1: Client<MeshConnector, Body>,
    pub(crate) app: Client<HttpConnector, Body>,
    pub(crate) app_addr: Option<SocketAddr>,
    pub(crate) app_authority: http::uri::Authority,
    pub(crate) app_protocol: Protocol,
    pub(crate) per_try_timeout: Duration,
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
}

pub(crate) fn server_builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new());
    b.http2().timer(TokioTimer::new());
    b
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
}
