-- PostgreSQL schema; mirrors migrations/0002_ds.sql (SQLite) except the mailbox seq.
-- Delivery service: groups the DS follows as a non-member, their rosters, messages stored
-- once, and per-device mailbox pointers.

CREATE TABLE ds_groups (
    group_id          TEXT PRIMARY KEY,      -- hex of the MLS group id
    tenant_id         TEXT NOT NULL REFERENCES tenants(tenant_id),
    epoch             BIGINT NOT NULL,      -- compare-and-swap target of every commit
    snapshot          BYTEA NOT NULL,         -- mls-rs ExternalSnapshot (public state only)
    group_info        BYTEA,                  -- latest GroupInfo MLSMessage a member gave us
    group_info_epoch  BIGINT,
    created_by        TEXT NOT NULL,         -- device id
    created_at        BIGINT NOT NULL,      -- Unix ms
    updated_at        BIGINT NOT NULL       -- Unix ms
);

CREATE TABLE ds_members (
    group_id       TEXT NOT NULL REFERENCES ds_groups(group_id),
    leaf_index     BIGINT NOT NULL,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    signature_key  BYTEA NOT NULL,
    PRIMARY KEY (group_id, leaf_index)
);
CREATE INDEX ds_members_by_device ON ds_members(device_id, group_id);

CREATE TABLE ds_messages (
    message_id     TEXT PRIMARY KEY,
    group_id       TEXT NOT NULL REFERENCES ds_groups(group_id),
    kind           TEXT NOT NULL CHECK (kind IN ('welcome', 'commit', 'application')),
    epoch          BIGINT NOT NULL,
    sender_user    TEXT NOT NULL,
    sender_device  TEXT NOT NULL,
    bytes          BYTEA NOT NULL,            -- opaque MLSMessage; never logged
    size           BIGINT NOT NULL,
    received_at    BIGINT NOT NULL          -- Unix ms
);

-- seq increases strictly per device. It is not a global sequence: with concurrent writers a
-- global sequence can commit 11 before 10, and a reader that acknowledged 11 would never see
-- 10. Instead each device has a head row; taking the next seq locks that row, so pointers of
-- one device commit in seq order. The head is never decremented, so an acknowledged (deleted)
-- seq is never reused.
CREATE TABLE ds_mailbox_heads (
    device_id   TEXT PRIMARY KEY,
    last_seq    BIGINT NOT NULL
);

CREATE TABLE ds_mailbox (
    device_id   TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    message_id  TEXT NOT NULL REFERENCES ds_messages(message_id),
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX ds_mailbox_by_message ON ds_mailbox(message_id);
