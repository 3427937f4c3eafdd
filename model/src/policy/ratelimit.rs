//! `RateLimit`: local rate limits that the destination's sidecars enforce
//! on the HTTP requests or TCP connections of chosen callers, as token
//! buckets.
//!
//! ```yaml
//! kind: RateLimit
//! metadata: {name: api-limits}
//! spec:
//!   targetRef: {service: api}          # the destinations that enforce it
//!   limits:
//!     - name: per-caller-reads
//!       from: [{service: web}]         # callers; none: every caller
//!       when: {methods: [GET], paths: [{prefix: /v1/}]}
//!       http: {requests: 100, interval: 1s, burst: 20}
//!       per: caller                    # a bucket per caller; or {header: x-api-key}
//!     - name: connections
//!       tcp: {connections: 50, interval: 1s}
//! ```
//!
//! The first limit whose callers and conditions match a request (or TCP
//! connection) applies: policies in precedence order, then their limits in
//! order. An HTTP limit never matches a TCP connection, nor a TCP limit an
//! HTTP request. A limited request gets 429 with `retry-after`; a limited
//! connection is reset.

use serde::{Deserialize, Serialize};

use super::access::{check_callers_and_conditions, check_rule, HttpCondition};
use super::{Selector, Targeted};
use crate::resource::{Dur, FieldError};

pub const MAX_LIMITS: usize = 64;
/// The most tokens a bucket may hold or refill per interval.
pub const MAX_TOKENS: u32 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSpec {
    #[serde(default)]
    pub target_ref: Selector,
    pub limits: Vec<Limit>,
}

impl Targeted for RateLimitSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limit {
    /// Named in the 429 body, metrics and logs; `rule-N` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<HttpCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpBucket>,
    /// One bucket for everything the limit matches (the default), one per
    /// caller identity, or one per value of a request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Per>,
}

/// `requests` per `interval`, with room for `burst` at once (default:
/// `requests`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpBucket {
    pub requests: u32,
    pub interval: Dur,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpBucket {
    pub connections: u32,
    pub interval: Dur,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Per {
    /// A bucket per caller identity (its SPIFFE ID).
    Caller,
    /// A bucket per value of this request header (HTTP only).
    Header(String),
}

fn check_bucket(
    p: &str,
    tokens: (&str, u32),
    interval: &Dur,
    burst: Option<u32>,
) -> Result<(), FieldError> {
    if tokens.1 == 0 || tokens.1 > MAX_TOKENS {
        return Err(FieldError::new(
            format!("{p}.{}", tokens.0),
            format!("{} is out of range; allowed is 1 to {MAX_TOKENS}", tokens.1),
        ));
    }
    let i = interval.0;
    if i < std::time::Duration::from_millis(1) || i > std::time::Duration::from_secs(3600) {
        return Err(FieldError::new(
            format!("{p}.interval"),
            format!(
                "{} is out of range; allowed is 1ms to 1h",
                humantime::format_duration(i)
            ),
        ));
    }
    if let Some(b) = burst {
        if b == 0 || b > MAX_TOKENS {
            return Err(FieldError::new(
                format!("{p}.burst"),
                format!("{b} is out of range; allowed is 1 to {MAX_TOKENS}"),
            ));
        }
    }
    Ok(())
}

impl RateLimitSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        if self.limits.is_empty() || self.limits.len() > MAX_LIMITS {
            return Err(FieldError::new(
                "spec.limits",
                format!("give 1 to {MAX_LIMITS} limits"),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, l) in self.limits.iter().enumerate() {
            let p = format!("spec.limits[{i}]");
            check_rule(&p, "limits", l.name.as_deref(), i, &mut names)?;
            check_callers_and_conditions(&p, &l.from, l.when.as_ref())?;
            match (&l.http, &l.tcp) {
                (Some(h), None) => check_bucket(
                    &format!("{p}.http"),
                    ("requests", h.requests),
                    &h.interval,
                    h.burst,
                )?,
                (None, Some(t)) => {
                    check_bucket(
                        &format!("{p}.tcp"),
                        ("connections", t.connections),
                        &t.interval,
                        t.burst,
                    )?;
                    if l.when.is_some() {
                        return Err(FieldError::new(
                            format!("{p}.when"),
                            "HTTP conditions never match a TCP connection: use an http limit",
                        ));
                    }
                    if matches!(l.per, Some(Per::Header(_))) {
                        return Err(FieldError::new(
                            format!("{p}.per"),
                            "a TCP connection has no headers: use per: caller, or none",
                        ));
                    }
                }
                _ => {
                    return Err(FieldError::new(
                        &p,
                        "give exactly one of http (requests) or tcp (connections)",
                    ))
                }
            }
            if let Some(Per::Header(h)) = &l.per {
                let ok = !h.is_empty()
                    && h.len() <= 128
                    && h.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    return Err(FieldError::new(
                        format!("{p}.per.header"),
                        format!("invalid header name {h:?}: lower-case letters, digits and '-'"),
                    ));
                }
            }
        }
        Ok(())
    }
}
