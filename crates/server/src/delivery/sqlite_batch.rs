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

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::queue::{Job, JobKind};
use super::sqlite::{callback_body, wipes_payload};
use super::store::{ReceiptOutcome, Transition};
use super::write_plan::{self, Plan, StatusBatch, StatusWrite};
use crate::store::StoreError;
use crate::store::sqlite::Writer;

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
    /// A status change or carrier receipt.
    Status(StatusWrite),
    /// [`super::queue::JobQueue::ack`].
    Ack {
        job: AckJob,
        lease_token: String,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Anything else, in its own savepoint.
    General(BatchOp),
}

/// Where a job lives: a send job is columns of its message's row, any other job is a
/// `delivery_jobs` row (see `sqlite_queue.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum AckJob {
    /// The message id.
    Send(String),
    /// The `delivery_jobs` id.
    Other(i64),
}

impl AckJob {
    pub(crate) fn of(job: &Job) -> Result<Self, StoreError> {
        match (job.kind, &job.message_id) {
            (JobKind::Send, Some(id)) => Ok(AckJob::Send(id.clone())),
            (JobKind::Send, None) => {
                Err(StoreError::Corrupt("a send job without a message".into()))
            }
            _ => Ok(AckJob::Other(job.job_id)),
        }
    }
}

/// What the set-based part of a batch answers, in arrival order per kind.
#[derive(Default)]
struct Answers {
    transitions: Vec<bool>,
    receipts: Vec<ReceiptOutcome>,
    acks: Vec<bool>,
}

/// The batcher task: runs until every sender is dropped.
pub(crate) async fn run(writer: Writer, mut rx: mpsc::Receiver<WriteOp>) {
    let mut ops: Vec<WriteOp> = Vec::with_capacity(MAX_WRITE_BATCH);
    while rx.recv_many(&mut ops, MAX_WRITE_BATCH).await > 0 {
        let mut general = Vec::new();
        let mut status = StatusBatch::default();
        let mut acks = Vec::new();
        for op in ops.drain(..) {
            match op {
                WriteOp::General(op) => general.push(op),
                WriteOp::Status(write) => status.push(write),
                WriteOp::Ack {
                    job,
                    lease_token,
                    reply,
                } => acks.push((job, lease_token, reply)),
            }
        }
        let mut finishes: Vec<Finish> = Vec::with_capacity(general.len());
        // A panic inside a write must not end this task (every later write would fail): it
        // drops the transaction, which rolls the whole batch back, and fails the batch.
        let batch = AssertUnwindSafe(async {
            let mut tx = writer.begin().await?;
            for op in general {
                sqlx::query("SAVEPOINT w").execute(&mut *tx).await?;
                let (ok, finish) = op(&mut tx).await;
                finishes.push(finish);
                if !ok {
                    sqlx::query("ROLLBACK TO w").execute(&mut *tx).await?;
                }
                sqlx::query("RELEASE w").execute(&mut *tx).await?;
            }
            let a: Vec<(&AckJob, &str)> = acks
                .iter()
                .map(|(job, tok, _)| (job, tok.as_str()))
                .collect();
            let (t, r) = (status.transitions(), status.receipts());
            let answers = apply(&mut tx, &t, &r, status.order(), &a).await?;
            tx.commit().await?;
            Ok(answers)
        });
        let outcome: Result<Answers, StoreError> =
            batch.catch_unwind().await.unwrap_or_else(|_| {
                Err(StoreError::Batch(
                    "a write panicked; the batch was rolled back".into(),
                ))
            });
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
                status.answer(answers.transitions, answers.receipts);
                for ((_, _, reply), acked) in acks.into_iter().zip(answers.acks) {
                    let _ = reply.send(Ok(acked));
                }
            }
            Err(_) => {
                status.fail(fail);
                for (_, _, reply) in acks {
                    let _ = reply.send(Err(fail()));
                }
            }
        }
    }
}

/// Apply the status changes, receipts and acks of one batch with set-based statements.
async fn apply(
    conn: &mut SqliteConnection,
    transitions: &[&Transition],
    receipts: &[(&str, &Transition)],
    order: &[(bool, usize)],
    acks: &[(&AckJob, &str)],
) -> Result<Answers, StoreError> {
    // The current status of every message the batch touches.
    let ids = write_plan::touched_ids(transitions, receipts);
    let mut rows: Vec<(String, String, String)> = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT message_id, tenant_id, status FROM send_messages WHERE message_id IN (",
        );
        let mut sep = q.separated(", ");
        for id in chunk {
            sep.push_bind(*id);
        }
        q.push(")");
        rows.extend(q.build_query_as().fetch_all(&mut *conn).await?);
    }
    let mut state = write_plan::state_from_rows(rows)?;

    // Receipts are applied once per event id: store the new ones.
    let mut fresh_events: HashSet<String> = HashSet::new();
    let new_events = write_plan::candidate_events(&state, receipts);
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
    let Plan {
        steps,
        transitions: moved,
        receipts: receipt_outcomes,
    } = write_plan::walk(&mut state, transitions, receipts, order, fresh_events);
    let mut answers = Answers {
        transitions: moved,
        receipts: receipt_outcomes,
        acks: vec![false; acks.len()],
    };

    // Messages: final status (and payload wipe) and attempt counts, one row each.
    let changed: Vec<(&String, &write_plan::Current)> = state
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
    let mut tenants: Vec<&str> = write_plan::reported(&steps)
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
        let jobs: Vec<&(String, Transition)> = write_plan::reported(&steps)
            .filter(|(tenant, _)| with_callback.contains(tenant))
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

    // Acks: a job is removed only by the holder of its lease (`ack_query`).
    let mut acked: HashSet<(AckJob, String)> = HashSet::new();
    let sends: Vec<(&str, &str)> = acks
        .iter()
        .filter_map(|(job, token)| match job {
            AckJob::Send(id) => Some((id.as_str(), *token)),
            AckJob::Other(_) => None,
        })
        .collect();
    for chunk in sends.chunks(CHUNK) {
        let rows: Vec<(String, String)> = ack_query("", ACK_SENDS, "message_id", chunk)
            .build_query_as()
            .fetch_all(&mut *conn)
            .await?;
        acked.extend(
            rows.into_iter()
                .map(|(id, token)| (AckJob::Send(id), token)),
        );
    }
    let others: Vec<(i64, &str)> = acks
        .iter()
        .filter_map(|(job, token)| match job {
            AckJob::Other(id) => Some((*id, *token)),
            AckJob::Send(_) => None,
        })
        .collect();
    for chunk in others.chunks(CHUNK) {
        let rows: Vec<(i64, String)> = ack_query("", ACK_OTHERS, "job_id", chunk)
            .build_query_as()
            .fetch_all(&mut *conn)
            .await?;
        acked.extend(
            rows.into_iter()
                .map(|(id, token)| (AckJob::Other(id), token)),
        );
    }
    for (answer, (job, token)) in answers.acks.iter_mut().zip(acks) {
        *answer = acked.remove(&((*job).clone(), (*token).to_owned()));
    }
    Ok(answers)
}

/// Acking send jobs: the token stays (a job is there only while `job_due` is set), so the
/// answer names the lease that acked, also when a stale and a current ack of one message meet
/// in one batch.
const ACK_SENDS: &str = "UPDATE send_messages SET job_due = NULL, last_error = NULL \
     WHERE job_due IS NOT NULL AND";
/// Acking callback and push jobs.
const ACK_OTHERS: &str = "DELETE FROM delivery_jobs WHERE";

/// `head` (after `prefix`, which tests set to `EXPLAIN QUERY PLAN`) for the jobs of `chunk`
/// whose lease is the given token, returning the acked (key, token) pairs. The plain `IN` list
/// on `key` lets SQLite look the rows up by key; the row-value `IN` alone makes it scan the
/// whole table (every ack batch read the whole backlog).
fn ack_query<'a, K>(
    prefix: &str,
    head: &str,
    key: &str,
    chunk: &'a [(K, &'a str)],
) -> QueryBuilder<'a, Sqlite>
where
    K: Copy + Send + sqlx::Encode<'a, Sqlite> + sqlx::Type<Sqlite> + 'a,
{
    let mut q = QueryBuilder::<Sqlite>::new(format!("{prefix}{head} {key} IN ("));
    let mut sep = q.separated(", ");
    for (id, _) in chunk {
        sep.push_bind(*id);
    }
    q.push(format!(") AND ({key}, lease_token) IN ("));
    q.push_values(chunk, |mut b, (id, token)| {
        b.push_bind(*id).push_bind(*token);
    });
    q.push(format!(") RETURNING {key}, lease_token"));
    q
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sealgate_proto::send::MessageStatus;

    use super::super::conformance as c;
    use super::super::queue::JobQueue;
    use super::super::store::{DeliveryStore, ReceiptOutcome, TenantCallback, Transition};
    use super::apply;
    use crate::store::StoreError;
    use crate::store::sqlite::SqliteStore;

    fn step(id: &str, status: MessageStatus, at: i64, count_attempt: bool) -> Transition {
        Transition {
            message_id: id.into(),
            status,
            reason: None,
            at,
            count_attempt,
        }
    }

    /// Several changes to one message inside one batch behave as if committed one after the
    /// other, in arrival order: a receipt that overtakes `sent` implies it, a repeated event id
    /// is a duplicate, a backward step is refused, and each change writes its callback job.
    #[tokio::test]
    async fn one_batch_applies_changes_in_arrival_order() {
        let (_d, s) = SqliteStore::open_temp().await;
        let m = c::message("k", 1, 0);
        s.accept_messages(std::slice::from_ref(&m)).await.unwrap()[0]
            .as_ref()
            .unwrap();
        let cb = TenantCallback {
            url: "http://127.0.0.1:9/cb".into(),
            secret: "s".into(),
        };
        s.set_callback(&m.tenant_id, &cb, 0).await.unwrap();
        let id = m.message_id.as_str();
        let sending = step(id, MessageStatus::Sending, 10, true);
        let delivered = step(id, MessageStatus::Delivered, 20, false);
        let late_sent = step(id, MessageStatus::Sent, 30, false);
        let unknown = step("msg_unknown", MessageStatus::Delivered, 40, false);
        // Arrival: sending, receipt ev1 (delivered), receipt ev1 again, late sent, receipt
        // for an unknown message.
        let order = [(false, 0), (true, 0), (true, 1), (false, 1), (true, 2)];
        let mut tx = s.writer.begin().await.unwrap();
        let answers = apply(
            &mut tx,
            &[&sending, &late_sent],
            &[("ev1", &delivered), ("ev1", &delivered), ("ev2", &unknown)],
            &order,
            &[],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(answers.transitions, vec![true, false]);
        assert_eq!(
            answers.receipts,
            vec![
                ReceiptOutcome::Applied,
                ReceiptOutcome::Duplicate,
                ReceiptOutcome::UnknownMessage
            ]
        );
        let view = s.message_view(&m.tenant_id, id).await.unwrap().unwrap();
        let history: Vec<MessageStatus> = view.history.iter().map(|h| h.status).collect();
        assert_eq!(
            history,
            vec![
                MessageStatus::Queued,
                MessageStatus::Sending,
                MessageStatus::Sent,
                MessageStatus::Delivered
            ]
        );
        assert_eq!(view.status, MessageStatus::Delivered);
        assert_eq!(view.attempts, 1);
        // Callback jobs for sent (implied) and delivered, none for sending.
        let (callbacks,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM delivery_jobs WHERE kind = 'callback'")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert_eq!(callbacks, 2);
        // The payload of a delivered text is gone.
        let (payload,): (Vec<u8>,) =
            sqlx::query_as("SELECT payload FROM send_messages WHERE message_id = ?")
                .bind(id)
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert!(payload.is_empty());
        // The event id stays known across batches.
        assert_eq!(
            s.carrier_receipt("ev1", &delivered).await.unwrap(),
            ReceiptOutcome::Duplicate
        );
    }

    /// Batched acks find their rows by key: with only the row-value `IN`, SQLite scanned the
    /// whole message table (or job table) on every ack batch.
    #[tokio::test]
    async fn batched_acks_search_by_key() {
        let (_d, s) = SqliteStore::open_temp().await;
        let sends = [("m1", "w:1"), ("m2", "w:1")];
        let others = [(1_i64, "w:1"), (2, "w:2")];
        for (head, key, q) in [
            (
                super::ACK_SENDS,
                "message_id",
                super::ack_query(
                    "EXPLAIN QUERY PLAN ",
                    super::ACK_SENDS,
                    "message_id",
                    &sends,
                ),
            ),
            (
                super::ACK_OTHERS,
                "job_id",
                super::ack_query("EXPLAIN QUERY PLAN ", super::ACK_OTHERS, "job_id", &others),
            ),
        ] {
            let mut q = q;
            let plan: Vec<(i64, i64, i64, String)> =
                q.build_query_as().fetch_all(&s.pool).await.unwrap();
            let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
            assert!(
                steps.iter().all(|d| !d.starts_with("SCAN send_messages")
                    && !d.starts_with("SCAN delivery_jobs")),
                "{head} by {key}: {steps:?}"
            );
        }
    }

    /// Only the holder of a lease can ack its job, also when both acks share a batch.
    #[tokio::test]
    async fn acks_need_the_lease() {
        let (_d, s) = SqliteStore::open_temp().await;
        let m = c::message("k", 1, 0);
        s.accept_messages(std::slice::from_ref(&m)).await.unwrap()[0]
            .as_ref()
            .unwrap();
        let job = s
            .lease("w", 1, Duration::from_secs(60), 0)
            .await
            .unwrap()
            .pop()
            .unwrap();
        let mut forged = job.clone();
        forged.lease_token = "w:forged".into();
        let (a, b) = tokio::join!(s.ack(&forged), s.ack(&job));
        assert!(!a.unwrap());
        assert!(b.unwrap());
        assert_eq!(s.depth().await.unwrap(), 0);
        assert!(!s.ack(&job).await.unwrap(), "acked twice");
    }

    /// A write that panics fails its batch but not the batcher: later writes still commit.
    #[tokio::test]
    async fn a_panicking_write_does_not_stop_the_batcher() {
        let (_d, s) = SqliteStore::open_temp().await;
        sqlx::query("CREATE TABLE t (x TEXT)")
            .execute(&mut *s.writer.lock().await)
            .await
            .unwrap();
        let panicked = s
            .write_batched(|conn| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO t (x) VALUES ('lost')")
                        .execute(&mut *conn)
                        .await?;
                    panic!("injected");
                    #[allow(unreachable_code)]
                    Ok(())
                })
            })
            .await;
        assert!(
            matches!(panicked, Err(StoreError::Batch(_))),
            "{panicked:?}"
        );
        s.write_batched(|conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO t (x) VALUES ('kept')")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
        .unwrap();
        let rows: Vec<(String,)> = sqlx::query_as("SELECT x FROM t")
            .fetch_all(&s.pool)
            .await
            .unwrap();
        assert_eq!(rows, vec![("kept".to_owned(),)]);
    }

    /// A general write that fails is undone alone; the writes batched with it commit.
    #[tokio::test]
    async fn a_failed_write_is_rolled_back_alone() {
        let (_d, s) = SqliteStore::open_temp().await;
        sqlx::query("CREATE TABLE t (x TEXT)")
            .execute(&mut *s.writer.lock().await)
            .await
            .unwrap();
        let insert = |x: &'static str, fail: bool| {
            s.write_batched(move |conn| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO t (x) VALUES (?)")
                        .bind(x)
                        .execute(&mut *conn)
                        .await?;
                    if fail {
                        return Err(StoreError::Corrupt("injected".into()));
                    }
                    Ok(())
                })
            })
        };
        let (a, b, c2) = tokio::join!(insert("a", false), insert("b", true), insert("c", false));
        assert!(a.is_ok() && c2.is_ok());
        assert!(matches!(b, Err(StoreError::Corrupt(_))));
        let rows: Vec<(String,)> = sqlx::query_as("SELECT x FROM t ORDER BY x")
            .fetch_all(&s.pool)
            .await
            .unwrap();
        assert_eq!(rows, vec![("a".to_owned(),), ("c".to_owned(),)]);
    }
}
