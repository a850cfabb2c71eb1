-- send_messages' three CHECK constraints become chains of `=` tests instead of `IN` lists.
-- They allow exactly the same values, but SQLite evaluates a CHECK with an `IN` list through
-- a small temporary index, on every inserted row: measured, the three of them cost 10–14 %
-- of the accept transaction (docs/performance.md, 2026-11-25).
--
-- SQLite cannot change a CHECK in place, so the table is rebuilt (the documented
-- create-copy-drop-rename procedure). Migrations run inside a transaction, where foreign
-- keys cannot be switched off, and send_history rows reference their messages: the history
-- is set aside in a temporary table while the messages table is replaced, then put back with
-- the same ids. Rows keep their rowids, columns and values; the two indexes are rebuilt.
CREATE TEMP TABLE history_during_0009 AS SELECT id, message_id, status, reason, at FROM send_history;
DELETE FROM send_history;

CREATE TABLE send_messages_0009 (
    message_id      TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    recipient       TEXT NOT NULL,          -- E.164 or user id
    class           TEXT NOT NULL
        CHECK (class = 'transactional' OR class = 'sensitive' OR class = 'marketing'),
    channel         TEXT NOT NULL CHECK (channel = 'inapp' OR channel = 'rcs' OR channel = 'sms'),
    kind            TEXT NOT NULL CHECK (kind = 'mls' OR kind = 'rcs_payload' OR kind = 'text'),
    group_id        TEXT,                   -- hex MLS group id (kind = 'mls')
    epoch           INTEGER,                -- MLS epoch of the message (kind = 'mls')
    payload         BLOB NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    correlation_id  TEXT,
    accepted_at     INTEGER NOT NULL,
    expires_at      INTEGER,
    updated_at      INTEGER NOT NULL,
    job_due         INTEGER,
    job_since       INTEGER,
    job_leases      INTEGER NOT NULL DEFAULT 0,
    lease_token     TEXT,
    last_error      TEXT,
    idem_key        TEXT,
    request_hash    BLOB
);
INSERT INTO send_messages_0009 (rowid, message_id, tenant_id, recipient, class, channel, kind,
    group_id, epoch, payload, status, reason, attempts, correlation_id, accepted_at, expires_at,
    updated_at, job_due, job_since, job_leases, lease_token, last_error, idem_key, request_hash)
SELECT rowid, message_id, tenant_id, recipient, class, channel, kind,
    group_id, epoch, payload, status, reason, attempts, correlation_id, accepted_at, expires_at,
    updated_at, job_due, job_since, job_leases, lease_token, last_error, idem_key, request_hash
FROM send_messages;
DROP TABLE send_messages;
ALTER TABLE send_messages_0009 RENAME TO send_messages;
CREATE INDEX send_messages_due ON send_messages(job_due) WHERE job_due IS NOT NULL;
CREATE UNIQUE INDEX send_messages_key ON send_messages(tenant_id, idem_key)
    WHERE idem_key IS NOT NULL;

INSERT INTO send_history (id, message_id, status, reason, at)
SELECT id, message_id, status, reason, at FROM history_during_0009 ORDER BY id;
DROP TABLE history_during_0009;
