//! mls-rs storage (group states, prior epochs, KeyPackage secrets) kept inside the sealed state.
//!
//! mls-rs asks a [`GroupStateStorage`] and a [`KeyPackageStorage`] for its secrets. Here both
//! are views on one in-memory map that is serialized into the device's sealed state file, so
//! MLS secrets are only ever on disk encrypted, and the whole device state moves atomically.
//! Handles are cheap clones sharing the map (mls-rs clones its providers).
//!
//! This module must never write anything to disk itself, and must never drop the secret of the
//! last-resort KeyPackage: mls-rs deletes a KeyPackage's secret once it joins with it, but the
//! last-resort KeyPackage may be claimed again, so deleting it is a no-op.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use mls_rs::mls_rs_codec::{MlsDecode, MlsEncode};
use mls_rs::storage_provider::KeyPackageData;
use mls_rs::{GroupStateStorage, KeyPackageStorage};
use mls_rs_core::group::{EpochRecord, GroupState};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// How many prior epochs of each group are kept (late messages vs. forward secrecy).
pub const EPOCH_RETENTION: usize = 3;

/// Why the storage failed. Only a poisoned lock or an undecodable record can cause it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Internal: a thread panicked while holding the storage lock.
    #[error("storage lock poisoned")]
    Poisoned,
    /// Local: a stored record does not decode (corrupt or incompatible state).
    #[error("stored MLS record is corrupt")]
    Corrupt,
}

impl mls_rs::error::IntoAnyError for StorageError {
    fn into_dyn_error(self) -> Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoredEpoch {
    id: u64,
    #[serde(with = "sealgate_proto::b64")]
    data: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoredGroup {
    #[serde(with = "sealgate_proto::b64")]
    state: Vec<u8>,
    epochs: VecDeque<StoredEpoch>,
}

/// Everything mls-rs stores, in serializable form. Keys are hex of group ids and KeyPackage
/// references.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlsData {
    groups: BTreeMap<String, StoredGroup>,
    #[serde(default)]
    key_packages: BTreeMap<String, KeyPackageRecord>,
    /// Reference (hex) of the current last-resort KeyPackage, whose secret is never deleted.
    #[serde(default)]
    last_resort: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyPackageRecord {
    /// `KeyPackageData` in its MLS encoding.
    #[serde(with = "sealgate_proto::b64")]
    data: Vec<u8>,
    /// Unix seconds after which the KeyPackage is expired and can be pruned.
    expiration: u64,
}

/// A shared handle on [`MlsData`] implementing both mls-rs storage traits.
#[derive(Debug, Clone, Default)]
pub struct MlsStorage {
    inner: Arc<Mutex<MlsData>>,
}

impl MlsStorage {
    pub fn new(data: MlsData) -> Self {
        Self {
            inner: Arc::new(Mutex::new(data)),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, MlsData>, StorageError> {
        self.inner.lock().map_err(|_| StorageError::Poisoned)
    }

    /// A copy of everything, for sealing into the state file.
    pub fn snapshot(&self) -> Result<MlsData, StorageError> {
        Ok(self.lock()?.clone())
    }

    /// Mark `reference` as the last-resort KeyPackage (its secret survives joins) and drop
    /// the secret of the previous one.
    pub fn set_last_resort(&self, reference: &[u8]) -> Result<(), StorageError> {
        let mut data = self.lock()?;
        if let Some(old) = data.last_resort.take() {
            data.key_packages.remove(&old);
        }
        data.last_resort = Some(hex::encode(reference));
        Ok(())
    }

    /// Forget a group entirely (we were removed, or it was never valid).
    pub fn delete_group(&self, group_id: &[u8]) -> Result<(), StorageError> {
        self.lock()?.groups.remove(&hex::encode(group_id));
        Ok(())
    }

    /// Is there a stored state for this group?
    pub fn has_group(&self, group_id: &[u8]) -> Result<bool, StorageError> {
        Ok(self.lock()?.groups.contains_key(&hex::encode(group_id)))
    }

    /// How many KeyPackage secrets are held (one-time and last-resort).
    #[cfg(test)]
    pub fn key_package_count(&self) -> Result<usize, StorageError> {
        Ok(self.lock()?.key_packages.len())
    }

    /// Drop the secrets of KeyPackages expired before `now` (Unix seconds).
    pub fn prune_expired(&self, now: u64) -> Result<usize, StorageError> {
        let mut data = self.lock()?;
        let before = data.key_packages.len();
        data.key_packages.retain(|_, r| r.expiration > now);
        Ok(before - data.key_packages.len())
    }
}

impl GroupStateStorage for MlsStorage {
    type Error = StorageError;

    fn state(&self, group_id: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, Self::Error> {
        Ok(self
            .lock()?
            .groups
            .get(&hex::encode(group_id))
            .map(|g| g.state.clone().into()))
    }

    fn epoch(
        &self,
        group_id: &[u8],
        epoch_id: u64,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, Self::Error> {
        Ok(self
            .lock()?
            .groups
            .get(&hex::encode(group_id))
            .and_then(|g| g.epochs.iter().find(|e| e.id == epoch_id))
            .map(|e| e.data.clone().into()))
    }

    fn write(
        &mut self,
        state: GroupState,
        epoch_inserts: Vec<EpochRecord>,
        epoch_updates: Vec<EpochRecord>,
    ) -> Result<(), Self::Error> {
        let mut data = self.lock()?;
        let group = data.groups.entry(hex::encode(&state.id)).or_default();
        group.state = state.data.to_vec();
        for e in epoch_inserts {
            group.epochs.retain(|old| old.id != e.id);
            group.epochs.push_back(StoredEpoch {
                id: e.id,
                data: e.data.to_vec(),
            });
        }
        for e in epoch_updates {
            if let Some(old) = group.epochs.iter_mut().find(|old| old.id == e.id) {
                old.data = e.data.to_vec();
            }
        }
        while group.epochs.len() > EPOCH_RETENTION {
            group.epochs.pop_front();
        }
        Ok(())
    }

    fn max_epoch_id(&self, group_id: &[u8]) -> Result<Option<u64>, Self::Error> {
        Ok(self
            .lock()?
            .groups
            .get(&hex::encode(group_id))
            .and_then(|g| g.epochs.iter().map(|e| e.id).max()))
    }
}

impl KeyPackageStorage for MlsStorage {
    type Error = StorageError;

    fn delete(&mut self, id: &[u8]) -> Result<(), Self::Error> {
        let mut data = self.lock()?;
        let key = hex::encode(id);
        if data.last_resort.as_deref() != Some(key.as_str()) {
            data.key_packages.remove(&key);
        }
        Ok(())
    }

    fn insert(&mut self, id: Vec<u8>, pkg: KeyPackageData) -> Result<(), Self::Error> {
        let encoded = pkg.mls_encode_to_vec().map_err(|_| StorageError::Corrupt)?;
        self.lock()?.key_packages.insert(
            hex::encode(id),
            KeyPackageRecord {
                data: encoded,
                expiration: pkg.expiration,
            },
        );
        Ok(())
    }

    fn get(&self, id: &[u8]) -> Result<Option<KeyPackageData>, Self::Error> {
        let data = self.lock()?;
        data.key_packages
            .get(&hex::encode(id))
            .map(|r| KeyPackageData::mls_decode(&mut r.data.as_slice()))
            .transpose()
            .map_err(|_| StorageError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &[u8], data: &[u8]) -> GroupState {
        GroupState {
            id: id.to_vec(),
            data: data.to_vec().into(),
        }
    }

    fn epoch(id: u64) -> EpochRecord {
        EpochRecord::new(id, vec![id as u8; 4].into())
    }

    #[test]
    fn group_state_round_trips_through_serde_and_trims_epochs() {
        let mut store = MlsStorage::default();
        store
            .write(state(b"g1", b"s0"), vec![epoch(0), epoch(1)], vec![])
            .unwrap();
        store
            .write(state(b"g1", b"s1"), vec![epoch(2), epoch(3)], vec![])
            .unwrap();
        // Oldest epoch dropped once more than EPOCH_RETENTION are held.
        assert_eq!(store.epoch(b"g1", 0).unwrap(), None);
        assert_eq!(store.epoch(b"g1", 3).unwrap().unwrap().to_vec(), vec![3; 4]);
        assert_eq!(store.max_epoch_id(b"g1").unwrap(), Some(3));
        store
            .write(
                state(b"g1", b"s2"),
                vec![],
                vec![EpochRecord::new(2, vec![9].into())],
            )
            .unwrap();

        let json = serde_json::to_string(&store.snapshot().unwrap()).unwrap();
        let back = MlsStorage::new(serde_json::from_str(&json).unwrap());
        assert_eq!(back.state(b"g1").unwrap().unwrap().to_vec(), b"s2");
        assert_eq!(back.epoch(b"g1", 2).unwrap().unwrap().to_vec(), vec![9]);
        assert_eq!(back.state(b"g2").unwrap(), None);
        assert!(back.has_group(b"g1").unwrap());
        back.delete_group(b"g1").unwrap();
        assert!(!back.has_group(b"g1").unwrap());
    }

    #[test]
    fn clones_share_data() {
        let mut a = MlsStorage::default();
        let b = a.clone();
        a.write(state(b"g", b"x"), vec![], vec![]).unwrap();
        assert!(b.has_group(b"g").unwrap());
    }
}
