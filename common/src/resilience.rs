//! What a proxy's `Retry`, `Timeout`, `CircuitBreaker` and `LoadBalancer`
//! policies say about calls to one destination, merged field by field in
//! precedence order, and a caller zone's failover order applied to the
//! destination's endpoints.

use model::policy::balancer::LoadBalancerSpec;
use model::policy::breaker::CircuitBreakerSpec;
use model::policy::retry::RetrySpec;
use model::policy::timeout::{self, TimeoutSpec};
use model::policy::{applicable_to, Facts};
use proto::v1 as pb;

use crate::policy::{ms, PolicySet, ProxyFacts};

impl PolicySet {
    /// What a proxy's Retry and Timeout policies say about calls to
    /// `service`, merged field by field in precedence order (a field the
    /// first policy leaves out comes from the next), and the policies that
    /// gave something. `None`: no policy applies.
    pub fn resilience(
        &self,
        proxy: &ProxyFacts,
        service: &str,
    ) -> (Option<pb::Resilience>, Vec<String>) {
        let f = proxy.facts();
        let mut policies = Vec::new();
        let retries = applicable_to(&self.retries, &f, service);
        let timeouts = applicable_to(&self.timeouts, &f, service);
        let breakers = applicable_to(&self.breakers, &f, service);
        let balancers = applicable_to(&self.balancers, &f, service);
        if retries.is_empty() && timeouts.is_empty() && breakers.is_empty() && balancers.is_empty()
        {
            return (None, policies);
        }
        let retry = (!retries.is_empty()).then(|| {
            policies.extend(retries.iter().map(|p| p.reference()));
            merge_retry(retries.iter().map(|p| &p.spec))
        });
        let timeouts = (!timeouts.is_empty()).then(|| {
            policies.extend(timeouts.iter().map(|p| p.reference()));
            merge_timeouts(timeouts.iter().map(|p| &p.spec))
        });
        let breaker = (!breakers.is_empty()).then(|| {
            policies.extend(breakers.iter().map(|p| p.reference()));
            merge_breaker(breakers.iter().map(|p| &p.spec))
        });
        let balancer = (!balancers.is_empty()).then(|| {
            policies.extend(balancers.iter().map(|p| p.reference()));
            merge_balancer(balancers.iter().map(|p| &p.spec), &f)
        });
        (
            Some(pb::Resilience {
                retry,
                timeouts,
                breaker,
                balancer,
            }),
            policies,
        )
    }
}

/// The first value given, in precedence order.
fn first<'a, S: 'a, T>(
    specs: impl Iterator<Item = &'a S> + Clone,
    field: impl Fn(&'a S) -> Option<T>,
) -> Option<T> {
    specs.clone().find_map(field)
}

fn merge_retry<'a>(specs: impl Iterator<Item = &'a RetrySpec> + Clone) -> pb::RetryPolicy {
    let http = specs.clone().filter_map(|s| s.http.as_ref());
    let on = first(http.clone(), |h| h.on.clone());
    let budget = first(http.clone(), |h| h.budget.clone());
    let backoff = first(http.clone(), |h| h.backoff.clone());
    pb::RetryPolicy {
        attempts: first(http.clone(), |h| h.attempts).unwrap_or(0),
        per_try_timeout_ms: first(http.clone(), |h| {
            h.per_try_timeout.as_ref().map(|d| ms(d.0))
        })
        .unwrap_or(0),
        on_given: on.is_some(),
        on: on
            .unwrap_or_default()
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        status_codes: first(http.clone(), |h| h.status_codes.clone())
            .unwrap_or_default()
            .into_iter()
            .map(u32::from)
            .collect(),
        grpc_statuses: first(http.clone(), |h| h.grpc_statuses.clone()).unwrap_or_default(),
        backoff_base_ms: backoff.as_ref().map(|b| ms(b.base.0)).unwrap_or(0),
        backoff_max_ms: backoff.as_ref().map(|b| ms(b.max.0)).unwrap_or(0),
        budget_given: budget.is_some(),
        budget_percent: budget.as_ref().map(|b| b.percent).unwrap_or(0.0),
        budget_min_per_second: budget.as_ref().map(|b| b.min_per_second).unwrap_or(0),
        attempts_per_locality: first(http.clone(), |h| h.attempts_per_locality).unwrap_or(0),
        idempotent_methods: first(http, |h| h.idempotent_methods.clone()).unwrap_or_default(),
        tcp_connect_attempts: first(specs.filter_map(|s| s.tcp.as_ref()), |t| t.connect_attempts)
            .unwrap_or(0),
    }
}

fn merge_balancer<'a>(
    specs: impl Iterator<Item = &'a LoadBalancerSpec> + Clone,
    caller: &Facts<'_>,
) -> pb::LoadBalancer {
    let hash = first(specs.clone(), |s| s.hash.clone()).unwrap_or_default();
    // The first failover entry (in precedence order, then as written) that
    // names the caller's zone or region.
    let failover = first(specs.clone(), |s| {
        s.failover
            .as_ref()?
            .iter()
            .find(|f| f.from.matches(caller))
            .cloned()
    });
    pb::LoadBalancer {
        algorithm: first(specs.clone(), |s| s.algorithm)
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
        hash_header: hash.header.unwrap_or_default(),
        hash_cookie: hash.cookie.unwrap_or_default(),
        hash_source: hash.source,
        overprovisioning: first(specs.clone(), |s| s.overprovisioning_factor).unwrap_or(0.0),
        failover_scope: failover
            .as_ref()
            .and_then(|f| f.scope)
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        failover_zones: failover.and_then(|f| f.zones).unwrap_or_default(),
        locality_off: first(specs, |s| s.locality_aware) == Some(false),
    }
}

/// Re-rank (or drop) a cluster's endpoints as a caller's LoadBalancer
/// says: locality off puts every endpoint in one tier; a zone list keeps
/// the caller's zone first, then those zones in order, and drops the rest;
/// a scope keeps the caller's zone or region only.
pub fn apply_locality(lb: &pb::LoadBalancer, proxy: &ProxyFacts, eps: &mut Vec<pb::Endpoint>) {
    if lb.locality_off {
        for e in eps.iter_mut() {
            e.priority = 0;
        }
    } else if !lb.failover_zones.is_empty() {
        eps.retain_mut(|e| {
            if e.zone == proxy.zone {
                e.priority = 0;
                return true;
            }
            match lb.failover_zones.iter().position(|z| *z == e.zone) {
                Some(i) => {
                    e.priority = i as u32 + 1;
                    true
                }
                None => false,
            }
        });
    } else {
        match lb.failover_scope.as_str() {
            "zone" => eps.retain(|e| e.zone == proxy.zone),
            "region" => eps.retain(|e| e.region == proxy.region),
            _ => {}
        }
    }
}

fn merge_breaker<'a>(
    specs: impl Iterator<Item = &'a CircuitBreakerSpec> + Clone,
) -> pb::CircuitBreaker {
    let l = specs.clone().filter_map(|s| s.limits.as_ref());
    let o = specs.filter_map(|s| s.outlier_detection.as_ref());
    let pending = first(l.clone(), |x| x.max_pending_requests);
    let retries = first(l.clone(), |x| x.max_retries);
    let c5 = first(o.clone(), |x| x.consecutive5xx);
    let cg = first(o.clone(), |x| x.consecutive_gateway_errors);
    let cl = first(o.clone(), |x| x.consecutive_local_failures);
    let sr = first(o.clone(), |x| x.success_rate.clone());
    let pct = first(o.clone(), |x| x.max_ejection_percent);
    pb::CircuitBreaker {
        max_connections: first(l.clone(), |x| x.max_connections).unwrap_or(0),
        max_requests: first(l, |x| x.max_requests).unwrap_or(0),
        max_pending_given: pending.is_some(),
        max_pending_requests: pending.unwrap_or(0),
        max_retries_given: retries.is_some(),
        max_retries: retries.unwrap_or(0),
        interval_ms: first(o.clone(), |x| x.interval.as_ref().map(|d| ms(d.0))).unwrap_or(0),
        consecutive_5xx_given: c5.is_some(),
        consecutive_5xx: c5.unwrap_or(0),
        consecutive_gateway_given: cg.is_some(),
        consecutive_gateway: cg.unwrap_or(0),
        consecutive_local_given: cl.is_some(),
        consecutive_local: cl.unwrap_or(0),
        success_rate_given: sr.is_some(),
        success_rate_minimum_hosts: sr.as_ref().map(|s| s.minimum_hosts).unwrap_or(0),
        success_rate_request_volume: sr.as_ref().map(|s| s.request_volume).unwrap_or(0),
        success_rate_stdev_factor: sr.as_ref().map(|s| s.stdev_factor).unwrap_or(0.0),
        base_ejection_ms: first(o.clone(), |x| {
            x.base_ejection_time.as_ref().map(|d| ms(d.0))
        })
        .unwrap_or(0),
        max_ejection_ms: first(o, |x| x.max_ejection_time.as_ref().map(|d| ms(d.0))).unwrap_or(0),
        max_ejection_percent_given: pct.is_some(),
        max_ejection_percent: pct.unwrap_or(0),
    }
}

fn merge_timeouts<'a>(specs: impl Iterator<Item = &'a TimeoutSpec> + Clone) -> pb::Timeouts {
    let limit = |field: fn(&TimeoutSpec) -> Option<timeout::Limit>| -> (u64, bool) {
        match first(specs.clone(), field) {
            None => (0, false),
            Some(timeout::Limit::Infinite) => (0, true),
            Some(timeout::Limit::After(d)) => (ms(d), false),
        }
    };
    let (connect_ms, _) = limit(|s| s.connect);
    let (request_ms, request_infinite) = limit(|s| s.request);
    let (idle_ms, idle_infinite) = limit(|s| s.idle);
    let (stream_ms, stream_infinite) = limit(|s| s.stream_duration);
    pb::Timeouts {
        connect_ms,
        request_ms,
        request_infinite,
        idle_ms,
        idle_infinite,
        stream_ms,
        stream_infinite,
    }
}
