//! The contract every send-pipeline backend (messages + queue) must meet, as plain async
//! functions; each backend's test module runs them all (SQLite and memory today, JetStream
//! and PostgreSQL when they exist).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sealgate_proto::send::{Channel, MessageClass, MessageStatus};

use super::queue::{JobKind, NewJob};
use super::store::{
    AcceptOutcome, DeliveryBackend, NewMessage, PayloadKind, ReceiptOutcome, TenantCallback,
    Transition,
};

pub fn message(key: &str, hash: u8, now: i64) -> NewMessage {
    NewMessage {
        message_id: crate::auth::random_id("msg_"),
        tenant_id: "t1".into(),
        idempotency_key: key.into(),
        request_hash: vec![hash; 32],
        recipient: "+15551234567".into(),
        class: MessageClass::Transactional,
        channel: Channel::Sms,
        kind: PayloadKind::Text,
        group_id: None,
        epoch: None,
        payload: b"hi".to_vec(),
        correlation_id: None,
        accepted_at: now,
        expires_at: None,
    }
}

fn accepted(o: &AcceptOutcome) -> &str {
    match o {
        AcceptOutcome::Accepted { message_id } => message_id,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

pub async fn idempotency_inside_and_across_batches(b: &dyn DeliveryBackend) {
    let first = message("k1", 1, 1000);
    let batch = vec![
        first.clone(),
        message("k1", 1, 1000),
        message("k1", 2, 1000),
        message("k2", 1, 1000),
    ];
    let out: Vec<AcceptOutcome> = b
        .accept_messages(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(accepted(&out[0]), first.message_id);
    assert_eq!(
        out[1],
        AcceptOutcome::Replayed {
            message_id: first.message_id.clone()
        }
    );
    assert_eq!(out[2], AcceptOutcome::KeyReused);
    accepted(&out[3]);
    assert_eq!(b.depth().await.unwrap(), 2, "one job per stored message");
    let again = b
        .accept_messages(&[message("k1", 1, 2000), message("k1", 3, 2000)])
        .await
        .unwrap();
    assert_eq!(
        again[0].as_ref().unwrap(),
        &AcceptOutcome::Replayed {
            message_id: first.message_id.clone()
        }
    );
    assert_eq!(again[1].as_ref().unwrap(), &AcceptOutcome::KeyReused);
    let mut other_tenant = message("k1", 9, 2000);
    other_tenant.tenant_id = "t2".into();
    let o = b.accept_messages(&[other_tenant]).await.unwrap();
    accepted(o[0].as_ref().unwrap());
    assert_eq!(b.depth().await.unwrap(), 3);
    assert!(
        b.message_view("t2", &first.message_id)
            .await
            .unwrap()
            .is_none()
    );
    let v = b
        .message_view("t1", &first.message_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.status, MessageStatus::Queued);
    // The `queued` entry is the row's acceptance time (not a stored history row).
    assert_eq!(v.history.len(), 1);
    assert_eq!(
        (
            v.history[0].status,
            v.history[0].at,
            v.history[0].reason.as_deref()
        ),
        (MessageStatus::Queued, first.accepted_at, None)
    );
    assert_eq!(b.purge_idempotency(1500).await.unwrap(), 2);
    // A purged key is free again (another request makes a new message); a younger key is
    // kept; the purge forgets keys, not messages.
    let reused = b
        .accept_messages(&[message("k1", 5, 3000), other_tenant_again()])
        .await
        .unwrap();
    assert_ne!(
        accepted(reused[0].as_ref().unwrap()),
        first.message_id,
        "a new message"
    );
    assert!(matches!(
        reused[1].as_ref().unwrap(),
        AcceptOutcome::Replayed { .. }
    ));
    assert!(
        b.message_view("t1", &first.message_id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(b.purge_idempotency(1500).await.unwrap(), 0, "nothing left");
}

/// A batch larger than one multi-row INSERT (1,201 messages: three of the SQLite backend's
/// chunks of 500) is stored whole, and every key answers its own message when sent again,
/// in one batch and one by one: the keys of every chunk are found again.
pub async fn a_large_batch_replays_every_key(b: &dyn DeliveryBackend) {
    let batch: Vec<NewMessage> = (0..1201)
        .map(|i| message(&format!("big-{i}"), 1, 1000))
        .collect();
    let first = b.accept_messages(&batch).await.unwrap();
    for (m, o) in batch.iter().zip(&first) {
        assert_eq!(accepted(o.as_ref().unwrap()), m.message_id);
    }
    let again: Vec<NewMessage> = (0..1201)
        .map(|i| message(&format!("big-{i}"), 1, 2000))
        .collect();
    let replayed = b.accept_messages(&again).await.unwrap();
    for (m, o) in batch.iter().zip(&replayed) {
        assert_eq!(
            o.as_ref().unwrap(),
            &AcceptOutcome::Replayed {
                message_id: m.message_id.clone()
            }
        );
    }
    for i in [0, 499, 500, 999, 1000, 1200] {
        let one = b
            .accept_messages(&[message(&format!("big-{i}"), 2, 3000)])
            .await
            .unwrap();
        assert_eq!(one[0].as_ref().unwrap(), &AcceptOutcome::KeyReused, "{i}");
    }
    assert_eq!(b.depth().await.unwrap(), 1201);
}

/// The second tenant's key `k1` of [`idempotency_inside_and_across_batches`], sent again.
fn other_tenant_again() -> NewMessage {
    let mut m = message("k1", 9, 3000);
    m.tenant_id = "t2".into();
    m
}

pub async fn lease_retry_ack(b: &dyn DeliveryBackend) {
    let lease = Duration::from_secs(10);
    for i in 0..3 {
        b.enqueue(&NewJob {
            kind: JobKind::Push,
            tenant_id: "t1".into(),
            message_id: None,
            payload: Some(vec![i]),
            not_before: 1000 + i64::from(i),
        })
        .await
        .unwrap();
    }
    assert!(
        b.lease("w", 5, lease, 999).await.unwrap().is_empty(),
        "not due"
    );
    let two = b.lease("w", 2, lease, 5000).await.unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(two[0].payload, Some(vec![0]), "oldest first");
    assert_eq!(two[0].attempts, 1);
    let rest = b.lease("w2", 5, lease, 5000).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(b.lease("w3", 5, lease, 5000).await.unwrap().is_empty());
    assert!(b.retry(&two[0], 8000, "HTTP 503").await.unwrap());
    assert!(b.lease("w", 5, lease, 7999).await.unwrap().is_empty());
    let again = b.lease("w", 5, lease, 8000).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].job_id, two[0].job_id);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].last_error.as_deref(), Some("HTTP 503"));
    assert!(!b.ack(&two[0]).await.unwrap(), "old lease token");
    assert!(b.ack(&again[0]).await.unwrap());
    assert!(b.ack(&two[1]).await.unwrap());
    assert!(b.ack(&rest[0]).await.unwrap());
    assert_eq!(b.depth().await.unwrap(), 0);
}

pub async fn expired_lease_is_leased_again(b: &dyn DeliveryBackend) {
    let lease = Duration::from_secs(10);
    b.enqueue(&NewJob {
        kind: JobKind::Callback,
        tenant_id: "t1".into(),
        message_id: None,
        payload: None,
        not_before: 0,
    })
    .await
    .unwrap();
    let first = b.lease("dies", 1, lease, 1000).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(b.lease("w", 1, lease, 10_999).await.unwrap().is_empty());
    let second = b.lease("w", 1, lease, 11_000).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].job_id, first[0].job_id);
    assert_ne!(second[0].lease_token, first[0].lease_token);
    assert!(!b.ack(&first[0]).await.unwrap());
    assert!(!b.dead_letter(&first[0], "x", 0).await.unwrap());
    assert!(b.ack(&second[0]).await.unwrap());
}

pub async fn dead_letter_and_replay(b: &dyn DeliveryBackend) {
    let m = message("dl", 1, 1000);
    b.accept_messages(std::slice::from_ref(&m)).await.unwrap();
    let job = b
        .lease("w", 1, Duration::from_secs(10), 1000)
        .await
        .unwrap()
        .remove(0);
    let t = Transition {
        message_id: m.message_id.clone(),
        status: MessageStatus::Failed,
        reason: Some("retry_window_exhausted".into()),
        at: 2000,
        count_attempt: false,
    };
    assert!(b.transition(&t).await.unwrap());
    assert!(
        b.dead_letter(&job, "retry_window_exhausted", 2000)
            .await
            .unwrap()
    );
    assert_eq!(b.depth().await.unwrap(), 0);
    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].kind, "send");
    assert_eq!(dead[0].message_id.as_deref(), Some(m.message_id.as_str()));
    // A fresh job; its id may repeat the old one where a send job lives on its message's
    // row (SQLite). What makes it fresh is checked below: leased anew, window from now.
    b.replay(dead[0].dead_letter_id, 3000)
        .await
        .unwrap()
        .expect("the dead letter exists");
    let v = b.message_view("t1", &m.message_id).await.unwrap().unwrap();
    assert_eq!(v.status, MessageStatus::Queued);
    let out = b.outbound(&m.message_id).await.unwrap().unwrap();
    assert_eq!(out.payload, b"hi", "a replayable message keeps its payload");
    let leased = b
        .lease("w", 5, Duration::from_secs(10), 3000)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(
        leased[0].created_at, 3000,
        "the window starts at the replay"
    );
    assert_eq!(b.dead_letters(10).await.unwrap()[0].replayed_at, Some(3000));
    assert!(b.replay(424242, 0).await.unwrap().is_none());
}

pub async fn statuses_move_forward_with_callbacks(b: &dyn DeliveryBackend) {
    let m = message("st", 1, 1000);
    b.accept_messages(std::slice::from_ref(&m)).await.unwrap();
    b.set_callback(
        "t1",
        &TenantCallback {
            url: "http://127.0.0.1:9/cb".into(),
            secret: "s".into(),
        },
        1000,
    )
    .await
    .unwrap();
    let step = |status, at| Transition {
        message_id: m.message_id.clone(),
        status,
        reason: None,
        at,
        count_attempt: status == MessageStatus::Sending,
    };
    assert!(
        b.transition(&step(MessageStatus::Sending, 1100))
            .await
            .unwrap()
    );
    assert!(
        !b.transition(&step(MessageStatus::Sending, 1150))
            .await
            .unwrap()
    );
    assert!(
        b.transition(&step(MessageStatus::Sent, 1200))
            .await
            .unwrap()
    );
    assert!(
        b.outbound(&m.message_id)
            .await
            .unwrap()
            .unwrap()
            .payload
            .is_empty(),
        "wiped"
    );
    assert_eq!(
        b.carrier_receipt("e1", &step(MessageStatus::Read, 1300))
            .await
            .unwrap(),
        ReceiptOutcome::Applied
    );
    assert_eq!(
        b.carrier_receipt("e1", &step(MessageStatus::Read, 1301))
            .await
            .unwrap(),
        ReceiptOutcome::Duplicate
    );
    assert_eq!(
        b.carrier_receipt("e2", &step(MessageStatus::Delivered, 1400))
            .await
            .unwrap(),
        ReceiptOutcome::Ignored,
        "delivered after read"
    );
    let mut unknown = step(MessageStatus::Delivered, 1500);
    unknown.message_id = "msg_nope".into();
    assert_eq!(
        b.carrier_receipt("e3", &unknown).await.unwrap(),
        ReceiptOutcome::UnknownMessage
    );
    let v = b.message_view("t1", &m.message_id).await.unwrap().unwrap();
    let statuses: Vec<_> = v.history.iter().map(|h| h.status).collect();
    use MessageStatus::*;
    assert_eq!(statuses, [Queued, Sending, Sent, Read]);
    assert_eq!(v.attempts, 2);
    // One send job + callbacks for sent and read (not for sending).
    let jobs = b
        .lease("w", 10, Duration::from_secs(1), 10_000)
        .await
        .unwrap();
    let callbacks: Vec<_> = jobs
        .iter()
        .filter(|j| j.kind == JobKind::Callback)
        .collect();
    assert_eq!(callbacks.len(), 2);
    let body: serde_json::Value =
        serde_json::from_slice(callbacks[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(body["message_id"], m.message_id.as_str());
}

pub async fn receipt_before_sent_records_sent_first(b: &dyn DeliveryBackend) {
    let m = message("race", 1, 1000);
    b.accept_messages(std::slice::from_ref(&m)).await.unwrap();
    let t = Transition {
        message_id: m.message_id.clone(),
        status: MessageStatus::Delivered,
        reason: None,
        at: 1100,
        count_attempt: false,
    };
    assert_eq!(
        b.carrier_receipt("r1", &t).await.unwrap(),
        ReceiptOutcome::Applied
    );
    let sent_late = Transition {
        status: MessageStatus::Sent,
        at: 1200,
        ..t
    };
    assert!(!b.transition(&sent_late).await.unwrap());
    let v = b.message_view("t1", &m.message_id).await.unwrap().unwrap();
    let statuses: Vec<_> = v.history.iter().map(|h| h.status).collect();
    use MessageStatus::*;
    assert_eq!(statuses, [Queued, Sent, Delivered]);
}

/// Many workers leasing at once never get the same job.
pub async fn concurrent_leases_are_disjoint(b: Arc<dyn DeliveryBackend>) {
    let batch: Vec<NewMessage> = (0..200).map(|i| message(&format!("c{i}"), 1, 0)).collect();
    b.accept_messages(&batch).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let b = b.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let jobs = b
                        .lease(&format!("w{w}"), 7, Duration::from_secs(60), 1)
                        .await
                        .unwrap();
                    if jobs.is_empty() {
                        break got;
                    }
                    got.extend(jobs.into_iter().map(|j| j.job_id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200);
    assert_eq!(unique.len(), 200);
}

/// How a queue keeps time, for [`real_clock_queue`].
#[derive(Debug, Clone)]
pub struct RealClock {
    /// The lease the queue enforces (for JetStream: the consumer's `ack_wait`).
    pub lease: Duration,
    /// Whether `ack` on a superseded lease answers `false` (table queues do; JetStream 2.9
    /// cannot tell).
    pub detects_lost_lease: bool,
}

impl RealClock {
    /// A table queue (SQLite, PostgreSQL, memory).
    pub fn table() -> Self {
        Self {
            lease: Duration::from_millis(1500),
            detects_lost_lease: true,
        }
    }
}

fn now() -> i64 {
    crate::store::now_millis()
}

/// Lease until `n` jobs came or `within` passed (queues fed asynchronously, like the
/// JetStream outbox relay, need a moment).
async fn lease_n(
    b: &dyn DeliveryBackend,
    n: usize,
    lease: Duration,
    within: Duration,
) -> Vec<super::queue::Job> {
    let until = std::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && std::time::Instant::now() < until {
        let jobs = b
            .lease("rt", n - got.len(), lease, now())
            .await
            .expect("lease");
        if jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        got.extend(jobs);
    }
    got
}

/// The queue contract on the wall clock, so queues that keep their own time (JetStream) run
/// the same test as the table queues: at-least-once, retry after a delay with the error
/// remembered, redelivery after a lease runs out, dead letters and replay.
pub async fn real_clock_queue(b: &dyn DeliveryBackend, rc: &RealClock) {
    let wait = Duration::from_secs(10);
    let batch: Vec<NewMessage> = (0..3)
        .map(|i| message(&format!("rc{i}"), 1, now()))
        .collect();
    b.accept_messages(&batch).await.expect("accept");
    let first = lease_n(b, 3, rc.lease, wait).await;
    assert_eq!(first.len(), 3, "every accepted message has its job");
    assert!(
        first
            .iter()
            .all(|j| j.attempts == 1 && j.kind == JobKind::Send)
    );
    let ids: HashSet<i64> = first.iter().map(|j| j.job_id).collect();
    assert_eq!(ids.len(), 3);
    assert!(
        b.lease("rt", 5, rc.lease, now())
            .await
            .expect("lease")
            .is_empty(),
        "leased jobs are invisible"
    );

    // Retry with a delay: not before it, then again with the error.
    assert!(
        b.retry(&first[0], now() + 400, "HTTP 503")
            .await
            .expect("retry")
    );
    assert!(b.ack(&first[1]).await.expect("ack"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        b.lease("rt", 5, rc.lease, now())
            .await
            .expect("lease")
            .is_empty()
    );
    let again = lease_n(b, 1, rc.lease, wait).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].job_id, first[0].job_id);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].last_error.as_deref(), Some("HTTP 503"));
    assert!(b.ack(&again[0]).await.expect("ack"));

    // first[2]'s worker "died": after the lease the job comes back.
    let redelivered = lease_n(b, 1, rc.lease, rc.lease * 4).await;
    assert_eq!(redelivered.len(), 1);
    assert_eq!(redelivered[0].job_id, first[2].job_id);
    assert_eq!(redelivered[0].attempts, 2);
    if rc.detects_lost_lease {
        assert!(!b.ack(&first[2]).await.expect("stale ack"));
    }
    // Dead letter, then replay: a fresh job.
    assert!(
        b.dead_letter(&redelivered[0], "gave_up", now())
            .await
            .expect("dead")
    );
    let dead = b.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "gave_up");
    assert!(
        b.replay(dead[0].dead_letter_id, now())
            .await
            .expect("replay")
            .is_some()
    );
    let replayed = lease_n(b, 1, rc.lease, wait).await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].attempts, 1);
    assert_eq!(replayed[0].message_id, first[2].message_id);
    assert!(b.ack(&replayed[0]).await.expect("ack"));
    let until = std::time::Instant::now() + wait;
    while b.depth().await.expect("depth") > 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.depth().await.expect("depth"), 0);
}

/// The daily quota: concurrent takes (as from several api processes) grant exactly the limit
/// in total, partly at the end; a new day starts from zero; a lagging day gets nothing and
/// does not reset the count; a lowered limit grants nothing more; tenants count apart.
pub async fn daily_quota(b: Arc<dyn DeliveryBackend>) {
    const LIMIT: u64 = 100;
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move {
                let mut got = 0;
                loop {
                    let g = b.take_quota("t1", 20_000, 7, LIMIT).await.expect("take");
                    assert!(g <= 7, "granted {g} of 7");
                    if g == 0 {
                        return got;
                    }
                    got += g;
                }
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("join");
    }
    assert_eq!(total, LIMIT, "the takes together got exactly the limit");
    assert_eq!(b.take_quota("t1", 20_000, 1, LIMIT).await.unwrap(), 0);
    assert_eq!(b.take_quota("t2", 20_000, 30, LIMIT).await.unwrap(), 30);
    // Midnight: a process whose clock still says yesterday gets nothing and resets nothing.
    assert_eq!(b.take_quota("t1", 20_001, 60, LIMIT).await.unwrap(), 60);
    assert_eq!(b.take_quota("t1", 20_000, 5, LIMIT).await.unwrap(), 0);
    assert_eq!(b.take_quota("t1", 20_001, 60, LIMIT).await.unwrap(), 40);
    // A lowered limit below the day's count grants nothing and keeps the count.
    assert_eq!(b.take_quota("t2", 20_000, 5, 10).await.unwrap(), 0);
    assert_eq!(b.take_quota("t2", 20_000, 80, LIMIT).await.unwrap(), 70);
}
