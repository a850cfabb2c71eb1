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
        Ok(())
    }
}

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
        std::fs::write(&path, "max_body_bytes = 1\n").unwrap();
        assert!(matches!(
            Config::load(Some(&path)),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
