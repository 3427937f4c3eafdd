//! Explain one proxy (`ternctl inspect dataplane`, asked by the global over
//! the sync stream, and the zone-cp's `/dataplanes/NAME`): who it is, the
//! policies that apply to it and where each came from, and the inbound rules,
//! routes and endpoints they compile to — the same compilation its config
//! comes from.

use std::collections::BTreeMap;

use proto::v1 as pb;
use proto::ProxyItem;
use serde_json::{json, Value};

use crate::compile::{self, ProxyKind};
use crate::Zone;
use common::policy::ProxyFacts;

/// The explain document for the proxy registered as `instance`.
/// Every proxy of the zone: what it is, what it runs, its certificate and
/// how far it is in sync.
pub fn dataplanes(z: &Zone) -> Value {
    let latest = z.global.version();
    Value::Array(
        z.registry
            .all()
            .into_iter()
            .map(|e| {
                let serving =
                    e.kind != "gateway" && e.ready && !e.unhealthy && !e.unreachable;
                serde_json::json!({
                    "name": e.instance,
                    "zone": z.config.zone,
                    "service": e.service,
                    "kind": e.kind,
                    "address": format!("{}:{}", e.address, e.port),
                    "version": e.status.version,
                    "connected": e.connected,
                    "serving": serving,
                    "health": if e.unhealthy { "unhealthy" } else if e.unreachable { "unreachable" } else { "ok" },
                    "certificateNotAfter": (e.status.cert_not_after > 0)
                        .then(|| model::token::fmt_unix(e.status.cert_not_after)),
                    "ackedVersion": e.status.acked_version,
                    "lastNack": e.status.last_nack,
                    "globalVersion": latest,
                })
            })
            .collect(),
    )
}

pub fn dataplane(z: &Zone, instance: &str) -> Result<Value, String> {
    let e = z.registry.get(instance).ok_or_else(|| {
        format!(
            "no dataplane {instance:?} in zone {}; `ternctl inspect zones` lists each zone's proxies",
            z.config.zone
        )
    })?;
    let kind = if e.kind == "gateway" {
        ProxyKind::Gateway
    } else {
        ProxyKind::Sidecar
    };
    let facts = ProxyFacts {
        service: e.service.clone(),
        zone: z.config.zone.clone(),
        region: z.config.region.clone(),
        labels: e.labels.clone(),
    };
    let view = compile::View::new(&facts, &e.reachable);
    let items = compile::proxy_config(z, kind, &facts, &view);
    let mut inbound = Value::Null;
    let mut outbound = serde_json::Map::new();
    let clusters: BTreeMap<&str, &pb::Cluster> = items
        .values()
        .filter_map(|i| match i {
            ProxyItem::Cluster(c) => Some((c.service.as_str(), c.as_ref())),
            _ => None,
        })
        .collect();
    for item in items.values() {
        match item {
            ProxyItem::Inbound(p) => inbound = inbound_json(p),
            ProxyItem::Cluster(c) => {
                outbound.insert(c.service.clone(), cluster_json(c, &clusters));
            }
        }
    }
    Ok(json!({
        "dataplane": {
            "name": e.instance,
            "kind": e.kind,
            "service": e.service,
            "zone": z.config.zone,
            "region": z.config.region,
            "labels": e.labels,
            "identity": e.identity,
            "address": format!("{}:{}", e.address, e.port),
            "connected": e.connected,
            "published": e.ready,
            // Empty: every service.
            "reachableServices": e.reachable,
        },
        "inbound": inbound,
        "outbound": outbound,
    }))
}

fn matcher(m: &pb::StringMatch) -> Value {
    use pb::string_match::Match;
    match &m.r#match {
        Some(Match::Exact(s)) => json!({"exact": s}),
        Some(Match::Prefix(s)) => json!({"prefix": s}),
        Some(Match::Regex(s)) => json!({"regex": s}),
        Some(Match::Present(p)) => json!({"present": p}),
        None => Value::Null,
    }
}

fn named(m: &pb::NamedMatch) -> Value {
    let mut v = m.r#match.as_ref().map(matcher).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.insert("name".into(), json!(m.name));
    }
    v
}

fn callers_json(from: &[pb::Caller]) -> Value {
    if from.is_empty() {
        return json!("any caller");
    }
    json!(from
        .iter()
        .map(|c| json!({
            "service": (!c.service.is_empty()).then_some(&c.service),
            "zones": c.zones_given.then_some(&c.zones),
            "labels": (!c.labels.is_empty()).then_some(&c.labels),
        }))
        .collect::<Vec<_>>())
}

fn inbound_json(p: &pb::InboundPolicy) -> Value {
    json!({
        "mtlsMode": if p.mtls_mode.is_empty() { "strict" } else { &p.mtls_mode },
        "policies": p.policies,
        "rules": p.rules.iter().map(|r| json!({
            "name": r.name,
            "action": if r.deny { "deny" } else { "allow" },
            "shadow": r.shadow,
            "from": callers_json(&r.from),
            "methods": r.methods,
            "paths": r.paths.iter().map(matcher).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "rateLimits": p.rate_limits.iter().map(|l| json!({
            "name": l.name,
            "kind": if l.tcp { "tcp" } else { "http" },
            "from": callers_json(&l.from),
            "methods": l.methods,
            "paths": l.paths.iter().map(matcher).collect::<Vec<_>>(),
            "tokens": l.tokens,
            "intervalMs": l.interval_ms,
            "burst": l.burst,
            "per": if l.per_caller { "caller".to_string() } else if l.per_header.is_empty() { "one bucket".to_string() } else { format!("header {}", l.per_header) },
        })).collect::<Vec<_>>(),
        "faults": p.faults.iter().map(|f| json!({
            "name": f.name,
            "from": callers_json(&f.from),
            "methods": f.methods,
            "paths": f.paths.iter().map(matcher).collect::<Vec<_>>(),
            "delay": (f.delay_per_million > 0).then(|| json!({
                "ms": f.delay_ms,
                "percent": f.delay_per_million as f64 / 10_000.0,
            })),
            "abort": (f.abort_per_million > 0).then(|| json!({
                "httpStatus": (f.abort_http_status > 0).then_some(f.abort_http_status),
                "grpcStatus": (f.abort_grpc_status > 0).then_some(f.abort_grpc_status),
                "reset": f.abort_reset,
                "percent": f.abort_per_million as f64 / 10_000.0,
            })),
        })).collect::<Vec<_>>(),
        "default": if p.default_deny { "deny" } else { "allow" },
        "defaultMode": if p.default_shadow { "shadow" } else { "enforce" },
    })
}

/// The endpoints a backend selects (as the sidecar selects them).
fn backend_json(b: &pb::Backend, own: &str, clusters: &BTreeMap<&str, &pb::Cluster>) -> Value {
    let service = if b.service.is_empty() {
        own
    } else {
        &b.service
    };
    let endpoints: Vec<String> = clusters
        .get(service)
        .map(|c| {
            c.endpoints
                .iter()
                .filter(|e| b.zones.is_empty() || b.zones.contains(&e.zone))
                .filter_map(|e| {
                    let has = |labels: &std::collections::HashMap<String, String>| {
                        b.labels
                            .iter()
                            .all(|(k, v)| labels.get(k).is_some_and(|x| x == v))
                    };
                    if !e.via_gateway || b.labels.is_empty() {
                        return has(&e.labels).then(|| endpoint_name(e));
                    }
                    // Another zone: its instances that have the labels.
                    let n: u32 = e
                        .subsets
                        .iter()
                        .filter(|s| has(&s.labels))
                        .map(|s| s.healthy)
                        .sum();
                    (n > 0).then(|| format!("{} [{n} with the labels]", endpoint_name(e)))
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "weight": b.weight,
        "service": service,
        "zones": (!b.zones.is_empty()).then_some(&b.zones),
        "labels": (!b.labels.is_empty()).then_some(&b.labels),
        "endpoints": endpoints,
    })
}

fn endpoint_name(e: &pb::Endpoint) -> String {
    if e.via_gateway {
        format!(
            "{} (zone {}, via gateway {}:{})",
            e.instance, e.zone, e.address, e.port
        )
    } else {
        format!("{} ({}:{})", e.instance, e.address, e.port)
    }
}

/// What the Retry and Timeout policies set, as `setting: value` (what they
/// leave out takes the defaults in docs/policies.md).
fn resilience_json(r: &pb::Resilience) -> Value {
    let mut out = serde_json::Map::new();
    let ms = |v: u64| format!("{}ms", v);
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_string(), v);
    };
    if let Some(x) = &r.retry {
        if x.attempts > 0 {
            put("attempts", json!(x.attempts));
        }
        if x.per_try_timeout_ms > 0 {
            put("perTryTimeout", json!(ms(x.per_try_timeout_ms)));
        }
        if x.on_given {
            put("on", json!(x.on));
        }
        if !x.status_codes.is_empty() {
            put("statusCodes", json!(x.status_codes));
        }
        if !x.grpc_statuses.is_empty() {
            put("grpcStatuses", json!(x.grpc_statuses));
        }
        if x.backoff_base_ms > 0 {
            put(
                "backoff",
                json!(format!(
                    "{} up to {}",
                    ms(x.backoff_base_ms),
                    ms(x.backoff_max_ms)
                )),
            );
        }
        if x.budget_given {
            put(
                "budget",
                json!(format!(
                    "{}% of requests + {}/s",
                    x.budget_percent, x.budget_min_per_second
                )),
            );
        }
        if x.attempts_per_locality > 0 {
            put("attemptsPerLocality", json!(x.attempts_per_locality));
        }
        if !x.idempotent_methods.is_empty() {
            put("idempotentMethods", json!(x.idempotent_methods));
        }
        if x.tcp_connect_attempts > 0 {
            put("tcpConnectAttempts", json!(x.tcp_connect_attempts));
        }
    }
    if let Some(t) = &r.timeouts {
        let lim = |v: u64, inf: bool| match (v, inf) {
            (_, true) => Some(json!("infinite")),
            (0, false) => None,
            (v, false) => Some(json!(ms(v))),
        };
        for (k, v) in [
            ("connectTimeout", lim(t.connect_ms, false)),
            ("requestTimeout", lim(t.request_ms, t.request_infinite)),
            ("idleTimeout", lim(t.idle_ms, t.idle_infinite)),
            ("streamDuration", lim(t.stream_ms, t.stream_infinite)),
        ] {
            if let Some(v) = v {
                put(k, v);
            }
        }
    }
    if let Some(b) = &r.balancer {
        if !b.algorithm.is_empty() {
            out.insert("algorithm".into(), json!(b.algorithm));
        }
        for (k, v) in [
            ("hashHeader", &b.hash_header),
            ("hashCookie", &b.hash_cookie),
            ("failoverScope", &b.failover_scope),
        ] {
            if !v.is_empty() {
                out.insert(k.into(), json!(v));
            }
        }
        if b.hash_source {
            out.insert("hashSource".into(), json!(true));
        }
        if b.overprovisioning > 0.0 {
            out.insert("overprovisioningFactor".into(), json!(b.overprovisioning));
        }
        if !b.failover_zones.is_empty() {
            out.insert("failoverZones".into(), json!(b.failover_zones));
        }
        if b.locality_off {
            out.insert("localityAware".into(), json!(false));
        }
    }
    if let Some(b) = &r.breaker {
        for (k, v, given) in [
            ("maxConnections", b.max_connections, b.max_connections > 0),
            ("maxRequests", b.max_requests, b.max_requests > 0),
            (
                "maxPendingRequests",
                b.max_pending_requests,
                b.max_pending_given,
            ),
            ("maxRetries", b.max_retries, b.max_retries_given),
            ("consecutive5xx", b.consecutive_5xx, b.consecutive_5xx_given),
            (
                "consecutiveGatewayErrors",
                b.consecutive_gateway,
                b.consecutive_gateway_given,
            ),
            (
                "consecutiveLocalFailures",
                b.consecutive_local,
                b.consecutive_local_given,
            ),
            (
                "maxEjectionPercent",
                b.max_ejection_percent,
                b.max_ejection_percent_given,
            ),
        ] {
            if given {
                out.insert(k.to_string(), json!(v));
            }
        }
        for (k, v) in [
            ("outlierInterval", b.interval_ms),
            ("baseEjectionTime", b.base_ejection_ms),
            ("maxEjectionTime", b.max_ejection_ms),
        ] {
            if v > 0 {
                out.insert(k.to_string(), json!(format!("{v}ms")));
            }
        }
        if b.success_rate_given {
            out.insert(
                "successRate".to_string(),
                json!(format!(
                    "below mean - {} sd, {}+ hosts with {}+ requests",
                    b.success_rate_stdev_factor,
                    b.success_rate_minimum_hosts,
                    b.success_rate_request_volume
                )),
            );
        }
    }
    Value::Object(out)
}

fn cluster_json(c: &pb::Cluster, clusters: &BTreeMap<&str, &pb::Cluster>) -> Value {
    json!({
        "protocol": c.protocol,
        "policies": c.policies,
        "httpRoutes": c.http_routes.iter().map(|r| json!({
            "name": r.name,
            "matches": r.matches.iter().map(|m| json!({
                "path": m.path.as_ref().map(matcher),
                "method": (!m.method.is_empty()).then_some(&m.method),
                "headers": m.headers.iter().map(named).collect::<Vec<_>>(),
                "query": m.query.iter().map(named).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "backends": r.backends.iter().map(|b| backend_json(b, &c.service, clusters)).collect::<Vec<_>>(),
            "mirror": r.mirror.as_ref().map(|m| json!({
                "percent": f64::from(m.per_million) / 10_000.0,
                "backend": m.backend.as_ref().map(|b| backend_json(b, &c.service, clusters)),
            })),
            "rewritePrefix": (!r.rewrite_prefix.is_empty()).then_some(&r.rewrite_prefix),
            "rewritePath": (!r.rewrite_path.is_empty()).then_some(&r.rewrite_path),
            "redirect": r.redirect.as_ref().map(|d| json!({"scheme": d.scheme, "host": d.host, "port": d.port, "path": d.path, "status": d.status})),
            "timeoutMs": (r.timeout_ms > 0).then_some(r.timeout_ms),
        })).collect::<Vec<_>>(),
        "tcpRoute": c.tcp_route.as_ref().map(|t| json!({
            "name": t.name,
            "backends": t.backends.iter().map(|b| backend_json(b, &c.service, clusters)).collect::<Vec<_>>(),
        })),
        "resilience": c.resilience.as_ref().map(resilience_json),
        "endpoints": c.endpoints.iter().map(|e| json!({
            "name": endpoint_name(e),
            "zone": e.zone,
            "priority": e.priority,
            "weight": e.weight,
            "labels": e.labels,
        })).collect::<Vec<_>>(),
    })
}
