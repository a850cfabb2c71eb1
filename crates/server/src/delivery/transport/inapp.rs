//! The in-app transport: puts an MLS application message into the DS mailboxes of the
//! recipient user's devices that are members of the conversation, then wakes their
//! long-polls; push wake-ups are enqueued in the same transaction for devices with a push
//! token.
//!
//! The tenant backend is the sender (its API key authenticated the request; the message's
//! real MLS sender is inside the ciphertext, which only members can read), so mailbox events
//! name `tenant:<id>` / `api` as sender. Idempotent by message id: the store writes the
//! mailboxes and the `sent` state in one transaction and refuses a second time. It must never
//! decrypt or log the message.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Transport, TransportAck, TransportError, TransportKind, TransportRequest};
use crate::delivery::store::{InAppDelivery, InAppOutcome, PayloadKind};
use crate::ds::DeliveryService;
use crate::store::Store;

/// Sender device name recorded on mailbox events of business messages.
pub const API_SENDER_DEVICE: &str = "api";

pub struct InAppTransport {
    store: Arc<dyn Store>,
    ds: DeliveryService,
}

impl InAppTransport {
    pub fn new(store: Arc<dyn Store>, ds: DeliveryService) -> Self {
        Self { store, ds }
    }

    /// The recipient's user id: `to` is a user id, or an E.164 number bound to a user.
    async fn user_of(&self, tenant_id: &str, to: &str) -> Result<Option<String>, TransportError> {
        if to.starts_with('+') {
            self.store
                .user_by_phone(tenant_id, to)
                .await
                .map_err(store_failed)
        } else {
            Ok(Some(to.to_owned()))
        }
    }
}

fn store_failed(e: crate::store::StoreError) -> TransportError {
    tracing::warn!(error = %e, "in-app delivery: store failed");
    TransportError::transient(super::ErrorClass::Other, "store failed")
}

#[async_trait]
impl Transport for InAppTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Inapp
    }

    async fn send(&self, request: &TransportRequest) -> Result<TransportAck, TransportError> {
        let TransportRequest::Message(m) = request else {
            return Err(TransportError::permanent("unsupported_request"));
        };
        let (PayloadKind::Mls, Some(group_id), Some(epoch)) = (m.kind, &m.group_id, m.epoch) else {
            return Err(TransportError::permanent("unsupported_request"));
        };
        let Some(user) = self.user_of(&m.tenant_id, &m.recipient).await? else {
            return Err(TransportError::permanent("unknown_recipient"));
        };
        let group = self.store.group(group_id).await.map_err(store_failed)?;
        let Some(group) = group.filter(|g| g.tenant_id == m.tenant_id) else {
            return Err(TransportError::permanent("unknown_conversation"));
        };
        let mut recipients: Vec<String> = group
            .roster
            .iter()
            .filter(|r| r.user_id == user)
            .map(|r| r.device_id.clone())
            .collect();
        recipients.sort_unstable();
        recipients.dedup();
        if recipients.is_empty() {
            return Err(TransportError::permanent("recipient_not_member"));
        }
        let outcome = self
            .store
            .deliver_inapp(&InAppDelivery {
                message_id: m.message_id.clone(),
                group_id: group_id.clone(),
                epoch,
                sender_user: format!("tenant:{}", m.tenant_id),
                sender_device: API_SENDER_DEVICE.to_owned(),
                bytes: m.payload.clone(),
                recipients: recipients.clone(),
                at: crate::store::now_millis(),
            })
            .await
            .map_err(store_failed)?;
        match outcome {
            InAppOutcome::Delivered { .. } => {
                self.ds.notify(&recipients);
                Ok(TransportAck::default())
            }
            InAppOutcome::AlreadyDelivered => Ok(TransportAck::default()),
            InAppOutcome::UnknownMessage => Err(TransportError::permanent("unknown_message")),
        }
    }
}
