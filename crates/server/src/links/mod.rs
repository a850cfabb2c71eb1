//! Secure links: when E2EE is not possible and the policy allows it, the SDK encrypts the
//! content under a fresh AES-256-GCM key, uploads only the ciphertext here
//! (`POST /v1/links`), and sends the recipient `https://GATEWAY/l/{id}#k=<key>`. Opening the
//! link (`/l/{id}`, a page served from this binary that decrypts with WebCrypto) needs a
//! one-time code sent to the recipient's number over the SMS transport; the ciphertext is
//! then handed out once and deleted. A tenant may also configure OIDC sign-in in its policy
//! (`secure_link.oidc`, see [`oidc`]): an ID token bound to the recipient's number then opens
//! the link instead of the code (or, when `required`, is the only way to open it). Expired, used and locked links answer a clear page or
//! problem, and their ciphertext is gone.
//!
//! The server must never see or store the key: it lives only in the URL fragment, which
//! browsers do not send. The notification text (which contains the URL) passes through the
//! send pipeline like any fallback text — never logged, wiped once sent — and is kept apart
//! from the ciphertext. Nothing here may log a code, a URL or a full phone number.

pub mod oidc;
pub mod postgres;
pub mod routes;
pub mod sqlite;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SecureRandom;
use sealgate_proto::ErrorCode;
use sealgate_proto::send::SecureLinkBody;
use serde::Deserialize;

use crate::config::ConfigError;
use crate::error::{ApiError, ApiResult};
pub use store::{LinkMeta, LinkState, LinkStore, NewLink, OpenOutcome, Proof};

/// `[links]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinksConfig {
    /// Default lifetime of a link (24 h).
    pub ttl_secs: u64,
    /// Longest lifetime a sender may ask for.
    pub max_ttl_secs: u64,
    /// Largest ciphertext.
    pub max_bytes: usize,
    /// Public base URL of the gateway as recipients reach it (e.g. `https://msg.bank.example`);
    /// when unset, the SDK uses the URL it talks to.
    pub public_base_url: Option<String>,
    /// Lifetime of a one-time code.
    pub otp_ttl_secs: u64,
    /// Wrong codes before the link is locked and wiped.
    pub max_attempts: u32,
    /// Codes sent per link at most, and the least time between two.
    pub max_otp_sends: u32,
    pub otp_resend_secs: u64,
    /// How often expired ciphertext is deleted.
    pub gc_interval_secs: u64,
}

impl Default for LinksConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 24 * 3600,
            max_ttl_secs: 7 * 24 * 3600,
            max_bytes: 256 * 1024,
            public_base_url: None,
            otp_ttl_secs: 600,
            max_attempts: 5,
            max_otp_sends: 5,
            otp_resend_secs: 30,
            gc_interval_secs: 60,
        }
    }
}

impl LinksConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |reason: &str| {
            Err(ConfigError::Invalid {
                name: "links",
                reason: reason.to_owned(),
            })
        };
        if !(60..=self.max_ttl_secs).contains(&self.ttl_secs) || self.max_ttl_secs > 30 * 24 * 3600
        {
            return bad("ttl_secs must be between 60 and max_ttl_secs (at most 30 days)");
        }
        if !(64..=16 * 1024 * 1024).contains(&self.max_bytes) {
            return bad("max_bytes must be between 64 and 16 MiB");
        }
        if !(30..=3600).contains(&self.otp_ttl_secs) || !(1..=20).contains(&self.max_attempts) {
            return bad("otp_ttl_secs must be 30 to 3600 and max_attempts 1 to 20");
        }
        if !(1..=20).contains(&self.max_otp_sends) || self.gc_interval_secs == 0 {
            return bad("max_otp_sends must be 1 to 20 and gc_interval_secs positive");
        }
        if let Some(url) = &self.public_base_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return bad("public_base_url must be an http or https URL");
        }
        Ok(())
    }
}

/// The secure-link area. Cheap to clone.
#[derive(Clone)]
pub struct Links {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn LinkStore>,
    config: LinksConfig,
    oidc: oidc::Verifier,
}

/// Stops the expiry task when dropped.
pub struct GcGuard(tokio::task::JoinHandle<()>);

impl Drop for GcGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Digest of a one-time code, bound to its link.
pub fn code_hash(link_id: &str, code: &str) -> String {
    hex::encode(digest::digest(
        &digest::SHA256,
        format!("{link_id}:{code}").as_bytes(),
    ))
}

/// A uniformly random 6-digit code.
pub fn new_code() -> ApiResult<String> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b)
            .map_err(|_| ApiError::internal("random source failed"))?;
        let n = u32::from_le_bytes(b);
        // Reject the top partial range so every code is equally likely.
        if n < 4_294_000_000 {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

/// `+15551234567` → `+1•••••••4567`.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() < 7 {
        return "•••".into();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "•".repeat(chars.len() - 6))
}

impl Links {
    pub fn new(store: Arc<dyn LinkStore>, config: LinksConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                oidc: oidc::Verifier::new(),
            }),
        }
    }

    pub fn store(&self) -> &dyn LinkStore {
        self.inner.store.as_ref()
    }

    pub fn config(&self) -> &LinksConfig {
        &self.inner.config
    }

    /// The ID-token verifier of OIDC sign-in (with its key-set cache).
    pub fn oidc(&self) -> &oidc::Verifier {
        &self.inner.oidc
    }

    /// Delete expired ciphertext every `gc_interval_secs` until the guard is dropped.
    pub fn spawn_gc(&self) -> GcGuard {
        let links = self.clone();
        GcGuard(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs(links.inner.config.gc_interval_secs));
            loop {
                tick.tick().await;
                match links.store().purge_links(crate::store::now_millis()).await {
                    Ok(n) if n > 0 => tracing::info!(links = n, "expired secure links wiped"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "secure link expiry failed"),
                }
            }
        }))
    }

    /// Check a secure-link notification before it is accepted: the link is the tenant's,
    /// active, for this recipient, and the text points at it (with a key fragment).
    pub async fn check_notification(
        &self,
        tenant_id: &str,
        to: &str,
        body: &SecureLinkBody,
    ) -> ApiResult<()> {
        let meta = self
            .store()
            .link(&body.link_id)
            .await?
            .filter(|m| m.tenant_id == tenant_id)
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownLink, "no such secure link"))?;
        match meta.state(crate::store::now_millis()) {
            LinkState::Active => {}
            LinkState::Expired => {
                return Err(ApiError::new(
                    ErrorCode::LinkExpired,
                    "the secure link expired",
                ));
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::LinkUsed,
                    "the secure link was used",
                ));
            }
        }
        if meta.recipient != to {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "to: the secure link was created for another recipient",
            ));
        }
        let marker = format!(
            "/l/{}#{}=",
            body.link_id,
            sealgate_proto::policy::LINK_KEY_PARAM
        );
        if !body.text.contains(&marker) || body.text.len() > 1024 {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "body.secure_link.text: must contain the link URL with its #k= fragment (at most 1024 bytes)",
            ));
        }
        Ok(())
    }
}
