-- API tokens get a scope, an expiry, a last-used time, who created them,
-- where they came from and a revocation time; a revoked token's row stays
-- so that its secret is never accepted, or re-added from OTAD_API_TOKEN,
-- again. Tokens from before had every right: they are admin tokens.
ALTER TABLE api_tokens ADD COLUMN scope text NOT NULL DEFAULT 'admin';
ALTER TABLE api_tokens ADD COLUMN origin text NOT NULL DEFAULT 'api';
ALTER TABLE api_tokens ADD COLUMN expires_at text;
ALTER TABLE api_tokens ADD COLUMN last_used_at text;
ALTER TABLE api_tokens ADD COLUMN created_by text NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN revoked_at text;
UPDATE api_tokens SET origin = 'env', name = 'bootstrap' WHERE name = 'OTAD_API_TOKEN';
UPDATE api_tokens SET origin = 'generated' WHERE origin = 'api';

-- The audit log: console actions that changed something or were refused
-- (401, 403). Pruned with the event log (OTAD_EVENT_RETENTION).
CREATE TABLE audit_log (
    id          integer PRIMARY KEY AUTOINCREMENT,
    token_id    text NOT NULL DEFAULT '',
    token_name  text NOT NULL DEFAULT '',
    method      text NOT NULL,
    route       text NOT NULL DEFAULT '',
    params      text NOT NULL DEFAULT '{}',
    path        text NOT NULL DEFAULT '',
    resource    text NOT NULL DEFAULT '',
    status      integer NOT NULL,
    client_addr text NOT NULL DEFAULT '',
    created_at  text NOT NULL
);

CREATE INDEX audit_log_created ON audit_log (created_at);
