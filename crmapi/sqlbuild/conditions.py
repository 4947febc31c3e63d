"""WHERE conditions: filters and their operators, search (q and the text operators), across a reference."""

from dataclasses import replace

from pypika import Order
from pypika import Table
from pypika.terms import Criterion
from pypika.terms import Term

from .. import search as searching
from .core import Bound
from .core import FALSE
from .core import Sql
from .core import TRUE
from .core import quote


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


def _word_grams(word):
    """SQLite: the FTS5 query of the rows that may hold `word` at a word start (WORD_START + `word`): the trigrams of
    its start (FTS_PHRASE characters), but for a word of two characters or more not the first one.

    NOTE: that trigram (two spaces and the word's first letter) is in every row with a word that starts with that
    letter, the index's longest lists, and narrows little past the next one (a space and the word's first two letters,
    in `words` only ever at a word start; elsewhere in `texts` a candidate the row drops): at 1M contacts "  s" is in
    928k of 1.6M rows, "  j" in 217k; q "jo smi" found the same 2,975 candidates without them, its index part
    12.6 -> 5.0 ms CPU.
    """
    start = (searching.WORD_START + word)[:FTS_PHRASE]
    return _fts_terms(start if len(word) < 2 else start[1:])


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
    match = ' OR '.join('(' + ' AND '.join(map(_word_grams, alternative)) + ')' for alternative in terms.alternatives)
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
