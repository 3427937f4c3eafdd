//! Policies: what they target, and which one wins.
//!
//! Every policy kind targets proxies the same way, with a [`Selector`] in
//! `spec.targetRef`: the whole mesh (`{}`), a region, a zone, a service,
//! workload labels, or any combination (all given fields must match). A
//! selector also names callers in access rules (`from`), and a destination
//! service's subset (by zone and labels) in route backends.
//!
//! **Precedence** (see docs/policies.md): when several policies of a kind
//! apply to a proxy, the more specific target wins: labels, then service,
//! then zone, then region, then the mesh. At equal specificity the global's
//! policy comes before a zone-local one, then names in order. Kinds that
//! take one policy (MtlsPolicy, TcpRoute) use the first; kinds made of rules
//! (AccessPolicy, HttpRoute) evaluate the rules of all of them in that
//! order, first match wins; a request the global's access rules alone
//! deny stays denied, so a zone cannot allow what the mesh denies.
//!
//! Nothing here runs in a proxy: the zone control plane compiles the
//! policies that apply to each proxy into plain data.

pub mod access;
pub mod access_log;
pub mod balancer;
pub mod breaker;
pub mod fault;
pub mod health;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod timeout;
pub mod trace;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::resource::{check_name, FieldError, Resource};

/// Which proxies a policy applies to, or which callers or endpoints a
/// rule names. Empty: all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What a selector is matched against: a proxy, or a caller.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub service: &'a str,
    pub zone: &'a str,
    pub region: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        *self == Selector::default()
    }

    pub fn matches(&self, f: &Facts<'_>) -> bool {
        self.service.as_deref().is_none_or(|s| s == f.service)
            && self.zone.as_deref().is_none_or(|z| z == f.zone)
            && self.region.as_deref().is_none_or(|r| r == f.region)
            && self
                .labels
                .iter()
                .all(|(k, v)| f.labels.get(k).is_some_and(|x| x == v))
    }

    /// How specific the selector is: labels, then service, then zone, then
    /// region; the mesh (empty) is 0.
    pub fn specificity(&self) -> u8 {
        (u8::from(!self.labels.is_empty()) << 3)
            | (u8::from(self.service.is_some()) << 2)
            | (u8::from(self.zone.is_some()) << 1)
            | u8::from(self.region.is_some())
    }

    pub fn check(&self, path: &str) -> Result<(), FieldError> {
        if let Some(s) = &self.service {
            check_name(&format!("{path}.service"), s)?;
        }
        if let Some(z) = &self.zone {
            check_name(&format!("{path}.zone"), z)?;
        }
        if let Some(r) = &self.region {
            check_name(&format!("{path}.region"), r)?;
        }
        check_labels(&format!("{path}.labels"), &self.labels)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("the mesh");
        }
        let mut parts = Vec::new();
        if let Some(s) = &self.service {
            parts.push(format!("service {s}"));
        }
        if let Some(z) = &self.zone {
            parts.push(format!("zone {z}"));
        }
        if let Some(r) = &self.region {
            parts.push(format!("region {r}"));
        }
        if !self.labels.is_empty() {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(format!("labels {}", l.join(",")));
        }
        f.write_str(&parts.join(", "))
    }
}

/// Whether a label key and value are as policies allow them: keys 1-63
/// letters, digits, '-', '_', '.' or '/'; values up to 63 letters, digits,
/// '-', '_' or '.'.
pub fn label_ok(k: &str, v: &str) -> bool {
    key_ok(k) && value_ok(v)
}

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn value_ok(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Label keys and values as registrations allow them.
pub fn check_labels(path: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if labels.len() > 32 {
        return Err(FieldError::new(path, "at most 32 labels"));
    }
    for (k, v) in labels {
        if !key_ok(k) {
            return Err(FieldError::new(
                format!("{path}.{k}"),
                "label keys are 1-63 letters, digits, '-', '_', '.' or '/'",
            ));
        }
        if !value_ok(v) {
            return Err(FieldError::new(
                format!("{path}.{k}"),
                format!("invalid label value {v:?}: at most 63 letters, digits, '-', '_' or '.'"),
            ));
        }
    }
    Ok(())
}

/// Where a policy was declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Applied at the global control plane; synced to every zone.
    Global,
    /// Declared in one zone (`zone-cp --policy-dir`); only that zone's
    /// proxies see it.
    Zone,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Global => "global",
            Origin::Zone => "zone",
        })
    }
}

/// A policy of kind `T` with what precedence needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy<T> {
    pub kind: &'static str,
    pub name: String,
    pub origin: Origin,
    pub target: Selector,
    pub spec: T,
}

impl<T> Policy<T> {
    /// `Kind/name`, with `(zone)` for zone-local ones: how proxies, metrics
    /// and explain output name it.
    pub fn reference(&self) -> String {
        match self.origin {
            Origin::Global => format!("{}/{}", self.kind, self.name),
            Origin::Zone => format!("{}/{} (zone)", self.kind, self.name),
        }
    }
}

/// The order in which policies apply: most specific first, the global's
/// before a zone's, then by name.
pub fn precedence<T>(a: &Policy<T>, b: &Policy<T>) -> std::cmp::Ordering {
    b.target
        .specificity()
        .cmp(&a.target.specificity())
        .then(a.origin.cmp(&b.origin))
        .then_with(|| a.name.cmp(&b.name))
}

/// The policies (from `all`) that apply to a proxy, in precedence order.
pub fn applicable<'a, T>(all: &'a [Policy<T>], proxy: &Facts<'_>) -> Vec<&'a Policy<T>> {
    let mut v: Vec<&Policy<T>> = all.iter().filter(|p| p.target.matches(proxy)).collect();
    v.sort_by(|a, b| precedence(a, b));
    v
}

/// A spec that governs calls to one destination service, or to every one
/// (`spec.to` omitted).
pub trait Destined {
    fn destination(&self) -> Option<&str>;
}

/// The policies (from `all`) that apply to a proxy's calls to `service`,
/// in precedence order: the more specific target first; at equal
/// specificity, one that names the destination before one that does not;
/// then the global's before a zone's, then by name.
pub fn applicable_to<'a, T: Destined>(
    all: &'a [Policy<T>],
    proxy: &Facts<'_>,
    service: &str,
) -> Vec<&'a Policy<T>> {
    let mut v: Vec<&Policy<T>> = all
        .iter()
        .filter(|p| p.target.matches(proxy))
        .filter(|p| p.spec.destination().is_none_or(|s| s == service))
        .collect();
    v.sort_by(|a, b| {
        b.target
            .specificity()
            .cmp(&a.target.specificity())
            .then(
                b.spec
                    .destination()
                    .is_some()
                    .cmp(&a.spec.destination().is_some()),
            )
            .then(a.origin.cmp(&b.origin))
            .then_with(|| a.name.cmp(&b.name))
    });
    v
}

/// A policy resource's typed spec, or `None` when the resource is of
/// another kind or does not parse (stored resources were validated).
pub fn parse<T: for<'de> Deserialize<'de> + Targeted>(
    r: &Resource,
    kind: &'static str,
    origin: Origin,
) -> Option<Policy<T>> {
    if r.kind != kind {
        return None;
    }
    let spec: T = serde_json::from_value(r.spec.clone()).ok()?;
    Some(Policy {
        kind,
        name: r.metadata.name.clone(),
        origin,
        target: spec.target().clone(),
        spec,
    })
}

/// A spec that targets proxies with `spec.targetRef`.
pub trait Targeted {
    fn target(&self) -> &Selector;
}

/// `enforce` or `shadow`: a shadow policy's denials are logged and counted,
/// not carried out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// What the mesh knows exists, to warn about a policy that can never take
/// effect. Labels are not known mesh-wide, so label selectors are not
/// judged.
#[derive(Clone, Debug, Default)]
pub struct Known {
    pub services: std::collections::BTreeSet<String>,
    pub zones: std::collections::BTreeSet<String>,
    pub regions: std::collections::BTreeSet<String>,
}

impl Known {
    /// Why `sel` (at `path`) matches nothing known, if it does not.
    pub fn unmatched(&self, path: &str, sel: &Selector) -> Option<String> {
        if let Some(s) = &sel.service {
            if !self.services.contains(s) {
                return Some(format!("{path}.service: no zone reports a service {s:?}"));
            }
        }
        if let Some(z) = &sel.zone {
            if !self.zones.contains(z) {
                return Some(format!("{path}.zone: no zone {z:?} is known"));
            }
        }
        if let Some(r) = &sel.region {
            if !self.regions.contains(r) {
                return Some(format!("{path}.region: no zone is in region {r:?}"));
            }
        }
        None
    }
}

/// Warnings for a policy resource whose target (or destination) matches
/// nothing the mesh knows of; it is stored anyway, since it may match a
/// service or zone that comes later.
pub fn warnings(r: &Resource, known: &Known) -> Vec<String> {
    let mut out = Vec::new();
    let sel =
        |p: &str| -> Option<Selector> { serde_json::from_value(r.spec.pointer(p)?.clone()).ok() };
    if let Some(t) = sel("/targetRef") {
        out.extend(known.unmatched("spec.targetRef", &t));
    }
    if let Some(to) = r.spec.pointer("/to/service").and_then(|v| v.as_str()) {
        if !known.services.contains(to) {
            out.push(format!("spec.to.service: no zone reports a service {to:?}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(service: Option<&str>, zone: Option<&str>, labels: &[(&str, &str)]) -> Selector {
        Selector {
            service: service.map(str::to_string),
            zone: zone.map(str::to_string),
            region: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn pol(name: &str, origin: Origin, target: Selector) -> Policy<()> {
        Policy {
            kind: "HttpRoute",
            name: name.into(),
            origin,
            target,
            spec: (),
        }
    }

    #[test]
    fn selectors_match_every_field_they_name() {
        let labels: BTreeMap<String, String> = [("version".to_string(), "v2".to_string())].into();
        let f = Facts {
            service: "api",
            zone: "eu-1",
            region: "eu",
            labels: &labels,
        };
        assert!(Selector::default().matches(&f));
        assert!(sel(Some("api"), None, &[]).matches(&f));
        assert!(sel(Some("api"), Some("eu-1"), &[("version", "v2")]).matches(&f));
        assert!(!sel(Some("web"), None, &[]).matches(&f));
        assert!(!sel(Some("api"), Some("us-1"), &[]).matches(&f));
        assert!(!sel(None, None, &[("version", "v1")]).matches(&f));
        assert!(!sel(None, None, &[("tier", "gold")]).matches(&f));
        let region = Selector {
            region: Some("us".into()),
            ..Default::default()
        };
        assert!(!region.matches(&f));
    }

    #[test]
    fn the_more_specific_policy_comes_first_then_the_global_then_the_name() {
        let mesh = pol("a-mesh", Origin::Global, Selector::default());
        let zone = pol("b-zone", Origin::Global, sel(None, Some("eu-1"), &[]));
        let svc = pol("c-svc", Origin::Global, sel(Some("api"), None, &[]));
        let svc_local = pol("a-svc-local", Origin::Zone, sel(Some("api"), None, &[]));
        let svc_zone = pol("d", Origin::Global, sel(Some("api"), Some("eu-1"), &[]));
        let labels = pol("e", Origin::Zone, sel(None, None, &[("version", "v2")]));
        let other = pol("f", Origin::Global, sel(Some("web"), None, &[]));
        let all = vec![
            mesh.clone(),
            zone.clone(),
            svc.clone(),
            svc_local.clone(),
            svc_zone.clone(),
            labels.clone(),
            other,
        ];
        let l: BTreeMap<String, String> = [("version".to_string(), "v2".to_string())].into();
        let f = Facts {
            service: "api",
            zone: "eu-1",
            region: "eu",
            labels: &l,
        };
        let names: Vec<&str> = applicable(&all, &f)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        // labels > service+zone > service (global before zone-local, although
        // the local one sorts first by name) > zone > mesh; web's is left out.
        assert_eq!(
            names,
            ["e", "d", "c-svc", "a-svc-local", "b-zone", "a-mesh"]
        );
    }

    /// Each bad value is refused with the field path and what is allowed.
    #[test]
    fn policy_documents_are_validated_field_by_field() {
        let h = "apiVersion: tern.dev/v1alpha1\n";
        let cases = [
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{backends: [{weight: 20000}]}]}",
             "spec.rules[0].backends[0].weight", "0 to 10000"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{backends: [{weight: 0}]}]}",
             "spec.rules[0].backends", "positive weight"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{matches: [{path: {regex: '(a'}}]}]}",
             "spec.rules[0].matches[0].path.regex", "invalid regular expression"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{matches: [{path: {exact: /a, prefix: /b}}]}]}",
             "spec.rules[0].matches[0].path", "exactly one"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{rewrite: {pathPrefix: /v2}}]}",
             "spec.rules[0].rewrite.pathPrefix", "path.prefix"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{redirect: {host: x}, backends: [{zones: [z1]}]}]}",
             "spec.rules[0].redirect", "cannot have backends"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{timeout: 2d}]}",
             "spec.rules[0].timeout", "1ms to 24h"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{matches: [{headers: [{name: X-User, exact: a}]}]}]}",
             "spec.rules[0].matches[0].headers[0].name", "lower-case"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{mirror: {service: s, percent: 0}}]}",
             "spec.rules[0].mirror.percent", "above 0"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{name: a}, {name: a}]}",
             "spec.rules[1].name", "two rules"),
            ("kind: HttpRoute\nmetadata: {name: r}\nspec: {to: {service: api}, rules: [{colour: red}]}",
             "spec.rules[0].colour", "unknown field"),
            ("kind: AccessPolicy\nmetadata: {name: a}\nspec: {rules: [{action: maybe}]}",
             "spec.rules[0].action", "allow"),
            ("kind: AccessPolicy\nmetadata: {name: a}\nspec: {targetRef: {service: API}, rules: [{action: deny}]}",
             "spec.targetRef.service", "invalid name"),
            ("kind: AccessPolicy\nmetadata: {name: a}\nspec: {rules: [{action: deny, when: {methods: [get]}}]}",
             "spec.rules[0].when.methods[0]", "upper case"),
            ("kind: AccessPolicy\nmetadata: {name: a}\nspec: {rules: []}",
             "spec.rules", "1 to 256"),
            ("kind: MtlsPolicy\nmetadata: {name: m}\nspec: {mode: loose}",
             "spec.mode", "strict"),
            ("kind: TcpRoute\nmetadata: {name: t}\nspec: {to: {service: db}, backends: []}",
             "spec.backends", "1 to 16"),
            ("kind: Mesh\nmetadata: {name: default}\nspec: {access: {default: block}}",
             "spec.access.default", "allow"),
            ("kind: FaultInjection\nmetadata: {name: f}\nspec: {faults: [{abort: {httpStatus: 503, reset: true, percent: 5}}]}",
             "spec.faults[0].abort", "exactly one"),
            ("kind: FaultInjection\nmetadata: {name: f}\nspec: {faults: [{abort: {grpcStatus: 0, percent: 5}}]}",
             "spec.faults[0].abort.grpcStatus", "1 to 16"),
            ("kind: FaultInjection\nmetadata: {name: f}\nspec: {faults: [{delay: {duration: 2h, percent: 5}}]}",
             "spec.faults[0].delay.duration", "1ms to 1h"),
            ("kind: FaultInjection\nmetadata: {name: f}\nspec: {faults: [{delay: {duration: 1s, percent: 0}}]}",
             "spec.faults[0].delay.percent", "above 0"),
            ("kind: FaultInjection\nmetadata: {name: f}\nspec: {faults: [{when: {methods: [GET]}, abort: {reset: true, percent: 5}}]}",
             "spec.faults[0].abort.reset", "TCP"),
            ("kind: FaultInjection\nmetadata: {name: f}\nspec: {faults: [{name: x}]}",
             "spec.faults[0]", "a delay, an abort or both"),
            ("kind: FaultInjection\nmetadata: {name: f}\nspec: {faults: [{abort: {httpStatus: 503, percent: 5}, retry: true}]}",
             "spec.faults[0].retry", "unknown field"),
            ("kind: RateLimit\nmetadata: {name: l}\nspec: {limits: [{http: {requests: 0, interval: 1s}}]}",
             "spec.limits[0].http.requests", "1 to 1000000"),
            ("kind: RateLimit\nmetadata: {name: l}\nspec: {limits: [{http: {requests: 5, interval: 2h}}]}",
             "spec.limits[0].http.interval", "1ms to 1h"),
            ("kind: RateLimit\nmetadata: {name: l}\nspec: {limits: [{http: {requests: 5, interval: 1s}, tcp: {connections: 5, interval: 1s}}]}",
             "spec.limits[0]", "exactly one of http"),
            ("kind: RateLimit\nmetadata: {name: l}\nspec: {limits: [{tcp: {connections: 5, interval: 1s}, per: {header: x-key}}]}",
             "spec.limits[0].per", "no headers"),
            ("kind: RateLimit\nmetadata: {name: l}\nspec: {limits: [{http: {requests: 5, interval: 1s}, per: {header: X_Key}}]}",
             "spec.limits[0].per.header", "lower-case"),
            ("kind: RateLimit\nmetadata: {name: l}\nspec: {limits: [{http: {requests: 5, interval: 1s}, per: tenant}]}",
             "spec.limits[0].per", "unknown variant"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {to: {service: api}}",
             "spec", "http, tcp or both"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {http: {attempts: 11}}",
             "spec.http.attempts", "1 to 10"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {http: {on: [5xx, teapot]}}",
             "spec.http.on[1]", "unknown variant"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {http: {on: [reset, reset]}}",
             "spec.http.on[1]", "twice"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {http: {statusCodes: [200, 700]}}",
             "spec.http.statusCodes[1]", "100 to 599"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {http: {grpcStatuses: [0]}}",
             "spec.http.grpcStatuses[0]", "1 to 16"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {http: {backoff: {base: 1s, max: 10ms}}}",
             "spec.http.backoff.max", "allowed is 1s to 1h"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {http: {budget: {percent: -1, minPerSecond: 1}}}",
             "spec.http.budget.percent", "0 to 1000"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {http: {idempotentMethods: [post]}}",
             "spec.http.idempotentMethods[0]", "upper case"),
            ("kind: Retry\nmetadata: {name: r}\nspec: {to: {service: API}, http: {attempts: 2}}",
             "spec.to.service", "invalid name"),
            ("kind: Timeout\nmetadata: {name: t}\nspec: {to: {service: api}}",
             "spec", "at least one"),
            ("kind: Timeout\nmetadata: {name: t}\nspec: {request: 0s}",
             "spec.request", "infinite"),
            ("kind: Timeout\nmetadata: {name: t}\nspec: {connect: infinite}",
             "spec.connect", "cannot be infinite"),
            ("kind: Timeout\nmetadata: {name: t}\nspec: {idle: forever}",
             "spec.idle", "invalid duration"),
            ("kind: Timeout\nmetadata: {name: t}\nspec: {streamDuration: 2d}",
             "spec.streamDuration", "1ms to 1day"),
            ("kind: CircuitBreaker\nmetadata: {name: c}\nspec: {to: {service: api}}",
             "spec", "limits, outlierDetection or both"),
            ("kind: CircuitBreaker\nmetadata: {name: c}\nspec: {limits: {maxRequests: 0}}",
             "spec.limits.maxRequests", "1 to 1000000"),
            ("kind: CircuitBreaker\nmetadata: {name: c}\nspec: {outlierDetection: {maxEjectionPercent: 101}}",
             "spec.outlierDetection.maxEjectionPercent", "0 to 100"),
            ("kind: CircuitBreaker\nmetadata: {name: c}\nspec: {outlierDetection: {baseEjectionTime: 1m, maxEjectionTime: 10s}}",
             "spec.outlierDetection.maxEjectionTime", "1m to 1day"),
            ("kind: CircuitBreaker\nmetadata: {name: c}\nspec: {outlierDetection: {successRate: {minimumHosts: 3, requestVolume: 10, stdevFactor: 0}}}",
             "spec.outlierDetection.successRate.stdevFactor", "above 0"),
            ("kind: CircuitBreaker\nmetadata: {name: c}\nspec: {outlierDetection: {interval: 10ms}}",
             "spec.outlierDetection.interval", "100ms to 1day"),
            ("kind: LoadBalancer\nmetadata: {name: b}\nspec: {algorithm: fastest}",
             "spec.algorithm", "unknown variant"),
            ("kind: LoadBalancer\nmetadata: {name: b}\nspec: {algorithm: ring-hash}",
             "spec.hash", "ring-hash needs a hash"),
            ("kind: LoadBalancer\nmetadata: {name: b}\nspec: {algorithm: round-robin, hash: {header: x-user}}",
             "spec.hash", "ring-hash"),
            ("kind: LoadBalancer\nmetadata: {name: b}\nspec: {hash: {header: x-user, source: true}}",
             "spec.hash", "exactly one"),
            ("kind: LoadBalancer\nmetadata: {name: b}\nspec: {hash: {cookie: 'a b'}}",
             "spec.hash.cookie", "not a cookie name"),
            ("kind: LoadBalancer\nmetadata: {name: b}\nspec: {overprovisioningFactor: 0.5}",
             "spec.overprovisioningFactor", "1 to 10"),
            ("kind: LoadBalancer\nmetadata: {name: b}\nspec: {failover: [{from: {zone: z1}}]}",
             "spec.failover[0]", "exactly one of zones or scope"),
            ("kind: LoadBalancer\nmetadata: {name: b}\nspec: {failover: [{from: {service: web}, scope: zone}]}",
             "spec.failover[0].from", "zone or region only"),
            ("kind: LoadBalancer\nmetadata: {name: b}\nspec: {failover: [{scope: planet}]}",
             "spec.failover[0].scope", "unknown variant"),
            ("kind: HealthCheck\nmetadata: {name: h}\nspec: {interval: 5s}",
             "spec", "exactly one of http, tcp or grpc"),
            ("kind: HealthCheck\nmetadata: {name: h}\nspec: {tcp: {}, http: {path: /h}}",
             "spec", "exactly one"),
            ("kind: HealthCheck\nmetadata: {name: h}\nspec: {http: {path: healthz}}",
             "spec.http.path", "start it with '/'"),
            ("kind: HealthCheck\nmetadata: {name: h}\nspec: {http: {path: /h, expectedStatuses: [99]}}",
             "spec.http.expectedStatuses[0]", "100 to 599"),
            ("kind: HealthCheck\nmetadata: {name: h}\nspec: {tcp: {}, interval: 10ms}",
             "spec.interval", "100ms to 1h"),
            ("kind: HealthCheck\nmetadata: {name: h}\nspec: {tcp: {}, unhealthyThreshold: 0}",
             "spec.unhealthyThreshold", "1 to 100"),
            ("kind: HealthCheck\nmetadata: {name: h}\nspec: {grpc: {service: 'a b'}}",
             "spec.grpc.service", "no spaces"),
            ("kind: AccessLog\nmetadata: {name: l}\nspec: {to: file}",
             "spec.file", "needs a file name"),
            ("kind: AccessLog\nmetadata: {name: l}\nspec: {to: file, file: ../etc/passwd}",
             "spec.file", "not a file name"),
            ("kind: AccessLog\nmetadata: {name: l}\nspec: {file: a.log}",
             "spec.file", "only used with to: file"),
            ("kind: AccessLog\nmetadata: {name: l}\nspec: {format: xml}",
             "spec.format", "unknown variant"),
            ("kind: AccessLog\nmetadata: {name: l}\nspec: {to: otlp}",
             "spec.otlp", "needs otlp"),
            ("kind: AccessLog\nmetadata: {name: l}\nspec: {otlp: {endpoint: 'c:4317'}}",
             "spec.otlp", "only used with to: otlp"),
            ("kind: AccessLog\nmetadata: {name: l}\nspec: {to: otlp, otlp: {endpoint: c}}",
             "spec.otlp.endpoint", "not host:port"),
            ("kind: Trace\nmetadata: {name: t}\nspec: {otlp: {endpoint: collector}}",
             "spec.otlp.endpoint", "not host:port"),
            ("kind: Trace\nmetadata: {name: t}\nspec: {sampling: 101, otlp: {endpoint: 'c:4317'}}",
             "spec.sampling", "0 to 100"),
            ("kind: Trace\nmetadata: {name: t}\nspec: {otlp: {endpoint: 'c:4317', protocol: thrift}}",
             "spec.otlp.protocol", "unknown variant"),
        ];
        for (doc, path, says) in cases {
            let errs =
                crate::resource::parse_documents("p.yaml", &format!("{h}{doc}\n")).expect_err(doc);
            let e = &errs[0];
            assert_eq!(e.error.path, path, "{doc}: {e}");
            assert!(e.error.message.contains(says), "{doc}: {e}");
        }
        // A subset whose labels would not fit a flow header to another zone.
        let many: Vec<String> = (0..9)
            .map(|i| format!("k{i}{}: {}", "x".repeat(38), "v".repeat(20)))
            .collect();
        let doc = format!(
            "{h}kind: HttpRoute\nmetadata: {{name: r}}\nspec: {{to: {{service: api}}, rules: [{{backends: [{{labels: {{{}}}}}]}}]}}\n",
            many.join(", ")
        );
        let errs = crate::resource::parse_documents("p.yaml", &doc).expect_err("too many bytes");
        assert_eq!(errs[0].error.path, "spec.rules[0].backends[0].labels");
        assert!(
            errs[0].error.message.contains("flow header"),
            "{}",
            errs[0].error
        );
        // And a full document of every kind passes.
        let ok = format!("{h}kind: HttpRoute\nmetadata: {{name: r}}\nspec:\n  targetRef: {{zone: z1}}\n  to: {{service: api}}\n  rules:\n    - matches: [{{path: {{prefix: /v1}}, method: GET, headers: [{{name: x-u, regex: 'a.*'}}], query: [{{name: q, present: true}}]}}]\n      backends: [{{weight: 90, labels: {{version: v1}}}}, {{weight: 10, zones: [z2]}}]\n      mirror: {{service: s, percent: 12.5}}\n      rewrite: {{pathPrefix: /v2}}\n      requestHeaders: {{set: {{x-a: '1'}}, add: {{x-b: '2'}}, remove: [x-c]}}\n      responseHeaders: {{add: {{x-d: '3'}}}}\n      timeout: 1500ms\n    - {{name: moved, matches: [{{path: {{exact: /old}}}}], redirect: {{scheme: https, host: example.org, port: 8443, path: /new, statusCode: 308}}}}\n---\n{h}kind: TcpRoute\nmetadata: {{name: t}}\nspec: {{to: {{service: db}}, backends: [{{weight: 1, zones: [z2]}}]}}\n---\n{h}kind: MtlsPolicy\nmetadata: {{name: m}}\nspec: {{targetRef: {{service: legacy}}, mode: permissive}}\n---\n{h}kind: AccessPolicy\nmetadata: {{name: a}}\nspec:\n  mode: shadow\n  rules: [{{name: web, action: allow, from: [{{service: web, region: eu, labels: {{team: a}}}}], when: {{methods: [GET], paths: [{{regex: '/x/[0-9]+'}}]}}}}]\n---\n{h}kind: FaultInjection\nmetadata: {{name: f}}\nspec:\n  targetRef: {{service: api}}\n  faults:\n    - {{name: slow, from: [{{service: web}}], when: {{paths: [{{prefix: /v1}}]}}, delay: {{duration: 200ms, percent: 10}}, abort: {{httpStatus: 503, percent: 5}}}}\n    - {{abort: {{grpcStatus: 14, percent: 1}}}}\n    - {{abort: {{reset: true, percent: 50}}}}\n---\n{h}kind: RateLimit\nmetadata: {{name: l}}\nspec:\n  targetRef: {{service: api}}\n  limits:\n    - {{name: reads, from: [{{service: web}}], when: {{methods: [GET]}}, http: {{requests: 100, interval: 1s, burst: 20}}, per: caller}}\n    - {{name: keys, http: {{requests: 10, interval: 1m}}, per: {{header: x-api-key}}}}\n    - {{name: conns, tcp: {{connections: 50, interval: 1s}}}}\n---\n{h}kind: Retry\nmetadata: {{name: r}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  http: {{attempts: 3, perTryTimeout: 2s, on: [connect-failure, reset, timeout, unavailable, gateway-error, 5xx], statusCodes: [429], grpcStatuses: [14], backoff: {{base: 25ms, max: 250ms}}, budget: {{percent: 20, minPerSecond: 10}}, attemptsPerLocality: 2, idempotentMethods: [PUT, DELETE]}}\n  tcp: {{connectAttempts: 2}}\n---\n{h}kind: Timeout\nmetadata: {{name: t}}\nspec: {{to: {{service: api}}, connect: 2s, request: infinite, idle: 10m, streamDuration: 1h}}\n---\n{h}kind: CircuitBreaker\nmetadata: {{name: c}}\nspec:\n  to: {{service: api}}\n  limits: {{maxConnections: 100, maxRequests: 200, maxPendingRequests: 0, maxRetries: 20}}\n  outlierDetection: {{interval: 10s, consecutive5xx: 5, consecutiveGatewayErrors: 3, consecutiveLocalFailures: 1, successRate: {{minimumHosts: 3, requestVolume: 50, stdevFactor: 1.9}}, baseEjectionTime: 30s, maxEjectionTime: 5m, maxEjectionPercent: 50}}\n---\n{h}kind: LoadBalancer\nmetadata: {{name: b}}\nspec:\n  to: {{service: api}}\n  algorithm: ring-hash\n  hash: {{cookie: session}}\n  localityAware: true\n  overprovisioningFactor: 1.4\n  failover:\n    - {{from: {{zone: z1}}, zones: [z2, z3]}}\n    - {{from: {{region: us}}, scope: region}}\n    - {{scope: zone}}\n---\n{h}kind: HealthCheck\nmetadata: {{name: hc}}\nspec:\n  targetRef: {{service: api}}\n  interval: 5s\n  timeout: 1s\n  unhealthyThreshold: 3\n  healthyThreshold: 2\n  jitter: 500ms\n  http: {{path: /healthz, expectedStatuses: [200, 204]}}\n---\n{h}kind: HealthCheck\nmetadata: {{name: hg}}\nspec: {{grpc: {{service: api.v1.Api}}}}\n---\n{h}kind: AccessLog\nmetadata: {{name: al}}\nspec: {{targetRef: {{service: api}}, format: text, to: file, file: api.log, directions: [inbound]}}\n---\n{h}kind: Trace\nmetadata: {{name: tr}}\nspec: {{sampling: 0.5, otlp: {{endpoint: 'otel-collector.observability:4318', protocol: http}}}}\n");
        assert_eq!(
            crate::resource::parse_documents("ok.yaml", &ok)
                .unwrap()
                .len(),
            14
        );
    }

    #[test]
    fn warnings_name_what_matches_nothing() {
        let known = Known {
            services: ["api".to_string()].into(),
            zones: ["eu-1".to_string()].into(),
            regions: ["eu".to_string()].into(),
        };
        let r: Resource = serde_json::from_value(serde_json::json!({
            "apiVersion": crate::resource::API_VERSION, "kind": "HttpRoute",
            "metadata": {"name": "x"},
            "spec": {"targetRef": {"zone": "mars-1"}, "to": {"service": "apii"}, "rules": []}
        }))
        .unwrap();
        let w = warnings(&r, &known);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("spec.targetRef.zone") && w[0].contains("mars-1"));
        assert!(w[1].contains("spec.to.service") && w[1].contains("apii"));
    }
}
