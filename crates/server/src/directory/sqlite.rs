//! SQLite implementation of [`DirectoryStore`](super::store::DirectoryStore).

use async_trait::async_trait;

use super::store::DirectoryStore;
use crate::auth::DeviceAuth;
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

#[async_trait]
impl DirectoryStore for SqliteStore {
    async fn tenant_by_api_key_hash(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT tenant_id FROM api_keys WHERE key_hash = ?")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    async fn device_by_token_hash(&self, hash: &str) -> Result<Option<DeviceAuth>, StoreError> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT tenant_id, user_id, device_id FROM devices \
             WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(tenant_id, user_id, device_id)| DeviceAuth {
            tenant_id,
            user_id,
            device_id,
        }))
    }
}
