-- Job engine v2: executions are compare-and-set on a revision; they outlive
-- their device (a deleted device stays in its jobs' records); rolled_back
-- is an ended state; jobs carry a rollback window.

ALTER TABLE job_executions ADD COLUMN rev integer NOT NULL DEFAULT 0;
ALTER TABLE job_executions DROP CONSTRAINT IF EXISTS job_executions_product_id_device_name_fkey;
ALTER TABLE jobs ADD COLUMN rollback_window_seconds integer NOT NULL DEFAULT 3600;

DROP INDEX job_executions_active;
CREATE UNIQUE INDEX job_executions_active ON job_executions (product_id, device_name)
    WHERE state IN ('queued', 'notified', 'downloading', 'burning');

-- A device is notified only once it has reported its version in its
-- current connection (a notification sooner crosses its report_version,
-- which then asks for it again).
ALTER TABLE devices ADD COLUMN ready boolean NOT NULL DEFAULT false;
UPDATE devices SET ready = online;

-- A device's upgrade progress speaks the job states' words: fail is failed.
UPDATE devices SET upgrade_state = 'failed' WHERE upgrade_state = 'fail';
