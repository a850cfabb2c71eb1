//! Store trait of the directory area: tenants, API keys, users, enrollment tokens, devices and
//! KeyPackages. See `crate::store` for the general contract (`Ok(None)` = absent, `Err` = the
//! store failed; every method is one all-or-nothing transaction).
//!
//! Callers pass the current time in (`now`, Unix seconds) so the exactly-once and expiry rules
//! can be tested deterministically. The trait must never see a secret in clear: tokens and keys
//! arrive here as digests.

use async_trait::async_trait;
use sealgate_proto::api::KeyPackageStock;

use crate::auth::DeviceAuth;
use crate::store::StoreError;

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub tenant_id: String,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A user of a tenant. Created by the first enrollment naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub tenant_id: String,
    pub user_id: String,
    /// E.164, if an enrollment bound one.
    pub phone: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A registered device: the public half of its MLS identity. Revoked devices stay in the
/// directory (with `revoked_at`) so clients can still verify old group members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: String,
    pub tenant_id: String,
    pub user_id: String,
    /// Raw Ed25519 public key (32 bytes) the device's MLS leaves must carry.
    pub signature_key: Vec<u8>,
    pub name: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `Some` once revoked.
    pub revoked_at: Option<i64>,
}

impl DeviceRecord {
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// A new enrollment token (by digest) for `user_id` of `tenant_id`.
#[derive(Debug, Clone)]
pub struct NewEnrollment {
    pub token_hash: String,
    pub tenant_id: String,
    pub user_id: String,
    pub phone: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A device to create when an enrollment token is redeemed. Tenant and user come from the
/// enrollment, never from the caller.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub device_id: String,
    pub token_hash: String,
    pub signature_key: Vec<u8>,
    pub name: Option<String>,
}

/// A validated KeyPackage ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeyPackage {
    /// The RFC 9420 KeyPackageRef (hash of the KeyPackage); unique across the directory.
    pub kp_ref: Vec<u8>,
    /// The `MLSMessage` bytes as published.
    pub data: Vec<u8>,
    /// Unix seconds (the KeyPackage's `not_after`).
    pub expires_at: i64,
}

/// What [`DirectoryStore::publish_key_packages`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Everything was stored; the device's stock afterwards.
    Stored(KeyPackageStock),
    /// A KeyPackage is already in the directory (or twice in the batch); nothing stored.
    Duplicate,
    /// Storing the batch would exceed `max_one_time`; nothing stored.
    StockFull { have: u64, max: u64 },
    /// The device is unknown or revoked; nothing stored.
    UnknownDevice,
}

/// One KeyPackage handed out by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKp {
    pub device_id: String,
    pub data: Vec<u8>,
    pub last_resort: bool,
}

/// What [`DirectoryStore::claim_key_packages`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// One KeyPackage per active device that had one (one-time ones are now gone).
    Claimed(Vec<ClaimedKp>),
    /// The user has active devices (other than the excluded one) but none has a usable
    /// KeyPackage.
    NoKeyPackage,
    /// No such user, or no active device other than the excluded one.
    UnknownUser,
}

#[async_trait]
pub trait DirectoryStore: Send + Sync {
    // --- tenants and API keys -----------------------------------------------------------

    /// Create a tenant together with its first API key (digest). `Ok(false)`: the name (or
    /// id) is taken; nothing stored.
    async fn create_tenant(
        &self,
        tenant: &TenantRecord,
        api_key_hash: &str,
    ) -> Result<bool, StoreError>;

    /// All tenants, oldest first.
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;

    async fn tenant(&self, tenant_id: &str) -> Result<Option<TenantRecord>, StoreError>;

    /// The tenant owning the API key with this digest.
    async fn tenant_by_api_key_hash(&self, hash: &str) -> Result<Option<String>, StoreError>;

    // --- users and enrollment -----------------------------------------------------------

    /// Store an enrollment token and create its user if new (a given phone replaces the
    /// user's phone). `Ok(false)`: unknown tenant; nothing stored.
    async fn create_enrollment(&self, enrollment: &NewEnrollment) -> Result<bool, StoreError>;

    /// Redeem the enrollment token with this digest (unused and `expires_at > now`) and create
    /// the device in the same transaction. `Ok(None)`: unknown, used or expired token; nothing
    /// stored. Under concurrent calls with one token exactly one gets `Some`.
    async fn register_device(
        &self,
        enrollment_token_hash: &str,
        device: &NewDevice,
        now: i64,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    async fn user(&self, tenant_id: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Users of a tenant, by user id.
    async fn users_of_tenant(&self, tenant_id: &str) -> Result<Vec<UserRecord>, StoreError>;

    // --- devices ------------------------------------------------------------------------

    /// The active (not revoked) device owning the device token with this digest.
    async fn device_by_token_hash(&self, hash: &str) -> Result<Option<DeviceAuth>, StoreError>;

    /// A device of a tenant, active or revoked (check [`DeviceRecord::is_active`]). A device
    /// of another tenant is `Ok(None)`.
    async fn device(
        &self,
        tenant_id: &str,
        device_id: &str,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    /// Every device of a user, active and revoked, oldest first.
    async fn devices_of_user(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Every device of a tenant, active and revoked, by user then age.
    async fn devices_of_tenant(&self, tenant_id: &str) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Revoke an active device and delete its KeyPackages. `Ok(false)`: no such active device.
    async fn revoke_device(
        &self,
        tenant_id: &str,
        device_id: &str,
        now: i64,
    ) -> Result<bool, StoreError>;

    // --- KeyPackages --------------------------------------------------------------------

    /// Add one-time KeyPackages and optionally replace the last-resort one, all or nothing.
    /// Expired KeyPackages of the device are dropped first; the cap counts the rest.
    async fn publish_key_packages(
        &self,
        device_id: &str,
        one_time: &[NewKeyPackage],
        last_resort: Option<&NewKeyPackage>,
        max_one_time: u64,
        now: i64,
    ) -> Result<PublishOutcome, StoreError>;

    /// Unexpired KeyPackages the directory holds for a device.
    async fn key_package_stock(
        &self,
        device_id: &str,
        now: i64,
    ) -> Result<KeyPackageStock, StoreError>;

    /// For each active device of the user except `exclude_device`: take (delete) its oldest
    /// unexpired one-time KeyPackage, else return its unexpired last-resort one (kept). Each
    /// one-time KeyPackage is returned by exactly one call, also under concurrency.
    async fn claim_key_packages(
        &self,
        tenant_id: &str,
        user_id: &str,
        exclude_device: Option<&str>,
        now: i64,
    ) -> Result<ClaimOutcome, StoreError>;

    /// Is the store reachable (for `/readyz`)?
    async fn ping(&self) -> Result<(), StoreError>;
}
