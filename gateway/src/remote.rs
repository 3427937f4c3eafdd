//! Connections to other zones' gateways: one long-lived QUIC connection per
//! remote gateway, opened ahead of need, kept alive, re-dialed when it
//! dies, and skipped for a moment after a failed dial so flows fail fast.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::rustls::pki_types::CertificateDer;
use common::tls::{self, Expect, Identity, SpiffeServerVerifier};
use common::trust::TrustPolicy;
use dataplane::live::LiveGuard;
use dataplane::state::Shared;
use model::ident::SpiffeId;

use crate::metrics::Metrics;
use crate::{Config, Error, QUIC_ALPN};

const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening a stream on a connection may wait for stream credit.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(3);
const DOWN_FOR: Duration = Duration::from_secs(2);
pub const GATEWAYS_PREFIX: &str = "@gateways/";

#[derive(Default)]
struct Slot {
    conn: Option<quinn::Connection>,
    /// Registers `conn`'s peer for trust re-checks.
    live: Option<LiveGuard>,
    zone: String,
    down_until: Option<Instant>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    td: String,
    transport: Arc<quinn::TransportConfig>,
    metrics: Metrics,
    dup: Arc<crate::dup::DupSocket>,
    dup_threshold: f64,
    ident: RwLock<Option<(Identity, Arc<TrustPolicy>)>>,
    shared: Arc<Shared>,
    slots: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Clone)]
pub struct Remotes {
    inner: Arc<Inner>,
}

/// The certificate chain a QUIC peer presented, leaf first.
pub fn peer_chain(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|c| *c)
}

pub fn peer_id(conn: &quinn::Connection) -> Option<SpiffeId> {
    peer_chain(conn)?
        .first()
        .and_then(|c| common::pki::spiffe_id_of(c).ok())
}

impl Remotes {
    pub fn new(
        endpoint: quinn::Endpoint,
        cfg: &Config,
        td: &str,
        metrics: Metrics,
        dup: Arc<crate::dup::DupSocket>,
        shared: Arc<Shared>,
    ) -> Self {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(cfg.keep_alive));
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(cfg.idle_timeout)
                .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::from_u32(3000))),
        ));
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(16_384));
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        if cfg.congestion == "bbr" {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
        }
        Self {
            inner: Arc::new(Inner {
                endpoint,
                td: td.to_string(),
                transport: Arc::new(t),
                metrics,
                dup,
                dup_threshold: cfg.duplicate_above_loss,
                ident: RwLock::new(None),
                shared,
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Turn on datagram duplication toward this peer if its path is lossy.
    pub fn watch_loss(&self, conn: &quinn::Connection, zone: &str) {
        crate::dup::monitor(
            conn.clone(),
            self.inner.dup.clone(),
            self.inner.dup_threshold,
            self.inner.metrics.clone(),
            zone.to_string(),
        );
    }

    pub fn clone_handle(&self) -> Self {
        self.clone()
    }

    pub fn transport(&self) -> Arc<quinn::TransportConfig> {
        self.inner.transport.clone()
    }

    pub fn set_identity(&self, ident: &Identity, policy: Arc<TrustPolicy>) {
        *self.inner.ident.write().unwrap_or_else(|e| e.into_inner()) =
            Some((ident.clone(), policy));
    }

    /// Close `conn` as soon as the trust policy stops accepting its peer
    /// (its zone revoked or re-joined, its root retired): every flow on it
    /// ends with it. Keep the guard as long as the connection.
    pub fn close_when_distrusted(&self, conn: &quinn::Connection) -> Option<LiveGuard> {
        let chain = peer_chain(conn)?;
        let (conn, metrics) = (conn.clone(), self.inner.metrics.clone());
        Some(self.inner.shared.live.watch(
            chain.into(),
            Box::new(move |why| {
                tracing::warn!(remote = %conn.remote_address(), reason = %why, "closing a gateway connection: its peer is no longer trusted");
                metrics.distrusted.inc();
                conn.close(0x2u32.into(), b"peer no longer trusted");
            }),
        ))
    }

    fn slot(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<Slot>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default()
            .clone()
    }

    async fn dial(&self, addr: SocketAddr, zone: &str) -> Result<quinn::Connection, Error> {
        let (ident, policy) = self
            .inner
            .ident
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Error::Remote("no gateway certificate yet".into()))?;
        let verifier = SpiffeServerVerifier::new(
            policy,
            Expect::Exact(SpiffeId::gateway(&self.inner.td, zone)),
        );
        let rustls_cfg = tls::client_config(Some(&ident), Arc::new(verifier), &[QUIC_ALPN])?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg)?;
        let mut cc = quinn::ClientConfig::new(Arc::new(quic));
        cc.transport_config(self.inner.transport.clone());
        let connecting = self.inner.endpoint.connect_with(cc, addr, "tern.mesh")?;
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connecting)
            .await
            .map_err(|_| Error::Remote(format!("QUIC handshake with {addr} timed out")))??;
        tracing::info!(%addr, zone, "connected to remote gateway");
        self.watch_loss(&conn, zone);
        Ok(conn)
    }

    /// A live connection to the gateway at `addr`, dialing if needed (one
    /// dial at a time per address).
    pub async fn get(&self, addr: SocketAddr, zone: &str) -> Result<quinn::Connection, Error> {
        let slot = self.slot(addr);
        let mut s = slot.lock().await;
        s.zone = zone.to_string();
        if let Some(c) = &s.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
            s.conn = None;
        }
        if s.down_until.is_some_and(|t| t > Instant::now()) {
            return Err(Error::Remote(format!(
                "gateway {addr} of zone {zone} is unreachable (recent dial failed)"
            )));
        }
        // Our own identity not installed yet (just started): not the
        // remote's fault, so it is not marked down.
        if self
            .inner
            .ident
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(Error::Remote(
                "no gateway certificate yet (failing closed)".into(),
            ));
        }
        match self.dial(addr, zone).await {
            Ok(c) => {
                s.live = self.close_when_distrusted(&c);
                s.conn = Some(c.clone());
                s.down_until = None;
                Ok(c)
            }
            Err(e) => {
                s.down_until = Some(Instant::now() + DOWN_FOR);
                self.inner.metrics.handshake_failure(zone);
                Err(e)
            }
        }
    }

    /// Open a stream to some gateway of `zone`, preferring live connections.
    pub async fn open_stream(
        &self,
        shared: &Shared,
        zone: &str,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
        let clusters = shared.clusters.load_full();
        let cluster = clusters
            .by_service
            .get(&format!("{GATEWAYS_PREFIX}{zone}"))
            .ok_or_else(|| Error::Remote(format!("no gateways known for zone {zone}")))?;
        let mut addrs: Vec<SocketAddr> = cluster.endpoints.iter().map(|e| e.target.addr).collect();
        // Live connections first.
        let live: Vec<bool> = {
            let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            addrs
                .iter()
                .map(|a| {
                    slots
                        .get(a)
                        .and_then(|s| {
                            s.try_lock().ok().map(|s| {
                                s.conn.as_ref().is_some_and(|c| c.close_reason().is_none())
                            })
                        })
                        .unwrap_or(false)
                })
                .collect()
        };
        let mut order: Vec<(bool, SocketAddr)> = live.into_iter().zip(addrs.drain(..)).collect();
        order.sort_by_key(|(l, _)| !*l);
        let mut last = Error::Remote(format!("zone {zone} has no gateways"));
        for (_, addr) in order {
            match self.get(addr, zone).await {
                // A peer at its stream limit makes open_bi wait: give up
                // on it and try the zone's next gateway.
                Ok(conn) => match tokio::time::timeout(STREAM_OPEN_TIMEOUT, conn.open_bi()).await {
                    Ok(Ok(s)) => return Ok(s),
                    Ok(Err(e)) => last = Error::Remote(format!("open stream to {addr}: {e}")),
                    Err(_) => {
                        last = Error::Remote(format!(
                            "open stream to {addr}: no stream credit within {STREAM_OPEN_TIMEOUT:?}"
                        ))
                    }
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Keep connections to every known remote gateway up, and publish
    /// their RTT and loss.
    pub async fn maintain(self, shared: Arc<Shared>) {
        let mut tick = tokio::time::interval(self.inner.transport_interval());
        // Zones whose gauges are published.
        let mut published: BTreeSet<String> = BTreeSet::new();
        loop {
            tick.tick().await;
            if shared.tls.load().is_none() {
                continue;
            }
            let clusters = shared.clusters.load_full();
            let mut wanted: HashMap<SocketAddr, String> = HashMap::new();
            for (name, c) in &clusters.by_service {
                if let Some(zone) = name.strip_prefix(GATEWAYS_PREFIX) {
                    for e in &c.endpoints {
                        wanted.insert(e.target.addr, zone.to_string());
                    }
                }
            }
            // Forget gateways no longer in the config.
            let stale: Vec<(SocketAddr, Arc<tokio::sync::Mutex<Slot>>)> = {
                let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
                let gone: Vec<SocketAddr> = slots
                    .keys()
                    .filter(|a| !wanted.contains_key(a))
                    .cloned()
                    .collect();
                gone.into_iter()
                    .filter_map(|a| slots.remove(&a).map(|s| (a, s)))
                    .collect()
            };
            for (addr, s) in stale {
                if let Some(c) = s.lock().await.conn.take() {
                    tracing::info!(%addr, "remote gateway withdrawn; closing its connection");
                    c.close(0u32.into(), b"withdrawn");
                }
            }
            // Per zone: live connections, and the paths of its gateways
            // (published as one worst-case path, so several gateways of a
            // zone do not overwrite each other's figures).
            let mut per_zone: BTreeMap<String, (i64, Vec<quinn::PathStats>)> = BTreeMap::new();
            for (addr, zone) in wanted {
                let slot = self.slot(addr);
                let path = {
                    let s = slot.lock().await;
                    match &s.conn {
                        Some(c) if c.close_reason().is_none() => Some(c.stats().path),
                        _ => None,
                    }
                };
                let live = path.is_some();
                let entry = per_zone.entry(zone.clone()).or_default();
                entry.0 += live as i64;
                entry.1.extend(path);
                if !live {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.get(addr, &zone).await {
                            tracing::debug!(%addr, zone, error = %e, "dial failed");
                        }
                    });
                }
            }
            // A zone gone from the config loses its gauges (they would keep
            // their last values for ever).
            for zone in published.difference(&per_zone.keys().cloned().collect()) {
                self.inner.metrics.forget_zone(zone);
            }
            published = per_zone.keys().cloned().collect();
            for (zone, (n, paths)) in per_zone {
                self.inner.metrics.set_connections(&zone, n);
                self.inner.metrics.paths(&zone, &paths);
            }
        }
    }

    pub fn dump(&self) -> serde_json::Value {
        let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        let items: Vec<serde_json::Value> = slots
            .iter()
            .filter_map(|(addr, s)| {
                let s = s.try_lock().ok()?;
                let conn = s.conn.as_ref().filter(|c| c.close_reason().is_none());
                Some(serde_json::json!({
                    "address": addr.to_string(),
                    "zone": s.zone,
                    "connected": conn.is_some(),
                    "rttMs": conn.map(|c| c.rtt().as_secs_f64() * 1000.0),
                    "lostPackets": conn.map(|c| c.stats().path.lost_packets),
                }))
            })
            .collect();
        serde_json::Value::Array(items)
    }

    pub fn close_all(&self) {
        self.inner.endpoint.close(0u32.into(), b"shutting down");
    }
}

impl Inner {
    fn transport_interval(&self) -> Duration {
        Duration::from_millis(500)
    }
}
