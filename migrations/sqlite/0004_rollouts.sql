-- Rollouts: a job's phases, abort criteria, rate, windows and their
-- progress are one JSON document (ota.JobRollout), every job write is
-- compare-and-set on rev, and each execution belongs to a phase.

ALTER TABLE jobs ADD COLUMN rollout text NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN rev integer NOT NULL DEFAULT 0;
ALTER TABLE job_executions ADD COLUMN phase integer NOT NULL DEFAULT 0;
