//! The device's key store: one sealed file holding every secret and all state of a device.
//!
//! The file `state.sealed` is AES-256-GCM under a 256-bit key, with a fresh random nonce on
//! every write and the format header as associated data, so a flipped byte anywhere (header,
//! nonce or ciphertext) is refused. The key is Argon2id(passphrase, salt) when a passphrase is
//! given (the salt and cost parameters live in the header), otherwise 32 random bytes in
//! `keystore.key` created with mode 0600 — a stand-in for an OS keychain, which protects only
//! against copies of the state file without the key file. Writes are atomic (temporary file,
//! fsync, rename, fsync of the folder), so a crash leaves the old or the new state, never a mix.
//! A `lock` file held exclusively for the life of a client keeps two processes from
//! interleaving writes.
//!
//! This module must never write the state unencrypted, never log or return key material, and
//! never overwrite a state file it could not open.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::error::{Error, Result};

/// File holding the sealed state.
pub(crate) const STATE_FILE: &str = "state.sealed";
/// File holding the random state key when no passphrase is used.
pub(crate) const KEY_FILE: &str = "keystore.key";
/// File locked exclusively by the process that owns the device.
pub(crate) const LOCK_FILE: &str = "lock";

const MAGIC: &[u8; 8] = b"SEALGATE";
const FORMAT_VERSION: u8 = 1;
const KDF_KEY_FILE: u8 = 0;
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// Argon2id cost parameters (memory in KiB, passes, lanes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for Argon2Params {
    /// OWASP's recommended minimum for Argon2id (19 MiB, 2 passes, 1 lane).
    fn default() -> Self {
        Self {
            m_cost_kib: argon2::Params::DEFAULT_M_COST,
            t_cost: argon2::Params::DEFAULT_T_COST,
            p_cost: argon2::Params::DEFAULT_P_COST,
        }
    }
}

impl Argon2Params {
    /// Refuse parameters a tampered header could use to exhaust memory or time.
    fn check(self) -> Result<Self> {
        if self.m_cost_kib > 4 * 1024 * 1024 || self.t_cost > 64 || self.p_cost > 16 {
            return Err(Error::Unlock);
        }
        Ok(self)
    }
}

/// Where the state key comes from.
#[derive(Clone)]
pub(crate) enum KeySource {
    /// Derived with Argon2id from this passphrase.
    Passphrase(String, Argon2Params),
    /// Random, kept in `keystore.key` next to the state.
    KeyFile,
}

/// The key that seals the state, with the header it was derived under.
pub(crate) struct SealKey {
    key: LessSafeKey,
    header: Vec<u8>,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| Error::Crypto("random source failed".into()))?;
    Ok(out)
}

fn aes_key(bytes: &[u8]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Crypto("bad AES-256 key length".into()))
}

fn derive(passphrase: &str, salt: &[u8], params: Argon2Params) -> Result<LessSafeKey> {
    let params = argon2::Params::new(
        params.m_cost_kib,
        params.t_cost,
        params.p_cost,
        Some(KEY_LEN),
    )
    .map_err(|_| Error::Unlock)?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; KEY_LEN];
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| Error::Crypto(format!("argon2: {e}")))?;
    let key = aes_key(&out);
    out.fill(0);
    key
}

fn read_key_file(dir: &Path) -> Result<LessSafeKey> {
    let path = dir.join(KEY_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if bytes.len() != KEY_LEN {
        return Err(Error::Unlock);
    }
    aes_key(&bytes)
}

fn create_key_file(dir: &Path) -> Result<LessSafeKey> {
    let path = dir.join(KEY_FILE);
    let mut key = random::<KEY_LEN>()?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = options
        .open(&path)
        .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()))
        .map_err(|e| Error::io(&path, e))
        .and_then(|()| aes_key(&key));
    key.fill(0);
    result
}

impl SealKey {
    /// A key for a brand-new state in `dir` (creates `keystore.key` when no passphrase).
    pub(crate) fn create(dir: &Path, source: &KeySource) -> Result<Self> {
        let mut header = MAGIC.to_vec();
        header.push(FORMAT_VERSION);
        let key = match source {
            KeySource::KeyFile => {
                header.push(KDF_KEY_FILE);
                create_key_file(dir)?
            }
            KeySource::Passphrase(pass, params) => {
                let params = params.check()?;
                let salt = random::<SALT_LEN>()?;
                header.push(KDF_ARGON2ID);
                header.extend_from_slice(&params.m_cost_kib.to_be_bytes());
                header.extend_from_slice(&params.t_cost.to_be_bytes());
                header.extend_from_slice(&params.p_cost.to_be_bytes());
                header.extend_from_slice(&salt);
                derive(pass, &salt, params)?
            }
        };
        Ok(Self { key, header })
    }

    /// The key for an existing sealed file, as its header describes it.
    pub(crate) fn for_sealed(dir: &Path, sealed: &[u8], passphrase: Option<&str>) -> Result<Self> {
        let bad = || Error::CorruptState("not a sealgate state file (bad header)".into());
        let rest = sealed.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
        let (&version, rest) = rest.split_first().ok_or_else(bad)?;
        if version != FORMAT_VERSION {
            return Err(Error::CorruptState(format!(
                "unsupported state format version {version}"
            )));
        }
        let (&kdf, rest) = rest.split_first().ok_or_else(bad)?;
        match kdf {
            KDF_KEY_FILE => Ok(Self {
                key: read_key_file(dir)?,
                header: sealed[..MAGIC.len() + 2].to_vec(),
            }),
            KDF_ARGON2ID => {
                let pass = passphrase.ok_or(Error::PassphraseRequired)?;
                if rest.len() < 12 + SALT_LEN {
                    return Err(bad());
                }
                let word = |i: usize| {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&rest[i * 4..i * 4 + 4]);
                    u32::from_be_bytes(b)
                };
                let params = Argon2Params {
                    m_cost_kib: word(0),
                    t_cost: word(1),
                    p_cost: word(2),
                }
                .check()?;
                let salt = &rest[12..12 + SALT_LEN];
                Ok(Self {
                    key: derive(pass, salt, params)?,
                    header: sealed[..MAGIC.len() + 2 + 12 + SALT_LEN].to_vec(),
                })
            }
            _ => Err(bad()),
        }
    }

    /// `header || nonce || AES-256-GCM(plaintext)` with the header as associated data.
    pub(crate) fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce = random::<NONCE_LEN>()?;
        let mut out = Vec::with_capacity(self.header.len() + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.header.as_slice()),
                &mut body,
            )
            .map_err(|_| Error::Crypto("AES-GCM seal failed".into()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypt a file sealed by [`SealKey::seal`]; any change to any byte is refused.
    pub(crate) fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        let rest = sealed
            .strip_prefix(self.header.as_slice())
            .ok_or(Error::Unlock)?;
        if rest.len() < NONCE_LEN {
            return Err(Error::Unlock);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Unlock)?;
        let mut body = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(self.header.as_slice()), &mut body)
            .map_err(|_| Error::Unlock)?;
        Ok(plain.to_vec())
    }
}

/// Write `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    // Make the rename itself durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An exclusive lock on `DIR/lock`, held for the life of a client; released on drop.
#[derive(Debug)]
pub(crate) struct DeviceLock {
    _file: File,
}

impl DeviceLock {
    /// Take the lock, waiting up to `timeout` for another process to release it.
    pub(crate) async fn acquire(dir: &Path, timeout: Duration) -> Result<Self> {
        let path: PathBuf = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if started.elapsed() >= timeout {
                        return Err(Error::Locked {
                            path,
                            waited: timeout,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Params = Argon2Params {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    #[test]
    fn key_file_round_trip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let key = SealKey::create(dir.path(), &KeySource::KeyFile).unwrap();
        let sealed = key.seal(b"secret state").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));

        let again = SealKey::for_sealed(dir.path(), &sealed, None).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"secret state");

        // Every single flipped byte (header, nonce, ciphertext, tag) is refused.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let result = SealKey::for_sealed(dir.path(), &bad, None).and_then(|k| k.open(&bad));
            assert!(result.is_err(), "flip at {i} was accepted");
        }
        // A truncated file too.
        assert!(again.open(&sealed[..sealed.len() - 1]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        SealKey::create(dir.path(), &KeySource::KeyFile).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second create must not replace an existing key.
        assert!(SealKey::create(dir.path(), &KeySource::KeyFile).is_err());
    }

    #[test]
    fn passphrase_round_trip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let source = KeySource::Passphrase("correct horse".into(), CHEAP);
        let key = SealKey::create(dir.path(), &source).unwrap();
        let sealed = key.seal(b"{\"a\":1}").unwrap();
        // No key file is written in passphrase mode.
        assert!(!dir.path().join(KEY_FILE).exists());

        let ok = SealKey::for_sealed(dir.path(), &sealed, Some("correct horse")).unwrap();
        assert_eq!(ok.open(&sealed).unwrap(), b"{\"a\":1}");

        let wrong = SealKey::for_sealed(dir.path(), &sealed, Some("battery staple")).unwrap();
        assert!(matches!(wrong.open(&sealed), Err(Error::Unlock)));
        assert!(matches!(
            SealKey::for_sealed(dir.path(), &sealed, None),
            Err(Error::PassphraseRequired)
        ));
        // Two seals of the same plaintext differ (fresh nonce).
        assert_ne!(key.seal(b"x").unwrap(), key.seal(b"x").unwrap());
    }

    #[test]
    fn absurd_kdf_parameters_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = SealKey::create(dir.path(), &KeySource::Passphrase("p".into(), CHEAP)).unwrap();
        let mut sealed = key.seal(b"x").unwrap();
        // m_cost lives right after magic, version and kdf id.
        sealed[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(SealKey::for_sealed(dir.path(), &sealed, Some("p")).is_err());
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("tmp").exists());
    }

    #[tokio::test]
    async fn second_lock_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let first = DeviceLock::acquire(dir.path(), Duration::from_millis(10))
            .await
            .unwrap();
        let second = DeviceLock::acquire(dir.path(), Duration::from_millis(120)).await;
        assert!(matches!(second, Err(Error::Locked { .. })));
        drop(first);
        DeviceLock::acquire(dir.path(), Duration::from_millis(10))
            .await
            .unwrap();
    }
}
