//! Outbound opaque TCP: a connection to a `--outbound-port tcp:SERVICE=ADDR`
//! listener goes to one endpoint of its service (or of the backend its
//! TcpRoute picks), over mTLS, direct or through a gateway. A failed
//! connect is tried on another endpoint, in the next locality tier, with
//! the bytes the app sent meanwhile; then the two sides are spliced under
//! the destination's idle and stream-duration limits. Each flow is counted
//! by peer pair and gets its access log line, whether an endpoint took it
//! or not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use crate::balance::Endpoint;
use crate::connect::connect_mesh_tcp;
use crate::metrics::Direction;
use crate::observe;
use crate::proxy::Proxy;
use common::traffic::Decision;

impl Proxy {
    pub(crate) async fn outbound_tcp(&self, mut client: TcpStream, service: &str) {
        let started = Instant::now();
        let cluster = self.shared.clusters.load().by_service.get(service).cloned();
        let Some(mut cluster) = cluster else {
            tracing::info!(service, "TCP: no such service");
            self.log_unrouted_tcp(started, service);
            return;
        };
        // A TcpRoute picks a backend per connection.
        if let Some(routes) = self.shared.routes.load().get(service) {
            if let Some(split) = &routes.tcp {
                match split.pick() {
                    Some(c) => cluster = c.clone(),
                    None => {
                        tracing::info!(
                            service,
                            "TCP: none of the route's backends has an endpoint"
                        );
                        self.log_unrouted_tcp(started, service);
                        return;
                    }
                }
            }
        }
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut min_tier = 0;
        let policy = cluster.resilience.clone();
        // The app's bytes taken while connecting (sent before the splice).
        let mut first = Vec::new();
        // The flow counts against the destination's connection limit.
        let Some(_slot) = policy.limits.connection_slot() else {
            self.count_failed_tcp(
                &cluster.service,
                crate::traffic::UNKNOWN,
                Decision::CircuitOpen,
            );
            self.metrics
                .circuit_open
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "max-connections",
                })
                .inc();
            tracing::info!(
                service,
                limit = policy.limits.max_connections,
                "TCP: circuit open (CircuitBreaker maxConnections); connection closed"
            );
            self.log_outbound_tcp(
                started,
                &cluster.service,
                crate::traffic::UNKNOWN,
                None,
                Decision::CircuitOpen,
                (0, 0),
            );
            return;
        };
        for attempt in 0..policy.tcp_connect_attempts {
            let Some((ep, tier)) = cluster.pick(&tried, min_tier) else {
                break;
            };
            tried.push(ep.clone());
            min_tier = tier + 1;
            match connect_mesh_tcp(&self.shared, &ep.target, &client, &mut first, &self.metrics)
                .await
            {
                Ok(mut up) => {
                    let counts =
                        self.shared
                            .traffic
                            .peer(Direction::Outbound, &cluster.service, &ep.zone);
                    counts.connection(if attempt > 0 {
                        Decision::Retried
                    } else {
                        Decision::None
                    });
                    let idle = policy.tcp_idle.unwrap_or(Duration::MAX);
                    // This flow's own bytes, for its access log line.
                    let (sent, received) = (Counter::default(), Counter::default());
                    // What went out while connecting counts too.
                    counts.sent.inc_by(first.len() as u64);
                    sent.inc_by(first.len() as u64);
                    let (to_dest, from_dest) =
                        ([&counts.sent, &sent], [&counts.received, &received]);
                    let flow = common::splice::copy_bidirectional_metered(
                        &mut client,
                        &mut up,
                        idle,
                        &to_dest,
                        &from_dest,
                    );
                    let ended =
                        crate::stream_limit::within_lifetime(policy.stream_duration, flow).await;
                    if let Err(e) = ended {
                        tracing::debug!(service, error = %e, "outbound TCP flow ended");
                    }
                    self.log_outbound_tcp(
                        started,
                        &cluster.service,
                        &ep.zone,
                        Some(ep.target.addr),
                        if attempt > 0 {
                            Decision::Retried
                        } else {
                            Decision::None
                        },
                        (sent.get(), received.get()),
                    );
                    return;
                }
                Err(e) => {
                    self.metrics.upstream_connect_errors.inc();
                    self.record_outcome(&cluster, &ep, crate::outlier::Outcome::Local);
                    tracing::info!(service, endpoint = %ep.authority, error = %e, "TCP connect failed; trying another endpoint");
                }
            }
        }
        // No endpoint took the flow: its line has no upstream.
        let decision = if tried.len() > 1 {
            Decision::Retried
        } else {
            Decision::None
        };
        let zone = tried
            .last()
            .map(|e| e.zone.as_str())
            .unwrap_or(crate::traffic::UNKNOWN);
        self.count_failed_tcp(&cluster.service, zone, decision);
        self.log_outbound_tcp(started, &cluster.service, zone, None, decision, (0, 0));
    }

    /// An outbound TCP flow that reached no endpoint, in the traffic
    /// counts.
    fn count_failed_tcp(&self, service: &str, zone: &str, decision: Decision) {
        let counts = self.shared.traffic.peer(Direction::Outbound, service, zone);
        counts.connection(decision);
        counts.failed();
    }

    /// The line and count of a TCP flow with nowhere to go (no such
    /// service, or no backend of its route with an endpoint).
    fn log_unrouted_tcp(&self, started: Instant, service: &str) {
        self.count_failed_tcp(service, crate::traffic::UNKNOWN, Decision::None);
        self.log_outbound_tcp(
            started,
            service,
            crate::traffic::UNKNOWN,
            None,
            Decision::None,
            (0, 0),
        );
    }

    /// The access log line of an outbound TCP flow (`upstream`: the
    /// endpoint that took it; none when no endpoint did).
    fn log_outbound_tcp(
        &self,
        started: Instant,
        service: &str,
        zone: &str,
        upstream: Option<std::net::SocketAddr>,
        decision: Decision,
        (sent, received): (u64, u64),
    ) {
        if !self.shared.access_logs.wants(Direction::Outbound) {
            return;
        }
        let (me, my_zone) = self.shared.traffic.me();
        self.shared.access_logs.log(&observe::Line::tcp(
            Direction::Outbound,
            started,
            observe::TcpEnds {
                source: (&me, &my_zone),
                destination: (service, zone),
            },
            upstream,
            decision,
            Some((sent, received)),
        ));
    }
}
