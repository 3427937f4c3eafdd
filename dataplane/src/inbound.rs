//! Inbound connections: mTLS (and, in permissive mode, plaintext on the
//! same port). The caller must pass the trust rules (`common::trust`); the
//! mode must be the one the app's protocol declares (HTTP/2 or HTTP/1.1 for
//! HTTP apps, `tern/tcp` for TCP apps, `inbound_tcp.rs`). Each HTTP request
//! then takes the path in `inbound_http.rs` (access rules, rate limits,
//! faults, the app). The counting of access decisions, rate limits and
//! faults that both share lives here. Open connections close when the trust
//! policy stops accepting their peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;
use std::io;

use common::rustls::pki_types::CertificateDer;
use http::header::HeaderValue;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use common::rustls::ServerConnection;
use model::ident::SpiffeId;

use crate::inbound_tls::ServerTls;
use crate::state::Tls;

use crate::access::{Caller, Decision, DEFAULT_RULE};
use crate::first_bytes::{FirstBytes, FIRST_BYTES};
use crate::inbound_tcp;
use crate::metrics::{DirLabel, Direction, FaultLabel, KindLabel, RuleLabel};
use crate::protocol::Protocol;
use crate::proxy::Proxy;
use crate::traffic::Counts;

/// How long a connection whose peer stopped being trusted may take to
/// finish its requests before it is cut.
const DRAIN_DISTRUSTED: Duration = Duration::from_secs(10);

impl Proxy {
    pub async fn serve_inbound(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, remote) = common::grpc::accept(&listener, "inbound").await;
            let me = self.clone();
            tokio::spawn(async move {
                let dir = DirLabel {
                    direction: Direction::Inbound,
                };
                me.metrics.connections.get_or_create(&dir).inc();
                me.metrics.connections_open.get_or_create(&dir).inc();
                me.inbound_conn(tcp, remote).await;
                me.metrics.connections_open.get_or_create(&dir).dec();
            });
        }
    }

    async fn inbound_conn(self: &Arc<Self>, tcp: TcpStream, remote: SocketAddr) {
        let dir = DirLabel {
            direction: Direction::Inbound,
        };
        // Permissive mode: plaintext on the same port, told apart by the
        // first byte (a TLS handshake record starts with 22).
        if self.shared.access.load().permissive && !starts_with_tls(&tcp).await {
            return self.inbound_plaintext(tcp, remote).await;
        }
        // Fail closed: no certificate, no service.
        let Some(tls) = self.shared.tls.load_full() else {
            self.metrics.tls_failures.get_or_create(&dir).inc();
            return;
        };
        // Opaque TCP apps: a handshake that serves 0-RTT early data.
        if self.app_protocol == Protocol::Tcp {
            let accept = ServerTls::accept(tcp, tls.server.clone());
            if let Some(stream) = self.handshake(remote, accept).await {
                self.inbound_tcp_tls(stream, remote, &tls).await;
            }
            return;
        }
        let accept = TlsAcceptor::from(tls.server.clone()).accept(tcp);
        let Some(stream) = self.handshake(remote, accept).await else {
            return;
        };
        let Some((peer, chain)) = self.inbound_peer(stream.get_ref().1, remote, &tls) else {
            return;
        };
        let Some(app) = self.app_addr else {
            tracing::info!(%remote, "inbound connection, but this proxy has no local app");
            return;
        };
        let caller = Arc::new(Caller::from_peer(&peer, chain.first().cloned()));
        let peer_value: HeaderValue = match HeaderValue::from_str(peer.as_str()) {
            Ok(v) => v,
            Err(_) => return,
        };
        let me = self.clone();
        let conn_chain = chain.clone();
        let svc = hyper::service::service_fn(move |req| {
            let me = me.clone();
            let peer = peer_value.clone();
            let chain = conn_chain.clone();
            let caller = caller.clone();
            async move {
                Ok::<_, Infallible>(
                    me.inbound_http(app, remote, Some((peer, caller)), chain, req)
                        .await,
                )
            }
        });
        let builder = self.server_builder();
        let conn = builder.serve_connection_with_upgrades(
            TokioIo::new(FirstBytes::new(stream, FIRST_BYTES)),
            svc,
        );
        tokio::pin!(conn);
        let (_live, distrusted) = self.shared.live.signal(chain);
        tokio::select! {
            biased;
            _ = conn.as_mut() => {}
            Ok(why) = distrusted => {
                // Requests in flight finish (HTTP/2 GOAWAY, HTTP/1.1
                // `connection: close`); the caller reconnects, and the new
                // handshake is judged by the new trust. A peer that keeps
                // the connection busy is cut after the deadline.
                self.metrics.connections_distrusted.inc();
                tracing::warn!(%remote, %peer, reason = %why, "closing an inbound connection: its peer is no longer trusted");
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN_DISTRUSTED, conn).await;
            }
        }
    }

    /// Finish (or, for a resumed TCP session, answer) the handshake within
    /// 10 s; failures are counted and logged.
    async fn handshake<S>(
        &self,
        remote: SocketAddr,
        accept: impl std::future::Future<Output = io::Result<S>>,
    ) -> Option<S> {
        let dir = DirLabel {
            direction: Direction::Inbound,
        };
        match tokio::time::timeout(Duration::from_secs(10), accept).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    // A TCP health probe: connected, sent nothing, closed.
                    tracing::debug!(%remote, "inbound connection closed before a TLS hello");
                } else {
                    self.metrics.tls_failures.get_or_create(&dir).inc();
                    tracing::info!(%remote, error = %e, "inbound TLS refused");
                }
                None
            }
            Err(_) => {
                self.metrics.tls_failures.get_or_create(&dir).inc();
                None
            }
        }
    }

    /// The caller's identity and chain, if its session names one and it
    /// asked for the mode the app's protocol allows.
    pub(crate) fn inbound_peer(
        &self,
        conn: &ServerConnection,
        remote: SocketAddr,
        tls: &Tls,
    ) -> Option<(SpiffeId, Arc<[CertificateDer<'static>]>)> {
        let peer = common::tls::peer_identity(conn.peer_certificates())?;
        let chain: Arc<[CertificateDer<'static>]> = conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        // The caller gets the mode the app's protocol allows, nothing else:
        // an HTTP app's bytes are always parsed here, so the identity
        // header is always ours. (rustls already refused an ALPN outside
        // the list; a caller that offered none is refused here.)
        let alpn = conn.alpn_protocol();
        if !alpn.is_some_and(|a| tls.inbound_alpns().contains(&a)) {
            self.metrics
                .tls_failures
                .get_or_create(&DirLabel {
                    direction: Direction::Inbound,
                })
                .inc();
            tracing::info!(%remote, %peer, alpn = ?alpn.map(String::from_utf8_lossy), app = ?self.app_protocol, "inbound refused: mode does not match the app's protocol");
            return None;
        }
        Some((peer, chain))
    }

    /// A plaintext connection (permissive mode): no caller identity, so
    /// only access rules that name no callers can allow it.
    async fn inbound_plaintext(self: &Arc<Self>, tcp: TcpStream, remote: SocketAddr) {
        let Some(app) = self.app_addr else {
            return;
        };
        if self.app_protocol == Protocol::Tcp {
            self.metrics
                .plaintext
                .get_or_create(&KindLabel { kind: "tcp" })
                .inc();
            let counts = self.inbound_counts(None);
            let Some((delay, decision)) = self.tcp_decide(None, remote, &counts).await else {
                inbound_tcp::reset(&tcp);
                return;
            };
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            self.splice_to_app(tcp, app, &counts, (None, decision))
                .await;
            return;
        }
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let me = me.clone();
            async move {
                me.metrics
                    .plaintext
                    .get_or_create(&KindLabel { kind: "http" })
                    .inc();
                Ok::<_, Infallible>(
                    me.inbound_http(app, remote, None, Arc::from(vec![]), req)
                        .await,
                )
            }
        });
        let _ = self
            .server_builder()
            .serve_connection_with_upgrades(TokioIo::new(FirstBytes::new(tcp, FIRST_BYTES)), svc)
            .await;
    }

    pub(crate) fn count_limited(
        &self,
        limit: &str,
        kind: &'static str,
        caller: Option<&Caller>,
        remote: SocketAddr,
    ) {
        self.metrics
            .rate_limited
            .get_or_create(&RuleLabel {
                rule: limit.to_string(),
                kind,
            })
            .inc();
        let who = caller
            .map(|c| format!("{}/{}", c.zone, c.service))
            .unwrap_or_else(|| "plaintext".into());
        tracing::debug!(%remote, caller = %who, limit, kind, "rate limited");
    }

    pub(crate) fn count_fault(&self, fault: &str, action: &'static str) {
        self.metrics
            .faults_injected
            .get_or_create(&FaultLabel {
                fault: fault.to_string(),
                action,
            })
            .inc();
    }

    pub(crate) fn record(
        &self,
        d: &Decision,
        kind: &'static str,
        caller: Option<&Caller>,
        remote: SocketAddr,
        path: Option<&str>,
    ) {
        let who = caller
            .map(|c| format!("{}/{}", c.zone, c.service))
            .unwrap_or_else(|| "plaintext".into());
        if let Some(rule) = &d.shadow_denied {
            self.metrics
                .access_shadow_denied
                .get_or_create(&RuleLabel {
                    rule: rule.to_string(),
                    kind,
                })
                .inc();
            tracing::info!(%remote, caller = %who, path, rule = %rule, "shadow mode: would have denied");
        }
        if !d.allow {
            let rule = d.rule.as_deref().unwrap_or(DEFAULT_RULE);
            self.metrics
                .access_denied
                .get_or_create(&RuleLabel {
                    rule: rule.to_string(),
                    kind,
                })
                .inc();
            tracing::info!(%remote, caller = %who, path, rule, "access denied");
        }
    }

    /// The traffic counts for requests and connections from `caller`
    /// (a plaintext caller is `unknown`).
    pub(crate) fn inbound_counts(&self, caller: Option<&Caller>) -> Arc<Counts> {
        let (service, zone) = caller
            .map(|c| (c.service.as_str(), c.zone.as_str()))
            .unwrap_or((crate::traffic::UNKNOWN, crate::traffic::UNKNOWN));
        self.shared.traffic.peer(Direction::Inbound, service, zone)
    }
}

/// Whether a new connection opens with a TLS handshake record. Waits for
/// the first byte (10 s at most; a silent peer is treated as TLS and then
/// times out there).
async fn starts_with_tls(tcp: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut b)).await {
        Ok(Ok(1)) => b[0] == 0x16,
        _ => true,
    }
}
