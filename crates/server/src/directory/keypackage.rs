//! Checks a published KeyPackage before the directory stores it: decodable `MLSMessage`,
//! Sealgate's cipher suite, a credential naming exactly the publishing device, the device's
//! registered signature key, a valid signature and current lifetime, and a lifetime no longer
//! than stricter MLS peers accept.
//!
//! This is the directory's half of identity binding: it must never accept a KeyPackage whose
//! leaf could let one device speak under another device's (or user's) name.

use mls_rs::group::{LeafNode, LeafNodeSource};
use mls_rs::mls_rs_codec::{MlsDecode, MlsEncode};
use mls_rs::{CipherSuite, CryptoProvider, MlsMessage};
use mls_rs_crypto_awslc::AwsLcCryptoProvider;
use sealgate_proto::{CIPHER_SUITE, DeviceIdentity, ErrorCode, MAX_KEY_PACKAGE_LIFETIME_SECS};

use super::store::NewKeyPackage;
use crate::error::ApiError;

/// Slack on top of [`MAX_KEY_PACKAGE_LIFETIME_SECS`] for clock skew (OpenMLS allows the same).
pub const LIFETIME_SLACK_SECS: u64 = 3600;

/// Why a KeyPackage was refused. Always the publisher's fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyPackageError {
    /// The bytes are not an `MLSMessage`, or not one carrying a KeyPackage.
    #[error("not an MLS KeyPackage message: {0}")]
    Malformed(String),
    /// The credential or signature key is not the publishing device's.
    #[error("{0}")]
    IdentityMismatch(&'static str),
    /// Wrong cipher suite, bad signature, expired, lifetime too long, ...
    #[error("{0}")]
    Invalid(String),
}

impl From<KeyPackageError> for ApiError {
    fn from(e: KeyPackageError) -> Self {
        let code = match e {
            KeyPackageError::Malformed(_) => ErrorCode::MalformedMls,
            KeyPackageError::IdentityMismatch(_) => ErrorCode::IdentityMismatch,
            KeyPackageError::Invalid(_) => ErrorCode::InvalidKeyPackage,
        };
        ApiError::new(code, e.to_string())
    }
}

/// Validate `bytes` as a KeyPackage of `device` with signature key `signature_key`; return
/// what the store keeps.
pub fn validate(
    bytes: &[u8],
    device: &DeviceIdentity,
    signature_key: &[u8],
) -> Result<NewKeyPackage, KeyPackageError> {
    let message =
        MlsMessage::from_bytes(bytes).map_err(|e| KeyPackageError::Malformed(e.to_string()))?;
    let key_package = message
        .as_key_package()
        .ok_or_else(|| KeyPackageError::Malformed("not a KeyPackage".into()))?;
    if key_package.cipher_suite() != CipherSuite::new(CIPHER_SUITE) {
        return Err(KeyPackageError::Invalid(format!(
            "cipher suite {} is not the required {CIPHER_SUITE}",
            u16::from(key_package.cipher_suite())
        )));
    }
    let leaf = key_package.signing_identity();
    if crate::mls::leaf_identity(leaf).as_ref() != Some(device) {
        return Err(KeyPackageError::IdentityMismatch(
            "the credential does not name the publishing device",
        ));
    }
    if leaf.signature_key.as_ref() != signature_key {
        return Err(KeyPackageError::IdentityMismatch(
            "the signature key is not the device's registered key",
        ));
    }
    let (not_before, not_after) = lifetime(key_package)?;
    if not_after.saturating_sub(not_before) > MAX_KEY_PACKAGE_LIFETIME_SECS + LIFETIME_SLACK_SECS {
        return Err(KeyPackageError::Invalid(format!(
            "lifetime exceeds {MAX_KEY_PACKAGE_LIFETIME_SECS} s"
        )));
    }
    let provider = AwsLcCryptoProvider::default();
    let suite = provider
        .cipher_suite_provider(key_package.cipher_suite())
        .ok_or_else(|| KeyPackageError::Invalid("unsupported cipher suite".into()))?;
    let kp_ref = message
        .key_package_reference(&suite)
        .map_err(|e| KeyPackageError::Invalid(e.to_string()))?
        .ok_or_else(|| KeyPackageError::Malformed("not a KeyPackage".into()))?;
    // Signature, lifetime against the current time, capabilities, extensions.
    crate::mls::external_client()
        .validate_key_package(message, None)
        .map_err(|e| KeyPackageError::Invalid(e.to_string()))?;
    Ok(NewKeyPackage {
        kp_ref: kp_ref.to_vec(),
        data: bytes.to_vec(),
        expires_at: i64::try_from(not_after).unwrap_or(i64::MAX),
    })
}

/// `(not_before, not_after)` of the KeyPackage's leaf, in Unix seconds. mls-rs keeps the leaf
/// node private inside a KeyPackage, so read it back from the encoding: version (u16), cipher
/// suite (u16), init key (opaque vector), then the LeafNode.
fn lifetime(key_package: &mls_rs::KeyPackage) -> Result<(u64, u64), KeyPackageError> {
    let encoded = key_package
        .mls_encode_to_vec()
        .map_err(|e| KeyPackageError::Malformed(e.to_string()))?;
    let mut reader = encoded.get(4..).unwrap_or_default();
    let malformed = |e: mls_rs::mls_rs_codec::Error| KeyPackageError::Malformed(e.to_string());
    mls_rs::crypto::HpkePublicKey::mls_decode(&mut reader).map_err(malformed)?;
    let leaf = LeafNode::mls_decode(&mut reader).map_err(malformed)?;
    match leaf.leaf_node_source {
        LeafNodeSource::KeyPackage(lifetime) => Ok((
            lifetime.not_before.seconds_since_epoch(),
            lifetime.not_after.seconds_since_epoch(),
        )),
        _ => Err(KeyPackageError::Invalid(
            "leaf node source is not key_package".into(),
        )),
    }
}
