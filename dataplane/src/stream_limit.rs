//! Limits on a streamed HTTP body: an idle limit (no data for that long)
//! and a duration limit (the whole stream), from the destination's
//! `Timeout` policy; and the duration limit of a spliced flow. A body with no limit costs one branch per frame; a
//! limited one arms its timers only while it waits for data, and reads the
//! clock when a frame arrives instead of resetting a timer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// A spliced flow (opaque TCP, an upgraded connection) cut at the
/// destination's `streamDuration`, when it has one: the cut is a
/// `TimedOut` error that names the limit.
pub async fn within_lifetime<T>(
    limit: Option<Duration>,
    flow: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, flow).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("closed at the stream duration limit of {limit:?}"),
            ))
        }),
        None => flow.await,
    }
}

/// A received body, with or without limits.
pub struct Limited<B = Incoming> {
    inner: B,
    limits: Option<Box<Limits>>,
}

struct Limits {
    idle: Option<Duration>,
    /// When the last frame arrived.
    last: Instant,
    idle_timer: Option<Pin<Box<Sleep>>>,
    deadline: Option<Pin<Box<Sleep>>>,
    duration: Option<Duration>,
}

/// Why a limited body was cut.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("no data for {0:?} (the destination's Timeout idle limit); stream reset")]
    Idle(Duration),
    #[error("the stream lasted {0:?} (the destination's Timeout streamDuration); stream reset")]
    Duration(Duration),
    #[error(transparent)]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

impl<B> Limited<B> {
    pub fn plain(inner: B) -> Self {
        Self {
            inner,
            limits: None,
        }
    }

    /// `inner` cut after `idle` without data, or `duration` in all.
    pub fn new(inner: B, idle: Option<Duration>, duration: Option<Duration>) -> Self {
        if idle.is_none() && duration.is_none() {
            return Self::plain(inner);
        }
        let now = Instant::now();
        Self {
            inner,
            limits: Some(Box::new(Limits {
                idle,
                last: now,
                idle_timer: None,
                deadline: duration.map(|d| Box::pin(tokio::time::sleep_until(now + d))),
                duration,
            })),
        }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = LimitError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, LimitError>>> {
        let this = self.get_mut();
        let Some(l) = this.limits.as_deref_mut() else {
            return Pin::new(&mut this.inner)
                .poll_frame(cx)
                .map_err(|e| LimitError::Body(e.into()));
        };
        if let Some(d) = &mut l.deadline {
            if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(LimitError::Duration(
                    l.duration.unwrap_or_default(),
                ))));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                if l.idle.is_some() {
                    l.last = Instant::now();
                }
                Poll::Ready(f.map(|r| r.map_err(|e| LimitError::Body(e.into()))))
            }
            Poll::Pending => {
                let Some(idle) = l.idle else {
                    return Poll::Pending;
                };
                loop {
                    let due = l.last + idle;
                    let timer = l
                        .idle_timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    if timer.deadline() != due {
                        timer.as_mut().reset(due);
                    }
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if Instant::now() >= l.last + idle {
                        return Poll::Ready(Some(Err(LimitError::Idle(idle))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Chan = StreamBody<
        tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    fn chan() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>,
        Chan,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (
            tx,
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
    }

    async fn send(tx: &tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>) {
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
    }

    /// Under simulated time: frames 900 ms apart keep a 1 s idle limit
    /// happy; then 1 s of silence cuts the stream.
    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_is_cut_and_a_trickling_one_is_not() {
        let (tx, body) = chan();
        let mut b = Limited::new(body, Some(Duration::from_secs(1)), None);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(900)).await;
            send(&tx).await;
            let f = b.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), "x");
        }
        let started = Instant::now();
        let e = b.frame().await.unwrap().unwrap_err();
        assert!(matches!(e, LimitError::Idle(_)), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        drop(tx);
    }

    /// A stream that keeps sending is still cut at its duration limit.
    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_is_cut_at_its_duration() {
        let (tx, body) = chan();
        let mut b = Limited::new(
            body,
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(3)),
        );
        let started = Instant::now();
        let mut frames = 0;
        let e = loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = tx.try_send(Ok(Frame::data(Bytes::from_static(b"x"))));
            match b.frame().await.unwrap() {
                Ok(_) => frames += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(e, LimitError::Duration(_)), "{e}");
        assert_eq!(frames, 5);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    /// No limits: frames and the end pass through untouched.
    #[tokio::test]
    async fn an_unlimited_body_passes_through() {
        let (tx, body) = chan();
        let mut b = Limited::plain(body);
        send(&tx).await;
        drop(tx);
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "x");
        assert!(b.frame().await.is_none());
    }
}
