//! HTTP/1.1 upgrades (WebSocket and others) on the HTTP listeners.
//!
//! Outbound, an upgrade request goes to the destination over an HTTP/1.1
//! mesh connection (every HTTP inbound accepts HTTP/1.1, whatever the app
//! speaks), keeping `Connection: upgrade` and `Upgrade`. Inbound, it goes
//! to the app the same way, with the verified caller identity. Once the
//! answer is `101 Switching Protocols`, each side splices the two upgraded
//! connections; inbound, the splice is cut when the caller stops being
//! trusted, as any opaque connection is. Outbound, an upgrade is routed
//! as any request (`outbound.rs` applies the route's redirect, header
//! changes, rewrite, backends and timeout) and takes a place in the
//! destination's circuit breaker; only a failed connect is retried
//! elsewhere: once sent, an upgrade is not idempotent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::rustls::pki_types::CertificateDer;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::balance::{Cluster, Endpoint};
use crate::outlier::Outcome;
use crate::protocol::Protocol;
use crate::proxy::{
    app_uri, empty, error_chain, error_response, mesh_request, path_of, strip_hop_by_hop, Body,
    Proxy, CLIENT_ID_HEADER, ERROR_HEADER,
};
use crate::traffic::{Counts, Served};
use common::traffic::Decision;

/// An HTTP/1.1 request asking to switch protocols: `Connection: upgrade`
/// and an `Upgrade` header. (HTTP/2 has no such request.)
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Hop-by-hop headers removed, then the upgrade asked for put back.
fn upgrade_headers(h: &mut HeaderMap) {
    let upgrade = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(h);
    if let Some(u) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
}

/// Copy between two upgraded connections until either side closes,
/// nothing moves for `idle`, or `lifetime` (when set) has passed. `a` is
/// the side that asked for the upgrade: its bytes count as sent in the
/// peer pair's `counts`, the other side's as received.
async fn splice(
    a: OnUpgrade,
    b: OnUpgrade,
    idle: Duration,
    lifetime: Option<Duration>,
    counts: Arc<Counts>,
) {
    match tokio::join!(a, b) {
        (Ok(a), Ok(b)) => {
            let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
            let (sent, received) = ([&counts.sent], [&counts.received]);
            let copy =
                common::splice::copy_bidirectional_metered(&mut a, &mut b, idle, &sent, &received);
            if let Err(e) = crate::stream_limit::within_lifetime(lifetime, copy).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        (a, b) => {
            let e = a.err().or(b.err()).map(|e| error_chain(&e));
            tracing::debug!(error = ?e, "an upgrade did not complete");
        }
    }
}

/// An upgrade request on its way out, once routed: its head (the route's
/// header changes and rewrite applied), its body, the caller's side of the
/// upgrade, and the limit on its answer's head.
pub(crate) struct OutgoingUpgrade {
    pub parts: http::request::Parts,
    pub body: Incoming,
    pub from_app: OnUpgrade,
    /// The route's timeout or the destination's request timeout, and how
    /// to name it in a 504.
    pub limit: Option<(Duration, String)>,
}

/// Prepare an upgrade request's headers for the mesh hop: hop-by-hop
/// headers removed except the upgrade asked for, no forged caller identity.
pub(crate) fn outbound_headers(h: &mut HeaderMap) {
    upgrade_headers(h);
    h.remove(CLIENT_ID_HEADER);
}

impl Proxy {
    /// Outbound: carry a routed upgrade request to an endpoint of
    /// `cluster`. It takes a place in the destination's circuit breaker
    /// until its answer's head, as any request does; a failed connect
    /// goes to another endpoint with the body (nothing was sent); once
    /// sent, an upgrade is not retried.
    pub(crate) async fn outbound_upgrade(
        &self,
        service: &str,
        cluster: &Arc<Cluster>,
        up: OutgoingUpgrade,
        served: &mut Served,
    ) -> Response<Body> {
        served.cluster = Some(cluster.clone());
        let policy = &cluster.resilience;
        let _place = match self.admit(service, cluster, served).await {
            Ok(p) => p,
            Err(refused) => return refused,
        };
        let OutgoingUpgrade {
            parts,
            body,
            from_app,
            limit,
        } = up;
        let path = path_of(&parts.uri);
        let bodyless = body.is_end_stream();
        let mut body = Some(crate::proxy::passed(body));
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut last_err = String::new();
        // Only failed connects are retried (nothing was sent).
        for _ in 0..policy.tcp_connect_attempts {
            let Some((ep, _)) = cluster.pick(&tried, 0) else {
                break;
            };
            let b = match body.take() {
                Some(b) => b,
                None if bodyless => empty(),
                None => break,
            };
            served.endpoint = Some(ep.clone());
            let r = mesh_request(&parts, &ep.authority, &path, Version::HTTP_11, b);
            let active = ep.start_request();
            let send = self.upstream_h1.try_send(r);
            let answer = match &limit {
                Some((limit, _)) => tokio::time::timeout(*limit, send).await.ok(),
                None => Some(send.await),
            };
            drop(active);
            let Some(answer) = answer else {
                let whose = limit.map(|(_, w)| w).unwrap_or_default();
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "service {service}: {} did not answer the upgrade within {whose}",
                        ep.authority
                    ),
                );
            };
            match answer {
                Ok(mut resp) => {
                    self.record_outcome(cluster, &ep, Outcome::of(resp.status()));
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let to_mesh = hyper::upgrade::on(&mut resp);
                        let idle = policy.tcp_idle.unwrap_or(Duration::MAX);
                        let counts = self.shared.traffic.peer(
                            crate::metrics::Direction::Outbound,
                            &cluster.service,
                            &ep.zone,
                        );
                        tokio::spawn(splice(
                            from_app,
                            to_mesh,
                            idle,
                            policy.stream_duration,
                            counts,
                        ));
                    }
                    return resp.map(crate::proxy::passed);
                }
                Err(unsent) => {
                    if unsent.error.circuit_open() {
                        served.decided(Decision::CircuitOpen);
                        return self.circuit_open(service, "max-connections");
                    }
                    last_err = format!("{}: {}", ep.authority, error_chain(&unsent.error));
                    let Some(r) = unsent.request else {
                        // Sent, or partly: not repeated.
                        break;
                    };
                    body = Some(r.into_body());
                    self.metrics.upstream_connect_errors.inc();
                    self.record_outcome(cluster, &ep, Outcome::Local);
                    tried.push(ep);
                }
            }
        }
        error_response(
            StatusCode::BAD_GATEWAY,
            format!("service {service}: no endpoint took the upgrade ({last_err})"),
        )
    }

    /// Inbound: hand an upgrade request to the app, and splice the
    /// connections once it switches (cut when the caller is distrusted).
    pub(crate) async fn inbound_upgrade(
        &self,
        app: SocketAddr,
        peer: Option<HeaderValue>,
        chain: Arc<[CertificateDer<'static>]>,
        counts: Arc<Counts>,
        mut req: Request<Incoming>,
    ) -> Response<Body> {
        if self.app_protocol == Protocol::Http2 {
            return error_response(
                StatusCode::NOT_IMPLEMENTED,
                "this app is declared HTTP/2, which has no Upgrade; declare it http to upgrade"
                    .into(),
            );
        }
        let from_caller = hyper::upgrade::on(&mut req);
        let (mut parts, body) = req.into_parts();
        upgrade_headers(&mut parts.headers);
        match peer {
            Some(p) => parts.headers.insert(CLIENT_ID_HEADER, p),
            None => parts.headers.remove(CLIENT_ID_HEADER),
        };
        parts.uri = app_uri(&self.app_authority, &parts.uri);
        parts.version = Version::HTTP_11;
        let req = Request::from_parts(parts, crate::proxy::passed(body));
        let Ok(answer) = self.within_request_timeout(self.app.send(req)).await else {
            return error_response(
                StatusCode::GATEWAY_TIMEOUT,
                format!("local app at {app} did not answer the upgrade in time"),
            );
        };
        match answer {
            Ok(mut resp) => {
                resp.headers_mut().remove(ERROR_HEADER);
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let to_app = hyper::upgrade::on(&mut resp);
                    let live = self.shared.live.clone();
                    let idle = self.tcp_idle;
                    tokio::spawn(async move {
                        if let Err(why) = live
                            .while_trusted(
                                chain,
                                splice(from_caller, to_app, idle, None, counts),
                                || {},
                            )
                            .await
                        {
                            tracing::warn!(reason = %why, "closed an upgraded inbound connection: its peer is no longer trusted");
                        }
                    });
                }
                resp.map(crate::proxy::passed)
            }
            Err(e) => error_response(
                StatusCode::BAD_GATEWAY,
                format!("local app at {app}: {}", error_chain(&e)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_are_recognized_and_their_headers_kept() {
        let req = |conn: &str, v: Version| {
            Request::builder()
                .version(v)
                .header("connection", conn)
                .header("upgrade", "websocket")
                .body(())
                .unwrap()
        };
        assert!(is_upgrade(&req("keep-alive, Upgrade", Version::HTTP_11)));
        assert!(!is_upgrade(&req("keep-alive", Version::HTTP_11)));
        assert!(!is_upgrade(&req("upgrade", Version::HTTP_2)));
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade, x-hop".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("sec-websocket-key", "k".parse().unwrap());
        upgrade_headers(&mut h);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert!(h.contains_key("sec-websocket-key"));
        assert!(!h.contains_key("x-hop"));
    }
}
