//! `CircuitBreaker`: how much a caller's sidecar sends a destination at
//! once, and when it stops sending to an instance that fails (outlier
//! detection).
//!
//! ```yaml
//! kind: CircuitBreaker
//! metadata: {name: api-breaker}
//! spec:
//!   targetRef: {service: web}          # the callers (omit: every proxy)
//!   to: {service: api}                 # the destination (omit: every one)
//!   limits:
//!     maxConnections: 100              # open to the destination's endpoints
//!     maxRequests: 200                 # waiting for their response head
//!     maxPendingRequests: 50           # queued for one of those places
//!     maxRetries: 20                   # retries in progress
//!   outlierDetection:
//!     interval: 10s
//!     consecutive5xx: 5
//!     consecutiveGatewayErrors: 3
//!     consecutiveLocalFailures: 1
//!     successRate: {minimumHosts: 3, requestVolume: 50, stdevFactor: 1.9}
//!     baseEjectionTime: 30s
//!     maxEjectionTime: 5m
//!     maxEjectionPercent: 50
//! ```
//!
//! Fields not given come from the next policy that applies, then from the
//! defaults in docs/policies.md (targeting and merging as for `Retry`).

use serde::{Deserialize, Serialize};

use super::retry::{check_dur, range};
use super::route::Destination;
use super::{Selector, Targeted};
use crate::resource::{check_name, Dur, FieldError};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    #[serde(default)]
    pub target_ref: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

impl Targeted for CircuitBreakerSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

impl super::Destined for CircuitBreakerSpec {
    fn destination(&self) -> Option<&str> {
        self.to.as_ref().map(|d| d.service.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// 5xx answers in a row (0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive5xx: Option<u32>,
    /// 502, 503 and 504 answers in a row (0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// Failures of the mesh itself in a row: no connection, a connection
    /// that broke, no answer within the per-try timeout, or a mesh proxy on
    /// the way that could not deliver (0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Eject an endpoint whose success rate over the last interval is below
/// the mean minus `stdevFactor` standard deviations, among endpoints with
/// at least `requestVolume` requests, when at least `minimumHosts` have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SuccessRate {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub stdev_factor: f64,
}

const MS: std::time::Duration = std::time::Duration::from_millis(1);
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

impl CircuitBreakerSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        if let Some(to) = &self.to {
            check_name("spec.to.service", &to.service)?;
        }
        if self.limits.is_none() && self.outlier_detection.is_none() {
            return Err(FieldError::new(
                "spec",
                "give limits, outlierDetection or both",
            ));
        }
        if let Some(l) = &self.limits {
            for (name, v) in [
                ("maxConnections", l.max_connections),
                ("maxRequests", l.max_requests),
                ("maxPendingRequests", l.max_pending_requests),
                ("maxRetries", l.max_retries),
            ] {
                if let Some(v) = v {
                    // A queue may be empty; the others must let something by.
                    let lo = u32::from(name != "maxPendingRequests" && name != "maxRetries");
                    range(&format!("spec.limits.{name}"), v, lo, 1_000_000)?;
                }
            }
        }
        if let Some(o) = &self.outlier_detection {
            let p = "spec.outlierDetection";
            if let Some(d) = &o.interval {
                check_dur(&format!("{p}.interval"), d.0, MS * 100, DAY)?;
            }
            for (name, v) in [
                ("consecutive5xx", o.consecutive5xx),
                ("consecutiveGatewayErrors", o.consecutive_gateway_errors),
                ("consecutiveLocalFailures", o.consecutive_local_failures),
            ] {
                if let Some(v) = v {
                    range(&format!("{p}.{name}"), v, 0, 1000)?;
                }
            }
            if let Some(d) = &o.base_ejection_time {
                check_dur(&format!("{p}.baseEjectionTime"), d.0, MS, DAY)?;
            }
            if let Some(d) = &o.max_ejection_time {
                let lo = o.base_ejection_time.as_ref().map(|b| b.0).unwrap_or(MS);
                check_dur(&format!("{p}.maxEjectionTime"), d.0, lo, DAY)?;
            }
            if let Some(v) = o.max_ejection_percent {
                range(&format!("{p}.maxEjectionPercent"), v, 0, 100)?;
            }
            if let Some(s) = &o.success_rate {
                range(
                    &format!("{p}.successRate.minimumHosts"),
                    s.minimum_hosts,
                    1,
                    10_000,
                )?;
                range(
                    &format!("{p}.successRate.requestVolume"),
                    s.request_volume,
                    1,
                    1_000_000,
                )?;
                if !(s.stdev_factor > 0.0 && s.stdev_factor <= 100.0) {
                    return Err(FieldError::new(
                        format!("{p}.successRate.stdevFactor"),
                        format!(
                            "{} is out of range; allowed is above 0 up to 100",
                            s.stdev_factor
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
