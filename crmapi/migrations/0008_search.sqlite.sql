-- Search (issue 10): one row per record beside the records (crmapi/search.py folds its text in Python, the
-- same function for what is stored and what is asked), kept by the store in the transaction of every
-- write; `crmapi migrate` then fills it in for the records already there (or run `crmapi reindex`).
-- search_texts, per record: its organization and archived state (a q's count and first page come from
-- these rows alone), `words` (its words, each after two spaces: q), `names` (those of its name columns:
-- ranking) and `fields` (its text columns folded, one JSON object: contains, starts_with, ends_with).
-- SQLite's twin: one FTS5 trigram table (kept by triggers) over `words` and the values of `fields`, one
-- a line (their keys are the same in every row: indexing them would only cost), finds the candidates of
-- a substring of 3 characters or more. `id` (INTEGER PRIMARY KEY) is its rowid: it never changes, not
-- even in a VACUUM.
CREATE TABLE search_texts (
    id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    archived BOOLEAN NOT NULL,
    words TEXT NOT NULL,
    names TEXT NOT NULL,
    fields TEXT NOT NULL,
    UNIQUE (table_name, organization_id, record_id)
);
CREATE VIRTUAL TABLE search_texts_trigrams USING fts5(
    words, fields, content='search_texts', content_rowid='id', tokenize='trigram case_sensitive 1', columnsize=0);
CREATE TRIGGER search_texts_inserted AFTER INSERT ON search_texts BEGIN
    INSERT INTO search_texts_trigrams (rowid, words, fields) VALUES (new.id, new.words, (SELECT group_concat(value, char(10)) FROM json_each(new.fields)));
END;
CREATE TRIGGER search_texts_deleted AFTER DELETE ON search_texts BEGIN
    INSERT INTO search_texts_trigrams (search_texts_trigrams, rowid, words, fields)
    VALUES ('delete', old.id, old.words, (SELECT group_concat(value, char(10)) FROM json_each(old.fields)));
END;
CREATE TRIGGER search_texts_updated AFTER UPDATE OF words, fields ON search_texts
WHEN old.words <> new.words OR old.fields <> new.fields BEGIN
    INSERT INTO search_texts_trigrams (search_texts_trigrams, rowid, words, fields)
    VALUES ('delete', old.id, old.words, (SELECT group_concat(value, char(10)) FROM json_each(old.fields)));
    INSERT INTO search_texts_trigrams (rowid, words, fields) VALUES (new.id, new.words, (SELECT group_concat(value, char(10)) FROM json_each(new.fields)));
END;
