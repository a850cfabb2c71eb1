//! The storage-independent half of a batched write: given the statuses a batch starts from,
//! decide what each status change and carrier receipt in it does, in arrival order.
//!
//! Why a module of its own: the SQLite and PostgreSQL write batchers must apply exactly the
//! same rules (those of [`MessageStatus::can_move_to`], [`implied_sent`]) as the one-change
//! path, and differ only in their SQL. Keeping the walk here means one copy of the rules for
//! batches. It never touches a database and never sees payload bytes.

use std::collections::{HashMap, HashSet};

use sealgate_proto::send::MessageStatus;
use tokio::sync::oneshot;

use super::sqlite::{implied_sent, parse_status};
use super::store::{ReceiptOutcome, Transition};
use crate::store::StoreError;

/// A status change or carrier receipt waiting for a write batcher, with its caller's answer.
pub(crate) enum StatusWrite {
    /// [`super::store::DeliveryStore::transition`].
    Transition {
        t: Transition,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// [`super::store::DeliveryStore::carrier_receipt`].
    Receipt {
        event_id: String,
        t: Transition,
        reply: oneshot::Sender<Result<ReceiptOutcome, StoreError>>,
    },
}

type TransitionReply = oneshot::Sender<Result<bool, StoreError>>;
type ReceiptReply = oneshot::Sender<Result<ReceiptOutcome, StoreError>>;

/// The status writes of one batch, split by kind, with their arrival order.
#[derive(Default)]
pub(crate) struct StatusBatch {
    transitions: Vec<(Transition, TransitionReply)>,
    receipts: Vec<(String, Transition, ReceiptReply)>,
    /// `(is_receipt, index)` in arrival order.
    order: Vec<(bool, usize)>,
}

impl StatusBatch {
    pub fn push(&mut self, write: StatusWrite) {
        match write {
            StatusWrite::Transition { t, reply } => {
                self.order.push((false, self.transitions.len()));
                self.transitions.push((t, reply));
            }
            StatusWrite::Receipt { event_id, t, reply } => {
                self.order.push((true, self.receipts.len()));
                self.receipts.push((event_id, t, reply));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn transitions(&self) -> Vec<&Transition> {
        self.transitions.iter().map(|(t, _)| t).collect()
    }

    pub fn receipts(&self) -> Vec<(&str, &Transition)> {
        self.receipts
            .iter()
            .map(|(e, t, _)| (e.as_str(), t))
            .collect()
    }

    pub fn order(&self) -> &[(bool, usize)] {
        &self.order
    }

    /// Answer every caller from the committed batch's walk.
    pub fn answer(self, transitions: Vec<bool>, receipts: Vec<ReceiptOutcome>) {
        for ((_, reply), moved) in self.transitions.into_iter().zip(transitions) {
            let _ = reply.send(Ok(moved));
        }
        for ((_, _, reply), outcome) in self.receipts.into_iter().zip(receipts) {
            let _ = reply.send(Ok(outcome));
        }
    }

    /// Answer every caller with an error (the batch was not stored).
    pub fn fail(self, error: impl Fn() -> StoreError) {
        for (_, reply) in self.transitions {
            let _ = reply.send(Err(error()));
        }
        for (_, _, reply) in self.receipts {
            let _ = reply.send(Err(error()));
        }
    }

    /// The writes again, one by one in arrival order (to retry them alone).
    pub fn into_arrival_order(self) -> Vec<StatusWrite> {
        let mut transitions: Vec<_> = self.transitions.into_iter().map(Some).collect();
        let mut receipts: Vec<_> = self.receipts.into_iter().map(Some).collect();
        self.order
            .iter()
            .filter_map(|&(is_receipt, i)| {
                if is_receipt {
                    let (event_id, t, reply) = receipts[i].take()?;
                    Some(StatusWrite::Receipt { event_id, t, reply })
                } else {
                    let (t, reply) = transitions[i].take()?;
                    Some(StatusWrite::Transition { t, reply })
                }
            })
            .collect()
    }
}

/// The state of one message as the batch goes.
pub(crate) struct Current {
    pub tenant_id: String,
    pub status: MessageStatus,
    /// Final values to write, if the status moved.
    pub moved: Option<(MessageStatus, Option<String>, i64)>,
    /// Transport attempts to add.
    pub attempts: i64,
}

/// The statuses the batch starts from, by message id.
pub(crate) type State = HashMap<String, Current>;

/// The sorted, distinct message ids that a batch's changes and receipts touch.
pub(crate) fn touched_ids<'a>(
    transitions: &[&'a Transition],
    receipts: &[(&'a str, &'a Transition)],
) -> Vec<&'a str> {
    let mut ids: Vec<&str> = transitions
        .iter()
        .map(|t| t.message_id.as_str())
        .chain(receipts.iter().map(|(_, t)| t.message_id.as_str()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Build the starting state from `(message_id, tenant_id, status)` rows.
pub(crate) fn state_from_rows(
    rows: impl IntoIterator<Item = (String, String, String)>,
) -> Result<State, StoreError> {
    rows.into_iter()
        .map(|(id, tenant_id, status)| {
            Ok((
                id,
                Current {
                    tenant_id,
                    status: parse_status(&status)?,
                    moved: None,
                    attempts: 0,
                },
            ))
        })
        .collect()
}

/// Receipts whose event id should be recorded: those for known messages, each event id once.
pub(crate) fn candidate_events<'a>(
    state: &State,
    receipts: &[(&'a str, &'a Transition)],
) -> Vec<(&'a str, &'a Transition)> {
    let mut seen: HashSet<&str> = HashSet::new();
    receipts
        .iter()
        .filter(|(event_id, t)| state.contains_key(t.message_id.as_str()) && seen.insert(event_id))
        .copied()
        .collect()
}

/// What the walk decided.
pub(crate) struct Plan {
    /// History entries to append, in order, with the message's tenant.
    pub steps: Vec<(String, Transition)>,
    /// Per status change: did it move the message?
    pub transitions: Vec<bool>,
    /// Per receipt.
    pub receipts: Vec<ReceiptOutcome>,
}

/// Walk the changes and receipts in arrival order (`order` holds `(is_receipt, index)`) against
/// `state`, updating it. `fresh_events` are the event ids that were new to the store (only the
/// first receipt carrying one in the batch is applied).
pub(crate) fn walk(
    state: &mut State,
    transitions: &[&Transition],
    receipts: &[(&str, &Transition)],
    order: &[(bool, usize)],
    mut fresh_events: HashSet<String>,
) -> Plan {
    let mut plan = Plan {
        steps: Vec::new(),
        transitions: vec![false; transitions.len()],
        receipts: vec![ReceiptOutcome::UnknownMessage; receipts.len()],
    };
    for &(is_receipt, i) in order {
        let t = if is_receipt {
            let (event_id, t) = receipts[i];
            if !state.contains_key(t.message_id.as_str()) {
                continue; // UnknownMessage
            }
            // First occurrence of a fresh event id in the batch only.
            if !fresh_events.remove(event_id) {
                plan.receipts[i] = ReceiptOutcome::Duplicate;
                continue;
            }
            plan.receipts[i] = ReceiptOutcome::Ignored;
            t
        } else {
            transitions[i]
        };
        let Some(cur) = state.get_mut(t.message_id.as_str()) else {
            continue;
        };
        if t.count_attempt {
            cur.attempts += 1;
        }
        if !cur.status.can_move_to(t.status) {
            continue;
        }
        if let Some(sent) = implied_sent(cur.status, t) {
            plan.steps.push((cur.tenant_id.clone(), sent));
        }
        plan.steps.push((cur.tenant_id.clone(), t.clone()));
        cur.status = t.status;
        cur.moved = Some((t.status, t.reason.clone(), t.at));
        if is_receipt {
            plan.receipts[i] = ReceiptOutcome::Applied;
        } else {
            plan.transitions[i] = true;
        }
    }
    plan
}

/// The steps that produce a status callback (`sending` never does), with their tenant.
pub(crate) fn reported(
    steps: &[(String, Transition)],
) -> impl Iterator<Item = &(String, Transition)> {
    steps
        .iter()
        .filter(|(_, t)| t.status != MessageStatus::Sending)
}
