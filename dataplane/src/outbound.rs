//! Outbound: the app sends plain HTTP (or TCP) to a local listener. A
//! request is resolved to its destination service (the listener's fixed
//! one, or the `Host` header on the shared listener), then goes through
//! the layers of the outbound path, one file each:
//!
//! `outbound` (this file: listener, service, buffering) → `route` (the
//! first matching rule of the service's routes: redirect, header changes,
//! rewrite, timeout) → `split` (the rule's weighted backends and mirror) →
//! `retry` (attempts across localities) → `balance` (the endpoint) →
//! `connect` (mTLS, direct or through a gateway).
//!
//! Upgrades (WebSocket) are routed, then go to `upgrade.rs`; opaque TCP
//! listeners hand their connections to `outbound_tcp.rs`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::{DirLabel, Direction, ResultLabel};
use crate::observe::{Ends, Observed};
use crate::protocol::Protocol;
use crate::proxy::{
    empty, error_response, mesh_request, path_of, strip_hop_by_hop, strip_response_hop_by_hop,
    Body, Proxy, CLIENT_ID_HEADER, IDEMPOTENT_HEADER, MAX_REPLAY_BODY,
};
use crate::retry::Outgoing;
use crate::split::Mirror;
use crate::traffic::Served;
use crate::upgrade::is_upgrade;

impl Proxy {
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
                    let _ = me
                        .server_builder()
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                }
                me.metrics.connections_open.get_or_create(&dir).dec();
            });
        }
    }

    pub async fn outbound_http(
        &self,
        fixed: Option<Arc<str>>,
        mut req: Request<Incoming>,
    ) -> Response<Body> {
        let start = Instant::now();
        let mut served = Served::default();
        // Routes match, and the destination receives, the canonical path.
        if let Err(e) = crate::path::canonical(&mut req) {
            return error_response(StatusCode::BAD_REQUEST, e.to_string());
        }
        crate::proxy::keep_authority(&mut req);
        let observed = Observed::start(&self.shared, Direction::Outbound, &mut req);
        let mut resp = self
            .route_outbound(fixed.as_deref(), req, &mut served)
            .await;
        strip_response_hop_by_hop(&mut resp);
        let elapsed = start.elapsed();
        let secs = elapsed.as_secs_f64();
        let status = resp.status().as_u16();
        self.metrics.observe(Direction::Outbound, status, secs);
        let fallback = fixed.as_deref().unwrap_or(crate::traffic::UNKNOWN);
        served.count(&self.shared.traffic, fallback, status, secs);
        if observed.wanted() {
            let (me, my_zone) = self.shared.traffic.me();
            let tls = self.shared.tls.load();
            let id = tls.as_ref().map(|t| t.ident.id.to_string());
            observed.finish(
                &self.shared,
                Ends {
                    direction: Direction::Outbound,
                    source_service: &me,
                    source_zone: &my_zone,
                    source_identity: id.as_deref(),
                    destination_service: served
                        .cluster
                        .as_ref()
                        .map(|c| c.service.as_str())
                        .unwrap_or(fallback),
                    destination_zone: served
                        .endpoint
                        .as_ref()
                        .map(|e| e.zone.as_str())
                        .unwrap_or(crate::traffic::UNKNOWN),
                    upstream: served.endpoint.as_ref().map(|e| e.target.addr),
                    route: served.route.as_deref(),
                    status,
                    decision: served.decision,
                    elapsed,
                },
            );
        }
        resp
    }

    async fn route_outbound(
        &self,
        fixed: Option<&str>,
        mut req: Request<Incoming>,
        served: &mut Served,
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
                format!(
                    "unknown service {service:?}: not in this proxy's config (no such service, \
                     or not among the services its --reachable-services declares)"
                ),
            );
        };
        drop(clusters);
        served.cluster = Some(cluster.clone());
        if self.shared.tls.load().is_none() {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no workload certificate yet; the proxy fails closed until it has one".into(),
            );
        }
        // An upgrade (WebSocket) is routed as any request, then goes to
        // `upgrade.rs` instead of the attempts.
        let from_app = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if from_app.is_some() {
            crate::upgrade::outbound_headers(&mut parts.headers);
        } else {
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.remove(CLIENT_ID_HEADER);
        }
        // Retried in the next locality: GET/HEAD/OPTIONS/TRACE without a
        // body, and anything the caller marks idempotent (gRPC has no wire
        // marker; a client interceptor sets the header). Marked requests
        // are buffered so each attempt can replay them.
        let marked_by_caller = parts
            .headers
            .remove(IDEMPOTENT_HEADER)
            .is_some_and(|v| v == "true" || v == "1");
        let safe_method = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let bodyless = body.is_end_stream();
        // The routes this proxy's policies give the service: the first rule
        // that matches picks the backends and changes the request.
        let routes = self.shared.routes.load().get(&service).cloned();
        let selected = routes
            .as_deref()
            .and_then(|r| r.select(&parts.method, &parts.uri, &parts.headers));
        let mut target = cluster;
        let mut timeout = None;
        if let Some(sel) = &selected {
            let rule = sel.rule;
            served.route = Some(rule.name.clone());
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()));
            if let (Some(r), Some(location)) = (&rule.redirect, sel.location(&parts.uri, host)) {
                return redirect(r.status, &location);
            }
            if let Some(ops) = &rule.request_headers {
                ops.apply(&mut parts.headers);
            }
            if let Some(pq) = sel.rewritten(&parts.uri) {
                match pq.parse::<http::Uri>() {
                    Ok(u) => parts.uri = u,
                    Err(_) => {
                        return error_response(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "route {}: the rewritten path {pq:?} is not a valid URI",
                                rule.name
                            ),
                        )
                    }
                }
            }
            if let Some(split) = &rule.split {
                match split.pick() {
                    Some(c) => target = c.clone(),
                    None => {
                        return error_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("route {}: none of its backends has an endpoint", rule.name),
                        )
                    }
                }
            }
            timeout = rule.timeout;
        }
        let policy = target.resilience.clone();
        // The route's timeout, else the destination's request timeout: until
        // the response head, across all attempts.
        let limit = timeout.or(policy.request_timeout);
        // Named only when it expires.
        let route_name = selected.as_ref().map(|s| s.rule.name.clone());
        let whose = move || match (timeout, &route_name) {
            (Some(t), r) => format!(
                "the route timeout of {t:?} ({})",
                r.as_deref().unwrap_or_default()
            ),
            (None, _) => format!("the request timeout of {:?}", limit.unwrap_or_default()),
        };
        if let Some(from_app) = from_app {
            let up = crate::upgrade::OutgoingUpgrade {
                parts,
                body,
                from_app,
                limit: limit.map(|l| (l, whose())),
            };
            let mut resp = self.outbound_upgrade(&service, &target, up, served).await;
            if let Some(ops) = selected.and_then(|s| s.rule.response_headers.as_ref()) {
                ops.apply(resp.headers_mut());
            }
            return resp;
        }
        // A method the destination's Retry policy lists as idempotent is
        // buffered and repeated like a request the caller marks.
        let marked = marked_by_caller || policy.idempotent_methods.contains(&parts.method);
        let (replay, body): (Option<Bytes>, Option<Body>) = if marked && !bodyless {
            match http_body_util::Limited::new(body, MAX_REPLAY_BODY)
                .collect()
                .await
            {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(e) => return replay_refused(&*e),
            }
        } else {
            (None, Some(crate::proxy::passed(body)))
        };
        if let Some(m) = selected.as_ref().and_then(|s| s.rule.mirror.as_ref()) {
            self.mirror(m, &parts, bodyless, replay.as_ref());
        }
        let out = Outgoing {
            parts: &parts,
            path: path_of(&parts.uri),
            replay,
            body,
            bodyless,
            retryable: (safe_method && bodyless) || marked,
            key: match policy.hash {
                crate::resilience::HashKey::None => None,
                ref k => {
                    let tls = self.shared.tls.load();
                    let me = tls.as_ref().map(|t| t.ident.id.to_string());
                    k.of(&parts.headers, me.as_deref())
                }
            },
        };
        let mut resp = match limit {
            None => self.attempts(&service, &target, out, served).await,
            Some(limit) => {
                match tokio::time::timeout(limit, self.attempts(&service, &target, out, served))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("service {service}: no response head within {}", whose()),
                    ),
                }
            }
        };
        if let Some(ops) = selected
            .as_ref()
            .and_then(|s| s.rule.response_headers.as_ref())
        {
            ops.apply(resp.headers_mut());
        }
        resp
    }

    /// A copy of the request to the mirror's backend, sent on its own task:
    /// its answer is dropped, and it never delays or fails the request.
    /// Only a request whose body is at hand (none, or buffered) is copied.
    fn mirror(
        &self,
        m: &Mirror,
        parts: &http::request::Parts,
        bodyless: bool,
        replay: Option<&Bytes>,
    ) {
        if !m.sample() {
            return;
        }
        let body = match (bodyless, replay) {
            (true, _) => Bytes::new(),
            (false, Some(b)) => b.clone(),
            (false, None) => {
                self.metrics
                    .mirrored
                    .get_or_create(&ResultLabel { result: "skipped" })
                    .inc();
                return;
            }
        };
        let Some((ep, _)) = m.cluster.pick(&[], 0) else {
            self.metrics
                .mirrored
                .get_or_create(&ResultLabel { result: "skipped" })
                .inc();
            return;
        };
        let (client, version) = self.upstream_for(m.cluster.protocol);
        let mut r = mesh_request(
            parts,
            &ep.authority,
            &path_of(&parts.uri),
            version,
            Either::Right(Full::new(body)),
        );
        r.headers_mut()
            .insert(MIRROR_HEADER, http::HeaderValue::from_static("true"));
        let client = client.clone();
        let metrics = self.metrics.clone();
        let limit = m.cluster.resilience.per_try_timeout;
        tokio::spawn(async move {
            let result = match tokio::time::timeout(limit, client.send(r)).await {
                Ok(Ok(_)) => "sent",
                _ => "failed",
            };
            metrics
                .mirrored
                .get_or_create(&ResultLabel { result })
                .inc();
        });
    }
}

/// Set on mirrored copies, so their receiver can tell them apart.
pub const MIRROR_HEADER: &str = "x-tern-mirror";

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The destination service named by Host or :authority: `web`,
/// `web:8080` and `web.mesh` all mean `web`.
/// The answer when a request buffered for retries cannot be: 413 when its
/// body is over the limit, 400 when the body did not arrive whole (the
/// caller reset or stopped sending), which is not a size problem.
fn replay_refused(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Response<Body> {
    if e.is::<http_body_util::LengthLimitError>() {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{IDEMPOTENT_HEADER} requests are buffered for retries; the body exceeds \
                 {MAX_REPLAY_BODY} bytes"
            ),
        );
    }
    error_response(
        StatusCode::BAD_REQUEST,
        format!("the request body did not arrive whole: {e}"),
    )
}

pub fn host_service<B>(req: &Request<B>) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    // Host names are case-insensitive: `API.MESH` is `api`.
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix(".mesh").unwrap_or(&host);
    if host.is_empty() {
        None
    } else {
        Some(host.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An over-long body is 413; one that failed to arrive is 400.
    #[tokio::test]
    async fn a_replay_body_over_the_limit_is_413_and_a_broken_one_400() {
        use http_body_util::BodyExt;
        let big = http_body_util::Full::new(Bytes::from(vec![0u8; 16]));
        let e = http_body_util::Limited::new(big, 8)
            .collect()
            .await
            .unwrap_err();
        assert_eq!(replay_refused(&*e).status(), StatusCode::PAYLOAD_TOO_LARGE);
        let broken = http_body_util::StreamBody::new(futures_util::stream::iter(vec![Err::<
            hyper::body::Frame<Bytes>,
            std::io::Error,
        >(
            std::io::Error::other("reset by the caller"),
        )]));
        let e = http_body_util::Limited::new(broken, 8)
            .collect()
            .await
            .unwrap_err();
        let r = replay_refused(&*e);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn host_routing() {
        let r = |h: &str| Request::builder().header("host", h).body(()).unwrap();
        assert_eq!(host_service(&r("web")).as_deref(), Some("web"));
        assert_eq!(host_service(&r("web:8080")).as_deref(), Some("web"));
        assert_eq!(host_service(&r("Web.mesh")).as_deref(), Some("web"));
        assert_eq!(host_service(&r("API.MESH:80")).as_deref(), Some("api"));
        let r2 = Request::builder().uri("http://api:80/x").body(()).unwrap();
        assert_eq!(host_service(&r2).as_deref(), Some("api"));
    }
}
