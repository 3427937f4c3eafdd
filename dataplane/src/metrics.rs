//! Prometheus metrics, one registry with the `tern_proxy` prefix.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound = 0,
    Outbound = 1,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        e.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabel {
    pub direction: Direction,
}

/// An access rule (`AccessPolicy/NAME/RULE`, or the mesh default), and
/// whether the request was HTTP or a TCP connection. Rule names come from
/// config, so the label set is bounded by it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
    pub kind: &'static str,
}

/// A fault (`FaultInjection/NAME/FAULT`) and what it did: `delay`,
/// `abort` or `reset`. Fault names come from config, so the label set is
/// bounded by it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabel {
    pub fault: String,
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// A circuit-breaker limit, or why an endpoint was ejected: a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReqLabel {
    pub direction: Direction,
    /// Status class: 1xx .. 5xx.
    pub status: &'static str,
}

/// Handles resolved once, so a request touches atomics, not the family map.
#[derive(Clone)]
struct Hot {
    by_class: [Counter; 6],
    latency: Histogram,
}

#[derive(Clone)]
pub struct Metrics {
    hot: [Hot; 2],
    pub requests: Family<ReqLabel, Counter>,
    pub latency: Family<DirLabel, Histogram>,
    pub connections_open: Family<DirLabel, Gauge>,
    pub connections: Family<DirLabel, Counter>,
    pub tls_failures: Family<DirLabel, Counter>,
    pub connections_distrusted: Counter,
    pub early_data_bytes: Counter,
    pub early_data: Family<ResultLabel, Counter>,
    pub retries: Counter,
    pub retries_refused: Counter,
    pub circuit_open: Family<ReasonLabel, Counter>,
    pub health_checks: Family<ResultLabel, Counter>,
    pub ejections: Family<ReasonLabel, Counter>,
    pub upstream_connect_errors: Counter,
    pub config_updates: Counter,
    pub config_rejected: Counter,
    pub access_denied: Family<RuleLabel, Counter>,
    pub access_shadow_denied: Family<RuleLabel, Counter>,
    pub faults_injected: Family<FaultLabel, Counter>,
    pub rate_limited: Family<RuleLabel, Counter>,
    pub plaintext: Family<KindLabel, Counter>,
    pub mirrored: Family<ResultLabel, Counter>,
}

impl Metrics {
    pub fn new(reg: &mut Registry) -> Self {
        let requests: Family<ReqLabel, Counter> = Family::default();
        let latency: Family<DirLabel, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
        let hot = [Direction::Inbound, Direction::Outbound].map(|direction| Hot {
            by_class: ["1xx", "1xx", "2xx", "3xx", "4xx", "5xx"].map(|status| {
                requests
                    .get_or_create(&ReqLabel { direction, status })
                    .clone()
            }),
            latency: latency.get_or_create(&DirLabel { direction }).clone(),
        });
        let m = Self {
            hot,
            requests,
            latency,
            connections_open: Family::default(),
            connections: Family::default(),
            tls_failures: Family::default(),
            connections_distrusted: Counter::default(),
            early_data_bytes: Counter::default(),
            early_data: Family::default(),
            retries: Counter::default(),
            retries_refused: Counter::default(),
            circuit_open: Family::default(),
            health_checks: Family::default(),
            ejections: Family::default(),
            upstream_connect_errors: Counter::default(),
            config_updates: Counter::default(),
            config_rejected: Counter::default(),
            access_denied: Family::default(),
            access_shadow_denied: Family::default(),
            faults_injected: Family::default(),
            rate_limited: Family::default(),
            plaintext: Family::default(),
            mirrored: Family::default(),
        };
        reg.register(
            "access_denied",
            "Requests (kind http) and connections (kind tcp) an access rule denied, by rule",
            m.access_denied.clone(),
        );
        reg.register(
            "access_shadow_denied",
            "Requests and connections a shadow-mode rule (or shadow default) would have denied, by rule; let through",
            m.access_shadow_denied.clone(),
        );
        reg.register(
            "faults_injected",
            "Inbound requests and connections a FaultInjection fault delayed, aborted or reset, by fault",
            m.faults_injected.clone(),
        );
        reg.register(
            "rate_limited",
            "Inbound requests (kind http, answered 429) and connections (kind tcp, reset) a RateLimit refused, by limit",
            m.rate_limited.clone(),
        );
        reg.register(
            "plaintext",
            "Inbound plaintext HTTP requests and TCP connections (permissive mTLS mode)",
            m.plaintext.clone(),
        );
        reg.register(
            "mirrored",
            "Mirrored request copies by result (sent, failed, skipped: a streaming body or no endpoint)",
            m.mirrored.clone(),
        );
        reg.register(
            "requests",
            "HTTP requests by direction and status class",
            m.requests.clone(),
        );
        reg.register(
            "request_duration_seconds",
            "Time to response headers",
            m.latency.clone(),
        );
        reg.register(
            "connections_open",
            "Open connections",
            m.connections_open.clone(),
        );
        reg.register("connections", "Accepted connections", m.connections.clone());
        reg.register(
            "tls_handshake_failures",
            "Failed mTLS handshakes",
            m.tls_failures.clone(),
        );
        reg.register(
            "connections_distrusted",
            "Live connections closed because the trust policy stopped accepting the peer (zone revoked or re-joined, root retired)",
            m.connections_distrusted.clone(),
        );
        reg.register(
            "early_data_bytes",
            "Bytes of opaque TCP connections received as TLS 1.3 early data (0-RTT) and passed to the app before the caller's handshake finished",
            m.early_data_bytes.clone(),
        );
        reg.register(
            "early_data",
            "Outbound opaque TCP sessions that sent the app's first bytes as early data, by whether the destination accepted them (rejected: sent again after the handshake)",
            m.early_data.clone(),
        );
        reg.register(
            "retries",
            "Requests retried on another endpoint",
            m.retries.clone(),
        );
        reg.register(
            "retries_refused",
            "Retries not made because the destination's retry budget was spent",
            m.retries_refused.clone(),
        );
        reg.register(
            "circuit_open",
            "Outbound requests and connections a CircuitBreaker limit refused (answered 503), by limit",
            m.circuit_open.clone(),
        );
        reg.register(
            "health_checks",
            "Checks of the local app (HealthCheck policy), by result (healthy, unhealthy)",
            m.health_checks.clone(),
        );
        reg.register(
            "ejections",
            "Endpoints outlier detection took out of the balancer, by reason",
            m.ejections.clone(),
        );
        reg.register(
            "upstream_connect_errors",
            "Failed connections to endpoints",
            m.upstream_connect_errors.clone(),
        );
        reg.register(
            "config_updates",
            "Config versions applied",
            m.config_updates.clone(),
        );
        reg.register(
            "config_rejected",
            "Config versions refused (NACK)",
            m.config_rejected.clone(),
        );
        m
    }

    pub fn observe(&self, direction: Direction, status: u16, secs: f64) {
        let h = &self.hot[direction as usize];
        h.by_class[(status / 100).min(5) as usize].inc();
        h.latency.observe(secs);
    }
}
