//! The MLS Delivery Service: follows each group as a non-member (mls-rs `ExternalGroup`),
//! accepts exactly one PublicMessage commit per epoch, routes Welcomes after their commit
//! wins, keeps the roster, stores each application message once and fans a pointer out to
//! every member device's mailbox, and serves mailboxes by long-poll with acknowledgement.
//!
//! It must never hold MLS secrets or see plaintext: application messages are PrivateMessage
//! bytes it stores and forwards without decrypting. The in-process wake-ups below are only a
//! latency optimisation; correctness (one commit per epoch, no lost message) lives in the
//! store, because several API processes may share one database.

#[cfg(test)]
pub(crate) mod conformance;
pub mod engine;
pub mod routes;
pub mod sqlite;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// In-process wake-ups for mailbox long-polls, keyed by device id. Cheap to clone.
#[derive(Clone, Default)]
pub struct DeliveryService {
    inner: Arc<DsInner>,
}

#[derive(Default)]
struct DsInner {
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    shutdown: Notify,
    stopping: AtomicBool,
}

impl DsInner {
    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A registration for wake-ups of one device's mailbox. Create it *before* querying the
/// mailbox, then wait on [`Waiter::notify`]; a wake-up between the query and the wait is not
/// lost as long as the `Notified` future was enabled before the query.
pub struct Waiter {
    device_id: String,
    notify: Arc<Notify>,
    ds: Arc<DsInner>,
}

impl Waiter {
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.ds.waiters();
        // The map holds one reference and we hold one: nobody else waits on this device.
        if Arc::strong_count(&self.notify) == 2 {
            map.remove(&self.device_id);
        }
    }
}

impl DeliveryService {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register interest in `device_id`'s mailbox.
    pub fn waiter(&self, device_id: &str) -> Waiter {
        let notify = self
            .inner
            .waiters()
            .entry(device_id.to_owned())
            .or_default()
            .clone();
        Waiter {
            device_id: device_id.to_owned(),
            notify,
            ds: self.inner.clone(),
        }
    }

    /// Wake every long-poll waiting on one of `device_ids`.
    pub fn notify<'a>(&self, device_ids: impl IntoIterator<Item = &'a String>) {
        let map = self.inner.waiters();
        for id in device_ids {
            if let Some(n) = map.get(id) {
                n.notify_waiters();
            }
        }
    }

    /// Has shutdown begun?
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_signal(&self) {
        let notified = self.inner.shutdown.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_shutting_down() {
            return;
        }
        notified.await;
    }

    /// Wake every pending long-poll (graceful shutdown).
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.shutdown.notify_waiters();
        let waiters = self.inner.waiters();
        for n in waiters.values() {
            n.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiter_registered_before_notify_is_woken_and_map_is_cleaned() {
        let ds = DeliveryService::new();
        let w = ds.waiter("dev1");
        {
            let notified = w.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            ds.notify([&"dev1".to_owned()]);
            tokio::time::timeout(std::time::Duration::from_secs(1), notified)
                .await
                .expect("woken");
        }
        drop(w);
        assert!(ds.inner.waiters().is_empty());
    }

    #[tokio::test]
    async fn shutdown_signal_resolves_even_if_late() {
        let ds = DeliveryService::new();
        ds.shutdown();
        tokio::time::timeout(std::time::Duration::from_secs(1), ds.shutdown_signal())
            .await
            .expect("resolved");
    }
}
