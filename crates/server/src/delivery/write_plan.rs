//! The storage-independent half of a batched write: given the statuses a batch starts from,
//! decide what each status change and carrier receipt in it does, in arrival order.
//!
//! Why a module of its own: the SQLite and PostgreSQL write batchers must apply exactly the
//! same rules (those of [`MessageStatus::can_move_to`], [`implied_sent`]) as the one-change
//! path, and differ only in their SQL. Keeping the walk here means one copy of the rules for
//! batches. It never touches a database and never sees payload bytes.

use std::collections::{HashMap, HashSet};

use sealgate_proto::send::MessageStatus;

use super::sqlite::{implied_sent, parse_status};
use super::store::{ReceiptOutcome, Transition};
use crate::store::StoreError;

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

/// Tenants (sorted, distinct) whose steps would produce a status callback (`sending` never
/// does).
pub(crate) fn callback_tenants(steps: &[(String, Transition)]) -> Vec<&str> {
    let mut tenants: Vec<&str> = steps
        .iter()
        .filter(|(_, t)| t.status != MessageStatus::Sending)
        .map(|(tenant, _)| tenant.as_str())
        .collect();
    tenants.sort_unstable();
    tenants.dedup();
    tenants
}
