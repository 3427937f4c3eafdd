//! `Drill`: a planned failover drill, and `DrillRun`, what a running one
//! asks the zones to do.
//!
//! ```yaml
//! kind: Drill
//! metadata: {name: api-eu-west-1}
//! spec:
//!   target:
//!     zone: eu-west-1        # or region: eu, or link: [eu-west-1, us-east-1]
//!     services: [api]        # optional: only these services there
//!   method: blackhole        # drain | blackhole | partition
//!   stages:                  # share of the target's traffic, each held a while
//!     - {percent: 10, hold: 30s}
//!     - {percent: 100, hold: 2m}
//!   guard:                   # a breach held `for` aborts the drill
//!     for: 10s
//!     slos:
//!       - {service: api, maxErrorRate: 1, maxP99: 300ms}
//!   deadline: 10m            # zones restore on their own by then
//!   observe: {before: 60s, after: 60s}
//!   schedule: {cron: "0 10 * * tue", timeZone: Europe/Dublin}
//!   blackouts:               # no start inside these (scheduled or not)
//!     - {start: "2026-12-24T00:00:00Z", end: "2027-01-02T00:00:00Z"}
//!     - {cron: "0 17 * * fri", duration: 64h, timeZone: Europe/Dublin}
//!   capacity:                # what one instance can take, for preflight
//!     - {service: api, perInstanceRps: 200}
//! ```
//!
//! A `Drill` is written by users; a `DrillRun` only by the global's drill
//! controller, while a run is in progress (one at a time, named after the
//! drill). Zones read the `DrillRun` and apply it until its deadline,
//! even when they lose contact with the global.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use jiff::Timestamp;

use crate::resource::{check_name, Dur, FieldError};
use crate::schedule::{from_unix_ms, time_zone, to_unix_ms, Cron};

/// The longest a drill may run before zones restore on their own.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);
pub const MAX_STAGES: usize = 10;
pub const MAX_SLOS: usize = 50;
pub const MAX_SERVICES: usize = 50;
/// How long a guard breach holds before the drill aborts, by default.
pub const DEFAULT_GUARD_FOR: Duration = Duration::from_secs(10);
/// The fewest requests in the guard's window for an error rate to count.
pub const DEFAULT_MIN_REQUESTS: u64 = 10;
/// How far past the last stage the deadline lies, by default.
pub const DEFAULT_DEADLINE_SLACK: Duration = Duration::from_secs(120);
pub const DEFAULT_OBSERVE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DrillSpec {
    pub target: Target,
    pub method: Method,
    pub stages: Vec<Stage>,
    pub guard: Guard,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Dur>,
    #[serde(default)]
    pub observe: Observe,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blackouts: Vec<Blackout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capacity: Vec<Capacity>,
}

/// When the drill starts on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Schedule {
    pub cron: String,
    /// IANA name; default UTC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time_zone: String,
}

/// A window in which the drill may not start: fixed (`start`, `end`, RFC
/// 3339) or recurring (`duration` from each time `cron` names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Blackout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time_zone: String,
}

/// What one healthy instance of a service can serve; preflight checks that
/// the instances outside the target can take the service's observed rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Capacity {
    pub service: String,
    pub per_instance_rps: f64,
}

impl Schedule {
    /// The first start after `after_ms` (unix ms).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let cron = Cron::parse(&self.cron).ok()?;
        let tz = time_zone(&self.time_zone).ok()?;
        cron.next_after(from_unix_ms(after_ms), &tz).map(to_unix_ms)
    }
}

impl Blackout {
    /// The window holding `now_ms`, described, if any.
    pub fn holds(&self, now_ms: u64) -> Option<String> {
        let now = from_unix_ms(now_ms);
        if let (Some(s), Some(e)) = (&self.start, &self.end) {
            let (a, b): (Timestamp, Timestamp) = (s.parse().ok()?, e.parse().ok()?);
            return (a <= now && now < b).then(|| format!("{s} to {e}"));
        }
        let (cron, d) = (Cron::parse(self.cron.as_deref()?).ok()?, self.duration?);
        let tz = time_zone(&self.time_zone).ok()?;
        let back = now_ms.saturating_sub(d.0.as_millis() as u64);
        let began = cron.next_after(from_unix_ms(back), &tz)?;
        (began <= now).then(|| {
            format!(
                "{} for {} from {}",
                self.cron.as_deref().unwrap_or_default(),
                humantime::format_duration(d.0),
                began
            )
        })
    }

    fn check(&self, p: &str) -> Result<(), FieldError> {
        match (&self.start, &self.end, &self.cron, &self.duration) {
            (Some(s), Some(e), None, None) => {
                let parse = |f: &str, v: &str| {
                    v.parse::<Timestamp>().map_err(|_| {
                        FieldError::new(
                            format!("{p}.{f}"),
                            format!("{v:?} is not an RFC 3339 time like 2026-12-24T00:00:00Z"),
                        )
                    })
                };
                if parse("start", s)? >= parse("end", e)? {
                    return Err(FieldError::new(format!("{p}.end"), "must be after start"));
                }
            }
            (None, None, Some(c), Some(d)) => {
                Cron::parse(c).map_err(|e| FieldError::new(format!("{p}.cron"), e))?;
                if d.0.is_zero() {
                    return Err(FieldError::new(
                        format!("{p}.duration"),
                        "must be more than 0",
                    ));
                }
            }
            _ => {
                return Err(FieldError::new(
                    p,
                    "give start and end, or cron and duration",
                ))
            }
        }
        time_zone(&self.time_zone).map_err(|e| FieldError::new(format!("{p}.timeZone"), e))?;
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Two zones: the link between them (method `partition` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<String>,
    /// Only these services in the zone or region; none: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The control planes withdraw the target's endpoints from callers.
    Drain,
    /// The target's sidecars and gateways refuse its traffic, so callers'
    /// own detection (health checks, outlier detection, retries) acts.
    Blackhole,
    /// The two zones' gateways stop carrying flows between them.
    Partition,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Drain => "drain",
            Method::Blackhole => "blackhole",
            Method::Partition => "partition",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Stage {
    /// Share of the target's traffic affected, 1 to 100.
    pub percent: f64,
    pub hold: Dur,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Guard {
    /// How long a breach must hold before the drill aborts.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<Dur>,
    /// Fewer requests than this in the guard's window: no error-rate verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    pub slos: Vec<Slo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Slo {
    pub service: String,
    /// Percent of requests failed, as their callers saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// p99 latency as the callers saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<Dur>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Observe {
    /// The baseline the report compares with, before the first stage.
    #[serde(default = "default_observe")]
    pub before: Dur,
    /// How long after the restore the report keeps watching.
    #[serde(default = "default_observe")]
    pub after: Dur,
}

impl Default for Observe {
    fn default() -> Self {
        Self {
            before: default_observe(),
            after: default_observe(),
        }
    }
}

fn default_observe() -> Dur {
    Dur(DEFAULT_OBSERVE)
}

impl DrillSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        let t = &self.target;
        let given = t.zone.is_some() as u8 + t.region.is_some() as u8 + !t.link.is_empty() as u8;
        if given != 1 {
            return Err(FieldError::new(
                "spec.target",
                "name exactly one of zone, region or link",
            ));
        }
        if let Some(z) = &t.zone {
            check_name("spec.target.zone", z)?;
        }
        if let Some(r) = &t.region {
            check_name("spec.target.region", r)?;
        }
        if !t.link.is_empty() {
            if t.link.len() != 2 || t.link[0] == t.link[1] {
                return Err(FieldError::new(
                    "spec.target.link",
                    "name two different zones",
                ));
            }
            for (i, z) in t.link.iter().enumerate() {
                check_name(&format!("spec.target.link[{i}]"), z)?;
            }
            if !t.services.is_empty() {
                return Err(FieldError::new(
                    "spec.target.services",
                    "a link partition cuts every flow between the two zones; services cannot be named",
                ));
            }
        }
        if t.services.len() > MAX_SERVICES {
            return Err(FieldError::new(
                "spec.target.services",
                format!("at most {MAX_SERVICES}"),
            ));
        }
        for (i, s) in t.services.iter().enumerate() {
            check_name(&format!("spec.target.services[{i}]"), s)?;
        }
        match (self.method, t.link.is_empty()) {
            (Method::Partition, true) => {
                return Err(FieldError::new(
                    "spec.method",
                    "partition needs spec.target.link: the two zones to cut apart",
                ))
            }
            (Method::Drain | Method::Blackhole, false) => {
                return Err(FieldError::new(
                    "spec.method",
                    "a link can only be partitioned; drain and blackhole target a zone or region",
                ))
            }
            _ => {}
        }
        if self.stages.is_empty() || self.stages.len() > MAX_STAGES {
            return Err(FieldError::new(
                "spec.stages",
                format!("give 1 to {MAX_STAGES} stages"),
            ));
        }
        for (i, s) in self.stages.iter().enumerate() {
            let p = format!("spec.stages[{i}]");
            if !(s.percent > 0.0 && s.percent <= 100.0) {
                return Err(FieldError::new(
                    format!("{p}.percent"),
                    format!(
                        "{} is out of range; allowed is more than 0, up to 100",
                        s.percent
                    ),
                ));
            }
            if s.hold.0 < Duration::from_secs(1) {
                return Err(FieldError::new(
                    format!("{p}.hold"),
                    "hold each stage at least 1s",
                ));
            }
        }
        let g = &self.guard;
        if g.slos.is_empty() {
            return Err(FieldError::new(
                "spec.guard.slos",
                "a drill needs at least one SLO to guard it (service with maxErrorRate and/or maxP99)",
            ));
        }
        if g.slos.len() > MAX_SLOS {
            return Err(FieldError::new(
                "spec.guard.slos",
                format!("at most {MAX_SLOS}"),
            ));
        }
        for (i, s) in g.slos.iter().enumerate() {
            let p = format!("spec.guard.slos[{i}]");
            check_name(&format!("{p}.service"), &s.service)?;
            if s.max_error_rate.is_none() && s.max_p99.is_none() {
                return Err(FieldError::new(
                    p,
                    "give maxErrorRate (percent), maxP99, or both",
                ));
            }
            if let Some(e) = s.max_error_rate {
                if !(0.0..=100.0).contains(&e) {
                    return Err(FieldError::new(
                        format!("{p}.maxErrorRate"),
                        format!("{e} is out of range; allowed is 0 to 100 (percent)"),
                    ));
                }
            }
        }
        if let Some(d) = &self.deadline {
            if d.0 < self.stages_total() || d.0 > MAX_DEADLINE {
                return Err(FieldError::new(
                    "spec.deadline",
                    format!(
                        "must cover the stages ({}) and be at most 24h",
                        humantime::format_duration(self.stages_total())
                    ),
                ));
            }
        }
        if self.observe.before.0 > Duration::from_secs(600) {
            return Err(FieldError::new(
                "spec.observe.before",
                "at most 10m (the global keeps 10 minutes of figures)",
            ));
        }
        if self.observe.after.0 > Duration::from_secs(3600) {
            return Err(FieldError::new("spec.observe.after", "at most 1h"));
        }
        if let Some(s) = &self.schedule {
            Cron::parse(&s.cron).map_err(|e| FieldError::new("spec.schedule.cron", e))?;
            time_zone(&s.time_zone).map_err(|e| FieldError::new("spec.schedule.timeZone", e))?;
        }
        if self.blackouts.len() > MAX_SLOS {
            return Err(FieldError::new(
                "spec.blackouts",
                format!("at most {MAX_SLOS}"),
            ));
        }
        for (i, b) in self.blackouts.iter().enumerate() {
            b.check(&format!("spec.blackouts[{i}]"))?;
        }
        for (i, c) in self.capacity.iter().enumerate() {
            let p = format!("spec.capacity[{i}]");
            check_name(&format!("{p}.service"), &c.service)?;
            if !(c.per_instance_rps > 0.0 && c.per_instance_rps.is_finite()) {
                return Err(FieldError::new(
                    format!("{p}.perInstanceRps"),
                    "must be more than 0",
                ));
            }
        }
        Ok(())
    }

    /// All stages' holds.
    pub fn stages_total(&self) -> Duration {
        self.stages.iter().map(|s| s.hold.0).sum()
    }

    /// When zones restore on their own, counted from the start.
    pub fn deadline(&self) -> Duration {
        self.deadline
            .map(|d| d.0)
            .unwrap_or_else(|| self.stages_total() + DEFAULT_DEADLINE_SLACK)
            .min(MAX_DEADLINE)
    }

    pub fn guard_for(&self) -> Duration {
        self.guard.hold.map(|d| d.0).unwrap_or(DEFAULT_GUARD_FOR)
    }

    pub fn min_requests(&self) -> u64 {
        self.guard.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS)
    }
}

/// What a running drill asks every zone to do now. Written by the global
/// only; the zones apply it until `until_unix_ms`, then restore on their
/// own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DrillRunSpec {
    pub drill: String,
    pub run: String,
    /// `drain`, `blackhole` or `partition`.
    pub method: String,
    /// The zones the target covers (a region resolved to its zones); for a
    /// partition, the two zones of the link.
    pub zones: Vec<String>,
    /// Only these services; empty: all.
    #[serde(default)]
    pub services: Vec<String>,
    /// Share of the target's traffic affected now, 0 to 100.
    pub percent: f64,
    pub stage: u32,
    pub until_unix_ms: u64,
}

impl DrillRunSpec {
    pub fn check(&self) -> Result<(), FieldError> {
        if !["drain", "blackhole", "partition"].contains(&self.method.as_str()) {
            return Err(FieldError::new("spec.method", "unknown method"));
        }
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(FieldError::new("spec.percent", "out of range"));
        }
        if self.method == "partition" && self.zones.len() != 2 {
            return Err(FieldError::new("spec.zones", "a partition names two zones"));
        }
        Ok(())
    }

    /// The share as millionths, as proxies draw it.
    pub fn per_million(&self) -> u32 {
        (self.percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32
    }

    /// Whether the run applies to `service` (in one of its zones).
    pub fn names_service(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|s| s == service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(y: &str) -> Result<DrillSpec, String> {
        let v: serde_json::Value = serde_yaml::from_str(y).map_err(|e| e.to_string())?;
        let s: DrillSpec = serde_json::from_value(v).map_err(|e| e.to_string())?;
        s.check().map_err(|e| e.to_string())?;
        Ok(s)
    }

    const OK: &str = "
target: {zone: a, services: [api]}
method: blackhole
stages: [{percent: 10, hold: 30s}, {percent: 100, hold: 1m}]
guard: {slos: [{service: api, maxErrorRate: 1}]}
";

    #[test]
    fn a_drill_defaults_its_deadline_guard_and_windows() {
        let s = spec(OK).unwrap();
        assert_eq!(s.stages_total(), Duration::from_secs(90));
        assert_eq!(
            s.deadline(),
            Duration::from_secs(90) + DEFAULT_DEADLINE_SLACK
        );
        assert_eq!(s.guard_for(), DEFAULT_GUARD_FOR);
        assert_eq!(s.observe.before.0, DEFAULT_OBSERVE);
    }

    #[test]
    fn bad_drills_are_refused_naming_the_field() {
        let cases = [
            ("target: {zone: a, region: r}", "spec.target"),
            ("target: {link: [a, a]}", "spec.target.link"),
            ("method: partition", "spec.method"),
            ("stages: []", "spec.stages"),
            ("stages: [{percent: 0, hold: 1s}]", "spec.stages[0].percent"),
            ("stages: [{percent: 50, hold: 0s}]", "spec.stages[0].hold"),
            ("guard: {slos: []}", "spec.guard.slos"),
            ("guard: {slos: [{service: api}]}", "spec.guard.slos[0]"),
            ("deadline: 10s", "spec.deadline"),
        ];
        for (change, path) in cases {
            let key = change.split(':').next().unwrap();
            let y: String = OK
                .lines()
                .filter(|l| !l.starts_with(key))
                .chain([change])
                .collect::<Vec<_>>()
                .join("\n");
            let e = spec(&y).unwrap_err();
            assert!(e.starts_with(path), "{change}: {e}");
        }
        let b = |x: &str| format!("{OK}\nblackouts: [{x}]");
        spec(&b(
            "{start: '2026-12-24T00:00:00Z', end: '2026-12-27T00:00:00Z'}",
        ))
        .unwrap();
        spec(&b(
            "{cron: '0 17 * * fri', duration: 64h, timeZone: Europe/Dublin}",
        ))
        .unwrap();
        for (x, path) in [
            ("{start: '2026-12-24T00:00:00Z'}", "spec.blackouts[0]"),
            (
                "{start: 'soon', end: '2026-12-27T00:00:00Z'}",
                "spec.blackouts[0].start",
            ),
            ("{cron: '0 17 * *', duration: 1h}", "spec.blackouts[0].cron"),
            (
                "{cron: '0 17 * * *', duration: 1h, timeZone: Nowhere}",
                "spec.blackouts[0].timeZone",
            ),
        ] {
            let e = spec(&b(x)).unwrap_err();
            assert!(e.starts_with(path), "{x}: {e}");
        }
        let e = spec(&format!("{OK}\nschedule: {{cron: '61 * * * *'}}")).unwrap_err();
        assert!(e.starts_with("spec.schedule.cron"), "{e}");
        let link = "target: {link: [a, b]}\nmethod: partition\nstages: [{percent: 100, hold: 5s}]\nguard: {slos: [{service: api, maxP99: 1s}]}";
        spec(link).unwrap();
    }

    #[test]
    fn blackouts_hold_inside_their_windows_only() {
        let fixed = Blackout {
            start: Some("2026-12-24T00:00:00Z".into()),
            end: Some("2026-12-27T00:00:00Z".into()),
            ..Default::default()
        };
        let at = |s: &str| to_unix_ms(s.parse().unwrap());
        assert!(fixed.holds(at("2026-12-25T12:00:00Z")).is_some());
        assert!(fixed.holds(at("2026-12-27T00:00:00Z")).is_none());
        // Friday 17:00 for 64 h: the weekend, not Monday noon.
        let weekly = Blackout {
            cron: Some("0 17 * * fri".into()),
            duration: Some(Dur(Duration::from_secs(64 * 3600))),
            ..Default::default()
        };
        assert!(weekly.holds(at("2026-12-12T10:00:00Z")).is_some());
        assert!(weekly.holds(at("2026-12-11T16:59:00Z")).is_none());
        assert!(weekly.holds(at("2026-12-14T12:00:00Z")).is_none());
        let s = Schedule {
            cron: "0 10 * * mon".into(),
            time_zone: "Europe/Dublin".into(),
        };
        assert_eq!(
            s.next_after(at("2026-12-07T00:00:00Z")),
            Some(at("2026-12-07T10:00:00Z"))
        );
    }

    #[test]
    fn a_run_draws_in_millionths() {
        let r = DrillRunSpec {
            percent: 12.5,
            method: "drain".into(),
            ..Default::default()
        };
        assert_eq!(r.per_million(), 125_000);
        assert!(r.names_service("any"));
    }
}
