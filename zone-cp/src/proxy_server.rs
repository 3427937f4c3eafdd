//! The proxy-facing gRPC server: authenticate a proxy by its dataplane
//! token, sign its CSR, register it, and stream its config as deltas.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sync::DiffSender;
use common::{grpc, tls};
use futures_util::Stream;
use model::ident::SpiffeId;
use model::token::{self, TokenError, TokenKind};
use proto::v1::proxy_discovery_server::{ProxyDiscovery, ProxyDiscoveryServer};
use proto::v1::{self as pb, proxy_message, zone_to_proxy};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::compile::{self, ProxyKind};
use crate::registry::Entry;
use crate::{Error, Zone};
use common::policy::ProxyFacts;
use proto::ProxyItem;

pub async fn serve(z: Arc<Zone>) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(z.config.proxy_addr)
        .await
        .map_err(common::bind::failed(
            "bind proxy endpoint",
            z.config.proxy_addr,
        ))?;
    let build =
        |id: &tls::Identity| tls::server_config_no_client_auth(id, &[tls::ALPN_H2]).map(Arc::new);
    let (cfg_tx, cfg_rx) = watch::channel(build(&z.boot.identity.borrow())?);
    let zz = z.clone();
    tokio::spawn(async move {
        let mut rx = zz.boot.identity.subscribe();
        while rx.changed().await.is_ok() {
            let id = rx.borrow().clone();
            if let Ok(c) = build(&id) {
                cfg_tx.send_replace(c);
            }
        }
    });
    let incoming = grpc::tls_incoming(listener, cfg_rx);
    let svc = ProxyDiscoveryServer::new(Service { z });
    tokio::spawn(async move {
        if let Err(e) = common::grpc::server()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "proxy server stopped");
        }
    });
    Ok(())
}

/// Deregister every proxy whose token is revoked, connected or not: now
/// (registrations loaded from disk whose token was revoked meanwhile) and
/// whenever the global's state changes. A connected proxy's stream also
/// closes on the change (`run`); a registration in its grace period, or
/// not reconnected since a restart, has no stream to remove it.
pub fn deregister_revoked(z: Arc<Zone>) {
    let mut global = z.global.watch();
    z.registry.remove_revoked(|t| z.global.is_revoked(t));
    tokio::spawn(async move {
        while global.changed().await.is_ok() {
            z.registry.remove_revoked(|t| z.global.is_revoked(t));
        }
    });
}

struct Service {
    z: Arc<Zone>,
}

/// Largest config message: a bigger config travels in chunks, so each
/// stream's buffers stay small however many endpoints the zone has (a
/// single item larger than this goes alone).
const CONFIG_CHUNK_BYTES: usize = 8 * 1024;

/// How long a proxy's stream waits after a registry change before it
/// computes the proxy's next config (policy changes are not delayed).
const REGISTRY_DEBOUNCE: Duration = Duration::from_millis(100);

/// Instances one dataplane token may register at once, unless the token
/// says otherwise (`ternctl generate dataplane-token --max-instances`).
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;
/// The same for gateway tokens.
pub const DEFAULT_MAX_GATEWAYS: u32 = 16;
/// Warn at each certificate issued when the proxy's token has less left.
const TOKEN_EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

fn refuse(z: &Zone, service: &str, why: impl std::fmt::Display) -> Status {
    tracing::warn!(service, reason = %why, "proxy refused");
    z.metrics.proxy_refused.inc();
    Status::permission_denied(why.to_string())
}

/// Sign a proxy's CSR. The certificate never outlives the token that
/// authorized it, nor the zone CA that signs it.
/// Remember when the certificate just issued to a proxy expires.
fn note_cert(z: &Zone, instance: &str, session: u64, m: &pb::ZoneToProxy) {
    if let Some(zone_to_proxy::Msg::Certificate(c)) = &m.msg {
        let at = c.not_after_unix.max(0) as u64;
        z.registry
            .set_status(instance, session, |s| s.cert_not_after = at);
    }
}

fn sign(
    z: &Zone,
    csr: &str,
    id: &SpiffeId,
    labels: &BTreeMap<String, String>,
    token_exp: u64,
) -> Result<pb::ZoneToProxy, Status> {
    let ca = z.boot.ca();
    let now = token::now_unix();
    let ca_end = ca
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cap = token_exp.min(ca_end).saturating_sub(now);
    if cap == 0 {
        return Err(Status::permission_denied(
            "the token (or the zone CA) has expired; no certificate can be issued",
        ));
    }
    if token_exp.saturating_sub(now) < TOKEN_EXPIRY_WARNING.as_secs() {
        tracing::warn!(%id, expires = %token::fmt_unix(token_exp),
            "this proxy's token expires soon, and its certificate with it; give it a new token");
    }
    let ttl = z.global.workload_cert_ttl().min(Duration::from_secs(cap));
    let leaf = ca
        .ca
        .sign_workload(csr, id, labels, ttl)
        .map_err(|e| Status::invalid_argument(format!("bad CSR: {e}")))?;
    let not_after = common::pki::first_cert(&leaf)
        .ok()
        .and_then(|d| common::pki::not_after(&d).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    z.metrics.certs_issued.inc();
    Ok(pb::ZoneToProxy {
        msg: Some(zone_to_proxy::Msg::Certificate(pb::Certificate {
            chain_pem: format!("{leaf}{}", ca.chain_pem()),
            not_after_unix: not_after,
            spiffe_id: id.to_string(),
        })),
    })
}

#[tonic::async_trait]
impl ProxyDiscovery for Service {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<pb::ZoneToProxy, Status>> + Send>>;

    async fn stream(
        &self,
        req: Request<Streaming<pb::ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let z = self.z.clone();
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(pb::ProxyMessage {
                msg: Some(proxy_message::Msg::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a ProxyHello",
                ))
            }
        };
        let reg = hello
            .registration
            .ok_or_else(|| Status::invalid_argument("ProxyHello.registration is required"))?;
        crate::registration::validate(&reg).map_err(Status::invalid_argument)?;
        let kind = if reg.kind == "gateway" {
            ProxyKind::Gateway
        } else {
            ProxyKind::Sidecar
        };
        let (token_kind, scope) = match kind {
            ProxyKind::Gateway => (TokenKind::Gateway, None),
            ProxyKind::Sidecar => (TokenKind::Dataplane, Some(reg.service.as_str())),
        };
        let claims = token::verify(
            &hello.token,
            &z.boot.token_public_key,
            token_kind,
            token::now_unix(),
        )
        .and_then(|c| c.check_scope(&z.boot.zone, scope).map(|_| c))
        .map_err(|e| refuse(&z, &reg.service, e))?;
        if z.global.is_revoked(&claims.jti) {
            return Err(refuse(
                &z,
                &reg.service,
                TokenError::Revoked { jti: claims.jti },
            ));
        }
        let id = match kind {
            ProxyKind::Gateway => SpiffeId::gateway(&z.boot.trust_domain, &z.boot.zone),
            ProxyKind::Sidecar => {
                SpiffeId::workload(&z.boot.trust_domain, &z.boot.zone, &reg.service)
            }
        };
        let csr = hello
            .csr
            .ok_or_else(|| Status::invalid_argument("ProxyHello.csr is required"))?;
        let max = claims.max_instances.unwrap_or(match kind {
            ProxyKind::Gateway => DEFAULT_MAX_GATEWAYS,
            ProxyKind::Sidecar => DEFAULT_MAX_INSTANCES,
        });
        let mut reachable = reg.reachable_services.clone();
        reachable.sort();
        reachable.dedup();
        // Registered first: a proxy that may not register gets no certificate.
        let session = z
            .registry
            .register(
                Entry {
                    instance: reg.instance.clone(),
                    service: reg.service.clone(),
                    address: reg.address.clone(),
                    port: reg.inbound_port,
                    protocol: reg.protocol.clone(),
                    labels: reg.labels.clone().into_iter().collect(),
                    identity: id.to_string(),
                    kind: if kind == ProxyKind::Gateway {
                        "gateway"
                    } else {
                        "sidecar"
                    }
                    .into(),
                    public_address: reg.public_address.clone(),
                    connected: true,
                    session: 0,
                    uid: reg.instance_uid.clone(),
                    token_id: claims.jti.clone(),
                    // Stays published when it was and says it can serve.
                    ready: reg.serving,
                    reachable: reachable.clone(),
                    // It reports its app's health right after connecting.
                    unhealthy: false,
                    unreachable: false,
                    status: crate::registry::ProxyStatus {
                        version: reg.version.clone(),
                        ..Default::default()
                    },
                },
                max,
            )
            .map_err(|e| refuse(&z, &reg.service, e))?;
        let labels: BTreeMap<String, String> = reg.labels.clone().into_iter().collect();
        let cert = match sign(&z, &csr.csr_pem, &id, &labels, claims.exp) {
            Ok(c) => {
                note_cert(&z, &reg.instance, session, &c);
                c
            }
            Err(e) => {
                z.registry.disconnect(&reg.instance, session, true);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(16);
        let tx = Outbox(tx);
        // Trust first: the proxy fails closed until it has both.
        let trust = compile::shared_trust(&z);
        tx.send(Ok(pb::ZoneToProxy {
            msg: Some(zone_to_proxy::Msg::Trust((*trust).clone())),
        }))
        .await;
        tx.send(Ok(cert)).await;
        z.metrics.proxies.inc();
        let facts = ProxyFacts {
            service: reg.service.clone(),
            zone: z.boot.zone.clone(),
            region: z.registry.region().to_string(),
            labels,
        };
        tokio::spawn(run(
            z,
            (kind, reachable),
            reg.instance,
            session,
            id,
            facts,
            (claims.jti, claims.exp),
            trust,
            inbound,
            tx,
        ));
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            |m| *m,
        ))))
    }
}

/// A proxy's response stream. Messages are boxed: tokio allocates a
/// channel's slots in blocks of 32, and unboxed (a message and a `Status`
/// each) those blocks made up about 9 KB of every proxy's stream.
struct Outbox(mpsc::Sender<Box<Result<pb::ZoneToProxy, Status>>>);

impl Outbox {
    /// Queue `m`; false when the stream is gone (or stalled past the send
    /// timeout).
    async fn send(&self, m: Result<pb::ZoneToProxy, Status>) -> bool {
        self.0
            .send_timeout(Box::new(m), common::grpc::SEND_TIMEOUT)
            .await
            .is_ok()
    }
}

/// Send the proxy its trust again if it changed; false when the stream is gone.
async fn resend_trust(z: &Zone, trust: &mut Arc<pb::Trust>, tx: &Outbox) -> bool {
    let now = compile::shared_trust(z);
    if Arc::ptr_eq(&now, trust) || now == *trust {
        *trust = now;
        return true;
    }
    *trust = now;
    let msg = pb::ZoneToProxy {
        msg: Some(zone_to_proxy::Msg::Trust((**trust).clone())),
    };
    tx.send(Ok(msg)).await
}

#[allow(clippy::too_many_arguments)]
async fn run(
    z: Arc<Zone>,
    (kind, reachable): (ProxyKind, Vec<String>),
    instance: String,
    session: u64,
    id: SpiffeId,
    facts: ProxyFacts,
    (jti, token_exp): (String, u64),
    mut trust: Arc<pb::Trust>,
    mut inbound: Streaming<pb::ProxyMessage>,
    tx: Outbox,
) {
    let mut sender: DiffSender<ProxyItem> = DiffSender::new(z.config.ack_timeout);
    let mut reg = z.registry.watch();
    let mut global = z.global.watch();
    let mut local_policies = z.local_policies.changed.subscribe();
    let mut ca_changed = z.boot.ca_changed.subscribe();
    let mut drill_ended = z.drills.epoch.subscribe();
    let mut ready = false;
    let view = compile::View::new(&facts, &reachable);
    let clean: bool = loop {
        let desired = compile::proxy_config(&z, kind, &facts, &view);
        if let Some(d) = sender.next(&desired, Instant::now()) {
            let mut gone = false;
            for c in common::sync::chunk(d, CONFIG_CHUNK_BYTES, ProxyItem::encoded_len) {
                let msg = pb::ZoneToProxy {
                    msg: Some(zone_to_proxy::Msg::Config(proto::proxy_config(
                        c.version,
                        c.full,
                        c.upserts.into_iter().map(|(_, item)| item),
                        c.removals,
                        (c.chunk, c.last),
                    ))),
                };
                if !tx.send(Ok(msg)).await {
                    gone = true;
                    break;
                }
            }
            if gone {
                break false;
            }
        }
        let deadline = sender.deadline();
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(pb::ProxyMessage { msg: Some(m) })) => {
                    let r = match m {
                        proxy_message::Msg::Ack(a) => {
                            // The first ACK comes after the proxy installed
                            // its trust and certificate: it can serve now.
                            if !ready {
                                ready = true;
                                z.registry.mark_ready(&instance, session);
                            }
                            z.registry.set_status(&instance, session, |s| {
                                s.acked_version = a.version;
                                s.last_nack = None;
                            });
                            sender.on_ack(a.version).map_err(|e| e.to_string())
                        }
                        proxy_message::Msg::Nack(n) => {
                            let reason = crate::registration::clip(&n.reason, crate::registration::MAX_REASON_BYTES);
                            tracing::warn!(%instance, version = n.version, %reason, "proxy refused config");
                            z.registry.set_nack(&instance, session, n.version, &reason);
                            sender.on_nack(n.version, reason).map_err(|e| e.to_string())
                        }
                        proxy_message::Msg::Csr(c) => match sign(&z, &c.csr_pem, &id, &facts.labels, token_exp) {
                            Ok(cert) => {
                                tracing::debug!(%instance, "certificate renewed");
                                note_cert(&z, &instance, session, &cert);
                                tx.send(Ok(cert)).await.then_some(()).ok_or_else(|| "stream closed".to_string())
                            }
                            Err(s) => Err(s.message().to_string()),
                        },
                        proxy_message::Msg::Health(h) => {
                            z.registry.set_app_health(&instance, session, h.healthy, &h.check);
                            Ok(())
                        }
                        proxy_message::Msg::Traffic(t) => {
                            z.traffic.add(&facts.service, &t);
                            Ok(())
                        }
                        proxy_message::Msg::Hello(_) => Err("unexpected second hello".into()),
                    };
                    if let Err(e) = r {
                        tracing::warn!(%instance, error = %e, "closing proxy stream");
                        tx.send(Err(Status::failed_precondition(e))).await;
                        break false;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break true,
                Err(_) => break false,
            },
            _ = reg.changed() => {
                // Proxies come and go in bursts (a rollout, a zone
                // starting): let a burst settle, so each proxy gets one
                // update for it, not one per member.
                tokio::time::sleep(REGISTRY_DEBOUNCE).await;
            }
            _ = local_policies.changed() => {}
            _ = drill_ended.changed() => {}
            _ = ca_changed.changed() => {
                if !resend_trust(&z, &mut trust, &tx).await {
                    break false;
                }
            }
            _ = global.changed() => {
                if z.global.is_revoked(&jti) {
                    // Out of the registry at once (no grace), and no more
                    // certificates: a reconnect is refused.
                    tracing::warn!(%instance, token = %jti, "token revoked; closing the proxy's stream and deregistering it");
                    tx.send(Err(Status::permission_denied(format!("token {jti} has been revoked")))).await;
                    z.registry.remove(&instance, session);
                    break false;
                }
                if !resend_trust(&z, &mut trust, &tx).await {
                    break false;
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap().into()).await }, if deadline.is_some() => {
                if let Err(e) = sender.check(Instant::now()) {
                    tracing::warn!(%instance, error = %e, "proxy stalled");
                    tx.send(Err(Status::deadline_exceeded(e.to_string()))).await;
                    break false;
                }
            }
        }
    };
    z.metrics.proxies.dec();
    z.registry.disconnect(&instance, session, clean);
}
