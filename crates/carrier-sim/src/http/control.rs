//! The control API under `/control`: tests and demos set number profiles and faults, read
//! inboxes and counters, reset, and wait for receipts.
//!
//! It exists so a test can arrange and observe the phone network over HTTP, from any process.
//! It has no authentication because it only ever runs in tests and demos; it must never be
//! reachable through the aggregator's bearer token check (it is a separate router) and never
//! changes number rules on reset.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::config::{
    ConfigError, FaultConfig, Matched, Profile, Rule, validate_msisdn, validate_prefix,
};
use crate::state::Sim;

type JsonResult = Result<Json<serde_json::Value>, ApiError>;

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_argument(format!("bad body: {e}")))
}

fn config_error(e: ConfigError) -> ApiError {
    ApiError::invalid_argument(e.to_string())
}

fn to_json(value: impl Serialize) -> JsonResult {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| ApiError::invalid_argument(e.to_string()))
}

#[derive(Serialize)]
struct Effective {
    msisdn: String,
    #[serde(flatten)]
    profile: Profile,
    /// The faults that apply to this number (the rule's own, else the global ones).
    faults: FaultConfig,
    #[serde(flatten)]
    matched: Matched,
}

fn effective(sim: &Sim, msisdn: &str) -> JsonResult {
    let (profile, rule_faults, matched) = sim.rules_read().resolve(msisdn);
    to_json(Effective {
        msisdn: msisdn.to_owned(),
        profile,
        faults: rule_faults.unwrap_or_else(|| sim.faults()),
        matched,
    })
}

fn check_number(msisdn: &str) -> Result<(), ApiError> {
    validate_msisdn(msisdn).map_err(ApiError::invalid_argument)
}

/// `GET /control/numbers/{msisdn}`: the effective profile and which rule decided it.
pub async fn get_number(State(sim): State<Sim>, Path(msisdn): Path<String>) -> JsonResult {
    check_number(&msisdn)?;
    effective(&sim, &msisdn)
}

/// `PUT /control/numbers/{msisdn}`: sets (replaces) the exact-number rule.
pub async fn put_number(
    State(sim): State<Sim>,
    Path(msisdn): Path<String>,
    body: Bytes,
) -> JsonResult {
    check_number(&msisdn)?;
    let rule: Rule = parse(&body)?;
    rule.validate("rule").map_err(config_error)?;
    sim.rules_write().numbers.insert(msisdn.clone(), rule);
    effective(&sim, &msisdn)
}

/// `DELETE /control/numbers/{msisdn}`: removes the exact-number rule.
pub async fn delete_number(State(sim): State<Sim>, Path(msisdn): Path<String>) -> JsonResult {
    check_number(&msisdn)?;
    sim.rules_write().numbers.remove(&msisdn);
    effective(&sim, &msisdn)
}

/// `PUT /control/prefixes/{prefix}`: sets (replaces) a prefix rule.
pub async fn put_prefix(
    State(sim): State<Sim>,
    Path(prefix): Path<String>,
    body: Bytes,
) -> JsonResult {
    validate_prefix(&prefix).map_err(ApiError::invalid_argument)?;
    let rule: Rule = parse(&body)?;
    rule.validate("rule").map_err(config_error)?;
    sim.rules_write().prefixes.insert(prefix, rule);
    get_rules(State(sim)).await
}

/// `DELETE /control/prefixes/{prefix}`: removes a prefix rule.
pub async fn delete_prefix(State(sim): State<Sim>, Path(prefix): Path<String>) -> JsonResult {
    validate_prefix(&prefix).map_err(ApiError::invalid_argument)?;
    sim.rules_write().prefixes.remove(&prefix);
    get_rules(State(sim)).await
}

/// `PUT /control/default`: replaces the default profile.
pub async fn put_default(State(sim): State<Sim>, body: Bytes) -> JsonResult {
    let profile: Profile = parse(&body)?;
    sim.rules_write().default = profile;
    get_rules(State(sim)).await
}

/// `GET /control/rules`: the default profile and every rule.
pub async fn get_rules(State(sim): State<Sim>) -> JsonResult {
    let rules = sim.rules_read().clone();
    to_json(rules)
}

/// `GET /control/faults`: the global faults.
pub async fn get_faults(State(sim): State<Sim>) -> JsonResult {
    to_json(sim.faults())
}

/// `PUT /control/faults`: replaces the global faults (missing keys take their defaults).
pub async fn put_faults(State(sim): State<Sim>, body: Bytes) -> JsonResult {
    let faults: FaultConfig = parse(&body)?;
    faults.validate("faults").map_err(config_error)?;
    sim.set_faults(faults.clone());
    to_json(faults)
}

/// `GET /control/inbox/{msisdn}`: messages in arrival order.
pub async fn get_inbox(State(sim): State<Sim>, Path(msisdn): Path<String>) -> JsonResult {
    Ok(Json(serde_json::json!({ "messages": sim.inbox(&msisdn) })))
}

/// `GET /control/push/{token}`: push notifications in arrival order.
pub async fn get_push(State(sim): State<Sim>, Path(token): Path<String>) -> JsonResult {
    Ok(Json(
        serde_json::json!({ "messages": sim.push_messages(&token) }),
    ))
}

/// `GET /control/stats`
pub async fn get_stats(State(sim): State<Sim>) -> Json<serde_json::Value> {
    Json(sim.stats())
}

/// `POST /control/reset`
pub async fn reset(State(sim): State<Sim>) -> Json<serde_json::Value> {
    sim.reset();
    tracing::info!("reset");
    Json(sim.stats())
}

#[derive(Debug, Deserialize)]
pub struct FlushQuery {
    timeout_ms: Option<u64>,
}

/// `POST /control/receipts/flush[?timeout_ms=N]`: waits (30 s by default) until every
/// scheduled receipt was sent or dropped; 504 if that takes longer.
pub async fn flush(
    State(sim): State<Sim>,
    query: Result<Query<FlushQuery>, QueryRejection>,
) -> JsonResult {
    let Query(q) = query.map_err(|e| ApiError::invalid_argument(e.body_text()))?;
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(600_000));
    if sim.flush_receipts(timeout).await {
        Ok(Json(sim.stats()))
    } else {
        Err(ApiError::deadline_exceeded())
    }
}
