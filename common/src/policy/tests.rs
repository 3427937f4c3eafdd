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
    let all = format!("{H}kind: MtlsPolicy\nmetadata: {{name: all}}\nspec: {{mode: permissive}}\n");
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
