//! Worker behaviour under paused tokio time, with the in-memory backend and a scripted fake
//! transport: retries, Retry-After, retry windows, dead letters and replay, TTL, permanent
//! failures, lease expiry.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sealgate_proto::send::{Channel, MessageClass, MessageStatus};
use tokio::time::Instant;

use super::*;
use crate::config::DeliveryConfig;
use crate::delivery::memory::MemoryBackend;
use crate::delivery::queue::{JobQueue, NewJob};
use crate::delivery::store::{AcceptOutcome, DeliveryStore, NewMessage};
use crate::delivery::transport::{Transport, TransportAck};

/// A transport that answers from a script (then repeats `otherwise`) and records when it
/// was called.
struct Scripted {
    kind: TransportKind,
    script: Mutex<VecDeque<Result<TransportAck, TransportError>>>,
    otherwise: Result<TransportAck, TransportError>,
    calls: Mutex<Vec<(Instant, String)>>,
}

impl Scripted {
    fn new(
        script: Vec<Result<TransportAck, TransportError>>,
        otherwise: Result<TransportAck, TransportError>,
    ) -> Arc<Self> {
        Arc::new(Self {
            kind: TransportKind::Rcs,
            script: Mutex::new(script.into()),
            otherwise,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<(Instant, String)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Transport for Scripted {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    async fn send(&self, request: &TransportRequest) -> Result<TransportAck, TransportError> {
        let id = match request {
            TransportRequest::Message(m) => m.message_id.clone(),
            _ => String::new(),
        };
        self.calls.lock().unwrap().push((Instant::now(), id));
        let next = self.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| self.otherwise.clone())
    }
}

fn server_error() -> Result<TransportAck, TransportError> {
    Err(TransportError::transient(ErrorClass::Server, "HTTP 503"))
}

struct Rig {
    backend: Arc<MemoryBackend>,
    ctx: Arc<WorkerContext>,
}

fn rig(transport: Arc<Scripted>, tweak: impl FnOnce(&mut DeliveryConfig)) -> Rig {
    let mut c = DeliveryConfig::default();
    tweak(&mut c);
    let backend = Arc::new(MemoryBackend::new());
    let ctx = Arc::new(WorkerContext {
        backend: backend.clone(),
        transports: Transports::new().with(transport),
        metrics: Metrics::new().unwrap(),
        policy: RetryPolicy::from_config(&c),
        clock: Clock::tokio(),
        lease: Duration::from_secs(c.lease_secs),
        batch: c.lease_batch,
        poll: Duration::from_millis(c.poll_ms),
        wake: Arc::new(Notify::new()),
        idempotency_retention: Duration::from_secs(c.idempotency_retention_secs),
    });
    Rig { backend, ctx }
}

impl Rig {
    async fn accept(&self, class: MessageClass, ttl: Option<Duration>) -> String {
        let now = self.ctx.clock.now_ms();
        let id = crate::auth::random_id("msg_");
        let out = self
            .backend
            .accept_messages(&[NewMessage {
                message_id: id.clone(),
                tenant_id: "t1".into(),
                idempotency_key: id.clone(),
                request_hash: vec![1],
                recipient: "+15551234567".into(),
                class,
                channel: Channel::Rcs,
                kind: PayloadKind::Text,
                group_id: None,
                epoch: None,
                payload: b"hello".to_vec(),
                correlation_id: Some("rq1".into()),
                accepted_at: now,
                expires_at: ttl.map(|t| now + t.as_millis() as i64),
            }])
            .await
            .unwrap();
        assert_eq!(
            out[0].as_ref().unwrap(),
            &AcceptOutcome::Accepted {
                message_id: id.clone()
            }
        );
        id
    }

    async fn status(&self, id: &str) -> (MessageStatus, Option<String>, u32) {
        let v = self.backend.message_view("t1", id).await.unwrap().unwrap();
        (v.status, v.reason, v.attempts)
    }

    /// Run workers until `id` reaches a final-for-the-test state or `limit` of tokio time
    /// passes.
    async fn run_until(&self, id: &str, want: &[MessageStatus], limit: Duration) {
        let pool = WorkerPool::spawn(self.ctx.clone(), 2);
        let deadline = Instant::now() + limit;
        while !want.contains(&self.status(id).await.0) {
            assert!(
                Instant::now() < deadline,
                "timed out: {:?}",
                self.status(id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pool.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_then_sent() {
    let t = Scripted::new(
        vec![server_error(), server_error()],
        Ok(TransportAck::default()),
    );
    let rig = rig(t.clone(), |_| {});
    let id = rig.accept(MessageClass::Transactional, None).await;
    rig.run_until(&id, &[MessageStatus::Sent], Duration::from_secs(60))
        .await;
    assert_eq!(t.calls().len(), 3);
    let (_, _, attempts) = rig.status(&id).await;
    assert_eq!(attempts, 3);
    assert_eq!(rig.backend.depth().await.unwrap(), 0, "job acked");
    let history: Vec<_> = rig
        .backend
        .message_view("t1", &id)
        .await
        .unwrap()
        .unwrap()
        .history
        .into_iter()
        .map(|h| h.status)
        .collect();
    assert_eq!(
        history,
        [
            MessageStatus::Queued,
            MessageStatus::Sending,
            MessageStatus::Sent
        ]
    );
}

/// The accept → ack histogram stops when the transport answers, not when the `sending`
/// record written beside the call commits (a group commit away on SQLite).
#[tokio::test(start_paused = true)]
async fn ack_latency_ends_at_the_transports_answer() {
    let t = Scripted::new(vec![], Ok(TransportAck::default()));
    let rig = rig(t.clone(), |_| {});
    rig.backend
        .set_transition_latency(Duration::from_millis(40));
    let id = rig.accept(MessageClass::Transactional, None).await;
    rig.run_until(&id, &[MessageStatus::Sent], Duration::from_secs(10))
        .await;
    assert_eq!(t.calls().len(), 1);
    let latency = rig.ctx.metrics.latency.with_label_values(&["rcs"]);
    assert_eq!(latency.get_sample_count(), 1);
    assert!(
        latency.get_sample_sum() < 0.040,
        "observed {} s: the record's commit was counted",
        latency.get_sample_sum()
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_a_lower_bound() {
    let t = Scripted::new(
        vec![Err(TransportError::Transient {
            class: ErrorClass::Throttled,
            retry_after: Some(Duration::from_secs(30)),
            detail: "HTTP 429".into(),
        })],
        Ok(TransportAck::default()),
    );
    let rig = rig(t.clone(), |_| {});
    let id = rig.accept(MessageClass::Marketing, None).await;
    rig.run_until(&id, &[MessageStatus::Sent], Duration::from_secs(120))
        .await;
    let calls = t.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].0 - calls[0].0;
    assert!(gap >= Duration::from_secs(30), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(32), "retried after {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_ends_at_once() {
    let t = Scripted::new(vec![], Err(TransportError::permanent("rcs_not_capable")));
    let rig = rig(t.clone(), |_| {});
    let id = rig.accept(MessageClass::Transactional, None).await;
    rig.run_until(&id, &[MessageStatus::Failed], Duration::from_secs(10))
        .await;
    assert_eq!(t.calls().len(), 1, "no retry of a permanent failure");
    let (_, reason, _) = rig.status(&id).await;
    assert_eq!(reason.as_deref(), Some("rcs_not_capable"));
    assert!(rig.backend.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(rig.backend.depth().await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn window_exhaustion_dead_letters_and_replay_resends() {
    let t = Scripted::new(vec![], server_error());
    let rig = rig(t.clone(), |c| c.retry_window_transactional_secs = 3600);
    let id = rig.accept(MessageClass::Transactional, None).await;
    let started = Instant::now();
    rig.run_until(&id, &[MessageStatus::Failed], Duration::from_secs(2 * 3600))
        .await;
    let (_, reason, attempts) = rig.status(&id).await;
    assert_eq!(reason.as_deref(), Some("retry_window_exhausted"));
    let calls = t.calls();
    assert_eq!(calls.len() as u32, attempts);
    // Backoff grows to the 5 min cap: well over 10 attempts in an hour, far fewer than 1/s.
    assert!((10..200).contains(&calls.len()), "{} attempts", calls.len());
    let last = calls.last().unwrap().0 - started;
    assert!(
        last <= Duration::from_secs(3600),
        "attempt after the window"
    );
    let dead = rig.backend.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id.as_deref(), Some(id.as_str()));
    assert_eq!(dead[0].reason, "retry_window_exhausted");
    assert_eq!(rig.backend.depth().await.unwrap(), 0);

    // The operator replays it once the carrier works again.
    t.script
        .lock()
        .unwrap()
        .push_back(Ok(TransportAck::default()));
    let job = rig
        .backend
        .replay(dead[0].dead_letter_id, rig.ctx.clock.now_ms())
        .await
        .unwrap();
    assert!(job.is_some());
    assert_eq!(rig.status(&id).await.0, MessageStatus::Queued);
    rig.run_until(&id, &[MessageStatus::Sent], Duration::from_secs(60))
        .await;
    assert!(rig.backend.replay(999, 0).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn ttl_passing_before_a_send_expires_the_message() {
    let t = Scripted::new(vec![], server_error());
    let rig = rig(t.clone(), |_| {});
    let id = rig
        .accept(MessageClass::Transactional, Some(Duration::from_secs(20)))
        .await;
    rig.run_until(&id, &[MessageStatus::Expired], Duration::from_secs(60))
        .await;
    let (_, reason, _) = rig.status(&id).await;
    assert_eq!(reason.as_deref(), Some("ttl_expired"));
    assert!(
        t.calls().len() >= 2,
        "retried while the TTL allowed: {}",
        t.calls().len()
    );
    assert_eq!(rig.backend.depth().await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_is_never_acked_runs_out_and_the_job_runs_again() {
    let t = Scripted::new(vec![], Ok(TransportAck::default()));
    let rig = rig(t.clone(), |c| c.lease_secs = 30);
    let id = rig.accept(MessageClass::Transactional, None).await;
    // A worker that leases and dies.
    let taken = rig
        .backend
        .lease(
            "dead-worker",
            10,
            Duration::from_secs(30),
            rig.ctx.clock.now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let start = Instant::now();
    rig.run_until(&id, &[MessageStatus::Sent], Duration::from_secs(120))
        .await;
    let waited = t.calls()[0].0 - start;
    assert!(
        waited >= Duration::from_secs(29),
        "re-leased after {waited:?}, before the lease ran out"
    );
    // The dead worker's late ack finds its lease gone.
    assert!(!rig.backend.ack(&taken[0]).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_message_already_sent_is_not_sent_again() {
    let t = Scripted::new(vec![], Ok(TransportAck::default()));
    let rig = rig(t.clone(), |_| {});
    let id = rig.accept(MessageClass::Transactional, None).await;
    rig.run_until(&id, &[MessageStatus::Sent], Duration::from_secs(10))
        .await;
    // A duplicate job for the same message (at-least-once redelivery).
    rig.backend
        .enqueue(&NewJob {
            kind: JobKind::Send,
            tenant_id: "t1".into(),
            message_id: Some(id.clone()),
            payload: None,
            not_before: rig.ctx.clock.now_ms(),
        })
        .await
        .unwrap();
    let pool = WorkerPool::spawn(rig.ctx.clone(), 1);
    while rig.backend.depth().await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.shutdown().await;
    assert_eq!(t.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn unconfigured_transport_fails_permanently() {
    let mut t = Scripted::new(vec![], Ok(TransportAck::default()));
    Arc::get_mut(&mut t).unwrap().kind = TransportKind::Sms;
    let rig = rig(t.clone(), |_| {});
    let id = rig.accept(MessageClass::Transactional, None).await; // an RCS message
    rig.run_until(&id, &[MessageStatus::Failed], Duration::from_secs(10))
        .await;
    assert_eq!(
        rig.status(&id).await.1.as_deref(),
        Some("transport_not_configured")
    );
    assert!(t.calls().is_empty());
}
