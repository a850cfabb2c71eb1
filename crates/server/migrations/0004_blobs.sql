-- Attachment uploads (ciphertext only; the gateway never learns names, keys or plaintext
-- digests). One row per upload, reserved with its declared length when created so quotas
-- count it at once; one row per stored part, written only after its object was stored, so
-- `upload_offset` never counts bytes that are not durably in the blob store. Times are Unix
-- seconds. `expires_at` is when the garbage collector deletes the upload: creation + upload
-- TTL while incomplete, completion + retention once complete.

CREATE TABLE blob_uploads (
    attachment_id  TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    group_id       TEXT NOT NULL,            -- hex MLS group id whose members may download
    created_by     TEXT NOT NULL,            -- device id; the only device that may append
    length         INTEGER NOT NULL,         -- declared ciphertext bytes
    upload_offset  INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    completed_at   INTEGER,
    expires_at     INTEGER NOT NULL
);
CREATE INDEX blob_uploads_by_tenant ON blob_uploads(tenant_id, expires_at);
CREATE INDEX blob_uploads_by_expiry ON blob_uploads(expires_at);

CREATE TABLE blob_parts (
    attachment_id  TEXT NOT NULL REFERENCES blob_uploads(attachment_id),
    part_offset    INTEGER NOT NULL,
    length         INTEGER NOT NULL,
    object_key     TEXT NOT NULL,
    PRIMARY KEY (attachment_id, part_offset)
);
