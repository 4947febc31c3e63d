"""Property tests of the list query builder, on SQLite and PostgreSQL (Hypothesis).

A scratch table with one column of every kind is filled with generated rows for two
organizations; generated list queries go through the real `parse_list` (parameters JSON-encoded
as the HTTP layer receives them) and `sqlbuild.build_list` / `build_count`, run on the database,
and must return exactly the ids (in order) and the total that a plain-Python evaluation of the
README's query language gives. Invalid queries must be a 400 CrmError from `parse_list`, and no
query that parses may make the database raise.

`make test` runs a short, repeatable pass (fixed derandomized seed). To search longer:
`CRMAPI_PROPERTY_EXAMPLES=2000 CRMAPI_PROPERTY_SEED=$RANDOM make test PYTEST_ARGS="tests/test_properties.py -x"`;
add `CRMAPI_PROPERTY_SHRINK=1` to have Hypothesis shrink a failure to a minimal example (slow).
"""

import contextlib
import datetime as dt
import functools
import json
import os
import types
import uuid
from decimal import Decimal

import pytest
from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import given
from hypothesis import note
from hypothesis import seed
from hypothesis import settings
from hypothesis import strategies as st

from crmapi import rules
from crmapi import search
from crmapi import sqlbuild
from crmapi.errors import CrmError
from crmapi.query import ALIASES
from crmapi.query import LIST_PARAMS
from crmapi.query import OPERATORS
from crmapi.query import Filter
from crmapi.query import parse_list
from crmapi.schema import ResourceSpec
from crmapi.schema import table_info
from crmapi.store import Store

EXAMPLES = int(os.environ.get('CRMAPI_PROPERTY_EXAMPLES', '100'))
SEED = os.environ.get('CRMAPI_PROPERTY_SEED')
SHRINK = os.environ.get('CRMAPI_PROPERTY_SHRINK') == '1'
UTC = dt.timezone.utc
ORG_A, ORG_B = 'org_prop_a', 'org_prop_b'

pytestmark = pytest.mark.slow


def bounded(examples=EXAMPLES):
    """Few examples, no deadline, the same examples on every run unless CRMAPI_PROPERTY_SEED is set.

    Shrinking (each step a database round trip) can take minutes, so a failure is reported as found
    (the failing parameters are in the assertion, the rows in a note) unless CRMAPI_PROPERTY_SHRINK=1.
    """
    phases = tuple(Phase) if SHRINK else tuple(p for p in Phase if p.name not in ('shrink', 'explain'))

    def wrap(test):
        test = settings(
            max_examples=examples,
            deadline=None,
            derandomize=SEED is None,
            database=None,
            phases=phases,
            suppress_health_check=[
                HealthCheck.function_scoped_fixture,
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
            ],
        )(test)
        return seed(int(SEED))(test) if SEED is not None else test

    return wrap


# -- the scratch table -----------------------------------------------------------------------------

DDL = [  # (name, portable SQL type, kind crmapi must infer from the introspected type)
    ('id', 'TEXT PRIMARY KEY', 'text'),
    ('organization_id', 'TEXT NOT NULL', 'text'),
    ('archived_at', 'TIMESTAMPTZ', 'timestamp'),
    ('name', 'TEXT', 'text'),
    ('code', 'TEXT NOT NULL', 'text'),
    ('size', 'BIGINT', 'integer'),
    ('amount', 'NUMERIC(14,2)', 'number'),
    ('flag', 'BOOLEAN', 'boolean'),
    ('due', 'DATE', 'date'),
    ('happened_at', 'TIMESTAMPTZ', 'timestamp'),
    ('tags', 'JSONB', 'array'),
    ('extra', 'JSONB', 'json'),
]
KIND = {name: kind for name, _, kind in DDL}
FIELDS = [name for name in KIND if name != 'organization_id']
SORTABLE = [f for f in FIELDS if KIND[f] not in ('json', 'array')]
SEARCHED = ['name', 'code']  # text columns that are neither references nor server-managed


class Scratch:
    def __init__(self, db, info):
        self.db, self.info = db, info
        self.table = info.spec.table
        self.names = list(info.columns)
        self.id_index = sqlbuild.output_columns(info).index('id')

    @contextlib.contextmanager
    def loaded(self, rows):
        """`rows` in the table for the block, inside one transaction that is rolled back after it:
        no commit (and no fsync) per example, and the table is empty again for the next one."""
        p = '?' if self.db.name == 'sqlite' else '%s'
        sql = f'INSERT INTO {self.table} ({", ".join(self.names)}) VALUES ({", ".join([p] * len(self.names))})'
        adapt = self.db.dialect.adapt
        data = [[adapt(self.info.columns[n].kind, row[n]) for n in self.names] for row in rows]
        try:
            with self.db.transaction(write=True) as tx:
                if data:
                    tx.cursor.executemany(sql, data)
                    # NOTE: written around the store, so their search rows too (what q and text operators read).
                    for org in {row['organization_id'] for row in rows}:
                        Store(self.db, None).index(
                            tx, self.info, org, [r for r in rows if r['organization_id'] == org], fresh=True
                        )
                yield
                raise RollBack
        except RollBack:
            pass

    def run(self, lq, org_id=ORG_A):
        """(ids in order, total) of a parsed list query; inside `loaded`, the same transaction."""
        d = self.db.dialect
        with self.db.transaction() as tx:
            rows = tx.rows(*sqlbuild.build_list(d, self.info, org_id, lq))
            count = tx.one(*sqlbuild.build_count(d, self.info, org_id, lq))[0]
        return [r[self.id_index] for r in rows], count


class RollBack(Exception):
    pass


@pytest.fixture(scope='module')
def scratch(database):
    table = 'prop_' + uuid.uuid4().hex[:12]
    columns = ',\n    '.join(f'{name} {sql_type}' for name, sql_type, _ in DDL)
    with database.transaction(write=True) as tx:
        tx.execute(f'CREATE TABLE {table} (\n    {columns}\n)')
    spec = ResourceSpec(table, 'p_', delete='archive', arrays=frozenset({'tags'}))
    info = table_info(spec, database.introspect([table])[table])
    assert {n: c.kind for n, c in info.columns.items()} == KIND
    yield Scratch(database, info)
    with database.transaction(write=True) as tx:
        tx.execute(f'DROP TABLE {table}')


# -- values ----------------------------------------------------------------------------------------
# Small pools so that equalities and ties happen. Text operators and q fold case and accents for all of
# Unicode (crmapi/search.py, tests/test_search.py); the reference folds with the same function.

TEXT_ALPHABET = 'aAbB%_\\ 1\u00e9\u00f8\u5b57'
# NOTE: ids are the server's (lowercase ASCII: crmapi.store.new_id; a client never sets one), and text operators
# compare them as stored with the folded value (crmapi.sqlbuild._text_match): capitals or accents in an id are
# outside the domain. '_' and '%' stay, for LIKE escaping.
ID_ALPHABET = 'ab_%1'
TAGS = ['t1', 'T1', 't2', 'x_%', '\u00e9']
INTS = [-(2**63), -7, -1, 0, 1, 2, 3, 42, 2**63 - 1]
DECIMALS = [
    Decimal(s) for s in ('-999999999999.99', '-1.5', '-0.01', '0', '0.1', '1', '2.50', '100', '999999999999.99')
]
DATES = [
    dt.date(1, 1, 1),
    dt.date(1970, 1, 1),
    dt.date(1999, 12, 31),
    dt.date(2000, 1, 1),
    dt.date(2024, 2, 29),
    dt.date(2024, 3, 1),
    dt.date(9999, 12, 31),
]
INSTANTS = [
    dt.datetime(1970, 1, 1, tzinfo=UTC),
    dt.datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    dt.datetime(2024, 2, 29, 12, tzinfo=UTC),
    dt.datetime(2024, 2, 29, 12, 0, 0, 500000, tzinfo=UTC),
    dt.datetime(2024, 2, 29, 23, 30, tzinfo=UTC),
    dt.datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]
JSONS = [None, {}, {'a': 1}, 1, 'x', True, 0]

texts = st.text(st.sampled_from('aAbB' * 2 + TEXT_ALPHABET), max_size=4)  # letters weigh more
short_texts = st.text(st.sampled_from('aAbB' * 3 + '%_\\ \u00e9'), min_size=1, max_size=2)  # patterns that hit
id_texts = st.text(ID_ALPHABET, min_size=1, max_size=3)
ints = st.sampled_from(INTS) | st.integers(-5, 5)
decimals = st.sampled_from(DECIMALS) | st.decimals(min_value=-1000, max_value=1000, places=2)
dates = (
    st.sampled_from(DATES)
    | st.sampled_from(DATES)
    | st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 1, 1))
)
instants = (
    st.sampled_from(INSTANTS)
    | st.sampled_from(INSTANTS)
    | st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(UTC))
)
tag_lists = st.lists(st.sampled_from(TAGS), unique=True, max_size=3)

ROW_VALUES = {
    'archived_at': st.none() | st.none() | instants,
    'name': st.none() | texts,
    'code': texts,
    'size': st.none() | ints,
    'amount': st.none() | decimals,
    'flag': st.none() | st.booleans(),
    'due': st.none() | dates,
    'happened_at': st.none() | instants,
    'tags': st.none() | tag_lists,
    'extra': st.sampled_from(JSONS),
}


@st.composite
def datasets(draw):
    """Rows of two organizations, ids unique across the table (it is the primary key)."""
    ids = draw(st.lists(id_texts, unique=True, min_size=4, max_size=24))
    rows = []
    for i in ids:
        row = draw(st.fixed_dictionaries(ROW_VALUES))
        row['id'] = i
        row['organization_id'] = draw(st.sampled_from([ORG_A, ORG_A, ORG_B]))
        rows.append(row)
    return rows


def render_instant(args):
    instant, minutes, zulu = args
    if zulu:
        return instant.isoformat().replace('+00:00', 'Z')
    return instant.astimezone(dt.timezone(dt.timedelta(minutes=minutes))).isoformat()


def number_wire(d):
    return st.just(float(d)) | (st.just(int(d)) if d == d.to_integral_value() else st.just(float(d)))


WIRE = {  # field -> strategy of JSON values valid for it
    'id': id_texts | st.text(ID_ALPHABET, max_size=2),
    'name': short_texts | texts,
    'code': short_texts | texts,
    'size': ints | st.integers(-5, 5).map(float),  # 3.0 is the integer 3
    'amount': decimals.flatmap(number_wire),
    'flag': st.booleans(),
    'due': dates.map(dt.date.isoformat),
    'archived_at': st.tuples(instants, st.integers(-14 * 4, 14 * 4).map(lambda q: q * 15), st.booleans()).map(
        render_instant
    ),
    'tags': st.sampled_from(TAGS) | st.text(ID_ALPHABET, max_size=2),
}
WIRE['happened_at'] = WIRE['archived_at']

EQ_OPS = ('eq', 'neq', 'in', 'not_in', 'is_empty', 'is_not_empty')
ORDER_OPS = ('gt', 'gte', 'lt', 'lte')
TEXT_OPS = ('contains', 'not_contains', 'starts_with', 'ends_with')
OPS = {
    'text': EQ_OPS + ORDER_OPS + TEXT_OPS,
    'integer': EQ_OPS + ORDER_OPS,
    'number': EQ_OPS + ORDER_OPS,
    'date': EQ_OPS + ORDER_OPS,
    'timestamp': EQ_OPS + ORDER_OPS,
    'boolean': EQ_OPS,
    'array': EQ_OPS,
    'json': ('eq', 'neq', 'is_empty', 'is_not_empty'),  # eq/neq with null only
}


@st.composite
def filter_items(draw, fields=FIELDS):
    field = draw(st.sampled_from(fields) | st.sampled_from(['name', 'code']))
    kind = KIND[field]
    op = draw(st.sampled_from(OPS[kind]) | st.sampled_from(TEXT_OPS if kind == 'text' else OPS[kind]))
    item = {'field': field, 'op': op}
    if op in ('is_empty', 'is_not_empty'):
        if draw(st.booleans()):
            item['value'] = None
    elif kind == 'json':
        item['value'] = None
    elif op in ('eq', 'neq'):
        item['value'] = draw(st.none() | WIRE[field])
    elif op in ('in', 'not_in'):
        item['value'] = draw(st.lists(st.none() | WIRE[field], max_size=3))
    else:
        item['value'] = draw(WIRE[field])
    logical = draw(st.sampled_from([None, 'and', 'or', 'AND', 'OR']))
    if logical is not None:
        item['logicalOp'] = logical
    return item


@st.composite
def filter_objects(draw):
    obj = {}
    for field in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=3)):
        if KIND[field] == 'json':
            obj[field] = None
        else:
            obj[field] = draw(st.none() | WIRE[field] | st.lists(st.none() | WIRE[field], max_size=3))
    if draw(st.booleans()):
        obj['q'] = draw(short_texts | texts)
    if draw(st.booleans()):
        obj['include_archived'] = draw(st.booleans())
    return obj


@st.composite
def queries(draw):
    sorts = draw(
        st.lists(
            st.tuples(st.sampled_from(SORTABLE), st.sampled_from(['ASC', 'DESC', 'asc', 'desc', None])), max_size=3
        )
    )
    if len(sorts) == 1:
        style = draw(st.sampled_from(['sorts', 'sort', 'sort-json']))
    else:
        style = draw(st.sampled_from(['sorts', None])) if not sorts else 'sorts'
    rng = draw(st.none() | st.tuples(st.integers(0, 30) | st.just(2**53), st.integers(1, 30) | st.just(1000)))
    return {
        'filters': draw(st.none() | st.lists(filter_items(), min_size=1, max_size=5)),
        'filter': draw(st.none() | filter_objects()),
        'sorts': sorts,
        'sort_style': style,
        'range': None if rng is None else [rng[0], rng[0] + rng[1] - 1],
    }


def dumps(value):
    return json.dumps(value, ensure_ascii=False)


def to_params(q):
    """The query string as the HTTP layer hands it to parse_list: one string per parameter."""
    params = {}
    if q['range'] is not None:
        params['range'] = dumps(q['range'])
    if q['filter'] is not None:
        params['filter'] = dumps(q['filter'])
    if q['filters'] is not None:
        params['filters'] = dumps(q['filters'])
    sorts, style = q['sorts'], q['sort_style']
    if style == 'sorts':
        params['sorts'] = dumps([{'field': f} if o is None else {'field': f, 'order': o} for f, o in sorts])
    elif style == 'sort':
        ((f, o),) = sorts
        params['sort'] = f
        if o is not None:
            params['order'] = o
    elif style == 'sort-json':
        ((f, o),) = sorts
        params['sort'] = dumps([f] if o is None else [f, o])
    return params


# -- the reference: the README's query language in plain Python ------------------------------------


def searched(row, terms):
    """q: for one alternative, each word starts a word of the searched columns."""
    found = [w for c in SEARCHED if row[c] is not None for w in search.words(row[c])]
    return any(all(any(f.startswith(w) for f in found) for w in alternative) for alternative in terms.alternatives)


def rank(row, terms):
    """How many words asked for start a word of the name columns (`code`, the required text column)."""
    found = search.words(row['code'])
    return sum(any(f.startswith(w) for f in found) for w in terms.words)


def normalize(kind, value):
    """A JSON filter value as the Python value of the column it is compared with."""
    if value is None or kind in ('text', 'array', 'boolean'):
        return value
    if kind == 'integer':
        return int(value)
    if kind == 'number':
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if kind == 'date':
        return dt.date.fromisoformat(value)
    return dt.datetime.fromisoformat(value.replace('Z', '+00:00')).astimezone(UTC)


def as_filter(item):
    """A wire filter item as the evaluator takes it (its value normalized here, independently of crmapi.query)."""
    kind, op, value = KIND[item['field']], item['op'], item.get('value')
    value = tuple(normalize(kind, v) for v in value) if op in ('in', 'not_in') else normalize(kind, value)
    return Filter(types.SimpleNamespace(name=item['field'], kind=kind), op, value, item.get('logicalOp', 'and').lower())


def matches(row, field, op, value):
    """NOTE: crmapi.rules is THE Python evaluator of the query language (rule conditions use it): this
    property checks it against the SQL of lists."""
    return rules.holds([as_filter({'field': field, 'op': op, 'value': value})], row)


def compare(sorts):
    """NULLs are the smallest value; ties go to id, in the direction of the last sort."""
    keys = [(f, (o or 'ASC').upper() == 'DESC') for f, o in sorts]
    last_desc = keys[-1][1] if keys else False

    def cmp(a, b):
        for field, desc in [*keys, ('id', last_desc)]:
            x, y = a[field], b[field]
            if x == y:
                continue
            c = -1 if x is None else 1 if y is None else (-1 if x < y else 1)
            return -c if desc else c
        return 0

    return functools.cmp_to_key(cmp)


def reference(rows, q, org_id=ORG_A):
    """(ids of the page in order, total) for query `q` over `rows`."""
    obj, filters = q['filter'] or {}, q['filters'] or []
    include_archived = (
        obj.get('include_archived') is True or 'archived_at' in obj or any(f['field'] == 'archived_at' for f in filters)
    )
    found = []
    for row in rows:
        if row['organization_id'] != org_id or (row['archived_at'] is not None and not include_archived):
            continue
        ok = all(
            matches(row, k, 'in' if isinstance(v, list) else 'eq', v)
            for k, v in obj.items()
            if k not in ('q', 'include_archived')
        )
        ok = ok and rules.holds([as_filter(f) for f in filters], row)
        if 'q' in obj:
            ok = ok and searched(row, search.parse(obj['q']))
        if ok:
            found.append(row)
    found.sort(key=compare(q['sorts']))
    if 'q' in obj and not q['sorts'] and search.parse(obj['q']).words:
        found.sort(key=lambda row: -rank(row, search.parse(obj['q'])))  # best first, stable: then by id
    start, end = q['range'] or (0, 24)
    if q['range'] is None and isinstance(obj.get('id'), list):
        end = max(end, min(len(obj['id']), 1000) - 1)  # react-admin's getMany: every id asked for
    return [r['id'] for r in found[start : end + 1]], len(found)


# -- property 1: the database agrees with the reference --------------------------------------------


@bounded()
@given(rows=datasets(), qs=st.lists(queries(), min_size=4, max_size=8))
def test_lists_equal_the_reference_evaluation(scratch, rows, qs):
    note(f'rows of {ORG_A}: {[r for r in rows if r["organization_id"] == ORG_A]}')
    with scratch.loaded(rows):
        for q in qs:
            params = to_params(q)
            got = scratch.run(parse_list(params, scratch.info))
            assert got == reference(rows, q), f'{scratch.db.name}: {params}'


# -- property 2: anything invalid is a 400 from the parser -----------------------------------------

BAD_VALUES = {  # kind -> JSON values check() must refuse
    'text': [5, 1.5, True, {'a': 1}, 'a\x00b', 'x' * 10_001],
    'integer': ['5', 'ten', True, 1.5, 2**63, -(2**63) - 1, 1e19, {'a': 1}],
    'number': ['1.5', True, 0.001, 10**12, -1e12, 1e300, {'a': 1}],
    'boolean': ['true', 1, 0, 'false', 1.0],
    'date': [20240101, '2024-02-30', '2024-1-1', '2024-01-01T00:00:00Z', '01/02/2024', 'today', True],
    'timestamp': [
        5,
        'yesterday',
        '2024-13-01T00:00:00Z',
        '2024-01-01T25:00:00Z',
        '0001-01-01T00:00:00+01:00',
        '2024-01-01T00:00:00+99:00',
        'x' * 41,
        True,
    ],
    'array': [5, True, {'a': 1}, 'a\x00b', 1.5],
    'json': [{'a': 1}, 1, 'x', True, [1]],
}
RAW_MALFORMED = [  # (parameter, raw text) that no parser may accept
    ('filters', '{"field":"name","op":"eq","value":"a"}'),
    ('filters', '[1]'),
    ('filters', '[null]'),
    ('filters', '[{"field":"name"}]'),
    ('filters', '[{"op":"eq"}]'),
    ('filters', '[{"field":"name","op":"eq",'),
    ('filters', '[{"field":"name","op":"eq","value":"a","extra":1}]'),
    ('filters', '[{"field":"name","op":"eq","value":"a","logicalOp":"xor"}]'),
    ('filters', '[{"field":"name","op":"eq","value":"a","logicalOp":null}]'),
    ('filters', '[{"field":"name","op":"eq","value":"a","field":"code"}]'),
    ('filters', '[{"field":"size","op":"eq","value":NaN}]'),
    ('filters', '[{"field":"size","op":"eq","value":1e999}]'),
    ('filters', 'null'),
    ('filters', '"name"'),
    ('filters', ''),
    ('filters', '\x00'),
    ('filter', '[]'),
    ('filter', '1'),
    ('filter', 'null'),
    ('filter', '{"q":5}'),
    ('filter', '{"q":"a\\u0000"}'),
    ('filter', '{"include_archived":"yes"}'),
    ('filter', '{"name":{"a":1}}'),
    ('filter', '{"name":"a","name":"b"}'),
    ('filter', '{"organization_id":"org_prop_b"}'),
    ('filter', '{"":1}'),
    ('range', '[0]'),
    ('range', '[1,0]'),
    ('range', '[-1,5]'),
    ('range', '[0,1000]'),
    ('range', '[0.0,1]'),
    ('range', '["0","1"]'),
    ('range', '[true,1]'),
    ('range', '{}'),
    ('range', f'[{2**53 + 1},{2**53 + 1}]'),
    ('range', f'[0,{2**64}]'),
    ('range', '[0,1e999]'),
    ('sorts', '{"field":"name"}'),
    ('sorts', '[{"order":"ASC"}]'),
    ('sorts', '[{"field":"name","order":"UP"}]'),
    ('sorts', '[{"field":"name","dir":"ASC"}]'),
    ('sorts', '[{"field":"tags"}]'),
    ('sorts', '[{"field":"extra"}]'),
    ('sorts', '[{"field":5}]'),
    ('sorts', '[{"field":"name","order":null}]'),
    ('sorts', '[' + ','.join(['{"field":"name"}'] * 51) + ']'),
    ('sort', '["name","DESC","x"]'),
    ('sort', '[]'),
    ('sort', '["tags"]'),
    ('sort', 'nope'),
    ('sort', 'organization_id'),
    ('sort', 'name\x00'),
    ('sort', '[5]'),
    ('order', 'ASC'),
    ('cursor', 'nope'),
    ('cursor', ''),
]


@st.composite
def invalid_params(draw):
    """A valid query with one thing made invalid."""
    params = to_params(draw(queries()))
    filters = json.loads(params.get('filters', '[]'))
    mutation = draw(
        st.sampled_from(
            [
                'param',
                'field',
                'filter_key',
                'sort_field',
                'op',
                'op_for_kind',
                'value',
                'in_value',
                'filter_value',
                'raw',
                'duplicate',
                'too_many',
            ]
        )
    )
    if mutation == 'param':
        params[draw(st.text(max_size=8).filter(lambda s: s not in LIST_PARAMS))] = draw(st.text(max_size=3))
    elif mutation == 'field':
        field = draw(
            st.text(max_size=6).filter(lambda s: s not in FIELDS)
            | st.sampled_from(['organization_id', 5, None, ['name'], 'name\x00', 'NAME'])
        )
        filters.append({'field': field, 'op': 'eq', 'value': 'a'})
    elif mutation == 'filter_key':
        key = draw(
            st.text(max_size=6).filter(lambda s: s not in FIELDS and s not in ('q', 'include_archived'))
            | st.just('organization_id')
        )
        params['filter'] = dumps({**json.loads(params.get('filter', '{}')), key: 'a'})
    elif mutation == 'sort_field':
        params.pop('sort', None), params.pop('order', None)
        field = draw(
            st.text(max_size=6).filter(lambda s: s not in FIELDS)
            | st.sampled_from(['organization_id', 'tags', 'extra'])
        )
        params['sorts'] = dumps([{'field': field}])
    elif mutation == 'op':
        op = draw(
            st.text(max_size=12).filter(lambda s: s not in OPERATORS and s not in ALIASES)
            | st.sampled_from([None, 5, ['eq'], 'EQ', 'like', 'ilike'])
        )
        filters.append({'field': draw(st.sampled_from(FIELDS)), 'op': op, 'value': None})
    elif mutation == 'op_for_kind':
        field = draw(st.sampled_from([f for f in FIELDS if set(OPERATORS) - set(OPS[KIND[f]])]))
        op = draw(st.sampled_from(sorted(set(OPERATORS) - set(OPS[KIND[field]]))))
        value = draw(WIRE.get(field, st.just('x')))
        filters.append({'field': field, 'op': op, 'value': [value] if op in ('in', 'not_in') else value})
    elif mutation in ('value', 'in_value', 'filter_value'):
        field = draw(st.sampled_from(FIELDS))
        kind = KIND[field]
        bad = draw(st.sampled_from(BAD_VALUES[kind]))
        if mutation == 'filter_value':
            params['filter'] = dumps({**json.loads(params.get('filter', '{}')), field: bad})
        elif mutation == 'in_value' and kind != 'json':
            filters.append(
                {
                    'field': field,
                    'op': draw(st.sampled_from(['in', 'not_in'])),
                    'value': [bad] if draw(st.booleans()) else bad if not isinstance(bad, list) else 'x',
                }
            )
        else:
            ops = ['eq', 'neq'] + (list(ORDER_OPS) if kind in ('integer', 'number', 'date', 'timestamp') else [])
            filters.append({'field': field, 'op': draw(st.sampled_from(ops)), 'value': bad})
    elif mutation == 'raw':
        name, raw = draw(st.sampled_from(RAW_MALFORMED))
        if name in ('sort', 'order', 'sorts'):
            params.pop('sort', None), params.pop('order', None), params.pop('sorts', None)
        params[name] = raw
        return params
    elif mutation == 'duplicate':
        name = draw(st.sampled_from(sorted(LIST_PARAMS - {'cursor'})))
        params[name] = [params.get(name, '[]'), params.get(name, '[]')]
        return params
    elif mutation == 'too_many':
        filters = filters + [{'field': 'name', 'op': 'is_empty'}] * (51 - len(filters))
    params['filters'] = dumps(filters)
    return params


@bounded(EXAMPLES * 3)
@given(params=invalid_params())
def test_invalid_queries_are_a_400_from_the_parser(scratch, params):
    with pytest.raises(CrmError) as err:
        parse_list(params, scratch.info)
    assert err.value.status == 400, (params, err.value)


# -- property 3: whatever parses, the database runs ------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT_ALPHABET + '\x00-:T+Z0123456789', max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=5,
)


@st.composite
def loose_params(draw):
    """Filters assembled from any field, any operator and any JSON value: valid or not."""
    items = draw(
        st.lists(
            st.fixed_dictionaries(
                {'field': st.sampled_from(FIELDS), 'op': st.sampled_from(OPERATORS)},
                optional={
                    'value': json_values | st.one_of(*WIRE.values()),
                    'logicalOp': st.sampled_from(['and', 'or']),
                },
            ),
            min_size=1,
            max_size=4,
        )
    )
    params = to_params(draw(queries()))
    params['filters'] = dumps(items)
    if draw(st.booleans()):
        params['filter'] = dumps(draw(st.dictionaries(st.sampled_from(FIELDS + ['q']), json_values, max_size=2)))
    return params


@bounded(EXAMPLES * 2)
@given(rows=datasets(), params=loose_params())
def test_whatever_parses_runs_without_a_driver_error(scratch, rows, params):
    try:
        lq = parse_list(params, scratch.info)
    except CrmError as err:
        assert err.status == 400, (params, err)
        return
    with scratch.loaded(rows):
        scratch.run(lq)  # any exception here (driver error, or one translated from it) fails


# -- hand-picked rows: the reference itself checked against the README, and the database against both --


def hand_row(i, org=ORG_A, **values):
    row = {name: None for name in KIND}
    row.update({'id': i, 'organization_id': org, 'code': '', **values})
    return row


HAND_ROWS = [
    hand_row('a1', name='Ada', size=3, code='x'),
    hand_row('a2', name='ADA%', size=None, code='x'),
    hand_row('a3', name='ad_a', size=1, code='y'),
    hand_row('a4', name=None, size=3, code='y', tags=[]),
    hand_row('a5', name='', size=2, code='x\\', tags=['t1']),
    hand_row('a6', name='b\\a', size=None, code='x', archived_at=INSTANTS[0]),
    hand_row('b1', org=ORG_B, name='Ada', size=3),
]


def query(filters=None, obj=None, sorts=(), rng=None):
    return {
        'filters': filters,
        'filter': obj,
        'sorts': list(sorts),
        'sort_style': 'sorts' if sorts else None,
        'range': rng,
    }


@pytest.mark.parametrize(
    'q, expected',
    [
        (query([{'field': 'name', 'op': 'contains', 'value': 'ada'}]), ['a1', 'a2']),  # ASCII case folded
        (query([{'field': 'name', 'op': 'contains', 'value': '%'}]), ['a2']),  # % literal
        (query([{'field': 'name', 'op': 'contains', 'value': '_'}]), ['a3']),  # _ literal
        (query([{'field': 'code', 'op': 'ends_with', 'value': '\\'}]), ['a5']),  # \ literal
        (query([{'field': 'name', 'op': 'starts_with', 'value': 'AD'}]), ['a1', 'a2', 'a3']),
        (query([{'field': 'name', 'op': 'not_contains', 'value': 'd'}]), ['a4', 'a5']),  # NULL kept
        (query([{'field': 'size', 'op': 'neq', 'value': 3}]), ['a2', 'a3', 'a5']),  # NULL kept
        (query([{'field': 'size', 'op': 'not_in', 'value': [3, 1]}]), ['a2', 'a5']),
        (query([{'field': 'size', 'op': 'neq', 'value': None}]), ['a1', 'a3', 'a4', 'a5']),
        (query([{'field': 'name', 'op': 'is_empty'}]), ['a4', 'a5']),
        (query([{'field': 'tags', 'op': 'is_empty'}]), ['a1', 'a2', 'a3', 'a4']),
        (query([{'field': 'tags', 'op': 'eq', 'value': 't1'}]), ['a5']),
        (
            query(
                [
                    {'field': 'size', 'op': 'eq', 'value': 1, 'logicalOp': 'or'},  # (size=1 OR size=2) AND code=x\
                    {'field': 'size', 'op': 'eq', 'value': 2},
                    {'field': 'code', 'op': 'eq', 'value': 'x\\'},
                ]
            ),
            ['a5'],
        ),
        (query(obj={'include_archived': True, 'q': 'A'}), ['a1', 'a2', 'a3', 'a6']),
        (query(sorts=[('size', 'ASC')]), ['a2', 'a3', 'a5', 'a1', 'a4']),  # NULLs first, ties by id
        (query(sorts=[('size', 'DESC')]), ['a4', 'a1', 'a5', 'a3', 'a2']),  # NULLs last, ties by id desc
        (query(sorts=[('code', 'ASC'), ('size', 'DESC')], rng=[1, 2]), ['a2', 'a5']),  # 'x' < 'x\\' < 'y'
    ],
)
def test_hand_picked_queries(scratch, q, expected):
    assert reference(HAND_ROWS, q)[0] == expected
    with scratch.loaded(HAND_ROWS):
        assert scratch.run(parse_list(to_params(q), scratch.info))[0] == expected


# -- regressions: disagreements the properties found, as plain examples ---------------------------


def test_not_in_null_is_the_complement_of_in_null(scratch):
    """`in [null]` is the NULL rows; `not_in [null]` must be the other rows, as `neq null` is.

    Found by test_lists_equal_the_reference_evaluation: filters=[{"field":"size","op":"not_in","value":[null]}]
    returned every row, NULL ones included.
    """
    rows = [hand_row('n1', size=None), hand_row('n2', size=1)]
    with scratch.loaded(rows):

        def ids(op, value):
            params = {'filters': json.dumps([{'field': 'size', 'op': op, 'value': value}])}
            return scratch.run(parse_list(params, scratch.info))[0]

        assert ids('in', [None]) == ['n1']
        assert ids('neq', None) == ['n2']
        assert ids('not_in', [None]) == ['n2']
        assert ids('not_in', [None, 1]) == []


@pytest.mark.parametrize('name', ['filters', 'filter', 'range', 'sorts', 'sort'])
def test_deeply_nested_json_is_a_400_not_a_recursion_error(scratch, name):
    """json.loads raises RecursionError (not ValueError) past ~1000 levels: it must still be a 400."""
    with pytest.raises(CrmError) as err:
        parse_list({name: '[' * 100_000}, scratch.info)
    assert err.value.status == 400
