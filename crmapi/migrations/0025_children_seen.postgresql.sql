-- Embeds (issue 11): which of a contact's reverse relations may have children (see 0025_children_seen.sql).
-- Bits: 1 contact_notes, 2 tasks, 4 deals (crmapi.sqlbuild.SEEN_BITS); set when a child first names the contact,
-- never cleared. Statement-level triggers: per statement (a batch of 1,000 notes is one call), the contacts named
-- are searched by id, those whose bit is still clear locked in id order (two statements naming the same new
-- parents in opposite orders then wait for each other instead of deadlocking) and updated; a contact whose bit is
-- set is neither written nor locked. The ids go through arrays (`id = ANY(...)`): a join of the transition table
-- to contacts was planned as a hash join over every contact of the organization. PL/pgSQL plans its statements
-- once per connection (an SQL function's are planned at each call). Bodies are quoted '…', not $$…$$, so that
-- schema.sql splits as SQLite reads it.
-- The children's tables are locked against writes first: a child written by another host between the backfill
-- and its trigger would leave its contact's bit clear.
LOCK TABLE contact_notes, tasks, deals IN SHARE ROW EXCLUSIVE MODE;
ALTER TABLE contacts ADD COLUMN children_seen INTEGER NOT NULL DEFAULT 0;
UPDATE contacts SET children_seen = children_seen | 1 WHERE id IN (SELECT contact_id FROM contact_notes);
UPDATE contacts SET children_seen = children_seen | 2 WHERE id IN (SELECT contact_id FROM tasks);
UPDATE contacts SET children_seen = children_seen | 4 WHERE id IN (
    SELECT jsonb_array_elements_text(contact_ids) FROM deals WHERE jsonb_typeof(contact_ids) = 'array');
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
-- The triggers are made in a DO block: schema.sql is split as SQLite reads it, which takes a CREATE TRIGGER to
-- run to an END.
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
