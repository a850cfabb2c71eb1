//! Capability discovery: what routes a recipient (an E.164 number or a user id) can be
//! reached on — how many E2EE devices the key directory holds for them, whether the RCS
//! aggregator says the number is RCS capable and has its E2EE flag set, and whether an SMS
//! route exists — answered at `GET /v1/capabilities/{recipient}`.
//!
//! It exists so the SDK can plan by the tenant's policy before it encrypts anything. Answers
//! are cached per (tenant, recipient) for `capabilities.ttl_secs` and dropped when the
//! recipient registers or revokes a device (in this process; other processes see it after
//! the TTL). It never logs a full phone number and never caches a failed carrier check.

pub mod routes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use sealgate_proto::ErrorCode;
use sealgate_proto::identity::{valid_e164, valid_user_id};
use sealgate_proto::policy::CapabilitiesView;
use serde::Deserialize;
use tokio::time::Instant;

use crate::AppState;
use crate::config::{Config, ConfigError};
use crate::error::{ApiError, ApiResult};

/// `[capabilities]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapabilitiesConfig {
    /// How long an answer is reused (0 = never cached).
    pub ttl_secs: u64,
    /// Time limit of the aggregator's capability check.
    pub rcs_timeout_ms: u64,
}

impl Default for CapabilitiesConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 60,
            rcs_timeout_ms: 2000,
        }
    }
}

impl CapabilitiesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl_secs > 24 * 3600 || !(1..=60_000).contains(&self.rcs_timeout_ms) {
            return Err(ConfigError::Invalid {
                name: "capabilities",
                reason: "ttl_secs must be at most 86400 and rcs_timeout_ms 1 to 60000".into(),
            });
        }
        Ok(())
    }
}

/// One cached answer and whose it is (for invalidation by user).
#[derive(Debug, Clone)]
struct Entry {
    view: CapabilitiesView,
    user: Option<String>,
    at: Instant,
}

/// A TTL cache keyed by (tenant, recipient), dropped per user. Uses tokio's clock so tests
/// can pause time.
#[derive(Debug)]
pub struct CapabilityCache {
    ttl: Duration,
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl CapabilityCache {
    const MAX_ENTRIES: usize = 100_000;

    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// A fresh answer, marked `cached`.
    pub fn get(&self, tenant_id: &str, recipient: &str) -> Option<CapabilitiesView> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let e = entries.get(&(tenant_id.to_owned(), recipient.to_owned()))?;
        (e.at.elapsed() < self.ttl).then(|| CapabilitiesView {
            cached: true,
            ..e.view.clone()
        })
    }

    pub fn put(&self, tenant_id: &str, view: &CapabilitiesView) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= Self::MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| e.at.elapsed() < ttl);
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            (tenant_id.to_owned(), view.recipient.clone()),
            Entry {
                view: view.clone(),
                user: view.user.clone(),
                at: Instant::now(),
            },
        );
    }

    /// Drop every answer about `user` of `tenant_id`: asked by user id, by `phone`, or by
    /// any number that was bound to them when asked.
    pub fn invalidate_user(&self, tenant_id: &str, user: &str, phone: Option<&str>) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(t, r), e| {
                !(t == tenant_id
                    && (r == user || Some(r.as_str()) == phone || e.user.as_deref() == Some(user)))
            });
    }
}

/// The aggregator's capability endpoint.
struct RcsCheck {
    client: reqwest::Client,
    base: Url,
    token: String,
}

#[derive(Deserialize)]
struct CarrierCapabilities {
    #[serde(default)]
    e2ee: bool,
}

/// What the carrier said: `Err` = it could not say (timeout, 5xx), not cached.
type RcsAnswer = Result<Option<bool>, ()>;

impl RcsCheck {
    async fn check(&self, phone: &str) -> RcsAnswer {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| ())?
            .pop_if_empty()
            .extend(["v1", "phones", phone, "capabilities"]);
        let resp = self
            .client
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| tracing::warn!(error = %e, "RCS capability check failed"))?;
        match resp.status() {
            s if s.is_success() => {
                let caps: CarrierCapabilities = resp.json().await.map_err(|_| ())?;
                Ok(Some(caps.e2ee))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => {
                tracing::warn!(status = s.as_u16(), "RCS capability check refused");
                Err(())
            }
        }
    }
}

/// Capability discovery: the cache plus the carrier check. Cheap to clone.
#[derive(Clone)]
pub struct Capabilities {
    inner: Arc<Inner>,
}

struct Inner {
    cache: CapabilityCache,
    rcs: Option<RcsCheck>,
    sms: bool,
}

impl Capabilities {
    pub fn new(config: &Config) -> Self {
        let c = &config.capabilities;
        let rcs = config.transports.rcs.as_ref().and_then(|r| {
            Some(RcsCheck {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_millis(c.rcs_timeout_ms))
                    .build()
                    .ok()?,
                base: Url::parse(&r.base_url).ok()?,
                token: r.agent_token.clone(),
            })
        });
        Self {
            inner: Arc::new(Inner {
                cache: CapabilityCache::new(Duration::from_secs(c.ttl_secs)),
                rcs,
                sms: config.transports.sms.is_some(),
            }),
        }
    }

    pub fn cache(&self) -> &CapabilityCache {
        &self.inner.cache
    }

    /// What `recipient` of `tenant_id` can receive, from the cache or freshly learned.
    pub async fn lookup(
        &self,
        state: &AppState,
        tenant_id: &str,
        recipient: &str,
    ) -> ApiResult<CapabilitiesView> {
        let phone = valid_e164(recipient);
        if !phone && !valid_user_id(recipient) {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "recipient: must be an E.164 phone number or a user id",
            ));
        }
        if let Some(view) = self.inner.cache.get(tenant_id, recipient) {
            return Ok(view);
        }
        let store = state.store();
        let (user, number) = if phone {
            (
                store.user_by_phone(tenant_id, recipient).await?,
                Some(recipient.to_owned()),
            )
        } else {
            match store.user(tenant_id, recipient).await? {
                Some(u) => (Some(u.user_id), u.phone),
                None => (None, None),
            }
        };
        let e2ee_devices = match &user {
            Some(u) => store
                .devices_of_user(tenant_id, u)
                .await?
                .iter()
                .filter(|d| d.is_active())
                .count(),
            None => 0,
        };
        let rcs: RcsAnswer = match (&self.inner.rcs, &number) {
            (Some(check), Some(n)) => check.check(n).await,
            _ => Ok(None),
        };
        let view = CapabilitiesView {
            recipient: recipient.to_owned(),
            user,
            e2ee_devices: u32::try_from(e2ee_devices).unwrap_or(u32::MAX),
            rcs: matches!(rcs, Ok(Some(_))),
            carrier_e2ee: matches!(rcs, Ok(Some(true))),
            sms: self.inner.sms && number.is_some(),
            learned_at: crate::store::now_millis(),
            cached: false,
        };
        if rcs.is_ok() {
            self.inner.cache.put(tenant_id, &view);
        }
        Ok(view)
    }
}

/// A user registered or revoked a device: forget what we knew about them, and when they now
/// have an E2EE device, tell the senders of held messages (their holds turn `ready`).
pub async fn devices_changed(state: &AppState, tenant_id: &str, user: &str) {
    let store = state.store();
    // The number may have been asked about before it was bound to this user.
    let phone = store
        .user(tenant_id, user)
        .await
        .ok()
        .flatten()
        .and_then(|u| u.phone);
    state
        .capabilities()
        .cache()
        .invalidate_user(tenant_id, user, phone.as_deref());
    let result = async {
        let active = store
            .devices_of_user(tenant_id, user)
            .await?
            .iter()
            .any(|d| d.is_active());
        if !active {
            return Ok::<u64, crate::store::StoreError>(0);
        }
        let mut recipients = vec![user.to_owned()];
        recipients.extend(phone.clone());
        state
            .policy()
            .store()
            .mark_holds_ready(tenant_id, &recipients, crate::store::now_millis())
            .await
    }
    .await;
    match result {
        Ok(n) if n > 0 => tracing::info!(%tenant_id, holds = n, "held messages ready for E2EE"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not release held messages"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(recipient: &str, user: Option<&str>, devices: u32) -> CapabilitiesView {
        CapabilitiesView {
            recipient: recipient.into(),
            user: user.map(Into::into),
            e2ee_devices: devices,
            rcs: false,
            carrier_e2ee: false,
            sms: true,
            learned_at: 0,
            cached: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_the_ttl() {
        let cache = CapabilityCache::new(Duration::from_secs(30));
        cache.put("t1", &view("+15550001", Some("bob"), 1));
        let hit = cache.get("t1", "+15550001").unwrap();
        assert!(hit.cached);
        assert_eq!(hit.e2ee_devices, 1);
        assert!(cache.get("t2", "+15550001").is_none(), "per tenant");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(cache.get("t1", "+15550001").is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cache.get("t1", "+15550001").is_none(), "expired at the TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_change_drops_answers_by_user_and_number() {
        let cache = CapabilityCache::new(Duration::from_secs(30));
        cache.put("t1", &view("+15550001", Some("bob"), 0));
        cache.put("t1", &view("bob", Some("bob"), 0));
        cache.put("t1", &view("+15550002", Some("carol"), 0));
        cache.put("t2", &view("+15550001", Some("bob"), 0));
        cache.put("t1", &view("+15550009", None, 0));
        cache.invalidate_user("t1", "bob", Some("+15550009"));
        assert!(
            cache.get("t1", "+15550009").is_none(),
            "asked before it was bound"
        );
        assert!(cache.get("t1", "+15550001").is_none());
        assert!(cache.get("t1", "bob").is_none());
        assert!(cache.get("t1", "+15550002").is_some());
        assert!(
            cache.get("t2", "+15550001").is_some(),
            "other tenants keep theirs"
        );
        let off = CapabilityCache::new(Duration::ZERO);
        off.put("t1", &view("bob", None, 0));
        assert!(off.get("t1", "bob").is_none());
    }
}
