//! The PostgreSQL write batcher for status changes and carrier receipts.
//!
//! Why: written one at a time, a status change is six round trips to PostgreSQL (begin, lock,
//! update, history, callback job, commit) and one WAL flush, and a delivered message makes three
//! of them (`sending`, `sent`, the carrier's receipt). In scale-out that, not the carrier, bounded
//! the drain rate. Here one task per process takes every change waiting at a moment and writes
//! them in one transaction of about six set-based statements (`unnest` arrays), whatever the
//! batch size. Each caller is answered only after the commit.
//!
//! What stays exact: the batch locks its messages' rows (`FOR UPDATE`, in id order, so two
//! processes' batches never deadlock) and applies the changes in arrival order against the
//! statuses it read, with the same rules as the one-change path ([`write_plan`]). If the batch
//! fails (a serialization failure, a bad row), it is rolled back and every change is retried
//! alone in its own transaction, so one bad change fails only its own caller. This module must
//! never read or log payload bytes.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;

use super::delivery::{receipt_in, transition_in};
use crate::delivery::queue::JobKind;
use crate::delivery::sqlite::{callback_body, wipes_payload};
use crate::delivery::store::Transition;
use crate::delivery::write_plan::{self, Plan, StatusBatch, StatusWrite};
use crate::store::StoreError;

/// Most writes committed together.
pub(crate) const MAX_WRITE_BATCH: usize = 512;

/// Start the batcher on `pool`; it runs until every sender is dropped.
pub(crate) fn spawn(pool: PgPool) -> mpsc::Sender<StatusWrite> {
    let (tx, rx) = mpsc::channel(MAX_WRITE_BATCH * 4);
    tokio::spawn(run(pool, rx));
    tx
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<StatusWrite>) {
    let mut writes: Vec<StatusWrite> = Vec::with_capacity(MAX_WRITE_BATCH);
    while rx.recv_many(&mut writes, MAX_WRITE_BATCH).await > 0 {
        let mut status = StatusBatch::default();
        for write in writes.drain(..) {
            status.push(write);
        }
        let (t, r) = (status.transitions(), status.receipts());
        // A panic must not end this task (every later write would hang): it drops the
        // transaction, which rolls the batch back, and the changes are retried alone.
        let batch = AssertUnwindSafe(async {
            let mut tx = pool.begin().await?;
            let plan = apply(&mut tx, &t, &r, status.order()).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(plan)
        })
        .catch_unwind()
        .await;
        match batch {
            Ok(Ok(plan)) => status.answer(plan.transitions, plan.receipts),
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "a write panicked".to_owned(),
                };
                tracing::warn!(error = %why, writes = status.len(),
                               "batched status write failed; retrying each change alone");
                for write in status.into_arrival_order() {
                    match write {
                        StatusWrite::Receipt { event_id, t, reply } => {
                            let outcome =
                                alone(&pool, async |c| receipt_in(c, &event_id, &t).await);
                            let _ = reply.send(guarded(outcome).await);
                        }
                        StatusWrite::Transition { t, reply } => {
                            let moved = alone(&pool, async |c| transition_in(c, &t).await);
                            let _ = reply.send(guarded(moved).await);
                        }
                    }
                }
            }
        }
    }
}

/// `write`'s result, or an error if it panicked (which must not end the batcher either).
async fn guarded<T>(write: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    AssertUnwindSafe(write)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(StoreError::Batch("a write panicked".into())))
}

/// Run `write` in a transaction of its own (the fallback path).
async fn alone<T, F>(pool: &PgPool, write: F) -> Result<T, StoreError>
where
    F: for<'c> AsyncFnOnce(&'c mut PgConnection) -> Result<T, StoreError>,
{
    let mut tx = pool.begin().await?;
    let out = write(&mut tx).await?;
    tx.commit().await?;
    Ok(out)
}

/// Apply one batch of status changes and receipts with set-based statements.
async fn apply(
    conn: &mut PgConnection,
    transitions: &[&Transition],
    receipts: &[(&str, &Transition)],
    order: &[(bool, usize)],
) -> Result<Plan, StoreError> {
    // Lock and read every message the batch touches, in id order (no deadlocks across
    // processes: every batch and every single change locks in the same order).
    let ids = write_plan::touched_ids(transitions, receipts);
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT message_id, tenant_id, status FROM send_messages \
         WHERE message_id = ANY($1) ORDER BY message_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut state = write_plan::state_from_rows(rows)?;

    // Receipts are applied once per event id: record the new ones.
    let events = write_plan::candidate_events(&state, receipts);
    let mut fresh_events = HashSet::new();
    if !events.is_empty() {
        let (event_ids, message_ids, at): (Vec<&str>, Vec<&str>, Vec<i64>) = events
            .iter()
            .map(|(e, t)| (*e, t.message_id.as_str(), t.at))
            .collect();
        let fresh: Vec<(String,)> = sqlx::query_as(
            "INSERT INTO carrier_events (event_id, message_id, received_at) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) \
             ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        )
        .bind(&event_ids)
        .bind(&message_ids)
        .bind(&at)
        .fetch_all(&mut *conn)
        .await?;
        fresh_events.extend(fresh.into_iter().map(|r| r.0));
    }

    let plan = write_plan::walk(&mut state, transitions, receipts, order, fresh_events);

    // Messages: final status (and payload wipe) and attempt counts, one row each.
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    let mut reasons = Vec::new();
    let mut ats = Vec::new();
    let mut wipes = Vec::new();
    let mut attempts = Vec::new();
    for (id, c) in state
        .iter()
        .filter(|(_, c)| c.moved.is_some() || c.attempts > 0)
    {
        let (status, reason, at) = match &c.moved {
            Some((s, r, at)) => (Some(s.as_str()), r.as_deref(), Some(*at)),
            None => (None, None, None),
        };
        ids.push(id.as_str());
        statuses.push(status);
        reasons.push(reason);
        ats.push(at);
        wipes.push(
            c.moved
                .as_ref()
                .is_some_and(|(s, r, _)| wipes_payload(*s, r.as_deref())),
        );
        attempts.push(c.attempts);
    }
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE send_messages m SET \
             status = coalesce(v.status, m.status), \
             reason = CASE WHEN v.status IS NULL THEN m.reason ELSE v.reason END, \
             updated_at = coalesce(v.at, m.updated_at), \
             payload = CASE WHEN v.wipe THEN ''::bytea ELSE m.payload END, \
             attempts = m.attempts + v.n \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bool[], \
                         $6::bigint[]) AS v(id, status, reason, at, wipe, n) \
             WHERE m.message_id = v.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&reasons)
        .bind(&ats)
        .bind(&wipes)
        .bind(&attempts)
        .execute(&mut *conn)
        .await?;
    }

    // History, in order, and the callback jobs of tenants that registered a callback, written
    // with the change they report.
    if !plan.steps.is_empty() {
        let mut ids = Vec::with_capacity(plan.steps.len());
        let mut statuses = Vec::with_capacity(plan.steps.len());
        let mut reasons = Vec::with_capacity(plan.steps.len());
        let mut ats = Vec::with_capacity(plan.steps.len());
        for (_, t) in &plan.steps {
            ids.push(t.message_id.as_str());
            statuses.push(t.status.as_str());
            reasons.push(t.reason.as_deref());
            ats.push(t.at);
        }
        sqlx::query(
            "INSERT INTO send_history (message_id, status, reason, at) \
             SELECT id, status, reason, at FROM unnest($1::text[], $2::text[], $3::text[], \
             $4::bigint[]) WITH ORDINALITY AS v(id, status, reason, at, n) ORDER BY n",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&reasons)
        .bind(&ats)
        .execute(&mut *conn)
        .await?;

        let reported: Vec<&(String, Transition)> = write_plan::reported(&plan.steps).collect();
        if !reported.is_empty() {
            let tenants: Vec<&str> = reported.iter().map(|(tn, _)| tn.as_str()).collect();
            let ids: Vec<&str> = reported
                .iter()
                .map(|(_, t)| t.message_id.as_str())
                .collect();
            let bodies: Vec<Vec<u8>> = reported.iter().map(|(_, t)| callback_body(t)).collect();
            let ats: Vec<i64> = reported.iter().map(|(_, t)| t.at).collect();
            sqlx::query(
                "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, not_before, \
                 created_at) \
                 SELECT $1, v.tenant, v.id, v.body, v.at, v.at \
                 FROM unnest($2::text[], $3::text[], $4::bytea[], $5::bigint[]) \
                      WITH ORDINALITY AS v(tenant, id, body, at, n) \
                 JOIN tenant_callbacks c ON c.tenant_id = v.tenant ORDER BY v.n",
            )
            .bind(JobKind::Callback.as_str())
            .bind(&tenants)
            .bind(&ids)
            .bind(&bodies)
            .bind(&ats)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use sealgate_proto::send::MessageStatus;
    use tokio::sync::oneshot;

    use super::*;
    use crate::delivery::conformance as c;
    use crate::delivery::store::{DeliveryStore, ReceiptOutcome, TenantCallback};
    use crate::store::postgres::PgStore;
    use crate::store::postgres::testing::fresh;

    fn step(id: &str, status: MessageStatus, at: i64, count_attempt: bool) -> Transition {
        Transition {
            message_id: id.into(),
            status,
            reason: None,
            at,
            count_attempt,
        }
    }

    async fn accepted(s: &PgStore, n: usize) -> Vec<String> {
        let batch: Vec<_> = (0..n).map(|i| c::message(&format!("k{i}"), 1, 0)).collect();
        for o in s.accept_messages(&batch).await.unwrap() {
            o.unwrap();
        }
        batch.into_iter().map(|m| m.message_id).collect()
    }

    /// Several changes to one message inside one batch behave as if committed one after the
    /// other, in arrival order: a receipt that overtakes `sent` implies it, a repeated event id
    /// is a duplicate, a backward step is refused, and each change writes its callback job.
    #[tokio::test]
    async fn one_batch_applies_changes_in_arrival_order() {
        let Some(pg) = fresh("one_batch_applies_changes_in_arrival_order").await else {
            return;
        };
        let s = &pg.store;
        let id = accepted(s, 1).await.remove(0);
        let cb = TenantCallback {
            url: "http://127.0.0.1:9/cb".into(),
            secret: "s".into(),
        };
        s.set_callback("t1", &cb, 0).await.unwrap();
        let sending = step(&id, MessageStatus::Sending, 10, true);
        let delivered = step(&id, MessageStatus::Delivered, 20, false);
        let late_sent = step(&id, MessageStatus::Sent, 30, false);
        let unknown = step("msg_unknown", MessageStatus::Delivered, 40, false);
        let order = [(false, 0), (true, 0), (true, 1), (false, 1), (true, 2)];
        let mut tx = s.pool.begin().await.unwrap();
        let plan = apply(
            &mut tx,
            &[&sending, &late_sent],
            &[("ev1", &delivered), ("ev1", &delivered), ("ev2", &unknown)],
            &order,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(plan.transitions, vec![true, false]);
        assert_eq!(
            plan.receipts,
            vec![
                ReceiptOutcome::Applied,
                ReceiptOutcome::Duplicate,
                ReceiptOutcome::UnknownMessage
            ]
        );
        let view = s.message_view("t1", &id).await.unwrap().unwrap();
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
        assert_eq!(view.attempts, 1);
        let (callbacks,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM delivery_jobs WHERE kind = 'callback'")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert_eq!(
            callbacks, 2,
            "sent (implied) and delivered; none for sending"
        );
        let (payload,): (Vec<u8>,) =
            sqlx::query_as("SELECT payload FROM send_messages WHERE message_id = $1")
                .bind(&id)
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert!(payload.is_empty(), "a delivered text's payload is wiped");
        assert_eq!(
            s.carrier_receipt("ev1", &delivered).await.unwrap(),
            ReceiptOutcome::Duplicate,
            "the event id stays known across batches"
        );
    }

    /// A batch that fails is retried one change at a time, so only the bad change fails.
    #[tokio::test]
    async fn a_failed_batch_is_retried_change_by_change() {
        let Some(pg) = fresh("a_failed_batch_is_retried_change_by_change").await else {
            return;
        };
        let ids = accepted(&pg.store, 2).await;
        let good = step(&ids[0], MessageStatus::Sent, 10, false);
        // PostgreSQL refuses NUL in text: the set-based UPDATE of the whole batch fails.
        let mut bad = step(&ids[1], MessageStatus::Failed, 10, false);
        bad.reason = Some("nul\0byte".into());
        let receipt = step(&ids[0], MessageStatus::Delivered, 20, false);
        let (tx, rx) = mpsc::channel(8);
        let (r1, a1) = oneshot::channel();
        let (r2, a2) = oneshot::channel();
        let (r3, a3) = oneshot::channel();
        tx.send(StatusWrite::Transition { t: good, reply: r1 })
            .await
            .unwrap();
        tx.send(StatusWrite::Transition { t: bad, reply: r2 })
            .await
            .unwrap();
        tx.send(StatusWrite::Receipt {
            event_id: "ev".into(),
            t: receipt,
            reply: r3,
        })
        .await
        .unwrap();
        drop(tx);
        run(pg.store.pool.clone(), rx).await; // one batch, then the channel is closed
        assert!(a1.await.unwrap().unwrap());
        assert!(a2.await.unwrap().is_err());
        assert_eq!(a3.await.unwrap().unwrap(), ReceiptOutcome::Applied);
        let view = pg.store.message_view("t1", &ids[0]).await.unwrap().unwrap();
        assert_eq!(view.status, MessageStatus::Delivered);
        let other = pg.store.message_view("t1", &ids[1]).await.unwrap().unwrap();
        assert_eq!(
            other.status,
            MessageStatus::Queued,
            "the bad change left nothing"
        );
    }

    /// Two processes' batchers changing the same messages at once neither deadlock nor lose or
    /// double a change: every message ends delivered with a history that only moves forward.
    #[tokio::test]
    async fn two_batchers_on_the_same_messages() {
        let Some(pg) = fresh("two_batchers_on_the_same_messages").await else {
            return;
        };
        let ids = accepted(&pg.store, 300).await;
        // A second store on the same schema: another process's pool and batcher.
        let other = PgStore {
            pool: pg.store.pool.clone(),
            writes: spawn(pg.store.pool.clone()),
        };
        let worker = async {
            futures::future::join_all(ids.iter().map(|id| async {
                let s = &pg.store;
                s.transition(&step(id, MessageStatus::Sending, 10, true))
                    .await?;
                s.transition(&step(id, MessageStatus::Sent, 20, false))
                    .await
            }))
            .await
        };
        let receipts = futures::future::join_all(ids.iter().map(|id| {
            let other = &other;
            async move {
                let t = step(id, MessageStatus::Delivered, 30, false);
                other.carrier_receipt(&format!("ev-{id}"), &t).await
            }
        }));
        let (sent, delivered) = tokio::join!(worker, receipts);
        for r in sent {
            r.unwrap();
        }
        for r in delivered {
            assert_eq!(r.unwrap(), ReceiptOutcome::Applied);
        }
        for id in &ids {
            let view = pg.store.message_view("t1", id).await.unwrap().unwrap();
            assert_eq!(view.status, MessageStatus::Delivered, "{id}");
            let ranks: Vec<u8> = view.history.iter().map(|h| h.status.rank()).collect();
            assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{id}: {ranks:?}");
            assert_eq!(
                view.history.last().unwrap().status,
                MessageStatus::Delivered
            );
        }
    }
}
