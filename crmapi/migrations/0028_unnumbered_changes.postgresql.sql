-- PostgreSQL batches (issue 9): a write stores its changes unnumbered (seq NULL, migration 0024), and every index
-- on `seq` took an entry for each of them that nothing reads: whatever reads `seq` (the feed, a record's history,
-- retention) asks for numbered changes only, and numbering writes a new version of the row, indexed again. The
-- three indexes on `seq` now hold numbered changes only: a change costs its write two index entries (its id and
-- changes_unnumbered) instead of five. (organization_id, seq) stays unique; NULLs never collided.
DROP INDEX changes_org_record;
CREATE INDEX changes_org_record ON changes (organization_id, resource, record_id, seq) WHERE seq IS NOT NULL;
DROP INDEX changes_org_resource;
CREATE INDEX changes_org_resource ON changes (organization_id, resource, seq) WHERE seq IS NOT NULL;
ALTER TABLE changes DROP CONSTRAINT changes_organization_id_seq_key;
CREATE UNIQUE INDEX changes_org_seq ON changes (organization_id, seq) WHERE seq IS NOT NULL;
