//! Metadata of attachment uploads: which uploads exist, who may append and download, how far
//! each got, and which stored objects make it up. See `crate::store` for the general contract
//! (`Ok(None)` = absent or lost a race, `Err` = the store failed; each method is one
//! all-or-nothing transaction).
//!
//! Correctness under concurrency lives here: a part is recorded with a compare-and-swap on
//! the upload's offset, and quotas are checked and reserved in the same transaction. The store
//! never sees ciphertext bytes, let alone plaintext.

use async_trait::async_trait;

use crate::store::StoreError;

/// One upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub attachment_id: String,
    pub tenant_id: String,
    /// Hex MLS group id.
    pub group_id: String,
    /// Device id of the uploader.
    pub created_by: String,
    /// Declared ciphertext length.
    pub length: u64,
    /// Bytes durably stored.
    pub offset: u64,
    /// Unix seconds.
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub expires_at: i64,
}

impl Upload {
    pub fn is_complete(&self) -> bool {
        self.completed_at.is_some()
    }
}

/// One stored object of an upload, covering `offset..offset + length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub offset: u64,
    pub length: u64,
    pub object_key: String,
}

/// What [`UploadStore::create_upload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// The tenant's reserved bytes plus this upload would exceed the quota; nothing stored.
    QuotaExceeded {
        used: u64,
    },
}

/// Storage of upload metadata.
#[async_trait]
pub trait UploadStore: Send + Sync {
    /// Reserve an upload if the tenant's live uploads (not expired at `now`) plus this one
    /// stay within `quota` bytes.
    async fn create_upload(
        &self,
        upload: &Upload,
        quota: u64,
        now: i64,
    ) -> Result<CreateOutcome, StoreError>;

    /// An upload by id.
    async fn upload(&self, attachment_id: &str) -> Result<Option<Upload>, StoreError>;

    /// Record a stored part if the upload is still at `part.offset` and the part fits its
    /// length. When it completes the upload, `completed_at = now` and
    /// `expires_at = now + retention_secs`. `Ok(None)`: the offset moved on (a concurrent
    /// append won) or the upload is gone; nothing recorded.
    async fn append_part(
        &self,
        attachment_id: &str,
        part: &Part,
        now: i64,
        retention_secs: u64,
    ) -> Result<Option<Upload>, StoreError>;

    /// The parts of an upload, by offset.
    async fn parts(&self, attachment_id: &str) -> Result<Vec<Part>, StoreError>;

    /// Up to `limit` uploads with `expires_at <= now`.
    async fn expired_uploads(&self, now: i64, limit: u32) -> Result<Vec<String>, StoreError>;

    /// Delete an upload and its part rows (objects must be deleted first).
    async fn delete_upload(&self, attachment_id: &str) -> Result<(), StoreError>;

    /// Bytes reserved by a tenant's uploads not expired at `now`.
    async fn tenant_usage(&self, tenant_id: &str, now: i64) -> Result<u64, StoreError>;
}
