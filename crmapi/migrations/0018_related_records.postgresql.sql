-- Related records (issue 11): the contacts a deal involves (deals.contact_ids, a JSON array), indexed by contact,
-- so that a contact's deals (the reverse embed `deals`) are index searches (`contact_ids @> '["<id>"]'`), not a
-- scan of every deal. jsonb_path_ops: smaller and faster than the default jsonb_ops for `@>`, the one
-- operator crmapi asks it (measured: bench/RESULTS.md, 2026-11-30).
-- (SQLite's twin keeps the pairs in a side table instead.)
CREATE INDEX IF NOT EXISTS deals_contact_ids ON deals USING GIN (contact_ids jsonb_path_ops);
