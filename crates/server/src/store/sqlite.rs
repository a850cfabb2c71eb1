//! The embedded SQLite backend: one file in the data folder, WAL mode, migrations applied on
//! open. Area traits are implemented next to their area (`directory/sqlite.rs`, `ds/sqlite.rs`)
//! on this one type.
//!
//! SQLite allows one writer at a time. Every write goes through one dedicated connection
//! (`writer`, a pool of one), so the gateway's own writers queue in process, in order and
//! without sleeping, instead of colliding on the database lock and backing off in SQLite's
//! busy handler (which sleeps in 1–100 ms steps). Reads use their own pool (`pool`) and, in
//! WAL mode, never wait for the writer. Writes that must be atomic run in `BEGIN IMMEDIATE`
//! transactions so a writer never has to upgrade a read lock. Blocking never happens on async
//! threads: sqlx runs SQLite on its own worker thread. Code here must never write through
//! `pool` (it would still be correct, but would contend for the lock again).
//!
//! Small hot writes (the delivery workers' status changes and acks, carrier receipts, and any
//! write given to [`SqliteStore::write_batched`]) go through one batching task
//! (`delivery::sqlite_batch`): it takes every write waiting at that moment, applies them in
//! one transaction with a few set-based statements, commits once and only then answers each
//! caller.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::delivery::sqlite_batch::{self, BatchOp, Finish, MAX_WRITE_BATCH, WriteOp};

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    /// Readers.
    pub(crate) pool: SqlitePool,
    /// The one writing connection.
    pub(crate) writer: SqlitePool,
    batches: mpsc::Sender<WriteOp>,
    /// Which of the queue's two tables a lease round serves first (see `sqlite_queue.rs`).
    pub(crate) sends_first: Arc<std::sync::atomic::AtomicBool>,
    /// The checkpoint task; stopped when the last clone is dropped.
    _checkpoints: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL frames (pages) above which a checkpoint waits for the writer to reset the WAL, so it
/// cannot grow without bound when passive checkpoints never catch up.
const WAL_RESTART_FRAMES: i64 = 16_384;
/// Frames a passive checkpoint left uncopied above which the next one starts at once.
const CHECKPOINT_CHASE_FRAMES: i64 = 1_024;

/// Whether the next passive checkpoint should start at once, from the (WAL frames, frames
/// copied) after the previous round and after this one: only if this round copied something
/// (a WAL that restarted from its beginning counts) and many frames are still uncopied.
fn chase_wal(last: (i64, i64), now: (i64, i64)) -> bool {
    let (log, copied) = now;
    let progressed = log < last.0 || copied > last.1;
    progressed && log - copied > CHECKPOINT_CHASE_FRAMES
}

/// How long a connection waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the restarting checkpoint waits for readers of old snapshots before it gives up
/// until the next round (it holds the writer's turn meanwhile).
const RESTART_BUSY_MS: u64 = 20;

/// Checkpoint the WAL from a connection of its own. With automatic checkpoints, the commit
/// that crosses the threshold copies the WAL into the database and fsyncs it while every
/// other write waits; here a passive checkpoint runs beside the writer on another thread and
/// never blocks it. Only the restart (past `WAL_RESTART_FRAMES`) takes the writer's turn.
async fn run_checkpoints(conn: SqlitePool, writer: SqlitePool) {
    let mut behind = false;
    // (WAL frames, frames copied) after the last round.
    let mut last = (0_i64, 0_i64);
    loop {
        // While a passive round copies frames and leaves many uncopied, the next starts at
        // once: during a burst the copy keeps pace with the writer instead of idling between
        // ticks until the WAL crosses the restart threshold (a restart stalls every writer).
        // A round that copied nothing (a reader holds an old snapshot) waits for the tick, so
        // this never spins.
        if !behind {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
        let passive: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&conn)
                .await;
        behind = match passive {
            Ok((_, log, copied)) => {
                let chase = chase_wal(last, (log, copied));
                last = (log, copied);
                chase
            }
            Err(_) => false,
        };
        match passive {
            Ok((_, log, _)) if log > WAL_RESTART_FRAMES => {
                if let Err(e) = restart_wal(&writer).await {
                    tracing::warn!(error = %e, "WAL restart checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// The restarting checkpoint, on the writing connection taken from its pool like any write.
/// From a connection of its own, it contended for SQLite's write lock with the writer, and
/// the loser slept in SQLite's busy handler in steps of 1, 2, 5, 10, 15 … ms: the writer's
/// next transaction stalled for 8–145 ms where the checkpoint itself took a few. Taken from
/// the pool, the lock is never contended; only readers of older snapshots are waited for, at
/// most `RESTART_BUSY_MS` (the result then says busy, and the next round tries again).
async fn restart_wal(writer: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut conn = writer.acquire().await?;
    sqlx::query(&format!("PRAGMA busy_timeout = {RESTART_BUSY_MS}"))
        .execute(&mut *conn)
        .await?;
    let restarted = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
        .execute(&mut *conn)
        .await;
    let restored = sqlx::query(&format!(
        "PRAGMA busy_timeout = {}",
        BUSY_TIMEOUT.as_millis()
    ))
    .execute(&mut *conn)
    .await;
    if let Err(e) = restored {
        // Never hand the writers a connection that gives up on a lock after 20 ms.
        let _ = conn.close().await;
        return Err(e);
    }
    restarted.map(drop)
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("pool", &self.pool)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating if needed) `path` and apply pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let url = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a committed transaction survives a process crash (kill -9);
            // only an OS crash or power loss can roll back the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A write may wait behind a long batch; never fail it for queueing.
            .acquire_timeout(Duration::from_secs(60))
            // Checkpoints run on their own connection (below), not inside a commit.
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let (batches, rx) = mpsc::channel(MAX_WRITE_BATCH * 4);
        tokio::spawn(sqlite_batch::run(writer.clone(), rx));
        let checkpoints = Arc::new(AbortOnDrop(tokio::spawn(run_checkpoints(
            checkpointer,
            writer.clone(),
        ))));
        Ok(Self {
            pool,
            writer,
            batches,
            sends_first: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            _checkpoints: checkpoints,
        })
    }

    /// Run `write` on the writing connection inside a transaction shared with the other writes
    /// waiting at the same moment, in its own savepoint: if it returns `Err`, its statements
    /// are rolled back and the others' are not. Resolves after the commit. `write` must not
    /// begin or end transactions itself.
    pub(crate) async fn write_batched<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: BatchOp = Box::new(move |conn| {
            Box::pin(async move {
                let result = write(conn).await;
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |commit| {
                    let _ = reply.send(match commit {
                        Ok(()) => result,
                        Err(e) => Err(StoreError::Batch(e)),
                    });
                });
                (ok, finish)
            })
        });
        self.submit(WriteOp::General(op), answer).await
    }

    /// Hand `op` to the batcher and wait for its answer (sent after the batch's commit).
    pub(crate) async fn submit<T>(
        &self,
        op: WriteOp,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        super::submit_write(&self.batches, op, answer).await
    }

    /// Start a write transaction on the writing connection; it holds the write lock from its
    /// first statement.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::SqliteStore;

    async fn open(_test: &str) -> Option<(tempfile::TempDir, Arc<SqliteStore>)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("conformance.db"))
            .await
            .expect("open");
        Some((dir, Arc::new(store)))
    }

    crate::store::conformance::backend_suite!(open);
}

#[cfg(test)]
mod tests {
    use super::SqliteStore;

    /// The checkpointer chases a growing WAL only while it makes progress: a reader holding
    /// an old snapshot stops the copy, and then it must wait for its tick, not spin.
    #[test]
    fn the_checkpointer_chases_only_while_it_copies() {
        use super::chase_wal;
        assert!(
            chase_wal((4_000, 1_000), (9_000, 4_000)),
            "copied, far behind"
        );
        assert!(!chase_wal((4_000, 1_000), (9_000, 1_000)), "copied nothing");
        assert!(
            !chase_wal((4_000, 1_000), (4_500, 4_000)),
            "nearly caught up"
        );
        assert!(chase_wal((9_000, 9_000), (3_000, 0)), "the WAL restarted");
    }

    /// Commits never checkpoint (the writer's automatic checkpoint is off), so only the
    /// background task moves committed pages from the WAL into the database file.
    #[tokio::test]
    async fn the_background_task_checkpoints_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path).await.expect("open");
        let (auto,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
            .fetch_one(&store.writer)
            .await
            .expect("pragma");
        assert_eq!(auto, 0, "commits must not checkpoint");
        sqlx::query("CREATE TABLE t (x BLOB)")
            .execute(&store.writer)
            .await
            .expect("create");
        // Let any checkpoint of the migrations pass, then measure.
        tokio::time::sleep(super::CHECKPOINT_EVERY * 3).await;
        let before = std::fs::metadata(&path).expect("db").len();
        for _ in 0..16 {
            sqlx::query("INSERT INTO t (x) VALUES (zeroblob(65536))")
                .execute(&store.writer)
                .await
                .expect("insert");
        }
        tokio::time::sleep(super::CHECKPOINT_EVERY * 4).await;
        let after = std::fs::metadata(&path).expect("db").len();
        assert!(
            after >= before + 16 * 65536,
            "database file {before} → {after} bytes: the WAL was not checkpointed"
        );
    }

    /// The restart runs on the writing connection: a reader of an old snapshot delays it by
    /// `RESTART_BUSY_MS`, not by the writers' 10 s busy timeout, which it then restores; with
    /// no such reader, the next write starts the WAL from its beginning.
    #[tokio::test]
    async fn the_restart_waits_briefly_and_resets_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("r.db"))
            .await
            .expect("open");
        let insert = |n: usize| {
            let writer = store.writer.clone();
            async move {
                for _ in 0..n {
                    sqlx::query("INSERT INTO t (x) VALUES (zeroblob(16384))")
                        .execute(&writer)
                        .await
                        .expect("insert");
                }
            }
        };
        sqlx::query("CREATE TABLE t (x BLOB)")
            .execute(&store.writer)
            .await
            .expect("create");
        insert(8).await;
        let mut reader = store.pool.acquire().await.expect("reader");
        sqlx::query("BEGIN")
            .execute(&mut *reader)
            .await
            .expect("begin");
        let _: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
            .fetch_one(&mut *reader)
            .await
            .expect("read");
        insert(8).await;
        let started = std::time::Instant::now();
        super::restart_wal(&store.writer).await.expect("restart");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "the restart waited {:?} for the reader",
            started.elapsed()
        );
        let (timeout,): (i64,) = sqlx::query_as("PRAGMA busy_timeout")
            .fetch_one(&store.writer)
            .await
            .expect("pragma");
        assert_eq!(timeout, 10_000, "the writers' busy timeout is restored");
        sqlx::query("COMMIT")
            .execute(&mut *reader)
            .await
            .expect("end");
        drop(reader);
        super::restart_wal(&store.writer).await.expect("restart");
        insert(1).await;
        let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&store.writer)
            .await
            .expect("checkpoint");
        assert!(log < 16, "{log} WAL frames after a restart and one insert");
    }
}
