//! `[blobs]` in `sealgate.toml`: where attachment ciphertext is stored, how large attachments
//! and a tenant's total may be, and how long uploads and attachments are kept.
//!
//! S3 credentials may be given here or, preferably, through the standard `AWS_*` environment
//! variables; they never appear in `Debug` output or logs.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;

/// Which object store holds the ciphertext.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobBackend {
    /// A folder (default `{data_dir}/blobs`).
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3,
}

/// `[blobs]`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobsConfig {
    pub backend: BlobBackend,
    /// Folder of the local backend; default `blobs` inside the data folder.
    pub path: Option<PathBuf>,
    /// S3: bucket name (required for `s3`).
    pub bucket: Option<String>,
    /// S3: endpoint URL for S3-compatible services (default: AWS for the region).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// S3 credentials; when absent, the `AWS_*` environment variables are used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// S3: allow a plain-http endpoint (test servers only).
    pub allow_http: bool,
    /// Largest attachment (ciphertext bytes) a tenant's device may upload.
    pub max_attachment_bytes: u64,
    /// Most ciphertext bytes a tenant may hold (reserved at upload creation).
    pub tenant_quota_bytes: u64,
    /// Largest body of one `PATCH` (streamed; independent of `max_body_bytes`).
    pub max_chunk_bytes: u64,
    /// Incomplete uploads are deleted this long after creation.
    pub upload_ttl_secs: u64,
    /// Complete attachments are deleted this long after completion.
    pub retention_secs: u64,
    /// Lifetime of a signed download URL.
    pub download_url_ttl_secs: u64,
    /// How often the garbage collector runs.
    pub gc_interval_secs: u64,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        Self {
            backend: BlobBackend::Local,
            path: None,
            bucket: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            max_attachment_bytes: 2 * 1024 * 1024 * 1024,
            tenant_quota_bytes: 100 * 1024 * 1024 * 1024,
            max_chunk_bytes: 8 * 1024 * 1024,
            upload_ttl_secs: 24 * 3600,
            retention_secs: 30 * 24 * 3600,
            download_url_ttl_secs: 300,
            gc_interval_secs: 3600,
        }
    }
}

impl std::fmt::Debug for BlobsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobsConfig")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("max_attachment_bytes", &self.max_attachment_bytes)
            .field("tenant_quota_bytes", &self.tenant_quota_bytes)
            .field("max_chunk_bytes", &self.max_chunk_bytes)
            .field("upload_ttl_secs", &self.upload_ttl_secs)
            .field("retention_secs", &self.retention_secs)
            .finish_non_exhaustive()
    }
}

impl BlobsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, bool, &str); 6] = [
            (
                "blobs.bucket",
                self.backend != BlobBackend::S3
                    || self.bucket.as_deref().is_some_and(|b| !b.is_empty()),
                "required when backend = \"s3\"",
            ),
            (
                "blobs.max_chunk_bytes",
                (64 * 1024..=256 * 1024 * 1024).contains(&self.max_chunk_bytes),
                "must be between 64 KiB and 256 MiB",
            ),
            (
                "blobs.max_attachment_bytes",
                self.max_attachment_bytes >= 1
                    && self.max_attachment_bytes <= self.tenant_quota_bytes,
                "must be positive and at most tenant_quota_bytes",
            ),
            (
                "blobs.upload_ttl_secs",
                (60..=30 * 24 * 3600).contains(&self.upload_ttl_secs),
                "must be between 60 s and 30 days",
            ),
            (
                "blobs.download_url_ttl_secs",
                (1..=24 * 3600).contains(&self.download_url_ttl_secs),
                "must be between 1 s and 24 h",
            ),
            (
                "blobs.gc_interval_secs",
                self.gc_interval_secs >= 1 && self.retention_secs >= 60,
                "gc interval must be positive and retention at least 60 s",
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
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                name: "blobs.endpoint",
                reason: "must be an http or https URL".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_s3_needs_a_bucket() {
        BlobsConfig::default().validate().unwrap();
        let c: BlobsConfig = toml::from_str(
            "backend = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n\
             secret_access_key = \"very-secret\"\n",
        )
        .unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                name: "blobs.bucket",
                ..
            })
        ));
        assert!(!format!("{c:?}").contains("very-secret"));
        let c: BlobsConfig = toml::from_str("backend = \"s3\"\nbucket = \"b\"\n").unwrap();
        c.validate().unwrap();
        assert!(toml::from_str::<BlobsConfig>("backend = \"ftp\"\n").is_err());
        let c = BlobsConfig {
            max_chunk_bytes: 10,
            ..BlobsConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
