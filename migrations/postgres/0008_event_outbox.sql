-- Events are written to event_outbox in the transaction of the change they
-- record, without a lock, and moved into events by the sequencer: one
-- transaction at a time (event_seq's row lock) takes every committed row in
-- id order and numbers it. seq still grows in commit order (the order the
-- sequencer commits), so a reader following "after seq" misses nothing,
-- and writers no longer queue behind each other's commits for event_seq.
CREATE TABLE event_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type        text NOT NULL,
    product_id  text NOT NULL DEFAULT '',
    job_id      text NOT NULL DEFAULT '',
    device_name text NOT NULL DEFAULT '',
    data        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL
);
