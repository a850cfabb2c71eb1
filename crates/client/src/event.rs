//! What `receive` reports to the application: messages, membership changes, problems.
//!
//! Each event serializes to one flat JSON object (the `seal recv` output line). The sender of a
//! message is always the MLS sender's verified credential, never the mailbox envelope. Events
//! are the only place plaintext leaves the SDK; they must never be logged.

use serde::{Deserialize, Serialize};

use crate::attachment::AttachmentRef;

/// One thing that happened in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Event {
    /// A file (with an optional caption) from another device. First, so a persisted
    /// attachment event is never read back as a text message.
    Attachment(AttachmentMessage),
    /// A text message from another device.
    Message(TextMessage),
    /// Someone joined or left, or we did.
    Membership(MembershipChange),
    /// Something was refused or looks wrong.
    Problem(ProblemEvent),
}

/// `{"conversation","from","device","text","sent_at"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextMessage {
    pub conversation: String,
    pub from: String,
    pub device: String,
    pub text: String,
    pub sent_at: i64,
}

/// `{"conversation","from","device","attachment":{…},"text"?,"sent_at"}`. The attachment
/// carries its key: pass it to `SealClient::download_attachment`, and never print or log it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMessage {
    pub conversation: String,
    pub from: String,
    pub device: String,
    pub attachment: AttachmentRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub sent_at: i64,
}

/// Kinds of membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipKind {
    /// We joined the conversation through a Welcome.
    Joined,
    /// `member` was added by `by`.
    MemberAdded,
    /// `member` was removed by `by`.
    MemberRemoved,
    /// We were removed by `by`.
    Removed,
}

/// `{"conversation","event","member","by"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    pub conversation: String,
    pub event: MembershipKind,
    pub member: String,
    pub by: String,
}

/// Severity of a [`ProblemEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Something was refused (a join, a commit, a message).
    Error,
    /// Accepted, but suspicious (e.g. the envelope named another sender than MLS did).
    Warning,
}

/// `{"conversation","event":"error"|"warning","reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemEvent {
    pub conversation: String,
    pub event: ProblemKind,
    pub reason: String,
}

impl Event {
    pub(crate) fn error(conversation: &str, reason: impl Into<String>) -> Self {
        Event::Problem(ProblemEvent {
            conversation: conversation.to_owned(),
            event: ProblemKind::Error,
            reason: reason.into(),
        })
    }

    pub(crate) fn warning(conversation: &str, reason: impl Into<String>) -> Self {
        Event::Problem(ProblemEvent {
            conversation: conversation.to_owned(),
            event: ProblemKind::Warning,
            reason: reason.into(),
        })
    }

    pub(crate) fn membership(
        conversation: &str,
        event: MembershipKind,
        member: &str,
        by: &str,
    ) -> Self {
        Event::Membership(MembershipChange {
            conversation: conversation.to_owned(),
            event,
            member: member.to_owned(),
            by: by.to_owned(),
        })
    }

    /// The conversation the event belongs to.
    pub fn conversation(&self) -> &str {
        match self {
            Event::Attachment(a) => &a.conversation,
            Event::Message(m) => &m.conversation,
            Event::Membership(m) => &m.conversation,
            Event::Problem(p) => &p.conversation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes_match_the_cli_contract() {
        let m = Event::Message(TextMessage {
            conversation: "ab".into(),
            from: "bob".into(),
            device: "dv1".into(),
            text: "hi".into(),
            sent_at: 5,
        });
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"conversation":"ab","from":"bob","device":"dv1","text":"hi","sent_at":5}"#
        );
        let j = Event::membership("ab", MembershipKind::MemberAdded, "carol", "alice");
        assert_eq!(
            serde_json::to_string(&j).unwrap(),
            r#"{"conversation":"ab","event":"member_added","member":"carol","by":"alice"}"#
        );
        let e = Event::error("ab", "nope");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"conversation":"ab","event":"error","reason":"nope"}"#
        );
        let a = Event::Attachment(AttachmentMessage {
            conversation: "ab".into(),
            from: "bob".into(),
            device: "dv1".into(),
            attachment: AttachmentRef {
                attachment_id: "att_1".into(),
                name: "a.txt".into(),
                size: 1,
                media_type: "text/plain".into(),
                digest: format!("blake3:{}", "00".repeat(32)),
                cek: vec![0; 32],
                nonce_prefix: vec![0; 7],
                chunk_size: 1024,
                ciphertext_len: 17,
            },
            text: Some("hi".into()),
            sent_at: 5,
        });
        // Persisted events come back as the same variant.
        for ev in [a, m, j, e, Event::warning("ab", "w")] {
            let back: Event = serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
            assert_eq!(back, ev);
        }
    }
}
