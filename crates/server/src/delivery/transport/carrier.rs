//! HTTP transports to the phone network: the RCS aggregator (Google RBM / GSMA MaaP shaped),
//! the SMS gateway and the push service.
//!
//! The message id is the provider's dedup key (`messageId` / `reference`), so a job that is
//! delivered twice (a worker died after the provider acked) shows up once in the inbox. These
//! transports must never log bodies, tokens or full phone numbers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use sealgate_proto::send::CORRELATION_ID_HEADER;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{
    Transport, TransportAck, TransportError, TransportKind, TransportRequest, google_error,
    request_error, transient_status,
};
use crate::config::{PushConfig, RcsConfig, SmsConfig};
use crate::delivery::store::{OutboundMessage, PayloadKind};

/// What every HTTP provider transport shares: a client, a base URL, a bearer token, a time
/// limit and a concurrency limit.
struct Http {
    client: reqwest::Client,
    base: Url,
    token: String,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl Http {
    fn new(base_url: &str, token: &str, timeout_ms: u64, concurrency: usize) -> Option<Self> {
        let base = Url::parse(base_url).ok()?;
        Some(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_millis(timeout_ms))
                .build()
                .ok()?,
            base,
            token: token.to_owned(),
            timeout: Duration::from_millis(timeout_ms),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    /// `base` + path segments (each percent-encoded as needed).
    fn url(&self, segments: &[&str]) -> Result<Url, TransportError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| TransportError::permanent("transport_misconfigured"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// POST `body` and return status + body, or a transient error.
    async fn post(
        &self,
        url: Url,
        body: &serde_json::Value,
        correlation_id: Option<&str>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), TransportError> {
        let _permit =
            self.permits.acquire().await.map_err(|_| {
                TransportError::transient(super::ErrorClass::Other, "shutting down")
            })?;
        let mut req = self.client.post(url).bearer_auth(&self.token).json(body);
        if let Some(id) = correlation_id {
            req = req.header(CORRELATION_ID_HEADER, id);
        }
        let resp = req.send().await.map_err(|e| request_error(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| request_error(&e))?.to_vec();
        Ok((status, headers, body))
    }
}

fn text_of(m: &OutboundMessage) -> Result<String, TransportError> {
    String::from_utf8(m.payload.clone()).map_err(|_| TransportError::permanent("invalid_text"))
}

fn message_of(request: &TransportRequest) -> Result<&OutboundMessage, TransportError> {
    match request {
        TransportRequest::Message(m) => Ok(m),
        _ => Err(TransportError::permanent("unsupported_request")),
    }
}

/// Seconds of life left, for the provider's `ttl`.
fn ttl_secs(m: &OutboundMessage, now_ms: i64) -> Option<i64> {
    m.expires_at.map(|e| ((e - now_ms) / 1000).max(1))
}

/// The RCS aggregator.
pub struct RcsTransport {
    http: Http,
}

impl RcsTransport {
    /// `None` if the base URL is not a URL (checked by config validation first).
    pub fn new(c: &RcsConfig) -> Option<Self> {
        Some(Self {
            http: Http::new(&c.base_url, &c.agent_token, c.timeout_ms, c.concurrency)?,
        })
    }
}

#[async_trait]
impl Transport for RcsTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Rcs
    }

    fn timeout(&self) -> Duration {
        self.http.timeout
    }

    async fn send(&self, request: &TransportRequest) -> Result<TransportAck, TransportError> {
        let m = message_of(request)?;
        let content = match m.kind {
            PayloadKind::Text => json!({ "text": text_of(m)? }),
            PayloadKind::RcsPayload => {
                json!({ "e2eePayload": sealgate_proto::b64::encode(&m.payload) })
            }
            PayloadKind::Mls => return Err(TransportError::permanent("unsupported_request")),
        };
        let mut body = json!({ "contentMessage": content });
        if let Some(ttl) = ttl_secs(m, crate::store::now_millis()) {
            body["ttl"] = json!(format!("{ttl}s"));
        }
        let mut url = self
            .http
            .url(&["v1", "phones", &m.recipient, "agentMessages"])?;
        url.query_pairs_mut()
            .append_pair("messageId", &m.message_id);
        let (status, headers, resp) = self
            .http
            .post(url, &body, m.correlation_id.as_deref())
            .await?;
        if status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&resp).unwrap_or_default();
            return Ok(TransportAck {
                provider_id: v["name"].as_str().map(str::to_owned),
            });
        }
        if let Some(e) = transient_status(status, &headers) {
            return Err(e);
        }
        let (g, _) = google_error(&resp, "");
        Err(TransportError::permanent(match (status, g.as_deref()) {
            (StatusCode::NOT_FOUND, _) => "rcs_not_capable",
            (_, Some("FAILED_PRECONDITION")) => "e2ee_not_supported",
            (StatusCode::BAD_REQUEST, _) => "rcs_invalid_argument",
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => "rcs_unauthorized",
            _ => "rcs_rejected",
        }))
    }
}

/// The SMS gateway.
pub struct SmsTransport {
    http: Http,
    from: String,
}

impl SmsTransport {
    pub fn new(c: &SmsConfig) -> Option<Self> {
        Some(Self {
            http: Http::new(&c.base_url, &c.token, c.timeout_ms, c.concurrency)?,
            from: c.from.clone(),
        })
    }
}

#[async_trait]
impl Transport for SmsTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Sms
    }

    fn timeout(&self) -> Duration {
        self.http.timeout
    }

    async fn send(&self, request: &TransportRequest) -> Result<TransportAck, TransportError> {
        let m = message_of(request)?;
        if m.kind != PayloadKind::Text {
            return Err(TransportError::permanent("unsupported_request"));
        }
        let body = json!({
            "to": m.recipient,
            "from": self.from,
            "text": text_of(m)?,
            "reference": m.message_id,
        });
        let url = self.http.url(&["sms", "v1", "messages"])?;
        let (status, headers, resp) = self
            .http
            .post(url, &body, m.correlation_id.as_deref())
            .await?;
        if status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&resp).unwrap_or_default();
            return Ok(TransportAck {
                provider_id: v["id"].as_str().map(str::to_owned),
            });
        }
        if let Some(e) = transient_status(status, &headers) {
            return Err(e);
        }
        let (_, unreachable) = google_error(&resp, "unreachable");
        Err(TransportError::permanent(match status {
            StatusCode::BAD_REQUEST if unreachable => "sms_unreachable",
            StatusCode::BAD_REQUEST => "sms_invalid_argument",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "sms_unauthorized",
            _ => "sms_rejected",
        }))
    }
}

/// The push service: wake-ups only, never content.
pub struct PushTransport {
    http: Http,
}

impl PushTransport {
    pub fn new(c: &PushConfig) -> Option<Self> {
        Some(Self {
            http: Http::new(&c.base_url, &c.token, c.timeout_ms, c.concurrency)?,
        })
    }
}

#[async_trait]
impl Transport for PushTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Push
    }

    fn timeout(&self) -> Duration {
        self.http.timeout
    }

    async fn send(&self, request: &TransportRequest) -> Result<TransportAck, TransportError> {
        let TransportRequest::Push {
            token,
            correlation_id,
        } = request
        else {
            return Err(TransportError::permanent("unsupported_request"));
        };
        let body = json!({ "token": token, "data": { "type": "mailbox" } });
        let url = self.http.url(&["push", "v1", "send"])?;
        let (status, headers, _) = self
            .http
            .post(url, &body, correlation_id.as_deref())
            .await?;
        if status.is_success() {
            return Ok(TransportAck::default());
        }
        if let Some(e) = transient_status(status, &headers) {
            return Err(e);
        }
        Err(TransportError::permanent(match status {
            StatusCode::NOT_FOUND => "push_token_invalid",
            _ => "push_rejected",
        }))
    }
}

#[cfg(test)]
mod tests;
