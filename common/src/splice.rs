//! Splicing two byte streams (opaque TCP flows, upgraded HTTP connections,
//! gateway flows) with an idle limit: a flow on which nothing moves either
//! way for the limit is closed, so a peer that vanished without a FIN (or
//! never sends one) cannot hold a connection open forever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Idle limit of opaque flows unless configured (Envoy's TCP proxy uses
/// the same default).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    base().elapsed().as_millis() as u64
}

/// A stream that records when bytes last moved through it, and counts the
/// bytes read from it as they move (not when the flow ends, so a
/// long-lived flow shows in the metrics while it lives).
struct Tracked<'a, T> {
    inner: &'a mut T,
    last: &'a AtomicU64,
    read: &'a [&'a Counter],
}

impl<T> Tracked<'_, T> {
    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if matches!(r, Poll::Ready(Ok(()))) && n > 0 {
            self.touch();
            for c in self.read {
                c.inc_by(n as u64);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Copy both ways until both sides are done (as
/// `tokio::io::copy_bidirectional`), or until nothing has moved for
/// `idle`: then `TimedOut`. Returns the bytes copied a→b and b→a.
pub async fn copy_bidirectional_idle<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    copy_bidirectional_metered(a, b, idle, &[], &[]).await
}

/// [`copy_bidirectional_idle`], adding the bytes read from `a` to each
/// of `a_to_b` and those read from `b` to each of `b_to_a` as they move.
pub async fn copy_bidirectional_metered<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    a_to_b: &[&Counter],
    b_to_a: &[&Counter],
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = AtomicU64::new(now_ms());
    let mut ta = Tracked {
        inner: a,
        last: &last,
        read: a_to_b,
    };
    let mut tb = Tracked {
        inner: b,
        last: &last,
        read: b_to_a,
    };
    let copy = tokio::io::copy_bidirectional(&mut ta, &mut tb);
    tokio::pin!(copy);
    // `Duration::MAX` (no limit) and anything past a century wait a century.
    let idle_ms = idle.as_millis().min(100 * 365 * 86_400_000) as u64;
    loop {
        let due = last.load(Ordering::Relaxed).saturating_add(idle_ms);
        let at = base() + Duration::from_millis(due);
        tokio::select! {
            r = &mut copy => return r,
            _ = tokio::time::sleep_until(at) => {
                if now_ms() >= last.load(Ordering::Relaxed).saturating_add(idle_ms) {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing moved for {idle:?}"),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Simulated time: the clock only moves when every task waits.
    #[tokio::test(start_paused = true)]
    async fn an_idle_flow_is_closed_and_a_busy_one_is_not() {
        // Busy: bytes keep moving for longer than the limit.
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let idle = Duration::from_millis(300);
        let splice =
            tokio::spawn(async move { copy_bidirectional_idle(&mut a, &mut b, idle).await });
        for _ in 0..8 {
            a_peer.write_all(b"x").await.unwrap();
            let mut buf = [0u8; 1];
            b_peer.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!splice.is_finished(), "a busy flow stays open");
        // Idle: closed with TimedOut, once the limit has passed.
        let quiet = Instant::now();
        let r = splice.await.unwrap();
        assert!(quiet.elapsed() >= Duration::from_millis(200));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        drop((a_peer, b_peer));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flow_that_ends_returns_its_byte_counts() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let splice =
            tokio::spawn(
                async move { copy_bidirectional_idle(&mut a, &mut b, DEFAULT_IDLE).await },
            );
        a_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        b_peer.read_exact(&mut buf).await.unwrap();
        b_peer.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        a_peer.read_exact(&mut buf).await.unwrap();
        drop(a_peer);
        drop(b_peer);
        assert_eq!(splice.await.unwrap().unwrap(), (5, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_metered_flow_counts_bytes_while_it_lives() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let (up, down) = (Counter::default(), Counter::default());
        let (u2, d2) = (up.clone(), down.clone());
        let splice = tokio::spawn(async move {
            copy_bidirectional_metered(&mut a, &mut b, DEFAULT_IDLE, &[&u2], &[&d2]).await
        });
        a_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        b_peer.read_exact(&mut buf).await.unwrap();
        b_peer.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        a_peer.read_exact(&mut buf).await.unwrap();
        // Counted before the flow ends.
        assert!(!splice.is_finished());
        assert_eq!((up.get(), down.get()), (5, 2));
        drop((a_peer, b_peer));
        assert_eq!(splice.await.unwrap().unwrap(), (5, 2));
        assert_eq!((up.get(), down.get()), (5, 2));
    }
}
