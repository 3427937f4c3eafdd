//! The resource model: kubectl-style documents with `apiVersion`, `kind`,
//! `metadata` and `spec`.
//!
//! Validation rejects unknown fields and bad values, naming the document,
//! the field path and what is allowed. Each stored resource carries a
//! `resourceVersion`; an update that names an older one conflicts instead of
//! overwriting. New kinds (policies) are added to [`KINDS`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::drill::{DrillRunSpec, DrillSpec};
use crate::policy::access::{AccessDefaults, AccessPolicySpec, MtlsPolicySpec};
use crate::policy::access_log::AccessLogSpec;
use crate::policy::balancer::LoadBalancerSpec;
use crate::policy::breaker::CircuitBreakerSpec;
use crate::policy::fault::FaultInjectionSpec;
use crate::policy::health::HealthCheckSpec;
use crate::policy::ratelimit::RateLimitSpec;
use crate::policy::retry::RetrySpec;
use crate::policy::route::{HttpRouteSpec, TcpRouteSpec};
use crate::policy::timeout::TimeoutSpec;
use crate::policy::trace::TraceSpec;

pub const API_VERSION: &str = "tern.dev/v1alpha1";
/// The largest accepted resource, serialized as JSON. Lists are never
/// bounded as a whole; each resource is.
pub const MAX_RESOURCE_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Set by the store. On update, when given, it must match the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_timestamp: Option<String>,
}

impl Resource {
    pub fn key(&self) -> Key {
        Key {
            kind: self.kind.clone(),
            name: self.metadata.name.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub kind: String,
    pub name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// A field-level validation error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// Dotted path, e.g. `spec.mtls.workloadCertTtl`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// An error in one document of a file or request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DocumentError {
    /// File name, `<stdin>` or `request`.
    pub file: String,
    /// 1-based index of the document in the source.
    pub document: usize,
    /// `Kind/name` when known.
    pub resource: Option<String>,
    /// 1-based line in the source, where it could be found.
    pub line: Option<usize>,
    pub error: FieldError,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        write!(f, ": document {}", self.document)?;
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// What a kind is and how its spec validates.
pub struct KindInfo {
    pub name: &'static str,
    pub plural: &'static str,
    /// Written by the control plane itself, not by `apply`.
    pub system: bool,
    pub validate: fn(&Value) -> Result<(), FieldError>,
}

pub const KINDS: &[KindInfo] = &[
    KindInfo {
        name: "Mesh",
        plural: "meshes",
        system: false,
        validate: |v| typed::<MeshSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "Zone",
        plural: "zones",
        system: false,
        validate: |v| typed::<ZoneSpec>(v).map(|_| ()),
    },
    KindInfo {
        name: "AccessPolicy",
        plural: "accesspolicies",
        system: false,
        validate: |v| typed::<AccessPolicySpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "MtlsPolicy",
        plural: "mtlspolicies",
        system: false,
        validate: |v| typed::<MtlsPolicySpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "HttpRoute",
        plural: "httproutes",
        system: false,
        validate: |v| typed::<HttpRouteSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "TcpRoute",
        plural: "tcproutes",
        system: false,
        validate: |v| typed::<TcpRouteSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "FaultInjection",
        plural: "faultinjections",
        system: false,
        validate: |v| typed::<FaultInjectionSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "RateLimit",
        plural: "ratelimits",
        system: false,
        validate: |v| typed::<RateLimitSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "Retry",
        plural: "retries",
        system: false,
        validate: |v| typed::<RetrySpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "Timeout",
        plural: "timeouts",
        system: false,
        validate: |v| typed::<TimeoutSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "CircuitBreaker",
        plural: "circuitbreakers",
        system: false,
        validate: |v| typed::<CircuitBreakerSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "LoadBalancer",
        plural: "loadbalancers",
        system: false,
        validate: |v| typed::<LoadBalancerSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "HealthCheck",
        plural: "healthchecks",
        system: false,
        validate: |v| typed::<HealthCheckSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "AccessLog",
        plural: "accesslogs",
        system: false,
        validate: |v| typed::<AccessLogSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "Trace",
        plural: "traces",
        system: false,
        validate: |v| typed::<TraceSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "Drill",
        plural: "drills",
        system: false,
        validate: |v| typed::<DrillSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "ZoneIngress",
        plural: "zoneingresses",
        system: true,
        validate: |v| typed::<ZoneIngressSpec>(v).map(|_| ()),
    },
    KindInfo {
        name: "DrillRun",
        plural: "drillruns",
        system: true,
        validate: |v| typed::<DrillRunSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "Revocation",
        plural: "revocations",
        system: true,
        validate: |v| typed::<RevocationSpec>(v).map(|_| ()),
    },
    KindInfo {
        name: "ZoneCa",
        plural: "zonecas",
        system: true,
        validate: |v| typed::<ZoneCaSpec>(v).and_then(|s| s.check()),
    },
    KindInfo {
        name: "MeshTrust",
        plural: "meshtrusts",
        system: true,
        validate: |v| typed::<MeshTrustSpec>(v).map(|_| ()),
    },
];

/// Find a kind by its name, plural or lowercase name (`Mesh`, `meshes`, `mesh`).
pub fn kind_info(s: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.name == s || k.plural.eq_ignore_ascii_case(s) || k.name.eq_ignore_ascii_case(s))
}

pub fn known_kinds() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

pub(crate) fn typed<T: for<'de> Deserialize<'de>>(spec: &Value) -> Result<T, FieldError> {
    let v = if spec.is_null() {
        Value::Object(Default::default())
    } else {
        spec.clone()
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let p = e.path().to_string();
        let path = if p == "." || p.is_empty() {
            "spec".to_string()
        } else {
            format!("spec.{p}")
        };
        FieldError::new(path, e.inner().to_string())
    })
}

/// A DNS-1123 label: what `metadata.name` allows.
pub fn check_name(path: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        // Names can come from proxies: a long one is repeated in part.
        let shown: String = name.chars().take(64).collect();
        let cut = if shown.len() < name.len() { "…" } else { "" };
        Err(FieldError::new(
            path,
            format!(
                "invalid name {shown:?}{cut}: use 1-63 lowercase letters, digits or '-', \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

/// Validate a whole resource: envelope, name, labels and the kind's spec.
pub fn validate(r: &Resource) -> Result<(), FieldError> {
    if r.api_version != API_VERSION {
        return Err(FieldError::new(
            "apiVersion",
            format!(
                "unsupported apiVersion {:?}; use {API_VERSION:?}",
                r.api_version
            ),
        ));
    }
    let info = KINDS.iter().find(|k| k.name == r.kind).ok_or_else(|| {
        FieldError::new(
            "kind",
            format!("unknown kind {:?}; known kinds: {}", r.kind, known_kinds()),
        )
    })?;
    check_name("metadata.name", &r.metadata.name)?;
    for (k, v) in &r.metadata.labels {
        if k.is_empty() || k.len() > 63 || v.len() > 63 {
            return Err(FieldError::new(
                format!("metadata.labels.{k}"),
                "label keys must be 1-63 characters and values at most 63",
            ));
        }
    }
    (info.validate)(&r.spec)?;
    let size = serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0);
    if size > MAX_RESOURCE_BYTES {
        return Err(FieldError::new(
            "",
            format!("resource is {size} bytes; the limit is {MAX_RESOURCE_BYTES}"),
        ));
    }
    Ok(())
}

/// Parse one resource from a JSON value, with a field path on error.
pub fn from_value(v: Value) -> Result<Resource, FieldError> {
    let r: Resource = serde_path_to_error::deserialize(v).map_err(|e| {
        let p = e.path().to_string();
        FieldError::new(
            if p == "." { String::new() } else { p },
            e.inner().to_string(),
        )
    })?;
    validate(&r)?;
    Ok(r)
}

/// Deepest `[`/`{` nesting a document may have (serde_yaml's own limit).
pub const MAX_NESTING: usize = 128;

/// The line (0-based) where a document's flow collections nest deeper than
/// [`MAX_NESTING`], by counting brackets (quotes are not parsed, so a string
/// holding over a hundred unmatched brackets would be refused too). The YAML
/// parser reads a whole document before applying its own limit, at about
/// 10 µs per level: this refuses such input at once.
pub fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    None
}

/// Parse a YAML (or JSON) text holding one or more documents separated by
/// `---`. Empty documents are skipped. Errors name source, document, line
/// and field.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Resource>, Vec<DocumentError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (idx, (start_line, chunk)) in split_documents(text).into_iter().enumerate() {
        let document = idx + 1;
        let err =
            |line: Option<usize>, resource: Option<String>, error: FieldError| DocumentError {
                file: source.to_string(),
                document,
                resource,
                line,
                error,
            };
        if chunk.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        }) {
            continue;
        }
        if let Some(line) = too_deep(&chunk) {
            errors.push(err(
                Some(start_line + line),
                None,
                FieldError::new(
                    "",
                    format!("invalid YAML: nested deeper than {MAX_NESTING} levels"),
                ),
            ));
            continue;
        }
        let yaml: serde_yaml::Value = match serde_yaml::from_str(&chunk) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| start_line + l.line() - 1);
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                errors.push(err(
                    line,
                    None,
                    FieldError::new("", format!("invalid YAML: {msg}")),
                ));
                continue;
            }
        };
        let json: Value = match serde_json::to_value(&yaml) {
            Ok(v) => v,
            Err(e) => {
                errors.push(err(
                    Some(start_line),
                    None,
                    FieldError::new("", e.to_string()),
                ));
                continue;
            }
        };
        let label = json
            .get("kind")
            .and_then(Value::as_str)
            .zip(json.pointer("/metadata/name").and_then(Value::as_str))
            .map(|(k, n)| format!("{k}/{n}"));
        if !json.is_object() {
            errors.push(err(
                Some(start_line),
                None,
                FieldError::new(
                    "",
                    "a document must be a mapping with apiVersion, kind, metadata and spec",
                ),
            ));
            continue;
        }
        match from_value(json) {
            Ok(r) => out.push(r),
            Err(fe) => {
                let line = find_line(&chunk, &fe.path).map(|l| start_line + l);
                errors.push(err(line, label, fe));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Split on `---` lines; returns (1-based first line, text) per document.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start, cur));
    docs
}

/// Best-effort 0-based line of the last key in a dotted path.
fn find_line(chunk: &str, path: &str) -> Option<usize> {
    let mut from = 0;
    let lines: Vec<&str> = chunk.lines().collect();
    let mut found = None;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let seg = seg.split('[').next().unwrap_or(seg);
        let pos = lines.iter().enumerate().skip(from).find(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&format!("{seg}:")) || t.starts_with(&format!("\"{seg}\":"))
        });
        match pos {
            Some((i, _)) => {
                found = Some(i);
                from = i + 1;
            }
            None => break,
        }
    }
    found
}

// ---------------------------------------------------------------------------
// Kinds
// ---------------------------------------------------------------------------

/// A duration written as `30s`, `10m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"30s\", \"10m\" or \"1h\""
            ))
        })
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    #[serde(default)]
    pub mtls: MtlsSpec,
    /// What happens to requests no `AccessPolicy` rule matches.
    #[serde(default)]
    pub access: AccessDefaults,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MtlsSpec {
    /// Lifetime of workload certificates. Proxies renew once a third of it
    /// has passed, so the default (24h) outlasts a 16h zone-cp outage.
    #[serde(default = "default_cert_ttl")]
    pub workload_cert_ttl: Dur,
}

impl Default for MtlsSpec {
    fn default() -> Self {
        Self {
            workload_cert_ttl: default_cert_ttl(),
        }
    }
}

fn default_cert_ttl() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}

pub const MIN_CERT_TTL: Duration = Duration::from_secs(10);
pub const MAX_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl MeshSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        let t = self.mtls.workload_cert_ttl.0;
        if !(MIN_CERT_TTL..=MAX_CERT_TTL).contains(&t) {
            return Err(FieldError::new(
                "spec.mtls.workloadCertTtl",
                format!(
                    "{} is out of range; allowed is 10s to 30d",
                    humantime::format_duration(t)
                ),
            ));
        }
        Ok(())
    }
    pub fn from_resource(r: &Resource) -> Self {
        typed(&r.spec).unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneSpec {
    /// A disabled zone may not sync; its proxies keep their last config.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Failover order of other regions for this zone's callers, after its
    /// own zone and its own region. Regions not listed come after, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub region_order: Vec<String>,
}

/// What other zones need to reach a zone: its region, its gateways' public
/// QUIC addresses and the health of its services. Written by the global from
/// the zone's inventory, named after the zone, withdrawn when the zone has
/// been offline longer than the TTL.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneIngressSpec {
    pub region: String,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSummary>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSummary {
    pub protocol: String,
    pub healthy: u32,
    /// The distinct label sets of the healthy instances, with how many
    /// have each: what lets another zone's route send to a subset here.
    /// Largest first, at most [`MAX_SUBSETS`]; only labels a policy can
    /// select (keys and values as `check_labels` allows) are listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<SubsetSummary>,
    /// Set when some label sets were left out (more than [`MAX_SUBSETS`],
    /// or the zone's whole `ZoneIngress` would pass its size limit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub subsets_truncated: bool,
}

/// Label sets a zone publishes per service.
pub const MAX_SUBSETS: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubsetSummary {
    pub labels: BTreeMap<String, String>,
    pub healthy: u32,
}

impl ZoneIngressSpec {
    pub fn from_resource(r: &Resource) -> Option<Self> {
        typed(&r.spec).ok()
    }
}

/// A revoked token, named by its id. Synced to every zone so that zones
/// refuse revoked dataplane tokens too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RevocationSpec {
    pub revoked_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The intermediate CAs of one zone that mesh members accept, named after
/// the zone. Written by the global when the zone joins, renews its CA,
/// re-joins or is revoked; synced to every zone and from there to every
/// proxy. A zone with no `ZoneCa` (revoked) is trusted by no one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneCaSpec {
    /// Newest first. More than one while a renewal overlaps.
    pub certificates: Vec<ZoneCaEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneCaEntry {
    /// SHA-256 of the certificate, lowercase hex.
    pub fingerprint: String,
    pub issued_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

impl ZoneCaSpec {
    fn check(&self) -> Result<(), FieldError> {
        for (i, c) in self.certificates.iter().enumerate() {
            if c.fingerprint.len() != 64
                || !c
                    .fingerprint
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch))
            {
                return Err(FieldError::new(
                    format!("spec.certificates[{i}].fingerprint"),
                    "must be a SHA-256 fingerprint: 64 lowercase hex digits",
                ));
            }
        }
        Ok(())
    }
    pub fn from_resource(r: &Resource) -> Option<Self> {
        typed(&r.spec).ok()
    }
}

/// The mesh's roots, named `default`. Written by the global at first start
/// and by `ternctl ca rotate`; synced to every zone, which hands the roots
/// to its proxies and renews its CA under the active one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTrustSpec {
    /// Fingerprint of the root that signs new zone CAs.
    pub active: String,
    /// Every root mesh members accept, active first (two while a rotation
    /// overlaps).
    pub roots: Vec<MeshRoot>,
    /// The active root certified by the previous one, sent after zone CAs
    /// while the previous one is trusted, so members that do not know the
    /// new root yet still build a path. Empty outside a rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cross_signed: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshRoot {
    pub fingerprint: String,
    pub not_after: String,
    /// PEM.
    pub certificate: String,
}

impl MeshTrustSpec {
    pub fn from_resource(r: &Resource) -> Option<Self> {
        typed(&r.spec).ok()
    }
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|r| r.certificate.as_str()).collect()
    }
}

fn yes() -> bool {
    true
}

impl ZoneSpec {
    pub fn from_resource(r: &Resource) -> Option<Self> {
        typed(&r.spec).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml() {
        let text = "apiVersion: tern.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: default\nspec:\n  mtls:\n    workloadCertTtl: 2h\n---\n# comment only\n---\napiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata: {name: eu-1}\n";
        let docs = parse_documents("f.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            MeshSpec::from_resource(&docs[0]).mtls.workload_cert_ttl.0,
            Duration::from_secs(7200)
        );
        assert!(ZoneSpec::from_resource(&docs[1]).unwrap().enabled);
    }

    /// Found by fuzzing: deep flow nesting made the YAML parser spend
    /// about 10 µs per level before refusing. It is refused at once now,
    /// naming the line; ordinary nesting still parses.
    #[test]
    fn deeply_nested_documents_are_refused_before_parsing() {
        let deep = format!(
            "kind: Zone\nmetadata: {{name: x}}\nspec: {}",
            "[".repeat(100_000)
        );
        let errs = parse_documents("deep.yaml", &deep).unwrap_err();
        let e = errs[0].to_string();
        assert!(e.contains("nested deeper than 128 levels"), "{e}");
        assert_eq!(errs[0].line, Some(3), "{e}");
        let ok = format!(
            "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata: {{name: x, labels: {{a: b}}}}\nspec: {{regionOrder: [{}]}}\n",
            "r".repeat(3)
        );
        assert_eq!(parse_documents("ok.yaml", &ok).unwrap().len(), 1);
    }

    #[test]
    fn errors_name_document_field_and_line() {
        let text = "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata: {name: ok}\n---\napiVersion: tern.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: default\nspec:\n  mtls:\n    workloadCertTTL: 1h\n";
        let errs = parse_documents("m.yaml", text).unwrap_err();
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!(e.document, 2);
        assert_eq!(e.error.path, "spec.mtls.workloadCertTTL");
        assert!(e.error.message.contains("workloadCertTTL"), "{e}");
        assert!(e.error.message.contains("workloadCertTtl"), "{e}");
        assert_eq!(e.line, Some(11));
        assert!(
            e.to_string()
                .starts_with("m.yaml:11: document 2 (Mesh/default)"),
            "{e}"
        );
    }

    /// A refused name is repeated only in part: check_name also judges
    /// names proxies send, which can be megabytes long.
    #[test]
    fn a_long_refused_name_is_repeated_in_part() {
        let e = check_name("service", &"a".repeat(1 << 20)).unwrap_err();
        assert!(e.message.len() < 200, "{} bytes", e.message.len());
        assert!(e.message.contains(&format!("{:?}…", "a".repeat(64))), "{e}");
        let e = check_name("service", "Bad_Name").unwrap_err();
        assert!(e.message.starts_with("invalid name \"Bad_Name\": "), "{e}");
    }

    #[test]
    fn refuses_unknown_kind_bad_name_bad_values() {
        let bad_kind = "apiVersion: tern.dev/v1alpha1\nkind: Gizmo\nmetadata: {name: a}\n";
        let e = &parse_documents("x", bad_kind).unwrap_err()[0];
        assert_eq!(e.error.path, "kind");
        assert!(
            e.error.message.contains(
                "Mesh, Zone, AccessPolicy, MtlsPolicy, HttpRoute, TcpRoute, FaultInjection"
            ),
            "{e}"
        );
        let bad_name = "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: Bad_Name\n";
        let e = &parse_documents("x", bad_name).unwrap_err()[0];
        assert_eq!(e.error.path, "metadata.name");
        assert_eq!(e.line, Some(4));
        let bad_ttl = "apiVersion: tern.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {mtls: {workloadCertTtl: 1s}}\n";
        let e = &parse_documents("x", bad_ttl).unwrap_err()[0];
        assert_eq!(e.error.path, "spec.mtls.workloadCertTtl");
        let bad_dur = "apiVersion: tern.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {mtls: {workloadCertTtl: soon}}\n";
        let e = &parse_documents("x", bad_dur).unwrap_err()[0];
        assert!(e.error.message.contains("invalid duration"), "{e}");
        let bad_yaml = "apiVersion: tern.dev/v1alpha1\nkind: [Zone\n";
        let e = &parse_documents("x", bad_yaml).unwrap_err()[0];
        assert!(e.error.message.starts_with("invalid YAML"), "{e}");
        let bad_api = "apiVersion: v1\nkind: Zone\nmetadata: {name: a}\n";
        assert_eq!(
            parse_documents("x", bad_api).unwrap_err()[0].error.path,
            "apiVersion"
        );
        let extra = "apiVersion: tern.dev/v1alpha1\nkind: Zone\nmetadata: {name: a}\nspec: {enabled: true, colour: red}\n";
        assert!(parse_documents("x", extra).unwrap_err()[0]
            .error
            .message
            .contains("colour"));
    }
}
