"""Embedded records: forward references and reverse relations read one statement per relation per page."""

from pypika import Table
from pypika.terms import Criterion

from .core import Bound
from .core import Sql
from .core import _json_ids
from .core import _shaped
from .core import _statement
from .core import quote
from .reads import output_columns
from .writes import ELEMENT_INDEXES


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


def build_organization(d, org_id):
    """An organization's id and name."""
    orgs = Table('organizations')
    return d.render(d.from_(orgs).select(orgs.id, orgs.field('name')).where(orgs.id == Bound(org_id)))
