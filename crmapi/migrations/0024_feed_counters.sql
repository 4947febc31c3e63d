-- An organization's writes no longer queue on its counter rows (issue 15). The live-row counters get slots: on
-- PostgreSQL a write adds to its connection's slot, a total sums them. SQLite (one writer at a time) uses slot 0
-- only and still numbers changes in the write; PostgreSQL's twin also makes changes numbered after commit.
CREATE TABLE row_counts_slotted (
    organization_id TEXT NOT NULL,
    table_name TEXT NOT NULL,
    n BIGINT NOT NULL,
    slot INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (organization_id, table_name, slot)
);
INSERT INTO row_counts_slotted (organization_id, table_name, n) SELECT organization_id, table_name, n FROM row_counts;
DROP TABLE row_counts;
ALTER TABLE row_counts_slotted RENAME TO row_counts;
