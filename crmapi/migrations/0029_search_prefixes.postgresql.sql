-- Search (issue 10): a q word of 1-3 characters found as one exact lexeme (PostgreSQL). `prefixes` holds, for each
-- word of the row's `words`, its first 1, 2 and 3 characters, each after a space (' j jo joh s sm smi'): written by
-- the store (crmapi/search.py, `prefixes`), and its GIN index answers q "jo smi" as the exact lexemes 'jo' & 'smi'
-- instead of two partial matches over every word that starts so (13k lexemes start with "jo" at 100k contacts, the
-- email words `jones2459`). A longer word is looked for by its first 3 characters here and whole in `words`.
-- The rows already there get theirs here, from their words: the table is rewritten once (its indexes rebuilt), under
-- an exclusive lock (1M contacts' 1.6M search rows: 180 s on a loaded 2-core machine). The regular expression makes
-- ' j jo jo' for a word of two letters: the index keeps each lexeme once, so the duplicates answer the same.
ALTER TABLE search_texts ADD COLUMN prefixes TEXT;
ALTER TABLE search_texts ALTER COLUMN prefixes TYPE TEXT
    USING regexp_replace(words, '  ([^ ])([^ ]?)([^ ]?)[^ ]*', ' \1 \1\2 \1\2\3', 'g');
ALTER TABLE search_texts ALTER COLUMN prefixes SET NOT NULL;
CREATE INDEX search_texts_prefixes ON search_texts USING gin (array_to_tsvector(string_to_array(ltrim(prefixes, ' '), ' ')));
-- NOTE: statistics of the new index's expression at once: without them the planner guesses how many rows a lexeme of
-- `prefixes` finds (and the rewrite forgot the table's own).
ANALYZE search_texts;
