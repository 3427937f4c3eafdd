//! Traffic figures as the mesh reports them upward: the latency buckets
//! every proxy uses, the policy decisions it counts, and the arithmetic the
//! zone and global control planes do on them (sums, rates, quantiles).
//!
//! A [`Tally`] is a set of counts over some time. Proxies report what
//! changed since their last report; zones sum their proxies' reports and
//! report the sums; the global keeps a short history of them. Everything
//! is a plain sum, so aggregation at each level is exact; quantiles are
//! estimated from the buckets, as Prometheus's `histogram_quantile` does.

pub mod cadence;

use proto::v1 as pb;

/// Upper bounds of the latency buckets, in seconds: 0.1 ms doubling up to
/// about 13 s, then +Inf. Every proxy uses these, so tallies add.
pub const LATENCY_BOUNDS: [f64; 18] = {
    let mut b = [0.0; 18];
    let mut i = 0;
    let mut v = 0.0001;
    while i < 18 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};
/// Buckets, counting the last (+Inf) one.
pub const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// What a policy did to a request or connection, in precedence order (a
/// request both retried and then refused by a circuit breaker counts as
/// `circuit_open`). A fixed set, so it is safe as a metric label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    /// No policy changed its course.
    #[default]
    None = 0,
    /// A Retry policy sent it again at least once.
    Retried = 1,
    /// An attempt's failure made outlier detection eject the endpoint.
    Ejected = 2,
    /// A CircuitBreaker limit refused it.
    CircuitOpen = 3,
    /// A FaultInjection fault delayed, aborted or reset it.
    Fault = 4,
    /// A RateLimit refused it.
    RateLimited = 5,
    /// An AccessPolicy rule (or the mesh default) denied it.
    Denied = 6,
}

pub const DECISIONS: usize = 7;

impl Decision {
    pub const ALL: [Decision; DECISIONS] = [
        Decision::None,
        Decision::Retried,
        Decision::Ejected,
        Decision::CircuitOpen,
        Decision::Fault,
        Decision::RateLimited,
        Decision::Denied,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Decision::None => "none",
            Decision::Retried => "retried",
            Decision::Ejected => "ejected",
            Decision::CircuitOpen => "circuit_open",
            Decision::Fault => "fault",
            Decision::RateLimited => "rate_limited",
            Decision::Denied => "denied",
        }
    }
    /// The stronger of two decisions.
    pub fn and(self, other: Decision) -> Decision {
        self.max(other)
    }
}

/// The bucket a latency falls in.
pub fn bucket_of(secs: f64) -> usize {
    LATENCY_BOUNDS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(LATENCY_BOUNDS.len())
}

/// Counts over some time, for one peer pair, service or zone pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// HTTP requests by status class: 1xx .. 5xx.
    pub requests: [u64; 5],
    /// Requests and TCP connections by [`Decision`].
    pub decisions: [u64; DECISIONS],
    /// HTTP requests by latency bucket ([`LATENCY_BOUNDS`], then +Inf).
    pub latency: [u64; BUCKETS],
    pub latency_sum_us: u64,
    /// TCP connections the app opened (or a caller opened to the app),
    /// those refused by a policy included.
    pub tcp_connections: u64,
    /// Of those, the ones that reached no endpoint (every connect
    /// failed, or there was none to try).
    pub tcp_failed: u64,
    pub tcp_sent_bytes: u64,
    pub tcp_received_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("malformed traffic tally: {0}")]
pub struct TallyError(&'static str);

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        let sum = |a: &mut [u64], b: &[u64]| {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.saturating_add(*y);
            }
        };
        sum(&mut self.requests, &o.requests);
        sum(&mut self.decisions, &o.decisions);
        sum(&mut self.latency, &o.latency);
        self.latency_sum_us = self.latency_sum_us.saturating_add(o.latency_sum_us);
        self.tcp_connections = self.tcp_connections.saturating_add(o.tcp_connections);
        self.tcp_failed = self.tcp_failed.saturating_add(o.tcp_failed);
        self.tcp_sent_bytes = self.tcp_sent_bytes.saturating_add(o.tcp_sent_bytes);
        self.tcp_received_bytes = self.tcp_received_bytes.saturating_add(o.tcp_received_bytes);
    }

    /// What happened between `earlier` and `self` (both cumulative).
    pub fn since(&self, earlier: &Tally) -> Tally {
        let diff = |a: &[u64], b: &[u64], out: &mut [u64]| {
            for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                *o = x.saturating_sub(*y);
            }
        };
        let mut d = Tally::default();
        diff(&self.requests, &earlier.requests, &mut d.requests);
        diff(&self.decisions, &earlier.decisions, &mut d.decisions);
        diff(&self.latency, &earlier.latency, &mut d.latency);
        d.latency_sum_us = self.latency_sum_us.saturating_sub(earlier.latency_sum_us);
        d.tcp_connections = self.tcp_connections.saturating_sub(earlier.tcp_connections);
        d.tcp_failed = self.tcp_failed.saturating_sub(earlier.tcp_failed);
        d.tcp_sent_bytes = self.tcp_sent_bytes.saturating_sub(earlier.tcp_sent_bytes);
        d.tcp_received_bytes = self
            .tcp_received_bytes
            .saturating_sub(earlier.tcp_received_bytes);
        d
    }

    pub fn is_empty(&self) -> bool {
        *self == Tally::default()
    }

    /// HTTP requests.
    pub fn total(&self) -> u64 {
        self.requests.iter().sum()
    }

    /// HTTP requests that failed: 5xx answers, the mesh's own included.
    pub fn errors(&self) -> u64 {
        self.requests[4]
    }

    pub fn decision(&self, d: Decision) -> u64 {
        self.decisions[d as usize]
    }

    /// The `q` quantile (0..=1) of the HTTP latency in seconds, by linear
    /// interpolation inside its bucket; `None` without requests. A
    /// quantile in the +Inf bucket is reported as the last finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n: u64 = self.latency.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * n as f64;
        let mut seen = 0u64;
        for (i, c) in self.latency.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let Some(&hi) = LATENCY_BOUNDS.get(i) else {
                    return Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1]);
                };
                let lo = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
                let within = (rank - seen as f64) / *c as f64;
                return Some(lo + (hi - lo) * within.clamp(0.0, 1.0));
            }
            seen += c;
        }
        Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1])
    }

    pub fn to_pb(&self) -> pb::Tally {
        pb::Tally {
            requests: self.requests.to_vec(),
            decisions: self.decisions.to_vec(),
            latency: self.latency.to_vec(),
            latency_sum_us: self.latency_sum_us,
            tcp_connections: self.tcp_connections,
            tcp_failed: self.tcp_failed,
            tcp_sent_bytes: self.tcp_sent_bytes,
            tcp_received_bytes: self.tcp_received_bytes,
        }
    }

    /// From the wire; arrays of the wrong length are refused (a peer on
    /// another version with other buckets must not skew the sums).
    /// Empty arrays are zeros.
    pub fn from_pb(t: &pb::Tally) -> Result<Tally, TallyError> {
        fn fill<const N: usize>(v: &[u64], what: &'static str) -> Result<[u64; N], TallyError> {
            if v.is_empty() {
                return Ok([0; N]);
            }
            v.try_into().map_err(|_| TallyError(what))
        }
        Ok(Tally {
            requests: fill(&t.requests, "requests: expected 5 status classes")?,
            decisions: fill(&t.decisions, "decisions: unexpected count")?,
            latency: fill(&t.latency, "latency: unexpected bucket count")?,
            latency_sum_us: t.latency_sum_us,
            tcp_connections: t.tcp_connections,
            tcp_failed: t.tcp_failed,
            tcp_sent_bytes: t.tcp_sent_bytes,
            tcp_received_bytes: t.tcp_received_bytes,
        })
    }
}

/// A tally's figures over `secs` seconds, as the APIs show them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    /// HTTP requests, and those answered 5xx, in the time covered.
    pub requests: u64,
    pub errors: u64,
    /// HTTP requests per second.
    pub rps: f64,
    /// Share of HTTP requests answered 5xx (0..1); 0 without requests.
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// TCP connections per second.
    pub tcp_cps: f64,
    /// TCP connections per second that reached no endpoint.
    #[serde(default)]
    pub tcp_failed_cps: f64,
    /// TCP bytes per second, both ways.
    pub tcp_bps: f64,
    /// Requests and connections per second that a policy decided on, by
    /// decision (only the non-zero ones).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub decisions: std::collections::BTreeMap<String, f64>,
}

impl Rates {
    pub fn of(t: &Tally, secs: f64) -> Rates {
        let secs = secs.max(0.001);
        let total = t.total();
        let ms = |s: Option<f64>| s.map(|v| (v * 1000.0 * 1000.0).round() / 1000.0);
        Rates {
            requests: total,
            errors: t.errors(),
            rps: total as f64 / secs,
            error_rate: if total == 0 {
                0.0
            } else {
                t.errors() as f64 / total as f64
            },
            p50_ms: ms(t.quantile(0.5)),
            p99_ms: ms(t.quantile(0.99)),
            tcp_cps: t.tcp_connections as f64 / secs,
            tcp_failed_cps: t.tcp_failed as f64 / secs,
            tcp_bps: (t.tcp_sent_bytes + t.tcp_received_bytes) as f64 / secs,
            decisions: Decision::ALL
                .iter()
                .skip(1)
                .filter(|d| t.decision(**d) > 0)
                .map(|d| (d.name().to_string(), t.decision(*d) as f64 / secs))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_latencies(ms: &[f64]) -> Tally {
        let mut t = Tally::default();
        for m in ms {
            t.requests[1] += 1;
            t.latency[bucket_of(m / 1000.0)] += 1;
        }
        t
    }

    #[test]
    fn buckets_double_from_a_tenth_of_a_millisecond_and_end_in_inf() {
        assert_eq!(bucket_of(0.00005), 0);
        assert_eq!(bucket_of(0.0001), 0);
        assert_eq!(bucket_of(0.00015), 1);
        assert_eq!(bucket_of(1.0), 14); // 0.8192 < 1 <= 1.6384
        assert_eq!(bucket_of(1000.0), BUCKETS - 1);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_that_holds_the_rank() {
        // 99 requests at ~1 ms (bucket 0.8192..1.6384 ms) and 1 at ~100 ms.
        let mut ms = vec![1.0; 99];
        ms.push(100.0);
        let t = with_latencies(&ms);
        let p50 = t.quantile(0.5).unwrap() * 1000.0;
        assert!((0.8192..=1.6384).contains(&p50), "{p50}");
        let p99 = t.quantile(0.99).unwrap() * 1000.0;
        assert!((0.8192..=1.6384).contains(&p99), "{p99}");
        let p100 = t.quantile(1.0).unwrap() * 1000.0;
        assert!((52.4288..=104.8576).contains(&p100), "{p100}");
        assert_eq!(Tally::default().quantile(0.5), None);
    }

    #[test]
    fn deltas_of_cumulative_tallies_add_back_up_to_the_total() {
        let a = with_latencies(&[1.0, 2.0]);
        let mut b = a.clone();
        b.add(&with_latencies(&[3.0, 500.0]));
        b.tcp_connections = 4;
        let d = b.since(&a);
        assert_eq!(d.total(), 2);
        assert_eq!(d.tcp_connections, 4);
        let mut back = a.clone();
        back.add(&d);
        assert_eq!(back, b);
    }

    #[test]
    fn a_tally_from_another_bucket_layout_is_refused_and_empty_arrays_are_zero() {
        let mut p = with_latencies(&[1.0]).to_pb();
        assert_eq!(Tally::from_pb(&p).unwrap().total(), 1);
        p.latency.push(0);
        assert!(Tally::from_pb(&p).is_err());
        assert_eq!(
            Tally::from_pb(&pb::Tally::default()).unwrap(),
            Tally::default()
        );
    }

    #[test]
    fn rates_report_errors_as_a_share_and_decisions_per_second() {
        let mut t = with_latencies(&[1.0; 8]);
        t.requests[4] = 2; // two 5xx as well
        t.decisions[Decision::Retried as usize] = 5;
        let r = Rates::of(&t, 10.0);
        assert!((r.rps - 1.0).abs() < 1e-9);
        assert!((r.error_rate - 0.2).abs() < 1e-9);
        assert_eq!(r.decisions.get("retried"), Some(&0.5));
        assert_eq!(r.decisions.len(), 1);
    }

    #[test]
    fn the_strongest_decision_wins() {
        assert_eq!(
            Decision::Retried.and(Decision::CircuitOpen),
            Decision::CircuitOpen
        );
        assert_eq!(Decision::Denied.and(Decision::None), Decision::Denied);
    }
}
