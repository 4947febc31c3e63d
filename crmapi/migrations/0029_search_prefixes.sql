-- Search (issue 10): PostgreSQL's search rows hold the starts of their words (`prefixes`, its twin). SQLite's trigram
-- index finds a word's start already: nothing changes here; the step keeps both databases at the same version.
SELECT 1;
