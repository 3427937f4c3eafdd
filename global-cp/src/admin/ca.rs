//! CA endpoints: the mesh roots and each zone's CA (`GET /api/v1/ca`), a
//! root rotation's start and finish (`POST /api/v1/ca/rotate`), and the
//! audit log (`GET /api/v1/audit`).

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::token;
use serde::Deserialize;
use serde_json::json;

use super::{err, request_body, store_err, Api};

fn refused(e: crate::membership::Refused) -> Response {
    use crate::membership::Refused;
    match e {
        Refused::Denied(m) => err(StatusCode::CONFLICT, m),
        Refused::Invalid(m) => err(StatusCode::UNPROCESSABLE_ENTITY, m),
        other => err(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

pub(super) async fn ca_status(AxState(api): AxState<Api>) -> Response {
    match crate::rotation::status(&api.state) {
        Ok(v) => Json(v).into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    action: String,
    #[serde(default)]
    force: bool,
}

pub(super) async fn ca_rotate(AxState(api): AxState<Api>, body: axum::body::Bytes) -> Response {
    let req: RotateRequest = match request_body(&body, "rotate") {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let st = api.state.clone();
    // Key generation and signing: off the async threads.
    let res = tokio::task::spawn_blocking(move || match req.action.as_str() {
        "start" => crate::rotation::start(&st),
        "finish" => crate::rotation::finish(&st, req.force),
        other => Err(crate::membership::Refused::Invalid(format!(
            "unknown action {other:?}; use start or finish"
        ))),
    })
    .await;
    match res {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) async fn audit(AxState(api): AxState<Api>) -> Response {
    match api.state.store.audit(1000) {
        Ok(items) => Json(json!({
            "items": items.into_iter().map(|a| json!({
                "at": token::fmt_unix(a.at), "action": a.action,
                "subject": a.subject, "detail": a.detail,
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => store_err(e),
    }
}
