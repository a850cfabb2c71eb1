//! The delivery service's MLS core: parse and check incoming MLS messages, observe new groups,
//! apply a commit to the observed (non-member) group state, diff rosters, and decide identity
//! bindings against directory look-ups the caller has already made.
//!
//! Everything here is plain synchronous functions over bytes, mls-rs state and look-up
//! results: no I/O, no clock, no storage, so each rule can be tested alone. It must never
//! hold MLS secrets or try to decrypt anything; it sees only public parts of RFC 9420
//! messages, and it never logs message bytes.

use std::collections::{BTreeSet, HashMap};

use mls_rs::error::MlsError;
use mls_rs::external_client::{ExternalGroup, ExternalReceivedMessage, ExternalSnapshot};
use mls_rs::group::proposal::Proposal;
use mls_rs::group::{CommitEffect, ContentType, ExportedTree, GroupContext, Sender};
use mls_rs::identity::SigningIdentity;
use mls_rs::mls_rs_codec::MlsDecode;
use mls_rs::{CipherSuite, CryptoProvider, MlsMessage, WireFormat};
use mls_rs_crypto_awslc::AwsLcCryptoProvider;
use sealgate_proto::DeviceIdentity;

use crate::ds::store::RosterEntry;
use crate::mls::{ServerMlsConfig, external_client, leaf_identity};

/// How many epochs back an application message may be (the sender may not yet have
/// processed the latest commits when it encrypted).
pub const APPLICATION_EPOCH_WINDOW: u64 = 3;

/// Why the engine refused something. Every variant except `Internal` is the caller's (or the
/// peer's) fault and maps to one problem code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Bytes that are not an MLS message of the expected kind (`malformed_mls`).
    #[error("{0}")]
    Malformed(String),
    /// A commit or GroupInfo that fails MLS validation or a DS rule (`invalid_commit`).
    #[error("{0}")]
    InvalidCommit(String),
    /// An application message the DS will not accept (`invalid_message`).
    #[error("{0}")]
    InvalidMessage(String),
    /// A commit for an epoch other than the current one (`stale_epoch`).
    #[error("commit is for epoch {attempted}; the group is at epoch {current}")]
    StaleEpoch { current: u64, attempted: u64 },
    /// A leaf whose identity does not match the key directory (`identity_mismatch`).
    #[error("{0}")]
    IdentityMismatch(String),
    /// The stored state could not be used; the server's fault (`internal`).
    #[error("internal: {0}")]
    Internal(String),
}

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// The one cipher suite Sealgate accepts.
pub fn sealgate_cipher_suite() -> CipherSuite {
    CipherSuite::new(sealgate_proto::CIPHER_SUITE)
}

// ---------------------------------------------------------------------------------------------
// Epoch rules

/// What to do with a commit attempted at `attempted` when the group is at `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochDecision {
    /// The commit is for the current epoch; it may create `current + 1`.
    Apply,
    /// Lost race, replay or a commit from the future.
    Stale { current: u64 },
}

/// Exactly one commit per epoch: only a commit for the current epoch may be applied.
pub fn commit_epoch_decision(current: u64, attempted: u64) -> EpochDecision {
    if attempted == current {
        EpochDecision::Apply
    } else {
        EpochDecision::Stale { current }
    }
}

/// An application message is accepted for the current epoch and the
/// [`APPLICATION_EPOCH_WINDOW`] epochs before it.
pub fn application_epoch_ok(message_epoch: u64, current: u64) -> bool {
    message_epoch <= current && message_epoch.saturating_add(APPLICATION_EPOCH_WINDOW) >= current
}

// ---------------------------------------------------------------------------------------------
// Leaves and identity binding

/// One leaf of an observed tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub leaf_index: u32,
    /// The Sealgate identity its basic credential names, if any.
    pub identity: Option<DeviceIdentity>,
    pub signature_key: Vec<u8>,
    signing_identity: SigningIdentity,
}

impl Leaf {
    fn from_member(index: u32, signing_identity: SigningIdentity) -> Self {
        Self {
            leaf_index: index,
            identity: leaf_identity(&signing_identity),
            signature_key: signing_identity.signature_key.as_bytes().to_vec(),
            signing_identity,
        }
    }

    /// Its roster row, if it carries a Sealgate identity.
    pub fn roster_entry(&self) -> Option<RosterEntry> {
        let id = self.identity.as_ref()?;
        Some(RosterEntry {
            leaf_index: self.leaf_index,
            user_id: id.user_id.clone(),
            device_id: id.device_id.clone(),
            signature_key: self.signature_key.clone(),
        })
    }
}

fn leaves(group: &ExternalGroup<ServerMlsConfig>) -> Vec<Leaf> {
    let mut out: Vec<Leaf> = group
        .roster()
        .members_iter()
        .map(|m| Leaf::from_member(m.index, m.signing_identity))
        .collect();
    out.sort_by_key(|l| l.leaf_index);
    out
}

/// What the key directory says about one device (the DS's view of a `DeviceRecord`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub user_id: String,
    pub signature_key: Vec<u8>,
    pub active: bool,
}

/// Check that each leaf names an active device of `tenant_id` with the directory's key.
/// `directory` maps device ids to what the directory returned for them in this tenant
/// (`None` = no such device); a leaf whose device is missing from the map fails.
pub fn check_bindings(
    tenant_id: &str,
    leaves: &[Leaf],
    directory: &HashMap<String, Option<DirectoryEntry>>,
) -> Result<()> {
    for leaf in leaves {
        let i = leaf.leaf_index;
        let Some(id) = &leaf.identity else {
            return Err(EngineError::IdentityMismatch(format!(
                "leaf {i} does not carry a sealgate identity credential"
            )));
        };
        if id.tenant_id != tenant_id {
            return Err(EngineError::IdentityMismatch(format!(
                "leaf {i} names a device of another tenant"
            )));
        }
        let Some(Some(entry)) = directory.get(&id.device_id) else {
            return Err(EngineError::IdentityMismatch(format!(
                "leaf {i} names device {} which is not in the key directory",
                id.device_id
            )));
        };
        if !entry.active {
            return Err(EngineError::IdentityMismatch(format!(
                "leaf {i} names revoked device {}",
                id.device_id
            )));
        }
        if entry.user_id != id.user_id {
            return Err(EngineError::IdentityMismatch(format!(
                "leaf {i}: device {} does not belong to user {}",
                id.device_id, id.user_id
            )));
        }
        if entry.signature_key != leaf.signature_key {
            return Err(EngineError::IdentityMismatch(format!(
                "leaf {i}: signature key is not the one registered for device {}",
                id.device_id
            )));
        }
    }
    Ok(())
}

/// Leaves of `new` that are new or whose signing identity (credential or key) changed.
pub fn changed_leaves(old: &[Leaf], new: &[Leaf]) -> Vec<Leaf> {
    let before: HashMap<u32, &SigningIdentity> = old
        .iter()
        .map(|l| (l.leaf_index, &l.signing_identity))
        .collect();
    new.iter()
        .filter(|l| before.get(&l.leaf_index) != Some(&&l.signing_identity))
        .cloned()
        .collect()
}

/// Roster rows of a tree whose every leaf must carry a Sealgate identity naming a distinct
/// device.
fn roster_of(leaves: &[Leaf]) -> Result<Vec<RosterEntry>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(leaves.len());
    for leaf in leaves {
        let Some(entry) = leaf.roster_entry() else {
            return Err(EngineError::IdentityMismatch(format!(
                "leaf {} does not carry a sealgate identity credential",
                leaf.leaf_index
            )));
        };
        if !seen.insert(entry.device_id.clone()) {
            return Err(EngineError::IdentityMismatch(format!(
                "device {} appears in more than one leaf",
                entry.device_id
            )));
        }
        out.push(entry);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// Decode an `MLSMessage`.
pub fn parse_mls(bytes: &[u8], what: &str) -> Result<MlsMessage> {
    MlsMessage::from_bytes(bytes)
        .map_err(|e| EngineError::Malformed(format!("{what} is not an MLS message: {e}")))
}

/// Decode a Welcome `MLSMessage`.
pub fn parse_welcome(bytes: &[u8]) -> Result<MlsMessage> {
    let msg = parse_mls(bytes, "welcome")?;
    if msg.wire_format() != WireFormat::Welcome {
        return Err(EngineError::Malformed(
            "welcome is not a Welcome MLS message".into(),
        ));
    }
    Ok(msg)
}

fn decode_tree(bytes: &[u8]) -> Result<ExportedTree<'static>> {
    let mut rest = bytes;
    let tree = ExportedTree::mls_decode(&mut rest)
        .map_err(|e| EngineError::Malformed(format!("ratchet_tree does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(EngineError::Malformed(
            "ratchet_tree has trailing bytes".into(),
        ));
    }
    Ok(tree.into_owned())
}

fn internal(what: &str, e: MlsError) -> EngineError {
    EngineError::Internal(format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Group creation

/// A group the DS has started to observe from its creator's GroupInfo.
#[derive(Debug, Clone)]
pub struct ObservedGroup {
    /// Raw MLS group id.
    pub group_id: Vec<u8>,
    pub epoch: u64,
    pub snapshot: Vec<u8>,
    /// The only member: the creator.
    pub creator: Leaf,
}

/// Observe a new group from its GroupInfo (and tree, if the GroupInfo carries none). The
/// group must use the Sealgate cipher suite and have exactly one member; binding that member
/// to the caller and the directory is the caller's job ([`check_creator`]).
pub fn observe_new_group(group_info: &[u8], ratchet_tree: Option<&[u8]>) -> Result<ObservedGroup> {
    let msg = parse_mls(group_info, "group_info")?;
    if msg.wire_format() != WireFormat::GroupInfo {
        return Err(EngineError::Malformed(
            "group_info is not a GroupInfo MLS message".into(),
        ));
    }
    if msg.cipher_suite() != Some(sealgate_cipher_suite()) {
        return Err(EngineError::InvalidCommit(format!(
            "group must use cipher suite {}",
            sealgate_proto::CIPHER_SUITE
        )));
    }
    let tree = ratchet_tree.map(decode_tree).transpose()?;
    let group = external_client()
        .observe_group(msg, tree, None)
        .map_err(|e| EngineError::InvalidCommit(format!("group_info does not verify: {e}")))?;
    let members = leaves(&group);
    let [creator] = <[Leaf; 1]>::try_from(members).map_err(|_| {
        EngineError::InvalidCommit("a new group must have exactly one member".into())
    })?;
    let snapshot = group
        .snapshot()
        .to_bytes()
        .map_err(|e| internal("snapshot", e))?;
    let ctx = group.group_context();
    Ok(ObservedGroup {
        group_id: ctx.group_id().to_vec(),
        epoch: ctx.epoch(),
        snapshot,
        creator,
    })
}

/// The creator's leaf must name the calling device and carry its registered key.
pub fn check_creator(
    creator: &Leaf,
    caller: &DeviceIdentity,
    registered_key: Option<&[u8]>,
) -> Result<RosterEntry> {
    if creator.identity.as_ref() != Some(caller) {
        return Err(EngineError::IdentityMismatch(
            "the group's only member must be the calling device".into(),
        ));
    }
    if registered_key != Some(creator.signature_key.as_slice()) {
        return Err(EngineError::IdentityMismatch(
            "the creator's signature key is not the one registered for this device".into(),
        ));
    }
    creator
        .roster_entry()
        .ok_or_else(|| EngineError::IdentityMismatch("creator has no sealgate identity".into()))
}

// ---------------------------------------------------------------------------------------------
// Commits

/// The cheap checks of a commit, done before loading any state: it is a PublicMessage commit
/// of `group_id`, sent by a member, for the current epoch. Returns the message and the
/// sender's leaf index.
pub fn precheck_commit(bytes: &[u8], group_id: &[u8], current: u64) -> Result<(MlsMessage, u32)> {
    let msg = parse_mls(bytes, "commit")?;
    match msg.wire_format() {
        WireFormat::PublicMessage => {}
        WireFormat::PrivateMessage => {
            return Err(EngineError::InvalidCommit(
                "commits must be sent as PublicMessage so the delivery service can follow the group"
                    .into(),
            ));
        }
        other => {
            return Err(EngineError::InvalidCommit(format!(
                "expected a PublicMessage commit, got {other:?}"
            )));
        }
    }
    let mls_rs::MlsMessageDescription::PublicProtocolMessage {
        group_id: msg_group,
        epoch_id,
        content_type,
        sender,
        ..
    } = msg.description()
    else {
        return Err(EngineError::InvalidCommit("not a PublicMessage".into()));
    };
    if msg_group != group_id {
        return Err(EngineError::InvalidCommit(
            "commit belongs to a different group".into(),
        ));
    }
    if content_type != ContentType::Commit {
        return Err(EngineError::InvalidCommit(
            "proposals are not supported; send a commit".into(),
        ));
    }
    let Sender::Member(sender) = sender else {
        return Err(EngineError::InvalidCommit(
            "only members may commit (external commits are not supported)".into(),
        ));
    };
    if let EpochDecision::Stale { current } = commit_epoch_decision(current, epoch_id) {
        return Err(EngineError::StaleEpoch {
            current,
            attempted: epoch_id,
        });
    }
    Ok((msg, sender))
}

/// A commit applied to the observed state, not yet bound to the directory or stored.
#[derive(Debug, Clone)]
pub struct AppliedCommit {
    pub new_epoch: u64,
    pub snapshot: Vec<u8>,
    pub committer: Leaf,
    pub old_roster: Vec<RosterEntry>,
    pub new_roster: Vec<RosterEntry>,
    /// Leaves that are new or changed their signing identity: each needs a directory check.
    pub changed: Vec<Leaf>,
    /// Device ids of the leaves the commit adds (they get the Welcome).
    pub added_devices: Vec<String>,
    /// KeyPackageRefs of the added members, to match against the Welcome.
    added_refs: BTreeSet<Vec<u8>>,
    context: GroupContext,
}

/// Apply a prechecked commit to the group state in `snapshot`. Checks that the committer is
/// `caller`, that every leaf of the new tree carries a distinct Sealgate identity and that the
/// group stays within `max_group_size`.
pub fn apply_commit(
    snapshot: &[u8],
    commit: MlsMessage,
    caller: &DeviceIdentity,
    max_group_size: u32,
) -> Result<AppliedCommit> {
    let snapshot = ExternalSnapshot::from_bytes(snapshot).map_err(|e| internal("snapshot", e))?;
    let mut group = external_client()
        .load_group(snapshot)
        .map_err(|e| internal("load snapshot", e))?;
    let old_leaves = leaves(&group);
    let old_roster = roster_of(&old_leaves).map_err(|e| match e {
        EngineError::IdentityMismatch(m) => EngineError::Internal(format!("stored roster: {m}")),
        other => other,
    })?;

    let current = group.group_context().epoch();
    let attempted = commit.epoch().unwrap_or(u64::MAX);
    let received = group
        .process_incoming_message(commit)
        .map_err(|e| match e {
            MlsError::InvalidEpoch => EngineError::StaleEpoch { current, attempted },
            e => EngineError::InvalidCommit(format!("commit does not verify: {e}")),
        })?;
    let description = match received {
        ExternalReceivedMessage::Commit(d) => d,
        ExternalReceivedMessage::Proposal(_) => {
            return Err(EngineError::InvalidCommit(
                "proposals are not supported; send a commit".into(),
            ));
        }
        _ => return Err(EngineError::InvalidCommit("not a commit".into())),
    };
    if description.is_external {
        return Err(EngineError::InvalidCommit(
            "external commits are not supported".into(),
        ));
    }
    let new_epoch = match &description.effect {
        CommitEffect::NewEpoch(e) => e,
        CommitEffect::Removed { .. } => {
            return Err(EngineError::InvalidCommit(
                "commit removes the delivery service".into(),
            ));
        }
        CommitEffect::ReInit(_) => {
            return Err(EngineError::InvalidCommit(
                "reinit commits are not supported".into(),
            ));
        }
    };
    let committer = old_leaves
        .iter()
        .find(|l| l.leaf_index == description.committer)
        .cloned()
        .ok_or_else(|| EngineError::InvalidCommit("committer is not in the tree".into()))?;
    if committer.identity.as_ref() != Some(caller) {
        return Err(EngineError::IdentityMismatch(
            "the commit is signed by another member than the calling device".into(),
        ));
    }

    let new_leaves = leaves(&group);
    if new_leaves.len() > max_group_size as usize {
        return Err(EngineError::InvalidCommit(format!(
            "the group would have {} members; the limit is {max_group_size}",
            new_leaves.len()
        )));
    }
    let new_roster = roster_of(&new_leaves)?;
    let changed = changed_leaves(&old_leaves, &new_leaves);

    let cs = AwsLcCryptoProvider::default()
        .cipher_suite_provider(group.group_context().cipher_suite())
        .ok_or_else(|| EngineError::Internal("cipher suite unavailable".into()))?;
    let mut added_refs = BTreeSet::new();
    let mut added_keys = Vec::new();
    for info in new_epoch.applied_proposals() {
        if let Proposal::Add(add) = &info.proposal {
            let kp = add.key_package();
            let r = kp
                .to_reference(&cs)
                .map_err(|e| EngineError::InvalidCommit(format!("added KeyPackage: {e}")))?;
            added_refs.insert(r.to_vec());
            added_keys.push(kp.signing_identity().signature_key.as_bytes().to_vec());
        }
    }
    let added_devices = new_roster
        .iter()
        .filter(|m| added_keys.contains(&m.signature_key))
        .map(|m| m.device_id.clone())
        .collect();

    let snapshot = group
        .snapshot()
        .to_bytes()
        .map_err(|e| internal("snapshot", e))?;
    Ok(AppliedCommit {
        new_epoch: group.group_context().epoch(),
        snapshot,
        committer,
        old_roster,
        new_roster,
        changed,
        added_devices,
        added_refs,
        context: group.group_context().clone(),
    })
}

impl AppliedCommit {
    /// Does the commit add members (and so need a Welcome)?
    pub fn adds_members(&self) -> bool {
        !self.added_refs.is_empty()
    }

    /// The Welcome must be addressed to exactly the members this commit adds.
    pub fn check_welcome(&self, welcome: &MlsMessage) -> Result<()> {
        if !self.adds_members() {
            return Err(EngineError::InvalidCommit(
                "a welcome was sent but the commit adds no members".into(),
            ));
        }
        if welcome.cipher_suite() != Some(self.context.cipher_suite()) {
            return Err(EngineError::InvalidCommit(
                "the welcome uses another cipher suite than the group".into(),
            ));
        }
        let refs: BTreeSet<Vec<u8>> = welcome
            .welcome_key_package_references()
            .into_iter()
            .map(|r| r.to_vec())
            .collect();
        if refs != self.added_refs {
            return Err(EngineError::InvalidCommit(
                "the welcome is not addressed to exactly the members the commit adds".into(),
            ));
        }
        Ok(())
    }

    /// A GroupInfo sent with the commit must describe the new epoch exactly.
    pub fn check_group_info(&self, bytes: &[u8]) -> Result<()> {
        let msg = parse_mls(bytes, "group_info")?;
        let Some(info) = msg.as_group_info() else {
            return Err(EngineError::Malformed(
                "group_info is not a GroupInfo MLS message".into(),
            ));
        };
        if info.group_context() != &self.context {
            return Err(EngineError::InvalidCommit(
                "group_info does not describe the group's new epoch".into(),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Application messages

/// The header of an application message: a PrivateMessage of `group_id`. Returns its epoch.
/// The epoch window is checked by the store against the epoch current in its transaction.
pub fn check_application(bytes: &[u8], group_id: &[u8]) -> Result<u64> {
    let msg = MlsMessage::from_bytes(bytes)
        .map_err(|e| EngineError::InvalidMessage(format!("not an MLS message: {e}")))?;
    if msg.wire_format() != WireFormat::PrivateMessage {
        return Err(EngineError::InvalidMessage(
            "application messages must be PrivateMessage".into(),
        ));
    }
    if msg.group_id() != Some(group_id) {
        return Err(EngineError::InvalidMessage(
            "message belongs to a different group".into(),
        ));
    }
    if let mls_rs::MlsMessageDescription::PrivateProtocolMessage { content_type, .. } =
        msg.description()
        && content_type != ContentType::Application
    {
        return Err(EngineError::InvalidMessage(
            "handshake messages must be sent as PublicMessage to the commits route".into(),
        ));
    }
    msg.epoch()
        .ok_or_else(|| EngineError::InvalidMessage("message has no epoch".into()))
}

#[cfg(test)]
mod tests;
