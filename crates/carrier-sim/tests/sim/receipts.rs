//! Signed receipts: DELIVERED then READ for RCS, DELIVERED only for SMS, a valid
//! X-Goog-Signature, retries with the same eventId, nothing for faulted sends.

use std::collections::HashSet;

use aws_lc_rs::hmac;
use base64::Engine as _;
use reqwest::StatusCode;
use sealgate_carrier_sim::{Rule, SimConfig};
use serde_json::json;

use crate::common::{Harness, Hook, SECRET, Webhook, config};

const RCS: &str = "+15550002000";
const SMS: &str = "+15550002001";

fn with_webhook(url: &str) -> SimConfig {
    let mut c = config();
    c.webhook_url = Some(url.into());
    c.webhook_secret = Some(SECRET.into());
    c.receipts.retry_base_ms = 20;
    c.numbers.insert(
        RCS.into(),
        Rule {
            rcs: Some(true),
            ..Rule::default()
        },
    );
    c
}

fn assert_signed(hook: &Hook) {
    let signature = hook.signature.as_deref().expect("X-Goog-Signature present");
    let tag = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .expect("signature is base64");
    let key = hmac::Key::new(hmac::HMAC_SHA512, SECRET.as_bytes());
    hmac::verify(&key, &hook.body, &tag).expect("HMAC-SHA512 over the raw body verifies");
    let wrong = hmac::Key::new(hmac::HMAC_SHA512, b"another secret");
    assert!(hmac::verify(&wrong, &hook.body, &tag).is_err());
}

#[tokio::test]
async fn rcs_gets_delivered_then_read_sms_delivered_only_all_signed() {
    let webhook = Webhook::start(0).await;
    let h = Harness::start(with_webhook(&webhook.url)).await;
    assert_eq!(
        h.rcs_text(RCS, "m-1", "secret text").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        h.sms(SMS, "s-1", "secret text").await.status(),
        StatusCode::ACCEPTED
    );
    // A duplicate schedules nothing more.
    assert_eq!(
        h.rcs_text(RCS, "m-1", "secret text").await.status(),
        StatusCode::OK
    );
    h.post("/control/receipts/flush").await;

    let hooks = webhook.hooks();
    assert_eq!(hooks.len(), 3, "DELIVERED+READ for RCS, DELIVERED for SMS");
    for hook in &hooks {
        assert_signed(hook);
        assert!(
            !String::from_utf8_lossy(&hook.body).contains("secret text"),
            "receipts never carry message text"
        );
    }
    let events: Vec<_> = hooks.iter().map(Hook::json).collect();
    let rcs: Vec<_> = events.iter().filter(|e| e["channel"] == "rcs").collect();
    assert_eq!(rcs.len(), 2);
    assert_eq!(rcs[0]["event"], "DELIVERED");
    assert_eq!(rcs[1]["event"], "READ");
    assert_eq!(rcs[0]["messageId"], "m-1");
    assert_eq!(rcs[0]["phone"], RCS);
    assert!(rcs[0]["eventTime"].as_str().unwrap().ends_with('Z'));
    let sms: Vec<_> = events.iter().filter(|e| e["channel"] == "sms").collect();
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0]["event"], "DELIVERED");
    assert_eq!(sms[0]["messageId"], "s-1");
    let ids: HashSet<_> = events.iter().map(|e| e["eventId"].to_string()).collect();
    assert_eq!(ids.len(), 3, "eventIds are unique");

    let stats = h.stats().await;
    assert_eq!(stats["receipts"]["sent"], 3);
    assert_eq!(stats["receipts"]["failed_attempts"], 0);
    assert_eq!(stats["receipts"]["pending"], 0);
}

#[tokio::test]
async fn failing_webhook_is_retried_with_the_same_event() {
    let webhook = Webhook::start(2).await;
    let mut c = with_webhook(&webhook.url);
    c.receipts.read_share = 0.0;
    let h = Harness::start(c).await;
    assert_eq!(h.rcs_text(RCS, "m-1", "x").await.status(), StatusCode::OK);
    h.post("/control/receipts/flush").await;

    let hooks = webhook.hooks();
    let statuses: Vec<u16> = hooks.iter().map(|h| h.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    assert!(
        hooks.windows(2).all(|w| w[0].body == w[1].body),
        "retries resend the same event"
    );
    assert_signed(&hooks[2]);
    assert_eq!(hooks[2].json()["event"], "DELIVERED");
    let stats = h.stats().await;
    assert_eq!(stats["receipts"]["sent"], 1);
    assert_eq!(stats["receipts"]["failed_attempts"], 2);
    assert_eq!(stats["receipts"]["dropped"], 0);
}

#[tokio::test]
async fn dead_webhook_drops_after_max_attempts() {
    let webhook = Webhook::start(usize::MAX).await;
    let mut c = with_webhook(&webhook.url);
    c.receipts.max_attempts = 3;
    c.receipts.retry_base_ms = 5;
    let h = Harness::start(c).await;
    h.sms(SMS, "s-1", "x").await;
    h.post("/control/receipts/flush").await;
    assert_eq!(webhook.hooks().len(), 3);
    let stats = h.stats().await;
    assert_eq!(stats["receipts"]["failed_attempts"], 3);
    assert_eq!(stats["receipts"]["dropped"], 1);
    assert_eq!(stats["receipts"]["sent"], 0);
}

#[tokio::test]
async fn faulted_and_rejected_sends_get_no_receipts() {
    let webhook = Webhook::start(0).await;
    let h = Harness::start(with_webhook(&webhook.url)).await;
    h.put(
        "/control/faults",
        json!({"error_5xx": 0.5, "rate_429": 0.5}),
    )
    .await;
    for i in 0..10 {
        assert!(
            !h.rcs_text(RCS, &format!("m-{i}"), "x")
                .await
                .status()
                .is_success()
        );
    }
    h.put("/control/faults", json!({})).await;
    // Not RCS capable: rejected, no receipt.
    assert_eq!(
        h.rcs_text(SMS, "m-x", "x").await.status(),
        StatusCode::NOT_FOUND
    );
    h.post("/control/receipts/flush").await;
    assert!(webhook.hooks().is_empty());
    assert_eq!(h.stats().await["receipts"]["sent"], 0);
}

#[tokio::test]
async fn reset_cancels_scheduled_receipts_and_shutdown_drains() {
    let webhook = Webhook::start(0).await;
    let mut c = with_webhook(&webhook.url);
    c.receipts.delivered_after_ms = 60_000;
    let h = Harness::start(c).await;
    h.sms(SMS, "s-1", "x").await;
    assert_eq!(h.stats().await["receipts"]["pending"], 1);
    h.post("/control/reset").await;
    h.post("/control/receipts/flush?timeout_ms=2000").await;
    assert!(webhook.hooks().is_empty());

    // Shutdown with a receipt due soon: it goes out before serve returns.
    let mut c = with_webhook(&webhook.url);
    c.receipts.delivered_after_ms = 100;
    let h = Harness::start(c).await;
    h.sms(SMS, "s-2", "x").await;
    h.stop().await;
    assert_eq!(webhook.hooks().len(), 1);
}
