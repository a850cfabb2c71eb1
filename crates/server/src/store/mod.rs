//! The metadata store behind the gateway: narrow async traits, one per area, and the
//! embedded SQLite implementation.
//!
//! Contract for every method: `Ok(None)` / `Ok(false)` = absent or lost a race, `Err` = the
//! store failed (and nothing was half-written: each method is one transaction). Nothing above
//! these traits knows which backend runs. The store must never hold plaintext of E2EE traffic
//! or secrets in clear: tokens are stored as digests, messages as opaque MLS bytes.

pub mod backend;
#[cfg(test)]
pub(crate) mod conformance;
pub mod postgres;
pub mod sqlite;

pub use crate::delivery::store::DeliveryStore;
pub use crate::directory::store::DirectoryStore;
pub use crate::ds::store::DsStore;
pub use crate::links::store::LinkStore;
pub use crate::policy::store::PolicyStore;

/// Every capability a metadata backend provides. Implemented automatically for any type with
/// all the area traits. The job queue (`delivery::JobQueue`) is separate: it may live
/// elsewhere (JetStream) and is reached through `delivery::Delivery`.
pub trait Store:
    DirectoryStore + DsStore + DeliveryStore + PolicyStore + LinkStore + Send + Sync + 'static
{
}

impl<T> Store for T where
    T: DirectoryStore + DsStore + DeliveryStore + PolicyStore + LinkStore + Send + Sync + 'static
{
}

/// Failure of the store itself (I/O, database, corruption). Always the server's fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The external job queue (NATS JetStream) failed or is unreachable.
    #[error("queue: {0}")]
    Queue(String),
    /// A batched write's transaction failed as a whole (every write in it is undone).
    #[error("batched write: {0}")]
    Batch(String),
}

impl From<StoreError> for crate::error::ApiError {
    fn from(e: StoreError) -> Self {
        crate::error::ApiError::internal(e)
    }
}

/// Current Unix time in seconds.
pub fn now_secs() -> i64 {
    now_millis() / 1000
}

/// Hand `op` to a write batcher (SQLite's or PostgreSQL's) and wait for its answer, which the
/// batcher sends after the batch's commit.
pub(crate) async fn submit_write<Op, T>(
    batcher: &tokio::sync::mpsc::Sender<Op>,
    op: Op,
    answer: tokio::sync::oneshot::Receiver<Result<T, StoreError>>,
) -> Result<T, StoreError> {
    batcher
        .send(op)
        .await
        .map_err(|_| StoreError::Batch("the store is closed".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Batch("the write was abandoned".into()))?
}

/// Current Unix time in milliseconds.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
