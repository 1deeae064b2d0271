-- Jobs of a million devices: a job's executions counted per phase, state
-- and whether attempted (attempts > 0), kept up to date by triggers in the
-- transaction of every change, so that counts and pacing read a few rows
-- instead of every execution. (SQLite has one writer: the counter rows
-- are updated in place.)
CREATE TABLE job_counts (
    job_id    text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    phase     integer NOT NULL,
    state     text NOT NULL,
    attempted boolean NOT NULL,
    n         integer NOT NULL,
    PRIMARY KEY (job_id, phase, state, attempted)
);

INSERT INTO job_counts (job_id, phase, state, attempted, n)
SELECT job_id, phase, state, attempts > 0, count(*) FROM job_executions WHERE true GROUP BY 1, 2, 3, 4;

CREATE TRIGGER job_counts_inserted AFTER INSERT ON job_executions BEGIN
    INSERT INTO job_counts (job_id, phase, state, attempted, n) VALUES (new.job_id, new.phase, new.state, new.attempts > 0, 1)
    ON CONFLICT (job_id, phase, state, attempted) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_updated AFTER UPDATE OF state, phase, attempts ON job_executions
WHEN old.state IS NOT new.state OR old.phase IS NOT new.phase OR (old.attempts > 0) IS NOT (new.attempts > 0) BEGIN
    UPDATE job_counts SET n = n - 1
    WHERE job_id = old.job_id AND phase = old.phase AND state = old.state AND attempted = (old.attempts > 0);
    INSERT INTO job_counts (job_id, phase, state, attempted, n) VALUES (new.job_id, new.phase, new.state, new.attempts > 0, 1)
    ON CONFLICT (job_id, phase, state, attempted) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_deleted AFTER DELETE ON job_executions BEGIN
    UPDATE job_counts SET n = n - 1
    WHERE job_id = old.job_id AND phase = old.phase AND state = old.state AND attempted = (old.attempts > 0);
END;

-- A page of a job's executions in one state, by device name.
DROP INDEX job_executions_state;
CREATE INDEX job_executions_job_state ON job_executions (job_id, state, device_name);
-- Pacing: the notifications of the last minute and the latest one.
CREATE INDEX job_executions_notified ON job_executions (job_id, notified_at) WHERE notified_at IS NOT NULL;
-- Abort criteria: the executions ended since a time.
CREATE INDEX job_executions_finished ON job_executions (job_id, finished_at) WHERE attempts > 0 AND finished_at IS NOT NULL;
-- A claim starts from the devices online on this node.
CREATE INDEX devices_online ON devices (product_id, node, name) WHERE online;
