-- Embeds (issue 11): a parent's newest live children and their count, read from one index per reference.
-- Each (organization_id, reference) index becomes (organization_id, reference[, archived_at], created_at, id):
-- the same searches as before (a prefix), and the children's count and newest-first ranks read from the index
-- alone (the records themselves only for the ranks an embed returns). Same statements on both databases.
DROP INDEX IF EXISTS contacts_org_company;
CREATE INDEX IF NOT EXISTS contacts_org_company_newest ON contacts (organization_id, company_id, archived_at, created_at, id);
DROP INDEX IF EXISTS deals_org_company;
CREATE INDEX IF NOT EXISTS deals_org_company_newest ON deals (organization_id, company_id, archived_at, created_at, id);
DROP INDEX IF EXISTS tasks_org_contact;
CREATE INDEX IF NOT EXISTS tasks_org_contact_newest ON tasks (organization_id, contact_id, created_at, id);
DROP INDEX IF EXISTS tasks_org_company;
CREATE INDEX IF NOT EXISTS tasks_org_company_newest ON tasks (organization_id, company_id, created_at, id);
DROP INDEX IF EXISTS tasks_org_deal;
CREATE INDEX IF NOT EXISTS tasks_org_deal_newest ON tasks (organization_id, deal_id, created_at, id);
DROP INDEX IF EXISTS contact_notes_org_contact;
CREATE INDEX IF NOT EXISTS contact_notes_org_contact_newest ON contact_notes (organization_id, contact_id, created_at, id);
DROP INDEX IF EXISTS deal_notes_org_deal;
CREATE INDEX IF NOT EXISTS deal_notes_org_deal_newest ON deal_notes (organization_id, deal_id, created_at, id);
DROP INDEX IF EXISTS company_notes_org_company;
CREATE INDEX IF NOT EXISTS company_notes_org_company_newest ON company_notes (organization_id, company_id, created_at, id);
