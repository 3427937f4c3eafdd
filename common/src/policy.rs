//! Policies compiled into what one proxy needs: its inbound policy (mTLS
//! mode and access rules) and, per destination service, its routes. The
//! proxy evaluates plain data; targeting, precedence and regions are
//! resolved here. Only policies that apply to a proxy reach it. Zone
//! control planes compile this way for their proxies, and a standalone
//! sidecar (`dataplane --bootstrap`) for itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use model::policy::access::{AccessDefaults, AccessPolicySpec, Action, MtlsMode, MtlsPolicySpec};
use model::policy::balancer::LoadBalancerSpec;
use model::policy::breaker::CircuitBreakerSpec;
use model::policy::fault::{Fault, FaultInjectionSpec};
use model::policy::health::HealthCheckSpec;
use model::policy::ratelimit::{Limit, Per, RateLimitSpec};
use model::policy::retry::RetrySpec;
use model::policy::route::{self, Backend, HttpRouteSpec, PathMatch, TcpRouteSpec, ValueMatch};
use model::policy::timeout::TimeoutSpec;
use model::policy::{applicable, Facts, Mode, Origin, Policy, Selector};
use model::resource::{MeshSpec, Resource};
use proto::v1 as pb;
use serde_json::Value;

/// Every policy the zone knows, parsed once per change.
#[derive(Default)]
pub struct PolicySet {
    pub access: Vec<Policy<AccessPolicySpec>>,
    pub mtls: Vec<Policy<MtlsPolicySpec>>,
    pub http: Vec<Policy<HttpRouteSpec>>,
    pub tcp: Vec<Policy<TcpRouteSpec>>,
    pub faults: Vec<Policy<FaultInjectionSpec>>,
    pub limits: Vec<Policy<RateLimitSpec>>,
    pub retries: Vec<Policy<RetrySpec>>,
    pub timeouts: Vec<Policy<TimeoutSpec>>,
    pub breakers: Vec<Policy<CircuitBreakerSpec>>,
    pub balancers: Vec<Policy<LoadBalancerSpec>>,
    pub health: Vec<Policy<HealthCheckSpec>>,
    pub defaults: AccessDefaults,
    /// Zone → region, for callers named by region.
    pub regions: BTreeMap<String, String>,
}

/// The proxy a config is compiled for.
pub struct ProxyFacts {
    pub service: String,
    pub zone: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
}

impl ProxyFacts {
    pub(crate) fn facts(&self) -> Facts<'_> {
        Facts {
            service: &self.service,
            zone: &self.zone,
            region: &self.region,
            labels: &self.labels,
        }
    }
}

impl PolicySet {
    /// From the global's resources (`Kind/name` → document) and the zone's
    /// own (`--policy-dir`), with the zones' regions.
    pub fn build<'a>(
        global: impl Iterator<Item = &'a Value>,
        local: &[Resource],
        regions: BTreeMap<String, String>,
    ) -> Arc<Self> {
        let mut set = PolicySet {
            regions,
            ..Default::default()
        };
        let global: Vec<Resource> = global
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect();
        for (origin, list) in [(Origin::Global, &global[..]), (Origin::Zone, local)] {
            for r in list {
                if origin == Origin::Global && r.kind == "Mesh" && r.metadata.name == "default" {
                    set.defaults = MeshSpec::from_resource(r).access;
                }
                if let Some(p) = model::policy::parse(r, "AccessPolicy", origin) {
                    set.access.push(p);
                } else if let Some(p) = model::policy::parse(r, "MtlsPolicy", origin) {
                    set.mtls.push(p);
                } else if let Some(p) = model::policy::parse(r, "HttpRoute", origin) {
                    set.http.push(p);
                } else if let Some(p) = model::policy::parse(r, "TcpRoute", origin) {
                    set.tcp.push(p);
                } else if let Some(p) = model::policy::parse(r, "FaultInjection", origin) {
                    set.faults.push(p);
                } else if let Some(p) = model::policy::parse(r, "RateLimit", origin) {
                    set.limits.push(p);
                } else if let Some(p) = model::policy::parse(r, "Retry", origin) {
                    set.retries.push(p);
                } else if let Some(p) = model::policy::parse(r, "Timeout", origin) {
                    set.timeouts.push(p);
                } else if let Some(p) = model::policy::parse(r, "CircuitBreaker", origin) {
                    set.breakers.push(p);
                } else if let Some(p) = model::policy::parse(r, "LoadBalancer", origin) {
                    set.balancers.push(p);
                } else if let Some(p) = model::policy::parse(r, "HealthCheck", origin) {
                    set.health.push(p);
                }
            }
        }
        Arc::new(set)
    }

    /// The inbound policy of a proxy.
    pub fn inbound(&self, proxy: &ProxyFacts) -> pb::InboundPolicy {
        let f = proxy.facts();
        let mut policies = Vec::new();
        let mtls = applicable(&self.mtls, &f).first().map(|p| {
            policies.push(p.reference());
            p.spec.mode
        });
        let mut rules: Vec<pb::AccessRule> = Vec::new();
        for p in applicable(&self.access, &f) {
            policies.push(p.reference());
            for (i, r) in p.spec.rules.iter().enumerate() {
                let when = r.when.clone().unwrap_or_default();
                rules.push(pb::AccessRule {
                    name: format!(
                        "{}/{}",
                        p.reference(),
                        route::rule_name(r.name.as_deref(), i)
                    ),
                    deny: r.action == Action::Deny,
                    shadow: p.spec.mode == Mode::Shadow,
                    from: r.from.iter().map(|s| self.caller(s)).collect(),
                    methods: when.methods.clone(),
                    paths: when.paths.iter().map(path_match).collect(),
                    http_only: r.when.is_some(),
                    zone_local: p.origin == Origin::Zone,
                });
            }
        }
        let mut faults = Vec::new();
        for p in applicable(&self.faults, &f) {
            policies.push(p.reference());
            for (i, x) in p.spec.faults.iter().enumerate() {
                faults.push(self.fault(
                    format!(
                        "{}/{}",
                        p.reference(),
                        route::rule_name(x.name.as_deref(), i)
                    ),
                    x,
                ));
            }
        }
        let mut rate_limits = Vec::new();
        for p in applicable(&self.limits, &f) {
            policies.push(p.reference());
            for (i, l) in p.spec.limits.iter().enumerate() {
                rate_limits.push(self.rate_limit(
                    format!(
                        "{}/{}",
                        p.reference(),
                        route::rule_name(l.name.as_deref(), i)
                    ),
                    l,
                ));
            }
        }
        let health_check = applicable(&self.health, &f).first().map(|p| {
            policies.push(p.reference());
            health_check(p.reference(), &p.spec)
        });
        pb::InboundPolicy {
            health_check,
            faults,
            rate_limits,
            mtls_mode: match mtls.unwrap_or_default() {
                MtlsMode::Strict => "strict",
                MtlsMode::Permissive => "permissive",
            }
            .into(),
            rules,
            default_deny: self.defaults.default == Action::Deny,
            default_shadow: self.defaults.mode == Mode::Shadow,
            policies,
        }
    }

    fn fault(&self, name: String, f: &Fault) -> pb::Fault {
        let when = f.when.clone().unwrap_or_default();
        let per_million = |p: f64| (p * 10_000.0).round().clamp(1.0, 1_000_000.0) as u32;
        let (delay_ms, delay_per_million) = f
            .delay
            .as_ref()
            .map(|d| {
                (
                    d.duration.0.as_millis().max(1) as u64,
                    per_million(d.percent),
                )
            })
            .unwrap_or_default();
        let abort = f.abort.as_ref();
        pb::Fault {
            name,
            from: f.from.iter().map(|s| self.caller(s)).collect(),
            methods: when.methods.clone(),
            paths: when.paths.iter().map(path_match).collect(),
            http_only: f.when.is_some(),
            delay_ms,
            delay_per_million,
            abort_per_million: abort.map(|a| per_million(a.percent)).unwrap_or(0),
            abort_http_status: abort.and_then(|a| a.http_status).unwrap_or(0) as u32,
            abort_grpc_status: abort.and_then(|a| a.grpc_status).unwrap_or(0),
            abort_reset: abort.is_some_and(|a| a.reset),
        }
    }

    fn rate_limit(&self, name: String, l: &Limit) -> pb::RateLimit {
        let when = l.when.clone().unwrap_or_default();
        let (tokens, interval, burst) = match (&l.http, &l.tcp) {
            (Some(h), _) => (h.requests, h.interval.0, h.burst),
            (None, Some(t)) => (t.connections, t.interval.0, t.burst),
            (None, None) => (0, std::time::Duration::ZERO, None),
        };
        pb::RateLimit {
            name,
            from: l.from.iter().map(|s| self.caller(s)).collect(),
            methods: when.methods.clone(),
            paths: when.paths.iter().map(path_match).collect(),
            http_only: l.http.is_some(),
            tcp: l.tcp.is_some(),
            tokens,
            interval_ms: interval.as_millis().max(1) as u64,
            burst: burst.unwrap_or(tokens),
            per_caller: l.per == Some(Per::Caller),
            per_header: match &l.per {
                Some(Per::Header(h)) => h.clone(),
                _ => String::new(),
            },
        }
    }

    /// A caller selector, with a region resolved to its zones.
    fn caller(&self, s: &Selector) -> pb::Caller {
        let zones_given = s.zone.is_some() || s.region.is_some();
        let zones = self
            .regions
            .iter()
            .filter(|(z, r)| {
                s.zone.as_deref().is_none_or(|x| x == z.as_str())
                    && s.region.as_deref().is_none_or(|x| x == r.as_str())
            })
            .map(|(z, _)| z.clone())
            .chain(
                // A zone not known yet (no inventory) is still named.
                s.zone
                    .clone()
                    .filter(|z| s.region.is_none() && !self.regions.contains_key(z)),
            )
            .collect();
        pb::Caller {
            service: s.service.clone().unwrap_or_default(),
            zones: if zones_given { zones } else { vec![] },
            zones_given,
            labels: s.labels.clone().into_iter().collect(),
        }
    }

    /// What a proxy's routes say about calls to `service`: its HTTP rules
    /// in precedence order, its TCP route, and the policies they came from.
    pub fn routes(
        &self,
        proxy: &ProxyFacts,
        service: &str,
    ) -> (Vec<pb::HttpRouteRule>, Option<pb::TcpRoute>, Vec<String>) {
        let f = proxy.facts();
        let mut policies = Vec::new();
        let mut http = Vec::new();
        for p in applicable(&self.http, &f) {
            if p.spec.to.service != service {
                continue;
            }
            policies.push(p.reference());
            for (i, r) in p.spec.rules.iter().enumerate() {
                http.push(http_rule(
                    &format!(
                        "{}/{}",
                        p.reference(),
                        route::rule_name(r.name.as_deref(), i)
                    ),
                    r,
                ));
            }
        }
        let tcp = applicable(&self.tcp, &f)
            .into_iter()
            .find(|p| p.spec.to.service == service)
            .map(|p| {
                policies.push(p.reference());
                pb::TcpRoute {
                    name: p.reference(),
                    backends: p.spec.backends.iter().map(backend).collect(),
                }
            });
        (http, tcp, policies)
    }
}

/// Milliseconds, at least 1 (0 means "not set" in proxy config).
pub(crate) fn ms(d: std::time::Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

fn health_check(name: String, s: &HealthCheckSpec) -> pb::HealthCheck {
    let ms = |d: &Option<model::resource::Dur>| d.as_ref().map(|d| ms(d.0)).unwrap_or(0);
    let (kind, path, expected, service) = match (&s.http, &s.grpc) {
        (Some(h), _) => (
            "http",
            h.path.clone(),
            h.expected_statuses.iter().map(|s| u32::from(*s)).collect(),
            String::new(),
        ),
        (None, Some(g)) => ("grpc", String::new(), vec![], g.service.clone()),
        (None, None) => ("tcp", String::new(), vec![], String::new()),
    };
    pb::HealthCheck {
        name,
        kind: kind.into(),
        path,
        expected_statuses: expected,
        grpc_service: service,
        interval_ms: ms(&s.interval),
        timeout_ms: ms(&s.timeout),
        // 0 is a valid jitter: none.
        jitter_ms: s
            .jitter
            .as_ref()
            .map(|d| d.0.as_millis() as u64)
            .unwrap_or(0),
        unhealthy_threshold: s.unhealthy_threshold.unwrap_or(0),
        healthy_threshold: s.healthy_threshold.unwrap_or(0),
    }
}

fn path_match(p: &PathMatch) -> pb::StringMatch {
    use pb::string_match::Match;
    pb::StringMatch {
        r#match: Some(match (&p.exact, &p.prefix, &p.regex) {
            (Some(x), _, _) => Match::Exact(x.clone()),
            (_, Some(x), _) => Match::Prefix(x.clone()),
            (_, _, Some(x)) => Match::Regex(x.clone()),
            _ => Match::Present(true),
        }),
    }
}

fn value_match(v: &ValueMatch) -> pb::NamedMatch {
    use pb::string_match::Match;
    let m = if let Some(x) = &v.exact {
        Match::Exact(x.clone())
    } else if let Some(x) = &v.prefix {
        Match::Prefix(x.clone())
    } else if let Some(x) = &v.regex {
        Match::Regex(x.clone())
    } else {
        Match::Present(v.present.unwrap_or(true))
    };
    pb::NamedMatch {
        name: v.name.clone(),
        r#match: Some(pb::StringMatch { r#match: Some(m) }),
    }
}

fn backend(b: &Backend) -> pb::Backend {
    pb::Backend {
        weight: b.weight,
        service: b.service.clone().unwrap_or_default(),
        zones: b.zones.clone(),
        labels: b.labels.clone().into_iter().collect(),
    }
}

fn header_ops(o: &route::HeaderOps) -> pb::HeaderOps {
    pb::HeaderOps {
        set: o.set.clone().into_iter().collect(),
        add: o.add.clone().into_iter().collect(),
        remove: o.remove.clone(),
    }
}

fn http_rule(name: &str, r: &route::HttpRule) -> pb::HttpRouteRule {
    pb::HttpRouteRule {
        name: name.to_string(),
        matches: r
            .matches
            .iter()
            .map(|m| pb::HttpMatch {
                path: m.path.as_ref().map(path_match),
                method: m.method.clone().unwrap_or_default(),
                headers: m.headers.iter().map(value_match).collect(),
                query: m.query.iter().map(value_match).collect(),
            })
            .collect(),
        backends: r.backends.iter().map(backend).collect(),
        mirror: r.mirror.as_ref().map(|m| pb::Mirror {
            backend: Some(pb::Backend {
                weight: 1,
                service: m.service.clone().unwrap_or_default(),
                zones: m.zones.clone(),
                labels: m.labels.clone().into_iter().collect(),
            }),
            per_million: (m.percent * 10_000.0).round() as u32,
        }),
        request_headers: r.request_headers.as_ref().map(header_ops),
        response_headers: r.response_headers.as_ref().map(header_ops),
        rewrite_prefix: r
            .rewrite
            .as_ref()
            .and_then(|w| w.path_prefix.clone())
            .unwrap_or_default(),
        rewrite_path: r
            .rewrite
            .as_ref()
            .and_then(|w| w.full_path.clone())
            .unwrap_or_default(),
        redirect: r.redirect.as_ref().map(|d| pb::Redirect {
            scheme: d.scheme.clone().unwrap_or_default(),
            host: d.host.clone().unwrap_or_default(),
            port: d.port.map(u32::from).unwrap_or(0),
            path: d.path.clone().unwrap_or_default(),
            status: u32::from(d.status_code),
        }),
        timeout_ms: r
            .timeout
            .map(|t| t.0.as_millis().max(1) as u64)
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(yaml: &str) -> Resource {
        model::resource::parse_documents("t", yaml)
            .unwrap()
            .remove(0)
    }

    fn proxy(service: &str, zone: &str, labels: &[(&str, &str)]) -> ProxyFacts {
        ProxyFacts {
            service: service.into(),
            zone: zone.into(),
            region: "eu".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn set(global: &[&str], local: &[&str]) -> Arc<PolicySet> {
        let g: Vec<Value> = global
            .iter()
            .map(|y| serde_json::to_value(res(y)).unwrap())
            .collect();
        let l: Vec<Resource> = local.iter().map(|y| res(y)).collect();
        let regions = [
            ("eu-1".to_string(), "eu".to_string()),
            ("eu-2".to_string(), "eu".to_string()),
            ("us-1".to_string(), "us".to_string()),
        ]
        .into();
        PolicySet::build(g.iter(), &l, regions)
    }

    const H: &str = "apiVersion: tern.dev/v1alpha1\n";

    #[test]
    fn access_rules_are_ordered_by_precedence_and_regions_become_zones() {
        let mesh = format!("{H}kind: AccessPolicy\nmetadata: {{name: mesh-wide}}\nspec:\n  rules:\n    - {{name: no-us, action: deny, from: [{{region: us}}]}}\n");
        let api = format!("{H}kind: AccessPolicy\nmetadata: {{name: api}}\nspec:\n  targetRef: {{service: api}}\n  mode: shadow\n  rules:\n    - {{action: allow, from: [{{service: web, region: eu}}], when: {{methods: [GET]}}}}\n");
        let web = format!("{H}kind: AccessPolicy\nmetadata: {{name: web}}\nspec:\n  targetRef: {{service: web}}\n  rules: [{{action: deny}}]\n");
        let s = set(&[&mesh, &api, &web], &[]);
        let ib = s.inbound(&proxy("api", "eu-1", &[]));
        let names: Vec<&str> = ib.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["AccessPolicy/api/rule-1", "AccessPolicy/mesh-wide/no-us"]
        );
        assert!(ib.rules[0].shadow && !ib.rules[0].deny && ib.rules[0].http_only);
        assert_eq!(ib.rules[0].from[0].zones, ["eu-1", "eu-2"]);
        assert_eq!(ib.rules[0].from[0].service, "web");
        assert_eq!(ib.rules[1].from[0].zones, ["us-1"]);
        assert!(ib.rules[1].deny && !ib.rules[1].shadow);
        assert_eq!(ib.policies, ["AccessPolicy/api", "AccessPolicy/mesh-wide"]);
        assert_eq!(ib.mtls_mode, "strict");
        assert!(!ib.default_deny);
    }

    #[test]
    fn zone_local_rules_are_ordered_by_precedence_and_marked() {
        let deny = format!("{H}kind: AccessPolicy\nmetadata: {{name: g}}\nspec:\n  rules: [{{name: no-batch, action: deny, from: [{{service: batch}}]}}]\n");
        let allow = format!("{H}kind: AccessPolicy\nmetadata: {{name: z}}\nspec:\n  targetRef: {{service: api}}\n  rules: [{{name: batch-ok, action: allow, from: [{{service: batch}}]}}, {{name: zone-deny, action: deny}}]\n");
        let s = set(&[&deny], &[&allow]);
        let ib = s.inbound(&proxy("api", "eu-1", &[]));
        let names: Vec<(&str, bool)> = ib
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r.zone_local))
            .collect();
        // The zone's policy is more specific, so its rules come first; the
        // proxy still denies what the global's rules deny (access.rs).
        assert_eq!(
            names,
            [
                ("AccessPolicy/z (zone)/batch-ok", true),
                ("AccessPolicy/z (zone)/zone-deny", true),
                ("AccessPolicy/g/no-batch", false),
            ]
        );
    }

    #[test]
    fn the_most_specific_mtls_policy_wins_and_the_mesh_default_is_compiled() {
        let all =
            format!("{H}kind: MtlsPolicy\nmetadata: {{name: all}}\nspec: {{mode: permissive}}\n");
        let api = format!("{H}kind: MtlsPolicy\nmetadata: {{name: api}}\nspec: {{targetRef: {{service: api}}, mode: strict}}\n");
        let mesh = format!("{H}kind: Mesh\nmetadata: {{name: default}}\nspec: {{access: {{default: deny, mode: shadow}}}}\n");
        let s = set(&[&all, &api, &mesh], &[]);
        assert_eq!(s.inbound(&proxy("api", "eu-1", &[])).mtls_mode, "strict");
        let web = s.inbound(&proxy("web", "eu-1", &[]));
        assert_eq!(web.mtls_mode, "permissive");
        assert!(web.default_deny && web.default_shadow);
    }

    /// Faults reach the destinations they target, most specific policy
    /// first, with shares in millionths and regions resolved to zones.
    #[test]
    fn faults_are_compiled_for_the_destinations_they_target() {
        let mesh = format!("{H}kind: FaultInjection\nmetadata: {{name: all}}\nspec:\n  faults: [{{name: slow, delay: {{duration: 250ms, percent: 12.5}}}}]\n");
        let api = format!("{H}kind: FaultInjection\nmetadata: {{name: api}}\nspec:\n  targetRef: {{service: api}}\n  faults:\n    - {{name: us-aborts, from: [{{region: us}}], when: {{methods: [GET]}}, abort: {{grpcStatus: 14, percent: 100}}}}\n    - {{name: resets, abort: {{reset: true, percent: 0.01}}}}\n");
        let s = set(&[&mesh, &api], &[]);
        let ib = s.inbound(&proxy("api", "eu-1", &[]));
        let names: Vec<&str> = ib.faults.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "FaultInjection/api/us-aborts",
                "FaultInjection/api/resets",
                "FaultInjection/all/slow"
            ]
        );
        let f = &ib.faults[0];
        assert_eq!(f.from[0].zones, ["us-1"]);
        assert!(f.http_only && f.abort_grpc_status == 14 && f.abort_per_million == 1_000_000);
        assert_eq!(ib.faults[1].abort_per_million, 100);
        assert!(ib.faults[1].abort_reset && !ib.faults[1].http_only);
        assert_eq!(
            (ib.faults[2].delay_ms, ib.faults[2].delay_per_million),
            (250, 125_000)
        );
        assert!(ib.policies.contains(&"FaultInjection/api".to_string()));
        let web = s.inbound(&proxy("web", "eu-1", &[]));
        assert_eq!(web.faults.len(), 1, "only the mesh-wide one");
    }

    /// Rate limits compile to token buckets (burst defaulting to the
    /// rate), HTTP ones never matching TCP, keyed as declared.
    #[test]
    fn rate_limits_are_compiled_for_the_destinations_they_target() {
        let api = format!("{H}kind: RateLimit\nmetadata: {{name: api}}\nspec:\n  targetRef: {{service: api}}\n  limits:\n    - {{name: reads, from: [{{service: web}}], http: {{requests: 600, interval: 1m}}, per: caller}}\n    - {{name: keys, http: {{requests: 5, interval: 1s, burst: 10}}, per: {{header: x-api-key}}}}\n    - {{name: conns, tcp: {{connections: 50, interval: 1s}}}}\n");
        let s = set(&[&api], &[]);
        let ib = s.inbound(&proxy("api", "eu-1", &[]));
        let l = &ib.rate_limits;
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].name, "RateLimit/api/reads");
        assert!(l[0].http_only && !l[0].tcp && l[0].per_caller);
        assert_eq!(
            (l[0].tokens, l[0].interval_ms, l[0].burst),
            (600, 60_000, 600)
        );
        assert_eq!((l[1].burst, l[1].per_header.as_str()), (10, "x-api-key"));
        assert!(l[2].tcp && !l[2].http_only);
        assert!(s.inbound(&proxy("web", "eu-1", &[])).rate_limits.is_empty());
    }

    /// A field the most specific policy leaves out comes from the next one;
    /// a policy naming the destination beats a mesh-wide one at equal
    /// target specificity; policies for other destinations or callers do
    /// not apply.
    #[test]
    fn retry_and_timeout_policies_merge_field_by_field_in_precedence_order() {
        let mesh = format!("{H}kind: Retry\nmetadata: {{name: mesh}}\nspec:\n  http: {{attempts: 2, perTryTimeout: 1s, budget: {{percent: 5, minPerSecond: 1}}}}\n  tcp: {{connectAttempts: 4}}\n");
        let api = format!("{H}kind: Retry\nmetadata: {{name: api}}\nspec:\n  to: {{service: api}}\n  http: {{attempts: 5, on: [5xx], statusCodes: [429], idempotentMethods: [PUT]}}\n");
        let web_api = format!("{H}kind: Retry\nmetadata: {{name: web-api}}\nspec:\n  targetRef: {{service: web}}\n  to: {{service: api}}\n  http: {{backoff: {{base: 10ms, max: 80ms}}}}\n");
        let other = format!("{H}kind: Retry\nmetadata: {{name: db}}\nspec:\n  to: {{service: db}}\n  http: {{attempts: 9}}\n");
        let t_mesh = format!(
            "{H}kind: Timeout\nmetadata: {{name: mesh}}\nspec:\n  connect: 2s\n  request: 20s\n"
        );
        let t_api = format!("{H}kind: Timeout\nmetadata: {{name: api}}\nspec:\n  to: {{service: api}}\n  request: infinite\n  idle: 5m\n");
        let s = set(&[&mesh, &api, &web_api, &other, &t_mesh, &t_api], &[]);
        let (r, policies) = s.resilience(&proxy("web", "eu-1", &[]), "api");
        let r = r.unwrap();
        let retry = r.retry.unwrap();
        assert_eq!(
            retry.attempts, 5,
            "the destination's policy beats the mesh's"
        );
        assert_eq!(retry.per_try_timeout_ms, 1000, "from the mesh's");
        assert_eq!((retry.backoff_base_ms, retry.backoff_max_ms), (10, 80));
        assert!(retry.on_given);
        assert_eq!(retry.on, ["5xx"]);
        assert_eq!(retry.status_codes, [429]);
        assert_eq!(retry.idempotent_methods, ["PUT"]);
        assert!(retry.budget_given);
        assert_eq!(
            (retry.budget_percent, retry.budget_min_per_second),
            (5.0, 1)
        );
        assert_eq!(retry.tcp_connect_attempts, 4);
        let t = r.timeouts.unwrap();
        assert_eq!(t.connect_ms, 2000);
        assert!(t.request_infinite && t.request_ms == 0);
        assert_eq!(t.idle_ms, 300_000);
        assert_eq!(
            policies,
            [
                "Retry/web-api",
                "Retry/api",
                "Retry/mesh",
                "Timeout/api",
                "Timeout/mesh"
            ]
        );
        // Another caller does not get web's backoff; db's attempts stay db's.
        let (r, _) = s.resilience(&proxy("batch", "eu-1", &[]), "api");
        assert_eq!(r.unwrap().retry.unwrap().backoff_base_ms, 0);
        let (r, _) = s.resilience(&proxy("web", "eu-1", &[]), "db");
        assert_eq!(r.unwrap().retry.unwrap().attempts, 9);
        // A CircuitBreaker merges the same way; `0` given is kept apart
        // from "not given" where 0 means something.
        let b_mesh = format!("{H}kind: CircuitBreaker\nmetadata: {{name: mesh}}\nspec:\n  limits: {{maxRequests: 100, maxPendingRequests: 10}}\n  outlierDetection: {{consecutive5xx: 7, maxEjectionPercent: 30}}\n");
        let b_api = format!("{H}kind: CircuitBreaker\nmetadata: {{name: api}}\nspec:\n  to: {{service: api}}\n  limits: {{maxPendingRequests: 0}}\n  outlierDetection: {{consecutive5xx: 0, baseEjectionTime: 1m}}\n");
        let s = set(&[&b_mesh, &b_api], &[]);
        let (r, policies) = s.resilience(&proxy("web", "eu-1", &[]), "api");
        let b = r.unwrap().breaker.unwrap();
        assert_eq!(b.max_requests, 100);
        assert!(b.max_pending_given && b.max_pending_requests == 0);
        assert!(
            b.consecutive_5xx_given && b.consecutive_5xx == 0,
            "turned off"
        );
        assert_eq!(b.base_ejection_ms, 60_000);
        assert!(b.max_ejection_percent_given && b.max_ejection_percent == 30);
        assert!(!b.max_retries_given && !b.success_rate_given);
        assert_eq!(policies, ["CircuitBreaker/api", "CircuitBreaker/mesh"]);
        // No policy at all: nothing compiled, the proxy's defaults apply.
        let none = set(&[], &[]);
        assert_eq!(none.resilience(&proxy("web", "eu-1", &[]), "api").0, None);
    }

    /// The first failover entry naming the caller's zone or region decides
    /// where it may go: a zone list ranks those zones after its own and
    /// drops the rest; `scope: zone` keeps its zone only; `region` its
    /// region; locality off puts everything in one tier.
    #[test]
    fn load_balancer_failover_reranks_or_drops_endpoints_per_caller_zone() {
        let lb = format!("{H}kind: LoadBalancer\nmetadata: {{name: lb}}\nspec:\n  to: {{service: api}}\n  algorithm: least-request\n  failover:\n    - {{from: {{zone: eu-1}}, zones: [us-1]}}\n    - {{from: {{zone: eu-2}}, scope: zone}}\n    - {{from: {{region: us}}, scope: region}}\n");
        let flat = format!("{H}kind: LoadBalancer\nmetadata: {{name: flat}}\nspec:\n  targetRef: {{service: batch}}\n  localityAware: false\n");
        let s = set(&[&lb, &flat], &[]);
        let ep = |zone: &str, region: &str, priority: u32| pb::Endpoint {
            zone: zone.into(),
            region: region.into(),
            priority,
            ..Default::default()
        };
        let all = || {
            vec![
                ep("eu-1", "eu", 0),
                ep("eu-2", "eu", 1),
                ep("us-1", "us", 2),
                ep("us-2", "us", 2),
            ]
        };
        let ranked = |p: &ProxyFacts| {
            let (r, _) = s.resilience(p, "api");
            let lb = r.unwrap().balancer.unwrap();
            let mut eps = all();
            crate::resilience::apply_locality(&lb, p, &mut eps);
            eps.iter()
                .map(|e| format!("{}:{}", e.zone, e.priority))
                .collect::<Vec<_>>()
        };
        assert_eq!(ranked(&proxy("web", "eu-1", &[])), ["eu-1:0", "us-1:1"]);
        assert_eq!(ranked(&proxy("web", "eu-2", &[])), ["eu-2:1"]);
        let us = ProxyFacts {
            region: "us".into(),
            ..proxy("web", "us-1", &[])
        };
        assert_eq!(ranked(&us), ["us-1:2", "us-2:2"]);
        let (r, _) = s.resilience(&proxy("web", "eu-1", &[]), "api");
        assert_eq!(r.unwrap().balancer.unwrap().algorithm, "least-request");
        // batch: locality off, everything in one tier.
        let b = proxy("batch", "eu-1", &[]);
        let (r, _) = s.resilience(&b, "db");
        let lb = r.unwrap().balancer.unwrap();
        let mut eps = all();
        crate::resilience::apply_locality(&lb, &b, &mut eps);
        assert!(eps.len() == 4 && eps.iter().all(|e| e.priority == 0));
    }

    /// The most specific HealthCheck applies, compiled into the checked
    /// proxy's inbound policy; proxies of other services get none.
    #[test]
    fn health_checks_reach_the_instances_they_target() {
        let mesh = format!("{H}kind: HealthCheck\nmetadata: {{name: mesh}}\nspec: {{tcp: {{}}}}\n");
        let api = format!("{H}kind: HealthCheck\nmetadata: {{name: api}}\nspec:\n  targetRef: {{service: api}}\n  interval: 2s\n  jitter: 0s\n  unhealthyThreshold: 4\n  http: {{path: /healthz, expectedStatuses: [204]}}\n");
        let s = set(&[&mesh, &api], &[]);
        let c = s.inbound(&proxy("api", "eu-1", &[])).health_check.unwrap();
        assert_eq!(c.name, "HealthCheck/api");
        assert_eq!((c.kind.as_str(), c.path.as_str()), ("http", "/healthz"));
        assert_eq!(c.expected_statuses, [204]);
        assert_eq!(
            (c.interval_ms, c.jitter_ms, c.unhealthy_threshold),
            (2000, 0, 4)
        );
        assert_eq!(c.healthy_threshold, 0, "the default");
        let web = s.inbound(&proxy("web", "eu-1", &[])).health_check.unwrap();
        assert_eq!(
            (web.name.as_str(), web.kind.as_str()),
            ("HealthCheck/mesh", "tcp")
        );
        assert_eq!(
            set(&[], &[])
                .inbound(&proxy("web", "eu-1", &[]))
                .health_check,
            None
        );
    }

    #[test]
    fn routes_reach_only_the_callers_they_target() {
        let canary = format!("{H}kind: HttpRoute\nmetadata: {{name: canary}}\nspec:\n  targetRef: {{zone: eu-1}}\n  to: {{service: api}}\n  rules:\n    - matches: [{{path: {{prefix: /v2}}, headers: [{{name: x-user, exact: alice}}]}}]\n      backends: [{{weight: 90, labels: {{version: v1}}}}, {{weight: 10, zones: [us-1]}}]\n      mirror: {{service: shadow, percent: 12.5}}\n      timeout: 2s\n");
        let tcp = format!("{H}kind: TcpRoute\nmetadata: {{name: db}}\nspec:\n  to: {{service: db}}\n  backends: [{{weight: 1, zones: [us-1]}}]\n");
        let s = set(&[&canary, &tcp], &[]);
        let (http, t, pols) = s.routes(&proxy("web", "eu-1", &[]), "api");
        assert_eq!(http.len(), 1);
        assert!(t.is_none());
        assert_eq!(pols, ["HttpRoute/canary"]);
        let r = &http[0];
        assert_eq!(r.name, "HttpRoute/canary/rule-1");
        assert_eq!(r.backends[1].zones, ["us-1"]);
        assert_eq!(r.mirror.as_ref().unwrap().per_million, 125_000);
        assert_eq!(r.timeout_ms, 2000);
        // Not for callers in another zone.
        assert!(s.routes(&proxy("web", "eu-2", &[]), "api").0.is_empty());
        let (_, t, _) = s.routes(&proxy("web", "eu-2", &[]), "db");
        assert_eq!(t.unwrap().name, "TcpRoute/db");
    }
}
