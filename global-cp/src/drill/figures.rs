//! A drill's figures, from the zones' flow reports (callers' view: every
//! request counted once, by the caller's sidecar, after its retries): the
//! SLO guard's verdict over the last seconds, and per service the counts,
//! latency by serving zone before, during and after, and how long traffic
//! took to move away from the target and to come back.
//!
//! Pure functions of the samples and the run's timeline, so they are
//! tested without a mesh. Reports reach the global every second while a
//! drill runs or is observed (every 5 s otherwise), so phase boundaries
//! are where reports arrived: a figure may hold requests made up to two
//! report intervals earlier.

use std::collections::BTreeMap;

use common::traffic::Tally;
use model::drill::Slo;
use serde::{Deserialize, Serialize};

use crate::traffic::FlowSample;

/// The guard judges the figures that arrived within this window.
pub const GUARD_WINDOW_MS: u64 = 10_000;
/// Buckets for charts.
pub const BUCKET_MS: u64 = 5_000;
/// Buckets for "has traffic moved": zones report every second while a
/// drill runs or is observed.
pub const SHARE_BUCKET_MS: u64 = 1_000;
/// How close to the expected share counts as moved (or returned).
pub const SHARE_TOLERANCE: f64 = 0.05;

/// When each stage began (unix ms) and its percent, and the restore.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub started_ms: u64,
    pub stages: Vec<(u64, f64)>,
    pub restored_ms: Option<u64>,
}

/// The breach of `slo` in the figures that arrived in the guard's window
/// ending at `now_ms`, described for the timeline; `None`: within the SLO.
pub fn breach(samples: &[FlowSample], now_ms: u64, slo: &Slo, min_requests: u64) -> Option<String> {
    let from = now_ms.saturating_sub(GUARD_WINDOW_MS);
    let mut t = Tally::default();
    for s in samples
        .iter()
        .filter(|s| s.at_ms > from && s.at_ms <= now_ms && s.service == slo.service)
    {
        t.add(&s.tally);
    }
    let n = t.total();
    if let Some(max) = slo.max_error_rate {
        if n >= min_requests.max(1) {
            let rate = t.errors() as f64 * 100.0 / n as f64;
            if rate > max {
                return Some(format!(
                    "{}: error rate {rate:.1}% > {max}% ({} of {n} requests failed)",
                    slo.service,
                    t.errors()
                ));
            }
        }
    }
    if let (Some(max), Some(p99)) = (slo.max_p99, t.quantile(0.99)) {
        if p99 > max.0.as_secs_f64() {
            return Some(format!(
                "{}: p99 {:.0} ms > {} ms",
                slo.service,
                p99 * 1000.0,
                max.0.as_millis()
            ));
        }
    }
    None
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub requests: u64,
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

impl Counts {
    fn of(t: &Tally) -> Counts {
        Counts {
            requests: t.total(),
            failed: t.errors(),
            p99_ms: t.quantile(0.99).map(|s| (s * 1e4).round() / 10.0),
        }
    }
}

/// One phase of a service: in all, and by the zone that served.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    #[serde(flatten)]
    pub all: Counts,
    pub by_zone: BTreeMap<String, Counts>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceFigures {
    pub service: String,
    /// Every request in the report's window (before, during and after).
    pub total: Counts,
    pub before: Phase,
    pub during: Phase,
    pub after: Phase,
    /// Share of the requests the target zones served before the drill.
    pub baseline_share: f64,
    /// Per stage: seconds from its start until the target's share fell to
    /// what the stage asks (within [`SHARE_TOLERANCE`]); `None`: it did not
    /// (or the target served none of it before).
    pub moved_after_seconds: Vec<Option<f64>>,
    /// Seconds from the restore until the target's share was back near
    /// its baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_after_seconds: Option<f64>,
}

/// A point of a service's chart: one bucket.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Bucket end, unix ms.
    pub t: u64,
    pub service: String,
    /// Requests per second, by serving zone.
    pub rps: BTreeMap<String, f64>,
    pub error_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// Per bucket of `size` ms since `first_ms`: the service's tally in all
/// and by zone.
fn buckets(
    samples: &[FlowSample],
    service: &str,
    first_ms: u64,
    size: u64,
) -> BTreeMap<u64, (Tally, BTreeMap<String, Tally>)> {
    let mut out: BTreeMap<u64, (Tally, BTreeMap<String, Tally>)> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.service == service && s.at_ms >= first_ms)
    {
        let b = (s.at_ms - first_ms) / size;
        let e = out.entry(b).or_default();
        e.0.add(&s.tally);
        e.1.entry(s.zone.clone()).or_default().add(&s.tally);
    }
    out
}

fn share(all: &Tally, by_zone: &BTreeMap<String, Tally>, target: &[String]) -> Option<f64> {
    let n = all.total();
    (n > 0).then(|| {
        let t: u64 = by_zone
            .iter()
            .filter(|(z, _)| target.contains(z))
            .map(|(_, t)| t.total())
            .sum();
        t as f64 / n as f64
    })
}

/// Milliseconds as seconds, to a tenth.
fn tenths(ms: u64) -> f64 {
    (ms as f64 / 100.0).round() / 10.0
}

/// The figures of `service`, with `target` the zones the drill acts on.
pub fn service(
    samples: &[FlowSample],
    service: &str,
    target: &[String],
    tl: &Timeline,
    before_ms: u64,
) -> ServiceFigures {
    let first = tl.started_ms.saturating_sub(before_ms);
    let mut phases: [(Tally, BTreeMap<String, Tally>); 3] = Default::default();
    for s in samples
        .iter()
        .filter(|s| s.service == service && s.at_ms >= first)
    {
        let i = if s.at_ms < tl.started_ms {
            0
        } else if tl.restored_ms.is_none_or(|r| s.at_ms < r) {
            1
        } else {
            2
        };
        phases[i].0.add(&s.tally);
        phases[i].1.entry(s.zone.clone()).or_default().add(&s.tally);
    }
    let phase = |p: &(Tally, BTreeMap<String, Tally>)| Phase {
        all: Counts::of(&p.0),
        by_zone: p
            .1
            .iter()
            .map(|(z, t)| (z.clone(), Counts::of(t)))
            .collect(),
    };
    let mut total = Tally::default();
    for p in &phases {
        total.add(&p.0);
    }
    let baseline = share(&phases[0].0, &phases[0].1, target).unwrap_or(0.0);
    let b = buckets(samples, service, tl.started_ms, SHARE_BUCKET_MS);
    let bucket_end = |k: u64| tl.started_ms + (k + 1) * SHARE_BUCKET_MS;
    let shares: Vec<(u64, f64)> = b
        .iter()
        .filter_map(|(k, (all, by))| Some((bucket_end(*k), share(all, by, target)?)))
        .collect();
    let meaningful = baseline > SHARE_TOLERANCE;
    let moved = tl
        .stages
        .iter()
        .enumerate()
        .map(|(i, (start, percent))| {
            if !meaningful {
                return None;
            }
            let until = tl
                .stages
                .get(i + 1)
                .map(|s| s.0)
                .or(tl.restored_ms)
                .unwrap_or(u64::MAX);
            let want = baseline * (1.0 - percent / 100.0) + SHARE_TOLERANCE;
            shares
                .iter()
                .find(|(end, sh)| *end > *start && *end - SHARE_BUCKET_MS < until && *sh <= want)
                .map(|(end, _)| tenths(end.saturating_sub(*start)))
        })
        .collect();
    let returned = tl.restored_ms.filter(|_| meaningful).and_then(|r| {
        let want = baseline - SHARE_TOLERANCE.max(baseline * 0.1);
        shares
            .iter()
            .find(|(end, sh)| *end > r && *sh >= want)
            .map(|(end, _)| tenths(end.saturating_sub(r)))
    });
    ServiceFigures {
        service: service.to_string(),
        total: Counts::of(&total),
        before: phase(&phases[0]),
        during: phase(&phases[1]),
        after: phase(&phases[2]),
        baseline_share: (baseline * 1000.0).round() / 1000.0,
        moved_after_seconds: moved,
        returned_after_seconds: returned,
    }
}

/// The chart points of `service` from `first_ms` on; every zone that
/// served it has a rate in every point (0 where it served none), so a
/// zone's line drops to 0 rather than skipping the gap. A zone report's
/// requests are spread over the time it covers (its interval before it
/// arrived) rather than put where it arrived; zone reports cover exactly
/// the time of the proxy reports in them (`common::traffic::cadence`).
pub fn points(samples: &[FlowSample], service: &str, first_ms: u64) -> Vec<Point> {
    let b = buckets(samples, service, first_ms, BUCKET_MS);
    let zones: std::collections::BTreeSet<&String> =
        b.values().flat_map(|(_, by)| by.keys()).collect();
    // Requests per bucket and zone, spread by the time each report covers.
    let mut spread: BTreeMap<(u64, &str), f64> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.service == service && s.at_ms >= first_ms)
    {
        let n = s.tally.total() as f64;
        let to = s.at_ms - first_ms;
        let from = to.saturating_sub(s.interval_ms.max(1));
        let span = (to - from).max(1) as f64;
        let mut k = from / BUCKET_MS;
        while k * BUCKET_MS < to.max(1) {
            let (lo, hi) = (k * BUCKET_MS, (k + 1) * BUCKET_MS);
            let overlap = hi.min(to).saturating_sub(lo.max(from)) as f64;
            *spread.entry((k, s.zone.as_str())).or_default() += n * overlap / span;
            k += 1;
        }
    }
    let secs = BUCKET_MS as f64 / 1000.0;
    let keys: std::collections::BTreeSet<u64> = b
        .keys()
        .copied()
        .chain(spread.keys().map(|(k, _)| *k))
        .collect();
    keys.into_iter()
        .map(|k| {
            let none = Tally::default();
            let all = b.get(&k).map(|(t, _)| t).unwrap_or(&none);
            Point {
                t: first_ms + (k + 1) * BUCKET_MS,
                service: service.to_string(),
                rps: zones
                    .iter()
                    .map(|z| {
                        let n = spread.get(&(k, z.as_str())).copied().unwrap_or(0.0);
                        ((*z).clone(), (n / secs * 100.0).round() / 100.0)
                    })
                    .collect(),
                error_rate: if all.total() == 0 {
                    0.0
                } else {
                    all.errors() as f64 / all.total() as f64
                },
                p99_ms: all.quantile(0.99).map(|s| (s * 1e4).round() / 10.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, zone: &str, ok: u64, failed: u64) -> FlowSample {
        let mut t = Tally::default();
        t.requests[1] = ok;
        t.requests[4] = failed;
        t.latency[3] = ok + failed;
        FlowSample {
            at_ms,
            interval_ms: 5000,
            source_zone: "a".into(),
            service: "api".into(),
            zone: zone.into(),
            tally: t,
        }
    }

    fn slo(err: f64) -> Slo {
        Slo {
            service: "api".into(),
            max_error_rate: Some(err),
            max_p99: None,
        }
    }

    #[test]
    fn a_report_is_drawn_over_the_time_it_covers() {
        // 10 req/s throughout: a 5 s report (covering 7-12 s), then 1 s
        // reports from 13 s on, as when a drill starts.
        let mut s = vec![sample(12_000, "a", 50, 0)];
        for at in [13_000, 14_000, 15_000, 16_000, 17_000] {
            let mut x = sample(at, "a", 10, 0);
            x.interval_ms = 1000;
            s.push(x);
        }
        let p = points(&s, "api", 0);
        let at = |t: u64| p.iter().find(|x| x.t == t).unwrap().rps["a"];
        // By arrival the 10-15 s bucket would hold 70 requests (14 req/s).
        assert_eq!(at(15_000), 10.0);
        // 7-10 s of the 5 s report: 30 requests in the 5-10 s bucket.
        assert_eq!(at(10_000), 6.0);
    }

    #[test]
    fn the_guard_judges_the_last_window_and_needs_enough_requests() {
        let s = vec![sample(1_000, "a", 90, 10), sample(20_000, "a", 99, 1)];
        // At 5 s only the first report counts: 10% > 5%.
        let b = breach(&s, 5_000, &slo(5.0), 10).unwrap();
        assert!(b.contains("10.0% > 5%"), "{b}");
        // At 25 s only the second: 1% is within.
        assert!(breach(&s, 25_000, &slo(5.0), 10).is_none());
        // Too few requests for a verdict.
        assert!(breach(&s, 5_000, &slo(5.0), 1000).is_none());
    }

    #[test]
    fn phases_counts_and_how_long_traffic_took_to_move_and_return() {
        // Before (start at 100 s): half the traffic served by zone a.
        let mut s = vec![sample(90_000, "a", 50, 0), sample(90_000, "b", 50, 0)];
        // Stage 100% at 100 s: one bucket still half in a, then all in b.
        s.push(sample(103_000, "a", 40, 10));
        s.push(sample(103_000, "b", 50, 0));
        s.push(sample(108_000, "b", 100, 0));
        s.push(sample(113_000, "b", 100, 0));
        // Restored at 115 s: back to half after one bucket.
        s.push(sample(117_000, "b", 100, 0));
        s.push(sample(122_000, "a", 50, 0));
        s.push(sample(122_000, "b", 50, 0));
        let tl = Timeline {
            started_ms: 100_000,
            stages: vec![(100_000, 100.0)],
            restored_ms: Some(115_000),
        };
        let f = service(&s, "api", &["a".to_string()], &tl, 60_000);
        assert_eq!(f.baseline_share, 0.5);
        assert_eq!(f.total.requests, 600);
        assert_eq!(f.total.failed, 10);
        assert_eq!((f.during.all.requests, f.during.all.failed), (300, 10));
        assert_eq!(f.during.by_zone["a"].requests, 50);
        assert_eq!(f.after.all.requests, 200);
        // 1 s buckets: moved in the bucket ending at 109 s, back in the one
        // ending at 123 s.
        assert_eq!(f.moved_after_seconds, vec![Some(9.0)]);
        assert_eq!(f.returned_after_seconds, Some(8.0));
        let p = points(&s, "api", 90_000);
        // Every point names both zones, 0 where one served nothing.
        assert!(p.iter().all(|x| x.rps.len() == 2));
        let quiet = p.iter().find(|x| x.t == 115_000).unwrap();
        assert_eq!(quiet.rps["a"], 0.0);
    }
}
