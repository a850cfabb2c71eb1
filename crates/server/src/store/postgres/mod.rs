//! The scale-out PostgreSQL backend: every store trait (directory, DS, send pipeline, upload
//! metadata) and the table-backed job queue, on one connection pool shared by any number of
//! api and worker processes.
//!
//! It exists so several gateway processes can share one source of truth. Correctness across
//! processes comes from PostgreSQL alone — row locks (`FOR UPDATE`, `FOR UPDATE SKIP LOCKED`),
//! unique constraints and compare-and-swap updates — never from in-process mutexes, and it
//! must never assume it is the only writer. Like every store it never logs or interprets
//! message or payload bytes. Migrations (`migrations_pg/`) run under sqlx's advisory lock, so
//! processes starting together apply them once.

mod accept;
mod batch;
mod blobs;
mod delivery;
mod directory;
mod ds;
mod queue;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use super::StoreError;
use crate::delivery::write_plan::StatusWrite;

/// The PostgreSQL store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// The write batcher for status changes and carrier receipts ([`batch`]).
    writes: tokio::sync::mpsc::Sender<StatusWrite>,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most pooled connections of this process.
    pub max_connections: u32,
    /// Schema to use instead of `public` (created if missing); tests use a fresh one each.
    pub schema: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            schema: None,
        }
    }
}

impl PgStore {
    /// Connect to `url` and apply pending migrations.
    pub async fn open(url: &str, options: &PgOptions) -> Result<Self, StoreError> {
        let store = Self::connect(url, options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connect without migrating (`sealgate serve` on a role that must not change the schema).
    pub async fn connect(url: &str, options: &PgOptions) -> Result<Self, StoreError> {
        let mut connect = PgConnectOptions::from_str(url)?;
        if let Some(schema) = &options.schema {
            if !valid_identifier(schema) {
                return Err(StoreError::Corrupt(format!(
                    "schema name {schema:?} must be [a-z0-9_]"
                )));
            }
            let bootstrap = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(connect.clone())
                .await?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&bootstrap)
                .await?;
            bootstrap.close().await;
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect)
            .await?;
        let writes = batch::spawn(pool.clone());
        Ok(Self { pool, writes })
    }

    /// Apply pending migrations (safe to run from many processes at once).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations_pg").run(&self.pool).await?;
        Ok(())
    }

    /// Drop a schema and everything in it (test clean-up).
    pub async fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        if !valid_identifier(schema) {
            return Err(StoreError::Corrupt(format!("schema name {schema:?}")));
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(PgConnectOptions::from_str(url)?)
            .await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&pool)
            .await?;
        pool.close().await;
        Ok(())
    }

    /// The pool (for the NATS outbox relay and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Hand `write` to the write batcher and wait for its answer (sent after its commit).
    pub(crate) async fn submit<T>(
        &self,
        write: StatusWrite,
        answer: tokio::sync::oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        super::submit_write(&self.writes, write, answer).await
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} out of range")))
}

pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} out of range")))
}

/// Add a pointer to `message_id` to each device's mailbox, taking each device's next seq
/// under its head-row lock (devices in sorted order, so two fan-outs never deadlock).
pub(crate) async fn push_mailboxes(
    conn: &mut sqlx::PgConnection,
    devices: &[String],
    message_id: &str,
) -> Result<(), StoreError> {
    if devices.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&str> = devices.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    sqlx::query(
        "WITH heads AS ( \
           INSERT INTO ds_mailbox_heads (device_id, last_seq) \
           SELECT d, 1 FROM unnest($1::text[]) WITH ORDINALITY AS t(d, n) ORDER BY n \
           ON CONFLICT (device_id) DO UPDATE SET last_seq = ds_mailbox_heads.last_seq + 1 \
           RETURNING device_id, last_seq) \
         INSERT INTO ds_mailbox (device_id, seq, message_id) \
         SELECT device_id, last_seq, $2 FROM heads",
    )
    .bind(&sorted)
    .bind(message_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Test support: a fresh schema per test on `SEALGATE_TEST_POSTGRES_URL`, dropped on drop.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub const ENV: &str = "SEALGATE_TEST_POSTGRES_URL";

    /// A store in a fresh schema, dropped when this guard is dropped.
    pub struct TestPg {
        pub store: PgStore,
        url: String,
        schema: String,
    }

    impl Drop for TestPg {
        fn drop(&mut self) {
            let (url, schema) = (self.url.clone(), self.schema.clone());
            // A separate thread: drop may run inside a runtime that is shutting down.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(PgStore::drop_schema(&url, &schema));
                }
            })
            .join();
        }
    }

    /// `None` (after printing why) when the variable is unset.
    pub async fn fresh(test: &str) -> Option<TestPg> {
        let Ok(url) = std::env::var(ENV) else {
            eprintln!("skipping {test} on PostgreSQL: {ENV} is not set");
            return None;
        };
        let schema = format!("sg_test_{}", crate::auth::random_id("").to_lowercase());
        let schema: String = schema
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(60)
            .collect();
        let store = PgStore::open(
            &url,
            &PgOptions {
                max_connections: 8,
                schema: Some(schema.clone()),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{ENV}={url}: {e}"));
        Some(TestPg { store, url, schema })
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::PgStore;
    use super::testing::{TestPg, fresh};

    async fn open(test: &str) -> Option<(TestPg, Arc<PgStore>)> {
        let pg = fresh(test).await?;
        let store = Arc::new(pg.store.clone());
        Some((pg, store))
    }

    crate::store::conformance::backend_suite!(open);
}
