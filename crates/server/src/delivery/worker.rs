//! Delivery workers: lease jobs from the queue, call the transport with a time limit, and
//! record the outcome — `sent` and ack; a transient failure retried with backoff inside the
//! class's retry window, then dead-lettered as `failed: retry_window_exhausted`; a permanent
//! failure `failed` at once; a TTL that passed `expired`.
//!
//! At-least-once: a job is acked only after its outcome is stored, and a worker that dies
//! leaves a lease that runs out. Duplicates are harmless because the message id is the
//! provider's dedup key and a message already `sent` is acked without another call. Workers
//! schedule with tokio time (testable with paused time) and stamp with [`Clock`]. They must
//! never log bodies or full phone numbers.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sealgate_proto::send::{Channel, MessageStatus};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::clock::Clock;
use super::metrics::Metrics;
use super::queue::{Job, JobKind};
use super::retry::{RetryDecision, RetryPolicy};
use super::sqlite::RETRY_WINDOW_EXHAUSTED;
use super::store::{DeliveryBackend, OutboundMessage, PayloadKind, Transition};
use super::transport::{
    ErrorClass, TransportAck, TransportError, TransportKind, TransportRequest, Transports,
    mask_phone,
};
use crate::store::StoreError;

/// Everything a worker needs. Shared by all workers of a pool.
pub struct WorkerContext {
    pub backend: Arc<dyn DeliveryBackend>,
    pub transports: Transports,
    pub metrics: Metrics,
    pub policy: RetryPolicy,
    pub clock: Clock,
    /// How long a leased job stays invisible to other workers.
    pub lease: Duration,
    /// Jobs a worker runs concurrently (and leases at most at once).
    pub batch: usize,
    /// How long an idle worker waits before looking again without a wake-up.
    pub poll: Duration,
    /// Woken when jobs are enqueued.
    pub wake: Arc<Notify>,
    /// How long idempotency keys are kept.
    pub idempotency_retention: Duration,
}

/// Running workers; stop them with [`WorkerPool::shutdown`].
pub struct WorkerPool {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Start `n` workers and one maintenance task (queue-depth gauge, idempotency purge).
    pub fn spawn(ctx: Arc<WorkerContext>, n: usize) -> Self {
        let (stop, _) = watch::channel(false);
        let mut handles: Vec<JoinHandle<()>> = (0..n.max(1))
            .map(|i| {
                let ctx = ctx.clone();
                let rx = stop.subscribe();
                let name = format!("w{i}-{}", crate::auth::random_id(""));
                tokio::spawn(async move { run_worker(ctx, name, rx).await })
            })
            .collect();
        let rx = stop.subscribe();
        handles.push(tokio::spawn(maintenance(ctx, rx)));
        Self { stop, handles }
    }

    /// Stop leasing, let in-flight jobs finish (each bounded by its transport timeout), and
    /// wait for every worker.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        join_all(self.handles).await;
    }
}

async fn run_worker(ctx: Arc<WorkerContext>, name: String, mut stop: watch::Receiver<bool>) {
    // Jobs run as separate tasks, up to `batch` at a time; a slot freed by a finished job is
    // refilled at once, so one slow call never holds back the jobs leased with it.
    let batch = ctx.batch.max(1);
    let slots = Arc::new(Semaphore::new(batch));
    loop {
        if *stop.borrow() {
            break;
        }
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => continue,
        };
        // Registered before leasing so an enqueue in between still wakes us.
        let notified = ctx.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let free = slots.available_permits() + 1;
        let jobs = match ctx
            .backend
            .lease(&name, free, ctx.lease, ctx.clock.now_ms())
            .await
        {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "lease failed");
                Vec::new()
            }
        };
        if jobs.is_empty() {
            drop(first);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(ctx.poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        if jobs.len() >= free {
            // There may be more: let another idle worker look too (wake-ups go to one worker
            // at a time, so a burst spreads by this chain instead of every idle worker
            // leasing, mostly for nothing, on every enqueue).
            ctx.wake.notify_one();
        }
        let mut first = Some(first);
        for job in jobs {
            // The lease asked for no more jobs than there were free slots, so this never
            // waits; a leased job is never dropped here.
            let permit = match first.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                process(&ctx, job).await;
                drop(permit);
            });
        }
    }
    // Let the jobs in flight finish.
    let _ = slots
        .acquire_many(u32::try_from(batch).unwrap_or(u32::MAX))
        .await;
}

async fn maintenance(ctx: Arc<WorkerContext>, mut stop: watch::Receiver<bool>) {
    let mut purged_at: Option<tokio::time::Instant> = None;
    loop {
        if let Ok(depth) = ctx.backend.depth().await {
            ctx.metrics
                .queue_depth
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        if purged_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            purged_at = Some(tokio::time::Instant::now());
            let before = ctx.clock.now_ms() - millis(ctx.idempotency_retention);
            if let Err(e) = ctx.backend.purge_idempotency(before).await {
                tracing::warn!(error = %e, "idempotency purge failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Run one job to an outcome. A store failure leaves the job leased: it runs again when the
/// lease ends.
pub async fn process(ctx: &WorkerContext, job: Job) {
    let span = tracing::info_span!(
        "job",
        job_id = job.job_id,
        kind = job.kind.as_str(),
        message_id = job.message_id.as_deref().unwrap_or("-"),
        attempt = job.attempts,
    );
    let result = async {
        match job.kind {
            JobKind::Send => process_send(ctx, &job).await,
            JobKind::Callback | JobKind::Push => process_aux(ctx, &job).await,
        }
    }
    .instrument(span.clone())
    .await;
    if let Err(e) = result {
        let _guard = span.enter();
        tracing::warn!(error = %e, "job left for a later attempt: store failed");
    }
}

/// The transport a message goes through.
pub fn transport_of(m: &OutboundMessage) -> TransportKind {
    match (m.kind, m.channel) {
        (PayloadKind::Mls, _) | (_, Channel::Inapp) => TransportKind::Inapp,
        (_, Channel::Rcs) => TransportKind::Rcs,
        (_, Channel::Sms) => TransportKind::Sms,
    }
}

async fn call(
    ctx: &WorkerContext,
    kind: TransportKind,
    request: &TransportRequest,
) -> Option<Result<TransportAck, TransportError>> {
    let transport = ctx.transports.get(kind)?;
    Some(
        tokio::time::timeout(transport.timeout(), transport.send(request))
            .await
            .unwrap_or_else(|_| {
                Err(TransportError::transient(
                    ErrorClass::Timeout,
                    "no answer within the transport timeout",
                ))
            }),
    )
}

async fn process_send(ctx: &WorkerContext, job: &Job) -> Result<(), StoreError> {
    let Some(message_id) = job.message_id.as_deref() else {
        ctx.backend.ack(job).await?;
        return Ok(());
    };
    let Some(m) = ctx.backend.outbound(message_id).await? else {
        ctx.backend.ack(job).await?;
        return Ok(());
    };
    let transport = transport_of(&m);
    let span = tracing::info_span!(
        "deliver",
        correlation_id = m.correlation_id.as_deref().unwrap_or("-"),
        transport = transport.as_str(),
        to = %if m.recipient.starts_with('+') { mask_phone(&m.recipient) } else { m.recipient.clone() },
    );
    async {
        // Already sent (a redelivered job) or finished: nothing to do, and never a second call.
        if m.status.rank() >= MessageStatus::Sent.rank() || m.status.is_final() {
            // A retry whose earlier attempt timed out after the carrier took the message: the
            // receipt proved the send, so it counts as the success it was.
            if job.last_error.is_some()
                && !matches!(m.status, MessageStatus::Failed | MessageStatus::Expired)
            {
                ctx.metrics
                    .delivery
                    .with_label_values(&[transport.as_str(), "success"])
                    .inc();
            }
            ctx.backend.ack(job).await?;
            return Ok(());
        }
        let now = ctx.clock.now_ms();
        if m.expires_at.is_some_and(|e| e <= now) {
            return finish(
                ctx,
                job,
                &m,
                transport,
                MessageStatus::Expired,
                Some("ttl_expired"),
                "expired",
            )
            .await;
        }
        // `sending` is recorded while the call runs rather than before it: the call does not
        // need it, and waiting for its commit would add a store round trip to every
        // message's latency. If the process dies mid-call, the record may be missing; the
        // job is leased again either way, and the message id lets the provider drop the
        // repeat.
        let request = TransportRequest::Message(Box::new(m.clone()));
        // The ack's time is taken when the transport answers: after the join it would also
        // count the wait for the `sending` record's commit (2.3 ms of a 6.6 ms p50 measured
        // at 1,000 msg/s, where the call itself took 0.2 ms).
        let (recorded, (result, answered_at)) = tokio::join!(
            record(ctx, &m.message_id, MessageStatus::Sending, None, true),
            async {
                let result = call(ctx, transport, &request).await;
                (result, ctx.clock.now_ms())
            }
        );
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record the attempt");
        }
        let Some(result) = result else {
            return finish(
                ctx,
                job,
                &m,
                transport,
                MessageStatus::Failed,
                Some("transport_not_configured"),
                "permanent",
            )
            .await;
        };
        match result {
            Ok(_) => {
                ctx.metrics
                    .latency
                    .with_label_values(&[transport.as_str()])
                    .observe((answered_at - m.accepted_at).max(0) as f64 / 1000.0);
                tracing::info!("sent");
                finish(
                    ctx,
                    job,
                    &m,
                    transport,
                    MessageStatus::Sent,
                    None,
                    "success",
                )
                .await
            }
            Err(TransportError::Permanent { reason }) => {
                tracing::info!(%reason, "permanent failure");
                finish(
                    ctx,
                    job,
                    &m,
                    transport,
                    MessageStatus::Failed,
                    Some(&reason),
                    "permanent",
                )
                .await
            }
            Err(TransportError::Transient {
                class,
                retry_after,
                detail,
            }) => {
                let now = ctx.clock.now_ms();
                let window = ctx.policy.window(m.class);
                match ctx
                    .policy
                    .decide(job.attempts, job.created_at, window, now, retry_after)
                {
                    RetryDecision::RetryAt(at) if m.expires_at.is_some_and(|e| at >= e) => {
                        finish(
                            ctx,
                            job,
                            &m,
                            transport,
                            MessageStatus::Expired,
                            Some("ttl_expired"),
                            "expired",
                        )
                        .await
                    }
                    RetryDecision::RetryAt(at) => {
                        tracing::info!(
                            class = class.as_str(),
                            retry_in_ms = at - now,
                            "transient failure"
                        );
                        ctx.metrics
                            .retries
                            .with_label_values(&[transport.as_str(), class.as_str()])
                            .inc();
                        ctx.backend.retry(job, at, &detail).await?;
                        Ok(())
                    }
                    RetryDecision::GiveUp => {
                        tracing::warn!(class = class.as_str(), "retry window exhausted");
                        record(
                            ctx,
                            &m.message_id,
                            MessageStatus::Failed,
                            Some(RETRY_WINDOW_EXHAUSTED),
                            false,
                        )
                        .await?;
                        ctx.metrics
                            .delivery
                            .with_label_values(&[transport.as_str(), "exhausted"])
                            .inc();
                        let mut job = job.clone();
                        job.last_error = Some(detail);
                        if ctx
                            .backend
                            .dead_letter(&job, RETRY_WINDOW_EXHAUSTED, now)
                            .await?
                        {
                            ctx.metrics
                                .dead_letters
                                .with_label_values(&[JobKind::Send.as_str()])
                                .inc();
                        }
                        Ok(())
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

async fn record(
    ctx: &WorkerContext,
    message_id: &str,
    status: MessageStatus,
    reason: Option<&str>,
    count_attempt: bool,
) -> Result<bool, StoreError> {
    let moved = ctx
        .backend
        .transition(&Transition {
            message_id: message_id.to_owned(),
            status,
            reason: reason.map(str::to_owned),
            at: ctx.clock.now_ms(),
            count_attempt,
        })
        .await?;
    if moved && status != MessageStatus::Sending {
        // Callback jobs may have been enqueued with the change.
        ctx.wake.notify_one();
    }
    Ok(moved)
}

/// Record a final outcome of a send and ack its job.
async fn finish(
    ctx: &WorkerContext,
    job: &Job,
    m: &OutboundMessage,
    transport: TransportKind,
    status: MessageStatus,
    reason: Option<&str>,
    outcome: &str,
) -> Result<(), StoreError> {
    record(ctx, &m.message_id, status, reason, false).await?;
    ctx.metrics
        .delivery
        .with_label_values(&[transport.as_str(), outcome])
        .inc();
    ctx.backend.ack(job).await?;
    Ok(())
}

/// Callbacks and push wake-ups: no message state to move, only the job.
async fn process_aux(ctx: &WorkerContext, job: &Job) -> Result<(), StoreError> {
    let (kind, request) = match job.kind {
        JobKind::Callback => {
            let Some(cb) = ctx.backend.callback(&job.tenant_id).await? else {
                // The tenant removed its callback: nothing to tell.
                ctx.backend.ack(job).await?;
                return Ok(());
            };
            // The message's correlation id follows its callbacks too.
            let correlation_id = match job.message_id.as_deref() {
                Some(id) => ctx
                    .backend
                    .outbound(id)
                    .await?
                    .and_then(|m| m.correlation_id),
                None => None,
            };
            (
                TransportKind::Webhook,
                TransportRequest::Callback {
                    url: cb.url,
                    secret: cb.secret,
                    body: job.payload.clone().unwrap_or_default(),
                    correlation_id,
                },
            )
        }
        _ => {
            let device = job
                .payload
                .as_deref()
                .and_then(|p| std::str::from_utf8(p).ok())
                .unwrap_or_default();
            let Some(token) = ctx.backend.push_token(device).await? else {
                ctx.backend.ack(job).await?;
                return Ok(());
            };
            (
                TransportKind::Push,
                TransportRequest::Push {
                    token,
                    correlation_id: job.message_id.clone(),
                },
            )
        }
    };
    let outcome = match call(ctx, kind, &request).await {
        None => Err(TransportError::permanent("transport_not_configured")),
        Some(r) => r,
    };
    match outcome {
        Ok(_) => {
            ctx.metrics
                .delivery
                .with_label_values(&[kind.as_str(), "success"])
                .inc();
            ctx.backend.ack(job).await?;
        }
        Err(TransportError::Permanent { reason }) => {
            tracing::info!(%reason, "dropped after a permanent failure");
            ctx.metrics
                .delivery
                .with_label_values(&[kind.as_str(), "permanent"])
                .inc();
            ctx.backend.ack(job).await?;
        }
        Err(TransportError::Transient {
            class,
            retry_after,
            detail,
        }) => {
            let now = ctx.clock.now_ms();
            let window = ctx.policy.window_callback;
            match ctx
                .policy
                .decide(job.attempts, job.created_at, window, now, retry_after)
            {
                RetryDecision::RetryAt(at) => {
                    ctx.metrics
                        .retries
                        .with_label_values(&[kind.as_str(), class.as_str()])
                        .inc();
                    ctx.backend.retry(job, at, &detail).await?;
                }
                RetryDecision::GiveUp => {
                    ctx.metrics
                        .delivery
                        .with_label_values(&[kind.as_str(), "exhausted"])
                        .inc();
                    let mut job = job.clone();
                    job.last_error = Some(detail);
                    if ctx
                        .backend
                        .dead_letter(&job, RETRY_WINDOW_EXHAUSTED, now)
                        .await?
                    {
                        ctx.metrics
                            .dead_letters
                            .with_label_values(&[job.kind.as_str()])
                            .inc();
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
