//! HTTP routes of the send pipeline: send and status (tenant API key), status callback
//! registration, carrier receipts (HMAC-verified, no API key), dead letters (operator),
//! device push tokens, and `/metrics`.
//!
//! Handlers are thin: authenticate, validate ([`super::accept`]), go through the store or the
//! group-commit writer. They must never log a body, a secret or a full phone number; problem
//! details never echo request values.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use sealgate_proto::send::{
    BatchResult, BatchSendRequest, BatchSendResponse, CARRIER_SIGNATURE_HEADER, CallbackConfig,
    CallbackRegistered, CarrierEvent, CarrierEventKind, DeadLetterList, IDEMPOTENCY_KEY_HEADER,
    MAX_BATCH_MESSAGES, MessageStatus, MessageView, PushTokenRequest, ReplayResponse, SendAccepted,
    SendRequest,
};
use sealgate_proto::{ErrorCode, Problem};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::accept::{prepare, valid_idempotency_key};
use super::limiter::Refusal;
use super::signature::verify_carrier;
use super::store::{AcceptOutcome, NewMessage, ReceiptOutcome, TenantCallback, Transition};
use crate::AppState;
use crate::api::extract::{Path, Query};
use crate::api::json::Json;
use crate::auth::{DeviceAuth, OperatorAuth, SecretKind, TenantAuth, new_secret, time_ordered_id};
use crate::error::{ApiError, ApiResult};
use crate::policy::RouteDecision;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(send_message))
        .route("/v1/messages/batch", post(send_batch))
        .route("/v1/messages/{message_id}", get(get_message))
        .route("/v1/callbacks", put(put_callback))
        .route("/v1/webhooks/carrier", post(carrier_webhook))
        .route("/v1/admin/dead-letters", get(list_dead_letters))
        .route(
            "/v1/admin/dead-letters/{dead_letter_id}/replay",
            post(replay_dead_letter),
        )
        .route("/v1/devices/me/push-token", put(put_push_token))
        .route("/metrics", get(metrics))
}

/// Outcome of `POST /v1/webhooks/carrier`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReceiptAck {
    /// `applied`, `ignored` (state already past it) or `duplicate` (event id seen before).
    pub outcome: String,
}

/// Query of `GET /v1/admin/dead-letters`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Most entries, newest first (default 100, at most 1000).
    pub limit: Option<u32>,
}

fn refused(state: &AppState, tenant: &str, refusal: Refusal) -> ApiError {
    let (code, wait) = match refusal {
        Refusal::RateLimited(w) => (ErrorCode::RateLimited, w),
        Refusal::QuotaExceeded(w) => (ErrorCode::QuotaExceeded, w),
        Refusal::OverBurst(burst) => {
            return ApiError::new(
                ErrorCode::InvalidField,
                format!("messages: this tenant's rate limit allows at most {burst} per request"),
            );
        }
        Refusal::Store(e) => return e.into(),
    };
    state
        .delivery()
        .metrics()
        .rejected
        .with_label_values(&[tenant, code.as_str()])
        .inc();
    let mut e = ApiError::new(
        code,
        match code {
            ErrorCode::QuotaExceeded => "the tenant's daily message quota is used up",
            _ => "too many messages; slow down",
        },
    );
    e.problem.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
    e
}

/// Send a message.
///
/// Answers 202 once the message is stored and its delivery job enqueued, atomically. The same
/// `Idempotency-Key` with the same body answers the same 202 again (keys are per tenant, kept
/// at least 24 h); with a different body, `422 idempotency_key_reused`.
#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "messages",
    request_body = SendRequest,
    params(("Idempotency-Key" = String, Header, description = "1 to 128 visible ASCII characters; makes retries safe")),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Stored and queued", body = SendAccepted),
        (status = 400, description = "idempotency_key_required, malformed_body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_group", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "policy_forbids_route: the tenant policy does not allow this kind of body for the class", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "link_expired, link_used (secure_link body)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "idempotency_key_reused, invalid_field, invalid_message", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited, quota_exceeded (with Retry-After)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send_message(
    State(state): State<AppState>,
    auth: TenantAuth,
    headers: HeaderMap,
    Json(req): Json<SendRequest>,
) -> ApiResult<(StatusCode, Json<SendAccepted>)> {
    let key = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|k| valid_idempotency_key(k))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::IdempotencyKeyRequired,
                "an Idempotency-Key header of 1 to 128 visible ASCII characters is required",
            )
        })?;
    let tenant = &auth.tenant_id;
    let now = state.delivery().clock().now_ms();
    state
        .delivery()
        .limiter()
        .check(state.delivery().backend().as_ref(), tenant, 1, now)
        .await
        .map_err(|r| refused(&state, tenant, r))?;
    let (message, route) = new_message(&state, tenant, key, req, &headers, now).await?;
    let outcome = state.delivery().acceptor().accept(message).await?;
    let message_id = settle(&state, tenant, outcome, route.as_ref())?;
    // The access-log line of this request carries the id (one line per accept, not two: at
    // 20k accepts/s, log formatting and writes were a tenth of the gateway's CPU).
    tracing::Span::current().record("message_id", message_id.as_str());
    Ok((
        StatusCode::ACCEPTED,
        Json(SendAccepted {
            message_id,
            status: MessageStatus::Queued,
        }),
    ))
}

/// Check one send request (policy, then [`prepare`]) and build the message to store.
async fn new_message(
    state: &AppState,
    tenant: &str,
    key: &str,
    req: SendRequest,
    headers: &HeaderMap,
    now: i64,
) -> ApiResult<(NewMessage, Option<RouteDecision>)> {
    let route = crate::policy::enforce(state, tenant, &req, headers).await?;
    let prepared = prepare(
        state.store(),
        tenant,
        &req,
        state.delivery().config().max_ttl_secs,
    )
    .await?;
    let correlation_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ttl_ms = req
        .ttl_secs
        .map(|t| i64::try_from(t.saturating_mul(1000)).unwrap_or(i64::MAX));
    let message = NewMessage {
        message_id: time_ordered_id("msg_"),
        tenant_id: tenant.to_owned(),
        idempotency_key: key.to_owned(),
        request_hash: prepared.request_hash,
        recipient: req.to,
        class: req.class,
        channel: prepared.channel,
        kind: prepared.kind,
        group_id: prepared.group_id,
        epoch: prepared.epoch,
        payload: prepared.payload,
        correlation_id,
        accepted_at: now,
        expires_at: ttl_ms.map(|t| now.saturating_add(t)),
    };
    Ok((message, route))
}

/// The message id a stored outcome answers with (counting a first accept and its route), or
/// the problem of a reused key.
fn settle(
    state: &AppState,
    tenant: &str,
    outcome: AcceptOutcome,
    route: Option<&RouteDecision>,
) -> ApiResult<String> {
    match outcome {
        AcceptOutcome::Accepted { message_id } => {
            state
                .delivery()
                .metrics()
                .accepted
                .with_label_values(&[tenant])
                .inc();
            if let Some(route) = route {
                state.policy().record(route);
            }
            Ok(message_id)
        }
        AcceptOutcome::Replayed { message_id } => Ok(message_id),
        AcceptOutcome::KeyReused => Err(ApiError::new(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request",
        )),
    }
}

/// Send up to 500 messages in one request.
///
/// Each message carries its own `idempotency_key` and is checked, stored and answered on its
/// own, exactly as `POST /v1/messages` would: a result holds either the `message_id` (stored
/// and queued) or the `error` that request would have answered. A refused message stores
/// nothing; retrying the whole batch with the same keys is safe (stored ones are answered
/// again with their id). The batch's size counts against the rate limit and the daily quota
/// all at once: if it does not fit, nothing is stored (`429`). The `Sealgate-Fallback-Reason`
/// header applies to every fallback message of the batch. The body is bounded by `max_body_bytes`.
#[utoipa::path(
    post,
    path = "/v1/messages/batch",
    tag = "messages",
    request_body = BatchSendRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Every message answered: stored and queued, or refused with its problem", body = BatchSendResponse),
        (status = 400, description = "malformed_body", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "payload_too_large: the body is over max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_field: no messages, more than 500, or more than the tenant's rate-limit burst", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited, quota_exceeded (with Retry-After); nothing stored", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send_batch(
    State(state): State<AppState>,
    auth: TenantAuth,
    headers: HeaderMap,
    Json(batch): Json<BatchSendRequest>,
) -> ApiResult<Json<BatchSendResponse>> {
    let count = batch.messages.len();
    if !(1..=MAX_BATCH_MESSAGES).contains(&count) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("messages: must hold 1 to {MAX_BATCH_MESSAGES} messages"),
        ));
    }
    let tenant = &auth.tenant_id;
    let now = state.delivery().clock().now_ms();
    state
        .delivery()
        .limiter()
        .check(
            state.delivery().backend().as_ref(),
            tenant,
            u32::try_from(count).unwrap_or(u32::MAX),
            now,
        )
        .await
        .map_err(|r| refused(&state, tenant, r))?;
    // Check every message; the valid ones go to the group-commit writer together.
    let mut results: Vec<BatchResult> = Vec::with_capacity(count);
    let mut checked: Vec<(usize, NewMessage, Option<RouteDecision>)> = Vec::with_capacity(count);
    for (i, item) in batch.messages.into_iter().enumerate() {
        let (key, req) = item.into_parts();
        let message = if valid_idempotency_key(&key) {
            new_message(&state, tenant, &key, req, &headers, now).await
        } else {
            Err(ApiError::new(
                ErrorCode::IdempotencyKeyRequired,
                "idempotency_key: 1 to 128 visible ASCII characters are required",
            ))
        };
        results.push(BatchResult {
            idempotency_key: key,
            message_id: None,
            status: None,
            error: None,
        });
        match message {
            Ok((message, route)) => checked.push((i, message, route)),
            Err(e) => results[i].error = Some(*e.problem),
        }
    }
    let (slots, messages): (Vec<_>, Vec<_>) = checked
        .into_iter()
        .map(|(i, message, route)| ((i, route), message))
        .unzip();
    let outcomes = state.delivery().acceptor().accept_many(messages).await;
    for ((i, route), outcome) in slots.into_iter().zip(outcomes) {
        match outcome.and_then(|o| settle(&state, tenant, o, route.as_ref())) {
            Ok(message_id) => {
                results[i].message_id = Some(message_id);
                results[i].status = Some(MessageStatus::Queued);
            }
            Err(e) => results[i].error = Some(*e.problem),
        }
    }
    let accepted = results.iter().filter(|r| r.message_id.is_some()).count();
    Ok(Json(BatchSendResponse {
        accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
        refused: u32::try_from(count - accepted).unwrap_or(u32::MAX),
        results,
    }))
}

/// A message's status and history (never its body).
#[utoipa::path(
    get,
    path = "/v1/messages/{message_id}",
    tag = "messages",
    params(("message_id" = String, Path, description = "Id from the 202 of POST /v1/messages")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Status and history", body = MessageView),
        (status = 404, description = "unknown_message", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_message(
    State(state): State<AppState>,
    auth: TenantAuth,
    Path(message_id): Path<String>,
) -> ApiResult<Json<MessageView>> {
    state
        .delivery()
        .backend()
        .message_view(&auth.tenant_id, &message_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownMessage, "no such message"))
}

/// Register (replace) the tenant's status callback.
///
/// Every status change after acceptance (`sent`, `delivered`, `read`, `failed`, `expired`)
/// is POSTed as a `StatusCallback` with `X-Sealgate-Signature: sha256=<hex HMAC-SHA256>`,
/// retried with backoff. Without `secret` one is generated and returned once.
#[utoipa::path(
    put,
    path = "/v1/callbacks",
    tag = "messages",
    request_body = CallbackConfig,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Registered", body = CallbackRegistered),
        (status = 422, description = "invalid_field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_callback(
    State(state): State<AppState>,
    auth: TenantAuth,
    Json(req): Json<CallbackConfig>,
) -> ApiResult<Json<CallbackRegistered>> {
    let url_ok = reqwest::Url::parse(&req.url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !url_ok || req.url.len() > 2048 {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "url: must be an http or https URL of at most 2048 characters",
        ));
    }
    if req
        .secret
        .as_ref()
        .is_some_and(|s| !(16..=256).contains(&s.len()))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "secret: must be 16 to 256 characters",
        ));
    }
    let generated = req.secret.is_none();
    let secret = req
        .secret
        .unwrap_or_else(|| new_secret(SecretKind::ApiKey).replacen("sgk_", "sgcb_", 1));
    let delivery = state.delivery();
    delivery
        .backend()
        .set_callback(
            &auth.tenant_id,
            &TenantCallback {
                url: req.url.clone(),
                secret: secret.clone(),
            },
            delivery.clock().now_ms(),
        )
        .await?;
    Ok(Json(CallbackRegistered {
        url: req.url,
        secret: generated.then_some(secret),
    }))
}

/// Receipt webhook of the RCS aggregator.
///
/// Authenticated by `X-Goog-Signature` (base64 HMAC-SHA512 of the raw body with the
/// configured RCS webhook secret), not by an API key. Idempotent by `eventId`; states only
/// move forward.
#[utoipa::path(
    post,
    path = "/v1/webhooks/carrier",
    tag = "webhooks",
    request_body = CarrierEvent,
    params(("X-Goog-Signature" = String, Header, description = "base64 HMAC-SHA512 of the raw body")),
    responses(
        (status = 200, description = "Processed (or a repeat)", body = ReceiptAck),
        (status = 401, description = "invalid_signature", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_message", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn carrier_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ReceiptAck>> {
    let delivery = state.delivery();
    let metrics = delivery.metrics();
    let signature = headers
        .get(CARRIER_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let verified = match (delivery.carrier_secret(), signature) {
        (Some(secret), Some(sig)) => verify_carrier(secret, &body, sig),
        _ => false,
    };
    if !verified {
        metrics.webhook_failures.inc();
        tracing::warn!("carrier webhook refused: bad or missing signature");
        return Err(ApiError::new(
            ErrorCode::InvalidSignature,
            "missing or invalid X-Goog-Signature",
        ));
    }
    let event: CarrierEvent = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedBody,
            crate::api::json::sanitize(&e.to_string()),
        )
    })?;
    let (status, reason) = match event.event {
        CarrierEventKind::Delivered => (MessageStatus::Delivered, None),
        CarrierEventKind::Read => (MessageStatus::Read, None),
        CarrierEventKind::Failed => (MessageStatus::Failed, Some("carrier_failed".to_owned())),
    };
    let outcome = delivery
        .backend()
        .carrier_receipt(
            &event.event_id,
            &Transition {
                message_id: event.message_id.clone(),
                status,
                reason,
                at: delivery.clock().now_ms(),
                count_attempt: false,
            },
        )
        .await?;
    let label = match outcome {
        ReceiptOutcome::Applied => "applied",
        ReceiptOutcome::Ignored => "ignored",
        ReceiptOutcome::Duplicate => "duplicate",
        ReceiptOutcome::UnknownMessage => "unknown",
    };
    metrics.receipts.with_label_values(&[label]).inc();
    if outcome == ReceiptOutcome::UnknownMessage {
        return Err(ApiError::new(ErrorCode::UnknownMessage, "no such message"));
    }
    if outcome == ReceiptOutcome::Applied {
        delivery.wake();
    }
    Ok(Json(ReceiptAck {
        outcome: label.to_owned(),
    }))
}

/// Jobs that ran out of retries, newest first.
#[utoipa::path(
    get,
    path = "/v1/admin/dead-letters",
    tag = "admin",
    params(DeadLetterQuery),
    security(("operator_token" = [])),
    responses((status = 200, description = "Dead letters", body = DeadLetterList))
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    _op: OperatorAuth,
    Query(q): Query<DeadLetterQuery>,
) -> ApiResult<Json<DeadLetterList>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(DeadLetterList {
        dead_letters: state.delivery().backend().dead_letters(limit).await?,
    }))
}

/// Enqueue a dead letter's job again, with a fresh retry window. A replayed message goes
/// back to `queued`.
#[utoipa::path(
    post,
    path = "/v1/admin/dead-letters/{dead_letter_id}/replay",
    tag = "admin",
    params(("dead_letter_id" = i64, Path, description = "From GET /v1/admin/dead-letters")),
    security(("operator_token" = [])),
    responses(
        (status = 202, description = "Enqueued", body = ReplayResponse),
        (status = 404, description = "unknown_dead_letter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay_dead_letter(
    State(state): State<AppState>,
    _op: OperatorAuth,
    Path(dead_letter_id): Path<i64>,
) -> ApiResult<(StatusCode, Json<ReplayResponse>)> {
    let delivery = state.delivery();
    let job_id = delivery
        .backend()
        .replay(dead_letter_id, delivery.clock().now_ms())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownDeadLetter, "no such dead letter"))?;
    delivery.wake();
    Ok((StatusCode::ACCEPTED, Json(ReplayResponse { job_id })))
}

/// Register (replace) the calling device's push token for mailbox wake-ups.
#[utoipa::path(
    put,
    path = "/v1/devices/me/push-token",
    tag = "devices",
    request_body = PushTokenRequest,
    security(("device_token" = [])),
    responses(
        (status = 204, description = "Registered"),
        (status = 422, description = "invalid_field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_push_token(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Json(req): Json<PushTokenRequest>,
) -> ApiResult<StatusCode> {
    if req.token.is_empty() || req.token.len() > 4096 {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "token: must be 1 to 4096 characters",
        ));
    }
    let delivery = state.delivery();
    delivery
        .backend()
        .set_push_token(&auth.device_id, &req.token, delivery.clock().now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let delivery = state.delivery();
    if let Ok(depth) = delivery.backend().depth().await {
        delivery
            .metrics()
            .queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
    if let Some(keys) = delivery.backend().idempotency_keys_in_memory() {
        delivery
            .metrics()
            .keys_in_memory
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        delivery.metrics().render(),
    )
}
