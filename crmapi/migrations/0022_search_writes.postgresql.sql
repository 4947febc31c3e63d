-- Search upkeep (issues 9 and 10): SQLite's trigram index stops keeping positions (0022's SQLite twin).
-- PostgreSQL's GIN indexes keep none already: nothing changes here; the step keeps both databases at the same
-- version. (Its writes got cheaper in code: new records' search rows are copied, COPY, not upserted.)
SELECT 1;
