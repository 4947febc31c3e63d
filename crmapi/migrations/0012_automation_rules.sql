-- Automation rules (issue 12): `trigger` becomes JSON ({"resource", "on", "fields"}), rules get a read-only
-- `problem`, and automation_runs records each (rule, change) a rule acted on, at most once.
-- Every rule stored before this migration had a trigger *name* (TEXT), so none fits the new shape: each is
-- kept, its trigger kept as a JSON string, disabled, and `problem` says why. Nothing is dropped.
-- SQLite cannot change a column's type: the table is rebuilt (nothing refers to it).
CREATE TABLE automation_rules_0012 (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    trigger JSONB,
    conditions JSONB,
    actions JSONB,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    problem TEXT,
    UNIQUE (organization_id, id)
);
INSERT INTO automation_rules_0012
    (id, organization_id, name, enabled, trigger, conditions, actions, created_at, updated_at, problem)
SELECT id, organization_id, name, FALSE, CASE WHEN trigger IS NULL THEN NULL ELSE json_quote(trigger) END,
       conditions, actions, created_at, updated_at,
       CASE WHEN trigger IS NULL
            THEN 'trigger: this rule was stored before rules had a shape and has no trigger; set trigger, conditions and actions to enable it'
            ELSE 'trigger: this rule was stored before rules had a shape; its trigger is a name, not {"resource", "on", "fields"}; set trigger, conditions and actions to enable it'
       END
FROM automation_rules;
DROP TABLE automation_rules;
ALTER TABLE automation_rules_0012 RENAME TO automation_rules;

-- One row per (rule, change) a rule acted on: written in the same transaction as the rule's actions, so a
-- crash and a retry never act twice. depth: the depth of the change (0: made by a user).
-- status: applied, failed (nothing applied; `error` says why) or stopped (depth limit; `error` says so).
-- NOTE: no foreign key to automation_rules: a deleted rule's runs stay as the log of what it did.
CREATE TABLE IF NOT EXISTS automation_runs (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    rule_id TEXT NOT NULL,
    change_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    record_id TEXT NOT NULL,
    depth INTEGER NOT NULL,
    status TEXT NOT NULL,
    results JSONB,
    error TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (rule_id, change_id),
    UNIQUE (organization_id, id)
);
CREATE INDEX IF NOT EXISTS automation_runs_org_created ON automation_runs (organization_id, created_at, id);
