-- Send policy, its audit trail, secure links and held messages (PostgreSQL twin of the
-- SQLite migration 0005_policy_links.sql). Times are Unix ms. Secure links keep ciphertext
-- only (the key lives in the URL fragment); `ciphertext` is NULL once used, expired or locked.

CREATE TABLE tenant_policies (
    tenant_id   TEXT PRIMARY KEY,
    version     BIGINT NOT NULL,
    document    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE policy_audit (
    id                BIGSERIAL PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    version           BIGINT NOT NULL,
    previous_version  BIGINT NOT NULL,
    actor             TEXT NOT NULL,
    at                BIGINT NOT NULL,
    digest            TEXT NOT NULL,
    previous_digest   TEXT NOT NULL,
    document          TEXT NOT NULL,
    UNIQUE (tenant_id, version)
);

CREATE TABLE secure_links (
    link_id         TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    ciphertext      BYTEA,
    size            BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    otp_hash        TEXT,
    otp_expires_at  BIGINT,
    otp_sent_at     BIGINT,
    otp_sends       BIGINT NOT NULL DEFAULT 0,
    attempts        BIGINT NOT NULL DEFAULT 0,
    opened_at       BIGINT,
    locked_at       BIGINT
);
CREATE INDEX secure_links_by_expiry ON secure_links(expires_at) WHERE ciphertext IS NOT NULL;

CREATE TABLE send_holds (
    hold_id     TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    class       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    ready_at    BIGINT,
    done_at     BIGINT
);
CREATE INDEX send_holds_by_tenant ON send_holds(tenant_id, created_at);
CREATE INDEX send_holds_by_recipient ON send_holds(tenant_id, recipient);
