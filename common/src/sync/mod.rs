//! The sync protocol as state machines, with no sockets and no clocks.
//!
//! Both streams (global -> zone, zone -> proxy) follow the same rules:
//! * The sender has at most one delta in flight. Changes made while it waits
//!   for the ACK are coalesced into the next delta.
//! * The receiver applies a delta whole or not at all, and answers ACK or
//!   NACK with a reason. After a NACK the sender does not resend the same
//!   content; it sends again when something changes.
//! * A delta that is not answered within the ack timeout means the peer is
//!   stuck: the I/O layer closes the stream and the peer reconnects, rather
//!   than letting sync stop silently.
//! * Global -> zone is revision based, so a reconnecting zone resumes from
//!   the last version it applied ([`DeltaSender`]). Zone -> proxy diffs the
//!   proxy's desired state against what it acknowledged ([`DiffSender`]).
//! * A delta is split into chunks by size; one resource is the bounded unit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyncError {
    #[error("peer acknowledged version {got}, but version {want:?} was in flight")]
    UnexpectedAck { got: u64, want: Option<u64> },
    #[error("peer has not answered version {version} for {waited:?}; closing the stream so it reconnects")]
    Stalled { version: u64, waited: Duration },
    #[error("chunk {got} of version {version} arrived out of order (expected {want})")]
    ChunkOrder { version: u64, got: u32, want: u32 },
}

/// What a revision-based sender should send next.
#[derive(Debug, PartialEq, Eq)]
pub enum Want {
    Nothing,
    /// Changes with revision greater than this.
    Since(u64),
    /// Everything, replacing the peer's state.
    Full,
}

#[derive(Debug)]
pub struct DeltaSender {
    acked: u64,
    in_flight: Option<(u64, Instant)>,
    last_nack: Option<(u64, String)>,
    ack_timeout: Duration,
}

impl DeltaSender {
    /// `resume_from` is the version the peer says it has applied (0: none).
    pub fn new(resume_from: u64, ack_timeout: Duration) -> Self {
        Self {
            acked: resume_from,
            in_flight: None,
            last_nack: None,
            ack_timeout,
        }
    }

    /// Decide what to send, given the source's current revision and the
    /// oldest revision it can still compute changes from.
    pub fn want(&self, current: u64, floor: u64) -> Want {
        if self.in_flight.is_some() {
            return Want::Nothing;
        }
        if matches!(&self.last_nack, Some((v, _)) if *v == current) {
            return Want::Nothing;
        }
        if self.acked == 0 || self.acked < floor || self.acked > current {
            if current == 0 && self.acked == 0 {
                return Want::Nothing;
            }
            return Want::Full;
        }
        if self.acked == current {
            return Want::Nothing;
        }
        Want::Since(self.acked)
    }

    pub fn sent(&mut self, version: u64, now: Instant) {
        self.in_flight = Some((version, now));
    }

    pub fn on_ack(&mut self, version: u64) -> Result<(), SyncError> {
        match self.in_flight {
            Some((v, _)) if v == version => {
                self.acked = v;
                self.in_flight = None;
                self.last_nack = None;
                Ok(())
            }
            other => Err(SyncError::UnexpectedAck {
                got: version,
                want: other.map(|x| x.0),
            }),
        }
    }

    pub fn on_nack(&mut self, version: u64, reason: String) -> Result<(), SyncError> {
        match self.in_flight {
            Some((v, _)) if v == version => {
                self.in_flight = None;
                self.last_nack = Some((version, reason));
                Ok(())
            }
            other => Err(SyncError::UnexpectedAck {
                got: version,
                want: other.map(|x| x.0),
            }),
        }
    }

    /// Fails when the in-flight delta has waited longer than the ack timeout.
    pub fn check(&self, now: Instant) -> Result<(), SyncError> {
        match self.in_flight {
            Some((version, sent)) if now.saturating_duration_since(sent) > self.ack_timeout => {
                Err(SyncError::Stalled {
                    version,
                    waited: now.saturating_duration_since(sent),
                })
            }
            _ => Ok(()),
        }
    }

    /// When the in-flight delta times out, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.in_flight.map(|(_, t)| t + self.ack_timeout)
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight.map(|x| x.0)
    }
    pub fn last_nack(&self) -> Option<&(u64, String)> {
        self.last_nack.as_ref()
    }
}

/// A delta in domain form.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta<V> {
    pub version: u64,
    pub full: bool,
    pub upserts: Vec<(String, V)>,
    pub removals: Vec<String>,
}

/// One chunk of a delta as it travels.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk<V> {
    pub version: u64,
    pub full: bool,
    pub chunk: u32,
    pub last: bool,
    pub upserts: Vec<(String, V)>,
    pub removals: Vec<String>,
}

/// Split a delta into chunks of at most `max_bytes` (by `size`), never
/// splitting one item. An empty delta is one empty chunk.
pub fn chunk<V>(d: Delta<V>, max_bytes: usize, size: impl Fn(&V) -> usize) -> Vec<Chunk<V>> {
    let mut chunks = Vec::new();
    let mut cur: Vec<(String, V)> = Vec::new();
    let mut cur_bytes = 0;
    for (k, v) in d.upserts {
        let s = size(&v) + k.len();
        if !cur.is_empty() && cur_bytes + s > max_bytes {
            chunks.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += s;
        cur.push((k, v));
    }
    chunks.push(cur);
    let n = chunks.len();
    let mut out: Vec<Chunk<V>> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, upserts)| Chunk {
            version: d.version,
            full: d.full,
            chunk: i as u32,
            last: i + 1 == n,
            upserts,
            removals: Vec::new(),
        })
        .collect();
    if let Some(last) = out.last_mut() {
        last.removals = d.removals;
    }
    out
}

/// The receiver's answer to a complete delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ack(u64),
    Nack(u64, String),
}

/// Receiver side: assembles chunks, validates, applies whole or not at all.
#[derive(Debug, Clone)]
pub struct DeltaReceiver<V> {
    version: u64,
    state: BTreeMap<String, V>,
    pending: Option<Chunk<V>>,
}

impl<V: Clone> DeltaReceiver<V> {
    pub fn new(version: u64, state: BTreeMap<String, V>) -> Self {
        Self {
            version,
            state,
            pending: None,
        }
    }

    /// Feed one chunk. Returns the outcome once the last chunk is in.
    /// `validate` returns the reason an item is refused.
    pub fn on_chunk(
        &mut self,
        c: Chunk<V>,
        validate: impl Fn(&str, &V) -> Result<(), String>,
    ) -> Result<Option<Outcome>, SyncError> {
        let mut p = if c.chunk == 0 {
            Chunk {
                upserts: Vec::new(),
                removals: Vec::new(),
                ..c.clone()
            }
        } else {
            match self.pending.take() {
                Some(p) if p.version == c.version && p.chunk + 1 == c.chunk => p,
                p => {
                    return Err(SyncError::ChunkOrder {
                        version: c.version,
                        got: c.chunk,
                        want: p.map(|p| p.chunk + 1).unwrap_or(0),
                    })
                }
            }
        };
        p.chunk = c.chunk;
        p.upserts.extend(c.upserts);
        p.removals.extend(c.removals);
        if !c.last {
            self.pending = Some(p);
            return Ok(None);
        }
        for (k, v) in &p.upserts {
            if let Err(why) = validate(k, v) {
                return Ok(Some(Outcome::Nack(p.version, format!("{k}: {why}"))));
            }
        }
        if p.full {
            self.state.clear();
        }
        for k in p.removals {
            self.state.remove(&k);
        }
        for (k, v) in p.upserts {
            self.state.insert(k, v);
        }
        self.version = p.version;
        Ok(Some(Outcome::Ack(p.version)))
    }

    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn state(&self) -> &BTreeMap<String, V> {
        &self.state
    }
}

/// Diff-based sender: sends what differs between the desired state and what
/// the peer acknowledged. The first delta is full.
///
/// States are shared (`Arc`): a zone hands every proxy with the same view
/// the same compiled map, so "nothing changed" is a pointer check and
/// remembering what is in flight copies nothing.
#[derive(Debug)]
pub struct DiffSender<V> {
    peer: Shared<V>,
    in_flight: Option<(u64, Shared<V>, Instant)>,
    nacked: Option<(Shared<V>, u64, String)>,
    next_version: u64,
    started: bool,
    ack_timeout: Duration,
}

/// A keyed state, shared.
pub type Shared<V> = Arc<BTreeMap<String, V>>;

/// The same state: the same map, or an equal one.
fn same<V: PartialEq>(a: &Shared<V>, b: &Shared<V>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl<V: Clone + PartialEq> DiffSender<V> {
    pub fn new(ack_timeout: Duration) -> Self {
        Self {
            peer: Arc::default(),
            in_flight: None,
            nacked: None,
            next_version: 1,
            started: false,
            ack_timeout,
        }
    }

    /// The next delta to send toward `desired`, if any.
    pub fn next(&mut self, desired: &Arc<BTreeMap<String, V>>, now: Instant) -> Option<Delta<V>> {
        if self.in_flight.is_some() {
            return None;
        }
        if self.started && same(desired, &self.peer) {
            return None;
        }
        if matches!(&self.nacked, Some((d, _, _)) if same(d, desired)) {
            return None;
        }
        let full = !self.started;
        let upserts: Vec<(String, V)> = desired
            .iter()
            .filter(|(k, v)| full || self.peer.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let removals: Vec<String> = if full {
            Vec::new()
        } else {
            self.peer
                .keys()
                .filter(|k| !desired.contains_key(*k))
                .cloned()
                .collect()
        };
        let version = self.next_version;
        self.next_version += 1;
        self.started = true;
        self.in_flight = Some((version, desired.clone(), now));
        Some(Delta {
            version,
            full,
            upserts,
            removals,
        })
    }

    pub fn on_ack(&mut self, version: u64) -> Result<(), SyncError> {
        match self.in_flight.take() {
            Some((v, state, _)) if v == version => {
                self.peer = state;
                self.nacked = None;
                Ok(())
            }
            other => {
                let want = other.as_ref().map(|x| x.0);
                self.in_flight = other;
                Err(SyncError::UnexpectedAck { got: version, want })
            }
        }
    }

    pub fn on_nack(&mut self, version: u64, reason: String) -> Result<(), SyncError> {
        match self.in_flight.take() {
            Some((v, state, _)) if v == version => {
                if self.peer.is_empty() && v == 1 {
                    // The first (full) delta was refused: the next is full again.
                    self.started = false;
                }
                self.nacked = Some((state, v, reason));
                Ok(())
            }
            other => {
                let want = other.as_ref().map(|x| x.0);
                self.in_flight = other;
                Err(SyncError::UnexpectedAck { got: version, want })
            }
        }
    }

    pub fn check(&self, now: Instant) -> Result<(), SyncError> {
        match &self.in_flight {
            Some((version, _, sent)) if now.saturating_duration_since(*sent) > self.ack_timeout => {
                Err(SyncError::Stalled {
                    version: *version,
                    waited: now.saturating_duration_since(*sent),
                })
            }
            _ => Ok(()),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.in_flight
            .as_ref()
            .map(|(_, _, t)| *t + self.ack_timeout)
    }
    pub fn last_nack(&self) -> Option<(u64, &str)> {
        self.nacked.as_ref().map(|(_, v, r)| (*v, r.as_str()))
    }
    pub fn acked_state(&self) -> &BTreeMap<String, V> {
        &self.peer
    }
}

/// Exponential backoff with full jitter drawn from `rand01` in [0, 1).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }
    pub fn next_delay(&mut self, rand01: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let cap = exp.min(self.max);
        // Half fixed, half jitter: never zero, never a thundering herd.
        cap / 2 + cap.mul_f64(rand01.clamp(0.0, 1.0) / 2.0)
    }
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Reconnecting to a control plane: 100 ms doubling to at most this, and
/// back to 100 ms once a session is established. A short cap matters more
/// than a long one spares the server: after an outage of any length, every
/// client is back within this of the server's return (jittered over its
/// second half, so they do not all arrive at once).
pub const RECONNECT_MAX: Duration = Duration::from_secs(3);

impl Backoff {
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(100), RECONNECT_MAX)
    }
}

/// A cheap non-cryptographic jitter source.
pub fn jitter() -> f64 {
    use std::time::SystemTime;
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (n % 1000) as f64 / 1000.0
}

#[cfg(test)]
mod tests;
