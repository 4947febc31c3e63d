-- An organization's writes no longer queue on its counter rows (issue 15).
-- The live-row counters get slots: a write adds to its connection's slot (crmapi.sqlbuild.COUNT_SLOTS), a total
-- sums them.
ALTER TABLE row_counts ADD COLUMN slot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE row_counts DROP CONSTRAINT row_counts_pkey;
ALTER TABLE row_counts ADD PRIMARY KEY (organization_id, table_name, slot);
-- A write stores its changes unnumbered (seq NULL) with a tick from change_ticks, taken by its last statement; the
-- first reader numbers the committed ones in tick order under the organization's change_counters row
-- (crmapi.history). The partial index finds them.
ALTER TABLE changes ALTER COLUMN seq DROP NOT NULL;
ALTER TABLE changes ADD COLUMN tick BIGINT;
CREATE SEQUENCE IF NOT EXISTS change_ticks;
CREATE INDEX IF NOT EXISTS changes_unnumbered ON changes (organization_id, tick) WHERE seq IS NULL;
