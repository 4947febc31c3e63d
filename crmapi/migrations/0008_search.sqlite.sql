-- Search (issue 10): folded text beside the records (crmapi/search.py folds it in Python, the same
-- function for what is stored and what is asked), kept by the store in the transaction of every
-- write; `crmapi migrate` then fills it in for the records already there (or run `crmapi reindex`).
-- search_texts, per record: one row per non-null text column (its folded value: contains,
-- starts_with, ends_with) and the row of column '' (the record's words, each after a space, and in
-- `names` those of its name columns: q and its ranking).
-- SQLite's twin: one FTS5 trigram table over `folded` (external content, kept by triggers) finds the
-- candidates of a substring of 3 characters or more. `id` (INTEGER PRIMARY KEY) is its rowid: it
-- never changes, not even in a VACUUM.
CREATE TABLE search_texts (
    id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    record_id TEXT NOT NULL,
    column_name TEXT NOT NULL,
    folded TEXT NOT NULL,
    names TEXT,
    UNIQUE (table_name, record_id, column_name)
);
CREATE VIRTUAL TABLE search_texts_trigrams USING fts5(
    folded, content='search_texts', content_rowid='id', tokenize='trigram case_sensitive 1', columnsize=0);
CREATE TRIGGER search_texts_inserted AFTER INSERT ON search_texts BEGIN
    INSERT INTO search_texts_trigrams (rowid, folded) VALUES (new.id, new.folded);
END;
CREATE TRIGGER search_texts_deleted AFTER DELETE ON search_texts BEGIN
    INSERT INTO search_texts_trigrams (search_texts_trigrams, rowid, folded) VALUES ('delete', old.id, old.folded);
END;
CREATE TRIGGER search_texts_updated AFTER UPDATE OF folded ON search_texts BEGIN
    INSERT INTO search_texts_trigrams (search_texts_trigrams, rowid, folded) VALUES ('delete', old.id, old.folded);
    INSERT INTO search_texts_trigrams (rowid, folded) VALUES (new.id, new.folded);
END;
