//! The zone registry: which proxies are connected, for which service, where.
//!
//! Kept on disk, so that after a zone-cp restart the proxies that are still
//! running stay in the config until they reconnect or their grace runs out.

use std::collections::BTreeMap;
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
}

pub struct Registry {
    zone: String,
    region: String,
    grace: Duration,
    path: Mutex<Option<PathBuf>>,
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
            path: Mutex::new(None),
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
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
        self.bump();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        let snapshot: Vec<Entry> = self.lock().values().cloned().collect();
        if let Some(p) = self.path.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if let Ok(s) = serde_json::to_string(&snapshot) {
                if let Err(e) = common::fsutil::write_private(p, &s) {
                    tracing::warn!(error = %e, "could not persist the registry");
                }
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Register (or re-register) a proxy; returns its session id.
    pub fn register(&self, mut e: Entry) -> u64 {
        let session = self
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        e.session = session;
        e.connected = true;
        tracing::info!(instance = %e.instance, service = %e.service, address = %e.address, port = e.port, "proxy registered");
        self.lock().insert(e.instance.clone(), e);
        self.bump();
        session
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

    /// Registered gateways (connected or in grace).
    pub fn gateways(&self) -> Vec<Entry> {
        self.lock()
            .values()
            .filter(|e| e.kind == "gateway")
            .cloned()
            .collect()
    }

    fn endpoints(&self) -> BTreeMap<String, Vec<pb::Endpoint>> {
        let mut out: BTreeMap<String, Vec<pb::Endpoint>> = BTreeMap::new();
        for e in self.lock().values().filter(|e| e.kind != "gateway") {
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
