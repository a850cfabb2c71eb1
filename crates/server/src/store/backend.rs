//! Which backends a gateway process runs on (`[store]`, `[queue]` in `sealgate.toml`, or
//! `SEALGATE_STORE_*` / `SEALGATE_QUEUE_*` / `SEALGATE_BLOBS_*`), and opening them behind the
//! store / queue traits.
//!
//! This is the one place that names concrete backends; everything above receives trait
//! objects. It must never put a connection URL into `Debug` output or logs (URLs may carry
//! passwords): only the backend kind is printed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::postgres::{PgOptions, PgStore};
use super::sqlite::SqliteStore;
use super::{Store, StoreError};
use crate::blobs::store::UploadStore;
use crate::config::{Config, ConfigError};
use crate::delivery::DeliveryBackend;
use crate::delivery::nats::{NatsOptions, NatsQueue};
use crate::delivery::split::SplitBackend;

/// Which metadata store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// SQLite file in the data folder: one process.
    #[default]
    Sqlite,
    /// PostgreSQL shared by any number of processes.
    Postgres,
}

/// `[store]`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// `postgres://user:password@host:port/database` (`SEALGATE_STORE_URL`).
    pub url: Option<String>,
    /// Schema to use instead of `public` (`SEALGATE_STORE_SCHEMA`).
    pub schema: Option<String>,
    /// Pooled connections per process.
    pub max_connections: u32,
    /// Apply pending migrations when the process starts (else run `sealgate migrate`).
    pub migrate_on_start: bool,
    /// With the embedded SQLite store: how many nice steps the async runtime's threads (HTTP
    /// handlers, delivery workers) run below the store's single writer thread, so the writer
    /// never waits for a core behind them (Linux; 0 leaves priorities alone; see
    /// [`crate::sched`]). Ignored with PostgreSQL, which writes from many connections.
    pub runtime_nice: i32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sqlite,
            url: None,
            schema: None,
            max_connections: 16,
            migrate_on_start: true,
            runtime_nice: 10,
        }
    }
}

/// Which job queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueBackend {
    /// The store's own job table (SQLite or PostgreSQL).
    #[default]
    Embedded,
    /// NATS JetStream, fed from the PostgreSQL outbox.
    Nats,
}

/// `[queue]`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    pub backend: QueueBackend,
    /// `nats://host:port` (`SEALGATE_QUEUE_URL`).
    pub url: Option<String>,
    /// JetStream stream name (`SEALGATE_QUEUE_STREAM`).
    pub stream: String,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Embedded,
            url: None,
            stream: "SEALGATE_JOBS".to_owned(),
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("runtime_nice", &self.runtime_nice)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueConfig")
            .field("backend", &self.backend)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

/// Apply `SEALGATE_STORE_*`, `SEALGATE_QUEUE_*` and `SEALGATE_BLOBS_*` on top of the file.
/// A URL alone selects its backend (`SEALGATE_STORE_URL=postgres://…` means PostgreSQL).
pub fn apply_env(config: &mut Config) -> Result<(), ConfigError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(url) = var("SEALGATE_STORE_URL") {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            config.store.backend = StoreBackend::Postgres;
        }
        config.store.url = Some(url);
    }
    if let Some(b) = var("SEALGATE_STORE_BACKEND") {
        config.store.backend = match b.as_str() {
            "sqlite" => StoreBackend::Sqlite,
            "postgres" => StoreBackend::Postgres,
            _ => return Err(invalid("SEALGATE_STORE_BACKEND", "sqlite or postgres")),
        };
    }
    if let Some(s) = var("SEALGATE_STORE_SCHEMA") {
        config.store.schema = Some(s);
    }
    if let Some(url) = var("SEALGATE_QUEUE_URL") {
        if url.starts_with("nats://") {
            config.queue.backend = QueueBackend::Nats;
        }
        config.queue.url = Some(url);
    }
    if let Some(b) = var("SEALGATE_QUEUE_BACKEND") {
        config.queue.backend = match b.as_str() {
            "embedded" => QueueBackend::Embedded,
            "nats" => QueueBackend::Nats,
            _ => return Err(invalid("SEALGATE_QUEUE_BACKEND", "embedded or nats")),
        };
    }
    if let Some(s) = var("SEALGATE_QUEUE_STREAM") {
        config.queue.stream = s;
    }
    let blobs = &mut config.blobs;
    if let Some(b) = var("SEALGATE_BLOBS_BACKEND") {
        blobs.backend = match b.as_str() {
            "local" => crate::blobs::BlobBackend::Local,
            "s3" => crate::blobs::BlobBackend::S3,
            _ => return Err(invalid("SEALGATE_BLOBS_BACKEND", "local or s3")),
        };
    }
    if let Some(v) = var("SEALGATE_BLOBS_BUCKET") {
        blobs.bucket = Some(v);
    }
    if let Some(v) = var("SEALGATE_BLOBS_ENDPOINT") {
        blobs.allow_http |= v.starts_with("http://");
        blobs.endpoint = Some(v);
    }
    if let Some(v) = var("SEALGATE_BLOBS_REGION") {
        blobs.region = Some(v);
    }
    Ok(())
}

/// Check the backend choice hangs together.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let s = &config.store;
    if s.backend == StoreBackend::Postgres && s.url.as_deref().is_none_or(str::is_empty) {
        return Err(invalid("store.url", "required when backend = \"postgres\""));
    }
    if !(1..=1000).contains(&s.max_connections) {
        return Err(invalid(
            "store.max_connections",
            "must be between 1 and 1000",
        ));
    }
    if !(0..=19).contains(&s.runtime_nice) {
        return Err(invalid("store.runtime_nice", "must be between 0 and 19"));
    }
    let q = &config.queue;
    if q.backend == QueueBackend::Nats {
        if q.url.as_deref().is_none_or(str::is_empty) {
            return Err(invalid("queue.url", "required when backend = \"nats\""));
        }
        if s.backend != StoreBackend::Postgres {
            return Err(invalid(
                "queue.backend",
                "\"nats\" needs store.backend = \"postgres\" (its transactional outbox)",
            ));
        }
        if q.stream.is_empty()
            || !q
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid("queue.stream", "letters, digits, '_' and '-' only"));
        }
    }
    Ok(())
}

/// The opened backends of one process.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub uploads: Arc<dyn UploadStore>,
    pub delivery: Arc<dyn DeliveryBackend>,
    /// Set with the NATS queue: its outbox relay must run in every process that writes jobs.
    pub relay: Option<Arc<NatsQueue>>,
}

/// Open the configured store (migrating if `migrate` and the store is PostgreSQL; SQLite
/// always migrates, it has one process) and queue.
pub async fn open(config: &Config, data_dir: &Path, migrate: bool) -> Result<Backends, StoreError> {
    match config.store.backend {
        StoreBackend::Sqlite => {
            let store = Arc::new(SqliteStore::open(&data_dir.join(crate::DATABASE_FILE)).await?);
            Ok(Backends {
                store: store.clone(),
                uploads: store.clone(),
                delivery: store,
                relay: None,
            })
        }
        StoreBackend::Postgres => {
            let store = Arc::new(open_postgres(config, migrate).await?);
            let (delivery, relay): (Arc<dyn DeliveryBackend>, _) = match config.queue.backend {
                QueueBackend::Embedded => (store.clone(), None),
                QueueBackend::Nats => {
                    let options = NatsOptions {
                        url: config.queue.url.clone().unwrap_or_default(),
                        stream: config.queue.stream.clone(),
                        ack_wait: Duration::from_secs(config.delivery.lease_secs),
                    };
                    let queue = Arc::new(NatsQueue::connect(&options, store.clone()).await?);
                    let split =
                        SplitBackend::new(store.clone(), queue.clone(), Some(queue.relay_waker()));
                    (Arc::new(split), Some(queue))
                }
            };
            Ok(Backends {
                store: store.clone(),
                uploads: store,
                delivery,
                relay,
            })
        }
    }
}

/// Connect to the configured PostgreSQL store, migrating first if asked.
pub async fn open_postgres(config: &Config, migrate: bool) -> Result<PgStore, StoreError> {
    let options = PgOptions {
        max_connections: config.store.max_connections,
        schema: config.store.schema.clone(),
    };
    let url = config.store.url.as_deref().unwrap_or_default();
    if migrate {
        PgStore::open(url, &options).await
    } else {
        PgStore::connect(url, &options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sealgate.toml");
        std::fs::write(&path, text).expect("write");
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn backends_are_chosen_in_the_file_and_checked() {
        let c = parse("").expect("defaults");
        assert_eq!(
            (c.store.backend, c.queue.backend),
            (StoreBackend::Sqlite, QueueBackend::Embedded)
        );
        let c = parse(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://u:secret-pw@db/sg\"\n\
             [queue]\nbackend = \"nats\"\nurl = \"nats://q:4222\"\nstream = \"JOBS\"\n",
        )
        .expect("scale-out");
        assert_eq!(c.store.backend, StoreBackend::Postgres);
        assert_eq!(c.queue.stream, "JOBS");
        assert!(
            !format!("{c:?}").contains("secret-pw"),
            "URLs stay out of Debug"
        );
        let refused = [
            "[store]\nbackend = \"postgres\"\n",
            "[queue]\nbackend = \"nats\"\nurl = \"nats://q:4222\"\n",
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://db\"\n[queue]\nbackend = \"nats\"\n",
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://db\"\n[queue]\nbackend = \"nats\"\n\
             url = \"nats://q\"\nstream = \"a.b\"\n",
            "[store]\nbackend = \"mysql\"\n",
        ];
        for text in refused {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
