-- Change history (issue 12): one row per record a write touched, written in the write's own transaction.
-- seq numbers an organization's changes. It is taken from change_counters by the write's last statements;
-- the counter row stays locked until COMMIT, so an organization's changes commit in seq order and the
-- feed (GET /api/changes?after=) never skips one. Counters are never pruned: a seq is never given twice.
-- data: an update's changed fields {"field": [old, new]}; a create's new record, a delete's last one.
-- JSON, not JSONB: stored as written (no conversion), fields in the record's order; never queried into.
-- NOTE: no foreign key to organizations on changes: a write would check it once per change row.
CREATE TABLE IF NOT EXISTS changes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    resource TEXT NOT NULL,
    record_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    actor TEXT NOT NULL,
    user_id TEXT,
    token_id TEXT,
    changed_at TIMESTAMPTZ NOT NULL,
    data JSON,
    UNIQUE (organization_id, seq)
);
CREATE INDEX IF NOT EXISTS changes_org_record ON changes (organization_id, resource, record_id, seq);
CREATE INDEX IF NOT EXISTS changes_org_resource ON changes (organization_id, resource, seq);

CREATE TABLE IF NOT EXISTS change_counters (
    organization_id TEXT PRIMARY KEY REFERENCES organizations (id),
    n BIGINT NOT NULL
);
