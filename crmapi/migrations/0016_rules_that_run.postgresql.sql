-- Automation rules that run (issue 12): see 0016_rules_that_run.sql. PostgreSQL alters webhook_deliveries in place.
ALTER TABLE webhook_deliveries ALTER COLUMN webhook_id DROP NOT NULL;
ALTER TABLE webhook_deliveries ADD COLUMN rule_id TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN url TEXT;

CREATE TABLE IF NOT EXISTS automation_cursors (
    organization_id TEXT PRIMARY KEY REFERENCES organizations (id),
    seq BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS automation_rule_secrets (
    rule_id TEXT PRIMARY KEY REFERENCES automation_rules (id) ON DELETE CASCADE,
    secret TEXT NOT NULL
);

-- Organizations that have rules get their cursor now: their rules act on the changes from here on.
INSERT INTO automation_cursors (organization_id, seq)
SELECT DISTINCT r.organization_id, COALESCE(c.n, 0)
FROM automation_rules r LEFT JOIN change_counters c ON c.organization_id = r.organization_id;
