//! The embedded SQLite backend: one file in the data folder, WAL mode, migrations applied on
//! open. Area traits are implemented next to their area (`directory/sqlite.rs`, `ds/sqlite.rs`)
//! on this one type.
//!
//! SQLite allows one writer at a time. Every write goes through one dedicated connection
//! (`writer`, a [`Writer`]: the connection behind a fair lock), so the gateway's own writers
//! queue in process, in order and without sleeping, instead of colliding on the database lock
//! and backing off in SQLite's busy handler (which sleeps in 1–100 ms steps). Reads use their
//! own pool (`pool`) and, in WAL mode, never wait for the writer. Writes that must be atomic
//! run in `BEGIN IMMEDIATE` transactions so a writer never has to upgrade a read lock.
//! Blocking never happens on async threads: sqlx runs SQLite on its own worker thread. Code
//! here must never write through `pool` (it would still be correct, but would contend for the
//! lock again).
//!
//! Small hot writes (the delivery workers' status changes and acks, carrier receipts, and any
//! write given to [`SqliteStore::write_batched`]) go through one batching task
//! (`delivery::sqlite_batch`): it takes every write waiting at that moment, applies them in
//! one transaction with a few set-based statements, commits once and only then answers each
//! caller.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    SqliteTransactionManager,
};
use sqlx::{ConnectOptions, SqliteConnection, SqlitePool, TransactionManager};
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot};

use super::StoreError;
use crate::delivery::sqlite_batch::{self, BatchOp, Finish, MAX_WRITE_BATCH, WriteOp};
use crate::delivery::sqlite_keys::KeyIndex;

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    /// Readers.
    pub(crate) pool: SqlitePool,
    /// The one writing connection.
    pub(crate) writer: Writer,
    batches: mpsc::Sender<WriteOp>,
    /// Which of the queue's two tables a lease round serves first (see `sqlite_queue.rs`).
    pub(crate) sends_first: Arc<std::sync::atomic::AtomicBool>,
    /// The idempotency keys, in memory (`delivery/sqlite_keys.rs`); locked by accept
    /// transactions, which run on the writer one at a time anyway.
    pub(crate) keys: Arc<tokio::sync::Mutex<KeyIndex>>,
    /// How many keys `keys` held after the last accept (read by `/metrics` without waiting for
    /// an accept to finish).
    pub(crate) keys_held: Arc<std::sync::atomic::AtomicU64>,
    /// The checkpoint task; stopped when the last clone is dropped.
    _checkpoints: Arc<AbortOnDrop>,
}

/// The store's one writing connection, handed from each write to the next by a fair (first
/// come, first served) lock.
///
/// Not a pool of one connection: a pool returns a connection from a task it spawns, which
/// pings the connection's SQLite thread before the next caller gets it. Under load that
/// hand-over took 0.2–0.3 s of the 1.3 s the writer spent on a burst of 160,000 batched
/// accepts, and at 1,000 msg/s it stood between every worker's lease, ack and the accepts:
/// with this lock, acceptance → carrier ack fell from 2.1–2.3 to 0.8–1.2 ms at p50
/// (docs/performance.md, 2026-11-25). Nothing here needs what a pool adds: a SQLite
/// connection does not drop like a network one, and a write that waits its turn should wait,
/// not time out.
#[derive(Clone)]
pub(crate) struct Writer(Arc<tokio::sync::Mutex<SqliteConnection>>);

impl Writer {
    /// The connection, for statements outside a transaction (each commits on its own).
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, SqliteConnection> {
        self.0.lock().await
    }

    /// A write transaction: `BEGIN IMMEDIATE`, so it holds SQLite's write lock from its start.
    pub(crate) async fn begin(&self) -> Result<WriteTx, sqlx::Error> {
        let mut conn = self.0.clone().lock_owned().await;
        SqliteTransactionManager::begin(&mut conn, Some("BEGIN IMMEDIATE".into())).await?;
        Ok(WriteTx { conn, open: true })
    }
}

/// A transaction on the [`Writer`], holding its lock until it ends. Dropped before
/// [`WriteTx::commit`], it rolls back (queued on the connection before the lock passes on,
/// as sqlx's own `Transaction` does), so a write that fails or panics halfway leaves nothing.
pub(crate) struct WriteTx {
    conn: OwnedMutexGuard<SqliteConnection>,
    open: bool,
}

impl WriteTx {
    /// Commit, and let the next write have the connection.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        SqliteTransactionManager::commit(&mut self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            SqliteTransactionManager::start_rollback(&mut self.conn);
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL frames (pages) above which the WAL is restarted, so it cannot grow without bound when
/// passive checkpoints never catch up.
const WAL_RESTART_FRAMES: i64 = 16_384;
/// Frames newly copied by a passive round above which the next one starts at once.
const CHECKPOINT_CHASE_FRAMES: i64 = 1_024;
/// Past `WAL_RESTART_FRAMES`, the restart waits for a passive round that copied at most this
/// many new frames (or for the rounds to stop shrinking): it copies what the writer appended
/// during the last round, holding the writer's turn, so that round must be short.
const RESTART_TAIL_FRAMES: i64 = 256;

/// What the checkpoint task does after a passive round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Sleep until the next tick.
    Wait,
    /// Start another passive round at once.
    Chase,
    /// Restart the WAL on the writing connection.
    Restart,
}

/// The step after a passive round, from the WAL's frames when the round began (`log`), the
/// frames it copied that no earlier round had (`fresh`), and, if it started right after
/// another round, that round's `fresh`.
///
/// A passive round copies the frames that were in the WAL when it began (SQLite reports
/// `log == copied` unless a reader holds an old snapshot) while the writer appends more. The
/// restart copies and syncs those under the writer's lock, so it must follow a short round:
/// past the threshold, rounds chase until one copies at most `RESTART_TAIL_FRAMES` or stops
/// shrinking (by a quarter; each round also syncs what it copied, so under load a round is
/// about half the one before). A round that grows restarts at once, so the WAL stays bounded
/// when the copy cannot gain on the writer. Before, a restart followed the round of the last
/// tick (up to 280 ms long) and copied everything it had let pile up.
/// A round that copied nothing (a reader holds an old snapshot) never chases, so this never
/// spins; past the threshold it lets the restart try (it waits at most `RESTART_BUSY_MS`).
fn next_step(log: i64, fresh: i64, chased_from: Option<i64>) -> Next {
    if log > WAL_RESTART_FRAMES {
        let stalled = chased_from.is_some_and(|before| 4 * fresh > 3 * before);
        if fresh <= RESTART_TAIL_FRAMES || stalled {
            Next::Restart
        } else {
            Next::Chase
        }
    } else if fresh > CHECKPOINT_CHASE_FRAMES {
        Next::Chase
    } else {
        Next::Wait
    }
}

/// How long a connection waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the restarting checkpoint waits for readers of old snapshots before it gives up
/// until the next round (it holds the writer's turn meanwhile).
const RESTART_BUSY_MS: u64 = 20;

/// Checkpoint the WAL from a connection of its own. With automatic checkpoints, the commit
/// that crosses the threshold copies the WAL into the database and fsyncs it while every
/// other write waits; here a passive checkpoint runs beside the writer on another thread and
/// never blocks it, and the pages it copied are synced to disk from here too (`sync_db`).
/// Only the restart (past `WAL_RESTART_FRAMES`) takes the writer's turn, and then has little
/// left to copy or sync.
async fn run_checkpoints(conn: SqlitePool, writer: Writer, db: Option<Arc<File>>) {
    let mut next = Next::Wait;
    // (WAL frames, frames copied) after the last round, and that round's new frames.
    let mut last = (0_i64, 0_i64);
    let mut last_fresh = 0_i64;
    loop {
        // While rounds copy many frames, the next starts at once: during a burst the copy
        // keeps pace with the writer instead of idling between ticks (`next_step`).
        if next != Next::Chase {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
        let chased_from = (next == Next::Chase).then_some(last_fresh);
        let passive: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&conn)
                .await;
        let (log, copied) = match passive {
            Ok((_, log, copied)) => (log, copied),
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                next = Next::Wait;
                continue;
            }
        };
        // A WAL shorter than before restarted in between: all it copied is new.
        let fresh = if log < last.0 {
            copied
        } else {
            copied - last.1
        };
        (last, last_fresh) = ((log, copied), fresh);
        if let Some(db) = db.as_ref().filter(|_| fresh > 0) {
            sync_db(db).await;
        }
        next = next_step(log, fresh, chased_from);
        if next == Next::Restart {
            let started = std::time::Instant::now();
            match restart_wal(&writer).await {
                Ok(true) => {
                    tracing::debug!(
                        frames = log,
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "WAL restarted"
                    );
                    // The next round counts from the WAL's start, even if the writer has
                    // refilled it past `log` by then.
                    (last, last_fresh) = ((0, 0), 0);
                }
                Ok(false) => tracing::debug!("WAL restart waited for a reader; next round"),
                Err(e) => tracing::warn!(error = %e, "WAL restart checkpoint failed"),
            }
        }
    }
}

/// Write to disk the pages that passive rounds copied into the database file, beside the
/// writer. SQLite syncs the database file at the end of a checkpoint only if it copied the
/// whole WAL, which never happens while the writer keeps appending; without this, the
/// restart's sync, under the writer's lock, wrote everything copied since the last restart
/// (`fsync` of the database 29–41 ms on the writing thread, seen with `strace`; restarts of
/// 34–180 ms under load, 1–18 ms since). The restart still syncs the file itself before the
/// WAL is overwritten, so durability never depends on this.
async fn sync_db(db: &Arc<File>) {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || db.sync_data()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "syncing the database file failed"),
        Err(e) => tracing::warn!(error = %e, "the database sync task failed"),
    }
}

/// The database file, opened once per process and file for `sync_db`, read-only.
///
/// Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
/// own included ("How To Corrupt An SQLite Database File", §2.2): a handle per store, closed
/// when that store is dropped, would silently unlock another store of the same process on the
/// same file (tests open two gateways on one folder). So every store of the process on one file
/// shares this handle, and it closes only with the last of them, as SQLite's unix VFS keeps
/// its own descriptors. Files are told apart by canonical path (a hard link to a database
/// would count as another file).
fn db_file(path: &Path) -> std::io::Result<Arc<File>> {
    static OPEN: Mutex<Vec<(PathBuf, Weak<File>)>> = Mutex::new(Vec::new());
    let path = std::fs::canonicalize(path)?;
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    open.retain(|(_, file)| file.strong_count() > 0);
    if let Some(file) = open
        .iter()
        .find(|(p, _)| *p == path)
        .and_then(|(_, file)| file.upgrade())
    {
        return Ok(file);
    }
    let file = Arc::new(File::open(&path)?);
    open.push((path, Arc::downgrade(&file)));
    Ok(file)
}

/// The restarting checkpoint, on the writing connection taken in turn like any write.
/// From a connection of its own, it contended for SQLite's write lock with the writer, and
/// the loser slept in SQLite's busy handler in steps of 1, 2, 5, 10, 15 … ms: the writer's
/// next transaction stalled for 8–145 ms where the checkpoint itself took a few. On the
/// writing connection, the lock is never contended; only readers of older snapshots are
/// waited for, at most `RESTART_BUSY_MS` (the result then says busy, and the next round tries
/// again).
/// Returns whether the WAL was restarted.
async fn restart_wal(writer: &Writer) -> Result<bool, sqlx::Error> {
    let mut conn = writer.lock().await;
    sqlx::query(&format!("PRAGMA busy_timeout = {RESTART_BUSY_MS}"))
        .execute(&mut *conn)
        .await?;
    let restarted: Result<(i64, i64, i64), sqlx::Error> =
        sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&mut *conn)
            .await;
    let restored = sqlx::query(&format!(
        "PRAGMA busy_timeout = {}",
        BUSY_TIMEOUT.as_millis()
    ))
    .execute(&mut *conn)
    .await;
    if let Err(e) = restored {
        // Setting a pragma fails only when the connection's SQLite thread is gone, and then
        // every write fails anyway; say so loudly.
        tracing::error!(error = %e, "the writer's busy timeout could not be restored");
        return Err(e);
    }
    restarted.map(|(busy, _, _)| busy == 0)
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("pool", &self.pool)
            .field("writer", &"Writer")
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
        // Checkpoints run on their own connection (below), not inside a commit.
        let mut conn = options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .connect()
            .await?;
        sqlx::migrate!("./migrations").run(&mut conn).await?;
        let loading = std::time::Instant::now();
        let keys = KeyIndex::load(&mut conn).await?;
        let writer = Writer(Arc::new(tokio::sync::Mutex::new(conn)));
        tracing::info!(
            keys = keys.len(),
            ms = loading.elapsed().as_millis(),
            "idempotency keys loaded"
        );
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
        let db = db_file(path)
            .inspect_err(|e| tracing::warn!(error = %e, "the database file cannot be synced beside the writer; WAL restarts will stall writes longer"))
            .ok();
        let checkpoints = Arc::new(AbortOnDrop(tokio::spawn(run_checkpoints(
            checkpointer,
            writer.clone(),
            db,
        ))));
        Ok(Self {
            pool,
            writer,
            batches,
            sends_first: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            keys_held: Arc::new(std::sync::atomic::AtomicU64::new(keys.len() as u64)),
            keys: Arc::new(tokio::sync::Mutex::new(keys)),
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
}

#[cfg(test)]
impl SqliteStore {
    /// A fresh store in a temporary folder, which lives as long as the returned `TempDir`.
    pub(crate) async fn open_temp() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("sealgate.db"))
            .await
            .expect("open");
        (dir, store)
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::SqliteStore;

    async fn open(_test: &str) -> Option<(tempfile::TempDir, Arc<SqliteStore>)> {
        let (dir, store) = SqliteStore::open_temp().await;
        Some((dir, Arc::new(store)))
    }

    crate::store::conformance::backend_suite!(open);
}

#[cfg(test)]
mod tests {
    use super::SqliteStore;

    /// Run `sql` on the writing connection.
    async fn write(store: &SqliteStore, sql: &str) {
        sqlx::query(sql)
            .execute(&mut *store.writer.lock().await)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Below the restart threshold the checkpointer chases a burst; past it, it chases until
    /// the tail a restart would copy is short or stops shrinking; a round that copied nothing
    /// (a reader holds an old snapshot) never chases, so the task cannot spin.
    #[test]
    fn the_checkpointer_restarts_only_after_a_short_round() {
        use super::{Next, RESTART_TAIL_FRAMES, WAL_RESTART_FRAMES, next_step};
        let past = WAL_RESTART_FRAMES + 1;
        assert_eq!(next_step(9_000, 4_000, None), Next::Chase, "a burst");
        assert_eq!(next_step(9_000, 0, Some(4_000)), Next::Wait, "blocked");
        assert_eq!(next_step(9_000, 500, Some(4_000)), Next::Wait, "caught up");
        // After a tick the round's frames include the sleep's: never restart on them.
        assert_eq!(next_step(past, 14_000, None), Next::Chase, "after a tick");
        assert_eq!(
            next_step(past, 3_500, Some(14_000)),
            Next::Chase,
            "shrinking"
        );
        assert_eq!(
            next_step(past, RESTART_TAIL_FRAMES, Some(900)),
            Next::Restart,
            "short tail"
        );
        assert_eq!(next_step(past, 400, Some(800)), Next::Chase, "halving");
        assert_eq!(next_step(past, 400, Some(500)), Next::Restart, "converged");
        assert_eq!(next_step(past, 9_000, Some(4_000)), Next::Restart, "losing");
        assert_eq!(next_step(past, 0, None), Next::Restart, "blocked: try");
    }

    /// A write transaction dropped before its commit (a failed or cancelled write) leaves
    /// nothing and hands the connection on out of its transaction: the next write begins,
    /// and writes in turn; one that waits for the lock gets it after the holder is done.
    #[tokio::test]
    async fn a_dropped_write_rolls_back_and_the_writer_goes_on() {
        let (_dir, store) = SqliteStore::open_temp().await;
        write(&store, "CREATE TABLE t (x INTEGER)").await;
        {
            let mut tx = store.writer.begin().await.expect("begin");
            sqlx::query("INSERT INTO t (x) VALUES (1)")
                .execute(&mut *tx)
                .await
                .expect("insert");
            // Dropped here, uncommitted.
        }
        // A second writer queues behind a transaction that holds the lock.
        let mut held = store.writer.begin().await.expect("begin after a drop");
        let waiting = tokio::spawn({
            let writer = store.writer.clone();
            async move {
                let mut tx = writer.begin().await.expect("begin in turn");
                sqlx::query("INSERT INTO t (x) VALUES (3)")
                    .execute(&mut *tx)
                    .await
                    .expect("insert 3");
                tx.commit().await.expect("commit 3");
            }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a second write ran beside the first"
        );
        sqlx::query("INSERT INTO t (x) VALUES (2)")
            .execute(&mut *held)
            .await
            .expect("insert 2");
        held.commit().await.expect("commit 2");
        waiting.await.expect("the waiting write");
        let xs: Vec<(i64,)> = sqlx::query_as("SELECT x FROM t ORDER BY rowid")
            .fetch_all(&store.pool)
            .await
            .expect("rows");
        assert_eq!(xs, vec![(2,), (3,)], "the dropped write left its row");
    }

    /// Stores of one process on one file share the sync handle, so dropping one cannot close a
    /// descriptor of the file (and drop the POSIX locks of the other); another file gets its own.
    #[tokio::test]
    async fn stores_on_one_file_share_the_sync_handle() {
        use super::db_file;
        use std::sync::Arc;
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let _first = SqliteStore::open(&a).await.expect("open a");
        let _other = SqliteStore::open(&b).await.expect("open b");
        let one = db_file(&a).expect("a");
        let same = db_file(&dir.path().join(".").join("a.db")).expect("a by another path");
        assert!(Arc::ptr_eq(&one, &same), "one file, one handle");
        assert!(!Arc::ptr_eq(&one, &db_file(&b).expect("b")), "two files");
        drop(one);
        assert!(
            Arc::ptr_eq(&same, &db_file(&a).expect("a again")),
            "the handle stays while a holder is left"
        );
    }

    /// Commits never checkpoint (the writer's automatic checkpoint is off), so only the
    /// background task moves committed pages from the WAL into the database file.
    #[tokio::test]
    async fn the_background_task_checkpoints_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let store = SqliteStore::open(&path).await.expect("open");
        let (auto,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
            .fetch_one(&mut *store.writer.lock().await)
            .await
            .expect("pragma");
        assert_eq!(auto, 0, "commits must not checkpoint");
        write(&store, "CREATE TABLE t (x BLOB)").await;
        // Let any checkpoint of the migrations pass, then measure.
        tokio::time::sleep(super::CHECKPOINT_EVERY * 3).await;
        let before = std::fs::metadata(&path).expect("db").len();
        for _ in 0..16 {
            write(&store, "INSERT INTO t (x) VALUES (zeroblob(65536))").await;
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
        let (_dir, store) = SqliteStore::open_temp().await;
        let insert = |n: usize| {
            let writer = store.writer.clone();
            async move {
                for _ in 0..n {
                    sqlx::query("INSERT INTO t (x) VALUES (zeroblob(16384))")
                        .execute(&mut *writer.lock().await)
                        .await
                        .expect("insert");
                }
            }
        };
        write(&store, "CREATE TABLE t (x BLOB)").await;
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
        let restarted = super::restart_wal(&store.writer).await.expect("restart");
        assert!(!restarted, "a reader of an old snapshot holds the WAL");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "the restart waited {:?} for the reader",
            started.elapsed()
        );
        let (timeout,): (i64,) = sqlx::query_as("PRAGMA busy_timeout")
            .fetch_one(&mut *store.writer.lock().await)
            .await
            .expect("pragma");
        assert_eq!(timeout, 10_000, "the writers' busy timeout is restored");
        sqlx::query("COMMIT")
            .execute(&mut *reader)
            .await
            .expect("end");
        drop(reader);
        let restarted = super::restart_wal(&store.writer).await.expect("restart");
        assert!(restarted, "no reader left");
        insert(1).await;
        let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut *store.writer.lock().await)
            .await
            .expect("checkpoint");
        assert!(log < 16, "{log} WAL frames after a restart and one insert");
    }
}
