//! Store trait of the directory area. See `crate::store` for the contract.

use async_trait::async_trait;

use crate::auth::DeviceAuth;
use crate::store::StoreError;

#[async_trait]
pub trait DirectoryStore: Send + Sync {
    /// The tenant owning the API key with this digest.
    async fn tenant_by_api_key_hash(&self, hash: &str) -> Result<Option<String>, StoreError>;

    /// The active (not revoked) device owning the device token with this digest.
    async fn device_by_token_hash(&self, hash: &str) -> Result<Option<DeviceAuth>, StoreError>;
}
