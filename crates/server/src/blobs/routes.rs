//! HTTP routes of attachment blobs: a tus-like resumable upload (`POST` to create, `PATCH` to
//! append at an offset, `HEAD` to query the offset) and signed, device-bound downloads.
//!
//! Handlers authenticate the device, check group membership against the delivery service's
//! roster, and stream bodies straight into and out of the blob store (a `PATCH` body is never
//! buffered whole, and has its own limit, `blobs.max_chunk_bytes`, not `max_body_bytes`).
//! They must never log bodies or download signatures (access logs carry the path template,
//! not the query).

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use futures::{StreamExt, TryStreamExt};
use sealgate_proto::attachment::{
    CreateUploadRequest, CreateUploadResponse, DownloadUrlResponse, OFFSET_OCTET_STREAM,
    UPLOAD_LENGTH, UPLOAD_OFFSET,
};
use sealgate_proto::{ErrorCode, Problem};
use serde::Deserialize;
use utoipa::IntoParams;

use super::objects::BlobError;
use super::store::{CreateOutcome, Part, Upload};
use super::{Blobs, part_key};
use crate::AppState;
use crate::api::extract::{Path, Query};
use crate::api::json::Json;
use crate::auth::{DeviceAuth, random_id};
use crate::error::{ApiError, ApiResult};
use crate::store::now_secs;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/attachments", post(create_upload))
        .route(
            "/v1/attachments/{attachment_id}",
            patch(append_upload).head(upload_offset),
        )
        .route(
            "/v1/attachments/{attachment_id}/download-url",
            post(download_url),
        )
        .route("/v1/blobs/{attachment_id}", get(download_blob))
}

/// Query of a signed download URL.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// Expiry, Unix seconds.
    pub exp: Option<i64>,
    /// The device the URL was issued to.
    pub dev: Option<String>,
    /// Hex HMAC-SHA256 signature.
    pub sig: Option<String>,
}

fn unknown_attachment() -> ApiError {
    ApiError::new(
        ErrorCode::UnknownAttachment,
        "no such attachment upload for this device, or it expired",
    )
}

fn too_large(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::AttachmentTooLarge, detail)
}

fn invalid_url() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidDownloadUrl,
        "the download URL is expired, altered, or was issued to another device",
    )
}

fn offset_header(offset: u64) -> (header::HeaderName, HeaderValue) {
    (
        header::HeaderName::from_static(UPLOAD_OFFSET),
        HeaderValue::from(offset),
    )
}

/// `409 offset_mismatch` carrying the current offset in `Upload-Offset`.
fn offset_mismatch(current: u64) -> Response {
    let mut resp = ApiError::new(
        ErrorCode::OffsetMismatch,
        format!("the upload is at offset {current}"),
    )
    .into_response();
    let (name, value) = offset_header(current);
    resp.headers_mut().insert(name, value);
    resp
}

/// An upload the caller may append to or query: its own, in its tenant, not expired.
async fn own_upload(blobs: &Blobs, auth: &DeviceAuth, id: &str, now: i64) -> ApiResult<Upload> {
    match blobs.uploads().upload(id).await? {
        Some(u)
            if u.tenant_id == auth.tenant_id
                && u.created_by == auth.device_id
                && u.expires_at > now =>
        {
            Ok(u)
        }
        _ => Err(unknown_attachment()),
    }
}

/// Whether the device is in the group's current roster (in its tenant).
async fn is_member(state: &AppState, auth: &DeviceAuth, group_id: &str) -> ApiResult<bool> {
    Ok(matches!(
        state.store().group(group_id).await?,
        Some(g) if g.tenant_id == auth.tenant_id && g.member(&auth.device_id).is_some()
    ))
}

/// Reserve an upload of `length` ciphertext bytes in a conversation the caller is in.
///
/// The length counts against the tenant's storage quota from now on, until the upload
/// expires or the attachment passes its retention.
#[utoipa::path(
    post,
    path = "/v1/attachments",
    tag = "attachments",
    request_body = CreateUploadRequest,
    security(("device_token" = [])),
    responses(
        (status = 201, description = "Upload reserved", body = CreateUploadResponse),
        (status = 403, description = "storage_quota_exceeded", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_group (or not a member)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "attachment_too_large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_upload(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Json(req): Json<CreateUploadRequest>,
) -> ApiResult<Response> {
    let group_id = hex::decode(&req.conversation)
        .ok()
        .filter(|b| !b.is_empty())
        .map(hex::encode)
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownGroup, "no such group"))?;
    if !is_member(&state, &auth, &group_id).await? {
        return Err(ApiError::new(
            ErrorCode::UnknownGroup,
            "no such group, or the calling device is not a member",
        ));
    }
    let blobs = state.blobs();
    let config = blobs.config();
    if req.length == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "length must be positive",
        ));
    }
    if req.length > config.max_attachment_bytes {
        return Err(too_large(format!(
            "attachments may be at most {} bytes",
            config.max_attachment_bytes
        )));
    }
    let now = now_secs();
    let upload = Upload {
        attachment_id: random_id("att_"),
        tenant_id: auth.tenant_id.clone(),
        group_id,
        created_by: auth.device_id.clone(),
        length: req.length,
        offset: 0,
        created_at: now,
        completed_at: None,
        expires_at: now.saturating_add(i64::try_from(config.upload_ttl_secs).unwrap_or(i64::MAX)),
    };
    let outcome = blobs
        .uploads()
        .create_upload(&upload, config.tenant_quota_bytes, now)
        .await?;
    if let CreateOutcome::QuotaExceeded { used } = outcome {
        return Err(ApiError::new(
            ErrorCode::StorageQuotaExceeded,
            format!(
                "the tenant holds {used} of {} bytes; this upload needs {}",
                config.tenant_quota_bytes, req.length
            ),
        ));
    }
    tracing::info!(
        attachment_id = %upload.attachment_id,
        group_id = %upload.group_id,
        length = upload.length,
        "attachment upload created"
    );
    let location = format!("/v1/attachments/{}", upload.attachment_id);
    let body = CreateUploadResponse {
        attachment_id: upload.attachment_id,
        offset: 0,
        expires_at: upload.expires_at,
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Append ciphertext at `Upload-Offset` (uploader only).
///
/// The body (`application/offset+octet-stream`) is stored as one object and recorded only
/// once stored, so an interrupted request leaves the offset where it was.
#[utoipa::path(
    patch,
    path = "/v1/attachments/{attachment_id}",
    tag = "attachments",
    params(
        ("attachment_id" = String, Path, description = "Attachment id"),
        ("Upload-Offset" = u64, Header, description = "Where this body starts; must be the current offset"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    security(("device_token" = [])),
    responses(
        (status = 204, description = "Stored; `Upload-Offset` holds the new offset"),
        (status = 404, description = "unknown_attachment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "offset_mismatch (current offset in `Upload-Offset`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "attachment_too_large: past the declared length or `max_chunk_bytes`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "unsupported_media_type", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn append_upload(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(attachment_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != OFFSET_OCTET_STREAM {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type must be {OFFSET_OCTET_STREAM}"),
        ));
    }
    let offset: u64 = headers
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidField, "Upload-Offset header required"))?;
    let blobs = state.blobs();
    let upload = own_upload(blobs, &auth, &attachment_id, now_secs()).await?;
    if offset != upload.offset {
        return Ok(offset_mismatch(upload.offset));
    }
    let remaining = upload.length - upload.offset;
    let max_chunk = blobs.config().max_chunk_bytes;
    let declared: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > remaining) {
        return Err(too_large(format!(
            "only {remaining} bytes remain in this upload"
        )));
    }
    if declared.is_some_and(|n| n > max_chunk) {
        return Err(too_large(format!(
            "a PATCH body may be at most {max_chunk} bytes"
        )));
    }
    let nonce = random_id("");
    let key = part_key(&attachment_id, offset, &nonce[..16]);
    let stream = body
        .into_data_stream()
        .map_err(|e| BlobError::Body(e.to_string()))
        .boxed();
    let stored = match blobs
        .objects()
        .put_stream(&key, stream, remaining.min(max_chunk))
        .await
    {
        Ok(n) => n,
        Err(BlobError::TooLarge { limit }) => {
            return Err(too_large(format!(
                "the body exceeds {limit} bytes (what remains, or max_chunk_bytes)"
            )));
        }
        Err(BlobError::Body(_)) => {
            return Err(ApiError::new(
                ErrorCode::MalformedBody,
                "could not read the request body",
            ));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    if stored == 0 {
        blobs
            .objects()
            .delete(&key)
            .await
            .map_err(ApiError::internal)?;
        return Ok((StatusCode::NO_CONTENT, [offset_header(offset)]).into_response());
    }
    let part = Part {
        offset,
        length: stored,
        object_key: key.clone(),
    };
    let recorded = blobs
        .uploads()
        .append_part(
            &attachment_id,
            &part,
            now_secs(),
            blobs.config().retention_secs,
        )
        .await?;
    match recorded {
        Some(u) => {
            if u.is_complete() {
                tracing::info!(%attachment_id, length = u.length, "attachment upload complete");
            }
            Ok((StatusCode::NO_CONTENT, [offset_header(u.offset)]).into_response())
        }
        None => {
            // A concurrent append at the same offset won: drop our copy.
            blobs
                .objects()
                .delete(&key)
                .await
                .map_err(ApiError::internal)?;
            let current = own_upload(blobs, &auth, &attachment_id, now_secs()).await?;
            Ok(offset_mismatch(current.offset))
        }
    }
}

/// The upload's current offset and declared length (uploader only).
#[utoipa::path(
    head,
    path = "/v1/attachments/{attachment_id}",
    tag = "attachments",
    params(("attachment_id" = String, Path, description = "Attachment id")),
    security(("device_token" = [])),
    responses(
        (status = 200, description = "`Upload-Offset` and `Upload-Length` headers"),
        (status = 404, description = "unknown_attachment"),
    )
)]
pub async fn upload_offset(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(attachment_id): Path<String>,
) -> ApiResult<Response> {
    let upload = own_upload(state.blobs(), &auth, &attachment_id, now_secs()).await?;
    Ok((
        StatusCode::OK,
        [
            offset_header(upload.offset),
            (
                header::HeaderName::from_static(UPLOAD_LENGTH),
                HeaderValue::from(upload.length),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

/// A short-lived download URL for a complete attachment, bound to the calling device
/// (current members of the attachment's conversation only).
#[utoipa::path(
    post,
    path = "/v1/attachments/{attachment_id}/download-url",
    tag = "attachments",
    params(("attachment_id" = String, Path, description = "Attachment id")),
    security(("device_token" = [])),
    responses(
        (status = 200, description = "Signed URL", body = DownloadUrlResponse),
        (status = 403, description = "not_member", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_attachment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "upload_incomplete", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn download_url(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(attachment_id): Path<String>,
) -> ApiResult<Json<DownloadUrlResponse>> {
    let blobs = state.blobs();
    let now = now_secs();
    let upload = match blobs.uploads().upload(&attachment_id).await? {
        Some(u) if u.tenant_id == auth.tenant_id && u.expires_at > now => u,
        _ => return Err(unknown_attachment()),
    };
    if !is_member(&state, &auth, &upload.group_id).await? {
        return Err(ApiError::new(
            ErrorCode::NotMember,
            "the calling device is not a member of the attachment's conversation",
        ));
    }
    if !upload.is_complete() {
        return Err(ApiError::new(
            ErrorCode::UploadIncomplete,
            "the attachment is still being uploaded",
        ));
    }
    let ttl = i64::try_from(blobs.config().download_url_ttl_secs).unwrap_or(300);
    let expires_at = now.saturating_add(ttl);
    let sig = blobs.sign_url(&attachment_id, &auth.device_id, expires_at);
    Ok(Json(DownloadUrlResponse {
        url: format!(
            "/v1/blobs/{attachment_id}?exp={expires_at}&dev={}&sig={sig}",
            auth.device_id
        ),
        expires_at,
        length: upload.length,
    }))
}

/// Stream an attachment's ciphertext through a signed URL, with the token of the device the
/// URL was issued to.
#[utoipa::path(
    get,
    path = "/v1/blobs/{attachment_id}",
    tag = "attachments",
    params(("attachment_id" = String, Path, description = "Attachment id"), DownloadQuery),
    security(("device_token" = [])),
    responses(
        (status = 200, description = "The ciphertext", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 403, description = "invalid_download_url", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_attachment", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn download_blob(
    State(state): State<AppState>,
    auth: DeviceAuth,
    Path(attachment_id): Path<String>,
    Query(q): Query<DownloadQuery>,
) -> ApiResult<Response> {
    let blobs = state.blobs().clone();
    let now = now_secs();
    let (Some(exp), Some(dev), Some(sig)) = (q.exp, q.dev, q.sig) else {
        return Err(invalid_url());
    };
    if dev != auth.device_id || exp < now || !blobs.verify_url(&attachment_id, &dev, exp, &sig) {
        return Err(invalid_url());
    }
    let upload = match blobs.uploads().upload(&attachment_id).await? {
        Some(u) if u.tenant_id == auth.tenant_id && u.expires_at > now && u.is_complete() => u,
        _ => return Err(unknown_attachment()),
    };
    let parts = blobs.uploads().parts(&attachment_id).await?;
    let mut expected = 0;
    for p in &parts {
        if p.offset != expected {
            return Err(ApiError::internal(format!(
                "attachment {attachment_id} has a gap at {expected}"
            )));
        }
        expected += p.length;
    }
    if expected != upload.length {
        return Err(ApiError::internal(format!(
            "attachment {attachment_id} parts cover {expected} of {} bytes",
            upload.length
        )));
    }
    let stream = futures::stream::iter(parts)
        .then(move |p| {
            let blobs = blobs.clone();
            async move {
                match blobs.objects().get(&p.object_key).await {
                    Ok(Some(s)) => Ok(s),
                    Ok(None) => Err(BlobError::Backend(format!(
                        "missing object {}",
                        p.object_key
                    ))),
                    Err(e) => Err(e),
                }
            }
        })
        .try_flatten();
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(upload.length)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
