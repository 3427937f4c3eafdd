//! `FaultInjection`: delays and aborts that the destination's sidecars
//! inject into a share of the requests (or TCP connections) of chosen
//! callers, so that callers' real detection and failover paths can be
//! exercised (failover drills use it).
//!
//! ```yaml
//! kind: FaultInjection
//! metadata: {name: api-faults}
//! spec:
//!   targetRef: {service: api}        # the destinations that inject
//!   faults:
//!     - name: slow-reads
//!       from: [{service: web}]       # callers; none: every caller
//!       when: {methods: [GET], paths: [{prefix: /v1/}]}
//!       delay: {duration: 200ms, percent: 10}
//!     - name: broken
//!       abort: {httpStatus: 503, percent: 5}
//! ```
//!
//! The first fault whose callers and conditions match a request applies
//! (policies in precedence order, then their faults in order); its delay
//! and its abort are each drawn with their own percentage. An abort answers
//! with `httpStatus`, a gRPC status (`grpcStatus`, trailers-only), or, for
//! a TCP connection, `reset`. A fault with HTTP conditions never matches a
//! TCP connection; an `httpStatus` or `grpcStatus` abort never applies to
//! one either (nothing to answer with), a `reset` never to HTTP.

use serde::{Deserialize, Serialize};

use super::access::{check_callers_and_conditions, check_rule, HttpCondition};
use super::{Selector, Targeted};
use crate::resource::{Dur, FieldError};

pub const MAX_FAULTS: usize = 64;
/// The longest delay a fault may add.
pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjectionSpec {
    #[serde(default)]
    pub target_ref: Selector,
    pub faults: Vec<Fault>,
}

impl Targeted for FaultInjectionSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    /// Named in metrics and logs; `rule-N` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Callers, any of these; none: every caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<HttpCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    pub duration: Dur,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    pub percent: f64,
}

fn check_percent(path: &str, p: f64) -> Result<(), FieldError> {
    if p > 0.0 && p <= 100.0 {
        Ok(())
    } else {
        Err(FieldError::new(
            path,
            format!("{p} is out of range; allowed is above 0 up to 100"),
        ))
    }
}

impl FaultInjectionSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        if self.faults.is_empty() || self.faults.len() > MAX_FAULTS {
            return Err(FieldError::new(
                "spec.faults",
                format!("give 1 to {MAX_FAULTS} faults"),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, f) in self.faults.iter().enumerate() {
            let p = format!("spec.faults[{i}]");
            check_rule(&p, "faults", f.name.as_deref(), i, &mut names)?;
            check_callers_and_conditions(&p, &f.from, f.when.as_ref())?;
            if f.delay.is_none() && f.abort.is_none() {
                return Err(FieldError::new(&p, "give a delay, an abort or both"));
            }
            if let Some(d) = &f.delay {
                if d.duration.0.is_zero() || d.duration.0 > MAX_DELAY {
                    return Err(FieldError::new(
                        format!("{p}.delay.duration"),
                        format!(
                            "{} is out of range; allowed is 1ms to 1h",
                            humantime::format_duration(d.duration.0)
                        ),
                    ));
                }
                check_percent(&format!("{p}.delay.percent"), d.percent)?;
            }
            if let Some(a) = &f.abort {
                let ap = format!("{p}.abort");
                let given =
                    a.http_status.is_some() as u8 + a.grpc_status.is_some() as u8 + a.reset as u8;
                if given != 1 {
                    return Err(FieldError::new(
                        &ap,
                        "give exactly one of httpStatus, grpcStatus or reset: true",
                    ));
                }
                if let Some(s) = a.http_status {
                    if !(200..=599).contains(&s) {
                        return Err(FieldError::new(
                            format!("{ap}.httpStatus"),
                            format!("{s} is out of range; allowed is 200 to 599"),
                        ));
                    }
                }
                if let Some(s) = a.grpc_status {
                    if !(1..=16).contains(&s) {
                        return Err(FieldError::new(
                            format!("{ap}.grpcStatus"),
                            format!(
                                "{s} is out of range; allowed is 1 to 16 (0 is OK, not a fault)"
                            ),
                        ));
                    }
                }
                if a.reset && f.when.is_some() {
                    return Err(FieldError::new(
                        format!("{ap}.reset"),
                        "a reset applies to TCP connections, which HTTP conditions (when) never match",
                    ));
                }
                check_percent(&format!("{ap}.percent"), a.percent)?;
            }
        }
        Ok(())
    }
}
