//! Loss protection for lossy inter-zone paths: duplicate datagrams.
//!
//! Retransmission (QUIC's or TCP's) recovers a lost packet only after
//! about a round trip, so on a lossy WAN link the tail latency of small
//! flows is set by loss recovery. When a path's measured loss exceeds a
//! threshold, this socket sends every datagram to that peer twice; QUIC
//! drops the duplicate packet number on arrival, and a packet is lost only
//! if both copies are (p² instead of p). It doubles the bytes sent on that
//! path while active, so it switches on only above the threshold and holds
//! for a while before re-checking (with duplication on, QUIC sees almost no
//! loss, so the raw rate can only be measured with it off).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::metrics::Metrics;

/// How long duplication stays on once the loss threshold is crossed.
pub const HOLD: Duration = Duration::from_secs(300);
const WINDOW: Duration = Duration::from_secs(5);
/// Fewer packets than this in a window decide nothing.
const MIN_PACKETS: u64 = 200;

pub struct DupSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Peers whose datagrams are duplicated, until the given instant. Read
    /// on every datagram without a lock; replaced whole (rarely) on change,
    /// when expired peers are dropped.
    lossy: ArcSwap<HashMap<SocketAddr, Instant>>,
    pub duplicated: AtomicU64,
}

impl fmt::Debug for DupSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DupSocket").finish_non_exhaustive()
    }
}

impl DupSocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Self {
        Self {
            inner,
            lossy: ArcSwap::from_pointee(HashMap::new()),
            duplicated: AtomicU64::new(0),
        }
    }

    fn duplicating(&self, to: SocketAddr) -> bool {
        let g = self.lossy.load();
        // The common case, no lossy path at all, costs one atomic load.
        !g.is_empty() && matches!(g.get(&to), Some(until) if *until > Instant::now())
    }

    /// Duplicate to `peer` until `until`; peers whose time is over are
    /// dropped from the table.
    pub fn set_lossy(&self, peer: SocketAddr, until: Instant) {
        let now = Instant::now();
        self.lossy.rcu(|old| {
            let mut m: HashMap<SocketAddr, Instant> = old
                .iter()
                .filter(|(_, t)| **t > now)
                .map(|(a, t)| (*a, *t))
                .collect();
            m.insert(peer, until);
            m
        });
    }

    /// Drop peers whose duplication is over (the monitor calls this).
    pub fn prune(&self) {
        let now = Instant::now();
        if self.lossy.load().values().any(|t| *t <= now) {
            self.lossy.rcu(|old| {
                old.iter()
                    .filter(|(_, t)| **t > now)
                    .map(|(a, t)| (*a, *t))
                    .collect::<HashMap<_, _>>()
            });
        }
    }

    /// Peers in the table (duplicating or not yet pruned).
    pub fn tracked(&self) -> usize {
        self.lossy.load().len()
    }

    pub fn active(&self, peer: SocketAddr) -> bool {
        self.duplicating(peer)
    }
}

impl AsyncUdpSocket for DupSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        self.inner.try_send(t)?;
        if self.duplicating(t.destination) && self.inner.try_send(t).is_ok() {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The duplication decision, separate from I/O: feed it cumulative
/// (sent, lost) counters; it says when to switch duplication on.
#[derive(Debug)]
pub struct LossWindow {
    threshold: f64,
    start: Option<(Instant, u64, u64)>,
}

impl LossWindow {
    pub fn new(threshold: f64) -> Self {
        Self {
            threshold,
            start: None,
        }
    }

    /// Returns Some(loss rate) when a full window shows loss at or above
    /// the threshold.
    pub fn observe(&mut self, now: Instant, sent: u64, lost: u64) -> Option<f64> {
        let (t0, s0, l0) = *self.start.get_or_insert((now, sent, lost));
        if now.duration_since(t0) < WINDOW {
            return None;
        }
        self.start = Some((now, sent, lost));
        let (ds, dl) = (sent.saturating_sub(s0), lost.saturating_sub(l0));
        if ds < MIN_PACKETS {
            return None;
        }
        let rate = dl as f64 / ds as f64;
        (self.threshold < 1.0 && rate >= self.threshold).then_some(rate)
    }
}

/// Watch one connection's loss and turn duplication toward its peer on.
pub fn monitor(
    conn: quinn::Connection,
    sock: Arc<DupSocket>,
    threshold: f64,
    metrics: Metrics,
    zone: String,
) {
    if threshold >= 1.0 {
        return;
    }
    tokio::spawn(async move {
        let mut w = LossWindow::new(threshold);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while conn.close_reason().is_none() {
            tick.tick().await;
            // Re-read: the peer's address changes if the connection migrates.
            let peer = conn.remote_address();
            let st = conn.stats();
            let now = Instant::now();
            if !sock.active(peer) {
                if let Some(rate) = w.observe(now, st.path.sent_packets, st.path.lost_packets) {
                    tracing::warn!(%peer, zone, loss = rate, hold = ?HOLD, "lossy path: duplicating datagrams to this gateway");
                    sock.set_lossy(peer, now + HOLD);
                }
            } else {
                // Restart the window when duplication ends.
                w = LossWindow::new(threshold);
            }
            sock.prune();
            metrics.set_duplication(
                &zone,
                peer,
                sock.active(peer),
                sock.duplicated.load(Ordering::Relaxed),
            );
        }
        // The connection is gone: its peer no longer counts for the zone.
        metrics.set_duplication(
            &zone,
            conn.remote_address(),
            false,
            sock.duplicated.load(Ordering::Relaxed),
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_peers_are_pruned() {
        let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std).unwrap();
        let s = DupSocket::new(inner);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let now = Instant::now();
        s.set_lossy(a, now - Duration::from_secs(1));
        assert!(!s.active(a), "expired");
        s.set_lossy(b, now + HOLD);
        assert!(s.active(b));
        assert_eq!(s.tracked(), 1, "setting b dropped the expired a");
        s.set_lossy(a, now - Duration::from_secs(1));
        s.prune();
        assert_eq!(s.tracked(), 1);
        assert!(s.active(b));
    }

    #[test]
    fn switches_on_only_for_a_full_window_above_the_threshold() {
        let t0 = Instant::now();
        let mut w = LossWindow::new(0.005);
        assert_eq!(w.observe(t0, 0, 0), None);
        // 1% loss, but the window is not over yet.
        assert_eq!(w.observe(t0 + Duration::from_secs(2), 500, 5), None);
        assert_eq!(w.observe(t0 + WINDOW, 1000, 10), Some(0.01));
        // Below the threshold: no.
        assert_eq!(w.observe(t0 + WINDOW * 2, 2000, 12), None);
        // Too few packets to judge (keep-alives only): no.
        assert_eq!(w.observe(t0 + WINDOW * 3, 2050, 20), None);
        // Disabled with a threshold of 1.
        let mut off = LossWindow::new(1.0);
        off.observe(t0, 0, 0);
        assert_eq!(off.observe(t0 + WINDOW, 1000, 500), None);
    }
}
