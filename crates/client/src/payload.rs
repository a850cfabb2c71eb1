//! The plaintext format inside MLS application messages.
//!
//! A small JSON object tagged by `type`, so new kinds (receipts, ...) can be added without
//! breaking old readers: `{"type":"text","text":"…","sent_at":1700000000000}`, or
//! `{"type":"attachment","attachment_id","name","size","media_type","digest","cek",
//! "nonce_prefix","chunk_size","ciphertext_len","text"?,"sent_at"}` for a file (its key lives
//! only here, inside the MLS ciphertext).
//! Unknown types are reported, never guessed at. This module must never log what it decodes.

use serde::{Deserialize, Serialize};

use crate::attachment::AttachmentRef;

/// Longest accepted text, in bytes (keeps one message well under the gateway's body limit).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// What a member sends inside an MLS application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Payload {
    /// A text message; `sent_at` is the sender's clock in Unix milliseconds.
    Text { text: String, sent_at: i64 },
    /// A file: the reference to its encrypted blob (with its key), and an optional caption.
    Attachment {
        #[serde(flatten)]
        attachment: AttachmentRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        sent_at: i64,
    },
}

/// Why a decrypted payload could not be read. The peer's fault (or a newer peer).
#[derive(Debug, thiserror::Error)]
#[error("unreadable message payload: {0}")]
pub struct PayloadError(#[from] serde_json::Error);

impl Payload {
    pub fn text(text: impl Into<String>, sent_at: i64) -> Self {
        Payload::Text {
            text: text.into(),
            sent_at,
        }
    }

    pub fn attachment(attachment: AttachmentRef, text: Option<String>, sent_at: i64) -> Self {
        Payload::Attachment {
            attachment,
            text,
            sent_at,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing a plain enum of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_wire_format_is_stable() {
        let p = Payload::text("hi \"there\"", 1_700_000_000_123);
        assert_eq!(
            String::from_utf8(p.encode()).unwrap(),
            r#"{"type":"text","text":"hi \"there\"","sent_at":1700000000123}"#
        );
        assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn attachment_wire_format_is_stable() {
        let a = AttachmentRef {
            attachment_id: "att_1".into(),
            name: "report.pdf".into(),
            size: 3,
            media_type: "application/pdf".into(),
            digest: format!("blake3:{}", "ab".repeat(32)),
            cek: vec![1; 32],
            nonce_prefix: vec![2; 7],
            chunk_size: 65536,
            ciphertext_len: 19,
        };
        let p = Payload::attachment(a.clone(), None, 5);
        let json = String::from_utf8(p.encode()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"type":"attachment","attachment_id":"att_1","name":"report.pdf","size":3,"media_type":"application/pdf","digest":"blake3:{}","cek":"{}","nonce_prefix":"AgICAgICAg==","chunk_size":65536,"ciphertext_len":19,"sent_at":5}}"#,
                "ab".repeat(32),
                sealgate_proto::b64::encode(&[1; 32])
            )
        );
        assert_eq!(Payload::decode(json.as_bytes()).unwrap(), p);
        let with_text = Payload::attachment(a, Some("see attached".into()), 6);
        assert_eq!(Payload::decode(&with_text.encode()).unwrap(), with_text);
        assert!(
            !format!("{with_text:?}").contains("AQEB"),
            "Debug hides the key"
        );
    }

    #[test]
    fn unknown_or_malformed_payloads_are_errors() {
        assert!(Payload::decode(br#"{"type":"attachment","url":"x"}"#).is_err());
        assert!(Payload::decode(br#"{"type":"text","sent_at":1}"#).is_err());
        assert!(Payload::decode(b"\xff").is_err());
        // Extra fields from a newer sender are tolerated.
        let p =
            Payload::decode(br#"{"type":"text","text":"a","sent_at":2,"reply_to":"m1"}"#).unwrap();
        assert_eq!(p, Payload::text("a", 2));
    }
}
