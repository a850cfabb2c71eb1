//! The one error type of the SDK.
//!
//! Every variant says whose fault it is (the caller, the server, a peer, or this device's own
//! storage) and when it is raised, so applications can decide between "fix your input",
//! "retry later" and "tell the user". Errors never carry message plaintext or key material.

use std::path::PathBuf;
use std::time::Duration;

use sealgate_proto::{ErrorCode, Problem};

use crate::verify::VerifyError;

/// Everything that can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Caller: an argument is invalid (a malformed user id, an empty member list, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Caller: the home directory holds no device state (`init` was never run there).
    #[error("no device state in {0}; run `seal init` first")]
    NotInitialized(PathBuf),

    /// Caller: `init` on a home directory that already holds a device.
    #[error("a device is already set up in {0}")]
    AlreadyInitialized(PathBuf),

    /// Caller: no conversation with that id (or we are no longer a member of it).
    #[error("unknown conversation {0}")]
    UnknownConversation(String),

    /// Caller: the state is sealed under a passphrase and none was given.
    #[error("the device state is protected by a passphrase; set SEAL_PASSPHRASE")]
    PassphraseRequired,

    /// Caller or attacker: the state could not be decrypted (wrong passphrase, wrong key file,
    /// or the file was modified). Nothing was overwritten.
    #[error(
        "cannot unlock the device state: wrong passphrase or key, or the file was tampered with"
    )]
    Unlock,

    /// Caller: another process kept the device lock for longer than the timeout.
    #[error("another process is using {path} (waited {waited:?} for its lock)")]
    Locked { path: PathBuf, waited: Duration },

    /// Server: it refused the request with an RFC 7807 problem (see [`Error::code`]).
    #[error("server refused the request: {0}")]
    Server(Box<Problem>),

    /// Network: the server could not be reached or the connection broke.
    #[error("cannot reach the server: {0}")]
    Transport(#[source] reqwest::Error),

    /// Server: the response was not what the API promises (bad JSON, bad MLS bytes).
    #[error("the server sent an invalid response: {0}")]
    BadResponse(String),

    /// Peer or server: a member's credential does not match the key directory.
    #[error("member verification failed: {0}")]
    Verification(#[from] VerifyError),

    /// Peer or internal: the MLS layer refused an operation or a message.
    #[error("MLS error: {0}")]
    Mls(#[from] mls_rs::error::MlsError),

    /// Contention: other members kept winning the race for the next epoch.
    #[error("gave up after {0} attempts: other members kept committing first")]
    CommitContention(u32),

    /// Local: reading or writing the home directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Local: the decrypted state does not parse (written by an incompatible version?).
    #[error("corrupt device state: {0}")]
    CorruptState(String),

    /// Peer, server or caller: an attachment could not be encrypted, or its download did not
    /// decrypt and verify (truncated, tampered, wrong key, digest mismatch).
    #[error(transparent)]
    Attachment(#[from] crate::attachment::AttachmentError),

    /// Internal: a cryptographic primitive failed (random source, key derivation).
    #[error("crypto failure: {0}")]
    Crypto(String),
}

impl Error {
    /// The server's problem code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(p) => p.error_code(),
            _ => None,
        }
    }

    /// The server's problem document, when the server refused the request.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Server(p) => Some(p),
            _ => None,
        }
    }

    /// Whether retrying later may succeed (network trouble, server overload or failure),
    /// as opposed to a refusal of the request itself.
    pub fn is_transient(&self) -> bool {
        crate::client::is_transient(self)
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;
