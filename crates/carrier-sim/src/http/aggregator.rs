//! The endpoints the gateway's transports call: RBM-shaped RCS send and capability check,
//! the SMS gateway and the push service.
//!
//! It exists to turn one HTTP request into the decision a real network would make (fault,
//! not capable, unreachable, accepted, duplicate) in a fixed order: authenticate, validate,
//! add latency, draw the fault, check the number's profile, store, schedule receipts. It must
//! never store a message or schedule a receipt for a request that gets a fault or an error
//! (the one deliberate exception is `timeout_after_accept`), and never logs message text.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, extract::rejection::QueryRejection};
use base64::Engine as _;
use serde::Deserialize;
use tokio::time::Instant;

use super::error::ApiError;
use crate::config::{FaultConfig, Profile, UnreachableMode, validate_msisdn};
use crate::faults::Fault;
use crate::receipts::{self, Job};
use crate::state::{Accepted, Channel, InboxEntry, Sim, bump};
use crate::time::now_rfc3339;

/// RBM's limit on a text message, in characters.
const MAX_TEXT_CHARS: usize = 3072;
const MAX_ID_BYTES: usize = 256;

/// Middleware: the aggregator endpoints require `Authorization: Bearer <agent token>`.
pub async fn require_agent_token(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), sim.inner.agent_token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError::unauthenticated().into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_argument(format!("Invalid JSON payload: {e}")))
}

fn check_msisdn(msisdn: &str) -> Result<(), ApiError> {
    validate_msisdn(msisdn)
        .map_err(|reason| ApiError::invalid_argument(format!("Invalid phone number: {reason}")))
}

fn check_id(name: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ApiError::invalid_argument(format!(
            "{name} must be 1 to {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

async fn add_latency(faults: &FaultConfig) {
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
}

/// Applies a drawn fault that answers before any side effect; passes the others through.
async fn answer_early_fault(fault: Fault) -> Result<Option<u64>, ApiError> {
    match fault {
        Fault::None => Ok(None),
        Fault::TimeoutAfterAccept { ms } => Ok(Some(ms)),
        Fault::ServerError(code) => Err(ApiError::server_error(code)),
        Fault::RateLimited { retry_after_secs } => Err(ApiError::rate_limited(retry_after_secs)),
        Fault::Timeout { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Err(ApiError::deadline_exceeded())
        }
        Fault::Permanent4xx => Err(ApiError::invalid_argument("Request rejected (injected).")),
    }
}

/// An unreachable number fails the way its profile says; `permanent` is the channel's own
/// permanent error.
async fn check_reachable(
    sim: &Sim,
    profile: &Profile,
    faults: &FaultConfig,
    permanent: ApiError,
) -> Result<(), ApiError> {
    if profile.reachable {
        return Ok(());
    }
    bump(&sim.inner.stats.rejected_unreachable);
    if profile.unreachable_mode == UnreachableMode::Timeout {
        tokio::time::sleep(Duration::from_millis(faults.timeout_ms)).await;
        return Err(ApiError::deadline_exceeded());
    }
    Err(permanent)
}

/// After a `timeout_after_accept` draw: the message is stored, but the caller hears 504.
async fn hang_after_accept(after_accept: Option<u64>) -> Result<(), ApiError> {
    if let Some(ms) = after_accept {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Err(ApiError::deadline_exceeded());
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RcsQuery {
    message_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentMessage {
    content_message: ContentMessage,
    ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContentMessage {
    text: Option<String>,
    e2ee_payload: Option<String>,
}

/// `"3600s"` or `"1.5s"`, as protobuf Duration JSON.
fn valid_ttl(ttl: &str) -> bool {
    let Some(number) = ttl.strip_suffix('s') else {
        return false;
    };
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    let frac = parts.next().unwrap_or("0");
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && !frac.is_empty()
        && frac.len() <= 9
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// `POST /v1/phones/{msisdn}/agentMessages?messageId={id}`
pub async fn rcs_send(
    State(sim): State<Sim>,
    Path(msisdn): Path<String>,
    query: Result<Query<RcsQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_msisdn(&msisdn)?;
    let Query(query) = query.map_err(|e| ApiError::invalid_argument(e.body_text()))?;
    let message_id = query
        .message_id
        .ok_or_else(|| ApiError::invalid_argument("messageId is required"))?;
    check_id("messageId", &message_id)?;
    let message: AgentMessage = parse_body(&body)?;
    if message.ttl.as_deref().is_some_and(|t| !valid_ttl(t)) {
        return Err(ApiError::invalid_argument("ttl must look like \"3600s\""));
    }
    let content = message.content_message;
    match (&content.text, &content.e2ee_payload) {
        (Some(text), None) if text.chars().count() > MAX_TEXT_CHARS => {
            return Err(ApiError::invalid_argument(format!(
                "text is longer than {MAX_TEXT_CHARS} characters"
            )));
        }
        (Some(_), None) => {}
        (None, Some(payload)) => {
            if base64::engine::general_purpose::STANDARD
                .decode(payload)
                .is_err()
            {
                return Err(ApiError::invalid_argument("e2eePayload must be base64"));
            }
        }
        _ => {
            return Err(ApiError::invalid_argument(
                "contentMessage needs exactly one of text or e2eePayload",
            ));
        }
    }

    let (profile, faults) = sim.profile(&msisdn);
    add_latency(&faults).await;
    let after_accept = answer_early_fault(sim.draw_fault(&faults)).await?;
    check_reachable(
        &sim,
        &profile,
        &faults,
        ApiError::not_found("Requested entity was not found."),
    )
    .await?;
    if !profile.rcs {
        bump(&sim.inner.stats.rejected_not_rcs);
        return Err(ApiError::not_found("Requested entity was not found."));
    }
    if content.e2ee_payload.is_some() && !profile.e2ee {
        bump(&sim.inner.stats.rejected_no_e2ee);
        return Err(ApiError::failed_precondition(
            "The recipient does not support end-to-end encrypted RCS.",
        ));
    }

    let accepted_at = Instant::now();
    let entry = InboxEntry {
        message_id: message_id.clone(),
        channel: Channel::Rcs,
        text: content.text,
        e2ee_payload: content.e2ee_payload,
        received_at: now_rfc3339(),
    };
    let send_time = match sim.accept(&msisdn, entry, now_rfc3339()) {
        Accepted::New(send_time) => {
            tracing::info!(%message_id, channel = "rcs", "accepted");
            receipts::schedule(
                &sim,
                Job {
                    message_id: message_id.clone(),
                    phone: msisdn.clone(),
                    channel: Channel::Rcs,
                    accepted_at,
                },
            );
            send_time
        }
        Accepted::Duplicate(send_time) => {
            tracing::info!(%message_id, channel = "rcs", "duplicate");
            send_time
        }
    };
    hang_after_accept(after_accept).await?;
    Ok(Json(serde_json::json!({
        "name": format!("phones/{msisdn}/agentMessages/{message_id}"),
        "sendTime": send_time,
    })))
}

/// `GET /v1/phones/{msisdn}/capabilities`
pub async fn capabilities(
    State(sim): State<Sim>,
    Path(msisdn): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_msisdn(&msisdn)?;
    let (profile, faults) = sim.profile(&msisdn);
    add_latency(&faults).await;
    let not_found = || ApiError::not_found("Requested entity was not found.");
    check_reachable(&sim, &profile, &faults, not_found()).await?;
    if !profile.rcs {
        return Err(not_found());
    }
    Ok(Json(serde_json::json!({
        "features": ["RICHCARD_STANDALONE", "ACTION_OPEN_URL"],
        "e2ee": profile.e2ee,
    })))
}

#[derive(Debug, Deserialize)]
struct SmsRequest {
    to: String,
    #[serde(default)]
    from: Option<String>,
    text: String,
    #[serde(default)]
    reference: Option<String>,
}

/// `POST /sms/v1/messages`
pub async fn sms_send(
    State(sim): State<Sim>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let request: SmsRequest = parse_body(&body)?;
    check_msisdn(&request.to).map_err(|_| ApiError::invalid_argument("to must be E.164"))?;
    if request.text.is_empty() {
        return Err(ApiError::invalid_argument("text must not be empty"));
    }
    if let Some(from) = &request.from {
        check_id("from", from)?;
    }
    if let Some(reference) = &request.reference {
        check_id("reference", reference)?;
    }

    let msisdn = request.to;
    let (profile, faults) = sim.profile(&msisdn);
    add_latency(&faults).await;
    let after_accept = answer_early_fault(sim.draw_fault(&faults)).await?;
    let unreachable = || ApiError::invalid_argument("unreachable");
    check_reachable(&sim, &profile, &faults, unreachable()).await?;
    if !profile.sms {
        bump(&sim.inner.stats.rejected_not_sms);
        return Err(unreachable());
    }

    let accepted_at = Instant::now();
    let sms_id = sim.next_id("sms");
    let message_id = request.reference.unwrap_or_else(|| sms_id.clone());
    let entry = InboxEntry {
        message_id: message_id.clone(),
        channel: Channel::Sms,
        text: Some(request.text),
        e2ee_payload: None,
        received_at: now_rfc3339(),
    };
    let id = match sim.accept(&msisdn, entry, sms_id) {
        Accepted::New(id) => {
            tracing::info!(%message_id, channel = "sms", "accepted");
            receipts::schedule(
                &sim,
                Job {
                    message_id,
                    phone: msisdn,
                    channel: Channel::Sms,
                    accepted_at,
                },
            );
            id
        }
        Accepted::Duplicate(id) => {
            tracing::info!(%message_id, channel = "sms", "duplicate");
            id
        }
    };
    hang_after_accept(after_accept).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": id, "status": "accepted" })),
    ))
}

#[derive(Debug, Deserialize)]
struct PushRequest {
    token: String,
    data: serde_json::Map<String, serde_json::Value>,
}

/// `POST /push/v1/send`
pub async fn push_send(
    State(sim): State<Sim>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: PushRequest = parse_body(&body)?;
    if request.token.is_empty() || request.token.len() > 4096 {
        return Err(ApiError::invalid_argument("token must be 1 to 4096 bytes"));
    }
    let faults = sim.faults();
    add_latency(&faults).await;
    let after_accept = answer_early_fault(sim.draw_fault(&faults)).await?;
    let id = sim.accept_push(&request.token, serde_json::Value::Object(request.data));
    tracing::info!(push_id = %id, "push accepted");
    hang_after_accept(after_accept).await?;
    Ok(Json(serde_json::json!({ "id": id })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_format() {
        for ok in ["3600s", "0s", "1.5s", "10.000000001s"] {
            assert!(valid_ttl(ok), "{ok}");
        }
        for bad in ["3600", "s", "1.s", ".5s", "-1s", "1.0000000001s", "1h"] {
            assert!(!valid_ttl(bad), "{bad}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
