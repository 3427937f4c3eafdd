//! Drill endpoints: run, abort, status and reports
//! (`/api/v1/drills/NAME/{run,abort,report}`, `/api/v1/drill-runs`).
//! A run and an abort are written to the audit log.

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{err, Api};
use crate::drill::{self, Refused};

fn audit(api: &Api, action: &str, drill: &str, detail: &str) {
    if let Err(e) = api
        .state
        .store
        .record_audit(action, drill, detail, model::token::now_unix())
    {
        tracing::error!(error = %e, action, "could not write the audit log");
    }
}

pub async fn run(AxState(api): AxState<Api>, Path(name): Path<String>) -> Response {
    match drill::start(&api.state, &name, "an operator") {
        Ok(r) => {
            audit(&api, "drill.run", &name, &r.summary.run);
            (StatusCode::ACCEPTED, Json(r)).into_response()
        }
        Err(e @ Refused::NotFound(_)) => err(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ Refused::Preflight(_)) => err(StatusCode::CONFLICT, e.to_string()),
        Err(e @ Refused::Store(_)) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn abort(
    AxState(api): AxState<Api>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    // Only the console signs in without a bearer token.
    let from = match common::telemetry::bearer(&headers) {
        Some(_) => "an operator",
        None => "an operator in the console",
    };
    if api.state.drills.abort(&name, &format!("aborted by {from}")) {
        audit(&api, "drill.abort", &name, from);
        Json(json!({ "aborted": name })).into_response()
    } else {
        err(
            StatusCode::CONFLICT,
            format!("drill {name} is not running (`ternctl drill status`)"),
        )
    }
}

#[derive(Deserialize)]
pub struct ReportQuery {
    run: Option<String>,
}

pub async fn report(
    AxState(api): AxState<Api>,
    Path(name): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Response {
    match drill::report(&api.state, &name, q.run.as_deref()) {
        Some(r) => Json(r).into_response(),
        None => err(
            StatusCode::NOT_FOUND,
            match q.run {
                Some(run) => format!("no report of run {run} of drill {name}"),
                None => format!("drill {name} has not run yet (`ternctl drill run {name}`)"),
            },
        ),
    }
}

/// The running drill, if any, and the recent runs (newest first).
pub async fn status(AxState(api): AxState<Api>) -> Response {
    let running = api
        .state
        .drills
        .current()
        .map(|(drill, run)| json!({ "drill": drill, "run": run }));
    let mut runs = drill::runs(&api.state);
    runs.reverse();
    Json(json!({ "running": running, "runs": runs })).into_response()
}
