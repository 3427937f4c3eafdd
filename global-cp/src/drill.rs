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
//! The report and its storage are in `drill/report.rs`, its figures in
//! `drill/figures.rs`, and the scheduler in `drill/schedule.rs`.

pub mod figures;
pub mod report;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::drill::{DrillRunSpec, DrillSpec, Method, Target};
use model::resource::{Key, Metadata, Resource, API_VERSION};
use tokio::sync::watch;

use crate::traffic::{unix_ms, FlowSample};
use crate::State;
use report::{persist, refresh};
pub use report::{report, runs, Report, RunSummary, StageRecord};
pub use schedule::spawn_scheduler;

const TICK: Duration = Duration::from_secs(1);
const PERSIST_EVERY_MS: u64 = 5_000;
/// The window of observed rates preflight compares with capacity.
const CAPACITY_WINDOW: Duration = Duration::from_secs(60);

pub(crate) fn now_ms() -> u64 {
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
        summary: RunSummary {
            drill: name.to_string(),
            run: run.clone(),
            method: spec.method.name().into(),
            state: "running".into(),
            started_at: started,
            ..Default::default()
        },
        target: spec.target.clone(),
        zones: zones.clone(),
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
        drill: r.summary.drill.clone(),
        run: r.summary.run.clone(),
        method: r.summary.method.clone(),
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
            name: r.summary.drill.clone(),
            ..Default::default()
        },
        spec: serde_json::to_value(&run).map_err(|e| e.to_string())?,
    };
    state
        .store
        .put(res, &model::token::fmt_unix(model::token::now_unix()))
        .map(|_| ())
        .map_err(|e| format!("write DrillRun/{}: {e}", r.summary.drill))
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

async fn drive(
    state: Arc<State>,
    spec: DrillSpec,
    mut r: Report,
    mut abort: watch::Receiver<Option<String>>,
) {
    let before = spec.observe.before.0.as_millis() as u64;
    let first = r.summary.started_at.saturating_sub(before);
    let mut samples: Vec<FlowSample> = state.traffic.flows_after(first);
    let mut seen = samples.last().map(|s| s.at_ms).unwrap_or(first);
    let mut stage = 0usize;
    let mut stage_started = r.summary.started_at;
    let mut breaching: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut persisted = r.summary.started_at;
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
        if r.summary.state == "running" {
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
                while let Err(e) = write_run(&state, &spec, &r, None)
                    .or_else(|_| restore(&state, &r.summary.drill))
                {
                    tries += 1;
                    tracing::error!(drill = %r.summary.drill, error = %e, "could not restore; retrying (zones restore at the deadline regardless)");
                    if tries > 30 {
                        break;
                    }
                    tokio::time::sleep(TICK).await;
                }
                r.restored_at = Some(now_ms());
                r.summary.outcome = Some(outcome.into());
                r.summary.reason = why.clone();
                r.event(
                    if outcome == "passed" {
                        "completed"
                    } else {
                        "aborted"
                    },
                    why,
                );
                r.event("restored", "");
                r.summary.state = "observing".into();
                changed = true;
            }
        } else if r
            .restored_at
            .is_some_and(|t| now >= t + (r.observe_after_seconds * 1000.0) as u64)
        {
            if let Err(e) = restore(&state, &r.summary.drill) {
                tracing::warn!(drill = %r.summary.drill, error = %e, "could not delete the restored DrillRun; it lapses at its deadline");
            }
            r.summary.state = "done".into();
            r.summary.ended_at = Some(now);
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

/// At start: a `DrillRun` left by a global that died mid-drill is ended
/// now (its zones may have restored already, at its deadline), and its
/// report says so.
pub fn recover(state: &State) -> Result<(), String> {
    for s in state
        .store
        .list(Some("DrillRun"))
        .map_err(|e| e.to_string())?
    {
        let name = s.resource.metadata.name.clone();
        let spec: Option<DrillRunSpec> = serde_json::from_value(s.resource.spec.clone()).ok();
        restore(state, &name)?;
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
                r.summary.outcome = Some("interrupted".into());
                r.summary.reason = why.into();
            }
            r.event("interrupted", why);
            r.summary.state = "done".into();
            r.summary.ended_at = Some(now);
            persist(state, &r);
        }
        tracing::warn!(drill = %name, "ended a drill left running by the previous global process");
    }
    Ok(())
}
