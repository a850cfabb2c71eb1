-- An accept writes four b-tree entries fewer per message (SYSTEM.md §7: accepts against the
-- raw insert ceiling):
-- * the `queued` history entry is no longer stored; the message row's accepted_at is that
--   entry. Stored ones (no reason) go; a replayed dead letter's `queued` (reason 'replayed')
--   stays.
-- * idempotency keys live in a WITHOUT ROWID table, so a key is one b-tree entry instead of a
--   table row plus a primary-key index entry.
-- * send_messages_by_tenant goes: no query reads it, and message ids are time-ordered, so the
--   primary key already serves scans by age.
DELETE FROM send_history WHERE status = 'queued' AND reason IS NULL;
DROP INDEX send_messages_by_tenant;

CREATE TABLE send_idempotency_new (
    tenant_id     TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  BLOB NOT NULL,            -- SHA-256 of the canonical request
    message_id    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
) WITHOUT ROWID;
INSERT INTO send_idempotency_new SELECT tenant_id, idem_key, request_hash, message_id, created_at
    FROM send_idempotency;
DROP TABLE send_idempotency;
ALTER TABLE send_idempotency_new RENAME TO send_idempotency;
CREATE INDEX send_idempotency_by_age ON send_idempotency(created_at);
