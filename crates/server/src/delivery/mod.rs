//! The business send pipeline: `POST /v1/messages` accepts a message (stored with its job in
//! one transaction, many requests per transaction by group commit), workers lease jobs from a
//! durable queue and deliver through a transport (in-app mailbox, RCS, SMS; plus push
//! wake-ups and tenant status callbacks), carrier receipts move the status forward, and
//! Prometheus metrics report it all.
//!
//! It exists so a tenant backend can hand over a message once and rely on it: never lost
//! after the 202, seen once by the recipient, retried within a bounded window, every outcome
//! reported. It must never log or export a message body or a full phone number, and it never
//! sees plaintext of E2EE traffic (MLS and RCS E2EE payloads are opaque bytes here; a
//! plaintext fallback text is stored only until it is sent).

pub mod accept;
pub mod clock;
#[cfg(test)]
pub(crate) mod conformance;
pub mod limiter;
pub mod memory;
pub mod metrics;
pub mod nats;
pub mod queue;
pub mod retry;
pub mod routes;
pub mod signature;
pub mod split;
pub mod sqlite;
mod sqlite_accept;
pub(crate) mod sqlite_batch;
pub(crate) mod sqlite_keys;
pub mod sqlite_queue;
pub mod store;
pub mod transport;
pub mod worker;
pub(crate) mod write_plan;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

pub use clock::Clock;
pub use metrics::Metrics;
pub use queue::{Job, JobKind, JobQueue, NewJob};
pub use store::{DeliveryBackend, DeliveryStore};
pub use transport::{Transport, TransportKind, Transports};
pub use worker::{WorkerContext, WorkerPool};

use crate::config::{Config, DeliveryConfig};
use crate::ds::DeliveryService;
use crate::store::Store;
use accept::Acceptor;
use limiter::SendLimiter;
use retry::RetryPolicy;

/// The send pipeline's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn DeliveryBackend>,
    acceptor: Acceptor,
    metrics: Metrics,
    limiter: SendLimiter,
    wake: Arc<Notify>,
    clock: Clock,
    transports: Transports,
    policy: RetryPolicy,
    config: DeliveryConfig,
    carrier_secret: Option<String>,
}

impl Delivery {
    /// Build the pipeline and start its accept writer (workers start separately, with
    /// [`Delivery::spawn_workers`]). Must run inside a tokio runtime.
    pub fn new(
        backend: Arc<dyn DeliveryBackend>,
        transports: Transports,
        config: &Config,
        clock: Clock,
    ) -> Result<Self, prometheus::Error> {
        let metrics = Metrics::new()?;
        let wake = Arc::new(Notify::new());
        let d = &config.delivery;
        Ok(Self {
            inner: Arc::new(Inner {
                acceptor: Acceptor::spawn(
                    backend.clone(),
                    d.accept_batch,
                    metrics.clone(),
                    wake.clone(),
                ),
                limiter: SendLimiter::new(d.rate_per_sec, d.rate_burst, d.daily_quota),
                policy: RetryPolicy::from_config(d),
                carrier_secret: config
                    .transports
                    .rcs
                    .as_ref()
                    .map(|r| r.webhook_secret.clone()),
                config: d.clone(),
                backend,
                metrics,
                wake,
                clock,
                transports,
            }),
        })
    }

    pub fn backend(&self) -> &Arc<dyn DeliveryBackend> {
        &self.inner.backend
    }

    pub fn acceptor(&self) -> &Acceptor {
        &self.inner.acceptor
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn limiter(&self) -> &SendLimiter {
        &self.inner.limiter
    }

    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.inner.config
    }

    /// The HMAC key of carrier receipts, if the RCS transport is configured.
    pub fn carrier_secret(&self) -> Option<&str> {
        self.inner.carrier_secret.as_deref()
    }

    /// Wake an idle worker (new jobs were enqueued); it wakes the next if it finds more
    /// jobs than it can take.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// What workers run with.
    pub fn worker_context(&self) -> WorkerContext {
        let c = &self.inner.config;
        WorkerContext {
            backend: self.inner.backend.clone(),
            transports: self.inner.transports.clone(),
            metrics: self.inner.metrics.clone(),
            policy: self.inner.policy,
            clock: self.inner.clock,
            lease: Duration::from_secs(c.lease_secs),
            batch: c.lease_batch,
            poll: Duration::from_millis(c.poll_ms),
            wake: self.inner.wake.clone(),
            idempotency_retention: Duration::from_secs(c.idempotency_retention_secs),
        }
    }

    /// Start the configured number of workers (none if `delivery.workers = 0`).
    pub fn spawn_workers(&self) -> Option<WorkerPool> {
        let n = self.inner.config.workers;
        (n > 0).then(|| WorkerPool::spawn(Arc::new(self.worker_context()), n))
    }
}

/// The transports `config` asks for, plus the in-app one (always available) and tenant
/// webhooks.
pub fn transports_from_config(
    config: &Config,
    store: Arc<dyn Store>,
    ds: DeliveryService,
) -> Transports {
    let t = &config.transports;
    let mut transports =
        Transports::new().with(Arc::new(transport::inapp::InAppTransport::new(store, ds)));
    if let Some(w) = transport::webhook::WebhookTransport::new(&t.webhook) {
        transports = transports.with(Arc::new(w));
    }
    if let Some(rcs) = t
        .rcs
        .as_ref()
        .and_then(transport::carrier::RcsTransport::new)
    {
        transports = transports.with(Arc::new(rcs));
    }
    if let Some(sms) = t
        .sms
        .as_ref()
        .and_then(transport::carrier::SmsTransport::new)
    {
        transports = transports.with(Arc::new(sms));
    }
    if let Some(push) = t
        .push
        .as_ref()
        .and_then(transport::carrier::PushTransport::new)
    {
        transports = transports.with(Arc::new(push));
    }
    transports
}
