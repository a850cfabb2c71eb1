-- The daily send quota is counted in the store, not in a process's memory: it survives a
-- restart, and api processes that share a store share one count. One row per tenant: the
-- UTC day it counts (days since the Unix epoch) and the sends granted that day. Processes
-- take the quota in blocks (`granted` is what the last take got; see delivery/limiter.rs).
CREATE TABLE send_quota (
    tenant_id  TEXT PRIMARY KEY,
    day        INTEGER NOT NULL,
    used       INTEGER NOT NULL,
    granted    INTEGER NOT NULL
) WITHOUT ROWID;
