//! The identity a device's MLS credential carries, and the rules for user and device names.
//!
//! A Sealgate device's MLS leaf holds a basic credential whose identity bytes are
//! `sealgate:v1:{tenant_id}:{user_id}:{device_id}` in UTF-8. The gateway's key directory binds
//! that string to the device's registered signature key; the delivery service and every client
//! check it, so no one can join a conversation under another user's name. This module only
//! formats and parses; it never decides whether an identity is trusted.

use std::fmt;

const PREFIX: &str = "sealgate:v1:";

/// Who a device is: tenant, user within the tenant, and the device's own id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceIdentity {
    pub tenant_id: String,
    pub user_id: String,
    pub device_id: String,
}

/// Why a credential identity or a name was refused. Always the caller's (or peer's) fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not UTF-8 or do not start with `sealgate:v1:`.
    #[error("credential identity is not a sealgate v1 identity")]
    NotSealgate,
    /// One of the three parts is missing or not a valid name.
    #[error("credential identity has an invalid {0}")]
    InvalidPart(&'static str),
}

/// Is `name` a valid user id: 1–64 chars of lowercase ASCII letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit. Kept narrow so ids are safe in URLs, logs and identities.
pub fn valid_user_id(name: &str) -> bool {
    valid_id(name)
}

/// Tenant and device ids follow the same alphabet as user ids.
pub fn valid_id(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// Is `phone` an E.164 number: `+` then 8–15 digits, first digit not 0.
pub fn valid_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

impl DeviceIdentity {
    pub fn new(tenant_id: &str, user_id: &str, device_id: &str) -> Result<Self, IdentityError> {
        for (part, value) in [
            ("tenant", tenant_id),
            ("user", user_id),
            ("device", device_id),
        ] {
            if !valid_id(value) {
                return Err(IdentityError::InvalidPart(part));
            }
        }
        Ok(Self {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
        })
    }

    /// The bytes that go into the MLS basic credential.
    pub fn to_credential_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Parse credential identity bytes; strict, so two encodings can never name one device.
    pub fn parse(bytes: &[u8]) -> Result<Self, IdentityError> {
        let text = std::str::from_utf8(bytes).map_err(|_| IdentityError::NotSealgate)?;
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or(IdentityError::NotSealgate)?;
        let mut parts = rest.split(':');
        let (Some(t), Some(u), Some(d), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::NotSealgate);
        };
        Self::new(t, u, d)
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}:{}",
            self.tenant_id, self.user_id, self.device_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = DeviceIdentity::new("tn-1", "alice", "dv-9").unwrap();
        assert_eq!(id.to_string(), "sealgate:v1:tn-1:alice:dv-9");
        assert_eq!(
            DeviceIdentity::parse(&id.to_credential_bytes()).unwrap(),
            id
        );
    }

    #[test]
    fn rejects_ambiguous_or_foreign() {
        for bad in [
            &b"sealgate:v1:t:alice"[..],
            b"sealgate:v1:t:alice:d:x",
            b"sealgate:v2:t:alice:d",
            b"sealgate:v1:t:Alice:d",
            b"sealgate:v1:t::d",
            b"\xff\xfe",
            b"alice",
        ] {
            assert!(DeviceIdentity::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_and_phones() {
        assert!(valid_user_id("bob.smith-2"));
        assert!(!valid_user_id("-bob"));
        assert!(!valid_user_id("bob/x"));
        assert!(!valid_user_id(&"a".repeat(65)));
        assert!(valid_e164("+15551230001"));
        assert!(!valid_e164("15551230001"));
        assert!(!valid_e164("+0555123"));
    }
}
