//! The retry budget of one destination: over a sliding window of 10
//! one-second slots, retries may be at most a share of the requests plus a
//! floor per second, so retries cannot multiply an outage. Time is passed
//! in, so the window is tested under simulated instants.

use std::sync::Mutex;
use std::time::Instant;

/// The retry budget: over a sliding window of 10 one-second slots, retries
/// may be at most `percent` of the requests plus `min_per_second` per
/// second. Every request deposits; every retry withdraws or is refused.
#[derive(Debug)]
pub struct Budget {
    pub percent: f64,
    pub min_per_second: u32,
    slots: Mutex<Window>,
}

const SLOTS: usize = 10;

#[derive(Debug)]
struct Window {
    /// Start of slot 0's second.
    start: Instant,
    /// Seconds since `start` of the newest slot.
    newest: u64,
    requests: [u64; SLOTS],
    retries: [u64; SLOTS],
}

impl Window {
    /// Move the window to `now`, clearing slots that fell out of it.
    fn advance(&mut self, now: Instant) -> usize {
        let sec = now.saturating_duration_since(self.start).as_secs();
        if sec > self.newest {
            let gap = (sec - self.newest).min(SLOTS as u64);
            for k in 1..=gap {
                let i = ((self.newest + k) % SLOTS as u64) as usize;
                self.requests[i] = 0;
                self.retries[i] = 0;
            }
            self.newest = sec;
        }
        (self.newest % SLOTS as u64) as usize
    }
}

impl Budget {
    pub fn new(percent: f64, min_per_second: u32) -> Self {
        Self {
            percent,
            min_per_second,
            slots: Mutex::new(Window {
                start: Instant::now(),
                newest: 0,
                requests: [0; SLOTS],
                retries: [0; SLOTS],
            }),
        }
    }

    /// A request was sent (its first attempt).
    pub fn deposit(&self, now: Instant) {
        let mut w = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let i = w.advance(now);
        w.requests[i] += 1;
    }

    /// May a retry be sent now? Counts it when yes.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut w = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let i = w.advance(now);
        let requests: u64 = w.requests.iter().sum();
        let retries: u64 = w.retries.iter().sum();
        let allowed =
            self.min_per_second as f64 * SLOTS as f64 + requests as f64 * self.percent / 100.0;
        if (retries + 1) as f64 <= allowed {
            w.retries[i] += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Under simulated time: with 100 requests in the window, 20% and 1/s
    /// allow 20 + 10 retries; then none until requests or time add room;
    /// slots older than 10 s stop counting.
    #[test]
    fn the_budget_allows_a_share_of_requests_plus_a_floor_over_ten_seconds() {
        let b = Budget::new(20.0, 1);
        let t0 = b.slots.lock().unwrap().start;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..100 {
            b.deposit(at(0));
        }
        let granted = (0..100).filter(|_| b.withdraw(at(500))).count();
        assert_eq!(granted, 30);
        assert!(!b.withdraw(at(9_900)), "still inside the window");
        // Five more requests make room for one retry.
        for _ in 0..5 {
            b.deposit(at(9_900));
        }
        assert!(b.withdraw(at(9_900)));
        assert!(!b.withdraw(at(9_900)));
        // At 10.5 s, second 0 (100 requests, 30 retries) has left the
        // window: 5 requests and 1 retry remain, so 10 + 1 - 1 = 10 more.
        let later = (0..100).filter(|_| b.withdraw(at(10_500))).count();
        assert_eq!(later, 10);
        // Long after, only the floor.
        let much_later = (0..100).filter(|_| b.withdraw(at(60_000))).count();
        assert_eq!(much_later, 10);
    }

    /// A budget with no floor and no share refuses every retry.
    #[test]
    fn a_zero_budget_refuses_all_retries() {
        let b = Budget::new(0.0, 0);
        let now = Instant::now();
        for _ in 0..1000 {
            b.deposit(now);
        }
        assert!(!b.withdraw(now));
    }
}
