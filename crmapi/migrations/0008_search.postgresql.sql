-- Search (issue 10): folded text beside the records (crmapi/search.py folds it in Python, the same
-- function for what is stored and what is asked), kept by the store in the transaction of every
-- write; `crmapi migrate` then fills it in for the records already there (or run `crmapi reindex`).
-- search_texts, per record: one row per non-null text column (its folded value: contains,
-- starts_with, ends_with) and the row of column '' (the record's words, each after a space, and in
-- `names` those of its name columns: q and its ranking).
-- PostgreSQL's twin: pg_trgm GIN on the column rows (LIKE patterns of 3 characters or more) and a
-- GIN tsvector of the words rows (prefix queries, 'w':*). pg_trgm is a trusted extension
-- (PostgreSQL 13+): a role that may CREATE in the database may create it; elsewhere an administrator
-- creates it first (CREATE EXTENSION pg_trgm), and IF NOT EXISTS then passes.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE search_texts (
    table_name TEXT NOT NULL,
    record_id TEXT NOT NULL,
    column_name TEXT NOT NULL,
    folded TEXT NOT NULL,
    names TEXT,
    PRIMARY KEY (table_name, record_id, column_name)
);
CREATE INDEX search_texts_trigrams ON search_texts USING gin (folded gin_trgm_ops) WHERE column_name <> '';
CREATE INDEX search_texts_words ON search_texts USING gin (array_to_tsvector(string_to_array(ltrim(folded, ' '), ' '))) WHERE column_name = '';
