//! Policies compiled into what one proxy needs: its inbound policy (mTLS
//! mode and access rules) and, per destination service, its routes. The
//! proxy evaluates plain data; targeting, precedence and regions are
//! resolved here. Only policies that apply to a proxy reach it. Zone
//! control planes compile this way for their proxies, and a standalone
//! sidecar (`dataplane --bootstrap`) for itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use model::policy::access::{AccessDefaults, AccessPolicySpec, Action, MtlsMode, MtlsPolicySpec};
use model::policy::access_log::AccessLogSpec;
use model::policy::balancer::LoadBalancerSpec;
use model::policy::breaker::CircuitBreakerSpec;
use model::policy::fault::{Fault, FaultInjectionSpec};
use model::policy::health::HealthCheckSpec;
use model::policy::ratelimit::{Limit, Per, RateLimitSpec};
use model::policy::retry::RetrySpec;
use model::policy::route::{self, Backend, HttpRouteSpec, PathMatch, TcpRouteSpec, ValueMatch};
use model::policy::timeout::TimeoutSpec;
use model::policy::trace::TraceSpec;
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
    pub access_logs: Vec<Policy<AccessLogSpec>>,
    pub traces: Vec<Policy<TraceSpec>>,
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
                } else if let Some(p) = model::policy::parse(r, "AccessLog", origin) {
                    set.access_logs.push(p);
                } else if let Some(p) = model::policy::parse(r, "Trace", origin) {
                    set.traces.push(p);
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
        let access_log = applicable(&self.access_logs, &f).first().map(|p| {
            policies.push(p.reference());
            access_log(p.reference(), &p.spec)
        });
        let trace = applicable(&self.traces, &f).first().map(|p| {
            policies.push(p.reference());
            pb::Trace {
                name: p.reference(),
                sampling: p.spec.ratio(),
                endpoint: p.spec.otlp.endpoint.clone(),
                protocol: p.spec.otlp.protocol_name().into(),
            }
        });
        pb::InboundPolicy {
            trace,
            access_log,
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
            gateway_drills: Vec::new(),
            traffic_report_ms: 0,
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
            until_unix_ms: 0,
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

fn access_log(name: String, s: &AccessLogSpec) -> pb::AccessLog {
    use model::policy::access_log::{Direction, Format};
    pb::AccessLog {
        name,
        format: match s.format {
            Format::Json => "json",
            Format::Text => "text",
        }
        .into(),
        file: s.file.clone().unwrap_or_default(),
        inbound: s.logs(Direction::Inbound),
        outbound: s.logs(Direction::Outbound),
        otlp_endpoint: s
            .otlp
            .as_ref()
            .map(|o| o.endpoint.clone())
            .unwrap_or_default(),
        otlp_protocol: s
            .otlp
            .as_ref()
            .map(|o| o.protocol_name().to_string())
            .unwrap_or_default(),
    }
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
mod tests;
