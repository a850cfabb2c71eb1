//! `POST /v1/messages/batch`: each message answered on its own (stored, replayed, or refused
//! with the problem a single send would get, the tenant policy included), nothing stored for a
//! refused one, keys shared with the single endpoint, the batch's size taken whole from the
//! rate limit and quota, and a batch delivered exactly once.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use sealgate_carrier_sim::FaultConfig;
use sealgate_proto::send::{BatchSendResponse, MessageStatus};
use serde_json::{Value, json};

use super::harness::{Rig, SMS_ONLY, problem, sim_config, text};

fn item(key: &str, body: &Value) -> Value {
    let mut item = body.clone();
    item["idempotency_key"] = json!(key);
    item
}

async fn post_batch(rig: &Rig, items: &[Value]) -> Result<reqwest::Response> {
    Ok(rig
        .http
        .post(rig.url("/v1/messages/batch"))
        .bearer_auth(&rig.api_key)
        .json(&json!({ "messages": items }))
        .send()
        .await?)
}

async fn batch_ok(rig: &Rig, items: &[Value]) -> Result<BatchSendResponse> {
    let resp = post_batch(rig, items).await?;
    let status = resp.status();
    let body = resp.text().await?;
    ensure!(status == 200, "batch: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

#[tokio::test]
async fn each_message_is_answered_and_stored_on_its_own() -> Result<()> {
    let rig = Rig::start(None, |c| c.delivery.workers = 0).await?;
    // A key first used on the single endpoint.
    let single = rig
        .send_ok("single", &text(SMS_ONLY, "from the single endpoint", "sms"))
        .await?;
    let items = [
        item("a", &text(SMS_ONLY, "first", "sms")),
        // A text needs a phone number.
        item(
            "b",
            &json!({"to": "alice", "class": "transactional", "body": {"text": "x"}}),
        ),
        // The same key and body again inside the batch: the same message.
        item("a", &text(SMS_ONLY, "first", "sms")),
        // The same key with another body: refused, like a single send.
        item("a", &text(SMS_ONLY, "changed", "sms")),
        // A bad key.
        item("has space", &text(SMS_ONLY, "x", "sms")),
        // The single endpoint's key and body: answered with its message.
        item("single", &text(SMS_ONLY, "from the single endpoint", "sms")),
        item("c", &text(SMS_ONLY, "third", "sms")),
        // The tenant policy applies to each message: plain SMS is no route for `sensitive`.
        item(
            "s",
            &json!({"to": SMS_ONLY, "class": "sensitive", "body": {"text": "x", "channel": "sms"}}),
        ),
    ];
    let r = batch_ok(&rig, &items).await?;
    assert_eq!((r.accepted, r.refused), (4, 4));
    let keys: Vec<&str> = r
        .results
        .iter()
        .map(|r| r.idempotency_key.as_str())
        .collect();
    assert_eq!(keys, ["a", "b", "a", "a", "has space", "single", "c", "s"]);
    let code = |i: usize| r.results[i].error.as_ref().map(|p| p.code.clone());
    assert_eq!(code(1).as_deref(), Some("invalid_field"));
    assert_eq!(code(3).as_deref(), Some("idempotency_key_reused"));
    assert_eq!(code(4).as_deref(), Some("idempotency_key_required"));
    assert_eq!(code(7).as_deref(), Some("policy_forbids_route"));
    assert_eq!(r.results[7].error.as_ref().map(|p| p.status), Some(403));
    for i in [0, 2, 5, 6] {
        assert!(r.results[i].error.is_none(), "{i}: {:?}", r.results[i]);
        assert_eq!(r.results[i].status, Some(MessageStatus::Queued));
    }
    for i in [1, 3, 4, 7] {
        assert!(r.results[i].message_id.is_none() && r.results[i].status.is_none());
    }
    let id = |i: usize| r.results[i].message_id.clone().unwrap();
    assert_eq!(id(0), id(2));
    assert_eq!(id(5), single);
    // No problem detail echoes a body.
    assert!(
        r.results.iter().filter_map(|r| r.error.as_ref()).all(|p| !p
            .detail
            .clone()
            .unwrap_or_default()
            .contains("changed"))
    );
    // Stored: the single one, a and c; each with its job and its key.
    assert_eq!(rig.stored().await?, (3, 3, 3));
    // Every stored message has its status view; the history starts at `queued`.
    let v = rig.status(&id(6)).await?;
    assert_eq!(v.status, MessageStatus::Queued);
    assert_eq!(v.history.len(), 1);

    // Retrying the whole batch is safe: the same answers, nothing new stored.
    let again = batch_ok(&rig, &items).await?;
    assert_eq!(again, r);
    assert_eq!(rig.count("SELECT COUNT(*) FROM send_messages").await?, 3);
    // The batch's keys work on the single endpoint too.
    assert_eq!(
        rig.send_ok("c", &text(SMS_ONLY, "third", "sms")).await?,
        id(6)
    );
    Ok(())
}

#[tokio::test]
async fn batch_size_rate_limit_and_quota() -> Result<()> {
    let rig = Rig::start(None, |c| {
        c.delivery.workers = 0;
        c.delivery.rate_per_sec = 1;
        c.delivery.rate_burst = 5;
    })
    .await?;
    let items = |n: usize, prefix: &str| -> Vec<Value> {
        (0..n)
            .map(|i| item(&format!("{prefix}{i}"), &text(SMS_ONLY, "x", "sms")))
            .collect()
    };
    // Empty, too many, unknown fields, no body: refused whole.
    let (status, p) = problem(post_batch(&rig, &[]).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_field"));
    let (status, p) = problem(post_batch(&rig, &items(501, "big")).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_field"));
    let extra = [
        json!({"idempotency_key": "k", "to": SMS_ONLY, "class": "marketing",
                         "body": {"text": "x"}, "priority": 1}),
    ];
    let (status, p) = problem(post_batch(&rig, &extra).await?).await?;
    assert_eq!((status, p.code.as_str()), (400, "malformed_body"));
    // More than the burst could never pass: a 422 that says so, not a 429 to retry.
    let (status, p) = problem(post_batch(&rig, &items(6, "over")).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "invalid_field"));
    assert!(p.detail.unwrap_or_default().contains("at most 5"));
    // Within the burst: all stored; then the bucket is empty and the next batch is 429 whole.
    assert_eq!(batch_ok(&rig, &items(5, "ok")).await?.accepted, 5);
    let resp = post_batch(&rig, &items(2, "late")).await?;
    assert!(resp.headers().contains_key("retry-after"));
    let (status, p) = problem(resp).await?;
    assert_eq!((status, p.code.as_str()), (429, "rate_limited"));
    assert_eq!(rig.count("SELECT COUNT(*) FROM send_messages").await?, 5);

    let rig = Rig::start(None, |c| {
        c.delivery.workers = 0;
        c.delivery.daily_quota = 4;
    })
    .await?;
    assert_eq!(batch_ok(&rig, &items(3, "q")).await?.accepted, 3);
    // Two more do not fit the quota of four: neither is stored.
    let (status, p) = problem(post_batch(&rig, &items(2, "r")).await?).await?;
    assert_eq!((status, p.code.as_str()), (429, "quota_exceeded"));
    assert_eq!(rig.count("SELECT COUNT(*) FROM send_messages").await?, 3);
    assert_eq!(batch_ok(&rig, &items(1, "s")).await?.accepted, 1);
    Ok(())
}

/// A batch goes through the same queue and workers: every message reaches the carrier once,
/// with transient faults injected.
#[tokio::test]
async fn a_batch_is_delivered_once_each() -> Result<()> {
    let faults = FaultConfig {
        error_5xx: 0.2,
        ..FaultConfig::default()
    };
    let rig = Rig::start(Some(sim_config(faults)), |_| {}).await?;
    let items: Vec<Value> = (0..40)
        .map(|i| {
            item(
                &format!("d{i}"),
                &text(SMS_ONLY, &format!("batch {i}"), "sms"),
            )
        })
        .collect();
    let r = batch_ok(&rig, &items).await?;
    assert_eq!(r.accepted, 40);
    let ids: HashSet<String> = r.results.into_iter().filter_map(|r| r.message_id).collect();
    assert_eq!(ids.len(), 40);
    for id in &ids {
        rig.wait_for(id, &[MessageStatus::Delivered], Duration::from_secs(30))
            .await?;
    }
    let inbox: Vec<String> = rig
        .sim()
        .inbox(SMS_ONLY)
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    assert_eq!(inbox.len(), 40, "no duplicate in the inbox");
    assert_eq!(inbox.into_iter().collect::<HashSet<_>>(), ids);
    Ok(())
}
