//! NATS JetStream implementation of [`JobQueue`] for the scale-out layout, fed by a
//! transactional outbox.
//!
//! Why an outbox: a message and its send job must be written in one transaction, and
//! JetStream cannot join a PostgreSQL transaction. So the store keeps writing jobs into its
//! `delivery_jobs` table (the outbox) inside the accept / status-change transaction, and a
//! relay (any number of them, one per process) deletes due rows inside a transaction that it
//! keeps open (`FOR UPDATE SKIP LOCKED`: relays never take the same rows), publishes them to a
//! work-queue stream with `Nats-Msg-Id` set, and commits once JetStream acknowledged every
//! publish. A relay that fails or dies before its commit leaves the rows in the outbox; their
//! second publish is deduplicated by the stream.
//!
//! From there JetStream carries the queue semantics: a durable pull consumer with explicit
//! acks hands each job to one worker; a worker that dies lets `ack_wait` (the configured
//! lease) run out and the job is delivered again; `retry` is a NAK with delay; `ack` happens
//! only after the worker stored the outcome of the transport call. Attempts are JetStream's
//! delivery count. Dead letters and the last error of a retried job stay in the store
//! ([`Outbox`]). JetStream 2.9 does not tell a worker that its delivery was superseded, so
//! `ack` / `retry` / `dead_letter` on a lost lease still act (`Ok(true)`); the duplicates this
//! allows are absorbed as with any at-least-once queue (a message already `sent` is never
//! sent again). This module must never interpret job payloads.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, stream};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use sealgate_proto::send::DeadLetter;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::queue::{Job, JobKind, JobQueue, NewJob};
use crate::store::StoreError;

/// Longest a job fetch may take before the worker goes on with what it has.
const FETCH_LIMIT: Duration = Duration::from_secs(2);

/// Durable consumer shared by every worker process.
const CONSUMER: &str = "sealgate-workers";
/// Outbox rows a relay publishes per round.
const RELAY_BATCH: usize = 512;
/// How often an idle relay looks at the outbox without a wake-up (other processes' writes).
const RELAY_POLL: Duration = Duration::from_millis(25);

/// What the NATS queue needs from the store: the outbox table (its own [`JobQueue`]
/// implementation), plus dead letters and last errors of jobs that live in JetStream.
#[async_trait]
pub trait Outbox: JobQueue {
    /// Take up to `max` due rows out of the outbox, oldest first, inside a transaction that
    /// stays open: the rows are gone for good only when [`TakenJobs::commit`] runs, and come
    /// back if the batch is dropped (a failed publish, a crash). Other relays skip them.
    async fn take_due(&self, max: usize, now_ms: i64) -> Result<Box<dyn TakenJobs>, StoreError>;
    /// Add a dead letter for a job that is not in the outbox table.
    async fn record_dead_letter(
        &self,
        job: &Job,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Remember (`Some`) or forget (`None`) the last error of a job.
    async fn set_job_error(&self, job_id: i64, error: Option<&str>) -> Result<(), StoreError>;
    /// The remembered last errors of these jobs.
    async fn job_errors(&self, job_ids: &[i64]) -> Result<Vec<(i64, String)>, StoreError>;
}

/// Outbox rows taken by [`Outbox::take_due`], not yet removed for good.
#[async_trait]
pub trait TakenJobs: Send {
    /// The rows, oldest first.
    fn jobs(&self) -> &[Job];
    /// Remove them for good (every one was published).
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A job as carried in a JetStream message.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    id: i64,
    kind: String,
    tenant: String,
    #[serde(default)]
    message_id: Option<String>,
    /// Base64 of the opaque payload.
    #[serde(default)]
    payload: Option<String>,
    created_at: i64,
}

fn queue_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Queue(format!("{what}: {e}"))
}

/// Where the queue lives.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// `nats://host:port`.
    pub url: String,
    /// Stream name; subjects are `<stream>.jobs`.
    pub stream: String,
    /// How long a delivered job stays with its worker before JetStream delivers it again.
    pub ack_wait: Duration,
}

/// The JetStream queue. Cheap to share behind an `Arc`.
pub struct NatsQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    subject: String,
    consumer: PullConsumer,
    outbox: Arc<dyn Outbox>,
    relay_wake: Arc<Notify>,
}

impl NatsQueue {
    /// Connect, and create the work-queue stream and the durable consumer if missing.
    pub async fn connect(
        options: &NatsOptions,
        outbox: Arc<dyn Outbox>,
    ) -> Result<Self, StoreError> {
        let client = async_nats::connect(&options.url)
            .await
            .map_err(|e| queue_err("connecting to NATS", e))?;
        let js = jetstream::new(client.clone());
        let subject = format!("{}.jobs", options.stream);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: options.stream.clone(),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| queue_err("creating the stream", e))?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: options.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    filter_subject: subject.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| queue_err("creating the consumer", e))?;
        Ok(Self {
            client,
            js,
            subject,
            consumer,
            outbox,
            relay_wake: Arc::new(Notify::new()),
        })
    }

    /// Delete a stream (tests and `sealgate` clean-up of a throw-away queue).
    pub async fn delete_stream(url: &str, stream: &str) -> Result<(), StoreError> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| queue_err("connecting to NATS", e))?;
        jetstream::new(client)
            .delete_stream(stream)
            .await
            .map_err(|e| queue_err("deleting the stream", e))?;
        Ok(())
    }

    /// Wake the relay (after an enqueue in this process).
    pub fn wake_relay(&self) {
        self.relay_wake.notify_one();
    }

    /// The wake-up the relay listens to; hand it to whatever writes outbox rows.
    pub fn relay_waker(&self) -> Arc<Notify> {
        self.relay_wake.clone()
    }

    /// Publish due outbox rows once. Returns how many were moved to JetStream.
    ///
    /// The rows are taken in a transaction that commits only after JetStream acknowledged
    /// every publish; otherwise it rolls back and they are published again later, which the
    /// stream deduplicates by `Nats-Msg-Id`. (One `DELETE … RETURNING` per round: an earlier
    /// lease-then-delete relay cost a row update per job and held accepts to ~70 % of what the
    /// api process reached without it.)
    pub async fn relay_once(&self) -> Result<usize, StoreError> {
        let taken = self
            .outbox
            .take_due(RELAY_BATCH, crate::store::now_millis())
            .await?;
        let jobs = taken.jobs();
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut acks = Vec::with_capacity(jobs.len());
        for job in jobs {
            let wire = Wire {
                id: job.job_id,
                kind: job.kind.as_str().to_owned(),
                tenant: job.tenant_id.clone(),
                message_id: job.message_id.clone(),
                payload: job.payload.as_deref().map(|p| B64.encode(p)),
                created_at: job.created_at,
            };
            let body = serde_json::to_vec(&wire).map_err(|e| queue_err("encoding a job", e))?;
            let publish = PublishMessage::build()
                .payload(body.into())
                .message_id(format!("{}.{}", job.job_id, job.created_at));
            acks.push(
                self.js
                    .send_publish(self.subject.clone(), publish)
                    .await
                    .map_err(|e| queue_err("publishing a job", e))?,
            );
        }
        let count = jobs.len();
        for ack in acks {
            // Any failure drops `taken`: the rows stay in the outbox for the next round.
            ack.await
                .map_err(|e| queue_err("publish not acknowledged", e))?;
        }
        taken.commit().await?;
        Ok(count)
    }

    /// Run the relay until `stop` turns true.
    pub fn spawn_relay(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let queue = self.clone();
        tokio::spawn(async move {
            loop {
                if *stop.borrow() {
                    break;
                }
                let notified = queue.relay_wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match queue.relay_once().await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "outbox relay failed"),
                }
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep(RELAY_POLL) => {}
                    _ = stop.changed() => {}
                }
            }
        })
    }

    async fn send_ack(&self, job: &Job, kind: AckKind) -> Result<(), StoreError> {
        self.client
            .publish(job.lease_token.clone(), kind.into())
            .await
            .map_err(|e| queue_err("acknowledging a job", e))?;
        self.client
            .flush()
            .await
            .map_err(|e| queue_err("acknowledging a job", e))
    }
}

fn decode(message: &jetstream::Message) -> Result<Job, String> {
    let info = message.info().map_err(|e| e.to_string())?;
    let wire: Wire = serde_json::from_slice(&message.payload).map_err(|e| e.to_string())?;
    let reply = message
        .reply
        .as_ref()
        .ok_or("message without a reply subject")?;
    Ok(Job {
        job_id: wire.id,
        kind: JobKind::parse(&wire.kind).ok_or("unknown job kind")?,
        tenant_id: wire.tenant,
        message_id: wire.message_id,
        payload: wire
            .payload
            .map(|p| B64.decode(p))
            .transpose()
            .map_err(|e| e.to_string())?,
        attempts: u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
        created_at: wire.created_at,
        lease_token: reply.to_string(),
        last_error: None,
    })
}

#[async_trait]
impl JobQueue for NatsQueue {
    async fn enqueue(&self, job: &NewJob) -> Result<i64, StoreError> {
        let id = self.outbox.enqueue(job).await?;
        self.wake_relay();
        Ok(id)
    }

    /// `lease` is the consumer's `ack_wait` (set at connect) and readiness is JetStream's
    /// clock: the arguments are accepted for the trait's sake.
    async fn lease(
        &self,
        _worker: &str,
        max: usize,
        _lease: Duration,
        _now_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        let fetch = async {
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(max.max(1))
                .messages()
                .await
                .map_err(|e| queue_err("fetching jobs", e))?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| queue_err("fetching jobs", e))?;
                match decode(&message) {
                    Ok(job) => jobs.push(job),
                    Err(e) => {
                        // Not ours to run: stop its redelivery rather than loop on it.
                        tracing::error!(error = %e, "undecodable job terminated");
                        let _ = message.ack_with(AckKind::Term).await;
                    }
                }
            }
            Ok::<(), StoreError>(())
        };
        // A no-wait pull ends with the server's status message; if that never comes, the
        // worker must not wait forever (it would never see a shutdown either). Jobs that
        // arrived are run; any that arrive later are redelivered after the ack wait.
        match tokio::time::timeout(FETCH_LIMIT, fetch).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(jobs = jobs.len(), "job fetch did not end; going on"),
        }
        let retried: Vec<i64> = jobs
            .iter()
            .filter(|j| j.attempts > 1)
            .map(|j| j.job_id)
            .collect();
        if !retried.is_empty() {
            for (id, error) in self.outbox.job_errors(&retried).await? {
                if let Some(job) = jobs.iter_mut().find(|j| j.job_id == id) {
                    job.last_error = Some(error);
                }
            }
        }
        Ok(jobs)
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        self.send_ack(job, AckKind::Ack).await?;
        if job.last_error.is_some() {
            self.outbox.set_job_error(job.job_id, None).await?;
        }
        Ok(true)
    }

    async fn retry(&self, job: &Job, not_before_ms: i64, error: &str) -> Result<bool, StoreError> {
        self.outbox.set_job_error(job.job_id, Some(error)).await?;
        let delay = not_before_ms
            .saturating_sub(crate::store::now_millis())
            .max(0);
        let delay = Duration::from_millis(u64::try_from(delay).unwrap_or(0));
        self.send_ack(job, AckKind::Nak(Some(delay))).await?;
        Ok(true)
    }

    async fn dead_letter(&self, job: &Job, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.outbox.record_dead_letter(job, reason, now_ms).await?;
        self.send_ack(job, AckKind::Term).await?;
        if job.last_error.is_some() {
            self.outbox.set_job_error(job.job_id, None).await?;
        }
        Ok(true)
    }

    /// Outbox rows not yet published, plus jobs waiting or in flight in JetStream.
    async fn depth(&self) -> Result<u64, StoreError> {
        let outbox = self.outbox.depth().await?;
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|e| queue_err("consumer info", e))?;
        Ok(outbox
            .saturating_add(info.num_pending)
            .saturating_add(u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX)))
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        self.outbox.dead_letters(limit).await
    }

    async fn replay(&self, dead_letter_id: i64, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let id = self.outbox.replay(dead_letter_id, now_ms).await?;
        self.wake_relay();
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance as c;
    use super::super::split::SplitBackend;
    use super::super::store::DeliveryStore;
    use super::*;
    use crate::store::postgres::testing::{TestPg, fresh};

    const ENV: &str = "SEALGATE_TEST_NATS_URL";

    struct Guard {
        _pg: TestPg,
        url: String,
        stream: String,
        stop: watch::Sender<bool>,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.stop.send(true);
            let (url, stream) = (self.url.clone(), self.stream.clone());
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(NatsQueue::delete_stream(&url, &stream));
                }
            })
            .join();
        }
    }

    /// PostgreSQL (outbox) + a fresh JetStream stream, or `None` with the reason printed.
    async fn open(test: &str, relay: bool) -> Option<(Guard, SplitBackend)> {
        let Ok(url) = std::env::var(ENV) else {
            eprintln!("skipping {test} on NATS JetStream: {ENV} is not set");
            return None;
        };
        let pg = fresh(test).await?;
        let stream = format!("SG_TEST_{}", crate::auth::random_id(""));
        let options = NatsOptions {
            url: url.clone(),
            stream: stream.clone(),
            ack_wait: Duration::from_secs(1),
        };
        let queue = Arc::new(
            NatsQueue::connect(&options, Arc::new(pg.store.clone()))
                .await
                .unwrap_or_else(|e| panic!("{ENV}={url}: {e}")),
        );
        let (stop, rx) = watch::channel(false);
        if relay {
            queue.spawn_relay(rx);
        }
        let backend = SplitBackend::new(
            Arc::new(pg.store.clone()),
            queue.clone(),
            Some(queue.relay_waker()),
        );
        Some((
            Guard {
                _pg: pg,
                url,
                stream,
                stop,
            },
            backend,
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queue_on_the_real_clock() {
        let Some((_guard, b)) = open("nats queue_on_the_real_clock", true).await else {
            return;
        };
        let rc = c::RealClock {
            lease: Duration::from_secs(1),
            detects_lost_lease: false,
        };
        c::real_clock_queue(&b, &rc).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accept_writes_the_outbox_in_the_same_transaction() {
        let Some((_guard, b)) = open("nats accept outbox", false).await else {
            return;
        };
        // The accept writer asks the backend how many batches it may keep in flight: the
        // split backend must answer for its store (PostgreSQL: several), not the trait's one.
        assert_eq!(b.accept_batches_in_flight(), 4);
        c::idempotency_inside_and_across_batches(&b).await;
    }
}
