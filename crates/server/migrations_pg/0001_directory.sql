-- PostgreSQL schema of the scale-out store; mirrors migrations/0001_directory.sql (SQLite).
-- Key directory and tenant administration: tenants, API keys, users, enrollment tokens,
-- devices, KeyPackages. Secrets (API keys, enrollment and device tokens) are stored as
-- hex SHA-256 digests only. Times are Unix seconds.

CREATE TABLE tenants (
    tenant_id   TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    key_hash    TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    user_id     TEXT NOT NULL,
    phone       TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX users_by_phone ON users(tenant_id, phone);

CREATE TABLE enrollments (
    token_hash  TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    phone       TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users(tenant_id, user_id)
);

CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    signature_key BYTEA NOT NULL,
    name          TEXT,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users(tenant_id, user_id)
);
CREATE INDEX devices_by_user ON devices(tenant_id, user_id);

-- One row per published KeyPackage. `id` orders one-time KeyPackages oldest first; `kp_ref`
-- (the RFC 9420 KeyPackageRef) refuses the same KeyPackage twice. At most one last-resort
-- KeyPackage per device.
CREATE TABLE key_packages (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id    TEXT NOT NULL REFERENCES devices(device_id),
    tenant_id    TEXT NOT NULL,
    kp_ref       BYTEA NOT NULL UNIQUE,
    data         BYTEA NOT NULL,
    last_resort  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages(device_id) WHERE last_resort;
