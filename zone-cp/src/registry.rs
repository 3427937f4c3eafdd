//! The zone registry: which proxies are connected, for which service, where.
//!
//! Kept on disk, so that after a zone-cp restart the proxies that are still
//! running stay in the config until they reconnect or their grace runs out.
//!
//! A registration belongs to the identity that made it: another identity
//! cannot replace it, and while it is connected only the same proxy process
//! (its random `instance_uid`) may take it over. One token registers a
//! bounded number of instances.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub instance: String,
    pub service: String,
    pub address: String,
    pub port: u32,
    pub protocol: String,
    pub labels: BTreeMap<String, String>,
    pub identity: String,
    /// "sidecar" or "gateway".
    #[serde(default)]
    pub kind: String,
    /// Gateways: the QUIC address other zones dial.
    #[serde(default)]
    pub public_address: String,
    pub connected: bool,
    #[serde(skip)]
    pub session: u64,
    /// The registering process's random id (kept across zone-cp restarts,
    /// so the same process reconnecting is recognized).
    #[serde(default)]
    pub uid: String,
    /// The token it registered with.
    #[serde(default)]
    pub token_id: String,
    /// Set once the proxy acknowledged its first config (so it holds its
    /// trust and certificate): only then is it published as an endpoint.
    #[serde(default = "published")]
    pub ready: bool,
    /// The services it declared it calls (sorted); empty: every service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reachable: Vec<String>,
    /// The proxy's checks of its app say it is unhealthy (its HealthCheck
    /// policy): not published until they say otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unhealthy: bool,
    /// Disconnected (in its grace period) and its inbound port refuses
    /// connections: not published while that lasts (`prober.rs`).
    #[serde(skip)]
    pub unreachable: bool,
    /// What the proxy runs and how far it is in sync (for `ternctl
    /// inspect dataplanes`); changes here do not change any config.
    #[serde(default)]
    pub status: ProxyStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// The proxy's version, as it registered.
    #[serde(default)]
    pub version: String,
    /// Unix seconds: when its latest certificate expires.
    #[serde(default)]
    pub cert_not_after: u64,
    /// The last config version it acknowledged, and its last refusal.
    #[serde(default)]
    pub acked_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<String>,
}

/// Entries persisted by a previous run were serving.
fn published() -> bool {
    true
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error(
        "instance {instance:?} is registered by {owner}; instance names are unique in the \
         zone, pick another with --instance"
    )]
    OtherIdentity { instance: String, owner: String },
    #[error(
        "instance {instance:?} is connected from another proxy process; two proxies cannot \
         share an instance name (pick another with --instance), or wait for the old one's \
         stream to end"
    )]
    InUse { instance: String },
    #[error(
        "token {token} already has {max} registered instances, its limit; generate a token \
         with a higher --max-instances"
    )]
    TooMany { token: String, max: u32 },
}

pub struct Registry {
    zone: String,
    region: String,
    grace: Duration,
    /// Wakes the writer thread, which saves the latest entries (set once
    /// `load` named the file).
    writer: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    /// Saves the writer thread has made.
    saves: Arc<std::sync::atomic::AtomicU64>,
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
    generation: watch::Sender<u64>,
    sessions: std::sync::atomic::AtomicU64,
}

impl Registry {
    pub fn new(zone: &str, region: &str, grace: Duration) -> Self {
        Self {
            zone: zone.into(),
            region: region.into(),
            grace,
            writer: Mutex::new(None),
            saves: Default::default(),
            inner: Arc::new(Mutex::new(BTreeMap::new())),
            generation: watch::channel(0).0,
            sessions: Default::default(),
        }
    }

    /// Load entries persisted by a previous run. They count as disconnected
    /// and are dropped after the grace period unless their proxy returns.
    pub fn load(self: &Arc<Self>, dir: &std::path::Path) {
        let path = dir.join("registry.json");
        if let Ok(b) = std::fs::read(&path) {
            if let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(&b) {
                let mut g = self.lock();
                for mut e in entries {
                    e.connected = false;
                    e.session = 0;
                    let inst = e.instance.clone();
                    g.insert(inst.clone(), e);
                    self.expire_later(inst, 0);
                }
            }
        }
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.spawn_writer(path));
        self.bump();
    }

    /// Saving the registry (a full rewrite with fsync) runs on its own
    /// thread, off the async threads, and coalesces: a burst of changes
    /// (proxies reconnecting after a restart) costs a few writes, each of
    /// the latest entries, not one per change.
    fn spawn_writer(&self, path: PathBuf) -> std::sync::mpsc::SyncSender<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let inner = self.inner.clone();
        let saves = self.saves.clone();
        let _ = std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    let snapshot: Vec<Entry> = inner
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .cloned()
                        .collect();
                    let res = serde_json::to_string(&snapshot)
                        .map_err(std::io::Error::other)
                        .and_then(|s| model::fsutil::write_private(&path, s));
                    match res {
                        Ok(()) => {
                            saves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!(error = %e, "could not persist the registry"),
                    }
                }
            });
        tx
    }

    /// How many times the registry has been written to disk.
    pub fn saves(&self) -> u64 {
        self.saves.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        if let Some(w) = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            // Full: a save is already due and will see this change.
            let _ = w.try_send(());
        }
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Bumped on every change.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Register (or re-register) a proxy; returns its session id. `max` is
    /// how many instances its token may hold at once.
    pub fn register(&self, mut e: Entry, max: u32) -> Result<u64, Refusal> {
        let mut g = self.lock();
        if let Some(old) = g.get(&e.instance) {
            if old.identity != e.identity {
                return Err(Refusal::OtherIdentity {
                    instance: e.instance,
                    owner: old.identity.clone(),
                });
            }
            if old.connected && (old.uid.is_empty() || old.uid != e.uid) {
                return Err(Refusal::InUse {
                    instance: e.instance,
                });
            }
        }
        let held = g
            .values()
            .filter(|x| x.token_id == e.token_id && x.instance != e.instance)
            .count() as u32;
        if held >= max {
            return Err(Refusal::TooMany {
                token: e.token_id,
                max,
            });
        }
        let session = self
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        e.session = session;
        e.connected = true;
        // The same process reconnecting (a stream blip, a zone-cp restart)
        // still holds its certificate: it stays published. A new process
        // is published once it acknowledges its first config.
        // A new process that already holds a certificate and config (kept
        // on disk; `e.ready` carries its `serving` claim) replaces a
        // published entry without a gap; its claim is about its own entry
        // only, and bound to its identity like the rest of it.
        let serving = e.ready;
        e.ready = g
            .get(&e.instance)
            .is_some_and(|old| old.ready && ((!e.uid.is_empty() && old.uid == e.uid) || serving));
        tracing::info!(instance = %e.instance, service = %e.service, address = %e.address, port = e.port, "proxy registered");
        g.insert(e.instance.clone(), e);
        drop(g);
        self.bump();
        Ok(session)
    }

    /// The proxy of `session` can serve (it acknowledged its first config,
    /// which came after its trust and certificate): publish it.
    pub fn mark_ready(&self, instance: &str, session: u64) {
        let mut g = self.lock();
        match g.get_mut(instance) {
            Some(e) if e.session == session && !e.ready => e.ready = true,
            _ => return,
        }
        drop(g);
        self.bump();
    }

    /// Registrations in their grace period (disconnected, still published):
    /// instance and `address:port`, for the prober.
    pub fn disconnected(&self) -> Vec<(String, String)> {
        self.lock()
            .values()
            .filter(|e| !e.connected && e.ready)
            .map(|e| (e.instance.clone(), format!("{}:{}", e.address, e.port)))
            .collect()
    }

    /// Record whether a disconnected proxy's port accepts connections.
    pub fn set_reachable(&self, instance: &str, reachable: bool) {
        let mut g = self.lock();
        match g.get_mut(instance) {
            Some(e) if !e.connected && e.unreachable == reachable => e.unreachable = !reachable,
            _ => return,
        }
        drop(g);
        if reachable {
            tracing::info!(instance, "disconnected proxy reachable again; published");
        } else {
            tracing::warn!(
                instance,
                "disconnected proxy refuses connections; withdrawn"
            );
        }
        self.bump();
    }

    /// Record the verdict of a proxy's checks of its app.
    pub fn set_app_health(&self, instance: &str, session: u64, healthy: bool, check: &str) {
        let mut g = self.lock();
        match g.get_mut(instance) {
            Some(e) if e.session == session && e.unhealthy == healthy => e.unhealthy = !healthy,
            _ => return,
        }
        drop(g);
        // The proxy names the check: logged cut to a bound.
        let check = crate::registration::clip(check, crate::registration::MAX_FIELD_BYTES);
        if healthy {
            tracing::info!(instance, check, "instance healthy again; published");
        } else {
            tracing::warn!(
                instance,
                check,
                "instance unhealthy; withdrawn until its checks pass"
            );
        }
        self.bump();
    }

    /// Update what a proxy reports about itself, if `session` still owns
    /// the registration. Not a change of the mesh: nothing is recompiled.
    pub fn set_status(&self, instance: &str, session: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(e) = self
            .lock()
            .get_mut(instance)
            .filter(|e| e.session == session)
        {
            f(&mut e.status);
        }
    }

    /// Record a proxy's refusal of config `version`, if `session` still
    /// owns the registration; its reason is kept cut to
    /// [`MAX_REASON_BYTES`](crate::registration::MAX_REASON_BYTES).
    pub fn set_nack(&self, instance: &str, session: u64, version: u64, reason: &str) {
        let reason = crate::registration::clip(reason, crate::registration::MAX_REASON_BYTES);
        self.set_status(instance, session, |s| {
            s.last_nack = Some(format!("v{version}: {reason}"))
        });
    }

    /// Every registration, sorted by instance.
    pub fn all(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.instance.cmp(&b.instance));
        v
    }

    /// The registration of `instance`, if any.
    pub fn get(&self, instance: &str) -> Option<Entry> {
        self.lock().get(instance).cloned()
    }

    /// Remove a registration at once (its token was revoked), if `session`
    /// still owns it.
    pub fn remove(&self, instance: &str, session: u64) {
        let mut g = self.lock();
        if g.get(instance).is_some_and(|e| e.session == session) {
            g.remove(instance);
            drop(g);
            tracing::info!(instance, "proxy deregistered (token revoked)");
            self.bump();
        }
    }

    /// Remove at once every registration made with a token `is_revoked`
    /// names, connected or not: one in its grace period, or loaded from
    /// disk and not reconnected since, has no stream that would remove it.
    /// Returns how many were removed. `is_revoked` runs without the
    /// registry locked.
    pub fn remove_revoked(&self, is_revoked: impl Fn(&str) -> bool) -> usize {
        let tokens: BTreeSet<String> = self.lock().values().map(|e| e.token_id.clone()).collect();
        let revoked: BTreeSet<String> = tokens.into_iter().filter(|t| is_revoked(t)).collect();
        if revoked.is_empty() {
            return 0;
        }
        let mut removed = Vec::new();
        self.lock().retain(|instance, e| {
            let gone = revoked.contains(&e.token_id);
            if gone {
                removed.push((instance.clone(), e.token_id.clone()));
            }
            !gone
        });
        for (instance, token) in &removed {
            tracing::info!(instance, token, "proxy deregistered (token revoked)");
        }
        if !removed.is_empty() {
            self.bump();
        }
        removed.len()
    }

    /// The proxy's stream ended. A clean close (the proxy is shutting down)
    /// deregisters at once; a broken stream starts the grace period.
    pub fn disconnect(self: &Arc<Self>, instance: &str, session: u64, clean: bool) {
        let mut g = self.lock();
        let Some(e) = g.get_mut(instance) else { return };
        if e.session != session {
            return; // a newer stream of the same proxy took over
        }
        if clean {
            g.remove(instance);
            drop(g);
            tracing::info!(instance, "proxy deregistered");
        } else {
            e.connected = false;
            drop(g);
            tracing::info!(instance, grace = ?self.grace, "proxy disconnected");
            self.expire_later(instance.to_string(), session);
        }
        self.bump();
    }

    fn expire_later(self: &Arc<Self>, instance: String, session: u64) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(me.grace).await;
            let mut g = me.lock();
            if matches!(g.get(&instance), Some(e) if !e.connected && e.session == session) {
                g.remove(&instance);
                drop(g);
                tracing::info!(instance, "proxy deregistered after grace period");
                me.bump();
            }
        });
    }

    pub fn connected(&self) -> u32 {
        self.lock().values().filter(|e| e.connected).count() as u32
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Registered gateways that can serve (connected or in grace).
    pub fn gateways(&self) -> Vec<Entry> {
        self.lock()
            .values()
            .filter(|e| e.kind == "gateway" && e.ready && !e.unreachable)
            .cloned()
            .collect()
    }

    /// Per service: instances serving (published), and instances
    /// registered. Gateways are not services.
    pub fn instance_counts(&self) -> BTreeMap<String, (u32, u32)> {
        let mut out: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for e in self.lock().values().filter(|e| e.kind != "gateway") {
            let c = out.entry(e.service.clone()).or_default();
            c.1 += 1;
            if e.ready && !e.unhealthy && !e.unreachable {
                c.0 += 1;
            }
        }
        out
    }

    fn endpoints(&self) -> BTreeMap<String, Vec<pb::Endpoint>> {
        let mut out: BTreeMap<String, Vec<pb::Endpoint>> = BTreeMap::new();
        for e in self
            .lock()
            .values()
            .filter(|e| e.kind != "gateway" && e.ready && !e.unhealthy && !e.unreachable)
        {
            out.entry(e.service.clone())
                .or_default()
                .push(pb::Endpoint {
                    address: e.address.clone(),
                    port: e.port,
                    healthy: true,
                    labels: e.labels.clone().into_iter().collect(),
                    region: self.region.clone(),
                    zone: self.zone.clone(),
                    identity: e.identity.clone(),
                    protocol: e.protocol.clone(),
                    instance: e.instance.clone(),
                    weight: 1,
                    via_gateway: false,
                    priority: 0,
                    subsets: Vec::new(),
                });
        }
        out
    }

    /// Per-service config every proxy of the zone receives.
    pub fn clusters(&self) -> BTreeMap<String, pb::Cluster> {
        self.endpoints()
            .into_iter()
            .map(|(svc, eps)| {
                let protocol = eps.first().map(|e| e.protocol.clone()).unwrap_or_default();
                (
                    svc.clone(),
                    pb::Cluster {
                        service: svc,
                        protocol,
                        endpoints: eps,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    pub fn inventory(&self) -> BTreeMap<String, pb::ServiceInventory> {
        self.endpoints()
            .into_iter()
            .map(|(name, endpoints)| (name.clone(), pb::ServiceInventory { name, endpoints }))
            .collect()
    }

    pub fn dump(&self) -> serde_json::Value {
        serde_json::to_value(self.lock().values().cloned().collect::<Vec<_>>()).unwrap_or_default()
    }
}

/// The zone's proxies in figures, read at scrape time: how many are in
/// each state, how many refused their last config, and the earliest
/// certificate expiry among connected ones (for an alert before a proxy
/// whose renewals fail runs out). Per-proxy detail is in `ternctl inspect
/// dataplanes`, not in labels.
pub struct RegistryCollector(pub Arc<Registry>);

impl std::fmt::Debug for RegistryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryCollector")
    }
}

impl prometheus_client::collector::Collector for RegistryCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let all = self.0.all();
        let mut states: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for e in &all {
            let state = if !e.connected {
                "disconnected"
            } else if e.unhealthy {
                "unhealthy"
            } else if e.unreachable {
                "unreachable"
            } else if !e.ready {
                "starting"
            } else {
                "serving"
            };
            *states.entry((e.kind.as_str(), state)).or_default() += 1;
        }
        let mut m = enc.encode_descriptor(
            "proxies",
            "Registered proxies by kind and state (serving, starting, unhealthy, unreachable, disconnected)",
            None,
            MetricType::Gauge,
        )?;
        for ((kind, state), n) in &states {
            m.encode_family(&[("kind", *kind), ("state", *state)])?
                .encode_gauge(n)?;
        }
        let nacked = all.iter().filter(|e| e.status.last_nack.is_some()).count() as i64;
        enc.encode_descriptor(
            "proxies_nacked",
            "Proxies whose last answer to a config was a NACK",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&nacked)?;
        if let Some(earliest) = all
            .iter()
            .filter(|e| e.connected && e.status.cert_not_after > 0)
            .map(|e| e.status.cert_not_after)
            .min()
        {
            enc.encode_descriptor(
                "proxy_certificate_expiry_earliest_timestamp_seconds",
                "The earliest expiry (unix seconds) among connected proxies' certificates",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(earliest as i64))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(instance: &str, service: &str, uid: &str, token: &str) -> Entry {
        Entry {
            instance: instance.into(),
            service: service.into(),
            address: "10.0.0.1".into(),
            port: 15006,
            protocol: "http".into(),
            labels: BTreeMap::new(),
            identity: format!("spiffe://tern/zone/z/svc/{service}"),
            kind: "sidecar".into(),
            public_address: String::new(),
            connected: true,
            session: 0,
            uid: uid.into(),
            token_id: token.into(),
            ready: false,
            reachable: vec![],
            unhealthy: false,
            unreachable: false,
            status: Default::default(),
        }
    }

    /// An instance whose app checks fail, or that disconnected and refuses
    /// connections, is not published; each comes back when that ends, and
    /// a stale session's verdict changes nothing.
    #[tokio::test]
    async fn unhealthy_and_unreachable_instances_are_withdrawn_until_they_recover() {
        let r = Arc::new(Registry::new("z", "r", Duration::from_secs(60)));
        let s1 = r.register(entry("api-1", "api", "p1", "t"), 10).unwrap();
        let s2 = r.register(entry("api-2", "api", "p2", "t"), 10).unwrap();
        r.mark_ready("api-1", s1);
        r.mark_ready("api-2", s2);
        let published = |r: &Registry| -> Vec<String> {
            r.endpoints()
                .get("api")
                .map(|v| v.iter().map(|e| e.instance.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(published(&r), ["api-1", "api-2"]);
        r.set_app_health("api-2", s2, false, "HealthCheck/api");
        assert_eq!(published(&r), ["api-1"]);
        r.set_app_health("api-2", s2 + 100, true, "HealthCheck/api");
        assert_eq!(published(&r), ["api-1"], "another session's verdict");
        r.set_app_health("api-2", s2, true, "HealthCheck/api");
        assert_eq!(published(&r), ["api-1", "api-2"]);
        // Disconnected: probed; refusing, withdrawn; answering, back.
        assert!(r.disconnected().is_empty());
        r.disconnect("api-1", s1, false);
        assert_eq!(
            r.disconnected(),
            [("api-1".to_string(), "10.0.0.1:15006".to_string())]
        );
        r.set_reachable("api-1", false);
        assert_eq!(published(&r), ["api-2"]);
        r.set_reachable("api-1", true);
        assert_eq!(published(&r), ["api-1", "api-2"]);
        // A connected proxy is never marked unreachable.
        r.set_reachable("api-2", false);
        assert_eq!(published(&r), ["api-1", "api-2"]);
    }

    #[tokio::test]
    async fn a_registration_belongs_to_its_identity_and_process() {
        let r = Arc::new(Registry::new("z", "r", Duration::from_secs(60)));
        let s1 = r
            .register(entry("api-1", "api", "p1", "t-api"), 10)
            .unwrap();
        // Another service's token cannot take the name over.
        let e = r
            .register(entry("api-1", "web", "p9", "t-web"), 10)
            .unwrap_err();
        assert!(matches!(e, Refusal::OtherIdentity { .. }), "{e}");
        // The same service from another process cannot while it is live.
        let e = r
            .register(entry("api-1", "api", "p2", "t-api"), 10)
            .unwrap_err();
        assert_eq!(
            e,
            Refusal::InUse {
                instance: "api-1".into()
            }
        );
        // The same process reconnecting takes its own registration back.
        let s2 = r
            .register(entry("api-1", "api", "p1", "t-api"), 10)
            .unwrap();
        assert_ne!(s1, s2);
        // A stale session cannot remove the newer one.
        r.disconnect("api-1", s1, true);
        r.remove("api-1", s1);
        assert_eq!(r.connected(), 1);
        // Once its stream broke, a restarted proxy (new process) may take
        // the name over.
        r.disconnect("api-1", s2, false);
        r.register(entry("api-1", "api", "p3", "t-api"), 10)
            .unwrap();
        // Published only once ready; the same process reconnecting stays
        // published, a new one waits for its first ACK.
        assert!(r.endpoints().is_empty());
        let s4 = r
            .register(entry("api-1", "api", "p3", "t-api"), 10)
            .unwrap();
        r.mark_ready("api-1", s4);
        assert_eq!(r.endpoints()["api"].len(), 1);
        r.disconnect("api-1", s4, false);
        let s5 = r
            .register(entry("api-1", "api", "p3", "t-api"), 10)
            .unwrap();
        assert_eq!(
            r.endpoints()["api"].len(),
            1,
            "same process: still published"
        );
        r.disconnect("api-1", s5, false);
        r.register(entry("api-1", "api", "p4", "t-api"), 10)
            .unwrap();
        assert!(r.endpoints().is_empty(), "a new process waits for its ACK");
        r.mark_ready("api-1", s2);
        assert!(r.endpoints().is_empty(), "a stale session cannot mark it");
        // A revoked token's registration is removed at once.
        let s = r
            .register(entry("api-2", "api", "p4", "t-api"), 10)
            .unwrap();
        r.remove("api-2", s);
        assert!(r.lock().get("api-2").is_none());
        // A new process that kept its certificate and config (serving)
        // replaces a published entry without a gap; it cannot publish
        // itself where nothing was published.
        let s6 = r
            .register(entry("api-1", "api", "p4", "t-api"), 10)
            .unwrap();
        r.mark_ready("api-1", s6);
        r.disconnect("api-1", s6, false);
        let mut kept = entry("api-1", "api", "p5", "t-api");
        kept.ready = true;
        r.register(kept.clone(), 10).unwrap();
        assert_eq!(r.endpoints()["api"].len(), 1, "kept state: still published");
        let mut fresh = entry("api-9", "api", "p9", "t-api");
        fresh.ready = true;
        r.register(fresh, 10).unwrap();
        assert_eq!(
            r.endpoints()["api"].len(),
            1,
            "a claim alone publishes nothing"
        );
    }

    /// A revoked token's registrations are removed at once, not only the
    /// connected ones: one in its grace period (its stream broke) and one
    /// loaded from `registry.json` after a restart (no stream yet) stop
    /// being published when the revocation is applied (the sweep the
    /// zone-cp runs right after loading and on every change of its synced
    /// state, `proxy_server::deregister_revoked`). Before, only a live
    /// stream removed its own registration, and these stayed published
    /// until `--deregister-after` passed.
    #[tokio::test]
    async fn a_revoked_tokens_registrations_are_removed_at_once_connected_or_not() {
        let dir =
            std::env::temp_dir().join(format!("tern-registry-revoked-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let published = |r: &Registry| -> Vec<String> {
            r.endpoints()
                .values()
                .flatten()
                .map(|e| e.instance.clone())
                .collect()
        };
        let grace = Duration::from_secs(3600);
        let r = Arc::new(Registry::new("z", "r", grace));
        let s1 = r
            .register(entry("api-1", "api", "p1", "t-rev"), 10)
            .unwrap();
        let s2 = r.register(entry("api-2", "api", "p2", "t-ok"), 10).unwrap();
        r.mark_ready("api-1", s1);
        r.mark_ready("api-2", s2);
        r.disconnect("api-1", s1, false);
        assert_eq!(
            published(&r),
            ["api-1", "api-2"],
            "api-1 in its grace period"
        );
        assert_eq!(r.remove_revoked(|t| t == "t-rev"), 1);
        assert_eq!(published(&r), ["api-2"]);
        assert!(r.get("api-1").is_none());
        assert_eq!(r.remove_revoked(|t| t == "t-rev"), 0, "nothing left");
        // Loaded after a restart: the proxy has not reconnected.
        let mut kept = entry("api-3", "api", "p3", "t-rev");
        kept.ready = true;
        std::fs::write(
            dir.join("registry.json"),
            serde_json::to_vec(&vec![kept, r.get("api-2").unwrap()]).unwrap(),
        )
        .unwrap();
        let again = Arc::new(Registry::new("z", "r", grace));
        again.load(&dir);
        assert_eq!(published(&again), ["api-2", "api-3"]);
        assert_eq!(again.remove_revoked(|t| t == "t-rev"), 1);
        assert_eq!(published(&again), ["api-2"]);
        // Revoked as the zone's synced state has it (`Revocation/<id>`).
        std::fs::write(
            dir.join("global-state.json"),
            serde_json::to_vec(&serde_json::json!({
                "version": 1,
                "resources": { "Revocation/t-ok": {} },
            }))
            .unwrap(),
        )
        .unwrap();
        let global = crate::global_client::GlobalState::load(&dir).unwrap();
        assert_eq!(again.remove_revoked(|t| global.is_revoked(t)), 1);
        assert!(published(&again).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Saves run on the writer thread and coalesce (counted), and the file
    /// ends with the latest entries; a new registry loads them.
    #[tokio::test]
    async fn the_registry_is_saved_off_the_async_threads_and_reloads() {
        let dir = std::env::temp_dir().join(format!("tern-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let r = Arc::new(Registry::new("z", "r", Duration::from_secs(60)));
        r.load(&dir);
        const N: usize = 1000;
        for i in 0..N {
            r.register(entry(&format!("a-{i}"), "api", &format!("p{i}"), "t"), 2000)
                .unwrap();
        }
        let file = dir.join("registry.json");
        let saved = |n: usize| {
            std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Vec<Entry>>(&b).ok())
                .is_some_and(|v| v.len() == n)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !saved(N) {
            assert!(
                std::time::Instant::now() < deadline,
                "the registry was not saved"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A thousand changes in a burst cost a few writes, not a thousand
        // (each write is a full rewrite with fsync, far slower than the
        // loop above).
        assert!(
            r.saves() >= 1 && r.saves() <= N as u64 / 10,
            "{} saves for {N} changes",
            r.saves()
        );
        let again = Arc::new(Registry::new("z", "r", Duration::from_secs(60)));
        again.load(&dir);
        assert_eq!(again.lock().len(), N);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn one_token_registers_a_bounded_number_of_instances() {
        let r = Arc::new(Registry::new("z", "r", Duration::from_secs(60)));
        r.register(entry("a-1", "api", "p1", "t"), 2).unwrap();
        r.register(entry("a-2", "api", "p2", "t"), 2).unwrap();
        let e = r.register(entry("a-3", "api", "p3", "t"), 2).unwrap_err();
        assert!(matches!(e, Refusal::TooMany { max: 2, .. }), "{e}");
        // Re-registering an instance it holds does not count twice.
        r.disconnect("a-2", 2, false);
        r.register(entry("a-2", "api", "p2", "t"), 2).unwrap();
        // Another token has its own budget.
        r.register(entry("a-3", "api", "p3", "u"), 2).unwrap();
    }

    /// A proxy's NACK reason is kept (on disk, in `inspect dataplanes`,
    /// sent on to the global) cut to MAX_REASON_BYTES with an ellipsis: a
    /// 1 MiB reason is not refused, and not kept whole.
    #[tokio::test]
    async fn a_stored_nack_reason_is_truncated() {
        use crate::registration::MAX_REASON_BYTES;
        let r = Arc::new(Registry::new("z", "r", Duration::from_secs(60)));
        let s = r.register(entry("api-1", "api", "p1", "t"), 10).unwrap();
        r.set_nack("api-1", s, 7, &"x".repeat(1 << 20));
        let kept = r.get("api-1").unwrap().status.last_nack.unwrap();
        assert!(
            kept.starts_with("v7: xxx") && kept.ends_with('…'),
            "{kept:.40}"
        );
        assert!(
            kept.len() <= "v7: ".len() + MAX_REASON_BYTES,
            "{}",
            kept.len()
        );
        // A short reason is kept as it is.
        r.set_nack("api-1", s, 8, "bad route");
        assert_eq!(
            r.get("api-1").unwrap().status.last_nack.unwrap(),
            "v8: bad route"
        );
    }
}
