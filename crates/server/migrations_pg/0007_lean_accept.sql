-- The `queued` history entry is no longer stored: the message row's accepted_at is that entry.
-- Stored ones (no reason) go; a replayed dead letter's `queued` (reason 'replayed') stays.
DELETE FROM send_history WHERE status = 'queued' AND reason IS NULL;
-- No query reads send_messages_by_tenant; message ids are time-ordered, so the primary key
-- already serves scans by age.
DROP INDEX send_messages_by_tenant;
