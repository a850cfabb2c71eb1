-- Delivery service: groups the DS follows as a non-member, their rosters, messages stored
-- once, and per-device mailbox pointers.

CREATE TABLE ds_groups (
    group_id          TEXT PRIMARY KEY,      -- hex of the MLS group id
    tenant_id         TEXT NOT NULL REFERENCES tenants(tenant_id),
    epoch             INTEGER NOT NULL,      -- compare-and-swap target of every commit
    snapshot          BLOB NOT NULL,         -- mls-rs ExternalSnapshot (public state only)
    group_info        BLOB,                  -- latest GroupInfo MLSMessage a member gave us
    group_info_epoch  INTEGER,
    created_by        TEXT NOT NULL,         -- device id
    created_at        INTEGER NOT NULL,      -- Unix ms
    updated_at        INTEGER NOT NULL       -- Unix ms
);

CREATE TABLE ds_members (
    group_id       TEXT NOT NULL REFERENCES ds_groups(group_id),
    leaf_index     INTEGER NOT NULL,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    signature_key  BLOB NOT NULL,
    PRIMARY KEY (group_id, leaf_index)
);
CREATE INDEX ds_members_by_device ON ds_members(device_id, group_id);

CREATE TABLE ds_messages (
    message_id     TEXT PRIMARY KEY,
    group_id       TEXT NOT NULL REFERENCES ds_groups(group_id),
    kind           TEXT NOT NULL CHECK (kind IN ('welcome', 'commit', 'application')),
    epoch          INTEGER NOT NULL,
    sender_user    TEXT NOT NULL,
    sender_device  TEXT NOT NULL,
    bytes          BLOB NOT NULL,            -- opaque MLSMessage; never logged
    size           INTEGER NOT NULL,
    received_at    INTEGER NOT NULL          -- Unix ms
);

-- seq only has to increase strictly per device; AUTOINCREMENT also keeps it from reusing
-- the seq of an acknowledged (deleted) pointer.
CREATE TABLE ds_mailbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT NOT NULL,
    message_id  TEXT NOT NULL REFERENCES ds_messages(message_id)
);
CREATE INDEX ds_mailbox_by_device ON ds_mailbox(device_id, seq);
CREATE INDEX ds_mailbox_by_message ON ds_mailbox(message_id);
