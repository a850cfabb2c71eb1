//! Sending and receiving attachments: read → encrypt chunk by chunk → upload in `PATCH`
//! requests, then send the key inside an MLS message; and download → decrypt → verify.
//!
//! Uploads are resumable. Encryption is deterministic given the key and nonce prefix, so the
//! key is saved in the sealed state (never anywhere else) before the first byte leaves, and a
//! later process re-encrypts the file up to the gateway's offset (`HEAD`) and continues
//! there. Within a process, a failed `PATCH` is retried from the gateway's offset with
//! backoff. At most a few chunks plus one request body are in memory at any time. This
//! module must never log keys, names or plaintext.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sealgate_proto::ErrorCode;
use sealgate_proto::attachment::CreateUploadRequest;
use serde::{Deserialize, Serialize};

use super::format::{self, Decryptor, Encryptor, Verified, sealed_chunk_len};
use super::{AttachmentKey, AttachmentRef, check_labels};
use crate::client::{SealClient, check_text, is_transient};
use crate::error::{Error, Result};
use crate::payload::Payload;
use crate::state::now_ms;

/// Progress callback: `(bytes done, bytes total)` of the ciphertext.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Default ciphertext bytes per `PATCH` (rounded down to whole chunks; the gateway accepts
/// up to `blobs.max_chunk_bytes`, 8 MiB by default).
pub const DEFAULT_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Attempts at one `PATCH` before giving up (the upload stays resumable).
const MAX_ATTEMPTS: u32 = 6;
/// Saved uploads older than this are forgotten (the gateway deletes them after a day).
const PENDING_MAX_AGE_MS: i64 = 7 * 24 * 3600 * 1000;

/// How to send an attachment.
#[derive(Clone)]
pub struct AttachmentOptions {
    /// File name shown to recipients (untrusted on their side; at most 255 bytes).
    pub name: String,
    /// Media type, e.g. `application/pdf`.
    pub media_type: String,
    /// Optional caption sent with the file.
    pub text: Option<String>,
    /// Plaintext bytes per encrypted chunk.
    pub chunk_size: u32,
    /// Ciphertext bytes per upload request.
    pub request_bytes: usize,
    pub progress: Option<Progress>,
}

impl AttachmentOptions {
    pub fn new(name: impl Into<String>, media_type: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            media_type: media_type.into(),
            text: None,
            chunk_size: format::DEFAULT_CHUNK_SIZE,
            request_bytes: DEFAULT_REQUEST_BYTES,
            progress: None,
        }
    }
}

impl std::fmt::Debug for AttachmentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentOptions")
            .field("chunk_size", &self.chunk_size)
            .field("request_bytes", &self.request_bytes)
            .finish_non_exhaustive()
    }
}

/// What happened to a sent attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentReceipt {
    pub conversation: String,
    pub message_id: String,
    pub attachment_id: String,
    pub size: u64,
    /// BLAKE3 of the plaintext, `"blake3:<64 hex digits>"` (as sent in the message).
    pub digest: String,
    /// Ciphertext bytes that were already on the gateway from an earlier, interrupted run.
    pub resumed_from: u64,
}

/// An upload in progress, kept in the sealed state so another process can resume it.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingUpload {
    pub attachment_id: String,
    pub conversation: String,
    /// Canonical path of the file.
    pub path: String,
    pub file_size: u64,
    /// Modification time (Unix ms) when the upload started: a changed file starts over.
    pub modified_ms: i64,
    #[serde(with = "sealgate_proto::b64")]
    pub cek: Vec<u8>,
    #[serde(with = "sealgate_proto::b64")]
    pub nonce_prefix: Vec<u8>,
    pub chunk_size: u32,
    pub length: u64,
    pub created_at: i64,
}

impl std::fmt::Debug for PendingUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingUpload")
            .field("attachment_id", &self.attachment_id)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

fn modified_ms(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

fn report(options: &AttachmentOptions, done: u64, total: u64) {
    if let Some(p) = &options.progress {
        p(done, total);
    }
}

impl SealClient {
    /// Send the file at `path` to a conversation. An upload of the same unchanged file to the
    /// same conversation that an earlier process left unfinished is resumed, not restarted.
    pub async fn send_attachment_file(
        &mut self,
        conversation: &str,
        path: &Path,
        options: AttachmentOptions,
    ) -> Result<AttachmentReceipt> {
        check_labels(&options.name, &options.media_type)?;
        check_text(options.text.as_deref().unwrap_or_default())?;
        self.load_group(conversation)?;
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| Error::io(path, e))?
            .to_string_lossy()
            .into_owned();
        let (size, modified) = (meta.len(), modified_ms(&meta));
        let cutoff = now_ms() - PENDING_MAX_AGE_MS;
        self.state.pending_uploads.retain(|p| p.created_at > cutoff);

        let saved = self
            .state
            .pending_uploads
            .iter()
            .find(|p| {
                p.conversation == conversation
                    && p.path == canonical
                    && p.file_size == size
                    && p.modified_ms == modified
                    && p.chunk_size == options.chunk_size
            })
            .cloned();
        let mut resumed = None;
        if let Some(p) = saved {
            match self.api.upload_offset(&p.attachment_id).await {
                Ok((offset, length)) if length == p.length => {
                    let cek = p.cek.as_slice().try_into().ok();
                    let prefix = p.nonce_prefix.as_slice().try_into().ok();
                    if let (Some(cek), Some(prefix)) = (cek, prefix) {
                        let enc = Encryptor::with_key(cek, prefix, p.chunk_size)?;
                        tracing::debug!(offset, length, "resuming an attachment upload");
                        resumed = Some((enc, p.attachment_id.clone(), length, offset));
                    }
                }
                Ok(_) => {}
                Err(e) if matches!(e.code(), Some(ErrorCode::UnknownAttachment)) => {}
                Err(e) => return Err(e),
            }
            if resumed.is_none() {
                // Expired or collected on the gateway: start over.
                self.state
                    .pending_uploads
                    .retain(|q| q.attachment_id != p.attachment_id);
                self.persist()?;
            }
        }
        let (enc, id, length, start) = match resumed {
            Some(r) => r,
            None => {
                let (enc, id, length) = self.create_upload(conversation, size, &options).await?;
                self.state.pending_uploads.push(PendingUpload {
                    attachment_id: id.clone(),
                    conversation: conversation.to_owned(),
                    path: canonical,
                    file_size: size,
                    modified_ms: modified,
                    cek: enc.cek().to_vec(),
                    nonce_prefix: enc.nonce_prefix().to_vec(),
                    chunk_size: options.chunk_size,
                    length,
                    created_at: now_ms(),
                });
                // The key is saved (sealed) before any ciphertext leaves.
                self.persist()?;
                (enc, id, length, 0)
            }
        };
        let key = self
            .upload(&id, length, enc, &mut file, size, start, &options)
            .await?;
        let receipt = self
            .announce(conversation, id.clone(), key, options, start)
            .await?;
        // Kept until the message is out, so a failed send is retried without re-uploading;
        // a crash in this window may send the message twice (never lose it).
        self.state.pending_uploads.retain(|p| p.attachment_id != id);
        self.persist()?;
        Ok(receipt)
    }

    /// [`SealClient::send_attachment_file`] to `user`'s 1:1 conversation (created if needed).
    pub async fn send_attachment_file_to_user(
        &mut self,
        user: &str,
        path: &Path,
        options: AttachmentOptions,
    ) -> Result<AttachmentReceipt> {
        let conversation = self.direct_conversation(user).await?;
        self.send_attachment_file(&conversation, path, options)
            .await
    }

    /// Send `size` bytes read from `reader` to a conversation. Failed requests are retried
    /// within this call; an interrupted process cannot resume a reader (use
    /// [`SealClient::send_attachment_file`] for that).
    pub async fn send_attachment<R: Read + Send>(
        &mut self,
        conversation: &str,
        mut reader: R,
        size: u64,
        options: AttachmentOptions,
    ) -> Result<AttachmentReceipt> {
        check_labels(&options.name, &options.media_type)?;
        check_text(options.text.as_deref().unwrap_or_default())?;
        self.load_group(conversation)?;
        let (enc, id, length) = self.create_upload(conversation, size, &options).await?;
        let key = self
            .upload(&id, length, enc, &mut reader, size, 0, &options)
            .await?;
        self.announce(conversation, id, key, options, 0).await
    }

    /// Download, decrypt and verify an attachment into `writer`. On error, discard what was
    /// written: it may be incomplete (each written chunk is authentic, the file is not).
    pub async fn download_attachment<W: Write + Send>(
        &self,
        attachment: &AttachmentRef,
        writer: &mut W,
        progress: Option<&Progress>,
    ) -> Result<Verified> {
        attachment.check_labels()?;
        let key = attachment.key()?;
        let url = self.api.download_url(&attachment.attachment_id).await?;
        let mut resp = self.api.download(&url.url).await?;
        let mut dec = Decryptor::new(&key)?;
        let mut done = 0u64;
        while let Some(bytes) = resp.chunk().await.map_err(Error::Transport)? {
            dec.update(&bytes, writer)?;
            done += bytes.len() as u64;
            if let Some(p) = progress {
                p(done, key.ciphertext_len);
            }
        }
        writer.flush().map_err(|e| Error::Attachment(e.into()))?;
        Ok(dec.finish()?)
    }

    async fn create_upload(
        &self,
        conversation: &str,
        size: u64,
        options: &AttachmentOptions,
    ) -> Result<(Encryptor, String, u64)> {
        let enc = Encryptor::new(options.chunk_size)?;
        let length = format::ciphertext_len(size, options.chunk_size)
            .ok_or_else(|| Error::InvalidArgument("file too large for its chunk size".into()))?;
        let created = self
            .api
            .create_upload(&CreateUploadRequest {
                conversation: conversation.to_owned(),
                length,
            })
            .await?;
        Ok((enc, created.attachment_id, length))
    }

    /// Send the MLS message that carries the attachment's key.
    async fn announce(
        &mut self,
        conversation: &str,
        attachment_id: String,
        key: AttachmentKey,
        options: AttachmentOptions,
        resumed_from: u64,
    ) -> Result<AttachmentReceipt> {
        let attachment = AttachmentRef::new(
            attachment_id.clone(),
            options.name,
            options.media_type,
            &key,
        );
        let digest = attachment.digest.clone();
        let payload = Payload::attachment(attachment, options.text, now_ms());
        let receipt = self.send_payload(conversation, &payload).await?;
        Ok(AttachmentReceipt {
            conversation: receipt.conversation,
            message_id: receipt.message_id,
            attachment_id,
            size: key.size,
            digest,
            resumed_from,
        })
    }

    /// Encrypt `size` bytes of `reader` from the start and upload everything past `start`
    /// (what the gateway already holds), a request at a time.
    #[allow(clippy::too_many_arguments)]
    async fn upload<R: Read + Send>(
        &self,
        id: &str,
        length: u64,
        mut enc: Encryptor,
        reader: &mut R,
        size: u64,
        start: u64,
        options: &AttachmentOptions,
    ) -> Result<AttachmentKey> {
        let chunk = u64::from(enc.chunk_size());
        let sealed = sealed_chunk_len(enc.chunk_size());
        let per_request = (options.request_bytes / sealed).max(1) * sealed;
        let mut body = Vec::with_capacity(per_request.min(length as usize));
        let mut buf = Vec::with_capacity(sealed);
        let (mut produced, mut offset, mut left) = (0u64, start, size);
        report(options, offset, length);
        loop {
            let take = left.min(chunk) as usize;
            buf.clear();
            buf.resize(take, 0);
            reader.read_exact(&mut buf).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::InvalidArgument("the file got shorter while it was being sent".into())
                } else {
                    Error::Attachment(e.into())
                }
            })?;
            left -= take as u64;
            let last = left == 0;
            enc.seal_chunk(&mut buf, last)?;
            let end = produced + buf.len() as u64;
            if end > offset {
                let skip = offset.saturating_sub(produced) as usize;
                body.extend_from_slice(&buf[skip..]);
            }
            produced = end;
            if !body.is_empty() && (body.len() >= per_request || last) {
                offset = self.append_with_retry(id, offset, &body).await?;
                body.clear();
                report(options, offset, length);
            }
            if last {
                break;
            }
        }
        if produced != length || offset != length {
            return Err(Error::BadResponse(format!(
                "upload ended at {offset} of {length} bytes ({produced} produced)"
            )));
        }
        Ok(enc.key()?)
    }

    /// `PATCH` `body` at `offset`, retrying from the gateway's offset after a lost response
    /// or a transient failure. Returns the new offset.
    async fn append_with_retry(&self, id: &str, base: u64, body: &[u8]) -> Result<u64> {
        let end = base + body.len() as u64;
        let mut offset = base;
        let mut attempt = 0;
        loop {
            let slice = &body[(offset - base) as usize..];
            let failure = match self.api.append_upload(id, offset, slice.to_vec()).await {
                Ok(new) if new == end => return Ok(new),
                Ok(new) if (offset..end).contains(&new) => {
                    offset = new; // the gateway kept part of it
                    continue;
                }
                Ok(new) => {
                    return Err(Error::BadResponse(format!(
                        "gateway reports offset {new}, expected {end}"
                    )));
                }
                Err(e) => e,
            };
            let mismatch = matches!(failure.code(), Some(ErrorCode::OffsetMismatch));
            attempt += 1;
            if !(mismatch || is_transient(&failure)) || attempt >= MAX_ATTEMPTS {
                return Err(failure);
            }
            if !mismatch {
                let backoff = Duration::from_millis(250 << attempt.min(5));
                tracing::debug!(attempt, ?backoff, error = %failure, "attachment upload retry");
                tokio::time::sleep(backoff).await;
            }
            match self.api.upload_offset(id).await {
                Ok((server, _)) if server == end => return Ok(end),
                Ok((server, _)) if (base..end).contains(&server) => offset = server,
                Ok((server, _)) => {
                    return Err(Error::BadResponse(format!(
                        "the gateway holds {server} bytes of this upload; expected {base}..{end}"
                    )));
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
}
