//! The accept transaction of the PostgreSQL backend: a batch of messages, each with its
//! idempotency key and send job, in one transaction (group commit). The `queued` history
//! entry is the message row's `accepted_at`; it is not stored.
//!
//! The fast path writes the batch with one statement (`unnest` arrays feeding data-modifying
//! CTEs, one per table): keys first with `ON CONFLICT DO NOTHING`, then rows and jobs for the
//! keys that went in; the others (stored before, earlier in the batch, or by another process's
//! batch in flight) are answered from the stored key. If a row is refused (bad data), the
//! slow path redoes the batch with one savepoint per message, so only that message fails.
//! Neither path may leave a message without its job or the reverse.

use std::collections::{HashMap, HashSet};

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

/// The whole batch in one transaction: the fast path, one statement (data-modifying CTEs over
/// `unnest` arrays, so the SQL text is the same for every batch size and stays prepared).
///
/// The keys go in first with `ON CONFLICT DO NOTHING RETURNING`, and only messages whose key
/// went in get a row and a job. A key stored before — or by another process's batch in flight
/// (the insert waits for that transaction, then skips) — is looked up afterwards, to answer
/// with the stored message (same request) or refuse (another request).
pub(super) async fn accept_fast(
    store: &PgStore,
    batch: &[NewMessage],
) -> Result<Vec<AcceptOutcome>, StoreError> {
    let mut tx = store.begin().await?;
    let epochs = batch
        .iter()
        .map(|m| {
            m.epoch
                .map(|e| i64::try_from(e).map_err(|_| corrupt("epoch", e)))
                .transpose()
        })
        .collect::<Result<Vec<Option<i64>>, StoreError>>()?;
    let col = |f: fn(&NewMessage) -> &str| batch.iter().map(f).collect::<Vec<&str>>();
    let inserted: Vec<(String,)> = sqlx::query_as(
        "WITH b AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], \
           $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], \
           $11::bytea[], $12::text[], $13::bigint[], $14::bigint[]) AS t(message_id, \
           tenant_id, idem_key, request_hash, recipient, class, channel, kind, group_id, \
           epoch, payload, correlation_id, accepted_at, expires_at)), \
         k AS (INSERT INTO send_idempotency (tenant_id, idem_key, request_hash, \
           message_id, created_at) \
           SELECT tenant_id, idem_key, request_hash, message_id, accepted_at FROM b \
           ON CONFLICT (tenant_id, idem_key) DO NOTHING RETURNING message_id), \
         m AS (INSERT INTO send_messages (message_id, tenant_id, recipient, class, \
           channel, kind, group_id, epoch, payload, status, correlation_id, accepted_at, \
           expires_at, updated_at) \
           SELECT message_id, tenant_id, recipient, class, channel, kind, group_id, epoch, \
           payload, 'queued', correlation_id, accepted_at, expires_at, accepted_at \
           FROM b JOIN k USING (message_id)), \
         j AS (INSERT INTO delivery_jobs (kind, tenant_id, message_id, not_before, \
           created_at) \
           SELECT 'send', tenant_id, message_id, accepted_at, accepted_at \
           FROM b JOIN k USING (message_id)) \
         SELECT message_id FROM k",
    )
    .bind(col(|m| &m.message_id))
    .bind(col(|m| &m.tenant_id))
    .bind(col(|m| &m.idempotency_key))
    .bind(
        batch
            .iter()
            .map(|m| m.request_hash.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(col(|m| &m.recipient))
    .bind(col(|m| m.class.as_str()))
    .bind(col(|m| m.channel.as_str()))
    .bind(col(|m| m.kind.as_str()))
    .bind(
        batch
            .iter()
            .map(|m| m.group_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(&epochs)
    .bind(
        batch
            .iter()
            .map(|m| m.payload.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|m| m.correlation_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(batch.iter().map(|m| m.accepted_at).collect::<Vec<_>>())
    .bind(batch.iter().map(|m| m.expires_at).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let inserted: HashSet<String> = inserted.into_iter().map(|(id,)| id).collect();
    let taken: Vec<&NewMessage> = batch
        .iter()
        .filter(|m| !inserted.contains(&m.message_id))
        .collect();
    let mut known: HashMap<(String, String), (Vec<u8>, String)> = HashMap::new();
    if !taken.is_empty() {
        let tenants: Vec<&str> = taken.iter().map(|m| m.tenant_id.as_str()).collect();
        let keys: Vec<&str> = taken.iter().map(|m| m.idempotency_key.as_str()).collect();
        let rows: Vec<(String, String, Vec<u8>, String)> = sqlx::query_as(
            "SELECT i.tenant_id, i.idem_key, i.request_hash, i.message_id \
             FROM send_idempotency i \
             JOIN unnest($1::text[], $2::text[]) AS b(tenant_id, idem_key) \
             ON i.tenant_id = b.tenant_id AND i.idem_key = b.idem_key",
        )
        .bind(&tenants)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        known = rows
            .into_iter()
            .map(|(tenant, key, hash, id)| ((tenant, key), (hash, id)))
            .collect();
    }
    tx.commit().await?;
    batch
        .iter()
        .map(|m| {
            if inserted.contains(&m.message_id) {
                return Ok(AcceptOutcome::Accepted {
                    message_id: m.message_id.clone(),
                });
            }
            match known.get(&(m.tenant_id.clone(), m.idempotency_key.clone())) {
                Some((hash, id)) if *hash == m.request_hash => Ok(AcceptOutcome::Replayed {
                    message_id: id.clone(),
                }),
                Some(_) => Ok(AcceptOutcome::KeyReused),
                None => Err(StoreError::Corrupt(
                    "an idempotency key was neither inserted nor found".into(),
                )),
            }
        })
        .collect()
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
