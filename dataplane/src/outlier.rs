//! Outlier detection (passive health), per endpoint as a caller sees it:
//! each attempt's outcome is recorded; an endpoint that fails too often in
//! a row is ejected at once, and every interval the success rates of a
//! destination's endpoints are compared and the outliers ejected. An
//! ejection lasts `base × n` (n: how often the endpoint was ejected lately,
//! lowered by one for each interval it stays in), at most `max`, and never
//! takes more than `maxEjectionPercent` of a destination's endpoints out.
//! The settings come from `CircuitBreaker` policies (`resilience.rs`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::balance::Endpoint;

/// Outlier detection settings of one destination.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub interval: Duration,
    /// 0: off.
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_local: u32,
    /// (minimum hosts, request volume, stdev factor).
    pub success_rate: Option<(u32, u32, f64)>,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);

impl Default for Settings {
    /// Without a policy: one failure of the mesh itself (no connection, a
    /// broken one, a per-try timeout, a proxy that could not deliver)
    /// ejects for 5 s; an app's answers never eject.
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            consecutive_5xx: 0,
            consecutive_gateway: 0,
            consecutive_local: 1,
            success_rate: None,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejection_percent: 100,
        }
    }
}

/// What one attempt at an endpoint came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500.
    Success,
    /// An answer of 500 or above.
    ServerError(u16),
    /// The mesh failed: no connection, a broken one, no answer in time, or
    /// a proxy on the way that could not deliver.
    Local,
}

impl Outcome {
    pub fn of(status: http::StatusCode) -> Self {
        if status.as_u16() >= 500 {
            Outcome::ServerError(status.as_u16())
        } else {
            Outcome::Success
        }
    }
}

/// An endpoint's outlier state.
#[derive(Debug, Default)]
pub struct Counters {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    ok: AtomicU64,
    total: AtomicU64,
    /// Ejections not yet forgiven (one per interval spent in).
    times_ejected: AtomicU32,
}

impl Counters {
    /// Record an outcome; the reason to eject, when it trips a threshold.
    pub fn record(&self, o: Outcome, s: &Settings) -> Option<&'static str> {
        let r = Ordering::Relaxed;
        // The interval's counts feed only the success-rate judgement.
        let rated = s.success_rate.is_some();
        if rated {
            self.total.fetch_add(1, r);
        }
        let trips = |n: u32, limit: u32| limit > 0 && n >= limit;
        match o {
            Outcome::Success => {
                if rated {
                    self.ok.fetch_add(1, r);
                }
                // Stores only when needed: the hot path stays read-only.
                for c in [
                    &self.consecutive_5xx,
                    &self.consecutive_gateway,
                    &self.consecutive_local,
                ] {
                    if c.load(r) != 0 {
                        c.store(0, r);
                    }
                }
                None
            }
            Outcome::ServerError(status) => {
                self.consecutive_local.store(0, r);
                let n5 = self.consecutive_5xx.fetch_add(1, r) + 1;
                let gw = if matches!(status, 502..=504) {
                    self.consecutive_gateway.fetch_add(1, r) + 1
                } else {
                    self.consecutive_gateway.store(0, r);
                    0
                };
                if trips(n5, s.consecutive_5xx) {
                    Some("consecutive-5xx")
                } else if trips(gw, s.consecutive_gateway) {
                    Some("consecutive-gateway-errors")
                } else {
                    None
                }
            }
            Outcome::Local => {
                let n = self.consecutive_local.fetch_add(1, r) + 1;
                trips(n, s.consecutive_local).then_some("consecutive-local-failures")
            }
        }
    }

    fn reset_streaks(&self) {
        for c in [
            &self.consecutive_5xx,
            &self.consecutive_gateway,
            &self.consecutive_local,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// The interval's (successes, total), starting the next interval.
    fn take_interval(&self) -> (u64, u64) {
        (
            self.ok.swap(0, Ordering::Relaxed),
            self.total.swap(0, Ordering::Relaxed),
        )
    }
}

/// Eject `ep` (one of `all`, a destination's endpoints) now, unless that
/// would take more than the allowed share of them out. Returns whether it
/// was ejected.
pub fn eject(ep: &Endpoint, all: &[Arc<Endpoint>], s: &Settings) -> bool {
    if ep.ejected() {
        return false;
    }
    let out = all.iter().filter(|e| e.ejected()).count();
    if (out as u64 + 1) * 100 > s.max_ejection_percent as u64 * all.len().max(1) as u64 {
        // At the cap; 100% lets even the last one go (the balancer then
        // tries ejected endpoints rather than none).
        return false;
    }
    let c = ep.outlier();
    let n = c.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
    let d = s
        .base_ejection
        .saturating_mul(n)
        .min(s.max_ejection.max(s.base_ejection));
    c.reset_streaks();
    ep.eject(d);
    true
}

/// One interval's judgement of a destination: endpoints whose success rate
/// is below `mean - factor × stdev` (among those with enough requests, when
/// enough have) are ejected; endpoints in service forgive one ejection.
/// Returns how many were ejected.
pub fn sweep(all: &[Arc<Endpoint>], s: &Settings) -> usize {
    let rates: Vec<(usize, f64, u64)> = all
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (ok, total) = e.outlier().take_interval();
            let rate = if total == 0 {
                1.0
            } else {
                ok as f64 / total as f64
            };
            (i, rate, total)
        })
        .collect();
    for e in all {
        let c = e.outlier();
        if !e.ejected() && c.times_ejected.load(Ordering::Relaxed) > 0 {
            c.times_ejected.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let Some((min_hosts, volume, factor)) = s.success_rate else {
        return 0;
    };
    let judged: Vec<&(usize, f64, u64)> = rates.iter().filter(|r| r.2 >= volume as u64).collect();
    if judged.len() < min_hosts as usize || judged.is_empty() {
        return 0;
    }
    let n = judged.len() as f64;
    let mean = judged.iter().map(|r| r.1).sum::<f64>() / n;
    let var = judged.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - factor * var.sqrt();
    let mut ejected = 0;
    for r in judged {
        if r.1 < threshold && eject(&all[r.0], all, s) {
            ejected += 1;
        }
    }
    ejected
}

/// Every second, judge each destination whose interval has passed.
pub async fn sweep_loop(shared: Arc<crate::state::Shared>, metrics: crate::metrics::Metrics) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let clusters = shared.clusters.load_full();
        last.retain(|k, _| clusters.by_service.contains_key(k));
        for (name, c) in &clusters.by_service {
            let s = &c.resilience.outlier;
            let due = last
                .get(name)
                .is_none_or(|t| now.duration_since(*t) >= s.interval);
            if !due {
                continue;
            }
            last.insert(name.clone(), now);
            let n = sweep(&c.endpoints, s);
            if n > 0 {
                tracing::info!(service = %name, ejected = n, "success-rate outliers ejected");
                metrics
                    .ejections
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: "success-rate",
                    })
                    .inc_by(n as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            consecutive_5xx: 3,
            consecutive_gateway: 2,
            consecutive_local: 1,
            ..Settings::default()
        }
    }

    /// At most the allowed share is ejected at once; 100% lets all go.
    #[test]
    fn ejections_stop_at_the_maximum_share() {
        let all = crate::balance::test_endpoints(&[1; 4]);
        let s = Settings {
            max_ejection_percent: 50,
            ..settings()
        };
        assert!(eject(&all[0], &all, &s));
        assert!(eject(&all[1], &all, &s));
        assert!(!eject(&all[2], &all, &s), "a third would be 75%");
        assert!(!all[2].ejected());
        let every = Settings {
            max_ejection_percent: 100,
            ..settings()
        };
        assert!(eject(&all[2], &all, &every) && eject(&all[3], &all, &every));
    }

    /// An ejection lasts base × the ejections not yet forgiven, capped; each
    /// interval an endpoint spends in service forgives one.
    #[test]
    fn repeat_offenders_are_ejected_for_longer_and_forgiven_over_time() {
        let all = crate::balance::test_endpoints(&[1; 1]);
        let e = &all[0];
        let s = Settings {
            base_ejection: Duration::from_millis(1),
            max_ejection: Duration::from_millis(3),
            ..settings()
        };
        for expected in [1, 2, 3, 4] {
            assert!(eject(e, &all, &s));
            assert_eq!(e.outlier().times_ejected.load(Ordering::Relaxed), expected);
            // Wait the ejection out (it is at most 3 ms).
            let t = std::time::Instant::now();
            while e.ejected() {
                assert!(t.elapsed() < Duration::from_secs(5));
                std::thread::yield_now();
            }
        }
        sweep(&all, &s);
        sweep(&all, &s);
        assert_eq!(e.outlier().times_ejected.load(Ordering::Relaxed), 2);
    }

    /// With enough hosts and volume, the one far below the others' success
    /// rate is ejected; without enough volume nobody is judged.
    #[test]
    fn success_rate_outliers_are_ejected_when_enough_hosts_have_volume() {
        let all = crate::balance::test_endpoints(&[1; 5]);
        let s = Settings {
            success_rate: Some((3, 50, 1.5)),
            max_ejection_percent: 100,
            ..Settings::default()
        };
        let feed = |good: &[usize], bad: usize, n: usize| {
            for _ in 0..n {
                for i in good {
                    all[*i].outlier().record(Outcome::Success, &s);
                }
                all[bad].outlier().record(Outcome::ServerError(500), &s);
            }
        };
        feed(&[0, 1, 2, 3], 4, 20);
        assert_eq!(sweep(&all, &s), 0, "20 requests each is below the volume");
        feed(&[0, 1, 2, 3], 4, 60);
        assert_eq!(sweep(&all, &s), 1);
        assert!(all[4].ejected() && !all[0].ejected());
    }

    #[test]
    fn streaks_trip_at_their_thresholds_and_a_success_ends_them() {
        let s = settings();
        let c = Counters::default();
        assert_eq!(c.record(Outcome::ServerError(500), &s), None);
        assert_eq!(c.record(Outcome::ServerError(500), &s), None);
        assert_eq!(c.record(Outcome::Success, &s), None);
        assert_eq!(c.record(Outcome::ServerError(500), &s), None);
        assert_eq!(c.record(Outcome::ServerError(500), &s), None);
        assert_eq!(
            c.record(Outcome::ServerError(500), &s),
            Some("consecutive-5xx")
        );
        let c = Counters::default();
        assert_eq!(c.record(Outcome::ServerError(503), &s), None);
        assert_eq!(
            c.record(Outcome::ServerError(502), &s),
            Some("consecutive-gateway-errors")
        );
        let c = Counters::default();
        assert_eq!(
            c.record(Outcome::Local, &s),
            Some("consecutive-local-failures")
        );
        // Off (0) never trips.
        let off = Settings {
            consecutive_5xx: 0,
            consecutive_gateway: 0,
            consecutive_local: 0,
            ..settings()
        };
        let c = Counters::default();
        for _ in 0..100 {
            assert_eq!(c.record(Outcome::ServerError(503), &off), None);
            assert_eq!(c.record(Outcome::Local, &off), None);
        }
    }
}
