//! Flows leaving the zone: a sidecar of this zone opens an mTLS connection
//! (ALPN `tern/gw`), sends a flow header naming the destination zone and
//! service, and the gateway carries the bytes on a QUIC stream to a gateway
//! of that zone.

use std::sync::Arc;

use common::flow::{self, code};
use tokio::net::{TcpListener, TcpStream};

use crate::{Gateway, FLOW_IDLE, HEADER_TIMEOUT, SPARE_IDLE};

impl Gateway {
    pub(crate) async fn serve_local(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, peer) = common::grpc::accept(&listener, "gateway local").await;
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.local_flow(tcp).await {
                    match e {
                        FlowError::Refused {
                            reason, ref source, ..
                        } => {
                            me.metrics.refused(reason);
                            // The cause says what to fix (no stream to that
                            // zone: which gateway, and why).
                            let cause = source.as_ref().map(|c| c.to_string()).unwrap_or_default();
                            tracing::info!(%peer, reason, error = %e, cause, "refused a flow from this zone");
                        }
                        // Spare connections that idled out, flows that
                        // ended with a reset: routine.
                        _ => {
                            tracing::debug!(%peer, error = %e, "local flow ended with an error")
                        }
                    }
                }
            });
        }
    }

    async fn local_flow(&self, tcp: TcpStream) -> Result<(), FlowError> {
        let cfg = self
            .local_tls
            .get()
            .ok_or_else(|| refused("no-certificate", "no certificate yet (failing closed)"))?;
        let mut tls = tokio::time::timeout(
            HEADER_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(cfg).accept(tcp),
        )
        .await
        .map_err(timed_out("TLS handshake timed out"))??;
        let peer = common::tls::peer_identity(tls.get_ref().1.peer_certificates())
            .ok_or_else(|| refused("no-identity", "no client identity"))?;
        let chain: Arc<[common::rustls::pki_types::CertificateDer<'static>]> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        if peer.zone_name() != Some(self.zone.as_str()) {
            return Err(refused(
                "other-zone",
                format!("{peer} is not a workload of zone {}", self.zone),
            ));
        }
        // Sidecars keep spare connections ready for new flows, so the header
        // may come a while after the handshake.
        let mut header = tokio::time::timeout(SPARE_IDLE, flow::read(&mut tls))
            .await
            .map_err(timed_out("no flow header on an idle connection"))??;
        if header.dest_zone == self.zone {
            return Err(refused(
                "own-zone",
                format!(
                    "flow for our own zone {}; sidecars reach it directly",
                    self.zone
                ),
            ));
        }
        // The source zone is what we authenticated, not what was claimed.
        header.source_zone = self.zone.clone();
        let zone = header.dest_zone.clone();
        let ticket = self.shared.gateway_drills.borrow().ticket();
        if let Some(drill) = self
            .shared
            .gateway_drills
            .borrow()
            .refuse_outbound(&zone, ticket)
        {
            // Closing before any stream opens: the sidecar sees the
            // connection fail and fails over, as in a real partition.
            self.metrics.reset(code::DRILL_REFUSED);
            return Err(FlowError::Ended(format!(
                "flow to zone {zone} refused by {drill}"
            )));
        }
        // A flow opened for a sampled trace: our span (until the stream to
        // the other zone is open) joins it, and the other gateway's span
        // is our child.
        let span = self.span_for(&header);
        if let Some(a) = &span {
            header.traceparent = a.ctx.header().to_str().ok().map(str::to_string);
        }
        let opened = async {
            let (mut send, recv) = self.remotes.open_stream(&self.shared, &zone).await?;
            send.write_all(&header.encode()?).await?;
            Ok::<_, Cause>((send, recv))
        }
        .await;
        if let Some(a) = span {
            self.finish_span(a, &header, "outbound", opened.is_err(), None);
        }
        let (send, recv) = opened.map_err(|e| FlowError::Refused {
            reason: "no-stream",
            what: format!("no stream to zone {zone}"),
            source: Some(e),
        })?;
        self.metrics.stream_opened(&zone, "outbound");
        let mut quic = tokio::io::join(recv, send);
        let (sent, received) = self.metrics.byte_counters(&zone);
        let (sent, received) = ([&sent], [&received]);
        let drill_cut = {
            let zone = zone.clone();
            dataplane::drill::cut_when(self.shared.gateway_drills.subscribe(), move |d| {
                d.refuse_outbound(&zone, ticket).map(str::to_string)
            })
        };
        let metrics = self.metrics.clone();
        let splice = async {
            tokio::select! {
                r = common::splice::copy_bidirectional_metered(
                    &mut tls, &mut quic, FLOW_IDLE, &sent, &received,
                ) => r,
                why = drill_cut => {
                    metrics.reset(code::DRILL_REFUSED);
                    Err(std::io::Error::other(format!("flow cut by {why}")))
                }
            }
        };
        let distrusted = self.metrics.distrusted.clone();
        let cut = move || {
            distrusted.inc();
        };
        match self.shared.live.while_trusted(chain, splice, cut).await {
            Ok(_) => {}
            Err(why) => {
                return Err(FlowError::Ended(format!(
                    "closed a flow from {peer}: no longer trusted ({why})"
                )));
            }
        }
        Ok(())
    }
}

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a flow from this zone ended early. Logged by its message alone;
/// the cause, if any, is its source.
#[derive(Debug, thiserror::Error)]
enum FlowError {
    /// A flow this gateway refused (as opposed to one that ended): counted
    /// by `reason` (a fixed word) and logged at info, so an operator sees
    /// why a sidecar's cross-zone connections fail.
    #[error("{what}")]
    Refused {
        reason: &'static str,
        what: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("{what}")]
    TimedOut {
        what: &'static str,
        #[source]
        source: tokio::time::error::Elapsed,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Header(#[from] flow::ReadError),
    /// Cut by a drill, or by a trust change.
    #[error("{0}")]
    Ended(String),
}

fn refused(reason: &'static str, what: impl Into<String>) -> FlowError {
    FlowError::Refused {
        reason,
        what: what.into(),
        source: None,
    }
}

fn timed_out(what: &'static str) -> impl FnOnce(tokio::time::error::Elapsed) -> FlowError {
    move |source| FlowError::TimedOut { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal is logged by its own message and counted by its reason,
    /// its cause kept as the source; an idle spare connection's timeout is
    /// not a refusal.
    #[tokio::test]
    async fn a_refusal_is_told_from_a_flow_that_ended() {
        let cause = crate::Error::Remote("open stream to 127.0.0.1:1: timed out".into());
        let e = FlowError::Refused {
            reason: "no-stream",
            what: "no stream to zone z2".into(),
            source: Some(cause.into()),
        };
        assert!(matches!(
            e,
            FlowError::Refused {
                reason: "no-stream",
                ..
            }
        ));
        assert_eq!(e.to_string(), "no stream to zone z2");
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("timed out"), "{cause}");
        let idle = tokio::time::timeout(std::time::Duration::ZERO, std::future::pending::<()>())
            .await
            .map_err(timed_out("no flow header on an idle connection"))
            .unwrap_err();
        assert!(!matches!(idle, FlowError::Refused { .. }));
        assert_eq!(idle.to_string(), "no flow header on an idle connection");
    }
}
