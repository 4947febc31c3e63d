"""The search rows behind q and the text operators, kept by store.py in the writing transaction."""

import functools
import itertools

from pypika import Table

from .core import Bound
from .core import MAX_PARAMS
from .core import _statement
from .core import _values
from .core import chunks
from .core import row_chunks
from .writes import COPY_ROWS


# -- search rows (kept by store.py in the writing transaction) ---------------------------------------

SEARCH_ROW = ('table_name', 'organization_id', 'record_id', 'archived', 'words', 'names', 'fields', 'texts')
# NOTE: PostgreSQL's rows also hold `prefixes` (search.prefixes, migration 0029), derived from `words`: an unchanged
# row's words leave them unchanged. The starts of a related record's name words (' acme' -> ' a ac acm') are made in
# the statement that appends those words, by a regular expression over so few words (~8 µs a row, loaded machine).
SEARCH_ROW_PREFIXES = (*SEARCH_ROW, 'prefixes')
RELATED_PREFIXES = r"regexp_replace({0}, ' ([^ ])([^ ]?)([^ ]?)[^ ]*', ' \1 \1\2 \1\2\3', 'g')"


def search_row(d):
    """The columns of a search row as the store writes them on `d`'s database."""
    return SEARCH_ROW_PREFIXES if d.name == 'postgresql' else SEARCH_ROW


def _search_upsert(d, n, related=0):
    """n search rows written, each replacing the record's row only when it changed (an unchanged row is
    left alone: no index work). SQLite: from two rows on, the rows whose first value is NULL are skipped
    (_search_parts pads with them).

    `related`: how many records' name words each row's `words` take (SearchPolicy.related): each row then ends with
    the id of each such record, whose own search row's `names` (' w1 w2', made '  w1  w2') are appended to its words
    here, in the statement that writes it; the tables they are in are bound after the rows.

    NOTE: here rather than read by a statement of their own before this one: that read was a statement (on PostgreSQL
    a round trip) of every write of a contact with a company. It reads the rows as they are when this statement runs,
    after every row the transaction wrote before (a renamed company's own row is written before its referrers').
    """
    columns = search_row(d)
    changed = ' OR '.join(f'search_texts.{c} <> excluded.{c}' for c in SEARCH_ROW[3:])
    rows = _values(d, n, len(columns) + related)
    if related:
        p = d.parameter().get_sql()
        appended = {
            'words': [f"COALESCE(REPLACE(r{k}.names, ' ', '  '), '')" for k in range(related)],
            'prefixes': [f"COALESCE({RELATED_PREFIXES.format(f'r{k}.names')}, '')" for k in range(related)],
        }
        picked = ', '.join(' || '.join([f's.column{i}', *appended.get(c, ())]) for i, c in enumerate(columns, 1))
        joins = ''.join(
            f' LEFT JOIN search_texts r{k} ON r{k}.table_name = {p} AND r{k}.organization_id = s.column2'
            f' AND r{k}.record_id = s.column{len(columns) + 1 + k}'
            for k in range(related)
        )
        rows = f'SELECT {picked} FROM ({rows}) AS s{joins} WHERE s.column1 IS NOT NULL'
    elif d.name == 'sqlite' and n > 1:
        rows = f'SELECT * FROM ({rows}) WHERE column1 IS NOT NULL'
    return (
        f'INSERT INTO search_texts ({", ".join(columns)}) {rows} '
        'ON CONFLICT (table_name, organization_id, record_id) DO UPDATE SET '
        + ', '.join(f'{c} = excluded.{c}' for c in columns[3:])
        + f' WHERE {changed}'
    )


def _search_parts(d, rows, width):
    """[(rows, the statement's row count)] of rows binding `width` values each: `row_chunks` on PostgreSQL; on SQLite
    each chunk whole, in the statement of the next power of two rows (the same few shapes), the rows past its end
    NULLs that the statement skips.

    NOTE: SQLite's trigram index (FTS5, kept by the trigger on search_texts) writes what a statement gave it as a
    segment of its own and merges segments as they pile up: a batch of 1,000 split 512 + 256 + … made six segments
    a batch, and the merging of them ~1 ms more CPU per batch (and more segments for q to read in between).
    """
    if d.name != 'sqlite':
        return [(part, len(part)) for part in row_chunks(rows, width)]
    most = 1 << ((MAX_PARAMS // width).bit_length() - 1)
    return [(part, 1 << (len(part) - 1).bit_length()) for part in chunks(rows, width, most)]


def build_search_rows(d, rows, targets=()):
    """The statements that write search `rows`: one per chunk (a thousand rows is one). Each row is a tuple of
    search_row(d) whose `words` (and `prefixes`) lack the name words of the records it refers to, then the id it refers
    to in each table of `targets` (SearchPolicy.related's, in order; None: none): the statement appends their words
    (_search_upsert).

    NOTE: rows that refer to nothing (a batch of contacts without companies) go without the join.
    """
    size = len(search_row(d))
    if targets and not any(value is not None for row in rows for value in row[size:]):
        rows, targets = [row[:size] for row in rows], ()
    targets = tuple(targets)
    width = size + len(targets)
    return [
        (
            _statement(
                d, ('search_rows', n, len(targets), width), functools.partial(_search_upsert, d, n, len(targets))
            ),
            [*itertools.chain.from_iterable(part), *[None] * ((n - len(part)) * width), *targets],
        )
        for part, n in _search_parts(d, rows, width)
    ]


def copies_search_rows(d, count):
    """Whether `count` search rows of new records (none of them has one yet) go by COPY (build_search_copy):
    PostgreSQL from COPY_ROWS rows (COPY costs the server a fraction of a multi-row INSERT … ON CONFLICT)."""
    return d.name == 'postgresql' and count >= COPY_ROWS


def build_search_copy(d, rows):
    """The search rows of new records (tuples of search_row(d), their words whole: search.with_related) for
    Tx.write_rows, by COPY."""
    return f'COPY search_texts ({", ".join(search_row(d))}) FROM STDIN', rows


def _search_keys(d, texts, table_name, org_id, ids):
    return (
        (texts.table_name == Bound(table_name))
        & (texts.organization_id == Bound(org_id))
        & d.one_of(texts.record_id, 'text', ids)
    )


def _search_by_ids(d, key, query, *values, ids):
    """(sql, parameters) of a statement over the search rows of `ids`: `values`, its other parameters in order, then
    the ids as one_of's one parameter. Its text is the same for any ids, so `query()` is rendered once per dialect.

    NOTE: these run in every write's transaction (a contact's company name, an archive's flags): PyPika made each
    one again, ~0.1 ms of a single write.
    """
    sql = _statement(d, ('search_by_ids', key), lambda: d.render(query())[0])
    return sql, [*values, d.one_of_value('text', ids)]


def build_search_archived(d, table_name, org_id, ids, archived):
    """Set the archived state of the search rows of `ids` (an archive or restore changes no text)."""
    texts = Table('search_texts')
    return _search_by_ids(
        d,
        'archived',
        lambda: (
            d.query.update(texts)
            .set(texts.archived, Bound(archived))
            .where(_search_keys(d, texts, table_name, org_id, ids))
        ),
        archived,
        table_name,
        org_id,
        ids=ids,
    )


def build_search_names(d, table_name, org_id, ids):
    """(record_id, names) of the search rows of `ids`: the name words other records' rows take (a company's)."""
    texts = Table('search_texts')
    return _search_by_ids(
        d,
        'names',
        lambda: (
            d.from_(texts).select(texts.record_id, texts.names).where(_search_keys(d, texts, table_name, org_id, ids))
        ),
        table_name,
        org_id,
        ids=ids,
    )


def build_search_forget(d, table_name, org_id, ids):
    """Remove the search rows of the records `ids` of `table_name` (deleted for good)."""
    texts = Table('search_texts')
    return _search_by_ids(
        d,
        'forget',
        lambda: d.from_(texts).delete().where(_search_keys(d, texts, table_name, org_id, ids)),
        table_name,
        org_id,
        ids=ids,
    )


def build_search_forget_organization(d, info, org_id):
    """Remove the search rows of every record of `org_id` in `info`'s table (before a rebuild)."""
    texts = Table('search_texts')
    return d.render(
        d.from_(texts)
        .delete()
        .where((texts.table_name == Bound(info.spec.table)) & (texts.organization_id == Bound(org_id)))
    )


def build_search_analyze(d):
    """Fresh planner statistics for the search rows (after a rebuild).

    NOTE: statistics taken while SQLite's FTS5 table was nearly empty make the planner scan its whole
    `_data` table for FTS5's own `id BETWEEN` deletes: every merge then reads the index again.
    """
    if d.name == 'postgresql':
        return ['ANALYZE search_texts']
    return [f'ANALYZE {t}' for t in ('search_texts', 'search_texts_trigrams_data', 'search_texts_trigrams_idx')]
