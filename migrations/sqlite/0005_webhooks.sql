-- Webhooks: endpoints that receive the event log, each from its own
-- cursor (the last sequence number given to it). The delivery queue
-- itself is River's (its own river_* tables, migrated by rivermigrate
-- after these files); the cursor here is what keeps order and loses
-- nothing.
CREATE TABLE webhooks (
    id              text PRIMARY KEY,
    url             text NOT NULL,
    description     text NOT NULL DEFAULT '',
    event_types     text NOT NULL DEFAULT '', -- comma-separated; empty: all
    product_id      text NOT NULL DEFAULT '',
    job_id          text NOT NULL DEFAULT '',
    enabled         integer NOT NULL,
    disabled_reason text NOT NULL DEFAULT '',
    secret          text NOT NULL,
    cursor_seq      integer NOT NULL,
    failing_since   text,
    failures        integer NOT NULL DEFAULT 0,
    rev             integer NOT NULL DEFAULT 0,
    created_at      text NOT NULL,
    updated_at      text NOT NULL
);

-- One row per event and webhook: its attempts and the last outcome.
CREATE TABLE webhook_deliveries (
    webhook_id   text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    seq          integer NOT NULL,
    event_type   text NOT NULL,
    attempts     integer NOT NULL,
    status_code  integer NOT NULL,
    error        text NOT NULL DEFAULT '',
    latency_ms   integer NOT NULL,
    delivered_at text,
    created_at   text NOT NULL,
    updated_at   text NOT NULL,
    PRIMARY KEY (webhook_id, seq)
);

CREATE INDEX webhook_deliveries_updated ON webhook_deliveries (updated_at);
