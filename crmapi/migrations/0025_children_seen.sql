-- Embeds (issue 11): which of a contact's reverse relations may have children, so that a page's embed asks the
-- children's index only for the contacts that may have some (most have none: a search per contact was most of
-- a reverse relation's cost). Bits: 1 contact_notes, 2 tasks, 4 deals (crmapi.sqlbuild.SEEN_BITS).
-- A bit is set when a child first names the contact (insert, or a reference moved to it) and never cleared:
-- the flags are a superset (archived, deleted and moved-away children leave them set, and the children's
-- statement finds those absent). Set by triggers, so every writer keeps them (the API, imports, merges, SQL).
-- (PostgreSQL's twin: statement-level triggers.)
ALTER TABLE contacts ADD COLUMN children_seen INTEGER NOT NULL DEFAULT 0;
UPDATE contacts SET children_seen = children_seen | 1 WHERE id IN (SELECT contact_id FROM contact_notes);
UPDATE contacts SET children_seen = children_seen | 2 WHERE id IN (SELECT contact_id FROM tasks);
UPDATE contacts SET children_seen = children_seen | 4 WHERE id IN (SELECT contact_id FROM deal_contacts);
CREATE TRIGGER IF NOT EXISTS contact_notes_seen AFTER INSERT ON contact_notes BEGIN
    UPDATE contacts SET children_seen = children_seen | 1
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 1 = 0;
END;
CREATE TRIGGER IF NOT EXISTS contact_notes_seen_moved AFTER UPDATE OF contact_id, organization_id ON contact_notes BEGIN
    UPDATE contacts SET children_seen = children_seen | 1
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 1 = 0;
END;
CREATE TRIGGER IF NOT EXISTS tasks_seen AFTER INSERT ON tasks WHEN NEW.contact_id IS NOT NULL BEGIN
    UPDATE contacts SET children_seen = children_seen | 2
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 2 = 0;
END;
CREATE TRIGGER IF NOT EXISTS tasks_seen_moved AFTER UPDATE OF contact_id, organization_id ON tasks
WHEN NEW.contact_id IS NOT NULL BEGIN
    UPDATE contacts SET children_seen = children_seen | 2
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 2 = 0;
END;
-- deal_contacts holds a row per (contact, deal) of deals.contact_ids, written by the deals' own triggers (0018).
CREATE TRIGGER IF NOT EXISTS deal_contacts_seen AFTER INSERT ON deal_contacts BEGIN
    UPDATE contacts SET children_seen = children_seen | 4
        WHERE id = NEW.contact_id AND organization_id = NEW.organization_id AND children_seen & 4 = 0;
END;
