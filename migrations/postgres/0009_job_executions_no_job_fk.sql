-- A job's executions are inserted only by the transaction that creates the
-- job or holds its row (JobCreate, JobExecutionsAdd), and neither jobs nor
-- products are ever deleted; the foreign key to jobs checked each inserted
-- row once more, one lookup per row: a third of the time it took to create
-- a job over a million devices (bench/README.md, "One million devices").
ALTER TABLE job_executions DROP CONSTRAINT IF EXISTS job_executions_job_id_fkey;
