//! The idempotency keys of the SQLite backend: a hash map in memory over a log on disk that
//! only ever grows at its end.
//!
//! Why not a unique index: idempotency keys are random (UUIDs, in practice), and a b-tree of
//! random keys takes each new key into a leaf page of its own, so every accepted message wrote
//! a whole 4 KiB page to the WAL for its key alone. Measured with UUID-shaped keys, that index
//! held the store's accept transaction to a third of the raw insert ceiling
//! (docs/performance.md). Here each accept appends one small row per new key to `send_keys`
//! (`seq` in insert order, so the log's pages fill one after another), and the lookup is a map
//! in memory from a 64-bit hash of (tenant, key) to the log row's `seq`. Log rows name their
//! message by id, never by rowid: `VACUUM` may renumber the message table's implicit rowids.
//!
//! The map is a cache of the log, never the other way round. A store fills it from the log
//! when it opens and, at the start of every accept transaction, after it has taken the write
//! lock, reads the log rows appended since (by another store or process on the same file), so
//! a key is never judged new on a stale view. It adds its own rows only after their commit.
//! It drops the rows that [`super::store::DeliveryStore::purge_idempotency`] removed from the
//! log, checking the log's first row now and then. Memory: about 40 bytes per key kept (a hash
//! table of two integers), for the retention window (`delivery.idempotency_retention_secs`;
//! docs/operations.md).
//!
//! What this module must never do: answer from the map alone (a 64-bit hash names candidates;
//! the message row, read through its log row, decides), or decide that a key is new without
//! holding the write lock it caught up under.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use futures::TryStreamExt;
use sqlx::SqliteConnection;

use crate::store::StoreError;

/// How often the map checks the log's first row for purged keys.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// The 64-bit key of (tenant, idempotency key) in the map and in `send_keys.key_hash`: the
/// first 8 bytes of SHA-256 over both, length-prefixed. Stable across releases and processes,
/// since it is stored.
pub(crate) fn key_hash(tenant_id: &str, key: &str) -> i64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [tenant_id, key] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let d = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    i64::from_le_bytes(first)
}

/// The keys of the retention window, as candidates: hash → log seqs.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    /// The first log seq under each hash.
    one: HashMap<i64, i64>,
    /// Any further seqs under a hash (two keys whose hashes collide).
    more: HashMap<i64, Vec<i64>>,
    /// The last log row in the map.
    last_seq: i64,
    /// The log's first row when last looked at.
    first_seq: i64,
    trimmed: Option<Instant>,
}

/// A log row this transaction wrote: (seq, hash).
pub(crate) type Logged = (i64, i64);

impl KeyIndex {
    /// The map of the log as stored: first the hashes of keys a migration moved into the log
    /// without one are filled in, then every row is read.
    pub(crate) async fn load(conn: &mut SqliteConnection) -> Result<Self, StoreError> {
        fill_hashes(conn).await?;
        // The log's ends, each one b-tree step (a count would read the whole log once more).
        let (first, last): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT min(seq) FROM send_keys), (SELECT max(seq) FROM send_keys)",
        )
        .fetch_one(&mut *conn)
        .await?;
        let mut index = Self::default();
        if let (Some(first), Some(last)) = (first, last) {
            // Sized once: growing by doubling would leave the freed smaller tables to the
            // allocator (measured for a million keys: +63 MB resident without, +39 MB with).
            index
                .one
                .reserve(usize::try_from(last - first + 1).unwrap_or(0));
            // Everything read below is at or after the log's front: no trim pass needed.
            index.first_seq = first;
            index.trimmed = Some(Instant::now());
        }
        index.catch_up(conn).await?;
        Ok(index)
    }

    /// Read the log rows appended since the last call (or all, the first time), and now and
    /// then drop the rows purged from the log's front. Call it holding the write lock.
    pub(crate) async fn catch_up(&mut self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        {
            let mut rows = sqlx::query_as::<_, (i64, i64)>(
                "SELECT seq, key_hash FROM send_keys WHERE seq > ? ORDER BY seq",
            )
            .bind(self.last_seq)
            .fetch(&mut *conn);
            while let Some(row) = rows.try_next().await? {
                self.push(row);
            }
        }
        if self.trimmed.is_none_or(|t| t.elapsed() >= TRIM_EVERY) {
            let first: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM send_keys")
                .fetch_one(&mut *conn)
                .await?;
            // An empty log: every key read so far was purged.
            let first = first.unwrap_or(self.last_seq + 1);
            if first > self.first_seq {
                self.first_seq = first;
                self.trim(first);
            }
            self.trimmed = Some(Instant::now());
        }
        Ok(())
    }

    /// The log seqs whose messages may hold the key with this hash.
    pub(crate) fn candidates(&self, hash: i64) -> impl Iterator<Item = i64> + '_ {
        self.one
            .get(&hash)
            .into_iter()
            .chain(self.more.get(&hash).into_iter().flatten())
            .copied()
    }

    /// Add the rows a transaction logged, once it committed.
    pub(crate) fn extend(&mut self, logged: impl IntoIterator<Item = Logged>) {
        for row in logged {
            self.push(row);
        }
    }

    /// Look at the log's first row at the next catch-up (after a purge).
    pub(crate) fn trim_soon(&mut self) {
        self.trimmed = None;
    }

    /// How many keys the map holds.
    pub(crate) fn len(&self) -> usize {
        self.one.len() + self.more.values().map(Vec::len).sum::<usize>()
    }

    fn push(&mut self, (seq, hash): Logged) {
        if seq <= self.last_seq {
            return;
        }
        self.last_seq = seq;
        match self.one.entry(hash) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(seq);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.more.entry(hash).or_default().push(seq);
            }
        }
    }

    /// Drop the log rows before `first` (purged). A pass over the map, run only when the
    /// log's front moved (a purge: hourly).
    fn trim(&mut self, first: i64) {
        self.more.retain(|_, seqs| {
            seqs.retain(|s| *s >= first);
            !seqs.is_empty()
        });
        let more = &mut self.more;
        self.one.retain(|hash, seq| {
            if *seq >= first {
                return true;
            }
            // Promote a later seq under the same hash, if any.
            match more.get_mut(hash) {
                Some(rest) => {
                    *seq = rest.remove(0);
                    if rest.is_empty() {
                        more.remove(hash);
                    }
                    true
                }
                None => false,
            }
        });
    }
}

/// Compute the hashes the log lacks: migration 0010 moved the keys stored before it into the
/// log with `key_hash` NULL, since SQL has no SHA-256. Runs once per upgraded file; later
/// opens find nothing to do through the partial index on those rows.
async fn fill_hashes(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let missing: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT k.seq, m.tenant_id, m.idem_key FROM send_keys k INDEXED BY send_keys_unhashed \
         LEFT JOIN send_messages m ON m.message_id = k.message_id WHERE k.key_hash IS NULL",
    )
    .fetch_all(&mut *conn)
    .await?;
    if missing.is_empty() {
        return Ok(());
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for (seq, tenant, key) in missing {
        match (tenant, key) {
            (Some(tenant), Some(key)) => {
                sqlx::query("UPDATE send_keys SET key_hash = ? WHERE seq = ?")
                    .bind(key_hash(&tenant, &key))
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
            // The message or its key is gone: the log row names nothing.
            _ => {
                sqlx::query("DELETE FROM send_keys WHERE seq = ?")
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(index: &KeyIndex, hash: i64) -> Vec<i64> {
        index.candidates(hash).collect()
    }

    /// Two keys under one hash both stay candidates, and trimming drops exactly the purged
    /// log rows, whichever of a colliding pair goes first.
    #[test]
    fn colliding_hashes_keep_every_candidate_and_trim_exactly() {
        let mut index = KeyIndex::default();
        index.extend([(1, 7), (2, 8), (3, 7), (4, 7)]);
        assert_eq!(keys(&index, 7), [1, 3, 4]);
        assert_eq!(keys(&index, 8), [2]);
        assert!(keys(&index, 9).is_empty());
        assert_eq!(index.len(), 4);
        index.trim(2);
        assert_eq!(keys(&index, 7), [3, 4], "the first of the pair went");
        index.trim(4);
        assert_eq!(keys(&index, 7), [4]);
        assert!(keys(&index, 8).is_empty());
        assert!(index.more.is_empty() && index.len() == 1);
        index.trim(i64::MAX);
        assert!(keys(&index, 7).is_empty() && index.one.is_empty());
    }

    /// Rows already in the map (its own, then read back from the log) are not added twice.
    #[test]
    fn a_row_seen_twice_counts_once() {
        let mut index = KeyIndex::default();
        index.extend([(1, 7), (2, 8)]);
        index.extend([(2, 8), (3, 9)]);
        assert_eq!(index.len(), 3);
        assert_eq!(keys(&index, 8), [2]);
    }

    /// The hash separates tenant from key (no concatenation ambiguity) and is stable: it is
    /// stored, so a release that changed it would lose every key.
    #[test]
    fn the_key_hash_is_stable_and_unambiguous() {
        assert_ne!(key_hash("t1", "2k"), key_hash("t12", "k"));
        assert_ne!(key_hash("t1", "k"), key_hash("t2", "k"));
        assert_eq!(key_hash("t1", "k1"), key_hash("t1", "k1"));
        assert_eq!(key_hash("t1", "k1"), KNOWN);
    }

    /// `key_hash("t1", "k1")`, computed apart (Python `hashlib`); see the test above.
    const KNOWN: i64 = -6_683_265_468_596_171_992;
}
