"""What every statement family shares: bound values, SQL fragments, the two dialects, the statement cache."""

import contextlib
import threading
from dataclasses import dataclass

import orjson
from pypika.dialects import PostgreSQLQuery
from pypika.dialects import SQLLiteQuery
from pypika.terms import Criterion
from pypika.terms import FormatParameter
from pypika.terms import QmarkParameter
from pypika.terms import Term


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

    def memo(self, key, build, *args):
        """The SQL of a fixed-shape statement, rendered once: `build(*args)` -> a query whose values the
        caller passes again as params, in the same order."""
        sql = _STATEMENTS.get((self.name, key))
        if sql is None:
            sql = _remember((self.name, key), self.render(build(*args))[0])
        return sql


def sqlite_dialect(adapt):
    return Dialect('sqlite', SQLLiteQuery, QmarkParameter, adapt, 'LIKE', 'IS NOT', 'json_array_length', False)


def postgres_dialect(adapt):
    return Dialect(
        'postgresql', PostgreSQLQuery, FormatParameter, adapt, 'ILIKE', 'IS DISTINCT FROM', 'jsonb_array_length', True
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


# -- batches (writes, search rows, changes) -------------------------------------------------------
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


def _json_ids(ids):
    """A page of ids as one JSON text parameter (see Dialect.one_of_ids)."""
    return orjson.dumps(list(ids)).decode()


# -- identifiers -----------------------------------------------------------------------------------


def quote(name):
    """A double-quoted identifier. NOTE: every name reaching here comes from a whitelist (a TableInfo, custom.NAME)."""
    return '"%s"' % name.replace('"', '""')
