//! Flows arriving from other zones: one QUIC stream per flow, opened with
//! the flow header; the gateway picks a healthy endpoint of the service in
//! its own zone and splices bytes, never decrypting the inner session.

use std::sync::Arc;
use std::time::Duration;

use common::flow::{self, code, FlowHeader};
use dataplane::protocol::Protocol;
use tokio::net::TcpStream;

use crate::{capture, remote, Gateway, FLOW_IDLE, HEADER_TIMEOUT, UPSTREAM_CONNECT_TIMEOUT};

impl Gateway {
    pub(crate) async fn serve_quic(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        me.metrics.handshake_failure("unknown");
                        tracing::info!(%remote, error = %e, "QUIC handshake refused");
                        return;
                    }
                };
                let peer = remote::peer_id(&conn);
                let Some(peer) = peer.filter(|p| p.is_gateway()) else {
                    conn.close(0x1u32.into(), b"only gateways may connect");
                    me.metrics.handshake_failure("unknown");
                    return;
                };
                let zone = peer.zone_name().unwrap_or_default().to_string();
                tracing::info!(%remote, %zone, "gateway connected");
                let _live = me.remotes.close_when_distrusted(&conn);
                me.remotes.watch_loss(&conn, &zone);
                loop {
                    match conn.accept_bi().await {
                        Ok((send, recv)) => {
                            let me = me.clone();
                            let zone = zone.clone();
                            tokio::spawn(async move { me.remote_flow(&zone, send, recv).await });
                        }
                        Err(e) => {
                            tracing::info!(%remote, %zone, reason = %e, "gateway connection closed");
                            return;
                        }
                    }
                }
            });
        }
    }

    async fn remote_flow(
        &self,
        from_zone: &str,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let reset = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, c: u32| {
            let _ = send.reset(c.into());
            let _ = recv.stop(c.into());
        };
        let header = match tokio::time::timeout(HEADER_TIMEOUT, flow::read(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::info!(zone = from_zone, error = %e, "malformed flow header; resetting the stream");
                self.metrics.reset(code::MALFORMED_HEADER);
                return reset(&mut send, &mut recv, code::MALFORMED_HEADER);
            }
            Err(_) => {
                self.metrics.reset(code::MALFORMED_HEADER);
                return reset(&mut send, &mut recv, code::MALFORMED_HEADER);
            }
        };
        if header.dest_zone != self.zone {
            self.metrics.reset(code::UNKNOWN_ZONE);
            return reset(&mut send, &mut recv, code::UNKNOWN_ZONE);
        }
        let ticket = self.shared.gateway_drills.borrow().ticket();
        let refused = self
            .shared
            .gateway_drills
            .borrow()
            .refuse_inbound(from_zone, &header.service, ticket)
            .map(str::to_string);
        if let Some(drill) = refused {
            tracing::debug!(zone = from_zone, service = %header.service, %drill, "flow refused by a drill");
            self.metrics.reset(code::DRILL_REFUSED);
            return reset(&mut send, &mut recv, code::DRILL_REFUSED);
        }
        self.metrics.stream_opened(from_zone, "inbound");
        let span = self.span_for(&header);
        let connected = self.connect_local(&header).await;
        if let Some(a) = span {
            let peer = connected.as_ref().ok().and_then(|s| s.peer_addr().ok());
            self.finish_span(a, &header, "inbound", connected.is_err(), peer);
        }
        let upstream = match connected {
            Ok(s) => s,
            Err(c) => {
                self.metrics.reset(c);
                return reset(&mut send, &mut recv, c);
            }
        };
        let quic = tokio::io::join(recv, send);
        match &self.cfg.debug_capture {
            Some(dir) => {
                if let Ok((down, up)) = capture::splice(quic, upstream, dir).await {
                    self.metrics.bytes(from_zone, up, down);
                }
            }
            None => {
                let (mut q, mut u) = (quic, upstream);
                let (sent, received) = self.metrics.byte_counters(from_zone);
                let (from, service) = (from_zone.to_string(), header.service.clone());
                let drill_cut =
                    dataplane::drill::cut_when(self.shared.gateway_drills.subscribe(), move |d| {
                        d.refuse_inbound(&from, &service, ticket)
                            .map(str::to_string)
                    });
                let (up, down) = ([&received], [&sent]);
                tokio::select! {
                    _ = common::splice::copy_bidirectional_metered(
                        &mut q,
                        &mut u,
                        FLOW_IDLE,
                        &up,
                        &down,
                    ) => {}
                    why = drill_cut => {
                        tracing::debug!(zone = from_zone, %why, "flow cut by a drill");
                        self.metrics.reset(code::DRILL_REFUSED);
                    }
                }
            }
        }
    }

    /// A healthy endpoint of the service in this zone (with the flow's
    /// subset labels, if any): its sidecar's inbound port. Tries up to
    /// three, ejecting the ones that refuse.
    async fn connect_local(&self, h: &FlowHeader) -> Result<TcpStream, u32> {
        let clusters = self.shared.clusters.load_full();
        let Some(cluster) = clusters.by_service.get(&h.service).cloned() else {
            return Err(code::UNKNOWN_SERVICE);
        };
        if cluster.protocol == Protocol::Quic {
            return Err(code::UNKNOWN_SERVICE);
        }
        // A flow for a label subset: only instances with all its labels.
        let cluster = if h.subset.is_empty() {
            cluster
        } else {
            let fits = |e: &&Arc<dataplane::balance::Endpoint>| {
                h.subset
                    .iter()
                    .all(|(k, v)| e.labels.get(k).is_some_and(|x| x == v))
            };
            Arc::new(dataplane::balance::Cluster::new(
                cluster.service.clone(),
                cluster.protocol,
                cluster.endpoints.iter().filter(fits).cloned().collect(),
            ))
        };
        let mut tried = Vec::new();
        for _ in 0..3 {
            let Some((ep, _)) = cluster.pick(&tried, 0) else {
                break;
            };
            tried.push(ep.clone());
            if ep.target.via.is_some() || ep.zone != self.zone {
                continue;
            }
            match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(ep.target.addr))
                .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                _ => ep.eject(Duration::from_secs(5)),
            }
        }
        Err(if tried.is_empty() {
            code::NO_HEALTHY_ENDPOINT
        } else {
            code::UPSTREAM_FAILED
        })
    }
}
