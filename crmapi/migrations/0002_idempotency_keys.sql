-- Idempotency-Key: the first answer to a POST, kept so that a retry replays it instead of writing twice.
-- The row is written in the same transaction as the write it remembers.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    id TEXT NOT NULL,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    fingerprint TEXT NOT NULL,
    status INTEGER,
    response JSONB,
    location TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (organization_id, id)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);
