//! Outbound: the app sends plain HTTP (or TCP) to a local listener. HTTP is
//! routed by the listener's fixed service, or by the `Host` header on the
//! shared listener; then carried over mTLS to a destination sidecar the
//! locality-aware balancer picks, on a pooled connection (HTTP/1.1 kept as
//! HTTP/1.1, HTTP/2 and gRPC multiplexed). A failed connect is retried for
//! any request without a body (nothing was sent); idempotent requests
//! (GET/HEAD/OPTIONS/TRACE without a body, or marked `x-tern-idempotent`,
//! whose body is buffered) on any error, each time in the next locality.
//! Upgrades (WebSocket) go to `upgrade.rs`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::balance::Endpoint;
use crate::connect::connect_mesh;
use crate::metrics::{DirLabel, Direction};
use crate::protocol::{Alpn, Protocol};
use crate::proxy::{
    empty, error_chain, error_response, head_too_large, mesh_request, path_of, strip_hop_by_hop,
    Body, Proxy, CLIENT_ID_HEADER, EJECT_FOR, ERROR_HEADER, ERROR_UNAVAILABLE, IDEMPOTENT_HEADER,
    MAX_ATTEMPTS, MAX_REPLAY_BODY,
};
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
                    if let Err(e) =
                        common::splice::copy_bidirectional_idle(&mut client, &mut up, self.tcp_idle)
                            .await
                    {
                        tracing::debug!(service, error = %e, "outbound TCP flow ended");
                    }
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
        if is_upgrade(&req) {
            return self.outbound_upgrade(&service, &cluster, req).await;
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
        let path = path_of(&parts.uri);
        let (client, version) = match cluster.protocol {
            Protocol::Http2 => (&self.upstream_h2, Version::HTTP_2),
            _ => (&self.upstream_h1, Version::HTTP_11),
        };
        let retryable = (safe_method && bodyless) || marked;
        // Allocated only when an attempt fails.
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut min_tier = 0;
        let mut last_err = String::new();
        // Set when a connection died under an idempotent request: the next
        // attempt goes to the same endpoint over a new connection.
        let mut again: Option<(Arc<Endpoint>, usize)> = None;
        let mut same_endpoint_retried = false;
        for attempt in 0..MAX_ATTEMPTS {
            let Some((ep, tier)) = again.take().or_else(|| cluster.pick(&tried, min_tier)) else {
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
            let r = mesh_request(&parts, &ep.authority, &path, version, b);
            let failed = |e: hyper_util::client::legacy::Error| {
                let kind = if e.is_connect() {
                    Failure::Connect
                } else if head_too_large(&e) {
                    Failure::Limit
                } else {
                    Failure::Connection
                };
                (kind, error_chain(&e))
            };
            let res = if retryable {
                match tokio::time::timeout(self.per_try_timeout, client.request(r)).await {
                    Ok(r) => r.map_err(failed),
                    Err(_) => Err((
                        Failure::Timeout,
                        format!(
                            "no response within the per-try timeout of {:?}",
                            self.per_try_timeout
                        ),
                    )),
                }
            } else {
                match self.within_request_timeout(client.request(r)).await {
                    Ok(r) => r.map_err(failed),
                    Err(limit) => {
                        return error_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            format!(
                                "service {service}: no response head from {} within the request timeout of {limit:?}",
                                ep.authority
                            ),
                        )
                    }
                }
            };
            match res {
                // A proxy on the way could not reach the app: for a
                // retryable request that is a failed attempt, not an answer.
                Ok(resp) if retryable && is_proxy_failure(&resp) => {
                    ep.eject(EJECT_FOR);
                    last_err = format!("{}: {} from the mesh", ep.authority, resp.status());
                }
                Ok(resp) => return resp.map(Either::Left),
                // The endpoint answered; its answer is over our limits.
                // Not its fault, and a retry would get the same.
                Err((Failure::Limit, _)) => {
                    return self.limits.exceeded(&format!("{}'s", ep.authority))
                }
                Err((kind, msg)) => {
                    last_err = format!("{}: {msg}", ep.authority);
                    tracing::debug!(service, endpoint = %ep.authority, error = %last_err, "attempt failed");
                    // A pooled connection closed under the request (the
                    // peer restarted, or closed it when trust changed): the
                    // endpoint is not at fault. An idempotent request tries
                    // it once more over a new connection.
                    if kind == Failure::Connection && retryable && !same_endpoint_retried {
                        same_endpoint_retried = true;
                        again = Some((ep, tier));
                        continue;
                    }
                    // A failed connect sent nothing, so it is always safe to
                    // retry; otherwise only idempotent requests.
                    ep.eject(EJECT_FOR);
                    if !(kind == Failure::Connect || retryable) {
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
}

/// How an attempt failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection could be made: nothing was sent.
    Connect,
    /// The connection broke during the exchange.
    Connection,
    /// No answer within the per-try timeout.
    Timeout,
    /// The answer's head was over the header limits.
    Limit,
}

fn is_proxy_failure<B>(resp: &Response<B>) -> bool {
    matches!(
        resp.status(),
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
    ) && resp
        .headers()
        .get(ERROR_HEADER)
        .is_some_and(|v| v == ERROR_UNAVAILABLE)
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
}
