//! The circuit breaker's limits for one destination (`CircuitBreaker`
//! `limits`): connections open to it, requests waiting for their response
//! head, requests queued for one of those places, and retries in progress.
//! A place is taken by a guard and given back when the guard drops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proto::v1 as pb;

/// The default of each limit.
pub const DEFAULT_MAX: u32 = 1024;

#[derive(Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_requests: usize,
    pub max_pending: usize,
    pub max_retries: usize,
    /// Requests waiting for their response head.
    requests: tokio::sync::Semaphore,
    pending: AtomicUsize,
    retries_active: AtomicUsize,
    connections: Arc<AtomicUsize>,
}

impl Limits {
    pub fn new(b: &pb::CircuitBreaker) -> Self {
        let max_requests = nonzero_or(b.max_requests, DEFAULT_MAX);
        Self {
            max_connections: nonzero_or(b.max_connections, DEFAULT_MAX),
            max_requests,
            max_pending: given_or(b.max_pending_given, b.max_pending_requests, DEFAULT_MAX),
            max_retries: given_or(b.max_retries_given, b.max_retries, DEFAULT_MAX),
            requests: tokio::sync::Semaphore::new(max_requests),
            pending: AtomicUsize::new(0),
            retries_active: AtomicUsize::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The same limits (counts aside).
    pub fn same(&self, o: &Limits) -> bool {
        self.max_connections == o.max_connections
            && self.max_requests == o.max_requests
            && self.max_pending == o.max_pending
            && self.max_retries == o.max_retries
    }

    /// A place among the requests waiting for their head, queueing for one
    /// when all are taken and the queue has room. `Err`: the limit that
    /// refused it.
    pub async fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, &'static str> {
        if let Ok(p) = self.requests.try_acquire() {
            return Ok(p);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(if self.max_pending == 0 {
                "max-requests"
            } else {
                "max-pending-requests"
            });
        }
        // Given back however the wait ends: with a place, or dropped because
        // the request timed out or its caller went away.
        let _queued = Slot(&self.pending);
        self.requests.acquire().await.map_err(|_| "max-requests")
    }

    /// A retry's place among those in progress, if there is room.
    pub fn retry_slot(&self) -> Option<Slot<'_>> {
        if self.retries_active.fetch_add(1, Ordering::AcqRel) >= self.max_retries {
            self.retries_active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(&self.retries_active))
    }

    /// A connection's place among those open to the destination, if there
    /// is room; held as long as the connection.
    pub fn connection_slot(&self) -> Option<ConnSlot> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnSlot(self.connections.clone()))
    }

    /// Requests waiting for their head now (for /config_dump).
    pub fn in_flight(&self) -> usize {
        self.max_requests
            .saturating_sub(self.requests.available_permits())
    }

    /// Connections open now (for /config_dump).
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// A retry in progress; released on drop.
pub struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open connection, counted against its destination; released on drop.
#[derive(Debug)]
pub struct ConnSlot(Arc<AtomicUsize>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn nonzero_or(v: u32, default: u32) -> usize {
    if v == 0 {
        default as usize
    } else {
        v as usize
    }
}

fn given_or(given: bool, v: u32, default: u32) -> usize {
    if given {
        v as usize
    } else {
        default as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests past `maxRequests` queue up to `maxPendingRequests`, then
    /// are refused, naming the limit; retries and connections stop at
    /// theirs; every place comes back when dropped.
    #[tokio::test]
    async fn limits_refuse_past_their_maximum_and_release_on_drop() {
        use std::future::Future;
        let r = Limits::new(&pb::CircuitBreaker {
            max_requests: 1,
            max_pending_given: true,
            max_pending_requests: 1,
            max_retries_given: true,
            max_retries: 1,
            max_connections: 1,
            ..Default::default()
        });
        let first = r.admit().await.unwrap();
        assert_eq!(r.in_flight(), 1);
        // The second waits in the queue; a third finds the queue full.
        let queued = r.admit();
        tokio::pin!(queued);
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(queued.as_mut().poll(&mut cx).is_pending());
        assert_eq!(r.admit().await.unwrap_err(), "max-pending-requests");
        drop(first);
        let second = queued.await.unwrap();
        drop(second);
        assert_eq!(r.in_flight(), 0);

        let retry = r.retry_slot().unwrap();
        assert!(r.retry_slot().is_none());
        drop(retry);
        assert!(r.retry_slot().is_some());

        let conn = r.connection_slot().unwrap();
        assert!(r.connection_slot().is_none());
        assert_eq!(r.open_connections(), 1);
        drop(conn);
        assert!(r.connection_slot().is_some());

        // No queue: the limit itself is named.
        let r = Limits::new(&pb::CircuitBreaker {
            max_requests: 1,
            max_pending_given: true,
            max_pending_requests: 0,
            ..Default::default()
        });
        let _held = r.admit().await.unwrap();
        assert_eq!(r.admit().await.unwrap_err(), "max-requests");
    }

    /// A request that leaves the queue without a place (its timeout fired,
    /// or its caller went away) gives its queue place back: the next
    /// request queues instead of being refused as if the queue were full.
    #[tokio::test]
    async fn a_request_dropped_while_queued_gives_its_queue_place_back() {
        use std::future::Future;
        let r = Limits::new(&pb::CircuitBreaker {
            max_requests: 1,
            max_pending_given: true,
            max_pending_requests: 1,
            ..Default::default()
        });
        let _first = r.admit().await.unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for _ in 0..3 {
            let queued = r.admit();
            tokio::pin!(queued);
            assert!(queued.as_mut().poll(&mut cx).is_pending(), "queues");
        }
        assert_eq!(r.pending.load(Ordering::Relaxed), 0);
    }

    /// Nothing given: 1024 of each.
    #[test]
    fn limits_default_to_1024() {
        let r = Limits::new(&pb::CircuitBreaker::default());
        assert_eq!(
            (
                r.max_connections,
                r.max_requests,
                r.max_pending,
                r.max_retries
            ),
            (1024, 1024, 1024, 1024)
        );
    }
}
