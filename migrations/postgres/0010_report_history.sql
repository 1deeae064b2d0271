-- Every stored report appends a row to device_events, so each index and
-- check on it is paid once per report (bench/README.md, "A cheaper report path").
--
-- The foreign key to devices checked each appended row with a lookup that
-- also locked the device's row once more (FOR KEY SHARE, a WAL record per
-- report): about a third of a report batch's time. Rows are appended only
-- by transactions that hold the device's row (reports lock it, presence
-- updates it) and DeviceDelete removes a device's history itself, after
-- the device's row, so no row outlives its device.
ALTER TABLE device_events DROP CONSTRAINT IF EXISTS device_events_product_id_device_name_fkey;

-- Pruning by age reads both logs by created_at, which grows with the
-- insertion order: a block range index serves it at a fraction of a
-- B-tree's cost per appended row.
DROP INDEX device_events_created;
CREATE INDEX device_events_created ON device_events USING brin (created_at);
DROP INDEX events_created;
CREATE INDEX events_created ON events USING brin (created_at);
