//! The durable job queue behind the delivery workers: a narrow, object-safe trait so the
//! embedded SQLite table and (later) NATS JetStream can serve the same workers.
//!
//! Contract: at-least-once. A leased job is invisible to other workers until its lease runs
//! out; a worker that dies simply lets the lease expire and the job is leased again. `ack`,
//! `retry` and `dead_letter` act only if the caller still holds the lease (`Ok(false)`
//! otherwise: someone else owns the job now). The queue must never interpret payloads; they
//! are opaque bytes to it. Enqueueing a *send* job happens inside the message's accept
//! transaction ([`super::store::DeliveryStore::accept_messages`]), so a message is never
//! stored without its job nor the reverse; a queue outside the database (JetStream) is fed
//! from that table by an outbox relay.

use std::time::Duration;

use async_trait::async_trait;
use sealgate_proto::send::DeadLetter;

use crate::store::StoreError;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Deliver a business message through its channel's transport.
    Send,
    /// Post a status change to the tenant's callback URL.
    Callback,
    /// Wake a device through the push service.
    Push,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Send => "send",
            JobKind::Callback => "callback",
            JobKind::Push => "push",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "send" => Some(JobKind::Send),
            "callback" => Some(JobKind::Callback),
            "push" => Some(JobKind::Push),
            _ => None,
        }
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub kind: JobKind,
    pub tenant_id: String,
    pub message_id: Option<String>,
    /// Opaque body (callback JSON, push target); `None` for sends.
    pub payload: Option<Vec<u8>>,
    /// Unix ms before which the job is not handed out.
    pub not_before: i64,
}

/// A leased job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub job_id: i64,
    pub kind: JobKind,
    pub tenant_id: String,
    pub message_id: Option<String>,
    pub payload: Option<Vec<u8>>,
    /// Leases so far, this one included (a crashed attempt counts too).
    pub attempts: u32,
    /// Unix ms the job was created (acceptance, or the replay): its retry window starts here.
    pub created_at: i64,
    /// Identifies this lease; `ack`/`retry`/`dead_letter` need it.
    pub lease_token: String,
    pub last_error: Option<String>,
}

/// The queue.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Add a job outside any accept transaction (callbacks and pushes are enqueued by the
    /// store in the transaction of the change that causes them). Returns the job id.
    async fn enqueue(&self, job: &NewJob) -> Result<i64, StoreError>;

    /// Lease up to `max` ready jobs (`not_before <= now_ms`, not leased or lease expired),
    /// oldest first, for `lease`. Each lease counts as an attempt.
    async fn lease(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
        now_ms: i64,
    ) -> Result<Vec<Job>, StoreError>;

    /// Done: remove the job. `Ok(false)`: the lease was lost.
    async fn ack(&self, job: &Job) -> Result<bool, StoreError>;

    /// Release the job to run again not before `not_before_ms`, remembering `error`.
    async fn retry(&self, job: &Job, not_before_ms: i64, error: &str) -> Result<bool, StoreError>;

    /// Move the job to the dead-letter list with `reason`.
    async fn dead_letter(&self, job: &Job, reason: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Jobs waiting or in flight.
    async fn depth(&self) -> Result<u64, StoreError>;

    /// The most recent dead letters, newest first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError>;

    /// Enqueue a dead letter's job again, as a fresh job whose retry window starts now. A
    /// replayed send reopens its message (`failed` → `queued`, recorded in its history): the
    /// only backward move, made on an operator's explicit request. `Ok(None)`: no such dead
    /// letter.
    async fn replay(&self, dead_letter_id: i64, now_ms: i64) -> Result<Option<i64>, StoreError>;
}
