//! Attachment blobs: resumable uploads of ciphertext, short-lived signed download URLs bound
//! to the requesting device, and the garbage collector that deletes uploads never completed
//! and attachments past their retention.
//!
//! The gateway only ever holds ciphertext here. The attachment's key, file name, media type
//! and plaintext digest travel inside the MLS message between clients; this module must never
//! accept, store or log any of them, nor log object bytes or download signatures. Metadata
//! (who may append, who may download, how far an upload got) lives in the
//! [`store::UploadStore`]; bytes live in the [`objects::BlobStore`]. A part is recorded only
//! after its object was written, so a killed upload resumes from the last recorded offset and
//! a half-written object never counts.

pub mod config;
pub mod objects;
pub mod routes;
pub mod sqlite;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
pub use config::{BlobBackend, BlobsConfig};
use objects::{BlobError, BlobStore, ObjectBlobStore};
use store::UploadStore;

use crate::ServerError;
use crate::config::ConfigError;
use crate::store::StoreError;

/// File in the data folder holding the download-URL signing key (hex, mode 0600).
pub const URL_KEY_FILE: &str = "blob-url-key";
/// Default folder of the local backend inside the data folder.
pub const LOCAL_FOLDER: &str = "blobs";
/// Uploads deleted per garbage-collector batch.
const GC_BATCH: u32 = 100;

/// The blob service. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    inner: Arc<Inner>,
}

struct Inner {
    config: BlobsConfig,
    uploads: Arc<dyn UploadStore>,
    objects: Arc<dyn BlobStore>,
    url_key: hmac::Key,
}

/// What one garbage-collector run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub uploads: u64,
    pub objects: u64,
}

/// Why garbage collection stopped early (it resumes on the next run).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

impl Blobs {
    /// Open the configured backend (creating the local folder) and the URL signing key
    /// (created in `data_dir` on first start).
    pub fn open(
        config: &BlobsConfig,
        data_dir: &Path,
        uploads: Arc<dyn UploadStore>,
    ) -> Result<Self, ServerError> {
        let objects: Arc<dyn object_store::ObjectStore> = match config.backend {
            BlobBackend::Local => {
                let folder = config
                    .path
                    .clone()
                    .unwrap_or_else(|| data_dir.join(LOCAL_FOLDER));
                std::fs::create_dir_all(&folder).map_err(|source| ServerError::DataDir {
                    path: folder.clone(),
                    source,
                })?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&folder)
                    .map_err(|e| invalid("blobs.path", e))?
                    .with_automatic_cleanup(true);
                Arc::new(local)
            }
            BlobBackend::S3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_allow_http(config.allow_http);
                if let Some(v) = &config.bucket {
                    b = b.with_bucket_name(v);
                }
                if let Some(v) = &config.endpoint {
                    b = b.with_endpoint(v);
                }
                if let Some(v) = &config.region {
                    b = b.with_region(v);
                }
                if let Some(v) = &config.access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = &config.secret_access_key {
                    b = b.with_secret_access_key(v);
                }
                Arc::new(b.build().map_err(|e| invalid("blobs", e))?)
            }
        };
        let key_path = data_dir.join(URL_KEY_FILE);
        let key = read_or_create_key(&key_path)?;
        Ok(Self::new(
            config.clone(),
            uploads,
            Arc::new(ObjectBlobStore::new(objects)),
            &key,
        ))
    }

    /// Assemble from parts (tests, other backends).
    pub fn new(
        config: BlobsConfig,
        uploads: Arc<dyn UploadStore>,
        objects: Arc<dyn BlobStore>,
        url_key: &[u8],
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                uploads,
                objects,
                url_key: hmac::Key::new(hmac::HMAC_SHA256, url_key),
            }),
        }
    }

    pub fn config(&self) -> &BlobsConfig {
        &self.inner.config
    }

    pub fn uploads(&self) -> &dyn UploadStore {
        self.inner.uploads.as_ref()
    }

    pub fn objects(&self) -> &dyn BlobStore {
        self.inner.objects.as_ref()
    }

    /// Signature of a download URL: HMAC-SHA256 over the attachment, device and expiry.
    pub fn sign_url(&self, attachment_id: &str, device_id: &str, expires_at: i64) -> String {
        let msg = url_message(attachment_id, device_id, expires_at);
        hex::encode(hmac::sign(&self.inner.url_key, msg.as_bytes()).as_ref())
    }

    /// Constant-time check of a download URL's signature.
    pub fn verify_url(
        &self,
        attachment_id: &str,
        device_id: &str,
        expires_at: i64,
        sig: &str,
    ) -> bool {
        let Ok(tag) = hex::decode(sig) else {
            return false;
        };
        let msg = url_message(attachment_id, device_id, expires_at);
        hmac::verify(&self.inner.url_key, msg.as_bytes(), &tag).is_ok()
    }

    /// Delete every upload expired at `now` (Unix seconds): incomplete ones past the upload
    /// TTL, complete ones past retention. Objects first, then rows, so a crash in between
    /// leaves a row the next run deletes again, never an object nobody knows about.
    pub async fn collect_garbage(&self, now: i64) -> Result<GcReport, GcError> {
        let mut report = GcReport::default();
        loop {
            let batch = self.uploads().expired_uploads(now, GC_BATCH).await?;
            for id in &batch {
                report.objects += self.objects().delete_prefix(&upload_prefix(id)).await?;
                self.uploads().delete_upload(id).await?;
                report.uploads += 1;
            }
            if batch.len() < GC_BATCH as usize {
                break;
            }
        }
        if report.uploads > 0 {
            tracing::info!(
                uploads = report.uploads,
                objects = report.objects,
                "blob garbage collected"
            );
        }
        Ok(report)
    }

    /// Run [`Blobs::collect_garbage`] every `gc_interval_secs` until the returned guard is
    /// dropped.
    pub fn spawn_gc(&self) -> GcTask {
        let blobs = self.clone();
        let every = Duration::from_secs(self.config().gc_interval_secs);
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = blobs.collect_garbage(crate::store::now_secs()).await {
                    tracing::warn!(error = %e, "blob garbage collection failed; retrying later");
                }
            }
        });
        GcTask(handle)
    }
}

/// Stops the garbage collector when dropped.
#[derive(Debug)]
pub struct GcTask(tokio::task::JoinHandle<()>);

impl Drop for GcTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn url_message(attachment_id: &str, device_id: &str, expires_at: i64) -> String {
    format!("sealgate-download-v1\n{attachment_id}\n{device_id}\n{expires_at}")
}

/// Folder-like prefix of every object of an upload.
pub fn upload_prefix(attachment_id: &str) -> String {
    format!("parts/{attachment_id}")
}

/// Key of the part starting at `offset`; the random suffix keeps two racing appends at the
/// same offset from overwriting each other's object.
pub fn part_key(attachment_id: &str, offset: u64, nonce: &str) -> String {
    format!("parts/{attachment_id}/{offset:020}-{nonce}")
}

fn invalid(name: &'static str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Config(ConfigError::Invalid {
        name,
        reason: e.to_string(),
    })
}

fn read_or_create_key(path: &Path) -> Result<Vec<u8>, ServerError> {
    let io_err = |source| ServerError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => hex::decode(text.trim()).map_err(|_| {
            io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the download URL key is not hex",
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = crate::auth::new_secret(crate::auth::SecretKind::Operator);
            // 256 random bits; the prefix is dropped, only the hex part is the key.
            let hex_part = key
                .strip_prefix(crate::auth::SecretKind::Operator.prefix())
                .unwrap_or(&key)
                .to_owned();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            use std::io::Write;
            let mut file = options.open(path).map_err(io_err)?;
            file.write_all(format!("{hex_part}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            hex::decode(hex_part).map_err(|_| {
                io_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "bad key",
                ))
            })
        }
        Err(e) => Err(io_err(e)),
    }
}
