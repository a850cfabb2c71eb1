//! Encrypted attachments: the chunked ciphertext format ([`format`]), the reference to an
//! attachment that travels inside an MLS message ([`AttachmentRef`]), and the SDK operations
//! that stream a file through encryption into a resumable upload and back out through
//! decryption (`SealClient::send_attachment*`, `SealClient::download_attachment`).
//!
//! The gateway only ever sees ciphertext, its length and an opaque id. The key, file name,
//! media type and plaintext digest must never leave this device except inside the MLS
//! message, and never be logged. Nothing here holds a whole file in memory.

pub mod format;
mod transfer;

#[cfg(test)]
mod tests;

pub use format::{
    AttachmentError, AttachmentKey, DEFAULT_CHUNK_SIZE, Decryptor, Encryptor, Threads, Verified,
    decrypt_stream, decrypt_stream_with, encrypt_stream, encrypt_stream_with,
};
use serde::{Deserialize, Serialize};
pub(crate) use transfer::PendingUpload;
pub use transfer::{AttachmentOptions, AttachmentReceipt, DEFAULT_REQUEST_BYTES, Progress};

/// Longest accepted file name and media type, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
pub const MAX_MEDIA_TYPE_BYTES: usize = 127;

/// An attachment as referenced from an MLS message: where its ciphertext is, how to decrypt
/// it, and what it claims to be. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    /// The gateway's id of the ciphertext.
    pub attachment_id: String,
    /// The sender's file name (untrusted: sanitize before using it as a path).
    pub name: String,
    /// Plaintext bytes.
    pub size: u64,
    pub media_type: String,
    /// BLAKE3 of the plaintext, `"blake3:<64 hex digits>"` (the algorithm is part of the
    /// value, so a receiver refuses a digest it does not know instead of misreading it).
    pub digest: String,
    /// The content-encryption key (AES-256-GCM), base64.
    #[serde(with = "sealgate_proto::b64")]
    pub cek: Vec<u8>,
    /// The per-file nonce prefix, base64.
    #[serde(with = "sealgate_proto::b64")]
    pub nonce_prefix: Vec<u8>,
    pub chunk_size: u32,
    pub ciphertext_len: u64,
}

impl std::fmt::Debug for AttachmentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentRef")
            .field("attachment_id", &self.attachment_id)
            .field("size", &self.size)
            .field("ciphertext_len", &self.ciphertext_len)
            .finish_non_exhaustive()
    }
}

impl AttachmentRef {
    /// Describe an encrypted attachment.
    pub fn new(
        attachment_id: String,
        name: String,
        media_type: String,
        key: &AttachmentKey,
    ) -> Self {
        Self {
            attachment_id,
            name,
            size: key.size,
            media_type,
            digest: format::format_digest(&key.plaintext_digest),
            cek: key.cek.to_vec(),
            nonce_prefix: key.nonce_prefix.to_vec(),
            chunk_size: key.chunk_size,
            ciphertext_len: key.ciphertext_len,
        }
    }

    /// The decryption key, checking every field a peer could have got wrong.
    pub fn key(&self) -> Result<AttachmentKey, AttachmentError> {
        let bad = |what: &str| AttachmentError::InvalidParameters(what.to_owned());
        let cek: [u8; format::CEK_LEN] = self
            .cek
            .as_slice()
            .try_into()
            .map_err(|_| bad("key length"))?;
        let nonce_prefix: [u8; format::NONCE_PREFIX_LEN] = self
            .nonce_prefix
            .as_slice()
            .try_into()
            .map_err(|_| bad("nonce prefix length"))?;
        let plaintext_digest = format::parse_digest(&self.digest)?;
        let key = AttachmentKey {
            cek,
            nonce_prefix,
            chunk_size: self.chunk_size,
            ciphertext_len: self.ciphertext_len,
            plaintext_digest,
            size: self.size,
        };
        // Validates the chunk size and that the lengths agree.
        Decryptor::new(&key)?;
        Ok(key)
    }

    /// Whether the name and media type are within bounds (checked on send and receive).
    pub fn check_labels(&self) -> Result<(), AttachmentError> {
        check_labels(&self.name, &self.media_type)
    }
}

pub(crate) fn check_labels(name: &str, media_type: &str) -> Result<(), AttachmentError> {
    if name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(AttachmentError::InvalidParameters(format!(
            "file name must be at most {MAX_NAME_BYTES} bytes without control characters"
        )));
    }
    if media_type.len() > MAX_MEDIA_TYPE_BYTES || media_type.chars().any(char::is_control) {
        return Err(AttachmentError::InvalidParameters(format!(
            "media type must be at most {MAX_MEDIA_TYPE_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}
