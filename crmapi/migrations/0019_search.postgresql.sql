-- Search (issue 10; numbered after 0018: a database already past a lower number would skip it): one row per
-- record beside the records (crmapi/search.py folds its text in Python, the
-- same function for what is stored and what is asked), kept by the store in the transaction of every
-- write; `crmapi migrate` then fills it in for the records already there (or run `crmapi reindex`).
-- search_texts, per record: its organization and archived state (a q's count and first page come from
-- these rows alone), `words` (its words, each after two spaces: q), `names` (those of its name columns:
-- ranking), `fields` (its text columns folded, one JSON object: contains, starts_with, ends_with decide on
-- it) and `texts` (the same values, one a line, without the keys: what the trigram index reads).
-- PostgreSQL's twin: a pg_trgm GIN index on `texts` (LIKE patterns of 3 characters or more) and a GIN
-- tsvector of `words` (prefix queries, 'w':*). pg_trgm is a trusted extension (PostgreSQL 13+): a role
-- that may CREATE in the database may create it; elsewhere (some managed services) an administrator
-- creates it first (CREATE EXTENSION pg_trgm), and IF NOT EXISTS then passes.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE search_texts (
    table_name TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    archived BOOLEAN NOT NULL,
    words TEXT NOT NULL,
    names TEXT NOT NULL,
    fields TEXT NOT NULL,
    texts TEXT NOT NULL,
    PRIMARY KEY (table_name, organization_id, record_id)
);
CREATE INDEX search_texts_trigrams ON search_texts USING gin (texts gin_trgm_ops);
CREATE INDEX search_texts_words ON search_texts USING gin (array_to_tsvector(string_to_array(ltrim(words, ' '), '  ')));
