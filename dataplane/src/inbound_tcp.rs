//! Opaque TCP connections to the local app (ALPN `tern/tcp`, after the
//! handshake in `inbound_tls.rs`, or plaintext in permissive mode): what the
//! inbound policies do to a connection (an
//! access rule, a rate limit, a fault), the splice to the app, and the
//! connection's access log line. `inbound.rs` accepts the connection and
//! hands it here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use crate::access::Caller;
use crate::fault;
use crate::inbound_tls::ServerTls;
use crate::metrics::Direction;
use crate::observe;
use crate::proxy::Proxy;
use crate::state::Tls;
use crate::traffic::Counts;
use common::traffic::Decision as Verdict;

/// How long connecting to the local app may take.
pub(crate) const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Proxy {
    /// An opaque TCP connection from a mesh caller: the inbound policies,
    /// then the splice to the app (early data first).
    pub(crate) async fn inbound_tcp_tls(
        self: &Arc<Self>,
        stream: ServerTls,
        remote: SocketAddr,
        tls: &Tls,
    ) {
        let Some((peer, chain)) = self.inbound_peer(stream.get_ref().1, remote, tls) else {
            return;
        };
        let Some(app) = self.app_addr else {
            tracing::info!(%remote, "inbound connection, but this proxy has no local app");
            return;
        };
        let caller = Caller::from_peer(&peer, chain.first().cloned());
        let counts = self.inbound_counts(Some(&caller));
        let Some((delay, decision)) = self.tcp_decide(Some(&caller), remote, &counts).await else {
            reset(stream.get_ref().0);
            return;
        };
        // A peer whose zone is revoked (or whose root is retired) loses its
        // open connections too, not only new handshakes. Opaque TCP has no
        // way to finish gracefully: cut it at once. A fault's delay runs
        // inside, so a trust change during it cuts the connection too.
        let splice = async {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let mut stream = stream;
            self.splice_to_app(&mut stream, app, &counts, (Some(&caller), decision))
                .await;
            self.metrics.early_data_bytes.inc_by(stream.early_bytes());
        };
        let distrusted = self.metrics.connections_distrusted.clone();
        if let Err(why) = self
            .shared
            .live
            .while_trusted(chain, splice, move || {
                distrusted.inc();
            })
            .await
        {
            tracing::warn!(%remote, %peer, reason = %why, "closed an inbound TCP connection: its peer is no longer trusted");
        }
    }

    /// Whether a rate limit refuses this TCP connection.
    fn limit_tcp(&self, caller: Option<&Caller>, remote: SocketAddr) -> bool {
        let limits = self.shared.limits.load();
        if limits.is_empty() {
            return false;
        }
        match limits.check(caller, None) {
            Some(l) => {
                self.count_limited(&l.limit, "tcp", caller, remote);
                true
            }
            None => false,
        }
    }

    /// The fault, if any, for a new TCP connection, counted: the delay to
    /// serve before splicing, and whether to reset it (after the delay).
    fn tcp_fault(&self, caller: Option<&Caller>) -> (Option<Duration>, bool) {
        let faults = self.shared.faults.load();
        if faults.is_empty() {
            return (None, false);
        }
        let Some(inj) = faults.draw(caller, None) else {
            return (None, false);
        };
        if inj.delay.is_some() {
            self.count_fault(&inj.fault, "delay");
        }
        let reset = inj.abort == Some(fault::Abort::Reset);
        if reset {
            self.count_fault(&inj.fault, "reset");
        }
        (inj.delay, reset)
    }

    /// Whether the access rules let a TCP connection from `caller` (None:
    /// plaintext) through; counted and logged either way they say no.
    fn admit_tcp(&self, caller: Option<&Caller>, remote: SocketAddr) -> bool {
        let access = self.shared.access.load();
        if access.allow_all {
            return true;
        }
        let d = access.decide(caller, None);
        self.record(&d, "tcp", caller, remote, None);
        d.allow
    }

    /// What the inbound policies do to a TCP connection, counted: `None`
    /// to reset it (denied, rate limited, or a fault's reset, after its
    /// delay), else the fault's delay to hold it for, if any.
    pub(crate) async fn tcp_decide(
        &self,
        caller: Option<&Caller>,
        remote: SocketAddr,
        counts: &Counts,
    ) -> Option<(Option<Duration>, Verdict)> {
        let started = Instant::now();
        let refuse = |d: Verdict| {
            counts.connection(d);
            self.log_tcp(caller, d, started, None);
            None
        };
        if !self.admit_tcp(caller, remote) {
            return refuse(Verdict::Denied);
        }
        if self.limit_tcp(caller, remote) {
            return refuse(Verdict::RateLimited);
        }
        let (delay, reset_it) = self.tcp_fault(caller);
        if reset_it {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            return refuse(Verdict::Fault);
        }
        let decision = if delay.is_some() {
            Verdict::Fault
        } else {
            Verdict::None
        };
        counts.connection(decision);
        Some((delay, decision))
    }

    /// An access log line for a TCP connection from `caller`, if the
    /// policy asks: `flow` is the app's address and the bytes each way.
    fn log_tcp(
        &self,
        caller: Option<&Caller>,
        decision: Verdict,
        started: Instant,
        flow: Option<(SocketAddr, u64, u64)>,
    ) {
        if !self.shared.access_logs.wants(Direction::Inbound) {
            return;
        }
        let (me, my_zone) = self.shared.traffic.me();
        let unknown = crate::traffic::UNKNOWN;
        let source = caller.map_or((unknown, unknown), |c| {
            (c.service.as_str(), c.zone.as_str())
        });
        self.shared.access_logs.log(&observe::Line::tcp(
            Direction::Inbound,
            started,
            observe::TcpEnds {
                source,
                destination: (&me, &my_zone),
            },
            flow.map(|f| f.0),
            decision,
            flow.map(|f| (f.1, f.2)),
        ));
    }

    pub(crate) async fn splice_to_app<S>(
        &self,
        mut stream: S,
        app: SocketAddr,
        counts: &Counts,
        (caller, decision): (Option<&Caller>, Verdict),
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let started = Instant::now();
        match tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app)).await {
            Ok(Ok(mut up)) => {
                let _ = up.set_nodelay(true);
                let (sent, received) = (Counter::default(), Counter::default());
                let (down, up_counts) = ([&counts.sent, &sent], [&counts.received, &received]);
                let mut changed = self.shared.faults_changed.subscribe();
                let cut = async {
                    loop {
                        if changed.changed().await.is_err() {
                            return std::future::pending().await;
                        }
                        if let Some(drill) = self.shared.faults.load().drill_cut(caller) {
                            return drill;
                        }
                    }
                };
                tokio::select! {
                    _ = common::splice::copy_bidirectional_metered(
                        &mut stream,
                        &mut up,
                        self.tcp_idle,
                        &down,
                        &up_counts,
                    ) => {}
                    drill = cut => {
                        tracing::debug!(%drill, "live connection cut by a drill's blackhole");
                        self.count_fault(&drill, "reset");
                    }
                }
                self.log_tcp(
                    caller,
                    decision,
                    started,
                    Some((app, sent.get(), received.get())),
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(%app, error = %e, "local app refused the connection");
                counts.failed();
                self.log_tcp(caller, decision, started, None);
            }
            Err(_) => {
                tracing::warn!(%app, "local app did not accept the connection within {APP_CONNECT_TIMEOUT:?}");
                counts.failed();
                self.log_tcp(caller, decision, started, None);
            }
        }
    }
}

/// Close with a reset rather than a FIN (a denied TCP connection): a zero
/// linger makes the close send RST at once, so it never blocks.
#[allow(deprecated)]
pub(crate) fn reset(tcp: &TcpStream) {
    let _ = tcp.set_linger(Some(Duration::ZERO));
}
