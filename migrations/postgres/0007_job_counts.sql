-- Jobs of a million devices: a job's executions counted per phase, state
-- and whether attempted (attempts > 0), kept up to date by the database in
-- the transaction of every change, so that counts and pacing read a few
-- rows instead of every execution.
--
-- A change appends its differences to job_count_deltas, whose rows nothing
-- ever updates: concurrent reports of one job take no lock on a shared
-- counter row. A claim (which holds its job's row) folds the deltas into
-- job_counts; a reader adds both.
CREATE TABLE job_counts (
    job_id    text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    phase     integer NOT NULL,
    state     text NOT NULL,
    attempted boolean NOT NULL,
    n         bigint NOT NULL,
    PRIMARY KEY (job_id, phase, state, attempted)
);

CREATE TABLE job_count_deltas (
    job_id    text NOT NULL,
    phase     integer NOT NULL,
    state     text NOT NULL,
    attempted boolean NOT NULL,
    n         bigint NOT NULL
);

CREATE INDEX job_count_deltas_job ON job_count_deltas (job_id);

-- One statement's rows are counted once, per statement, from its
-- transition tables.
CREATE FUNCTION job_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (job_id, phase, state, attempted, n)
    SELECT job_id, phase, state, attempts > 0, count(*) FROM inserted GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

CREATE FUNCTION job_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (job_id, phase, state, attempted, n)
    SELECT job_id, phase, state, attempted, sum(n) FROM (
        SELECT job_id, phase, state, attempts > 0 AS attempted, -1 AS n FROM before
        UNION ALL
        SELECT job_id, phase, state, attempts > 0, 1 FROM after
    ) c GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION job_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (job_id, phase, state, attempted, n)
    SELECT job_id, phase, state, attempts > 0, -count(*) FROM deleted
    WHERE EXISTS (SELECT 1 FROM jobs WHERE jobs.id = deleted.job_id) GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END $$;

CREATE TRIGGER job_counts_inserted AFTER INSERT ON job_executions
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION job_counts_inserted();
CREATE TRIGGER job_counts_updated AFTER UPDATE ON job_executions
    REFERENCING OLD TABLE AS before NEW TABLE AS after FOR EACH STATEMENT EXECUTE FUNCTION job_counts_updated();
CREATE TRIGGER job_counts_deleted AFTER DELETE ON job_executions
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION job_counts_deleted();

-- The executions there are now.
INSERT INTO job_counts (job_id, phase, state, attempted, n)
SELECT job_id, phase, state, attempts > 0, count(*) FROM job_executions GROUP BY 1, 2, 3, 4;

-- A page of a job's executions in one state, by device name.
DROP INDEX job_executions_state;
CREATE INDEX job_executions_job_state ON job_executions (job_id, state, device_name);
-- Pacing: the notifications of the last minute and the latest one.
CREATE INDEX job_executions_notified ON job_executions (job_id, notified_at) WHERE notified_at IS NOT NULL;
-- Abort criteria: the executions ended since a time.
CREATE INDEX job_executions_finished ON job_executions (job_id, finished_at) WHERE attempts > 0 AND finished_at IS NOT NULL;
-- A claim starts from the devices online on its replica, which are few
-- beside a product's devices; so does a replica's heartbeat.
CREATE INDEX devices_online ON devices (product_id, node, name) WHERE online;
