//! The blob store: a narrow trait for storing, streaming and deleting ciphertext objects, and
//! its implementation over `object_store` (a local folder by default, S3 when configured, or
//! memory in tests).
//!
//! Contract: [`BlobStore::put_stream`] is all or nothing (after `Err` no object is visible
//! under the key); [`BlobStore::get`] returns `Ok(None)` for an absent object; deleting an
//! absent object is not an error. Objects are opaque ciphertext; this module must never log
//! or inspect their bytes.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

/// Multipart chunk size: S3's minimum part size, so the same code works on every backend.
const MULTIPART_CHUNK: usize = 5 * 1024 * 1024;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Caller: the body is longer than the allowed limit; nothing stored.
    #[error("body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    /// Caller: reading the request body failed (client went away); nothing stored.
    #[error("reading the body: {0}")]
    Body(String),
    /// Server: the backend failed.
    #[error("blob backend: {0}")]
    Backend(String),
}

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// Where ciphertext objects live.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Store everything `body` yields as `key`, refusing more than `limit` bytes. Returns the
    /// number of bytes stored.
    async fn put_stream(&self, key: &str, body: ByteStream, limit: u64) -> Result<u64, BlobError>;

    /// The object's bytes, streamed.
    async fn get(&self, key: &str) -> Result<Option<ByteStream>, BlobError>;

    /// Delete one object.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// Delete every object whose key starts with `prefix` (a folder-like `a/b/`). Returns how
    /// many were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError>;
}

/// [`BlobStore`] over any `object_store` backend.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    inner: Arc<dyn ObjectStore>,
}

impl ObjectBlobStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

fn path(key: &str) -> Result<ObjectPath, BlobError> {
    ObjectPath::parse(key).map_err(|e| BlobError::Backend(format!("bad object key: {e}")))
}

fn backend(e: object_store::Error) -> BlobError {
    BlobError::Backend(e.to_string())
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put_stream(
        &self,
        key: &str,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<u64, BlobError> {
        let location = path(key)?;
        let upload = self.inner.put_multipart(&location).await.map_err(backend)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
        let mut total: u64 = 0;
        let failure = loop {
            match body.next().await {
                None => break None,
                Some(Err(e)) => break Some(e),
                Some(Ok(bytes)) => {
                    total += bytes.len() as u64;
                    if total > limit {
                        break Some(BlobError::TooLarge { limit });
                    }
                    if let Err(e) = writer.wait_for_capacity(2).await {
                        break Some(backend(e));
                    }
                    writer.put(bytes);
                }
            }
        };
        if let Some(e) = failure {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(error = %abort, "aborting a blob upload failed");
            }
            return Err(e);
        }
        writer.finish().await.map_err(backend)?;
        Ok(total)
    }

    async fn get(&self, key: &str) -> Result<Option<ByteStream>, BlobError> {
        match self.inner.get(&path(key)?).await {
            Ok(result) => Ok(Some(result.into_stream().map_err(backend).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.inner.delete(&path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        let prefix = path(prefix)?;
        let keys: Vec<ObjectPath> = self
            .inner
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(backend)?;
        let mut deleted = 0;
        for key in keys {
            match self.inner.delete(&key).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn body(parts: &[&'static [u8]]) -> ByteStream {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    async fn read(store: &ObjectBlobStore, key: &str) -> Option<Vec<u8>> {
        let stream = store.get(key).await.unwrap()?;
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        Some(chunks.concat())
    }

    /// The contract every backend must meet; run against memory and the local folder.
    async fn conformance(store: ObjectBlobStore) {
        assert_eq!(
            store
                .put_stream("p/a/1", body(&[b"he", b"llo"]), 5)
                .await
                .unwrap(),
            5
        );
        assert_eq!(read(&store, "p/a/1").await.unwrap(), b"hello");
        assert!(read(&store, "p/a/2").await.is_none());
        // Over the limit: refused and nothing visible.
        let err = store.put_stream("p/a/2", body(&[b"abc", b"def"]), 5).await;
        assert!(matches!(err, Err(BlobError::TooLarge { limit: 5 })));
        assert!(read(&store, "p/a/2").await.is_none());
        // A body that fails half-way: nothing visible.
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(BlobError::Body("client went away".into())),
        ])
        .boxed();
        assert!(store.put_stream("p/a/3", failing, 100).await.is_err());
        assert!(read(&store, "p/a/3").await.is_none());
        store.put_stream("p/b/1", body(&[b"x"]), 5).await.unwrap();
        assert_eq!(store.delete_prefix("p/a").await.unwrap(), 1);
        assert!(read(&store, "p/a/1").await.is_none());
        assert!(read(&store, "p/b/1").await.is_some());
        assert_eq!(store.delete_prefix("p/nothing").await.unwrap(), 0);
        store.delete("p/b/1").await.unwrap();
        store.delete("p/b/1").await.unwrap();
        assert!(read(&store, "p/b/1").await.is_none());
    }

    #[tokio::test]
    async fn memory_backend_meets_the_contract() {
        conformance(ObjectBlobStore::new(Arc::new(InMemory::new()))).await;
    }

    /// S3 (any S3-compatible server; `.ci/run` starts moto) when
    /// `SEALGATE_TEST_S3_ENDPOINT` is set; the bucket is created fresh for the run.
    #[tokio::test]
    async fn s3_backend_meets_the_contract() {
        const ENV: &str = "SEALGATE_TEST_S3_ENDPOINT";
        let Ok(endpoint) = std::env::var(ENV) else {
            eprintln!("skipping the S3 blob contract: {ENV} is not set");
            return;
        };
        let bucket = format!("sg-test-{}", &crate::auth::random_id("")[..16]);
        let created = reqwest::Client::new()
            .put(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
            .send()
            .await
            .unwrap();
        assert!(
            created.status().is_success(),
            "creating bucket: {}",
            created.status()
        );
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        conformance(ObjectBlobStore::new(Arc::new(s3))).await;
    }

    #[tokio::test]
    async fn local_backend_meets_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path())
            .unwrap()
            .with_automatic_cleanup(true);
        conformance(ObjectBlobStore::new(Arc::new(local))).await;
    }
}
