//! A send-pipeline backend made of two parts: the store that keeps messages (and the outbox)
//! and a queue that lives elsewhere (NATS JetStream). Workers and the acceptor see one
//! [`DeliveryBackend`] either way, so nothing above the traits knows which queue runs.
//!
//! It only forwards calls; it must never add logic of its own (that would make the split
//! backend behave differently from the embedded one).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sealgate_proto::send::{DeadLetter, MessageView};

use super::queue::{Job, JobQueue, NewJob};
use super::store::{
    AcceptOutcome, DeliveryStore, InAppDelivery, InAppOutcome, NewMessage, OutboundMessage,
    ReceiptOutcome, TenantCallback, Transition,
};
use crate::store::StoreError;

/// Messages from `store`, jobs from `queue`.
pub struct SplitBackend {
    store: Arc<dyn DeliveryStore>,
    queue: Arc<dyn JobQueue>,
    /// Woken after writes that add outbox rows (accepts), so the relay publishes at once.
    outbox_written: Option<Arc<tokio::sync::Notify>>,
}

impl SplitBackend {
    pub fn new(
        store: Arc<dyn DeliveryStore>,
        queue: Arc<dyn JobQueue>,
        outbox_written: Option<Arc<tokio::sync::Notify>>,
    ) -> Self {
        Self {
            store,
            queue,
            outbox_written,
        }
    }

    fn written(&self) {
        if let Some(n) = &self.outbox_written {
            n.notify_one();
        }
    }
}

#[async_trait]
impl DeliveryStore for SplitBackend {
    async fn accept_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<Result<AcceptOutcome, StoreError>>, StoreError> {
        let out = self.store.accept_messages(batch).await;
        self.written();
        out
    }

    fn accept_batches_in_flight(&self) -> usize {
        self.store.accept_batches_in_flight()
    }

    fn idempotency_keys_in_memory(&self) -> Option<u64> {
        self.store.idempotency_keys_in_memory()
    }

    async fn message_view(
        &self,
        tenant_id: &str,
        message_id: &str,
    ) -> Result<Option<MessageView>, StoreError> {
        self.store.message_view(tenant_id, message_id).await
    }

    async fn outbound(&self, message_id: &str) -> Result<Option<OutboundMessage>, StoreError> {
        self.store.outbound(message_id).await
    }

    async fn transition(&self, t: &Transition) -> Result<bool, StoreError> {
        let moved = self.store.transition(t).await;
        self.written();
        moved
    }

    async fn deliver_inapp(&self, d: &InAppDelivery) -> Result<InAppOutcome, StoreError> {
        let out = self.store.deliver_inapp(d).await;
        self.written();
        out
    }

    async fn carrier_receipt(
        &self,
        event_id: &str,
        t: &Transition,
    ) -> Result<ReceiptOutcome, StoreError> {
        let out = self.store.carrier_receipt(event_id, t).await;
        self.written();
        out
    }

    async fn set_callback(
        &self,
        tenant_id: &str,
        callback: &TenantCallback,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.store.set_callback(tenant_id, callback, now_ms).await
    }

    async fn callback(&self, tenant_id: &str) -> Result<Option<TenantCallback>, StoreError> {
        self.store.callback(tenant_id).await
    }

    async fn set_push_token(
        &self,
        device_id: &str,
        token: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.store.set_push_token(device_id, token, now_ms).await
    }

    async fn push_token(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        self.store.push_token(device_id).await
    }

    async fn user_by_phone(
        &self,
        tenant_id: &str,
        phone: &str,
    ) -> Result<Option<String>, StoreError> {
        self.store.user_by_phone(tenant_id, phone).await
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.store.purge_idempotency(before_ms).await
    }

    async fn take_quota(
        &self,
        tenant_id: &str,
        day: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        self.store.take_quota(tenant_id, day, want, limit).await
    }
}

#[async_trait]
impl JobQueue for SplitBackend {
    async fn enqueue(&self, job: &NewJob) -> Result<i64, StoreError> {
        self.queue.enqueue(job).await
    }

    async fn lease(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
        now_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        self.queue.lease(worker, max, lease, now_ms).await
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        self.queue.ack(job).await
    }

    async fn retry(&self, job: &Job, not_before_ms: i64, error: &str) -> Result<bool, StoreError> {
        self.queue.retry(job, not_before_ms, error).await
    }

    async fn dead_letter(&self, job: &Job, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.queue.dead_letter(job, reason, now_ms).await
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        self.queue.depth().await
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        self.queue.dead_letters(limit).await
    }

    async fn replay(&self, dead_letter_id: i64, now_ms: i64) -> Result<Option<i64>, StoreError> {
        self.queue.replay(dead_letter_id, now_ms).await
    }
}
