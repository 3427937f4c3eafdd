//! `Trace`: which proxies start and record traces, how many, and where the
//! spans go (an OTLP collector, over gRPC or HTTP).
//!
//! ```yaml
//! kind: Trace
//! metadata: {name: mesh-traces}
//! spec:
//!   targetRef: {}                  # the whole mesh (a service, zone or labels narrow it)
//!   sampling: 1                    # percent of new traces a caller's sidecar starts
//!   otlp:
//!     endpoint: otel-collector:4317
//!     protocol: grpc               # or http (OTLP/HTTP protobuf, POST /v1/traces)
//! ```
//!
//! The most specific policy that applies to a proxy is used. Sampling is
//! decided once, where a trace starts (the first sidecar a request meets
//! without a `traceparent`); every proxy after it follows that decision,
//! so a trace is whole or absent.

use serde::{Deserialize, Serialize};

use super::{Selector, Targeted};
use crate::resource::FieldError;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceSpec {
    #[serde(default)]
    pub target_ref: Selector,
    /// Percent, 0 to 100; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    pub otlp: Otlp,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Otlp {
    /// host:port of the collector.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Grpc,
    Http,
}

/// When a policy leaves `sampling` out.
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;

impl Targeted for TraceSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

impl TraceSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        if let Some(s) = self.sampling {
            if !(0.0..=100.0).contains(&s) {
                return Err(FieldError::new(
                    "spec.sampling",
                    format!("{s} is out of range; allowed is 0 to 100 (percent)"),
                ));
            }
        }
        self.otlp.check("spec.otlp")
    }

    /// The share of new traces to start, 0 to 1.
    pub fn ratio(&self) -> f64 {
        self.sampling.unwrap_or(DEFAULT_SAMPLING_PERCENT) / 100.0
    }
}

impl Otlp {
    /// The endpoint is host:port.
    pub fn check(&self, path: &str) -> Result<(), FieldError> {
        let e = &self.endpoint;
        let ok = match e.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && host.len() <= 253
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            }
            None => false,
        };
        if !ok {
            return Err(FieldError::new(
                format!("{path}.endpoint"),
                format!("{e:?} is not host:port (like otel-collector:4317)"),
            ));
        }
        Ok(())
    }

    pub fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}
