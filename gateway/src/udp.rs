//! The QUIC endpoint's UDP socket, registered for reading only.
//!
//! tokio registers a `UdpSocket` for both directions, edge-triggered, and
//! Linux then reports the socket writable each time a sent datagram is
//! freed, which for a datagram to a local peer (the link emulator, a
//! gateway on the same host) happens when the peer reads it. So every
//! datagram sent woke the gateway once more for nothing: three wake-ups
//! per request instead of two (seen with strace under the cross-zone
//! benchmark), on a path where wake-ups are most of the cost.
//!
//! Here the socket waits for reads only. A send goes straight to the
//! socket; only when one finds the send buffer full does the poller
//! register a second descriptor for the same socket (a `dup`) for
//! writability, and drop it once the socket drains.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub struct QuietSocket {
    io: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
    /// A send found the buffer full: the poller must wait for room.
    full: AtomicBool,
}

impl fmt::Debug for QuietSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuietSocket").finish_non_exhaustive()
    }
}

impl QuietSocket {
    pub fn new(sock: std::net::UdpSocket) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        let state = UdpSocketState::new((&sock).into())?;
        Ok(Self {
            io: register(sock, Interest::READABLE)?,
            state,
            full: AtomicBool::new(false),
        })
    }
}

/// Register a socket with the reactor for `interest` only. tokio marks the
/// safe constructor deprecated because a `T` that does not own its
/// descriptor could close it under the reactor (tokio#8587); a
/// `std::net::UdpSocket` owns its descriptor for its whole life, which is
/// what the replacement's safety contract asks, so the safe constructor is
/// sound here and this crate stays free of `unsafe`.
#[allow(deprecated)]
fn register(
    sock: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    AsyncFd::with_interest(sock, interest)
}

impl AsyncUdpSocket for QuietSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller {
            socket: self,
            waiting: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let r = self.state.send(self.io.get_ref().into(), transmit);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.full.store(true, Ordering::Relaxed);
        }
        r
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.io.poll_read_ready(cx))?;
            if let Ok(r) = ready.try_io(|fd| self.state.recv(fd.get_ref().into(), bufs, meta)) {
                return Poll::Ready(r);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// Ready at once unless a send found the buffer full; then waits, through a
/// `dup` of the socket registered for writability, until it has room.
struct Poller {
    socket: Arc<QuietSocket>,
    waiting: Option<AsyncFd<std::net::UdpSocket>>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

impl UdpPoller for Poller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.socket.full.load(Ordering::Relaxed) {
            this.waiting = None;
            return Poll::Ready(Ok(()));
        }
        if this.waiting.is_none() {
            // Registering reports the socket writable at once if it already
            // has room again, so no wake-up is lost in between.
            let dup = this.socket.io.get_ref().try_clone()?;
            this.waiting = Some(register(dup, Interest::WRITABLE)?);
        }
        let waiting = this.waiting.as_ref().expect("set above");
        let mut ready = ready!(waiting.poll_write_ready(cx))?;
        ready.clear_ready();
        this.socket.full.store(false, Ordering::Relaxed);
        this.waiting = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Datagrams go both ways. A send that found the buffer full makes the
    // poller wait for room through the second registration; the socket has
    // room here (on loopback a send never waits), so it reports ready at
    // once and forgets the full buffer, and sends go on.
    #[tokio::test]
    async fn datagrams_go_both_ways_and_a_full_buffer_waits_for_room() {
        let a =
            Arc::new(QuietSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap());
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload = vec![7u8; 1200];
        let t = Transmit {
            destination: b.local_addr().unwrap(),
            ecn: None,
            contents: &payload,
            segment_size: None,
            src_ip: None,
        };
        let mut poller = a.clone().create_io_poller();
        let writable = |p: &mut Pin<Box<dyn UdpPoller>>| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            p.as_mut().poll_writable(&mut cx).is_ready()
        };
        assert!(writable(&mut poller));
        a.try_send(&t).unwrap();
        let mut buf = [0u8; 2048];
        assert_eq!(b.recv(&mut buf).unwrap(), 1200);
        a.full.store(true, Ordering::Relaxed);
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)),
        )
        .await;
        assert!(matches!(waited, Ok(Ok(()))), "room is reported: {waited:?}");
        assert!(!a.full.load(Ordering::Relaxed));
        a.try_send(&t).unwrap();
        b.send_to(b"hello", a.local_addr().unwrap()).unwrap();
        let mut rbuf = [0u8; 2048];
        let mut meta = [RecvMeta::default()];
        let n = std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut rbuf)];
            a.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(&rbuf[..meta[0].len], b"hello");
    }
}
