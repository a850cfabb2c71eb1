//! Store trait of the send pipeline: accepting messages (message + job in one transaction),
//! status transitions with their history and callback jobs, in-app delivery into the DS
//! mailboxes, carrier receipts, tenant callbacks and push tokens. See `crate::store` for the
//! general contract (`Ok(None)` = absent, `Err` = the store failed, each method one
//! all-or-nothing transaction).
//!
//! Status moves only forward ([`MessageStatus::can_move_to`]); the store enforces it inside
//! its transaction, so a late worker or a replayed receipt cannot move a message back. It must
//! never log or interpret payload bytes.

use async_trait::async_trait;
use sealgate_proto::send::{Channel, MessageClass, MessageStatus, MessageView};

use super::queue::JobQueue;
use crate::store::StoreError;

/// What kind of body a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// An MLS PrivateMessage for the in-app route.
    Mls,
    /// An opaque E2EE payload for the RCS route.
    RcsPayload,
    /// A plaintext fallback text.
    Text,
}

impl PayloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadKind::Mls => "mls",
            PayloadKind::RcsPayload => "rcs_payload",
            PayloadKind::Text => "text",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mls" => Some(PayloadKind::Mls),
            "rcs_payload" => Some(PayloadKind::RcsPayload),
            "text" => Some(PayloadKind::Text),
            _ => None,
        }
    }
}

/// A validated message to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub message_id: String,
    pub tenant_id: String,
    pub idempotency_key: String,
    /// SHA-256 of the canonical request.
    pub request_hash: Vec<u8>,
    pub recipient: String,
    pub class: MessageClass,
    pub channel: Channel,
    pub kind: PayloadKind,
    pub group_id: Option<String>,
    pub epoch: Option<u64>,
    pub payload: Vec<u8>,
    pub correlation_id: Option<String>,
    /// Unix ms.
    pub accepted_at: i64,
    /// Unix ms; `None` = no TTL.
    pub expires_at: Option<i64>,
}

/// What accepting one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Stored with its job.
    Accepted { message_id: String },
    /// The key was used before with the same request: the earlier message.
    Replayed { message_id: String },
    /// The key was used before with a different request; nothing stored.
    KeyReused,
}

/// A message as a worker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub message_id: String,
    pub tenant_id: String,
    pub recipient: String,
    pub class: MessageClass,
    pub channel: Channel,
    pub kind: PayloadKind,
    pub group_id: Option<String>,
    pub epoch: Option<u64>,
    /// Empty once the message reached a state where it can no longer be sent.
    pub payload: Vec<u8>,
    pub status: MessageStatus,
    /// Why it failed or expired.
    pub reason: Option<String>,
    pub attempts: u32,
    pub correlation_id: Option<String>,
    pub accepted_at: i64,
    pub expires_at: Option<i64>,
}

/// A status change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub message_id: String,
    pub status: MessageStatus,
    pub reason: Option<String>,
    /// Unix ms.
    pub at: i64,
    /// Count a transport attempt (even if the status stays `sending`).
    pub count_attempt: bool,
}

/// An MLS application message to put into the DS mailboxes of `recipients`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InAppDelivery {
    pub message_id: String,
    pub group_id: String,
    pub epoch: u64,
    /// Recorded as the mailbox event's sender: the tenant backend, not a device.
    pub sender_user: String,
    pub sender_device: String,
    pub bytes: Vec<u8>,
    /// Device ids; must not repeat.
    pub recipients: Vec<String>,
    /// Unix ms.
    pub at: i64,
}

/// What [`DeliveryStore::deliver_inapp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InAppOutcome {
    /// Stored in the mailboxes and marked `sent`; push jobs enqueued for these devices.
    Delivered { pushed: Vec<String> },
    /// Already delivered earlier (a redelivered job): nothing written.
    AlreadyDelivered,
    /// No such message.
    UnknownMessage,
}

/// What a carrier receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// Recorded in the history.
    Applied,
    /// Recorded as seen, but the state had already moved past it (e.g. delivered after read).
    Ignored,
    /// This event id was processed before.
    Duplicate,
    /// No such message; nothing recorded.
    UnknownMessage,
}

/// A tenant's status callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCallback {
    pub url: String,
    pub secret: String,
}

/// The send pipeline's storage.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Accept a batch in one transaction (group commit). For each message, in order: if its
    /// (tenant, idempotency key) is new, store the key, the message (whose `accepted_at` is
    /// its `queued` history entry) and its send job; otherwise answer from the stored key.
    /// Messages later in the batch see the keys of earlier ones. One message failing leaves nothing of it and does
    /// not affect the others (inner `Err`); the outer `Err` means the commit failed and
    /// nothing of the batch is stored.
    async fn accept_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<Result<AcceptOutcome, StoreError>>, StoreError>;

    /// How many accept batches the group-commit writer may have in flight at once. One for a
    /// store with a single writer (SQLite: a second batch would only queue behind the first);
    /// more for a server database, whose unique (tenant, key) constraint keeps idempotency
    /// exact between concurrent batches just as it does between processes.
    fn accept_batches_in_flight(&self) -> usize {
        1
    }

    /// How many idempotency keys this process holds in memory, for a store that checks them
    /// there (SQLite: `delivery/sqlite_keys.rs`); `None` for one whose keys live on disk only.
    fn idempotency_keys_in_memory(&self) -> Option<u64> {
        None
    }

    /// Status and history of a message of `tenant_id` (never the body).
    async fn message_view(
        &self,
        tenant_id: &str,
        message_id: &str,
    ) -> Result<Option<MessageView>, StoreError>;

    /// A message with its payload, for a worker.
    async fn outbound(&self, message_id: &str) -> Result<Option<OutboundMessage>, StoreError>;

    /// Record a status change if it moves forward (plus a history entry, a callback job if
    /// the tenant registered a callback and the status is not `sending`, and wiping the
    /// payload once it can no longer be sent). `Ok(false)`: not a forward move (an attempt is
    /// still counted if asked) or no such message.
    async fn transition(&self, t: &Transition) -> Result<bool, StoreError>;

    /// Put an in-app message into the recipients' mailboxes and mark it `sent`, once: a second
    /// call for the same message writes nothing.
    async fn deliver_inapp(&self, d: &InAppDelivery) -> Result<InAppOutcome, StoreError>;

    /// Apply a carrier receipt once per `event_id`.
    async fn carrier_receipt(
        &self,
        event_id: &str,
        t: &Transition,
    ) -> Result<ReceiptOutcome, StoreError>;

    /// Register (replace) a tenant's status callback.
    async fn set_callback(
        &self,
        tenant_id: &str,
        callback: &TenantCallback,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    async fn callback(&self, tenant_id: &str) -> Result<Option<TenantCallback>, StoreError>;

    /// Register (replace) a device's push token.
    async fn set_push_token(
        &self,
        device_id: &str,
        token: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    async fn push_token(&self, device_id: &str) -> Result<Option<String>, StoreError>;

    /// The user of `tenant_id` bound to `phone` (E.164), if any.
    async fn user_by_phone(
        &self,
        tenant_id: &str,
        phone: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Forget idempotency keys created before `before_ms`. Returns how many.
    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// Take up to `want` sends of `tenant_id`'s daily quota of `limit` for UTC day `day`
    /// (days since the Unix epoch), atomically across every process sharing this store.
    /// Returns how many were granted (`0..=want`): fewer when the day's count nears `limit`,
    /// none when it is reached or when `day` is older than the day the tenant's count is on
    /// (a process whose clock lags at midnight). A newer day starts the count from zero.
    async fn take_quota(
        &self,
        tenant_id: &str,
        day: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError>;
}

/// Everything the workers need from a backend: messages and the queue.
pub trait DeliveryBackend: DeliveryStore + JobQueue + Send + Sync + 'static {}

impl<T: DeliveryStore + JobQueue + Send + Sync + 'static> DeliveryBackend for T {}
