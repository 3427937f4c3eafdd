//! The HTTP request path into the app: access rules (403 naming the rule),
//! rate limits (429), faults (delays and aborts), then the app with the
//! caller's verified identity in `x-tern-client-id`; its span, access log
//! line and traffic counts. An app's own `x-tern-error` is removed from its
//! answers. Connections reach it from `inbound.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use common::rustls::pki_types::CertificateDer;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::access::{self, Caller, DEFAULT_RULE};
use crate::fault;
use crate::metrics::Direction;
use crate::observe::{Ends, Observed};
use crate::protocol::Protocol;
use crate::proxy::{
    app_uri, error_chain, error_response, strip_hop_by_hop, strip_response_hop_by_hop, Body, Proxy,
    CLIENT_ID_HEADER, ERROR_HEADER,
};
use crate::ratelimit;
use crate::upgrade::is_upgrade;
use common::traffic::Decision as Verdict;

impl Proxy {
    /// A 429 when a rate limit refuses this request.
    fn limit_http(
        &self,
        caller: Option<&Caller>,
        req: &Request<Incoming>,
        remote: SocketAddr,
    ) -> Option<Response<Body>> {
        let limits = self.shared.limits.load();
        if limits.is_empty() {
            return None;
        }
        let r = access::Request {
            method: req.method(),
            path: req.uri().path(),
        };
        let limited = limits.check(caller, Some((r, req.headers())))?;
        self.count_limited(&limited.limit, "http", caller, remote);
        Some(ratelimit::too_many(&limited))
    }

    /// The fault, if any, for this request: its delay is served here
    /// (`Ok` names the fault that delayed it); an abort is the answer
    /// (`Err`).
    async fn inject_http(
        &self,
        caller: Option<&Caller>,
        req: &Request<Incoming>,
    ) -> Result<Option<Arc<str>>, Response<Body>> {
        let inj = {
            let faults = self.shared.faults.load();
            if faults.is_empty() {
                return Ok(None);
            }
            let drawn = faults.draw(
                caller,
                Some(access::Request {
                    method: req.method(),
                    path: req.uri().path(),
                }),
            );
            match drawn {
                Some(i) => i,
                None => return Ok(None),
            }
        };
        if let Some(d) = inj.delay {
            self.count_fault(&inj.fault, "delay");
            tokio::time::sleep(d).await;
        }
        match inj.abort {
            Some(abort) => {
                self.count_fault(&inj.fault, "abort");
                Err(fault::abort_response(abort, &inj.fault))
            }
            None => Ok(Some(inj.fault)),
        }
    }

    /// A request from the mesh (`peer`: the caller's identity header and
    /// what its certificate says) or, in permissive mode, from a plaintext
    /// caller (`None`).
    pub(crate) async fn inbound_http(
        &self,
        app: SocketAddr,
        remote: SocketAddr,
        peer: Option<(HeaderValue, Arc<Caller>)>,
        chain: Arc<[CertificateDer<'static>]>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let start = Instant::now();
        let mut req = req;
        // Rules and the app see the same, canonical path.
        if let Err(e) = crate::path::canonical(&mut req) {
            return error_response(StatusCode::BAD_REQUEST, e.to_string());
        }
        crate::proxy::keep_authority(&mut req);
        let observed = Observed::start(&self.shared, Direction::Inbound, &mut req);
        // The caller's SPIFFE ID, for the record.
        let peer_id = observed
            .wanted()
            .then(|| peer.as_ref().map(|(v, _)| v.clone()))
            .flatten();
        let access = self.shared.access.load();
        let denied = if access.allow_all {
            None
        } else {
            let caller = peer.as_ref().map(|(_, c)| c.as_ref());
            let path = req.uri().path();
            let d = access.decide(
                caller,
                Some(access::Request {
                    method: req.method(),
                    path,
                }),
            );
            self.record(&d, "http", caller, remote, Some(path));
            (!d.allow).then(|| d.rule.unwrap_or_else(|| DEFAULT_RULE.into()))
        };
        drop(access);
        let caller = peer.as_ref().map(|(_, c)| c.clone());
        let mut decision = Verdict::None;
        let resp = if let Some(rule) = denied {
            decision = Verdict::Denied;
            forbidden(&rule)
        } else if let Some(limited) = self.limit_http(caller.as_deref(), &req, remote) {
            decision = Verdict::RateLimited;
            limited
        } else {
            match self.inject_http(caller.as_deref(), &req).await {
                Err(aborted) => {
                    decision = Verdict::Fault;
                    aborted
                }
                Ok(delayed_by) => {
                    if delayed_by.is_some() {
                        decision = Verdict::Fault;
                    }
                    let id = peer.map(|(v, _)| v);
                    let mut resp = if is_upgrade(&req) {
                        let counts = self.inbound_counts(caller.as_deref());
                        self.inbound_upgrade(app, id, chain, counts, req).await
                    } else {
                        self.to_app(app, id, req).await
                    };
                    // The caller can tell a fault's delay from a slow app.
                    if let Some(v) = delayed_by.and_then(|f| HeaderValue::from_str(&f).ok()) {
                        resp.headers_mut().insert(fault::FAULT_HEADER, v);
                    }
                    resp
                }
            }
        };
        let (status, elapsed) = (resp.status().as_u16(), start.elapsed());
        let secs = elapsed.as_secs_f64();
        self.metrics.observe(Direction::Inbound, status, secs);
        self.inbound_counts(caller.as_deref())
            .request(status, decision, secs);
        if observed.wanted() {
            let (me, my_zone) = self.shared.traffic.me();
            let unknown = crate::traffic::UNKNOWN;
            let c = caller.as_deref();
            observed.finish(
                &self.shared,
                Ends {
                    direction: Direction::Inbound,
                    source_service: c.map(|c| c.service.as_str()).unwrap_or(unknown),
                    source_zone: c.map(|c| c.zone.as_str()).unwrap_or(unknown),
                    source_identity: peer_id.as_ref().and_then(|v| v.to_str().ok()),
                    destination_service: &me,
                    destination_zone: &my_zone,
                    upstream: Some(app),
                    route: None,
                    status,
                    decision,
                    elapsed,
                },
            );
        }
        resp
    }

    /// A request for the local app, with the caller's verified identity
    /// (none for a plaintext caller: a value it sent is removed).
    async fn to_app(
        &self,
        app: SocketAddr,
        peer: Option<HeaderValue>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        match peer {
            Some(p) => parts.headers.insert(CLIENT_ID_HEADER, p),
            None => parts.headers.remove(CLIENT_ID_HEADER),
        };
        if self.app_protocol == Protocol::Http2 {
            // The app's `:authority` is the name the caller used (its
            // `Host`, which HTTP/2 replaces), not the app's own address.
            let called = parts
                .headers
                .remove(header::HOST)
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
            parts.uri = app_uri(called.as_ref().unwrap_or(&self.app_authority), &parts.uri);
            parts.version = Version::HTTP_2;
        } else {
            parts.uri = app_uri(&self.app_authority, &parts.uri);
            parts.version = Version::HTTP_11;
        }
        let req = Request::from_parts(parts, crate::proxy::passed(body));
        let sent = self.app.try_send_to(&self.app_authority, req);
        let sent = async { sent.await.map_err(|u| u.error) };
        match self.within_request_timeout(sent).await {
            Err(limit) => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "local app at {app}: no response head within the request timeout of {limit:?}"
                ),
            ),
            Ok(r) => match r {
                Ok(mut r) => {
                    // Only a mesh proxy may say "this failure was the mesh's".
                    r.headers_mut().remove(ERROR_HEADER);
                    strip_response_hop_by_hop(&mut r);
                    r.map(crate::proxy::passed)
                }
                Err(e) if e.head_too_large() => self.limits.exceeded("the app's"),
                Err(e) => error_response(
                    StatusCode::BAD_GATEWAY,
                    format!("local app at {app}: {}", error_chain(&e)),
                ),
            },
        }
    }
}

/// `x-tern-error` on a request an access rule denied (callers neither eject
/// nor retry on it).
pub const ERROR_DENIED: &str = "denied";

/// The 403 a denied request gets: the body names the rule.
fn forbidden(rule: &str) -> Response<Body> {
    let mut r = Response::new(Either::Right(http_body_util::Full::new(
        bytes::Bytes::from(format!("access denied by {rule}\n")),
    )));
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(ERROR_DENIED));
    r
}
