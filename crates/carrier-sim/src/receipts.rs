//! Delivery and read receipts, POSTed to the gateway's webhook and signed like RBM's
//! (`X-Goog-Signature: base64(HMAC-SHA512(secret, raw body))`).
//!
//! It exists so the gateway's receipt path can be tested against something that behaves like
//! a real aggregator: receipts arrive late, in order (DELIVERED before READ for one message),
//! and are retried with backoff when the webhook fails, reusing the same `eventId` so the
//! receiver can de-duplicate. It must never send a receipt for a message that was not stored,
//! never put message text in a receipt or a log line, and never block a send on the webhook.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::body::Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{ConfigError, ReceiptConfig, SimConfig};
use crate::state::{Channel, Sim, bump};
use crate::time::now_rfc3339;

/// The header carrying the webhook signature.
pub const SIGNATURE_HEADER: &str = "X-Goog-Signature";

struct Target {
    url: reqwest::Url,
    key: hmac::Key,
}

pub(crate) struct Receipts {
    http: reqwest::Client,
    target: Option<Target>,
    cfg: ReceiptConfig,
    /// Number of receipt tasks still running; `flush` waits for 0.
    pending: watch::Sender<usize>,
    /// Bumped by reset and shutdown: tasks of an older generation stop.
    generation: watch::Sender<u64>,
    event_seq: AtomicU64,
    /// Random per process so event ids stay unique across restarts.
    nonce: u64,
    read_rng: Mutex<StdRng>,
}

/// A message whose receipts are due.
pub(crate) struct Job {
    pub message_id: String,
    pub phone: String,
    pub channel: Channel,
    pub accepted_at: Instant,
}

/// Computes the `X-Goog-Signature` value for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA512, secret);
    STANDARD.encode(hmac::sign(&key, body).as_ref())
}

impl Receipts {
    pub(crate) fn new(config: &SimConfig, seed: u64) -> Result<Self, ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: field.to_owned(),
            reason,
        };
        let target = match (&config.webhook_url, &config.webhook_secret) {
            (Some(url), Some(secret)) => Some(Target {
                url: reqwest::Url::parse(url).map_err(|e| invalid("webhook_url", e.to_string()))?,
                key: hmac::Key::new(hmac::HMAC_SHA512, secret.as_bytes()),
            }),
            _ => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.receipts.request_timeout_ms))
            .build()
            .map_err(|e| invalid("webhook client", e.to_string()))?;
        Ok(Receipts {
            http,
            target,
            cfg: config.receipts.clone(),
            pending: watch::channel(0).0,
            generation: watch::channel(0).0,
            event_seq: AtomicU64::new(1),
            nonce: rand::random(),
            read_rng: Mutex::new(StdRng::seed_from_u64(seed.wrapping_add(1))),
        })
    }

    /// Receipt tasks still running.
    pub(crate) fn pending(&self) -> usize {
        *self.pending.borrow()
    }

    /// Cancels every scheduled receipt and re-seeds the read-share draws.
    pub(crate) fn reset(&self, seed: u64) {
        self.cancel_all();
        *self.read_rng.lock().unwrap_or_else(PoisonError::into_inner) =
            StdRng::seed_from_u64(seed.wrapping_add(1));
    }

    pub(crate) fn cancel_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Waits until no receipt is scheduled; `false` if `timeout` passed first.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let mut rx = self.pending.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Decrements the pending count however the task ends (done, cancelled or aborted).
struct PendingGuard(Sim);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0
            .inner
            .receipts
            .pending
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Schedules DELIVERED (and, for a share of RCS messages, READ) for a stored message.
/// A no-op without a webhook URL. Must be called from inside the Tokio runtime.
pub(crate) fn schedule(sim: &Sim, job: Job) {
    let receipts = &sim.inner.receipts;
    if receipts.target.is_none() {
        return;
    }
    let read = job.channel == Channel::Rcs && {
        let mut rng = receipts
            .read_rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        rng.r#gen::<f64>() < receipts.cfg.read_share
    };
    // Counted before the task starts, so a flush right after the send answer sees it.
    receipts.pending.send_modify(|n| *n += 1);
    let guard = PendingGuard(sim.clone());
    let generation = *receipts.generation.borrow();
    let sim = sim.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let mut cancelled = sim.inner.receipts.generation.subscribe();
        tokio::select! {
            _ = cancelled.wait_for(|g| *g != generation) => {}
            () = run_job(&sim, &job, read) => {}
        }
    });
}

async fn run_job(sim: &Sim, job: &Job, read: bool) {
    let cfg = &sim.inner.receipts.cfg;
    tokio::time::sleep_until(job.accepted_at + Duration::from_millis(cfg.delivered_after_ms)).await;
    post_with_retries(sim, job, "DELIVERED").await;
    if read {
        // Never before DELIVERED was handled, even when read_after_ms < delivered_after_ms.
        tokio::time::sleep_until(job.accepted_at + Duration::from_millis(cfg.read_after_ms)).await;
        post_with_retries(sim, job, "READ").await;
    }
}

async fn post_with_retries(sim: &Sim, job: &Job, event: &str) {
    let receipts = &sim.inner.receipts;
    let Some(target) = &receipts.target else {
        return;
    };
    let seq = receipts.event_seq.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::json!({
        "messageId": job.message_id,
        "phone": job.phone,
        "channel": job.channel,
        "event": event,
        "eventTime": now_rfc3339(),
        "eventId": format!("evt-{:016x}-{seq}", receipts.nonce),
    });
    let body = Bytes::from(body.to_string());
    let signature = STANDARD.encode(hmac::sign(&target.key, &body).as_ref());
    let cfg = &receipts.cfg;
    for attempt in 1..=cfg.max_attempts {
        let result = receipts
            .http
            .post(target.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => {
                bump(&sim.inner.stats.receipts_sent);
                tracing::debug!(message_id = %job.message_id, event, attempt, "receipt sent");
                return;
            }
            Ok(resp) => {
                tracing::debug!(message_id = %job.message_id, event, attempt,
                    status = resp.status().as_u16(), "webhook refused receipt");
            }
            Err(e) => {
                tracing::debug!(message_id = %job.message_id, event, attempt,
                    error = %e, "webhook unreachable");
            }
        }
        bump(&sim.inner.stats.receipts_failed_attempts);
        if attempt < cfg.max_attempts {
            tokio::time::sleep(backoff(cfg, attempt)).await;
        }
    }
    bump(&sim.inner.stats.receipts_dropped);
    tracing::warn!(message_id = %job.message_id, event, attempts = cfg.max_attempts,
        "receipt dropped after retries");
}

/// Exponential backoff after failed attempt number `attempt` (1-based), capped.
fn backoff(cfg: &ReceiptConfig, attempt: u32) -> Duration {
    let factor = 1u64
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u64::MAX);
    Duration::from_millis(
        cfg.retry_base_ms
            .saturating_mul(factor)
            .min(cfg.retry_max_ms),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = ReceiptConfig {
            retry_base_ms: 50,
            retry_max_ms: 300,
            ..ReceiptConfig::default()
        };
        let ms: Vec<u128> = (1..=6).map(|a| backoff(&cfg, a).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 300, 300, 300]);
        assert_eq!(backoff(&cfg, 200).as_millis(), 300);
    }

    #[test]
    fn signature_matches_rfc4231_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let expected = hex::decode(
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
             9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        )
        .unwrap();
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            STANDARD.encode(expected)
        );
    }
}
