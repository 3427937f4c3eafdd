//! The proxy's stream to its zone control plane: register with a dataplane
//! token, get a certificate for a locally generated key, receive config as
//! deltas (ACK/NACK), renew the certificate before it expires, and
//! reconnect with backoff. A clean shutdown closes the stream, which
//! deregisters the proxy at once.

use std::sync::Arc;
use std::time::Duration;

use common::pki;
use common::sync::{Backoff, Chunk, DeltaReceiver, Outcome};
use common::tls::{self, Expect, Identity, PinnedCaVerifier, SpiffeServerVerifier};
use common::traffic::cadence;
use common::trust::{TrustPolicy, ZoneCas};
use model::ident::SpiffeId;
use model::token;
use proto::v1::proxy_discovery_client::ProxyDiscoveryClient;
use proto::v1::{self as pb, proxy_message, zone_to_proxy};
use proto::ProxyItem;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::state::Shared;
use crate::Error;

pub struct CpOptions {
    pub address: String,
    pub token: String,
    pub registration: pb::Registration,
    /// Where the last certificate, trust and config are kept, if anywhere.
    pub last_known: Option<Arc<crate::last_known::LastKnown>>,
}

/// Status the admin port reports.
#[derive(Default, Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpStatus {
    pub connected: bool,
    pub config_version: u64,
    pub has_config: bool,
    pub last_error: Option<String>,
    pub last_nack: Option<String>,
}

/// How often a proxy reports its traffic to the zone control plane.
pub const TRAFFIC_REPORT_EVERY: Duration = Duration::from_secs(5);

pub fn spawn(
    shared: Arc<Shared>,
    metrics: Metrics,
    opts: CpOptions,
    status: watch::Sender<CpStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(lk) = &opts.last_known {
            let td = token::decode_unverified(&opts.token)
                .map(|c| c.td)
                .unwrap_or_default();
            match lk.restore(&td, &shared) {
                Ok(Some(v)) => status.send_modify(|s| {
                    s.config_version = v;
                    s.has_config = true;
                }),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not use the kept state; waiting for the zone control plane")
                }
            }
        }
        let mut backoff = Backoff::reconnect();
        let mut reporter = crate::traffic::Reporter::default();
        loop {
            let res = run_once(
                &shared,
                &metrics,
                &opts,
                &status,
                &mut shutdown,
                &mut reporter,
            )
            .await;
            let established = status.borrow().connected;
            status.send_modify(|s| s.connected = false);
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = &res {
                let msg = format!("{e:#}");
                tracing::warn!(error = %msg, "control plane stream failed; keeping the last config");
                status.send_modify(|s| s.last_error = Some(msg));
            }
            if established {
                backoff.reset();
            }
            let mut delay = backoff.next_delay(common::sync::jitter());
            // As the certificate nears expiry, try harder: never wait more
            // than a tenth of the time it has left.
            if let Some(t) = shared.tls.load_full() {
                let left = t
                    .ident
                    .not_after
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                delay = delay.min((left / 10).max(Duration::from_millis(100)));
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// Check one item before a config is applied (a config with a bad one is
/// NACKed whole).
pub fn validate_item(k: &str, item: &ProxyItem) -> Result<(), String> {
    match item {
        ProxyItem::Cluster(c) => validate(k, c),
        ProxyItem::Inbound(p) => crate::access::Access::build(p)
            .map(|_| ())
            .map_err(|e| format!("inbound policy: {e}")),
    }
}

/// A config's clusters and inbound policy.
pub fn split_items<'a>(
    items: impl Iterator<Item = &'a ProxyItem>,
) -> (Vec<pb::Cluster>, Option<pb::InboundPolicy>) {
    let mut clusters = Vec::new();
    let mut inbound = None;
    for i in items {
        match i {
            ProxyItem::Cluster(c) => clusters.push((**c).clone()),
            ProxyItem::Inbound(p) => inbound = Some((**p).clone()),
        }
    }
    (clusters, inbound)
}

/// Check one service's cluster before a config is applied (a config with a
/// bad one is NACKed whole).
pub fn validate(_k: &str, c: &pb::Cluster) -> Result<(), String> {
    // Names travel in flow headers and HTTP authorities: the zone-cp sends
    // only valid ones, and a config holding others is refused whole.
    // Gateways get one `@gateways/ZONE` cluster per remote zone.
    let name = c.service.strip_prefix("@gateways/").unwrap_or(&c.service);
    model::resource::check_name("cluster.service", name).map_err(|e| e.to_string())?;
    crate::protocol::Protocol::parse(&c.protocol)?;
    for e in &c.endpoints {
        if e.via_gateway {
            model::resource::check_name("endpoint.zone", &e.zone).map_err(|x| x.to_string())?;
        }
        e.address
            .parse::<std::net::IpAddr>()
            .map_err(|_| format!("bad endpoint address {:?}", e.address))?;
        u16::try_from(e.port).map_err(|_| format!("bad port {}", e.port))?;
        SpiffeId::parse(&e.identity).map_err(|x| x.to_string())?;
    }
    // Routes as the proxy would build them (backends resolved later).
    let none = std::collections::HashMap::new();
    crate::route::Routes::build(
        c,
        &|b| crate::split::Split::build(b, &c.service, &none),
        &|m| crate::split::Mirror::build(m, &c.service, &none),
    )
    .map(|_| ())
}

/// A config message as a chunk for the delta receiver.
pub fn chunk_of(c: pb::ProxyConfig) -> Chunk<ProxyItem> {
    let (version, full, chunk, last) = (c.version, c.full, c.chunk, c.last_chunk);
    let (upserts, removals) = proto::proxy_items(c);
    Chunk {
        version,
        full,
        chunk,
        last,
        upserts,
        removals,
    }
}

/// When to renew after the zone's CA changed: within a tenth of the life
/// left (at most 30 s), at a random point, so a zone's proxies spread out.
fn prompt_renewal(ident: &Identity) -> Duration {
    let left = ident
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    (left / 10)
        .min(Duration::from_secs(30))
        .mul_f64(common::sync::jitter())
}

/// The policy a `Trust` message describes.
pub fn trust_policy(td: &str, t: &pb::Trust) -> Result<TrustPolicy, pki::PkiError> {
    let zones = t
        .zone_cas
        .iter()
        .map(|(z, l)| (z.clone(), l.fingerprints.iter().cloned().collect()))
        .collect();
    TrustPolicy::from_pem(td, &t.roots_pem, ZoneCas::Only(zones))
}

async fn run_once(
    shared: &Arc<Shared>,
    metrics: &Metrics,
    opts: &CpOptions,
    status: &watch::Sender<CpStatus>,
    shutdown: &mut watch::Receiver<bool>,
    reporter: &mut crate::traffic::Reporter,
) -> Result<(), Error> {
    let claims = token::decode_unverified(&opts.token).map_err(|source| Error::Token {
        kind: "dataplane",
        source,
    })?;
    let expect = Expect::Exact(SpiffeId::zone_cp(&claims.td, &claims.zone));
    // First contact trusts only the root pinned in the token. Later
    // connections trust the roots the zone-cp sent (they change when the
    // mesh rotates its root), and any CA of this zone: a zone-cp that
    // re-joined has a new one.
    let verifier: Arc<dyn common::rustls::client::danger::ServerCertVerifier> = match shared.trust()
    {
        Some(p) => Arc::new(SpiffeServerVerifier::new(
            Arc::new(p.with_zones(ZoneCas::Any)),
            expect,
        )),
        None => Arc::new(PinnedCaVerifier::new(&claims.ca, expect)),
    };
    let cfg = tls::client_config(None, verifier, &[tls::ALPN_H2])?;
    let channel = common::grpc::tls_channel(opts.address.clone(), Arc::new(cfg));
    let mut client = ProxyDiscoveryClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let mut key = pki::new_key_and_csr(&opts.registration.service)?;
    let (tx, rx) = mpsc::channel(8);
    tx.send_timeout(
        pb::ProxyMessage {
            msg: Some(proxy_message::Msg::Hello(pb::ProxyHello {
                token: opts.token.clone(),
                registration: Some(pb::Registration {
                    serving: shared.tls.load().is_some() && status.borrow().has_config,
                    ..opts.registration.clone()
                }),
                csr: Some(pb::CertificateRequest {
                    csr_pem: key.csr_pem.clone(),
                }),
            })),
        },
        common::grpc::SEND_TIMEOUT,
    )
    .await?;
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| {
            Error::Stream(format!(
                "the zone control plane at {} refused: {}",
                opts.address,
                s.message()
            ))
        })?
        .into_inner();
    status.send_modify(|s| {
        s.connected = true;
        s.last_error = None;
    });
    tracing::info!(cp = %opts.address, "connected to the zone control plane");
    let mut receiver: DeltaReceiver<ProxyItem> = DeltaReceiver::new(0, Default::default());
    // The app's health: the current verdict after each (re)connect, then
    // every change.
    let mut health = shared.app_health.subscribe();
    health.mark_changed();
    let mut renew_at: Option<tokio::time::Instant> = None;
    // Traffic since the last report; the first report after a reconnect
    // carries what happened while disconnected. Sent on the wall-clock
    // boundaries of TRAFFIC_REPORT_EVERY, or of the cadence the config
    // asks (every second while a drill runs), which the zone's own reports
    // follow (`common::traffic::cadence`).
    let mut report = Box::pin(cadence::tick_after(Duration::ZERO, 0));
    loop {
        tokio::select! {
            secs = &mut report => {
                report.set(cadence::tick_after(Duration::ZERO, secs));
                let every = match shared.traffic_report_ms.load(std::sync::atomic::Ordering::Relaxed) {
                    0 => TRAFFIC_REPORT_EVERY,
                    ms => Duration::from_millis(ms.clamp(1000, 60_000) as u64),
                };
                if !cadence::due(secs, every) {
                    continue;
                }
                let peers = reporter.changes(&shared.traffic);
                if !peers.is_empty() {
                    tx.send_timeout(pb::ProxyMessage {
                        msg: Some(proxy_message::Msg::Traffic(pb::TrafficReport { peers })),
                    }, common::grpc::SEND_TIMEOUT).await?;
                }
            }
            m = inbound.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(Error::Stream("the zone control plane closed the stream".into())),
                    Err(s) => return Err(Error::Stream(s.message().to_string())),
                };
                match m.msg {
                    Some(zone_to_proxy::Msg::Trust(t)) => {
                        let policy = trust_policy(&claims.td, &t)
                            .map_err(Error::certificate("the trust bundle from the zone control plane".into()))?;
                        tracing::info!(roots = policy.roots().len(), zones = t.zone_cas.len(), "trust updated");
                        shared.set_trust(policy)?;
                        if let Some(lk) = &opts.last_known {
                            lk.set_trust(&t);
                        }
                        // Our zone has a newer CA than the one that issued our
                        // certificate (renewal, root rotation): renew soon,
                        // spread over a moment so a zone's proxies do not all
                        // ask at once.
                        let newest = t.zone_cas.get(&claims.zone).and_then(|l| l.fingerprints.first());
                        if let (Some(tls), Some(newest)) = (shared.tls.load_full(), newest) {
                            let issuer = tls.ident.chain.get(1).map(|c| pki::fingerprint(c));
                            if issuer.as_ref() != Some(newest) {
                                let soon = tokio::time::Instant::now() + prompt_renewal(&tls.ident);
                                if renew_at.is_none_or(|at| at > soon) {
                                    tracing::info!("our zone has a newer CA; renewing the certificate");
                                    renew_at = Some(soon);
                                }
                            }
                        }
                    }
                    Some(zone_to_proxy::Msg::Certificate(c)) => {
                        let ident = Identity::from_pem(&c.chain_pem, &key.key_pem)?;
                        renew_at = Some(tokio::time::Instant::now() + ident.renew_in());
                        shared.set_identity(ident)?;
                        if let Some(lk) = &opts.last_known {
                            lk.set_identity(&c.chain_pem, &key.key_pem);
                        }
                    }
                    Some(zone_to_proxy::Msg::Config(c)) => {
                        let chunk = chunk_of(c);
                        let before = receiver.clone();
                        let reply = match receiver.on_chunk(chunk, validate_item)? {
                            Some(Outcome::Ack(v)) => {
                                let (clusters, inbound) = split_items(receiver.state().values());
                                match shared.apply(&clusters, inbound.as_ref(), v) {
                                    Ok(()) => {
                                        if let Some(lk) = &opts.last_known {
                                            lk.set_config(v, &clusters, inbound.as_ref());
                                        }
                                        metrics.config_updates.inc();
                                        status.send_modify(|s| {
                                            s.config_version = v;
                                            s.has_config = true;
                                            s.last_nack = None;
                                        });
                                        tracing::debug!(version = v, services = clusters.len(), "config applied");
                                        proxy_message::Msg::Ack(pb::Ack { version: v })
                                    }
                                    Err(why) => {
                                        receiver = before;
                                        metrics.config_rejected.inc();
                                        proxy_message::Msg::Nack(pb::Nack { version: v, reason: why })
                                    }
                                }
                            }
                            Some(Outcome::Nack(v, why)) => {
                                receiver = before;
                                metrics.config_rejected.inc();
                                tracing::warn!(version = v, reason = %why, "refused config");
                                status.send_modify(|s| s.last_nack = Some(why.clone()));
                                proxy_message::Msg::Nack(pb::Nack { version: v, reason: why })
                            }
                            None => continue,
                        };
                        tx.send_timeout(pb::ProxyMessage { msg: Some(reply) }, common::grpc::SEND_TIMEOUT).await?;
                    }
                    None => {}
                }
            }
            Ok(()) = health.changed() => {
                let verdict = *health.borrow_and_update();
                if let Some(healthy) = verdict {
                    let check = shared.health_check.load().as_ref().map(|c| c.name.clone()).unwrap_or_default();
                    tx.send_timeout(pb::ProxyMessage {
                        msg: Some(proxy_message::Msg::Health(pb::HealthReport { healthy, check })),
                    }, common::grpc::SEND_TIMEOUT).await?;
                }
            }
            _ = async { tokio::time::sleep_until(renew_at.unwrap()).await }, if renew_at.is_some() => {
                key = pki::new_key_and_csr(&opts.registration.service)?;
                renew_at = None;
                tracing::info!("renewing the workload certificate");
                tx.send_timeout(pb::ProxyMessage {
                    msg: Some(proxy_message::Msg::Csr(pb::CertificateRequest { csr_pem: key.csr_pem.clone() })),
                }, common::grpc::SEND_TIMEOUT).await?;
            }
            _ = shutdown.changed() => {
                // Dropping the sender ends our half of the stream cleanly;
                // the zone-cp deregisters us at once.
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Ok(Some(_)) = inbound.message().await {}
                }).await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(service: &str, zone: &str, via_gateway: bool) -> pb::Cluster {
        pb::Cluster {
            service: service.into(),
            protocol: "http".into(),
            endpoints: vec![pb::Endpoint {
                address: "127.0.0.1".into(),
                port: 15006,
                identity: "spiffe://tern/zone/z1/svc/api".into(),
                zone: zone.into(),
                via_gateway,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn configs_with_names_a_flow_header_cannot_carry_are_refused() {
        assert!(validate("api", &cluster("api", "z1", false)).is_ok());
        // A gateway's per-zone cluster.
        assert!(validate("", &cluster("@gateways/z2", "z2", true)).is_ok());
        let e = validate("", &cluster("A/B", "z1", false)).unwrap_err();
        assert!(e.contains("cluster.service"), "{e}");
        let e = validate("", &cluster("@gateways/Z_2", "z2", true)).unwrap_err();
        assert!(e.contains("cluster.service"), "{e}");
        let e = validate("", &cluster("api", "bad zone", true)).unwrap_err();
        assert!(e.contains("endpoint.zone"), "{e}");
        // A zone name on a local endpoint is not routed on.
        assert!(validate("", &cluster("api", "", false)).is_ok());
    }
}
