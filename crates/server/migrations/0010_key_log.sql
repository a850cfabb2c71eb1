-- Idempotency keys move from the unique index `send_messages_key` to an append-only log read
-- into memory (`delivery/sqlite_keys.rs`). With random keys (UUIDs) the unique index wrote one
-- 4 KiB leaf page to the WAL per accepted message; the log's rows arrive in `seq` order, so
-- its pages fill one after another (docs/performance.md, 2026-11-25).
--
-- `seq` is AUTOINCREMENT so it never goes back after a purge: a store that read the log up
-- to some seq must never miss a later row written under a reused one. `key_hash` is a 64-bit
-- hash of (tenant, key) computed by the gateway; SQL has no SHA-256, so the keys moved here
-- from the old index arrive without it and the gateway fills it in when it opens the file
-- (the partial index finds them; it is empty afterwards). A row names its message by id, not
-- by rowid, which VACUUM may renumber. `at` is the message's acceptance time, for the
-- retention purge.
CREATE TABLE send_keys (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    key_hash      INTEGER,
    message_id    TEXT NOT NULL,
    at            INTEGER NOT NULL
);
CREATE INDEX send_keys_unhashed ON send_keys(seq) WHERE key_hash IS NULL;

INSERT INTO send_keys (key_hash, message_id, at)
SELECT NULL, message_id, accepted_at FROM send_messages WHERE idem_key IS NOT NULL
ORDER BY accepted_at, rowid;

DROP INDEX send_messages_key;
