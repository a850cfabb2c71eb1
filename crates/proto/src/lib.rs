#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod api;
pub mod attachment;
pub mod b64;
pub mod identity;
pub mod policy;
pub mod problem;
pub mod send;

pub use identity::{DeviceIdentity, IdentityError};
pub use problem::{ErrorCode, Problem};

/// The one MLS cipher suite Sealgate speaks today: `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`
/// (RFC 9420 §17.1, value 0x0001). Every KeyPackage and group must use it.
pub const CIPHER_SUITE: u16 = 1;

/// Longest lifetime a client may give a KeyPackage, in seconds (84 days, so stricter MLS peers
/// such as OpenMLS accept ours).
pub const MAX_KEY_PACKAGE_LIFETIME_SECS: u64 = 84 * 24 * 3600;
