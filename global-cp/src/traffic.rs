//! The mesh's live traffic: each zone's reports (every few seconds, on the
//! sync stream) kept for the last [`KEEP`], and the views the API serves:
//! services across zones, the zone-to-zone matrix, and time series for
//! charts.
//!
//! Kept in memory only: these are live figures, not history. A restarted
//! global fills up again from the next reports. A zone's report is
//! bounded ([`MAX_SERVICES`], [`MAX_FLOWS`], name lengths), and so is how
//! many it keeps ([`MAX_POINTS`]); what is past the bounds or malformed is
//! dropped and counted, and affects only that zone's figures.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use common::traffic::{Rates, Tally};
use prometheus_client::metrics::counter::Counter;
use proto::v1 as pb;
use serde::Serialize;

/// How long reports are kept.
pub const KEEP: Duration = Duration::from_secs(600);
pub const MAX_SERVICES: usize = 1000;
pub const MAX_FLOWS: usize = 2000;
const MAX_NAME: usize = 253;
/// Reports kept per zone: zones report at most about once a second
/// (while a drill runs; every 5 s otherwise), so [`KEEP`] holds at most
/// about 670. A zone reporting faster loses its oldest reports first.
pub const MAX_POINTS: usize = 720;

struct Point {
    at: Instant,
    wall: SystemTime,
    interval: Duration,
    services: Vec<(String, Tally, u32, u32)>,
    flows: Vec<(String, String, String, Tally)>,
}

#[derive(Default)]
pub struct MeshTraffic {
    zones: Mutex<HashMap<String, VecDeque<Point>>>,
    /// Entries of zone reports not kept (past the bounds, malformed).
    pub dropped: Counter,
}

/// One service in one zone over a window.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceZone {
    pub zone: String,
    /// Instances serving (published) and registered, at the last report.
    pub healthy: u32,
    pub instances: u32,
    #[serde(flatten)]
    pub rates: Rates,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub service: String,
    pub zones: Vec<ServiceZone>,
    /// All zones together.
    pub total: Rates,
    pub healthy: u32,
    pub instances: u32,
}

/// Traffic from callers in one zone to a service (or all) in another.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowView {
    pub source_zone: String,
    pub destination_zone: String,
    /// Set in the per-service edges, not in the zone matrix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<String>,
    #[serde(flatten)]
    pub rates: Rates,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficView {
    /// Seconds the figures cover (the window, or less while reports fill
    /// it).
    pub window_seconds: f64,
    /// Zone to zone, all services.
    pub matrix: Vec<FlowView>,
    /// Source service to destination service, per zone pair.
    pub edges: Vec<FlowView>,
}

/// One report interval of one service in one zone, for charts.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    /// Unix milliseconds at the end of the interval, and its length.
    pub t: u64,
    pub interval_ms: u64,
    pub rps: f64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
    /// Opaque TCP connections per second, those that reached no endpoint,
    /// and bytes per second both ways.
    pub tcp_cps: f64,
    pub tcp_failed_cps: f64,
    pub tcp_bps: f64,
    pub healthy: u32,
}

/// One zone's report of its callers' requests to one service in one zone.
#[derive(Clone, Debug)]
pub struct FlowSample {
    /// When the report arrived (unix ms).
    pub at_ms: u64,
    pub interval_ms: u64,
    /// The callers' zone.
    pub source_zone: String,
    /// The destination service, and the zone that served it.
    pub service: String,
    pub zone: String,
    pub tally: Tally,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl MeshTraffic {
    /// Keep a zone's report, within bounds.
    pub fn record(&self, zone: &str, r: &pb::ZoneTraffic) {
        let interval = Duration::from_millis(r.interval_ms.clamp(1, 3_600_000));
        let mut dropped = 0u64;
        let mut services = Vec::new();
        for s in &r.services {
            if services.len() >= MAX_SERVICES || s.service.is_empty() || s.service.len() > MAX_NAME
            {
                dropped += 1;
                continue;
            }
            let tally = match &s.tally {
                None => Tally::default(),
                Some(t) => match Tally::from_pb(t) {
                    Ok(t) => t,
                    Err(_) => {
                        dropped += 1;
                        continue;
                    }
                },
            };
            services.push((s.service.clone(), tally, s.healthy, s.instances));
        }
        let mut flows = Vec::new();
        for f in &r.flows {
            let names = [
                &f.source_service,
                &f.destination_service,
                &f.destination_zone,
            ];
            let tally = f.tally.as_ref().and_then(|t| Tally::from_pb(t).ok());
            match tally {
                Some(t)
                    if flows.len() < MAX_FLOWS
                        && f.source_zone == zone
                        && names.iter().all(|n| !n.is_empty() && n.len() <= MAX_NAME) =>
                {
                    flows.push((
                        f.source_service.clone(),
                        f.destination_service.clone(),
                        f.destination_zone.clone(),
                        t,
                    ))
                }
                _ => dropped += 1,
            }
        }
        self.dropped.inc_by(dropped);
        let now = Instant::now();
        let mut g = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let points = g.entry(zone.to_string()).or_default();
        points.push_back(Point {
            at: now,
            wall: SystemTime::now(),
            interval,
            services,
            flows,
        });
        while points
            .front()
            .is_some_and(|p| now.duration_since(p.at) > KEEP)
        {
            points.pop_front();
        }
        while points.len() > MAX_POINTS {
            if let Some(p) = points.pop_front() {
                self.dropped
                    .inc_by((p.services.len() + p.flows.len()) as u64);
            }
        }
    }

    /// The points of each zone within `window`, and the time they cover.
    fn within<R>(&self, window: Duration, f: impl FnOnce(Vec<(&str, Vec<&Point>)>) -> R) -> R {
        let now = Instant::now();
        let g = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let mut zones: Vec<(&str, Vec<&Point>)> = g
            .iter()
            .map(|(z, ps)| {
                (
                    z.as_str(),
                    ps.iter()
                        .filter(|p| now.duration_since(p.at) <= window)
                        .collect(),
                )
            })
            .collect();
        zones.sort_by(|a, b| a.0.cmp(b.0));
        f(zones)
    }

    /// Every service, per zone and in total, over the last `window`.
    pub fn services(&self, window: Duration) -> Vec<ServiceView> {
        self.within(window, |zones| {
            // Per service: (zone, sums, seconds covered, healthy, instances).
            type InZone = (String, Tally, f64, u32, u32);
            let mut by: BTreeMap<String, Vec<InZone>> = BTreeMap::new();
            for (zone, points) in zones {
                let secs: f64 = points.iter().map(|p| p.interval.as_secs_f64()).sum();
                let mut sums: BTreeMap<&str, (Tally, u32, u32)> = BTreeMap::new();
                for p in &points {
                    for (svc, t, healthy, instances) in &p.services {
                        let e = sums.entry(svc).or_default();
                        e.0.add(t);
                        // The latest report's counts win.
                        (e.1, e.2) = (*healthy, *instances);
                    }
                }
                for (svc, (t, h, i)) in sums {
                    by.entry(svc.to_string())
                        .or_default()
                        .push((zone.to_string(), t, secs, h, i));
                }
            }
            by.into_iter()
                .map(|(service, zs)| {
                    let mut total = Tally::default();
                    let secs = zs.iter().map(|z| z.2).fold(0.0, f64::max);
                    for z in &zs {
                        total.add(&z.1);
                    }
                    ServiceView {
                        healthy: zs.iter().map(|z| z.3).sum(),
                        instances: zs.iter().map(|z| z.4).sum(),
                        total: Rates::of(&total, secs),
                        zones: zs
                            .into_iter()
                            .map(|(zone, t, secs, healthy, instances)| ServiceZone {
                                zone,
                                healthy,
                                instances,
                                rates: Rates::of(&t, secs),
                            })
                            .collect(),
                        service,
                    }
                })
                .collect()
        })
    }

    /// Zone-to-zone traffic and service edges over the last `window`.
    pub fn traffic(&self, window: Duration) -> TrafficView {
        self.within(window, |zones| {
            let mut matrix: BTreeMap<(String, String), (Tally, f64)> = BTreeMap::new();
            let mut edges: BTreeMap<(String, String, String, String), (Tally, f64)> =
                BTreeMap::new();
            let mut longest: f64 = 0.0;
            for (zone, points) in zones {
                let secs: f64 = points.iter().map(|p| p.interval.as_secs_f64()).sum();
                longest = longest.max(secs);
                for p in &points {
                    for (src, dst, dst_zone, t) in &p.flows {
                        let m = matrix
                            .entry((zone.to_string(), dst_zone.clone()))
                            .or_default();
                        m.0.add(t);
                        m.1 = secs;
                        let e = edges
                            .entry((zone.to_string(), src.clone(), dst_zone.clone(), dst.clone()))
                            .or_default();
                        e.0.add(t);
                        e.1 = secs;
                    }
                }
            }
            TrafficView {
                window_seconds: longest,
                matrix: matrix
                    .into_iter()
                    .map(|((s, d), (t, secs))| FlowView {
                        source_zone: s,
                        destination_zone: d,
                        source_service: None,
                        destination_service: None,
                        rates: Rates::of(&t, secs),
                    })
                    .collect(),
                edges: edges
                    .into_iter()
                    .map(|((sz, ss, dz, ds), (t, secs))| FlowView {
                        source_zone: sz,
                        destination_zone: dz,
                        source_service: Some(ss),
                        destination_service: Some(ds),
                        rates: Rates::of(&t, secs),
                    })
                    .collect(),
            }
        })
    }

    /// Every flow figure the zones reported after `after_ms` (unix ms, as
    /// received here), oldest first: what a drill's report is made of.
    pub fn flows_after(&self, after_ms: u64) -> Vec<FlowSample> {
        let g = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (zone, points) in g.iter() {
            for p in points {
                let at_ms = unix_ms(p.wall);
                if at_ms <= after_ms {
                    continue;
                }
                for (_, dst, dst_zone, t) in &p.flows {
                    out.push(FlowSample {
                        at_ms,
                        interval_ms: p.interval.as_millis() as u64,
                        source_zone: zone.clone(),
                        service: dst.clone(),
                        zone: dst_zone.clone(),
                        tally: t.clone(),
                    });
                }
            }
        }
        out.sort_by_key(|s| s.at_ms);
        out
    }

    /// Per zone, the report intervals of `service` over the last `window`.
    pub fn series(&self, service: &str, window: Duration) -> BTreeMap<String, Vec<SeriesPoint>> {
        self.within(window, |zones| {
            zones
                .into_iter()
                .filter_map(|(zone, points)| {
                    let pts: Vec<SeriesPoint> = points
                        .iter()
                        .filter_map(|p| {
                            let (_, t, healthy, _) = p.services.iter().find(|s| s.0 == service)?;
                            let r = Rates::of(t, p.interval.as_secs_f64());
                            Some(SeriesPoint {
                                t: p.wall
                                    .duration_since(SystemTime::UNIX_EPOCH)
                                    .unwrap_or_default()
                                    .as_millis() as u64,
                                interval_ms: p.interval.as_millis() as u64,
                                rps: r.rps,
                                error_rate: r.error_rate,
                                p99_ms: r.p99_ms,
                                tcp_cps: r.tcp_cps,
                                tcp_failed_cps: r.tcp_failed_cps,
                                tcp_bps: r.tcp_bps,
                                healthy: *healthy,
                            })
                        })
                        .collect();
                    (!pts.is_empty()).then(|| (zone.to_string(), pts))
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(ok: u64, err: u64) -> pb::Tally {
        let mut t = Tally::default();
        t.requests[1] = ok;
        t.requests[4] = err;
        t.latency[5] = ok + err;
        t.to_pb()
    }

    fn report(zone: &str, svc_ok: u64, svc_err: u64) -> pb::ZoneTraffic {
        pb::ZoneTraffic {
            interval_ms: 5000,
            services: vec![pb::ServiceTraffic {
                service: "api".into(),
                tally: Some(tally(svc_ok, svc_err)),
                healthy: 2,
                instances: 3,
            }],
            flows: vec![pb::PeerTraffic {
                inbound: false,
                source_service: "web".into(),
                source_zone: zone.into(),
                destination_service: "api".into(),
                destination_zone: "b".into(),
                tally: Some(tally(svc_ok, 0)),
            }],
        }
    }

    #[test]
    fn services_sum_zones_and_reports_over_the_window() {
        let m = MeshTraffic::default();
        m.record("a", &report("a", 90, 10));
        m.record("a", &report("a", 100, 0));
        m.record("b", &report("b", 50, 0));
        let v = m.services(Duration::from_secs(60));
        assert_eq!(v.len(), 1);
        let api = &v[0];
        assert_eq!(api.zones.len(), 2);
        let a = &api.zones[0];
        // 200 requests over two 5 s reports; 10 failed.
        assert_eq!((a.zone.as_str(), a.rates.rps), ("a", 20.0));
        assert!((a.rates.error_rate - 0.05).abs() < 1e-9);
        assert_eq!((api.healthy, api.instances), (4, 6));
        assert_eq!(api.total.rps, 25.0);
        let t = m.traffic(Duration::from_secs(60));
        assert_eq!(t.matrix.len(), 2);
        assert_eq!(t.matrix[0].source_zone, "a");
        assert_eq!(t.matrix[0].destination_zone, "b");
        assert_eq!(t.edges[0].source_service.as_deref(), Some("web"));
        assert_eq!(m.series("api", Duration::from_secs(60))["a"].len(), 2);
    }

    /// Reports arriving faster than zones send them (100,000 at once) keep
    /// at most MAX_POINTS per zone, the newest, and the ones let go are
    /// counted; another zone's reports are not touched. Pruned by age only,
    /// all 100,000 were kept.
    #[test]
    fn a_zone_keeps_at_most_max_points_reports() {
        let m = MeshTraffic::default();
        m.record("b", &report("b", 1, 0));
        for i in 0..100_000u64 {
            let mut r = report("a", 1, 0);
            r.interval_ms = i + 1;
            m.record("a", &r);
        }
        let g = m.zones.lock().unwrap();
        let a = &g["a"];
        assert_eq!(a.len(), MAX_POINTS);
        assert_eq!(a.back().unwrap().interval, Duration::from_millis(100_000));
        assert_eq!(g["b"].len(), 1);
        // Each report held one service and one flow.
        assert_eq!(m.dropped.get(), 2 * (100_000 - MAX_POINTS as u64));
    }

    #[test]
    fn a_zone_cannot_report_flows_of_another_and_malformed_entries_are_dropped() {
        let m = MeshTraffic::default();
        let mut r = report("b", 1, 0); // flows claim source zone b
        r.services.push(pb::ServiceTraffic {
            service: "x".repeat(300),
            ..Default::default()
        });
        let mut bad = tally(1, 0);
        bad.latency.push(1);
        r.services.push(pb::ServiceTraffic {
            service: "ok".into(),
            tally: Some(bad),
            ..Default::default()
        });
        m.record("a", &r);
        assert_eq!(m.dropped.get(), 3);
        assert!(m.traffic(Duration::from_secs(60)).matrix.is_empty());
        assert_eq!(m.services(Duration::from_secs(60)).len(), 1);
    }
}
