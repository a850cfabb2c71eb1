//! The embedded SQLite backend: one file in the data folder, WAL mode, migrations applied on
//! open. Area traits are implemented next to their area (`directory/sqlite.rs`, `ds/sqlite.rs`)
//! on this one type.
//!
//! Writes that must be atomic run in `BEGIN IMMEDIATE` transactions so two writers never
//! deadlock upgrading read locks. Blocking never happens on async threads: sqlx runs SQLite on
//! its own worker thread.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::StoreError;

/// The SQLite store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if needed) `path` and apply pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let url = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a committed transaction survives a process crash (kill -9);
            // only an OS crash or power loss can roll back the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Start a write transaction that holds the write lock from its first statement.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::SqliteStore;

    async fn open(_test: &str) -> Option<(tempfile::TempDir, Arc<SqliteStore>)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("conformance.db"))
            .await
            .expect("open");
        Some((dir, Arc::new(store)))
    }

    crate::store::conformance::backend_suite!(open);
}
