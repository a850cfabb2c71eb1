//! The accept transaction of the SQLite backend: a batch of messages, each with its
//! idempotency key and send job, in one transaction. (The `queued` history entry is the
//! message row's `accepted_at`; it is not stored.)
//!
//! The fast path writes the whole batch with one multi-row INSERT per table after deciding
//! idempotency in memory, in batch order; if any row is refused, the slow path redoes the
//! batch with one savepoint per message so only the bad one fails. Neither path may leave a
//! message without its job or the reverse.

use std::collections::{HashMap, HashSet};

use sqlx::{Acquire, QueryBuilder, Sqlite, SqliteConnection};

use super::sqlite::corrupt;
use super::store::{AcceptOutcome, NewMessage};
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

async fn accept_one(
    conn: &mut SqliteConnection,
    m: &NewMessage,
) -> Result<AcceptOutcome, StoreError> {
    let fresh = sqlx::query(
        "INSERT INTO send_idempotency (tenant_id, idem_key, request_hash, message_id, created_at) \
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, idem_key) DO NOTHING",
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
             WHERE tenant_id = ? AND idem_key = ?",
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
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
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
         VALUES ('send', ?, ?, ?, ?)",
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

/// Rows per multi-row INSERT: 14 columns × 500 stays far below SQLite's variable limit.
const CHUNK: usize = 500;

/// The whole batch in one transaction with one multi-row INSERT per table: the fast path.
///
/// The keys go in first with `ON CONFLICT DO NOTHING`. If every key of a chunk went in (the
/// common case), no key is looked up. Otherwise the chunk's keys are read back: a key whose
/// stored message id is this message's went in; any other was stored before (or earlier in
/// this batch), and the message is answered from it (same request) or refused (another
/// request). Counting rows instead of `RETURNING` them matters: sqlx hands each returned row
/// from SQLite's thread to the async side on its own, a thread wake-up per message.
pub(super) async fn accept_fast(
    store: &SqliteStore,
    batch: &[NewMessage],
) -> Result<Vec<AcceptOutcome>, StoreError> {
    let mut tx = store.begin_write().await?;
    let mut inserted: HashSet<&str> = HashSet::with_capacity(batch.len());
    let mut known: HashMap<(&str, &str), (Vec<u8>, String)> = HashMap::new();
    for chunk in batch.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO send_idempotency (tenant_id, idem_key, request_hash, message_id, \
             created_at) ",
        );
        q.push_values(chunk, |mut b, m| {
            b.push_bind(&m.tenant_id)
                .push_bind(&m.idempotency_key)
                .push_bind(&m.request_hash)
                .push_bind(&m.message_id)
                .push_bind(m.accepted_at);
        });
        q.push(" ON CONFLICT (tenant_id, idem_key) DO NOTHING");
        let went_in = q.build().execute(&mut *tx).await?.rows_affected();
        if usize::try_from(went_in).ok() == Some(chunk.len()) {
            inserted.extend(chunk.iter().map(|m| m.message_id.as_str()));
            continue;
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT tenant_id, idem_key, request_hash, message_id FROM send_idempotency \
             WHERE (tenant_id, idem_key) IN (",
        );
        let mut sep = q.separated(", ");
        for m in chunk {
            sep.push("(")
                .push_bind_unseparated(&m.tenant_id)
                .push_unseparated(", ")
                .push_bind_unseparated(&m.idempotency_key)
                .push_unseparated(")");
        }
        q.push(")");
        let rows: Vec<(String, String, Vec<u8>, String)> =
            q.build_query_as().fetch_all(&mut *tx).await?;
        for (tenant, key, hash, id) in rows {
            // Borrow the batch's own strings as map keys.
            if let Some(m) = chunk
                .iter()
                .find(|m| m.tenant_id == tenant && m.idempotency_key == key)
            {
                known.insert((&m.tenant_id, &m.idempotency_key), (hash, id));
            }
        }
        for m in chunk {
            if known
                .get(&(m.tenant_id.as_str(), m.idempotency_key.as_str()))
                .is_some_and(|(_, id)| *id == m.message_id)
            {
                inserted.insert(&m.message_id);
            }
        }
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut fresh: Vec<&NewMessage> = Vec::with_capacity(inserted.len());
    for m in batch {
        if inserted.contains(m.message_id.as_str()) {
            fresh.push(m);
            outcomes.push(AcceptOutcome::Accepted {
                message_id: m.message_id.clone(),
            });
            continue;
        }
        match known.get(&(m.tenant_id.as_str(), m.idempotency_key.as_str())) {
            Some((hash, id)) if *hash == m.request_hash => outcomes.push(AcceptOutcome::Replayed {
                message_id: id.clone(),
            }),
            Some(_) => outcomes.push(AcceptOutcome::KeyReused),
            None => {
                return Err(StoreError::Corrupt(
                    "an idempotency key was neither inserted nor found".into(),
                ));
            }
        }
    }
    for chunk in fresh.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO send_messages (message_id, tenant_id, recipient, class, channel, kind, \
             group_id, epoch, payload, status, correlation_id, accepted_at, expires_at, \
             updated_at) ",
        );
        let mut bad_epoch = None;
        q.push_values(chunk, |mut b, m| {
            let epoch = m.epoch.map(|e| {
                i64::try_from(e).unwrap_or_else(|_| {
                    bad_epoch = Some(e);
                    0
                })
            });
            b.push_bind(&m.message_id)
                .push_bind(&m.tenant_id)
                .push_bind(&m.recipient)
                .push_bind(m.class.as_str())
                .push_bind(m.channel.as_str())
                .push_bind(m.kind.as_str())
                .push_bind(m.group_id.as_deref())
                .push_bind(epoch)
                .push_bind(&m.payload)
                .push_bind("queued")
                .push_bind(m.correlation_id.as_deref())
                .push_bind(m.accepted_at)
                .push_bind(m.expires_at)
                .push_bind(m.accepted_at);
        });
        if let Some(e) = bad_epoch {
            return Err(corrupt("epoch", e));
        }
        q.build().execute(&mut *tx).await?;
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO delivery_jobs (kind, tenant_id, message_id, not_before, created_at) ",
        );
        q.push_values(chunk, |mut b, m| {
            b.push_bind("send")
                .push_bind(&m.tenant_id)
                .push_bind(&m.message_id)
                .push_bind(m.accepted_at)
                .push_bind(m.accepted_at);
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// The slow path: one savepoint per message.
pub(super) async fn accept_each(
    store: &SqliteStore,
    batch: &[NewMessage],
) -> Result<Vec<Result<AcceptOutcome, StoreError>>, StoreError> {
    let mut tx = store.begin_write().await?;
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
