//! An in-memory backend of the send pipeline (messages and queue), for unit tests that run
//! the workers under paused tokio time (SQLite's pool timers do not survive paused time) and
//! as the second implementation the queue conformance tests run against.
//!
//! It follows the same contract as the SQLite backend, including forward-only status moves
//! and lease tokens. Nothing persists: it must never be used to serve real traffic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use sealgate_proto::send::{DeadLetter, MessageStatus, MessageView, StatusEntry};

use super::queue::{Job, JobKind, JobQueue, NewJob};
use super::sqlite::{callback_body, implied_sent, replay_requeues, wipes_payload};
use super::store::{
    AcceptOutcome, DeliveryStore, InAppDelivery, InAppOutcome, NewMessage, OutboundMessage,
    ReceiptOutcome, TenantCallback, Transition,
};
use crate::auth::random_id;
use crate::store::StoreError;

#[derive(Debug)]
struct MemJob {
    job: Job,
    not_before: i64,
}

#[derive(Debug, Default)]
struct State {
    messages: HashMap<String, (OutboundMessage, Vec<StatusEntry>)>,
    idem: HashMap<(String, String), (Vec<u8>, String, i64)>,
    jobs: BTreeMap<i64, MemJob>,
    next_job: i64,
    dead: Vec<(DeadLetter, Option<Vec<u8>>)>,
    callbacks: HashMap<String, TenantCallback>,
    events: HashSet<String>,
    push: HashMap<String, String>,
    /// Mailbox deliveries: message id → devices.
    inapp: HashMap<String, Vec<String>>,
    /// Daily quota: tenant → (day, used).
    quota: HashMap<String, (i64, u64)>,
}

impl State {
    fn add_job(&mut self, j: &NewJob) -> i64 {
        self.next_job += 1;
        let id = self.next_job;
        self.jobs.insert(
            id,
            MemJob {
                job: Job {
                    job_id: id,
                    kind: j.kind,
                    tenant_id: j.tenant_id.clone(),
                    message_id: j.message_id.clone(),
                    payload: j.payload.clone(),
                    attempts: 0,
                    created_at: j.not_before,
                    lease_token: String::new(),
                    last_error: None,
                },
                not_before: j.not_before,
            },
        );
        id
    }

    fn transition(&mut self, t: &Transition) -> bool {
        let Some((m, _)) = self.messages.get_mut(&t.message_id) else {
            return false;
        };
        if t.count_attempt {
            m.attempts += 1;
        }
        if !m.status.can_move_to(t.status) {
            return false;
        }
        if let Some(sent) = implied_sent(m.status, t) {
            self.apply_step(&sent);
        }
        self.apply_step(t);
        true
    }

    fn apply_step(&mut self, t: &Transition) {
        let Some((m, history)) = self.messages.get_mut(&t.message_id) else {
            return;
        };
        m.status = t.status;
        m.reason = t.reason.clone();
        if wipes_payload(t.status, t.reason.as_deref()) {
            m.payload.clear();
        }
        history.push(StatusEntry {
            status: t.status,
            at: t.at,
            reason: t.reason.clone(),
        });
        let tenant = m.tenant_id.clone();
        if t.status != MessageStatus::Sending && self.callbacks.contains_key(&tenant) {
            self.add_job(&NewJob {
                kind: JobKind::Callback,
                tenant_id: tenant,
                message_id: Some(t.message_id.clone()),
                payload: Some(callback_body(t)),
                not_before: t.at,
            });
        }
    }

    fn take_leased(&mut self, job: &Job) -> Option<MemJob> {
        match self.jobs.get(&job.job_id) {
            Some(j) if j.job.lease_token == job.lease_token => self.jobs.remove(&job.job_id),
            _ => None,
        }
    }
}

/// The in-memory backend. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
    /// How long a status change takes to "commit" (tests of what waits for one).
    #[cfg(test)]
    transition_latency: Mutex<std::time::Duration>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Make every status change take `latency` (on the tokio clock) before it applies.
    #[cfg(test)]
    pub fn set_transition_latency(&self, latency: std::time::Duration) {
        *self
            .transition_latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = latency;
    }

    /// Devices an in-app message was delivered to (tests).
    pub fn inapp_deliveries(&self, message_id: &str) -> Option<Vec<String>> {
        self.state().inapp.get(message_id).cloned()
    }
}

#[async_trait]
impl DeliveryStore for MemoryBackend {
    async fn accept_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<Result<AcceptOutcome, StoreError>>, StoreError> {
        let mut s = self.state();
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let key = (m.tenant_id.clone(), m.idempotency_key.clone());
            if let Some((hash, id, _)) = s.idem.get(&key) {
                out.push(Ok(if *hash == m.request_hash {
                    AcceptOutcome::Replayed {
                        message_id: id.clone(),
                    }
                } else {
                    AcceptOutcome::KeyReused
                }));
                continue;
            }
            s.idem.insert(
                key,
                (m.request_hash.clone(), m.message_id.clone(), m.accepted_at),
            );
            let outbound = OutboundMessage {
                message_id: m.message_id.clone(),
                tenant_id: m.tenant_id.clone(),
                recipient: m.recipient.clone(),
                class: m.class,
                channel: m.channel,
                kind: m.kind,
                group_id: m.group_id.clone(),
                epoch: m.epoch,
                payload: m.payload.clone(),
                status: MessageStatus::Queued,
                reason: None,
                attempts: 0,
                correlation_id: m.correlation_id.clone(),
                accepted_at: m.accepted_at,
                expires_at: m.expires_at,
            };
            let history = vec![StatusEntry {
                status: MessageStatus::Queued,
                at: m.accepted_at,
                reason: None,
            }];
            s.messages.insert(m.message_id.clone(), (outbound, history));
            s.add_job(&NewJob {
                kind: JobKind::Send,
                tenant_id: m.tenant_id.clone(),
                message_id: Some(m.message_id.clone()),
                payload: None,
                not_before: m.accepted_at,
            });
            out.push(Ok(AcceptOutcome::Accepted {
                message_id: m.message_id.clone(),
            }));
        }
        Ok(out)
    }

    async fn message_view(
        &self,
        tenant_id: &str,
        message_id: &str,
    ) -> Result<Option<MessageView>, StoreError> {
        let s = self.state();
        Ok(s.messages
            .get(message_id)
            .filter(|(m, _)| m.tenant_id == tenant_id)
            .map(|(m, history)| MessageView {
                message_id: m.message_id.clone(),
                to: m.recipient.clone(),
                class: m.class,
                channel: m.channel,
                status: m.status,
                reason: m.reason.clone(),
                attempts: m.attempts,
                history: history.clone(),
            }))
    }

    async fn outbound(&self, message_id: &str) -> Result<Option<OutboundMessage>, StoreError> {
        Ok(self
            .state()
            .messages
            .get(message_id)
            .map(|(m, _)| m.clone()))
    }

    async fn transition(&self, t: &Transition) -> Result<bool, StoreError> {
        #[cfg(test)]
        {
            let latency = *self
                .transition_latency
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
        }
        Ok(self.state().transition(t))
    }

    async fn deliver_inapp(&self, d: &InAppDelivery) -> Result<InAppOutcome, StoreError> {
        let mut s = self.state();
        let Some((m, _)) = s.messages.get(&d.message_id) else {
            return Ok(InAppOutcome::UnknownMessage);
        };
        if m.status.rank() >= MessageStatus::Sent.rank() {
            return Ok(InAppOutcome::AlreadyDelivered);
        }
        let tenant = m.tenant_id.clone();
        s.inapp.insert(d.message_id.clone(), d.recipients.clone());
        let pushed: Vec<String> = d
            .recipients
            .iter()
            .filter(|r| s.push.contains_key(*r))
            .cloned()
            .collect();
        for device in &pushed {
            s.add_job(&NewJob {
                kind: JobKind::Push,
                tenant_id: tenant.clone(),
                message_id: Some(d.message_id.clone()),
                payload: Some(device.as_bytes().to_vec()),
                not_before: d.at,
            });
        }
        s.transition(&Transition {
            message_id: d.message_id.clone(),
            status: MessageStatus::Sent,
            reason: None,
            at: d.at,
            count_attempt: false,
        });
        Ok(InAppOutcome::Delivered { pushed })
    }

    async fn carrier_receipt(
        &self,
        event_id: &str,
        t: &Transition,
    ) -> Result<ReceiptOutcome, StoreError> {
        let mut s = self.state();
        if !s.messages.contains_key(&t.message_id) {
            return Ok(ReceiptOutcome::UnknownMessage);
        }
        if !s.events.insert(event_id.to_owned()) {
            return Ok(ReceiptOutcome::Duplicate);
        }
        Ok(if s.transition(t) {
            ReceiptOutcome::Applied
        } else {
            ReceiptOutcome::Ignored
        })
    }

    async fn set_callback(
        &self,
        tenant_id: &str,
        callback: &TenantCallback,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        self.state()
            .callbacks
            .insert(tenant_id.to_owned(), callback.clone());
        Ok(())
    }

    async fn callback(&self, tenant_id: &str) -> Result<Option<TenantCallback>, StoreError> {
        Ok(self.state().callbacks.get(tenant_id).cloned())
    }

    async fn set_push_token(
        &self,
        device_id: &str,
        token: &str,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        self.state()
            .push
            .insert(device_id.to_owned(), token.to_owned());
        Ok(())
    }

    async fn push_token(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.state().push.get(device_id).cloned())
    }

    async fn user_by_phone(
        &self,
        _tenant_id: &str,
        _phone: &str,
    ) -> Result<Option<String>, StoreError> {
        // The memory backend has no directory.
        Ok(None)
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut s = self.state();
        let before = s.idem.len();
        s.idem.retain(|_, (_, _, at)| *at >= before_ms);
        Ok((before - s.idem.len()) as u64)
    }

    async fn take_quota(
        &self,
        tenant_id: &str,
        day: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let mut s = self.state();
        let (on, used) = s.quota.entry(tenant_id.to_owned()).or_insert((day, 0));
        if day < *on {
            return Ok(0);
        }
        if day > *on {
            (*on, *used) = (day, 0);
        }
        let granted = want.min(limit.saturating_sub(*used));
        *used += granted;
        Ok(granted)
    }
}

#[async_trait]
impl JobQueue for MemoryBackend {
    async fn enqueue(&self, job: &NewJob) -> Result<i64, StoreError> {
        Ok(self.state().add_job(job))
    }

    async fn lease(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
        now_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let token = format!("{worker}:{}", random_id(""));
        let until = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let mut s = self.state();
        let mut ready: Vec<(i64, i64)> = s
            .jobs
            .values()
            .filter(|j| j.not_before <= now_ms)
            .map(|j| (j.not_before, j.job.job_id))
            .collect();
        ready.sort_unstable();
        let mut out = Vec::new();
        for (_, id) in ready.into_iter().take(max) {
            if let Some(j) = s.jobs.get_mut(&id) {
                j.not_before = until;
                j.job.attempts += 1;
                j.job.lease_token = token.clone();
                out.push(j.job.clone());
            }
        }
        Ok(out)
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        Ok(self.state().take_leased(job).is_some())
    }

    async fn retry(&self, job: &Job, not_before_ms: i64, error: &str) -> Result<bool, StoreError> {
        let mut s = self.state();
        match s.jobs.get_mut(&job.job_id) {
            Some(j) if j.job.lease_token == job.lease_token => {
                j.not_before = not_before_ms;
                j.job.lease_token.clear();
                j.job.last_error = Some(error.to_owned());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn dead_letter(&self, job: &Job, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut s = self.state();
        let Some(j) = s.take_leased(job) else {
            return Ok(false);
        };
        let id = s.dead.len() as i64 + 1;
        s.dead.push((
            DeadLetter {
                dead_letter_id: id,
                job_id: j.job.job_id,
                kind: j.job.kind.as_str().to_owned(),
                message_id: j.job.message_id.clone(),
                tenant_id: j.job.tenant_id.clone(),
                attempts: job.attempts,
                reason: reason.to_owned(),
                last_error: job.last_error.clone(),
                created_at: now_ms,
                replayed_at: None,
            },
            j.job.payload,
        ));
        Ok(true)
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        Ok(self.state().jobs.len() as u64)
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self
            .state()
            .dead
            .iter()
            .rev()
            .take(limit as usize)
            .map(|(d, _)| d.clone())
            .collect())
    }

    async fn replay(&self, dead_letter_id: i64, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let mut s = self.state();
        let Some((d, payload)) = s
            .dead
            .iter_mut()
            .find(|(d, _)| d.dead_letter_id == dead_letter_id)
        else {
            return Ok(None);
        };
        d.replayed_at = Some(now_ms);
        let kind = JobKind::parse(&d.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("job kind {}", d.kind)))?;
        let job = NewJob {
            kind,
            tenant_id: d.tenant_id.clone(),
            message_id: d.message_id.clone(),
            payload: payload.clone(),
            not_before: now_ms,
        };
        let id = s.add_job(&job);
        if kind == JobKind::Send
            && let Some((m, history)) = job
                .message_id
                .as_ref()
                .and_then(|mid| s.messages.get_mut(mid))
            && replay_requeues(m.status, m.reason.as_deref())
        {
            m.status = MessageStatus::Queued;
            m.reason = None;
            history.push(StatusEntry {
                status: MessageStatus::Queued,
                at: now_ms,
                reason: Some("replayed".into()),
            });
        }
        Ok(Some(id))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::conformance as c;
    use super::*;

    #[tokio::test]
    async fn conformance() {
        c::idempotency_inside_and_across_batches(&MemoryBackend::new()).await;
        c::a_large_batch_replays_every_key(&MemoryBackend::new()).await;
        c::lease_retry_ack(&MemoryBackend::new()).await;
        c::expired_lease_is_leased_again(&MemoryBackend::new()).await;
        c::dead_letter_and_replay(&MemoryBackend::new()).await;
        c::statuses_move_forward_with_callbacks(&MemoryBackend::new()).await;
        c::receipt_before_sent_records_sent_first(&MemoryBackend::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_leases() {
        c::concurrent_leases_are_disjoint(Arc::new(MemoryBackend::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn daily_quota() {
        c::daily_quota(Arc::new(MemoryBackend::new())).await;
    }
}
