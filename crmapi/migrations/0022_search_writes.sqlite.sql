-- Search upkeep (issues 9 and 10): the FTS5 trigram index keeps which rows hold each trigram, not where
-- (detail=none: no positions, no columns). A write then costs the index about half the work, and the
-- index takes about a fifth of the disk; sqlbuild looks each trigram of a value up as a term of its own and the
-- search row itself decides (instr on `words`, the exact comparison on `fields`), so q and the text
-- operators answer exactly what they did. The index is rebuilt from the search rows already there.
DROP TRIGGER search_texts_inserted;
DROP TRIGGER search_texts_deleted;
DROP TRIGGER search_texts_updated;
DROP TABLE search_texts_trigrams;
CREATE VIRTUAL TABLE search_texts_trigrams USING fts5(
    words, texts, content='search_texts', content_rowid='id', tokenize='trigram case_sensitive 1', columnsize=0,
    detail=none);
INSERT INTO search_texts_trigrams (search_texts_trigrams) VALUES ('rebuild');
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
