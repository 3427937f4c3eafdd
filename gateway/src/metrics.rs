//! Gateway metrics per remote zone (`tern_gateway_*`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use dataplane::metrics::ReasonLabel;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneDir {
    pub zone: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u32,
}

#[derive(Clone)]
pub struct Metrics {
    pub streams: Family<ZoneDir, Counter>,
    pub bytes_sent: Family<ZoneLabel, Counter>,
    pub bytes_received: Family<ZoneLabel, Counter>,
    pub rtt_seconds: Family<ZoneLabel, Gauge<f64, AtomicU64>>,
    pub cwnd_bytes: Family<ZoneLabel, Gauge>,
    pub lost_packets: Family<ZoneLabel, Gauge>,
    pub sent_packets: Family<ZoneLabel, Gauge>,
    pub handshake_failures: Family<ZoneLabel, Counter>,
    pub connections: Family<ZoneLabel, Gauge>,
    pub stream_resets: Family<CodeLabel, Counter>,
    pub refused_flows: Family<ReasonLabel, Counter>,
    pub duplication_active: Family<ZoneLabel, Gauge>,
    pub duplicated_packets: Gauge,
    /// The gateways of each zone whose datagrams are duplicated now.
    duplicating: Arc<Mutex<HashMap<String, HashSet<SocketAddr>>>>,
    pub distrusted: Counter,
}

impl Metrics {
    pub fn new(reg: &mut Registry) -> Self {
        let m = Self {
            streams: Family::default(),
            bytes_sent: Family::default(),
            bytes_received: Family::default(),
            rtt_seconds: Family::default(),
            cwnd_bytes: Family::default(),
            lost_packets: Family::default(),
            sent_packets: Family::default(),
            handshake_failures: Family::default(),
            connections: Family::default(),
            stream_resets: Family::default(),
            refused_flows: Family::default(),
            duplication_active: Family::default(),
            duplicated_packets: Gauge::default(),
            duplicating: Default::default(),
            distrusted: Counter::default(),
        };
        reg.register(
            "connections_distrusted",
            "Gateway connections closed because the trust policy stopped accepting the peer (zone revoked or re-joined, root retired)",
            m.distrusted.clone(),
        );
        reg.register(
            "duplication_active",
            "1 while datagrams to a remote zone are sent twice (lossy path)",
            m.duplication_active.clone(),
        );
        reg.register(
            "duplicated_packets",
            "Datagrams sent a second time for loss protection",
            m.duplicated_packets.clone(),
        );
        reg.register(
            "streams",
            "Flows (QUIC streams) by remote zone and direction",
            m.streams.clone(),
        );
        reg.register(
            "bytes_sent",
            "Bytes sent toward a remote zone",
            m.bytes_sent.clone(),
        );
        reg.register(
            "bytes_received",
            "Bytes received from a remote zone",
            m.bytes_received.clone(),
        );
        reg.register(
            "rtt_seconds",
            "Smoothed QUIC path RTT to a remote zone (the longest among its gateways)",
            m.rtt_seconds.clone(),
        );
        reg.register(
            "congestion_window_bytes",
            "Congestion window of the QUIC connections to a remote zone (the smallest among its gateways; shared by every flow to it)",
            m.cwnd_bytes.clone(),
        );
        reg.register(
            "lost_packets",
            "Packets lost on the current connections to a remote zone",
            m.lost_packets.clone(),
        );
        reg.register(
            "sent_packets",
            "Packets sent on the current connections to a remote zone",
            m.sent_packets.clone(),
        );
        reg.register(
            "handshake_failures",
            "Failed QUIC handshakes by remote zone",
            m.handshake_failures.clone(),
        );
        reg.register(
            "quic_connections",
            "Live QUIC connections to a remote zone",
            m.connections.clone(),
        );
        reg.register(
            "refused_flows",
            "Flows from this zone's sidecars refused before a stream opened, by reason (no-certificate, no-identity, other-zone, own-zone, no-stream)",
            m.refused_flows.clone(),
        );
        reg.register(
            "stream_resets",
            "Flows reset, by error code",
            m.stream_resets.clone(),
        );
        m
    }

    fn z(zone: &str) -> ZoneLabel {
        ZoneLabel {
            zone: zone.to_string(),
        }
    }

    pub fn stream_opened(&self, zone: &str, direction: &str) {
        self.streams
            .get_or_create(&ZoneDir {
                zone: zone.to_string(),
                direction: direction.to_string(),
            })
            .inc();
    }
    /// The counters of bytes sent toward and received from `zone`, for a
    /// splice to add to as bytes move.
    pub fn byte_counters(&self, zone: &str) -> (Counter, Counter) {
        (
            self.bytes_sent.get_or_create(&Self::z(zone)).clone(),
            self.bytes_received.get_or_create(&Self::z(zone)).clone(),
        )
    }
    pub fn bytes(&self, zone: &str, sent: u64, received: u64) {
        let (s, r) = self.byte_counters(zone);
        s.inc_by(sent);
        r.inc_by(received);
    }
    pub fn handshake_failure(&self, zone: &str) {
        self.handshake_failures.get_or_create(&Self::z(zone)).inc();
    }
    pub fn refused(&self, reason: &'static str) {
        self.refused_flows
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
    pub fn reset(&self, code: u32) {
        self.stream_resets.get_or_create(&CodeLabel { code }).inc();
    }
    /// The paths to a zone's gateways as one: the longest RTT, the
    /// smallest congestion window, packets sent and lost summed. Nothing
    /// while none is connected (the last figures stay).
    pub fn paths(&self, zone: &str, paths: &[quinn::PathStats]) {
        if paths.is_empty() {
            return;
        }
        let z = Self::z(zone);
        let rtt = paths.iter().map(|p| p.rtt).max().unwrap_or_default();
        let cwnd = paths.iter().map(|p| p.cwnd).min().unwrap_or_default();
        let lost: u64 = paths.iter().map(|p| p.lost_packets).sum();
        let sent: u64 = paths.iter().map(|p| p.sent_packets).sum();
        self.rtt_seconds.get_or_create(&z).set(rtt.as_secs_f64());
        self.lost_packets.get_or_create(&z).set(lost as i64);
        self.sent_packets.get_or_create(&z).set(sent as i64);
        self.cwnd_bytes.get_or_create(&z).set(cwnd as i64);
    }
    /// Remove a zone's gauges (it left the config).
    pub fn forget_zone(&self, zone: &str) {
        let z = Self::z(zone);
        self.rtt_seconds.remove(&z);
        self.lost_packets.remove(&z);
        self.sent_packets.remove(&z);
        self.cwnd_bytes.remove(&z);
        self.connections.remove(&z);
        self.duplication_active.remove(&z);
        self.duplicating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(zone);
    }
    /// Whether datagrams to `peer`, a gateway of `zone`, are duplicated;
    /// the zone's gauge is 1 while any of its gateways' are.
    pub fn set_duplication(&self, zone: &str, peer: SocketAddr, active: bool, total: u64) {
        let any = {
            let mut d = self.duplicating.lock().unwrap_or_else(|e| e.into_inner());
            let peers = d.entry(zone.to_string()).or_default();
            if active {
                peers.insert(peer);
            } else {
                peers.remove(&peer);
            }
            !peers.is_empty()
        };
        self.duplication_active
            .get_or_create(&Self::z(zone))
            .set(any as i64);
        self.duplicated_packets.set(total as i64);
    }
    pub fn set_connections(&self, zone: &str, n: i64) {
        self.connections.get_or_create(&Self::z(zone)).set(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(reg: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, reg).unwrap();
        out
    }

    /// Two gateways of one zone publish one path (the longer RTT, the
    /// packets of both) and one duplication state (on while either
    /// duplicates), not whichever was read last; a zone that left the
    /// config loses its gauges instead of keeping its last values.
    #[test]
    fn a_zones_paths_are_one_series_and_a_gone_zone_is_forgotten() {
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg);
        let mut a = quinn::PathStats::default();
        a.rtt = std::time::Duration::from_millis(5);
        a.sent_packets = 10;
        let mut b = quinn::PathStats::default();
        b.rtt = std::time::Duration::from_millis(30);
        b.sent_packets = 5;
        m.paths("z3", &[a, b]);
        m.set_connections("z3", 2);
        let (ga, gb): (SocketAddr, SocketAddr) = (
            "127.0.3.5:4433".parse().unwrap(),
            "127.0.3.6:4433".parse().unwrap(),
        );
        m.set_duplication("z3", ga, true, 0);
        m.set_duplication("z3", gb, false, 0);
        assert!(
            scrape(&reg).contains("duplication_active{zone=\"z3\"} 1"),
            "one of two gateways duplicating"
        );
        m.set_duplication("z3", ga, true, 0);
        let text = scrape(&reg);
        assert!(text.contains("rtt_seconds{zone=\"z3\"} 0.03"), "{text}");
        assert!(text.contains("sent_packets{zone=\"z3\"} 15"), "{text}");
        m.forget_zone("z3");
        let text = scrape(&reg);
        for g in [
            "rtt_seconds",
            "quic_connections",
            "duplication_active",
            "sent_packets",
        ] {
            assert!(
                !text.contains(&format!("{g}{{zone=\"z3\"}}")),
                "{g}: {text}"
            );
        }
    }
}
