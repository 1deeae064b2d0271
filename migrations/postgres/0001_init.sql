-- otad initial schema (PostgreSQL).

CREATE TABLE products (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL
);

CREATE TABLE devices (
    product_id          text NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    name                text NOT NULL,
    secret              text NOT NULL,
    version             text NOT NULL DEFAULT '',
    online              boolean NOT NULL DEFAULT false,
    last_seen_at        timestamptz,
    disabled            boolean NOT NULL DEFAULT false,
    node                text NOT NULL DEFAULT '',
    upgrade_version     text,
    upgrade_state       text,
    upgrade_percent     integer,
    upgrade_result_code integer,
    upgrade_result_msg  text,
    upgrade_updated_at  timestamptz,
    created_at          timestamptz NOT NULL,
    PRIMARY KEY (product_id, name)
);

CREATE INDEX devices_version ON devices (product_id, version, name);

CREATE TABLE device_events (
    id          bigserial PRIMARY KEY,
    product_id  text NOT NULL,
    device_name text NOT NULL,
    type        text NOT NULL,
    version     text NOT NULL DEFAULT '',
    state       text NOT NULL DEFAULT '',
    percent     integer,
    result_code integer,
    result_msg  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    FOREIGN KEY (product_id, device_name) REFERENCES devices (product_id, name) ON DELETE CASCADE
);

CREATE INDEX device_events_device ON device_events (product_id, device_name, id);

CREATE TABLE firmware (
    product_id  text NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    version     text NOT NULL,
    size        bigint NOT NULL,
    md5         text NOT NULL,
    sha256      text NOT NULL,
    description text NOT NULL DEFAULT '',
    blob_key    text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (product_id, version)
);

CREATE TABLE jobs (
    id               text PRIMARY KEY,
    product_id       text NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    firmware_version text NOT NULL,
    status           text NOT NULL,
    timeout_seconds  integer NOT NULL,
    max_retries      integer NOT NULL,
    max_concurrent   integer NOT NULL DEFAULT 0,
    max_per_minute   integer NOT NULL DEFAULT 0,
    retry_backoff_seconds integer NOT NULL DEFAULT 30,
    targets          text NOT NULL DEFAULT '{}',
    start_at         timestamptz,
    created_at       timestamptz NOT NULL,
    completed_at     timestamptz
);

CREATE INDEX jobs_product ON jobs (product_id, created_at);

CREATE TABLE job_executions (
    job_id          text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    product_id      text NOT NULL,
    device_name     text NOT NULL,
    state           text NOT NULL,
    from_version    text NOT NULL DEFAULT '',
    percent         integer NOT NULL DEFAULT 0,
    attempts        integer NOT NULL DEFAULT 0,
    result_code     integer NOT NULL DEFAULT 0,
    result_msg      text NOT NULL DEFAULT '',
    notified_at     timestamptz,
    next_attempt_at timestamptz,
    deadline_at     timestamptz,
    finished_at     timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (job_id, device_name),
    FOREIGN KEY (product_id, device_name) REFERENCES devices (product_id, name) ON DELETE CASCADE
);

CREATE INDEX job_executions_device ON job_executions (product_id, device_name, created_at);
CREATE INDEX job_executions_state ON job_executions (job_id, state, next_attempt_at);
CREATE INDEX job_executions_deadline ON job_executions (deadline_at) WHERE deadline_at IS NOT NULL;
-- A device is in at most one active job: the database enforces it, so two
-- replicas creating overlapping jobs at once cannot both win.
CREATE UNIQUE INDEX job_executions_active ON job_executions (product_id, device_name)
    WHERE state NOT IN ('done', 'failed', 'timed_out', 'canceled');

CREATE TABLE api_tokens (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    hash       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

-- Settings otad generates once and every replica shares, such as the
-- download URL signing secret.
CREATE TABLE settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Live otad replicas: each refreshes its row; devices held by a replica
-- that stopped refreshing (it crashed) are marked offline by the others.
CREATE TABLE nodes (
    name    text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
