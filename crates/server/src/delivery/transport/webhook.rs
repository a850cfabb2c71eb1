//! Tenant status callbacks: POST the JSON status change to the tenant's URL, signed with
//! `X-Sealgate-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
//!
//! Any non-2xx answer is transient (a tenant endpoint that is being deployed answers 404 for
//! a minute); the worker's callback retry window bounds the retries. It must never log the
//! secret or the callback body.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sealgate_proto::send::{CALLBACK_SIGNATURE_HEADER, CORRELATION_ID_HEADER};
use tokio::sync::Semaphore;

use super::{
    ErrorClass, Transport, TransportAck, TransportError, TransportKind, TransportRequest,
    request_error, transient_status,
};
use crate::config::WebhookConfig;
use crate::delivery::signature::sign_callback;

/// Posts status callbacks.
pub struct WebhookTransport {
    client: reqwest::Client,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl WebhookTransport {
    pub fn new(c: &WebhookConfig) -> Option<Self> {
        Some(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_millis(c.timeout_ms))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .ok()?,
            timeout: Duration::from_millis(c.timeout_ms),
            permits: Arc::new(Semaphore::new(c.concurrency.max(1))),
        })
    }
}

#[async_trait]
impl Transport for WebhookTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Webhook
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn send(&self, request: &TransportRequest) -> Result<TransportAck, TransportError> {
        let TransportRequest::Callback {
            url,
            secret,
            body,
            correlation_id,
        } = request
        else {
            return Err(TransportError::permanent("unsupported_request"));
        };
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| TransportError::transient(ErrorClass::Other, "shutting down"))?;
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(CALLBACK_SIGNATURE_HEADER, sign_callback(secret, body))
            .body(body.clone());
        if let Some(id) = correlation_id {
            req = req.header(CORRELATION_ID_HEADER, id);
        }
        let resp = req.send().await.map_err(|e| request_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(TransportAck::default());
        }
        Err(
            transient_status(status, resp.headers()).unwrap_or(TransportError::Transient {
                class: ErrorClass::Other,
                retry_after: None,
                detail: format!("HTTP {}", status.as_u16()),
            }),
        )
    }
}
