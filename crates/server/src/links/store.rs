//! Store trait of secure links: ciphertext with its expiry, the one-time code (as a digest),
//! attempts, and the single open. See `crate::store` for the general contract.
//!
//! The ciphertext is handed out at most once: [`LinkStore::open_link`] checks the code,
//! marks the link used and takes the ciphertext in one transaction, so two concurrent opens
//! cannot both succeed. The key that decrypts it is never stored anywhere on the server.

use async_trait::async_trait;

use crate::store::StoreError;

/// A link to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLink {
    pub link_id: String,
    pub tenant_id: String,
    /// E.164: where the one-time code goes.
    pub recipient: String,
    pub ciphertext: Vec<u8>,
    /// Unix ms.
    pub created_at: i64,
    pub expires_at: i64,
}

/// A link's metadata (never the ciphertext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMeta {
    pub link_id: String,
    pub tenant_id: String,
    pub recipient: String,
    pub expires_at: i64,
    pub otp_sent_at: Option<i64>,
    pub otp_sends: u32,
    pub attempts: u32,
    pub opened_at: Option<i64>,
    pub locked_at: Option<i64>,
}

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Active,
    Expired,
    Used,
    Locked,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Active => "active",
            LinkState::Expired => "expired",
            LinkState::Used => "used",
            LinkState::Locked => "locked",
        }
    }
}

impl LinkMeta {
    pub fn state(&self, now_ms: i64) -> LinkState {
        if self.opened_at.is_some() {
            LinkState::Used
        } else if self.locked_at.is_some() {
            LinkState::Locked
        } else if now_ms >= self.expires_at {
            LinkState::Expired
        } else {
            LinkState::Active
        }
    }
}

/// What [`LinkStore::open_link`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// The code matched: here is the ciphertext, now deleted from the store.
    Opened(Vec<u8>),
    Unknown,
    /// Not active (expired, used or locked); an expired link's ciphertext is deleted now.
    NotActive(LinkState),
    /// No code was requested, or it expired.
    NoCode,
    /// Wrong code; `remaining` attempts left (0 = the link is now locked and wiped).
    WrongCode {
        remaining: u32,
    },
}

/// What the opener offers to [`LinkStore::open_link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof<'a> {
    /// The digest of a one-time code, checked against the stored one.
    Code(&'a str),
    /// The caller already verified the opener (an OIDC ID token): release the ciphertext.
    Verified,
    /// The caller found the opener's proof invalid (an ID token that does not verify):
    /// count a wrong attempt.
    Failed,
}

#[async_trait]
pub trait LinkStore: Send + Sync {
    async fn create_link(&self, link: &NewLink) -> Result<(), StoreError>;

    async fn link(&self, link_id: &str) -> Result<Option<LinkMeta>, StoreError>;

    /// Record a new one-time code (digest) for an active link, counting the send.
    /// `Ok(false)`: no such active link.
    async fn set_otp(
        &self,
        link_id: &str,
        otp_hash: &str,
        otp_expires_at: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Check `proof` and, if it holds, mark the link used and take its ciphertext — all in one
    /// transaction. A wrong code (or [`Proof::Failed`]) counts an attempt; the
    /// `max_attempts`-th locks the link and deletes its ciphertext.
    async fn open_link(
        &self,
        link_id: &str,
        proof: Proof<'_>,
        now_ms: i64,
        max_attempts: u32,
    ) -> Result<OpenOutcome, StoreError>;

    /// Delete the ciphertext of links that expired before `now_ms`. Returns how many.
    async fn purge_links(&self, now_ms: i64) -> Result<u64, StoreError>;
}
