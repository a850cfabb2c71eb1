//! Store trait of the delivery-service area. See `crate::store` for the general contract
//! (`Ok(None)` / `Ok(false)` = absent or lost a race, `Err` = the store failed; every method
//! is one all-or-nothing transaction).
//!
//! The methods are the narrow operations the DS routes need, so a PostgreSQL backend can
//! implement the same trait. Correctness under concurrency lives here, not in process memory:
//! a commit is applied with a compare-and-swap on the epoch, and application messages are
//! fanned out to the roster as it is inside the transaction. The store must never interpret
//! or log message bytes; it keeps them as opaque blobs.

use async_trait::async_trait;
use sealgate_proto::api::{EventKind, MailboxEvent};

use crate::store::StoreError;

/// One leaf of a group's roster as the DS keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    pub leaf_index: u32,
    pub user_id: String,
    pub device_id: String,
    /// The leaf's signature public key.
    pub signature_key: Vec<u8>,
}

/// A group to register (`POST /v1/groups`).
#[derive(Debug, Clone)]
pub struct NewGroup {
    /// Hex of the MLS group id.
    pub group_id: String,
    pub tenant_id: String,
    pub epoch: u64,
    /// mls-rs `ExternalSnapshot` bytes.
    pub snapshot: Vec<u8>,
    /// The GroupInfo `MLSMessage` the group was created from.
    pub group_info: Vec<u8>,
    /// Device id of the creator.
    pub created_by: String,
    pub roster: Vec<RosterEntry>,
    /// Unix milliseconds.
    pub now_ms: i64,
}

/// What the DS knows about a group, without its (possibly large) MLS state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group_id: String,
    pub tenant_id: String,
    pub epoch: u64,
    /// By leaf index.
    pub roster: Vec<RosterEntry>,
}

impl GroupSummary {
    /// The roster entry of `device_id`, if the device is a member.
    pub fn member(&self, device_id: &str) -> Option<&RosterEntry> {
        self.roster.iter().find(|m| m.device_id == device_id)
    }
}

/// A group with its MLS state, as needed to apply a commit.
#[derive(Debug, Clone)]
pub struct GroupState {
    pub summary: GroupSummary,
    /// mls-rs `ExternalSnapshot` bytes at `summary.epoch`.
    pub snapshot: Vec<u8>,
}

/// The latest GroupInfo a member handed to the DS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroupInfo {
    /// The epoch the GroupInfo describes (may lag the group's epoch if a commit came without
    /// one).
    pub epoch: u64,
    pub group_info: Vec<u8>,
}

/// A message stored once and pointed to from each recipient's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub message_id: String,
    pub group_id: String,
    pub kind: EventKind,
    pub epoch: u64,
    pub sender_user: String,
    pub sender_device: String,
    /// Opaque `MLSMessage` bytes.
    pub bytes: Vec<u8>,
    /// Unix milliseconds.
    pub received_at: i64,
}

/// A message together with the devices whose mailbox gets a pointer to it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: StoredMessage,
    /// Device ids; must not repeat. Empty = the message is not stored at all.
    pub recipients: Vec<String>,
}

/// A verified commit ready to persist.
#[derive(Debug, Clone)]
pub struct AcceptedCommit {
    pub group_id: String,
    /// The epoch the commit was validated against; the write happens only if the group is
    /// still there.
    pub cas_epoch: u64,
    pub new_epoch: u64,
    pub snapshot: Vec<u8>,
    /// GroupInfo of `new_epoch`, if the committer sent one; otherwise the old one is kept.
    pub group_info: Option<Vec<u8>>,
    /// The complete roster of `new_epoch`; replaces the old one.
    pub roster: Vec<RosterEntry>,
    pub commit: Delivery,
    pub welcome: Option<Delivery>,
    /// Unix milliseconds.
    pub now_ms: i64,
}

/// What [`DsStore::store_application`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplicationOutcome {
    /// Stored, with a pointer for each of these devices (every member but the sender).
    Stored { recipients: Vec<String> },
    /// No such group (in this tenant).
    UnknownGroup,
    /// The sender is not in the roster; nothing stored.
    NotMember,
    /// The message's epoch is outside the window the DS accepts; nothing stored.
    EpochOutOfRange { current: u64 },
}

/// The delivery service's storage.
#[async_trait]
pub trait DsStore: Send + Sync {
    /// Register a group. `Ok(false)`: the group id is taken; nothing stored.
    async fn create_group(&self, group: &NewGroup) -> Result<bool, StoreError>;

    /// A group's tenant, epoch and roster.
    async fn group(&self, group_id: &str) -> Result<Option<GroupSummary>, StoreError>;

    /// A group with its MLS snapshot.
    async fn group_state(&self, group_id: &str) -> Result<Option<GroupState>, StoreError>;

    /// The latest stored GroupInfo of a group.
    async fn group_info(&self, group_id: &str) -> Result<Option<StoredGroupInfo>, StoreError>;

    /// Persist a commit if the group is still at `cas_epoch`: new snapshot and epoch, roster
    /// replaced, the commit and Welcome stored once with their mailbox pointers.
    /// `Ok(false)`: the epoch moved on (another commit won); nothing stored. Of any number of
    /// concurrent calls with the same `cas_epoch`, at most one returns `Ok(true)`.
    async fn apply_commit(&self, commit: &AcceptedCommit) -> Result<bool, StoreError>;

    /// Store an application message once and point every member device except the sender
    /// at it, using the roster and epoch as they are inside the transaction (so a member
    /// removed by a commit that won just before gets nothing). The message's epoch must pass
    /// [`crate::ds::engine::application_epoch_ok`] against the current epoch.
    async fn store_application(
        &self,
        tenant_id: &str,
        message: &StoredMessage,
    ) -> Result<ApplicationOutcome, StoreError>;

    /// Up to `limit` mailbox events of a device with `seq > after`, oldest first.
    async fn fetch_mailbox(
        &self,
        device_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<MailboxEvent>, StoreError>;

    /// Delete a device's mailbox pointers with `seq <= up_to` and every message no pointer
    /// refers to any more. Returns how many pointers were deleted.
    async fn ack(&self, device_id: &str, up_to: i64) -> Result<u64, StoreError>;

    /// How many message rows are stored (for tests and metrics).
    async fn stored_message_count(&self) -> Result<u64, StoreError>;
}

/// The `kind` column value of an event kind.
pub fn kind_str(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Welcome => "welcome",
        EventKind::Commit => "commit",
        EventKind::Application => "application",
    }
}

/// Parse a `kind` column value.
pub fn parse_kind(s: &str) -> Option<EventKind> {
    match s {
        "welcome" => Some(EventKind::Welcome),
        "commit" => Some(EventKind::Commit),
        "application" => Some(EventKind::Application),
        _ => None,
    }
}
