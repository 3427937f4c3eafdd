//! A deadline on a new HTTP connection's first bytes. The server reads up
//! to 24 bytes (the length of the HTTP/2 preface) to tell HTTP/1 from
//! HTTP/2 before hyper's own timeouts apply, and that read has no limit of
//! its own: a peer that sends `P` and stops would hold the connection
//! forever. Until the server has read those bytes, or written anything
//! (which means it has read a whole request), a read that passes the
//! deadline fails with `TimedOut` and the connection closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a new connection has to send its first request bytes.
pub const FIRST_BYTES: Duration = Duration::from_secs(10);

/// Bytes after which the deadline no longer applies.
const PREFACE_LEN: usize = 24;

pub struct FirstBytes<I> {
    io: I,
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
}

impl<I> FirstBytes<I> {
    pub fn new(io: I, limit: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            read: 0,
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytes<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) => {
                self.read += buf.filled().len() - before;
                if self.read >= PREFACE_LEN {
                    self.deadline = None;
                }
            }
            Poll::Pending => {
                if let Some(d) = self.deadline.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer sent no request within the first-bytes deadline",
                        )));
                    }
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytes<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.deadline = None;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.deadline = None;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that sends one byte of the HTTP/2 preface and stops is cut
    /// off at the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stalls_in_its_first_bytes_is_cut_off() {
        let (mut peer, io) = tokio::io::duplex(64);
        let mut io = FirstBytes::new(io, Duration::from_secs(10));
        peer.write_all(b"P").await.unwrap();
        let mut buf = [0u8; 24];
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    /// Once the first 24 bytes are in, or the server has answered, an idle
    /// connection is hyper's to time out, not this deadline's.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_after_the_preface_or_the_first_answer() {
        let (mut peer, io) = tokio::io::duplex(64);
        let mut io = FirstBytes::new(io, Duration::from_secs(10));
        peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 24];
        io.read_exact(&mut buf).await.unwrap();
        let idle = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
        assert!(idle.is_err(), "still waiting after 60 s: {idle:?}");

        // A short HTTP/1.1 request (under 24 bytes), answered.
        let (mut peer, io) = tokio::io::duplex(64);
        let mut io = FirstBytes::new(io, Duration::from_secs(10));
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 18);
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let idle = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
        assert!(idle.is_err(), "still waiting after 60 s: {idle:?}");
    }
}
