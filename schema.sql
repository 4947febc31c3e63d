-- crmapi schema: one file for SQLite and PostgreSQL.
--
-- Portable on purpose: the same statements run on both engines. Types are written with their
-- PostgreSQL names; on SQLite they pick the affinity we want (TIMESTAMPTZ and DATE hold ISO 8601
-- text, BOOLEAN holds 0/1, JSONB holds JSON text) and crmapi reads each column's declared type
-- back (information_schema / PRAGMA table_xinfo) to validate and convert values.
-- Every record belongs to one organization; references between records are composite foreign
-- keys on (organization_id, id), so the database itself forbids links across organizations.

CREATE TABLE IF NOT EXISTS organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS crm_users (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    first_name TEXT,
    last_name TEXT,
    email TEXT NOT NULL,
    administrator BOOLEAN NOT NULL DEFAULT FALSE,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (organization_id, id),
    UNIQUE (organization_id, email)
);

CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    FOREIGN KEY (organization_id, user_id) REFERENCES crm_users (organization_id, id)
);

CREATE TABLE IF NOT EXISTS companies (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    domain TEXT,
    website TEXT,
    category TEXT,
    size BIGINT,
    phone TEXT,
    address TEXT,
    city TEXT,
    country TEXT,
    description TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    archived_at TIMESTAMPTZ,
    external_id TEXT,
    UNIQUE (organization_id, id)
);
CREATE INDEX IF NOT EXISTS companies_org_name ON companies (organization_id, name, id) WHERE archived_at IS NULL;
-- external_id: the record's id in the system it is loaded from, unique per organization among the
-- records that have one: the arbiter of `POST ...?on_conflict=external_id` (INSERT ... ON CONFLICT).
CREATE UNIQUE INDEX IF NOT EXISTS companies_org_external_id ON companies (organization_id, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS contacts (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    first_name TEXT,
    last_name TEXT,
    email TEXT,
    phone TEXT,
    title TEXT,
    status TEXT,
    city TEXT,
    company_id TEXT,
    linkedin_url TEXT,
    background TEXT,
    tags JSONB NOT NULL DEFAULT '[]',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    archived_at TIMESTAMPTZ,
    external_id TEXT,
    -- which reverse relations may have children (1 notes, 2 tasks, 4 deals; never cleared): see migration 0025
    children_seen INTEGER NOT NULL DEFAULT 0,
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, company_id) REFERENCES companies (organization_id, id)
);
-- Composite indexes that lead with the organization and end with id serve the documented
-- filter + sort combinations without sorting the matches; they hold live rows only, so counts
-- and skipped rows are read from the index alone. (PostgreSQL indexes the nullable
-- sort columns NULLS FIRST, the order crmapi lists in: see crmapi/migrations/0004_list_indexes.postgresql.sql.)
CREATE INDEX IF NOT EXISTS contacts_org_last_name ON contacts (organization_id, last_name, id) WHERE archived_at IS NULL;
CREATE INDEX IF NOT EXISTS contacts_org_city_last_name ON contacts (organization_id, city, last_name, id) WHERE archived_at IS NULL;
CREATE INDEX IF NOT EXISTS contacts_org_status_last_name ON contacts (organization_id, status, last_name, id) WHERE archived_at IS NULL;
CREATE INDEX IF NOT EXISTS contacts_org_created ON contacts (organization_id, created_at, id) WHERE archived_at IS NULL;
CREATE INDEX IF NOT EXISTS contacts_org_company_newest ON contacts (organization_id, company_id, archived_at, created_at, id);
CREATE INDEX IF NOT EXISTS contacts_org_email ON contacts (organization_id, email, id);
CREATE UNIQUE INDEX IF NOT EXISTS contacts_org_external_id ON contacts (organization_id, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS deals (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    company_id TEXT,
    contact_ids JSONB NOT NULL DEFAULT '[]',
    status TEXT,
    amount NUMERIC(14, 2),
    category TEXT,
    description TEXT,
    expected_closing_date DATE,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    archived_at TIMESTAMPTZ,
    external_id TEXT,
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, company_id) REFERENCES companies (organization_id, id)
);
CREATE INDEX IF NOT EXISTS deals_org_company_newest ON deals (organization_id, company_id, archived_at, created_at, id);
CREATE INDEX IF NOT EXISTS deals_org_status ON deals (organization_id, status);
CREATE INDEX IF NOT EXISTS deals_org_created ON deals (organization_id, created_at, id) WHERE archived_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS deals_org_external_id ON deals (organization_id, external_id) WHERE external_id IS NOT NULL;
-- The contacts of each deal (contact_ids), indexed by contact, for a contact's deals (migration 0018).
-- NOTE: a statement whose comment starts `-- sqlite only` or `-- postgresql only` is that database's alone:
-- SQLite cannot index a JSON array's elements, so it keeps the pairs in a side table its triggers maintain.
-- sqlite only
CREATE TABLE IF NOT EXISTS deal_contacts (
    organization_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    deal_id TEXT NOT NULL,
    PRIMARY KEY (organization_id, contact_id, deal_id)
) WITHOUT ROWID;
-- sqlite only
CREATE INDEX IF NOT EXISTS deal_contacts_deal ON deal_contacts (deal_id);
-- sqlite only
CREATE TRIGGER IF NOT EXISTS deal_contacts_insert AFTER INSERT ON deals BEGIN
    INSERT OR IGNORE INTO deal_contacts (organization_id, contact_id, deal_id)
        SELECT NEW.organization_id, value, NEW.id
        FROM json_each(CASE WHEN json_valid(NEW.contact_ids) THEN NEW.contact_ids ELSE '[]' END) WHERE type = 'text';
END;
-- sqlite only
CREATE TRIGGER IF NOT EXISTS deal_contacts_update AFTER UPDATE OF id, organization_id, contact_ids ON deals BEGIN
    DELETE FROM deal_contacts WHERE deal_id = OLD.id;
    INSERT OR IGNORE INTO deal_contacts (organization_id, contact_id, deal_id)
        SELECT NEW.organization_id, value, NEW.id
        FROM json_each(CASE WHEN json_valid(NEW.contact_ids) THEN NEW.contact_ids ELSE '[]' END) WHERE type = 'text';
END;
-- sqlite only
CREATE TRIGGER IF NOT EXISTS deal_contacts_delete AFTER DELETE ON deals BEGIN
    DELETE FROM deal_contacts WHERE deal_id = OLD.id;
END;
-- postgresql only
CREATE INDEX IF NOT EXISTS deals_contact_ids ON deals USING GIN (contact_ids jsonb_path_ops);

CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    text TEXT,
    type TEXT,
    due_date DATE,
    done_date DATE,
    contact_id TEXT,
    company_id TEXT,
    deal_id TEXT,
    assignee_id TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, contact_id) REFERENCES contacts (organization_id, id),
    FOREIGN KEY (organization_id, company_id) REFERENCES companies (organization_id, id),
    FOREIGN KEY (organization_id, deal_id) REFERENCES deals (organization_id, id),
    FOREIGN KEY (organization_id, assignee_id) REFERENCES crm_users (organization_id, id)
);
CREATE INDEX IF NOT EXISTS tasks_org_contact_newest ON tasks (organization_id, contact_id, created_at, id);
CREATE INDEX IF NOT EXISTS tasks_org_company_newest ON tasks (organization_id, company_id, created_at, id);
CREATE INDEX IF NOT EXISTS tasks_org_deal_newest ON tasks (organization_id, deal_id, created_at, id);
CREATE INDEX IF NOT EXISTS tasks_org_assignee ON tasks (organization_id, assignee_id);

CREATE TABLE IF NOT EXISTS contact_notes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    contact_id TEXT NOT NULL,
    title TEXT,
    text TEXT,
    date TIMESTAMPTZ,
    status TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, contact_id) REFERENCES contacts (organization_id, id)
);
CREATE INDEX IF NOT EXISTS contact_notes_org_contact_newest ON contact_notes (organization_id, contact_id, created_at, id);

CREATE TABLE IF NOT EXISTS deal_notes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    deal_id TEXT NOT NULL,
    title TEXT,
    text TEXT,
    date TIMESTAMPTZ,
    status TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, deal_id) REFERENCES deals (organization_id, id)
);
CREATE INDEX IF NOT EXISTS deal_notes_org_deal_newest ON deal_notes (organization_id, deal_id, created_at, id);

CREATE TABLE IF NOT EXISTS company_notes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    company_id TEXT NOT NULL,
    title TEXT,
    text TEXT,
    date TIMESTAMPTZ,
    status TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, company_id) REFERENCES companies (organization_id, id)
);
CREATE INDEX IF NOT EXISTS company_notes_org_company_newest ON company_notes (organization_id, company_id, created_at, id);

CREATE TABLE IF NOT EXISTS tags (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    color TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (organization_id, id),
    UNIQUE (organization_id, name)
);

CREATE TABLE IF NOT EXISTS configuration (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    key TEXT NOT NULL,
    value JSONB,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (organization_id, id),
    UNIQUE (organization_id, key)
);

CREATE TABLE IF NOT EXISTS automation_rules (
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

-- One row per (rule, change) an automation rule acted on, written in the transaction of the rule's actions
-- (UNIQUE (rule_id, change_id): a crash and a retry never act twice). See migration 0012.
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

-- Custom objects: each organization's own record types. A definition names a real table
-- (co_<definition id>) with the server-managed columns plus one typed column per field;
-- `version` grows with every change so that every worker notices a new whitelist at once.
CREATE TABLE IF NOT EXISTS custom_objects (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    slug TEXT NOT NULL,
    label TEXT,
    table_name TEXT NOT NULL UNIQUE,
    fields JSONB NOT NULL DEFAULT '[]',
    version BIGINT NOT NULL DEFAULT 1,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    archived_at TIMESTAMPTZ,
    UNIQUE (organization_id, slug)
);

-- Read-only summaries. Counts are COALESCEd scalar sub-queries, so they are 0, never NULL.
CREATE VIEW companies_summary AS
SELECT
    c.id, c.organization_id, c.name, c.domain, c.website, c.category, c.size, c.phone,
    c.address, c.city, c.country, c.description, c.created_at, c.updated_at, c.archived_at, c.external_id,
    (SELECT COUNT(*) FROM contacts ct
      WHERE ct.organization_id = c.organization_id AND ct.company_id = c.id
        AND ct.archived_at IS NULL) AS nb_contacts,
    (SELECT COUNT(*) FROM deals d
      WHERE d.organization_id = c.organization_id AND d.company_id = c.id
        AND d.archived_at IS NULL) AS nb_deals
FROM companies c;

CREATE VIEW contacts_summary AS
SELECT
    ct.id, ct.organization_id, ct.first_name, ct.last_name, ct.email, ct.phone, ct.title,
    ct.status, ct.city, ct.company_id, ct.linkedin_url, ct.background, ct.tags,
    ct.created_at, ct.updated_at, ct.archived_at, ct.external_id,
    co.name AS company_name,
    (SELECT COUNT(*) FROM tasks t
      WHERE t.organization_id = ct.organization_id AND t.contact_id = ct.id
        AND t.done_date IS NULL) AS nb_tasks
FROM contacts ct
LEFT JOIN companies co ON co.organization_id = ct.organization_id AND co.id = ct.company_id;

-- Idempotency-Key: the first answer to a POST, kept so that a retry replays it instead of writing twice.
-- The row is written in the same transaction as the write it remembers. `headers`: the answer's headers
-- besides Location (an upsert's X-Upsert-Result).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    id TEXT NOT NULL,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    fingerprint TEXT NOT NULL,
    status INTEGER,
    response JSONB,
    location TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    headers JSONB,
    PRIMARY KEY (organization_id, id)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);

-- The number of live (non-archived) rows per organization and table, kept in the same
-- transaction as every write: an unfiltered exact total is one indexed read, not a scan. It is the sum of
-- the counter's slots: on PostgreSQL a write adds to its connection's slot (crmapi.sqlbuild.COUNT_SLOTS), so
-- an organization's writes do not queue on one row; SQLite uses slot 0 only.
CREATE TABLE IF NOT EXISTS row_counts (
    organization_id TEXT NOT NULL,
    table_name TEXT NOT NULL,
    n BIGINT NOT NULL,
    slot INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (organization_id, table_name, slot)
);

-- Secrets the server makes for itself and every worker and host shares: the key that signs list
-- cursors when CRMAPI_SECRET_KEY is not set (inserted by the first process to start, then read back).
CREATE TABLE IF NOT EXISTS server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Change history: one row per record a write touched, written in the write's own transaction. seq numbers
-- an organization's changes in the order the feed shows them. SQLite: taken from change_counters by the
-- write's last statements (the counter row, locked until COMMIT, makes an organization's changes commit in
-- seq order). PostgreSQL: a write stores its changes unnumbered (seq NULL) with a tick from change_ticks, and
-- the first reader numbers the committed ones in tick order under the change_counters row (crmapi.history):
-- no organization-wide lock is held by a write. data: an update's changed
-- fields {"field": [old, new]}, a create's new record, a delete's last one (JSON: stored as written, never
-- queried into). No foreign key to organizations on changes: a write would check it once per change row.
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
-- postgresql only
ALTER TABLE changes ALTER COLUMN seq DROP NOT NULL;
-- postgresql only
ALTER TABLE changes ADD COLUMN tick BIGINT;
-- postgresql only
CREATE SEQUENCE IF NOT EXISTS change_ticks;
-- postgresql only
CREATE INDEX IF NOT EXISTS changes_unnumbered ON changes (organization_id, tick) WHERE seq IS NULL;
-- PostgreSQL: the indexes on seq hold numbered changes only (nothing reads an unnumbered one through them).
-- postgresql only
DROP INDEX changes_org_record;
-- postgresql only
CREATE INDEX changes_org_record ON changes (organization_id, resource, record_id, seq) WHERE seq IS NOT NULL;
-- postgresql only
DROP INDEX changes_org_resource;
-- postgresql only
CREATE INDEX changes_org_resource ON changes (organization_id, resource, seq) WHERE seq IS NOT NULL;
-- postgresql only
ALTER TABLE changes DROP CONSTRAINT changes_organization_id_seq_key;
-- postgresql only
CREATE UNIQUE INDEX changes_org_seq ON changes (organization_id, seq) WHERE seq IS NOT NULL;

CREATE TABLE IF NOT EXISTS change_counters (
    organization_id TEXT PRIMARY KEY REFERENCES organizations (id),
    n BIGINT NOT NULL
);

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

-- The outbox: one row per (webhook, change), or per webhook action of an automation rule's run (webhook_id
-- NULL; rule_id and url say whose and where). payload: the JSON body sent (the same on every attempt);
-- locked_until: the lease of the worker sending it; attempts: in the current round (redeliver starts one);
-- attempt_log: every attempt [{at, status_code, duration_ms, error}].
CREATE TABLE IF NOT EXISTS webhook_deliveries (
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
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_org ON webhook_deliveries (organization_id, id);

-- Automation rules that run (issue 12): the rules' own cursor over the change feed (apart from the webhooks'
-- fan-out cursor, so that neither holds the other up), and each rule's secret for its webhook actions (apart
-- from the rule, so no read of automation_rules can carry it).
CREATE TABLE IF NOT EXISTS automation_cursors (
    organization_id TEXT PRIMARY KEY REFERENCES organizations (id),
    seq BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS automation_rule_secrets (
    rule_id TEXT PRIMARY KEY REFERENCES automation_rules (id) ON DELETE CASCADE,
    secret TEXT NOT NULL
);

-- Cached tokens (crmapi/authcache.py): a number that every revocation of a token and every change to a CRM
-- user increments in its own transaction; each process forgets the tokens it verified when it has moved.
CREATE TABLE IF NOT EXISTS auth_generation (
    id INTEGER PRIMARY KEY,
    generation BIGINT NOT NULL
);

-- Search (issue 10): one row per record beside the records (crmapi/search.py folds its text; the store keeps it
-- in the transaction of every write): its organization and archived state, `words` (q), `names` (ranking),
-- `fields` (its text columns folded, a JSON object: the text operators) and `texts` (the same values, one a
-- line: what the trigram indexes read). SQLite: an FTS5 trigram table kept by triggers, without positions
-- (detail=none, migration 0022); PostgreSQL: pg_trgm and a tsvector GIN index (migration 0019's twins), and
-- `prefixes` (the first 1-3 characters of each word: a short q word is one exact lexeme of its index, migration 0029).
-- sqlite only
CREATE TABLE search_texts (
    id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    archived BOOLEAN NOT NULL,
    words TEXT NOT NULL,
    names TEXT NOT NULL,
    fields TEXT NOT NULL,
    texts TEXT NOT NULL,
    UNIQUE (table_name, organization_id, record_id)
);
-- sqlite only
CREATE VIRTUAL TABLE search_texts_trigrams USING fts5(
    words, texts, content='search_texts', content_rowid='id', tokenize='trigram case_sensitive 1', columnsize=0,
    detail=none);
-- sqlite only
CREATE TRIGGER search_texts_inserted AFTER INSERT ON search_texts BEGIN
    INSERT INTO search_texts_trigrams (rowid, words, texts) VALUES (new.id, new.words, new.texts);
END;
-- sqlite only
CREATE TRIGGER search_texts_deleted AFTER DELETE ON search_texts BEGIN
    INSERT INTO search_texts_trigrams (search_texts_trigrams, rowid, words, texts)
    VALUES ('delete', old.id, old.words, old.texts);
END;
-- sqlite only
CREATE TRIGGER search_texts_updated AFTER UPDATE OF words, texts ON search_texts
WHEN old.words <> new.words OR old.texts <> new.texts BEGIN
    INSERT INTO search_texts_trigrams (search_texts_trigrams, rowid, words, texts)
    VALUES ('delete', old.id, old.words, old.texts);
    INSERT INTO search_texts_trigrams (rowid, words, texts) VALUES (new.id, new.words, new.texts);
END;
-- postgresql only
CREATE EXTENSION IF NOT EXISTS pg_trgm;
-- postgresql only
CREATE TABLE search_texts (
    table_name TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    archived BOOLEAN NOT NULL,
    words TEXT NOT NULL,
    names TEXT NOT NULL,
    fields TEXT NOT NULL,
    texts TEXT NOT NULL,
    prefixes TEXT NOT NULL,
    PRIMARY KEY (table_name, organization_id, record_id)
);
-- postgresql only
CREATE INDEX search_texts_trigrams ON search_texts USING gin (texts gin_trgm_ops);
-- postgresql only
CREATE INDEX search_texts_words ON search_texts USING gin (array_to_tsvector(string_to_array(ltrim(words, ' '), '  ')));
-- postgresql only
CREATE INDEX search_texts_prefixes ON search_texts USING gin (array_to_tsvector(string_to_array(ltrim(prefixes, ' '), ' ')));

-- Which of a contact's reverse relations may have children (contacts.children_seen), kept by triggers
-- (migration 0025): SQLite's per row, PostgreSQL's per statement.
-- sqlite only
CREATE TRIGGER IF NOT EXISTS contact_notes_seen AFTER INSERT ON contact_notes BEGIN
    UPDATE contacts SET children_seen = children_seen | 1
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 1 = 0;
END;
-- sqlite only
CREATE TRIGGER IF NOT EXISTS contact_notes_seen_moved AFTER UPDATE OF contact_id, organization_id ON contact_notes BEGIN
    UPDATE contacts SET children_seen = children_seen | 1
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 1 = 0;
END;
-- sqlite only
CREATE TRIGGER IF NOT EXISTS tasks_seen AFTER INSERT ON tasks WHEN NEW.contact_id IS NOT NULL BEGIN
    UPDATE contacts SET children_seen = children_seen | 2
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 2 = 0;
END;
-- sqlite only
CREATE TRIGGER IF NOT EXISTS tasks_seen_moved AFTER UPDATE OF contact_id, organization_id ON tasks
WHEN NEW.contact_id IS NOT NULL BEGIN
    UPDATE contacts SET children_seen = children_seen | 2
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 2 = 0;
END;
-- sqlite only
CREATE TRIGGER IF NOT EXISTS deal_contacts_seen AFTER INSERT ON deal_contacts BEGIN
    UPDATE contacts SET children_seen = children_seen | 4
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 4 = 0;
END;
-- postgresql only
CREATE OR REPLACE FUNCTION contacts_children_seen() RETURNS trigger LANGUAGE plpgsql AS '
DECLARE
    flag INTEGER := TG_ARGV[0]::INTEGER;
    named TEXT[];
BEGIN
    IF TG_TABLE_NAME = ''deals'' THEN
        SELECT array_agg(DISTINCT j.value) INTO named FROM added AS a CROSS JOIN LATERAL jsonb_array_elements_text(
            CASE WHEN jsonb_typeof(a.contact_ids) = ''array'' THEN a.contact_ids ELSE ''[]'' END) AS j (value);
    ELSE
        SELECT array_agg(DISTINCT contact_id) INTO named FROM added WHERE contact_id IS NOT NULL;
    END IF;
    SELECT array_agg(id) INTO named FROM (
        SELECT id FROM contacts WHERE id = ANY(named) AND children_seen & flag = 0 ORDER BY id FOR NO KEY UPDATE
    ) AS clear;
    IF named IS NOT NULL THEN
        UPDATE contacts SET children_seen = children_seen | flag WHERE id = ANY(named);
    END IF;
    RETURN NULL;
END';
-- postgresql only
DO '
BEGIN
    CREATE TRIGGER contact_notes_seen AFTER INSERT ON contact_notes REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION contacts_children_seen(1);
    CREATE TRIGGER contact_notes_seen_moved AFTER UPDATE ON contact_notes REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION contacts_children_seen(1);
    CREATE TRIGGER tasks_seen AFTER INSERT ON tasks REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION contacts_children_seen(2);
    CREATE TRIGGER tasks_seen_moved AFTER UPDATE ON tasks REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION contacts_children_seen(2);
    CREATE TRIGGER deals_seen AFTER INSERT ON deals REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION contacts_children_seen(4);
    CREATE TRIGGER deals_seen_moved AFTER UPDATE ON deals REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION contacts_children_seen(4);
END';

-- The schema's version, read by `crmapi init-db` so that running it twice changes nothing.
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
INSERT INTO schema_version (version) VALUES (30);
