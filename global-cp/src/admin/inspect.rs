//! Inspect endpoints (`/api/v1/inspect/...`): zones, services and traffic
//! from the zones' reports, and dataplanes as their zones explain them
//! (asked down the zone's sync stream when the request comes).

use std::time::Duration;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{err, store_err, Api};

/// A dataplane explained by its zone: the policies that apply to it and
/// the rules, routes and endpoints they compile to.
pub(super) async fn inspect_dataplane(
    AxState(api): AxState<Api>,
    Path((zone, name)): Path<(String, String)>,
) -> Response {
    use crate::zones::ExplainError;
    match api
        .state
        .zones
        .explain(&zone, &name, Duration::from_secs(5))
        .await
    {
        Ok(v) => Json(v).into_response(),
        Err(e @ ExplainError::Zone(_)) => err(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ExplainError::Offline(_)) => match member(&api, &zone) {
            Ok(()) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Err(r) => r,
        },
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A zone that ever joined this mesh, or a 404 naming the one that did not
/// (asking it again would not help).
fn member(api: &Api, zone: &str) -> Result<(), Response> {
    match api.state.store.zone(zone) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(err(
            StatusCode::NOT_FOUND,
            format!(
                "zone {zone:?} has not joined this mesh; `ternctl inspect zones` lists its zones"
            ),
        )),
        Err(e) => Err(store_err(e)),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct ZoneQuery {
    pub(super) zone: Option<String>,
}

/// The proxies of one zone (`?zone=`) or of every zone online, asked of
/// the zones now. A zone that does not answer is listed under `errors`.
pub(super) async fn inspect_dataplanes(
    AxState(api): AxState<Api>,
    Query(q): Query<ZoneQuery>,
) -> Response {
    let zones = match q.zone {
        Some(z) => {
            if let Err(r) = member(&api, &z) {
                return r;
            }
            vec![z]
        }
        None => api.state.zones.online(),
    };
    let asks = zones.iter().map(|z| {
        let st = api.state.clone();
        async move {
            (
                z.clone(),
                st.zones.dataplanes(z, Duration::from_secs(5)).await,
            )
        }
    });
    let mut items = Vec::new();
    let mut errors = serde_json::Map::new();
    for (zone, r) in futures_util::future::join_all(asks).await {
        match r {
            Ok(serde_json::Value::Array(v)) => items.extend(v),
            Ok(_) => {
                errors.insert(zone, json!("the zone sent something other than a list"));
            }
            Err(e) => {
                errors.insert(zone, json!(e.to_string()));
            }
        }
    }
    Json(json!({ "items": items, "errors": errors })).into_response()
}

#[derive(serde::Deserialize)]
pub(super) struct WindowQuery {
    window: Option<String>,
}

/// `?window=` (default 1m, at most what the global keeps).
fn window(q: &WindowQuery) -> Result<std::time::Duration, Response> {
    let Some(w) = &q.window else {
        return Ok(std::time::Duration::from_secs(60));
    };
    match humantime::parse_duration(w) {
        Ok(d) if !d.is_zero() && d <= crate::traffic::KEEP => Ok(d),
        _ => Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "window {w:?}: expected a duration like 30s or 5m, at most {}",
                humantime::format_duration(crate::traffic::KEEP)
            ),
        )),
    }
}

/// Every service across zones: rates, errors, latency, instances.
pub(super) async fn inspect_services(
    AxState(api): AxState<Api>,
    Query(q): Query<WindowQuery>,
) -> Response {
    match window(&q) {
        Ok(w) => Json(json!({
            "windowSeconds": w.as_secs_f64(),
            "items": api.state.traffic.services(w),
        }))
        .into_response(),
        Err(r) => r,
    }
}

/// One service's report intervals per zone, for charts.
pub(super) async fn inspect_service_series(
    AxState(api): AxState<Api>,
    Path(name): Path<String>,
    Query(q): Query<WindowQuery>,
) -> Response {
    match window(&q) {
        Ok(w) => Json(json!({ "service": name, "zones": api.state.traffic.series(&name, w) }))
            .into_response(),
        Err(r) => r,
    }
}

/// Zone-to-zone traffic and the service edges behind it.
pub(super) async fn inspect_traffic(
    AxState(api): AxState<Api>,
    Query(q): Query<WindowQuery>,
) -> Response {
    match window(&q) {
        Ok(w) => Json(api.state.traffic.traffic(w)).into_response(),
        Err(r) => r,
    }
}

pub(super) async fn inspect_zones(AxState(api): AxState<Api>) -> Response {
    match crate::zones::zone_views(&api.state) {
        Ok(v) => Json(json!({ "items": v })).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
