//! The proxies' random source for picks and shares.

use std::sync::atomic::{AtomicU64, Ordering};

/// A lock-free random source for picks (xorshift64*, seeded from the OS);
/// its quality is ample for spreading load. Concurrent callers may now and
/// then get the same value, which costs nothing here.
#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    pub fn new() -> Self {
        Self(AtomicU64::new(os_seed() | 1))
    }

    pub fn next_u64(&self) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True for `per_million` of the calls.
    pub fn hit(&self, per_million: u32) -> bool {
        per_million >= 1_000_000 || (self.next_u64() >> 11) % 1_000_000 < per_million as u64
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh random seed: std's hash keys come from the OS once per thread
/// and advance on every call. Sidecars given the same config therefore
/// pick independently, not in lockstep.
fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}
