//! Token endpoints: issue (`POST /api/v1/tokens`), list, and revoke
//! (`POST /api/v1/revocations`). Issuing and revoking are written to the
//! audit log; a token's secret is shown once, at issue.

use std::time::Duration;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::resource::{self, Resource};
use model::token::{self, TokenKind};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{err, field_err, request_body, store_err, Api};
use crate::store::StoreError;

/// Lifetimes a token gets when its request names none, and the longest it
/// may ask for.
pub const ZONE_TOKEN_DEFAULT: Duration = Duration::from_secs(24 * 3600);
pub const ZONE_TOKEN_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DATAPLANE_TOKEN_DEFAULT: Duration = Duration::from_secs(90 * 24 * 3600);
pub const DATAPLANE_TOKEN_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

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

pub(super) async fn issue_token(AxState(api): AxState<Api>, body: axum::body::Bytes) -> Response {
    let req: TokenRequest = match request_body(&body, "token") {
        Ok(r) => r,
        Err(refused) => return refused,
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
                    "validFor (ternctl: --valid-for) must be between 1s and {}d",
                    max.as_secs() / 86_400
                ),
            )
        }
        Some(Err(e)) => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("validFor (ternctl: --valid-for): {e}; give a duration such as 12h or 30d"),
            )
        }
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
    // A plain token for a zone that has joined could never be used.
    if req.kind == TokenKind::Zone && !req.rejoin {
        match crate::membership::has_joined(st, &req.zone) {
            Ok(false) => {}
            Ok(true) => {
                return err(
                    StatusCode::CONFLICT,
                    format!(
                        "zone {} has already joined, and a zone joins once. If its zone control \
                         plane lost its data, authorize a re-join with `ternctl generate \
                         zone-token --zone {} --rejoin`",
                        req.zone, req.zone
                    ),
                )
            }
            Err(e) => return store_err(e),
        }
    }
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

pub(super) async fn list_tokens(AxState(api): AxState<Api>) -> Response {
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

pub(super) async fn revoke(AxState(api): AxState<Api>, body: axum::body::Bytes) -> Response {
    let req: RevokeRequest = match request_body(&body, "revoke") {
        Ok(r) => r,
        Err(refused) => return refused,
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
            tracing::info!(id = %req.id, zone = zone.as_deref().unwrap_or("-"), "token already revoked; its effects re-applied");
            Json(json!({ "revoked": req.id, "already": true, "zone": zone })).into_response()
        }
        Ok((false, zone)) => {
            tracing::warn!(id = %req.id, zone = zone.as_deref().unwrap_or("-"), "token revoked");
            Json(json!({ "revoked": req.id, "zone": zone })).into_response()
        }
        Err(e) => store_err(e),
    }
}
