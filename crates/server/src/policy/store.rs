//! Store trait of the policy area: each tenant's current policy document, the append-only
//! audit trail of its changes, and held messages (`queue_until_e2ee`). See `crate::store`
//! for the general contract (`Ok(None)` = absent, `Err` = the store failed, every method one
//! all-or-nothing transaction).
//!
//! Held messages carry no content: the sender's SDK keeps it in its own sealed outbox. This
//! trait must never see message text.

use async_trait::async_trait;
use sealgate_proto::policy::{HoldStatus, HoldView, PolicyChange};
use sealgate_proto::send::MessageClass;

use crate::store::StoreError;

/// A tenant's stored policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub version: u64,
    /// Canonical JSON of the classes.
    pub document: String,
    /// Hex SHA-256 of `document`.
    pub digest: String,
    /// Unix ms.
    pub updated_at: i64,
}

/// A held message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    pub hold_id: String,
    pub tenant_id: String,
    pub recipient: String,
    pub class: MessageClass,
    pub created_at: i64,
    pub expires_at: i64,
    pub ready_at: Option<i64>,
    pub done_at: Option<i64>,
}

impl HoldRecord {
    /// The state at `now`: done, else ready (a device came before the deadline), else expired
    /// once the deadline passed, else waiting.
    pub fn status(&self, now: i64) -> HoldStatus {
        if self.done_at.is_some() {
            HoldStatus::Done
        } else if self.ready_at.is_some_and(|r| r < self.expires_at) {
            HoldStatus::Ready
        } else if now >= self.expires_at {
            HoldStatus::Expired
        } else {
            HoldStatus::Waiting
        }
    }

    pub fn view(&self, now: i64) -> HoldView {
        HoldView {
            hold_id: self.hold_id.clone(),
            to: self.recipient.clone(),
            class: self.class,
            status: self.status(now),
            created_at: self.created_at,
            expires_at: self.expires_at,
            ready_at: self.ready_at,
        }
    }
}

#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// The tenant's current policy; `Ok(None)` = never set (the default applies).
    async fn policy(&self, tenant_id: &str) -> Result<Option<StoredPolicy>, StoreError>;

    /// Replace the tenant's policy with `document` as the next version and append the change
    /// (with `actor`, both versions and both digests) to the audit trail, in one transaction.
    /// Setting the same digest again still makes a new version (an explicit re-apply).
    async fn set_policy(
        &self,
        tenant_id: &str,
        document: &str,
        digest: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<StoredPolicy, StoreError>;

    /// The audit trail, newest first, at most `limit` entries.
    async fn policy_history(
        &self,
        tenant_id: &str,
        limit: u32,
    ) -> Result<Vec<PolicyChange>, StoreError>;

    async fn create_hold(&self, hold: &HoldRecord) -> Result<(), StoreError>;

    async fn hold(&self, tenant_id: &str, hold_id: &str) -> Result<Option<HoldRecord>, StoreError>;

    /// The tenant's holds that are not done, oldest first, at most `limit`.
    async fn open_holds(&self, tenant_id: &str, limit: u32) -> Result<Vec<HoldRecord>, StoreError>;

    /// Mark waiting (unexpired, not done) holds addressed to any of `recipients` ready.
    /// Returns how many.
    async fn mark_holds_ready(
        &self,
        tenant_id: &str,
        recipients: &[String],
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Mark a hold done. `Ok(false)`: no such hold, or already done.
    async fn finish_hold(
        &self,
        tenant_id: &str,
        hold_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
}
