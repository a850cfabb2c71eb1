//! SQLite implementation of [`DeliveryStore`]: the send pipeline's tables live in the same
//! database as the queue (`sqlite_queue.rs`), so a message and its job are written in one
//! transaction (the transactional outbox) and a status change and its callback job too.
//!
//! Batches of accepts run in one `BEGIN IMMEDIATE` transaction with a savepoint per message,
//! so one bad message rolls back alone. It must never log or inspect payload bytes.

use async_trait::async_trait;
use sealgate_proto::send::{
    Channel, MessageClass, MessageStatus, MessageView, StatusCallback, StatusEntry,
};
use sqlx::SqliteConnection;
use tokio::sync::oneshot;

use super::queue::JobKind;
use super::sqlite_accept;
use super::sqlite_batch::WriteOp;
use super::store::{
    AcceptOutcome, DeliveryStore, InAppDelivery, InAppOutcome, NewMessage, OutboundMessage,
    PayloadKind, ReceiptOutcome, TenantCallback, Transition,
};
use super::write_plan::StatusWrite;
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

/// Reason of a failure a dead-letter replay can retry; such messages keep their payload.
pub(crate) const RETRY_WINDOW_EXHAUSTED: &str = "retry_window_exhausted";

/// Whether a message in `status` (for `reason`) no longer needs its payload.
pub(crate) fn wipes_payload(status: MessageStatus, reason: Option<&str>) -> bool {
    match status {
        MessageStatus::Queued | MessageStatus::Sending => false,
        MessageStatus::Failed => reason != Some(RETRY_WINDOW_EXHAUSTED),
        _ => true,
    }
}

/// Whether a dead-letter replay puts a message in `status` (for `reason`) back in the queue:
/// only a send that failed by exhausting its retry window (the one failure that keeps its
/// payload, see `wipes_payload`). Every backend's `replay` asks this.
pub(crate) fn replay_requeues(status: MessageStatus, reason: Option<&str>) -> bool {
    status == MessageStatus::Failed && reason == Some(RETRY_WINDOW_EXHAUSTED)
}

pub(crate) fn corrupt(what: &str, v: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what} {v}"))
}

pub(crate) fn parse_status(s: &str) -> Result<MessageStatus, StoreError> {
    MessageStatus::parse(s).ok_or_else(|| corrupt("status", s))
}

/// A message's view from its row and its stored history. The `queued` entry is not stored:
/// the row's `accepted_at` is that entry (one row fewer per accept; a replayed dead letter's
/// `queued` is stored, with reason `replayed`).
pub(crate) fn message_view_from(
    m: OutboundMessage,
    history: Vec<(String, Option<String>, i64)>,
) -> Result<MessageView, StoreError> {
    let accepted = StatusEntry {
        status: MessageStatus::Queued,
        at: m.accepted_at,
        reason: None,
    };
    let history = std::iter::once(Ok(accepted))
        .chain(history.into_iter().map(|(status, reason, at)| {
            Ok(StatusEntry {
                status: parse_status(&status)?,
                at,
                reason,
            })
        }))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(MessageView {
        message_id: m.message_id,
        to: m.recipient,
        class: m.class,
        channel: m.channel,
        status: m.status,
        reason: m.reason,
        attempts: m.attempts,
        history,
    })
}

fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(what, v))
}

/// The JSON body of a status callback.
pub(crate) fn callback_body(t: &Transition) -> Vec<u8> {
    serde_json::to_vec(&StatusCallback {
        message_id: t.message_id.clone(),
        status: t.status,
        reason: t.reason.clone(),
        at: t.at,
    })
    .unwrap_or_default()
}

/// Record `t` inside the caller's transaction. See [`DeliveryStore::transition`].
pub(crate) async fn transition_in(
    conn: &mut SqliteConnection,
    t: &Transition,
) -> Result<bool, StoreError> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT tenant_id, status FROM send_messages WHERE message_id = ?")
            .bind(&t.message_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((tenant_id, current)) = row else {
        return Ok(false);
    };
    let current = parse_status(&current)?;
    if t.count_attempt {
        sqlx::query("UPDATE send_messages SET attempts = attempts + 1 WHERE message_id = ?")
            .bind(&t.message_id)
            .execute(&mut *conn)
            .await?;
    }
    if !current.can_move_to(t.status) {
        return Ok(false);
    }
    if let Some(sent) = implied_sent(current, t) {
        apply_step(conn, &tenant_id, &sent).await?;
    }
    apply_step(conn, &tenant_id, t).await?;
    Ok(true)
}

/// A carrier receipt can overtake the worker's own `sent` record (the carrier acks, posts
/// DELIVERED, and only then does the worker write `sent`); the receipt proves the send, so
/// `sent` is recorded first and the history stays a forward path.
pub(crate) fn implied_sent(current: MessageStatus, t: &Transition) -> Option<Transition> {
    (current.rank() < MessageStatus::Sent.rank()
        && matches!(t.status, MessageStatus::Delivered | MessageStatus::Read))
    .then(|| Transition {
        status: MessageStatus::Sent,
        reason: None,
        count_attempt: false,
        ..t.clone()
    })
}

/// Write one forward step: state, history entry, and the tenant's callback job.
async fn apply_step(
    conn: &mut SqliteConnection,
    tenant_id: &str,
    t: &Transition,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE send_messages SET status = ?, reason = ?, updated_at = ?, \
         payload = CASE WHEN ? THEN x'' ELSE payload END WHERE message_id = ?",
    )
    .bind(t.status.as_str())
    .bind(t.reason.as_deref())
    .bind(t.at)
    .bind(wipes_payload(t.status, t.reason.as_deref()))
    .bind(&t.message_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO send_history (message_id, status, reason, at) VALUES (?, ?, ?, ?)")
        .bind(&t.message_id)
        .bind(t.status.as_str())
        .bind(t.reason.as_deref())
        .bind(t.at)
        .execute(&mut *conn)
        .await?;
    if t.status != MessageStatus::Sending {
        // The callback job is written with the change it reports: no change is lost, none
        // reported that did not happen.
        sqlx::query(
            "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, not_before, \
             created_at) SELECT ?, tenant_id, ?, ?, ?, ? FROM tenant_callbacks WHERE tenant_id = ?",
        )
        .bind(JobKind::Callback.as_str())
        .bind(&t.message_id)
        .bind(callback_body(t))
        .bind(t.at)
        .bind(t.at)
        .bind(tenant_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// See [`DeliveryStore::deliver_inapp`]; runs inside the caller's transaction.
async fn deliver_inapp_in(
    conn: &mut SqliteConnection,
    d: &InAppDelivery,
) -> Result<InAppOutcome, StoreError> {
    let status: Option<(String,)> =
        sqlx::query_as("SELECT status FROM send_messages WHERE message_id = ?")
            .bind(&d.message_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((status,)) = status else {
        return Ok(InAppOutcome::UnknownMessage);
    };
    if parse_status(&status)?.rank() >= MessageStatus::Sent.rank() {
        return Ok(InAppOutcome::AlreadyDelivered);
    }
    let mut pushed = Vec::new();
    if !d.recipients.is_empty() {
        let epoch = i64::try_from(d.epoch).map_err(|_| corrupt("epoch", d.epoch))?;
        sqlx::query(
            "INSERT INTO ds_messages (message_id, group_id, kind, epoch, sender_user, \
             sender_device, bytes, size, received_at) \
             VALUES (?, ?, 'application', ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&d.message_id)
        .bind(&d.group_id)
        .bind(epoch)
        .bind(&d.sender_user)
        .bind(&d.sender_device)
        .bind(&d.bytes)
        .bind(d.bytes.len() as i64)
        .bind(d.at)
        .execute(&mut *conn)
        .await?;
        for device in &d.recipients {
            sqlx::query("INSERT INTO ds_mailbox (device_id, message_id) VALUES (?, ?)")
                .bind(device)
                .bind(&d.message_id)
                .execute(&mut *conn)
                .await?;
            let woken = sqlx::query(
                "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, \
                 not_before, created_at) \
                 SELECT 'push', m.tenant_id, m.message_id, ?, ?, ? \
                 FROM send_messages m, push_tokens p \
                 WHERE m.message_id = ? AND p.device_id = ?",
            )
            .bind(device.as_bytes())
            .bind(d.at)
            .bind(d.at)
            .bind(&d.message_id)
            .bind(device)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if woken > 0 {
                pushed.push(device.clone());
            }
        }
    }
    transition_in(
        &mut *conn,
        &Transition {
            message_id: d.message_id.clone(),
            status: MessageStatus::Sent,
            reason: None,
            at: d.at,
            count_attempt: false,
        },
    )
    .await?;
    Ok(InAppOutcome::Delivered { pushed })
}

type MessageRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Vec<u8>,
    String,
    i64,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
);

fn outbound_from_row(r: MessageRow) -> Result<OutboundMessage, StoreError> {
    let (
        message_id,
        tenant_id,
        recipient,
        class,
        channel,
        kind,
        group_id,
        epoch,
        payload,
        status,
        attempts,
        correlation_id,
        accepted_at,
        expires_at,
        reason,
    ) = r;
    Ok(OutboundMessage {
        class: MessageClass::parse(&class).ok_or_else(|| corrupt("class", &class))?,
        channel: Channel::parse(&channel).ok_or_else(|| corrupt("channel", &channel))?,
        kind: PayloadKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        epoch: epoch
            .map(|e| u64::try_from(e).map_err(|_| corrupt("epoch", e)))
            .transpose()?,
        status: parse_status(&status)?,
        attempts: to_u32(attempts, "attempts")?,
        message_id,
        tenant_id,
        recipient,
        group_id,
        payload,
        correlation_id,
        accepted_at,
        expires_at,
        reason,
    })
}

const MESSAGE_COLUMNS: &str = "message_id, tenant_id, recipient, class, channel, kind, group_id, \
     epoch, payload, status, attempts, correlation_id, accepted_at, expires_at, reason";

/// Key log rows a purge removes per transaction. Measured at a million keys: one transaction
/// that purged them all held the write lock (and so every accept) for 1.42 s, and one that
/// found nothing due still scanned the whole log for 67–70 ms. In chunks, all of them took
/// 1.37 s in 100 transactions (14 ms each, the lock free in between), and nothing due 0.3–0.5 ms.
const PURGE_CHUNK: i64 = 10_000;

impl SqliteStore {
    /// Forget the keys logged before `before_ms`, `chunk` log rows per transaction, from the
    /// log's front up to its first row that is not due yet. The log is in acceptance order
    /// (its rows are appended at commit, under the write lock), so that row is where the due
    /// keys end, up to a clock step back between two accepts; a due key logged after it is
    /// kept until a later purge reaches it, longer than the window, never shorter. Stores on
    /// this file drop the purged keys from memory when they next look at the log's first row
    /// (`sqlite_keys.rs`); until then a purged key's candidate row no longer holds it, so it
    /// is free already.
    async fn purge_keys(&self, before_ms: i64, chunk: i64) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let mut tx = self.writer.begin().await?;
            let Some(first) =
                sqlx::query_scalar::<_, Option<i64>>("SELECT min(seq) FROM send_keys")
                    .fetch_one(&mut *tx)
                    .await?
            else {
                break;
            };
            let limit = first.saturating_add(chunk.max(1));
            let kept: Option<i64> = sqlx::query_scalar(
                "SELECT min(seq) FROM send_keys WHERE seq >= ? AND seq < ? AND at >= ?",
            )
            .bind(first)
            .bind(limit)
            .bind(before_ms)
            .fetch_one(&mut *tx)
            .await?;
            let end = kept.unwrap_or(limit);
            sqlx::query(
                "UPDATE send_messages SET idem_key = NULL, request_hash = NULL \
                 WHERE message_id IN (SELECT message_id FROM send_keys WHERE seq < ?)",
            )
            .bind(end)
            .execute(&mut *tx)
            .await?;
            purged += sqlx::query("DELETE FROM send_keys WHERE seq < ?")
                .bind(end)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            if kept.is_some() {
                break;
            }
        }
        self.keys.lock().await.trim_soon();
        Ok(purged)
    }
}

#[async_trait]
impl DeliveryStore for SqliteStore {
    async fn accept_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<Result<AcceptOutcome, StoreError>>, StoreError> {
        match sqlite_accept::accept_fast(self, batch).await {
            Ok(outcomes) => Ok(outcomes.into_iter().map(Ok).collect()),
            // Some row was refused: redo the batch one savepoint per message, so only the
            // bad one fails.
            Err(e) if batch.len() > 1 => {
                tracing::debug!(error = %e, "batched accept failed; retrying one by one");
                sqlite_accept::accept_each(self, batch).await
            }
            Err(e) => Ok(vec![Err(e)]),
        }
    }

    fn idempotency_keys_in_memory(&self) -> Option<u64> {
        Some(self.keys_held.load(std::sync::atomic::Ordering::Relaxed))
    }

    async fn message_view(
        &self,
        tenant_id: &str,
        message_id: &str,
    ) -> Result<Option<MessageView>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<MessageRow> = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM send_messages WHERE message_id = ? AND tenant_id = ?"
        ))
        .bind(message_id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let m = outbound_from_row(row)?;
        let history: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT status, reason, at FROM send_history WHERE message_id = ? ORDER BY id",
        )
        .bind(message_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        message_view_from(m, history).map(Some)
    }

    async fn outbound(&self, message_id: &str) -> Result<Option<OutboundMessage>, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM send_messages WHERE message_id = ?"
        ))
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(outbound_from_row).transpose()
    }

    async fn transition(&self, t: &Transition) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let op = WriteOp::Status(StatusWrite::Transition {
            t: t.clone(),
            reply,
        });
        self.submit(op, answer).await
    }

    async fn deliver_inapp(&self, d: &InAppDelivery) -> Result<InAppOutcome, StoreError> {
        let d = d.clone();
        self.write_batched(move |conn| Box::pin(async move { deliver_inapp_in(conn, &d).await }))
            .await
    }

    async fn carrier_receipt(
        &self,
        event_id: &str,
        t: &Transition,
    ) -> Result<ReceiptOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let op = WriteOp::Status(StatusWrite::Receipt {
            event_id: event_id.to_owned(),
            t: t.clone(),
            reply,
        });
        self.submit(op, answer).await
    }

    async fn set_callback(
        &self,
        tenant_id: &str,
        callback: &TenantCallback,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_callbacks (tenant_id, url, secret, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (tenant_id) DO UPDATE SET url = excluded.url, secret = excluded.secret, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(&callback.url)
        .bind(&callback.secret)
        .bind(now_ms)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(())
    }

    async fn callback(&self, tenant_id: &str) -> Result<Option<TenantCallback>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT url, secret FROM tenant_callbacks WHERE tenant_id = ?")
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(url, secret)| TenantCallback { url, secret }))
    }

    async fn set_push_token(
        &self,
        device_id: &str,
        token: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO push_tokens (device_id, token, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (device_id) DO UPDATE SET token = excluded.token, \
             updated_at = excluded.updated_at",
        )
        .bind(device_id)
        .bind(token)
        .bind(now_ms)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(())
    }

    async fn push_token(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT token FROM push_tokens WHERE device_id = ?")
                .bind(device_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    async fn user_by_phone(
        &self,
        tenant_id: &str,
        phone: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT user_id FROM users WHERE tenant_id = ? AND phone = ? ORDER BY created_at LIMIT 1",
        )
        .bind(tenant_id)
        .bind(phone)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.purge_keys(before_ms, PURGE_CHUNK).await
    }

    async fn take_quota(
        &self,
        tenant_id: &str,
        day: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let granted: Option<(i64,)> = sqlx::query_as(TAKE_QUOTA)
            .bind(tenant_id)
            .bind(day)
            .bind(i64::try_from(want).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_optional(&mut *self.writer.lock().await)
            .await?;
        Ok(granted.map_or(0, |(g,)| u64::try_from(g).unwrap_or(0)))
    }
}

/// [`DeliveryStore::take_quota`] in one statement: every `SET` expression reads the row as it
/// was, so `granted` is the new count minus the old. A count above `limit` (the limit was
/// lowered) is kept, not lowered. No row comes back when the call's day is older than the
/// stored one. `?1` tenant, `?2` day, `?3` wanted, `?4` limit.
const TAKE_QUOTA: &str = "INSERT INTO send_quota (tenant_id, day, used, granted) \
     VALUES (?1, ?2, min(?3, ?4), min(?3, ?4)) \
     ON CONFLICT (tenant_id) DO UPDATE SET day = ?2, \
     used = CASE WHEN send_quota.day = ?2 \
         THEN max(send_quota.used, min(send_quota.used + ?3, ?4)) ELSE min(?3, ?4) END, \
     granted = CASE WHEN send_quota.day = ?2 \
         THEN max(send_quota.used, min(send_quota.used + ?3, ?4)) - send_quota.used \
         ELSE min(?3, ?4) END \
     WHERE send_quota.day <= ?2 \
     RETURNING granted";

#[cfg(test)]
mod tests {
    use super::super::conformance as c;
    use super::super::queue::JobQueue;
    use super::*;

    // The contract tests run for every backend from `store::conformance::backend_suite!`.

    /// A database at `path` with the migrations before `version` applied: a data folder of an
    /// older release.
    async fn migrated_before(path: &std::path::Path, version: i64) -> sqlx::SqlitePool {
        let old = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        let mut before = sqlx::migrate!("./migrations");
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&old).await.unwrap();
        old
    }

    /// A data folder from before migration 0006 (stored `queued` entries, keys in a rowid
    /// table) keeps its idempotency keys and shows one `queued` entry per message after the
    /// upgrade; a replayed dead letter's `queued` stays.
    #[tokio::test]
    async fn the_lean_accept_migration_keeps_keys_and_one_queued_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let old = migrated_before(&path, 6).await;
        for sql in [
            "INSERT INTO send_messages (message_id, tenant_id, recipient, class, channel, kind, \
             payload, status, accepted_at, updated_at) VALUES ('m1', 't1', '+15551234567', \
             'transactional', 'sms', 'text', x'00', 'queued', 1000, 3000)",
            "INSERT INTO send_history (message_id, status, reason, at) VALUES \
             ('m1', 'queued', NULL, 1000), ('m1', 'failed', 'retry_window_exhausted', 2000), \
             ('m1', 'queued', 'replayed', 3000)",
        ] {
            sqlx::query(sql).execute(&old).await.unwrap();
        }
        sqlx::query("INSERT INTO send_idempotency VALUES ('t1', 'k1', ?, 'm1', 1000)")
            .bind(vec![7u8; 32])
            .execute(&old)
            .await
            .unwrap();
        old.close().await;

        let s = SqliteStore::open(&path).await.expect("migrates");
        let v = s.message_view("t1", "m1").await.unwrap().unwrap();
        let history: Vec<_> = v
            .history
            .iter()
            .map(|h| (h.status, h.at, h.reason.as_deref()))
            .collect();
        assert_eq!(
            history,
            [
                (MessageStatus::Queued, 1000, None),
                (MessageStatus::Failed, 2000, Some(RETRY_WINDOW_EXHAUSTED)),
                (MessageStatus::Queued, 3000, Some("replayed")),
            ]
        );
        // The key survived the table rebuild.
        assert_key_answers(&s, "k1", 7, "m1").await;
    }

    /// A data folder from before migration 0007 keeps its pending send jobs, now on the
    /// message rows: a due job is leased with its attempts, retry window and last error, a
    /// message with two jobs keeps one, and callback jobs stay where they were.
    #[tokio::test]
    async fn send_jobs_move_onto_their_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let old = migrated_before(&path, 7).await;
        for id in ["m1", "m2", "m3"] {
            sqlx::query(
                "INSERT INTO send_messages (message_id, tenant_id, recipient, class, channel, \
                 kind, payload, status, accepted_at, updated_at) VALUES (?, 't1', \
                 '+15551234567', 'transactional', 'sms', 'text', x'00', 'queued', 1000, 1000)",
            )
            .bind(id)
            .execute(&old)
            .await
            .unwrap();
        }
        for sql in [
            // m1: retried twice, due at 5000; m2: two jobs (a replay repeated); m3: none.
            "INSERT INTO delivery_jobs (kind, tenant_id, message_id, attempts, not_before, \
             last_error, created_at) VALUES ('send', 't1', 'm1', 2, 5000, 'HTTP 503', 1000)",
            "INSERT INTO delivery_jobs (kind, tenant_id, message_id, not_before, created_at) \
             VALUES ('send', 't1', 'm2', 2000, 2000), ('send', 't1', 'm2', 2500, 2500)",
            "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, not_before, \
             created_at) VALUES ('callback', 't1', 'm3', x'7b7d', 9000, 9000)",
        ] {
            sqlx::query(sql).execute(&old).await.unwrap();
        }
        old.close().await;

        let s = SqliteStore::open(&path).await.expect("migrates");
        assert_eq!(
            s.depth().await.unwrap(),
            3,
            "two send jobs and the callback"
        );
        let lease = std::time::Duration::from_secs(10);
        let jobs = s.lease("w", 10, lease, 5000).await.unwrap();
        let mut sends: Vec<_> = jobs
            .iter()
            .map(|j| {
                (
                    j.kind,
                    j.message_id.clone().unwrap(),
                    j.attempts,
                    j.created_at,
                    j.last_error.clone(),
                )
            })
            .collect();
        sends.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            sends,
            [
                (JobKind::Send, "m1".into(), 3, 1000, Some("HTTP 503".into())),
                (JobKind::Send, "m2".into(), 1, 2000, None),
            ]
        );
        for job in &jobs {
            assert!(s.ack(job).await.unwrap());
        }
        let callbacks = s.lease("w", 10, lease, 9000).await.unwrap();
        assert_eq!(callbacks.len(), 1);
        assert_eq!(callbacks[0].kind, JobKind::Callback);
        assert_eq!(callbacks[0].payload.as_deref(), Some(&b"{}"[..]));
    }

    /// `key` answers for `message_id`: the same request (`hash`) is answered from it, another
    /// one refused.
    async fn assert_key_answers(s: &SqliteStore, key: &str, hash: u8, message_id: &str) {
        let out = s
            .accept_messages(&[c::message(key, hash, 5000), c::message(key, hash + 1, 5000)])
            .await
            .unwrap();
        assert_eq!(
            out[0].as_ref().unwrap(),
            &AcceptOutcome::Replayed {
                message_id: message_id.into()
            }
        );
        assert_eq!(out[1].as_ref().unwrap(), &AcceptOutcome::KeyReused);
    }

    /// Two stores on one new file, as two gateway processes on one data folder.
    async fn two_stores() -> (tempfile::TempDir, SqliteStore, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let a = SqliteStore::open(&path).await.unwrap();
        let b = SqliteStore::open(&path).await.unwrap();
        (dir, a, b)
    }

    /// Migration 0009 rebuilds `send_messages` (cheaper CHECKs): every column of every row,
    /// the history with its ids, the pending job and the key survive; the CHECKs and the
    /// history's foreign key still refuse what they refused.
    #[tokio::test]
    async fn the_check_rebuild_keeps_rows_history_jobs_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let old = migrated_before(&path, 9).await;
        let hash = "07".repeat(32);
        let columns = "message_id, tenant_id, recipient, class, channel, kind, group_id, \
             epoch, payload, status, reason, attempts, correlation_id, accepted_at, \
             expires_at, updated_at, job_due, job_since, job_leases, lease_token, last_error, \
             idem_key, request_hash";
        for sql in [
            format!(
                "INSERT INTO send_messages ({columns}) VALUES \
                 ('m1', 't1', 'u1', 'sensitive', 'inapp', 'mls', 'abcd', 7, x'0102', \
                  'queued', NULL, 2, 'corr-1', 1000, 9000, 1500, 4000, 1000, 2, NULL, \
                  'HTTP 503', 'k1', x'{hash}'), \
                 ('m2', 't1', '+15551234567', 'marketing', 'sms', 'text', NULL, NULL, x'', \
                  'failed', 'carrier_rejected', 1, NULL, 1100, NULL, 1200, NULL, NULL, 1, \
                  NULL, NULL, NULL, NULL)"
            ),
            "INSERT INTO send_history (id, message_id, status, reason, at) VALUES \
             (5, 'm2', 'sending', NULL, 1150), (9, 'm2', 'failed', 'carrier_rejected', 1200)"
                .into(),
        ] {
            sqlx::query(&sql).execute(&old).await.unwrap();
        }
        // Every column of a row, quoted (blobs as hex), after its rowid.
        let dump = format!(
            "SELECT quote(rowid) || '|' || {} FROM send_messages \
             WHERE message_id IN ('m1', 'm2') ORDER BY rowid",
            columns
                .split(',')
                .map(|c| format!("quote({})", c.trim()))
                .collect::<Vec<_>>()
                .join(" || '|' || ")
        );
        let before: Vec<String> = sqlx::query_scalar(&dump).fetch_all(&old).await.unwrap();
        old.close().await;

        let s = SqliteStore::open(&path).await.expect("migrates");
        // Every column of both rows, as before.
        let after: Vec<String> = sqlx::query_scalar(&dump).fetch_all(&s.pool).await.unwrap();
        assert_eq!(after, before);
        assert_eq!(before.len(), 2);
        let (check,): (String,) =
            sqlx::query_as("SELECT sql FROM sqlite_schema WHERE name = 'send_messages'")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert!(!check.contains(" IN ("), "{check}");
        let (integrity,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
        let (rows, history): (i64, Vec<(i64, String)>) = (
            sqlx::query_scalar("SELECT COUNT(*) FROM send_messages")
                .fetch_one(&s.pool)
                .await
                .unwrap(),
            sqlx::query_as("SELECT id, status FROM send_history ORDER BY id")
                .fetch_all(&s.pool)
                .await
                .unwrap(),
        );
        assert_eq!(rows, 2);
        assert_eq!(history, [(5, "sending".into()), (9, "failed".into())]);
        let v = s.message_view("t1", "m2").await.unwrap().unwrap();
        assert_eq!(v.history.len(), 3, "queued (accepted_at), sending, failed");
        let m1 = s.outbound("m1").await.unwrap().unwrap();
        assert_eq!(m1.payload, [1, 2]);
        assert_eq!(m1.correlation_id.as_deref(), Some("corr-1"));
        let jobs = s
            .lease("w", 10, std::time::Duration::from_secs(10), 4000)
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (jobs[0].attempts, jobs[0].last_error.as_deref()),
            (3, Some("HTTP 503"))
        );
        assert_key_answers(&s, "k1", 7, "m1").await;
        for bad in [
            "INSERT INTO send_messages (message_id, tenant_id, recipient, class, channel, kind, \
             payload, status, accepted_at, updated_at) VALUES ('x', 't1', 'r', 'bulk', 'sms', \
             'text', x'', 'queued', 1, 1)",
            "INSERT INTO send_messages (message_id, tenant_id, recipient, class, channel, kind, \
             payload, status, accepted_at, updated_at) VALUES ('x', 't1', 'r', 'marketing', \
             'fax', 'text', x'', 'queued', 1, 1)",
            "INSERT INTO send_messages (message_id, tenant_id, recipient, class, channel, kind, \
             payload, status, accepted_at, updated_at) VALUES ('x', 't1', 'r', 'marketing', \
             'sms', 'html', x'', 'queued', 1, 1)",
            "INSERT INTO send_history (message_id, status, at) VALUES ('nope', 'sent', 1)",
        ] {
            assert!(
                sqlx::query(bad)
                    .execute(&mut *s.writer.lock().await)
                    .await
                    .is_err(),
                "accepted: {bad}"
            );
        }
    }

    /// Two stores on one file (two gateway processes on one data folder) see each other's
    /// keys: each reads the key log's new rows under the write lock before deciding, so a
    /// key sent to both at once is stored once, and a restart reads the keys back.
    #[tokio::test]
    async fn stores_on_one_file_share_keys_exactly() {
        let (dir, a, b) = two_stores().await;
        let first = c::message("k1", 1, 1000);
        let out = a
            .accept_messages(std::slice::from_ref(&first))
            .await
            .unwrap();
        assert!(matches!(out[0], Ok(AcceptOutcome::Accepted { .. })));
        assert_key_answers(&b, "k1", 1, &first.message_id).await;
        // The same new keys at both at once: each stored exactly once.
        for round in 0..20 {
            let batch: Vec<NewMessage> = (0..8)
                .map(|i| c::message(&format!("r{round}-{i}"), 1, 2000))
                .collect();
            let again: Vec<NewMessage> = (0..8)
                .map(|i| c::message(&format!("r{round}-{i}"), 1, 2000))
                .collect();
            let (x, y) = tokio::join!(a.accept_messages(&batch), b.accept_messages(&again));
            for (x, y) in x.unwrap().iter().zip(y.unwrap().iter()) {
                let stored = |o: &AcceptOutcome| match o {
                    AcceptOutcome::Accepted { message_id } => (true, message_id.clone()),
                    AcceptOutcome::Replayed { message_id } => (false, message_id.clone()),
                    AcceptOutcome::KeyReused => panic!("same request"),
                };
                let (x, y) = (stored(x.as_ref().unwrap()), stored(y.as_ref().unwrap()));
                assert!(x.0 != y.0, "exactly one accepted: {x:?} {y:?}");
                assert_eq!(x.1, y.1, "the replay names the stored message");
            }
        }
        assert_eq!(a.depth().await.unwrap(), 161);
        drop((a, b));
        let c2 = SqliteStore::open(&dir.path().join("d.db")).await.unwrap();
        assert_eq!(c2.keys.lock().await.len(), 161, "every key read back");
        assert_key_answers(&c2, "k1", 1, &first.message_id).await;
    }

    /// Keys survive `VACUUM`, which may renumber the message table's rowids: the key log
    /// names messages by id (here the rowids are moved on purpose, then the file vacuumed).
    #[tokio::test]
    async fn keys_survive_renumbered_rowids() {
        let (_d, s) = SqliteStore::open_temp().await;
        let first = c::message("k1", 1, 1000);
        s.accept_messages(&[first.clone(), c::message("k2", 1, 1000)])
            .await
            .unwrap();
        for sql in ["UPDATE send_messages SET rowid = rowid + 1000", "VACUUM"] {
            sqlx::query(sql)
                .execute(&mut *s.writer.lock().await)
                .await
                .unwrap();
        }
        assert_key_answers(&s, "k1", 1, &first.message_id).await;
        assert_eq!(s.depth().await.unwrap(), 2);
    }

    /// A purge by one store frees the key for every store on the file at once, and each
    /// drops the purged keys from memory when it looks at the log's front.
    #[tokio::test]
    async fn a_purge_frees_keys_for_every_store_and_their_memory() {
        let (_dir, a, b) = two_stores().await;
        let old = c::message("k1", 1, 1000);
        a.accept_messages(&[old.clone(), c::message("k2", 1, 5000)])
            .await
            .unwrap();
        b.accept_messages(&[c::message("k3", 1, 5000)])
            .await
            .unwrap();
        assert_eq!(b.purge_idempotency(2000).await.unwrap(), 1);
        // `a` still holds k1's candidate: its row no longer holds the key, so k1 is new.
        let out = a
            .accept_messages(&[c::message("k1", 2, 6000)])
            .await
            .unwrap();
        let AcceptOutcome::Accepted { message_id } = out[0].as_ref().unwrap() else {
            panic!("{out:?}")
        };
        assert_ne!(*message_id, old.message_id);
        a.keys.lock().await.trim_soon();
        a.accept_messages(&[c::message("k4", 1, 6000)])
            .await
            .unwrap();
        assert_eq!(a.keys.lock().await.len(), 4, "k2, k3, the new k1, k4");
    }

    /// A purge goes chunk by chunk from the log's front and stops at the first key not due
    /// yet: a due key logged after it (a clock step back) is kept until a later purge, never
    /// forgotten early.
    #[tokio::test]
    async fn a_purge_goes_in_chunks_and_stops_at_the_first_key_not_due() {
        let (_d, s) = SqliteStore::open_temp().await;
        let times = [
            ("k1", 1000),
            ("k2", 1000),
            ("k3", 1000),
            ("k4", 5000),
            ("k5", 1000),
        ];
        let sent: Vec<NewMessage> = times.map(|(key, at)| c::message(key, 1, at)).to_vec();
        for m in &sent {
            s.accept_messages(std::slice::from_ref(m)).await.unwrap();
        }
        let held = |s: &SqliteStore| {
            let s = s.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM send_messages WHERE idem_key IS NOT NULL",
                )
                .fetch_one(&s.pool)
                .await
                .unwrap();
                n
            }
        };
        assert_eq!(
            s.purge_keys(2000, 2).await.unwrap(),
            3,
            "k1-k3, over two chunks"
        );
        assert_eq!(held(&s).await, 2, "k4 and k5 kept");
        assert_key_answers(&s, "k5", 1, &sent[4].message_id).await;
        assert_eq!(
            s.purge_keys(6000, 2).await.unwrap(),
            2,
            "k4, then k5 behind it"
        );
        assert_eq!(held(&s).await, 0);
        assert_eq!(s.purge_keys(6000, 2).await.unwrap(), 0, "an empty log");
    }

    /// Migration 0010 moves the stored keys into the key log; the gateway fills in their
    /// hashes when it opens the file, so they still answer, and drops log rows whose message
    /// lost its key in between.
    #[tokio::test]
    async fn the_key_log_migration_keeps_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let old = migrated_before(&path, 10).await;
        let hash = "07".repeat(32);
        sqlx::query(&format!(
            "INSERT INTO send_messages (message_id, tenant_id, recipient, class, channel, \
             kind, payload, status, accepted_at, updated_at, idem_key, request_hash) VALUES \
             ('m1', 't1', 'r', 'marketing', 'sms', 'text', x'', 'queued', 1000, 1000, 'k1', \
              x'{hash}'), \
             ('m2', 't1', 'r', 'marketing', 'sms', 'text', x'', 'queued', 1100, 1100, NULL, \
              NULL), \
             ('m3', 't2', 'r', 'marketing', 'sms', 'text', x'', 'queued', 1200, 1200, 'k1', \
              x'{hash}')"
        ))
        .execute(&old)
        .await
        .unwrap();
        old.close().await;
        // Between the migration and the fill, m3's key goes (as if purged by an old release).
        let migrated = migrated_before(&path, 11).await;
        sqlx::query("UPDATE send_messages SET idem_key = NULL WHERE message_id = 'm3'")
            .execute(&migrated)
            .await
            .unwrap();
        migrated.close().await;

        let s = SqliteStore::open(&path).await.expect("migrates");
        let log: Vec<(Option<i64>, String)> =
            sqlx::query_as("SELECT key_hash, message_id FROM send_keys ORDER BY seq")
                .fetch_all(&s.pool)
                .await
                .unwrap();
        assert_eq!(
            log,
            [(
                Some(super::super::sqlite_keys::key_hash("t1", "k1")),
                "m1".to_owned()
            )]
        );
        let index: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE name = 'send_messages_key'")
                .fetch_optional(&s.pool)
                .await
                .unwrap();
        assert_eq!(index, None, "the unique index is gone");
        assert_key_answers(&s, "k1", 7, "m1").await;
        let mut other = c::message("k1", 7, 5000);
        other.tenant_id = "t2".into();
        let out = s.accept_messages(&[other]).await.unwrap();
        assert!(matches!(out[0], Ok(AcceptOutcome::Accepted { .. })));
    }

    /// A failure between the key and its message (injected with a trigger on the message
    /// table) leaves neither, and does not take the rest of the batch down.
    #[tokio::test]
    async fn a_failure_between_key_and_message_leaves_neither() {
        let (_d, s) = SqliteStore::open_temp().await;
        let ok1 = c::message("a", 1, 0);
        let mut poison = c::message("b", 1, 0);
        poison.recipient = "+15550000666".into();
        let ok2 = c::message("c", 1, 0);
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON send_messages \
             WHEN NEW.recipient = '+15550000666' BEGIN SELECT RAISE(ABORT, 'injected'); END",
        )
        .execute(&mut *s.writer.lock().await)
        .await
        .unwrap();
        let out = s
            .accept_messages(&[ok1.clone(), poison.clone(), ok2.clone()])
            .await
            .unwrap();
        assert!(out[0].is_ok() && out[2].is_ok());
        assert!(out[1].is_err());
        assert!(s.outbound(&poison.message_id).await.unwrap().is_none());
        let (keys,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM send_messages WHERE idem_key = 'b'")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert_eq!(keys, 0, "the key is free again");
        let logged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM send_keys")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(logged, 2, "only the stored messages' keys are logged");
        let (history,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM send_history WHERE message_id = ?")
                .bind(&poison.message_id)
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert_eq!(history, 0);
        assert_eq!(s.depth().await.unwrap(), 2);
        // Alone, too.
        let out = s.accept_messages(&[poison]).await.unwrap();
        assert!(out[0].is_err());
        assert_eq!(s.depth().await.unwrap(), 2);
    }
}
