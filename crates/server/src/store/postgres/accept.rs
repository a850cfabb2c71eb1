//! The accept transaction of the PostgreSQL backend: a batch of messages, each with its
//! idempotency key and send job, in one transaction (group commit). The `queued` history
//! entry is the message row's `accepted_at`; it is not stored.
//!
//! The fast path decides idempotency in memory and writes the batch with one statement
//! (`unnest` arrays feeding data-modifying CTEs, one per table). Another process may insert
//! the same key meanwhile: the unique key then refuses the batch (after waiting for that
//! transaction), and the slow path redoes it with one savepoint per message and `ON CONFLICT
//! DO NOTHING`, answering from the stored key. Neither path may leave a message without its
//! job or the reverse.

use std::collections::HashMap;

use sqlx::{Acquire, PgConnection};

use crate::delivery::sqlite::corrupt;
use crate::delivery::store::{AcceptOutcome, NewMessage};
use crate::store::StoreError;
use crate::store::postgres::PgStore;

async fn accept_one(conn: &mut PgConnection, m: &NewMessage) -> Result<AcceptOutcome, StoreError> {
    let fresh = sqlx::query(
        "INSERT INTO send_idempotency (tenant_id, idem_key, request_hash, message_id, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, idem_key) DO NOTHING",
    )
    .bind(&m.tenant_id)
    .bind(&m.idempotency_key)
    .bind(&m.request_hash)
    .bind(&m.message_id)
    .bind(m.accepted_at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if fresh == 0 {
        let (hash, message_id): (Vec<u8>, String) = sqlx::query_as(
            "SELECT request_hash, message_id FROM send_idempotency \
             WHERE tenant_id = $1 AND idem_key = $2",
        )
        .bind(&m.tenant_id)
        .bind(&m.idempotency_key)
        .fetch_one(&mut *conn)
        .await?;
        return Ok(if hash == m.request_hash {
            AcceptOutcome::Replayed { message_id }
        } else {
            AcceptOutcome::KeyReused
        });
    }
    let epoch = m
        .epoch
        .map(|e| i64::try_from(e).map_err(|_| corrupt("epoch", e)))
        .transpose()?;
    sqlx::query(
        "INSERT INTO send_messages (message_id, tenant_id, recipient, class, channel, kind, \
         group_id, epoch, payload, status, correlation_id, accepted_at, expires_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', $10, $11, $12, $13)",
    )
    .bind(&m.message_id)
    .bind(&m.tenant_id)
    .bind(&m.recipient)
    .bind(m.class.as_str())
    .bind(m.channel.as_str())
    .bind(m.kind.as_str())
    .bind(m.group_id.as_deref())
    .bind(epoch)
    .bind(&m.payload)
    .bind(m.correlation_id.as_deref())
    .bind(m.accepted_at)
    .bind(m.expires_at)
    .bind(m.accepted_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO delivery_jobs (kind, tenant_id, message_id, not_before, created_at) \
         VALUES ('send', $1, $2, $3, $4)",
    )
    .bind(&m.tenant_id)
    .bind(&m.message_id)
    .bind(m.accepted_at)
    .bind(m.accepted_at)
    .execute(&mut *conn)
    .await?;
    Ok(AcceptOutcome::Accepted {
        message_id: m.message_id.clone(),
    })
}

/// The whole batch in one transaction: the fast path. Idempotency is decided in memory in
/// batch order against the keys already stored; the inserts are one statement (data-modifying
/// CTEs over `unnest` arrays), so the SQL text is the same for every batch size and stays
/// prepared.
pub(super) async fn accept_fast(
    store: &PgStore,
    batch: &[NewMessage],
) -> Result<Vec<AcceptOutcome>, StoreError> {
    let mut tx = store.begin().await?;
    let tenants: Vec<&str> = batch.iter().map(|m| m.tenant_id.as_str()).collect();
    let keys: Vec<&str> = batch.iter().map(|m| m.idempotency_key.as_str()).collect();
    let rows: Vec<(String, String, Vec<u8>, String)> = sqlx::query_as(
        "SELECT i.tenant_id, i.idem_key, i.request_hash, i.message_id FROM send_idempotency i \
         JOIN unnest($1::text[], $2::text[]) AS b(tenant_id, idem_key) \
         ON i.tenant_id = b.tenant_id AND i.idem_key = b.idem_key",
    )
    .bind(&tenants)
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    let mut known: HashMap<(String, String), (Vec<u8>, String)> = rows
        .into_iter()
        .map(|(tenant, key, hash, id)| ((tenant, key), (hash, id)))
        .collect();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut fresh: Vec<&NewMessage> = Vec::with_capacity(batch.len());
    for m in batch {
        let key = (m.tenant_id.clone(), m.idempotency_key.clone());
        match known.get(&key) {
            Some((hash, id)) if *hash == m.request_hash => outcomes.push(AcceptOutcome::Replayed {
                message_id: id.clone(),
            }),
            Some(_) => outcomes.push(AcceptOutcome::KeyReused),
            None => {
                known.insert(key, (m.request_hash.clone(), m.message_id.clone()));
                fresh.push(m);
                outcomes.push(AcceptOutcome::Accepted {
                    message_id: m.message_id.clone(),
                });
            }
        }
    }
    if !fresh.is_empty() {
        let epochs = fresh
            .iter()
            .map(|m| {
                m.epoch
                    .map(|e| i64::try_from(e).map_err(|_| corrupt("epoch", e)))
                    .transpose()
            })
            .collect::<Result<Vec<Option<i64>>, StoreError>>()?;
        let col = |f: fn(&NewMessage) -> &str| fresh.iter().map(|m| f(m)).collect::<Vec<&str>>();
        sqlx::query(
            "WITH b AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], \
               $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], \
               $11::bytea[], $12::text[], $13::bigint[], $14::bigint[]) AS t(message_id, \
               tenant_id, idem_key, request_hash, recipient, class, channel, kind, group_id, \
               epoch, payload, correlation_id, accepted_at, expires_at)), \
             k AS (INSERT INTO send_idempotency (tenant_id, idem_key, request_hash, \
               message_id, created_at) \
               SELECT tenant_id, idem_key, request_hash, message_id, accepted_at FROM b), \
             m AS (INSERT INTO send_messages (message_id, tenant_id, recipient, class, \
               channel, kind, group_id, epoch, payload, status, correlation_id, accepted_at, \
               expires_at, updated_at) \
               SELECT message_id, tenant_id, recipient, class, channel, kind, group_id, epoch, \
               payload, 'queued', correlation_id, accepted_at, expires_at, accepted_at FROM b) \
             INSERT INTO delivery_jobs (kind, tenant_id, message_id, not_before, created_at) \
             SELECT 'send', tenant_id, message_id, accepted_at, accepted_at FROM b",
        )
        .bind(col(|m| &m.message_id))
        .bind(col(|m| &m.tenant_id))
        .bind(col(|m| &m.idempotency_key))
        .bind(
            fresh
                .iter()
                .map(|m| m.request_hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(col(|m| &m.recipient))
        .bind(col(|m| m.class.as_str()))
        .bind(col(|m| m.channel.as_str()))
        .bind(col(|m| m.kind.as_str()))
        .bind(
            fresh
                .iter()
                .map(|m| m.group_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(&epochs)
        .bind(
            fresh
                .iter()
                .map(|m| m.payload.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            fresh
                .iter()
                .map(|m| m.correlation_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(fresh.iter().map(|m| m.accepted_at).collect::<Vec<_>>())
        .bind(fresh.iter().map(|m| m.expires_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// The slow path: one savepoint per message.
pub(super) async fn accept_each(
    store: &PgStore,
    batch: &[NewMessage],
) -> Result<Vec<Result<AcceptOutcome, StoreError>>, StoreError> {
    let mut tx = store.begin().await?;
    let mut out = Vec::with_capacity(batch.len());
    for m in batch {
        let mut item = (&mut tx).begin().await?;
        match accept_one(&mut item, m).await {
            Ok(outcome) => {
                item.commit().await?;
                out.push(Ok(outcome));
            }
            Err(e) => {
                item.rollback().await?;
                out.push(Err(e));
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}
