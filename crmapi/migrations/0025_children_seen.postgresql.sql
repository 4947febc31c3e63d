-- Embeds (issue 11): which of a contact's reverse relations may have children (see 0025_children_seen.sql).
-- Bits: 1 contact_notes, 2 tasks, 4 deals (crmapi.sqlbuild.SEEN_BITS); set when a child first names the contact,
-- never cleared. Statement-level triggers: one UPDATE per statement (a batch of 1,000 notes is one join), which
-- touches only the contacts whose bit is still clear, locking them in id order (two batches naming the same new
-- parents in opposite orders then wait for each other instead of deadlocking); a contact whose bit is set is
-- neither written nor locked. The bodies are quoted '…', not $$…$$, so that schema.sql splits as SQLite reads it.
ALTER TABLE contacts ADD COLUMN children_seen INTEGER NOT NULL DEFAULT 0;
UPDATE contacts SET children_seen = children_seen | 1 WHERE id IN (SELECT contact_id FROM contact_notes);
UPDATE contacts SET children_seen = children_seen | 2 WHERE id IN (SELECT contact_id FROM tasks);
UPDATE contacts SET children_seen = children_seen | 4 WHERE id IN (
    SELECT jsonb_array_elements_text(contact_ids) FROM deals WHERE jsonb_typeof(contact_ids) = 'array');
CREATE OR REPLACE FUNCTION children_seen_mark(flag INTEGER, organization TEXT[], contact TEXT[]) RETURNS VOID
LANGUAGE sql AS '
    WITH named AS (
        SELECT c.id FROM contacts AS c JOIN unnest(organization, contact) AS n (organization_id, contact_id)
            ON c.organization_id = n.organization_id AND c.id = n.contact_id
        WHERE c.children_seen & flag = 0 ORDER BY c.id FOR NO KEY UPDATE OF c
    )
    UPDATE contacts SET children_seen = children_seen | flag WHERE id IN (SELECT id FROM named)';
CREATE OR REPLACE FUNCTION contact_notes_seen() RETURNS trigger LANGUAGE plpgsql AS '
BEGIN
    PERFORM children_seen_mark(1, array_agg(organization_id), array_agg(contact_id)) FROM added;
    RETURN NULL;
END';
CREATE OR REPLACE FUNCTION tasks_seen() RETURNS trigger LANGUAGE plpgsql AS '
BEGIN
    PERFORM children_seen_mark(2, array_agg(organization_id), array_agg(contact_id)) FROM added
        WHERE contact_id IS NOT NULL;
    RETURN NULL;
END';
CREATE OR REPLACE FUNCTION deals_seen() RETURNS trigger LANGUAGE plpgsql AS '
BEGIN
    PERFORM children_seen_mark(4, array_agg(a.organization_id), array_agg(j.value)) FROM added AS a
        CROSS JOIN LATERAL jsonb_array_elements_text(
            CASE WHEN jsonb_typeof(a.contact_ids) = ''array'' THEN a.contact_ids ELSE ''[]'' END) AS j (value);
    RETURN NULL;
END';
CREATE TRIGGER contact_notes_seen AFTER INSERT ON contact_notes REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION contact_notes_seen();
CREATE TRIGGER contact_notes_seen_moved AFTER UPDATE ON contact_notes REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION contact_notes_seen();
CREATE TRIGGER tasks_seen AFTER INSERT ON tasks REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_seen();
CREATE TRIGGER tasks_seen_moved AFTER UPDATE ON tasks REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_seen();
CREATE TRIGGER deals_seen AFTER INSERT ON deals REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION deals_seen();
CREATE TRIGGER deals_seen_moved AFTER UPDATE ON deals REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION deals_seen();
