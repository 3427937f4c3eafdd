//! The admin API: HTTP/JSON behind a bearer token, plus `/ready`,
//! `/metrics` and `/config_dump`.
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
use std::time::Duration;

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::telemetry::{self, Admin};
use model::fsutil::write_private;
use model::resource::{self, FieldError, Key, Resource};
use model::token::{self, TokenKind};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::store::StoreError;
use crate::State;

pub const ZONE_TOKEN_DEFAULT: Duration = Duration::from_secs(24 * 3600);
pub const ZONE_TOKEN_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DATAPLANE_TOKEN_DEFAULT: Duration = Duration::from_secs(90 * 24 * 3600);
pub const DATAPLANE_TOKEN_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// The admin credential: created at first start in `<data-dir>/admin-token`
/// (mode 0600). `<data-dir>/ternctl.json` tells ternctl where and how to
/// connect; point `TERN_CONFIG` at it.
pub fn init_credential(state: &State) -> anyhow::Result<String> {
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

mod drills;

#[derive(Clone)]
struct Api {
    state: Arc<State>,
    token: Arc<String>,
    /// The console's signed-in browsers (read access).
    sessions: Arc<crate::console::Sessions>,
}

pub async fn serve(state: Arc<State>, registry: Registry, token: String) -> anyhow::Result<()> {
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
        .map_err(|e| anyhow::anyhow!("bind admin API {}: {e}", state.config.admin_addr))?;
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
                if let Some(v) = r.metadata.resource_version {
                    if old.resource.metadata.resource_version != Some(v) {
                        return err(
                            StatusCode::CONFLICT,
                            format!(
                                "{}/{} changed since version {v} (now {:?}); get it again and reapply",
                                r.kind,
                                r.metadata.name,
                                old.resource.metadata.resource_version
                            ),
                        );
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
            tracing::info!(resource = %stored.key(), version = ?stored.metadata.resource_version, created, "resource applied");
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenRequest {
    kind: TokenKind,
    zone: String,
    service: Option<String>,
    valid_for: Option<String>,
    /// Zone tokens: authorize replacing an already joined zone's CA.
    #[serde(default)]
    rejoin: bool,
    /// Dataplane and gateway tokens: instances registered at once.
    max_instances: Option<u32>,
}

/// The most instances one dataplane or gateway token may be allowed.
pub const MAX_INSTANCES_LIMIT: u32 = 10_000;

async fn issue_token(AxState(api): AxState<Api>, body: axum::body::Bytes) -> Response {
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad token request: {e}")),
    };
    if let Err(e) = resource::check_name("zone", &req.zone) {
        return field_err(StatusCode::UNPROCESSABLE_ENTITY, &e);
    }
    let (default, max) = match req.kind {
        TokenKind::Zone => (ZONE_TOKEN_DEFAULT, ZONE_TOKEN_MAX),
        TokenKind::Dataplane | TokenKind::Gateway => (DATAPLANE_TOKEN_DEFAULT, DATAPLANE_TOKEN_MAX),
    };
    let valid_for = match req.valid_for.as_deref().map(humantime::parse_duration) {
        None => default,
        Some(Ok(d)) if d >= Duration::from_secs(1) && d <= max => d,
        Some(Ok(_)) => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "validFor must be between 1s and {}",
                    humantime::format_duration(max)
                ),
            )
        }
        Some(Err(e)) => return err(StatusCode::UNPROCESSABLE_ENTITY, format!("validFor: {e}")),
    };
    let service = match (req.kind, req.service.as_deref()) {
        (TokenKind::Dataplane, None) => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "a dataplane token needs a service",
            )
        }
        (TokenKind::Dataplane, Some(s)) => {
            if let Err(e) = resource::check_name("service", s) {
                return field_err(StatusCode::UNPROCESSABLE_ENTITY, &e);
            }
            Some(s)
        }
        (TokenKind::Zone | TokenKind::Gateway, _) => None,
    };
    if req.rejoin && req.kind != TokenKind::Zone {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejoin applies to zone tokens only",
        );
    }
    match (req.kind, req.max_instances) {
        (TokenKind::Zone, Some(_)) => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "maxInstances applies to dataplane and gateway tokens only",
            )
        }
        (_, Some(n)) if n == 0 || n > MAX_INSTANCES_LIMIT => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("maxInstances must be between 1 and {MAX_INSTANCES_LIMIT}"),
            )
        }
        _ => {}
    }
    let purpose = match (req.kind, req.rejoin) {
        (TokenKind::Zone, true) => "rejoin",
        (TokenKind::Zone, false) => "join",
        _ => "",
    };
    let st = &api.state;
    match st.authority.issue_token(
        &st.store,
        req.kind,
        &req.zone,
        service,
        valid_for,
        &st.config.advertised(),
        purpose,
        req.max_instances,
    ) {
        Ok((token, claims)) => {
            tracing::info!(kind = req.kind.as_str(), zone = %req.zone, id = %claims.jti, purpose, "token issued");
            if req.rejoin {
                tracing::warn!(zone = %req.zone, id = %claims.jti, "re-join of the zone authorized");
                if let Err(e) = st.store.record_audit(
                    "zone.rejoin-authorized",
                    &req.zone,
                    &format!("token {}", claims.jti),
                    token::now_unix(),
                ) {
                    return store_err(e);
                }
            }
            Json(json!({
                "token": token,
                "id": claims.jti,
                "expiresAt": token::fmt_unix(claims.exp),
            }))
            .into_response()
        }
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn list_tokens(AxState(api): AxState<Api>) -> Response {
    let st = &api.state;
    match st.store.tokens() {
        Ok(t) => {
            let items: Vec<Value> = t
                .into_iter()
                .map(|t| {
                    let revoked = matches!(st.store.get("Revocation", &t.id), Ok(Some(_)));
                    json!({
                        "id": t.id, "kind": t.kind, "zone": t.zone, "service": t.service,
                        "issuedAt": token::fmt_unix(t.issued_at),
                        "expiresAt": token::fmt_unix(t.expires_at),
                        "purpose": t.purpose,
                        "usedAt": t.used_at.map(token::fmt_unix),
                        "usedBy": t.used_by,
                        "revoked": revoked,
                        "expired": t.expires_at <= token::now_unix(),
                    })
                })
                .collect();
            Json(json!({ "items": items })).into_response()
        }
        Err(e) => store_err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    id: String,
    reason: Option<String>,
}

/// The longest revocation reason. It is stored in the `Revocation`, which
/// every zone validates against `MAX_RESOURCE_BYTES` and which cannot be
/// deleted: one too large would have every zone refuse every later delta.
pub const MAX_REASON_BYTES: usize = 1024;

async fn revoke(AxState(api): AxState<Api>, body: axum::body::Bytes) -> Response {
    let req: RevokeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad revoke request: {e}")),
    };
    if let Some(n) = req
        .reason
        .as_ref()
        .map(String::len)
        .filter(|&n| n > MAX_REASON_BYTES)
    {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "reason is {n} bytes; the limit is {MAX_REASON_BYTES}: shorten it (the token \
                 was not revoked)"
            ),
        );
    }
    let st = &api.state;
    match st.store.tokens() {
        Ok(t) if t.iter().any(|t| t.id == req.id) => {}
        Ok(_) => {
            return err(
                StatusCode::NOT_FOUND,
                format!(
                "no token with id {:?} was issued by this mesh; `ternctl get tokens` lists them",
                req.id
            ),
            )
        }
        Err(e) => return store_err(e),
    }
    let now = token::fmt_unix(token::now_unix());
    let r = Resource {
        api_version: resource::API_VERSION.into(),
        kind: "Revocation".into(),
        metadata: resource::Metadata {
            name: req.id.clone(),
            ..Default::default()
        },
        spec: json!({ "revokedAt": now, "reason": req.reason }),
    };
    // The revocation, and what it takes away (a zone's trust and ingress),
    // reach the zones as one change. Revoking a revoked token again takes
    // away what is left (a zone CA issued despite the revocation): the
    // operator's repair; when nothing is left it changes nothing.
    let now_unix = token::now_unix();
    let res = st.store.transact(|tx| {
        let already = tx.get("Revocation", &req.id)?.is_some();
        if !already {
            tx.put(r, &now)?;
            tx.audit(
                "token.revoked",
                &req.id,
                req.reason.as_deref().unwrap_or(""),
                now_unix,
            )?;
        }
        Ok::<_, StoreError>((
            already,
            crate::membership::on_revoked(tx, &req.id, now_unix)?,
        ))
    });
    match res {
        Ok((true, zone)) => {
            tracing::info!(id = %req.id, zone = ?zone, "token already revoked; its effects re-applied");
            Json(json!({ "revoked": req.id, "already": true, "zone": zone })).into_response()
        }
        Ok((false, zone)) => {
            tracing::warn!(id = %req.id, zone = ?zone, "token revoked");
            Json(json!({ "revoked": req.id, "zone": zone })).into_response()
        }
        Err(e) => store_err(e),
    }
}

fn refused(e: crate::membership::Refused) -> Response {
    use crate::membership::Refused;
    match e {
        Refused::Denied(m) => err(StatusCode::CONFLICT, m),
        Refused::Invalid(m) => err(StatusCode::UNPROCESSABLE_ENTITY, m),
        other => err(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn ca_status(AxState(api): AxState<Api>) -> Response {
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

async fn ca_rotate(AxState(api): AxState<Api>, body: axum::body::Bytes) -> Response {
    let req: RotateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad rotate request: {e}")),
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

async fn audit(AxState(api): AxState<Api>) -> Response {
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

/// A dataplane explained by its zone: the policies that apply to it and
/// the rules, routes and endpoints they compile to.
async fn inspect_dataplane(
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
struct ZoneQuery {
    zone: Option<String>,
}

/// The proxies of one zone (`?zone=`) or of every zone online, asked of
/// the zones now. A zone that does not answer is listed under `errors`.
async fn inspect_dataplanes(AxState(api): AxState<Api>, Query(q): Query<ZoneQuery>) -> Response {
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
struct WindowQuery {
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
async fn inspect_services(AxState(api): AxState<Api>, Query(q): Query<WindowQuery>) -> Response {
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
async fn inspect_service_series(
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
async fn inspect_traffic(AxState(api): AxState<Api>, Query(q): Query<WindowQuery>) -> Response {
    match window(&q) {
        Ok(w) => Json(api.state.traffic.traffic(w)).into_response(),
        Err(r) => r,
    }
}

async fn inspect_zones(AxState(api): AxState<Api>) -> Response {
    match crate::zones::zone_views(&api.state) {
        Ok(v) => Json(json!({ "items": v })).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests;
