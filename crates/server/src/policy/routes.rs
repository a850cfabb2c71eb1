//! HTTP routes of the policy area: read and replace the tenant's policy (JSON or TOML), its
//! audit trail, and held messages (`queue_until_e2ee`).
//!
//! Handlers are thin: authenticate, parse, validate, go through [`super::Policies`]. Problem
//! details never echo request values; a policy's validation problems are listed by path.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sealgate_proto::identity::{valid_e164, valid_user_id};
use sealgate_proto::policy::{
    CreateHoldRequest, FallbackReason, HoldList, HoldView, PolicyHistory, PolicyView, Step,
};
use sealgate_proto::problem::PROBLEM_JSON;
use sealgate_proto::{ErrorCode, Problem};

use super::{HoldRecord, RouteDecision, parse_document};
use crate::AppState;
use crate::api::extract::Path;
use crate::api::json::Json;
use crate::auth::{TenantAuth, TenantOrDevice, random_id, secret_hash};
use crate::error::{ApiError, ApiResult};
use crate::store::now_millis;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/policy", get(get_policy).put(put_policy))
        .route("/v1/policy/history", get(policy_history))
        .route("/v1/holds", get(list_holds).post(create_hold))
        .route("/v1/holds/{hold_id}", get(get_hold).delete(finish_hold))
}

/// The tenant's effective policy (version 0 = the built-in default).
#[utoipa::path(
    get, path = "/v1/policy", tag = "policy",
    security(("api_key" = []), ("device_token" = [])),
    responses((status = 200, description = "The effective policy", body = PolicyView))
)]
pub async fn get_policy(
    State(state): State<AppState>,
    auth: TenantOrDevice,
) -> ApiResult<Json<PolicyView>> {
    Ok(Json(state.policy().view(auth.tenant_id()).await?))
}

/// `422 invalid_policy` with an `errors` member listing every problem (RFC 7807 extension).
pub fn invalid_policy(issues: &[String]) -> Response {
    let problem = Problem::new(
        ErrorCode::InvalidPolicy,
        Some(format!(
            "{} problem(s): {}",
            issues.len(),
            issues.join("; ")
        )),
    );
    let mut value = serde_json::to_value(&problem).unwrap_or_default();
    value["errors"] = serde_json::json!(issues);
    let mut resp = (
        StatusCode::UNPROCESSABLE_ENTITY,
        serde_json::to_vec(&value).unwrap_or_default(),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    resp
}

/// Who made a change, for the audit trail: a short digest of the API key, never the key.
fn actor(headers: &HeaderMap) -> String {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    format!("api_key:{}", &secret_hash(key)[..8])
}

/// Replace the tenant's policy.
///
/// The body is JSON (`application/json`) or TOML (`application/toml`):
/// `{"classes": {"sensitive": ["e2ee", {"step": "secure_link", "over": "sms"}, "block"]}}`.
/// Steps: `e2ee` (first only), `secure_link` (`over` = `rcs` | `sms`), `redacted_text`,
/// `plain_rcs`, `plain_sms`, `queue_until_e2ee` (`ttl_secs`), `block`. Classes not named use
/// the default. Every change is a new version in `GET /v1/policy/history`.
#[utoipa::path(
    put, path = "/v1/policy", tag = "policy",
    request_body(content = PolicyView, description = "`classes` (JSON or TOML)", content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Stored as the next version", body = PolicyView),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_policy`, with `errors` listing every problem", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_policy(
    State(state): State<AppState>,
    auth: TenantAuth,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PolicyView>, Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let toml = if content_type.starts_with("application/json") {
        false
    } else if content_type.starts_with("application/toml")
        || content_type.starts_with("text/x-toml")
    {
        true
    } else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "Content-Type must be application/json or application/toml",
        )
        .into_response());
    };
    let rules = parse_document(&body, toml).map_err(|issues| invalid_policy(&issues))?;
    let view = state
        .policy()
        .set(&auth.tenant_id, &rules, &actor(&headers))
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(view))
}

/// Every change of the tenant's policy, newest first: who, when, versions and digests.
#[utoipa::path(
    get, path = "/v1/policy/history", tag = "policy",
    security(("api_key" = [])),
    responses((status = 200, description = "The audit trail", body = PolicyHistory))
)]
pub async fn policy_history(
    State(state): State<AppState>,
    auth: TenantAuth,
) -> ApiResult<Json<PolicyHistory>> {
    Ok(Json(PolicyHistory {
        changes: state
            .policy()
            .store()
            .policy_history(&auth.tenant_id, 1000)
            .await?,
    }))
}

/// Hold a message until the recipient registers an E2EE device (`queue_until_e2ee`).
///
/// The gateway keeps no content: the sender's SDK keeps it and polls `GET /v1/holds`. When
/// the hold turns `ready` it encrypts and sends; when it turns `expired` it runs the next step
/// of the chain. Allowed only if the class's chain has a `queue_until_e2ee` step with at least
/// this TTL.
#[utoipa::path(
    post, path = "/v1/holds", tag = "policy",
    request_body = CreateHoldRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Held", body = HoldView),
        (status = 403, description = "`policy_forbids_route`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_field`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_hold(
    State(state): State<AppState>,
    auth: TenantAuth,
    Json(req): Json<CreateHoldRequest>,
) -> ApiResult<(StatusCode, Json<HoldView>)> {
    if !valid_e164(&req.to) && !valid_user_id(&req.to) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "to: must be an E.164 phone number or a user id",
        ));
    }
    let step = Step::QueueUntilE2ee {
        ttl_secs: req.ttl_secs,
    };
    state
        .policy()
        .check(&auth.tenant_id, req.class, &step)
        .await?;
    let now = now_millis();
    let ttl_ms = i64::try_from(req.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let caps = state
        .capabilities()
        .lookup(&state, &auth.tenant_id, &req.to)
        .await?;
    let hold = HoldRecord {
        hold_id: random_id("hd"),
        tenant_id: auth.tenant_id.clone(),
        recipient: req.to,
        class: req.class,
        created_at: now,
        expires_at: now.saturating_add(ttl_ms),
        // A device may have come since the sender looked: ready at once.
        ready_at: (caps.e2ee_devices > 0).then_some(now),
        done_at: None,
    };
    state.policy().store().create_hold(&hold).await?;
    state.policy().record(&RouteDecision {
        route: step.route(),
        reason: FallbackReason::NoE2eeDevice,
        class: req.class,
    });
    Ok((StatusCode::CREATED, Json(hold.view(now))))
}

/// The tenant's holds that are not done (waiting, ready, expired), oldest first.
#[utoipa::path(
    get, path = "/v1/holds", tag = "policy",
    security(("api_key" = [])),
    responses((status = 200, description = "Open holds", body = HoldList))
)]
pub async fn list_holds(
    State(state): State<AppState>,
    auth: TenantAuth,
) -> ApiResult<Json<HoldList>> {
    let now = now_millis();
    let holds = state
        .policy()
        .store()
        .open_holds(&auth.tenant_id, 1000)
        .await?;
    Ok(Json(HoldList {
        holds: holds.iter().map(|h| h.view(now)).collect(),
    }))
}

/// One hold.
#[utoipa::path(
    get, path = "/v1/holds/{hold_id}", tag = "policy",
    params(("hold_id" = String, Path, description = "From POST /v1/holds")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The hold", body = HoldView),
        (status = 404, description = "`unknown_hold`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_hold(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(hold_id): Path<String>,
) -> ApiResult<Json<HoldView>> {
    state
        .policy()
        .store()
        .hold(&auth.tenant_id, &hold_id)
        .await?
        .map(|h| Json(h.view(now_millis())))
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownHold, "no such hold"))
}

/// Mark a hold handled (the sender sent it, or gave up).
#[utoipa::path(
    delete, path = "/v1/holds/{hold_id}", tag = "policy",
    params(("hold_id" = String, Path, description = "From POST /v1/holds")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Done"),
        (status = 404, description = "`unknown_hold` (or already done)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn finish_hold(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(hold_id): Path<String>,
) -> ApiResult<StatusCode> {
    if state
        .policy()
        .store()
        .finish_hold(&auth.tenant_id, &hold_id, now_millis())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(ErrorCode::UnknownHold, "no such open hold"))
    }
}
