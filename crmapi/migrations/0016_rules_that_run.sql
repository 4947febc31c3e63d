-- Automation rules that run (issue 12): the rules' own cursor over the change feed, each rule's signing secret
-- for its webhook actions, and the deliveries of those actions in the webhook outbox (webhook_id NULL, rule_id
-- and url set). SQLite cannot drop a NOT NULL: webhook_deliveries is rebuilt (nothing refers to it).
CREATE TABLE webhook_deliveries_0016 (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    webhook_id TEXT REFERENCES webhooks (id) ON DELETE CASCADE,
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
    rule_id TEXT,
    url TEXT,
    UNIQUE (webhook_id, change_id)
);
INSERT INTO webhook_deliveries_0016
    (id, organization_id, webhook_id, change_id, seq, event_type, payload, status, attempts, next_attempt_at,
     locked_until, last_status_code, last_duration_ms, last_error, attempt_log, delivered_at, created_at, updated_at)
SELECT id, organization_id, webhook_id, change_id, seq, event_type, payload, status, attempts, next_attempt_at,
       locked_until, last_status_code, last_duration_ms, last_error, attempt_log, delivered_at, created_at, updated_at
FROM webhook_deliveries;
DROP TABLE webhook_deliveries;
ALTER TABLE webhook_deliveries_0016 RENAME TO webhook_deliveries;
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_org ON webhook_deliveries (organization_id, id);

-- The rules' cursor: the organization's changes up to seq have been handed to its rules. Apart from the
-- webhooks' fan-out cursor, so that neither can hold the other up.
CREATE TABLE IF NOT EXISTS automation_cursors (
    organization_id TEXT PRIMARY KEY REFERENCES organizations (id),
    seq BIGINT NOT NULL
);

-- A rule's secret, signing its webhook actions (one per rule; shown once). Apart from the rule, like
-- webhook_secrets, so no read of automation_rules can carry it.
CREATE TABLE IF NOT EXISTS automation_rule_secrets (
    rule_id TEXT PRIMARY KEY REFERENCES automation_rules (id) ON DELETE CASCADE,
    secret TEXT NOT NULL
);

-- Organizations that have rules get their cursor now: their rules act on the changes from here on.
INSERT INTO automation_cursors (organization_id, seq)
SELECT DISTINCT r.organization_id, COALESCE(c.n, 0)
FROM automation_rules r LEFT JOIN change_counters c ON c.organization_id = r.organization_id;
