"""The only module that writes SQL: PyPika builders that return (sql, params).

Identifiers come from a TableInfo whitelist through `Table.field`; every value travels as a
bound parameter through `Bound`, never through PyPika's own literal quoting (which would turn
True into 'true' and None into 'null'). The organization scope is added here, by every
builder, so no caller can forget it.
"""

import contextlib
import functools
import itertools
import re
import threading
from dataclasses import dataclass
from dataclasses import replace

import orjson
from pypika import Order
from pypika import Table
from pypika import functions as fn
from pypika.dialects import PostgreSQLQuery
from pypika.dialects import SQLLiteQuery
from pypika.terms import Criterion
from pypika.terms import FormatParameter
from pypika.terms import QmarkParameter
from pypika.terms import Term
from pypika.terms import Tuple

from . import search as searching
from .values import converted


_recorder = threading.local()


class Bound(Term):
    """A value sent to the driver as a parameter, exactly as given."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        bounds = getattr(_recorder, 'bounds', None)
        if bounds is not None:
            bounds.append(value)

    def get_sql(self, parameter=None, **kwargs):
        parameter.update_parameters(param_key=None, value=self.value)
        return parameter.get_sql()


class Sql(Criterion):
    """An SQL fragment whose `{0}`, `{1}`… slots are filled by terms, each rendered once."""

    def __init__(self, template, *terms):
        super().__init__()
        self.template, self.terms = template, terms

    def get_sql(self, **kwargs):
        kwargs.pop('subcriterion', None)
        return self.template.format(*(t.get_sql(**kwargs) for t in self.terms))


TRUE, FALSE = Sql('1=1'), Sql('1=0')
# NOTE: the column that scopes a row to its organization. Only this module writes or compares it: the
# builders take the organization as an argument, and a row handed to an INSERT builder never carries it.
SCOPE = 'organization_id'
_STATEMENTS = {}
# NOTE: a statement and its key (the query's shape) hold ~1.7 KB: at 10,000, clients choosing new filter and sort
# shapes could grow a worker by 17 MB. A page of one shape, rendered again after a clear, costs ~0.1 ms.
MAX_STATEMENTS = 2_000


def _remember(key, sql):
    """Cache a statement's SQL; clients choose shapes, so the cache is bounded."""
    if len(_STATEMENTS) >= MAX_STATEMENTS:
        _STATEMENTS.clear()
    _STATEMENTS[key] = sql
    return sql


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases, in one place."""

    name: str
    query: type
    parameter: type
    adapt: object  # (kind, canonical value) -> driver value
    like: str  # case-insensitive LIKE
    distinct: str  # null-safe inequality
    array_length: str
    nulls_sql: bool  # whether ORDER BY must spell out SQLite's null order

    def bind(self, column, value):
        return Bound(self.adapt(column.kind, value))

    def array_contains(self, field, element):
        if self.name == 'sqlite':
            return Sql('EXISTS (SELECT 1 FROM json_each({0}) WHERE json_each.value = {1})', field, Bound(element))
        return Sql('{0} @> {1}', field, Bound(self.adapt('json', [element])))

    def one_of(self, field, kind, values):
        """`field` is one of `values` (an array field: holds one of them); `values` has no None.

        NOTE: the whole list is ONE parameter, so every length is the same SQL text: one cached
        statement (here and in the driver), no parameter-count limit, no nesting to recurse through.
        """
        elements = Bound(self.one_of_value(kind, values))
        if self.name == 'sqlite':
            if kind == 'array':
                return Sql(
                    'EXISTS (SELECT 1 FROM json_each({0}) WHERE json_each.value IN (SELECT value FROM json_each({1})))',
                    field,
                    elements,
                )
            return Sql('{0} IN (SELECT value FROM json_each({1}))', field, elements)
        return Sql('{0} ?| {1}' if kind == 'array' else '{0} = ANY({1})', field, elements)

    def one_of_value(self, kind, values):
        """The one parameter of one_of's list: a JSON array on SQLite, an array on PostgreSQL."""
        # NOTE: text (ids) goes as it is: both adapters return it unchanged, one call per id of a 1,000-row page.
        items = list(values) if kind in ('text', 'array') else [self.adapt(kind, v) for v in values]
        return orjson.dumps(items).decode() if self.name == 'sqlite' else items

    def one_of_ids(self, field, ids, kind='text'):
        """one_of for a page of record ids (`field` an id, or with kind 'array' a JSON array of ids): on
        PostgreSQL the ids travel as one JSON text that the server unpacks.

        NOTE: psycopg writes a list parameter element by element: 0.7 ms of CPU for the 1,000 ids of a page (a
        sixth of the page's own time), against 0.1 ms for orjson + json_array_elements_text. The planner then
        counts on ~100 ids instead of estimating each (1-4 ms of planning at 1,000), which suits a look-up by id.
        """
        if self.name == 'sqlite':
            return self.one_of(field, kind, ids)
        return Sql(
            '{0} ?| {1}' if kind == 'array' else '{0} = ANY({1})',
            field,
            Sql('ARRAY(SELECT json_array_elements_text({0}::json))', Bound(_json_ids(ids))),
        )

    def render(self, query):
        parameter = self.parameter()
        sql = query.get_sql(parameter=parameter)
        return sql, parameter.get_parameters()

    # NOTE: builders made here change in place instead of copying themselves at every step
    # (PyPika's default), which was a quarter of a list request's time.
    def from_(self, table):
        return self.query.from_(table, immutable=False)

    def into(self, table):
        return self.query.into(table, immutable=False)

    def update(self, table):
        return self.query.update(table, immutable=False)

    def memo(self, key, build):
        """The SQL of a fixed-shape statement, rendered once: `build()` -> a query whose values the
        caller passes again as params, in the same order."""
        sql = _STATEMENTS.get((self.name, key))
        if sql is None:
            sql = _remember((self.name, key), self.render(build())[0])
        return sql


def sqlite_dialect(adapt):
    return Dialect('sqlite', SQLLiteQuery, QmarkParameter, adapt, 'LIKE', 'IS NOT', 'json_array_length', False)


def postgres_dialect(adapt):
    return Dialect(
        'postgresql', PostgreSQLQuery, FormatParameter, adapt, 'ILIKE', 'IS DISTINCT FROM', 'jsonb_array_length', True
    )


# -- filters ---------------------------------------------------------------------------------------


def like_pattern(value, prefix='%', suffix='%'):
    """`%`, `_` and the escape character itself are matched literally."""
    escaped = value.replace('\\', '\\\\').replace('%', '\\%').replace('_', '\\_')
    return prefix + escaped + suffix


def _eq(d, field, column, value):
    if value is None:
        return field.isnull()
    if column.kind == 'array':
        return d.array_contains(field, value)
    return field == d.bind(column, value)


def _negate(field, term):
    """Negations keep rows where the field is NULL: a contact without a status is not 'active'."""
    return Sql('({0} IS NULL OR NOT ({1}))', field, term)


def _neq(d, field, column, value):
    if value is None:
        return field.notnull()
    if column.kind == 'array':
        return _negate(field, d.array_contains(field, value))
    return Sql('{0} %s {1}' % d.distinct, field, d.bind(column, value))


def _in(d, field, column, values):
    present = [v for v in values if v is not None]
    terms = [d.one_of(field, column.kind, present)] if present else []
    if None in values:
        terms.append(field.isnull())
    return Criterion.any(terms) if terms else FALSE


def _not_in(d, field, column, values):
    if not values:
        return TRUE
    if None in values:
        # NOTE: null is one of the values left out, so NULL rows are left out too.
        rest = [v for v in values if v is not None]
        return field.notnull() if not rest else field.notnull() & Sql('NOT ({0})', _in(d, field, column, rest))
    return _negate(field, _in(d, field, column, values))


def _is_empty(d, field, column):
    if column.kind == 'text':
        return Sql("({0} IS NULL OR {0} = '')", field)
    if column.kind == 'array':
        return Sql('({0} IS NULL OR %s({0}) = 0)' % d.array_length, field)
    return field.isnull()


OPERATORS = {
    'eq': _eq,
    'neq': _neq,
    'gt': lambda d, f, c, v: f > d.bind(c, v),
    'gte': lambda d, f, c, v: f >= d.bind(c, v),
    'lt': lambda d, f, c, v: f < d.bind(c, v),
    'lte': lambda d, f, c, v: f <= d.bind(c, v),
    'in': _in,
    'not_in': _not_in,
    'is_empty': lambda d, f, c, v: _is_empty(d, f, c),
    'is_not_empty': lambda d, f, c, v: Sql('NOT {0}', _is_empty(d, f, c)),
}


def criterion(d, table, info, flt, org_id=None):
    """One parsed filter as a PyPika criterion (across a reference: see `across`, scoped by `org_id`)."""
    if flt.via is not None:
        return across(d, table, flt, org_id)
    if flt.column.kind == SEARCH_KIND:
        return search(d, table, info, flt.value, org_id)
    if flt.op in TEXT_OPERATORS:
        return TEXT_OPERATORS[flt.op](d, table, info, flt.column, flt.value, org_id)
    return OPERATORS[flt.op](d, table.field(flt.column.name), flt.column, flt.value)


def fold(d, table, info, filters, org_id=None):
    """`a or b and c` means `(a OR b) AND c`: each logicalOp joins a filter to the next one."""
    result = None
    for previous, flt in zip((None,) + tuple(filters), filters):
        term = criterion(d, table, info, flt, org_id)
        if result is None:
            result = term
        elif previous.logical == 'or':
            result = result | term
        else:
            result = result & term
    return result


# -- search ----------------------------------------------------------------------------------------
# Folded text lives beside the records in `search_texts`, one row per record (crmapi/search.py folds it,
# store.py keeps it in the writing transaction), keyed by (table_name, organization_id, record_id): the
# record's archived state, `words` (its words, each after a space: q), `names` (its name columns' words:
# ranking) and `fields` (its text columns folded, one JSON object: the text operators). The database
# only compares folded text exactly. Indexes: SQLite one FTS5 `trigram` table over words and texts
# (kept by triggers; no positions: candidates the search row confirms); PostgreSQL a GIN tsvector of words
# and pg_trgm GIN on texts.
# A search condition is `<key> IN (candidates)`; too short for an index, a correlated EXISTS. A list that
# only searches counts (and, ranked, pages) in the search rows alone: see `searches_only`.

SEARCH_KIND = 'search'  # the kind of the pseudo-column `q` in `filters`


class Qualified(Term):
    """A column named with its table (`"contacts"."id"`), for correlated sub-queries."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def get_sql(self, **kwargs):
        return self.field.get_sql(**{**kwargs, 'with_namespace': True})


def search_table(info):
    """The table whose search rows serve `info`: a summary view uses its base table's."""
    return info.spec.counted_as


def _scope(target, org_id):
    """The search rows of one table of one organization (the leading columns of their key)."""
    return Sql('s.table_name = {0} AND s.organization_id = {1}', Bound(target), Bound(org_id))


def _text_class(value):
    """What a text operator's SQL looks like: 'empty' (any value), 'short' (scanned), 'indexed' (the index
    finds candidates by the whole value) or 'long' (by its start); the rows are compared."""
    n = len(searching.fold(value))
    if n == 0:
        return 'empty'
    return 'short' if n < searching.TRIGRAM else 'indexed' if n <= FTS_PHRASE else 'long'


def _exact(d, op, folded, column):
    """`column` holds `folded` as `op` says, compared exactly (case-sensitively, character by character)."""
    if d.name == 'postgresql':
        pattern = like_pattern(
            folded, prefix='' if op == 'starts_with' else '%', suffix='' if op == 'ends_with' else '%'
        )
        return Sql("{0} LIKE {1} ESCAPE '\\'", column, Bound(pattern))
    if op == 'contains':
        return Sql('instr({0}, {1}) > 0', column, Bound(folded))
    if op == 'starts_with':
        return Sql('instr({0}, {1}) = 1', column, Bound(folded))
    return Sql('substr({0}, -length({1})) = {2}', column, Bound(folded), Bound(folded))


def _field(d, name):
    """A text column's folded value in the search row `s` (NULL when the column is)."""
    if d.name == 'postgresql':
        return Sql('(s.fields::json ->> {0})', Bound(name))
    return Sql('json_extract(s.fields, {0})', Bound('$."' + name + '"'))


FTS_PHRASE = 12  # characters of a value the trigram index looks up; the exact comparison checks the rest


def _fts_terms(text):
    """An FTS5 query for the rows whose indexed text holds every trigram of the start of `text` (at most
    FTS_PHRASE characters): a superset of the rows that hold `text`, which the exact comparison then decides.

    NOTE: the index keeps no positions or columns (detail=none, migration 0022: a write costs half the index
    work), so it answers which rows hold each trigram, not where: each trigram is a term of its own.
    """
    text = text[:FTS_PHRASE]
    grams = dict.fromkeys(text[i : i + searching.TRIGRAM] for i in range(len(text) - searching.TRIGRAM + 1))
    return ' AND '.join('"' + gram.replace('"', '""') + '"' for gram in grams)


def _in_fields(d, op, folded):
    """Candidates from the index: search rows whose `texts` hold `folded` (for ends_with, its end; else its
    start: at most FTS_PHRASE characters), in any column: `_exact` decides on `fields`."""
    if d.name == 'postgresql':
        return Sql("s.texts LIKE {0} ESCAPE '\\'", Bound(like_pattern(folded)))
    return Sql(
        's.id IN (SELECT rowid FROM search_texts_trigrams WHERE search_texts_trigrams MATCH {0})',
        Bound(_fts_terms(folded[-FTS_PHRASE:] if op == 'ends_with' else folded)),
    )


def _text_match(d, table, info, column, op, value, org_id):
    """`column` contains (starts with, ends with) `value`, folded: candidates from the trigram index,
    then the exact comparison. A view column computed from a reference (`company_name`) is matched in
    the referenced record's row."""
    folded = searching.fold(value)
    field = table.field(column.name)
    if not folded:
        return field.notnull()
    key, target, target_column = table.id, search_table(info), column.name
    if column.name in info.spec.search.via:
        ref, target, target_column = info.spec.search.via[column.name]
        key = table.field(ref)
    elif not info.spec.search.indexed:
        return _like(
            d,
            field,
            like_pattern(value, prefix='' if op == 'starts_with' else '%', suffix='' if op == 'ends_with' else '%'),
        )
    elif column.name not in info.searched:
        # NOTE: ids and references (server-made: lowercase ASCII, their own folding) are compared as stored.
        return _exact(d, op, folded, field)
    if len(folded) < searching.TRIGRAM:
        return Sql(
            'EXISTS (SELECT 1 FROM search_texts s WHERE {0} AND s.record_id = {1} AND {2})',
            _scope(target, org_id),
            Qualified(key),
            _exact(d, op, folded, _field(d, target_column)),
        )
    return Sql(
        '{0} IN (SELECT s.record_id FROM search_texts s WHERE {1} AND {2} AND {3})',
        key,
        _in_fields(d, op, folded),
        _scope(target, org_id),
        _exact(d, op, folded, _field(d, target_column)),
    )


def _like(d, field, pattern):
    """The scan of a resource without search rows (written around the store): case-insensitive LIKE."""
    return Sql("{0} %s {1} ESCAPE '\\'" % d.like, field, Bound(pattern))


TEXT_OPERATORS = {
    'contains': lambda d, t, i, c, v, o: _text_match(d, t, i, c, 'contains', v, o),
    'not_contains': lambda d, t, i, c, v, o: _negate(t.field(c.name), _text_match(d, t, i, c, 'contains', v, o)),
    'starts_with': lambda d, t, i, c, v, o: _text_match(d, t, i, c, 'starts_with', v, o),
    'ends_with': lambda d, t, i, c, v, o: _text_match(d, t, i, c, 'ends_with', v, o),
}


def _word_starts(d, words):
    """Every word of `words` starts a word of the search row's `words` (stored as ' w1 w2 …')."""
    find = 'strpos({0}, {1}) > 0' if d.name == 'postgresql' else 'instr({0}, {1}) > 0'
    return Criterion.all([Sql(find, Sql('s.words'), Bound(searching.WORD_START + w)) for w in words])


TSVECTOR = "array_to_tsvector(string_to_array(ltrim(s.words, ' '), '  '))"  # PostgreSQL: a search row's words
PREFIXES = "array_to_tsvector(string_to_array(ltrim(s.prefixes, ' '), ' '))"  # PostgreSQL: its words' starts


def _lexeme(word, prefix=True):
    """PostgreSQL: `word` in a tsquery, as a prefix (`'w':*`) or an exact lexeme."""
    return "'" + word.replace('\\', '\\\\').replace("'", "''") + ("':*" if prefix else "'")


def _tsquery(alternatives):
    """PostgreSQL: each alternative's words as prefixes, ANDed; the alternatives ORed."""
    return ' | '.join('(' + ' & '.join(map(_lexeme, alternative)) + ')' for alternative in alternatives)


def _prefixes_match(d, alternative):
    """PostgreSQL: the search row `s` holds each word of `alternative` at a word start, when one of them is of
    PREFIX characters at most: those words are exact lexemes of `prefixes`, a longer one is its first PREFIX
    characters there (a candidate) and is then read on the row.

    NOTE: the words index answers `'jo':*` as a partial match, every lexeme that starts so read into a bitmap (at 1M
    contacts ~100k email words like `jones2459`: q "jo smi" 60-300 ms); `'jo' & 'smi'` in `prefixes` is two exact
    lexemes (~15 ms). A q of longer words only ('smith', 'marx') keeps the words index: its partial match is narrow
    where `'smi'` or `'mar'` is not (q "marx" 1 ms against 240 ms through 'mar').
    """
    starts = dict.fromkeys(w[: searching.PREFIX] for w in alternative)
    return Criterion.all(
        [
            Sql(f'{PREFIXES} @@ CAST({{0}} AS tsquery)', Bound(' & '.join(_lexeme(w, False) for w in starts))),
            _word_starts(d, [w for w in alternative if len(w) > searching.PREFIX]),
        ]
    )


def _short(alternative):
    """PostgreSQL: whether `alternative` is found through `prefixes` (_prefixes_match), else the words index."""
    return any(len(w) <= searching.PREFIX for w in alternative)


def _word_class(word):
    """SQLite: WORD_START + `word` is looked up in the trigram index whole, or only its start is."""
    return 'exact' if len(searching.WORD_START + word) <= FTS_PHRASE else 'long'


def _words_match(d, terms):
    """The search row `s` holds, for one of the alternatives of `terms`, each word at a word start."""
    if d.name == 'postgresql':
        long = [a for a in terms.alternatives if not _short(a)]
        found = [_prefixes_match(d, a) for a in terms.alternatives if _short(a)]
        if long:
            found.append(Sql(f'{TSVECTOR} @@ CAST({{0}} AS tsquery)', Bound(_tsquery(long))))
        return Criterion.any(found)
    match = ' OR '.join(
        '(' + ' AND '.join(_fts_terms(searching.WORD_START + w) for w in alternative) + ')'
        for alternative in terms.alternatives
    )
    return Sql(
        's.id IN (SELECT rowid FROM search_texts_trigrams WHERE search_texts_trigrams MATCH {0}) AND {1}',
        Bound(match),
        _words_hold(d, terms),
    )


def _words_hold(d, terms):
    """The search row `s` holds, for one of the alternatives of `terms`, each word at a word start (read on the row
    itself: what the index's candidates are confirmed by)."""
    return Criterion.any([_word_starts(d, a) for a in terms.alternatives])


def search(d, table, info, terms, org_id):
    """`q`: for one of the alternatives, each word starts a word of the record's searchable text."""
    if not all(terms.alternatives):
        return TRUE
    if not info.spec.search.indexed:
        columns = [table.field(c.name) for c in info.search_columns]
        return (
            Criterion.any(
                [
                    Criterion.all([Criterion.any([_like(d, f, like_pattern(w)) for f in columns]) for w in a])
                    for a in terms.alternatives
                ]
            )
            if columns
            else FALSE
        )
    return Sql(
        '{0} IN (SELECT s.record_id FROM search_texts s WHERE {1} AND {2})',
        table.id,
        _scope(search_table(info), org_id),
        _words_match(d, terms),
    )


def _score(d, lq):
    """How many of the words asked for start a word of the search row's name columns."""
    find = 'strpos' if d.name == 'postgresql' else 'instr'
    return Sql(
        ' + '.join(f'(CASE WHEN {find}(s.names, {{{i}}}) > 0 THEN 1 ELSE 0 END)' for i in range(len(lq.rank_words))),
        *[Bound(' ' + w) for w in lq.rank_words],
    )


def _ranking(d, table, info, org_id, lq):
    """Best first when a list searches without a sort: how many of the words asked for start a word of the
    record's name columns (more first); `_order` then adds the id tie-break."""
    if not lq.ranked:
        return []
    rank = Sql(
        'COALESCE((SELECT {0} FROM search_texts s WHERE {1} AND s.record_id = {2}), 0)',
        _score(d, lq),
        _scope(search_table(info), org_id),
        Qualified(table.id),
    )
    return [(rank, Order.desc)]


ROW_OPERATORS = ('contains', 'starts_with', 'ends_with')  # text operators a search row alone decides


def _on_row(info, flt):
    """Whether a filter of `filters` is decided by the search row alone: a q, or a text operator on a text
    column of the resource's own (not a view's computed one, nor across a reference)."""
    if flt.column.kind == SEARCH_KIND:
        return all(flt.value.alternatives)
    return (
        flt.op in ROW_OPERATORS
        and flt.via is None
        and flt.column.name in info.searched
        and flt.column.name not in info.spec.search.via
    )


def searches_only(info, lq):
    """Whether a list's matches are exactly the search rows its q's and text operators find (no other filter,
    no keyset): then its count, and its page when ranked or in id order, come from the search rows alone,
    never joining each match to its record (a q as broad as "a" matches most of them)."""
    if lq.search is not None and not all(lq.search.alternatives):
        return False
    return (
        bool(lq.filters or lq.search is not None)
        and info.spec.search.indexed
        and not lq.equals
        and lq.after is None
        and all(_on_row(info, f) for f in lq.filters)
        and all(f.logical == 'and' for f in lq.filters[:-1])
    )


def _row_match(d, flt, indexed=True):
    """A filter `_on_row` as a condition on the search row `s` (not `indexed`: decided on the row alone)."""
    if flt.column.kind == SEARCH_KIND:
        return _words_match(d, flt.value) if indexed else _words_hold(d, flt.value)
    folded, field = searching.fold(flt.value), _field(d, flt.column.name)
    if not folded:
        return Sql('{0} IS NOT NULL', field)
    if len(folded) < searching.TRIGRAM:
        return _exact(d, flt.op, folded, field)
    # NOTE: not indexed, the row's `texts` (every column's value) must hold the value first: cheaper than the JSON
    candidate = _in_fields(d, flt.op, folded) if indexed else _exact(d, 'contains', folded, Sql('s.texts'))
    return Sql('{0} AND {1}', candidate, _exact(d, flt.op, folded, field))


def _search_rows(d, info, org_id, lq):
    """The search rows a `searches_only` list matches: its table's and organization's, live unless it
    includes the archived, passing its q and every filter."""
    parts = [_scope(search_table(info), org_id)]
    if info.archivable and not lq.include_archived:
        parts.append(Sql('s.archived = FALSE'))
    if lq.search is not None:
        parts.append(_words_match(d, lq.search))
    return Criterion.all(parts + [_row_match(d, f) for f in lq.filters])


def pages_in_rows(info, lq):
    """Whether build_list pages in the search rows (`_row_page`): its rows then end with the list's total."""
    return not lq.sorts and searches_only(info, lq)


def _row_page(d, info, org_id, lq, seen=False):
    """A page of a `searches_only` list without a sort: its ids ranked (or in id order) and paged in the
    search rows, then their records, each row ending with the number of matches.

    NOTE: the total is counted in the same pass over the matches that ranks them (a window over all of
    them, before the LIMIT): a broad q reads its matches once, not once more for Content-Range.
    """
    columns = ', '.join(f't.{quote(n)}' for n in page_columns(info, seen))
    return Sql(
        f'SELECT {columns}, hits.total FROM (SELECT s.record_id, {{0}} AS score, COUNT(*) OVER () AS total '
        'FROM search_texts s WHERE {1} ORDER BY score DESC, s.record_id LIMIT {2} OFFSET {3}) hits '
        f'JOIN {quote(info.spec.table)} t ON t.id = hits.record_id AND t.organization_id = {{4}} '
        'ORDER BY hits.score DESC, hits.record_id',
        _score(d, lq) if lq.ranked else Sql('0'),
        _search_rows(d, info, org_id, lq),
        Bound(int(lq.size)),
        Bound(int(lq.start)),
        Bound(org_id),
    )


# A broad search (q "mar": 137k of 1M contacts) reads, counts and sorts every match to find page 1. Its first
# page is usually among the first records of the list's order: `build_walk` checks only the first records in that
# order on their search rows (WALK_FIRST, then WALK when the first ones promise a page). When they hold a full page,
# it is the list's page; else the caller reads the matches (build_list). Its total is then counted apart
# (build_count; both databases keep it while the data is unchanged: db.KeptCounts).

WALK_FIRST = 200  # records a page of a search walks first; a rare match stops there
WALK = 1_000  # records it walks when the first ones hold enough matches, before it reads every match instead
WALK_PAGE = 100  # the deepest end of a page (start + size) looked for by a walk


def _fence(d):
    """What ends a walk's search-row check so that PostgreSQL runs it as a lookup per record (see build_walk)."""
    return ' OFFSET 0' if d.name == 'postgresql' else ''


def walks(info, lq):
    """Whether build_walk applies: a list that only searches, read from its start, sorted by the record's own
    columns (or ranked, or in id order), its page within WALK_PAGE."""
    return searches_only(info, lq) and 0 < lq.start + lq.size <= WALK_PAGE and all(s.via is None for s in lq.sorts)


def _walk_check(d, info, org_id, lq):
    """The search row of a walked record passes the list's q's and text operators, read on the row; ranked, it
    holds every word asked for in its name columns (the best score: a walk pages only records of that score)."""
    parts = [_scope(search_table(info), org_id)]
    if lq.search is not None:
        parts.append(_words_hold(d, lq.search))
    parts += [_row_match(d, f, indexed=False) for f in lq.filters]
    if lq.ranked:
        parts.append(Sql('{0} = {1}', _score(d, lq), Bound(len(lq.rank_words))))
    return Sql('SELECT 1 FROM search_texts s WHERE {0}', Criterion.all(parts))


def build_walk(d, info, org_id, lq, length, seen=False):
    """(sql, params) of a search's page found by a walk of `length` records, or None where walks() says no;
    `seen`: as build_list's.

    The first `length` records in the list's order (ranked: id order, among the records of the best score), without
    the search, each checked on its search row; from where its matches can start, when it filters its first sort
    column (`_seek`). NOTE: when the walk returns a full page, every record before the
    page's last one in the list's order was walked, so the page is the list's own; a short one proves nothing.
    """
    if not walks(info, lq):
        return None
    table = Table(info.spec.table)
    plain = replace(lq, filters=(), search=None)
    keys = list(dict.fromkeys(['id', *(s.column.name for s in lq.sorts)]))
    walked, params = _shaped(
        d,
        ('walk', list_shape(info, plain)),
        lambda: _select(d, info, org_id, plain, keys),
        lambda: _select_values(d, table, info, org_id, plain),
        [],
    )
    check, checks = _shaped(
        d,
        ('walk_check', list_shape(info, lq)),
        lambda: _walk_check(d, info, org_id, lq),
        lambda: _walk_check(d, info, org_id, lq),
        [],
    )
    name, p = quote(info.spec.table), d.parameter().get_sql()
    head, _, order = walked.rpartition(' ORDER BY ')
    seek = _seek(d, info, org_id, lq, length, head.partition(' WHERE ')[2], params)
    if seek is not None:
        walked, params = f'{head} AND {seek[0]} ORDER BY {order}', [*params, *seek[1]]
    rows = _records_select(d, table, page_columns(info, seen and reads_seen(info)))
    # NOTE: the walk reads only the keys of the order (a covering index), the page's records are read last. Its
    # length is written into the statement: PostgreSQL plans a LIMIT it is not told as a tenth of the table. Each
    # walked record is checked on its own search row: on PostgreSQL `OFFSET 0` keeps the EXISTS a per-record lookup
    # by the whole key; as a semi-join, with the statistics of a table that grew since it was analyzed, it was
    # planned as a scan of all the organization's search rows per record (7.6 s for a page of tags in the tests).
    sql = (
        f'{rows} WHERE "organization_id"={p} AND "id" IN (SELECT "id" FROM ({walked} LIMIT {int(length)}) {name} '
        f'WHERE EXISTS ({check} AND s.record_id = {name}."id"{_fence(d)}) ORDER BY {order} LIMIT {p} OFFSET {p}) '
        f'ORDER BY {order}'
    )
    return sql, [org_id, *params, *checks, int(lq.size), int(lq.start)]


def _seek_filters(lq):
    """The text operators of a walked list on its first sort column: each is decided by that column's value alone."""
    first = lq.sorts[0] if lq.sorts else None
    if first is None or first.column.name == 'id':
        return ()
    return tuple(f for f in lq.filters if f.column.kind != SEARCH_KIND and f.column.name == first.column.name)


def _seek(d, info, org_id, lq, length, scope, scope_params):
    """(sql, params) of where a walk starts: its first sort column at or past the first of its values that passes the
    list's text operators on that column, or None (no such operator). `length`: the walk's; `scope`: the walked
    list's WHERE (and its params).

    NOTE: the matches of an operator on the sort column lie together in the sort's order (contains "mith": the
    Smiths, past 80 % of the contacts by last name), where a walk from the start never gets. Such an operator is decided
    by the value alone, so the values before the run are passed over one at a time (a loose index scan: the next
    value, and one record holding it checked on its search row), at most as many as the records the walk reads (the
    same bound on its cost): stopped there, the walk starts at the first value not proven to fail, and a run that
    starts past it is read as today (build_list). NULL passes no text operator, so it is never a start.
    """
    filters = _seek_filters(lq)
    sort = lq.sorts[0] if filters else None
    if sort is None or sort.column.max_length is None:
        return None  # NOTE: a column no index stores (schema.make_column) would cost a scan per value passed over
    check, checks = _shaped(
        d,
        ('walk_seek', list_shape(info, lq)),
        lambda: _walk_check(d, info, org_id, replace(lq, search=None, filters=filters)),
        lambda: _walk_check(d, info, org_id, replace(lq, search=None, filters=filters)),
        [],
    )
    c, t = quote(sort.column.name), quote(info.spec.table)
    beyond, first = ('<', 'max') if sort.descending else ('>', 'min')

    def value(condition):
        # NOTE: min/max, not ORDER BY … LIMIT 1: PostgreSQL serves them from an index on the column whatever its
        # NULLS order (an ORDER BY spelled otherwise than the index sorted all of a million contacts per value)
        return f'(SELECT {first}({c}) FROM {t} WHERE {scope} AND {condition})'

    holder = f'(SELECT "id" FROM {t} WHERE {scope} AND {c} = v.x LIMIT 1)'
    sql = (
        f'{c} {beyond}= (WITH RECURSIVE v(x, n) AS (SELECT {value(f"{c} IS NOT NULL")}, 0 UNION ALL '
        f'SELECT {value(f"{c} {beyond} v.x")}, v.n + 1 FROM v WHERE v.x IS NOT NULL AND v.n < {int(length)} '
        f'AND NOT EXISTS ({check} AND s.record_id = {holder}{_fence(d)})) SELECT x FROM v ORDER BY n DESC LIMIT 1)'
    )
    return sql, [*scope_params, *scope_params, *checks, *scope_params]


def where(d, table, info, org_id, lq):
    """The full WHERE of a list query: org scope, archive rule, `filter`, `filters`, `q`."""
    parts = [table.organization_id == Bound(org_id)]
    if info.archivable and not lq.include_archived:
        parts.append(table.archived_at.isnull())
    if d.name == 'postgresql' and lq.sorts and searches_only(info, replace(lq, after=None)):
        # NOTE: PostgreSQL plans `id IN (matches)` under a LIMIT as a walk of the sort's index, each record looked up
        # in the search rows, as if matches were spread evenly: q "jo smi" by last name walked 740k of 1M contacts
        # (9 s) to reach the Smiths. Matches read first (an array it cannot walk), then sorted: 30-90 ms.
        parts.append(
            Sql(
                '{0} = ANY(ARRAY(SELECT s.record_id FROM search_texts s WHERE {1}))',
                table.id,
                _search_rows(d, info, org_id, lq),
            )
        )
        return Criterion.all(parts)
    parts += [criterion(d, table, info, f, org_id) for f in lq.equals]
    if lq.filters:
        parts.append(fold(d, table, info, lq.filters, org_id))
    if lq.search is not None:
        parts.append(search(d, table, info, lq.search, org_id))
    return Criterion.all(parts)


# -- across a reference ----------------------------------------------------------------------------
# `company.name` filters contacts by a field of the company their `company_id` points at, as a
# semi-join on the target's (organization_id, id) key; a record without a reference (or whose
# reference names no record of the organization) is filtered as if every field of its target were null.


def holds_for_null(flt):
    """Whether `flt` keeps a row whose field is NULL (negations do; so do `eq null` and `is_empty`)."""
    op, value = flt.op, flt.value
    if op in ('eq', 'neq'):
        return (value is None) == (op == 'eq')
    if op in ('in', 'not_in'):
        return (None in value) == (op == 'in')
    return op in ('not_contains', 'is_empty')


def across(d, table, flt, org_id):
    """`ref IN (SELECT id FROM target WHERE organization_id = ? AND <cond>)`; where a missing target
    matches (`holds_for_null`), `NOT EXISTS (SELECT 1 FROM target WHERE organization_id = ? AND id = ref
    AND NOT <cond>)`, which keeps null and dangling references too.

    NOTE: the conditions that hold for NULL are all two-valued (IS NULL, IS DISTINCT FROM, `x IS NULL OR
    NOT …`), so NOT <cond> is exactly the rows that fail it. NOT EXISTS, not NOT IN: PostgreSQL plans it
    as an anti-join on the key, whatever the target's size. Bounds are made in the order the SQL binds them.
    """
    via = flt.via
    target = Table(via.target.spec.table).as_('ref_' + via.column.name)
    ref = table.field(via.column.name)
    scope = target.organization_id == Bound(org_id)
    local = replace(flt, via=None)
    if not holds_for_null(flt):
        return ref.isin(
            d.query.from_(target).select(target.id).where(scope & criterion(d, target, via.target, local, org_id))
        )
    linked = Sql('{0} = ' + f'{quote(table.get_table_name())}.{quote(via.column.name)}', target.id)
    subquery = (
        d.query.from_(target)
        .select(Sql('1'))
        .where(scope & linked & Sql('NOT ({0})', criterion(d, target, via.target, local, org_id)))
    )
    return Sql('NOT EXISTS {0}', Subquery(subquery))


class Subquery(Term):
    """A query in parentheses wherever it is rendered (PyPika adds them only in some places)."""

    def __init__(self, query):
        super().__init__()
        self.query = query

    def get_sql(self, **kwargs):
        return '(' + self.query.get_sql(**{**kwargs, 'subquery': False}) + ')'


def _sort_joins(d, table, org_id, sorts):
    """{relation name: (aliased target table, ON criterion)} for the sorts across a reference: one
    LEFT JOIN per relation, scoped by organization, so a record without a reference sorts as NULL."""
    joins = {}
    for s in sorts:
        if s.via is not None and s.via.name not in joins:
            target = Table(s.via.target.spec.table).as_('sort_' + s.via.column.name)
            on = (target.organization_id == Bound(org_id)) & (target.id == table.field(s.via.column.name))
            joins[s.via.name] = (target, on)
    return joins


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


# NOTE: SQLite only. An index created on a database whose tables have statistics (sqlite_stat1) has none of its
# own, and the planner then takes its equality on organization_id for a near-unique key: after migration 0021
# every contacts list sorted all of an organization's rows through it (2.4 s at 100k) instead of walking the
# sort's index. Only such indexes are analyzed: a database without statistics keeps planning without them.
UNANALYZED_INDEXES = (
    "SELECT i.name FROM sqlite_master AS i WHERE i.type = 'index' "
    'AND EXISTS (SELECT 1 FROM sqlite_stat1 AS s WHERE s.tbl = i.tbl_name) '
    'AND NOT EXISTS (SELECT 1 FROM sqlite_stat1 AS s WHERE s.idx = i.name) ORDER BY i.name'
)
HAS_STATISTICS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"


def build_analyze_index(name):
    """Planner statistics of one SQLite index (see UNANALYZED_INDEXES)."""
    return f'ANALYZE {quote(name)}'


# -- statements ------------------------------------------------------------------------------------


def output_columns(info):
    """What a record looks like on the wire: every column but the organization."""
    return [name for name in info.columns if name != 'organization_id']


# -- children seen (migration 0025) ----------------------------------------------------------------
# A contact's children_seen has a bit per reverse relation, set by triggers when a child first names the contact
# and never cleared: a superset of the contacts with children (archived, deleted and moved-away children leave it
# set; the children's statement finds those absent). A page embedding one of these relations reads the flags with
# its rows and asks the children's index only for the contacts whose bit is set.
SEEN_COLUMN = 'children_seen'
SEEN_TABLES = frozenset({'contacts'})
SEEN_BITS = {('contact_notes', 'contact_id'): 1, ('tasks', 'contact_id'): 2, ('deals', 'contact_ids'): 4}


def reads_seen(info):
    """Whether pages of `info` can read SEEN_COLUMN: its table has one.

    NOTE: a database migrated past 0025 by another branch before 0025 existed skips it (`migrate` runs only newer
    versions): without the column, pages ask every parent, as before.
    """
    return info.spec.table in SEEN_TABLES and SEEN_COLUMN in info.hidden


def seen_bit(child, column):
    """The bit of children_seen that the children of `child` (a TableInfo) through `column` set, or None."""
    return SEEN_BITS.get((child.spec.table, column.name)) if column.references in SEEN_TABLES else None


def page_columns(info, seen=False):
    """The columns a page reads: the output columns, then SEEN_COLUMN when `seen`."""
    columns = output_columns(info)
    return [*columns, SEEN_COLUMN] if seen else columns


def _returning(info):
    return ' RETURNING ' + ','.join('"%s"' % n.replace('"', '""') for n in output_columns(info))


def _order(d, table, sorts, joins=None):
    """ORDER BY the sorts, then `id` so that paging visits every row once.

    NOTE: NULLs sort as the smallest value on both databases (SQLite's native order); PostgreSQL
    spells that out for nullable columns only, so NOT NULL sorts still match plain indexes. A sort
    across a reference (`joins`, from _sort_joins) is nullable whatever its column: the LEFT JOIN.
    """
    terms = []
    last_desc = False
    for s in sorts:
        last_desc = s.descending
        if s.via is not None:
            terms.append((joins[s.via.name][0].field(s.column.name), s.descending, True))
            continue
        if s.column.name == 'id':
            break
        terms.append((table.field(s.column.name), s.descending, s.column.nullable))
    terms.append((table.id, last_desc, False))
    order = []
    for field, desc, nullable in terms:
        if d.nulls_sql and nullable:
            order.append((Sql('{0} DESC NULLS LAST' if desc else '{0} ASC NULLS FIRST', field), None))
        else:
            order.append((field, Order.desc if desc else Order.asc))
    return order


def _keys(table, info, lq):
    """(field, descending, nullable, value) for each keyset column: the sorts up to id, then id."""
    keys, last_desc = [], False
    for s in lq.sorts:
        last_desc = s.descending
        if s.column.name == 'id':
            break
        keys.append((table.field(s.column.name), s.descending, s.column.nullable, s.column))
    keys.append((table.id, last_desc, False, info.columns['id']))
    return [(f, desc, nullable, column, value) for (f, desc, nullable, column), value in zip(keys, lq.after)]


def after(d, table, info, lq):
    """Rows that sort after the cursor's row, in crmapi's order (NULLs smallest)."""
    keys = _keys(table, info, lq)
    directions = {desc for _, desc, _, _, _ in keys}
    if directions == {False} and all(v is not None for *_, v in keys):
        # NOTE: ascending with known values: one row-value comparison, which an index range serves.
        return Tuple(*[f for f, *_ in keys]) > Tuple(*[d.bind(c, v) for f, _, _, c, v in keys])
    clauses = []
    for i, (field, desc, nullable, column, value) in enumerate(keys):
        equal = [f.isnull() if v is None else f == d.bind(c, v) for f, _, _, c, v in keys[:i]]
        if value is None:
            beyond = FALSE if desc else field.notnull()
        elif desc:
            beyond = (field < d.bind(column, value)) | field.isnull() if nullable else field < d.bind(column, value)
        else:
            beyond = field > d.bind(column, value)
        clauses.append(Criterion.all(equal + [beyond]))
    return Criterion.any(clauses)


def _condition(d, table, info, org_id, lq, keyset=True):
    condition = where(d, table, info, org_id, lq)
    if keyset and lq.after is not None:
        condition &= after(d, table, info, lq)
    return condition


def _select(d, info, org_id, lq, columns=None):
    """The rows of a list in order, before paging (`columns`: only these)."""
    table = Table(info.spec.table)
    query = d.from_(table)
    joins = _sort_joins(d, table, org_id, lq.sorts)
    for target, on in joins.values():
        query = query.left_join(target).on(on)
    query = query.select(*[table.field(n) for n in columns or output_columns(info)]).where(
        _condition(d, table, info, org_id, lq)
    )
    for term, order in _ranking(d, table, info, org_id, lq) + _order(d, table, lq.sorts, joins):
        query = query.orderby(term, order=order)
    return query


def _select_values(d, table, info, org_id, lq):
    """The values _select binds, in its order: the joins' organization, then the WHERE's."""
    _sort_joins(d, table, org_id, lq.sorts)
    return _condition(d, table, info, org_id, lq)


# -- statement shapes ------------------------------------------------------------------------------
# A list's SQL depends only on its shape (which fields, operators, sorts, which values are NULL or
# lists of what length), never on the values themselves, which are all bound. The SQL of a shape
# is rendered once; later requests of that shape only build their WHERE terms again to collect the
# values, in the order the SQL binds them (checked when the shape is first rendered).


def _value_shape(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(v is None for v in value)
    return True


def _filter_shape(value, op=None):
    """A list's SQL says only whether it holds values and whether it holds null, whatever its length;
    a search's, how many words each alternative has and which are long enough for an index; a text
    operator's, whether its value is empty, short or long enough for an index."""
    if isinstance(value, searching.Terms):
        return tuple(tuple((_word_class(w), len(w) <= searching.PREFIX) for w in a) for a in value.alternatives)
    if op in TEXT_OPERATORS:
        return _text_class(value)
    if isinstance(value, (list, tuple)):
        return any(v is not None for v in value), None in value
    return _value_shape(value)


def _path(item):
    """What a Filter's or Sort's field adds to a shape: its column, and across a reference, the
    reference and the target's own shape."""
    via = item.via
    return item.column.name if via is None else (via.column.name, via.target.shape_key, item.column.name)


def list_shape(info, lq):
    filters = tuple((_path(f), f.op, f.logical, _filter_shape(f.value, f.op)) for f in (*lq.equals, *lq.filters))
    return (
        info.shape_key,
        len(lq.equals),
        filters,
        _filter_shape(lq.search),
        lq.include_archived,
        tuple((_path(s), s.descending) for s in lq.sorts),
        len(lq.rank_words) if lq.ranked else None,
        None if lq.after is None else _value_shape(lq.after),
    )


@contextlib.contextmanager
def _recording():
    _recorder.bounds = bounds = []
    try:
        yield bounds
    finally:
        _recorder.bounds = None


def _shaped(d, key, build, condition, extra):
    """(sql, params) for a statement of a known shape; `extra` params follow the WHERE's."""
    sql = _STATEMENTS.get((d.name, key))
    if sql is not None:
        with _recording() as bounds:
            condition()
        return sql, [*bounds, *extra]
    with _recording() as bounds:
        query = build()
    sql, params = d.render(query)
    params = [*params, *extra]
    if len(params) == len(bounds) + len(extra) and all(a is b for a, b in zip(params, bounds)):
        _remember((d.name, key), sql)
    return sql, params


def _paging(d, lq):
    p = d.parameter().get_sql()
    if lq.after is not None:
        return f' LIMIT {p}', [int(lq.size)]
    return f' LIMIT {p} OFFSET {p}', [int(lq.size), int(lq.start)]


DEFERRED_FROM = 1000  # an OFFSET from which PostgreSQL pages are read by a deferred join


def _deferred(d, lq):
    """Whether a page is read ids first: a deep OFFSET on PostgreSQL, sorted on the record's own columns."""
    return (
        d.name == 'postgresql'
        and lq.after is None
        and lq.start >= DEFERRED_FROM
        and lq.search is None
        and all(s.via is None for s in lq.sorts)
    )


def build_list(d, info, org_id, lq, seen=False):
    """A page of records: rows of the output columns, then `seen` (the SEEN_COLUMN, where asked for and the
    table has one), then the total where pages_in_rows."""
    table = Table(info.spec.table)
    seen = seen and reads_seen(info)
    if pages_in_rows(info, lq):
        return _shaped(
            d,
            ('row_page', list_shape(info, lq), seen),
            lambda: _row_page(d, info, org_id, lq, seen),
            lambda: _row_page(d, info, org_id, lq, seen),
            [],
        )
    paging, extra = _paging(d, lq)
    if _deferred(d, lq):
        return _deferred_page(d, info, org_id, lq, table, paging, extra, seen)
    sql, params = _shaped(
        d,
        ('list', list_shape(info, lq), seen),
        lambda: _select(d, info, org_id, lq, page_columns(info, seen)),
        lambda: (_select_values(d, table, info, org_id, lq), _ranking(d, table, info, org_id, lq)),
        extra,
    )
    return sql + paging, params


def _records_select(d, table, columns):
    """`SELECT <columns> FROM <table>`, rendered once per table and columns: the records of a page whose ids another
    statement finds (build_walk, _deferred_page), which adds the WHERE and ORDER BY."""
    return d.memo(
        ('rows', table.get_table_name(), tuple(columns)), lambda: d.from_(table).select(*map(table.field, columns))
    )


def _deferred_page(d, info, org_id, lq, table, paging, extra, seen=False):
    """A deep page in two steps: the page's ids (LIMIT/OFFSET over the sort index alone, an index-only scan
    that skips the rows it passes without reading them), then only those rows, put back in order.

    NOTE: PostgreSQL reads every skipped row's heap tuple when the page's columns are selected with the
    OFFSET (at offset 50,000 of 100k contacts: 282 ms against 21 ms this way, EXPLAIN ANALYZE). The sort
    is on the record's own columns (_deferred), so the ids query's ORDER BY applies as it is outside.
    """
    ids, params = _shaped(
        d,
        ('list_ids', list_shape(info, lq)),
        lambda: _select(d, info, org_id, lq, ['id']),
        lambda: _select_values(d, table, info, org_id, lq),
        [],
    )
    order = ids.rpartition(' ORDER BY ')[2]
    rows = _records_select(d, table, page_columns(info, seen))
    p = d.parameter().get_sql()
    sql = f'{rows} WHERE "organization_id"={p} AND "id" IN ({ids}{paging}) ORDER BY {order}'
    return sql, [org_id, *params, *extra]


def build_export(d, info, org_id, lq):
    """Every matching row, in order: for streaming a whole filtered set."""
    return d.render(_select(d, info, org_id, lq))


def build_count(d, info, org_id, lq):
    table = Table(info.spec.table)
    if searches_only(info, lq):
        return _shaped(
            d,
            ('search_count', list_shape(info, lq)),
            lambda: Sql('SELECT COUNT(*) FROM search_texts s WHERE {0}', _search_rows(d, info, org_id, lq)),
            lambda: _search_rows(d, info, org_id, lq),
            [],
        )
    return _shaped(
        d,
        ('count', list_shape(info, lq)),
        lambda: d.from_(table).select(fn.Count('*')).where(where(d, table, info, org_id, lq)),
        lambda: where(d, table, info, org_id, lq),
        [],
    )


def build_estimate(d, info, org_id, lq):
    """PostgreSQL's plan of the matching rows, whose top node estimates how many there are.

    NOTE: the rows themselves, not their COUNT: a COUNT's plan is one aggregate row.
    """
    table = Table(info.spec.table)
    if searches_only(info, lq):
        sql, params = _shaped(
            d,
            ('search_matches', list_shape(info, lq)),
            lambda: Sql('SELECT s.record_id FROM search_texts s WHERE {0}', _search_rows(d, info, org_id, lq)),
            lambda: _search_rows(d, info, org_id, lq),
            [],
        )
    else:
        sql, params = _shaped(
            d,
            ('matches', list_shape(info, lq)),
            lambda: d.from_(table).select(table.id).where(where(d, table, info, org_id, lq)),
            lambda: where(d, table, info, org_id, lq),
            [],
        )
    return 'EXPLAIN (FORMAT JSON) ' + sql, params


# -- estimated totals on SQLite --------------------------------------------------------------------
# SQLite keeps no per-value statistics (no STAT4 in the stock build; sqlite_stat1 holds only averages, which
# are far off for a skewed column: London is 8 % of the contacts, the average city 2 %). So `count=estimated`
# counts exactly up to ESTIMATE_FROM matches (a LIMITed COUNT), and above that scales the organization's
# live-row counter by the share of matches among the organization's rows in a fixed sample of the table:
# SAMPLE_RUNS runs of SAMPLE_RUN consecutive rowids, spread evenly from the lowest rowid to the highest, read
# by rowid (~0.5 ms at any size, idle, where an exact COUNT reads every matching index entry: 83,871 for London
# in 1M contacts, 4.5 ms on SQLite). The sample is the same for every request until rows are added, so totals do
# not jitter.

ESTIMATE_FROM = 1_000
SAMPLE_RUNS, SAMPLE_RUN = 125, 16  # 2,000 rows


def samples(info, lq):
    """Whether a SQLite list's total may be estimated from a sample: the live rows of a table of its own (a view
    has no rowids; the counter counts live rows) narrowed by plain filters only (a q, a text operator or a
    filter across a reference would be a look-up for each sampled row)."""
    return (
        info.spec.table == info.spec.counted_as
        and not lq.include_archived
        and not lq.searches
        and bool(lq.equals or lq.filters)
        and all(
            f.via is None and f.op not in TEXT_OPERATORS and f.column.kind != SEARCH_KIND
            for f in (*lq.equals, *lq.filters)
        )
    )


def sample_rowids(low, high, runs=SAMPLE_RUNS, run=SAMPLE_RUN):
    """The rowids of the sample between `low` and `high` (all of them when there are no more than that)."""
    if low is None:
        return []
    if high - low + 1 <= runs * run:
        return list(range(low, high + 1))
    step = (high - low + 1 - run) / (runs - 1)
    return [int(low + k * step) + i for k in range(runs) for i in range(run)]


def _narrowing(d, table, info, lq, org_id):
    """The list's filters without its scope (organization, live rows)."""
    parts = [criterion(d, table, info, f, org_id) for f in lq.equals]
    if lq.filters:
        parts.append(fold(d, table, info, lq.filters, org_id))
    return Criterion.all(parts)


def _live(table, info, org_id):
    scope = table.organization_id == Bound(org_id)
    return scope & table.archived_at.isnull() if info.archivable else scope


def build_capped_count(d, info, org_id, lq, cap):
    """The matches counted up to `cap`: exact for a small total, and never more work than `cap` of them."""
    table = Table(info.spec.table)
    p = d.parameter().get_sql()
    return _shaped(
        d,
        ('capped_count', list_shape(info, lq)),
        lambda: Sql(
            f'SELECT COUNT(*) FROM (SELECT 1 FROM {quote(info.spec.table)} WHERE {{0}} LIMIT {p})',
            where(d, table, info, org_id, lq),
        ),
        lambda: where(d, table, info, org_id, lq),
        [int(cap)],
    )


def build_rowid_span(d, info):
    """The lowest and the highest rowid of the list's table (each one seek)."""
    table = quote(info.spec.table)
    return f'SELECT (SELECT MIN(rowid) FROM {table}), (SELECT MAX(rowid) FROM {table})', []


def build_sample_count(d, info, org_id, lq, rowids):
    """Of the sampled rows (`rowids`), how many are the organization's live rows, and how many of those match."""
    table = Table(info.spec.table)
    sql = (
        f'SELECT COUNT(*), COALESCE(SUM(CASE WHEN {{0}} THEN 1 ELSE 0 END), 0) FROM {quote(info.spec.table)} '
        'WHERE rowid IN (SELECT value FROM json_each({1})) AND {2}'
    )

    def terms():  # in the order they are rendered, as _shaped records their values
        return _narrowing(d, table, info, lq, org_id), Bound(orjson.dumps(rowids).decode()), _live(table, info, org_id)

    return _shaped(d, ('sample_count', list_shape(info, lq)), lambda: Sql(sql, *terms()), terms, [])


def _by_ids(d, table, org_id, ids):
    scope = table.organization_id == Bound(org_id)
    if isinstance(ids, str):
        return scope & (table.id == Bound(ids))
    return scope & (d.one_of(table.id, 'text', ids) if ids else FALSE)


def build_get(d, info, org_id, ids, for_update=False):
    def build(table):
        columns = output_columns(info)
        return d.from_(table).select(*[table.field(n) for n in columns]).where(_by_ids(d, table, org_id, ids))

    if isinstance(ids, str):
        # NOTE: keyed by the table's shape (the output columns follow from it): a get by id whose statement was
        # written before builds nothing but this key.
        key = ('get', info.shape_key)
        sql, params = d.memo(key, lambda: build(Table(info.spec.table))), [org_id, ids]
    else:
        # NOTE: rows are locked in the order they come back; one order (by id) for every
        # transaction means two that lock the same rows queue up instead of deadlocking.
        table = Table(info.spec.table)
        sql, params = d.render(build(table).orderby(table.id))
    if for_update and d.name == 'postgresql':
        sql += ' FOR UPDATE'
    return sql, params


def build_exists(d, infos, org_id, id_lists):
    """(k, id) of the ids among `id_lists[k]` that name a record of `org_id` in `infos[k]`, for every k at once.

    NOTE: one statement whatever the number of lists and ids (each list is one parameter), its SQL written
    once per tuple of tables: a create's reference checks are one round trip, and no query building.
    """

    def write():
        parts = []
        for k, info in enumerate(infos):
            table = Table(info.spec.table)
            query = (
                d.from_(table)
                .select(Sql(str(k)), table.id)
                .where((table.organization_id == Bound(None)) & d.one_of(table.id, 'text', ['']))
            )
            parts.append(d.render(query)[0])
        return ' UNION ALL '.join(parts)

    sql = _statement(d, ('exists', tuple(info.spec.table for info in infos)), write)
    return sql, [value for ids in id_lists for value in (org_id, d.one_of_value('text', ids))]


def scoped(org_id, rows):
    """`rows` with the organization stamped on each; a row that carries one already is a programming error."""
    if any(SCOPE in row for row in rows):
        raise ValueError(f'a row to insert carries {SCOPE}: the builder stamps it from the organization')
    return [{SCOPE: org_id, **row} for row in rows]


def build_insert(d, info, org_id, row, if_absent=False):
    """INSERT … RETURNING the record of `org_id`; `if_absent` returns no row instead of failing on a duplicate key."""
    table = Table(info.spec.table)
    [row] = scoped(org_id, [row])
    names = list(row)
    query = (
        d.into(table)
        .columns(*[table.field(n) for n in names])
        .insert(*[d.bind(info.columns[n], row[n]) for n in names])
    )
    sql, params = d.render(query)
    return sql + (' ON CONFLICT DO NOTHING' if if_absent else '') + _returning(info), params


def build_update(d, info, org_id, record_id, changes):
    table = Table(info.spec.table)
    query = d.update(table)
    for name, value in changes.items():
        query = query.set(table.field(name), d.bind(info.columns[name], value))
    sql, params = d.render(query.where(_by_ids(d, table, org_id, record_id)))
    return sql + _returning(info), params


def build_delete(d, info, org_id, ids):
    table = Table(info.spec.table)
    sql, params = d.render(d.from_(table).delete().where(_by_ids(d, table, org_id, ids)))
    return sql + _returning(info), params


# -- batches ---------------------------------------------------------------------------------------
# A batch writes up to a thousand rows in a few statements: one multi-row INSERT (or UPDATE … FROM
# VALUES) per chunk, whose SQL depends only on the columns and the number of rows, so it is written
# once per shape and its values are bound in one flat list.

MAX_PARAMS = 30_000  # values bound by one statement: below SQLite's 32,766 and PostgreSQL's 65,535


def chunks(items, width=1, size=None):
    """`items` in slices of `size`, or small enough that a statement binding `width` values for each
    stays under MAX_PARAMS."""
    items = list(items)
    size = size or max(1, MAX_PARAMS // max(1, width))
    return [items[i : i + size] for i in range(0, len(items), size)]


def row_chunks(items, width):
    """`chunks` for a statement with a row of `width` placeholders per item (VALUES …): each chunk split again into
    slices whose lengths are powers of two, so that any number of items makes one of a few statement shapes.

    NOTE: every shape is a statement each connection prepares and keeps (the driver's cache holds 128); batches
    of each size from 1,000 down to 860 took one process from 49 to 230 MB. Split, a batch of 1,000 is six
    statements (512 + 256 + 128 + 64 + 32 + 8), and every size shares the shapes of 1, 2, 4 … 1,024 rows.
    """
    out = []
    for part in chunks(items, width):
        while part:
            n = 1 << (len(part).bit_length() - 1)
            out.append(part[:n])
            part = part[n:]
    return out


def _statement(d, key, write):
    """The SQL of a statement shape (its parameters follow from the shape alone), written by `write()` once."""
    sql = _STATEMENTS.get((d.name, key))
    return sql if sql is not None else _remember((d.name, key), write())


def _values(d, n, width):
    """`VALUES (?,?),(?,?)`: n rows of `width` placeholders."""
    p = d.parameter().get_sql()
    row = '(' + ','.join([p] * width) + ')'
    return 'VALUES ' + ','.join([row] * n)


def _flat(d, info, names, rows):
    """The values of `rows` (dicts holding `names`), row after row, adapted for the driver."""
    return [value for row in _adapted_rows(d, info, names, rows) for value in row]


# NOTE: kinds both adapters (crmapi.db) pass as they are: a batch's text is most of its cells.
_AS_IS = frozenset({'text', 'integer'})


def _adapted_rows(d, info, names, rows):
    """The values of `rows` (dicts holding `names`) adapted for the driver: a tuple per row, made column by column
    (a value that is the very object before it, a batch's shared timestamp, is adapted once)."""
    columns = []
    for name in names:
        kind, column = info.columns[name].kind, [row[name] for row in rows]
        # NOTE: both adapters (crmapi.db) give None for None, which converted() passes without a call.
        columns.append(column if kind in _AS_IS else converted(functools.partial(d.adapt, kind), column))
    return list(zip(*columns))


# NOTE: from this many rows of one statement on, PostgreSQL gets them by COPY: a 1,000-row INSERT spends most of its
# time binding the parameters, COPY a fraction of that; below, one INSERT is one round trip where COPY needs three.
COPY_ROWS = 20


def build_insert_rows(d, info, org_id, names, rows, upkeep=()):
    """New records `rows` of `org_id` (dicts holding `names`), without RETURNING, for Tx.write_rows: ([(statement,
    the parameters of each run)], the `upkeep` statements left to run after them). PostgreSQL from COPY_ROWS rows:
    COPY (a tuple per row); else one INSERT of each chunk of rows (`_inserts`).

    `upkeep`: statements that return nothing and keep what the write adds elsewhere (the records' search rows).
    NOTE: PostgreSQL's first INSERT runs the first of them as a CTE: a round trip less (COPY cannot).
    """
    names, upkeep = (SCOPE, *names), list(upkeep)
    columns = f'{quote(info.spec.table)} ({",".join(quote(n) for n in names)})'
    runs = _adapted_rows(d, info, names, scoped(org_id, rows))
    if d.name == 'postgresql' and len(rows) >= COPY_ROWS:
        return [
            (_statement(d, ('copy_rows', info.shape_key, names), lambda: f'COPY {columns} FROM STDIN'), runs)
        ], upkeep
    statements = _inserts(d, ('insert_rows', info.shape_key, names), f'INSERT INTO {columns} ', runs)
    if upkeep and d.name == 'postgresql':
        (upkeep_sql, upkeep_params), upkeep = upkeep[0], upkeep[1:]
        (sql, [values]), *rest = statements
        folded = _statement(d, ('with_upkeep', upkeep_sql, sql), lambda: f'WITH upkeep AS ({upkeep_sql}) {sql}')
        statements = [(folded, [(*upkeep_params, *values)]), *rest]
    return statements, upkeep


def _inserts(d, key, head, runs):
    """One multi-row INSERT (`head` VALUES …) of each chunk of `runs` (a tuple per row), for Tx.write_rows.

    NOTE: SQLite too: one statement of a thousand rows costs it ~15% less than one row's statement run a thousand
    times (executemany steps, resets and binds each run), and a batch's size repeats, so its text is cached.
    """
    width = len(runs[0]) if runs else 1
    return [
        (
            _statement(d, (*key, len(part)), functools.partial(lambda n: head + _values(d, n, width), len(part))),
            [tuple(itertools.chain.from_iterable(part))],
        )
        for part in row_chunks(runs, width)
    ]


def build_insert_many(d, info, org_id, names, rows, conflict=None, updates=()):
    """One INSERT of `rows` of `org_id` (dicts holding `names`), RETURNING each stored record (in no promised
    order).

    With `conflict` = (column, partial): an upsert. A row whose value in the organization's unique
    `column` is taken updates the stored record's `updates` columns instead (with a partial index,
    `WHERE column IS NOT NULL` names it as the arbiter). On PostgreSQL each record then ends with
    `xmax = 0`: true when the row was inserted.
    """
    names, updates, rows = (SCOPE, *names), tuple(updates), scoped(org_id, rows)

    def write():
        sql = f'INSERT INTO {quote(info.spec.table)} ({",".join(quote(n) for n in names)}) ' + _values(
            d, len(rows), len(names)
        )
        if conflict is not None:
            column, partial = conflict
            target = f'(organization_id, {quote(column)})'
            if partial:
                target += f' WHERE {quote(column)} IS NOT NULL'
            sets = ', '.join(f'{quote(n)} = excluded.{quote(n)}' for n in updates)
            sql += f' ON CONFLICT {target} DO UPDATE SET {sets}'
        sql += _returning(info)
        return sql + (', (xmax = 0)' if conflict is not None and d.name == 'postgresql' else '')

    sql = _statement(d, ('insert_many', info.shape_key, names, len(rows), conflict, updates), write)
    return sql, _flat(d, info, names, rows)


def build_update_many(d, info, org_id, names, rows, upkeep=()):
    """One UPDATE giving each record its own values of `names`, RETURNING the records: `rows` are dicts holding 'id'
    and `names`. `upkeep`: statements that return nothing and keep what the write changes elsewhere (the search rows
    of the records as the write leaves them): (the UPDATE, the upkeep statements left to run after it).

    NOTE: WITH v AS (VALUES …) UPDATE … FROM v, on both databases. PostgreSQL types a VALUES column
    from its parameters (text when they are all NULL), so each one is cast to its column's type.

    NOTE: PostgreSQL runs the first upkeep statement in the UPDATE's own, as a CTE: a round trip less while the records
    are locked (a single update's search row was a statement of its own between the UPDATE and the change row). SQLite
    cannot (no INSERT in a WITH): it runs them after the UPDATE, as before. Either way within 65,535 parameters: two
    statements of at most MAX_PARAMS each.
    """
    names, upkeep = tuple(names), list(upkeep)
    table = quote(info.spec.table)
    aliases = [f'v{i}' for i in range(len(names))]
    folded = upkeep.pop(0) if upkeep and d.name == 'postgresql' else None

    def value(alias, name):
        return f'CAST(v.{alias} AS {info.declared[name]})' if d.name == 'postgresql' else f'v.{alias}'

    def write():
        p = d.parameter().get_sql()
        sets = ', '.join(f'{quote(n)} = {value(a, n)}' for a, n in zip(aliases, names))
        also = f', upkeep AS ({folded[0]})' if folded else ''
        return (
            f'WITH v (v_id, {", ".join(aliases)}) AS ({_values(d, len(rows), len(names) + 1)}){also} '
            f'UPDATE {table} SET {sets} FROM v WHERE {table}.organization_id = {p} AND {table}.id = v.v_id'
            + _returning(info)
        )

    key = ('update_many', info.shape_key, names, len(rows), folded and folded[0])
    sql = _statement(d, key, write)
    return (sql, [*_flat(d, info, ('id', *names), rows), *(folded[1] if folded else ()), org_id]), upkeep


def build_get_by(d, info, org_id, column, keys, for_update=False):
    """The records of `org_id` whose `column` holds one of `keys`; `for_update` locks them on PostgreSQL.

    NOTE: locked in id order, as build_get does. Without locks there is no order: on SQLite an ORDER BY id
    would steer the planner to the (organization_id, id) index, away from the one on `column`.
    """
    table = Table(info.spec.table)
    field = table.field(column.name)
    query = (
        d.from_(table)
        .select(*[table.field(n) for n in output_columns(info)])
        .where((table.organization_id == Bound(org_id)) & field.isin([d.bind(column, k) for k in keys]))
    )
    locking = for_update and d.name == 'postgresql'
    sql, params = d.render(query.orderby(table.id) if locking else query)
    return (sql + ' FOR UPDATE' if locking else sql), params


def build_unique_keys(d, table):
    """The unique indexes and constraints of `table`: rows of (index, position, column, partial, predicate).

    Each row is one key column; read_unique_keys keeps those on (organization_id, column).
    """
    if d.name == 'postgresql':
        return (
            'SELECT i.indexrelid::regclass::text, k.n, a.attname, i.indpred IS NOT NULL, '
            'pg_get_expr(i.indpred, i.indrelid) '
            'FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, n) '
            'JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum '
            'WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indexprs IS NULL '
            'AND k.n <= i.indnkeyatts'
        ), [quote(table)]
    return (
        'SELECT il.name, ii.seqno, ii.name, il.partial, m.sql '
        'FROM pragma_index_list(?) AS il JOIN pragma_index_info(il.name) AS ii '
        "LEFT JOIN sqlite_master AS m ON m.type = 'index' AND m.name = il.name "
        'WHERE il."unique" = 1'
    ), [table]


def read_unique_keys(rows):
    """{column: partial} for each unique key on (organization_id, column) that can arbitrate an upsert:
    a full one, or one partial on `column IS NOT NULL` (the arbiter's WHERE)."""
    indexes = {}
    for index, position, column, partial, predicate in rows:
        indexes.setdefault(index, ([], partial, predicate))[0].append((position, column))
    keys = {}
    for columns, partial, predicate in indexes.values():
        names = [c for _, c in sorted(columns)]
        if len(names) != 2 or names[0] != 'organization_id' or names[1] is None:
            continue
        if partial and not _not_null_predicate(names[1], predicate):
            continue
        keys[names[1]] = keys.get(names[1], True) and bool(partial)
    return keys


def _not_null_predicate(column, predicate):
    """Whether a partial index's predicate (PostgreSQL's expression, SQLite's whole CREATE INDEX) is
    `column IS NOT NULL`."""
    where = re.split(r'\bWHERE\b', predicate or '', flags=re.IGNORECASE)[-1]
    return re.sub(r'[\s()"]', '', where).lower() == f'{column}isnotnull'


def build_duplicate(d, table, column):
    """One value of `column` that two records of one organization share, if any (before a unique index)."""
    return (
        f'SELECT {quote(column)} FROM {quote(table)} WHERE {quote(column)} IS NOT NULL '
        f'GROUP BY organization_id, {quote(column)} HAVING COUNT(*) > 1 LIMIT 1'
    ), []


# NOTE: arrays of ids whose elements are indexed (migration 0009): SQLite keeps the (organization, element, record)
# triples in a side table its triggers maintain; PostgreSQL has a GIN index (jsonb_path_ops) on the column, which
# serves `@>` one element at a time. (table, column) -> (side table, its element column, its record column).
ELEMENT_INDEXES = {('deals', 'contact_ids'): ('deal_contacts', 'contact_id', 'deal_id')}


def build_referrers(d, info, org_id, column, ids, indexed=True, for_update=False):
    """The records of `info` whose reference `column` points at any of `ids` (scalar or array); an array with an
    index of its elements (ELEMENT_INDEXES) is searched through it unless `indexed` is false. `for_update` locks them
    on PostgreSQL, in id order (as build_get_by does)."""
    table = Table(info.spec.table)
    field = table.field(column.name)
    side = ELEMENT_INDEXES.get((info.spec.table, column.name)) if indexed and column.kind == 'array' else None
    if not ids:
        match = FALSE
    elif side and d.name == 'sqlite':
        pairs, element, record = map(quote, side)
        match = Sql(
            f'{{0}} IN (SELECT {record} FROM {pairs} WHERE organization_id = {{1}} AND {{2}})',
            table.id,
            Bound(org_id),
            d.one_of(Sql(element), 'text', ids),
        )
    elif side:
        # NOTE: `?|` (what one_of asks of an array) cannot use a jsonb_path_ops index; `@>` can.
        match = Sql('{0} @> ANY({1}::jsonb[])', field, Bound([orjson.dumps([i]).decode() for i in ids]))
    else:
        match = d.one_of(field, column.kind, ids)
    query = (
        d.from_(table)
        .select(*[table.field(n) for n in output_columns(info)])
        .where((table.organization_id == Bound(org_id)) & match)
    )
    locking = for_update and d.name == 'postgresql'
    sql, params = d.render(query.orderby(table.id) if locking else query)
    return (sql + ' FOR UPDATE' if locking else sql), params


# -- embedding -------------------------------------------------------------------------------------


def _term_sql(d, term):
    """(sql, params) of one criterion on its own, for a statement written as text."""
    parameter = d.parameter()
    return term.get_sql(parameter=parameter, with_namespace=True), parameter.get_parameters()


# NOTE: an instant as the wire spells it (values.format_timestamp: UTC, microseconds, `Z`), written by PostgreSQL.
_WIRE_INSTANT = 'to_char({0} AT TIME ZONE \'UTC\', \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')'
# NOTE: the kinds whose values SQLite's JSON functions spell as the API does, and numbers of at most 15 digits, 4
# after the point (_json_number); not other numbers (SQLite writes a REAL with 15 significant digits, not the shortest
# that reads back) nor JSON values (which may be bare REALs).
JSON_KINDS = frozenset({'text', 'integer', 'timestamp', 'date', 'array'})
_JSON_FIELDS = 50  # json_object takes at most 127 arguments on older SQLite builds


def _json_number(column):
    """A NUMERIC(p, s) column whose values SQLite's %!.15g spells as values.number_out does: every digit, no
    exponent, integral ones without a point (SQLite's NUMERIC affinity keeps them INTEGERs)."""
    if column.kind != 'number' or column.precision is None:
        return False
    digits, scale = column.precision
    return digits <= 15 and scale <= 4


def embeds_as_json(d, info):
    """Whether build_referenced and build_children read `info`'s records as JSON that the database writes, one
    text a record (which the answer then carries as it is), rather than as columns: on SQLite, when every column
    is of a JSON_KINDS kind or a _json_number.

    NOTE: an embed reads up to ten times the page's records; on SQLite their columns made into Python values, then
    a dict, then JSON again cost more than json_object (~15 % more for the ~860 companies of a 1,000-contact page).
    PostgreSQL's json_build_object looks up how to write each argument's type again for every row: 4.3 ms of
    executor time for those companies against 1.4 ms for their columns with instants spelt by to_char
    (embedded_kinds), which the app then reads into records faster than the difference (bench/RESULTS.md).
    """
    if d.name != 'sqlite':
        return False
    columns = [info.columns[n] for n in output_columns(info)]
    return len(columns) <= _JSON_FIELDS and all(c.kind in JSON_KINDS or _json_number(c) for c in columns)


def _spelt_by_server(d, info, name):
    return d.name == 'postgresql' and info.columns[name].kind == 'timestamp'


def embedded_kinds(d, info):
    """The kinds of the output columns as build_referenced and build_children return them when not as JSON: on
    PostgreSQL their instants come as text already spelt for the wire.

    NOTE: loading each instant as a datetime, then formatting it in Python, was a third of a PostgreSQL embed's
    CPU in the app (1.5-3 ms for the ~900 companies of a page).
    """
    return ['text' if _spelt_by_server(d, info, n) else info.columns[n].kind for n in output_columns(info)]


def _json_record(info, field):
    """A record of `info` as the JSON text of the API's object, written by SQLite (see embeds_as_json).

    NOTE: as a BLOB, its UTF-8 bytes as they are: as TEXT, Python decoded each into a str first (~1 % of the
    instructions of a 1,000-contact page embedding company and notes), which orjson then wrote out as UTF-8 again.
    """
    values = []
    for name in output_columns(info):
        value = field(name)
        if info.columns[name].kind == 'array':
            value = Sql('json({0})', value)  # the array itself, not the text that holds it
        values.append(value)
    pairs = ', '.join(f"'{name}', {{{i}}}" for i, name in enumerate(output_columns(info)))
    return Sql(f'CAST(json_object({pairs}) AS BLOB)', *values)


def _embedded_columns(d, info, field):
    """The columns of `info`'s records for an embed: one, the JSON text (embeds_as_json), or each output column
    (see embedded_kinds); `field(name)` is one column's term."""
    if embeds_as_json(d, info):
        return [_json_record(info, field)]
    return [Sql(_WIRE_INSTANT, field(n)) if _spelt_by_server(d, info, n) else field(n) for n in output_columns(info)]


def build_referenced(d, info, org_id, ids):
    """The records of `org_id` in `info` among `ids` (a non-empty list), archived ones too, in no order: rows of
    the record's columns for an embed (_embedded_columns), its `id` among them; where they are one JSON text
    (embeds_as_json), rows of (id, that text).

    NOTE: the ids travel as one parameter, so the SQL is the same for every page: rendered once per table.
    """
    if d.name == 'sqlite':
        return _referenced_by_id(d, info, org_id, ids)
    table = Table(info.spec.table)

    def where():
        return (table.organization_id == Bound(org_id)) & d.one_of_ids(table.id, ids)

    return _shaped(
        d,
        ('referenced', info.shape_key),
        lambda: d.from_(table).select(*_embedded_columns(d, info, table.field)).where(where()),
        where,
        [],
    )


def _referenced_by_id(d, info, org_id, ids):
    """build_referenced on SQLite: each id searched in the index of `id` alone, the organization checked on the row.

    NOTE: the ids are unique across organizations; the (organization_id, id) index the planner would take is twice
    the size (more pages to read, as the page just read took the cache) and compares the organization's 30
    characters first at every step: 10-15 % of the statement for the ~900 companies of a page. `+` keeps the
    planner off it; the condition itself stays.
    """

    def write():
        columns = _embedded_columns(d, info, lambda name: Sql(f'c.{quote(name)}'))
        if embeds_as_json(d, info):
            columns = [Sql('c.id'), *columns]
        p = d.parameter().get_sql()
        return (
            f'SELECT {", ".join(c.get_sql() for c in columns)} FROM {quote(info.spec.table)} AS c '
            f'JOIN json_each({p}) AS ids ON c.id = ids.value WHERE +c.organization_id = {p}'
        )

    return _statement(d, ('referenced', info.shape_key), write), [_json_ids(ids), org_id]


def _children_source(d, info, column, org_id, parent_ids, indexed):
    """(FROM clause, its params, the parent key, the conditions that match the parents) of build_children.

    NOTE: an indexed read joins the page's (distinct) ids, which the planner reads first, one index search each:
    on SQLite `JOIN json_each(?) AS ids` (`IN (SELECT value FROM json_each(?))` filed them in a temporary b-tree
    first, ~20 % of the statement); on PostgreSQL `JOIN json_array_elements_text(?)`, which the planner counts
    as ~100 rows (`column = ANY(<page of ids>)` made it estimate each of the ~1,000 ids against the column's
    statistics, 1-4 ms of planning, then scan the whole table).
    """
    table, name, p = quote(info.spec.table), quote(column.name), d.parameter().get_sql()
    if column.kind != 'array':
        parent = Sql(f'c.{name}')
        if not indexed:
            return f'{table} AS c', [], parent, [d.one_of_ids(parent, parent_ids)]
        ids = f'json_each({p}) AS ids' if d.name == 'sqlite' else f'json_array_elements_text({p}::json) AS ids (value)'
        return f'{table} AS c JOIN {ids} ON c.{name} = ids.value', [_json_ids(parent_ids)], parent, []
    side = ELEMENT_INDEXES.get((info.spec.table, column.name)) if indexed else None
    parent = Sql('j.value')
    if side and d.name == 'sqlite':
        pairs, element, record = map(quote, side)
        parent = Sql(f'j.{element}')
        return (
            f'{table} AS c JOIN {pairs} AS j ON j.{record} = c.id JOIN json_each({p}) AS ids '
            f'ON j.{element} = ids.value',
            [_json_ids(parent_ids)],
            parent,
            [Sql('j.organization_id = {0}', Bound(org_id))],
        )
    if side:
        # NOTE: one index search per parent id (a nested loop): `@> ANY(<page>)` uses the index too but takes
        # ~50 ms to plan, and `?|` cannot use a jsonb_path_ops index.
        return (
            f'{table} AS c JOIN json_array_elements_text({p}::json) AS j (value) '
            f'ON c.{name} @> jsonb_build_array(j.value)',
            [_json_ids(parent_ids)],
            parent,
            [],
        )
    if d.name == 'sqlite':
        return f'{table} AS c, json_each(c.{name}) AS j', [], parent, [d.one_of_ids(parent, parent_ids)]
    # NOTE: `?|` first skips the records that name none of the parents
    return (
        f'{table} AS c CROSS JOIN LATERAL jsonb_array_elements_text(c.{name}) AS j (value)',
        [],
        parent,
        [d.one_of_ids(Sql(f'c.{name}'), parent_ids, 'array'), d.one_of_ids(parent, parent_ids)],
    )


def build_children(d, info, column, org_id, parent_ids, limit, indexed=True):
    """The newest `limit` live records of `info` whose reference `column` (a scalar or an array of ids)
    points at each of `parent_ids`, and how many there are: rows of (parent, total, rank, *the record's columns
    for an embed: _embedded_columns), newest first per parent. One statement for every parent: ROW_NUMBER() and
    COUNT(*) over a window partitioned by parent, on both databases. An array with an index of its elements
    (ELEMENT_INDEXES) is searched through it unless `indexed` is false (the scan of every record, which tests
    compare it with); so is a scalar reference (_children_source).

    NOTE: on SQLite an indexed scalar reference is ranked and counted from its index alone, and only the ranks
    kept are read from the table, by rowid (PostgreSQL's planner makes a hash join of that, so it reads the rows
    with the window, from the same index): the built-in references' indexes (migration 0021) hold
    (organization_id, reference[, archived_at], created_at, id), all the window needs, so a parent with
    thousands of children costs an index range, not thousands of rows carried through two sorts to be thrown
    away. `rowid` is never a field's name (custom.SYSTEM_COLUMNS).
    """
    ranked_first = indexed and column.kind != 'array' and d.name == 'sqlite'
    source, params, parent, matches = _children_source(d, info, column, org_id, parent_ids, indexed)
    live, newest, columns = _children_parts(d, info, org_id)
    where, where_params = _term_sql(d, Criterion.all([*live, *matches]))
    key, p = parent.template, d.parameter().get_sql()
    # NOTE: `_parent`, `_total`, `_rank`, `_row`: no field can be so named (custom field names start with a letter).
    window = (
        f'{key} AS _parent, COUNT(*) OVER (PARTITION BY {key}) AS _total, '
        f'ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY {newest}) AS _rank'
    )
    if ranked_first:
        ranked = f'(SELECT {window}, c.rowid AS _row FROM {source} WHERE {where})'
        sql = (
            f'SELECT w._parent, w._total, w._rank, {columns} FROM {ranked} AS w '
            f'JOIN {quote(info.spec.table)} AS c ON c.rowid = w._row WHERE w._rank <= {p} ORDER BY w._parent, w._rank'
        )
    else:
        sql = (
            f'SELECT * FROM (SELECT {window}, {columns} FROM {source} WHERE {where}) AS w '
            f'WHERE w._rank <= {p} ORDER BY w._parent, w._rank'
        )
    return sql, [*params, *where_params, int(limit)]


def _children_parts(d, info, org_id):
    """(the conditions of a live child of `org_id`, its newest-first order, its columns for an embed) of
    build_children."""
    live = [Sql('c.organization_id = {0}', Bound(org_id))]
    if 'archived_at' in info.columns:
        live.append(Sql('c.archived_at IS NULL'))
    newest = 'c.created_at DESC, c.id DESC' if 'created_at' in info.columns else 'c.id DESC'

    def write():
        return ', '.join(
            column.get_sql() for column in _embedded_columns(d, info, lambda name: Sql(f'c.{quote(name)}'))
        )

    # NOTE: written once per shape: rendering a record's columns was three quarters of building the statement.
    return live, newest, _statement(d, ('children_columns', info.shape_key), write)


def _json_ids(ids):
    """A page of ids as one JSON text parameter (see Dialect.one_of_ids)."""
    return orjson.dumps(list(ids)).decode()


def build_organization(d, org_id):
    """An organization's id and name."""
    orgs = Table('organizations')
    return d.render(d.from_(orgs).select(orgs.id, orgs.field('name')).where(orgs.id == Bound(org_id)))


# -- organizations, users and tokens (crmapi.accounts) ---------------------------------------------

ORGS, USERS, TOKENS = Table('organizations'), Table('crm_users'), Table('api_tokens')
_ACCOUNT_KINDS = {
    'created_at': 'timestamp',
    'updated_at': 'timestamp',
    'expires_at': 'timestamp',
    'administrator': 'boolean',
}


def _account_insert(d, table, row):
    return d.render(
        d.into(table).columns(*row).insert(*[Bound(d.adapt(_ACCOUNT_KINDS.get(k, 'text'), v)) for k, v in row.items()])
    )


def build_org_insert(d, org_id, name, created_at):
    return _account_insert(d, ORGS, {'id': org_id, 'name': name, 'created_at': created_at})


def build_org_names(d):
    """(id, name) of every organization, oldest first."""
    return d.render(d.from_(ORGS).select(ORGS.id, ORGS.field('name')).orderby(ORGS.created_at))


def build_user_find(d, org_id, email):
    """(id, administrator) of the user `email` of `org_id`."""
    return d.render(
        d.from_(USERS)
        .select(USERS.id, USERS.administrator)
        .where((USERS.organization_id == Bound(org_id)) & (USERS.email == Bound(email)))
    )


def build_user_make_admin(d, org_id, user_id):
    return d.render(
        d.update(USERS)
        .set(USERS.administrator, Bound(d.adapt('boolean', True)))
        .where((USERS.organization_id == Bound(org_id)) & (USERS.id == Bound(user_id)))
    )


def build_user_insert(d, org_id, row):
    """A CRM user of `org_id` (`row`: its other columns)."""
    return _account_insert(d, USERS, scoped(org_id, [row])[0])


def build_token_insert(d, org_id, row):
    """An API token of `org_id` (`row`: its other columns)."""
    return _account_insert(d, TOKENS, scoped(org_id, [row])[0])


def build_authenticate(d):
    """The SQL finding a token by its digest (the one parameter), with its user's state."""
    return d.memo(
        'authenticate',
        lambda: (
            d.from_(TOKENS)
            .join(USERS)
            .on((USERS.organization_id == TOKENS.organization_id) & (USERS.id == TOKENS.user_id))
            .select(
                TOKENS.id,
                TOKENS.organization_id,
                TOKENS.user_id,
                USERS.administrator,
                USERS.disabled,
                TOKENS.revoked_at,
                TOKENS.expires_at,
                TOKENS.last_used_at,
            )
            .where(TOKENS.token_hash == Bound(None))
        ),
    )


def build_token_touch(d, token_id, now, stale):
    """Set a token's last use to `now` unless it was used after `stale`."""
    ts = lambda value: Bound(d.adapt('timestamp', value))  # noqa: E731
    return d.render(
        d.update(TOKENS)
        .set(TOKENS.last_used_at, ts(now))
        .where((TOKENS.id == Bound(token_id)) & (TOKENS.last_used_at.isnull() | (TOKENS.last_used_at < ts(stale))))
    )


def build_token_list(d, org_id):
    """(id, email, created, last used, expires, revoked) per token of `org_id`, oldest first."""
    return d.render(
        d.from_(TOKENS)
        .join(USERS)
        .on((USERS.organization_id == TOKENS.organization_id) & (USERS.id == TOKENS.user_id))
        .select(TOKENS.id, USERS.email, TOKENS.created_at, TOKENS.last_used_at, TOKENS.expires_at, TOKENS.revoked_at)
        .where(TOKENS.organization_id == Bound(org_id))
        .orderby(TOKENS.created_at)
    )


def build_token_revoke(d, token_id, now):
    return d.render(
        d.update(TOKENS)
        .set(TOKENS.revoked_at, Bound(d.adapt('timestamp', now)))
        .where((TOKENS.id == Bound(token_id)) & TOKENS.revoked_at.isnull())
    )


def build_token_exists(d, token_id):
    return d.render(d.from_(TOKENS).select(TOKENS.id).where(TOKENS.id == Bound(token_id)))


# -- schema version (crmapi.migrations) ------------------------------------------------------------

VERSION_TABLE = 'CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)'
VERSION_READ = 'SELECT MAX(version) FROM schema_version'


def build_version_set(version):
    """The statements recording that the database is at `version` (it holds one row)."""
    return ['DELETE FROM schema_version', f'INSERT INTO schema_version (version) VALUES ({int(version)})']


def build_duplicate_rows(d, info, org_id, columns, leave_out=None):
    """The id and `columns` of every live record of `org_id` in `info` but `leave_out`: what duplicate
    detection compares."""
    table = Table(info.spec.table)
    condition = table.organization_id == Bound(org_id)
    if info.archivable:
        condition &= table.archived_at.isnull()
    if leave_out is not None:
        condition &= table.id != Bound(leave_out)
    return d.render(d.from_(table).select(table.id, *[table.field(n) for n in columns]).where(condition))


# -- custom object tables (DDL) --------------------------------------------------------------------
# Names reaching these builders passed custom.NAME (lowercase letters, digits, `_`) and are never
# SQL keywords; they are still quoted, and table names are made by the server.


def quote(name):
    return '"%s"' % name.replace('"', '""')


def build_create_table(table, columns):
    """CREATE TABLE for a custom object: server-managed columns, then `columns` [(name, sql type)]."""
    parts = [
        'id TEXT PRIMARY KEY',
        'organization_id TEXT NOT NULL REFERENCES organizations (id)',
        'created_at TIMESTAMPTZ NOT NULL',
        'updated_at TIMESTAMPTZ NOT NULL',
        'archived_at TIMESTAMPTZ',
        *(f'{quote(name)} {sql_type}' for name, sql_type in columns),
        'UNIQUE (organization_id, id)',
    ]
    return f'CREATE TABLE {quote(table)} (\n    ' + ',\n    '.join(parts) + '\n)'


def build_add_column(table, name, sql_type):
    return f'ALTER TABLE {quote(table)} ADD COLUMN {quote(name)} {sql_type}'


def build_drop_column(table, name):
    return f'ALTER TABLE {quote(table)} DROP COLUMN {quote(name)}'


def build_create_index(table, index, column):
    """IF NOT EXISTS: a field taken over with its column may have its index already."""
    return f'CREATE INDEX IF NOT EXISTS {quote(index)} ON {quote(table)} (organization_id, {quote(column)})'


def build_create_unique_index(table, index, column):
    """Unique per organization among the records that have a value: the arbiter of an upsert on `column`."""
    return (
        f'CREATE UNIQUE INDEX {quote(index)} ON {quote(table)} (organization_id, {quote(column)}) '
        f'WHERE {quote(column)} IS NOT NULL'
    )


def build_drop_index(index):
    return f'DROP INDEX IF EXISTS {quote(index)}'


def build_lock_organization(d, org_id):
    """Lock an organization's row until the transaction ends (SQLite's writers take turns anyway).

    NOTE: FOR NO KEY UPDATE, not FOR UPDATE: the foreign key checks of the organization's record
    writes (FOR KEY SHARE) do not wait for it.
    """
    orgs = Table('organizations')
    sql, params = d.render(d.from_(orgs).select(orgs.id).where(orgs.id == Bound(org_id)))
    return (sql + ' FOR NO KEY UPDATE' if d.name == 'postgresql' else sql), params


# -- live row counters -----------------------------------------------------------------------------
# NOTE: on PostgreSQL an (organization, table) counter is up to COUNT_SLOTS rows, and a write adds to the first slot
# no other open transaction is adding to (a transaction-level advisory lock per slot, tried without waiting), so the
# writes of one organization never queue on a counter row until COMMIT; a read sums the slots (a few rows of one
# index range). Only with every slot taken does a write wait (for the slot of its connection). SQLite has one writer
# at a time: one slot, 0.

COUNTS = Table('row_counts')
COUNT_SLOTS = 32


def build_count_read(d, org_id, table_name):
    """The counter's value (the sum of its slots): no row when the organization has none."""

    def write():
        p = d.parameter().get_sql()
        return (
            f'SELECT CAST(SUM("n") AS BIGINT) FROM "row_counts" WHERE "organization_id" = {p} AND "table_name" = {p} '
            'HAVING COUNT(*) > 0'
        )

    return _statement(d, 'count_read', write), [org_id, table_name]


def build_count_add(d, org_id, table_name, delta):
    """Add `delta` to a counter (to a slot of it no other open transaction holds), creating it if needed."""
    sql = _statement(d, 'count_add', lambda: _count_add(d, d.parameter().get_sql()))
    return sql, [org_id, table_name, int(delta)]


def _count_add(d, p):
    if d.name == 'postgresql':
        row = (
            'SELECT v.o, v.t, COALESCE((SELECT s FROM generate_series(0, %(last)d) AS s '
            "WHERE pg_try_advisory_xact_lock(hashtext(v.o || '/' || v.t), s) LIMIT 1), "
            'mod(pg_backend_pid(), %(slots)d)), v.n FROM (VALUES (CAST(%(p)s AS TEXT), CAST(%(p)s AS TEXT), '
            'CAST(%(p)s AS BIGINT))) AS v (o, t, n)'
        ) % {'last': COUNT_SLOTS - 1, 'slots': COUNT_SLOTS, 'p': p}
    else:
        row = f'VALUES ({p}, {p}, 0, {p})'
    return (
        f'INSERT INTO row_counts (organization_id, table_name, slot, n) {row} '
        'ON CONFLICT (organization_id, table_name, slot) DO UPDATE SET n = row_counts.n + excluded.n'
    )


def build_recount(d, org_id, info):
    """Set the counter of `info`'s table for `org_id` to the live rows it really holds: (clear its other slots,
    set slot 0), two statements."""
    table = Table(info.spec.table)
    live = table.organization_id == Bound(org_id)
    if info.archivable:
        live &= table.archived_at.isnull()
    count_sql, params = d.render(d.from_(table).select(fn.Count('*')).where(live))
    p = d.parameter().get_sql()
    return [
        (
            f'DELETE FROM row_counts WHERE organization_id = {p} AND table_name = {p} AND slot <> 0',
            [org_id, info.spec.table],
        ),
        (
            f'INSERT INTO row_counts (organization_id, table_name, slot, n) VALUES ({p}, {p}, 0, ({count_sql})) '
            'ON CONFLICT (organization_id, table_name, slot) DO UPDATE SET n = excluded.n',
            [org_id, info.spec.table, *params],
        ),
    ]


# -- change history --------------------------------------------------------------------------------

CHANGES = Table('changes')
CHANGE_COLUMNS = (
    'id',
    'organization_id',
    'seq',
    'resource',
    'record_id',
    'operation',
    'actor',
    'user_id',
    'token_id',
    'changed_at',
    'data',
)
CHANGE_OUTPUT = tuple(n for n in CHANGE_COLUMNS if n != 'organization_id')
CHANGE_KINDS = {'seq': 'integer', 'changed_at': 'timestamp', 'data': 'json'}


# NOTE: on PostgreSQL a write inserts its changes unnumbered (seq NULL) with a `tick` from the change_ticks
# sequence, taken by its last statement (after every lock it waited for), and holds no organization-wide lock; the
# first reader of the feed then numbers the committed unnumbered changes in tick order, under the organization's
# change counter row (History.number). SQLite has one writer at a time: a write numbers its changes itself.
PENDING_COLUMNS = (*CHANGE_COLUMNS, 'tick')


def build_change_numbers(d, org_id, count):
    """SQLite: take `count` change numbers of `org_id`: answers the last one. The counter row stays locked until
    the transaction ends, so the organization's changes commit in number order."""
    return _statement(d, 'change_numbers', lambda: _numbers(d.parameter().get_sql())), [org_id, int(count)]


def build_change_tick(d, org_id, counts=()):
    """PostgreSQL: add `counts` ([(table, delta)]) to the organization's live-row counters and take the tick of a
    write's changes (see PENDING_COLUMNS), in one statement (one round trip)."""

    def tick():
        kept = _counts_added(d, d.parameter().get_sql(), len(counts))
        return f'WITH {kept}{_TICK} SELECT tick FROM t'

    return _statement(d, ('change_tick', len(counts)), tick), _count_values(org_id, counts)


_TICK = "t AS MATERIALIZED (SELECT nextval('change_ticks') AS tick)"  # a write's tick, taken once by its statement


def _counts_added(d, p, n):
    """The CTEs (`k0 AS (…), `…) that add `n` counts to live-row counters, for a PostgreSQL statement's WITH."""
    return ''.join(f'k{i} AS ({_count_add(d, p)}), ' for i in range(n))


def _count_values(org_id, counts):
    return [value for table, delta in counts for value in (org_id, table, int(delta))]


def build_pending_changes(d, org_id, who, items, counts=()):
    """PostgreSQL: add `counts` ([(table, delta)]) to the organization's live-row counters and insert `items`
    unnumbered with one new tick, in one statement (one round trip).

    `who` is (actor, user_id, token_id, changed_at as text), shared by every change; each item is (id, resource,
    record_id, operation, data as JSON text). NOTE: VALUES in FROM types its columns as text, so the time and the
    JSON are cast; a CTE is evaluated once, so the write's changes share its tick.
    """

    def write():
        p = d.parameter().get_sql()
        kept = _counts_added(d, p, len(counts))
        return (
            f'WITH {kept}{_TICK} '
            f'INSERT INTO changes ({",".join(PENDING_COLUMNS)}) '
            f'SELECT v.id, {p}, NULL, v.resource, v.record_id, v.operation, {p}, {p}, {p}, '
            f'CAST({p} AS TIMESTAMPTZ), CAST(v.data AS JSON), t.tick FROM t, ({_values(d, len(items), 5)}) '
            'AS v (id, resource, record_id, operation, data)'
        )

    sql = _statement(d, ('pending_changes', len(items), len(counts)), write)
    return sql, [*_count_values(org_id, counts), org_id, *who, *[value for item in items for value in item]]


def _numbers(p):
    return (
        f'INSERT INTO change_counters (organization_id, n) VALUES ({p}, {p}) ON CONFLICT (organization_id) '
        'DO UPDATE SET n = change_counters.n + excluded.n RETURNING n'
    )


def build_unnumbered(d, org_id):
    """A row when the organization has committed changes not numbered yet (PostgreSQL)."""
    p = d.parameter().get_sql()
    return f'SELECT 1 FROM changes WHERE organization_id = {p} AND seq IS NULL LIMIT 1', [org_id]


def build_unnumbered_organizations(d):
    """The organizations that have committed changes not numbered yet (PostgreSQL)."""
    return 'SELECT DISTINCT organization_id FROM changes WHERE seq IS NULL ORDER BY organization_id', []


def build_numbering_lock(d, org_id):
    """The organization's last change number, its counter row locked until the transaction ends (made if
    missing). NOTE: a statement of its own: the statements after it, under READ COMMITTED, see every change
    committed before the lock was granted, the previous numbering's included."""
    p = d.parameter().get_sql()
    return (
        f'INSERT INTO change_counters (organization_id, n) VALUES ({p}, 0) ON CONFLICT (organization_id) '
        'DO UPDATE SET n = change_counters.n RETURNING n'
    ), [org_id]


def build_unnumbered_ids(d, org_id):
    """The ids of the organization's committed unnumbered changes, in the order they get their numbers: tick order,
    then id order (a write's own)."""
    p = d.parameter().get_sql()
    return f'SELECT id FROM changes WHERE organization_id = {p} AND seq IS NULL ORDER BY tick, id', [org_id]


def build_number_changes(d, org_id, last, ids):
    """Number the changes `ids` (build_unnumbered_ids) after `last`, in order, and move the organization's counter
    past them.

    NOTE: the ids come as one array and each row is found by its key: a join of the changes on themselves (by
    organization and seq IS NULL) let the planner, estimating one unnumbered row from statistics taken when there
    were none, scan them all again for each one (15 s for 7,000 changes)."""
    p = d.parameter().get_sql()
    sql = (
        f'WITH numbered AS (UPDATE changes c SET seq = CAST({p} AS BIGINT) + v.k '
        f'FROM unnest(CAST({p} AS TEXT[])) WITH ORDINALITY AS v (id, k) WHERE c.id = v.id RETURNING 1) '
        f'UPDATE change_counters SET n = CAST({p} AS BIGINT) + (SELECT COUNT(*) FROM numbered) '
        f'WHERE organization_id = {p} RETURNING n'
    )
    return sql, [int(last), list(ids), int(last), org_id]


def build_write_changes(d, rows):
    """The statements Tx.write_rows stores change `rows` with (tuples in CHANGE_COLUMNS order, PENDING_COLUMNS on
    PostgreSQL, `changed_at` as text, `data` as JSON text, as orjson makes it): PostgreSQL's COPY, SQLite's INSERT of
    each chunk (`_inserts`)."""
    if d.name == 'postgresql':
        return [(f'COPY changes ({",".join(PENDING_COLUMNS)}) FROM STDIN', rows)]
    return _inserts(d, ('write_changes',), f'INSERT INTO changes ({",".join(CHANGE_COLUMNS)}) ', rows)


def _change_select(d):
    return d.from_(CHANGES).select(*[CHANGES.field(n) for n in CHANGE_OUTPUT])


def build_record_changes(d, org_id, resource, record_id, start, size):
    """One page of a record's numbered changes, newest first."""

    def build():
        return (
            _change_select(d)
            .where(
                (CHANGES.organization_id == Bound(None))
                & (CHANGES.resource == Bound(None))
                & (CHANGES.record_id == Bound(None))
                & CHANGES.seq.notnull()
            )
            .orderby(CHANGES.seq, order=Order.desc)
        )

    p = d.parameter().get_sql()
    sql = d.memo('record_changes', build) + f' LIMIT {p} OFFSET {p}'
    return sql, [org_id, resource, record_id, int(size), int(start)]


def build_record_changes_count(d, org_id, resource, record_id):
    sql = d.memo(
        'record_changes_count',
        lambda: (
            d.from_(CHANGES)
            .select(fn.Count('*'))
            .where(
                (CHANGES.organization_id == Bound(None))
                & (CHANGES.resource == Bound(None))
                & (CHANGES.record_id == Bound(None))
                & CHANGES.seq.notnull()
            )
        ),
    )
    return sql, [org_id, resource, record_id]


def build_change_feed(d, org_id, after, limit, resource=None, hidden=()):
    """The organization's changes numbered above `after`, in number order; of one resource if given; none of
    the resources `hidden` (those the reader may not read)."""

    def build():
        condition = (CHANGES.organization_id == Bound(None)) & (CHANGES.seq > Bound(None))
        if resource is not None:
            condition &= CHANGES.resource == Bound(None)
        if hidden:
            condition &= Sql('NOT ({0})', d.one_of(CHANGES.resource, 'text', ['']))
        return _change_select(d).where(condition).orderby(CHANGES.seq)

    p = d.parameter().get_sql()
    sql = d.memo(('change_feed', resource is None, bool(hidden)), build) + f' LIMIT {p}'
    return sql, [
        org_id,
        int(after),
        *([] if resource is None else [resource]),
        *([_ids(d, sorted(hidden))] if hidden else []),
        int(limit),
    ]


def build_change_organizations(d):
    """The organizations that have recorded changes (each has its counter)."""
    return 'SELECT organization_id FROM change_counters ORDER BY organization_id', []


def build_oldest_changes(d, org_id, limit):
    """(seq, changed_at) of an organization's `limit` oldest numbered changes, by number."""
    p = d.parameter().get_sql()
    return (
        f'SELECT seq, changed_at FROM changes WHERE organization_id = {p} AND seq IS NOT NULL ORDER BY seq LIMIT {p}',
        [org_id, int(limit)],
    )


def build_delete_changes(d, org_id, up_to, cutoff):
    """Delete an organization's changes numbered at most `up_to` and made before `cutoff` (text)."""
    p = d.parameter().get_sql()
    return (
        f'DELETE FROM changes WHERE organization_id = {p} AND seq <= {p} AND changed_at < {p}',
        [org_id, int(up_to), cutoff],
    )


def build_outbox_cursor_read(d, org_id):
    """The lowest of the organization's worker cursors (webhook fan-out, automation rules): its changes numbered
    above it are not all handed on yet (NULL: no cursor, nothing waits)."""
    p = d.parameter().get_sql()
    return (
        f'SELECT MIN(seq) FROM (SELECT seq FROM webhook_cursors WHERE organization_id = {p} '
        f'UNION ALL SELECT seq FROM automation_cursors WHERE organization_id = {p}) AS cursors'
    ), [org_id, org_id]


def build_prune_runs(d, org_id, cutoff, kept_after, limit):
    """Delete up to `limit` of an organization's automation runs made before `cutoff` whose change is gone or
    is pruned next (made before `cutoff` too, and numbered at most `kept_after`)."""
    p = d.parameter().get_sql()
    sql = (
        f'DELETE FROM automation_runs WHERE id IN (SELECT r.id FROM automation_runs r WHERE r.organization_id = {p} '
        f'AND r.created_at < {p} AND NOT EXISTS (SELECT 1 FROM changes c WHERE c.id = r.change_id '
        f'AND (c.seq > {p} OR c.changed_at >= {p})) ORDER BY r.created_at LIMIT {p})'
    )
    return sql, [org_id, cutoff, int(kept_after), cutoff, int(limit)]


def build_prune_deliveries(d, org_id, cutoff, limit):
    """Delete up to `limit` of an organization's webhook deliveries no longer pending (succeeded or failed)
    whose last attempt was before `cutoff`. NOTE: a pending one (due, retrying, or being sent) always stays."""
    p = d.parameter().get_sql()
    sql = (
        f'DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries WHERE organization_id = {p} '
        f"AND status <> 'pending' AND updated_at < {p} ORDER BY id LIMIT {p})"
    )
    return sql, [org_id, cutoff, int(limit)]


# -- server secrets --------------------------------------------------------------------------------

SECRETS = Table('server_secrets')


def build_secret_init(d, name, value):
    """Store `value` as the secret `name` unless one is there: the first process to start wins, and
    every other process then reads that one back (build_secret_read), whichever host it runs on."""
    sql, params = d.render(
        d.into(SECRETS).columns(SECRETS.field('name'), SECRETS.field('value')).insert(Bound(name), Bound(value))
    )
    return sql + ' ON CONFLICT (name) DO NOTHING', params


def build_secret_read(d, name):
    return d.render(d.from_(SECRETS).select(SECRETS.field('value')).where(SECRETS.field('name') == Bound(name)))


# -- webhooks --------------------------------------------------------------------------------------
# NOTE: timestamps are bound as text (format_timestamp): SQLite compares that spelling, PostgreSQL gives an
# untyped parameter its column's type. The worker's statements are few and fixed, so they are written here whole.

DELIVERY_COLUMNS = (
    'id',
    'organization_id',
    'webhook_id',
    'change_id',
    'seq',
    'event_type',
    'payload',
    'status',
    'attempts',
    'next_attempt_at',
    'created_at',
    'updated_at',
    'rule_id',
    'url',
)
CLAIMED = ('id', 'organization_id', 'webhook_id', 'change_id', 'payload', 'attempts', 'attempt_log', 'rule_id', 'url')
# The cursors over the change feed: the webhooks' fan-out, and the automation rules' (crmapi.worker).
CURSOR_TABLES = ('webhook_cursors', 'automation_cursors')


def _ids_in(d, column):
    """`column` is one of the ids bound as ONE parameter (as Dialect.one_of)."""
    p = d.parameter().get_sql()
    return f'{column} IN (SELECT value FROM json_each({p}))' if d.name == 'sqlite' else f'{column} = ANY({p})'


def _ids(d, ids):
    return orjson.dumps(list(ids)).decode() if d.name == 'sqlite' else list(ids)


def build_webhook_secret_insert(d, webhook_id, secret):
    p = d.parameter().get_sql()
    return f'INSERT INTO webhook_secrets (webhook_id, secret) VALUES ({p}, {p})', [webhook_id, secret]


def build_webhook_secret_set(d, org_id, webhook_id, secret):
    """Replace the secret of the organization's webhook `webhook_id` (0 rows: not one of its webhooks)."""
    p = d.parameter().get_sql()
    sql = (
        f'UPDATE webhook_secrets SET secret = {p} WHERE webhook_id = '
        f'(SELECT id FROM webhooks WHERE organization_id = {p} AND id = {p})'
    )
    return sql, [secret, org_id, webhook_id]


def build_change_counter_read(d, org_id):
    """The organization's last change number (no row: none yet)."""
    p = d.parameter().get_sql()
    return f'SELECT n FROM change_counters WHERE organization_id = {p}', [org_id]


def build_webhook_cursor_init(d, org_id, seq, table='webhook_cursors'):
    """The organization's fan-out cursor (or another of CURSOR_TABLES), at `seq` if it has none yet."""
    assert table in CURSOR_TABLES
    p = d.parameter().get_sql()
    sql = f'INSERT INTO {table} (organization_id, seq) VALUES ({p}, {p}) ON CONFLICT (organization_id) DO NOTHING'
    return sql, [org_id, int(seq)]


def build_fanout_due(d, table='webhook_cursors'):
    """(organization, cursor) of every organization with changes its cursor (of CURSOR_TABLES) has not reached."""
    assert table in CURSOR_TABLES
    sql = (
        f'SELECT k.organization_id, k.seq FROM {table} k JOIN change_counters c '
        'ON c.organization_id = k.organization_id WHERE c.n > k.seq ORDER BY k.organization_id'
    )
    return sql, []


def build_rules_advance(d, org_id, old, new):
    """Move the organization's rules cursor from `old` to `new`: 0 rows when another worker moved it first."""
    p = d.parameter().get_sql()
    sql = f'UPDATE automation_cursors SET seq = {p} WHERE organization_id = {p} AND seq = {p}'
    return sql, [int(new), org_id, int(old)]


def build_rule_secret_insert(d, rule_id, secret):
    """The rule's secret, unless it has one: 1 row when this made it."""
    p = d.parameter().get_sql()
    sql = f'INSERT INTO automation_rule_secrets (rule_id, secret) VALUES ({p}, {p}) ON CONFLICT (rule_id) DO NOTHING'
    return sql, [rule_id, secret]


def build_rule_secrets(d, rule_ids):
    """(rule id, secret) of the rules `rule_ids` that have one."""
    return f'SELECT rule_id, secret FROM automation_rule_secrets WHERE {_ids_in(d, "rule_id")}', [_ids(d, rule_ids)]


def build_fanout_lock(d, org_id):
    """The organization's cursor, locked until the transaction ends; on PostgreSQL no row when another worker
    holds it (SKIP LOCKED: that worker fans the organization out). SQLite's writers take turns anyway."""
    p = d.parameter().get_sql()
    sql = f'SELECT seq FROM webhook_cursors WHERE organization_id = {p}'
    return (sql + ' FOR UPDATE SKIP LOCKED' if d.name == 'postgresql' else sql), [org_id]


def build_fanout_advance(d, org_id, seq):
    p = d.parameter().get_sql()
    return f'UPDATE webhook_cursors SET seq = {p} WHERE organization_id = {p}', [int(seq), org_id]


def build_enabled_webhooks(d, org_id):
    """(id, events, since_seq) of the organization's enabled webhooks."""
    p = d.parameter().get_sql()
    return f'SELECT id, events, since_seq FROM webhooks WHERE organization_id = {p} AND enabled', [org_id]


def build_insert_deliveries(d, rows):
    """One INSERT of delivery rows (tuples in DELIVERY_COLUMNS order); a (webhook, change) already there stays."""
    sql = _statement(
        d,
        ('insert_deliveries', len(rows)),
        lambda: (
            f'INSERT INTO webhook_deliveries ({",".join(DELIVERY_COLUMNS)}) '
            + _values(d, len(rows), len(DELIVERY_COLUMNS))
            + ' ON CONFLICT (webhook_id, change_id) DO NOTHING'
        ),
    )
    return sql, [value for row in rows for value in row]


def build_claim_deliveries(d, now, until, limit):
    """Lease up to `limit` due deliveries of enabled webhooks until `until`: their CLAIMED columns.

    NOTE: on PostgreSQL SKIP LOCKED lets workers claim side by side, each taking rows no other is taking; on
    SQLite BEGIN IMMEDIATE makes them take turns. The lease (locked_until) is what keeps a claimed row from
    being claimed again once the transaction is over, until the worker records the attempt or dies.
    """
    p = d.parameter().get_sql()
    lock = ' FOR UPDATE SKIP LOCKED' if d.name == 'postgresql' else ''
    due, params = build_due_deliveries(d, now, limit)
    sql = f'UPDATE webhook_deliveries SET locked_until = {p} WHERE id IN ({due}{lock}) RETURNING {", ".join(CLAIMED)}'
    return sql, [until, *params]


def build_due_deliveries(d, now, limit):
    """The ids of up to `limit` deliveries due at `now` and not leased, of enabled webhooks (or of automation
    rules' webhook actions), oldest first.

    NOTE: an idle worker asks this (a read) before it claims (a write: on SQLite, the database's write lock).
    """
    p = d.parameter().get_sql()
    sql = (
        f"SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= {p} "
        f'AND (locked_until IS NULL OR locked_until <= {p}) AND (webhook_id IS NULL OR webhook_id IN (SELECT id '
        f'FROM webhooks WHERE enabled)) ORDER BY next_attempt_at, seq LIMIT {p}'
    )
    return sql, [now, now, int(limit)]


def build_delivery_targets(d, webhook_ids):
    """(id, url, secret) of the webhooks `webhook_ids`."""
    sql = (
        f'SELECT w.id, w.url, s.secret FROM webhooks w JOIN webhook_secrets s ON s.webhook_id = w.id '
        f'WHERE {_ids_in(d, "w.id")}'
    )
    return sql, [_ids(d, webhook_ids)]


def build_delivery_attempted(
    d, delivery_id, status, attempts, next_attempt_at, code, duration_ms, error, log, now, delivered_at
):
    """Record one attempt and release the lease."""
    p = d.parameter().get_sql()
    sql = (
        f'UPDATE webhook_deliveries SET status = {p}, attempts = {p}, next_attempt_at = {p}, locked_until = NULL, '
        f'last_status_code = {p}, last_duration_ms = {p}, last_error = {p}, attempt_log = {p}, updated_at = {p}, '
        f'delivered_at = COALESCE({p}, delivered_at) WHERE id = {p}'
    )
    return sql, [status, attempts, next_attempt_at, code, duration_ms, error, log, now, delivered_at, delivery_id]


def build_webhook_healthy(d, webhook_id):
    p = d.parameter().get_sql()
    return f'UPDATE webhooks SET failing_since = NULL WHERE id = {p} AND failing_since IS NOT NULL', [webhook_id]


def build_webhook_failing(d, webhook_id, now):
    """Mark the webhook failing since `now` unless it already is."""
    p = d.parameter().get_sql()
    return (f'UPDATE webhooks SET failing_since = {p} WHERE id = {p} AND failing_since IS NULL', [now, webhook_id])


def build_webhook_disable(d, webhook_id, failing_before, reason, now):
    """Disable the webhook if it has been failing since before `failing_before`: 1 row if it was."""
    p = d.parameter().get_sql()
    sql = (
        f'UPDATE webhooks SET enabled = FALSE, disabled_reason = {p}, updated_at = {p} '
        f'WHERE id = {p} AND enabled AND failing_since <= {p}'
    )
    return sql, [reason, now, webhook_id, failing_before]


def build_webhook_enabled_again(d, org_id, webhook_id):
    """A webhook an administrator enables starts afresh: no reason to show, no failures counted."""
    p = d.parameter().get_sql()
    sql = f'UPDATE webhooks SET disabled_reason = NULL, failing_since = NULL WHERE organization_id = {p} AND id = {p}'
    return sql, [org_id, webhook_id]


def build_redeliver(d, org_id, delivery_id, now):
    """Make the organization's delivery due now, a new round of attempts; 0 rows when it is in flight."""
    p = d.parameter().get_sql()
    sql = (
        f"UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = {p}, updated_at = {p} "
        f'WHERE organization_id = {p} AND id = {p} AND (locked_until IS NULL OR locked_until <= {p})'
    )
    return sql, [now, now, org_id, delivery_id, now]


# -- cached tokens (crmapi/authcache.py) ---------------------------------------------------------------


def build_auth_generation():
    """The number every change that can withdraw a token increments (none yet: 0)."""
    return 'SELECT COALESCE(MAX(generation), 0) FROM auth_generation', []


def build_auth_changed():
    """Increment it, in the transaction of the change (the row is made by the first one)."""
    return (
        'INSERT INTO auth_generation (id, generation) VALUES (1, 1) '
        'ON CONFLICT (id) DO UPDATE SET generation = auth_generation.generation + 1'
    ), []
