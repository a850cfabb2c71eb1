//! The accept transaction of the SQLite backend: a batch of messages in one transaction, each
//! one row of `send_messages` plus one small row of the key log `send_keys`. The message row
//! holds everything an accept stores: the message, its idempotency key (`idem_key`,
//! `request_hash`), its send job (`job_due`, `job_since`; see `sqlite_queue.rs`) and, in
//! `accepted_at`, its `queued` history entry. Keys are looked up in memory
//! ([`super::sqlite_keys`]), not in a unique index: the disk sees appends only.
//!
//! The fast path decides every message of the batch from the key map (candidates confirmed by
//! reading their messages through the log), then writes the new ones with one multi-row INSERT per chunk;
//! if any row is refused (a message id taken, a constraint), the slow path redoes the batch
//! with one savepoint per message so only the bad one fails. A message is never stored without
//! its key and job (one row), nor logged without its message (one savepoint).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sqlx::{Acquire, QueryBuilder, Sqlite, SqliteConnection};

use super::sqlite::corrupt;
use super::sqlite_keys::{KeyIndex, Logged, key_hash};
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

/// Rows per multi-row INSERT: 14 values × 500 stays far below SQLite's variable limit.
const CHUNK: usize = 500;

/// A message of the batch with its MLS epoch as stored and its key's hash.
struct Item<'a> {
    m: &'a NewMessage,
    epoch: Option<i64>,
    hash: i64,
}

impl<'a> Item<'a> {
    fn new(m: &'a NewMessage) -> Result<Self, StoreError> {
        let epoch = m
            .epoch
            .map(|e| i64::try_from(e).map_err(|_| corrupt("epoch", e)))
            .transpose()?;
        Ok(Self {
            m,
            epoch,
            hash: key_hash(&m.tenant_id, &m.idempotency_key),
        })
    }

    fn key(&self) -> (&'a str, &'a str) {
        (&self.m.tenant_id, &self.m.idempotency_key)
    }
}

/// The answer for `m` from the request hash and message id stored under its key.
fn answer(stored_hash: &[u8], stored_id: &str, m: &NewMessage) -> AcceptOutcome {
    if stored_hash == m.request_hash {
        AcceptOutcome::Replayed {
            message_id: stored_id.to_owned(),
        }
    } else {
        AcceptOutcome::KeyReused
    }
}

/// A stored key: (tenant, key, request hash, message id).
type StoredKey = (String, String, Vec<u8>, String);

/// The stored keys among the candidates the map names for `items`: the message of every log
/// row under one of their hashes, if it still holds a key. Rows of other keys (a hash
/// collision) come back too; callers match on (tenant, key).
async fn stored_keys(
    conn: &mut SqliteConnection,
    keys: &KeyIndex,
    items: &[Item<'_>],
) -> Result<Vec<StoredKey>, StoreError> {
    let mut seqs: Vec<i64> = items.iter().flat_map(|i| keys.candidates(i.hash)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut found = Vec::new();
    for chunk in seqs.chunks(CHUNK) {
        let mut q = stored_keys_query("", chunk);
        found.extend(
            q.build_query_as::<StoredKey>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(found)
}

/// The messages of the log rows `seqs` that hold a key (after `prefix`, which tests set to
/// `EXPLAIN QUERY PLAN`).
fn stored_keys_query<'a>(prefix: &str, seqs: &'a [i64]) -> QueryBuilder<'a, Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "{prefix}SELECT m.tenant_id, m.idem_key, m.request_hash, m.message_id \
         FROM send_keys k JOIN send_messages m ON m.message_id = k.message_id \
         WHERE m.idem_key IS NOT NULL AND k.seq IN ("
    ));
    let mut sep = q.separated(", ");
    for seq in seqs {
        sep.push_bind(*seq);
    }
    q.push(")");
    q
}

/// Store `items` as new messages, in order, with their key log rows; returns the log rows for
/// the map (to add once the transaction commits). The log's `AUTOINCREMENT` numbers the rows
/// of one multi-row INSERT one after another (the caller holds the write lock), so the last
/// row's seq, which the INSERT reports, gives them all: no round trip to read the counter
/// first.
async fn insert(
    conn: &mut SqliteConnection,
    items: &[&Item<'_>],
) -> Result<Vec<Logged>, StoreError> {
    let mut logged = Vec::with_capacity(items.len());
    // Both INSERTs of a chunk go to SQLite's thread as one query: each statement is a round
    // trip to that thread, and under load a round trip costs as much as dozens of rows.
    for chunk in items.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(INSERT);
        q.push_values(chunk.iter(), |b, item| push_row(b, item));
        q.push("); INSERT INTO send_keys (key_hash, message_id, at) ");
        q.push_values(chunk.iter(), |mut b, item| {
            b.push_bind(item.hash)
                .push_bind(&item.m.message_id)
                .push_bind(item.m.accepted_at);
        });
        // The key log's INSERT runs last, so the result's rowid is its last row's seq.
        let last = q.build().execute(&mut *conn).await?.last_insert_rowid();
        let first = i64::try_from(chunk.len())
            .ok()
            .and_then(|n| last.checked_sub(n - 1))
            .ok_or_else(|| corrupt("key log seq", last))?;
        logged.extend((first..).zip(chunk.iter().map(|item| item.hash)));
    }
    Ok(logged)
}

fn push_row<'q>(
    mut b: sqlx::query_builder::Separated<'_, 'q, Sqlite, &'static str>,
    item: &Item<'q>,
) {
    let m = item.m;
    b.push_bind(&m.message_id)
        .push_bind(&m.tenant_id)
        .push_bind(&m.idempotency_key)
        .push_bind(&m.request_hash)
        .push_bind(&m.recipient)
        .push_bind(m.class.as_str())
        .push_bind(m.channel.as_str())
        .push_bind(m.kind.as_str())
        .push_bind(m.group_id.as_deref())
        .push_bind(item.epoch)
        .push_bind(&m.payload)
        .push_bind(m.correlation_id.as_deref())
        .push_bind(m.accepted_at)
        .push_bind(m.expires_at);
}

impl SqliteStore {
    /// Publish how many keys the map holds, for `/metrics`.
    fn count_keys(&self, keys: &KeyIndex) {
        self.keys_held
            .store(keys.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The whole batch in one transaction: the fast path.
///
/// After catching up with the key log under the write lock, every message is decided first:
/// a key stored before (or earlier in this batch) answers it (same request) or refuses it
/// (another request); the rest are new and are written with one multi-row INSERT per chunk.
/// The map learns the new keys only after the commit.
pub(super) async fn accept_fast(
    store: &SqliteStore,
    batch: &[NewMessage],
) -> Result<Vec<AcceptOutcome>, StoreError> {
    let items = batch.iter().map(Item::new).collect::<Result<Vec<_>, _>>()?;
    let mut tx = store.writer.begin().await?;
    let mut keys = store.keys.lock().await;
    keys.catch_up(&mut tx).await?;
    let stored = stored_keys(&mut tx, &keys, &items).await?;
    let mut known: HashMap<(&str, &str), (&[u8], &str)> = stored
        .iter()
        .map(|(t, k, h, id)| ((t.as_str(), k.as_str()), (h.as_slice(), id.as_str())))
        .collect();
    let mut fresh = Vec::with_capacity(items.len());
    let mut outcomes = Vec::with_capacity(items.len());
    for item in &items {
        let m = item.m;
        match known.entry(item.key()) {
            Entry::Occupied(e) => outcomes.push(answer(e.get().0, e.get().1, m)),
            Entry::Vacant(e) => {
                e.insert((&m.request_hash, &m.message_id));
                fresh.push(item);
                outcomes.push(AcceptOutcome::Accepted {
                    message_id: m.message_id.clone(),
                });
            }
        }
    }
    let logged = insert(&mut tx, &fresh).await?;
    tx.commit().await?;
    keys.extend(logged);
    store.count_keys(&keys);
    Ok(outcomes)
}

/// The slow path: one savepoint per new message, so only a refused one fails.
pub(super) async fn accept_each(
    store: &SqliteStore,
    batch: &[NewMessage],
) -> Result<Vec<Result<AcceptOutcome, StoreError>>, StoreError> {
    let mut tx = store.writer.begin().await?;
    let mut keys = store.keys.lock().await;
    keys.catch_up(&mut tx).await?;
    let mut known: HashMap<(&str, &str), (Vec<u8>, String)> = HashMap::new();
    let mut logged = Vec::new();
    let mut out = Vec::with_capacity(batch.len());
    for m in batch {
        let item = match Item::new(m) {
            Ok(item) => item,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        if let Some((h, id)) = known.get(&item.key()) {
            out.push(Ok(answer(h, id, m)));
            continue;
        }
        let stored = stored_keys(&mut tx, &keys, std::slice::from_ref(&item)).await?;
        if let Some((_, _, h, id)) = stored
            .into_iter()
            .find(|(t, k, _, _)| (t.as_str(), k.as_str()) == item.key())
        {
            out.push(Ok(answer(&h, &id, m)));
            known.insert(item.key(), (h, id));
            continue;
        }
        let mut one = (&mut tx).begin().await?;
        match insert(&mut one, &[&item]).await {
            Ok(rows) => {
                one.commit().await?;
                logged.extend(rows);
                known.insert(item.key(), (m.request_hash.clone(), m.message_id.clone()));
                out.push(Ok(AcceptOutcome::Accepted {
                    message_id: m.message_id.clone(),
                }));
            }
            Err(e) => {
                one.rollback().await?;
                out.push(Err(e));
            }
        }
    }
    tx.commit().await?;
    keys.extend(logged);
    store.count_keys(&keys);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate's log row and message are searched by key: a scan here would read every
    /// stored message on every replayed key.
    #[tokio::test]
    async fn the_candidate_lookup_searches_by_key() {
        let (_dir, s) = SqliteStore::open_temp().await;
        let plan: Vec<(i64, i64, i64, String)> = stored_keys_query("EXPLAIN QUERY PLAN ", &[1, 2])
            .build_query_as()
            .fetch_all(&s.pool)
            .await
            .unwrap();
        let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            steps.iter().all(|d| !d.starts_with("SCAN"))
                && steps.iter().any(|d| d.contains("INTEGER PRIMARY KEY"))
                && steps
                    .iter()
                    .any(|d| d.contains("sqlite_autoindex_send_messages")),
            "{steps:?}"
        );
    }
}
