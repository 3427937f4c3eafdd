//! Choosing one endpoint within a locality tier, by the destination's
//! `LoadBalancer` algorithm: weighted random (the default), weighted round
//! robin, least request (the less busy of two weighted-random picks), or a
//! ring hash on a request key. The tiers and their spill-over are in
//! `balance.rs`; this file only chooses among a tier's endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use model::policy::balancer::Algorithm;

use crate::balance::{Endpoint, Rng};

/// Points per unit of weight on the ring, and the most points in all.
const POINTS_PER_WEIGHT: usize = 100;
const MAX_POINTS: usize = 65_536;

/// A hash ring over a tier's endpoints: each endpoint holds points in
/// proportion to its weight, placed by hashing its authority, so adding or
/// removing one endpoint moves only the keys next to its points.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(eps: &[Arc<Endpoint>]) -> Self {
        let total: usize = eps.iter().map(|e| e.weight.max(1) as usize).sum();
        let per = (MAX_POINTS / total.max(1)).clamp(1, POINTS_PER_WEIGHT);
        let mut points = Vec::with_capacity(total * per);
        for (i, e) in eps.iter().enumerate() {
            for k in 0..e.weight.max(1) as usize * per {
                points.push((hash_str(&format!("{}#{k}", e.authority)), i as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint at `key`: the first point at or after it (wrapping)
    /// whose endpoint `ok` accepts.
    pub fn lookup(&self, key: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|p| p.0 < key);
        let n = self.points.len();
        let mut refused: Vec<u32> = Vec::new();
        for step in 0..n {
            let idx = self.points[(start + step) % n].1;
            if refused.contains(&idx) {
                continue;
            }
            if ok(idx as usize) {
                return Some(idx as usize);
            }
            refused.push(idx);
        }
        None
    }
}

/// FNV-1a, then a finalizer to spread the bits (keys and ring points).
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Choose among `eps` (one tier) those `up` accepts.
pub fn choose<'a>(
    algorithm: Algorithm,
    eps: &'a [Arc<Endpoint>],
    up: impl Fn(&Arc<Endpoint>) -> bool,
    rng: &Rng,
    turn: &AtomicUsize,
    ring: Option<&Ring>,
    key: Option<u64>,
) -> Option<&'a Arc<Endpoint>> {
    if let (Algorithm::RingHash, Some(ring), Some(key)) = (algorithm, ring, key) {
        return ring.lookup(key, |i| up(&eps[i])).map(|i| &eps[i]);
    }
    let total: u64 = eps
        .iter()
        .filter(|e| up(e))
        .map(|e| e.weight.max(1) as u64)
        .sum();
    if total == 0 {
        return None;
    }
    let at = |mut x: u64| {
        let mut last = None;
        for e in eps.iter().filter(|e| up(e)) {
            let w = e.weight.max(1) as u64;
            if x < w {
                return Some(e);
            }
            x -= w;
            last = Some(e);
        }
        last
    };
    let random = || (rng.next_u64() >> 11) % total;
    match algorithm {
        Algorithm::RoundRobin => at(turn.fetch_add(1, Ordering::Relaxed) as u64 % total),
        Algorithm::LeastRequest => {
            let a = at(random())?;
            let b = at(random())?;
            // Fewer requests in progress per unit of weight wins.
            let load = |e: &Endpoint| e.active() as u64 * 1000 / e.weight.max(1) as u64;
            Some(if load(b) < load(a) { b } else { a })
        }
        // A ring hash with no key (the request lacks it) picks at random.
        Algorithm::Random | Algorithm::RingHash => at(random()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(
        alg: Algorithm,
        eps: &[Arc<Endpoint>],
        n: usize,
        key: impl Fn(usize) -> Option<u64>,
        ring: Option<&Ring>,
    ) -> Vec<usize> {
        let (rng, turn) = (Rng::new(), AtomicUsize::new(0));
        let mut c = vec![0; eps.len()];
        for i in 0..n {
            let e = choose(alg, eps, |_| true, &rng, &turn, ring, key(i)).unwrap();
            c[eps.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()] += 1;
        }
        c
    }

    /// Round robin gives each endpoint exactly its weight's share of every
    /// full turn.
    #[test]
    fn weighted_round_robin_is_exact_over_each_turn() {
        let eps = crate::balance::test_endpoints(&[1, 2, 3]);
        assert_eq!(
            counts(Algorithm::RoundRobin, &eps, 600, |_| None, None),
            [100, 200, 300]
        );
    }

    /// Random follows the weights within a few percent over 60,000 picks.
    #[test]
    fn weighted_random_follows_the_weights() {
        let eps = crate::balance::test_endpoints(&[1, 3]);
        let c = counts(Algorithm::Random, &eps, 60_000, |_| None, None);
        let share = c[1] as f64 / 60_000.0;
        assert!((share - 0.75).abs() < 0.02, "{c:?}");
    }

    /// Least request: with one endpoint busy, nearly everything goes to
    /// the idle ones (only when both draws hit the busy one does it win:
    /// 1/9 of picks with three endpoints).
    #[test]
    fn least_request_prefers_the_less_busy_endpoint() {
        let eps = crate::balance::test_endpoints(&[1, 1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].start_request()).collect();
        let c = counts(Algorithm::LeastRequest, &eps, 9_000, |_| None, None);
        assert!(c[0] < 1_300, "{c:?}");
        assert!(c[1] > 3_300 && c[2] > 3_300, "{c:?}");
    }

    /// The same key lands on the same endpoint; the keys spread over all
    /// of them; removing one endpoint moves only the keys it held.
    #[test]
    fn a_ring_hash_keeps_keys_in_place_and_moves_few_when_an_endpoint_goes() {
        let eps = crate::balance::test_endpoints(&[1, 1, 1, 1]);
        let ring = Ring::new(&eps);
        let (rng, turn) = (Rng::new(), AtomicUsize::new(0));
        let at = |k: u64, up: &dyn Fn(&Arc<Endpoint>) -> bool| {
            let e = choose(
                Algorithm::RingHash,
                &eps,
                up,
                &rng,
                &turn,
                Some(&ring),
                Some(k),
            )
            .unwrap();
            eps.iter().position(|x| Arc::ptr_eq(x, e)).unwrap()
        };
        let keys: Vec<u64> = (0..2000).map(|i| hash_str(&format!("user-{i}"))).collect();
        let before: Vec<usize> = keys.iter().map(|k| at(*k, &|_| true)).collect();
        for (k, b) in keys.iter().zip(&before) {
            assert_eq!(at(*k, &|_| true), *b, "stable");
        }
        let mut per = [0usize; 4];
        for b in &before {
            per[*b] += 1;
        }
        assert!(per.iter().all(|n| *n > 300), "spread: {per:?}");
        // Endpoint 2 goes: only its keys move.
        let gone = eps[2].clone();
        let after: Vec<usize> = keys
            .iter()
            .map(|k| at(*k, &|e: &Arc<Endpoint>| !Arc::ptr_eq(e, &gone)))
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(a, b, "a key not on the removed endpoint stayed");
            } else {
                assert_ne!(*a, 2);
            }
        }
    }
}
