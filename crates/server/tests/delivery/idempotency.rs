//! Accepting: idempotency keys (same body → same answer, other body → 422, concurrent →
//! one message), atomic message + job, nothing stored for a refused request, rate limits.

use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use super::harness::{Rig, SMS_ONLY, problem, text};

#[tokio::test]
async fn same_key_same_body_same_answer_other_body_refused() -> Result<()> {
    let rig = Rig::start(None, |c| c.delivery.workers = 0).await?;
    let body = text(SMS_ONLY, "your code is 123456", "sms");
    let first = rig.send_ok("order-1", &body).await?;
    let again = rig.send_ok("order-1", &body).await?;
    assert_eq!(first, again);
    // Same meaning, default channel spelled out: still the same request.
    let implicit =
        json!({"to": SMS_ONLY, "class": "transactional", "body": {"text": "your code is 123456"}});
    assert_eq!(rig.send_ok("order-1", &implicit).await?, first);

    let other = text(SMS_ONLY, "your code is 654321", "sms");
    let (status, p) = problem(rig.send(Some("order-1"), &other).await?).await?;
    assert_eq!((status, p.code.as_str()), (422, "idempotency_key_reused"));
    assert!(!p.detail.unwrap_or_default().contains("654321"));

    // Another key is another message.
    assert_ne!(rig.send_ok("order-2", &body).await?, first);
    assert_eq!(rig.stored().await?, (2, 2, 2));

    // Keys are per tenant.
    let other_tenant = rig.gateway.create_tenant("globex").await?;
    let resp = rig
        .http
        .post(rig.url("/v1/messages"))
        .bearer_auth(&other_tenant.api_key)
        .header("Idempotency-Key", "order-1")
        .json(&other)
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    // And messages too: another tenant cannot see ours.
    let resp = rig
        .http
        .get(rig.url(&format!("/v1/messages/{first}")))
        .bearer_auth(&other_tenant.api_key)
        .send()
        .await?;
    let (status, p) = problem(resp).await?;
    assert_eq!((status, p.code.as_str()), (404, "unknown_message"));
    // The embedded store holds the three keys in memory, and says so.
    let metrics = rig.metrics().await?;
    assert!(
        metrics.contains("sealgate_idempotency_keys_in_memory 3"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn missing_or_bad_key_is_400() -> Result<()> {
    let rig = Rig::start(None, |c| c.delivery.workers = 0).await?;
    let body = text(SMS_ONLY, "hi", "sms");
    for key in [None, Some(""), Some("has space"), Some(&*"k".repeat(129))] {
        let (status, p) = problem(rig.send(key, &body).await?).await?;
        assert_eq!(
            (status, p.code.as_str()),
            (400, "idempotency_key_required"),
            "{key:?}"
        );
    }
    assert_eq!(rig.count("SELECT COUNT(*) FROM send_messages").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_requests_with_one_key_store_one_message() -> Result<()> {
    let rig = Arc::new(Rig::start(None, |c| c.delivery.workers = 0).await?);
    let body = text(SMS_ONLY, "parallel", "sms");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let rig = rig.clone();
            let body = body.clone();
            tokio::spawn(async move { rig.send_ok("same-key", &body).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await??);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the same message");
    assert_eq!(rig.stored().await?, (1, 1, 1));
    Ok(())
}

#[tokio::test]
async fn a_failure_after_the_row_is_written_leaves_nothing_and_frees_the_key() -> Result<()> {
    let rig = Rig::start(None, |c| c.delivery.workers = 0).await?;
    let db = rig.db().await?;
    // After the message row (with its key and job) is written, before the commit.
    sqlx::query(
        "CREATE TRIGGER fail_job AFTER INSERT ON send_messages \
         WHEN NEW.recipient = '+15550000666' BEGIN SELECT RAISE(ABORT, 'injected'); END",
    )
    .execute(&db)
    .await?;
    let poisoned = text("+15550000666", "hello", "sms");
    let (status, p) = problem(rig.send(Some("k-atomic"), &poisoned).await?).await?;
    assert_eq!((status, p.code.as_str()), (500, "internal"));
    assert_eq!(rig.stored().await?, (0, 0, 0));
    // Other messages are unaffected meanwhile.
    rig.send_ok("k-other", &text(SMS_ONLY, "fine", "sms"))
        .await?;
    sqlx::query("DROP TRIGGER fail_job").execute(&db).await?;
    // The client's retry with the same key now succeeds.
    rig.send_ok("k-atomic", &poisoned).await?;
    assert_eq!(rig.stored().await?, (2, 2, 2));
    Ok(())
}

#[tokio::test]
async fn refused_requests_store_nothing() -> Result<()> {
    let rig = Rig::start(None, |c| c.delivery.workers = 0).await?;
    let cases = [
        // text needs a phone number
        (
            json!({"to": "alice", "class": "transactional", "body": {"text": "x"}}),
            422,
            "invalid_field",
        ),
        // two bodies
        (
            json!({"to": SMS_ONLY, "class": "marketing", "body": {"text": "x", "rcs_payload": "AAAA"}}),
            422,
            "invalid_field",
        ),
        // no body
        (
            json!({"to": SMS_ONLY, "class": "marketing", "body": {}}),
            422,
            "invalid_field",
        ),
        // bad recipient
        (
            json!({"to": "+0123", "class": "marketing", "body": {"text": "x"}}),
            422,
            "invalid_field",
        ),
        // channel without text
        (
            json!({"to": SMS_ONLY, "class": "marketing", "body": {"rcs_payload": "AAAA", "channel": "sms"}}),
            422,
            "invalid_field",
        ),
        // ttl out of range
        (
            json!({"to": SMS_ONLY, "class": "marketing", "ttl_secs": 0, "body": {"text": "x"}}),
            422,
            "invalid_field",
        ),
        // unknown class
        (
            json!({"to": SMS_ONLY, "class": "bulk", "body": {"text": "x"}}),
            400,
            "malformed_body",
        ),
        // bad base64
        (
            json!({"to": SMS_ONLY, "class": "marketing", "body": {"rcs_payload": "!!"}}),
            422,
            "invalid_field",
        ),
        // an MLS message for a conversation that does not exist
        (
            json!({"to": "alice", "class": "sensitive", "body": {"mls": {"conversation": "abcd", "message": "AAAA"}}}),
            422,
            "invalid_message",
        ),
    ];
    for (i, (body, want_status, want_code)) in cases.iter().enumerate() {
        let (status, p) = problem(rig.send(Some(&format!("bad-{i}")), body).await?).await?;
        assert_eq!(
            (status, p.code.as_str()),
            (*want_status, *want_code),
            "case {i}: {body}"
        );
    }
    assert_eq!(rig.stored().await?, (0, 0, 0));
    // No API key: 401.
    let resp = rig
        .http
        .post(rig.url("/v1/messages"))
        .header("Idempotency-Key", "k")
        .json(&text(SMS_ONLY, "x", "sms"))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    Ok(())
}

#[tokio::test]
async fn rate_limit_and_quota_answer_429_with_retry_after() -> Result<()> {
    let rig = Rig::start(None, |c| {
        c.delivery.workers = 0;
        c.delivery.rate_per_sec = 1;
        c.delivery.rate_burst = 2;
    })
    .await?;
    rig.send_ok("r1", &text(SMS_ONLY, "1", "sms")).await?;
    rig.send_ok("r2", &text(SMS_ONLY, "2", "sms")).await?;
    let resp = rig.send(Some("r3"), &text(SMS_ONLY, "3", "sms")).await?;
    let retry_after: u64 = resp.headers()["retry-after"].to_str()?.parse()?;
    assert!(retry_after >= 1);
    let (status, p) = problem(resp).await?;
    assert_eq!((status, p.code.as_str()), (429, "rate_limited"));
    assert_eq!(rig.count("SELECT COUNT(*) FROM send_messages").await?, 2);
    let m = rig.metrics().await?;
    assert!(
        m.contains(&format!(
            "sealgate_messages_rejected_total{{code=\"rate_limited\",tenant=\"{}\"}} 1",
            rig.tenant_id
        )),
        "{m}"
    );

    let quota = |c: &mut sealgate_server::Config| {
        c.delivery.workers = 0;
        c.delivery.daily_quota = 3;
    };
    let rig = Rig::start(None, quota).await?;
    rig.send_ok("q1", &text(SMS_ONLY, "1", "sms")).await?;
    rig.send_ok("q2", &text(SMS_ONLY, "2", "sms")).await?;
    // A second gateway on the same store (a restart, or another api process) continues the
    // day's count instead of starting a new one.
    let mut config = sealgate_server::Config::for_data_dir(&rig.data_dir);
    quota(&mut config);
    let second = sealgate_server::Gateway::open(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let second_url = format!("http://{}/v1/messages", listener.local_addr()?);
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(second.serve(listener, async move {
        let _ = stopped.await;
    }));
    let send_second = |key: &'static str| {
        rig.http
            .post(&second_url)
            .bearer_auth(&rig.api_key)
            .header("Idempotency-Key", key)
            .json(&text(SMS_ONLY, key, "sms"))
            .send()
    };
    assert_eq!(send_second("q3").await?.status(), 202);
    let resp = send_second("q4").await?;
    assert!(resp.headers().contains_key("retry-after"));
    let (status, p) = problem(resp).await?;
    assert_eq!((status, p.code.as_str()), (429, "quota_exceeded"));
    let (status, p) = problem(rig.send(Some("q5"), &text(SMS_ONLY, "5", "sms")).await?).await?;
    assert_eq!((status, p.code.as_str()), (429, "quota_exceeded"));
    assert_eq!(rig.count("SELECT COUNT(*) FROM send_messages").await?, 3);
    Ok(())
}

/// A quota that cannot be counted refuses the send (it fails closed, never lets a send past
/// an uncounted quota) with a problem+json and stores nothing; the same key goes through once
/// the store answers again.
#[tokio::test]
async fn a_quota_the_store_cannot_count_refuses_and_stores_nothing() -> Result<()> {
    let rig = Rig::start(None, |c| {
        c.delivery.workers = 0;
        c.delivery.daily_quota = 1_000;
    })
    .await?;
    let db = rig.db().await?;
    sqlx::query("ALTER TABLE send_quota RENAME TO send_quota_away")
        .execute(&db)
        .await?;
    let body = text(SMS_ONLY, "1", "sms");
    let (status, p) = problem(rig.send(Some("s1"), &body).await?).await?;
    assert_eq!((status, p.code.as_str()), (500, "internal"));
    assert!(!p.detail.unwrap_or_default().contains("send_quota"));
    assert_eq!(rig.count("SELECT COUNT(*) FROM send_messages").await?, 0);
    sqlx::query("ALTER TABLE send_quota_away RENAME TO send_quota")
        .execute(&db)
        .await?;
    rig.send_ok("s1", &body).await?;
    assert_eq!(rig.count("SELECT COUNT(*) FROM send_messages").await?, 1);
    Ok(())
}
