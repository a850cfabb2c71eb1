//! Secrets the gateway issues (operator token, tenant API keys, enrollment tokens, device
//! tokens) and the axum extractors that authenticate callers with them.
//!
//! Secrets are 256-bit random values shown once; only their SHA-256 digest is stored, so a
//! copy of the database does not let anyone act as a tenant or device. A prefix names the kind
//! of secret so a key pasted in the wrong place fails clearly. This module must never log a
//! secret or compare secrets in variable time.

use aws_lc_rs::{digest, rand::SecureRandom};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sealgate_proto::ErrorCode;

use crate::AppState;
use crate::error::ApiError;

/// The kinds of secret the gateway issues, by prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    Operator,
    ApiKey,
    Enrollment,
    Device,
}

impl SecretKind {
    pub fn prefix(self) -> &'static str {
        match self {
            SecretKind::Operator => "sgop_",
            SecretKind::ApiKey => "sgk_",
            SecretKind::Enrollment => "sge_",
            SecretKind::Device => "sgd_",
        }
    }
}

/// 128 random bits as lowercase hex: ids for tenants, devices, uploads.
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// A time-ordered id of the same length as [`random_id`]: 48 bits of Unix milliseconds, then 80
/// random bits, as lowercase hex (the layout of a UUIDv7 or ULID). Message ids are the keys of
/// the busiest indexes (messages, their history, their jobs): ids that sort by creation time
/// are appended at the right edge of those B-trees, so an accept batch dirties a few pages
/// instead of one page per message. Measured on the embedded store, random ids made every
/// accept write about four extra 4 KiB pages to the WAL. The ids are not secrets; 80 random
/// bits per millisecond keep them unguessable enough to be unique and not enumerable.
pub fn time_ordered_id(prefix: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    fill_id_random(&mut bytes[6..]);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Fill `buf` for an id from a per-thread pool of system randomness, refilled 4 KiB at a
/// time. One system-RNG call per id (aws-lc's `RAND_bytes`, which mixes in RDRAND, slow under
/// a hypervisor) was 3.4 % of the gateway's CPU at 80k accepts/s. Every byte is handed out
/// once. Ids only: secrets take [`fill_random`] directly.
fn fill_id_random(buf: &mut [u8]) {
    const POOL: usize = 4096;
    thread_local! {
        static RANDOM: std::cell::RefCell<(Box<[u8; POOL]>, usize)> =
            std::cell::RefCell::new((Box::new([0; POOL]), POOL));
    }
    if buf.len() > POOL {
        return fill_random(buf);
    }
    RANDOM.with_borrow_mut(|(pool, used)| {
        if buf.len() > POOL - *used {
            fill_random(&mut pool[..]);
            *used = 0;
        }
        buf.copy_from_slice(&pool[*used..*used + buf.len()]);
        *used += buf.len();
    });
}

/// A fresh secret of `kind`: prefix + 256 random bits as hex.
pub fn new_secret(kind: SecretKind) -> String {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes);
    format!("{}{}", kind.prefix(), hex::encode(bytes))
}

fn fill_random(buf: &mut [u8]) {
    // The system RNG failing leaves no safe way to go on.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::SystemRandom::new()
        .fill(buf)
        .expect("system random number generator failed");
}

/// The stored form of a secret: hex SHA-256. Lookups are by this digest, so timing reveals
/// nothing about the secret itself.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, secret.as_bytes()))
}

/// Recently verified API keys (digest → tenant), so a busy tenant backend does not cost a
/// store lookup per request. Entries live [`ApiKeyCache::TTL`]; only successful lookups are
/// cached, so an unknown key is always checked against the store.
#[derive(Debug, Default)]
pub struct ApiKeyCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl ApiKeyCache {
    /// How long a verified key is trusted without asking the store again.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(30);
    const MAX_ENTRIES: usize = 10_000;

    fn get(&self, hash: &str) -> Option<String> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tenant, at) = entries.get(hash)?;
        (at.elapsed() < Self::TTL).then(|| tenant.clone())
    }

    fn put(&self, hash: String, tenant_id: String) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= Self::MAX_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < Self::TTL);
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(hash, (tenant_id, std::time::Instant::now()));
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn unauthenticated(detail: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, detail)
}

/// A caller that presented the operator token.
#[derive(Debug, Clone)]
pub struct OperatorAuth;

/// A caller that presented a tenant API key.
#[derive(Debug, Clone)]
pub struct TenantAuth {
    pub tenant_id: String,
}

/// A caller that presented a device token of an active (not revoked) device.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    pub tenant_id: String,
    pub user_id: String,
    pub device_id: String,
}

/// Either a tenant API key or a device token: routes that a tenant backend and its devices
/// may both call. `tenant_id` is the scope of everything the caller may see.
#[derive(Debug, Clone)]
pub enum TenantOrDevice {
    Tenant(TenantAuth),
    Device(DeviceAuth),
}

impl TenantOrDevice {
    pub fn tenant_id(&self) -> &str {
        match self {
            TenantOrDevice::Tenant(t) => &t.tenant_id,
            TenantOrDevice::Device(d) => &d.tenant_id,
        }
    }
}

impl FromRequestParts<AppState> for OperatorAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| unauthenticated("operator token required"))?;
        if !token.starts_with(SecretKind::Operator.prefix()) {
            return Err(unauthenticated("operator token required"));
        }
        let presented = secret_hash(token);
        // Both sides are digests, so a plain comparison leaks nothing useful.
        if presented == state.operator_token_hash() {
            Ok(OperatorAuth)
        } else {
            Err(unauthenticated("unknown operator token"))
        }
    }
}

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| unauthenticated("tenant API key required"))?;
        if !token.starts_with(SecretKind::ApiKey.prefix()) {
            return Err(unauthenticated("tenant API key required"));
        }
        let hash = secret_hash(token);
        if let Some(tenant_id) = state.api_key_cache().get(&hash) {
            return Ok(TenantAuth { tenant_id });
        }
        match state.store().tenant_by_api_key_hash(&hash).await? {
            Some(tenant_id) => {
                state.api_key_cache().put(hash, tenant_id.clone());
                Ok(TenantAuth { tenant_id })
            }
            None => Err(unauthenticated("unknown API key")),
        }
    }
}

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| unauthenticated("device token required"))?;
        if !token.starts_with(SecretKind::Device.prefix()) {
            return Err(unauthenticated("device token required"));
        }
        match state
            .store()
            .device_by_token_hash(&secret_hash(token))
            .await?
        {
            Some(d) => Ok(d),
            None => Err(unauthenticated("unknown or revoked device")),
        }
    }
}

impl FromRequestParts<AppState> for TenantOrDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(t) if t.starts_with(SecretKind::Device.prefix()) => {
                DeviceAuth::from_request_parts(parts, state)
                    .await
                    .map(TenantOrDevice::Device)
            }
            Some(_) => TenantAuth::from_request_parts(parts, state)
                .await
                .map(TenantOrDevice::Tenant),
            None => Err(unauthenticated("API key or device token required")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ordered_ids_sort_by_creation_and_stay_unique() {
        let a = time_ordered_id("msg_");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = time_ordered_id("msg_");
        assert!(a < b, "{a} !< {b}");
        assert_eq!(a.len(), random_id("msg_").len());
        // Within one millisecond the 80 random bits keep them distinct.
        let burst: std::collections::HashSet<String> =
            (0..10_000).map(|_| time_ordered_id("msg_")).collect();
        assert_eq!(burst.len(), 10_000);
        let millis = u64::from_str_radix(&b[4..16], 16).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now - millis < 60_000, "the prefix is the creation time");
    }

    #[test]
    fn secrets_are_prefixed_unique_and_hash_stably() {
        let a = new_secret(SecretKind::Device);
        let b = new_secret(SecretKind::Device);
        assert!(a.starts_with("sgd_") && a.len() == 4 + 64);
        assert_ne!(a, b);
        assert_eq!(secret_hash(&a), secret_hash(&a));
        assert_ne!(secret_hash(&a), secret_hash(&b));
        assert_ne!(secret_hash(&a), a);
    }
}
