//! A drill run's report: its types, how its figures are recomputed from
//! the samples, and its storage in the store's meta table
//! (`drill/report/RUN`, and an index of the last [`KEEP_RUNS`] runs),
//! written at every event and every few seconds while a run lasts.

use std::collections::BTreeSet;

use model::drill::{DrillSpec, Slo, Target};
use serde::{Deserialize, Serialize};

use super::figures::{self, Counts, Point, ServiceFigures, Timeline};
use super::now_ms;
use crate::traffic::FlowSample;
use crate::State;

/// Runs whose reports are kept.
pub const KEEP_RUNS: usize = 100;
pub(super) const INDEX_KEY: &str = "drill/runs";
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
    /// Drill, run, method, state (`running`, `observing`: restored and
    /// watching the return, `done`), outcome once restored (`passed`,
    /// `aborted`, `interrupted`) and why, start and end: what the runs
    /// index lists.
    #[serde(flatten)]
    pub summary: RunSummary,
    pub target: Target,
    /// The zones the target covers (a region resolved to its zones).
    pub zones: Vec<String>,
    pub deadline_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<u64>,
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
    pub(super) fn event(&mut self, event: &str, detail: impl Into<String>) {
        let detail = detail.into();
        tracing::info!(drill = %self.summary.drill, run = %self.summary.run, %event, %detail, "drill");
        self.events.push(Event {
            at: now_ms(),
            event: event.into(),
            detail,
        });
    }
}

/// The services a report covers: the target's, the guarded ones, and
/// (for a whole zone or region) those its zones served before the drill.
pub(super) fn reported(spec: &DrillSpec, zones: &[String], samples: &[FlowSample]) -> Vec<String> {
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

pub(super) fn timeline(r: &Report) -> Timeline {
    Timeline {
        started_ms: r.summary.started_at,
        stages: r
            .stages
            .iter()
            .filter_map(|s| Some((s.started_at?, s.percent)))
            .collect(),
        restored_ms: r.restored_at,
    }
}

pub(super) fn slo_result(slo: &Slo, f: Option<&ServiceFigures>) -> SloResult {
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
pub(super) fn refresh(r: &mut Report, spec: &DrillSpec, samples: &[FlowSample]) {
    let tl = timeline(r);
    let before = (r.observe_before_seconds * 1000.0) as u64;
    let first = r.summary.started_at.saturating_sub(before);
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

pub(super) fn report_key(run: &str) -> String {
    format!("drill/report/{run}")
}

/// Write the report and its line in the index; old runs past
/// [`KEEP_RUNS`] are dropped.
pub(super) fn persist(state: &State, r: &Report) {
    let body = match serde_json::to_vec(r) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "drill report not serializable");
            return;
        }
    };
    let res = state.store.transact(|tx| {
        let mut index = read_index(tx.meta_get(INDEX_KEY)?);
        index.retain(|s| s.run != r.summary.run);
        index.push(r.summary.clone());
        trim_index(tx, &mut index)?;
        tx.meta_set(&report_key(&r.summary.run), &body)?;
        tx.meta_set(
            INDEX_KEY,
            &serde_json::to_vec(&index).unwrap_or_else(|_| b"[]".to_vec()),
        )?;
        Ok::<_, crate::store::StoreError>(())
    });
    if let Err(e) = res {
        tracing::error!(run = %r.summary.run, error = %e, "could not store the drill report");
    }
}

pub(super) fn read_index(b: Option<Vec<u8>>) -> Vec<RunSummary> {
    b.and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Drop the oldest runs past [`KEEP_RUNS`] and their reports.
pub(super) fn trim_index(
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
        .filter(|r| r.summary.drill == drill)
}
