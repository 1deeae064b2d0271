-- Creating a job over a million devices inserts a million executions: each
-- costs less (bench/README.md, "One million devices").
--
-- A job's executions are inserted only by the transaction that creates the
-- job or holds its row (JobCreate, JobExecutionsAdd), and neither jobs nor
-- products are ever deleted; the foreign key to jobs checked each inserted
-- row once more, one lookup per row: a third of the time it took.
ALTER TABLE job_executions DROP CONSTRAINT IF EXISTS job_executions_job_id_fkey;

-- A device's executions, for its current one, are looked up by two partial
-- indexes: its active one (job_executions_active, unique) and its ended
-- ones, latest first (job_executions_ended). A new job's executions, all
-- queued but for the devices already on its version, go into one of the
-- two instead of also into an index of every execution.
CREATE INDEX job_executions_ended ON job_executions (product_id, device_name, created_at)
    WHERE state NOT IN ('queued', 'notified', 'downloading', 'burning');
DROP INDEX job_executions_device;
