//! The accept transaction of the SQLite backend: a batch of messages in one transaction, each
//! one row of `send_messages`. The row holds everything an accept stores: the message, its
//! idempotency key (`idem_key`, `request_hash`; unique per tenant by a partial index), its
//! send job (`job_due`, `job_since`; see `sqlite_queue.rs`) and, in `accepted_at`, its
//! `queued` history entry. One row and three index entries per message is what brings the
//! accept close to the raw insert ceiling (SYSTEM.md §7).
//!
//! The fast path writes each chunk of the batch with one multi-row INSERT that skips rows
//! whose key is taken, and decides replays from the keys it then reads back; if any row is
//! refused otherwise, the slow path redoes the batch with one savepoint per message so only
//! the bad one fails. A message is never stored without its key and job, since they are one
//! row.

use std::collections::{HashMap, HashSet};

use sqlx::{Acquire, QueryBuilder, Sqlite, SqliteConnection};

use super::sqlite::corrupt;
use super::store::{AcceptOutcome, NewMessage};
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

/// The columns of an accepted message's row. Rows arrive as a `VALUES` list of 14 bound
/// values each; the status is a literal and `accepted_at` fills the update time and the job's
/// due time and window start too, so a row binds 14 values instead of 18.
const INSERT: &str = "INSERT INTO send_messages (message_id, tenant_id, idem_key, request_hash, \
     recipient, class, channel, kind, group_id, epoch, payload, status, correlation_id, \
     accepted_at, expires_at, updated_at, job_due, job_since) \
     SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9, \
     column10, column11, 'queued', column12, column13, column14, column13, column13, column13 \
     FROM (";
/// Closes the `VALUES` list (`WHERE true` lets SQLite parse the upsert after a `SELECT`). A
/// taken key skips the row; any other conflict (a message id) is an error.
const SKIP_TAKEN_KEY: &str = ") WHERE true ON CONFLICT (tenant_id, idem_key) \
     WHERE idem_key IS NOT NULL DO NOTHING";

fn epoch(m: &NewMessage) -> Result<Option<i64>, StoreError> {
    m.epoch
        .map(|e| i64::try_from(e).map_err(|_| corrupt("epoch", e)))
        .transpose()
}

async fn accept_one(
    conn: &mut SqliteConnection,
    m: &NewMessage,
) -> Result<AcceptOutcome, StoreError> {
    let epoch = epoch(m)?;
    let mut q = QueryBuilder::<Sqlite>::new(INSERT);
    q.push_values(std::iter::once(m), |b, m| push_row(b, m, epoch));
    q.push(SKIP_TAKEN_KEY);
    if q.build().execute(&mut *conn).await?.rows_affected() > 0 {
        return Ok(AcceptOutcome::Accepted {
            message_id: m.message_id.clone(),
        });
    }
    let (hash, message_id): (Vec<u8>, String) = sqlx::query_as(
        "SELECT request_hash, message_id FROM send_messages \
         WHERE tenant_id = ? AND idem_key = ?",
    )
    .bind(&m.tenant_id)
    .bind(&m.idempotency_key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(if hash == m.request_hash {
        AcceptOutcome::Replayed { message_id }
    } else {
        AcceptOutcome::KeyReused
    })
}

fn push_row<'q>(
    mut b: sqlx::query_builder::Separated<'_, 'q, Sqlite, &'static str>,
    m: &'q NewMessage,
    epoch: Option<i64>,
) {
    b.push_bind(&m.message_id)
        .push_bind(&m.tenant_id)
        .push_bind(&m.idempotency_key)
        .push_bind(&m.request_hash)
        .push_bind(&m.recipient)
        .push_bind(m.class.as_str())
        .push_bind(m.channel.as_str())
        .push_bind(m.kind.as_str())
        .push_bind(m.group_id.as_deref())
        .push_bind(epoch)
        .push_bind(&m.payload)
        .push_bind(m.correlation_id.as_deref())
        .push_bind(m.accepted_at)
        .push_bind(m.expires_at);
}

/// Rows per multi-row INSERT: 14 values × 500 stays far below SQLite's variable limit.
const CHUNK: usize = 500;

/// The whole batch in one transaction with one multi-row INSERT per chunk: the fast path.
///
/// Rows whose key is taken are skipped (`ON CONFLICT DO NOTHING`). If every row of a chunk
/// went in (the common case), no key is looked up. Otherwise the chunk's keys are read back:
/// a key whose message id is this message's went in; any other was stored before (or earlier
/// in this batch), and the message is answered from it (same request) or refused (another
/// request). Counting rows instead of `RETURNING` them matters: sqlx hands each returned row
/// from SQLite's thread to the async side on its own, a thread wake-up per message.
pub(super) async fn accept_fast(
    store: &SqliteStore,
    batch: &[NewMessage],
) -> Result<Vec<AcceptOutcome>, StoreError> {
    let epochs = batch.iter().map(epoch).collect::<Result<Vec<_>, _>>()?;
    let mut tx = store.begin_write().await?;
    let mut inserted: HashSet<&str> = HashSet::with_capacity(batch.len());
    let mut known: HashMap<(&str, &str), (Vec<u8>, String)> = HashMap::new();
    for (chunk, epochs) in batch.chunks(CHUNK).zip(epochs.chunks(CHUNK)) {
        let mut q = QueryBuilder::<Sqlite>::new(INSERT);
        q.push_values(chunk.iter().zip(epochs), |b, (m, epoch)| {
            push_row(b, m, *epoch);
        });
        q.push(SKIP_TAKEN_KEY);
        let went_in = q.build().execute(&mut *tx).await?.rows_affected();
        if usize::try_from(went_in).ok() == Some(chunk.len()) {
            inserted.extend(chunk.iter().map(|m| m.message_id.as_str()));
            continue;
        }
        let mut q = taken_keys_query("", chunk);
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
    for m in batch {
        if inserted.contains(m.message_id.as_str()) {
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
    tx.commit().await?;
    Ok(outcomes)
}

/// The stored keys of `chunk`'s messages (after `prefix`, which tests set to `EXPLAIN QUERY
/// PLAN`). Two plain `IN` lists, so SQLite searches the key index (a row-value `IN` makes it
/// scan the table). Pairs of another tenant's key that this matches are dropped by the caller,
/// which matches rows to the chunk's messages.
fn taken_keys_query<'a>(prefix: &str, chunk: &'a [NewMessage]) -> QueryBuilder<'a, Sqlite> {
    let mut tenants: Vec<&str> = chunk.iter().map(|m| m.tenant_id.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "{prefix}SELECT tenant_id, idem_key, request_hash, message_id FROM send_messages \
         WHERE tenant_id IN ("
    ));
    let mut sep = q.separated(", ");
    for tenant in tenants {
        sep.push_bind(tenant);
    }
    q.push(") AND idem_key IN (");
    let mut sep = q.separated(", ");
    for m in chunk {
        sep.push_bind(&m.idempotency_key);
    }
    q.push(")");
    q
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

#[cfg(test)]
mod tests {
    use super::super::conformance as c;
    use super::*;

    /// The key lookup of a chunk with a taken key searches the key index: with a row-value
    /// `IN`, SQLite scanned every stored message instead, on every replayed key.
    #[tokio::test]
    async fn the_taken_key_lookup_searches_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("a.db")).await.unwrap();
        let mut other = c::message("k2", 1, 0);
        other.tenant_id = "t2".into();
        let chunk = [c::message("k1", 1, 0), other];
        let plan: Vec<(i64, i64, i64, String)> = taken_keys_query("EXPLAIN QUERY PLAN ", &chunk)
            .build_query_as()
            .fetch_all(&s.pool)
            .await
            .unwrap();
        let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            steps.iter().all(|d| !d.starts_with("SCAN send_messages"))
                && steps.iter().any(|d| d.contains("send_messages_key")),
            "{steps:?}"
        );
    }
}
