//! Cron schedules in a time zone, and blackout windows: when a drill may
//! start on its own, and when none may start at all.
//!
//! Five fields (minute, hour, day of month, month, day of week), each a
//! list of `*`, `N`, `A-B`, with an optional `/STEP`; months and days may
//! be named (`jan`, `mon`). As in Vixie cron, when both day fields are
//! restricted a day matching either one matches. Times are civil times in
//! the schedule's IANA time zone (default UTC): a time a DST change skips
//! fires as much later as the clock jumped (02:30 becomes 03:30), and a
//! time it repeats fires once, the first time.

use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// How far ahead a schedule is searched for its next time.
const HORIZON_DAYS: u32 = 366 * 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field as a bit set of `lo..=hi`; `names` map to `lo + index`.
fn field(s: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let value = |v: &str| -> Result<u32, String> {
        let l = v.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == l) {
            return Ok(lo + i as u32);
        }
        let n: u32 = v
            .parse()
            .map_err(|_| format!("{what}: {v:?} is not a number or a name"))?;
        // Sunday may be written 7.
        let n = if what == "day of week" && n == 7 {
            0
        } else {
            n
        };
        if n < lo || n > hi {
            return Err(format!("{what}: {n} is outside {lo}-{hi}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for item in s.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st
                    .parse()
                    .ok()
                    .filter(|x| *x > 0)
                    .ok_or_else(|| format!("{what}: bad step in {item:?}"))?;
                (r, st)
            }
            None => (item, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            (a, if step > 1 { hi } else { a })
        };
        if a > b {
            return Err(format!("{what}: range {item:?} runs backwards"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, s == "*"))
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "{expr:?}: give five fields (minute hour day-of-month month day-of-week), like \"0 10 * * mon\""
            ));
        }
        let (minutes, _) = field(f[0], "minute", 0, 59, &[])?;
        let (hours, _) = field(f[1], "hour", 0, 23, &[])?;
        let (days, days_any) = field(f[2], "day of month", 1, 31, &[])?;
        let (months, _) = field(f[3], "month", 1, 12, MONTHS)?;
        let (weekdays, weekdays_any) = field(f[4], "day of week", 0, 7, WEEKDAYS)?;
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_any,
            weekdays_any,
        })
    }

    fn day_matches(&self, d: jiff::civil::Date) -> bool {
        if self.months & (1 << d.month() as u16) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day() as u32) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset() as u8) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first time after `after` this schedule names, in `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = after.to_zoned(tz.clone()).datetime();
        let mut date = local.date();
        for _ in 0..HORIZON_DAYS {
            if self.day_matches(date) {
                for h in 0..24i8 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    for m in 0..60i8 {
                        if self.minutes & (1 << m) == 0 {
                            continue;
                        }
                        let dt = DateTime::from_parts(date, Time::new(h, m, 0, 0).ok()?);
                        let Ok(z) = tz.to_zoned(dt) else { continue };
                        let t = z.timestamp();
                        if t > after {
                            return Some(t);
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// An IANA time zone by name ("UTC" when empty).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name)
        .map_err(|_| format!("unknown time zone {name:?}; use an IANA name like Europe/Berlin"))
}

pub fn from_unix_ms(ms: u64) -> Timestamp {
    Timestamp::from_millisecond(ms as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub fn to_unix_ms(t: Timestamp) -> u64 {
    t.as_millisecond().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        let c = Cron::parse("*/15 9-17 * jan,jul mon-fri").unwrap();
        assert_eq!(c.minutes, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(c.months, 1 << 1 | 1 << 7);
        assert_eq!(c.weekdays, 0b0111110);
        assert_eq!(Cron::parse("0 0 * * 7").unwrap().weekdays, 1);
        for bad in [
            "* * * *",
            "60 * * * *",
            "5-1 * * * *",
            "*/0 * * * *",
            "0 0 * * funday",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_times_follow_the_time_zone_and_its_dst_changes() {
        let utc = TimeZone::UTC;
        let c = Cron::parse("0 10 * * mon").unwrap();
        // 2026-12-07 is a Monday.
        assert_eq!(
            c.next_after(ts("2026-12-07T09:00:00Z"), &utc),
            Some(ts("2026-12-07T10:00:00Z"))
        );
        assert_eq!(
            c.next_after(ts("2026-12-07T10:00:00Z"), &utc),
            Some(ts("2026-12-14T10:00:00Z"))
        );
        let berlin = time_zone("Europe/Berlin").unwrap();
        // 10:00 in Berlin is 09:00 UTC in winter...
        assert_eq!(
            c.next_after(ts("2026-12-07T00:00:00Z"), &berlin),
            Some(ts("2026-12-07T09:00:00Z"))
        );
        // ...and 08:00 UTC in summer.
        assert_eq!(
            c.next_after(ts("2026-06-01T00:00:00Z"), &berlin),
            Some(ts("2026-06-01T08:00:00Z"))
        );
        // 02:30 does not exist on 2026-03-29 in Berlin: the first minute
        // after the gap.
        let c = Cron::parse("30 2 29 3 *").unwrap();
        assert_eq!(
            c.next_after(ts("2026-03-28T00:00:00Z"), &berlin),
            Some(ts("2026-03-29T01:30:00Z"))
        );
        // Day of month or day of week, when both are given.
        let c = Cron::parse("0 0 1 * fri").unwrap();
        assert_eq!(
            c.next_after(ts("2026-12-07T00:00:00Z"), &utc),
            Some(ts("2026-12-11T00:00:00Z"))
        );
        assert!(time_zone("Mars/Olympus").is_err());
    }
}
