"""The only module that writes SQL: PyPika builders that return (sql, params).

Identifiers come from a TableInfo whitelist through `Table.field`; every value travels as a
bound parameter through `Bound`, never through PyPika's own literal quoting (which would turn
True into 'true' and None into 'null'). The organization scope is added here, by every
builder, so no caller can forget it.
"""
import contextlib
import functools
import json
import re
import threading
from dataclasses import dataclass

from pypika import Order
from pypika import Query
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
_STATEMENTS = {}
MAX_STATEMENTS = 10_000


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
    adapt: object               # (kind, canonical value) -> driver value
    like: str                   # case-insensitive LIKE
    distinct: str               # null-safe inequality
    array_length: str
    nulls_sql: bool             # whether ORDER BY must spell out SQLite's null order

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
        items = [self.adapt('text' if kind == 'array' else kind, v) for v in values]
        if self.name == 'sqlite':
            elements = Bound(json.dumps(items, separators=(',', ':'), ensure_ascii=False))
            if kind == 'array':
                return Sql('EXISTS (SELECT 1 FROM json_each({0}) WHERE json_each.value IN '
                           '(SELECT value FROM json_each({1})))', field, elements)
            return Sql('{0} IN (SELECT value FROM json_each({1}))', field, elements)
        return Sql('{0} ?| {1}' if kind == 'array' else '{0} = ANY({1})', field, Bound(items))

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
    return Dialect('postgresql', PostgreSQLQuery, FormatParameter, adapt, 'ILIKE', 'IS DISTINCT FROM',
                   'jsonb_array_length', True)


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


def criterion(d, table, info, flt):
    """One parsed filter as a PyPika criterion."""
    if flt.column.kind == SEARCH_KIND:
        return search(d, table, info, flt.value)
    if flt.op in TEXT_OPERATORS:
        return TEXT_OPERATORS[flt.op](d, table, info, flt.column, flt.value)
    return OPERATORS[flt.op](d, table.field(flt.column.name), flt.column, flt.value)


def fold(d, table, info, filters):
    """`a or b and c` means `(a OR b) AND c`: each logicalOp joins a filter to the next one."""
    result = None
    for previous, flt in zip((None,) + tuple(filters), filters):
        term = criterion(d, table, info, flt)
        if result is None:
            result = term
        elif previous.logical == 'or':
            result = result | term
        else:
            result = result & term
    return result


# -- search ----------------------------------------------------------------------------------------
# Folded text lives beside the records in `search_texts` (crmapi/search.py folds it, store.py keeps it
# in the writing transaction), keyed by (table_name, record_id, column_name): a text column's row holds
# its folded value (contains/starts_with/ends_with); the row of column '' holds the record's words,
# each after a space, and `names`, its name columns' words (q and its ranking). The database only
# compares folded text exactly. Indexes: SQLite one FTS5 `trigram` table (kept by triggers);
# PostgreSQL pg_trgm GIN on the column rows and a GIN tsvector of the words rows.
# A search condition is `<key> IN (candidates)`; too short for an index, a correlated EXISTS.

SEARCH_KIND = 'search'   # the kind of the pseudo-column `q` in `filters`


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


def _text_class(value):
    """What a text operator's SQL looks like: 'empty' (any value), 'short' (scanned), 'indexed' (found by
    the index alone) or 'long' (the index finds candidates, the rows are compared)."""
    n = len(searching.fold(value))
    if n == 0:
        return 'empty'
    return 'short' if n < searching.TRIGRAM else 'indexed' if n <= FTS_PHRASE else 'long'


FOLDED = Sql('sf.folded')   # a column row's folded value
WORDS = "sf.column_name = ''"   # the row of a record's words


def _exact(d, op, folded, column=FOLDED):
    """`column` holds `folded` as `op` says, compared exactly (case-sensitively, character by character)."""
    if d.name == 'postgresql':
        pattern = like_pattern(folded, prefix='' if op == 'starts_with' else '%',
                               suffix='' if op == 'ends_with' else '%')
        return Sql("{0} LIKE {1} ESCAPE '\\'", column, Bound(pattern))
    if op == 'contains':
        return Sql('instr({0}, {1}) > 0', column, Bound(folded))
    if op == 'starts_with':
        return Sql('instr({0}, {1}) = 1', column, Bound(folded))
    return Sql('substr({0}, -length({1})) = {2}', column, Bound(folded), Bound(folded))


FTS_PHRASE = 12   # characters of a value the trigram index looks up; the exact comparison checks the rest


def _fts_phrase(text):
    """An FTS5 string matched literally (a trigram phrase is a substring): the start of `text`, whose
    matches include every match of `text`.

    NOTE: a phrase of n characters is n - 2 trigrams whose positions must line up; a long one (a
    repeated letter above all) costs far more than the few rows it rules out.
    """
    return '"' + text[:FTS_PHRASE].replace('"', '""') + '"'


def _text_match(d, table, info, column, op, value):
    """`column` contains (starts with, ends with) `value`, folded: candidates from the trigram index,
    then the exact comparison. A view column computed from a reference (`company_name`) is matched in
    the referenced record's rows."""
    folded = searching.fold(value)
    field = table.field(column.name)
    if not folded:
        return field.notnull()
    key, target, target_column = table.id, search_table(info), column.name
    if column.name in info.spec.search.via:
        ref, target, target_column = info.spec.search.via[column.name]
        key = table.field(ref)
    elif column.name not in info.searched:
        # NOTE: ids and references (server-made: lowercase ASCII, their own folding) are compared as stored.
        return _exact(d, op, folded, field)
    if len(folded) < searching.TRIGRAM:
        return Sql('EXISTS (SELECT 1 FROM search_texts sf WHERE sf.table_name = {0} AND sf.record_id = {1} '
                   'AND sf.column_name = {2} AND {3})', Bound(target), Qualified(key), Bound(target_column),
                   _exact(d, op, folded))
    if d.name == 'postgresql':
        # NOTE: `<> ''` names the partial trigram index's rows (the column rows) for the planner.
        return Sql("{0} IN (SELECT sf.record_id FROM search_texts sf WHERE sf.column_name <> '' AND "
                   'sf.table_name = {1} AND sf.column_name = {2} AND {3})', key, Bound(target), Bound(target_column),
                   _exact(d, op, folded))
    # NOTE: a trigram phrase is exactly a substring, `^` anchors it at the start: up to FTS_PHRASE
    # characters the index alone answers contains and starts_with; ends_with always compares.
    phrase = ('^' if op == 'starts_with' else '') + _fts_phrase(folded)
    exact = TRUE if op != 'ends_with' and len(folded) <= FTS_PHRASE else _exact(d, op, folded)
    return Sql('{0} IN (SELECT sf.record_id FROM search_texts sf WHERE sf.id IN (SELECT rowid FROM '
               'search_texts_trigrams WHERE search_texts_trigrams MATCH {1}) AND sf.table_name = {2} '
               'AND sf.column_name = {3} AND {4})', key, Bound(phrase), Bound(target), Bound(target_column), exact)


TEXT_OPERATORS = {
    'contains': lambda d, t, i, c, v: _text_match(d, t, i, c, 'contains', v),
    'not_contains': lambda d, t, i, c, v: _negate(t.field(c.name), _text_match(d, t, i, c, 'contains', v)),
    'starts_with': lambda d, t, i, c, v: _text_match(d, t, i, c, 'starts_with', v),
    'ends_with': lambda d, t, i, c, v: _text_match(d, t, i, c, 'ends_with', v),
}


def _word_starts(d, column, words):
    """Every word of `words` starts a word of `column` (stored as ' w1 w2 …')."""
    find = 'strpos({0}, {1}) > 0' if d.name == 'postgresql' else 'instr({0}, {1}) > 0'
    return Criterion.all([Sql(find, Sql(column), Bound(' ' + w)) for w in words])


TSVECTOR = "array_to_tsvector(string_to_array(ltrim(sf.folded, ' '), ' '))"   # PostgreSQL: a words row's words


def _tsquery(terms):
    """PostgreSQL: each alternative's words as prefixes, ANDed; the alternatives ORed."""
    def lexeme(w):
        return "'" + w.replace('\\', '\\\\').replace("'", "''") + "':*"
    return ' | '.join('(' + ' & '.join(lexeme(w) for w in alternative) + ')' for alternative in terms.alternatives)


def _word_class(word):
    """SQLite: ' ' + `word` is too short for the trigram index, found by it exactly, or only its start is."""
    n = len(word) + 1
    return 'short' if n < searching.TRIGRAM else 'exact' if n <= FTS_PHRASE else 'long'


def _indexable(terms):
    """SQLite: whether every alternative has a word the trigram index can find (' ' + 2 characters)."""
    return all(any(_word_class(w) != 'short' for w in alternative) for alternative in terms.alternatives)


def search(d, table, info, terms):
    """`q`: for one of the alternatives, each word starts a word of the record's searchable text."""
    if not all(terms.alternatives):
        return TRUE
    target = search_table(info)
    if d.name == 'postgresql':
        return Sql(f"{{0}} IN (SELECT sf.record_id FROM search_texts sf WHERE {WORDS} AND sf.table_name = {{1}} "
                   f"AND {TSVECTOR} @@ CAST({{2}} AS tsquery))", table.id, Bound(target), Bound(_tsquery(terms)))
    if not _indexable(terms):
        return Sql(f'EXISTS (SELECT 1 FROM search_texts sf WHERE sf.table_name = {{0}} AND sf.record_id = {{1}} AND '
                   f'{WORDS} AND {{2}})', Bound(target), Qualified(table.id),
                   Criterion.any([_word_starts(d, 'sf.folded', a) for a in terms.alternatives]))
    match = ' OR '.join('(' + ' AND '.join(_fts_phrase(' ' + w) for w in alternative
                                            if len(w) + 1 >= searching.TRIGRAM) + ')'
                        for alternative in terms.alternatives)
    exact = all(_word_class(w) == 'exact' for alternative in terms.alternatives for w in alternative)
    verify = TRUE if exact else Criterion.any([_word_starts(d, 'sf.folded', a) for a in terms.alternatives])
    return Sql('{0} IN (SELECT sf.record_id FROM search_texts sf WHERE sf.id IN (SELECT rowid FROM '
               f'search_texts_trigrams WHERE search_texts_trigrams MATCH {{1}}) AND {WORDS} AND sf.table_name = {{2}} '
               'AND {3})', table.id, Bound(match), Bound(target), verify)


def _ranking(d, table, info, lq):
    """Best first when a list searches without a sort: how many of the words asked for start a word of the
    record's name columns (more first); `_order` then adds the id tie-break."""
    if not lq.ranked:
        return []
    find = 'strpos' if d.name == 'postgresql' else 'instr'
    score = Sql(' + '.join(f'(CASE WHEN {find}(sr.names, {{{i}}}) > 0 THEN 1 ELSE 0 END)'
                           for i in range(len(lq.rank_words))), *[Bound(' ' + w) for w in lq.rank_words])
    rank = Sql("COALESCE((SELECT {0} FROM search_texts sr WHERE sr.table_name = {1} AND sr.record_id = {2} "
               "AND sr.column_name = ''), 0)",
               score, Bound(search_table(info)), Qualified(table.id))
    return [(rank, Order.desc)]


def where(d, table, info, org_id, lq):
    """The full WHERE of a list query: org scope, archive rule, `filter`, `filters`, `q`."""
    parts = [table.organization_id == Bound(org_id)]
    if info.archivable and not lq.include_archived:
        parts.append(table.archived_at.isnull())
    parts += [criterion(d, table, info, f) for f in lq.equals]
    if lq.filters:
        parts.append(fold(d, table, info, lq.filters))
    if lq.search is not None:
        parts.append(search(d, table, info, lq.search))
    return Criterion.all(parts)


# -- search rows (kept by store.py in the writing transaction) ---------------------------------------

def _fields_upsert(d, n):
    """Each row (table_name, record_id, column_name, folded) written, or its folded value replaced when it
    changed (unchanged rows are left alone: no index work)."""
    return ('INSERT INTO search_texts (table_name, record_id, column_name, folded) ' + _values(d, n, 4)
            + ' ON CONFLICT (table_name, record_id, column_name) DO UPDATE SET folded = excluded.folded'
            ' WHERE search_texts.folded <> excluded.folded')


def _fields_drop(d):
    """Rows of `table_name`'s records `ids` whose 'record_id column_name' is listed: columns now NULL."""
    p = d.parameter().get_sql()
    if d.name == 'postgresql':
        return (f"DELETE FROM search_texts WHERE table_name = {p} AND record_id = ANY({p}) "
                f"AND record_id || ' ' || column_name = ANY({p})")
    return (f'DELETE FROM search_texts WHERE table_name = {p} AND record_id IN (SELECT value FROM json_each({p})) '
            f"AND record_id || ' ' || column_name IN (SELECT value FROM json_each({p}))")


def _words_upsert(d, n, related):
    """Each record's words row: (table_name, record_id, words, names, then per related table its name and the
    id of the record referred to), whose name words (a contact's company name) are added to the words."""
    aliases = ''.join(f', rt{i}, rid{i}' for i in range(related))
    joined = ''.join(f" || COALESCE((SELECT r.names FROM search_texts r WHERE r.table_name = v.rt{i} "
                     f"AND r.record_id = v.rid{i} AND r.column_name = ''), '')" for i in range(related))
    return (f'WITH v (t, id, w, n{aliases}) AS ({_values(d, n, 4 + 2 * related)}) '
            "INSERT INTO search_texts (table_name, record_id, column_name, folded, names) "
            f"SELECT t, id, '', w{joined}, n FROM v WHERE true "
            'ON CONFLICT (table_name, record_id, column_name) DO UPDATE SET folded = excluded.folded, '
            'names = excluded.names '
            'WHERE search_texts.folded <> excluded.folded OR search_texts.names <> excluded.names')


def build_search_rows(d, table_name, fields, dropped, words, related=0):
    """The statements that bring records' search rows up to date: `fields` (table_name, record_id,
    column_name, folded) to write, `dropped` ('record_id column_name' of columns now NULL) to remove,
    `words` (see _words_upsert, `related` tables each) to replace.

    NOTE: PostgreSQL does it all in one statement (data-modifying WITH: one round trip per write); the
    parts touch different rows, so they never see each other. SQLite runs them one after the other.
    """
    width = 4 + 2 * related
    ids = list(dict.fromkeys(i.split(' ', 1)[0] for i in dropped))
    drop_params = [table_name, ids if d.name == 'postgresql' else json.dumps(ids),
                   dropped if d.name == 'postgresql' else json.dumps(dropped, ensure_ascii=False)]
    field_params, word_params = [v for row in fields for v in row], [v for row in words for v in row]
    if d.name == 'postgresql' and len(field_params) + len(word_params) <= MAX_PARAMS:
        parts, params = [], []
        if dropped:
            parts.append(('gone', _fields_drop(d)))
            params += drop_params
        if fields:
            parts.append(('kept', _fields_upsert(d, len(fields))))
            params += field_params
        if words:
            parts.append(('words', _words_upsert(d, len(words), related)))
            params += word_params
        if not parts:
            return []
        key = ('search_rows', bool(dropped), len(fields), len(words), related)
        return [(_statement(d, key, lambda: _one_statement(parts)), params)]
    statements = [(_fields_drop(d), drop_params)] if dropped else []
    statements += [(_statement(d, ('search_fields', len(part)), functools.partial(_fields_upsert, d, len(part))),
                    [v for row in part for v in row]) for part in chunks(fields, 4)]
    statements += [(_statement(d, ('search_words', len(part), related),
                               functools.partial(_words_upsert, d, len(part), related)),
                    [v for row in part for v in row]) for part in chunks(words, width)]
    return statements


def _one_statement(parts):
    """PostgreSQL: the statements of `parts` [(name, sql)] as one, each but the last a WITH query."""
    *first, (_, last) = parts
    if not first:
        return last
    ctes = ', '.join(f'{name} AS ({sql})' for name, sql in first)
    if last.startswith('WITH '):
        return 'WITH ' + ctes + ', ' + last[len('WITH '):]
    return 'WITH ' + ctes + ' ' + last


def build_search_forget(d, table_name, ids):
    """Remove the search rows of the records `ids` of `table_name` (deleted for good)."""
    texts = Table('search_texts')
    return d.render(d.from_(texts).delete().where(
        (texts.table_name == Bound(table_name)) & d.one_of(texts.record_id, 'text', ids)))


def build_search_forget_organization(d, info, org_id):
    """Remove the search rows of every record of `org_id` in `info`'s table (before a rebuild)."""
    texts, table = Table('search_texts'), Table(info.spec.table)
    records = d.from_(table).select(table.id).where(table.organization_id == Bound(org_id))
    return d.render(d.from_(texts).delete().where(
        (texts.table_name == Bound(info.spec.table)) & texts.record_id.isin(records)))


def build_search_analyze(d):
    """Fresh planner statistics for the search rows (after a rebuild).

    NOTE: statistics taken while SQLite's FTS5 table was nearly empty make the planner scan its whole
    `_data` table for FTS5's own `id BETWEEN` deletes: every merge then reads the index again.
    """
    if d.name == 'postgresql':
        return ['ANALYZE search_texts']
    return [f'ANALYZE {t}' for t in ('search_texts', 'search_texts_trigrams_data', 'search_texts_trigrams_idx')]


# -- statements ------------------------------------------------------------------------------------

def output_columns(info):
    """What a record looks like on the wire: every column but the organization."""
    return [name for name in info.columns if name != 'organization_id']


def _returning(info):
    return ' RETURNING ' + ','.join('"%s"' % n.replace('"', '""') for n in output_columns(info))


def _order(d, table, sorts):
    """ORDER BY the sorts, then `id` so that paging visits every row once.

    NOTE: NULLs sort as the smallest value on both databases (SQLite's native order); PostgreSQL
    spells that out for nullable columns only, so NOT NULL sorts still match plain indexes.
    """
    terms = []
    last_desc = False
    for s in sorts:
        last_desc = s.descending
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


def _select(d, info, org_id, lq):
    """The rows of a list in order, before paging."""
    table = Table(info.spec.table)
    query = d.from_(table).select(*[table.field(n) for n in output_columns(info)]).where(
        _condition(d, table, info, org_id, lq))
    for term, order in _ranking(d, table, info, lq) + _order(d, table, lq.sorts):
        query = query.orderby(term, order=order)
    return query


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
        return tuple(tuple(_word_class(w) for w in a) for a in value.alternatives)
    if op in TEXT_OPERATORS:
        return _text_class(value)
    if isinstance(value, (list, tuple)):
        return any(v is not None for v in value), None in value
    return _value_shape(value)


def list_shape(info, lq):
    filters = tuple((f.column.name, f.op, f.logical, _filter_shape(f.value, f.op)) for f in (*lq.equals, *lq.filters))
    return (info.shape_key, len(lq.equals), filters, _filter_shape(lq.search), lq.include_archived,
            tuple((s.column.name, s.descending) for s in lq.sorts), len(lq.rank_words) if lq.ranked else None,
            None if lq.after is None else _value_shape(lq.after))


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


def build_list(d, info, org_id, lq):
    table = Table(info.spec.table)
    paging, extra = _paging(d, lq)
    sql, params = _shaped(d, ('list', list_shape(info, lq)), lambda: _select(d, info, org_id, lq),
                          lambda: (_condition(d, table, info, org_id, lq), _ranking(d, table, info, lq)), extra)
    return sql + paging, params


def build_export(d, info, org_id, lq):
    """Every matching row, in order: for streaming a whole filtered set."""
    return d.render(_select(d, info, org_id, lq))


def build_count(d, info, org_id, lq):
    table = Table(info.spec.table)
    return _shaped(d, ('count', list_shape(info, lq)),
                   lambda: d.from_(table).select(fn.Count('*')).where(where(d, table, info, org_id, lq)),
                   lambda: where(d, table, info, org_id, lq), [])


def build_estimate(d, info, org_id, lq):
    """PostgreSQL's plan of the matching rows, whose top node estimates how many there are.

    NOTE: the rows themselves, not their COUNT: a COUNT's plan is one aggregate row.
    """
    table = Table(info.spec.table)
    sql, params = _shaped(d, ('matches', list_shape(info, lq)),
                          lambda: d.from_(table).select(table.id).where(where(d, table, info, org_id, lq)),
                          lambda: where(d, table, info, org_id, lq), [])
    return 'EXPLAIN (FORMAT JSON) ' + sql, params


def _by_ids(d, table, org_id, ids):
    scope = table.organization_id == Bound(org_id)
    if isinstance(ids, str):
        return scope & (table.id == Bound(ids))
    return scope & (d.one_of(table.id, 'text', ids) if ids else FALSE)


def build_get(d, info, org_id, ids, for_update=False):
    table = Table(info.spec.table)
    columns = output_columns(info)

    def build():
        return d.from_(table).select(*[table.field(n) for n in columns]).where(_by_ids(d, table, org_id, ids))
    if isinstance(ids, str):
        sql, params = d.memo(('get', info.spec.table, tuple(columns)), build), [org_id, ids]
    else:
        # NOTE: rows are locked in the order they come back; one order (by id) for every
        # transaction means two that lock the same rows queue up instead of deadlocking.
        sql, params = d.render(build().orderby(table.id))
    if for_update and d.name == 'postgresql':
        sql += ' FOR UPDATE'
    return sql, params


def build_exists(d, info, org_id, ids):
    """The ids among `ids` that name a record of `org_id` in `info`."""
    table = Table(info.spec.table)
    return d.render(d.from_(table).select(table.id).where(_by_ids(d, table, org_id, ids)))


def build_insert(d, info, row, if_absent=False):
    """INSERT … RETURNING the record; `if_absent` returns no row instead of failing on a duplicate key."""
    table = Table(info.spec.table)
    names = list(row)
    query = d.into(table).columns(*[table.field(n) for n in names]).insert(
        *[d.bind(info.columns[n], row[n]) for n in names])
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

MAX_PARAMS = 30_000   # values bound by one statement: below SQLite's 32,766 and PostgreSQL's 65,535


def chunks(items, width=1, size=None):
    """`items` in slices of `size`, or small enough that a statement binding `width` values for each
    stays under MAX_PARAMS."""
    items = list(items)
    size = size or max(1, MAX_PARAMS // max(1, width))
    return [items[i:i + size] for i in range(0, len(items), size)]


def _statement(d, key, write):
    """The SQL of a batch statement shape, written by `write()` once."""
    sql = _STATEMENTS.get((d.name, key))
    return sql if sql is not None else _remember((d.name, key), write())


def _values(d, n, width):
    """`VALUES (?,?),(?,?)`: n rows of `width` placeholders."""
    p = d.parameter().get_sql()
    row = '(' + ','.join([p] * width) + ')'
    return 'VALUES ' + ','.join([row] * n)


def _flat(d, info, names, rows):
    """The values of `rows` (dicts holding `names`), row after row, adapted for the driver."""
    kinds = [info.columns[n].kind for n in names]
    adapt = d.adapt
    return [adapt(k, row[n]) for row in rows for n, k in zip(names, kinds)]


def build_insert_many(d, info, names, rows, conflict=None, updates=()):
    """One INSERT of `rows` (dicts holding `names`), RETURNING each stored record (in no promised order).

    With `conflict` = (column, partial): an upsert. A row whose value in the organization's unique
    `column` is taken updates the stored record's `updates` columns instead (with a partial index,
    `WHERE column IS NOT NULL` names it as the arbiter). On PostgreSQL each record then ends with
    `xmax = 0`: true when the row was inserted.
    """
    names, updates = tuple(names), tuple(updates)

    def write():
        sql = (f'INSERT INTO {quote(info.spec.table)} ({",".join(quote(n) for n in names)}) '
               + _values(d, len(rows), len(names)))
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


def build_update_many(d, info, org_id, names, rows):
    """One UPDATE giving each record its own values of `names`: `rows` are dicts holding 'id' and `names`.

    NOTE: WITH v AS (VALUES …) UPDATE … FROM v, on both databases. PostgreSQL types a VALUES column
    from its parameters (text when they are all NULL), so each one is cast to its column's type.
    """
    names = tuple(names)
    table = quote(info.spec.table)
    aliases = [f'v{i}' for i in range(len(names))]

    def value(alias, name):
        return f'CAST(v.{alias} AS {info.declared[name]})' if d.name == 'postgresql' else f'v.{alias}'

    def write():
        p = d.parameter().get_sql()
        sets = ', '.join(f'{quote(n)} = {value(a, n)}' for a, n in zip(aliases, names))
        return (f'WITH v (v_id, {", ".join(aliases)}) AS ({_values(d, len(rows), len(names) + 1)}) '
                f'UPDATE {table} SET {sets} FROM v WHERE {table}.organization_id = {p} AND {table}.id = v.v_id'
                + _returning(info))
    sql = _statement(d, ('update_many', info.shape_key, names, len(rows)), write)
    return sql, [*_flat(d, info, ('id', *names), rows), org_id]


def build_get_by(d, info, org_id, column, keys, for_update=False):
    """The records of `org_id` whose `column` holds one of `keys`; `for_update` locks them on PostgreSQL.

    NOTE: locked in id order, as build_get does. Without locks there is no order: on SQLite an ORDER BY id
    would steer the planner to the (organization_id, id) index, away from the one on `column`.
    """
    table = Table(info.spec.table)
    field = table.field(column.name)
    query = d.from_(table).select(*[table.field(n) for n in output_columns(info)]).where(
        (table.organization_id == Bound(org_id)) & field.isin([d.bind(column, k) for k in keys]))
    locking = for_update and d.name == 'postgresql'
    sql, params = d.render(query.orderby(table.id) if locking else query)
    return (sql + ' FOR UPDATE' if locking else sql), params


def build_unique_keys(d, table):
    """The unique indexes and constraints of `table`: rows of (index, position, column, partial, predicate).

    Each row is one key column; read_unique_keys keeps those on (organization_id, column).
    """
    if d.name == 'postgresql':
        return ('SELECT i.indexrelid::regclass::text, k.n, a.attname, i.indpred IS NOT NULL, '
                'pg_get_expr(i.indpred, i.indrelid) '
                'FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, n) '
                'JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum '
                'WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indexprs IS NULL '
                'AND k.n <= i.indnkeyatts'), [quote(table)]
    return ('SELECT il.name, ii.seqno, ii.name, il.partial, m.sql '
            'FROM pragma_index_list(?) AS il JOIN pragma_index_info(il.name) AS ii '
            "LEFT JOIN sqlite_master AS m ON m.type = 'index' AND m.name = il.name "
            'WHERE il."unique" = 1'), [table]


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
    return (f'SELECT {quote(column)} FROM {quote(table)} WHERE {quote(column)} IS NOT NULL '
            f'GROUP BY organization_id, {quote(column)} HAVING COUNT(*) > 1 LIMIT 1'), []


def build_referrers(d, info, org_id, column, ids):
    """Rows of `info` whose reference `column` points at any of `ids` (scalar or array)."""
    table = Table(info.spec.table)
    field = table.field(column.name)
    match = d.one_of(field, column.kind, ids) if ids else FALSE
    query = d.from_(table).select(table.id, field).where((table.organization_id == Bound(org_id)) & match)
    return d.render(query)


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
    return (f'CREATE UNIQUE INDEX {quote(index)} ON {quote(table)} (organization_id, {quote(column)}) '
            f'WHERE {quote(column)} IS NOT NULL')


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

COUNTS = Table('row_counts')


def build_count_read(d, org_id, table_name):
    sql = d.memo('count_read', lambda: d.from_(COUNTS).select(COUNTS.n).where(
        (COUNTS.organization_id == Bound(org_id)) & (COUNTS.table_name == Bound(table_name))))
    return sql, [org_id, table_name]


def build_count_add(d, org_id, table_name, delta):
    """Add `delta` to a counter, creating it (an organization's first row) if needed."""
    sql, params = d.render(d.into(COUNTS).columns(COUNTS.organization_id, COUNTS.table_name, COUNTS.n)
                           .insert(Bound(org_id), Bound(table_name), Bound(int(delta))))
    return sql + ' ON CONFLICT (organization_id, table_name) DO UPDATE SET n = row_counts.n + excluded.n', params


def build_recount(d, org_id, info):
    """Set the counter of `info`'s table for `org_id` to the live rows it really holds."""
    table = Table(info.spec.table)
    live = table.organization_id == Bound(org_id)
    if info.archivable:
        live &= table.archived_at.isnull()
    count_sql, params = d.render(d.from_(table).select(fn.Count('*')).where(live))
    p = d.parameter().get_sql()
    return (f'INSERT INTO row_counts (organization_id, table_name, n) VALUES ({p}, {p}, ({count_sql})) '
            'ON CONFLICT (organization_id, table_name) DO UPDATE SET n = excluded.n'), [org_id, info.spec.table, *params]


# -- server secrets --------------------------------------------------------------------------------

SECRETS = Table('server_secrets')


def build_secret_init(d, name, value):
    """Store `value` as the secret `name` unless one is there: the first process to start wins, and
    every other process then reads that one back (build_secret_read), whichever host it runs on."""
    sql, params = d.render(d.into(SECRETS).columns(SECRETS.field('name'), SECRETS.field('value'))
                           .insert(Bound(name), Bound(value)))
    return sql + ' ON CONFLICT (name) DO NOTHING', params


def build_secret_read(d, name):
    return d.render(d.from_(SECRETS).select(SECRETS.field('value')).where(SECRETS.field('name') == Bound(name)))
