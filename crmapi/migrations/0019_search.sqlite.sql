-- Search (issue 10; numbered after 0018: a database already past a lower number would skip it): one row per
-- record beside the records (crmapi/search.py folds its text in Python, the
-- same function for what is stored and what is asked), kept by the store in the transaction of every
-- write; `crmapi migrate` then fills it in for the records already there (or run `crmapi reindex`).
-- search_texts, per record: its organization and archived state (a q's count and first page come from
-- these rows alone), `words` (its words, each after two spaces: q), `names` (those of its name columns:
-- ranking), `fields` (its text columns folded, one JSON object: contains, starts_with, ends_with decide on
-- it) and `texts` (the same values, one a line, without the keys: what the trigram index reads).
-- SQLite's twin: one FTS5 trigram table over `words` and `texts` (external content, kept by triggers)
-- finds the candidates of a substring of 3 characters or more. `id` (INTEGER PRIMARY KEY) is its rowid: it never changes, not
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
    texts TEXT NOT NULL,
    UNIQUE (table_name, organization_id, record_id)
);
CREATE VIRTUAL TABLE search_texts_trigrams USING fts5(
    words, texts, content='search_texts', content_rowid='id', tokenize='trigram case_sensitive 1', columnsize=0);
CREATE TRIGGER search_texts_inserted AFTER INSERT ON search_texts BEGIN
    INSERT INTO search_texts_trigrams (rowid, words, texts) VALUES (new.id, new.words, new.texts);
END;
CREATE TRIGGER search_texts_deleted AFTER DELETE ON search_texts BEGIN
    INSERT INTO search_texts_trigrams (search_texts_trigrams, rowid, words, texts)
    VALUES ('delete', old.id, old.words, old.texts);
END;
CREATE TRIGGER search_texts_updated AFTER UPDATE OF words, texts ON search_texts
WHEN old.words <> new.words OR old.texts <> new.texts BEGIN
    INSERT INTO search_texts_trigrams (search_texts_trigrams, rowid, words, texts)
    VALUES ('delete', old.id, old.words, old.texts);
    INSERT INTO search_texts_trigrams (rowid, words, texts) VALUES (new.id, new.words, new.texts);
END;
