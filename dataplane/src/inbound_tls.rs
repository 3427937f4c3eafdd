//! The inbound handshake for opaque TCP apps (ALPN `tern/tcp`), with TLS
//! 1.3 early data. A caller resuming an earlier session may send its app's
//! first bytes with its ClientHello (0-RTT); this side answers the hello,
//! and once the resumed session names the caller (its identity comes from
//! the session, proven by the PSK binder) the connection is handed over
//! while the caller's `Finished` is still on its way: the early bytes reach
//! the app at once and its answer goes back in the same flight as the
//! handshake (half-RTT data). A new connection then costs one round trip
//! through the gateways instead of two.
//!
//! Replay: the session cache hands out each ticket once (rustls's stateful
//! resumption `take`s it), and it lives in this process only, so a copied
//! ClientHello with its early data is refused (full handshake, early data
//! skipped). A full handshake (no ticket, or a ticket from before a trust
//! or identity change, whose configs and caches are new) completes before
//! the connection is handed over, as tokio-rustls would.
//!
//! HTTP apps keep tokio-rustls (their callers pool connections, so a new
//! session is rare and its handshake is off the request path).

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use common::rustls::{HandshakeKind, ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much early data a caller may send (the rest waits for the
/// handshake). A request line and headers, or a protocol's greeting.
pub const MAX_EARLY_DATA: u32 = 16 * 1024;

/// Turn on 0-RTT for an inbound config: early data up to
/// [`MAX_EARLY_DATA`] on resumed sessions, and answers before the caller's
/// `Finished` (rustls sends half-RTT data only on resumed sessions when
/// client certificates are required, so a full handshake still waits for
/// the caller's certificate).
pub fn enable_early_data(cfg: &mut ServerConfig) {
    cfg.max_early_data_size = MAX_EARLY_DATA;
    cfg.send_half_rtt_data = true;
}

/// A server TLS stream that reads early data before the rest.
pub struct ServerTls {
    io: TcpStream,
    conn: ServerConnection,
    /// Early bytes read so far (for metrics and tests).
    early: u64,
    /// Our close_notify is queued.
    closed: bool,
}

impl ServerTls {
    /// Answer the ClientHello. Resumed: returns once the answer is
    /// written (the caller's identity is the session's). Full: returns
    /// when the handshake is complete (the caller's certificate checked).
    pub async fn accept(io: TcpStream, cfg: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
        let mut s = Self {
            io,
            conn,
            early: 0,
            closed: false,
        };
        loop {
            std::future::poll_fn(|cx| s.poll_send_tls(cx)).await?;
            // Resumed: the hello is answered (everything queued is out).
            if !s.conn.is_handshaking() || s.conn.handshake_kind() == Some(HandshakeKind::Resumed) {
                return Ok(s);
            }
            // A bad message: rustls's alert goes out, then the error.
            if std::future::poll_fn(|cx| s.poll_receive_tls(cx)).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub fn get_ref(&self) -> (&TcpStream, &ServerConnection) {
        (&self.io, &self.conn)
    }

    /// Early (0-RTT) bytes read from this connection so far.
    pub fn early_bytes(&self) -> u64 {
        self.early
    }

    /// Write what rustls has queued; Ready(Ok) once all of it is out.
    fn poll_send_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut sync = SyncIo {
                io: &mut self.io,
                cx,
            };
            match self.conn.write_tls(&mut sync) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Read what the socket has into rustls and process it; Ready(Ok(0))
    /// at EOF.
    fn poll_receive_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut sync = SyncIo {
            io: &mut self.io,
            cx,
        };
        let n = match self.conn.read_tls(&mut sync) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.poll_send_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for ServerTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Early data comes first in the stream: drain it before anything
            // that arrived after the handshake.
            if let Some(mut early) = this.conn.early_data() {
                let n = early.read(buf.initialize_unfilled())?;
                if n > 0 {
                    buf.advance(n);
                    this.early += n as u64;
                    return Poll::Ready(Ok(()));
                }
            }
            match this.conn.reader().read(buf.initialize_unfilled()) {
                // 0: the peer's close_notify, a clean end.
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Tickets, alerts, key updates: out before waiting to read.
            if let Poll::Ready(Err(e)) = this.poll_send_tls(cx) {
                return Poll::Ready(Err(e));
            }
            // EOF is recorded by rustls; the reader reports it above.
            ready!(this.poll_receive_tls(cx))?;
        }
    }
}

impl AsyncWrite for ServerTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Out with what is queued first, so the buffer stays bounded.
        ready!(this.poll_send_tls(cx))?;
        let n = this.conn.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            // Handed over only once data may be sent: a full buffer here
            // means rustls refuses more, not that the socket is slow.
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        // Start sending; the rest goes on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send_tls(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A resumed session handed over before the caller's Finished: wait
        // for it, so that the session tickets rustls sends once it arrives
        // leave before our close_notify (the caller reads nothing after
        // that, and without fresh tickets its next connection could not
        // send early data). Data read meanwhile stays buffered in rustls
        // for the reading side.
        while !this.closed && this.conn.is_handshaking() {
            if ready!(this.poll_receive_tls(cx))? == 0 {
                break;
            }
        }
        if !this.closed {
            this.conn.send_close_notify();
            this.closed = true;
        }
        ready!(this.poll_send_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// std::io over a tokio socket: WouldBlock stands for Pending.
struct SyncIo<'a, 'b> {
    io: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::pki::{self, Ca};
    use common::tls::{self, Expect, Identity, SpiffeServerVerifier};
    use common::trust::{TrustPolicy, ZoneCas};
    use model::ident::SpiffeId;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;

    const HOUR: Duration = Duration::from_secs(3600);

    struct Mesh {
        server: Identity,
        client: Identity,
        policy: Arc<TrustPolicy>,
    }

    fn mesh() -> Mesh {
        tls::install_provider();
        let root = Ca::new_root("tern", HOUR).unwrap();
        let kc = pki::new_key_and_csr("z").unwrap();
        let pem = root
            .sign_intermediate(&kc.csr_pem, &SpiffeId::zone("tern", "z1"), HOUR)
            .unwrap();
        let zone = Ca::from_pem(&pem, &kc.key_pem).unwrap();
        let leaf = |svc: &str| {
            let kc = pki::new_key_and_csr("w").unwrap();
            let pem = zone
                .sign_leaf(
                    &kc.csr_pem,
                    &SpiffeId::workload("tern", "z1", svc),
                    &[],
                    HOUR,
                )
                .unwrap();
            Identity::from_pem(&format!("{pem}{}", zone.cert_pem()), &kc.key_pem).unwrap()
        };
        Mesh {
            server: leaf("db"),
            client: leaf("web"),
            policy: Arc::new(TrustPolicy::new(
                "tern",
                vec![root.cert_der().unwrap()],
                ZoneCas::Any,
            )),
        }
    }

    fn server_config(m: &Mesh) -> Arc<ServerConfig> {
        let mut cfg = tls::server_config_mtls(&m.server, m.policy.clone(), &[b"tern/tcp"]).unwrap();
        enable_early_data(&mut cfg);
        Arc::new(cfg)
    }

    fn client_config(m: &Mesh) -> Arc<common::rustls::ClientConfig> {
        let verifier = SpiffeServerVerifier::new(
            m.policy.clone(),
            Expect::Exact(SpiffeId::workload("tern", "z1", "db")),
        );
        let mut c =
            tls::client_config(Some(&m.client), Arc::new(verifier), &[b"tern/tcp"]).unwrap();
        c.enable_early_data = true;
        Arc::new(c)
    }

    /// One connection: the client sends `payload` the way the outbound
    /// does (early data when its session allows), the server reads it all
    /// and answers "ok". Returns (server's early bytes, bytes the server
    /// read, client saw early data accepted).
    async fn exchange(
        listener: &TcpListener,
        server_cfg: Arc<ServerConfig>,
        client_cfg: Arc<common::rustls::ClientConfig>,
        payload: &[u8],
    ) -> (u64, Vec<u8>, bool) {
        let want = payload.len();
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = ServerTls::accept(tcp, server_cfg).await.unwrap();
            let mut got = vec![0u8; want];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(b"ok").await.unwrap();
            s.shutdown().await.unwrap();
            (s.early_bytes(), got)
        };
        let client = async {
            let tcp = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let mut c = TlsConnector::from(client_cfg)
                .early_data(true)
                .connect(tls::sni(), tcp)
                .await
                .unwrap();
            c.write_all(payload).await.unwrap();
            c.flush().await.unwrap();
            let mut answer = Vec::new();
            c.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"ok");
            c.get_ref().1.is_early_data_accepted()
        };
        let ((early, got), accepted) = tokio::join!(server, client);
        (early, got, accepted)
    }

    // A resumed session's first bytes are read as early data, in order and
    // byte-exact, past the early-data limit too (the rest follows the
    // handshake); the first session (full handshake) sends none early.
    #[tokio::test]
    async fn a_resumed_session_delivers_its_first_bytes_as_early_data() {
        let m = mesh();
        let (scfg, ccfg) = (server_config(&m), client_config(&m));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (early, got, accepted) =
            exchange(&listener, scfg.clone(), ccfg.clone(), b"hello").await;
        assert_eq!(
            (early, accepted),
            (0, false),
            "no ticket yet: a full handshake"
        );
        assert_eq!(got, b"hello");
        let big: Vec<u8> = (0..(MAX_EARLY_DATA as usize + 5000))
            .map(|i| i as u8)
            .collect();
        let (early, got, accepted) = exchange(&listener, scfg.clone(), ccfg.clone(), &big).await;
        assert!(accepted, "the resumed session's early data was accepted");
        assert!(
            early > 0 && early <= MAX_EARLY_DATA as u64,
            "early bytes: {early}"
        );
        assert!(got == big, "the server read the bytes in order");
        // Each ticket is used once and the first handshake left two: later
        // connections resume only if each resumed one passed on fresh
        // tickets, although the server answers and closes before the
        // caller's Finished has arrived.
        for i in 0..6 {
            let (early, got, accepted) =
                exchange(&listener, scfg.clone(), ccfg.clone(), b"again").await;
            assert!(accepted && early == 5, "connection {i} sent no early data");
            assert_eq!(got, b"again");
        }
    }

    // A server that lost its tickets (restarted, or a new identity or trust
    // rebuilt its config) refuses the early data; the client sends the
    // same bytes again after the handshake, and the server reads them
    // exactly once.
    #[tokio::test]
    async fn refused_early_data_arrives_once_after_the_handshake() {
        let m = mesh();
        let ccfg = client_config(&m);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        exchange(&listener, server_config(&m), ccfg.clone(), b"prime").await;
        // A new config: a new session cache that knows no ticket.
        let (early, got, accepted) =
            exchange(&listener, server_config(&m), ccfg, b"exactly once").await;
        assert_eq!((early, accepted), (0, false));
        assert_eq!(got, b"exactly once");
    }

    // Early data is the destination's choice: only a TCP app's sidecar
    // started with --accept-early-data takes it; HTTP apps never do.
    #[test]
    fn only_tcp_apps_that_opt_in_accept_early_data() {
        use crate::protocol::Protocol;
        for (inbound, opt_in, want) in [
            (Protocol::Tcp, true, MAX_EARLY_DATA),
            (Protocol::Tcp, false, 0),
            (Protocol::Http1, true, 0),
            (Protocol::Http2, true, 0),
        ] {
            let m = mesh();
            let tls =
                crate::state::Tls::new(Arc::new(m.server), m.policy, inbound, opt_in).unwrap();
            assert_eq!(
                tls.server.max_early_data_size, want,
                "{inbound:?} opt-in {opt_in}"
            );
        }
    }
}
