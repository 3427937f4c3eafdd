//! The gateway hop's stream with the flow header held back until the first
//! write, so that the header and the end-to-end ClientHello leave together:
//! one TLS record and one segment to the gateway instead of two, and the
//! gateway finds the handshake already buffered when it has read the header
//! (one wakeup less per new cross-zone flow on each side of the hop).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct HeaderFirst<S> {
    header: Vec<u8>,
    /// Bytes of `header` already written.
    sent: usize,
    inner: S,
}

impl<S> HeaderFirst<S> {
    pub fn new(header: Vec<u8>, inner: S) -> Self {
        Self {
            header,
            sent: 0,
            inner,
        }
    }
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> HeaderFirst<S> {
    /// Write what is left of the header on its own.
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.header.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.header[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderFirst<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let left = me.header.len() - me.sent;
        if left > 0 && !buf.is_empty() {
            // The rest of the header and this write, in one.
            let mut both = Vec::with_capacity(left + buf.len());
            both.extend_from_slice(&me.header[me.sent..]);
            both.extend_from_slice(buf);
            let n = ready!(Pin::new(&mut me.inner).poll_write(cx, &both))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < left {
                me.sent += n;
                // Not even the header went: finish it first.
                ready!(me.poll_header(cx))?;
            } else {
                me.sent = me.header.len();
                if n > left {
                    return Poll::Ready(Ok(n - left));
                }
            }
        }
        Pin::new(&mut me.inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_header(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_header(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderFirst<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A writer that takes at most `max` bytes per call and records each
    /// call's bytes.
    struct Chunky {
        max: usize,
        writes: Vec<Vec<u8>>,
    }
    impl AsyncWrite for Chunky {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let me = self.get_mut();
            let n = buf.len().min(me.max);
            me.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_header_leaves_with_the_first_write() {
        let mut s = HeaderFirst::new(
            b"HDR".to_vec(),
            Chunky {
                max: 1 << 20,
                writes: vec![],
            },
        );
        s.write_all(b"hello").await.unwrap();
        s.write_all(b"world").await.unwrap();
        assert_eq!(
            s.inner.writes,
            vec![b"HDRhello".to_vec(), b"world".to_vec()]
        );
    }

    #[tokio::test]
    async fn short_writes_keep_the_bytes_in_order() {
        for max in 1..12 {
            let mut s = HeaderFirst::new(
                b"HEADER".to_vec(),
                Chunky {
                    max,
                    writes: vec![],
                },
            );
            s.write_all(b"payload").await.unwrap();
            s.flush().await.unwrap();
            assert_eq!(
                s.inner.writes.concat(),
                b"HEADERpayload".to_vec(),
                "max {max}"
            );
        }
    }

    #[tokio::test]
    async fn a_flush_alone_sends_the_header_and_reads_pass_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = HeaderFirst::new(b"HDR".to_vec(), a);
        s.flush().await.unwrap();
        let mut got = [0u8; 3];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HDR");
        b.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
