-- The event log: every change appends here in its own transaction; SQLite's
-- one writer makes seq grow in commit order.
CREATE TABLE events (
    seq         integer PRIMARY KEY AUTOINCREMENT,
    type        text NOT NULL,
    product_id  text NOT NULL DEFAULT '',
    job_id      text NOT NULL DEFAULT '',
    device_name text NOT NULL DEFAULT '',
    data        text NOT NULL DEFAULT '',
    created_at  text NOT NULL
);

CREATE INDEX events_product ON events (product_id, seq);
CREATE INDEX events_job ON events (job_id, seq) WHERE job_id <> '';
CREATE INDEX events_created ON events (created_at);
CREATE INDEX device_events_created ON device_events (created_at);
