//! Wire types of the attachment blob API (`/v1/attachments`, `/v1/blobs`): a resumable
//! upload protocol shaped like tus (create, append at an offset, query the offset) and
//! short-lived signed download URLs.
//!
//! Everything here is about ciphertext: lengths, offsets, ids. The attachment's key, name,
//! media type and plaintext digest travel only inside the MLS message and must never be
//! added to these types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Request and response header: the upload offset in bytes.
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// Response header of `HEAD`: the declared ciphertext length.
pub const UPLOAD_LENGTH: &str = "upload-length";
/// Content-Type of a `PATCH` body.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

/// `POST /v1/attachments` (device token): reserve an upload in a conversation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUploadRequest {
    /// Hex MLS group id; the caller must be a member.
    pub conversation: String,
    /// Total ciphertext bytes that will be uploaded.
    pub length: u64,
}

/// A reserved upload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateUploadResponse {
    pub attachment_id: String,
    /// Bytes stored so far (0).
    pub offset: u64,
    /// Unix seconds after which an incomplete upload is deleted.
    pub expires_at: i64,
}

/// `POST /v1/attachments/{id}/download-url` (device token, members of the group).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DownloadUrlResponse {
    /// Path and query to `GET` with the same device's token:
    /// `/v1/blobs/{id}?exp=…&dev=…&sig=…`.
    pub url: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Ciphertext bytes the download will return.
    pub length: u64,
}
