//! JSON bodies of the business send API (`POST /v1/messages`, `GET /v1/messages/{id}`,
//! `PUT /v1/callbacks`), the status callback the gateway posts to tenants, the carrier receipt
//! webhook, and the operator's dead-letter list.
//!
//! A send body is one of: an MLS `PrivateMessage` for an existing conversation (delivered to
//! the recipient's devices through the in-app mailbox), an opaque end-to-end encrypted payload
//! for the RCS route, or a plaintext fallback text (SMS, or RCS without E2EE) where the
//! tenant's policy allows it. Status views never carry the body back.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Header carrying the client's idempotency key on `POST /v1/messages`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header carrying the HMAC-SHA256 signature of a status callback (`sha256=<hex>`).
pub const CALLBACK_SIGNATURE_HEADER: &str = "x-sealgate-signature";
/// Header carrying the aggregator's base64 HMAC-SHA512 signature of a receipt webhook.
pub const CARRIER_SIGNATURE_HEADER: &str = "x-goog-signature";
/// Header carrying the correlation id from the API request to each transport call.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// The message class: decides the retry window and, later, the tenant policy that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageClass {
    Transactional,
    Sensitive,
    Marketing,
}

impl MessageClass {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageClass::Transactional => "transactional",
            MessageClass::Sensitive => "sensitive",
            MessageClass::Marketing => "marketing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "transactional" => Some(MessageClass::Transactional),
            "sensitive" => Some(MessageClass::Sensitive),
            "marketing" => Some(MessageClass::Marketing),
            _ => None,
        }
    }
}

/// The route a message takes to the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The recipient's device mailboxes in the delivery service (+ a push wake-up).
    Inapp,
    /// The RCS aggregator.
    Rcs,
    /// The SMS gateway.
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Inapp => "inapp",
            Channel::Rcs => "rcs",
            Channel::Sms => "sms",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inapp" => Some(Channel::Inapp),
            "rcs" => Some(Channel::Rcs),
            "sms" => Some(Channel::Sms),
            _ => None,
        }
    }
}

/// The channel of a plaintext fallback text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextChannel {
    Rcs,
    #[default]
    Sms,
}

/// An MLS application message for an existing conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MlsBody {
    /// Hex of the MLS group id of the conversation.
    pub conversation: String,
    /// A `PrivateMessage` `MLSMessage` of that group, base64.
    #[serde(with = "crate::b64")]
    #[schema(value_type = String, format = Byte)]
    pub message: Vec<u8>,
}

/// The body of a business message: exactly one of `mls`, `rcs_payload`, `text`,
/// `secure_link`, `redacted`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// E2EE through the in-app mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mls: Option<MlsBody>,
    /// Opaque end-to-end encrypted payload for the RCS route (the carrier's `e2eePayload`),
    /// base64.
    #[serde(
        default,
        with = "crate::b64::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = Byte)]
    pub rcs_payload: Option<Vec<u8>>,
    /// Plaintext fallback text (only where the tenant's policy allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// With `text`: `sms` (default) or `rcs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<TextChannel>,
    /// A secure link (`POST /v1/links`) to send as text over SMS or RCS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_link: Option<SecureLinkBody>,
    /// A text whose sensitive fields the sender removed (policy step `redacted_text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted: Option<RedactedBody>,
}

/// A secure-link notification. `text` carries the full link including its `#k=` fragment,
/// composed by the client: the gateway relays it to the carrier, checks that it points at
/// `link_id`, never logs it, and wipes it once sent. The ciphertext it unlocks is stored
/// apart, so neither the gateway's store nor the carrier holds both halves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecureLinkBody {
    pub link_id: String,
    pub channel: TextChannel,
    pub text: String,
}

/// A redacted text (sensitive template fields removed by the sender).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactedBody {
    pub text: String,
    #[serde(default)]
    pub channel: TextChannel,
}

/// `POST /v1/messages` (tenant API key, `Idempotency-Key` header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// An E.164 phone number (`+15551234567`) or a user id of the tenant.
    pub to: String,
    pub class: MessageClass,
    /// Seconds after acceptance when the message expires if not yet sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    pub body: MessageBody,
}

/// The delivery state of a message. States only move forward: `queued` → `sending` → `sent`
/// → `delivered` → `read`; `failed` and `expired` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Queued,
    Sending,
    Sent,
    Delivered,
    Read,
    Failed,
    Expired,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(MessageStatus::Queued),
            "sending" => Some(MessageStatus::Sending),
            "sent" => Some(MessageStatus::Sent),
            "delivered" => Some(MessageStatus::Delivered),
            "read" => Some(MessageStatus::Read),
            "failed" => Some(MessageStatus::Failed),
            "expired" => Some(MessageStatus::Expired),
            _ => None,
        }
    }

    /// Position on the forward-only path; `failed` and `expired` rank above everything
    /// before `delivered` (a message the carrier delivered cannot fail any more).
    pub fn rank(self) -> u8 {
        match self {
            MessageStatus::Queued => 0,
            MessageStatus::Sending => 1,
            MessageStatus::Sent => 2,
            MessageStatus::Failed | MessageStatus::Expired => 3,
            MessageStatus::Delivered => 4,
            MessageStatus::Read => 5,
        }
    }

    /// No further state can follow (`read`, `failed`, `expired`).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MessageStatus::Read | MessageStatus::Failed | MessageStatus::Expired
        )
    }

    /// May the message move from `self` to `next`?
    pub fn can_move_to(self, next: MessageStatus) -> bool {
        if matches!(self, MessageStatus::Failed | MessageStatus::Expired) {
            return false;
        }
        next.rank() > self.rank()
    }
}

/// `202` answer of `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SendAccepted {
    pub message_id: String,
    /// Always `queued`: the message is stored and its delivery job enqueued.
    pub status: MessageStatus,
}

/// Most messages in one `POST /v1/messages/batch`.
pub const MAX_BATCH_MESSAGES: usize = 500;

/// `POST /v1/messages/batch` (tenant API key): up to [`MAX_BATCH_MESSAGES`] sends in one
/// request, each with its own idempotency key. Each message is stored (with its job) or refused
/// on its own; a retry of the whole batch with the same keys is safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSendRequest {
    pub messages: Vec<BatchMessage>,
}

/// One message of a batch: a [`SendRequest`] with its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchMessage {
    /// 1 to 128 visible ASCII characters, per tenant, like the `Idempotency-Key` header.
    pub idempotency_key: String,
    /// An E.164 phone number (`+15551234567`) or a user id of the tenant.
    pub to: String,
    pub class: MessageClass,
    /// Seconds after acceptance when the message expires if not yet sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    pub body: MessageBody,
}

impl BatchMessage {
    /// Split into the key and the single-send request it stands for.
    pub fn into_parts(self) -> (String, SendRequest) {
        (
            self.idempotency_key,
            SendRequest {
                to: self.to,
                class: self.class,
                ttl_secs: self.ttl_secs,
                body: self.body,
            },
        )
    }
}

/// `200` answer of `POST /v1/messages/batch`: one result per message, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchSendResponse {
    /// Messages stored and queued (first accepts and replays of an earlier accept).
    pub accepted: u32,
    /// Messages refused; each result says why.
    pub refused: u32,
    pub results: Vec<BatchResult>,
}

/// The outcome of one message of a batch: `message_id` and `status` (`queued`) when it is
/// stored, or `error` (the problem a single `POST /v1/messages` would have answered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    pub idempotency_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MessageStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::Problem>,
}

/// One step of a message's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusEntry {
    pub status: MessageStatus,
    /// Unix milliseconds.
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/messages/{id}`: state and history, never the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    pub message_id: String,
    pub to: String,
    pub class: MessageClass,
    pub channel: Channel,
    pub status: MessageStatus,
    /// Why the message failed or expired (`rcs_not_capable`, `retry_window_exhausted`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Transport attempts so far.
    pub attempts: u32,
    pub history: Vec<StatusEntry>,
}

/// `PUT /v1/callbacks` (tenant API key): where status changes are posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// `http` or `https` URL.
    pub url: String,
    /// HMAC-SHA256 key for `X-Sealgate-Signature`; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The stored callback. `secret` is present only when the gateway generated it (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CallbackRegistered {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The JSON the gateway posts to a tenant's callback URL on every status change after
/// acceptance, signed with `X-Sealgate-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusCallback {
    pub message_id: String,
    pub status: MessageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

/// A receipt event of the RCS aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CarrierEventKind {
    Delivered,
    Read,
    Failed,
}

/// `POST /v1/webhooks/carrier`: a receipt from the aggregator, signed with
/// `X-Goog-Signature` (base64 HMAC-SHA512 of the raw body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CarrierEvent {
    /// Our message id (we send it as the carrier's `messageId` / `reference`).
    pub message_id: String,
    pub phone: String,
    pub channel: String,
    pub event: CarrierEventKind,
    /// RFC 3339 time of the event at the carrier.
    pub event_time: String,
    /// Unique per event; a repeated id is acknowledged and ignored.
    pub event_id: String,
}

/// A job that ran out of retries, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub dead_letter_id: i64,
    pub job_id: i64,
    /// `send`, `callback` or `push`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub tenant_id: String,
    pub attempts: u32,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the last replay, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetter>,
}

/// `POST /v1/admin/dead-letters/{id}/replay`: the new job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayResponse {
    pub job_id: i64,
}

/// `PUT /v1/devices/me/push-token` (device token): where push wake-ups go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushTokenRequest {
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shapes_parse() {
        let r: SendRequest = serde_json::from_str(
            r#"{"to":"+15551234567","class":"transactional","body":{"text":"hi","channel":"rcs"}}"#,
        )
        .unwrap();
        assert_eq!(r.body.text.as_deref(), Some("hi"));
        assert_eq!(r.body.channel, Some(TextChannel::Rcs));
        let r: SendRequest = serde_json::from_str(
            r#"{"to":"alice","class":"sensitive","ttl_secs":60,"body":{"mls":{"conversation":"ab","message":"AAE="}}}"#,
        )
        .unwrap();
        assert_eq!(r.body.mls.unwrap().message, vec![0, 1]);
        assert!(
            serde_json::from_str::<SendRequest>(
                r#"{"to":"x","class":"bulk","body":{"text":"hi"}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn states_only_move_forward() {
        use MessageStatus::*;
        assert!(Queued.can_move_to(Sending));
        assert!(Sent.can_move_to(Delivered));
        assert!(Sent.can_move_to(Read));
        assert!(!Read.can_move_to(Delivered));
        assert!(!Delivered.can_move_to(Failed));
        assert!(!Failed.can_move_to(Sent));
        assert!(!Expired.can_move_to(Delivered));
        assert!(Sending.can_move_to(Expired));
    }

    #[test]
    fn carrier_event_is_camel_case() {
        let e: CarrierEvent = serde_json::from_str(
            r#"{"messageId":"m","phone":"+1","channel":"rcs","event":"READ","eventTime":"t","eventId":"e"}"#,
        )
        .unwrap();
        assert_eq!(e.event, CarrierEventKind::Read);
    }
}
