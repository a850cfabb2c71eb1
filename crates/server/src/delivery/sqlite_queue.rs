//! SQLite implementation of [`JobQueue`]: callback and push jobs in the `delivery_jobs` table,
//! and each message's send job as columns of its `send_messages` row (`job_due`, `job_since`,
//! `job_leases`, `lease_token`, `last_error`), so accepting a message writes no job row and
//! acking a send clears columns of a row the worker updates anyway.
//!
//! A lease moves the job's due time (`not_before` / `job_due`) to the lease's end, so "ready"
//! is one indexed range (`<= now`) and a job whose worker died becomes ready again by itself.
//! Leasing is one `UPDATE ... RETURNING` statement per table, so two workers never get the
//! same job from the same lease round; the two tables take turns being served first, so
//! neither kind can starve the other. A message has a send job while its `job_due` is set,
//! and the lease in `lease_token` counts only then (an ack clears `job_due` and leaves the
//! token, which the batcher's answer needs). A send job's `job_id` is its message row's rowid
//! (for logs and dead letters); it is addressed by message id. It must never interpret job
//! payloads.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use sealgate_proto::send::DeadLetter;

use super::queue::{Job, JobKind, JobQueue, NewJob};
use super::sqlite::{corrupt, parse_status, replay_requeues};
use super::sqlite_batch::{AckJob, WriteOp};
use crate::auth::random_id;
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

type JobRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<Vec<u8>>,
    i64,
    i64,
    Option<String>,
);

fn job_from_row(row: JobRow, lease_token: &str) -> Result<Job, StoreError> {
    let (job_id, kind, tenant_id, message_id, payload, attempts, created_at, last_error) = row;
    Ok(Job {
        job_id,
        kind: JobKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("job kind {kind}")))?,
        tenant_id,
        message_id,
        payload,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
        created_at,
        lease_token: lease_token.to_owned(),
        last_error,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

type DeadRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    i64,
    String,
    Option<String>,
    i64,
    Option<i64>,
);

/// Lease due send jobs: `?1` lease end, `?2` token, `?3` now, `?4` how many. Found through
/// the partial index on `job_due`, which holds only messages with a job.
const LEASE_SENDS: &str = "UPDATE send_messages SET job_due = ?1, lease_token = ?2, \
     job_leases = job_leases + 1 \
     WHERE rowid IN (SELECT rowid FROM send_messages WHERE job_due <= ?3 \
     ORDER BY job_due LIMIT ?4) \
     RETURNING rowid, 'send', tenant_id, message_id, NULL, job_leases, job_since, last_error";
/// Lease due callback and push jobs, with the same parameters.
const LEASE_OTHERS: &str = "UPDATE delivery_jobs SET not_before = ?1, lease_until = ?1, \
     lease_token = ?2, attempts = attempts + 1 \
     WHERE job_id IN (SELECT job_id FROM delivery_jobs WHERE not_before <= ?3 \
     ORDER BY not_before, job_id LIMIT ?4) \
     RETURNING job_id, kind, tenant_id, message_id, payload, attempts, created_at, last_error";

#[async_trait]
impl JobQueue for SqliteStore {
    async fn enqueue(&self, job: &NewJob) -> Result<i64, StoreError> {
        if job.kind == JobKind::Send {
            let message_id = job
                .message_id
                .as_deref()
                .ok_or_else(|| StoreError::Corrupt("a send job without a message id".into()))?;
            let row: Option<(i64,)> = sqlx::query_as(
                "UPDATE send_messages SET job_due = ?1, job_since = ?1, job_leases = 0, \
                 lease_token = NULL, last_error = NULL WHERE message_id = ?2 \
                 RETURNING rowid",
            )
            .bind(job.not_before)
            .bind(message_id)
            .fetch_optional(&mut *self.writer.lock().await)
            .await?;
            return row.map(|r| r.0).ok_or_else(|| {
                StoreError::Corrupt(format!("a send job for no message {message_id}"))
            });
        }
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, not_before, \
             created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING job_id",
        )
        .bind(job.kind.as_str())
        .bind(&job.tenant_id)
        .bind(job.message_id.as_deref())
        .bind(job.payload.as_deref())
        .bind(job.not_before)
        .bind(job.not_before)
        .fetch_one(&mut *self.writer.lock().await)
        .await?;
        Ok(id)
    }

    async fn lease(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
        now_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let token = format!("{worker}:{}", random_id(""));
        let until = now_ms.saturating_add(millis(lease));
        let sends_first = self.sends_first.fetch_xor(true, Ordering::Relaxed);
        let mut jobs = Vec::with_capacity(max);
        for sends in [sends_first, !sends_first] {
            let room = max - jobs.len();
            if room == 0 {
                break;
            }
            let room = i64::try_from(room).unwrap_or(i64::MAX);
            let rows: Vec<JobRow> = sqlx::query_as(if sends { LEASE_SENDS } else { LEASE_OTHERS })
                .bind(until)
                .bind(&token)
                .bind(now_ms)
                .bind(room)
                .fetch_all(&mut *self.writer.lock().await)
                .await?;
            for row in rows {
                jobs.push(job_from_row(row, &token)?);
            }
        }
        Ok(jobs)
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let op = WriteOp::Ack {
            job: AckJob::of(job)?,
            lease_token: job.lease_token.clone(),
            reply,
        };
        self.submit(op, answer).await
    }

    async fn retry(&self, job: &Job, not_before_ms: i64, error: &str) -> Result<bool, StoreError> {
        let target = AckJob::of(job)?;
        let (token, error) = (job.lease_token.clone(), error.to_owned());
        self.write_batched(move |conn| {
            Box::pin(async move {
                let q = match &target {
                    AckJob::Send(message_id) => sqlx::query(
                        "UPDATE send_messages SET job_due = ?, lease_token = NULL, \
                         last_error = ? WHERE message_id = ? AND job_due IS NOT NULL \
                         AND lease_token = ?",
                    )
                    .bind(not_before_ms)
                    .bind(&error)
                    .bind(message_id),
                    AckJob::Other(job_id) => sqlx::query(
                        "UPDATE delivery_jobs SET not_before = ?, lease_until = NULL, \
                         lease_token = NULL, last_error = ? WHERE job_id = ? AND lease_token = ?",
                    )
                    .bind(not_before_ms)
                    .bind(&error)
                    .bind(*job_id),
                };
                let n = q.bind(&token).execute(&mut *conn).await?.rows_affected();
                Ok(n > 0)
            })
        })
        .await
    }

    async fn dead_letter(&self, job: &Job, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let q = match AckJob::of(job)? {
            AckJob::Send(message_id) => sqlx::query(
                "UPDATE send_messages SET job_due = NULL \
                 WHERE message_id = ? AND job_due IS NOT NULL AND lease_token = ?",
            )
            .bind(message_id),
            AckJob::Other(job_id) => {
                sqlx::query("DELETE FROM delivery_jobs WHERE job_id = ? AND lease_token = ?")
                    .bind(job_id)
            }
        };
        let n = q
            .bind(&job.lease_token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO dead_letters (job_id, kind, tenant_id, message_id, payload, attempts, \
             reason, last_error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job.job_id)
        .bind(job.kind.as_str())
        .bind(&job.tenant_id)
        .bind(job.message_id.as_deref())
        .bind(job.payload.as_deref())
        .bind(i64::from(job.attempts))
        .bind(reason)
        .bind(job.last_error.as_deref())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM delivery_jobs) \
             + (SELECT COUNT(*) FROM send_messages WHERE job_due IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let rows: Vec<DeadRow> = sqlx::query_as(
            "SELECT dead_letter_id, job_id, kind, tenant_id, message_id, attempts, reason, \
             last_error, created_at, replayed_at FROM dead_letters \
             ORDER BY dead_letter_id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(
                    dead_letter_id,
                    job_id,
                    kind,
                    tenant_id,
                    message_id,
                    attempts,
                    reason,
                    last_error,
                    created_at,
                    replayed_at,
                )| {
                    Ok(DeadLetter {
                        dead_letter_id,
                        job_id,
                        kind,
                        message_id,
                        tenant_id,
                        attempts: u32::try_from(attempts)
                            .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
                        reason,
                        last_error,
                        created_at,
                        replayed_at,
                    })
                },
            )
            .collect()
    }

    async fn replay(&self, dead_letter_id: i64, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let row: Option<(String, String, Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT kind, tenant_id, message_id, payload FROM dead_letters \
             WHERE dead_letter_id = ?",
        )
        .bind(dead_letter_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((kind, tenant_id, message_id, payload)) = row else {
            return Ok(None);
        };
        sqlx::query("UPDATE dead_letters SET replayed_at = ? WHERE dead_letter_id = ?")
            .bind(now_ms)
            .bind(dead_letter_id)
            .execute(&mut *tx)
            .await?;
        if kind != JobKind::Send.as_str() {
            let (job_id,): (i64,) = sqlx::query_as(
                "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, not_before, \
                 created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING job_id",
            )
            .bind(&kind)
            .bind(&tenant_id)
            .bind(message_id.as_deref())
            .bind(payload.as_deref())
            .bind(now_ms)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Some(job_id));
        }
        let Some(message_id) = &message_id else {
            return Err(corrupt("send dead letter without message", dead_letter_id));
        };
        // The message gets a fresh job unless it has one (a replay repeated, or a new job
        // since): one job per message is all a worker needs.
        sqlx::query(
            "UPDATE send_messages SET job_due = ?1, job_since = ?1, job_leases = 0, \
             lease_token = NULL, last_error = NULL WHERE message_id = ?2 AND job_due IS NULL",
        )
        .bind(now_ms)
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
        let (job_id, status, reason): (i64, String, Option<String>) =
            sqlx::query_as("SELECT rowid, status, reason FROM send_messages WHERE message_id = ?")
                .bind(message_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| corrupt("send dead letter of an unknown message", message_id))?;
        if replay_requeues(parse_status(&status)?, reason.as_deref()) {
            sqlx::query(
                "UPDATE send_messages SET status = 'queued', reason = NULL, updated_at = ? \
                 WHERE message_id = ?",
            )
            .bind(now_ms)
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO send_history (message_id, status, reason, at) \
                 VALUES (?, 'queued', 'replayed', ?)",
            )
            .bind(message_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(job_id))
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance as c;
    use super::super::store::DeliveryStore;
    use super::*;

    /// Both lease statements and the queue depth search their index: a lease must not read
    /// every message ever accepted to find the few with a job.
    #[tokio::test]
    async fn leases_search_the_due_indexes() {
        let (_dir, s) = SqliteStore::open_temp().await;
        for (sql, index) in [
            (LEASE_SENDS, "send_messages_due"),
            (LEASE_OTHERS, "delivery_jobs_ready"),
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .bind(0_i64)
                    .bind("t")
                    .bind(0_i64)
                    .bind(1_i64)
                    .fetch_all(&s.pool)
                    .await
                    .unwrap();
            let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
            assert!(
                steps.iter().all(|d| !d.starts_with("SCAN"))
                    && steps.iter().any(|d| d.contains(index)),
                "{steps:?}"
            );
        }
    }

    /// The two tables take turns being served first: a backlog of sends does not hold back
    /// callbacks, nor the reverse, even when every lease round could be filled by one kind.
    #[tokio::test]
    async fn sends_and_other_jobs_take_turns() {
        let (_dir, s) = SqliteStore::open_temp().await;
        let batch: Vec<_> = (0..10)
            .map(|i| c::message(&format!("k{i}"), 1, 1000))
            .collect();
        s.accept_messages(&batch).await.unwrap();
        for _ in 0..10 {
            s.enqueue(&NewJob {
                kind: JobKind::Callback,
                tenant_id: "t1".into(),
                message_id: None,
                payload: Some(b"{}".to_vec()),
                not_before: 1000,
            })
            .await
            .unwrap();
        }
        let lease = Duration::from_secs(60);
        let mut rounds = Vec::new();
        for _ in 0..4 {
            let jobs = s.lease("w", 3, lease, 2000).await.unwrap();
            assert_eq!(jobs.len(), 3);
            rounds.push(jobs.iter().map(|j| j.kind).collect::<Vec<_>>());
        }
        for pair in rounds.windows(2) {
            let kinds: Vec<JobKind> = pair.concat();
            assert!(
                kinds.contains(&JobKind::Send) && kinds.contains(&JobKind::Callback),
                "two rounds in a row serve both kinds: {rounds:?}"
            );
        }
    }
}
