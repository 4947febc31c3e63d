-- Secrets the server makes for itself and every worker and host shares, e.g. the key that signs
-- list cursors when CRMAPI_SECRET_KEY is not set. The first process to start inserts it (ON CONFLICT DO
-- NOTHING) and every process reads it back.
CREATE TABLE IF NOT EXISTS server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
