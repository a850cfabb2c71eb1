//! The gateway's view of MLS: an mls-rs `ExternalClient` that can validate KeyPackages and
//! follow groups as a non-member, plus helpers to read the Sealgate identity out of a leaf.
//!
//! The gateway holds no MLS secrets and must never be made a group member: it sees only the
//! public parts of RFC 9420 messages (KeyPackages, GroupInfo, PublicMessage commits, the
//! cleartext header of PrivateMessages).

use mls_rs::external_client::ExternalClient;
use mls_rs::external_client::builder::{
    ExternalBaseConfig, WithCryptoProvider, WithIdentityProvider,
};
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::BasicIdentityProvider;
use mls_rs_crypto_awslc::AwsLcCryptoProvider;
use sealgate_proto::DeviceIdentity;

/// The mls-rs configuration the gateway runs with.
pub type ServerMlsConfig = WithIdentityProvider<
    BasicIdentityProvider,
    WithCryptoProvider<AwsLcCryptoProvider, ExternalBaseConfig>,
>;

/// A fresh external client. Cheap; make one per operation rather than sharing one.
pub fn external_client() -> ExternalClient<ServerMlsConfig> {
    ExternalClient::builder()
        .crypto_provider(AwsLcCryptoProvider::default())
        .identity_provider(BasicIdentityProvider::new())
        .build()
}

/// The Sealgate identity a leaf's basic credential names, or `None` if it is not a basic
/// credential carrying a valid `sealgate:v1:` identity.
pub fn leaf_identity(signing_identity: &SigningIdentity) -> Option<DeviceIdentity> {
    let basic = signing_identity.credential.as_basic()?;
    DeviceIdentity::parse(&basic.identifier).ok()
}
