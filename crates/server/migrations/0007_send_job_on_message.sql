-- An accepted message becomes one row (SYSTEM.md §7: accepts against the raw insert ceiling):
-- its send job and its idempotency key move onto the `send_messages` row, instead of a row in
-- `delivery_jobs` and one in `send_idempotency`, each with an index of its own. Acking a send
-- clears the job columns of a row the worker updates anyway. `delivery_jobs` keeps callback
-- and push jobs.
--
-- job_due     when the job may be leased next (a lease moves it to the lease's end, so a job
--             whose worker died is due again by itself); NULL = the message has no job.
-- job_since   start of the job's retry window: acceptance, or the dead-letter replay.
-- job_leases  leases of the current job so far (a crashed attempt counts too).
-- lease_token the current lease; ack / retry / dead-letter need it.
-- last_error  the last transient failure, for the next attempt's logs and the dead letter.
ALTER TABLE send_messages ADD COLUMN job_due INTEGER;
ALTER TABLE send_messages ADD COLUMN job_since INTEGER;
ALTER TABLE send_messages ADD COLUMN job_leases INTEGER NOT NULL DEFAULT 0;
ALTER TABLE send_messages ADD COLUMN lease_token TEXT;
ALTER TABLE send_messages ADD COLUMN last_error TEXT;

-- Pending send jobs move over (one per message; a message with two after repeated replays
-- keeps its oldest, which is all a worker needs: it delivers the message once).
UPDATE send_messages SET job_due = j.not_before, job_since = j.created_at,
    job_leases = j.attempts, lease_token = j.lease_token, last_error = j.last_error
FROM (SELECT message_id, not_before, created_at, attempts, lease_token, last_error,
             MIN(job_id) AS first
      FROM delivery_jobs WHERE kind = 'send' GROUP BY message_id) AS j
WHERE j.message_id = send_messages.message_id;
DELETE FROM delivery_jobs WHERE kind = 'send';

CREATE INDEX send_messages_due ON send_messages(job_due) WHERE job_due IS NOT NULL;

-- Idempotency keys move onto their message rows too: a key is one entry of a partial unique
-- index instead of a row of its own plus an entry of an index by age. The hourly purge walks
-- that index (only keys not yet purged) and clears expired keys, off the accept path.
ALTER TABLE send_messages ADD COLUMN idem_key TEXT;
ALTER TABLE send_messages ADD COLUMN request_hash BLOB;
UPDATE send_messages SET idem_key = k.idem_key, request_hash = k.request_hash
FROM send_idempotency AS k
WHERE k.message_id = send_messages.message_id AND k.tenant_id = send_messages.tenant_id;
DROP TABLE send_idempotency;
CREATE UNIQUE INDEX send_messages_key ON send_messages(tenant_id, idem_key)
    WHERE idem_key IS NOT NULL;
