-- A list of contacts sorted by email reads its page from an index, as one sorted by last name does: the email index
-- ends with id (crmapi's tie-break), so equal emails need no sort either. It still serves lookups by email.
DROP INDEX IF EXISTS contacts_org_email;
CREATE INDEX contacts_org_email ON contacts (organization_id, email, id);
