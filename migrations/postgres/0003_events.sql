-- The event log: every change appends here in its own transaction. seq is
-- taken from event_seq's one row as the transaction's last statement, so
-- the row lock orders commits and seq grows in commit order: a reader
-- following "after seq" never misses a row committed later.
CREATE TABLE event_seq (n bigint NOT NULL);
INSERT INTO event_seq (n) VALUES (0);

CREATE TABLE events (
    seq         bigint PRIMARY KEY,
    type        text NOT NULL,
    product_id  text NOT NULL DEFAULT '',
    job_id      text NOT NULL DEFAULT '',
    device_name text NOT NULL DEFAULT '',
    data        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL
);

CREATE INDEX events_product ON events (product_id, seq);
CREATE INDEX events_job ON events (job_id, seq) WHERE job_id <> '';
CREATE INDEX events_created ON events (created_at);
CREATE INDEX device_events_created ON device_events (created_at);
