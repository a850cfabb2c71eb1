//! Carrier receipts: verified by `X-Goog-Signature`, idempotent by `eventId`, forward-only;
//! forged or unsigned ones refused and counted; unknown messages 404.

use std::time::Duration;

use anyhow::Result;
use sealgate_carrier_sim::FaultConfig;
use sealgate_proto::send::MessageStatus;
use sealgate_server::delivery::signature::sign_carrier;
use serde_json::json;

use super::harness::{CARRIER_SECRET, RCS_PLAIN, Rig, problem, sim_config, text};

fn receipt(message_id: &str, event: &str, event_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "messageId": message_id,
        "phone": RCS_PLAIN,
        "channel": "rcs",
        "event": event,
        "eventTime": "2026-11-01T10:00:00Z",
        "eventId": event_id,
    }))
    .expect("json")
}

async fn post(rig: &Rig, body: Vec<u8>, signature: Option<String>) -> Result<reqwest::Response> {
    let mut req = rig
        .http
        .post(rig.url("/v1/webhooks/carrier"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(sig) = signature {
        req = req.header("X-Goog-Signature", sig);
    }
    Ok(req.send().await?)
}

#[tokio::test]
async fn signed_receipts_move_status_forward_once() -> Result<()> {
    let mut sc = sim_config(FaultConfig::default());
    sc.webhook_secret = None; // the test plays the carrier's receipts itself
    let rig = Rig::start(Some(sc), |_| {}).await?;
    let id = rig.send_ok("w1", &text(RCS_PLAIN, "hello", "rcs")).await?;
    rig.wait_for(&id, &[MessageStatus::Sent], Duration::from_secs(10))
        .await?;

    let signed = |body: &[u8]| Some(sign_carrier(CARRIER_SECRET, body));
    let delivered = receipt(&id, "DELIVERED", "evt-1");
    let resp = post(&rig, delivered.clone(), signed(&delivered)).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(rig.status(&id).await?.status, MessageStatus::Delivered);

    // The same event again: acknowledged, no second history entry.
    let resp = post(&rig, delivered.clone(), signed(&delivered)).await?;
    assert_eq!(resp.status(), 200);
    let ack: serde_json::Value = resp.json().await?;
    assert_eq!(ack["outcome"], "duplicate");

    let read = receipt(&id, "READ", "evt-2");
    assert_eq!(post(&rig, read.clone(), signed(&read)).await?.status(), 200);
    // DELIVERED after READ (another event id) is ignored.
    let late = receipt(&id, "DELIVERED", "evt-3");
    let resp = post(&rig, late.clone(), signed(&late)).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await?["outcome"],
        "ignored"
    );

    let v = rig.status(&id).await?;
    assert_eq!(v.status, MessageStatus::Read);
    let statuses: Vec<_> = v.history.iter().map(|h| h.status).collect();
    use MessageStatus::*;
    assert_eq!(statuses, [Queued, Sending, Sent, Delivered, Read]);

    // Unknown message: 404, counted.
    let unknown = receipt("msg_unknown", "DELIVERED", "evt-4");
    let (status, p) = problem(post(&rig, unknown.clone(), signed(&unknown)).await?).await?;
    assert_eq!((status, p.code.as_str()), (404, "unknown_message"));
    let m = rig.metrics().await?;
    assert!(
        m.contains("sealgate_carrier_receipts_total{outcome=\"unknown\"} 1"),
        "{m}"
    );
    assert!(m.contains("sealgate_carrier_receipts_total{outcome=\"duplicate\"} 1"));
    Ok(())
}

#[tokio::test]
async fn forged_or_unsigned_receipts_are_refused_and_counted() -> Result<()> {
    let mut sc = sim_config(FaultConfig::default());
    sc.webhook_secret = None;
    let rig = Rig::start(Some(sc), |_| {}).await?;
    let id = rig.send_ok("f1", &text(RCS_PLAIN, "hello", "rcs")).await?;
    rig.wait_for(&id, &[MessageStatus::Sent], Duration::from_secs(10))
        .await?;
    let body = receipt(&id, "READ", "evt-forged");
    let attempts = [
        None,
        Some(sign_carrier("wrong-secret", &body)),
        Some("not base64 at all!".to_owned()),
        // A valid signature of another body.
        Some(sign_carrier(CARRIER_SECRET, b"{}")),
    ];
    for (i, sig) in attempts.into_iter().enumerate() {
        let (status, p) = problem(post(&rig, body.clone(), sig).await?).await?;
        assert_eq!((status, p.code.as_str()), (401, "invalid_signature"), "{i}");
    }
    assert_eq!(rig.status(&id).await?.status, MessageStatus::Sent);
    let m = rig.metrics().await?;
    assert!(
        m.contains("sealgate_webhook_verification_failures_total 4"),
        "{m}"
    );
    // The refused event id was not consumed: the genuine receipt still applies.
    let sig = sign_carrier(CARRIER_SECRET, &body);
    assert_eq!(post(&rig, body, Some(sig)).await?.status(), 200);
    assert_eq!(rig.status(&id).await?.status, MessageStatus::Read);
    Ok(())
}

#[tokio::test]
async fn without_an_rcs_transport_every_receipt_is_refused() -> Result<()> {
    let rig = Rig::start(None, |_| {}).await?;
    let body = receipt("msg_x", "READ", "e");
    let sig = sign_carrier(CARRIER_SECRET, &body);
    let (status, p) = problem(post(&rig, body, Some(sig)).await?).await?;
    assert_eq!((status, p.code.as_str()), (401, "invalid_signature"));
    Ok(())
}
