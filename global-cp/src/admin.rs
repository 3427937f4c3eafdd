//! The admin API: HTTP/JSON behind a bearer token, plus `/ready`,
//! `/metrics` and `/config_dump`. This file serves it and holds the
//! resource endpoints; tokens and revocations are in `admin/tokens.rs`,
//! the CA and audit log in `admin/ca.rs`, the inspect views in
//! `admin/inspect.rs`, drills in `admin/drills.rs`.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /api/v1/{plural} | list resources of a kind |
//! | GET, PUT, DELETE | /api/v1/{plural}/{name} | one resource |
//! | GET, POST | /api/v1/tokens | list issued tokens, issue one |
//! | POST | /api/v1/revocations | revoke a token by id (`reason`: at most [`MAX_REASON_BYTES`]) |
//! | GET | /api/v1/inspect/zones | zone status |
//! | GET | /api/v1/audit | membership, CA and revocation events, newest first |
//! | GET | /api/v1/ca | the mesh roots, a rotation in progress, each zone's CA |
//! | POST | /api/v1/ca/rotate | `{"action": "start"}` or `{"action": "finish", "force": false}` |

use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::telemetry::{self, Admin};
use model::fsutil::write_private;
use model::resource::{self, FieldError, Key, Resource};
use model::token;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::store::StoreError;
use crate::State;

/// The admin credential: created at first start in `<data-dir>/admin-token`
/// (mode 0600). `<data-dir>/ternctl.json` tells ternctl where and how to
/// connect; point `TERN_CONFIG` at it.
pub fn init_credential(state: &State) -> Result<String, crate::Error> {
    let dir = &state.config.data_dir;
    let path = dir.join("admin-token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = format!("{}{}", token::random_id(), token::random_id());
            write_private(&path, &t)?;
            tracing::info!(path = %path.display(), "created admin credential");
            t
        }
    };
    let cfg = json!({ "server": format!("http://{}", state.config.admin_addr), "token": token });
    write_private(
        &dir.join("ternctl.json"),
        &serde_json::to_string_pretty(&cfg)?,
    )?;
    Ok(token)
}

mod ca;
mod drills;
mod inspect;
mod tokens;

use ca::{audit, ca_rotate, ca_status};
use inspect::{
    inspect_dataplane, inspect_dataplanes, inspect_service_series, inspect_services,
    inspect_traffic, inspect_zones,
};
use tokens::{issue_token, list_tokens, revoke};
pub use tokens::{
    DATAPLANE_TOKEN_DEFAULT, DATAPLANE_TOKEN_MAX, MAX_INSTANCES_LIMIT, MAX_REASON_BYTES,
    ZONE_TOKEN_DEFAULT, ZONE_TOKEN_MAX,
};

#[derive(Clone)]
struct Api {
    state: Arc<State>,
    token: Arc<String>,
    /// The console's signed-in browsers (read access).
    sessions: Arc<crate::console::Sessions>,
}

pub async fn serve(
    state: Arc<State>,
    registry: Registry,
    token: String,
) -> Result<(), crate::Error> {
    let dump_state = state.clone();
    let ready_state = state.clone();
    let admin = Admin::new(
        registry,
        move || {
            ready_state
                .store
                .meta_get("trust_domain")
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        move || {
            json!({
                "trustDomain": dump_state.authority.trust_domain,
                "caFingerprint": dump_state.authority.root_fingerprint(),
                "revision": dump_state.store.revision(),
                "syncAddr": dump_state.config.sync_addr.to_string(),
                "advertise": dump_state.config.advertised(),
                "zones": crate::zones::zone_views(&dump_state).unwrap_or_default(),
            })
        },
    )
    .with_token(Some(token.clone()));
    let api = Api {
        state: state.clone(),
        token: Arc::new(token),
        sessions: Default::default(),
    };
    let console = crate::console::router(crate::console::Console {
        sessions: api.sessions.clone(),
        token: api.token.clone(),
    });
    let router = Router::new()
        .route("/api/v1/tokens", get(list_tokens).post(issue_token))
        .route("/api/v1/revocations", post(revoke))
        .route("/api/v1/inspect/zones", get(inspect_zones))
        .route(
            "/api/v1/inspect/dataplanes/:zone/:name",
            get(inspect_dataplane),
        )
        .route("/api/v1/inspect/dataplanes", get(inspect_dataplanes))
        .route("/api/v1/inspect/services", get(inspect_services))
        .route(
            "/api/v1/inspect/services/:name/series",
            get(inspect_service_series),
        )
        .route("/api/v1/inspect/traffic", get(inspect_traffic))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/drill-runs", get(drills::status))
        .route("/api/v1/drills/:name/run", post(drills::run))
        .route("/api/v1/drills/:name/abort", post(drills::abort))
        .route("/api/v1/drills/:name/report", get(drills::report))
        .route("/api/v1/ca", get(ca_status))
        .route("/api/v1/ca/rotate", post(ca_rotate))
        .route("/api/v1/:plural", get(list))
        .route(
            "/api/v1/:plural/:name",
            get(get_one).put(put_one).delete(delete_one),
        )
        .layer(axum::middleware::from_fn_with_state(api.clone(), auth))
        .with_state(api)
        .merge(admin.router())
        .merge(console);
    telemetry::serve_router(router, state.config.admin_addr)
        .await
        .map_err(common::bind::failed(
            "bind admin API",
            state.config.admin_addr,
        ))?;
    Ok(())
}

async fn auth(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The console's session cookie allows reads only.
    let read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if read && telemetry::bearer(&headers).is_none() && api.sessions.valid(&headers) {
        return next.run(req).await;
    }
    // ...and, with its CSRF token, aborting a drill (which only restores).
    let path = req.uri().path();
    let abort = *req.method() == axum::http::Method::POST
        && path.starts_with("/api/v1/drills/")
        && path.ends_with("/abort");
    if abort && telemetry::bearer(&headers).is_none() && api.sessions.write_allowed(&headers) {
        return next.run(req).await;
    }
    match telemetry::bearer(&headers) {
        Some(t) if telemetry::constant_time_eq(t.as_bytes(), api.token.as_bytes()) => next.run(req).await,
        Some(_) => err(StatusCode::UNAUTHORIZED, "the admin token is wrong; use the one in <data-dir>/admin-token"),
        None => err(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <admin token>`; the token is in the global's <data-dir>/admin-token",
        ),
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// A request body as `T`, or the 400 that says what was wrong with it
/// (`what`: "token", "revoke", ...).
fn request_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("bad {what} request: {e}")))
}

fn field_err(status: StatusCode, e: &FieldError) -> Response {
    (
        status,
        Json(json!({ "error": e.to_string(), "field": e.path, "message": e.message })),
    )
        .into_response()
}

fn store_err(e: StoreError) -> Response {
    match e {
        StoreError::Conflict { .. } | StoreError::Missing { .. } => {
            err(StatusCode::CONFLICT, e.to_string())
        }
        other => {
            tracing::error!(error = %other, "store failure");
            err(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
        }
    }
}

/// A kind that `apply`/`delete` may write, or the response refusing it.
fn writable_kind(plural: &str, refusal: &str) -> Result<&'static resource::KindInfo, Response> {
    let kind = kind_of(plural)?;
    if kind.system {
        return Err(err(
            StatusCode::FORBIDDEN,
            format!("{} resources {refusal}", kind.name),
        ));
    }
    Ok(kind)
}

fn kind_of(plural: &str) -> Result<&'static resource::KindInfo, Response> {
    resource::kind_info(plural).ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            format!(
                "unknown kind {plural:?}; known kinds: {}",
                resource::known_kinds()
            ),
        )
    })
}

async fn list(AxState(api): AxState<Api>, Path(plural): Path<String>) -> Response {
    let kind = match kind_of(&plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match api.state.store.list(Some(kind.name)) {
        Ok(items) => Json(json!({
            "items": items.into_iter().map(|s| s.resource).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => store_err(e),
    }
}

async fn get_one(
    AxState(api): AxState<Api>,
    Path((plural, name)): Path<(String, String)>,
) -> Response {
    let kind = match kind_of(&plural) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match api.state.store.get(kind.name, &name) {
        Ok(Some(s)) => Json(s.resource).into_response(),
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            format!("{}/{name} not found", kind.name),
        ),
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PutQuery {
    #[serde(default)]
    dry_run: bool,
}

/// What the mesh knows exists, for warnings about policies that match
/// nothing: services and regions from zones' inventories, zones from
/// `Zone` resources and inventories.
fn known(api: &Api) -> model::policy::Known {
    let mut k = model::policy::Known::default();
    for s in api.state.store.list(Some("Zone")).unwrap_or_default() {
        k.zones.insert(s.resource.metadata.name);
    }
    for s in api
        .state
        .store
        .list(Some("ZoneIngress"))
        .unwrap_or_default()
    {
        if let Some(spec) = resource::ZoneIngressSpec::from_resource(&s.resource) {
            k.zones.insert(s.resource.metadata.name.clone());
            k.regions.insert(spec.region);
            k.services.extend(spec.services.into_keys());
        }
    }
    k
}

/// `Warning` headers (as Kubernetes sends them) for a policy that can never
/// take effect yet.
fn with_warnings(mut resp: Response, r: &Resource, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!(
            "299 - \"{}/{}: {}\"",
            r.kind,
            r.metadata.name,
            w.replace('"', "'")
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            resp.headers_mut().append(axum::http::header::WARNING, v);
        }
    }
    resp
}

/// The size of `r` as the store keeps it and the zones validate it: with
/// the largest version and its timestamps set.
fn stored_size(r: &Resource) -> usize {
    let mut r = r.clone();
    let now = token::fmt_unix(token::now_unix());
    r.metadata.resource_version = Some(u64::MAX);
    r.metadata.creation_timestamp = Some(now.clone());
    r.metadata.update_timestamp = Some(now);
    serde_json::to_vec(&r).map_or(usize::MAX, |v| v.len())
}

async fn put_one(
    AxState(api): AxState<Api>,
    Path((plural, name)): Path<(String, String)>,
    Query(q): Query<PutQuery>,
    body: axum::body::Bytes,
) -> Response {
    let kind = match writable_kind(
        &plural,
        "are written by the control plane; use `ternctl revoke`",
    ) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if body.len() > resource::MAX_RESOURCE_BYTES {
        return err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "resource is {} bytes; the limit is {}",
                body.len(),
                resource::MAX_RESOURCE_BYTES
            ),
        );
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
    };
    let r: Resource = match resource::from_value(value) {
        Ok(r) => r,
        Err(e) => return field_err(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    if r.kind != kind.name || r.metadata.name != name {
        return err(
            StatusCode::BAD_REQUEST,
            format!(
                "body is {}/{}, but the path names {}/{name}",
                r.kind, r.metadata.name, kind.name
            ),
        );
    }
    // The store adds a version and timestamps; what the zones receive must
    // still be within their limit, or every zone refuses every delta.
    let stored = stored_size(&r);
    if stored > resource::MAX_RESOURCE_BYTES {
        return err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "resource is {stored} bytes as stored (with its version and timestamps); the \
                 limit is {}",
                resource::MAX_RESOURCE_BYTES
            ),
        );
    }
    let warnings = model::policy::warnings(&r, &known(&api));
    if q.dry_run {
        // What would change; nothing is stored.
        let result = match api.state.store.get(&r.kind, &r.metadata.name) {
            // A version names a stored resource: the write would conflict.
            Ok(None) => match r.metadata.resource_version {
                Some(sent) => return store_err(StoreError::Missing { key: r.key(), sent }),
                None => "created",
            },
            Ok(Some(old)) => {
                if let Some(sent) = r.metadata.resource_version {
                    let current = old.resource.metadata.resource_version.unwrap_or(0);
                    if current != sent {
                        // The same refusal the write would give.
                        return store_err(StoreError::Conflict {
                            key: r.key(),
                            sent,
                            current,
                        });
                    }
                }
                if old.resource.spec == r.spec && old.resource.metadata.labels == r.metadata.labels
                {
                    "unchanged"
                } else {
                    "configured"
                }
            }
            Err(e) => return store_err(e),
        };
        let resp = Json(json!({"dryRun": true, "result": result, "resource": r})).into_response();
        return with_warnings(resp, &r, &warnings);
    }
    let shown = r.clone();
    match api.state.store.put(r, &token::fmt_unix(token::now_unix())) {
        Ok((stored, created)) => {
            tracing::info!(resource = %stored.key(), version = stored.metadata.resource_version.unwrap_or(0), created, "resource applied");
            for w in &warnings {
                tracing::warn!(resource = %stored.key(), warning = %w, "stored, but it matches nothing yet");
            }
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            with_warnings((status, Json(stored)).into_response(), &shown, &warnings)
        }
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteQuery {
    resource_version: Option<u64>,
}

async fn delete_one(
    AxState(api): AxState<Api>,
    Path((plural, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    let kind = match writable_kind(&plural, "cannot be deleted") {
        Ok(k) => k,
        Err(r) => return r,
    };
    let key = Key {
        kind: kind.name.into(),
        name: name.clone(),
    };
    match api.state.store.delete(&key, q.resource_version) {
        Ok(true) => {
            tracing::info!(resource = %key, "resource deleted");
            Json(json!({ "deleted": key.to_string() })).into_response()
        }
        Ok(false) => err(StatusCode::NOT_FOUND, format!("{key} not found")),
        Err(e) => store_err(e),
    }
}

#[cfg(test)]
mod tests;
