//! The SQLite write batcher: one task owns the writing connection's hot path and turns every
//! write waiting at a given moment into one transaction of a few set-based statements.
//!
//! Why: sqlx runs each SQLite statement on the connection's own thread, so a statement costs
//! two thread switches on top of SQLite's work, and every commit appends the pages it touched
//! to the WAL. Written one by one, a message's status changes, acks and receipts cost about
//! twenty statements and four commits; here a batch of hundreds costs about ten statements
//! and one commit. Each caller is answered only after that commit.
//!
//! What stays exact: status changes, acks and receipts in one batch are applied in the order
//! they arrived, against the statuses read at the start of the batch and updated in memory as
//! the batch goes, so two changes to one message in one batch behave as if committed one after
//! the other. A batch is one transaction: if any statement fails, nothing of the batch is
//! written and every caller gets the error. Other writes (closures) run first, each in its own
//! savepoint, so one failing closure is undone alone. This module must never read or log
//! payload bytes.

use std::collections::{HashMap, HashSet};

use futures::future::BoxFuture;
use sealgate_proto::send::MessageStatus;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::queue::JobKind;
use super::sqlite::{callback_body, implied_sent, parse_status, wipes_payload};
use super::store::{ReceiptOutcome, Transition};
use crate::store::StoreError;

/// Most writes committed together.
pub(crate) const MAX_WRITE_BATCH: usize = 512;
/// Rows per multi-row statement (≤ 6 variables each: far below SQLite's limit).
const CHUNK: usize = 500;

/// Called once the batch's commit is decided: `Err` carries the commit's failure.
pub(crate) type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A general write: its statements (returning whether they succeeded), then its answer.
pub(crate) type BatchOp =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, (bool, Finish)> + Send>;

/// One write waiting for the batcher.
pub(crate) enum WriteOp {
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
    /// [`super::queue::JobQueue::ack`].
    Ack {
        job_id: i64,
        lease_token: String,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Anything else, in its own savepoint.
    General(BatchOp),
}

/// What the set-based part of a batch answers, in arrival order per kind.
#[derive(Default)]
struct Answers {
    transitions: Vec<bool>,
    receipts: Vec<ReceiptOutcome>,
    acks: Vec<bool>,
}

/// The batcher task: runs until every sender is dropped.
pub(crate) async fn run(writer: SqlitePool, mut rx: mpsc::Receiver<WriteOp>) {
    let mut ops: Vec<WriteOp> = Vec::with_capacity(MAX_WRITE_BATCH);
    while rx.recv_many(&mut ops, MAX_WRITE_BATCH).await > 0 {
        let mut general = Vec::new();
        let mut transitions = Vec::new();
        let mut receipts = Vec::new();
        let mut acks = Vec::new();
        // Arrival order of the status-changing writes, as (is_receipt, index).
        let mut order = Vec::new();
        for op in ops.drain(..) {
            match op {
                WriteOp::General(op) => general.push(op),
                WriteOp::Transition { t, reply } => {
                    order.push((false, transitions.len()));
                    transitions.push((t, reply));
                }
                WriteOp::Receipt { event_id, t, reply } => {
                    order.push((true, receipts.len()));
                    receipts.push((event_id, t, reply));
                }
                WriteOp::Ack {
                    job_id,
                    lease_token,
                    reply,
                } => acks.push((job_id, lease_token, reply)),
            }
        }
        let mut finishes: Vec<Finish> = Vec::with_capacity(general.len());
        let outcome: Result<Answers, StoreError> = async {
            let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
            for op in general {
                sqlx::query("SAVEPOINT w").execute(&mut *tx).await?;
                let (ok, finish) = op(&mut tx).await;
                finishes.push(finish);
                if !ok {
                    sqlx::query("ROLLBACK TO w").execute(&mut *tx).await?;
                }
                sqlx::query("RELEASE w").execute(&mut *tx).await?;
            }
            let t: Vec<&Transition> = transitions.iter().map(|(t, _)| t).collect();
            let r: Vec<(&str, &Transition)> =
                receipts.iter().map(|(e, t, _)| (e.as_str(), t)).collect();
            let a: Vec<(i64, &str)> = acks
                .iter()
                .map(|(id, tok, _)| (*id, tok.as_str()))
                .collect();
            let answers = apply(&mut tx, &t, &r, &order, &a).await?;
            tx.commit().await?;
            Ok(answers)
        }
        .await;
        let failure = outcome.as_ref().err().map(ToString::to_string);
        if let Some(e) = &failure {
            tracing::error!(error = %e, "batched write failed; nothing of the batch was stored");
        }
        for finish in finishes {
            finish(failure.clone().map_or(Ok(()), Err));
        }
        let fail = || StoreError::Batch(failure.clone().unwrap_or_default());
        match outcome {
            Ok(answers) => {
                for ((_, reply), moved) in transitions.into_iter().zip(answers.transitions) {
                    let _ = reply.send(Ok(moved));
                }
                for ((_, _, reply), outcome) in receipts.into_iter().zip(answers.receipts) {
                    let _ = reply.send(Ok(outcome));
                }
                for ((_, _, reply), acked) in acks.into_iter().zip(answers.acks) {
                    let _ = reply.send(Ok(acked));
                }
            }
            Err(_) => {
                for (_, reply) in transitions {
                    let _ = reply.send(Err(fail()));
                }
                for (_, _, reply) in receipts {
                    let _ = reply.send(Err(fail()));
                }
                for (_, _, reply) in acks {
                    let _ = reply.send(Err(fail()));
                }
            }
        }
    }
}

/// The state of one message as the batch goes.
struct Current {
    tenant_id: String,
    status: MessageStatus,
    /// Final values to write, if the status moved.
    moved: Option<(MessageStatus, Option<String>, i64)>,
    attempts: i64,
}

/// Apply the status changes, receipts and acks of one batch with set-based statements.
async fn apply(
    conn: &mut SqliteConnection,
    transitions: &[&Transition],
    receipts: &[(&str, &Transition)],
    order: &[(bool, usize)],
    acks: &[(i64, &str)],
) -> Result<Answers, StoreError> {
    let mut answers = Answers {
        transitions: vec![false; transitions.len()],
        receipts: vec![ReceiptOutcome::UnknownMessage; receipts.len()],
        acks: vec![false; acks.len()],
    };

    // The current status of every message the batch touches.
    let mut ids: Vec<&str> = transitions
        .iter()
        .map(|t| t.message_id.as_str())
        .chain(receipts.iter().map(|(_, t)| t.message_id.as_str()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut state: HashMap<String, Current> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT message_id, tenant_id, status FROM send_messages WHERE message_id IN (",
        );
        let mut sep = q.separated(", ");
        for id in chunk {
            sep.push_bind(*id);
        }
        q.push(")");
        let rows: Vec<(String, String, String)> = q.build_query_as().fetch_all(&mut *conn).await?;
        for (id, tenant_id, status) in rows {
            let status = parse_status(&status)?;
            state.insert(
                id,
                Current {
                    tenant_id,
                    status,
                    moved: None,
                    attempts: 0,
                },
            );
        }
    }

    // Receipts are applied once per event id: store the new ones.
    let mut fresh_events: HashSet<String> = HashSet::new();
    let mut new_events: Vec<(&str, &Transition)> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (event_id, t) in receipts {
        if state.contains_key(t.message_id.as_str()) && seen.insert(event_id) {
            new_events.push((event_id, t));
        }
    }
    for chunk in new_events.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO carrier_events (event_id, message_id, received_at) ",
        );
        q.push_values(chunk, |mut b, (event_id, t)| {
            b.push_bind(*event_id)
                .push_bind(&t.message_id)
                .push_bind(t.at);
        });
        q.push(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
        let rows: Vec<(String,)> = q.build_query_as().fetch_all(&mut *conn).await?;
        fresh_events.extend(rows.into_iter().map(|r| r.0));
    }

    // Walk the changes in arrival order against the in-memory statuses.
    let mut steps: Vec<(String, Transition)> = Vec::new();
    for &(is_receipt, i) in order {
        let t = if is_receipt {
            let (event_id, t) = receipts[i];
            if !state.contains_key(t.message_id.as_str()) {
                continue; // UnknownMessage
            }
            // First occurrence of a fresh event id in the batch only.
            if !fresh_events.remove(event_id) {
                answers.receipts[i] = ReceiptOutcome::Duplicate;
                continue;
            }
            answers.receipts[i] = ReceiptOutcome::Ignored;
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
            steps.push((cur.tenant_id.clone(), sent));
        }
        steps.push((cur.tenant_id.clone(), t.clone()));
        cur.status = t.status;
        cur.moved = Some((t.status, t.reason.clone(), t.at));
        if is_receipt {
            answers.receipts[i] = ReceiptOutcome::Applied;
        } else {
            answers.transitions[i] = true;
        }
    }

    // Messages: final status (and payload wipe) and attempt counts, one row each.
    let changed: Vec<(&String, &Current)> = state
        .iter()
        .filter(|(_, c)| c.moved.is_some() || c.attempts > 0)
        .collect();
    for chunk in changed.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("WITH v(id, status, reason, at, wipe, n) AS (");
        q.push_values(chunk, |mut b, (id, c)| {
            let (status, reason, at) = match &c.moved {
                Some((s, r, at)) => (Some(s.as_str()), r.clone(), Some(*at)),
                None => (None, None, None),
            };
            let wipe = c
                .moved
                .as_ref()
                .is_some_and(|(s, r, _)| wipes_payload(*s, r.as_deref()));
            b.push_bind(id.as_str())
                .push_bind(status)
                .push_bind(reason)
                .push_bind(at)
                .push_bind(wipe)
                .push_bind(c.attempts);
        });
        q.push(
            ") UPDATE send_messages SET \
             status = coalesce(v.status, send_messages.status), \
             reason = CASE WHEN v.status IS NULL THEN send_messages.reason ELSE v.reason END, \
             updated_at = coalesce(v.at, send_messages.updated_at), \
             payload = CASE WHEN v.wipe THEN x'' ELSE send_messages.payload END, \
             attempts = send_messages.attempts + v.n \
             FROM v WHERE send_messages.message_id = v.id",
        );
        q.build().execute(&mut *conn).await?;
    }

    // History, in order.
    for chunk in steps.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO send_history (message_id, status, reason, at) ",
        );
        q.push_values(chunk, |mut b, (_, t)| {
            b.push_bind(&t.message_id)
                .push_bind(t.status.as_str())
                .push_bind(t.reason.as_deref())
                .push_bind(t.at);
        });
        q.build().execute(&mut *conn).await?;
    }

    // Callback jobs for tenants that registered a callback, written with their change.
    let mut tenants: Vec<&str> = steps
        .iter()
        .filter(|(_, t)| t.status != MessageStatus::Sending)
        .map(|(tenant, _)| tenant.as_str())
        .collect();
    tenants.sort_unstable();
    tenants.dedup();
    if !tenants.is_empty() {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT tenant_id FROM tenant_callbacks WHERE tenant_id IN (",
        );
        let mut sep = q.separated(", ");
        for tenant in &tenants {
            sep.push_bind(*tenant);
        }
        q.push(")");
        let with_callback: HashSet<String> = q
            .build_query_as::<(String,)>()
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| r.0)
            .collect();
        let jobs: Vec<&(String, Transition)> = steps
            .iter()
            .filter(|(tenant, t)| {
                t.status != MessageStatus::Sending && with_callback.contains(tenant)
            })
            .collect();
        for chunk in jobs.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, not_before, \
                 created_at) ",
            );
            q.push_values(chunk, |mut b, (tenant, t)| {
                b.push_bind(JobKind::Callback.as_str())
                    .push_bind(tenant)
                    .push_bind(&t.message_id)
                    .push_bind(callback_body(t))
                    .push_bind(t.at)
                    .push_bind(t.at);
            });
            q.build().execute(&mut *conn).await?;
        }
    }

    // Acks: a job is removed only by the holder of its lease.
    let mut acked: HashSet<i64> = HashSet::new();
    for chunk in acks.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "DELETE FROM delivery_jobs WHERE (job_id, lease_token) IN (",
        );
        q.push_values(chunk, |mut b, (id, token)| {
            b.push_bind(*id).push_bind(*token);
        });
        q.push(") RETURNING job_id");
        let rows: Vec<(i64,)> = q.build_query_as().fetch_all(&mut *conn).await?;
        acked.extend(rows.into_iter().map(|r| r.0));
    }
    for (answer, (id, _)) in answers.acks.iter_mut().zip(acks) {
        *answer = acked.remove(id);
    }
    Ok(answers)
}
