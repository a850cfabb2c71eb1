-- Tenants, API keys, users, enrollment tokens, devices, KeyPackages.
CREATE TABLE tenants (
    tenant_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    key_hash    TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    created_at  INTEGER NOT NULL
);

CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(tenant_id),
    user_id       TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    signature_key BLOB NOT NULL,
    name          TEXT,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);
CREATE INDEX devices_by_user ON devices(tenant_id, user_id);
