"""Inserts, updates, deletes, batches, unique keys, referrers and the live-row counters."""

import functools
import itertools
import re

import orjson
from pypika import Table
from pypika import functions as fn

from ..values import converted
from .core import Bound
from .core import FALSE
from .core import SCOPE
from .core import Sql
from .core import _statement
from .core import _values
from .core import quote
from .core import row_chunks
from .reads import _by_ids
from .reads import output_columns


def _returning(info):
    return ' RETURNING ' + ','.join('"%s"' % n.replace('"', '""') for n in output_columns(info))


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
