//! The attachment ciphertext format: a fresh AES-256-GCM key per file and the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) over fixed-size chunks.
//!
//! Chunk `i` of a file is sealed with the nonce `prefix(7) ‖ i (u32 big-endian) ‖ last(1)`,
//! where the 7-byte prefix is random per file and `last` is 1 only for the final chunk, and
//! with the header (`"sealgate-attachment"`, format version, chunk size) as associated data.
//! So a chunk cannot be moved to another position (counter), to another file (key and prefix),
//! or be passed off as the end (flag): reordering, splicing, truncation and extension all fail
//! authentication. An empty file is one empty final chunk. The ciphertext is the sealed chunks
//! back to back (`chunk_size + 16` bytes each, the last one shorter), with nothing else: every
//! parameter travels in the MLS message. This module is pure (no I/O but the `Read`/`Write`
//! it is given), holds at most two chunks in memory, and must never log keys or plaintext.

use std::io::{Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest;
use zeroize::Zeroize;

/// Version of the format, bound into every chunk's associated data.
pub const FORMAT_VERSION: u8 = 1;
/// Plaintext bytes per chunk unless the sender chose otherwise (recorded in the key).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Smallest and largest chunk size accepted (bounds a receiver's memory).
pub const MIN_CHUNK_SIZE: u32 = 16;
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// AES-GCM tag length: each chunk grows by this much.
pub const TAG_LEN: usize = 16;
/// Content-encryption key length (AES-256).
pub const CEK_LEN: usize = 32;
/// Random per-file nonce prefix length.
pub const NONCE_PREFIX_LEN: usize = 7;

const AAD_LABEL: &[u8] = b"sealgate-attachment";
const AAD_LEN: usize = AAD_LABEL.len() + 1 + 4;

/// Why an attachment could not be encrypted or decrypted. Decryption errors mean the
/// ciphertext (or its key) was damaged or tampered with: the output must be discarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// Caller or peer: a parameter is out of range (chunk size, key length, size).
    #[error("invalid attachment parameters: {0}")]
    InvalidParameters(String),
    /// Caller: the file needs more than 2^32 chunks.
    #[error("attachment too large for its chunk size")]
    TooLarge,
    /// Server or attacker: the ciphertext ends before its final chunk.
    #[error("attachment truncated: got {received} of {expected} ciphertext bytes")]
    Truncated { received: u64, expected: u64 },
    /// Server or attacker: chunk `index` does not authenticate at its position. It was
    /// modified, moved, taken from another file, or the key is wrong.
    #[error("attachment chunk {index} is corrupted, reordered or from another file")]
    ChunkCorrupted { index: u32 },
    /// Server or attacker: bytes follow the final chunk.
    #[error("unexpected data after the final attachment chunk")]
    TrailingData,
    /// Peer: the decrypted size differs from the size in the message.
    #[error("attachment size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    /// Peer: the plaintext (or ciphertext) digest differs from the one in the message.
    #[error("attachment digest mismatch")]
    DigestMismatch,
    /// Caller: the encryptor was used after its final chunk, or with a wrong chunk length.
    #[error("attachment encryptor misuse: {0}")]
    Misuse(&'static str),
    /// Local: reading the input or writing the output failed.
    #[error("attachment I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Internal: the random source or the AEAD failed.
    #[error("attachment crypto failure")]
    Crypto,
}

/// Everything needed to decrypt and verify one attachment. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AttachmentKey {
    pub cek: [u8; CEK_LEN],
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    pub chunk_size: u32,
    /// Total ciphertext bytes (what the blob store holds).
    pub ciphertext_len: u64,
    /// SHA-256 of the ciphertext, when the encryptor was asked for it
    /// ([`Encryptor::with_ciphertext_digest`]); `None` otherwise and when the key came from a
    /// message: the AEAD already authenticates every ciphertext byte, and the plaintext digest
    /// in the MLS message binds the content, so by default it would only cost a second pass.
    pub ciphertext_sha256: Option<[u8; 32]>,
    /// SHA-256 of the plaintext: the attachment's verified digest.
    pub plaintext_sha256: [u8; 32],
    /// Plaintext bytes.
    pub size: u64,
}

impl std::fmt::Debug for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentKey")
            .field("chunk_size", &self.chunk_size)
            .field("ciphertext_len", &self.ciphertext_len)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Drop for AttachmentKey {
    fn drop(&mut self) {
        self.cek.zeroize();
    }
}

/// Ciphertext length of a `size`-byte file in `chunk_size` chunks; `None` past 2^32 chunks.
pub fn ciphertext_len(size: u64, chunk_size: u32) -> Option<u64> {
    let chunks = size.div_ceil(u64::from(chunk_size)).max(1);
    if chunks > u64::from(u32::MAX) + 1 {
        return None;
    }
    size.checked_add(chunks * TAG_LEN as u64)
}

/// Sealed length of a full (non-final) chunk.
pub fn sealed_chunk_len(chunk_size: u32) -> usize {
    chunk_size as usize + TAG_LEN
}

fn check_chunk_size(chunk_size: u32) -> Result<(), AttachmentError> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(AttachmentError::InvalidParameters(format!(
            "chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
        )))
    }
}

/// The per-file AEAD: key, nonce prefix and header.
struct ChunkCipher {
    key: LessSafeKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    aad: [u8; AAD_LEN],
}

impl ChunkCipher {
    fn new(
        cek: &[u8; CEK_LEN],
        prefix: [u8; NONCE_PREFIX_LEN],
        chunk_size: u32,
    ) -> Result<Self, AttachmentError> {
        check_chunk_size(chunk_size)?;
        let key = UnboundKey::new(&AES_256_GCM, cek).map_err(|_| AttachmentError::Crypto)?;
        let mut aad = [0u8; AAD_LEN];
        aad[..AAD_LABEL.len()].copy_from_slice(AAD_LABEL);
        aad[AAD_LABEL.len()] = FORMAT_VERSION;
        aad[AAD_LABEL.len() + 1..].copy_from_slice(&chunk_size.to_be_bytes());
        Ok(Self {
            key: LessSafeKey::new(key),
            prefix,
            aad,
        })
    }

    fn nonce(&self, index: u32, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.prefix);
        n[NONCE_PREFIX_LEN..11].copy_from_slice(&index.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::assume_unique_for_key(n)
    }

    fn seal(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> Result<(), AttachmentError> {
        self.key
            .seal_in_place_append_tag(self.nonce(index, last), Aad::from(self.aad), buf)
            .map_err(|_| AttachmentError::Crypto)
    }

    /// Open in place; returns the plaintext length.
    fn open(&self, index: u32, last: bool, buf: &mut [u8]) -> Result<usize, AttachmentError> {
        self.key
            .open_in_place(self.nonce(index, last), Aad::from(self.aad), buf)
            .map(|p| p.len())
            .map_err(|_| AttachmentError::ChunkCorrupted { index })
    }
}

fn random<const N: usize>() -> Result<[u8; N], AttachmentError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| AttachmentError::Crypto)?;
    Ok(b)
}

/// Incremental encryption: feed plaintext, get sealed chunks. Deterministic given the key,
/// prefix and chunk size, so an interrupted upload can be re-encrypted up to where the
/// server stopped and continue there.
pub struct Encryptor {
    cipher: ChunkCipher,
    cek: [u8; CEK_LEN],
    chunk_size: u32,
    index: u32,
    finished: bool,
    pending: Vec<u8>,
    plaintext_hash: digest::Context,
    /// Only when asked for: it costs a second SHA-256 pass, and nothing needs it to decrypt.
    ciphertext_hash: Option<digest::Context>,
    size: u64,
    ciphertext_len: u64,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("chunk_size", &self.chunk_size)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Drop for Encryptor {
    fn drop(&mut self) {
        self.cek.zeroize();
        self.pending.zeroize();
    }
}

impl Encryptor {
    /// A fresh random key and nonce prefix.
    pub fn new(chunk_size: u32) -> Result<Self, AttachmentError> {
        Self::with_key(random()?, random()?, chunk_size)
    }

    /// A given key and prefix (to re-create the same ciphertext when resuming).
    pub fn with_key(
        cek: [u8; CEK_LEN],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        chunk_size: u32,
    ) -> Result<Self, AttachmentError> {
        Ok(Self {
            cipher: ChunkCipher::new(&cek, nonce_prefix, chunk_size)?,
            cek,
            chunk_size,
            index: 0,
            finished: false,
            pending: Vec::new(),
            plaintext_hash: digest::Context::new(&digest::SHA256),
            ciphertext_hash: None,
            size: 0,
            ciphertext_len: 0,
        })
    }

    /// Also compute the ciphertext's SHA-256 (e.g. for a store that verifies uploads).
    pub fn with_ciphertext_digest(mut self) -> Self {
        self.ciphertext_hash = Some(digest::Context::new(&digest::SHA256));
        self
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    pub fn cek(&self) -> &[u8; CEK_LEN] {
        &self.cek
    }

    pub fn nonce_prefix(&self) -> [u8; NONCE_PREFIX_LEN] {
        self.cipher.prefix
    }

    /// Seal one chunk in place: `buf` holds exactly `chunk_size` plaintext bytes (or at
    /// most that many if `last`) and then holds the sealed chunk. The zero-copy path.
    pub fn seal_chunk(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), AttachmentError> {
        if self.finished {
            return Err(AttachmentError::Misuse("chunk after the final chunk"));
        }
        let len = buf.len();
        if len > self.chunk_size as usize || (!last && len != self.chunk_size as usize) {
            return Err(AttachmentError::Misuse("chunk of the wrong length"));
        }
        self.plaintext_hash.update(buf);
        self.cipher.seal(self.index, last, buf)?;
        if let Some(h) = &mut self.ciphertext_hash {
            h.update(buf);
        }
        self.size += len as u64;
        self.ciphertext_len += buf.len() as u64;
        if last {
            self.finished = true;
        } else {
            self.index = self.index.checked_add(1).ok_or(AttachmentError::TooLarge)?;
        }
        Ok(())
    }

    /// Feed plaintext; sealed chunks are appended to `out`. A full chunk is held back until
    /// more data (or [`Encryptor::finish`]) says whether it is the last.
    pub fn update(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let chunk = self.chunk_size as usize;
        while !data.is_empty() {
            if self.pending.len() == chunk {
                let mut buf = std::mem::take(&mut self.pending);
                self.seal_chunk(&mut buf, false)?;
                out.extend_from_slice(&buf);
                buf.clear();
                self.pending = buf;
            }
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(chunk + TAG_LEN);
            }
            let take = (chunk - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    /// Seal what is left as the final chunk (appended to `out`) and return the key.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<AttachmentKey, AttachmentError> {
        if !self.finished {
            let mut buf = std::mem::take(&mut self.pending);
            self.seal_chunk(&mut buf, true)?;
            out.extend_from_slice(&buf);
        }
        self.key()
    }

    /// The key, once the final chunk was sealed with [`Encryptor::seal_chunk`].
    pub fn key(&self) -> Result<AttachmentKey, AttachmentError> {
        if !self.finished {
            return Err(AttachmentError::Misuse("no final chunk yet"));
        }
        Ok(AttachmentKey {
            cek: self.cek,
            nonce_prefix: self.cipher.prefix,
            chunk_size: self.chunk_size,
            ciphertext_len: self.ciphertext_len,
            ciphertext_sha256: self.ciphertext_hash.clone().map(|h| to_array(h.finish())),
            plaintext_sha256: to_array(self.plaintext_hash.clone().finish()),
            size: self.size,
        })
    }
}

fn to_array(d: digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Read until `buf` holds `want` bytes or the input ends.
fn read_full(reader: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> std::io::Result<()> {
    buf.clear();
    buf.resize(want, 0);
    let mut filled = 0;
    while filled < want {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(())
}

/// Encrypt everything `reader` yields into `writer` with a fresh key, in `chunk_size` chunks.
/// Holds two chunks in memory (one to know whether the other is the last).
pub fn encrypt_stream_with(
    reader: &mut impl Read,
    writer: &mut impl Write,
    chunk_size: u32,
) -> Result<AttachmentKey, AttachmentError> {
    let mut enc = Encryptor::new(chunk_size)?;
    let chunk = chunk_size as usize;
    let mut current = Vec::with_capacity(chunk + TAG_LEN);
    let mut next = Vec::with_capacity(chunk + TAG_LEN);
    read_full(reader, &mut current, chunk)?;
    loop {
        let last = if current.len() < chunk {
            true
        } else {
            read_full(reader, &mut next, chunk)?;
            next.is_empty()
        };
        enc.seal_chunk(&mut current, last)?;
        writer.write_all(&current)?;
        if last {
            break;
        }
        std::mem::swap(&mut current, &mut next);
    }
    writer.flush()?;
    enc.key()
}

/// [`encrypt_stream_with`] in [`DEFAULT_CHUNK_SIZE`] chunks.
pub fn encrypt_stream(
    reader: &mut impl Read,
    writer: &mut impl Write,
) -> Result<AttachmentKey, AttachmentError> {
    encrypt_stream_with(reader, writer, DEFAULT_CHUNK_SIZE)
}

/// What a successful decryption verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub size: u64,
    pub plaintext_sha256: [u8; 32],
}

/// Incremental decryption and verification against an [`AttachmentKey`]. Plaintext is
/// written chunk by chunk as each chunk authenticates; only [`Decryptor::finish`] says the
/// whole file is intact, so callers write to a temporary place and keep it only then.
pub struct Decryptor {
    cipher: ChunkCipher,
    key: AttachmentKey,
    sealed_chunk: usize,
    last_index: u32,
    index: u32,
    received: u64,
    written: u64,
    pending: Vec<u8>,
    plaintext_hash: digest::Context,
    ciphertext_hash: Option<digest::Context>,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("index", &self.index)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Drop for Decryptor {
    fn drop(&mut self) {
        self.pending.zeroize();
    }
}

impl Decryptor {
    pub fn new(key: &AttachmentKey) -> Result<Self, AttachmentError> {
        let cipher = ChunkCipher::new(&key.cek, key.nonce_prefix, key.chunk_size)?;
        if ciphertext_len(key.size, key.chunk_size) != Some(key.ciphertext_len) {
            return Err(AttachmentError::InvalidParameters(
                "ciphertext length does not match size and chunk size".into(),
            ));
        }
        let sealed_chunk = sealed_chunk_len(key.chunk_size);
        let chunks = key.size.div_ceil(u64::from(key.chunk_size)).max(1);
        Ok(Self {
            cipher,
            key: key.clone(),
            sealed_chunk,
            last_index: u32::try_from(chunks - 1).map_err(|_| AttachmentError::TooLarge)?,
            index: 0,
            received: 0,
            written: 0,
            pending: Vec::with_capacity(sealed_chunk),
            plaintext_hash: digest::Context::new(&digest::SHA256),
            ciphertext_hash: key
                .ciphertext_sha256
                .map(|_| digest::Context::new(&digest::SHA256)),
        })
    }

    /// Bytes of the chunk being collected: full size, or what is left for the final one.
    fn target(&self) -> usize {
        if self.index < self.last_index {
            self.sealed_chunk
        } else {
            let before = u64::from(self.last_index) * self.sealed_chunk as u64;
            (self.key.ciphertext_len - before) as usize
        }
    }

    /// Feed ciphertext; authenticated plaintext goes to `out`.
    pub fn update(&mut self, mut data: &[u8], out: &mut impl Write) -> Result<(), AttachmentError> {
        if self.received + data.len() as u64 > self.key.ciphertext_len {
            return Err(AttachmentError::TrailingData);
        }
        self.received += data.len() as u64;
        while !data.is_empty() {
            let take = (self.target() - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == self.target() {
                let last = self.index == self.last_index;
                if let Some(h) = &mut self.ciphertext_hash {
                    h.update(&self.pending);
                }
                let n = self.cipher.open(self.index, last, &mut self.pending)?;
                self.plaintext_hash.update(&self.pending[..n]);
                out.write_all(&self.pending[..n])?;
                self.written += n as u64;
                self.pending.clear();
                self.index = self.index.saturating_add(1);
            }
        }
        Ok(())
    }

    /// Check that the whole file arrived and matches its size and digests.
    pub fn finish(self) -> Result<Verified, AttachmentError> {
        if self.received < self.key.ciphertext_len || self.index <= self.last_index {
            return Err(AttachmentError::Truncated {
                received: self.received,
                expected: self.key.ciphertext_len,
            });
        }
        if self.written != self.key.size {
            return Err(AttachmentError::SizeMismatch {
                expected: self.key.size,
                actual: self.written,
            });
        }
        let plaintext = to_array(self.plaintext_hash.clone().finish());
        let digests_ok = aws_lc_rs::constant_time::verify_slices_are_equal(
            &plaintext,
            &self.key.plaintext_sha256,
        )
        .is_ok()
            && match (&self.key.ciphertext_sha256, &self.ciphertext_hash) {
                (Some(expected), Some(h)) => to_array(h.clone().finish()) == *expected,
                _ => true,
            };
        if !digests_ok {
            return Err(AttachmentError::DigestMismatch);
        }
        Ok(Verified {
            size: self.written,
            plaintext_sha256: plaintext,
        })
    }
}

/// Decrypt and verify `reader` into `writer`. On error the output written so far must be
/// discarded (it is authentic chunk by chunk, but the file is incomplete or not the one sent).
pub fn decrypt_stream(
    key: &AttachmentKey,
    reader: &mut impl Read,
    writer: &mut impl Write,
) -> Result<Verified, AttachmentError> {
    let mut dec = Decryptor::new(key)?;
    let mut buf = vec![0u8; dec.sealed_chunk];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        dec.update(&buf[..n], writer)?;
    }
    writer.flush()?;
    dec.finish()
}
