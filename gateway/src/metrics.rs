//! Gateway metrics per remote zone (`tern_gateway_*`).

use std::sync::atomic::AtomicU64;

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
    pub duplication_active: Family<ZoneLabel, Gauge>,
    pub duplicated_packets: Gauge,
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
            duplication_active: Family::default(),
            duplicated_packets: Gauge::default(),
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
            "Smoothed QUIC path RTT to a remote zone",
            m.rtt_seconds.clone(),
        );
        reg.register(
            "congestion_window_bytes",
            "Congestion window of the current QUIC connection to a remote zone (shared by every flow to it)",
            m.cwnd_bytes.clone(),
        );
        reg.register(
            "lost_packets",
            "Packets lost on the current connection to a remote zone",
            m.lost_packets.clone(),
        );
        reg.register(
            "sent_packets",
            "Packets sent on the current connection to a remote zone",
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
    pub fn reset(&self, code: u32) {
        self.stream_resets.get_or_create(&CodeLabel { code }).inc();
    }
    pub fn path(&self, zone: &str, p: &quinn::PathStats) {
        let z = Self::z(zone);
        self.rtt_seconds.get_or_create(&z).set(p.rtt.as_secs_f64());
        self.lost_packets
            .get_or_create(&z)
            .set(p.lost_packets as i64);
        self.sent_packets
            .get_or_create(&z)
            .set(p.sent_packets as i64);
        self.cwnd_bytes.get_or_create(&z).set(p.cwnd as i64);
    }
    pub fn set_duplication(&self, zone: &str, active: bool, total: u64) {
        self.duplication_active
            .get_or_create(&Self::z(zone))
            .set(active as i64);
        self.duplicated_packets.set(total as i64);
    }
    pub fn set_connections(&self, zone: &str, n: i64) {
        self.connections.get_or_create(&Self::z(zone)).set(n);
    }
}
