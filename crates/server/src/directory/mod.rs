//! The key directory and tenant administration: tenants and API keys, users, enrollment
//! tokens, device registration, and the KeyPackage directory (publish, exactly-once claim,
//! last-resort fallback, stock, per-requester claim rate limits).
//!
//! It stores public material only (signature public keys, KeyPackages) and secret digests;
//! it must never store or log a private key or a secret in clear.

pub mod admin;
#[cfg(test)]
pub(crate) mod conformance;
pub mod keypackage;
pub mod limiter;
pub mod routes;
pub mod sqlite;
pub mod store;

pub use limiter::ClaimLimiter;
