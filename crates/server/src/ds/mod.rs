//! The MLS Delivery Service: follows each group as a non-member (mls-rs `ExternalGroup`),
//! accepts exactly one PublicMessage commit per epoch, routes Welcomes after their commit
//! wins, keeps the roster, stores each application message once and fans a pointer out to
//! every member device's mailbox, and serves mailboxes by long-poll with acknowledgement.
//!
//! It must never hold MLS secrets or see plaintext: application messages are PrivateMessage
//! bytes it stores and forwards without decrypting.

pub mod routes;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
}

impl DeliveryService {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wake every pending long-poll (graceful shutdown).
    pub fn shutdown(&self) {
        self.inner.shutdown.notify_waiters();
        let waiters = self
            .inner
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for n in waiters.values() {
            n.notify_waiters();
        }
    }
}
