//! Traffic by peer: what this proxy served and sent, by source and
//! destination service and zone, status class and policy decision.
//!
//! One set of atomic counts per peer pair feeds both `/metrics` (a
//! collector reads them at scrape time) and the periodic report to the
//! zone control plane (`cp_client.rs` sends what changed since the last
//! one). Label values come from verified identities and the config, never
//! from what a client sends; the number of peer pairs is capped (see
//! [`MAX_PEERS`]) and the rest is counted under `other`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};

use common::traffic::{bucket_of, Decision, Tally, BUCKETS, DECISIONS, LATENCY_BOUNDS};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::MetricType;

use crate::metrics::Direction;

/// Peer pairs kept apart; past this, new pairs are counted as
/// `other`/`other`. A sidecar talks to a bounded set of services, so this
/// is reached only by a misconfiguration (or a gateway-wide proxy).
pub const MAX_PEERS: usize = 256;
/// The label value for pairs past [`MAX_PEERS`], and for a plaintext
/// caller (permissive mode) whose identity is unknown.
pub const OTHER: &str = "other";
pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub direction: Direction,
    pub source_service: Arc<str>,
    pub source_zone: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_zone: Arc<str>,
}

/// The counts of one peer pair. Requests are counted by status class and
/// decision together (for the `status` × `decision` series).
#[derive(Debug, Default)]
pub struct Counts {
    requests: [[AtomicU64; DECISIONS]; 5],
    latency: [AtomicU64; BUCKETS],
    latency_sum_us: AtomicU64,
    tcp: [AtomicU64; DECISIONS],
    tcp_failed: AtomicU64,
    /// TCP bytes towards the destination and back, counted as they move.
    pub sent: Counter,
    pub received: Counter,
}

impl Counts {
    /// One HTTP request, answered `status` after `secs`.
    pub fn request(&self, status: u16, decision: Decision, secs: f64) {
        let class = ((status / 100).clamp(1, 5) - 1) as usize;
        self.requests[class][decision as usize].fetch_add(1, Relaxed);
        self.latency[bucket_of(secs)].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    /// One TCP connection (opened, or refused by a policy).
    pub fn connection(&self, decision: Decision) {
        self.tcp[decision as usize].fetch_add(1, Relaxed);
    }

    /// Of the TCP connections counted, one that reached no endpoint (no
    /// connect succeeded, none to try, or the circuit breaker refused it):
    /// the TCP counterpart of a 5xx from the mesh.
    pub fn failed(&self) {
        self.tcp_failed.fetch_add(1, Relaxed);
    }

    /// The cumulative counts.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for (class, row) in self.requests.iter().enumerate() {
            for (d, c) in row.iter().enumerate() {
                let n = c.load(Relaxed);
                t.requests[class] += n;
                t.decisions[d] += n;
            }
        }
        for (d, c) in self.tcp.iter().enumerate() {
            let n = c.load(Relaxed);
            t.tcp_connections += n;
            t.decisions[d] += n;
        }
        for (b, c) in self.latency.iter().enumerate() {
            t.latency[b] = c.load(Relaxed);
        }
        t.latency_sum_us = self.latency_sum_us.load(Relaxed);
        t.tcp_failed = self.tcp_failed.load(Relaxed);
        t.tcp_sent_bytes = self.sent.get();
        t.tcp_received_bytes = self.received.get();
        t
    }
}

/// This proxy's traffic by peer pair.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Our own service and zone, from our identity.
    me: OnceLock<(Arc<str>, Arc<str>)>,
    peers: RwLock<HashMap<Peer, Arc<Counts>>>,
}

impl Traffic {
    /// Learn our own service and zone (from the first identity).
    pub fn set_me(&self, service: &str, zone: &str) {
        let _ = self.me.set((service.into(), zone.into()));
    }

    /// Our own service and zone (`unknown` before the first identity).
    pub fn me(&self) -> (Arc<str>, Arc<str>) {
        self.me
            .get()
            .cloned()
            .unwrap_or_else(|| (UNKNOWN.into(), UNKNOWN.into()))
    }

    /// The counts for our traffic with `service` in `zone`: as the caller
    /// (outbound) or as the destination (inbound).
    pub fn peer(&self, direction: Direction, service: &str, zone: &str) -> Arc<Counts> {
        let (my_service, my_zone) = self.me();
        let (service, zone): (Arc<str>, Arc<str>) = (service.into(), zone.into());
        let key = match direction {
            Direction::Outbound => Peer {
                direction,
                source_service: my_service,
                source_zone: my_zone,
                destination_service: service,
                destination_zone: zone,
            },
            Direction::Inbound => Peer {
                direction,
                source_service: service,
                source_zone: zone,
                destination_service: my_service,
                destination_zone: my_zone,
            },
        };
        if let Some(c) = self.read().get(&key) {
            return c.clone();
        }
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        let key = if peers.len() >= MAX_PEERS && !peers.contains_key(&key) {
            let other: Arc<str> = OTHER.into();
            match direction {
                Direction::Outbound => Peer {
                    destination_service: other.clone(),
                    destination_zone: other,
                    ..key
                },
                Direction::Inbound => Peer {
                    source_service: other.clone(),
                    source_zone: other,
                    ..key
                },
            }
        } else {
            key
        };
        peers.entry(key).or_default().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Peer, Arc<Counts>>> {
        self.peers.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every pair's cumulative counts.
    pub fn snapshot(&self) -> Vec<(Peer, Tally)> {
        self.read()
            .iter()
            .map(|(p, c)| (p.clone(), c.tally()))
            .collect()
    }
}

/// Reports what changed since the last report.
#[derive(Default)]
pub struct Reporter {
    last: HashMap<Peer, Tally>,
}

impl Reporter {
    /// The pairs with news since the previous call, as the zone control
    /// plane takes them.
    pub fn changes(&mut self, traffic: &Traffic) -> Vec<proto::v1::PeerTraffic> {
        let mut out = Vec::new();
        for (peer, now) in traffic.snapshot() {
            let before = self.last.get(&peer).cloned().unwrap_or_default();
            let delta = now.since(&before);
            if delta.is_empty() {
                continue;
            }
            out.push(proto::v1::PeerTraffic {
                inbound: peer.direction == Direction::Inbound,
                source_service: peer.source_service.to_string(),
                source_zone: peer.source_zone.to_string(),
                destination_service: peer.destination_service.to_string(),
                destination_zone: peer.destination_zone.to_string(),
                tally: Some(delta.to_pb()),
            });
            self.last.insert(peer, now);
        }
        out
    }
}

/// `/metrics` for [`Traffic`], read at scrape time.
#[derive(Debug)]
pub struct Collector(pub Arc<Traffic>);

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Peer {
    /// The pair's labels, then `extra`.
    fn labels<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![
            (
                "direction",
                match self.direction {
                    Direction::Inbound => "inbound",
                    Direction::Outbound => "outbound",
                },
            ),
            ("source_service", &*self.source_service),
            ("source_zone", &*self.source_zone),
            ("destination_service", &*self.destination_service),
            ("destination_zone", &*self.destination_zone),
        ];
        v.extend_from_slice(extra);
        v
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let peers: Vec<(Peer, Arc<Counts>)> = self
            .0
            .read()
            .iter()
            .map(|(p, c)| (p.clone(), c.clone()))
            .collect();
        {
            let mut m = enc.encode_descriptor(
                "traffic_requests",
                "HTTP requests by source and destination service and zone, status class and policy decision",
                None,
                MetricType::Counter,
            )?;
            for (p, c) in &peers {
                for (class, row) in c.requests.iter().enumerate() {
                    for (d, n) in row.iter().enumerate() {
                        let n = n.load(Relaxed);
                        if n == 0 {
                            continue;
                        }
                        let labels = p.labels(&[
                            ("status", CLASSES[class]),
                            ("decision", Decision::ALL[d].name()),
                        ]);
                        m.encode_family(&labels)?
                            .encode_counter::<(), _, u64>(&n, None)?;
                    }
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "traffic_request_duration_seconds",
                "Time to response headers, by source and destination service and zone",
                None,
                MetricType::Histogram,
            )?;
            for (p, c) in &peers {
                let t = c.tally();
                if t.total() == 0 {
                    continue;
                }
                let mut cum = 0;
                let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
                    .iter()
                    .copied()
                    .chain([f64::MAX])
                    .zip(t.latency)
                    .map(|(b, n)| {
                        cum += n;
                        (b, n)
                    })
                    .collect();
                m.encode_family(&p.labels(&[]))?.encode_histogram::<()>(
                    t.latency_sum_us as f64 / 1e6,
                    cum,
                    &buckets,
                    None,
                )?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "traffic_tcp_connections",
                "TCP connections by source and destination service and zone and policy decision",
                None,
                MetricType::Counter,
            )?;
            for (p, c) in &peers {
                for (d, n) in c.tcp.iter().enumerate() {
                    let n = n.load(Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let labels = p.labels(&[("decision", Decision::ALL[d].name())]);
                    m.encode_family(&labels)?
                        .encode_counter::<(), _, u64>(&n, None)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "traffic_tcp_failed_connections",
                "TCP connections that reached no endpoint (every connect failed, none to try, or \
                 the circuit breaker refused it), by source and destination service and zone",
                None,
                MetricType::Counter,
            )?;
            for (p, c) in &peers {
                let n = c.tcp_failed.load(Relaxed);
                if n == 0 {
                    continue;
                }
                m.encode_family(&p.labels(&[]))?
                    .encode_counter::<(), _, u64>(&n, None)?;
            }
        }
        for (name, help, pick) in [
            (
                "traffic_tcp_sent_bytes",
                "TCP bytes (opaque flows and upgraded connections) sent towards the destination",
                0,
            ),
            (
                "traffic_tcp_received_bytes",
                "TCP bytes (opaque flows and upgraded connections) received from the destination",
                1,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (p, c) in &peers {
                let n = if pick == 0 { &c.sent } else { &c.received }.get();
                if n == 0 {
                    continue;
                }
                m.encode_family(&p.labels(&[]))?
                    .encode_counter::<(), _, u64>(&n, None)?;
            }
        }
        Ok(())
    }
}

/// Where an outbound request went and what policies did to it, filled in
/// along its way and counted when it is answered.
#[derive(Default)]
pub struct Served {
    /// The destination service actually called (a route's backend).
    pub cluster: Option<Arc<crate::balance::Cluster>>,
    /// The endpoint of the last attempt: its zone is the destination zone.
    pub endpoint: Option<Arc<crate::balance::Endpoint>>,
    /// The route rule that matched, if any.
    pub route: Option<Arc<str>>,
    pub decision: Decision,
}

impl Served {
    pub fn decided(&mut self, d: Decision) {
        self.decision = self.decision.and(d);
    }

    /// Count the request: `fallback` names the destination when no
    /// cluster was found (a name from config, never from the request).
    pub fn count(&self, traffic: &Traffic, fallback: &str, status: u16, secs: f64) {
        let service = self
            .cluster
            .as_ref()
            .map(|c| c.service.as_str())
            .unwrap_or(fallback);
        let zone = self
            .endpoint
            .as_ref()
            .map(|e| e.zone.as_str())
            .unwrap_or(UNKNOWN);
        traffic
            .peer(Direction::Outbound, service, zone)
            .request(status, self.decision, secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(t: &Arc<Traffic>) -> String {
        let mut reg = prometheus_client::registry::Registry::with_prefix("tern_proxy");
        reg.register_collector(Box::new(Collector(t.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn requests_are_labelled_by_both_ends_status_class_and_decision() {
        let t = Arc::new(Traffic::default());
        t.set_me("web", "eu");
        t.peer(Direction::Outbound, "api", "us")
            .request(503, Decision::Retried, 0.002);
        t.peer(Direction::Inbound, "lb", "eu")
            .request(200, Decision::None, 0.0005);
        t.peer(Direction::Inbound, "lb", "eu")
            .connection(Decision::Denied);
        let db = t.peer(Direction::Outbound, "db", "eu");
        db.connection(Decision::Retried);
        db.failed();
        db.connection(Decision::None);
        let text = scrape(&t);
        assert!(text.contains(r#"tern_proxy_traffic_requests_total{direction="outbound",source_service="web",source_zone="eu",destination_service="api",destination_zone="us",status="5xx",decision="retried"} 1"#), "{text}");
        assert!(text.contains(r#"tern_proxy_traffic_requests_total{direction="inbound",source_service="lb",source_zone="eu",destination_service="web",destination_zone="eu",status="2xx",decision="none"} 1"#), "{text}");
        assert!(text.contains(r#"tern_proxy_traffic_request_duration_seconds_bucket{le="0.0032",direction="outbound",source_service="web",source_zone="eu",destination_service="api",destination_zone="us"} 1"#), "{text}");
        assert!(text.contains(r#"tern_proxy_traffic_tcp_connections_total{direction="inbound",source_service="lb",source_zone="eu",destination_service="web",destination_zone="eu",decision="denied"} 1"#), "{text}");
        // A failed connection is one of the connections, and counted apart.
        assert!(text.contains(r#"tern_proxy_traffic_tcp_connections_total{direction="outbound",source_service="web",source_zone="eu",destination_service="db",destination_zone="eu",decision="retried"} 1"#), "{text}");
        assert!(text.contains(r#"tern_proxy_traffic_tcp_failed_connections_total{direction="outbound",source_service="web",source_zone="eu",destination_service="db",destination_zone="eu"} 1"#), "{text}");
        assert!(
            !text
                .contains(r#"tern_proxy_traffic_tcp_failed_connections_total{direction="inbound""#),
            "{text}"
        );
        let tally = db.tally();
        assert_eq!((tally.tcp_connections, tally.tcp_failed), (2, 1));
        let back = Tally::from_pb(&tally.to_pb()).unwrap();
        assert_eq!(back, tally);
    }

    #[test]
    fn peer_pairs_past_the_cap_are_counted_as_other() {
        let t = Arc::new(Traffic::default());
        t.set_me("web", "eu");
        for i in 0..MAX_PEERS + 5 {
            t.peer(Direction::Outbound, &format!("s{i}"), "eu")
                .request(200, Decision::None, 0.001);
        }
        let snap = t.snapshot();
        assert_eq!(snap.len(), MAX_PEERS + 1);
        let other = snap
            .iter()
            .find(|(p, _)| &*p.destination_service == OTHER)
            .unwrap();
        assert_eq!(other.1.total(), 5);
    }

    #[test]
    fn reports_carry_only_what_changed_since_the_last_one() {
        let t = Traffic::default();
        t.set_me("web", "eu");
        let mut r = Reporter::default();
        let c = t.peer(Direction::Outbound, "api", "us");
        c.request(200, Decision::None, 0.001);
        c.request(200, Decision::None, 0.001);
        let first = r.changes(&t);
        assert_eq!(first.len(), 1);
        assert!(r.changes(&t).is_empty());
        c.request(500, Decision::None, 0.001);
        let next = r.changes(&t);
        let tally = Tally::from_pb(next[0].tally.as_ref().unwrap()).unwrap();
        assert_eq!((tally.total(), tally.errors()), (1, 1));
    }
}
