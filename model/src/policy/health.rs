//! `HealthCheck`: how each instance of a service is checked. Each sidecar
//! checks its own app (an HTTP GET, a TCP connect, or the gRPC health
//! protocol) and reports the result to its zone control plane, which
//! publishes only healthy instances. No sidecar probes another, so the
//! probe count grows with the number of instances, not with its square.
//!
//! ```yaml
//! kind: HealthCheck
//! metadata: {name: api-health}
//! spec:
//!   targetRef: {service: api}          # the instances checked
//!   interval: 5s
//!   timeout: 1s
//!   unhealthyThreshold: 3
//!   healthyThreshold: 2
//!   jitter: 500ms
//!   http: {path: /healthz, expectedStatuses: [200, 204]}
//!   # or tcp: {}   or grpc: {service: api.v1.Api}
//! ```
//!
//! The most specific policy that applies to an instance is used (as for
//! `MtlsPolicy`); fields it leaves out take the defaults in
//! docs/policies.md.

use serde::{Deserialize, Serialize};

use super::retry::check_dur;
use super::{Selector, Targeted};
use crate::resource::{Dur, FieldError};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckSpec {
    #[serde(default)]
    pub target_ref: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Each check starts up to this much later than the interval says, at
    /// random, so instances started together do not check in step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcCheck>,
}

impl Targeted for HealthCheckSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCheck {
    pub path: String,
    /// Default: any 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpCheck {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcCheck {
    /// The service name asked about (`grpc.health.v1.Health/Check`); empty:
    /// the server as a whole.
    #[serde(default)]
    pub service: String,
}

const MS: std::time::Duration = std::time::Duration::from_millis(1);
const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

impl HealthCheckSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        let kinds =
            self.http.is_some() as u8 + self.tcp.is_some() as u8 + self.grpc.is_some() as u8;
        if kinds != 1 {
            return Err(FieldError::new(
                "spec",
                "give exactly one of http, tcp or grpc",
            ));
        }
        if let Some(d) = &self.interval {
            check_dur("spec.interval", d.0, MS * 100, HOUR)?;
        }
        if let Some(d) = &self.timeout {
            check_dur("spec.timeout", d.0, MS, HOUR)?;
        }
        if let Some(d) = &self.jitter {
            check_dur("spec.jitter", d.0, std::time::Duration::ZERO, HOUR)?;
        }
        for (name, v) in [
            ("unhealthyThreshold", self.unhealthy_threshold),
            ("healthyThreshold", self.healthy_threshold),
        ] {
            if let Some(v) = v {
                if !(1..=100).contains(&v) {
                    return Err(FieldError::new(
                        format!("spec.{name}"),
                        format!("{v} is out of range; allowed is 1 to 100"),
                    ));
                }
            }
        }
        if let Some(h) = &self.http {
            let ok = h.path.starts_with('/')
                && h.path.len() <= 1024
                && h.path.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(FieldError::new(
                    "spec.http.path",
                    format!("{:?} is not a path: start it with '/'", h.path),
                ));
            }
            for (i, s) in h.expected_statuses.iter().enumerate() {
                if !(100..=599).contains(s) {
                    return Err(FieldError::new(
                        format!("spec.http.expectedStatuses[{i}]"),
                        format!("{s} is out of range; allowed is 100 to 599"),
                    ));
                }
            }
        }
        if let Some(g) = &self.grpc {
            if g.service.len() > 256 || g.service.chars().any(|c| c.is_whitespace()) {
                return Err(FieldError::new(
                    "spec.grpc.service",
                    "a gRPC service name, like pkg.v1.Service (no spaces, at most 256 bytes)",
                ));
            }
        }
        Ok(())
    }
}
