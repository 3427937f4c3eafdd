//! The zone's traffic figures: its proxies' reports summed per service
//! and per flow (source service to destination service and zone), and
//! reported to the global every few seconds (`global_client.rs` sends
//! them on the sync stream).
//!
//! A proxy speaks only for itself: an inbound figure counts only for the
//! proxy's own service, an outbound one only with the proxy's service as
//! the source, and both only in this zone. A flow's destination must be
//! a valid service and zone name. Sums are bounded: past
//! [`MAX_SERVICES`] services or [`MAX_FLOWS`] flows per interval, new
//! keys are dropped and counted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use common::traffic::Tally;
use prometheus_client::metrics::counter::Counter;
use proto::v1 as pb;

pub const MAX_SERVICES: usize = 1000;
pub const MAX_FLOWS: usize = 2000;

type FlowKey = (String, String, String);

#[derive(Default)]
struct Sums {
    services: HashMap<String, Tally>,
    flows: HashMap<FlowKey, Tally>,
}

pub struct ZoneTraffic {
    zone: String,
    sums: Mutex<(Instant, Sums)>,
    /// Figures dropped: a proxy speaking for others, a malformed tally or
    /// name, or past the bounds.
    pub dropped: Counter,
}

impl ZoneTraffic {
    pub fn new(zone: &str) -> Self {
        Self {
            zone: zone.to_string(),
            sums: Mutex::new((Instant::now(), Sums::default())),
            dropped: Counter::default(),
        }
    }

    /// Add a proxy's report. `service` is what the proxy registered as.
    pub fn add(&self, service: &str, report: &pb::TrafficReport) {
        let mut g = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        let sums = &mut g.1;
        for p in &report.peers {
            let Some(t) = p.tally.as_ref().and_then(|t| Tally::from_pb(t).ok()) else {
                self.dropped.inc();
                continue;
            };
            let own = if p.inbound {
                p.destination_service == service && p.destination_zone == self.zone
            } else {
                p.source_service == service && p.source_zone == self.zone
            };
            if !own {
                self.dropped.inc();
                continue;
            }
            if p.inbound {
                if let Some(s) = bounded(&mut sums.services, &p.destination_service, MAX_SERVICES) {
                    s.add(&t);
                } else {
                    self.dropped.inc();
                }
            } else {
                // Names as the mesh has them (DNS labels); anything else is
                // not sent on to the global.
                let named = |n: &str| model::resource::check_name("", n).is_ok();
                if !named(&p.destination_service) || !named(&p.destination_zone) {
                    self.dropped.inc();
                    continue;
                }
                let key = (
                    p.source_service.clone(),
                    p.destination_service.clone(),
                    p.destination_zone.clone(),
                );
                if sums.flows.len() < MAX_FLOWS || sums.flows.contains_key(&key) {
                    sums.flows.entry(key).or_default().add(&t);
                } else {
                    self.dropped.inc();
                }
            }
        }
    }

    /// What happened since the last call, with the instance counts of
    /// every service of the zone (`counts`: serving, registered), for the
    /// global.
    pub fn take(&self, counts: &std::collections::BTreeMap<String, (u32, u32)>) -> pb::ZoneTraffic {
        let (since, sums) = {
            let mut g = self.sums.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let since = std::mem::replace(&mut g.0, now);
            (now - since, std::mem::take(&mut g.1))
        };
        let Sums {
            mut services,
            flows,
        } = sums;
        for name in counts.keys() {
            if services.len() >= MAX_SERVICES {
                break;
            }
            services.entry(name.clone()).or_default();
        }
        let mut services: Vec<pb::ServiceTraffic> = services
            .into_iter()
            .map(|(service, t)| {
                let (healthy, instances) = counts.get(&service).copied().unwrap_or_default();
                pb::ServiceTraffic {
                    service,
                    tally: (!t.is_empty()).then(|| t.to_pb()),
                    healthy,
                    instances,
                }
            })
            .collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        let mut flows: Vec<pb::PeerTraffic> = flows
            .into_iter()
            .map(|((src, dst, dst_zone), t)| pb::PeerTraffic {
                inbound: false,
                source_service: src,
                source_zone: self.zone.clone(),
                destination_service: dst,
                destination_zone: dst_zone,
                tally: Some(t.to_pb()),
            })
            .collect();
        flows.sort_by(|a, b| {
            (
                &a.source_service,
                &a.destination_service,
                &a.destination_zone,
            )
                .cmp(&(
                    &b.source_service,
                    &b.destination_service,
                    &b.destination_zone,
                ))
        });
        pb::ZoneTraffic {
            interval_ms: since.as_millis() as u64,
            services,
            flows,
        }
    }
}

fn bounded<'a>(m: &'a mut HashMap<String, Tally>, k: &str, max: usize) -> Option<&'a mut Tally> {
    if !m.contains_key(k) && m.len() >= max {
        return None;
    }
    Some(m.entry(k.to_string()).or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(inbound: bool, src: (&str, &str), dst: (&str, &str), ok: u64) -> pb::PeerTraffic {
        let mut t = Tally::default();
        t.requests[1] = ok;
        t.latency[3] = ok;
        pb::PeerTraffic {
            inbound,
            source_service: src.0.into(),
            source_zone: src.1.into(),
            destination_service: dst.0.into(),
            destination_zone: dst.1.into(),
            tally: Some(t.to_pb()),
        }
    }

    #[test]
    fn a_proxy_speaks_only_for_its_own_service_in_this_zone() {
        let z = ZoneTraffic::new("eu");
        let report = pb::TrafficReport {
            peers: vec![
                // api served 5 requests from web in us: counted.
                peer(true, ("web", "us"), ("api", "eu"), 5),
                // api claims db served 7: dropped.
                peer(true, ("web", "us"), ("db", "eu"), 7),
                // api called db in us 3 times: a flow.
                peer(false, ("api", "eu"), ("db", "us"), 3),
                // api claims web called: dropped.
                peer(false, ("web", "eu"), ("db", "us"), 9),
                // api claims to be in another zone: dropped.
                peer(false, ("api", "us"), ("db", "us"), 9),
            ],
        };
        z.add("api", &report);
        z.add("api", &report);
        assert_eq!(z.dropped.get(), 6);
        let counts = [("api".to_string(), (2, 3)), ("idle".to_string(), (1, 1))]
            .into_iter()
            .collect();
        let out = z.take(&counts);
        let api = out.services.iter().find(|s| s.service == "api").unwrap();
        let t = Tally::from_pb(api.tally.as_ref().unwrap()).unwrap();
        assert_eq!((t.total(), api.healthy, api.instances), (10, 2, 3));
        // A service without traffic is still listed, with its instances.
        let idle = out.services.iter().find(|s| s.service == "idle").unwrap();
        assert!(idle.tally.is_none());
        assert_eq!(out.flows.len(), 1);
        assert_eq!(out.flows[0].source_zone, "eu");
        // Taken: the next interval starts empty.
        let again = z.take(&Default::default());
        assert!(again.services.is_empty() && again.flows.is_empty());
    }

    #[test]
    fn sums_are_bounded_and_the_excess_is_counted() {
        let z = ZoneTraffic::new("eu");
        for i in 0..MAX_FLOWS + 10 {
            let svc = format!("s{i}");
            z.add(
                "api",
                &pb::TrafficReport {
                    peers: vec![peer(false, ("api", "eu"), (&svc, "us"), 1)],
                },
            );
        }
        assert_eq!(z.dropped.get(), 10);
        assert_eq!(z.take(&Default::default()).flows.len(), MAX_FLOWS);
    }

    /// A flow whose destination service or zone is not a valid name (here
    /// 8 KiB long) is dropped and counted at the zone: it is not in the
    /// report sent to the global. Valid flows beside it are kept.
    #[test]
    fn a_flow_with_a_malformed_destination_name_is_not_reported() {
        let z = ZoneTraffic::new("eu");
        let long = "d".repeat(8 * 1024);
        z.add(
            "api",
            &pb::TrafficReport {
                peers: vec![
                    peer(false, ("api", "eu"), (&long, "us"), 1),
                    peer(false, ("api", "eu"), ("db", &long), 1),
                    peer(false, ("api", "eu"), ("Bad Name", "us"), 1),
                    peer(false, ("api", "eu"), ("db", "us"), 1),
                ],
            },
        );
        assert_eq!(z.dropped.get(), 3);
        let sent = z.take(&Default::default());
        let flows: Vec<_> = sent
            .flows
            .iter()
            .map(|f| (f.destination_service.as_str(), f.destination_zone.as_str()))
            .collect();
        assert_eq!(flows, [("db", "us")]);
    }
}
