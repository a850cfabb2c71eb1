//! The simulator's shared state behind a cheap-clone handle: rules, faults, inboxes, the
//! de-duplication tables, counters and the seeded RNGs.
//!
//! It exists so that every handler and receipt task sees one consistent phone network, and so
//! that "store the message" and "remember its id" happen under one lock (a duplicate can never
//! slip in between). It must never hold a lock across an `.await`, and never lets a message
//! into an inbox twice for the same (channel, number, id).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::config::{ConfigError, FaultConfig, Profile, RuleSet, SimConfig};
use crate::faults::{self, Fault};
use crate::receipts::Receipts;
use crate::time::now_rfc3339;

/// Which network a message went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// RCS through the RBM-shaped aggregator.
    Rcs,
    /// SMS through the SMS gateway.
    Sms,
}

/// One message as the phone received it.
#[derive(Debug, Clone, Serialize)]
pub struct InboxEntry {
    /// The RBM `messageId` or the SMS `reference` (the SMS id when there was none).
    pub message_id: String,
    /// The network it came over.
    pub channel: Channel,
    /// Plain text, for text messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The opaque base64 payload, for the E2EE route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2ee_payload: Option<String>,
    /// When the simulator accepted it.
    pub received_at: String,
}

/// One push notification as the device received it.
#[derive(Debug, Clone, Serialize)]
pub struct PushEntry {
    /// The id the push service answered with.
    pub id: String,
    /// The data object, as sent.
    pub data: serde_json::Value,
    /// When the simulator accepted it.
    pub received_at: String,
}

/// The outcome of offering a message to a phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored for the first time; receipts are due. Carries the provider id / send time.
    New(String),
    /// Seen before for this number and id; carries the first answer's id / send time.
    Duplicate(String),
}

#[derive(Default)]
struct Store {
    inboxes: HashMap<String, Vec<InboxEntry>>,
    push: HashMap<String, Vec<PushEntry>>,
    /// (channel, number, message id) → what the first send answered.
    seen: HashMap<(Channel, String, String), String>,
}

/// Counters behind `GET /control/stats`.
#[derive(Default)]
pub(crate) struct Stats {
    pub accepted_rcs: AtomicU64,
    pub accepted_sms: AtomicU64,
    pub accepted_push: AtomicU64,
    pub duplicates_rcs: AtomicU64,
    pub duplicates_sms: AtomicU64,
    pub faults_5xx: AtomicU64,
    pub faults_429: AtomicU64,
    pub faults_timeout: AtomicU64,
    pub faults_4xx: AtomicU64,
    pub faults_timeout_after_accept: AtomicU64,
    pub rejected_not_rcs: AtomicU64,
    pub rejected_no_e2ee: AtomicU64,
    pub rejected_not_sms: AtomicU64,
    pub rejected_unreachable: AtomicU64,
    pub receipts_sent: AtomicU64,
    pub receipts_failed_attempts: AtomicU64,
    pub receipts_dropped: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) struct Inner {
    pub agent_token: String,
    pub seed: u64,
    pub drain_ms: u64,
    rules: RwLock<RuleSet>,
    faults: RwLock<FaultConfig>,
    store: Mutex<Store>,
    fault_rng: Mutex<StdRng>,
    id_seq: AtomicU64,
    pub stats: Stats,
    pub receipts: Receipts,
}

/// A handle on one simulated phone network; clones share the same state.
#[derive(Clone)]
pub struct Sim {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.inner.seed)
            .finish()
    }
}

// A poisoned lock only means another request panicked mid-update; the maps stay usable, and a
// simulator that keeps answering is more useful to a test than one that cascades panics.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sim {
    /// Validates `config` and builds a simulator with empty inboxes. The seed is the
    /// configured one or, when absent, a random one (see [`Sim::seed`]).
    pub fn new(config: SimConfig) -> Result<Sim, ConfigError> {
        config.validate()?;
        let seed = config.seed.unwrap_or_else(rand::random);
        let receipts = Receipts::new(&config, seed)?;
        Ok(Sim {
            inner: Arc::new(Inner {
                agent_token: config.agent_token.clone(),
                seed,
                drain_ms: config.drain_ms,
                rules: RwLock::new(RuleSet::from_config(&config)),
                faults: RwLock::new(config.faults.clone()),
                store: Mutex::new(Store::default()),
                fault_rng: Mutex::new(StdRng::seed_from_u64(seed)),
                id_seq: AtomicU64::new(1),
                stats: Stats::default(),
                receipts,
            }),
        })
    }

    /// The seed of the fault draws (the read-share draws use `seed + 1`).
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// A fresh provider id such as `sms-000042`.
    pub(crate) fn next_id(&self, kind: &str) -> String {
        let n = self.inner.id_seq.fetch_add(1, Ordering::Relaxed);
        format!("{kind}-{n:06}")
    }

    /// The effective profile of `msisdn` and the faults that apply to it.
    pub(crate) fn profile(&self, msisdn: &str) -> (Profile, FaultConfig) {
        let (profile, rule_faults, _) = self.rules_read().resolve(msisdn);
        (profile, rule_faults.unwrap_or_else(|| self.faults()))
    }

    pub(crate) fn rules_read(&self) -> std::sync::RwLockReadGuard<'_, RuleSet> {
        self.inner
            .rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn rules_write(&self) -> std::sync::RwLockWriteGuard<'_, RuleSet> {
        self.inner
            .rules
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The global faults.
    pub(crate) fn faults(&self) -> FaultConfig {
        self.inner
            .faults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the global faults (already validated).
    pub(crate) fn set_faults(&self, faults: FaultConfig) {
        *self
            .inner
            .faults
            .write()
            .unwrap_or_else(PoisonError::into_inner) = faults;
    }

    /// Draws the fault for one send request and counts it.
    pub(crate) fn draw_fault(&self, faults: &FaultConfig) -> Fault {
        let fault = faults::draw(faults, &mut *lock(&self.inner.fault_rng));
        let stats = &self.inner.stats;
        match fault {
            Fault::None => {}
            Fault::ServerError(_) => bump(&stats.faults_5xx),
            Fault::RateLimited { .. } => bump(&stats.faults_429),
            Fault::Timeout { .. } => bump(&stats.faults_timeout),
            Fault::TimeoutAfterAccept { .. } => bump(&stats.faults_timeout_after_accept),
            Fault::Permanent4xx => bump(&stats.faults_4xx),
        }
        fault
    }

    /// Stores `entry` in `msisdn`'s inbox unless (channel, number, id) was seen before.
    /// `first_answer` is what the caller will answer for a new message (an id or a send time);
    /// a duplicate gets the stored first answer back. Counts accepted / duplicate.
    pub(crate) fn accept(&self, msisdn: &str, entry: InboxEntry, first_answer: String) -> Accepted {
        let channel = entry.channel;
        let key = (channel, msisdn.to_owned(), entry.message_id.clone());
        let outcome = {
            let mut store = lock(&self.inner.store);
            if let Some(previous) = store.seen.get(&key) {
                Accepted::Duplicate(previous.clone())
            } else {
                store.seen.insert(key, first_answer.clone());
                store
                    .inboxes
                    .entry(msisdn.to_owned())
                    .or_default()
                    .push(entry);
                Accepted::New(first_answer)
            }
        };
        let stats = &self.inner.stats;
        match (&outcome, channel) {
            (Accepted::New(_), Channel::Rcs) => bump(&stats.accepted_rcs),
            (Accepted::New(_), Channel::Sms) => bump(&stats.accepted_sms),
            (Accepted::Duplicate(_), Channel::Rcs) => bump(&stats.duplicates_rcs),
            (Accepted::Duplicate(_), Channel::Sms) => bump(&stats.duplicates_sms),
        }
        outcome
    }

    /// Appends a push notification to `token`'s list and returns its id.
    pub(crate) fn accept_push(&self, token: &str, data: serde_json::Value) -> String {
        let id = self.next_id("push");
        let entry = PushEntry {
            id: id.clone(),
            data,
            received_at: now_rfc3339(),
        };
        lock(&self.inner.store)
            .push
            .entry(token.to_owned())
            .or_default()
            .push(entry);
        bump(&self.inner.stats.accepted_push);
        id
    }

    /// Waits until every scheduled receipt was sent or dropped; `false` if `timeout` passed.
    pub async fn flush_receipts(&self, timeout: std::time::Duration) -> bool {
        self.inner.receipts.flush(timeout).await
    }

    /// `msisdn`'s inbox in arrival order (empty for a number never written to).
    pub fn inbox(&self, msisdn: &str) -> Vec<InboxEntry> {
        lock(&self.inner.store)
            .inboxes
            .get(msisdn)
            .cloned()
            .unwrap_or_default()
    }

    /// `token`'s push notifications in arrival order.
    pub fn push_messages(&self, token: &str) -> Vec<PushEntry> {
        lock(&self.inner.store)
            .push
            .get(token)
            .cloned()
            .unwrap_or_default()
    }

    /// Clears inboxes, push lists, de-duplication memory, counters and global faults, cancels
    /// scheduled receipts and re-seeds the RNGs. Number rules stay.
    pub fn reset(&self) {
        *lock(&self.inner.store) = Store::default();
        self.set_faults(FaultConfig::default());
        *lock(&self.inner.fault_rng) = StdRng::seed_from_u64(self.inner.seed);
        self.inner.receipts.reset(self.inner.seed);
        let s = &self.inner.stats;
        for counter in [
            &s.accepted_rcs,
            &s.accepted_sms,
            &s.accepted_push,
            &s.duplicates_rcs,
            &s.duplicates_sms,
            &s.faults_5xx,
            &s.faults_429,
            &s.faults_timeout,
            &s.faults_4xx,
            &s.faults_timeout_after_accept,
            &s.rejected_not_rcs,
            &s.rejected_no_e2ee,
            &s.rejected_not_sms,
            &s.rejected_unreachable,
            &s.receipts_sent,
            &s.receipts_failed_attempts,
            &s.receipts_dropped,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// A snapshot of the counters, as `GET /control/stats` shows them.
    pub fn stats(&self) -> serde_json::Value {
        let s = &self.inner.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "accepted": {
                "rcs": g(&s.accepted_rcs),
                "sms": g(&s.accepted_sms),
                "push": g(&s.accepted_push),
            },
            "duplicates": { "rcs": g(&s.duplicates_rcs), "sms": g(&s.duplicates_sms) },
            "faults": {
                "5xx": g(&s.faults_5xx),
                "429": g(&s.faults_429),
                "timeout": g(&s.faults_timeout),
                "4xx": g(&s.faults_4xx),
                "timeout_after_accept": g(&s.faults_timeout_after_accept),
            },
            "rejected": {
                "not_rcs": g(&s.rejected_not_rcs),
                "no_e2ee": g(&s.rejected_no_e2ee),
                "not_sms": g(&s.rejected_not_sms),
                "unreachable": g(&s.rejected_unreachable),
            },
            "receipts": {
                "sent": g(&s.receipts_sent),
                "failed_attempts": g(&s.receipts_failed_attempts),
                "dropped": g(&s.receipts_dropped),
                "pending": self.inner.receipts.pending(),
            },
        })
    }
}
