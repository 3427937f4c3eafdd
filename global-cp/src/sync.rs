//! Zone sync server: `Join` (token -> intermediate CA) and `Sync` (resources
//! down as versioned deltas, inventory and ACK/NACK up). Each session keeps
//! its zone's row of the live zone table (`zones.rs`) up to date.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use common::sync::{chunk, Delta, DeltaSender, Want};
use common::trust::{Issuer, Verified};
use common::{grpc, tls};
use futures_util::Stream;
use model::ident::SpiffeId;
use model::resource::{Key, Resource, ZoneIngressSpec};
use model::token;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use proto::v1::global_sync_server::{GlobalSync, GlobalSyncServer};
use proto::v1::{self as pb, zone_message};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::inventory::Assembler;
use crate::membership;
use crate::store::StoreError;
use crate::{Error, State};

/// Deltas are cut into messages of about this size; a single resource is
/// bounded by MAX_RESOURCE_BYTES, far below the gRPC message limit.
const CHUNK_BYTES: usize = 1024 * 1024;
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// A zone's NACK reason is kept (zone table, store) and logged cut to this
/// many bytes.
pub const MAX_NACK_REASON_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Metrics {
    pub zones_online: Gauge,
    /// By `kind`: `full` (the zone's state replaced) or `incremental`.
    pub deltas_sent: Family<Vec<(String, String)>, Counter>,
    pub nacks: Counter,
    pub inventories_refused: Counter,
    pub joins: Family<Vec<(String, String)>, Counter>,
    pub root_ca_expiry: Gauge,
    pub zone_ca_expiry: Family<Vec<(String, String)>, Gauge>,
}

impl Metrics {
    pub fn new(reg: &mut Registry) -> Self {
        let m = Self {
            zones_online: Gauge::default(),
            deltas_sent: Family::default(),
            nacks: Counter::default(),
            inventories_refused: Counter::default(),
            joins: Family::default(),
            root_ca_expiry: Gauge::default(),
            zone_ca_expiry: Family::default(),
        };
        reg.register(
            "root_ca_expiry_timestamp_seconds",
            "When the active mesh root CA expires (unix seconds); rotate it with `ternctl ca rotate`",
            m.root_ca_expiry.clone(),
        );
        reg.register(
            "zone_ca_expiry_timestamp_seconds",
            "When each zone's newest intermediate CA expires (unix seconds); zones renew at two thirds of its life",
            m.zone_ca_expiry.clone(),
        );
        reg.register(
            "zones_online",
            "Zones with a live sync stream",
            m.zones_online.clone(),
        );
        reg.register(
            "sync_deltas",
            "Deltas sent to zones, by kind: full (replaces the zone's state: first contact, or a zone too far behind) or incremental",
            m.deltas_sent.clone(),
        );
        reg.register("sync_nacks", "Deltas zones refused", m.nacks.clone());
        reg.register(
            "inventories_refused",
            "Zone inventory reports refused (too large, or speaking for what the zone does not own); see the zone's status",
            m.inventories_refused.clone(),
        );
        reg.register(
            "zone_joins",
            "Zone join attempts by result",
            m.joins.clone(),
        );
        m
    }
}

pub async fn serve(state: Arc<State>) -> Result<(), Error> {
    crate::authority::spawn_rotation(state.clone());
    let listener = tokio::net::TcpListener::bind(state.config.sync_addr)
        .await
        .map_err(common::bind::failed(
            "bind sync endpoint",
            state.config.sync_addr,
        ))?;
    let (cfg_tx, cfg_rx) = watch::channel(server_tls(&state)?);
    // Follow serving-certificate rotation.
    let st = state.clone();
    tokio::spawn(async move {
        let mut rx = st.authority.serving.subscribe();
        while rx.changed().await.is_ok() {
            match server_tls(&st) {
                Ok(c) => {
                    cfg_tx.send_replace(c);
                }
                Err(e) => tracing::error!(error = %e, "rebuild sync TLS config"),
            }
        }
    });
    let incoming = grpc::tls_incoming(listener, cfg_rx);
    let svc = GlobalSyncServer::new(SyncService { state })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tokio::spawn(async move {
        if let Err(e) = common::grpc::server()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "sync server stopped");
        }
    });
    Ok(())
}

fn server_tls(state: &State) -> Result<Arc<common::rustls::ServerConfig>, Error> {
    let ident = state.authority.serving.borrow().clone();
    Ok(Arc::new(tls::server_config_optional_mtls(
        &ident,
        Arc::new(state.authority.policy()?),
        &[tls::ALPN_H2],
    )?))
}

struct SyncService {
    state: Arc<State>,
}

fn count_join(state: &State, result: &str) {
    state
        .metrics
        .joins
        .get_or_create(&vec![("result".into(), result.into())])
        .inc();
}

#[tonic::async_trait]
impl GlobalSync for SyncService {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let st = &self.state;
        let r = req.into_inner();
        let admitted = match membership::join(st, &r.zone, &r.token, &r.ca_csr_pem) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(zone = %r.zone, reason = %e, "zone join refused");
                count_join(st, "refused");
                return Err(e.into());
            }
        };
        count_join(st, "ok");
        tracing::info!(zone = %r.zone, token = %admitted.token_id, "zone joined");
        let roots = st.authority.roots();
        Ok(Response::new(pb::JoinResponse {
            intermediate_pem: admitted.intermediate_pem,
            root_pem: roots.trusted_bundle(),
            trust_domain: st.authority.trust_domain.clone(),
            token_public_key: st.authority.signer.public_key(),
            chain_extra_pem: roots.chain_extra_pem.clone(),
        }))
    }

    type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::GlobalMessage, Status>> + Send>>;

    async fn sync(
        &self,
        req: Request<Streaming<pb::ZoneMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let st = self.state.clone();
        let peer = grpc::peer_of(&req).ok_or_else(|| Status::unauthenticated("no TLS peer"))?;
        let id = peer.identity.clone().ok_or_else(|| {
            Status::unauthenticated(
                "present the zone identity issued at join as a client certificate",
            )
        })?;
        let zone = id.zone_name().unwrap_or_default().to_string();
        if id != SpiffeId::zone_cp(&st.authority.trust_domain, &zone) {
            return Err(Status::permission_denied(format!(
                "{id} is not a zone control plane identity"
            )));
        }
        // Which of the zone's CAs issued this identity; it must be live.
        let chain: Vec<_> = peer
            .chain
            .iter()
            .map(|d| common::rustls::pki_types::CertificateDer::from(d.clone()))
            .collect();
        let issuer_fp = match st.authority.policy().map(|p| p.verify_chain_now(&chain)) {
            Ok(Ok(Verified {
                issuer: Issuer::Zone { fingerprint, .. },
                ..
            })) => fingerprint,
            _ => {
                return Err(Status::permission_denied(format!(
                    "{id} is not an identity issued by a zone CA"
                )))
            }
        };
        if let Err(why) = membership::authorized(&st, &zone, &issuer_fp) {
            tracing::warn!(zone, reason = %why, "sync refused");
            return Err(Status::permission_denied(why));
        }
        let mut inbound = req.into_inner();
        let hello =
            match tokio::time::timeout(std::time::Duration::from_secs(10), inbound.message()).await
            {
                Ok(Ok(Some(pb::ZoneMessage {
                    msg: Some(zone_message::Msg::Hello(h)),
                }))) => h,
                _ => {
                    return Err(Status::invalid_argument(
                        "the first message must be a ZoneHello",
                    ))
                }
            };
        if hello.zone != zone {
            return Err(Status::permission_denied(format!(
                "hello names zone {}, but the identity is zone {zone}",
                hello.zone
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(session(st, zone, issuer_fp, hello, inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Withdraw a zone's ZoneIngress once it has been offline for the TTL,
/// unless it came back (a new session) meanwhile.
fn withdraw_after_ttl(st: Arc<State>, zone: String, session: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(st.config.zone_offline_ttl).await;
        if st.zones.online_session(&zone).is_some() || st.zones.session(&zone) != session {
            return;
        }
        let key = Key {
            kind: "ZoneIngress".into(),
            name: zone.clone(),
        };
        match st.store.delete(&key, None) {
            Ok(true) => tracing::warn!(
                zone,
                ttl = ?st.config.zone_offline_ttl,
                "zone offline past its TTL: withdrew its services and gateways"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(zone, error = %e, "could not withdraw the zone"),
        }
    });
}

/// After a restart nobody is online yet: give every published zone the TTL
/// to reconnect.
pub fn withdraw_stale_at_start(st: &Arc<State>) {
    if let Ok(items) = st.store.list(Some("ZoneIngress")) {
        for s in items {
            withdraw_after_ttl(st.clone(), s.resource.metadata.name.clone(), 0);
        }
    }
}

fn to_pb(r: &Resource) -> pb::Resource {
    pb::Resource {
        kind: r.kind.clone(),
        name: r.metadata.name.clone(),
        version: r.metadata.resource_version.unwrap_or(0),
        body: serde_json::to_vec(r).unwrap_or_default(),
    }
}

/// Build the delta the sender wants from the store.
fn build_delta(st: &State, want: Want) -> Result<Option<Delta<pb::Resource>>, StoreError> {
    let version = st.store.revision();
    let (full, upserts, removals) = match want {
        Want::Nothing => return Ok(None),
        Want::Full => (true, st.store.list(None)?, vec![]),
        Want::Since(s) => {
            let (u, r) = st.store.changes_since(s)?;
            (false, u, r)
        }
    };
    Ok(Some(Delta {
        version,
        full,
        upserts: upserts
            .iter()
            .map(|s| (s.resource.key().to_string(), to_pb(&s.resource)))
            .collect(),
        removals: removals.iter().map(|k| k.to_string()).collect(),
    }))
}

async fn session(
    st: Arc<State>,
    zone: String,
    issuer_fp: String,
    hello: pb::ZoneHello,
    mut inbound: Streaming<pb::ZoneMessage>,
    tx: mpsc::Sender<Result<pb::GlobalMessage, Status>>,
) {
    let (session, mut kick) = st.zones.begin(&zone, &hello, tx.clone());
    st.metrics.zones_online.inc();
    tracing::info!(zone, resume_from = hello.resume_from, instance = %hello.instance_id, "zone connected");
    let mut sender = DeltaSender::new(hello.resume_from, st.config.ack_timeout);
    // Chunks of the zone's inventory updates, this session's alone.
    let mut inventory = Assembler::default();
    let mut rev = st.store.watch_revision();
    let reason: String = 'outer: loop {
        let want = sender.want(st.store.revision(), st.store.floor());
        match build_delta(&st, want) {
            Ok(Some(d)) => {
                let version = d.version;
                let full = d.full;
                let n = d.upserts.len() + d.removals.len();
                for c in chunk(d, CHUNK_BYTES, |r: &pb::Resource| r.body.len()) {
                    let (removals, upserts) = (
                        c.removals
                            .iter()
                            .filter_map(|k| k.split_once('/'))
                            .map(|(kind, name)| pb::ResourceKey {
                                kind: kind.into(),
                                name: name.into(),
                            })
                            .collect(),
                        c.upserts.into_iter().map(|(_, r)| r).collect(),
                    );
                    let msg = pb::GlobalMessage {
                        msg: Some(pb::global_message::Msg::Delta(pb::Delta {
                            version: c.version,
                            full: c.full,
                            upserts,
                            removals,
                            chunk: c.chunk,
                            last_chunk: c.last,
                        })),
                    };
                    if tx
                        .send_timeout(Ok(msg), common::grpc::SEND_TIMEOUT)
                        .await
                        .is_err()
                    {
                        break 'outer "stream closed".into();
                    }
                }
                sender.sent(version, Instant::now());
                let kind = if full { "full" } else { "incremental" };
                st.metrics
                    .deltas_sent
                    .get_or_create(&vec![("kind".into(), kind.into())])
                    .inc();
                st.zones
                    .update(&zone, session, |z| z.in_flight = Some(version));
                tracing::debug!(zone, version, full, items = n, "delta sent");
            }
            Ok(None) => {}
            Err(e) => break format!("store error: {e}"),
        }
        let deadline = sender.deadline();
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(pb::ZoneMessage { msg: Some(zone_message::Msg::RenewCa(r)) })) => {
                    let reply = match membership::renew(&st, &zone, &issuer_fp, &r.csr_pem, &r.current_fingerprint) {
                        Ok(pem) => pb::CaIssued {
                            intermediate_pem: pem,
                            chain_extra_pem: st.authority.roots().chain_extra_pem.clone(),
                            error: String::new(),
                        },
                        Err(e) => {
                            tracing::warn!(zone, error = %e, "zone CA renewal refused");
                            pb::CaIssued { error: e.to_string(), ..Default::default() }
                        }
                    };
                    let msg = pb::GlobalMessage { msg: Some(pb::global_message::Msg::CaIssued(reply)) };
                    if tx.send_timeout(Ok(msg), common::grpc::SEND_TIMEOUT).await.is_err() {
                        break "stream closed".into();
                    }
                }
                Ok(Some(m)) => match handle(&st, &zone, session, &issuer_fp, (&mut sender, &mut inventory), m) {
                    Ok(Some(reply)) => if tx.send_timeout(Ok(reply), common::grpc::SEND_TIMEOUT).await.is_err() {
                        break "stream closed".into();
                    },
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send_timeout(Err(Status::failed_precondition(e.clone())), common::grpc::SEND_TIMEOUT).await;
                        break e;
                    }
                },
                Ok(None) => break "zone closed the stream".into(),
                Err(e) => break format!("stream error: {}", e.message()),
            },
            _ = rev.changed() => {
                // A revoked token, a disabled Zone or a replaced CA ends a
                // live session at once, not only the next connection.
                if let Err(why) = membership::authorized(&st, &zone, &issuer_fp) {
                    tracing::warn!(zone, reason = %why, "closing the zone's sync stream");
                    let _ = tx.send_timeout(Err(Status::permission_denied(why.clone())), common::grpc::SEND_TIMEOUT).await;
                    break why;
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap().into()).await }, if deadline.is_some() => {
                if let Err(e) = sender.check(Instant::now()) {
                    let _ = tx.send_timeout(Err(Status::deadline_exceeded(e.to_string())), common::grpc::SEND_TIMEOUT).await;
                    break e.to_string();
                }
            }
            _ = kick.changed() => {
                if *kick.borrow() != session {
                    break "replaced by a newer connection of the same zone".into();
                }
            }
        }
    };
    if st.zones.end(&zone, session) {
        let _ = st
            .store
            .zone_seen(&zone, token::now_unix(), sender.acked(), None);
        withdraw_after_ttl(st.clone(), zone.clone(), session);
    }
    st.metrics.zones_online.dec();
    tracing::info!(zone, reason, acked = sender.acked(), "zone disconnected");
}

/// One message of a zone's session; `sender` and `inventory` are the
/// session's own.
fn handle(
    st: &State,
    zone: &str,
    session: u64,
    issuer_fp: &str,
    (sender, inventory): (&mut DeltaSender, &mut Assembler),
    m: pb::ZoneMessage,
) -> Result<Option<pb::GlobalMessage>, String> {
    match m.msg {
        Some(zone_message::Msg::Ack(a)) => {
            sender.on_ack(a.version).map_err(|e| e.to_string())?;
            st.zones.update(zone, session, |z| {
                z.acked_version = a.version;
                z.in_flight = None;
                z.last_nack = None;
            });
            let _ = st.store.zone_seen(zone, token::now_unix(), a.version, None);
        }
        Some(zone_message::Msg::Nack(n)) => {
            // The zone writes the reason: kept and logged cut to a bound.
            let reason = model::text::clip(&n.reason, MAX_NACK_REASON_BYTES);
            tracing::warn!(zone, version = n.version, %reason, "zone refused a delta");
            st.metrics.nacks.inc();
            sender
                .on_nack(n.version, reason.clone())
                .map_err(|e| e.to_string())?;
            st.zones.update(zone, session, |z| {
                z.in_flight = None;
                z.last_nack = Some((n.version, reason.clone()));
            });
            let _ = st.store.zone_seen(
                zone,
                token::now_unix(),
                sender.acked(),
                Some((n.version, &reason)),
            );
        }
        Some(zone_message::Msg::Traffic(t)) => {
            st.traffic.record(zone, &t);
        }
        Some(zone_message::Msg::Inventory(inv)) => {
            return Ok(on_inventory(st, zone, session, issuer_fp, inventory, inv))
        }
        Some(zone_message::Msg::Explain(r)) => st.zones.answered(zone, r),
        Some(zone_message::Msg::Hello(_)) => return Err("unexpected second ZoneHello".into()),
        Some(zone_message::Msg::RenewCa(_)) => {
            return Err("CaRenewal is answered by the session loop".into())
        }
        None => return Err("empty message".into()),
    }
    Ok(None)
}

/// Take one chunk of a zone's inventory report into the session's
/// `inventory` and, once the update is whole, judge it
/// (`crate::inventory`): publish it as the zone's ZoneIngress, ignore it,
/// or refuse it for this zone alone and tell the zone why. `issuer_fp`:
/// the zone CA that issued the session's identity.
fn on_inventory(
    st: &State,
    zone: &str,
    session: u64,
    issuer_fp: &str,
    inventory: &mut Assembler,
    chunk: pb::Inventory,
) -> Option<pb::GlobalMessage> {
    use crate::inventory::Verdict;
    let update = inventory.push(chunk)?;
    let held = st.zones.report(zone)?;
    let others = || {
        st.store
            .list(Some("ZoneIngress"))
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.resource.metadata.name != zone)
            .filter_map(|s| ZoneIngressSpec::from_resource(&s.resource))
            .flat_map(|spec| spec.gateways)
            .collect()
    };
    let proxies = update.connected_proxies();
    match update.judge(&st.config.trust_domain, zone, &held, others) {
        Verdict::Accept(report, ingress) => {
            st.zones.update(zone, session, |z| {
                z.connected_proxies = proxies;
                z.services = report
                    .services
                    .iter()
                    .map(|(k, v)| (k.clone(), v.endpoints.iter().filter(|e| e.healthy).count()))
                    .collect();
                z.region = report.region.clone();
                z.gateways = report.gateways.clone();
                z.inventory_refused = None;
                z.report = *report;
            });
            // A no-op when nothing changed: the store keeps its version.
            // Only while the zone is authorized, checked in the same
            // transaction: a revocation that withdrew its ingress (and
            // ends this session) is not undone by a report racing it.
            let now = token::now_unix();
            let published = st.store.transact(|tx| {
                if let Err(why) = membership::authorized_in(tx, zone, issuer_fp, now)? {
                    return Ok(Err(why));
                }
                tx.put(*ingress, &token::fmt_unix(now))?;
                Ok::<_, crate::store::StoreError>(Ok(()))
            });
            match published {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    tracing::warn!(zone, reason = %why, "did not publish the zone's ingress")
                }
                Err(e) => {
                    tracing::error!(zone, error = %e, "could not publish the zone's ingress")
                }
            }
            None
        }
        Verdict::Ignore => {
            st.zones
                .update(zone, session, |z| z.connected_proxies = proxies);
            None
        }
        Verdict::Refuse(reason) => {
            tracing::warn!(zone, %reason, "refused the zone's inventory; its published services stay as they were");
            st.metrics.inventories_refused.inc();
            st.zones.update(zone, session, |z| {
                z.inventory_refused = Some(reason.clone());
                z.report.refused = Some(reason.clone());
            });
            Some(pb::GlobalMessage {
                msg: Some(pb::global_message::Msg::InventoryRefused(
                    pb::InventoryRefused { reason },
                )),
            })
        }
    }
}

#[cfg(test)]
mod tests;
