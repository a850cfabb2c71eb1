//! Typed gateway configuration, loaded once (TOML file, then `SEALGATE_*` environment
//! variables), validated at start, and shared read-only as `Arc<Config>`.
//!
//! It must never hold secrets that belong in the data folder (tokens, keys): the config file is
//! meant to be checked into an operator's repository.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration was refused. Always the operator's fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value for {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Gateway configuration. Every field has a default, so `sealgate serve` needs no file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`SEALGATE_LISTEN`).
    pub listen: SocketAddr,
    /// Data folder: SQLite database, operator token (`SEALGATE_DATA`).
    pub data_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a mailbox long-poll may hold, in seconds.
    pub max_poll_wait_secs: u64,
    /// Default lifetime of enrollment tokens, in seconds.
    pub enrollment_ttl_secs: u64,
    /// KeyPackage claims: sustained rate per requester, per minute.
    pub claim_rate_per_minute: u32,
    /// KeyPackage claims: burst size per requester.
    pub claim_burst: u32,
    /// Most one-time KeyPackages a device may hold in the directory.
    pub max_key_packages_per_device: u32,
    /// Most members (leaves) a group may have.
    pub max_group_size: u32,
    /// The send pipeline: workers, retries, limits (`[delivery]`).
    pub delivery: DeliveryConfig,
    /// Transports to the phone network and to tenants (`[transports.*]`).
    pub transports: TransportsConfig,
    /// Attachment blob storage, limits and retention (`[blobs]`).
    pub blobs: crate::blobs::BlobsConfig,
    /// Capability discovery cache (`[capabilities]`).
    pub capabilities: crate::capabilities::CapabilitiesConfig,
    /// Secure links: lifetime, size, one-time codes (`[links]`).
    pub links: crate::links::LinksConfig,
    /// Metadata store: embedded SQLite or PostgreSQL (`[store]`).
    pub store: crate::store::backend::StoreConfig,
    /// Job queue: the store's table or NATS JetStream (`[queue]`).
    pub queue: crate::store::backend::QueueConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("sealgate-data"),
            max_body_bytes: 1024 * 1024,
            max_poll_wait_secs: 60,
            enrollment_ttl_secs: 24 * 3600,
            claim_rate_per_minute: 600,
            claim_burst: 100,
            max_key_packages_per_device: 500,
            max_group_size: 2000,
            delivery: DeliveryConfig::default(),
            transports: TransportsConfig::default(),
            blobs: crate::blobs::BlobsConfig::default(),
            capabilities: crate::capabilities::CapabilitiesConfig::default(),
            links: crate::links::LinksConfig::default(),
            store: crate::store::backend::StoreConfig::default(),
            queue: crate::store::backend::QueueConfig::default(),
        }
    }
}

impl Config {
    /// Defaults with the data folder set; handy for tests and embedding.
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            ..Self::default()
        }
    }

    /// Load: defaults, then the TOML file if given, then `SEALGATE_LISTEN` / `SEALGATE_DATA`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            None => Self::default(),
        };
        if let Ok(listen) = std::env::var("SEALGATE_LISTEN") {
            config.listen = listen.parse().map_err(|e| ConfigError::Invalid {
                name: "SEALGATE_LISTEN",
                reason: format!("{e}"),
            })?;
        }
        if let Ok(data) = std::env::var("SEALGATE_DATA") {
            config.data_dir = PathBuf::from(data);
        }
        crate::store::backend::apply_env(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    /// Check ranges; called by [`Config::load`] and by `Gateway::open`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, bool, &str); 5] = [
            (
                "max_body_bytes",
                (1024..=64 * 1024 * 1024).contains(&self.max_body_bytes),
                "must be between 1 KiB and 64 MiB",
            ),
            (
                "max_poll_wait_secs",
                self.max_poll_wait_secs <= 300,
                "must be at most 300",
            ),
            (
                "claim_rate_per_minute",
                self.claim_rate_per_minute > 0 && self.claim_burst > 0,
                "claim rate and burst must be positive",
            ),
            (
                "max_group_size",
                self.max_group_size >= 2,
                "must be at least 2",
            ),
            (
                "enrollment_ttl_secs",
                (60..=30 * 24 * 3600).contains(&self.enrollment_ttl_secs),
                "must be between 60 s and 30 days",
            ),
        ];
        for (name, ok, reason) in checks {
            if !ok {
                return Err(ConfigError::Invalid {
                    name,
                    reason: reason.to_owned(),
                });
            }
        }
        self.blobs.validate()?;
        self.capabilities.validate()?;
        self.links.validate()?;
        crate::store::backend::validate(self)?;
        self.delivery.validate()?;
        self.transports.validate()?;
        // A call that outlives its lease lets a second worker start the same job.
        let t = &self.transports;
        let longest_call_ms = [
            t.rcs.as_ref().map(|c| c.timeout_ms),
            t.sms.as_ref().map(|c| c.timeout_ms),
            t.push.as_ref().map(|c| c.timeout_ms),
            Some(t.webhook.timeout_ms),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        if self.delivery.lease_secs.saturating_mul(1000) <= longest_call_ms {
            return Err(invalid(
                "delivery.lease_secs",
                "must be longer than every transport's timeout_ms",
            ));
        }
        Ok(())
    }
}

fn invalid(name: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.to_owned(),
    }
}

/// `[delivery]`: the send pipeline. Windows and delays apply per job.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Worker tasks in this process (0 = none: an API-only process).
    pub workers: usize,
    /// Jobs a worker leases and runs concurrently per round.
    pub lease_batch: usize,
    /// How long a leased job stays invisible before another worker may take it.
    pub lease_secs: u64,
    /// How often an idle worker looks for due jobs without a wake-up.
    pub poll_ms: u64,
    /// Most messages written per accept transaction (group commit).
    pub accept_batch: usize,
    /// Backoff: first ceiling and cap (full jitter draws from 0 to the ceiling).
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Retry windows from acceptance, per message class; then `failed: retry_window_exhausted`.
    pub retry_window_transactional_secs: u64,
    pub retry_window_sensitive_secs: u64,
    pub retry_window_marketing_secs: u64,
    /// Retry window of tenant status callbacks and push wake-ups.
    pub callback_retry_window_secs: u64,
    /// How long idempotency keys are kept (at least 24 h).
    pub idempotency_retention_secs: u64,
    /// Largest `ttl_secs` a message may ask for.
    pub max_ttl_secs: u64,
    /// Per-tenant sends per second on `POST /v1/messages` (0 = unlimited) and burst, per api
    /// process.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Per-tenant accepted sends per UTC day (0 = unlimited), counted in the store: shared by
    /// every process on it and kept across restarts (`delivery/limiter.rs`).
    pub daily_quota: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            lease_batch: 32,
            lease_secs: 60,
            poll_ms: 250,
            accept_batch: 1024,
            retry_base_ms: 1000,
            retry_cap_ms: 300_000,
            retry_window_transactional_secs: 72 * 3600,
            retry_window_sensitive_secs: 72 * 3600,
            retry_window_marketing_secs: 7 * 24 * 3600,
            callback_retry_window_secs: 24 * 3600,
            idempotency_retention_secs: 24 * 3600,
            max_ttl_secs: 30 * 24 * 3600,
            rate_per_sec: 0,
            rate_burst: 0,
            daily_quota: 0,
        }
    }
}

impl DeliveryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, bool, &str); 7] = [
            (
                "delivery.workers",
                self.workers <= 1024,
                "must be at most 1024",
            ),
            (
                "delivery.lease_batch",
                (1..=1000).contains(&self.lease_batch),
                "must be between 1 and 1000",
            ),
            (
                "delivery.lease_secs",
                (1..=3600).contains(&self.lease_secs),
                "must be between 1 and 3600",
            ),
            (
                "delivery.accept_batch",
                (1..=10_000).contains(&self.accept_batch),
                "must be between 1 and 10000",
            ),
            (
                "delivery.retry_base_ms",
                self.retry_base_ms >= 1 && self.retry_cap_ms >= self.retry_base_ms,
                "base must be positive and at most the cap",
            ),
            (
                "delivery.idempotency_retention_secs",
                self.idempotency_retention_secs >= 24 * 3600,
                "must be at least 86400 (24 h)",
            ),
            (
                "delivery.poll_ms",
                (1..=60_000).contains(&self.poll_ms),
                "must be between 1 and 60000",
            ),
        ];
        for (name, ok, reason) in checks {
            if !ok {
                return Err(invalid(name, reason));
            }
        }
        Ok(())
    }
}

/// `[transports.*]`. A missing section leaves that route unconfigured: its messages fail with
/// `transport_not_configured`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportsConfig {
    pub rcs: Option<RcsConfig>,
    pub sms: Option<SmsConfig>,
    pub push: Option<PushConfig>,
    pub webhook: WebhookConfig,
}

impl TransportsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let urls = [
            (
                "transports.rcs.base_url",
                self.rcs.as_ref().map(|c| &c.base_url),
            ),
            (
                "transports.sms.base_url",
                self.sms.as_ref().map(|c| &c.base_url),
            ),
            (
                "transports.push.base_url",
                self.push.as_ref().map(|c| &c.base_url),
            ),
        ];
        for (name, url) in urls {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(name, "must be an http or https URL"));
            }
        }
        let timeouts = [
            self.rcs.as_ref().map(|c| c.timeout_ms),
            self.sms.as_ref().map(|c| c.timeout_ms),
            self.push.as_ref().map(|c| c.timeout_ms),
            Some(self.webhook.timeout_ms),
        ];
        if timeouts
            .into_iter()
            .flatten()
            .any(|t| !(1..=300_000).contains(&t))
        {
            return Err(invalid(
                "transports.*.timeout_ms",
                "must be between 1 and 300000",
            ));
        }
        Ok(())
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_concurrency() -> usize {
    64
}

/// `[transports.rcs]`: the RCS aggregator (RBM-shaped REST).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcsConfig {
    pub base_url: String,
    /// Bearer token of the RBM agent.
    pub agent_token: String,
    /// HMAC-SHA512 key the aggregator signs receipts with (`X-Goog-Signature`).
    pub webhook_secret: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// `[transports.sms]`: the SMS gateway.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    pub base_url: String,
    pub token: String,
    /// Sender id or number.
    pub from: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// `[transports.push]`: the push service for mailbox wake-ups.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub base_url: String,
    pub token: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// `[transports.webhook]`: tenant status callbacks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    pub timeout_ms: u64,
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            timeout_ms: default_timeout_ms(),
            concurrency: 32,
        }
    }
}

// Tokens and secrets stay out of logs and error messages.
macro_rules! redacted_debug {
    ($ty:ident { $($field:ident),* }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))*
                    .finish_non_exhaustive()
            }
        }
    };
}
redacted_debug!(RcsConfig {
    base_url,
    timeout_ms,
    concurrency
});
redacted_debug!(SmsConfig {
    base_url,
    from,
    timeout_ms,
    concurrency
});
redacted_debug!(PushConfig {
    base_url,
    timeout_ms,
    concurrency
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealgate.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9999\"\nclaim_burst = 5\n").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.claim_burst, 5);
        assert_eq!(c.max_body_bytes, Config::default().max_body_bytes);

        std::fs::write(&path, "listne = \"127.0.0.1:9999\"\n").unwrap();
        assert!(matches!(
            Config::load(Some(&path)),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(
            &path,
            "[delivery]\nworkers = 2\n[transports.rcs]\nbase_url = \"http://127.0.0.1:9\"\n\
             agent_token = \"tok-secret\"\nwebhook_secret = \"whs\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.delivery.workers, 2);
        let rcs = c.transports.rcs.as_ref().unwrap();
        assert_eq!(rcs.timeout_ms, 10_000);
        assert!(!format!("{c:?}").contains("tok-secret"));
        assert!(c.transports.sms.is_none());
        std::fs::write(
            &path,
            "[transports.sms]\nbase_url = \"ftp://x\"\ntoken = \"t\"\nfrom = \"f\"\n",
        )
        .unwrap();
        assert!(matches!(
            Config::load(Some(&path)),
            Err(ConfigError::Invalid { .. })
        ));
        std::fs::write(&path, "max_body_bytes = 1\n").unwrap();
        assert!(matches!(
            Config::load(Some(&path)),
            Err(ConfigError::Invalid { .. })
        ));
        // Nice steps: 0 (off) to 19; a negative one would ask to raise priority.
        assert_eq!(Config::default().store.runtime_nice, 10);
        std::fs::write(&path, "[store]\nruntime_nice = 0\n").unwrap();
        assert_eq!(Config::load(Some(&path)).unwrap().store.runtime_nice, 0);
        for bad in ["-1", "20"] {
            std::fs::write(&path, format!("[store]\nruntime_nice = {bad}\n")).unwrap();
            assert!(
                matches!(
                    Config::load(Some(&path)),
                    Err(ConfigError::Invalid {
                        name: "store.runtime_nice",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
