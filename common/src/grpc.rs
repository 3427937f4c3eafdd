//! tonic over our own rustls configs: a TLS listener that tonic serves, with
//! the peer's SPIFFE ID in each request's extensions, and a client connector.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{server::TlsStream, TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::tls;
use model::ident::SpiffeId;

/// What a handler knows about the connection its request came on.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// Set when the client presented a verified certificate.
    pub identity: Option<SpiffeId>,
    /// DER of the client's chain (leaf first), when presented.
    pub chain: Arc<Vec<Vec<u8>>>,
}

pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How long a control-plane stream may refuse to take a message (its peer
/// stopped reading) before the sender gives up on the stream.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 PINGs on control-plane connections: a peer that vanished without
/// closing is detected within interval + timeout.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// A tonic server for a control-plane port, with HTTP/2 keepalive.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
}

/// TLS handshakes a control-plane port runs at once.
pub const MAX_HANDSHAKES: usize = 128;
/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept TLS connections for tonic's `serve_with_incoming`. Handshakes run
/// concurrently and time out, so a slow or hostile client cannot stall the
/// listener. The server config is read from `config` per connection, so a
/// rotated certificate applies to new connections at once.
pub fn tls_incoming(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // At most MAX_HANDSHAKES at once: past that, new connections
            // wait in the kernel's backlog instead of costing CPU here.
            let Ok(slot) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = accept(&listener, "gRPC").await;
            let acceptor = TlsAcceptor::from(config.borrow().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(slot);
                let stream = match hs {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let (_, conn) = stream.get_ref();
                let chain: Vec<Vec<u8>> = conn
                    .peer_certificates()
                    .map(|c| c.iter().map(|d| d.to_vec()).collect())
                    .unwrap_or_default();
                let identity = tls::peer_identity(conn.peer_certificates());
                let info = PeerInfo {
                    remote,
                    identity,
                    chain: Arc::new(chain),
                };
                let _ = tx
                    .send(Ok(TlsConn {
                        inner: stream,
                        info,
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A lazily connecting gRPC channel to `addr` over TLS with `config`.
pub fn tls_channel(addr: String, config: Arc<ClientConfig>) -> Channel {
    let connector = TlsConnector::from(config);
    let svc = tower::service_fn(move |_uri: http::Uri| {
        let addr = addr.clone();
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(tls::sni(), tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from_static("http://tern.mesh")
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(svc)
}

/// The peer info tonic attached to a request.
pub fn peer_of<T>(req: &tonic::Request<T>) -> Option<PeerInfo> {
    req.extensions().get::<PeerInfo>().cloned()
}

/// Accept the next TCP connection with `TCP_NODELAY` set. A failed accept
/// (e.g. out of file descriptors) is logged and retried after a short pause
/// instead of ending the listener.
pub async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, remote)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, remote);
            }
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
