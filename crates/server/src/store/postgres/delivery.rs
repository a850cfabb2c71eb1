//! PostgreSQL implementation of [`DeliveryStore`](crate::delivery::store::DeliveryStore).
//!
//! The send pipeline's tables live next to the job table (`delivery_jobs`), so a message and
//! its job, and a status change and its callback job, are written in one transaction: with
//! the table queue that is the queue itself, with the NATS queue it is the outbox the relay
//! drains. Status changes lock the message row (`FOR UPDATE`), so a worker and a carrier
//! receipt in different processes cannot interleave. It must never log or inspect payload
//! bytes.

use async_trait::async_trait;
use sealgate_proto::send::{Channel, MessageClass, MessageStatus, MessageView};
use sqlx::PgConnection;
use tokio::sync::oneshot;

use super::accept;

use crate::delivery::queue::JobKind;
use crate::delivery::sqlite::{
    callback_body, corrupt, implied_sent, message_view_from, parse_status, wipes_payload,
};
use crate::delivery::store::{
    AcceptOutcome, DeliveryStore, InAppDelivery, InAppOutcome, NewMessage, OutboundMessage,
    PayloadKind, ReceiptOutcome, TenantCallback, Transition,
};
use crate::delivery::write_plan::StatusWrite;
use crate::store::StoreError;
use crate::store::postgres::{PgStore, push_mailboxes};

/// Record `t` inside the caller's transaction. See [`DeliveryStore::transition`].
pub(crate) async fn transition_in(
    conn: &mut PgConnection,
    t: &Transition,
) -> Result<bool, StoreError> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT tenant_id, status FROM send_messages WHERE message_id = $1 FOR UPDATE",
    )
    .bind(&t.message_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((tenant_id, current)) = row else {
        return Ok(false);
    };
    let current = parse_status(&current)?;
    if t.count_attempt {
        sqlx::query("UPDATE send_messages SET attempts = attempts + 1 WHERE message_id = $1")
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

/// Record carrier receipt `event_id` for `t` inside the caller's transaction. See
/// [`DeliveryStore::carrier_receipt`].
pub(crate) async fn receipt_in(
    conn: &mut PgConnection,
    event_id: &str,
    t: &Transition,
) -> Result<ReceiptOutcome, StoreError> {
    let known: Option<(i64,)> =
        sqlx::query_as("SELECT 1::BIGINT FROM send_messages WHERE message_id = $1")
            .bind(&t.message_id)
            .fetch_optional(&mut *conn)
            .await?;
    if known.is_none() {
        return Ok(ReceiptOutcome::UnknownMessage);
    }
    let fresh = sqlx::query(
        "INSERT INTO carrier_events (event_id, message_id, received_at) VALUES ($1, $2, $3) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(&t.message_id)
    .bind(t.at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if fresh == 0 {
        return Ok(ReceiptOutcome::Duplicate);
    }
    Ok(if transition_in(conn, t).await? {
        ReceiptOutcome::Applied
    } else {
        ReceiptOutcome::Ignored
    })
}

/// Write one forward step: state, history entry, and the tenant's callback job.
async fn apply_step(
    conn: &mut PgConnection,
    tenant_id: &str,
    t: &Transition,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE send_messages SET status = $1, reason = $2, updated_at = $3, \
         payload = CASE WHEN $4 THEN ''::bytea ELSE payload END WHERE message_id = $5",
    )
    .bind(t.status.as_str())
    .bind(t.reason.as_deref())
    .bind(t.at)
    .bind(wipes_payload(t.status, t.reason.as_deref()))
    .bind(&t.message_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO send_history (message_id, status, reason, at) VALUES ($1, $2, $3, $4)",
    )
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
             created_at) SELECT $1, tenant_id, $2, $3, $4, $5 FROM tenant_callbacks WHERE tenant_id = $6",
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

fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(what, v))
}

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

#[async_trait]
impl DeliveryStore for PgStore {
    async fn accept_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<Result<AcceptOutcome, StoreError>>, StoreError> {
        match accept::accept_fast(self, batch).await {
            Ok(outcomes) => Ok(outcomes.into_iter().map(Ok).collect()),
            // Some row was refused: redo the batch one savepoint per message, so only the
            // bad one fails.
            Err(e) if batch.len() > 1 => {
                tracing::debug!(error = %e, "batched accept failed; retrying one by one");
                accept::accept_each(self, batch).await
            }
            Err(e) => Ok(vec![Err(e)]),
        }
    }

    /// Several: while one batch waits for its commit (a WAL flush), the next is written.
    fn accept_batches_in_flight(&self) -> usize {
        4
    }

    async fn message_view(
        &self,
        tenant_id: &str,
        message_id: &str,
    ) -> Result<Option<MessageView>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<MessageRow> = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM send_messages WHERE message_id = $1 AND tenant_id = $2"
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
            "SELECT status, reason, at FROM send_history WHERE message_id = $1 ORDER BY id",
        )
        .bind(message_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        message_view_from(m, history).map(Some)
    }

    async fn outbound(&self, message_id: &str) -> Result<Option<OutboundMessage>, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM send_messages WHERE message_id = $1"
        ))
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(outbound_from_row).transpose()
    }

    async fn transition(&self, t: &Transition) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(
            StatusWrite::Transition {
                t: t.clone(),
                reply,
            },
            answer,
        )
        .await
    }

    async fn deliver_inapp(&self, d: &InAppDelivery) -> Result<InAppOutcome, StoreError> {
        let mut tx = self.begin().await?;
        let status: Option<(String,)> =
            sqlx::query_as("SELECT status FROM send_messages WHERE message_id = $1 FOR UPDATE")
                .bind(&d.message_id)
                .fetch_optional(&mut *tx)
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
                 VALUES ($1, $2, 'application', $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(&d.message_id)
            .bind(&d.group_id)
            .bind(epoch)
            .bind(&d.sender_user)
            .bind(&d.sender_device)
            .bind(&d.bytes)
            .bind(d.bytes.len() as i64)
            .bind(d.at)
            .execute(&mut *tx)
            .await?;
            push_mailboxes(&mut tx, &d.recipients, &d.message_id).await?;
            let woken: Vec<(Vec<u8>,)> = sqlx::query_as(
                "INSERT INTO delivery_jobs (kind, tenant_id, message_id, payload, \
                 not_before, created_at) \
                 SELECT 'push', m.tenant_id, m.message_id, convert_to(p.device_id, 'UTF8'), \
                 $2, $2 FROM send_messages m JOIN push_tokens p ON p.device_id = ANY($3) \
                 WHERE m.message_id = $1 RETURNING payload",
            )
            .bind(&d.message_id)
            .bind(d.at)
            .bind(&d.recipients)
            .fetch_all(&mut *tx)
            .await?;
            let woken: std::collections::HashSet<Vec<u8>> =
                woken.into_iter().map(|(p,)| p).collect();
            pushed = d
                .recipients
                .iter()
                .filter(|r| woken.contains(r.as_bytes()))
                .cloned()
                .collect();
        }
        transition_in(
            &mut tx,
            &Transition {
                message_id: d.message_id.clone(),
                status: MessageStatus::Sent,
                reason: None,
                at: d.at,
                count_attempt: false,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(InAppOutcome::Delivered { pushed })
    }

    async fn carrier_receipt(
        &self,
        event_id: &str,
        t: &Transition,
    ) -> Result<ReceiptOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(
            StatusWrite::Receipt {
                event_id: event_id.to_owned(),
                t: t.clone(),
                reply,
            },
            answer,
        )
        .await
    }

    async fn set_callback(
        &self,
        tenant_id: &str,
        callback: &TenantCallback,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_callbacks (tenant_id, url, secret, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id) DO UPDATE SET url = excluded.url, secret = excluded.secret, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(&callback.url)
        .bind(&callback.secret)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn callback(&self, tenant_id: &str) -> Result<Option<TenantCallback>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT url, secret FROM tenant_callbacks WHERE tenant_id = $1")
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
            "INSERT INTO push_tokens (device_id, token, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id) DO UPDATE SET token = excluded.token, \
             updated_at = excluded.updated_at",
        )
        .bind(device_id)
        .bind(token)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn push_token(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT token FROM push_tokens WHERE device_id = $1")
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
            "SELECT user_id FROM users WHERE tenant_id = $1 AND phone = $2 ORDER BY created_at LIMIT 1",
        )
        .bind(tenant_id)
        .bind(phone)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM send_idempotency WHERE created_at < $1")
                .bind(before_ms)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn take_quota(
        &self,
        tenant_id: &str,
        day: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        // As on SQLite (`delivery/sqlite.rs`): every SET expression reads the old row, and
        // the row lock of the upsert orders concurrent takes across processes.
        let granted: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO send_quota (tenant_id, day, used, granted) \
             VALUES ($1, $2, LEAST($3, $4), LEAST($3, $4)) \
             ON CONFLICT (tenant_id) DO UPDATE SET day = $2, \
             used = CASE WHEN send_quota.day = $2 \
                 THEN GREATEST(send_quota.used, LEAST(send_quota.used + $3, $4)) \
                 ELSE LEAST($3, $4) END, \
             granted = CASE WHEN send_quota.day = $2 \
                 THEN GREATEST(send_quota.used, LEAST(send_quota.used + $3, $4)) \
                     - send_quota.used \
                 ELSE LEAST($3, $4) END \
             WHERE send_quota.day <= $2 \
             RETURNING granted",
        )
        .bind(tenant_id)
        .bind(day)
        .bind(i64::try_from(want).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await?;
        Ok(granted.map_or(0, |(g,)| u64::try_from(g).unwrap_or(0)))
    }
}
