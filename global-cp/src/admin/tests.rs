use super::inspect::ZoneQuery;
use super::*;
use crate::membership::tests::{csr, fixture, token, Fixture};

fn api(f: &Fixture) -> Api {
    Api {
        state: f.st.clone(),
        token: Arc::new("admin".into()),
        sessions: Default::default(),
    }
}

async fn answer(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn revoke_with(api: &Api, id: &str, reason: &str) -> (StatusCode, Value) {
    let body = serde_json::to_vec(&json!({ "id": id, "reason": reason })).unwrap();
    answer(revoke(AxState(api.clone()), body.into()).await).await
}

async fn put_zone(api: &Api, r: &Value, dry_run: bool) -> (StatusCode, Value) {
    let body = serde_json::to_vec(r).unwrap();
    answer(
        put_one(
            AxState(api.clone()),
            Path(("zones".into(), "eu-1".into())),
            Query(PutQuery { dry_run }),
            body.into(),
        )
        .await,
    )
    .await
}

/// A revocation reason past MAX_REASON_BYTES is refused with 422 and
/// nothing is stored. Without the bound, a 300 KiB reason was stored
/// in a `Revocation` that every zone refuses (it exceeds
/// MAX_RESOURCE_BYTES) and that cannot be deleted. A reason at the
/// limit is stored, and the `Revocation` passes the zones' validation.
#[tokio::test]
async fn a_revocation_reason_past_the_limit_is_refused_and_nothing_is_stored() {
    let f = fixture("admin-reason");
    let api = api(&f);
    let (_, jti) = token(&f.st, "eu-1", "join");
    for n in [300 * 1024, MAX_REASON_BYTES + 1] {
        let (status, body) = revoke_with(&api, &jti, &"x".repeat(n)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{n}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains("the limit is 1024"), "{msg}");
        assert!(f.st.store.get("Revocation", &jti).unwrap().is_none());
        assert!(f.st.store.audit(10).unwrap().is_empty());
    }
    let (status, body) = revoke_with(&api, &jti, &"x".repeat(MAX_REASON_BYTES)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = f.st.store.get("Revocation", &jti).unwrap().unwrap();
    resource::validate(&stored.resource).unwrap();
}

/// Revoking a revoked token again re-applies what revoking takes away:
/// a zone whose CA outlived its token's revocation (here the
/// `Revocation` is written directly, skipping `on_revoked`) loses its
/// `ZoneCa`. Without the repair the second revoke answered `already`
/// and left the zone's CA trusted mesh-wide. Once nothing is left,
/// revoking again changes nothing (no revision, no audit).
#[tokio::test]
async fn revoking_again_withdraws_a_zone_ca_that_outlived_its_revocation() {
    let f = fixture("admin-revoke-again");
    let api = api(&f);
    let (t, jti) = token(&f.st, "eu-1", "join");
    crate::membership::join(&f.st, "eu-1", &t, &csr()).unwrap();
    f.st.store
        .put(
            Resource {
                api_version: resource::API_VERSION.into(),
                kind: "Revocation".into(),
                metadata: resource::Metadata {
                    name: jti.clone(),
                    ..Default::default()
                },
                spec: json!({ "revokedAt": "now" }),
            },
            "now",
        )
        .unwrap();
    assert!(f.st.store.get("ZoneCa", "eu-1").unwrap().is_some());
    let (status, body) = revoke_with(&api, &jti, "again").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["already"], true, "{body}");
    assert_eq!(body["zone"], "eu-1", "{body}");
    assert!(f.st.store.get("ZoneCa", "eu-1").unwrap().is_none());
    let rev = f.st.store.revision();
    let audited = f.st.store.audit(100).unwrap().len();
    let (status, body) = revoke_with(&api, &jti, "and again").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(f.st.store.revision(), rev);
    assert_eq!(f.st.store.audit(100).unwrap().len(), audited);
}

/// A resource whose body is within MAX_RESOURCE_BYTES but which the
/// store's version and timestamps push past it is refused (413), dry
/// run or not: stored, every zone would refuse every delta until it
/// was deleted. Without the check both PUTs answered 201/200.
#[tokio::test]
async fn a_resource_past_the_limit_once_stored_is_refused() {
    let f = fixture("admin-stored-size");
    let api = api(&f);
    let zone = |desc: &str| {
        json!({
            "apiVersion": resource::API_VERSION, "kind": "Zone",
            "metadata": { "name": "eu-1" }, "spec": { "description": desc },
        })
    };
    let empty = serde_json::to_vec(&zone("")).unwrap().len();
    let big = zone(&"d".repeat(resource::MAX_RESOURCE_BYTES - 10 - empty));
    // The body itself passes the model's own size check.
    resource::from_value(big.clone()).unwrap();
    for dry_run in [true, false] {
        let (status, body) = put_zone(&api, &big, dry_run).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("as stored"),
            "{body}"
        );
    }
    assert!(f.st.store.get("Zone", "eu-1").unwrap().is_none());
    let (status, _) = put_zone(&api, &zone("small"), false).await;
    assert_eq!(status, StatusCode::CREATED);
}

/// A dry run naming a resourceVersion of a resource that does not
/// exist answers 409 with the real write's message, not 200 "created".
#[tokio::test]
async fn a_dry_run_with_a_version_of_a_missing_resource_conflicts_as_the_write_does() {
    let f = fixture("admin-dry-run");
    let api = api(&f);
    let r = json!({
        "apiVersion": resource::API_VERSION, "kind": "Zone",
        "metadata": { "name": "eu-1", "resourceVersion": 3 },
    });
    let dry = put_zone(&api, &r, true).await;
    let real = put_zone(&api, &r, false).await;
    assert_eq!(real.0, StatusCode::CONFLICT, "{}", real.1);
    assert_eq!(dry, real);
    assert!(f.st.store.get("Zone", "eu-1").unwrap().is_none());
}

/// Inspecting a zone that never joined answers 404 naming it (asking
/// again would not help); a member that is offline still answers 503.
#[tokio::test]
async fn inspecting_a_zone_that_never_joined_is_404_and_an_offline_member_503() {
    let f = fixture("admin-inspect");
    let api = api(&f);
    let (t, _) = token(&f.st, "eu-1", "join");
    crate::membership::join(&f.st, "eu-1", &t, &csr()).unwrap();
    let one = |zone: &str| {
        inspect_dataplane(
            AxState(api.clone()),
            Path((zone.to_string(), "api-1".to_string())),
        )
    };
    let (status, body) = answer(one("nope").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("zone \"nope\" has not joined"), "{msg}");
    let (status, body) = answer(one("eu-1").await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("ask again"));
    let list = |zone: &str| {
        inspect_dataplanes(
            AxState(api.clone()),
            Query(ZoneQuery {
                zone: Some(zone.to_string()),
            }),
        )
    };
    let (status, body) = answer(list("nope").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = answer(list("eu-1").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["errors"]["eu-1"].is_string(), "{body}");
}
