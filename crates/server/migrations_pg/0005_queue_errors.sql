-- Scale-out queue (NATS JetStream): the last error of a job that is being retried in
-- JetStream (a NAK cannot carry it), kept until the job is acknowledged or dead-lettered.
-- delivery_jobs stays the transactional outbox the relay publishes from.
CREATE TABLE delivery_job_errors (
    job_id      BIGINT PRIMARY KEY,
    last_error  TEXT NOT NULL
);
