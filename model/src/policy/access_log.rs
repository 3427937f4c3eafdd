//! `AccessLog`: one line per request or TCP connection that a service's
//! sidecars handle, off unless a policy turns it on.
//!
//! ```yaml
//! kind: AccessLog
//! metadata: {name: api-logs}
//! spec:
//!   targetRef: {service: api}     # whose sidecars write the lines
//!   format: json                  # or text (see docs/observability.md)
//!   to: stdout                    # or file, or otlp
//!   file: api.log                 # with to: file, inside the sidecar's --access-log-dir
//!   # otlp: {endpoint: otel-collector:4317, protocol: grpc}   # with to: otlp (OTLP logs)
//!   directions: [inbound, outbound]
//! ```
//!
//! The most specific policy that applies to a proxy is used (as for
//! `MtlsPolicy`). A file is a name, never a path: each sidecar writes only
//! inside the folder its operator gave it.

use serde::{Deserialize, Serialize};

use super::{Selector, Targeted};
use crate::resource::FieldError;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogSpec {
    #[serde(default)]
    pub target_ref: Selector,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub to: Sink,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// With `to: otlp`: the collector that takes the log records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<super::trace::Otlp>,
    /// Default: both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directions: Vec<Direction>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Text,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    #[default]
    Stdout,
    File,
    Otlp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Targeted for AccessLogSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

impl AccessLogSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        match (self.to, &self.otlp) {
            (Sink::Otlp, None) => {
                return Err(FieldError::new(
                    "spec.otlp",
                    "to: otlp needs otlp: {endpoint: host:port, protocol: grpc|http}",
                ))
            }
            (Sink::Otlp, Some(o)) => return o.check("spec.otlp"),
            (_, Some(_)) => {
                return Err(FieldError::new(
                    "spec.otlp",
                    "otlp settings are only used with to: otlp",
                ))
            }
            (_, None) => {}
        }
        match (self.to, &self.file) {
            (Sink::Otlp, Some(_)) => Err(FieldError::new(
                "spec.file",
                "a file name is only used with to: file",
            )),
            (Sink::Otlp, None) => Ok(()),
            (Sink::File, None) => Err(FieldError::new(
                "spec.file",
                "to: file needs a file name (written inside the sidecar's --access-log-dir)",
            )),
            (Sink::Stdout, Some(_)) => Err(FieldError::new(
                "spec.file",
                "a file name is only used with to: file",
            )),
            (Sink::File, Some(f)) => {
                let ok = !f.is_empty()
                    && f.len() <= 128
                    && !f.starts_with('.')
                    && f.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if ok {
                    Ok(())
                } else {
                    Err(FieldError::new(
                        "spec.file",
                        format!(
                            "{f:?} is not a file name: letters, digits, '.', '_' and '-', not starting with '.', at most 128 (no folders: the sidecar writes inside its --access-log-dir)"
                        ),
                    ))
                }
            }
            (Sink::Stdout, None) => Ok(()),
        }
    }

    pub fn logs(&self, d: Direction) -> bool {
        self.directions.is_empty() || self.directions.contains(&d)
    }
}
