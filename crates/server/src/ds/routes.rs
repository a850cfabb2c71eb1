//! HTTP routes of the delivery service: groups, commits, application messages, mailbox.
//!
//! Handlers are thin: authenticate the device, run the MLS checks in [`super::engine`], look
//! up the key directory, and persist through [`super::store::DsStore`]. They must never log
//! message bytes (only group ids, epochs, sizes and counts), and never rely on in-process
//! locks for correctness: the store's epoch compare-and-swap decides which commit wins.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use sealgate_proto::api::{
    AckRequest, AckResponse, CreateGroupRequest, EventKind, GroupInfoResponse, GroupMember,
    MailboxResponse, SendMessageRequest, SendMessageResponse, SubmitCommitRequest,
    SubmitCommitResponse,
};
use sealgate_proto::{DeviceIdentity, ErrorCode, Problem};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::engine::{self, DirectoryEntry, EngineError};
use super::store::{
    AcceptedCommit, ApplicationOutcome, Delivery, GroupSummary, NewGroup, StoredMessage,
};
use crate::AppState;
use crate::api::extract::{Path, Query};
use crate::api::json::Json;
use crate::auth::{DeviceAuth, time_ordered_id};
use crate::error::{ApiError, ApiResult};
use crate::store::now_millis;

/// Default and largest page of a mailbox fetch.
pub const DEFAULT_MAILBOX_LIMIT: u32 = 100;
pub const MAX_MAILBOX_LIMIT: u32 = 500;

/// How often a long-poll re-reads the store even without an in-process wake-up (another
/// API process may have written to the mailbox).
const POLL_RECHECK: Duration = Duration::from_secs(1);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/groups", post(create_group))
        .route("/v1/groups/{group_id}", get(get_group))
        .route("/v1/groups/{group_id}/group-info", get(get_group_info))
        .route("/v1/groups/{group_id}/commits", post(submit_commit))
        .route("/v1/groups/{group_id}/messages", post(send_message))
        .route("/v1/mailbox", get(fetch_mailbox))
        .route("/v1/mailbox/ack", post(ack_mailbox))
}

/// The latest GroupInfo a member gave the DS (`GET /v1/groups/{group_id}/group-info`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupInfoBytes {
    /// The epoch the GroupInfo describes; may lag the group's epoch if a later commit came
    /// without a GroupInfo.
    pub epoch: u64,
    /// GroupInfo `MLSMessage`, base64.
    #[serde(with = "sealgate_proto::b64")]
    #[schema(value_type = String, format = Byte)]
    pub group_info: Vec<u8>,
}

/// Query of `GET /v1/mailbox`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MailboxQuery {
    /// Return events with `seq` greater than this (default 0).
    pub after: Option<i64>,
    /// Most events to return (default 100, at most 500).
    pub limit: Option<u32>,
    /// Seconds to hold the request if there is no event yet (capped by the server).
    pub wait: Option<u64>,
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Malformed(d) => ApiError::new(ErrorCode::MalformedMls, d),
            EngineError::InvalidCommit(d) => ApiError::new(ErrorCode::InvalidCommit, d),
            EngineError::InvalidMessage(d) => ApiError::new(ErrorCode::InvalidMessage, d),
            e @ EngineError::StaleEpoch { current, .. } => {
                ApiError::stale_epoch(current, e.to_string())
            }
            EngineError::IdentityMismatch(d) => ApiError::new(ErrorCode::IdentityMismatch, d),
            EngineError::Internal(d) => ApiError::internal(d),
        }
    }
}

fn unknown_group() -> ApiError {
    ApiError::new(
        ErrorCode::UnknownGroup,
        "no such group, or the calling device is not a member",
    )
}

fn not_member() -> ApiError {
    ApiError::new(
        ErrorCode::NotMember,
        "the calling device is not a member of this group",
    )
}

/// The group id of a path: hex, normalised to lowercase. Anything else cannot name a group
/// (`unknown_group`).
fn parse_group_id(text: &str) -> Option<(String, Vec<u8>)> {
    hex::decode(text)
        .ok()
        .filter(|b| !b.is_empty())
        .map(|bytes| (hex::encode(&bytes), bytes))
}

fn caller_identity(auth: &DeviceAuth) -> DeviceIdentity {
    DeviceIdentity {
        tenant_id: auth.tenant_id.clone(),
        user_id: auth.user_id.clone(),
        device_id: auth.device_id.clone(),
    }
}

/// Run CPU-heavy MLS work (tree validation, signature checks) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("MLS task failed: {e}")))?
        .map_err(ApiError::from)
}

fn group_response(g: &GroupSummary) -> GroupInfoResponse {
    GroupInfoResponse {
        group_id: g.group_id.clone(),
        epoch: g.epoch,
        members: g
            .roster
            .iter()
            .map(|m| GroupMember {
                leaf_index: m.leaf_index,
                user: m.user_id.clone(),
                device_id: m.device_id.clone(),
            })
            .collect(),
    }
}

/// The group, if it exists in the caller's tenant and the caller is a member; otherwise
/// `unknown_group`, so group ids do not leak.
async fn member_group(
    state: &AppState,
    auth: &DeviceAuth,
    group_id: &str,
) -> ApiResult<GroupSummary> {
    match state.store().group(group_id).await? {
        Some(g) if g.tenant_id == auth.tenant_id && g.member(&auth.device_id).is_some() => Ok(g),
        _ => Err(unknown_group()),
    }
}

/// Register a new group with the delivery service.
///
/// The body carries the creator's GroupInfo (epoch 0) and, if the GroupInfo has no
/// ratchet-tree extension, the exported tree. The group must use cipher suite 1 and have
/// exactly one member: the calling device, with its registered signature key.
#[utoipa::path(
    post,
    path = "/v1/groups",
    tag = "groups",
    request_body = CreateGroupRequest,
    security(("device_token" = [])),
    responses(
        (status = 201, description = "Group registered", body = GroupInfoResponse),
        (status = 403, description = "identity_mismatch", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "group_exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "malformed_mls, invalid_commit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_group(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Json(req): Json<CreateGroupRequest>,
) -> ApiResult<(StatusCode, Json<GroupInfoResponse>)> {
    let CreateGroupRequest {
        group_info,
        ratchet_tree,
    } = req;
    let gi = group_info.clone();
    let observed =
        blocking(move || engine::observe_new_group(&gi, ratchet_tree.as_deref())).await?;
    let device = state
        .store()
        .device(&auth.tenant_id, &auth.device_id)
        .await?
        .filter(|d| d.is_active());
    let creator = engine::check_creator(
        &observed.creator,
        &caller_identity(&auth),
        device.as_ref().map(|d| d.signature_key.as_slice()),
    )?;
    let group = NewGroup {
        group_id: hex::encode(&observed.group_id),
        tenant_id: auth.tenant_id.clone(),
        epoch: observed.epoch,
        snapshot: observed.snapshot,
        group_info,
        created_by: auth.device_id.clone(),
        roster: vec![creator],
        now_ms: now_millis(),
    };
    if !state.store().create_group(&group).await? {
        return Err(ApiError::new(
            ErrorCode::GroupExists,
            "a group with this id is already registered",
        ));
    }
    tracing::info!(group_id = %group.group_id, epoch = group.epoch, "group registered");
    let summary = GroupSummary {
        group_id: group.group_id,
        tenant_id: group.tenant_id,
        epoch: group.epoch,
        roster: group.roster,
    };
    Ok((StatusCode::CREATED, Json(group_response(&summary))))
}

/// The group's epoch and roster (members only).
#[utoipa::path(
    get,
    path = "/v1/groups/{group_id}",
    tag = "groups",
    params(("group_id" = String, Path, description = "Hex of the MLS group id")),
    security(("device_token" = [])),
    responses(
        (status = 200, description = "The group", body = GroupInfoResponse),
        (status = 404, description = "unknown_group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_group(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(group_id): Path<String>,
) -> ApiResult<Json<GroupInfoResponse>> {
    let (group_id, _) = parse_group_id(&group_id).ok_or_else(unknown_group)?;
    let g = member_group(&state, &auth, &group_id).await?;
    Ok(Json(group_response(&g)))
}

/// The latest GroupInfo a member handed to the DS (members only).
#[utoipa::path(
    get,
    path = "/v1/groups/{group_id}/group-info",
    tag = "groups",
    params(("group_id" = String, Path, description = "Hex of the MLS group id")),
    security(("device_token" = [])),
    responses(
        (status = 200, description = "The latest GroupInfo", body = GroupInfoBytes),
        (status = 404, description = "unknown_group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_group_info(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(group_id): Path<String>,
) -> ApiResult<Json<GroupInfoBytes>> {
    let (group_id, _) = parse_group_id(&group_id).ok_or_else(unknown_group)?;
    member_group(&state, &auth, &group_id).await?;
    let info = state
        .store()
        .group_info(&group_id)
        .await?
        .ok_or_else(unknown_group)?;
    Ok(Json(GroupInfoBytes {
        epoch: info.epoch,
        group_info: info.group_info,
    }))
}

/// Submit a PublicMessage commit for the group's current epoch.
///
/// Exactly one commit per epoch wins; any other (lost race, replay) gets `409 stale_epoch`
/// with `current_epoch`. A commit that adds members must carry the Welcome for exactly those
/// members; it is delivered to them only once the commit is accepted. Every new or changed
/// leaf must name an active device of this tenant with its registered signature key.
#[utoipa::path(
    post,
    path = "/v1/groups/{group_id}/commits",
    tag = "groups",
    params(("group_id" = String, Path, description = "Hex of the MLS group id")),
    request_body = SubmitCommitRequest,
    security(("device_token" = [])),
    responses(
        (status = 200, description = "Commit accepted", body = SubmitCommitResponse),
        (status = 403, description = "not_member, identity_mismatch", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "stale_epoch", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "malformed_mls, invalid_commit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn submit_commit(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(group_id): Path<String>,
    Json(req): Json<SubmitCommitRequest>,
) -> ApiResult<Json<SubmitCommitResponse>> {
    let (group_id, group_id_bytes) = parse_group_id(&group_id).ok_or_else(unknown_group)?;
    let group = match state.store().group_state(&group_id).await? {
        Some(g) if g.summary.tenant_id == auth.tenant_id => g,
        _ => return Err(unknown_group()),
    };
    if group.summary.member(&auth.device_id).is_none() {
        return Err(not_member());
    }
    let current = group.summary.epoch;
    let (commit_msg, _sender) = engine::precheck_commit(&req.commit, &group_id_bytes, current)?;
    let welcome = req
        .welcome
        .as_deref()
        .map(engine::parse_welcome)
        .transpose()?;

    let caller = caller_identity(&auth);
    let max = state.config().max_group_size;
    let snapshot = group.snapshot;
    let applied =
        blocking(move || engine::apply_commit(&snapshot, commit_msg, &caller, max)).await?;

    // Identity binding: every new or changed leaf against the key directory.
    let mut directory = HashMap::new();
    for leaf in &applied.changed {
        let Some(id) = &leaf.identity else { continue };
        if id.tenant_id != auth.tenant_id || directory.contains_key(&id.device_id) {
            continue;
        }
        let entry = state
            .store()
            .device(&auth.tenant_id, &id.device_id)
            .await?
            .map(|d| DirectoryEntry {
                user_id: d.user_id.clone(),
                signature_key: d.signature_key.clone(),
                active: d.is_active(),
            });
        directory.insert(id.device_id.clone(), entry);
    }
    engine::check_bindings(&auth.tenant_id, &applied.changed, &directory)?;

    match &welcome {
        Some(w) => applied.check_welcome(w)?,
        None if applied.adds_members() => {
            return Err(ApiError::new(
                ErrorCode::InvalidCommit,
                "the commit adds members but carries no welcome for them",
            ));
        }
        None => {}
    }
    if let Some(gi) = &req.group_info {
        applied.check_group_info(gi)?;
    }

    let now = now_millis();
    let committer = &applied.committer.identity;
    let (sender_user, sender_device) = committer
        .as_ref()
        .map(|c| (c.user_id.clone(), c.device_id.clone()))
        .unwrap_or_else(|| (auth.user_id.clone(), auth.device_id.clone()));
    // Everyone in the old or new roster hears of the commit (removed devices learn of their
    // removal), except the committer and the added devices, which get the Welcome instead.
    let mut commit_recipients: Vec<String> = Vec::new();
    for m in applied.old_roster.iter().chain(&applied.new_roster) {
        if m.device_id != sender_device
            && !applied.added_devices.contains(&m.device_id)
            && !commit_recipients.contains(&m.device_id)
        {
            commit_recipients.push(m.device_id.clone());
        }
    }
    let message = |kind, bytes: Vec<u8>| StoredMessage {
        message_id: time_ordered_id("msg_"),
        group_id: group_id.clone(),
        kind,
        epoch: applied.new_epoch,
        sender_user: sender_user.clone(),
        sender_device: sender_device.clone(),
        bytes,
        received_at: now,
    };
    let commit_size = req.commit.len();
    let welcome_size = req.welcome.as_ref().map_or(0, Vec::len);
    let accepted = AcceptedCommit {
        group_id: group_id.clone(),
        cas_epoch: current,
        new_epoch: applied.new_epoch,
        snapshot: applied.snapshot.clone(),
        group_info: req.group_info,
        roster: applied.new_roster.clone(),
        commit: Delivery {
            message: message(EventKind::Commit, req.commit),
            recipients: commit_recipients,
        },
        welcome: req.welcome.map(|w| Delivery {
            message: message(EventKind::Welcome, w),
            recipients: applied.added_devices.clone(),
        }),
        now_ms: now,
    };
    if !state.store().apply_commit(&accepted).await? {
        let current = state
            .store()
            .group(&group_id)
            .await?
            .map_or(current, |g| g.epoch);
        tracing::info!(%group_id, attempted = applied.new_epoch - 1, current, "commit lost the race");
        return Err(ApiError::stale_epoch(
            current,
            format!("another commit was accepted first; the group is at epoch {current}"),
        ));
    }
    state.ds().notify(&accepted.commit.recipients);
    if let Some(w) = &accepted.welcome {
        state.ds().notify(&w.recipients);
    }
    tracing::info!(
        %group_id,
        epoch = applied.new_epoch,
        members = applied.new_roster.len(),
        added = applied.added_devices.len(),
        commit_size,
        welcome_size,
        "commit accepted"
    );
    Ok(Json(SubmitCommitResponse {
        epoch: applied.new_epoch,
    }))
}

/// Send a PrivateMessage application message to every other member device.
#[utoipa::path(
    post,
    path = "/v1/groups/{group_id}/messages",
    tag = "groups",
    params(("group_id" = String, Path, description = "Hex of the MLS group id")),
    request_body = SendMessageRequest,
    security(("device_token" = [])),
    responses(
        (status = 202, description = "Stored and fanned out", body = SendMessageResponse),
        (status = 403, description = "not_member", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_group", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_message", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send_message(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(group_id): Path<String>,
    Json(req): Json<SendMessageRequest>,
) -> ApiResult<(StatusCode, Json<SendMessageResponse>)> {
    let (group_id, group_id_bytes) = parse_group_id(&group_id).ok_or_else(unknown_group)?;
    let epoch = engine::check_application(&req.message, &group_id_bytes)?;
    let size = req.message.len();
    let message = StoredMessage {
        message_id: time_ordered_id("msg_"),
        group_id: group_id.clone(),
        kind: EventKind::Application,
        epoch,
        sender_user: auth.user_id.clone(),
        sender_device: auth.device_id.clone(),
        bytes: req.message,
        received_at: now_millis(),
    };
    match state
        .store()
        .store_application(&auth.tenant_id, &message)
        .await?
    {
        ApplicationOutcome::Stored { recipients } => {
            state.ds().notify(&recipients);
            tracing::info!(%group_id, epoch, size, recipients = recipients.len(), "message stored");
            Ok((
                StatusCode::ACCEPTED,
                Json(SendMessageResponse {
                    message_id: message.message_id,
                    recipients: recipients.len() as u64,
                }),
            ))
        }
        ApplicationOutcome::UnknownGroup => Err(unknown_group()),
        ApplicationOutcome::NotMember => Err(not_member()),
        ApplicationOutcome::EpochOutOfRange { current } => Err(ApiError::new(
            ErrorCode::InvalidMessage,
            format!(
                "message is for epoch {epoch}; the group is at epoch {current} and accepts \
                 epochs {} to {current}",
                current.saturating_sub(engine::APPLICATION_EPOCH_WINDOW)
            ),
        )),
    }
}

/// The calling device's mailbox: events with `seq > after`, oldest first. With `wait`, the
/// request is held until an event arrives or `wait` seconds pass.
#[utoipa::path(
    get,
    path = "/v1/mailbox",
    tag = "mailbox",
    params(MailboxQuery),
    security(("device_token" = [])),
    responses(
        (status = 200, description = "Events, possibly none", body = MailboxResponse),
        (status = 422, description = "invalid_field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn fetch_mailbox(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Query(q): Query<MailboxQuery>,
) -> ApiResult<Json<MailboxResponse>> {
    let after = q.after.unwrap_or(0);
    let limit = q
        .limit
        .unwrap_or(DEFAULT_MAILBOX_LIMIT)
        .clamp(1, MAX_MAILBOX_LIMIT);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(state.config().max_poll_wait_secs));
    let deadline = tokio::time::Instant::now() + wait;
    let ds = state.ds().clone();
    // Registered before the first query, so a message stored in between still wakes us.
    let waiter = ds.waiter(&auth.device_id);
    loop {
        let notified = waiter.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let events = state
            .store()
            .fetch_mailbox(&auth.device_id, after, limit)
            .await?;
        let now = tokio::time::Instant::now();
        if !events.is_empty() || now >= deadline || ds.is_shutting_down() {
            return Ok(Json(MailboxResponse { events }));
        }
        let recheck = deadline.min(now + POLL_RECHECK);
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(recheck) => {}
            () = ds.shutdown_signal() => {}
        }
    }
}

/// Acknowledge (delete) every event of the calling device's mailbox with `seq <= up_to`.
#[utoipa::path(
    post,
    path = "/v1/mailbox/ack",
    tag = "mailbox",
    request_body = AckRequest,
    security(("device_token" = [])),
    responses((status = 200, description = "Events removed", body = AckResponse))
)]
pub async fn ack_mailbox(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Json(req): Json<AckRequest>,
) -> ApiResult<Json<AckResponse>> {
    let removed = state.store().ack(&auth.device_id, req.up_to).await?;
    tracing::debug!(device_id = %auth.device_id, removed, "mailbox acknowledged");
    Ok(Json(AckResponse { removed }))
}
