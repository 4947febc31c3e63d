"""What one list request may cost: list lengths, the statement time limit, estimated totals.

Long `in` lists are capped (query.Limits.max_list_length) and travel as ONE bound parameter, so a
list of any length is one statement shape (one cached SQL text, one prepared statement) and no
recursion in the builder. Every statement, on SQLite too, stops at CRMAPI_STATEMENT_TIMEOUT_MS with
a 503. `Prefer: count=estimated` reads the planner's row estimate of the filtered rows (PostgreSQL), or
counts small totals exactly and scales the live-row counter by a sample of rows (SQLite).
Every test runs on SQLite and PostgreSQL.
"""

import datetime as dt
import json
import time
import uuid

import psycopg
import pytest

from conftest import NoLeaks
from conftest import fresh_database
from conftest import new_org
from conftest import postgres_url
from crmapi.cli import init_db
from conftest import assert_problem
from crmapi import create_app
from crmapi import sqlbuild
from crmapi.config import Settings
from crmapi.db import PostgresDatabase
from crmapi.db import SQLiteDatabase
from crmapi.db import Tx
from crmapi.query import Limits
from crmapi.query import parse_list
from crmapi.accounts import Principal
from crmapi.services import build_services
from crmapi.store import reindex_database
from test_query import CONTACTS
from test_sqlbuild import POSTGRES
from test_sqlbuild import SQLITE

MAX = Limits().max_list_length


def ids(n, prefix='tag_none'):
    """`n` distinct ids that name no record."""
    return [f'{prefix}{i:05d}' for i in range(n)]


def encode(params):
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}


# -- bulk rows -------------------------------------------------------------------------------------


def insert_contacts(database, org_id, n, hot=0, first_name=None, tags=(), background=None):
    """`n` contacts of `org_id` in one INSERT ... SELECT (seconds instead of minutes of POSTs); the
    first `hot` have status 'hot', the rest 'cold'."""
    p = '?' if database.name == 'sqlite' else '%s'
    adapt = database.dialect.adapt
    sql = (
        f'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {p}) '
        'INSERT INTO contacts (id, organization_id, last_name, first_name, status, tags, created_at, updated_at, '
        'background) '
        f"SELECT {p} || CAST(i AS TEXT), {p}, 'n' || CAST(i AS TEXT), {p}, "
        f"CASE WHEN i <= {p} THEN 'hot' ELSE 'cold' END, {p}, {p}, {p}, {p} FROM n"
    )
    now = adapt('timestamp', dt.datetime.now(dt.timezone.utc))
    with database.transaction(write=True) as tx:
        tx.execute(sql, (n, f'c_{org_id}_', org_id, first_name, hot, adapt('json', list(tags)), now, now, background))
        if database.name == 'postgresql':
            tx.execute('ANALYZE contacts')


@pytest.fixture
def bulk(database, api):
    """bulk(n, hot=0, first_name=None, tags=()): contacts of `api`'s organization (insert_contacts),
    deleted after the test, so the shared database stays small. With a first name or a background they get
    their search rows too (`crmapi reindex`), so text operators scan them."""

    def insert(n, **kwargs):
        insert_contacts(database, api.org_id, n, **kwargs)
        if kwargs.get('first_name') or kwargs.get('background'):
            reindex_database(database, [api.org_id])

    yield insert
    p = '?' if database.name == 'sqlite' else '%s'
    with database.transaction(write=True) as tx:
        for table in ('search_texts',):
            tx.execute(
                f"DELETE FROM {table} WHERE table_name = 'contacts' AND record_id IN "
                f'(SELECT id FROM contacts WHERE organization_id = {p})',
                (api.org_id,),
            )
        tx.execute(f'DELETE FROM contacts WHERE organization_id = {p}', (api.org_id,))


@pytest.fixture
def own_database(backend, tmp_path):
    """A database of this test's own: planner estimates must not depend on what other tests left."""
    if backend == 'sqlite':
        yield fresh_database('sqlite', tmp_path)
        return
    base = postgres_url()
    name = 'estimate_' + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE {name}')
    db = PostgresDatabase(base.rsplit('/', 1)[0] + '/' + name)
    try:
        init_db(db)
        yield db
    finally:
        db.close()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE {name} WITH (FORCE)')


# -- list lengths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'field, op', [('tags', 'in'), ('tags', 'not_in'), ('company_id', 'in'), ('company_id', 'not_in')]
)
def test_a_list_of_the_maximum_length_filters_scalar_and_array_fields(api, field, op):
    tag = api.create('tags', name='vip')
    company = api.create('companies', name='Acme')
    inside = api.create('contacts', last_name='inside', tags=[tag['id']], company_id=company['id'])
    api.create('contacts', last_name='outside')
    wanted = ids(MAX - 1) + [tag['id'] if field == 'tags' else company['id']]
    found = api.list('contacts', filters=[{'field': field, 'op': op, 'value': wanted}])
    assert [r['last_name'] for r in found] == (['inside'] if op == 'in' else ['outside'])
    assert op == 'not_in' or found[0]['id'] == inside['id']


@pytest.mark.parametrize(
    'params, param, field',
    [
        ({'filters': [{'field': 'tags', 'op': 'in', 'value': ids(MAX + 1)}]}, 'filters', 'tags'),
        ({'filters': [{'field': 'city', 'op': 'not_in', 'value': ids(MAX + 1)}]}, 'filters', 'city'),
        ({'filter': {'city': ids(MAX + 1)}}, 'filter', 'city'),
        ({'filter': {'id': ids(MAX + 1)}}, 'filter', 'id'),  # react-admin's getMany
        ({'filters': [{'field': 'company_id', 'op': 'in', 'value': ids(65_534)}]}, 'filters', 'company_id'),
    ],
)
def test_a_list_longer_than_the_limit_is_a_400_naming_param_and_field(api, params, param, field):
    resp = api.get('/api/contacts', params, status=400)
    body = assert_problem(resp, 400, param=param, field=field)
    assert str(MAX) in body['detail']


def test_a_null_among_many_values_keeps_the_documented_null_semantics(api):
    api.create('contacts', last_name='hot', status='hot')
    api.create('contacts', last_name='none')
    many = ids(MAX - 2)

    def names(op, values):
        return sorted(
            r['last_name'] for r in api.list('contacts', filters=[{'field': 'status', 'op': op, 'value': values}])
        )

    assert names('in', many + ['hot']) == ['hot']
    assert names('in', many + [None]) == ['none']
    assert names('not_in', many) == ['hot', 'none'], 'a negation keeps the NULL rows'
    assert names('not_in', many + [None]) == ['hot'], 'a null among the values leaves them out'
    assert names('not_in', many + ['hot', None]) == []


def test_getmany_answers_every_one_of_a_thousand_ids(api):
    made = [api.create('tags', name=f't{i}')['id'] for i in range(3)]
    asked = ids(MAX - 3) + made
    resp = api.get('/api/tags', {'filter': {'id': asked}})
    assert sorted(r['id'] for r in resp.json) == sorted(made)


def test_lists_of_every_length_are_one_statement(api, monkeypatch):
    """Each list length once made its own SQL text: a cached statement per length in crmapi and in
    the driver (20-30 MB of worker memory per long list on SQLite)."""
    monkeypatch.setattr(sqlbuild.core, '_STATEMENTS', {})
    for n in (1, 2, 3, 17, 200, MAX):
        for params in ({'filters': [{'field': 'tags', 'op': 'in', 'value': ids(n)}]}, {'filter': {'city': ids(n)}}):
            api.get('/api/contacts', {'range': [0, 0], **params})
    lists = [key for key in sqlbuild.core._STATEMENTS if key[1][0] == 'list']
    assert len(lists) == 2, lists


@pytest.mark.parametrize('d', [SQLITE, POSTGRES], ids=['sqlite', 'postgresql'])
def test_the_sql_of_a_list_does_not_depend_on_its_length(d):
    def where(values):
        lq = parse_list(
            encode(
                {
                    'filters': [
                        {'field': 'tags', 'op': 'in', 'value': values},
                        {'field': 'status', 'op': 'not_in', 'value': values},
                    ]
                }
            ),
            CONTACTS,
        )
        return sqlbuild.build_count(d, CONTACTS, 'org_1', lq)

    short, long = where(ids(1)), where(ids(MAX))
    assert short[0] == long[0]
    assert len(short[1]) == len(long[1]) == 3, 'the organization, then each list as one parameter'


@pytest.mark.parametrize('d', [SQLITE, POSTGRES], ids=['sqlite', 'postgresql'])
def test_statements_over_many_ids_are_one_shape(d):
    """Merges, reference checks and reference rewrites name ids in numbers the client chooses."""
    column = CONTACTS.columns['tags']
    builders = [
        lambda many: sqlbuild.build_get(d, CONTACTS, 'org_1', many, for_update=True),
        lambda many: sqlbuild.build_exists(d, [CONTACTS], 'org_1', [many]),
        lambda many: sqlbuild.build_delete(d, CONTACTS, 'org_1', many),
        lambda many: sqlbuild.build_referrers(d, CONTACTS, 'org_1', column, many),
        lambda many: sqlbuild.build_referrers(d, CONTACTS, 'org_1', CONTACTS.columns['company_id'], many),
    ]
    for build in builders:
        two, many = build(ids(2)), build(ids(5000))
        assert two[0] == many[0] and len(two[1]) == len(many[1]) == 2


def test_a_contact_naming_thousands_of_missing_tags_is_a_400(api):
    tag = api.create('tags', name='real')
    body = {'last_name': 'tagged', 'tags': [tag['id']] + ids(5000)}
    resp = api.post('/api/contacts', body, status=400)
    assert_problem(resp, 400, field='tags')
    assert api.create('contacts', last_name='ok', tags=[tag['id']] * 3)['tags'] == [tag['id']]


# -- the statement time limit ----------------------------------------------------------------------


@pytest.fixture
def timed(database, api):
    """timed(ms): a client of `api`'s organization on an app of its own whose statements stop after
    `ms` milliseconds (its own connections to the same database)."""
    made = []

    def build(ms):
        db = SQLiteDatabase(database.path) if database.name == 'sqlite' else PostgresDatabase(database.url)
        made.append(db)
        app = NoLeaks(create_app(Settings(database_url='injected', access_log=False, statement_timeout_ms=ms), db=db))
        return type(api)(app, api.token, api.org_id)

    yield build
    for db in made:
        db.close()


# NOTE: 50 scans per row of a 1,000-character text, none matching (seconds in all): a needle of 200 x before a digit
# in a haystack of x compares 200 characters at every position, and no trigram index narrows it (every trigram of
# the needle but the last is in every row).
SLOW_FILTERS = [
    {'field': 'background', 'op': 'contains', 'value': 'x' * 200 + str(i), 'logicalOp': 'or'} for i in range(50)
]


def test_a_statement_past_the_timeout_is_a_503_and_the_connection_recovers(bulk, timed):
    bulk(5000, background='x' * 1000)
    client = timed(200)
    started = time.monotonic()
    resp = client.get('/api/contacts', {'filters': SLOW_FILTERS}, status=503)
    assert time.monotonic() - started < 5
    assert_problem(resp, 503)
    assert resp.headers['Retry-After']
    assert len(client.list('contacts', range=[0, 4])) == 5, 'the same connection answers the next request'
    assert client.create('tags', name='after the timeout')['name'] == 'after the timeout'


def test_an_export_stops_at_the_statement_timeout(bulk, timed):
    """The deadline applies to each statement execution and to each batch an export fetches."""
    bulk(5000, background='x' * 1000)
    client = timed(200)
    started = time.monotonic()
    resp = client.get('/api/contacts', {'filters': SLOW_FILTERS}, headers={'Accept': 'text/csv'}, status=503)
    assert_problem(resp, 503)
    assert resp.headers['Retry-After']
    assert time.monotonic() - started < 5
    assert len(client.list('contacts', range=[0, 4])) == 5


def test_an_array_in_of_a_thousand_ids_over_many_contacts_is_cheap(bulk, timed):
    """A non-admin's `in` of 900 tag ids over 100k contacts took 16.9 s on SQLite."""
    bulk(20_000, tags=['tag_a', 'tag_b', 'tag_c'])
    client = timed(3000)
    wanted = ids(MAX - 1) + ['tag_c']
    resp = client.get('/api/contacts', {'filters': [{'field': 'tags', 'op': 'in', 'value': wanted}], 'range': [0, 0]})
    assert resp.headers['Content-Range'].endswith('/20000')


# -- estimated totals ------------------------------------------------------------------------------


def test_an_estimated_total_is_near_the_filtered_row_count(own_database, backend):
    api = new_org(own_database, create_app(Settings(database_url='injected', access_log=False), db=own_database))
    insert_contacts(own_database, api.org_id, 50_000, hot=33_333)
    resp = api.get(
        '/api/contacts', {'filter': {'status': 'hot'}, 'range': [0, 4]}, headers={'Prefer': 'count=estimated'}
    )
    total = int(resp.headers['Content-Range'].split('/')[1])
    if backend == 'sqlite':
        assert total == 33_333, 'without live-row counters (rows written around the API) SQLite counts exactly'
    else:
        assert 33_333 / 3 <= total <= 33_333 * 3, total


def estimated_total(api, **filter_):
    resp = api.get('/api/contacts', {'filter': filter_, 'range': [0, 4]}, headers={'Prefer': 'count=estimated'})
    assert resp.headers['Preference-Applied'] == 'count=estimated'
    return int(resp.headers['Content-Range'].split('/')[1])


def recount(database, *org_ids):
    for org_id in org_ids:
        build_services(database).store.recount(Principal(org_id, None))


def test_an_estimated_total_counts_the_organizations_live_matches_only(own_database, backend, monkeypatch):
    app = create_app(Settings(database_url='injected', access_log=False), db=own_database)
    api, other = new_org(own_database, app), new_org(own_database, app, name='Other', email='o@example.com')
    insert_contacts(own_database, api.org_id, 20_000, hot=9_000)
    insert_contacts(own_database, other.org_id, 20_000, hot=20_000)  # every other row matches: must not count
    p = '?' if backend == 'sqlite' else '%s'
    with own_database.transaction(write=True) as tx:  # 3,000 of the hot ones archived: not listed, not counted
        tx.execute(
            'UPDATE contacts SET archived_at = updated_at WHERE organization_id = {0} AND status = {0} '
            'AND CAST(SUBSTR(last_name, 2) AS INTEGER) <= 3000'.format(p),
            (api.org_id, 'hot'),
        )
    recount(own_database, api.org_id, other.org_id)

    def count_every_match(*args):
        raise AssertionError('an estimate of a big total must not count every match')

    monkeypatch.setattr(Tx, 'count', count_every_match)
    total = estimated_total(api, status='hot')
    if backend == 'sqlite':
        assert 6_000 * 0.85 <= total <= 6_000 * 1.15, total
    else:
        assert 6_000 / 3 <= total <= 6_000 * 3, total


def test_a_small_estimated_total_is_exact_on_sqlite(own_database, backend):
    app = create_app(Settings(database_url='injected', access_log=False), db=own_database)
    api, other = new_org(own_database, app), new_org(own_database, app, name='Other', email='o@example.com')
    insert_contacts(own_database, api.org_id, 20_000, hot=700)
    insert_contacts(own_database, other.org_id, 40_000, hot=0)
    small = new_org(own_database, app, name='Small', email='s@example.com')  # 2,000 of 62,000 rows: too few sampled
    insert_contacts(own_database, small.org_id, 2_000, hot=1_500)
    recount(own_database, api.org_id, other.org_id, small.org_id)
    if backend == 'sqlite':
        assert estimated_total(api, status='hot') == 700, 'under sqlbuild.ESTIMATE_FROM matches: counted'
        assert estimated_total(small, status='hot') == 1_500, 'too small a share of the table to sample: counted'
    else:
        assert 700 / 3 <= estimated_total(api, status='hot') <= 700 * 3
