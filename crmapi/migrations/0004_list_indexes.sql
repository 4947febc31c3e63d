-- Fast list pages at a million rows.
-- Composite indexes that lead with the organization and end with id serve the documented
-- filter + sort combinations (and the id tie-break) without sorting the matches. They hold live
-- rows only (WHERE archived_at IS NULL, as every default list asks), so counts and skipped rows
-- are read from the index alone, never from the table.
DROP INDEX IF EXISTS contacts_org_last_name;
DROP INDEX IF EXISTS contacts_org_city;
DROP INDEX IF EXISTS contacts_org_status;
DROP INDEX IF EXISTS companies_org_name;
CREATE INDEX contacts_org_last_name ON contacts (organization_id, last_name, id) WHERE archived_at IS NULL;
CREATE INDEX contacts_org_city_last_name ON contacts (organization_id, city, last_name, id) WHERE archived_at IS NULL;
CREATE INDEX contacts_org_status_last_name ON contacts (organization_id, status, last_name, id) WHERE archived_at IS NULL;
CREATE INDEX contacts_org_created ON contacts (organization_id, created_at, id) WHERE archived_at IS NULL;
CREATE INDEX companies_org_name ON companies (organization_id, name, id) WHERE archived_at IS NULL;
CREATE INDEX deals_org_created ON deals (organization_id, created_at, id) WHERE archived_at IS NULL;
