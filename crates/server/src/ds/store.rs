//! Store trait of the delivery-service area. See `crate::store` for the contract.

use async_trait::async_trait;

#[async_trait]
pub trait DsStore: Send + Sync {}

#[async_trait]
impl DsStore for crate::store::sqlite::SqliteStore {}
