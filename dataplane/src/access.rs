//! Access control on the inbound side: the rules the zone control plane
//! compiled for this proxy (`pb::InboundPolicy`), evaluated per request
//! (HTTP) or per connection (TCP) against the caller's certificate.
//!
//! Rules are in precedence order and the first enforced rule that matches
//! decides; when none does, the mesh default does. One exception: when the
//! global's rules alone (zone-local ones left out) deny a request, it is
//! denied, so a zone cannot open what the mesh denies. Shadow rules (and a
//! shadow default) never decide: when one would have denied a request the
//! real decision lets through, that is reported so it can be counted and
//! logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use proto::v1 as pb;

use crate::route::PathCond;

/// Who is calling: what its certificate says, or nothing for a plaintext
/// caller (permissive mode). Labels are read from the certificate the
/// first time a rule asks for them.
#[derive(Debug, Default)]
pub struct Caller {
    pub service: String,
    pub zone: String,
    leaf: Option<common::rustls::pki_types::CertificateDer<'static>>,
    labels: std::sync::OnceLock<BTreeMap<String, String>>,
}

impl Caller {
    /// From a verified peer's SPIFFE ID and leaf certificate.
    pub fn from_peer(
        id: &model::ident::SpiffeId,
        leaf: Option<common::rustls::pki_types::CertificateDer<'static>>,
    ) -> Self {
        Self {
            service: id.service().unwrap_or_default().to_string(),
            zone: id.zone_name().unwrap_or_default().to_string(),
            leaf,
            labels: Default::default(),
        }
    }

    #[cfg(test)]
    fn with_labels(service: &str, zone: &str, labels: BTreeMap<String, String>) -> Self {
        Self {
            service: service.into(),
            zone: zone.into(),
            leaf: None,
            labels: labels.into(),
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.labels.get_or_init(|| {
            self.leaf
                .as_ref()
                .map(|d| common::pki::labels_of(d))
                .unwrap_or_default()
        })
    }
}

struct CallerMatch {
    service: Option<String>,
    zones: Option<Vec<String>>,
    labels: Vec<(String, String)>,
}

impl CallerMatch {
    fn matches(&self, c: &Caller) -> bool {
        self.service.as_deref().is_none_or(|s| s == c.service)
            && self.zones.as_ref().is_none_or(|z| z.contains(&c.zone))
            && (self.labels.is_empty()
                || self
                    .labels
                    .iter()
                    .all(|(k, v)| c.labels().get(k).is_some_and(|x| x == v)))
    }
}

/// Who and what a rule (or a fault) applies to: callers, and HTTP
/// conditions.
pub(crate) struct Condition {
    /// None: any caller, plaintext ones included.
    from: Option<Vec<CallerMatch>>,
    methods: Vec<http::Method>,
    paths: Vec<PathCond>,
    http_only: bool,
}

impl Condition {
    /// `what` names the rule in errors.
    pub(crate) fn build(
        what: &str,
        from: &[pb::Caller],
        methods: &[String],
        paths: &[pb::StringMatch],
        http_only: bool,
    ) -> Result<Self, String> {
        let methods = methods
            .iter()
            .map(|m| {
                http::Method::from_bytes(m.as_bytes())
                    .map_err(|_| format!("rule {what}: bad method {m:?}"))
            })
            .collect::<Result<_, _>>()?;
        let paths = paths
            .iter()
            .map(|m| PathCond::build(m).map_err(|e| format!("rule {what}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            from: (!from.is_empty()).then(|| {
                from.iter()
                    .map(|c| CallerMatch {
                        service: (!c.service.is_empty()).then(|| c.service.clone()),
                        zones: c.zones_given.then(|| c.zones.clone()),
                        labels: c
                            .labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    })
                    .collect()
            }),
            methods,
            paths,
            http_only,
        })
    }

    /// Whether `caller` (None: plaintext) making `req` (None: a TCP
    /// connection) is covered.
    pub(crate) fn matches(&self, caller: Option<&Caller>, req: Option<Request<'_>>) -> bool {
        match (&self.from, caller) {
            (None, _) => {}
            (Some(_), None) => return false,
            (Some(list), Some(c)) => {
                if !list.iter().any(|m| m.matches(c)) {
                    return false;
                }
            }
        }
        match req {
            None => !self.http_only,
            Some(r) => {
                (self.methods.is_empty() || self.methods.contains(r.method))
                    && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(r.path)))
            }
        }
    }
}

struct Rule {
    name: Arc<str>,
    deny: bool,
    shadow: bool,
    cond: Condition,
    zone_local: bool,
}

/// What a request (or connection) looks like to the rules.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// The rule that decided (`None`: the mesh default).
    pub rule: Option<Arc<str>>,
    /// A shadow rule or default that would have denied what is allowed.
    pub shadow_denied: Option<Arc<str>>,
}

/// The compiled inbound policy.
pub struct Access {
    rules: Vec<Rule>,
    default_deny: bool,
    default_shadow: bool,
    /// Some rule names caller labels (read from the certificate only then).
    pub needs_labels: bool,
    pub permissive: bool,
    /// `Kind/name` of the policies compiled in.
    pub policies: Vec<String>,
    /// Nothing to check: no rule and an enforcing allow default.
    pub allow_all: bool,
    /// Some rules are zone-local: the global's rules get a say first.
    has_zone_rules: bool,
    /// For /config_dump.
    summary: serde_json::Value,
}

pub const DEFAULT_RULE: &str = "mesh default (Mesh spec.access.default)";

impl Default for Access {
    fn default() -> Self {
        Self::build(&pb::InboundPolicy::default()).expect("empty policy")
    }
}

impl Access {
    pub fn build(p: &pb::InboundPolicy) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(p.rules.len());
        for r in &p.rules {
            rules.push(Rule {
                name: r.name.as_str().into(),
                deny: r.deny,
                shadow: r.shadow,
                cond: Condition::build(&r.name, &r.from, &r.methods, &r.paths, r.http_only)?,
                zone_local: r.zone_local,
            });
        }
        let permissive = match p.mtls_mode.as_str() {
            "" | "strict" => false,
            "permissive" => true,
            m => return Err(format!("unknown mTLS mode {m:?}")),
        };
        let needs_labels = p
            .rules
            .iter()
            .any(|r| r.from.iter().any(|c| !c.labels.is_empty()));
        let summary = serde_json::json!({
            "mtlsMode": if permissive { "permissive" } else { "strict" },
            "policies": p.policies,
            "rules": p.rules.iter().map(|r| serde_json::json!({
                "name": r.name,
                "action": if r.deny { "deny" } else { "allow" },
                "shadow": r.shadow,
                "zoneLocal": r.zone_local,
                "callers": r.from.len(),
                "methods": r.methods,
                "paths": r.paths.len(),
            })).collect::<Vec<_>>(),
            "default": if p.default_deny { "deny" } else { "allow" },
            "defaultMode": if p.default_shadow { "shadow" } else { "enforce" },
        });
        Ok(Self {
            summary,
            has_zone_rules: rules.iter().any(|r| r.zone_local),
            allow_all: rules.is_empty() && !p.default_deny,
            rules,
            default_deny: p.default_deny,
            default_shadow: p.default_shadow,
            needs_labels,
            permissive,
            policies: p.policies.clone(),
        })
    }

    pub fn dump(&self) -> serde_json::Value {
        self.summary.clone()
    }

    /// Decide for `caller` (None: plaintext) making `req` (None: a TCP
    /// connection).
    pub fn decide(&self, caller: Option<&Caller>, req: Option<Request<'_>>) -> Decision {
        if self.has_zone_rules {
            // The global's own first enforced match: a deny is final.
            let global = self
                .rules
                .iter()
                .filter(|r| !r.zone_local && !r.shadow)
                .find(|r| r.matches(caller, req));
            if let Some(r) = global.filter(|r| r.deny) {
                return Decision {
                    allow: false,
                    rule: Some(r.name.clone()),
                    shadow_denied: None,
                };
            }
        }
        let mut shadow_denied: Option<Arc<str>> = None;
        for r in &self.rules {
            if !r.matches(caller, req) {
                continue;
            }
            if r.shadow {
                if r.deny && shadow_denied.is_none() {
                    shadow_denied = Some(r.name.clone());
                }
                continue;
            }
            return Decision {
                allow: !r.deny,
                rule: Some(r.name.clone()),
                shadow_denied: shadow_denied.filter(|_| !r.deny),
            };
        }
        let deny = self.default_deny && !self.default_shadow;
        if self.default_deny && self.default_shadow && shadow_denied.is_none() {
            shadow_denied = Some(DEFAULT_RULE.into());
        }
        Decision {
            allow: !deny,
            rule: None,
            shadow_denied: shadow_denied.filter(|_| !deny),
        }
    }
}

impl Rule {
    fn matches(&self, caller: Option<&Caller>, req: Option<Request<'_>>) -> bool {
        self.cond.matches(caller, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(service: &str, zone: &str, labels: &[(&str, &str)]) -> Caller {
        Caller::with_labels(
            service,
            zone,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn rule(name: &str, deny: bool, from: Vec<pb::Caller>) -> pb::AccessRule {
        pb::AccessRule {
            name: name.into(),
            deny,
            from,
            ..Default::default()
        }
    }

    fn from(service: &str, zones: Option<&[&str]>, labels: &[(&str, &str)]) -> pb::Caller {
        pb::Caller {
            service: service.into(),
            zones: zones
                .unwrap_or_default()
                .iter()
                .map(|z| z.to_string())
                .collect(),
            zones_given: zones.is_some(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn get(path: &str) -> Option<Request<'_>> {
        Some(Request {
            method: &http::Method::GET,
            path,
        })
    }

    #[test]
    fn the_first_matching_rule_decides_and_the_default_takes_the_rest() {
        let p = pb::InboundPolicy {
            rules: vec![
                rule(
                    "deny-legacy",
                    true,
                    vec![from("", Some(&["legacy-1"]), &[])],
                ),
                rule("web", false, vec![from("web", None, &[])]),
                rule(
                    "canary",
                    false,
                    vec![from("", None, &[("track", "canary")])],
                ),
            ],
            default_deny: true,
            ..Default::default()
        };
        let a = Access::build(&p).unwrap();
        assert!(a.needs_labels && !a.allow_all && !a.permissive);
        let d = a.decide(Some(&caller("web", "eu-1", &[])), get("/"));
        assert!(d.allow);
        assert_eq!(d.rule.as_deref(), Some("web"));
        // The earlier deny wins over the later allow.
        let d = a.decide(Some(&caller("web", "legacy-1", &[])), get("/"));
        assert!(!d.allow);
        assert_eq!(d.rule.as_deref(), Some("deny-legacy"));
        let d = a.decide(Some(&caller("batch", "eu-1", &[("track", "canary")])), None);
        assert!(d.allow);
        let d = a.decide(Some(&caller("batch", "eu-1", &[("track", "stable")])), None);
        assert!(!d.allow && d.rule.is_none());
        // A plaintext caller matches no rule that names callers.
        assert!(!a.decide(None, get("/")).allow);
    }

    #[test]
    fn http_conditions_match_methods_and_paths_and_never_tcp() {
        let mut r = rule("reads", false, vec![]);
        r.methods = vec!["GET".into(), "HEAD".into()];
        r.paths = vec![pb::StringMatch {
            r#match: Some(pb::string_match::Match::Prefix("/v1".into())),
        }];
        r.http_only = true;
        let a = Access::build(&pb::InboundPolicy {
            rules: vec![r],
            default_deny: true,
            ..Default::default()
        })
        .unwrap();
        let c = caller("web", "z", &[]);
        assert!(a.decide(Some(&c), get("/v1/items")).allow);
        assert!(a.decide(Some(&c), get("/v1")).allow);
        assert!(!a.decide(Some(&c), get("/v10")).allow, "whole segments");
        let post = Request {
            method: &http::Method::POST,
            path: "/v1/items",
        };
        assert!(!a.decide(Some(&c), Some(post)).allow);
        assert!(!a.decide(Some(&c), None).allow, "TCP never matches");
        // A rule without conditions matches anyone, plaintext included.
        let open = Access::build(&pb::InboundPolicy {
            rules: vec![rule("all", false, vec![])],
            default_deny: true,
            ..Default::default()
        })
        .unwrap();
        assert!(open.decide(None, None).allow);
    }

    #[test]
    fn a_zone_local_rule_narrows_access_but_cannot_open_what_the_global_denies() {
        let zone = |name: &str, deny: bool, from: Vec<pb::Caller>, path: Option<&str>| {
            let mut r = rule(name, deny, from);
            r.zone_local = true;
            if let Some(p) = path {
                r.paths = vec![pb::StringMatch {
                    r#match: Some(pb::string_match::Match::Prefix(p.into())),
                }];
                r.http_only = true;
            }
            r
        };
        // Precedence put the (more specific) zone policy first.
        let a = Access::build(&pb::InboundPolicy {
            rules: vec![
                zone("batch-please", false, vec![from("batch", None, &[])], None),
                zone("no-admin", true, vec![], Some("/admin")),
                rule("web", false, vec![from("web", None, &[])]),
                rule("others", true, vec![]),
            ],
            ..Default::default()
        })
        .unwrap();
        let batch = caller("batch", "z", &[]);
        let web = caller("web", "z", &[]);
        let d = a.decide(Some(&batch), get("/"));
        assert!(!d.allow, "the global's deny stands");
        assert_eq!(d.rule.as_deref(), Some("others"));
        let d = a.decide(Some(&web), get("/admin/x"));
        assert!(!d.allow, "the zone's own deny applies");
        assert_eq!(d.rule.as_deref(), Some("no-admin"));
        assert!(a.decide(Some(&web), get("/x")).allow);
    }

    #[test]
    fn shadow_rules_and_a_shadow_default_count_without_denying() {
        let mut s = rule("would-deny-batch", true, vec![from("batch", None, &[])]);
        s.shadow = true;
        let a = Access::build(&pb::InboundPolicy {
            rules: vec![s, rule("web", false, vec![from("web", None, &[])])],
            default_deny: true,
            default_shadow: true,
            ..Default::default()
        })
        .unwrap();
        let d = a.decide(Some(&caller("batch", "z", &[])), None);
        assert!(d.allow, "shadow rules never deny");
        assert_eq!(d.shadow_denied.as_deref(), Some("would-deny-batch"));
        let d = a.decide(Some(&caller("other", "z", &[])), None);
        assert!(d.allow && d.rule.is_none());
        assert_eq!(d.shadow_denied.as_deref(), Some(DEFAULT_RULE));
        let d = a.decide(Some(&caller("web", "z", &[])), None);
        assert!(d.allow && d.shadow_denied.is_none());
        // With no rules and an allow default there is nothing to check.
        assert!(Access::default().allow_all);
    }
}
