//! `LoadBalancer`: how a caller's sidecar spreads requests over a
//! destination's endpoints, and in which order it fails over between zones.
//!
//! ```yaml
//! kind: LoadBalancer
//! metadata: {name: api-lb}
//! spec:
//!   targetRef: {service: web}          # the callers (omit: every proxy)
//!   to: {service: api}                 # the destination (omit: every one)
//!   algorithm: ring-hash               # random | round-robin | least-request | ring-hash
//!   hash: {header: x-user}             # or {cookie: session} or {source: true}
//!   localityAware: true
//!   overprovisioningFactor: 1.4
//!   failover:
//!     - from: {zone: eu-west-1}        # callers in this zone (or region)
//!       zones: [eu-west-2, us-east-1]  # after their own, in this order only
//!     - from: {region: us}
//!       scope: region                  # zone | region | mesh
//! ```
//!
//! Fields not given come from the next policy that applies (targeting and
//! merging as for `Retry`), then from the defaults in docs/policies.md.

use serde::{Deserialize, Serialize};

use super::route::{check_header_name, Destination};
use super::{Selector, Targeted};
use crate::resource::{check_name, FieldError};

pub const MAX_FAILOVER: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    #[serde(default)]
    pub target_ref: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_aware: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overprovisioning_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Vec<Failover>>,
}

impl Targeted for LoadBalancerSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

impl super::Destined for LoadBalancerSpec {
    fn destination(&self) -> Option<&str> {
        self.to.as_ref().map(|d| d.service.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    #[default]
    Random,
    RoundRobin,
    LeastRequest,
    RingHash,
}

impl Algorithm {
    /// As compiled into proxy config (empty: the default).
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" | "random" => Algorithm::Random,
            "round-robin" => Algorithm::RoundRobin,
            "least-request" => Algorithm::LeastRequest,
            "ring-hash" => Algorithm::RingHash,
            other => return Err(format!("unknown load balancing algorithm {other:?}")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Random => "random",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::LeastRequest => "least-request",
            Algorithm::RingHash => "ring-hash",
        }
    }
}

/// What a ring hash hashes: a request header, a cookie, or the caller's
/// own identity (every request of one caller instance to one endpoint).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HashOn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source: bool,
}

/// Where callers of some zones fail over to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Failover {
    /// Callers in these zones or regions (`zone` and `region` only); none:
    /// every caller.
    #[serde(default)]
    pub from: Selector,
    /// After the caller's own zone, these zones in this order; no others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// How far callers may go: their own zone only, their region, or the mesh
/// (the default order: own zone, own region, other regions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Zone,
    Region,
    Mesh,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Zone => "zone",
            Scope::Region => "region",
            Scope::Mesh => "mesh",
        }
    }
}

impl LoadBalancerSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        if let Some(to) = &self.to {
            check_name("spec.to.service", &to.service)?;
        }
        if let Some(h) = &self.hash {
            let given = h.header.is_some() as u8 + h.cookie.is_some() as u8 + h.source as u8;
            if given != 1 {
                return Err(FieldError::new(
                    "spec.hash",
                    "give exactly one of header, cookie or source: true",
                ));
            }
            if let Some(n) = &h.header {
                check_header_name("spec.hash.header", n)?;
            }
            if let Some(c) = &h.cookie {
                let ok = !c.is_empty()
                    && c.len() <= 128
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(FieldError::new(
                        "spec.hash.cookie",
                        format!("{c:?} is not a cookie name: letters, digits, '-', '_' or '.'"),
                    ));
                }
            }
            if self.algorithm.is_some_and(|a| a != Algorithm::RingHash) {
                return Err(FieldError::new(
                    "spec.hash",
                    "a hash is for algorithm: ring-hash",
                ));
            }
        }
        if self.algorithm == Some(Algorithm::RingHash) && self.hash.is_none() {
            return Err(FieldError::new(
                "spec.hash",
                "ring-hash needs a hash: {header: NAME}, {cookie: NAME} or {source: true}",
            ));
        }
        if let Some(f) = self.overprovisioning_factor {
            if !(1.0..=10.0).contains(&f) {
                return Err(FieldError::new(
                    "spec.overprovisioningFactor",
                    format!("{f} is out of range; allowed is 1 to 10"),
                ));
            }
        }
        if let Some(list) = &self.failover {
            if list.len() > MAX_FAILOVER {
                return Err(FieldError::new(
                    "spec.failover",
                    format!("at most {MAX_FAILOVER} entries"),
                ));
            }
            for (i, f) in list.iter().enumerate() {
                let p = format!("spec.failover[{i}]");
                f.from.check(&format!("{p}.from"))?;
                if f.from.service.is_some() || !f.from.labels.is_empty() {
                    return Err(FieldError::new(
                        format!("{p}.from"),
                        "name callers by zone or region only",
                    ));
                }
                match (&f.zones, &f.scope) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(FieldError::new(&p, "give exactly one of zones or scope"))
                    }
                    (Some(zones), None) => {
                        if zones.len() > 64 {
                            return Err(FieldError::new(format!("{p}.zones"), "at most 64 zones"));
                        }
                        for (j, z) in zones.iter().enumerate() {
                            check_name(&format!("{p}.zones[{j}]"), z)?;
                        }
                    }
                    (None, Some(_)) => {}
                }
            }
        }
        Ok(())
    }
}
