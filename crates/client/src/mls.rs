//! The MLS protocol core: how this device's mls-rs client is configured, and the small helpers
//! the orchestration needs (KeyPackages, rosters, the conversation-kind marker).
//!
//! Sealgate speaks exactly one cipher suite (`MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`,
//! 0x0001) through aws-lc-rs, basic credentials carrying the directory identity, KeyPackages
//! that live 28 days (≤ 84 days so stricter peers accept them), commits as PublicMessage so the
//! delivery service can follow groups, and Welcomes carrying the ratchet tree (both mls-rs
//! defaults). This module does no I/O and must never enable encrypted handshake messages.

use std::time::Duration;

use mls_rs::client_builder::{
    BaseConfig, WithCryptoProvider, WithGroupStateStorage, WithIdentityProvider, WithKeyPackageRepo,
};
use mls_rs::extension::ExtensionType;
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::{
    CipherSuite, CipherSuiteProvider, CryptoProvider, Extension, ExtensionList, MlsMessage,
};
use mls_rs_crypto_awslc::AwsLcCryptoProvider;
use sealgate_proto::DeviceIdentity;

use crate::error::{Error, Result};
use crate::storage::MlsStorage;

/// The one cipher suite (RFC 9420 §17.1, 0x0001).
pub const SUITE: CipherSuite = CipherSuite::CURVE25519_AES128;

/// Lifetime of the KeyPackages this device issues.
pub const KEY_PACKAGE_LIFETIME: Duration = Duration::from_secs(28 * 24 * 3600);

/// Private-use GroupInfo extension (carried inside the encrypted Welcome) telling joiners
/// whether the group is a 1:1 conversation. Unknown GroupInfo extensions are ignored by other
/// RFC 9420 clients, so it costs interop nothing.
pub const CONVERSATION_KIND_EXT: u16 = 0xF5A1;

/// The mls-rs configuration of a Sealgate device.
pub type SealConfig = WithCryptoProvider<
    AwsLcCryptoProvider,
    WithIdentityProvider<
        BasicIdentityProvider,
        WithGroupStateStorage<MlsStorage, WithKeyPackageRepo<MlsStorage, BaseConfig>>,
    >,
>;
/// An mls-rs client configured for Sealgate.
pub type MlsClient = mls_rs::Client<SealConfig>;
/// An mls-rs group of that client.
pub type MlsGroup = mls_rs::Group<SealConfig>;

fn cipher_suite() -> Result<impl CipherSuiteProvider> {
    AwsLcCryptoProvider::default()
        .cipher_suite_provider(SUITE)
        .ok_or_else(|| Error::Crypto("cipher suite 1 unavailable".into()))
}

/// A fresh Ed25519 signing key pair: (secret, raw 32-byte public key).
pub fn generate_signing_key() -> Result<(Vec<u8>, Vec<u8>)> {
    let (secret, public) = cipher_suite()?
        .signature_key_generate()
        .map_err(|e| Error::Crypto(format!("signature key generation: {e:?}")))?;
    Ok((secret.as_bytes().to_vec(), public.as_bytes().to_vec()))
}

/// Build this device's client over `storage`.
pub fn build_client(
    storage: MlsStorage,
    credential_identity: &[u8],
    signing_secret: &[u8],
    signing_public: &[u8],
) -> MlsClient {
    let identity = SigningIdentity::new(
        BasicCredential::new(credential_identity.to_vec()).into_credential(),
        signing_public.to_vec().into(),
    );
    mls_rs::Client::builder()
        .crypto_provider(AwsLcCryptoProvider::default())
        .identity_provider(BasicIdentityProvider::new())
        .key_package_repo(storage.clone())
        .group_state_storage(storage)
        .key_package_lifetime(KEY_PACKAGE_LIFETIME)
        .signing_identity(identity, signing_secret.to_vec().into(), SUITE)
        .build()
}

/// `n` one-time KeyPackages (`MLSMessage` bytes); their secrets go into the client's storage.
pub fn generate_key_packages(client: &MlsClient, n: usize) -> Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|_| {
            client
                .generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)?
                .to_bytes()
                .map_err(Error::from)
        })
        .collect()
}

/// A last-resort KeyPackage; its secret is marked to survive joins.
pub fn generate_last_resort(client: &MlsClient, storage: &MlsStorage) -> Result<Vec<u8>> {
    let message =
        client.generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)?;
    let reference = message
        .as_key_package()
        .ok_or_else(|| Error::Crypto("generated KeyPackage is not a KeyPackage".into()))?
        .to_reference(&cipher_suite()?)?;
    storage
        .set_last_resort(&reference)
        .map_err(|e| Error::CorruptState(e.to_string()))?;
    Ok(message.to_bytes()?)
}

/// The signing identity of a KeyPackage message, after checking it is one of our suite.
pub fn key_package_identity(message: &MlsMessage) -> Result<&SigningIdentity> {
    let kp = message
        .as_key_package()
        .ok_or_else(|| Error::BadResponse("claimed item is not a KeyPackage".into()))?;
    if kp.cipher_suite() != SUITE {
        return Err(Error::BadResponse(
            "claimed KeyPackage uses another cipher suite".into(),
        ));
    }
    Ok(kp.signing_identity())
}

/// Decode an `MLSMessage` received from the server.
pub fn decode(bytes: &[u8]) -> Result<MlsMessage> {
    MlsMessage::from_bytes(bytes).map_err(|e| Error::BadResponse(format!("bad MLS message: {e}")))
}

/// One member of a group, as its credential names it (verified at join/add time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    pub index: u32,
    pub identity: Option<DeviceIdentity>,
    pub signing: SigningIdentity,
}

/// Every leaf of the group with the identity its credential claims.
pub fn roster(group: &MlsGroup) -> Vec<RosterEntry> {
    group
        .roster()
        .members_iter()
        .map(|m| RosterEntry {
            index: m.index,
            identity: crate::verify::claimed_identity(&m.signing_identity).ok(),
            signing: m.signing_identity,
        })
        .collect()
}

/// The distinct users of a roster, sorted.
pub fn users(roster: &[RosterEntry]) -> Vec<String> {
    let mut users: Vec<String> = roster
        .iter()
        .filter_map(|e| e.identity.as_ref().map(|i| i.user_id.clone()))
        .collect();
    users.sort();
    users.dedup();
    users
}

/// GroupInfo extensions marking a conversation as 1:1 (`direct`) or a group.
pub fn conversation_kind_ext(direct: bool) -> ExtensionList {
    let mut list = ExtensionList::new();
    list.set(Extension::new(
        ExtensionType::new(CONVERSATION_KIND_EXT),
        vec![u8::from(direct)],
    ));
    list
}

/// Whether the Welcome's GroupInfo extensions mark the conversation as 1:1.
pub fn is_direct(extensions: &ExtensionList) -> bool {
    extensions
        .get(ExtensionType::new(CONVERSATION_KIND_EXT))
        .is_some_and(|e| e.extension_data == [1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_packages_carry_identity_suite_and_short_lifetime() {
        let storage = MlsStorage::default();
        let (secret, public) = generate_signing_key().unwrap();
        assert_eq!(public.len(), 32);
        let id = b"sealgate:v1:t1:alice:dv-a";
        let client = build_client(storage.clone(), id, &secret, &public);
        let kps = generate_key_packages(&client, 3).unwrap();
        assert_eq!(kps.len(), 3);
        let last = generate_last_resort(&client, &storage).unwrap();
        assert_eq!(storage.key_package_count().unwrap(), 4);

        let msg = decode(&last).unwrap();
        let identity = key_package_identity(&msg).unwrap();
        assert_eq!(identity.signature_key.as_bytes(), public.as_slice());
        assert_eq!(
            identity
                .credential
                .as_basic()
                .unwrap()
                .identifier
                .as_slice(),
            id
        );
        let kp = msg.as_key_package().unwrap();
        let not_after = kp.expiration().unwrap().seconds_since_epoch();
        let now = mls_rs::time::MlsTime::now().seconds_since_epoch();
        assert!(not_after <= now + sealgate_proto::MAX_KEY_PACKAGE_LIFETIME_SECS);
        assert!(not_after > now + 20 * 24 * 3600);
    }

    #[test]
    fn conversation_kind_marker_round_trips() {
        assert!(is_direct(&conversation_kind_ext(true)));
        assert!(!is_direct(&conversation_kind_ext(false)));
        assert!(!is_direct(&ExtensionList::new()));
    }
}
