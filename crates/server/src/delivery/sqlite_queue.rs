//! SQLite implementation of [`JobQueue`]: the `delivery_jobs` table with leases.
//!
//! A lease moves the job's `not_before` to the lease's end, so "ready" is one indexed range
//! (`not_before <= now`) and a job whose worker died becomes ready again by itself. Leasing
//! is one `UPDATE ... RETURNING` statement, so two workers never get the same job from the
//! same lease round. It must never interpret job payloads.

use std::time::Duration;

use async_trait::async_trait;
use sealgate_proto::send::DeadLetter;

use super::queue::{Job, JobKind, JobQueue, NewJob};
use super::sqlite::{RETRY_WINDOW_EXHAUSTED, parse_status};
use super::sqlite_batch::WriteOp;
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

#[async_trait]
impl JobQueue for SqliteStore {
    async fn enqueue(&self, job: &NewJob) -> Result<i64, StoreError> {
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
        .fetch_one(&self.writer)
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
        let rows: Vec<JobRow> = sqlx::query_as(
            "UPDATE delivery_jobs SET not_before = ?1, lease_until = ?1, lease_token = ?2, \
             attempts = attempts + 1 \
             WHERE job_id IN (SELECT job_id FROM delivery_jobs WHERE not_before <= ?3 \
             ORDER BY not_before, job_id LIMIT ?4) \
             RETURNING job_id, kind, tenant_id, message_id, payload, attempts, created_at, \
             last_error",
        )
        .bind(until)
        .bind(&token)
        .bind(now_ms)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.writer)
        .await?;
        rows.into_iter().map(|r| job_from_row(r, &token)).collect()
    }

    async fn ack(&self, job: &Job) -> Result<bool, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let op = WriteOp::Ack {
            job_id: job.job_id,
            lease_token: job.lease_token.clone(),
            reply,
        };
        self.submit(op, answer).await
    }

    async fn retry(&self, job: &Job, not_before_ms: i64, error: &str) -> Result<bool, StoreError> {
        let (job_id, token, error) = (job.job_id, job.lease_token.clone(), error.to_owned());
        self.write_batched(move |conn| {
            Box::pin(async move {
                let n = sqlx::query(
                    "UPDATE delivery_jobs SET not_before = ?, lease_until = NULL, \
                     lease_token = NULL, last_error = ? WHERE job_id = ? AND lease_token = ?",
                )
                .bind(not_before_ms)
                .bind(&error)
                .bind(job_id)
                .bind(&token)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                Ok(n > 0)
            })
        })
        .await
    }

    async fn dead_letter(&self, job: &Job, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM delivery_jobs WHERE job_id = ? AND lease_token = ?")
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
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM delivery_jobs")
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
        let mut tx = self.begin_write().await?;
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
        sqlx::query("UPDATE dead_letters SET replayed_at = ? WHERE dead_letter_id = ?")
            .bind(now_ms)
            .bind(dead_letter_id)
            .execute(&mut *tx)
            .await?;
        if kind == JobKind::Send.as_str()
            && let Some(message_id) = &message_id
        {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT status, reason FROM send_messages WHERE message_id = ?")
                    .bind(message_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((status, reason)) = row
                && parse_status(&status)? == sealgate_proto::send::MessageStatus::Failed
                && reason.as_deref() == Some(RETRY_WINDOW_EXHAUSTED)
            {
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
        }
        tx.commit().await?;
        Ok(Some(job_id))
    }
}
