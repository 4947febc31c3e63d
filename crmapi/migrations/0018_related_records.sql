-- Related records (issue 11): the contacts a deal involves (deals.contact_ids, a JSON array), indexed by contact,
-- so that a contact's deals (the reverse embed `deals`) are an index search, not a scan of every deal.
-- SQLite cannot index the elements of an array: each (contact, deal) pair is kept in deal_contacts, which the
-- triggers below keep equal to contact_ids whatever writes the deal (the API, an import, a merge, plain SQL).
-- (PostgreSQL's twin is a GIN index on the column instead.)
CREATE TABLE IF NOT EXISTS deal_contacts (
    organization_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    deal_id TEXT NOT NULL,
    PRIMARY KEY (organization_id, contact_id, deal_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deal_contacts_deal ON deal_contacts (deal_id);
INSERT OR IGNORE INTO deal_contacts (organization_id, contact_id, deal_id)
    SELECT d.organization_id, j.value, d.id FROM deals AS d,
        json_each(CASE WHEN json_valid(d.contact_ids) THEN d.contact_ids ELSE '[]' END) AS j
    WHERE j.type = 'text';
CREATE TRIGGER IF NOT EXISTS deal_contacts_insert AFTER INSERT ON deals BEGIN
    INSERT OR IGNORE INTO deal_contacts (organization_id, contact_id, deal_id)
        SELECT NEW.organization_id, value, NEW.id
        FROM json_each(CASE WHEN json_valid(NEW.contact_ids) THEN NEW.contact_ids ELSE '[]' END) WHERE type = 'text';
END;
CREATE TRIGGER IF NOT EXISTS deal_contacts_update AFTER UPDATE OF id, organization_id, contact_ids ON deals BEGIN
    DELETE FROM deal_contacts WHERE deal_id = OLD.id;
    INSERT OR IGNORE INTO deal_contacts (organization_id, contact_id, deal_id)
        SELECT NEW.organization_id, value, NEW.id
        FROM json_each(CASE WHEN json_valid(NEW.contact_ids) THEN NEW.contact_ids ELSE '[]' END) WHERE type = 'text';
END;
CREATE TRIGGER IF NOT EXISTS deal_contacts_delete AFTER DELETE ON deals BEGIN
    DELETE FROM deal_contacts WHERE deal_id = OLD.id;
END;
