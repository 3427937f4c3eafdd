//! The global's live view of its zones: one row per zone while its sync
//! session (`sync.rs`) runs — online state, the revision it acknowledged,
//! its last NACK, its inventory's counts — and the queries the global
//! sends down a session and waits on (`ternctl inspect dataplane`). Read
//! by the admin API (`zone_views`) and by `/metrics` (`ZoneCollector`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use model::token;
use proto::v1 as pb;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::store::{StoreError, ZoneRecord};
use crate::State;

/// Live status of each zone, for the zones view.
#[derive(Default)]
pub struct ZoneTable {
    inner: Mutex<HashMap<String, ZoneLive>>,
    /// Explain requests waiting for their zone's answer, by zone and id:
    /// only the zone asked can answer.
    pending: Mutex<HashMap<(String, u64), tokio::sync::oneshot::Sender<pb::ExplainReply>>>,
    next_query: std::sync::atomic::AtomicU64,
}

/// Why a zone could not explain a dataplane.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "zone {0} is not connected to the global; ask again once it is (`ternctl inspect zones`)"
    )]
    Offline(String),
    #[error("zone {0} did not answer within {1:?}")]
    Timeout(String, std::time::Duration),
    #[error("{0}")]
    Zone(String),
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneLive {
    pub online: bool,
    pub session: u64,
    pub connected_since: u64,
    pub last_seen: u64,
    pub instance_id: String,
    pub software_version: String,
    pub acked_version: u64,
    pub in_flight: Option<u64>,
    pub last_nack: Option<(u64, String)>,
    pub connected_proxies: u32,
    pub services: BTreeMap<String, usize>,
    pub region: String,
    pub gateways: Vec<String>,
    /// Why the zone's last inventory report was refused (its published
    /// ZoneIngress stays as it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory_refused: Option<String>,
    #[serde(skip)]
    pub report: crate::inventory::Report,
    #[serde(skip)]
    kick: Option<watch::Sender<u64>>,
    /// The live session's stream to the zone.
    #[serde(skip)]
    outbox: Option<mpsc::Sender<Result<pb::GlobalMessage, Status>>>,
}

impl ZoneTable {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ZoneLive>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start a session for `zone`; an older session of the same zone ends.
    pub(crate) fn begin(
        &self,
        zone: &str,
        hello: &pb::ZoneHello,
        outbox: mpsc::Sender<Result<pb::GlobalMessage, Status>>,
    ) -> (u64, watch::Receiver<u64>) {
        let mut t = self.lock();
        let z = t.entry(zone.to_string()).or_default();
        z.outbox = Some(outbox);
        z.session += 1;
        z.online = true;
        z.connected_since = token::now_unix();
        z.last_seen = z.connected_since;
        z.instance_id = hello.instance_id.clone();
        z.software_version = hello.software_version.clone();
        z.acked_version = hello.resume_from;
        z.in_flight = None;
        let session = z.session;
        let rx = match &z.kick {
            Some(k) => {
                k.send_replace(session);
                k.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(session);
                z.kick = Some(tx);
                rx
            }
        };
        (session, rx)
    }

    pub(crate) fn update(&self, zone: &str, session: u64, f: impl FnOnce(&mut ZoneLive)) {
        if let Some(z) = self.lock().get_mut(zone) {
            if z.session == session {
                z.last_seen = token::now_unix();
                f(z);
            }
        }
    }

    pub(crate) fn end(&self, zone: &str, session: u64) -> bool {
        let mut t = self.lock();
        match t.get_mut(zone) {
            Some(z) if z.session == session => {
                z.online = false;
                z.outbox = None;
                z.in_flight = None;
                z.last_seen = token::now_unix();
                true
            }
            _ => false,
        }
    }

    pub fn snapshot(&self) -> HashMap<String, ZoneLive> {
        self.lock().clone()
    }

    /// Ask `zone` to explain its proxy `dataplane` (the policies that apply
    /// to it and what they compile to), waiting at most `limit`.
    pub async fn explain(
        &self,
        zone: &str,
        dataplane: &str,
        limit: std::time::Duration,
    ) -> Result<serde_json::Value, ExplainError> {
        self.ask(zone, dataplane, false, limit).await
    }

    /// The zone's list of its proxies.
    pub async fn dataplanes(
        &self,
        zone: &str,
        limit: std::time::Duration,
    ) -> Result<serde_json::Value, ExplainError> {
        self.ask(zone, "", true, limit).await
    }

    /// Zones online now.
    pub fn online(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, z)| z.online)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    pub(crate) async fn ask(
        &self,
        zone: &str,
        dataplane: &str,
        list: bool,
        limit: std::time::Duration,
    ) -> Result<serde_json::Value, ExplainError> {
        let outbox = self
            .lock()
            .get(zone)
            .filter(|z| z.online)
            .and_then(|z| z.outbox.clone())
            .ok_or_else(|| ExplainError::Offline(zone.to_string()))?;
        let id = self
            .next_query
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let key = (zone.to_string(), id);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), tx);
        let ask = pb::GlobalMessage {
            msg: Some(pb::global_message::Msg::Explain(pb::ExplainRequest {
                id,
                dataplane: dataplane.to_string(),
                list,
            })),
        };
        let answer = tokio::time::timeout(limit, async {
            outbox.send(Ok(ask)).await.ok()?;
            rx.await.ok()
        })
        .await;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        match answer {
            Ok(Some(r)) if r.error.is_empty() => serde_json::from_slice(&r.json)
                .map_err(|e| ExplainError::Zone(format!("zone {zone} sent unreadable JSON: {e}"))),
            Ok(Some(r)) => Err(ExplainError::Zone(r.error)),
            Ok(None) => Err(ExplainError::Offline(zone.to_string())),
            Err(_) => Err(ExplainError::Timeout(zone.to_string(), limit)),
        }
    }

    /// `zone`'s answer to one of the queries sent to it; an id that was
    /// not asked of this zone is ignored.
    pub(crate) fn answered(&self, zone: &str, r: pb::ExplainReply) {
        if let Some(tx) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(zone.to_string(), r.id))
        {
            let _ = tx.send(r);
        }
    }

    pub(crate) fn online_session(&self, zone: &str) -> Option<u64> {
        self.lock()
            .get(zone)
            .filter(|z| z.online)
            .map(|z| z.session)
    }

    /// What the global holds of a zone's inventory reports.
    pub(crate) fn report(&self, zone: &str) -> Option<crate::inventory::Report> {
        self.lock().get(zone).map(|z| z.report.clone())
    }

    pub(crate) fn session(&self, zone: &str) -> u64 {
        self.lock().get(zone).map(|z| z.session).unwrap_or(0)
    }
}

/// One row of `ternctl inspect zones`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneView {
    pub name: String,
    /// The region the zone reports (or, while it is offline, the one its
    /// published ZoneIngress names); empty if neither is known.
    pub region: String,
    pub online: bool,
    pub last_seen: Option<String>,
    pub joined_at: String,
    pub acked_version: u64,
    pub global_version: u64,
    pub in_flight: Option<u64>,
    pub last_nack: Option<String>,
    pub connected_proxies: u32,
    pub services: BTreeMap<String, usize>,
    pub software_version: String,
    /// Why the zone's last inventory report was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory_refused: Option<String>,
}

pub fn zone_views(state: &State) -> Result<Vec<ZoneView>, StoreError> {
    let live = state.zones.snapshot();
    let rev = state.store.revision();
    // Offline zones keep their published region (ZoneIngress).
    let published: BTreeMap<String, String> = state
        .store
        .list(Some("ZoneIngress"))?
        .into_iter()
        .filter_map(|s| {
            let spec = model::resource::ZoneIngressSpec::from_resource(&s.resource)?;
            Some((s.resource.metadata.name, spec.region))
        })
        .collect();
    Ok(state
        .store
        .zones()?
        .into_iter()
        .map(|r: ZoneRecord| {
            let l = live.get(&r.name).cloned().unwrap_or_default();
            let last_seen = l.last_seen.max(r.last_seen);
            let region = if l.region.is_empty() {
                published.get(&r.name).cloned().unwrap_or_default()
            } else {
                l.region
            };
            ZoneView {
                region,
                online: l.online,
                last_seen: (last_seen > 0).then(|| token::fmt_unix(last_seen)),
                joined_at: token::fmt_unix(r.joined_at),
                acked_version: if l.session > 0 {
                    l.acked_version
                } else {
                    r.acked_version
                },
                global_version: rev,
                in_flight: l.in_flight,
                last_nack: l
                    .last_nack
                    .map(|(v, why)| format!("v{v}: {why}"))
                    .or_else(|| {
                        r.last_nack
                            .map(|n| format!("v{}: {n}", r.last_nack_version.unwrap_or(0)))
                    }),
                connected_proxies: l.connected_proxies,
                services: l.services,
                software_version: l.software_version,
                inventory_refused: l.inventory_refused,
                name: r.name,
            }
        })
        .collect())
}

/// Per-zone sync figures, read at scrape time: whether the zone is online,
/// the mesh revision it acknowledged, how many revisions it is behind, and
/// whether its last answer was a refusal. Zones are members, so the label
/// set is bounded by membership.
pub struct ZoneCollector(pub std::sync::Arc<crate::State>);

impl std::fmt::Debug for ZoneCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZoneCollector")
    }
}

impl prometheus_client::collector::Collector for ZoneCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let revision = self.0.store.revision();
        let zones: Vec<(String, bool, u64, bool)> = {
            let g = self.0.zones.lock();
            let mut v: Vec<_> = g
                .iter()
                .map(|(n, z)| (n.clone(), z.online, z.acked_version, z.last_nack.is_some()))
                .collect();
            v.sort();
            v
        };
        // (zone, online, acked revision, nacked), and the store revision.
        type Gauge = fn(&(String, bool, u64, bool), u64) -> i64;
        let metrics: [(&str, &str, Gauge); 4] = [
            ("zone_online", "1 while the zone's sync stream is up", |z, _| {
                z.1 as i64
            }),
            (
                "zone_acked_revision",
                "The mesh revision the zone last acknowledged",
                |z, _| z.2 as i64,
            ),
            (
                "zone_sync_lag_revisions",
                "Mesh revisions the zone has not acknowledged yet (the store's revision minus the zone's)",
                |z, rev| rev.saturating_sub(z.2) as i64,
            ),
            (
                "zone_nacked",
                "1 when the zone's last answer was a NACK (see `ternctl inspect zones`)",
                |z, _| z.3 as i64,
            ),
        ];
        for (name, help, value) in metrics {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for z in &zones {
                m.encode_family(&[("zone", z.0.as_str())])?
                    .encode_gauge(&value(z, revision))?;
            }
        }
        let mut m = enc.encode_descriptor(
            "store_revision",
            "The store's mesh-wide revision",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(revision as i64))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
