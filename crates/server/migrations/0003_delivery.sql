-- Business send pipeline: messages accepted by POST /v1/messages, their status history,
-- idempotency keys, the embedded job queue (with leases) and its dead letters, tenant status
-- callbacks, processed carrier receipt ids, and device push tokens. Times are Unix ms.
--
-- `payload` is the opaque body the transport needs (MLS PrivateMessage, RCS E2EE payload, or
-- a plaintext fallback text the tenant's policy allowed); it is wiped once the message can no
-- longer be sent (sent, failed, expired).

CREATE TABLE send_messages (
    message_id      TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    recipient       TEXT NOT NULL,          -- E.164 or user id
    class           TEXT NOT NULL CHECK (class IN ('transactional', 'sensitive', 'marketing')),
    channel         TEXT NOT NULL CHECK (channel IN ('inapp', 'rcs', 'sms')),
    kind            TEXT NOT NULL CHECK (kind IN ('mls', 'rcs_payload', 'text')),
    group_id        TEXT,                   -- hex MLS group id (kind = 'mls')
    epoch           INTEGER,                -- MLS epoch of the message (kind = 'mls')
    payload         BLOB NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    correlation_id  TEXT,
    accepted_at     INTEGER NOT NULL,
    expires_at      INTEGER,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX send_messages_by_tenant ON send_messages(tenant_id, accepted_at);

CREATE TABLE send_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT NOT NULL REFERENCES send_messages(message_id),
    status      TEXT NOT NULL,
    reason      TEXT,
    at          INTEGER NOT NULL
);
CREATE INDEX send_history_by_message ON send_history(message_id, id);

-- Per tenant; kept at least the configured retention (>= 24 h), then purged.
CREATE TABLE send_idempotency (
    tenant_id     TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  BLOB NOT NULL,            -- SHA-256 of the canonical request
    message_id    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);
CREATE INDEX send_idempotency_by_age ON send_idempotency(created_at);

-- The embedded queue. A job is ready when not_before <= now and it is not leased (or its
-- lease ran out: the worker died). lease_token identifies the current lease for ack/retry.
CREATE TABLE delivery_jobs (
    job_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL CHECK (kind IN ('send', 'callback', 'push')),
    tenant_id    TEXT NOT NULL,
    message_id   TEXT,
    payload      BLOB,                      -- callback / push body (JSON); NULL for sends
    attempts     INTEGER NOT NULL DEFAULT 0,
    not_before   INTEGER NOT NULL,
    lease_until  INTEGER,
    lease_token  TEXT,
    last_error   TEXT,
    created_at   INTEGER NOT NULL
);
CREATE INDEX delivery_jobs_ready ON delivery_jobs(not_before);

CREATE TABLE dead_letters (
    dead_letter_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    message_id      TEXT,
    payload         BLOB,
    attempts        INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    replayed_at     INTEGER
);

CREATE TABLE tenant_callbacks (
    tenant_id   TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,              -- HMAC key; needed in clear to sign
    updated_at  INTEGER NOT NULL
);

CREATE TABLE carrier_events (
    event_id     TEXT PRIMARY KEY,
    message_id   TEXT NOT NULL,
    received_at  INTEGER NOT NULL
);

CREATE TABLE push_tokens (
    device_id   TEXT PRIMARY KEY,
    token       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
