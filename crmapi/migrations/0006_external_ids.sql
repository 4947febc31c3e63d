-- Upserts by a natural key (POST /api/:resource?on_conflict=external_id).
-- external_id: the id a record has in the system it is loaded from; unique per organization among
-- the records that have one (a partial unique index, the arbiter of INSERT ... ON CONFLICT).
-- The summary views list their columns, so they are made again with the new one.
ALTER TABLE companies ADD COLUMN external_id TEXT;
ALTER TABLE contacts ADD COLUMN external_id TEXT;
ALTER TABLE deals ADD COLUMN external_id TEXT;
CREATE UNIQUE INDEX companies_org_external_id ON companies (organization_id, external_id) WHERE external_id IS NOT NULL;
CREATE UNIQUE INDEX contacts_org_external_id ON contacts (organization_id, external_id) WHERE external_id IS NOT NULL;
CREATE UNIQUE INDEX deals_org_external_id ON deals (organization_id, external_id) WHERE external_id IS NOT NULL;

DROP VIEW companies_summary;
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

DROP VIEW contacts_summary;
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

-- An upsert's answer carries X-Upsert-Result: a replayed Idempotency-Key answers it again.
ALTER TABLE idempotency_keys ADD COLUMN headers JSONB;
