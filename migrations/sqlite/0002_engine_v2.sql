-- Job engine v2: executions are compare-and-set on a revision; they outlive
-- their device (a deleted device stays in its jobs' records); rolled_back
-- is an ended state; jobs carry a rollback window. SQLite cannot drop a
-- foreign key, so job_executions is rebuilt.

CREATE TABLE job_executions_v2 (
    job_id          text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    product_id      text NOT NULL,
    device_name     text NOT NULL,
    state           text NOT NULL,
    from_version    text NOT NULL DEFAULT '',
    percent         integer NOT NULL DEFAULT 0,
    attempts        integer NOT NULL DEFAULT 0,
    result_code     integer NOT NULL DEFAULT 0,
    result_msg      text NOT NULL DEFAULT '',
    notified_at     text,
    next_attempt_at text,
    deadline_at     text,
    finished_at     text,
    created_at      text NOT NULL,
    updated_at      text NOT NULL,
    rev             integer NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, device_name)
);
INSERT INTO job_executions_v2 (job_id, product_id, device_name, state, from_version, percent, attempts, result_code, result_msg,
    notified_at, next_attempt_at, deadline_at, finished_at, created_at, updated_at)
SELECT job_id, product_id, device_name, state, from_version, percent, attempts, result_code, result_msg,
    notified_at, next_attempt_at, deadline_at, finished_at, created_at, updated_at FROM job_executions;
DROP TABLE job_executions;
ALTER TABLE job_executions_v2 RENAME TO job_executions;

CREATE INDEX job_executions_device ON job_executions (product_id, device_name, created_at);
CREATE INDEX job_executions_state ON job_executions (job_id, state, next_attempt_at);
CREATE INDEX job_executions_deadline ON job_executions (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE UNIQUE INDEX job_executions_active ON job_executions (product_id, device_name)
    WHERE state IN ('queued', 'notified', 'downloading', 'burning');

ALTER TABLE jobs ADD COLUMN rollback_window_seconds integer NOT NULL DEFAULT 3600;

-- A device is notified only once it has reported its version in its
-- current connection (a notification sooner crosses its report_version,
-- which then asks for it again).
ALTER TABLE devices ADD COLUMN ready boolean NOT NULL DEFAULT false;
UPDATE devices SET ready = online;

-- A device's upgrade progress speaks the job states' words: fail is failed.
UPDATE devices SET upgrade_state = 'failed' WHERE upgrade_state = 'fail';
