//! HMAC signatures on webhooks, both ways: the gateway signs the status callbacks it posts to
//! tenants (`X-Sealgate-Signature: sha256=<hex HMAC-SHA256>`) and verifies the receipts the
//! RCS aggregator posts to it (`X-Goog-Signature: <base64 HMAC-SHA512>`, as Google RBM does).
//!
//! Verification is constant-time (aws-lc's `hmac::verify`). This module must never log a
//! secret or a signature.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// `sha256=<hex>` of HMAC-SHA256(`secret`, `body`): the value of `X-Sealgate-Signature`.
pub fn sign_callback(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// Check an `X-Sealgate-Signature` value (what a tenant does; used by tests and the SDK).
pub fn verify_callback(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(tag) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, body, &tag).is_ok()
}

/// Base64 HMAC-SHA512(`secret`, `body`): the value of `X-Goog-Signature`.
pub fn sign_carrier(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA512, secret.as_bytes());
    STANDARD.encode(hmac::sign(&key, body).as_ref())
}

/// Check an `X-Goog-Signature` value against the raw body.
pub fn verify_carrier(secret: &str, body: &[u8], header: &str) -> bool {
    let Ok(tag) = STANDARD.decode(header.trim()) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA512, secret.as_bytes());
    hmac::verify(&key, body, &tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_and_reject_tampering() {
        let s = sign_callback("k", b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        assert!(verify_callback("k", b"{}", &s));
        assert!(!verify_callback("k", b"{ }", &s));
        assert!(!verify_callback("other", b"{}", &s));
        let g = sign_carrier("k", b"body");
        assert!(verify_carrier("k", b"body", &g));
        assert!(!verify_carrier("k", b"bodz", &g));
        assert!(!verify_carrier("k", b"body", "not base64!"));
        assert!(!verify_carrier("k", b"body", ""));
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231 test case 2.
        let key = "Jefe";
        let s = sign_callback(key, b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
