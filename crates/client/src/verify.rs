//! Checking a group member's MLS credential against the public key directory.
//!
//! MLS itself only proves that a leaf holds the private key of its signature key; it says
//! nothing about who that is. Sealgate binds `sealgate:v1:{tenant}:{user}:{device}` to the
//! device's registered Ed25519 key in the directory, and every client re-checks that binding for
//! every member it sees, so a server or a peer cannot slip a device in under another user's
//! name. This module is pure: it decides from the credential and a directory entry, and never
//! fetches anything or trusts anything else (in particular not the mailbox envelope).

use mls_rs::identity::SigningIdentity;
use sealgate_proto::DeviceIdentity;
use sealgate_proto::api::UserInfo;

/// Why a member was refused. Always the peer's (or the server's) fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The credential is not a basic credential.
    #[error("credential is not a basic credential")]
    NotBasic,
    /// The basic credential's identity is not a sealgate v1 identity.
    #[error("credential identity is not a sealgate identity")]
    NotSealgate,
    /// The credential names another tenant.
    #[error("credential belongs to tenant {found}, not {expected}")]
    WrongTenant { expected: String, found: String },
    /// The credential names another user than the one we asked for.
    #[error("credential names user {found}, expected {expected}")]
    WrongUser { expected: String, found: String },
    /// The directory has no such device for that user.
    #[error("device {device} of user {user} is not in the directory")]
    UnknownDevice { user: String, device: String },
    /// The device was revoked.
    #[error("device {device} of user {user} is revoked")]
    Revoked { user: String, device: String },
    /// The leaf's signature key is not the one the directory holds for that device.
    #[error("signature key of {user}/{device} does not match the directory")]
    KeyMismatch { user: String, device: String },
}

/// The identity a leaf's credential claims, parsed but not yet trusted.
pub fn claimed_identity(identity: &SigningIdentity) -> Result<DeviceIdentity, VerifyError> {
    let basic = identity
        .credential
        .as_basic()
        .ok_or(VerifyError::NotBasic)?;
    DeviceIdentity::parse(&basic.identifier).map_err(|_| VerifyError::NotSealgate)
}

/// Check a leaf's credential: it must parse as a device of `tenant_id` (and of `expected_user`
/// when given), and `directory` (the entry of the user it names) must list that device,
/// unrevoked, with the very same signature key. Returns the verified identity.
pub fn verify_member(
    identity: &SigningIdentity,
    tenant_id: &str,
    expected_user: Option<&str>,
    directory: &UserInfo,
) -> Result<DeviceIdentity, VerifyError> {
    let claimed = claimed_identity(identity)?;
    if claimed.tenant_id != tenant_id {
        return Err(VerifyError::WrongTenant {
            expected: tenant_id.to_owned(),
            found: claimed.tenant_id,
        });
    }
    if let Some(expected) = expected_user
        && claimed.user_id != expected
    {
        return Err(VerifyError::WrongUser {
            expected: expected.to_owned(),
            found: claimed.user_id,
        });
    }
    if directory.user != claimed.user_id {
        return Err(VerifyError::WrongUser {
            expected: directory.user.clone(),
            found: claimed.user_id,
        });
    }
    let device = directory
        .devices
        .iter()
        .find(|d| d.device_id == claimed.device_id && d.user == claimed.user_id)
        .ok_or_else(|| VerifyError::UnknownDevice {
            user: claimed.user_id.clone(),
            device: claimed.device_id.clone(),
        })?;
    if device.revoked_at.is_some() {
        return Err(VerifyError::Revoked {
            user: claimed.user_id,
            device: claimed.device_id,
        });
    }
    if device.signature_key.as_slice() != identity.signature_key.as_bytes() {
        return Err(VerifyError::KeyMismatch {
            user: claimed.user_id,
            device: claimed.device_id,
        });
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mls::{self, SUITE};
    use mls_rs::CipherSuiteProvider;
    use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
    use mls_rs::{CryptoProvider, ExtensionList, MlsMessage};
    use mls_rs_crypto_awslc::AwsLcCryptoProvider;
    use sealgate_proto::api::DeviceInfo;

    /// A KeyPackage built by a raw mls-rs client, outside the SDK, claiming `identity`.
    fn raw_key_package(identity: &str) -> (MlsMessage, Vec<u8>) {
        let crypto = AwsLcCryptoProvider::default();
        let cs = crypto.cipher_suite_provider(SUITE).unwrap();
        let (secret, public) = cs.signature_key_generate().unwrap();
        let signing = SigningIdentity::new(
            BasicCredential::new(identity.as_bytes().to_vec()).into_credential(),
            public.clone(),
        );
        let client = mls_rs::Client::builder()
            .crypto_provider(crypto)
            .identity_provider(BasicIdentityProvider::new())
            .signing_identity(signing, secret, SUITE)
            .build();
        let kp = client
            .generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)
            .unwrap();
        (kp, public.as_bytes().to_vec())
    }

    fn directory(user: &str, device: &str, key: &[u8]) -> UserInfo {
        UserInfo {
            user: user.into(),
            phone: None,
            devices: vec![DeviceInfo {
                device_id: device.into(),
                user: user.into(),
                signature_key: key.to_vec(),
                name: None,
                created_at: 0,
                revoked_at: None,
            }],
        }
    }

    fn leaf(kp: &MlsMessage) -> &SigningIdentity {
        kp.as_key_package().unwrap().signing_identity()
    }

    #[test]
    fn honest_device_passes() {
        let (kp, key) = raw_key_package("sealgate:v1:t1:bob:dv-b");
        let id = verify_member(
            leaf(&kp),
            "t1",
            Some("bob"),
            &directory("bob", "dv-b", &key),
        )
        .unwrap();
        assert_eq!(id.user_id, "bob");
        assert_eq!(id.device_id, "dv-b");
        // The decoded wire form carries the same identity.
        let bytes = kp.to_bytes().unwrap();
        let back = MlsMessage::from_bytes(&bytes).unwrap();
        assert!(mls::key_package_identity(&back).is_ok());
    }

    #[test]
    fn mallory_claiming_bob_with_her_own_key_is_refused() {
        // Mallory builds a KeyPackage naming bob's real device, signed with her key.
        let (_, bob_key) = raw_key_package("sealgate:v1:t1:bob:dv-b");
        let (forged, _) = raw_key_package("sealgate:v1:t1:bob:dv-b");
        let err = verify_member(
            leaf(&forged),
            "t1",
            Some("bob"),
            &directory("bob", "dv-b", &bob_key),
        )
        .unwrap_err();
        assert!(matches!(err, VerifyError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn credential_for_another_user_is_refused() {
        // Served when we claimed bob, but the credential says mallory.
        let (kp, key) = raw_key_package("sealgate:v1:t1:mallory:dv-m");
        let err = verify_member(
            leaf(&kp),
            "t1",
            Some("bob"),
            &directory("mallory", "dv-m", &key),
        )
        .unwrap_err();
        assert!(matches!(err, VerifyError::WrongUser { .. }));
        // And a directory entry of another user cannot vouch for it.
        let err =
            verify_member(leaf(&kp), "t1", None, &directory("bob", "dv-m", &key)).unwrap_err();
        assert!(matches!(err, VerifyError::WrongUser { .. }));
    }

    #[test]
    fn other_tenant_unknown_revoked_and_foreign_are_refused() {
        let (kp, key) = raw_key_package("sealgate:v1:t2:bob:dv-b");
        assert!(matches!(
            verify_member(
                leaf(&kp),
                "t1",
                Some("bob"),
                &directory("bob", "dv-b", &key)
            ),
            Err(VerifyError::WrongTenant { .. })
        ));

        let (kp, key) = raw_key_package("sealgate:v1:t1:bob:dv-x");
        assert!(matches!(
            verify_member(
                leaf(&kp),
                "t1",
                Some("bob"),
                &directory("bob", "dv-b", &key)
            ),
            Err(VerifyError::UnknownDevice { .. })
        ));

        let mut revoked = directory("bob", "dv-x", &key);
        revoked.devices[0].revoked_at = Some(5);
        assert!(matches!(
            verify_member(leaf(&kp), "t1", Some("bob"), &revoked),
            Err(VerifyError::Revoked { .. })
        ));

        let (kp, key) = raw_key_package("bob");
        assert!(matches!(
            verify_member(
                leaf(&kp),
                "t1",
                Some("bob"),
                &directory("bob", "dv-b", &key)
            ),
            Err(VerifyError::NotSealgate)
        ));
    }
}
