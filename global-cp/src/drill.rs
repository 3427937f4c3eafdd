//! The drill controller: runs one `Drill` at a time in stages, guards it
//! with its SLOs, ends it (on time, on a breach, on an abort), and keeps
//! its report.
//!
//! A run is visible to the zones as a `DrillRun` resource (synced like any
//! other), rewritten at each stage and deleted at the restore. It carries
//! a deadline the zones and proxies enforce on their own, so a drill ends
//! even if this process dies mid-run; a global that starts and finds a
//! `DrillRun` ends it at once and marks the report interrupted.
//!
//! Reports are kept in the store's meta table (`drill/report/RUN`, and an
//! index of the last [`KEEP_RUNS`] runs), written at every event and every
//! few seconds while a run lasts.

pub mod figures;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::drill::{DrillRunSpec, DrillSpec, Method, Slo, Target};
use model::resource::{Key, Metadata, Resource, API_VERSION};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::traffic::{unix_ms, FlowSample};
use crate::State;
use figures::{Counts, Point, ServiceFigures, Timeline};

/// Runs whose reports are kept.
pub const KEEP_RUNS: usize = 100;
const INDEX_KEY: &str = "drill/runs";
const TICK: Duration = Duration::from_secs(1);
const PERSIST_EVERY_MS: u64 = 5_000;
/// The window of observed rates preflight compares with capacity.
const CAPACITY_WINDOW: Duration = Duration::from_secs(60);
/// How often schedules are checked.
const SCHEDULE_TICK: Duration = Duration::from_secs(1);
/// At most this many services in a report.
const MAX_REPORTED: usize = 50;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at: u64,
    pub event: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    pub percent: f64,
    pub hold_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SloResult {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<f64>,
    /// During the drill, percent.
    pub error_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    pub met: bool,
}

/// A run's report; the same document while it runs and once done.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub drill: String,
    pub run: String,
    pub method: String,
    pub target: Target,
    /// The zones the target covers (a region resolved to its zones).
    pub zones: Vec<String>,
    /// `running`, `observing` (restored, watching the return) or `done`.
    pub state: String,
    /// Once restored: `passed`, `aborted` or `interrupted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub started_at: u64,
    pub deadline_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    pub observe_before_seconds: f64,
    pub observe_after_seconds: f64,
    pub stages: Vec<StageRecord>,
    pub events: Vec<Event>,
    /// Checks passed before the start, and what preflight could not check.
    pub preflight: Vec<String>,
    pub slos: Vec<SloResult>,
    pub services: Vec<ServiceFigures>,
    pub points: Vec<Point>,
}

/// One line of the runs index.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub drill: String,
    pub run: String,
    pub method: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub started_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
}

impl Report {
    fn summary(&self) -> RunSummary {
        RunSummary {
            drill: self.drill.clone(),
            run: self.run.clone(),
            method: self.method.clone(),
            state: self.state.clone(),
            outcome: self.outcome.clone(),
            reason: self.reason.clone(),
            started_at: self.started_at,
            ended_at: self.ended_at,
        }
    }

    fn event(&mut self, event: &str, detail: impl Into<String>) {
        let detail = detail.into();
        tracing::info!(drill = %self.drill, run = %self.run, %event, %detail, "drill");
        self.events.push(Event {
            at: now_ms(),
            event: event.into(),
            detail,
        });
    }
}

fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

/// Why a drill did not start.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("Drill/{0} not found; apply it first (`ternctl apply -f`)")]
    NotFound(String),
    #[error("preflight: {0}")]
    Preflight(String),
    #[error("{0}")]
    Store(String),
}

struct Running {
    drill: String,
    run: String,
    abort: watch::Sender<Option<String>>,
}

#[derive(Default)]
pub struct Drills {
    running: Mutex<Option<Running>>,
}

impl Drills {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The drill and run in progress.
    pub fn current(&self) -> Option<(String, String)> {
        self.lock()
            .as_ref()
            .map(|r| (r.drill.clone(), r.run.clone()))
    }

    /// Abort the running drill `name` (restored at once); false if it is
    /// not running.
    pub fn abort(&self, name: &str, why: &str) -> bool {
        match self.lock().as_ref() {
            Some(r) if r.drill == name => {
                r.abort.send_replace(Some(why.to_string()));
                true
            }
            _ => false,
        }
    }
}

/// The zones a target covers, from what the global knows of each zone.
fn resolve(state: &State, t: &Target) -> Result<Vec<String>, Refused> {
    let zones = state
        .store
        .zones()
        .map_err(|e| Refused::Store(e.to_string()))?;
    let live = state.zones.snapshot();
    let known = |z: &str| zones.iter().any(|r| r.name == z);
    let mut out: Vec<String> = if let Some(z) = &t.zone {
        vec![z.clone()]
    } else if let Some(r) = &t.region {
        let v: Vec<String> = live
            .iter()
            .filter(|(_, l)| l.region == *r)
            .map(|(n, _)| n.clone())
            .collect();
        if v.is_empty() {
            return Err(Refused::Preflight(format!(
                "no zone online reports region {r}"
            )));
        }
        v
    } else {
        t.link.clone()
    };
    for z in &out {
        if !known(z) {
            return Err(Refused::Preflight(format!(
                "zone {z} has not joined the mesh (`ternctl inspect zones`)"
            )));
        }
    }
    out.sort();
    Ok(out)
}

/// Refuse to start inside a blackout window, or when the mesh is not
/// healthy enough to lose the target: a zone offline or refusing config,
/// a target service with no healthy instance outside the target, or (with
/// a declared capacity) too few of them for the service's observed rate.
/// Returns notes for the report.
fn preflight(state: &State, spec: &DrillSpec, zones: &[String]) -> Result<Vec<String>, Refused> {
    let mut notes = Vec::new();
    let now = now_ms();
    for b in &spec.blackouts {
        if let Some(w) = b.holds(now) {
            return Err(Refused::Preflight(format!(
                "inside a blackout window ({w})"
            )));
        }
    }
    let joined = state
        .store
        .zones()
        .map_err(|e| Refused::Store(e.to_string()))?;
    let live = state.zones.snapshot();
    for z in &joined {
        match live.get(&z.name) {
            Some(l) if l.online => {
                if let Some((v, why)) = &l.last_nack {
                    return Err(Refused::Preflight(format!(
                        "zone {} refused config version {v} ({why}); fix that first",
                        z.name
                    )));
                }
            }
            _ => {
                return Err(Refused::Preflight(format!(
                "zone {} is offline; a drill needs every zone healthy (`ternctl inspect zones`)",
                z.name
            )))
            }
        }
    }
    notes.push(format!("all {} zones online and in sync", joined.len()));
    if spec.method != Method::Partition {
        let mut services: BTreeSet<String> = spec.target.services.iter().cloned().collect();
        if services.is_empty() {
            for z in zones {
                if let Some(l) = live.get(z) {
                    services.extend(l.services.keys().cloned());
                }
            }
        }
        let observed = state.traffic.services(CAPACITY_WINDOW);
        for s in &services {
            let elsewhere: usize = live
                .iter()
                .filter(|(z, _)| !zones.contains(z))
                .filter_map(|(_, l)| l.services.get(s))
                .sum();
            if elsewhere == 0 {
                return Err(Refused::Preflight(format!(
                    "no healthy instance of {s} outside {}: nothing could take its traffic",
                    zones.join(", ")
                )));
            }
            let rps = observed
                .iter()
                .find(|v| v.service == *s)
                .map(|v| v.total.rps)
                .unwrap_or(0.0);
            match spec.capacity.iter().find(|c| c.service == *s) {
                Some(c) => {
                    let can = elsewhere as f64 * c.per_instance_rps;
                    if can < rps {
                        return Err(Refused::Preflight(format!(
                            "{s}: the {elsewhere} instances outside {} can take {can:.1} rps \
                             ({} each), but {s} serves {rps:.1} rps now",
                            zones.join(", "),
                            c.per_instance_rps
                        )));
                    }
                    notes.push(format!(
                        "{s}: {elsewhere} healthy instances outside the target can take {can:.1} rps; it serves {rps:.1} rps"
                    ));
                }
                None => notes.push(format!(
                    "{s}: {elsewhere} healthy instances outside the target (no capacity declared; it serves {rps:.1} rps)"
                )),
            }
        }
    }
    Ok(notes)
}

/// Start `name` now, if preflight allows; `by` says who asked (an
/// operator, the schedule). Returns the run's first report.
pub fn start(state: &Arc<State>, name: &str, by: &str) -> Result<Report, Refused> {
    let stored = state
        .store
        .get("Drill", name)
        .map_err(|e| Refused::Store(e.to_string()))?
        .ok_or_else(|| Refused::NotFound(name.to_string()))?;
    let spec: DrillSpec = serde_json::from_value(stored.resource.spec.clone())
        .map_err(|e| Refused::Store(format!("Drill/{name} is unreadable: {e}")))?;
    let mut slot = state.drills.lock();
    if let Some(r) = slot.as_ref() {
        return Err(Refused::Preflight(format!(
            "drill {} is running or observing its return (run {}); one drill runs at a time",
            r.drill, r.run
        )));
    }
    let zones = resolve(state, &spec.target)?;
    let notes = preflight(state, &spec, &zones)?;
    let started = now_ms();
    let run = format!("{name}-{}", started / 1000);
    let mut report = Report {
        drill: name.to_string(),
        run: run.clone(),
        method: spec.method.name().into(),
        target: spec.target.clone(),
        zones: zones.clone(),
        state: "running".into(),
        started_at: started,
        deadline_at: started + spec.deadline().as_millis() as u64,
        observe_before_seconds: spec.observe.before.0.as_secs_f64(),
        observe_after_seconds: spec.observe.after.0.as_secs_f64(),
        stages: spec
            .stages
            .iter()
            .map(|s| StageRecord {
                percent: s.percent,
                hold_seconds: s.hold.0.as_secs_f64(),
                started_at: None,
            })
            .collect(),
        preflight: notes,
        ..Default::default()
    };
    report.event(
        "started",
        format!("{} of {}, by {by}", spec.method.name(), zones.join(", ")),
    );
    write_run(state, &spec, &report, Some(0)).map_err(Refused::Store)?;
    report.stages[0].started_at = Some(started);
    report.event("stage", format!("1: {}%", spec.stages[0].percent));
    persist(state, &report);
    let (abort, abort_rx) = watch::channel(None);
    *slot = Some(Running {
        drill: name.to_string(),
        run,
        abort,
    });
    drop(slot);
    let st = state.clone();
    let first = report.clone();
    tokio::spawn(async move { drive(st, spec, report, abort_rx).await });
    Ok(first)
}

/// The `DrillRun` the zones apply for stage `stage`; `None`: restored (0%,
/// kept while the report observes the return, so proxies keep reporting
/// every second).
fn write_run(
    state: &State,
    spec: &DrillSpec,
    r: &Report,
    stage: Option<usize>,
) -> Result<(), String> {
    let run = DrillRunSpec {
        drill: r.drill.clone(),
        run: r.run.clone(),
        method: r.method.clone(),
        zones: r.zones.clone(),
        services: spec.target.services.clone(),
        percent: stage.map(|i| spec.stages[i].percent).unwrap_or(0.0),
        stage: stage.unwrap_or(spec.stages.len()) as u32,
        until_unix_ms: r.deadline_at,
    };
    let res = Resource {
        api_version: API_VERSION.into(),
        kind: "DrillRun".into(),
        metadata: Metadata {
            name: r.drill.clone(),
            ..Default::default()
        },
        spec: serde_json::to_value(&run).map_err(|e| e.to_string())?,
    };
    state
        .store
        .put(res, &model::token::fmt_unix(model::token::now_unix()))
        .map(|_| ())
        .map_err(|e| format!("write DrillRun/{}: {e}", r.drill))
}

fn restore(state: &State, drill: &str) -> Result<(), String> {
    state
        .store
        .delete(
            &Key {
                kind: "DrillRun".into(),
                name: drill.into(),
            },
            None,
        )
        .map(|_| ())
        .map_err(|e| format!("delete DrillRun/{drill}: {e}"))
}

/// The services a report covers: the target's, the guarded ones, and
/// (for a whole zone or region) those its zones served before the drill.
fn reported(spec: &DrillSpec, zones: &[String], samples: &[FlowSample]) -> Vec<String> {
    let mut s: BTreeSet<String> = spec.target.services.iter().cloned().collect();
    s.extend(spec.guard.slos.iter().map(|x| x.service.clone()));
    if spec.target.services.is_empty() {
        s.extend(
            samples
                .iter()
                .filter(|x| zones.contains(&x.zone))
                .map(|x| x.service.clone()),
        );
    }
    s.into_iter().take(MAX_REPORTED).collect()
}

fn timeline(r: &Report) -> Timeline {
    Timeline {
        started_ms: r.started_at,
        stages: r
            .stages
            .iter()
            .filter_map(|s| Some((s.started_at?, s.percent)))
            .collect(),
        restored_ms: r.restored_at,
    }
}

fn slo_result(slo: &Slo, f: Option<&ServiceFigures>) -> SloResult {
    let d: Counts = f.map(|f| f.during.all.clone()).unwrap_or_default();
    let rate = if d.requests == 0 {
        0.0
    } else {
        d.failed as f64 * 100.0 / d.requests as f64
    };
    let max_p99_ms = slo.max_p99.map(|m| m.0.as_secs_f64() * 1000.0);
    let met = slo.max_error_rate.is_none_or(|m| rate <= m)
        && match (max_p99_ms, d.p99_ms) {
            (Some(m), Some(p)) => p <= m,
            _ => true,
        };
    SloResult {
        service: slo.service.clone(),
        max_error_rate: slo.max_error_rate,
        max_p99_ms,
        error_rate: (rate * 100.0).round() / 100.0,
        p99_ms: d.p99_ms,
        met,
    }
}

/// Recompute the figures from the samples.
fn refresh(r: &mut Report, spec: &DrillSpec, samples: &[FlowSample]) {
    let tl = timeline(r);
    let before = (r.observe_before_seconds * 1000.0) as u64;
    let first = r.started_at.saturating_sub(before);
    let services = reported(spec, &r.zones, samples);
    r.services = services
        .iter()
        .map(|s| figures::service(samples, s, &r.zones, &tl, before))
        .collect();
    r.points = services
        .iter()
        .flat_map(|s| figures::points(samples, s, first))
        .collect();
    r.slos = spec
        .guard
        .slos
        .iter()
        .map(|slo| slo_result(slo, r.services.iter().find(|f| f.service == slo.service)))
        .collect();
}

async fn drive(
    state: Arc<State>,
    spec: DrillSpec,
    mut r: Report,
    mut abort: watch::Receiver<Option<String>>,
) {
    let before = spec.observe.before.0.as_millis() as u64;
    let first = r.started_at.saturating_sub(before);
    let mut samples: Vec<FlowSample> = state.traffic.flows_after(first);
    let mut seen = samples.last().map(|s| s.at_ms).unwrap_or(first);
    let mut stage = 0usize;
    let mut stage_started = r.started_at;
    let mut breaching: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut persisted = r.started_at;
    let guard_for = spec.guard_for().as_millis() as u64;
    loop {
        tokio::select! {
            _ = abort.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let now = now_ms();
        let new = state.traffic.flows_after(seen);
        if let Some(l) = new.last() {
            seen = l.at_ms;
        }
        samples.extend(new);
        let mut changed = false;
        if r.state == "running" {
            let mut end: Option<(&str, String)> = None;
            if let Some(why) = abort.borrow_and_update().clone() {
                end = Some(("aborted", why));
            }
            for slo in &spec.guard.slos {
                match figures::breach(&samples, now, slo, spec.min_requests()) {
                    Some(b) => {
                        let since = match breaching.get(&slo.service) {
                            Some((t, _)) => *t,
                            None => {
                                r.event("guard breach", b.clone());
                                changed = true;
                                now
                            }
                        };
                        breaching.insert(slo.service.clone(), (since, b.clone()));
                        if end.is_none() && now.saturating_sub(since) >= guard_for {
                            end = Some((
                                "aborted",
                                format!("SLO guard: {b}, held {} s", guard_for / 1000),
                            ));
                        }
                    }
                    None => {
                        if breaching.remove(&slo.service).is_some() {
                            r.event("guard clear", slo.service.clone());
                            changed = true;
                        }
                    }
                }
            }
            if end.is_none() {
                // A blackout that opens mid-drill ends it.
                if let Some(w) = spec.blackouts.iter().find_map(|b| b.holds(now)) {
                    end = Some(("aborted", format!("a blackout window opened ({w})")));
                }
            }
            if end.is_none() && now >= r.deadline_at {
                end = Some(("aborted", "deadline reached".into()));
            }
            if end.is_none() && now >= stage_started + spec.stages[stage].hold.0.as_millis() as u64
            {
                if stage + 1 < spec.stages.len() {
                    match write_run(&state, &spec, &r, Some(stage + 1)) {
                        Ok(()) => {
                            stage += 1;
                            stage_started = now;
                            r.stages[stage].started_at = Some(now);
                            r.event(
                                "stage",
                                format!("{}: {}%", stage + 1, spec.stages[stage].percent),
                            );
                        }
                        Err(e) => end = Some(("aborted", e)),
                    }
                } else {
                    end = Some(("passed", "every stage held within the SLOs".into()));
                }
                changed = true;
            }
            if let Some((outcome, why)) = end {
                // Restore first (0%: no effect left anywhere), the report
                // follows; if even that fails, the deadline restores.
                let mut tries = 0;
                while let Err(e) =
                    write_run(&state, &spec, &r, None).or_else(|_| restore(&state, &r.drill))
                {
                    tries += 1;
                    tracing::error!(drill = %r.drill, error = %e, "could not restore; retrying (zones restore at the deadline regardless)");
                    if tries > 30 {
                        break;
                    }
                    tokio::time::sleep(TICK).await;
                }
                r.restored_at = Some(now_ms());
                r.outcome = Some(outcome.into());
                r.reason = why.clone();
                r.event(
                    if outcome == "passed" {
                        "completed"
                    } else {
                        "aborted"
                    },
                    why,
                );
                r.event("restored", "");
                r.state = "observing".into();
                changed = true;
            }
        } else if r
            .restored_at
            .is_some_and(|t| now >= t + (r.observe_after_seconds * 1000.0) as u64)
        {
            if let Err(e) = restore(&state, &r.drill) {
                tracing::warn!(drill = %r.drill, error = %e, "could not delete the restored DrillRun; it lapses at its deadline");
            }
            r.state = "done".into();
            r.ended_at = Some(now);
            r.event("report complete", "");
            refresh(&mut r, &spec, &samples);
            persist(&state, &r);
            break;
        }
        if changed || now >= persisted + PERSIST_EVERY_MS {
            refresh(&mut r, &spec, &samples);
            persist(&state, &r);
            persisted = now;
        }
    }
    *state.drills.lock() = None;
}

fn report_key(run: &str) -> String {
    format!("drill/report/{run}")
}

/// Write the report and its line in the index; old runs past
/// [`KEEP_RUNS`] are dropped.
fn persist(state: &State, r: &Report) {
    let body = match serde_json::to_vec(r) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "drill report not serializable");
            return;
        }
    };
    let res = state.store.transact(|tx| {
        let mut index = read_index(tx.meta_get(INDEX_KEY)?);
        index.retain(|s| s.run != r.run);
        index.push(r.summary());
        trim_index(tx, &mut index)?;
        tx.meta_set(&report_key(&r.run), &body)?;
        tx.meta_set(
            INDEX_KEY,
            &serde_json::to_vec(&index).unwrap_or_else(|_| b"[]".to_vec()),
        )?;
        Ok::<_, crate::store::StoreError>(())
    });
    if let Err(e) = res {
        tracing::error!(run = %r.run, error = %e, "could not store the drill report");
    }
}

/// Start each drill whose schedule names a time since the last check.
/// Times that passed while the global was down are not made up for.
pub fn spawn_scheduler(state: Arc<State>) {
    tokio::spawn(async move {
        let mut checked = now_ms();
        loop {
            tokio::time::sleep(SCHEDULE_TICK).await;
            let now = now_ms();
            let drills = match state.store.list(Some("Drill")) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read drills for their schedules");
                    continue;
                }
            };
            for d in drills {
                let name = d.resource.metadata.name.clone();
                let Ok(spec) = serde_json::from_value::<DrillSpec>(d.resource.spec) else {
                    continue;
                };
                let due = spec
                    .schedule
                    .as_ref()
                    .and_then(|s| s.next_after(checked))
                    .is_some_and(|t| t <= now);
                if !due {
                    continue;
                }
                match start(&state, &name, "the schedule") {
                    Ok(r) => tracing::info!(drill = %name, run = %r.run, "scheduled drill started"),
                    // The schedule overtaking its own run is not worth a
                    // line in the index (it would push real reports out).
                    Err(e) if state.drills.current().is_some_and(|(d, _)| d == name) => {
                        tracing::warn!(drill = %name, error = %e, "scheduled drill still running; this start skipped");
                    }
                    Err(e) => {
                        tracing::warn!(drill = %name, error = %e, "scheduled drill refused");
                        refused(&state, &name, &e.to_string(), now);
                    }
                }
            }
            checked = now;
        }
    });
}

/// A scheduled start that preflight refused, in the runs index.
fn refused(state: &State, drill: &str, why: &str, at: u64) {
    let method = state
        .store
        .get("Drill", drill)
        .ok()
        .flatten()
        .and_then(|d| serde_json::from_value::<DrillSpec>(d.resource.spec).ok())
        .map(|s| s.method.name().to_string())
        .unwrap_or_default();
    let line = RunSummary {
        drill: drill.into(),
        run: format!("{drill}-{}", at / 1000),
        method,
        state: "refused".into(),
        outcome: None,
        reason: why.into(),
        started_at: at,
        ended_at: Some(at),
    };
    let res = state.store.transact(|tx| {
        let mut index = read_index(tx.meta_get(INDEX_KEY)?);
        index.push(line);
        trim_index(tx, &mut index)?;
        tx.meta_set(INDEX_KEY, &serde_json::to_vec(&index).unwrap_or_default())?;
        Ok::<_, crate::store::StoreError>(())
    });
    if let Err(e) = res {
        tracing::error!(error = %e, "could not record a refused drill");
    }
}

fn read_index(b: Option<Vec<u8>>) -> Vec<RunSummary> {
    b.and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Drop the oldest runs past [`KEEP_RUNS`] and their reports.
fn trim_index(
    tx: &mut crate::store::Tx<'_>,
    index: &mut Vec<RunSummary>,
) -> Result<(), crate::store::StoreError> {
    while index.len() > KEEP_RUNS {
        let old = index.remove(0);
        tx.meta_delete(&report_key(&old.run))?;
    }
    Ok(())
}

/// Runs, newest last.
pub fn runs(state: &State) -> Vec<RunSummary> {
    read_index(state.store.meta_get(INDEX_KEY).ok().flatten())
}

/// The report of `run`, or of the drill's latest run.
pub fn report(state: &State, drill: &str, run: Option<&str>) -> Option<Report> {
    let run = match run {
        Some(r) => r.to_string(),
        None => {
            runs(state)
                .into_iter()
                .rev()
                .find(|s| s.drill == drill)?
                .run
        }
    };
    let b = state.store.meta_get(&report_key(&run)).ok().flatten()?;
    serde_json::from_slice::<Report>(&b)
        .ok()
        .filter(|r| r.drill == drill)
}

/// At start: a `DrillRun` left by a global that died mid-drill is ended
/// now (its zones may have restored already, at its deadline), and its
/// report says so.
pub fn recover(state: &State) -> anyhow::Result<()> {
    for s in state.store.list(Some("DrillRun"))? {
        let name = s.resource.metadata.name.clone();
        let spec: Option<DrillRunSpec> = serde_json::from_value(s.resource.spec.clone()).ok();
        restore(state, &name).map_err(anyhow::Error::msg)?;
        let Some(spec) = spec else { continue };
        if let Some(mut r) = report(state, &name, Some(&spec.run)) {
            let now = now_ms();
            let why = if now >= spec.until_unix_ms {
                "the global stopped during the run; the zones restored on their own at the deadline"
            } else {
                "the global stopped during the run and ended it when it started again"
            };
            if r.restored_at.is_none() {
                r.restored_at = Some(now.min(spec.until_unix_ms));
                r.outcome = Some("interrupted".into());
                r.reason = why.into();
            }
            r.event("interrupted", why);
            r.state = "done".into();
            r.ended_at = Some(now);
            persist(state, &r);
        }
        tracing::warn!(drill = %name, "ended a drill left running by the previous global process");
    }
    Ok(())
}
