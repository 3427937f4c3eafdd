//! What a destination's `Retry`, `Timeout`, `CircuitBreaker` and
//! `LoadBalancer` policies compile to in this proxy, with the documented
//! defaults for what they leave out. One value per destination, kept across
//! config updates that leave it unchanged, so the state it holds survives:
//! the retry budget (`budget.rs`) and the circuit breaker's counts
//! (`breaker.rs`). The attempts are in `retry.rs`, outlier detection in
//! `outlier.rs`, the choice of endpoint in `choose.rs`.

use std::time::Duration;

use http::{Method, StatusCode};
use model::policy::retry::{Condition, DEFAULT_ON};
use proto::v1 as pb;

use crate::balance::Rng;
use crate::breaker::Limits;
pub use crate::budget::Budget;

/// Defaults that come from the sidecar's flags.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Defaults {
    pub per_try_timeout: Duration,
    /// `None`: the flag asked for no limit (`--request-timeout 0`).
    pub request_timeout: Option<Duration>,
    pub tcp_idle: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            per_try_timeout: Duration::from_secs(10),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            tcp_idle: Duration::from_secs(3600),
        }
    }
}

pub const DEFAULT_ATTEMPTS: u32 = 3;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;

/// Everything the data path needs to know about calls to one destination.
#[derive(Debug)]
pub struct Resilience {
    pub attempts: u32,
    pub per_try_timeout: Duration,
    /// Which conditions are retried, as a bit set of [`Condition`]s.
    on: u8,
    pub status_codes: Vec<u16>,
    pub grpc_statuses: Vec<u32>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub attempts_per_locality: u32,
    pub idempotent_methods: Vec<Method>,
    pub tcp_connect_attempts: u32,
    pub connect_timeout: Duration,
    /// Until the response head, across all attempts; `None`: no limit.
    pub request_timeout: Option<Duration>,
    /// A TCP flow with nothing moving either way; `None`: no limit.
    pub tcp_idle: Option<Duration>,
    /// A TCP flow's whole life, and an HTTP response body's; `None`: no
    /// limit.
    pub stream_duration: Option<Duration>,
    /// An HTTP response body with no data for this long is cut; only when
    /// a policy sets `idle`.
    pub http_idle: Option<Duration>,
    pub budget: Budget,
    pub outlier: crate::outlier::Settings,
    pub limits: Limits,
    pub algorithm: crate::choose::Algorithm,
    pub hash: HashKey,
    /// Spill-over between locality tiers (Envoy's overprovisioning factor).
    pub overprovisioning: f64,
}

/// What a ring hash hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    None,
    Header(http::HeaderName),
    Cookie(String),
    /// The caller's own identity.
    Source,
}

impl HashKey {
    /// The request's key, if it has one. `source`: this proxy's identity.
    pub fn of(&self, h: &http::HeaderMap, source: Option<&str>) -> Option<u64> {
        let v = match self {
            HashKey::None => return None,
            HashKey::Header(n) => h.get(n)?.to_str().ok()?.to_string(),
            HashKey::Cookie(name) => h
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then(|| v.to_string())
                })?,
            HashKey::Source => source?.to_string(),
        };
        Some(crate::choose::hash_str(&v))
    }
}

fn bit(c: Condition) -> u8 {
    1 << (c as u8)
}

fn ms_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

/// A limit that may be infinite: given, infinite, or the default.
fn limit(ms: u64, infinite: bool, default: Option<Duration>) -> Option<Duration> {
    match (ms, infinite) {
        (_, true) => None,
        (0, false) => default,
        (ms, false) => Some(Duration::from_millis(ms)),
    }
}

impl Resilience {
    pub fn build(p: Option<&pb::Resilience>, d: &Defaults) -> Result<Self, String> {
        let none = pb::RetryPolicy::default();
        let r = p.and_then(|p| p.retry.as_ref()).unwrap_or(&none);
        let no_t = pb::Timeouts::default();
        let t = p.and_then(|p| p.timeouts.as_ref()).unwrap_or(&no_t);
        let no_lb = pb::LoadBalancer::default();
        let lb = p.and_then(|p| p.balancer.as_ref()).unwrap_or(&no_lb);
        let no_b = pb::CircuitBreaker::default();
        let b = p.and_then(|p| p.breaker.as_ref()).unwrap_or(&no_b);
        let on = if r.on_given {
            let mut bits = 0;
            for name in &r.on {
                let c = Condition::parse(name)
                    .ok_or_else(|| format!("unknown retry condition {name:?}"))?;
                bits |= bit(c);
            }
            bits
        } else {
            DEFAULT_ON.iter().fold(0, |b, c| b | bit(*c))
        };
        let idempotent_methods = r
            .idempotent_methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("bad method {m:?}")))
            .collect::<Result<_, _>>()?;
        let (percent, min_per_second) = if r.budget_given {
            (r.budget_percent, r.budget_min_per_second)
        } else {
            (DEFAULT_BUDGET_PERCENT, DEFAULT_BUDGET_MIN_PER_SECOND)
        };
        let backoff_base = ms_or(r.backoff_base_ms, DEFAULT_BACKOFF_BASE);
        Ok(Self {
            attempts: if r.attempts == 0 {
                DEFAULT_ATTEMPTS
            } else {
                r.attempts
            },
            per_try_timeout: ms_or(r.per_try_timeout_ms, d.per_try_timeout),
            on,
            status_codes: r.status_codes.iter().map(|s| *s as u16).collect(),
            grpc_statuses: r.grpc_statuses.clone(),
            backoff_base,
            backoff_max: ms_or(r.backoff_max_ms, DEFAULT_BACKOFF_MAX.max(backoff_base)),
            attempts_per_locality: r.attempts_per_locality.max(1),
            idempotent_methods,
            tcp_connect_attempts: if r.tcp_connect_attempts == 0 {
                DEFAULT_ATTEMPTS
            } else {
                r.tcp_connect_attempts
            },
            connect_timeout: ms_or(t.connect_ms, DEFAULT_CONNECT_TIMEOUT),
            request_timeout: limit(t.request_ms, t.request_infinite, d.request_timeout),
            tcp_idle: limit(t.idle_ms, t.idle_infinite, Some(d.tcp_idle)),
            stream_duration: limit(t.stream_ms, t.stream_infinite, None),
            http_idle: limit(t.idle_ms, t.idle_infinite, None),
            budget: Budget::new(percent, min_per_second),
            outlier: outlier_settings(b),
            limits: Limits::new(b),
            algorithm: crate::choose::Algorithm::parse(&lb.algorithm)?,
            hash: if !lb.hash_header.is_empty() {
                HashKey::Header(
                    http::HeaderName::from_bytes(lb.hash_header.as_bytes())
                        .map_err(|_| format!("bad hash header {:?}", lb.hash_header))?,
                )
            } else if !lb.hash_cookie.is_empty() {
                HashKey::Cookie(lb.hash_cookie.clone())
            } else if lb.hash_source {
                HashKey::Source
            } else {
                HashKey::None
            },
            overprovisioning: if lb.overprovisioning >= 1.0 {
                lb.overprovisioning
            } else {
                crate::balance::OVERPROVISIONING
            },
        })
    }

    /// The same settings as `self` (budget state aside).
    pub fn same_settings(&self, o: &Resilience) -> bool {
        self.attempts == o.attempts
            && self.per_try_timeout == o.per_try_timeout
            && self.on == o.on
            && self.status_codes == o.status_codes
            && self.grpc_statuses == o.grpc_statuses
            && self.backoff_base == o.backoff_base
            && self.backoff_max == o.backoff_max
            && self.attempts_per_locality == o.attempts_per_locality
            && self.idempotent_methods == o.idempotent_methods
            && self.tcp_connect_attempts == o.tcp_connect_attempts
            && self.connect_timeout == o.connect_timeout
            && self.request_timeout == o.request_timeout
            && self.tcp_idle == o.tcp_idle
            && self.stream_duration == o.stream_duration
            && self.http_idle == o.http_idle
            && self.budget.percent == o.budget.percent
            && self.budget.min_per_second == o.budget.min_per_second
            && self.outlier == o.outlier
            && self.limits.same(&o.limits)
            && self.algorithm == o.algorithm
            && self.hash == o.hash
            && self.overprovisioning == o.overprovisioning
    }

    /// An answer passed to the caller, its body under the stream limits.
    pub fn limit_body(
        &self,
        resp: http::Response<hyper::body::Incoming>,
    ) -> http::Response<crate::proxy::Body> {
        resp.map(|b| {
            http_body_util::Either::Left(crate::stream_limit::Limited::new(
                b,
                self.http_idle,
                self.stream_duration,
            ))
        })
    }
}

fn outlier_settings(b: &pb::CircuitBreaker) -> crate::outlier::Settings {
    let d = crate::outlier::Settings::default();
    let base = ms_or(b.base_ejection_ms, d.base_ejection);
    crate::outlier::Settings {
        interval: ms_or(b.interval_ms, d.interval),
        consecutive_5xx: if b.consecutive_5xx_given {
            b.consecutive_5xx
        } else {
            d.consecutive_5xx
        },
        consecutive_gateway: if b.consecutive_gateway_given {
            b.consecutive_gateway
        } else {
            d.consecutive_gateway
        },
        consecutive_local: if b.consecutive_local_given {
            b.consecutive_local
        } else {
            d.consecutive_local
        },
        success_rate: b.success_rate_given.then_some((
            b.success_rate_minimum_hosts,
            b.success_rate_request_volume,
            b.success_rate_stdev_factor,
        )),
        base_ejection: base,
        max_ejection: ms_or(b.max_ejection_ms, d.max_ejection.max(base)),
        max_ejection_percent: if b.max_ejection_percent_given {
            b.max_ejection_percent
        } else {
            d.max_ejection_percent
        },
    }
}

impl Resilience {
    /// The effective settings, for /config_dump.
    pub fn dump(&self) -> serde_json::Value {
        let d = |d: Option<Duration>| match d {
            Some(d) => humantime::format_duration(d).to_string(),
            None => "infinite".into(),
        };
        let on: Vec<&str> = [
            Condition::ConnectFailure,
            Condition::Reset,
            Condition::Timeout,
            Condition::Unavailable,
            Condition::GatewayError,
            Condition::ServerError,
        ]
        .into_iter()
        .filter(|c| self.retries_on(*c))
        .map(Condition::as_str)
        .collect();
        serde_json::json!({
            "attempts": self.attempts,
            "perTryTimeout": d(Some(self.per_try_timeout)),
            "on": on,
            "statusCodes": self.status_codes,
            "grpcStatuses": self.grpc_statuses,
            "backoff": {"base": d(Some(self.backoff_base)), "max": d(Some(self.backoff_max))},
            "budget": {"percent": self.budget.percent, "minPerSecond": self.budget.min_per_second},
            "attemptsPerLocality": self.attempts_per_locality,
            "idempotentMethods": self.idempotent_methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            "tcpConnectAttempts": self.tcp_connect_attempts,
            "connectTimeout": d(Some(self.connect_timeout)),
            "requestTimeout": d(self.request_timeout),
            "idleTimeout": d(self.tcp_idle),
            "httpIdleTimeout": d(self.http_idle),
            "streamDuration": d(self.stream_duration),
            "loadBalancer": {
                "algorithm": self.algorithm.as_str(),
                "hash": match &self.hash {
                    HashKey::None => serde_json::Value::Null,
                    HashKey::Header(h) => serde_json::json!({"header": h.as_str()}),
                    HashKey::Cookie(c) => serde_json::json!({"cookie": c}),
                    HashKey::Source => serde_json::json!({"source": true}),
                },
                "overprovisioningFactor": self.overprovisioning,
            },
            "limits": {
                "maxConnections": self.limits.max_connections,
                "maxRequests": self.limits.max_requests,
                "maxPendingRequests": self.limits.max_pending,
                "maxRetries": self.limits.max_retries,
                "openConnections": self.limits.open_connections(),
                "requestsInFlight": self.limits.in_flight(),
            },
            "outlierDetection": {
                "interval": d(Some(self.outlier.interval)),
                "consecutive5xx": self.outlier.consecutive_5xx,
                "consecutiveGatewayErrors": self.outlier.consecutive_gateway,
                "consecutiveLocalFailures": self.outlier.consecutive_local,
                "successRate": self.outlier.success_rate.map(|(h, v, f)| serde_json::json!({"minimumHosts": h, "requestVolume": v, "stdevFactor": f})),
                "baseEjectionTime": d(Some(self.outlier.base_ejection)),
                "maxEjectionTime": d(Some(self.outlier.max_ejection)),
                "maxEjectionPercent": self.outlier.max_ejection_percent,
            },
        })
    }

    pub fn retries_on(&self, c: Condition) -> bool {
        self.on & bit(c) != 0
    }

    /// Whether an answer is a failed attempt under these conditions.
    pub fn retry_status(&self, status: StatusCode, grpc_status: Option<u32>) -> bool {
        let s = status.as_u16();
        (self.retries_on(Condition::ServerError) && status.is_server_error())
            || (self.retries_on(Condition::GatewayError) && matches!(s, 502..=504))
            || self.status_codes.contains(&s)
            || grpc_status.is_some_and(|g| self.grpc_statuses.contains(&g))
    }

    /// Whether answers must be looked at for a retry (else an answer is
    /// always returned as it is).
    pub fn inspects_answers(&self) -> bool {
        self.retries_on(Condition::ServerError)
            || self.retries_on(Condition::GatewayError)
            || !self.status_codes.is_empty()
            || !self.grpc_statuses.is_empty()
    }

    /// The wait before retry `n` (from 1): full jitter, up to
    /// `min(max, base × 2^(n-1))`.
    pub fn backoff(&self, n: u32, rng: &Rng) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(20))
            .min(self.backoff_max);
        cap.mul_f64(rng.unit())
    }
}

/// The `grpc-status` of a trailers-only gRPC answer (an error the server
/// gave before any message), read from the head.
pub fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(r: pb::RetryPolicy, t: pb::Timeouts) -> Resilience {
        Resilience::build(
            Some(&pb::Resilience {
                retry: Some(r),
                timeouts: Some(t),
                breaker: None,
                balancer: None,
            }),
            &Defaults::default(),
        )
        .unwrap()
    }

    #[test]
    fn unset_fields_take_the_documented_defaults() {
        let r = Resilience::build(None, &Defaults::default()).unwrap();
        assert_eq!(r.attempts, 3);
        assert_eq!(r.per_try_timeout, Duration::from_secs(10));
        assert_eq!(r.connect_timeout, Duration::from_secs(5));
        assert_eq!(r.request_timeout, Some(Duration::from_secs(15)));
        assert_eq!(r.tcp_idle, Some(Duration::from_secs(3600)));
        assert_eq!(r.stream_duration, None);
        for c in DEFAULT_ON {
            assert!(r.retries_on(c), "{c:?}");
        }
        assert!(!r.retries_on(Condition::ServerError));
        assert!(!r.inspects_answers());
        assert_eq!((r.budget.percent, r.budget.min_per_second), (20.0, 10));
    }

    #[test]
    fn infinite_must_be_asked_for_and_zero_means_the_default() {
        let r = built(
            pb::RetryPolicy::default(),
            pb::Timeouts {
                request_infinite: true,
                idle_ms: 2000,
                ..Default::default()
            },
        );
        assert_eq!(r.request_timeout, None);
        assert_eq!(r.tcp_idle, Some(Duration::from_secs(2)));
        let r = built(pb::RetryPolicy::default(), pb::Timeouts::default());
        assert_eq!(r.request_timeout, Some(DEFAULT_REQUEST_TIMEOUT));
    }

    #[test]
    fn listed_conditions_replace_the_default_ones_and_statuses_add_to_them() {
        let r = built(
            pb::RetryPolicy {
                on: vec!["5xx".into()],
                on_given: true,
                status_codes: vec![429],
                grpc_statuses: vec![14],
                ..Default::default()
            },
            pb::Timeouts::default(),
        );
        assert!(r.retries_on(Condition::ServerError));
        assert!(!r.retries_on(Condition::ConnectFailure));
        assert!(r.retry_status(StatusCode::INTERNAL_SERVER_ERROR, None));
        assert!(r.retry_status(StatusCode::TOO_MANY_REQUESTS, None));
        assert!(!r.retry_status(StatusCode::NOT_FOUND, None));
        assert!(r.retry_status(StatusCode::OK, Some(14)));
        assert!(!r.retry_status(StatusCode::OK, Some(5)));
        let gw = built(
            pb::RetryPolicy {
                on: vec!["gateway-error".into()],
                on_given: true,
                ..Default::default()
            },
            pb::Timeouts::default(),
        );
        assert!(gw.retry_status(StatusCode::SERVICE_UNAVAILABLE, None));
        assert!(!gw.retry_status(StatusCode::INTERNAL_SERVER_ERROR, None));
        // An empty list given retries nothing, not the defaults.
        let none = built(
            pb::RetryPolicy {
                on_given: true,
                ..Default::default()
            },
            pb::Timeouts::default(),
        );
        assert!(DEFAULT_ON.iter().all(|c| !none.retries_on(*c)));
    }

    /// Full jitter: every wait is within [0, min(max, base·2^(n-1))], and
    /// the waits spread over that range (not all at one end).
    #[test]
    fn backoff_grows_exponentially_with_full_jitter_up_to_the_cap() {
        let r = built(
            pb::RetryPolicy {
                backoff_base_ms: 10,
                backoff_max_ms: 50,
                ..Default::default()
            },
            pb::Timeouts::default(),
        );
        let rng = Rng::new();
        for (n, cap) in [(1, 10), (2, 20), (3, 40), (4, 50), (9, 50), (40, 50)] {
            let waits: Vec<Duration> = (0..2000).map(|_| r.backoff(n, &rng)).collect();
            let cap = Duration::from_millis(cap);
            assert!(waits.iter().all(|w| *w <= cap), "retry {n}");
            let below_half = waits.iter().filter(|w| **w < cap / 2).count();
            assert!(
                (800..1200).contains(&below_half),
                "retry {n}: {below_half} of 2000 waits below half the cap"
            );
        }
    }
}
