//! The zone's side of the global sync: apply resource deltas (whole or not
//! at all), persist them before ACKing, report inventory (built in
//! `inventory.rs`), reconnect with backoff and resume from the last
//! applied version.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sync::{Backoff, Chunk, DeltaReceiver, Outcome};
use common::tls::{self, Expect, SpiffeServerVerifier};
use common::traffic::cadence;
use model::ident::SpiffeId;
use model::resource::{self, MeshSpec, Resource};
use proto::v1::global_sync_client::GlobalSyncClient;
use proto::v1::{self as pb, zone_message};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

use crate::inventory::{inv_msg, inventory_diff};
use crate::{Error, Zone};

#[derive(Serialize, Deserialize, Default, Clone)]
struct Persisted {
    version: u64,
    resources: BTreeMap<String, Value>,
}

/// What the zone knows from the global, on disk and in memory.
pub struct GlobalState {
    path: PathBuf,
    inner: Mutex<Persisted>,
    changed: watch::Sender<u64>,
    connected: AtomicBool,
}

impl GlobalState {
    pub fn load(dir: &std::path::Path) -> Result<Self, Error> {
        let path = dir.join("global-state.json");
        let p: Persisted = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| Error::Decode {
                what: format!(
                    "{} is corrupt; delete it to resync from the global",
                    path.display()
                ),
                source,
            })?,
            Err(_) => Persisted::default(),
        };
        let v = p.version;
        Ok(Self {
            path,
            inner: Mutex::new(p),
            changed: watch::channel(v).0,
            connected: AtomicBool::new(false),
        })
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Persisted> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn version(&self) -> u64 {
        self.lock().version
    }
    pub fn keys(&self) -> Vec<String> {
        self.lock().resources.keys().cloned().collect()
    }
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.lock()
            .resources
            .contains_key(&format!("Revocation/{jti}"))
    }
    /// Workload certificate lifetime from `Mesh/default`, or the default.
    pub fn workload_cert_ttl(&self) -> Duration {
        let g = self.lock();
        g.resources
            .get("Mesh/default")
            .and_then(|v| serde_json::from_value::<Resource>(v.clone()).ok())
            .map(|r| MeshSpec::from_resource(&r))
            .unwrap_or_default()
            .mtls
            .workload_cert_ttl
            .0
    }

    /// The zone intermediates the mesh trusts, by zone (fingerprints, newest
    /// first), from the `ZoneCa` resources.
    pub fn zone_cas(&self) -> BTreeMap<String, Vec<String>> {
        let g = self.lock();
        g.resources
            .range("ZoneCa/".to_string().."ZoneCa0".to_string())
            .filter_map(|(k, v)| {
                let r: Resource = serde_json::from_value(v.clone()).ok()?;
                let spec = model::resource::ZoneCaSpec::from_resource(&r)?;
                Some((
                    k["ZoneCa/".len()..].to_string(),
                    spec.certificates
                        .into_iter()
                        .map(|c| c.fingerprint)
                        .collect(),
                ))
            })
            .collect()
    }

    /// The mesh's roots (`MeshTrust/default`), once synced.
    pub fn mesh_trust(&self) -> Option<model::resource::MeshTrustSpec> {
        let g = self.lock();
        let v = g.resources.get("MeshTrust/default")?;
        let r: Resource = serde_json::from_value(v.clone()).ok()?;
        model::resource::MeshTrustSpec::from_resource(&r)
    }

    /// Other zones' ingress (region, gateways, service health), by zone.
    pub fn ingresses(&self) -> Vec<(String, model::resource::ZoneIngressSpec)> {
        let g = self.lock();
        g.resources
            .range("ZoneIngress/".to_string().."ZoneIngress0".to_string())
            .filter_map(|(k, v)| {
                let r: Resource = serde_json::from_value(v.clone()).ok()?;
                let spec = model::resource::ZoneIngressSpec::from_resource(&r)?;
                Some((k["ZoneIngress/".len()..].to_string(), spec))
            })
            .collect()
    }

    /// `spec.regionOrder` of a Zone resource.
    pub fn region_order(&self, zone: &str) -> Vec<String> {
        let g = self.lock();
        g.resources
            .get(&format!("Zone/{zone}"))
            .and_then(|v| serde_json::from_value::<Resource>(v.clone()).ok())
            .and_then(|r| model::resource::ZoneSpec::from_resource(&r))
            .map(|s| s.region_order)
            .unwrap_or_default()
    }

    /// Read every resource (`Kind/name` → document) under the lock.
    pub fn with_resources<R>(&self, f: impl FnOnce(&BTreeMap<String, Value>) -> R) -> R {
        f(&self.lock().resources)
    }

    fn snapshot(&self) -> (u64, BTreeMap<String, Value>) {
        let g = self.lock();
        (g.version, g.resources.clone())
    }

    /// Persist first, then publish: an ACK always means "on disk".
    fn replace(&self, version: u64, resources: BTreeMap<String, Value>) -> Result<(), Error> {
        let p = Persisted { version, resources };
        model::fsutil::write_private(&self.path, &serde_json::to_string(&p)?)?;
        *self.lock() = p;
        self.changed.send_replace(version);
        Ok(())
    }
}

/// Check one resource of a delta from the global (a delta with a bad one is
/// NACKed whole).
pub fn validate(_key: &str, v: &Value) -> Result<(), String> {
    if v.is_null() {
        return Err("body is not valid JSON".into());
    }
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if resource::KINDS.iter().any(|k| k.name == kind) {
        resource::from_value(v.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        // A kind from a newer global: kept, not enforced.
        Ok(())
    }
}

/// A delta message as a chunk for the delta receiver; a body that is not
/// JSON becomes `null`, which [`validate`] refuses.
pub fn chunk_of(d: pb::Delta) -> Chunk<Value> {
    Chunk {
        version: d.version,
        full: d.full,
        chunk: d.chunk,
        last: d.last_chunk,
        upserts: d
            .upserts
            .into_iter()
            .map(|r| {
                let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                (format!("{}/{}", r.kind, r.name), v)
            })
            .collect(),
        removals: d
            .removals
            .into_iter()
            .map(|k| format!("{}/{}", k.kind, k.name))
            .collect(),
    }
}

pub fn spawn(z: Arc<Zone>) {
    tokio::spawn(async move {
        let mut backoff = Backoff::reconnect();
        loop {
            let res = run_once(&z).await;
            let established = z.global.connected.swap(false, Ordering::Relaxed);
            z.metrics.global_connected.set(0);
            match res {
                Ok(()) => tracing::warn!("sync stream to the global ended; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "sync with the global failed; serving proxies from the last known config")
                }
            }
            if established {
                backoff.reset();
            }
            tokio::time::sleep(backoff.next_delay(common::sync::jitter())).await;
        }
    });
}

/// The gRPC message limit of the sync stream, both ways (the global's is
/// the same).
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How often the zone reports its traffic to the global.
pub const TRAFFIC_REPORT_EVERY: Duration = Duration::from_secs(5);
/// While a drill runs or is being observed.
pub const DRILL_REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long after a boundary the zone takes its proxies' sums.
const AFTER_PROXIES: Duration = Duration::from_millis(300);
/// Boundaries the zone lets pass, once it sees a drill, before it reports
/// every second: its proxies hear of the drill (and report every second)
/// within milliseconds, and get at least 1.7 s. A zone reporting every
/// second before its proxies do would count their 5 s reports in 1 s
/// intervals.
const PROXIES_FIRST: u64 = 2;

/// The zone's reporting cadence: every second from [`PROXIES_FIRST`]
/// boundaries after it saw a drill, until the drill ends.
#[derive(Default)]
struct Fast {
    /// The first boundary (unix seconds) reported at the drill cadence.
    from: Option<u64>,
}

impl Fast {
    fn cadence(&mut self, drill: bool, secs: u64) -> Duration {
        if !drill {
            self.from = None;
            return TRAFFIC_REPORT_EVERY;
        }
        let from = *self.from.get_or_insert(secs + PROXIES_FIRST);
        if secs >= from {
            DRILL_REPORT_EVERY
        } else {
            TRAFFIC_REPORT_EVERY
        }
    }
}

async fn run_once(z: &Arc<Zone>) -> Result<(), Error> {
    let ident = z.boot.identity.borrow().clone();
    let verifier = SpiffeServerVerifier::new(
        Arc::new(z.boot.policy()),
        Expect::Exact(SpiffeId::global(&z.boot.trust_domain)),
    );
    let cfg = tls::client_config(Some(&ident), Arc::new(verifier), &[tls::ALPN_H2])?;
    let channel = common::grpc::tls_channel(z.boot.global_addr.clone(), Arc::new(cfg));
    let mut client = GlobalSyncClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (version, state) = z.global.snapshot();
    let (tx, rx) = mpsc::channel(16);
    // Inventory chunks have their own small queue, filled from `outbox` by
    // the loop below: a large report neither takes the slots ACKs and
    // traffic reports need nor keeps the loop from reading the global's
    // deltas while it goes out.
    let (inv_tx, inv_rx) = mpsc::channel(2);
    tx.send_timeout(
        pb::ZoneMessage {
            msg: Some(zone_message::Msg::Hello(pb::ZoneHello {
                zone: z.boot.zone.clone(),
                resume_from: version,
                instance_id: format!("{}-{}", z.boot.zone, std::process::id()),
                software_version: env!("CARGO_PKG_VERSION").into(),
            })),
        },
        common::grpc::SEND_TIMEOUT,
    )
    .await?;
    let mut reg_rx = z.registry.watch();
    let mut last_inv = z.registry.inventory();
    // The chunks of the inventory update going out; the next update is
    // made once they are all queued (changes meanwhile are coalesced).
    let mut outbox: VecDeque<pb::Inventory> =
        inventory_diff(z, &BTreeMap::new(), &last_inv, true).into();
    let mut inbound = client
        .sync(ReceiverStream::new(rx).merge(ReceiverStream::new(inv_rx)))
        .await
        .map_err(|s| Error::Global(s.message().to_string()))?
        .into_inner();
    z.global.connected.store(true, Ordering::Relaxed);
    z.metrics.global_connected.set(1);
    tracing::info!(resume_from = version, "connected to the global");
    let mut receiver: DeltaReceiver<Value> = DeltaReceiver::new(version, state);
    let mut renewal = crate::ca::Renewal::default();
    let mut ca_tick = tokio::time::interval(crate::ca::CHECK_EVERY);
    // Every TRAFFIC_REPORT_EVERY, and every second while a drill runs (or
    // is being observed), so its guard and report see changes sooner: on
    // the wall-clock boundaries the proxies report on, a little after them
    // so that their reports are in (`common::traffic::cadence`).
    let mut traffic_tick = Box::pin(cadence::tick_after(AFTER_PROXIES, 0));
    let mut fast = Fast::default();
    let mut send_full = false;
    loop {
        tokio::select! {
            secs = &mut traffic_tick => {
                traffic_tick.set(cadence::tick_after(AFTER_PROXIES, secs));
                let every = fast.cadence(crate::drill::current(z).is_some(), secs);
                if !cadence::due(secs, every) {
                    continue;
                }
                let t = z.traffic.take(&z.registry.instance_counts());
                tx.send_timeout(pb::ZoneMessage { msg: Some(zone_message::Msg::Traffic(t)) }, common::grpc::SEND_TIMEOUT).await?;
            }
            m = inbound.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(Error::Global(s.message().to_string())),
                };
                let d = match m.msg {
                    Some(pb::global_message::Msg::Delta(d)) => d,
                    Some(pb::global_message::Msg::CaIssued(c)) => {
                        renewal.answered(z, c);
                        continue;
                    }
                    Some(pb::global_message::Msg::Explain(q)) => {
                        let answer = if q.list {
                            Ok(crate::explain::dataplanes(z))
                        } else {
                            crate::explain::dataplane(z, &q.dataplane)
                        };
                        let reply = match answer {
                            Ok(v) => pb::ExplainReply { id: q.id, json: serde_json::to_vec(&v).unwrap_or_default(), error: String::new() },
                            Err(e) => pb::ExplainReply { id: q.id, json: vec![], error: e },
                        };
                        tx.send_timeout(pb::ZoneMessage { msg: Some(zone_message::Msg::Explain(reply)) }, common::grpc::SEND_TIMEOUT).await?;
                        continue;
                    }
                    Some(pb::global_message::Msg::InventoryRefused(r)) => {
                        // The global ignores our deltas until a full
                        // report: send one on the next change (not now,
                        // which would repeat the same refusal).
                        z.metrics.inventory_refused.inc();
                        tracing::warn!(reason = %r.reason, "the global refused this zone's inventory; other zones see its last accepted one");
                        send_full = true;
                        continue;
                    }
                    None => continue,
                };
                match receiver.on_chunk(chunk_of(d), validate)? {
                    None => {}
                    Some(Outcome::Ack(v)) => {
                        z.global.replace(v, receiver.state().clone())?;
                        crate::ca::follow_mesh_trust(z)?;
                        renewal.install_when_listed(z);
                        z.metrics.deltas_applied.inc();
                        tracing::info!(version = v, resources = receiver.state().len(), "applied config from the global");
                        tx.send_timeout(pb::ZoneMessage { msg: Some(zone_message::Msg::Ack(pb::Ack { version: v })) }, common::grpc::SEND_TIMEOUT).await?;
                    }
                    Some(Outcome::Nack(v, reason)) => {
                        // Keep the last good state; the receiver did not apply it.
                        receiver = DeltaReceiver::new(z.global.version(), z.global.snapshot().1);
                        z.metrics.deltas_refused.inc();
                        tracing::warn!(version = v, %reason, "refused config from the global");
                        tx.send_timeout(pb::ZoneMessage { msg: Some(zone_message::Msg::Nack(pb::Nack { version: v, reason })) }, common::grpc::SEND_TIMEOUT).await?;
                    }
                }
            }
            permit = inv_tx.reserve(), if !outbox.is_empty() => {
                let permit = permit.map_err(|_| Error::Global("the sync stream to the global closed".into()))?;
                if let Some(chunk) = outbox.pop_front() {
                    permit.send(inv_msg(chunk));
                }
            }
            r = reg_rx.changed(), if outbox.is_empty() => {
                r?;
                let now = z.registry.inventory();
                outbox.extend(inventory_diff(z, &last_inv, &now, send_full));
                send_full = false;
                last_inv = now;
            }
            _ = ca_tick.tick() => {
                if let Some(req) = renewal.next(z) {
                    tx.send_timeout(pb::ZoneMessage { msg: Some(zone_message::Msg::RenewCa(req)) }, common::grpc::SEND_TIMEOUT).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 5 s without a drill; with one, every second only from the
    /// second boundary after the zone saw it (its proxies switch first);
    /// back to 5 s when it ends, and the wait starts over for the next.
    #[test]
    fn the_zone_reports_every_second_only_after_its_proxies_do() {
        let mut f = Fast::default();
        assert_eq!(f.cadence(false, 99), TRAFFIC_REPORT_EVERY);
        assert_eq!(f.cadence(true, 100), TRAFFIC_REPORT_EVERY);
        assert_eq!(f.cadence(true, 101), TRAFFIC_REPORT_EVERY);
        assert_eq!(f.cadence(true, 102), DRILL_REPORT_EVERY);
        assert_eq!(f.cadence(true, 150), DRILL_REPORT_EVERY);
        assert_eq!(f.cadence(false, 151), TRAFFIC_REPORT_EVERY);
        assert_eq!(f.cadence(true, 200), TRAFFIC_REPORT_EVERY);
        assert_eq!(f.cadence(true, 202), DRILL_REPORT_EVERY);
    }
}
