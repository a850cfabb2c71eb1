//! The transports behind one trait: in-app mailbox (+ push wake-up), RCS aggregator, SMS
//! gateway, push service and tenant webhooks. A worker hands a transport one request and gets
//! back an ack, a transient error (retry later, maybe not before `retry_after`) or a
//! permanent one (with the reason the tenant sees).
//!
//! Transports never decide retries or touch the queue; they must never log bodies or full
//! phone numbers (use [`mask_phone`]). Every outgoing HTTP call carries the message's
//! correlation id as `X-Correlation-Id` and the message id as the provider's dedup key, so a
//! job delivered twice reaches the recipient once.

pub mod carrier;
pub mod inapp;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::store::OutboundMessage;

/// Which transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Inapp,
    Rcs,
    Sms,
    Push,
    Webhook,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Inapp => "inapp",
            TransportKind::Rcs => "rcs",
            TransportKind::Sms => "sms",
            TransportKind::Push => "push",
            TransportKind::Webhook => "webhook",
        }
    }
}

/// What a transport is asked to do.
#[derive(Debug, Clone)]
pub enum TransportRequest {
    /// Deliver a business message.
    Message(Box<OutboundMessage>),
    /// Post a signed status callback to a tenant.
    Callback {
        url: String,
        secret: String,
        body: Vec<u8>,
        correlation_id: Option<String>,
    },
    /// Wake a device.
    Push {
        token: String,
        correlation_id: Option<String>,
    },
}

/// The transport took the message (carrier acked, stored in mailboxes, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportAck {
    /// The provider's id for the message, if it gave one.
    pub provider_id: Option<String>,
}

/// Kind of transient failure, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Timeout,
    Connect,
    Throttled,
    Server,
    Other,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Server => "server_error",
            ErrorClass::Other => "other",
        }
    }
}

/// Why a transport did not take the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Worth retrying (timeout, connection error, 5xx, 408, 429). `retry_after` is a lower
    /// bound for the next attempt when the provider named one.
    #[error("transient {} failure: {detail}", class.as_str())]
    Transient {
        class: ErrorClass,
        retry_after: Option<Duration>,
        detail: String,
    },
    /// Never going to work (4xx): the message fails with `reason`.
    #[error("permanent failure: {reason}")]
    Permanent { reason: String },
}

impl TransportError {
    pub fn permanent(reason: impl Into<String>) -> Self {
        TransportError::Permanent {
            reason: reason.into(),
        }
    }

    pub fn transient(class: ErrorClass, detail: impl Into<String>) -> Self {
        TransportError::Transient {
            class,
            retry_after: None,
            detail: detail.into(),
        }
    }
}

/// One transport.
#[async_trait]
pub trait Transport: Send + Sync {
    fn kind(&self) -> TransportKind;

    /// Deliver `request`. Implementations bound their own concurrency; the worker bounds the
    /// time.
    async fn send(&self, request: &TransportRequest) -> Result<TransportAck, TransportError>;

    /// Longest a single call may take before it counts as a timeout.
    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// The configured transports. A route whose transport is missing fails its messages with
/// `transport_not_configured`.
#[derive(Clone, Default)]
pub struct Transports {
    by_kind: HashMap<TransportKind, Arc<dyn Transport>>,
}

impl Transports {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a transport under its own kind.
    pub fn with(mut self, transport: Arc<dyn Transport>) -> Self {
        self.by_kind.insert(transport.kind(), transport);
        self
    }

    pub fn get(&self, kind: TransportKind) -> Option<&Arc<dyn Transport>> {
        self.by_kind.get(&kind)
    }
}

/// `+15551234567` → `+1555*****67`: enough to correlate, not enough to identify.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by our providers).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A reqwest failure before any response: timeouts and connection errors are transient.
pub fn request_error(e: &reqwest::Error) -> TransportError {
    let class = if e.is_timeout() {
        ErrorClass::Timeout
    } else if e.is_connect() {
        ErrorClass::Connect
    } else {
        ErrorClass::Other
    };
    // The error's Display may contain the URL (with a phone number in the path): keep only
    // its kind.
    TransportError::transient(class, format!("{} request failed", class.as_str()))
}

/// Transient outcomes common to every HTTP provider: 408, 429 and 5xx.
pub fn transient_status(status: StatusCode, headers: &HeaderMap) -> Option<TransportError> {
    let class = if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
    {
        ErrorClass::Throttled
    } else if status.is_server_error() {
        ErrorClass::Server
    } else {
        return None;
    };
    Some(TransportError::Transient {
        class,
        retry_after: retry_after(headers),
        detail: format!("HTTP {}", status.as_u16()),
    })
}

/// The `error.status` of a Google-style error body (`{"error":{"code","status","message"}}`)
/// and whether its message mentions `needle`.
pub fn google_error(body: &[u8], needle: &str) -> (Option<String>, bool) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let status = v["error"]["status"].as_str().map(str::to_owned);
    let mentions = v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.to_ascii_lowercase().contains(needle));
    (status, mentions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_masked() {
        assert_eq!(mask_phone("+15551234567"), "+1555*****67");
        assert!(!mask_phone("+15551234567").contains("1234"));
        assert_eq!(mask_phone("+123"), "****");
    }

    #[test]
    fn statuses_classify() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        match transient_status(StatusCode::TOO_MANY_REQUESTS, &h) {
            Some(TransportError::Transient {
                class: ErrorClass::Throttled,
                retry_after: Some(d),
                ..
            }) => assert_eq!(d, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
        assert!(transient_status(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()).is_some());
        assert!(transient_status(StatusCode::NOT_FOUND, &HeaderMap::new()).is_none());
        let (s, m) = google_error(
            br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"Number unreachable"}}"#,
            "unreachable",
        );
        assert_eq!(s.as_deref(), Some("INVALID_ARGUMENT"));
        assert!(m);
    }
}
