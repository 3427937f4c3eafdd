//! When traffic reports go up: on wall-clock boundaries, the same for every
//! proxy and zone. A proxy reports at each boundary that is a multiple of
//! its cadence (every 5 s; every second while a drill runs); its zone
//! control plane takes its sums a little after the same boundaries. So a
//! zone's interval holds exactly its proxies' reports for that interval,
//! and a rate (counts over the zone's interval) is the rate of that time,
//! not a 5 s report counted in a 1 s interval (which read 2-5x the rate
//! when the cadence changed) or two 1 s reports in one. This holds while
//! a proxy's report reaches its zone within the zone's offset after the
//! boundary (0.3 s), clock skew included: keep the hosts' clocks in sync
//! (NTP). A later report is counted in the next interval; totals stay
//! exact either way, only that interval's rate is off.

use std::time::{Duration, SystemTime};

/// Ticks fall on whole seconds (plus an offset).
const TICK_MS: u64 = 1000;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The unix ms of the first tick after `now_ms`: a whole second plus
/// `offset_ms`.
pub fn next_tick(now_ms: u64, offset_ms: u64) -> u64 {
    (now_ms.saturating_sub(offset_ms) / TICK_MS + 1) * TICK_MS + offset_ms
}

/// The boundary (unix seconds) that a tick at `now_ms` stands for.
pub fn boundary(now_ms: u64, offset_ms: u64) -> u64 {
    now_ms.saturating_sub(offset_ms) / TICK_MS
}

/// Whether a report with cadence `every` (whole seconds, at least one) is
/// due at boundary `secs`.
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` is newer than rust-version
pub fn due(secs: u64, every: Duration) -> bool {
    secs % every.as_secs().max(1) == 0
}

/// Sleep until the next tick whose boundary is not `last` (the one the
/// previous tick stood for; 0 at first); that boundary. A clock stepped
/// back by less than a second would otherwise give the same boundary
/// twice; one stepped back further gives an earlier boundary, and
/// reporting goes on from there.
pub async fn tick_after(offset: Duration, last: u64) -> u64 {
    let offset_ms = offset.as_millis() as u64;
    loop {
        let now = unix_ms(SystemTime::now());
        let at = next_tick(now, offset_ms);
        tokio::time::sleep(Duration::from_millis(at - now)).await;
        // Woken late (a busy machine) still counts for the boundary it
        // was for; woken "early" (the clock stepped back), too.
        let b = boundary(unix_ms(SystemTime::now()).max(at), offset_ms);
        if b != last {
            return b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_whole_seconds_plus_the_offset() {
        assert_eq!(next_tick(10_000, 0), 11_000);
        assert_eq!(next_tick(10_999, 0), 11_000);
        assert_eq!(next_tick(10_100, 300), 10_300);
        assert_eq!(next_tick(10_300, 300), 11_300);
        assert_eq!(next_tick(10_299, 300), 10_300);
        assert_eq!(boundary(10_300, 300), 10);
        assert_eq!(boundary(11_299, 300), 10);
    }

    #[test]
    fn five_second_boundaries_are_also_one_second_boundaries() {
        let five = Duration::from_secs(5);
        let one = Duration::from_secs(1);
        let due5: Vec<u64> = (0..12).filter(|s| due(*s, five)).collect();
        assert_eq!(due5, vec![0, 5, 10]);
        assert!((0..12).all(|s| due(s, one)));
        // A cadence under a second reports every second.
        assert!(due(7, Duration::from_millis(300)));
    }

    /// A proxy and its zone on the same clock: when the proxy reports at
    /// least as often as its zone, each zone interval covers exactly the
    /// time of the proxy reports in it (the zone switches to the faster
    /// cadence only once its proxies have; `zone-cp`'s `global_client.rs`).
    #[test]
    fn a_zone_interval_covers_what_its_proxy_reports_cover() {
        for (proxy, zone) in [(1, 1), (1, 5), (5, 5)] {
            let (proxy_every, zone_every) = (Duration::from_secs(proxy), Duration::from_secs(zone));
            let (mut last_proxy, mut zone_start, mut covered) = (0, 0, 0);
            for secs in 1..=20 {
                if due(secs, proxy_every) {
                    covered += secs - last_proxy;
                    last_proxy = secs;
                }
                // The zone ticks after the same boundary.
                if due(secs, zone_every) {
                    assert_eq!(covered, secs - zone_start, "{proxy}/{zone} s at {secs}");
                    covered = 0;
                    zone_start = secs;
                }
            }
        }
    }
}
