//! The device state that lives in the sealed file, and how it is loaded and saved.
//!
//! One JSON document (then sealed by the key store) holds the device's identity and token, its
//! signing key, every MLS secret (through [`MlsData`]), the conversations, the mailbox cursor,
//! messages waiting for an epoch we have not reached, events not yet handed to the
//! application, and a cache of directory lookups. Saving it is the commit point of every
//! operation: the mailbox is acknowledged only after a save, so a crash never loses or repeats
//! an event. This module must never write the document anywhere but through the key store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sealgate_proto::api::{MailboxEvent, UserInfo};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::keystore::{self, SealKey};
use crate::storage::MlsData;

/// Version of the JSON document inside the sealed file.
pub const STATE_VERSION: u32 = 1;

/// What kind of conversation a group is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConversationKind {
    /// A 1:1 conversation with `peer` (all devices of both users).
    Direct { peer: String },
    /// A named-members group.
    Group,
}

/// A conversation this device takes part in; the id is the hex MLS group id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    #[serde(flatten)]
    pub kind: ConversationKind,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A mailbox event that could not be processed yet (its epoch or group is not reached).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Buffered {
    pub event: MailboxEvent,
    /// Unix milliseconds when it was buffered.
    pub buffered_at: i64,
}

/// A directory entry and when it was fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedUser {
    pub info: UserInfo,
    /// Unix milliseconds.
    pub fetched_at: i64,
}

/// Everything a device knows, except the MLS secrets (kept in [`MlsData`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    pub version: u32,
    pub server_url: String,
    pub tenant_id: String,
    pub user: String,
    pub device_id: String,
    pub device_token: String,
    pub credential_identity: String,
    #[serde(with = "sealgate_proto::b64")]
    pub signing_secret: Vec<u8>,
    #[serde(with = "sealgate_proto::b64")]
    pub signing_public: Vec<u8>,
    #[serde(default)]
    pub conversations: BTreeMap<String, Conversation>,
    /// Highest mailbox seq fully processed and saved.
    #[serde(default)]
    pub cursor: i64,
    #[serde(default)]
    pub buffered: Vec<Buffered>,
    /// Events produced (e.g. while syncing before a commit) but not yet returned by `receive`.
    #[serde(default)]
    pub pending_events: Vec<Event>,
    #[serde(default)]
    pub directory: BTreeMap<String, CachedUser>,
    /// Groups we were removed from; their late messages are dropped.
    #[serde(default)]
    pub removed_groups: BTreeSet<String>,
    /// Attachment uploads started but not yet sent, so a new process can resume them.
    #[serde(default)]
    pub pending_uploads: Vec<crate::attachment::PendingUpload>,
}

#[derive(Serialize)]
struct StateFileRef<'a> {
    device: &'a DeviceState,
    mls: &'a MlsData,
}

#[derive(Deserialize)]
struct StateFile {
    device: DeviceState,
    mls: MlsData,
}

/// Seal and atomically write the state into `home`.
pub fn save(home: &Path, key: &SealKey, device: &DeviceState, mls: &MlsData) -> Result<()> {
    let json = serde_json::to_vec(&StateFileRef { device, mls })
        .map_err(|e| Error::CorruptState(format!("cannot serialize state: {e}")))?;
    let sealed = key.seal(&json)?;
    keystore::write_atomic(&home.join(keystore::STATE_FILE), &sealed)
}

/// Read, unseal and parse the state of `home`.
pub fn load(home: &Path, passphrase: Option<&str>) -> Result<(SealKey, DeviceState, MlsData)> {
    let path = home.join(keystore::STATE_FILE);
    let sealed = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotInitialized(home.to_path_buf()));
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let key = SealKey::for_sealed(home, &sealed, passphrase)?;
    let json = key.open(&sealed)?;
    let file: StateFile =
        serde_json::from_slice(&json).map_err(|e| Error::CorruptState(e.to_string()))?;
    if file.device.version != STATE_VERSION {
        return Err(Error::CorruptState(format!(
            "unsupported state version {}",
            file.device.version
        )));
    }
    Ok((key, file.device, file.mls))
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::KeySource;

    fn sample() -> DeviceState {
        DeviceState {
            version: STATE_VERSION,
            server_url: "http://127.0.0.1:1".into(),
            tenant_id: "t1".into(),
            user: "alice".into(),
            device_id: "dv-a".into(),
            device_token: "tok".into(),
            credential_identity: "sealgate:v1:t1:alice:dv-a".into(),
            signing_secret: vec![1; 64],
            signing_public: vec![2; 32],
            conversations: BTreeMap::from([(
                "00ff".into(),
                Conversation {
                    kind: ConversationKind::Direct { peer: "bob".into() },
                    created_at: 7,
                },
            )]),
            cursor: 42,
            buffered: vec![],
            pending_events: vec![Event::error("00ff", "x")],
            directory: BTreeMap::new(),
            removed_groups: BTreeSet::from(["aa".to_string()]),
            pending_uploads: vec![],
        }
    }

    #[test]
    fn save_load_round_trip_and_secrets_not_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let key = SealKey::create(dir.path(), &KeySource::KeyFile).unwrap();
        save(dir.path(), &key, &sample(), &MlsData::default()).unwrap();

        let raw = std::fs::read(dir.path().join(keystore::STATE_FILE)).unwrap();
        assert!(!raw.windows(5).any(|w| w == b"alice"));

        let (_, device, mls) = load(dir.path(), None).unwrap();
        assert_eq!(device.cursor, 42);
        assert_eq!(device.conversations, sample().conversations);
        assert_eq!(device.pending_events, sample().pending_events);
        assert_eq!(device.signing_secret, vec![1; 64]);
        assert_eq!(mls, MlsData::default());
    }

    #[test]
    fn missing_and_tampered_states_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(dir.path(), None),
            Err(Error::NotInitialized(_))
        ));
        let key = SealKey::create(dir.path(), &KeySource::KeyFile).unwrap();
        save(dir.path(), &key, &sample(), &MlsData::default()).unwrap();
        let path = dir.path().join(keystore::STATE_FILE);
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 20;
        raw[last] ^= 0x80;
        std::fs::write(&path, &raw).unwrap();
        assert!(matches!(load(dir.path(), None), Err(Error::Unlock)));
        // The refused file is left as it was.
        assert_eq!(std::fs::read(&path).unwrap(), raw);
    }
}
