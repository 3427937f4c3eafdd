//! `Retry`: when a caller's sidecar sends a failed request again, how
//! often, how far apart, and how many retries the destination may take.
//!
//! ```yaml
//! kind: Retry
//! metadata: {name: api-retries}
//! spec:
//!   targetRef: {service: web}          # the callers (omit: every proxy)
//!   to: {service: api}                 # the destination (omit: every one)
//!   http:
//!     attempts: 3                      # in all, the first included
//!     perTryTimeout: 2s
//!     on: [connect-failure, reset, timeout, unavailable, 5xx]
//!     statusCodes: [429]
//!     grpcStatuses: [14]
//!     backoff: {base: 25ms, max: 250ms}
//!     budget: {percent: 20, minPerSecond: 10}
//!     attemptsPerLocality: 1
//!     idempotentMethods: [PUT, DELETE]
//!   tcp:
//!     connectAttempts: 3
//! ```
//!
//! Each field not given is taken from the next policy that applies (the
//! more specific target first; at equal specificity one that names the
//! destination before one that does not), then from the defaults in
//! docs/policies.md. A request is sent again after it reached the
//! destination only when it may be repeated: GET, HEAD, OPTIONS and TRACE
//! without a body, a method listed in `idempotentMethods`, or a request the
//! caller marks `x-tern-idempotent: true`; bodies of the last two are
//! buffered (64 KiB at most). A failed connect sent nothing and is retried
//! for any request.

use serde::{Deserialize, Serialize};

use super::route::{check_method_list, Destination};
use super::{Selector, Targeted};
use crate::resource::{check_name, Dur, FieldError};

/// The most attempts a policy may ask for (the first included).
pub const MAX_ATTEMPTS: u32 = 10;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    #[serde(default)]
    pub target_ref: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRetry>,
}

impl Targeted for RetrySpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

impl super::Destined for RetrySpec {
    fn destination(&self) -> Option<&str> {
        self.to.as_ref().map(|d| d.service.as_str())
    }
}

/// Why an attempt is repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// No connection could be made (nothing was sent).
    ConnectFailure,
    /// The connection broke before the response head arrived.
    Reset,
    /// No response head within the per-try timeout.
    Timeout,
    /// A mesh proxy on the way could not deliver (`x-tern-error: proxy`).
    Unavailable,
    /// The destination answered 502, 503 or 504.
    GatewayError,
    /// The destination answered any 5xx.
    #[serde(rename = "5xx")]
    ServerError,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::ConnectFailure => "connect-failure",
            Condition::Reset => "reset",
            Condition::Timeout => "timeout",
            Condition::Unavailable => "unavailable",
            Condition::GatewayError => "gateway-error",
            Condition::ServerError => "5xx",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "connect-failure" => Condition::ConnectFailure,
            "reset" => Condition::Reset,
            "timeout" => Condition::Timeout,
            "unavailable" => Condition::Unavailable,
            "gateway-error" => Condition::GatewayError,
            "5xx" => Condition::ServerError,
            _ => return None,
        })
    }
}

/// The conditions retried when a policy lists none.
pub const DEFAULT_ON: [Condition; 4] = [
    Condition::ConnectFailure,
    Condition::Reset,
    Condition::Timeout,
    Condition::Unavailable,
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<Condition>>,
    /// Answers with these statuses are retried too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_codes: Option<Vec<u16>>,
    /// gRPC answers with these `grpc-status` values (1-16) are retried too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_statuses: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Attempts made in one locality before the next goes to the next
    /// locality (1: every retry moves on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_per_locality: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent_methods: Option<Vec<String>>,
}

/// Exponential backoff with full jitter: before retry `n` (from 1), a
/// random wait of up to `min(max, base × 2^(n-1))`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    pub base: Dur,
    pub max: Dur,
}

/// Retries allowed over the last 10 s: `percent` of the requests, plus
/// `minPerSecond` each second, so retries cannot multiply an outage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Budget {
    pub percent: f64,
    pub min_per_second: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRetry {
    /// Connection attempts, each to another endpoint, the first included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_attempts: Option<u32>,
}

pub(super) fn range<T: PartialOrd + std::fmt::Display>(
    path: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), FieldError> {
    if v < lo || v > hi {
        return Err(FieldError::new(
            path,
            format!("{v} is out of range; allowed is {lo} to {hi}"),
        ));
    }
    Ok(())
}

/// A duration within `[lo, hi]`.
pub(super) fn check_dur(
    path: &str,
    d: std::time::Duration,
    lo: std::time::Duration,
    hi: std::time::Duration,
) -> Result<(), FieldError> {
    if d < lo || d > hi {
        return Err(FieldError::new(
            path,
            format!(
                "{} is out of range; allowed is {} to {}",
                humantime::format_duration(d),
                humantime::format_duration(lo),
                humantime::format_duration(hi)
            ),
        ));
    }
    Ok(())
}

const MS: std::time::Duration = std::time::Duration::from_millis(1);
const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

impl RetrySpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        if let Some(to) = &self.to {
            check_name("spec.to.service", &to.service)?;
        }
        if self.http.is_none() && self.tcp.is_none() {
            return Err(FieldError::new("spec", "give http, tcp or both"));
        }
        if let Some(h) = &self.http {
            let p = "spec.http";
            if let Some(a) = h.attempts {
                range(&format!("{p}.attempts"), a, 1, MAX_ATTEMPTS)?;
            }
            if let Some(t) = &h.per_try_timeout {
                check_dur(&format!("{p}.perTryTimeout"), t.0, MS, HOUR)?;
            }
            if let Some(on) = &h.on {
                let mut seen = std::collections::HashSet::new();
                for (i, c) in on.iter().enumerate() {
                    if !seen.insert(c) {
                        return Err(FieldError::new(
                            format!("{p}.on[{i}]"),
                            format!("{} is listed twice", c.as_str()),
                        ));
                    }
                }
            }
            for (i, s) in h.status_codes.iter().flatten().enumerate() {
                range(&format!("{p}.statusCodes[{i}]"), *s, 100, 599)?;
            }
            for (i, s) in h.grpc_statuses.iter().flatten().enumerate() {
                range(&format!("{p}.grpcStatuses[{i}]"), *s, 1, 16)?;
            }
            if h.status_codes.as_ref().is_some_and(|v| v.len() > 32)
                || h.grpc_statuses.as_ref().is_some_and(|v| v.len() > 16)
            {
                return Err(FieldError::new(
                    p,
                    "list at most 32 statusCodes and 16 grpcStatuses",
                ));
            }
            if let Some(b) = &h.backoff {
                check_dur(&format!("{p}.backoff.base"), b.base.0, MS, HOUR)?;
                check_dur(&format!("{p}.backoff.max"), b.max.0, b.base.0, HOUR)?;
            }
            if let Some(b) = &h.budget {
                if !(b.percent >= 0.0 && b.percent <= 1000.0) {
                    return Err(FieldError::new(
                        format!("{p}.budget.percent"),
                        format!("{} is out of range; allowed is 0 to 1000", b.percent),
                    ));
                }
                range(
                    &format!("{p}.budget.minPerSecond"),
                    b.min_per_second,
                    0,
                    1_000_000,
                )?;
            }
            if let Some(n) = h.attempts_per_locality {
                range(&format!("{p}.attemptsPerLocality"), n, 1, MAX_ATTEMPTS)?;
            }
            if let Some(m) = &h.idempotent_methods {
                check_method_list(&format!("{p}.idempotentMethods"), m)?;
            }
        }
        if let Some(n) = self.tcp.as_ref().and_then(|t| t.connect_attempts) {
            range("spec.tcp.connectAttempts", n, 1, MAX_ATTEMPTS)?;
        }
        Ok(())
    }
}
