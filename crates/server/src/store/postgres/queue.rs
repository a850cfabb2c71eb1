//! PostgreSQL implementation of [`JobQueue`](crate::delivery::queue::JobQueue): the
//! `delivery_jobs` table with leases, shared by every worker process.
//!
//! A lease moves the job's `not_before` to the lease's end, so "ready" is one indexed range
//! and a job whose worker died becomes ready again by itself. Leasing picks rows with
//! `FOR UPDATE SKIP LOCKED`, so workers in different processes never get the same job from
//! the same round and never wait on each other. `ack`, `retry` and `dead_letter` match the
//! lease token, so a worker that lost its lease changes nothing. It must never interpret job
//! payloads.

use std::time::Duration;

use async_trait::async_trait;
use sealgate_proto::send::DeadLetter;

use crate::auth::random_id;
use crate::delivery::queue::{Job, JobKind, JobQueue, NewJob};
use crate::delivery::sqlite::{parse_status, replay_requeues};
use crate::store::StoreError;
use crate::store::postgres::PgStore;

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

type LeasedRow = (
    i64,
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

/// Outbox rows deleted in a transaction that is still open ([`Outbox::take_due`]).
///
/// [`Outbox::take_due`]: crate::delivery::nats::Outbox::take_due
struct Taken {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    jobs: Vec<Job>,
}

#[async_trait]
impl crate::delivery::nats::TakenJobs for Taken {
    fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl JobQueue for PgStore {
    async fn enqueue(&self, job: &NewJob) -> Result<i64, StoreError> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, not_before, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING job_id",
        )
        .bind(job.kind.as_str())
        .bind(&job.tenant_id)
        .bind(job.message_id.as_deref())
        .bind(job.payload.as_deref())
        .bind(job.not_before)
        .bind(job.not_before)
        .fetch_one(&self.pool)
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
        // The `= ANY(ARRAY(…))` condition is redundant with the join, but without it the cached
        // generic plan hash-joined `picked` against a sequential scan of the whole table.
        let rows: Vec<(i64, JobRow)> = sqlx::query_as::<_, LeasedRow>(
            "WITH picked AS (SELECT job_id, not_before FROM delivery_jobs \
               WHERE not_before <= $3 ORDER BY not_before, job_id LIMIT $4 \
               FOR UPDATE SKIP LOCKED) \
             UPDATE delivery_jobs d SET not_before = $1, lease_until = $1, lease_token = $2, \
             attempts = d.attempts + 1 FROM picked WHERE d.job_id = picked.job_id \
             AND d.job_id = ANY(ARRAY(SELECT job_id FROM picked)) \
             RETURNING picked.not_before, d.job_id, d.kind, d.tenant_id, d.message_id, \
             d.payload, d.attempts, d.created_at, d.last_error",
        )
        .bind(until)
        .bind(&token)
        .bind(now_ms)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(nb, a, b, c, d, e, f, g, h)| (nb, (a, b, c, d, e, f, g, h)))
        .collect();
        let mut rows = rows;
        // RETURNING has no order: oldest first, as the contract says.
        rows.sort_by_key(|(nb, r)| (*nb, r.0));
        rows.into_iter()
            .map(|(_, r)| job_from_row(r, &token))
            .collect()
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM delivery_jobs WHERE job_id = $1 AND lease_token = $2")
            .bind(job.job_id)
            .bind(&job.lease_token)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn retry(&self, job: &Job, not_before_ms: i64, error: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE delivery_jobs SET not_before = $1, lease_until = NULL, lease_token = NULL, \
             last_error = $2 WHERE job_id = $3 AND lease_token = $4",
        )
        .bind(not_before_ms)
        .bind(error)
        .bind(job.job_id)
        .bind(&job.lease_token)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn dead_letter(&self, job: &Job, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM delivery_jobs WHERE job_id = $1 AND lease_token = $2")
            .bind(job.job_id)
            .bind(&job.lease_token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO dead_letters (job_id, kind, tenant_id, message_id, payload, attempts, \
             reason, last_error, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM delivery_jobs")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let rows: Vec<DeadRow> = sqlx::query_as(
            "SELECT dead_letter_id, job_id, kind, tenant_id, message_id, attempts, reason, \
             last_error, created_at, replayed_at FROM dead_letters \
             ORDER BY dead_letter_id DESC LIMIT $1",
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
        let mut tx = self.begin().await?;
        let row: Option<(String, String, Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT kind, tenant_id, message_id, payload FROM dead_letters \
             WHERE dead_letter_id = $1",
        )
        .bind(dead_letter_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((kind, tenant_id, message_id, payload)) = row else {
            return Ok(None);
        };
        let (job_id,): (i64,) = sqlx::query_as(
            "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, not_before, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING job_id",
        )
        .bind(&kind)
        .bind(&tenant_id)
        .bind(message_id.as_deref())
        .bind(payload.as_deref())
        .bind(now_ms)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE dead_letters SET replayed_at = $1 WHERE dead_letter_id = $2")
            .bind(now_ms)
            .bind(dead_letter_id)
            .execute(&mut *tx)
            .await?;
        if kind == JobKind::Send.as_str()
            && let Some(message_id) = &message_id
        {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT status, reason FROM send_messages WHERE message_id = $1")
                    .bind(message_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((status, reason)) = row
                && replay_requeues(parse_status(&status)?, reason.as_deref())
            {
                sqlx::query(
                    "UPDATE send_messages SET status = 'queued', reason = NULL, updated_at = $1 \
                     WHERE message_id = $2",
                )
                .bind(now_ms)
                .bind(message_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO send_history (message_id, status, reason, at) \
                     VALUES ($1, 'queued', 'replayed', $2)",
                )
                .bind(message_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Some(job_id))
    }
}

#[async_trait]
impl crate::delivery::nats::Outbox for PgStore {
    async fn take_due(
        &self,
        max: usize,
        now_ms: i64,
    ) -> Result<Box<dyn crate::delivery::nats::TakenJobs>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<JobRow> = sqlx::query_as(
            // `= ANY(ARRAY(…))`, not `IN (…)`: the cached generic plan of `IN` joined against a
            // sequential scan of the whole table, dead rows included — on a busy outbox that
            // was most of PostgreSQL's work.
            "DELETE FROM delivery_jobs WHERE job_id = ANY(ARRAY(SELECT job_id FROM delivery_jobs \
               WHERE not_before <= $1 ORDER BY not_before, job_id LIMIT $2 \
               FOR UPDATE SKIP LOCKED)) \
             RETURNING job_id, kind, tenant_id, message_id, payload, attempts, created_at, \
             last_error",
        )
        .bind(now_ms)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        // RETURNING has no order: oldest first (job ids grow with time).
        let mut jobs = rows
            .into_iter()
            .map(|r| job_from_row(r, "relay"))
            .collect::<Result<Vec<Job>, StoreError>>()?;
        jobs.sort_by_key(|j| j.job_id);
        Ok(Box::new(Taken { tx, jobs }))
    }

    async fn record_dead_letter(
        &self,
        job: &Job,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dead_letters (job_id, kind, tenant_id, message_id, payload, attempts, \
             reason, last_error, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_job_error(&self, job_id: i64, error: Option<&str>) -> Result<(), StoreError> {
        match error {
            Some(error) => {
                sqlx::query(
                    "INSERT INTO delivery_job_errors (job_id, last_error) VALUES ($1, $2) \
                     ON CONFLICT (job_id) DO UPDATE SET last_error = excluded.last_error",
                )
                .bind(job_id)
                .bind(error)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM delivery_job_errors WHERE job_id = $1")
                    .bind(job_id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn job_errors(&self, job_ids: &[i64]) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT job_id, last_error FROM delivery_job_errors WHERE job_id = ANY($1)",
        )
        .bind(job_ids)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::nats::Outbox;
    use crate::store::postgres::testing::fresh;

    fn job(n: i64) -> NewJob {
        NewJob {
            kind: JobKind::Callback,
            tenant_id: "t1".into(),
            message_id: None,
            payload: Some(vec![n as u8]),
            not_before: n,
        }
    }

    /// Rows taken by a relay are invisible to another relay, come back when the relay gives
    /// up (drops the batch: a failed publish) and are gone once it commits; rows not yet due
    /// stay.
    #[tokio::test]
    async fn outbox_rows_are_taken_once_and_return_unless_committed() {
        let Some(pg) = fresh("outbox_rows_are_taken_once_and_return_unless_committed").await else {
            return;
        };
        let s = &pg.store;
        for n in 1..=5 {
            s.enqueue(&job(n)).await.unwrap();
        }
        s.enqueue(&job(1_000)).await.unwrap(); // not due at now = 100
        let first = s.take_due(3, 100).await.unwrap();
        let second = s.take_due(10, 100).await.unwrap();
        let ids = |t: &dyn crate::delivery::nats::TakenJobs| -> Vec<u8> {
            t.jobs()
                .iter()
                .map(|j| j.payload.as_ref().unwrap()[0])
                .collect()
        };
        assert_eq!(ids(&*first), vec![1, 2, 3], "oldest first");
        assert_eq!(ids(&*second), vec![4, 5], "skips rows another relay holds");
        drop(first); // publish failed: the rows return
        second.commit().await.unwrap();
        let again = s.take_due(10, 100).await.unwrap();
        assert_eq!(ids(&*again), vec![1, 2, 3]);
        again.commit().await.unwrap();
        assert_eq!(
            s.depth().await.unwrap(),
            1,
            "only the job not yet due is left"
        );
    }
}
