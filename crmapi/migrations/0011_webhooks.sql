-- Webhooks (issue 12): an organization's endpoints, their secrets, the fan-out cursor and the delivery outbox.
-- since_seq: changes numbered above it are delivered (the organization's counter when the webhook was made).
-- failing_since: the first failed attempt since the last success; disabled_reason: why the worker disabled it.
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    url TEXT NOT NULL,
    events JSONB NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    description TEXT,
    disabled_reason TEXT,
    failing_since TIMESTAMPTZ,
    since_seq BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (organization_id, id)
);

-- NOTE: the signing secret lives apart from its webhook, so no read of the webhooks resource (GET, list,
-- history, the changes feed) can ever carry it: the catalog never sees the column.
CREATE TABLE IF NOT EXISTS webhook_secrets (
    webhook_id TEXT PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    secret TEXT NOT NULL
);

-- The fan-out cursor: the organization's changes up to seq have their delivery rows.
CREATE TABLE IF NOT EXISTS webhook_cursors (
    organization_id TEXT PRIMARY KEY REFERENCES organizations (id),
    seq BIGINT NOT NULL
);

-- The outbox: one row per (webhook, change). payload: the JSON body sent (the same on every attempt);
-- locked_until: the lease of the worker sending it; attempts: in the current round (redeliver starts one);
-- attempt_log: every attempt [{at, status_code, duration_ms, error}].
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    change_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    locked_until TIMESTAMPTZ,
    last_status_code INTEGER,
    last_duration_ms INTEGER,
    last_error TEXT,
    attempt_log JSONB,
    delivered_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (webhook_id, change_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_org ON webhook_deliveries (organization_id, id);
