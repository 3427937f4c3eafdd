//! Attempts: a routed request sent to endpoints the locality-aware balancer
//! picks, and sent again when the destination's Retry policy
//! (`resilience.rs`, with defaults) says so and it is safe: a failed
//! connect sent nothing and is retried for any request; anything else only
//! for a request that may be repeated (GET/HEAD/OPTIONS/TRACE without a
//! body, a method the policy lists as idempotent, or one the caller marks
//! `x-tern-idempotent`; bodies of the last two are buffered). Each
//! attempt's outcome is typed ([`Failure`]) and decides whether the
//! endpoint is ejected, whether another attempt is made, and where: after
//! `attemptsPerLocality` failures in one locality, the next attempt goes to
//! the next. Retries wait an exponential backoff with jitter and draw on
//! the destination's retry budget.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Response, StatusCode, Version};
use http_body_util::{Either, Full};
use model::policy::retry::Condition;

use crate::balance::{Cluster, Endpoint};
use crate::connect::MeshConnector;
use crate::metrics::ReasonLabel;
use crate::outlier::{self, Outcome};
use crate::pool::{Pool, PoolError};
use crate::protocol::Protocol;
use crate::proxy::{
    empty, error_chain, error_response, mesh_request, Body, Proxy, ERROR_HEADER, ERROR_UNAVAILABLE,
};
use crate::resilience::{grpc_status, Resilience};
use crate::traffic::Served;
use common::traffic::Decision;

/// How an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made: nothing was sent.
    Connect,
    /// The connection broke during the exchange.
    Connection,
    /// No answer within the per-try timeout.
    Timeout,
    /// The answer's head was over the header limits.
    Limit,
    /// A mesh proxy on the way could not deliver (`x-tern-error: proxy`).
    Unavailable,
    /// The destination answered with a status the policy retries.
    Answer,
}

impl Failure {
    fn of(e: &PoolError) -> Self {
        if e.is_connect() {
            Failure::Connect
        } else if e.head_too_large() {
            Failure::Limit
        } else {
            Failure::Connection
        }
    }

    /// Whether the endpoint is at fault (it is ejected for a while). An
    /// answer is not: the endpoint works, and outlier detection judges its
    /// answers.
    pub fn ejects(self) -> bool {
        !matches!(self, Failure::Limit | Failure::Answer)
    }

    /// The Retry condition that covers this failure.
    pub fn condition(self) -> Option<Condition> {
        match self {
            Failure::Connect => Some(Condition::ConnectFailure),
            Failure::Connection => Some(Condition::Reset),
            Failure::Timeout => Some(Condition::Timeout),
            Failure::Unavailable => Some(Condition::Unavailable),
            // Covered by the status lists and conditions themselves.
            Failure::Answer => None,
            Failure::Limit => None,
        }
    }

    /// Whether a pooled connection that closed under the request is tried
    /// again on the same endpoint over a new connection: only for a request
    /// that may be repeated, and only if the Retry policy retries resets
    /// (`on` without `reset` means no such attempt either).
    pub fn resends_to_same_endpoint(self, idempotent: bool, policy: &Resilience) -> bool {
        self == Failure::Connection && idempotent && policy.retries_on(Condition::Reset)
    }

    /// Whether another attempt may follow: a failed connect sent nothing;
    /// anything else only for a request that may be repeated.
    pub fn retryable(self, idempotent: bool) -> bool {
        match self {
            Failure::Limit => false,
            Failure::Connect => true,
            _ => idempotent,
        }
    }
}

/// A request ready for attempts: its head, and a body that is either
/// buffered (replayable) or streamed once.
pub struct Outgoing<'a> {
    pub parts: &'a http::request::Parts,
    pub path: PathAndQuery,
    pub replay: Option<Bytes>,
    pub body: Option<Body>,
    pub bodyless: bool,
    /// Safe to send again (idempotent, or marked so).
    pub retryable: bool,
    /// The request's ring-hash key, when the destination hashes.
    pub key: Option<u64>,
}

impl Proxy {
    /// The client and HTTP version for a cluster's protocol.
    pub(crate) fn upstream_for(&self, protocol: Protocol) -> (&Pool<MeshConnector>, Version) {
        match protocol {
            Protocol::Http2 => (&self.upstream_h2, Version::HTTP_2),
            _ => (&self.upstream_h1, Version::HTTP_11),
        }
    }

    /// Send `req` to endpoints of `cluster` until one answers or the
    /// attempts are used up. The caller bounds the whole by the request
    /// timeout.
    pub(crate) async fn attempts(
        &self,
        service: &str,
        cluster: &Arc<Cluster>,
        mut req: Outgoing<'_>,
        served: &mut Served,
    ) -> Response<Body> {
        served.cluster = Some(cluster.clone());
        let (client, version) = self.upstream_for(cluster.protocol);
        let policy = &cluster.resilience;
        let _place = match self.admit(service, cluster, served).await {
            Ok(p) => p,
            Err(refused) => return refused,
        };
        policy.budget.deposit(Instant::now());
        let mut _retry_slot = None;
        // Allocated only when an attempt fails.
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut min_tier = 0;
        let mut failed_in_tier = 0;
        let mut last_err = String::new();
        // The last answer a retry was tried for: returned if none follows.
        let mut last_answer: Option<Response<hyper::body::Incoming>> = None;
        // Set when a connection died under an idempotent request: the next
        // attempt goes to the same endpoint over a new connection.
        let mut again: Option<(Arc<Endpoint>, usize)> = None;
        let mut same_endpoint_retried = false;
        for attempt in 0..policy.attempts {
            let same_endpoint = again.is_some();
            // Once every endpoint has failed once, any may be tried again
            // (a flaky one may answer the next time).
            let Some((ep, tier)) = again
                .take()
                .or_else(|| cluster.pick_keyed(&tried, min_tier, req.key))
                .or_else(|| cluster.pick(&[], 0))
            else {
                break;
            };
            let b = match (&req.replay, req.body.take()) {
                (Some(bytes), _) => Either::Right(Full::new(bytes.clone())),
                (None, Some(b)) => b,
                (None, None) if req.bodyless => empty(),
                (None, None) => break,
            };
            if attempt > 0 {
                _retry_slot = policy.limits.retry_slot();
                if _retry_slot.is_none() {
                    served.decided(Decision::CircuitOpen);
                    self.metrics
                        .circuit_open
                        .get_or_create(&ReasonLabel {
                            reason: "max-retries",
                        })
                        .inc();
                    last_err.push_str("; no retry: the destination's maxRetries are in progress");
                    break;
                }
                if !policy.budget.withdraw(Instant::now()) {
                    self.metrics.retries_refused.inc();
                    last_err.push_str("; no retry: the destination's retry budget is spent");
                    break;
                }
                self.metrics.retries.inc();
                served.decided(Decision::Retried);
                // A stale pooled connection is nobody's fault: no wait.
                if !same_endpoint {
                    let wait = policy.backoff(attempt, &self.rng);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            served.endpoint = Some(ep.clone());
            let flow = crate::trace::flow_context(req.parts.headers.get(crate::trace::TRACEPARENT));
            let r = mesh_request(req.parts, &ep.authority, &req.path, version, b);
            let active = ep.start_request();
            // A connection opened for a traced request carries its context
            // to the gateways.
            let body_back = &mut req.body;
            let send = async {
                let sent = match flow {
                    Some(c) => {
                        crate::trace::FLOW_CONTEXT
                            .scope(c, client.try_send(r))
                            .await
                    }
                    None => client.try_send(r).await,
                };
                // No connection: nothing was sent, and the body (even a
                // streamed one) can go to the next endpoint.
                sent.map_err(|u| {
                    if let Some(r) = u.request {
                        *body_back = Some(r.into_body());
                    }
                    u.error
                })
            };
            let res: Result<Response<hyper::body::Incoming>, (Failure, String)> = if req.retryable {
                match tokio::time::timeout(policy.per_try_timeout, send).await {
                    Ok(Err(e)) if e.circuit_open() => {
                        served.decided(Decision::CircuitOpen);
                        return self.circuit_open(service, "max-connections");
                    }
                    Ok(r) => r.map_err(|e| (Failure::of(&e), error_chain(&e))),
                    Err(_) => Err((
                        Failure::Timeout,
                        format!(
                            "no response within the per-try timeout of {:?}",
                            policy.per_try_timeout
                        ),
                    )),
                }
            } else {
                match send.await {
                    Err(e) if e.circuit_open() => {
                        served.decided(Decision::CircuitOpen);
                        return self.circuit_open(service, "max-connections");
                    }
                    r => r.map_err(|e| (Failure::of(&e), error_chain(&e))),
                }
            };
            drop(active);
            let failure = match res {
                // A proxy on the way could not reach the app: for a
                // retryable request that is a failed attempt, not an answer.
                Ok(resp)
                    if req.retryable
                        && policy.retries_on(Condition::Unavailable)
                        && is_proxy_failure(&resp) =>
                {
                    (
                        Failure::Unavailable,
                        format!("{} from the mesh", resp.status()),
                    )
                }
                Ok(resp)
                    if req.retryable
                        && policy.inspects_answers()
                        && policy.retry_status(resp.status(), grpc_status(resp.headers())) =>
                {
                    let msg = format!("answered {}", resp.status());
                    if self.record_outcome(cluster, &ep, Outcome::of(resp.status())) {
                        served.decided(Decision::Ejected);
                    }
                    last_answer = Some(resp);
                    (Failure::Answer, msg)
                }
                Ok(resp) => {
                    if self.record_outcome(cluster, &ep, Outcome::of(resp.status())) {
                        served.decided(Decision::Ejected);
                    }
                    return policy.limit_body(resp);
                }
                Err(f) => f,
            };
            let (kind, msg) = failure;
            if kind == Failure::Limit {
                // The endpoint answered; its answer is over our limits. Not
                // its fault, and a retry would get the same.
                return self.limits.exceeded(&format!("{}'s", ep.authority));
            }
            if kind != Failure::Answer {
                last_answer = None;
            }
            last_err = format!("{}: {msg}", ep.authority);
            tracing::debug!(service, endpoint = %ep.authority, error = %last_err, "attempt failed");
            // A pooled connection closed under the request (the peer
            // restarted, or closed it when trust changed): the endpoint is
            // not at fault. An idempotent request tries it once more over a
            // new connection, if the Retry policy retries resets at all.
            if !same_endpoint_retried && kind.resends_to_same_endpoint(req.retryable, policy) {
                same_endpoint_retried = true;
                again = Some((ep, tier));
                continue;
            }
            if kind.ejects() && self.record_outcome(cluster, &ep, Outcome::Local) {
                served.decided(Decision::Ejected);
            }
            let by_condition = match kind.condition() {
                Some(c) => policy.retries_on(c),
                None => kind == Failure::Answer,
            };
            if !kind.retryable(req.retryable) || !by_condition {
                break;
            }
            tried.push(ep);
            failed_in_tier += 1;
            if failed_in_tier >= policy.attempts_per_locality {
                // Cross-locality retry: the next attempt goes to the next
                // tier.
                min_tier = tier + 1;
                failed_in_tier = 0;
            }
        }
        if let Some(answer) = last_answer {
            return policy.limit_body(answer);
        }
        if last_err.is_empty() {
            // Not one attempt: nothing to send it to.
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "service {service}: no endpoint to send to (none registered, or none its \
                     LoadBalancer failover allows from this zone)"
                ),
            );
        }
        error_response(
            StatusCode::BAD_GATEWAY,
            format!("service {service}: no endpoint answered ({last_err})"),
        )
    }

    /// Feed an attempt's outcome to outlier detection; eject the endpoint
    /// when it trips a threshold.
    /// Whether it ejected the endpoint.
    pub(crate) fn record_outcome(&self, cluster: &Cluster, ep: &Endpoint, o: Outcome) -> bool {
        let settings = &cluster.resilience.outlier;
        if let Some(reason) = ep.outlier().record(o, settings) {
            if outlier::eject(ep, &cluster.endpoints, settings) {
                tracing::info!(service = %cluster.service, endpoint = %ep.authority, reason, "endpoint ejected");
                self.metrics
                    .ejections
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                return true;
            }
        }
        false
    }

    /// A CircuitBreaker limit refused the request: 503, naming the limit.
    /// The circuit breaker: a place among the destination's requests in
    /// progress (until the response head), or the 503 that names the limit.
    pub(crate) async fn admit<'c>(
        &self,
        service: &str,
        cluster: &'c Cluster,
        served: &mut Served,
    ) -> Result<tokio::sync::SemaphorePermit<'c>, Response<Body>> {
        cluster.resilience.limits.admit().await.map_err(|limit| {
            served.decided(Decision::CircuitOpen);
            self.circuit_open(service, limit)
        })
    }

    pub(crate) fn circuit_open(&self, service: &str, limit: &'static str) -> Response<Body> {
        self.metrics
            .circuit_open
            .get_or_create(&ReasonLabel { reason: limit })
            .inc();
        let mut r = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("service {service}: circuit open ({limit} reached; see its CircuitBreaker)"),
        );
        r.headers_mut()
            .insert(CIRCUIT_HEADER, http::HeaderValue::from_static(limit));
        r
    }
}

/// Names the CircuitBreaker limit that refused a request.
pub const CIRCUIT_HEADER: &str = "x-tern-circuit";

pub(crate) fn is_proxy_failure<B>(resp: &Response<B>) -> bool {
    matches!(
        resp.status(),
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
    ) && resp
        .headers()
        .get(ERROR_HEADER)
        .is_some_and(|v| v == ERROR_UNAVAILABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_whether_to_eject_and_whether_to_try_again() {
        // A retried answer: the endpoint works; outlier detection judges it.
        assert!(!Failure::Answer.ejects() && Failure::Answer.retryable(true));
        assert!(!Failure::Answer.retryable(false));
        // A connect failure sent nothing: any request may try elsewhere.
        assert!(Failure::Connect.retryable(false) && Failure::Connect.ejects());
        // Once sent, only an idempotent request is repeated.
        for f in [Failure::Connection, Failure::Timeout, Failure::Unavailable] {
            assert!(!f.retryable(false), "{f:?}");
            assert!(f.retryable(true), "{f:?}");
            assert!(f.ejects(), "{f:?}");
        }
        // An answer over the header limits is nobody's fault and would come
        // back the same.
        assert!(!Failure::Limit.retryable(true) && !Failure::Limit.ejects());
    }

    /// A connection closed under an idempotent request is sent again on
    /// the same endpoint under the default conditions, but not when the
    /// Retry policy's `on` leaves out `reset` (`on: []` or `on: [5xx]`), and
    /// never for a request that may not be repeated.
    #[test]
    fn the_same_endpoint_resend_follows_the_retry_conditions() {
        use crate::resilience::Defaults;
        let with_on = |on: &[&str]| {
            Resilience::build(
                Some(&proto::v1::Resilience {
                    retry: Some(proto::v1::RetryPolicy {
                        on: on.iter().map(|c| c.to_string()).collect(),
                        on_given: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                &Defaults::default(),
            )
            .unwrap()
        };
        let defaults = Resilience::build(None, &Defaults::default()).unwrap();
        assert!(Failure::Connection.resends_to_same_endpoint(true, &defaults));
        assert!(!Failure::Connection.resends_to_same_endpoint(false, &defaults));
        assert!(!Failure::Timeout.resends_to_same_endpoint(true, &defaults));
        assert!(!Failure::Connection.resends_to_same_endpoint(true, &with_on(&[])));
        assert!(!Failure::Connection.resends_to_same_endpoint(true, &with_on(&["5xx"])));
        assert!(Failure::Connection.resends_to_same_endpoint(true, &with_on(&["reset"])));
    }

    #[test]
    fn only_a_proxy_generated_502_or_503_is_a_failed_attempt() {
        let r = |status: u16, h: Option<&str>| {
            let mut r = Response::new(());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(v) = h {
                r.headers_mut().insert(ERROR_HEADER, v.parse().unwrap());
            }
            r
        };
        assert!(is_proxy_failure(&r(503, Some("proxy"))));
        assert!(is_proxy_failure(&r(502, Some("proxy"))));
        assert!(!is_proxy_failure(&r(503, None)), "the app's own 503");
        assert!(!is_proxy_failure(&r(502, Some("limit"))));
        assert!(!is_proxy_failure(&r(403, Some("denied"))));
    }
}
