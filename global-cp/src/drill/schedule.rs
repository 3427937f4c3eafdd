//! Drills that start on their own: each `Drill` with a `schedule` is
//! started when its cron names a time since the last check; a start that
//! preflight refuses is listed in the runs index with why.

use std::sync::Arc;
use std::time::Duration;

use model::drill::DrillSpec;

use super::report::{read_index, trim_index, RunSummary, INDEX_KEY};
use super::{now_ms, start};
use crate::State;

/// How often schedules are checked.
const SCHEDULE_TICK: Duration = Duration::from_secs(1);

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
                    Ok(r) => {
                        tracing::info!(drill = %name, run = %r.summary.run, "scheduled drill started")
                    }
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
