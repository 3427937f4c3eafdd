//! `Timeout`: how long a caller's sidecar waits, per destination.
//!
//! ```yaml
//! kind: Timeout
//! metadata: {name: api-timeouts}
//! spec:
//!   targetRef: {service: web}      # the callers (omit: every proxy)
//!   to: {service: api}             # the destination (omit: every one)
//!   connect: 2s                    # opening a connection (TCP and mTLS)
//!   request: 5s                    # until the response head, all attempts
//!   idle: 10m                      # a TCP flow with nothing moving
//!   streamDuration: 1h             # a TCP flow's whole life
//! ```
//!
//! Fields not given come from the next policy that applies, then from the
//! defaults (docs/policies.md): connect 5s, request 15s (the sidecar's
//! `--request-timeout`), idle 1h (`--tcp-idle-timeout`), no stream limit.
//! Waiting without limit must be asked for: `request: infinite` or
//! `streamDuration: infinite`; `0s` is refused.

use serde::{Deserialize, Deserializer, Serialize};

use super::retry::check_dur;
use super::route::Destination;
use super::{Selector, Targeted};
use crate::resource::{check_name, FieldError};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutSpec {
    #[serde(default)]
    pub target_ref: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_duration: Option<Limit>,
}

impl Targeted for TimeoutSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

impl super::Destined for TimeoutSpec {
    fn destination(&self) -> Option<&str> {
        self.to.as_ref().map(|d| d.service.as_str())
    }
}

/// A duration, or `infinite`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    After(std::time::Duration),
    Infinite,
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "infinite" {
            return Ok(Limit::Infinite);
        }
        humantime::parse_duration(&s)
            .map(Limit::After)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"30s\" or \"infinite\""
                ))
            })
    }
}

impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Infinite => s.serialize_str("infinite"),
            Limit::After(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }
}

const MS: std::time::Duration = std::time::Duration::from_millis(1);
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

impl TimeoutSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        if let Some(to) = &self.to {
            check_name("spec.to.service", &to.service)?;
        }
        let fields = [
            ("connect", &self.connect, false),
            ("request", &self.request, true),
            ("idle", &self.idle, true),
            ("streamDuration", &self.stream_duration, true),
        ];
        if fields.iter().all(|(_, v, _)| v.is_none()) {
            return Err(FieldError::new(
                "spec",
                "give at least one of connect, request, idle or streamDuration",
            ));
        }
        for (name, v, may_be_infinite) in fields {
            let p = format!("spec.{name}");
            match v {
                None => {}
                Some(Limit::Infinite) if !may_be_infinite => {
                    return Err(FieldError::new(p, "a connect timeout cannot be infinite"))
                }
                Some(Limit::Infinite) => {}
                Some(Limit::After(d)) if d.is_zero() => {
                    return Err(FieldError::new(
                        p,
                        "0s is not a timeout; write \"infinite\" to wait without limit",
                    ))
                }
                Some(Limit::After(d)) => check_dur(&p, *d, MS, DAY)?,
            }
        }
        Ok(())
    }
}
