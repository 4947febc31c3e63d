"""Lists, counts, estimates, exports and gets: the statements that read records."""

import orjson
from pypika import Order
from pypika import Table
from pypika import functions as fn
from pypika.terms import Criterion
from pypika.terms import Tuple

from .. import search as searching
from .core import Bound
from .core import FALSE
from .core import Sql
from .core import _shaped
from .core import _statement
from .core import quote
from .conditions import SEARCH_KIND
from .conditions import TEXT_OPERATORS
from .conditions import _ranking
from .conditions import _score
from .conditions import _search_rows
from .conditions import _sort_joins
from .conditions import _text_class
from .conditions import _word_class
from .conditions import criterion
from .conditions import fold
from .conditions import pages_in_rows
from .conditions import searches_only
from .conditions import where


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


def _get_query(d, info, org_id, ids, table=None):
    table = Table(info.spec.table) if table is None else table
    columns = output_columns(info)
    return d.from_(table).select(*[table.field(n) for n in columns]).where(_by_ids(d, table, org_id, ids))


def build_get(d, info, org_id, ids, for_update=False):
    if isinstance(ids, str):
        # NOTE: keyed by the table's shape (the output columns follow from it): a get by id whose statement was
        # written before builds nothing but this key (and no closure: a function made each call was ~0.1 µs).
        key = ('get', info.shape_key)
        sql, params = d.memo(key, _get_query, d, info, org_id, ids), [org_id, ids]
    else:
        # NOTE: rows are locked in the order they come back; one order (by id) for every
        # transaction means two that lock the same rows queue up instead of deadlocking.
        table = Table(info.spec.table)
        sql, params = d.render(_get_query(d, info, org_id, ids, table).orderby(table.id))
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
