-- Send policy, its audit trail, secure links and held messages. Times are Unix ms.
--
-- `tenant_policies` keeps the current document per tenant (absent = the built-in default);
-- `policy_audit` keeps every change with who made it and both digests, append-only.
-- `secure_links` keeps ciphertext only (the key lives in the link's URL fragment and never
-- reaches the gateway); `ciphertext` is set to NULL once the link is opened, expires or is
-- locked. One-time codes are stored as SHA-256 digests.

CREATE TABLE tenant_policies (
    tenant_id   TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    document    TEXT NOT NULL,          -- canonical JSON of the classes
    digest      TEXT NOT NULL,          -- hex SHA-256 of `document`
    updated_at  INTEGER NOT NULL
);

CREATE TABLE policy_audit (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id         TEXT NOT NULL,
    version           INTEGER NOT NULL,
    previous_version  INTEGER NOT NULL,
    actor             TEXT NOT NULL,
    at                INTEGER NOT NULL,
    digest            TEXT NOT NULL,
    previous_digest   TEXT NOT NULL,
    document          TEXT NOT NULL,
    UNIQUE (tenant_id, version)
);

CREATE TABLE secure_links (
    link_id         TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    recipient       TEXT NOT NULL,      -- E.164: where the one-time code goes
    ciphertext      BLOB,               -- NULL once used, expired or locked
    size            INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    otp_hash        TEXT,
    otp_expires_at  INTEGER,
    otp_sent_at     INTEGER,
    otp_sends       INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    opened_at       INTEGER,
    locked_at       INTEGER
);
CREATE INDEX secure_links_by_expiry ON secure_links(expires_at) WHERE ciphertext IS NOT NULL;

CREATE TABLE send_holds (
    hold_id     TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    recipient   TEXT NOT NULL,          -- E.164 or user id, as given
    class       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    ready_at    INTEGER,
    done_at     INTEGER
);
CREATE INDEX send_holds_by_tenant ON send_holds(tenant_id, created_at);
CREATE INDEX send_holds_by_recipient ON send_holds(tenant_id, recipient);
