//! Connection pools: the HTTP connections a sidecar keeps open to one kind
//! of peer (mesh endpoints, or the local app), per authority, built
//! directly on `hyper::client::conn`.
//!
//! * HTTP/1.1: a stack of connections per authority. A connection goes back
//!   on the stack when its response head arrives and is taken again only
//!   once hyper says it is ready, i.e. once that response's body has been
//!   read to the end. No task is spawned per request to watch for that.
//! * HTTP/2: one multiplexed connection per authority; concurrent first
//!   requests share one connect.
//!
//! A request that a reused connection could not even start (it closed while
//! idle) is sent again over a new connection: nothing of it reached the
//! peer. Idle connections close after the idle timeout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::uri::Authority;
use http::{header, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::proxy::{Body, HeaderLimits};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the transport of a new connection to an authority.
pub trait Connect: Send + Sync + 'static {
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;
    fn connect(&self, to: &Authority) -> impl Future<Output = Result<Self::Io, BoxError>> + Send;
}

/// The HTTP version a pool speaks; fixed per pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub version: Version,
    pub limits: HeaderLimits,
    /// An unused connection closes after this long.
    pub idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per authority.
    pub max_idle_per_host: usize,
    /// HTTP/2 PING interval (and timeout) on a connection, if any.
    pub h2_keepalive: Option<Duration>,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened: nothing was sent.
    #[error("{0}")]
    Connect(Arc<str>),
    /// The connection failed during the exchange.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A request the pool could not send: why, and the request itself when no
/// connection could be opened for it.
pub struct Unsent {
    pub error: PoolError,
    pub request: Option<Request<Body>>,
}

impl Unsent {
    fn connect(error: PoolError, request: Request<Body>) -> Self {
        Self {
            error,
            request: Some(request),
        }
    }
}

impl From<PoolError> for Unsent {
    fn from(error: PoolError) -> Self {
        Self {
            error,
            request: None,
        }
    }
}

impl PoolError {
    pub fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect(_))
    }

    /// Whether the connector refused to open a connection because the
    /// destination's connection limit was reached.
    pub fn circuit_open(&self) -> bool {
        matches!(self, PoolError::Connect(m) if m.starts_with(crate::connect::CIRCUIT_OPEN))
    }

    /// Whether the response head was over the header limits.
    pub fn head_too_large(&self) -> bool {
        matches!(self, PoolError::Http(e) if e.is_parse_too_large())
    }
}

/// A pool of connections; clones share it.
pub struct Pool<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<C> {
    connector: C,
    settings: Settings,
    hosts: Mutex<HashMap<Authority, Arc<Host>>>,
}

#[derive(Default)]
struct Host {
    h1: Mutex<Vec<Idle>>,
    h2: Mutex<H2Slot>,
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

type H2Connect = Shared<BoxFuture<'static, Result<http2::SendRequest<Body>, Arc<str>>>>;

#[derive(Default)]
enum H2Slot {
    #[default]
    Empty,
    Connecting(H2Connect),
    Ready {
        tx: http2::SendRequest<Body>,
        used: Instant,
    },
}

fn connect_error(e: &(dyn std::error::Error + 'static)) -> PoolError {
    PoolError::Connect(crate::proxy::error_chain(e).into())
}

impl<C: Connect> Pool<C> {
    /// A pool; its idle sweep runs on the current tokio runtime, if any.
    pub fn new(connector: C, settings: Settings) -> Self {
        let inner = Arc::new(Inner {
            connector,
            settings,
            hosts: Mutex::new(HashMap::new()),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// Send `req` (an absolute URI naming the peer) over a pooled
    /// connection, opening one when none is free.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, PoolError> {
        self.try_send(req).await.map_err(|u| u.error)
    }

    /// As [`Pool::send`], but a request for which no connection could be
    /// opened comes back with the error: nothing of it was sent, so its
    /// body can go to another endpoint.
    pub async fn try_send(&self, req: Request<Body>) -> Result<Response<Incoming>, Unsent> {
        let Some(authority) = req.uri().authority().cloned() else {
            return Err(Unsent::connect(
                PoolError::Connect("request URI has no authority".into()),
                req,
            ));
        };
        self.try_send_to(&authority, req).await
    }

    /// As [`Pool::try_send`], over a connection to `to` whatever the URI
    /// names: an HTTP/2 request keeps its URI's authority as `:authority`
    /// (the name it was called by), an HTTP/1.1 one its `Host`.
    pub async fn try_send_to(
        &self,
        to: &Authority,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Unsent> {
        let host = self.host(to);
        match self.inner.settings.version {
            Version::Http1 => {
                origin_form(&mut req, to);
                self.send_h1(&host, to, req).await
            }
            Version::Http2 => self.send_h2(&host, to, req).await,
        }
    }

    fn host(&self, authority: &Authority) -> Arc<Host> {
        let mut hosts = self.inner.hosts.lock().expect("pool lock");
        if let Some(h) = hosts.get(authority) {
            return h.clone();
        }
        hosts.entry(authority.clone()).or_default().clone()
    }

    async fn send_h1(
        &self,
        host: &Host,
        authority: &Authority,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Unsent> {
        loop {
            let (mut tx, reused) = match take_idle(host, self.inner.settings.idle_timeout) {
                Some(tx) => (tx, true),
                None => match self.connect_h1(authority).await {
                    Ok(tx) => (tx, false),
                    Err(e) => return Err(Unsent::connect(e, req)),
                },
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    put_idle(host, tx, self.inner.settings.max_idle_per_host);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // The idle connection closed before the request could
                    // start: nothing was sent; take another.
                    Some(r) if reused => req = r,
                    _ => return Err(PoolError::Http(e.into_error()).into()),
                },
            }
        }
    }

    async fn connect_h1(&self, to: &Authority) -> Result<http1::SendRequest<Body>, PoolError> {
        let io = self
            .inner
            .connector
            .connect(to)
            .await
            .map_err(|e| connect_error(&*e))?;
        let mut b = http1::Builder::new();
        if let Some(n) = self.inner.settings.limits.h1_max_headers() {
            b.max_headers(n);
        }
        let (tx, conn) = b.handshake(io).await.map_err(|e| connect_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "HTTP/1.1 connection closed");
            }
        });
        Ok(tx)
    }

    async fn send_h2(
        &self,
        host: &Host,
        authority: &Authority,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Unsent> {
        let mut fresh = false;
        loop {
            let (mut tx, reused) = match self.h2_sender(host, authority, fresh).await {
                Ok(s) => s,
                Err(e) => return Err(Unsent::connect(e, req)),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(r) if reused && !fresh => {
                        req = r;
                        fresh = true;
                    }
                    _ => return Err(PoolError::Http(e.into_error()).into()),
                },
            }
        }
    }

    /// The authority's HTTP/2 connection, opened if there is none (or if
    /// `fresh`), and whether it was there already.
    async fn h2_sender(
        &self,
        host: &Host,
        authority: &Authority,
        fresh: bool,
    ) -> Result<(http2::SendRequest<Body>, bool), PoolError> {
        let pending = {
            let mut slot = host.h2.lock().expect("pool lock");
            match &mut *slot {
                H2Slot::Ready { tx, used } if !fresh && !tx.is_closed() => {
                    *used = Instant::now();
                    return Ok((tx.clone(), true));
                }
                H2Slot::Connecting(f) => f.clone(),
                _ => {
                    let f = self.connect_h2(authority.clone()).boxed().shared();
                    *slot = H2Slot::Connecting(f.clone());
                    f
                }
            }
        };
        let mine = pending.clone();
        let result = pending.await;
        let mut slot = host.h2.lock().expect("pool lock");
        // Only the connect this request waited for is settled here, not a
        // newer one started since.
        if matches!(&*slot, H2Slot::Connecting(f) if f.ptr_eq(&mine)) {
            *slot = match &result {
                Ok(tx) => H2Slot::Ready {
                    tx: tx.clone(),
                    used: Instant::now(),
                },
                Err(_) => H2Slot::Empty,
            };
        }
        result.map(|tx| (tx, false)).map_err(PoolError::Connect)
    }

    fn connect_h2(
        &self,
        to: Authority,
    ) -> impl Future<Output = Result<http2::SendRequest<Body>, Arc<str>>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let s = &inner.settings;
            let io = inner
                .connector
                .connect(&to)
                .await
                .map_err(|e| crate::proxy::error_chain(&*e))?;
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_header_list_size(s.limits.max_header_bytes);
            if let Some(k) = s.h2_keepalive {
                b.keep_alive_interval(k).keep_alive_timeout(k);
            }
            let (tx, conn) = b
                .handshake(io)
                .await
                .map_err(|e| crate::proxy::error_chain(&e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/2 connection closed");
                }
            });
            Ok::<_, String>(tx)
        }
        .map(|r| r.map_err(Arc::from))
    }
}

/// A ready idle connection, if the stack has one. Connections whose
/// response is still being read stay; closed and expired ones go.
fn take_idle(host: &Host, idle_timeout: Duration) -> Option<http1::SendRequest<Body>> {
    let mut idle = host.h1.lock().expect("pool lock");
    let mut i = idle.len();
    while i > 0 {
        i -= 1;
        let e = &idle[i];
        if e.tx.is_closed() {
            idle.swap_remove(i);
        } else if e.tx.is_ready() {
            let e = idle.swap_remove(i);
            if e.since.elapsed() < idle_timeout {
                return Some(e.tx);
            }
        }
    }
    None
}

fn put_idle(host: &Host, tx: http1::SendRequest<Body>, max: usize) {
    if tx.is_closed() {
        return;
    }
    let mut idle = host.h1.lock().expect("pool lock");
    if idle.len() < max {
        idle.push(Idle {
            tx,
            since: Instant::now(),
        });
    }
}

/// HTTP/1.1 sends the path only (the authority form for CONNECT), with the
/// authority in `Host` when the caller gave none.
fn origin_form(req: &mut Request<Body>, authority: &Authority) {
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = http::HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let mut parts = http::uri::Parts::default();
    if req.method() == Method::CONNECT {
        parts.authority = Some(authority.clone());
    } else {
        parts.path_and_query = Some(crate::proxy::path_of(req.uri()));
    }
    if let Ok(u) = Uri::from_parts(parts) {
        *req.uri_mut() = u;
    }
}

/// Close what has been idle past the timeout, and forget authorities that
/// have nothing left; ends when the pool is dropped.
async fn sweep<C>(pool: Weak<Inner<C>>) {
    let every = match pool.upgrade() {
        Some(p) => (p.settings.idle_timeout / 3).max(Duration::from_secs(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(p) = pool.upgrade() else { return };
        let limit = p.settings.idle_timeout;
        p.hosts.lock().expect("pool lock").retain(|_, h| {
            let mut idle = h.h1.lock().expect("pool lock");
            let expired = |e: &Idle| e.tx.is_ready() && e.since.elapsed() >= limit;
            idle.retain(|e| !(e.tx.is_closed() || expired(e)));
            let mut slot = h.h2.lock().expect("pool lock");
            if let H2Slot::Ready { tx, used } = &*slot {
                if tx.is_closed() || used.elapsed() >= limit {
                    *slot = H2Slot::Empty;
                }
            }
            !idle.is_empty() || !matches!(*slot, H2Slot::Empty) || Arc::strong_count(h) > 1
        });
    }
}

#[cfg(test)]
mod tests;
