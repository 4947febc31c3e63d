-- Fast list pages at a million rows.
-- row_counts: the number of live (non-archived) rows per organization and table, kept in the same
-- transaction as every write, so an unfiltered exact total is one indexed read, not a scan.
CREATE TABLE IF NOT EXISTS row_counts (
    organization_id TEXT NOT NULL,
    table_name TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (organization_id, table_name)
);
INSERT INTO row_counts (organization_id, table_name, n)
SELECT organization_id, 'contacts', COUNT(*) FROM contacts WHERE archived_at IS NULL GROUP BY organization_id
UNION ALL SELECT organization_id, 'companies', COUNT(*) FROM companies WHERE archived_at IS NULL GROUP BY organization_id
UNION ALL SELECT organization_id, 'deals', COUNT(*) FROM deals WHERE archived_at IS NULL GROUP BY organization_id
UNION ALL SELECT organization_id, 'tasks', COUNT(*) FROM tasks GROUP BY organization_id
UNION ALL SELECT organization_id, 'contact_notes', COUNT(*) FROM contact_notes GROUP BY organization_id
UNION ALL SELECT organization_id, 'deal_notes', COUNT(*) FROM deal_notes GROUP BY organization_id
UNION ALL SELECT organization_id, 'company_notes', COUNT(*) FROM company_notes GROUP BY organization_id
UNION ALL SELECT organization_id, 'tags', COUNT(*) FROM tags GROUP BY organization_id
UNION ALL SELECT organization_id, 'configuration', COUNT(*) FROM configuration GROUP BY organization_id
UNION ALL SELECT organization_id, 'automation_rules', COUNT(*) FROM automation_rules GROUP BY organization_id
UNION ALL SELECT organization_id, 'crm_users', COUNT(*) FROM crm_users GROUP BY organization_id;

-- PostgreSQL's twin: sort columns are indexed NULLS FIRST, the order crmapi lists in on both
-- databases (SQLite's native one), so an index scan serves ORDER BY in either direction.
-- Composite indexes that lead with the organization and end with id serve the documented
-- filter + sort combinations (and the id tie-break) without sorting the matches. They hold live
-- rows only (WHERE archived_at IS NULL, as every default list asks), so counts and skipped rows
-- are read from the index alone, never from the table.
DROP INDEX IF EXISTS contacts_org_last_name;
DROP INDEX IF EXISTS contacts_org_city;
DROP INDEX IF EXISTS contacts_org_status;
DROP INDEX IF EXISTS companies_org_name;
CREATE INDEX contacts_org_last_name ON contacts (organization_id, last_name NULLS FIRST, id) WHERE archived_at IS NULL;
CREATE INDEX contacts_org_city_last_name ON contacts (organization_id, city, last_name NULLS FIRST, id) WHERE archived_at IS NULL;
CREATE INDEX contacts_org_status_last_name ON contacts (organization_id, status, last_name NULLS FIRST, id) WHERE archived_at IS NULL;
CREATE INDEX contacts_org_created ON contacts (organization_id, created_at, id) WHERE archived_at IS NULL;
CREATE INDEX companies_org_name ON companies (organization_id, name, id) WHERE archived_at IS NULL;
CREATE INDEX deals_org_created ON deals (organization_id, created_at, id) WHERE archived_at IS NULL;
