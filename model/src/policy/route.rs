//! `HttpRoute` and `TcpRoute`: how callers' traffic to a service is
//! matched, split across subsets and zones, mirrored and rewritten.
//!
//! ```yaml
//! kind: HttpRoute
//! metadata: {name: api-canary}
//! spec:
//!   targetRef: {zone: eu-west-1}   # the callers (default: every proxy)
//!   to: {service: api}
//!   rules:
//!     - matches: [{path: {prefix: /v2/}, method: GET}]
//!       backends:
//!         - {weight: 90, labels: {version: v1}}
//!         - {weight: 10, labels: {version: v2}}
//!       timeout: 2s
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_labels, Selector, Targeted};
use crate::resource::{check_name, Dur, FieldError};

/// Most rules in one route, matches in one rule, backends in one rule.
pub const MAX_RULES: usize = 128;
pub const MAX_MATCHES: usize = 16;
pub const MAX_BACKENDS: usize = 16;
/// Longest regular expression (paths, headers, query values).
pub const MAX_REGEX: usize = 256;

/// The destination service a route governs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    pub service: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub target_ref: Selector,
    pub to: Destination,
    pub rules: Vec<HttpRule>,
}

impl Targeted for HttpRouteSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    /// Named in metrics and explain output; `rule-N` (from 1) by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these; none matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    /// Weighted; none sends to the destination service as a whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderOps>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderOps>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// For the whole request, retries included, until the response head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// An HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// All of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// All of these (query parameters, decoded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatch>,
}

/// A path: exactly one of `exact`, `prefix` (whole segments: `/v1` matches
/// `/v1` and `/v1/x`, not `/v10`) or `regex` (the whole path).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A header or query parameter by name, and exactly one of `exact`,
/// `prefix`, `regex` (the whole value) or `present`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// Where a share of the traffic goes: a service (the route's destination
/// unless named), in some zones (any zone unless named), with some labels
/// (any instance unless named).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Bytes of a subset's labels on the wire: another zone is asked for a
/// subset in the flow header, `key=value` per label plus 2 bytes each.
pub const MAX_SUBSET_BYTES: usize = 512;

/// Labels a backend or mirror selects: as everywhere, and small enough to
/// travel in a flow header to another zone.
fn check_subset_labels(path: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    check_labels(path, labels)?;
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len() + 3).sum();
    if bytes > MAX_SUBSET_BYTES {
        return Err(FieldError::new(
            path,
            format!(
                "{bytes} bytes of labels; a subset's labels take at most {MAX_SUBSET_BYTES} \
                 (as key=value, 3 bytes each besides), since they travel to other zones in the flow header"
            ),
        ));
    }
    Ok(())
}

fn one() -> u32 {
    1
}

/// Copies of a share of requests, sent fire-and-forget: the copy's answer
/// is dropped and never delays or fails the real request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirror {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Share of matching requests copied, 0 (exclusive) to 100.
    #[serde(default = "hundred")]
    pub percent: f64,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderOps {
    /// Replace (or add) these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these, keeping values already there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Exactly one of `pathPrefix` (replaces the prefix the rule matched; the
/// rule's matches must all be path prefixes) or `fullPath`. The query is
/// kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_path: Option<String>,
}

/// The parts given replace the request's in the `location`; a redirect
/// answers the caller without forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "found")]
    pub status_code: u16,
}

fn found() -> u16 {
    302
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteSpec {
    #[serde(default)]
    pub target_ref: Selector,
    pub to: Destination,
    pub backends: Vec<Backend>,
}

impl Targeted for TcpRouteSpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

/// The shortest and longest route timeout.
pub const MIN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1);
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl HttpRouteSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        check_name("spec.to.service", &self.to.service)?;
        if self.rules.is_empty() || self.rules.len() > MAX_RULES {
            return Err(FieldError::new(
                "spec.rules",
                format!("give 1 to {MAX_RULES} rules"),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let p = format!("spec.rules[{i}]");
            r.check(&p)?;
            let name = rule_name(r.name.as_deref(), i);
            if !names.insert(name.clone()) {
                return Err(FieldError::new(
                    format!("{p}.name"),
                    format!("two rules are named {name:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// A rule's name: its own, or `rule-N` counting from 1.
pub fn rule_name(name: Option<&str>, index: usize) -> String {
    name.map(str::to_string)
        .unwrap_or_else(|| format!("rule-{}", index + 1))
}

impl HttpRule {
    fn check(&self, p: &str) -> Result<(), FieldError> {
        if let Some(n) = &self.name {
            check_name(&format!("{p}.name"), n)?;
        }
        if self.matches.len() > MAX_MATCHES {
            return Err(FieldError::new(
                format!("{p}.matches"),
                format!("at most {MAX_MATCHES} matches"),
            ));
        }
        for (j, m) in self.matches.iter().enumerate() {
            m.check(&format!("{p}.matches[{j}]"))?;
        }
        check_backends(&format!("{p}.backends"), &self.backends, true)?;
        if let Some(m) = &self.mirror {
            let mp = format!("{p}.mirror");
            if let Some(s) = &m.service {
                check_name(&format!("{mp}.service"), s)?;
            }
            check_zones(&format!("{mp}.zones"), &m.zones)?;
            check_subset_labels(&format!("{mp}.labels"), &m.labels)?;
            if !(m.percent > 0.0 && m.percent <= 100.0) {
                return Err(FieldError::new(
                    format!("{mp}.percent"),
                    format!(
                        "{} is out of range; allowed is above 0 up to 100",
                        m.percent
                    ),
                ));
            }
        }
        for (which, ops) in [
            ("requestHeaders", &self.request_headers),
            ("responseHeaders", &self.response_headers),
        ] {
            if let Some(o) = ops {
                o.check(&format!("{p}.{which}"))?;
            }
        }
        if let Some(rw) = &self.rewrite {
            let rp = format!("{p}.rewrite");
            match (&rw.path_prefix, &rw.full_path) {
                (Some(x), None) => {
                    check_path(&format!("{rp}.pathPrefix"), x)?;
                    let all_prefix = !self.matches.is_empty()
                        && self
                            .matches
                            .iter()
                            .all(|m| m.path.as_ref().is_some_and(|p| p.prefix.is_some()));
                    if !all_prefix {
                        return Err(FieldError::new(
                            format!("{rp}.pathPrefix"),
                            "replaces the prefix a rule matched: every match of the rule must have path.prefix (or use fullPath)",
                        ));
                    }
                }
                (None, Some(x)) => check_path(&format!("{rp}.fullPath"), x)?,
                _ => {
                    return Err(FieldError::new(
                        rp,
                        "give exactly one of pathPrefix or fullPath",
                    ))
                }
            }
        }
        if let Some(rd) = &self.redirect {
            let rp = format!("{p}.redirect");
            if !self.backends.is_empty() || self.mirror.is_some() || self.rewrite.is_some() {
                return Err(FieldError::new(
                    rp,
                    "a redirect answers the caller itself: it cannot have backends, a mirror or a rewrite",
                ));
            }
            if !matches!(rd.status_code, 301 | 302 | 303 | 307 | 308) {
                return Err(FieldError::new(
                    format!("{rp}.statusCode"),
                    format!(
                        "{} is not a redirect; use 301, 302, 303, 307 or 308",
                        rd.status_code
                    ),
                ));
            }
            if let Some(s) = &rd.scheme {
                if s != "http" && s != "https" {
                    return Err(FieldError::new(
                        format!("{rp}.scheme"),
                        format!("{s:?}: use http or https"),
                    ));
                }
            }
            if let Some(h) = &rd.host {
                let ok = !h.is_empty()
                    && h.len() <= 253
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
                if !ok {
                    return Err(FieldError::new(
                        format!("{rp}.host"),
                        format!("{h:?} is not a host name"),
                    ));
                }
            }
            if rd.port == Some(0) {
                return Err(FieldError::new(format!("{rp}.port"), "1 to 65535"));
            }
            if let Some(x) = &rd.path {
                check_path(&format!("{rp}.path"), x)?;
            }
        }
        if let Some(t) = &self.timeout {
            if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t.0) {
                return Err(FieldError::new(
                    format!("{p}.timeout"),
                    format!(
                        "{} is out of range; allowed is 1ms to 24h",
                        humantime::format_duration(t.0)
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl HttpMatch {
    fn check(&self, p: &str) -> Result<(), FieldError> {
        if let Some(pm) = &self.path {
            pm.check(&format!("{p}.path"))?;
        }
        if let Some(m) = &self.method {
            check_method(&format!("{p}.method"), m)?;
        }
        if self.headers.len() > 16 || self.query.len() > 16 {
            return Err(FieldError::new(p, "at most 16 header and 16 query matches"));
        }
        for (k, h) in self.headers.iter().enumerate() {
            let hp = format!("{p}.headers[{k}]");
            check_header_name(&format!("{hp}.name"), &h.name)?;
            h.check_value(&hp)?;
        }
        for (k, q) in self.query.iter().enumerate() {
            let qp = format!("{p}.query[{k}]");
            if q.name.is_empty() || q.name.len() > 128 {
                return Err(FieldError::new(format!("{qp}.name"), "1 to 128 characters"));
            }
            q.check_value(&qp)?;
        }
        Ok(())
    }
}

impl PathMatch {
    pub fn check(&self, p: &str) -> Result<(), FieldError> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(x), None, None) => check_path(&format!("{p}.exact"), x),
            (None, Some(x), None) => check_path(&format!("{p}.prefix"), x),
            (None, None, Some(x)) => check_regex(&format!("{p}.regex"), x),
            _ => Err(FieldError::new(
                p,
                "give exactly one of exact, prefix or regex",
            )),
        }
    }
}

impl ValueMatch {
    fn check_value(&self, p: &str) -> Result<(), FieldError> {
        let given = [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
            self.present.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err(FieldError::new(
                p,
                "give exactly one of exact, prefix, regex or present",
            ));
        }
        if let Some(r) = &self.regex {
            check_regex(&format!("{p}.regex"), r)?;
        }
        for v in [&self.exact, &self.prefix].into_iter().flatten() {
            if v.len() > 1024 || v.chars().any(|c| c.is_control()) {
                return Err(FieldError::new(
                    p,
                    "values are at most 1024 characters, without control characters",
                ));
            }
        }
        Ok(())
    }
}

impl HeaderOps {
    fn check(&self, p: &str) -> Result<(), FieldError> {
        if self.set.len() + self.add.len() + self.remove.len() > 32 {
            return Err(FieldError::new(p, "at most 32 header operations"));
        }
        for (which, map) in [("set", &self.set), ("add", &self.add)] {
            for (k, v) in map {
                check_header_name(&format!("{p}.{which}.{k}"), k)?;
                if v.len() > 1024 || v.chars().any(|c| c.is_control()) {
                    return Err(FieldError::new(
                        format!("{p}.{which}.{k}"),
                        "values are at most 1024 characters, without control characters",
                    ));
                }
            }
        }
        for (i, k) in self.remove.iter().enumerate() {
            check_header_name(&format!("{p}.remove[{i}]"), k)?;
        }
        Ok(())
    }
}

impl TcpRouteSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        check_name("spec.to.service", &self.to.service)?;
        check_backends("spec.backends", &self.backends, false)
    }
}

fn check_backends(p: &str, backends: &[Backend], may_be_empty: bool) -> Result<(), FieldError> {
    if backends.len() > MAX_BACKENDS || (!may_be_empty && backends.is_empty()) {
        return Err(FieldError::new(
            p,
            format!(
                "give {} to {MAX_BACKENDS} backends",
                if may_be_empty { 0 } else { 1 }
            ),
        ));
    }
    for (i, b) in backends.iter().enumerate() {
        let bp = format!("{p}[{i}]");
        if b.weight > 10_000 {
            return Err(FieldError::new(
                format!("{bp}.weight"),
                format!("{} is out of range; allowed is 0 to 10000", b.weight),
            ));
        }
        if let Some(s) = &b.service {
            check_name(&format!("{bp}.service"), s)?;
        }
        check_zones(&format!("{bp}.zones"), &b.zones)?;
        check_subset_labels(&format!("{bp}.labels"), &b.labels)?;
    }
    if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
        return Err(FieldError::new(
            p,
            "every backend has weight 0: give at least one a positive weight",
        ));
    }
    Ok(())
}

fn check_zones(p: &str, zones: &[String]) -> Result<(), FieldError> {
    if zones.len() > 64 {
        return Err(FieldError::new(p, "at most 64 zones"));
    }
    for (i, z) in zones.iter().enumerate() {
        check_name(&format!("{p}[{i}]"), z)?;
    }
    Ok(())
}

fn check_path(p: &str, path: &str) -> Result<(), FieldError> {
    let ok = path.starts_with('/')
        && path.len() <= 1024
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            p,
            format!("{path:?} is not a path: start with '/', at most 1024 printable characters, no '?', '#' or spaces"),
        ))
    }
}

fn check_regex(p: &str, re: &str) -> Result<(), FieldError> {
    if re.len() > MAX_REGEX {
        return Err(FieldError::new(
            p,
            format!("at most {MAX_REGEX} characters"),
        ));
    }
    regex_lite::Regex::new(re)
        .map(|_| ())
        .map_err(|e| FieldError::new(p, format!("invalid regular expression: {e}")))
}

fn check_method(p: &str, m: &str) -> Result<(), FieldError> {
    if !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(FieldError::new(
            p,
            format!("{m:?} is not a method: use upper case, like GET or POST"),
        ))
    }
}

/// Header names as HTTP/2 carries them: lower-case tokens.
pub fn check_header_name(p: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            p,
            format!("{name:?} is not a header name: use lower-case letters, digits and '-'"),
        ))
    }
}

pub(super) fn check_method_list(p: &str, methods: &[String]) -> Result<(), FieldError> {
    for (i, m) in methods.iter().enumerate() {
        check_method(&format!("{p}[{i}]"), m)?;
    }
    Ok(())
}
