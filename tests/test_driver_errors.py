"""Driver errors become the right answers, alike on both databases.

Bad input is a 4xx; a passing condition (busy, too slow, unreachable, out of resources, a lost race)
is a 503 with Retry-After, so a client retries; anything else is a bug: the driver's exception goes
on and becomes a logged 500. Each case below makes the real driver raise its real exception inside
`db.translate_errors()`; the conditions no statement provokes on demand (a deadlock, a broken
connection, a server out of resources) are raised by PostgreSQL itself with their SQLSTATE.

Indexed text columns hold at most MAX_INDEXED_TEXT characters on both databases: PostgreSQL's btree
refuses an entry over 2,704 bytes, which used to surface as a 503 that no retry could fix.
"""

import json
import random
import socket
import sqlite3

import psycopg
import pytest
from conftest import assert_problem
from conftest import postgres_url

from crmapi.services import build_services
from crmapi.db import PostgresDatabase
from crmapi.db import translate_errors
from crmapi.errors import CrmError
from crmapi.schema import MAX_INDEXED_TEXT
from crmapi.schema import Catalog
from crmapi.schema import ResourceSpec

MIB = 1024 * 1024
BTREE_MAX_ITEM = 2704  # bytes: PostgreSQL's limit on one btree entry (8 KiB pages)


def translated(provoke, *args):
    """The CrmError that `provoke(*args)`'s driver exception becomes."""
    with pytest.raises(CrmError) as caught:
        with translate_errors():
            provoke(*args)
    return caught.value


def assert_answer(error, status, **members):
    assert error.status == status, (error.status, error.detail)
    assert error.to_problem()['status'] == status
    if status == 503:
        assert error.headers.get('Retry-After'), 'a 503 tells the client when to retry'
    for key, value in members.items():
        assert error.members.get(key) == value, (key, error.members)


# -- SQLite ----------------------------------------------------------------------------------------

SQLITE_SCHEMA = [
    'CREATE TABLE p (id TEXT PRIMARY KEY, u TEXT UNIQUE, n TEXT NOT NULL DEFAULT 1, k INTEGER CHECK (k > 0))',
    'CREATE TABLE ch (p_id TEXT REFERENCES p (id))',
    'CREATE TABLE s (i INTEGER) STRICT',
    "INSERT INTO p (id, u) VALUES ('a', 'x')",
]


@pytest.fixture
def lite(tmp_path):
    conn = sqlite3.connect(str(tmp_path / 'lite.db'), isolation_level=None, timeout=0)
    conn.execute('PRAGMA foreign_keys = ON')
    for statement in SQLITE_SCHEMA:
        conn.execute(statement)
    yield conn
    conn.close()


def sqlite_busy(conn, tmp_path):
    other = sqlite3.connect(str(tmp_path / 'lite.db'), isolation_level=None, timeout=0)
    other.execute('BEGIN IMMEDIATE')
    try:
        conn.execute('BEGIN IMMEDIATE')
    finally:
        other.close()


def sqlite_locked(conn, tmp_path):
    uri = f'file:locked-{tmp_path.name}?mode=memory&cache=shared'
    writer = sqlite3.connect(uri, uri=True, isolation_level=None)
    reader = sqlite3.connect(uri, uri=True, isolation_level=None)
    writer.execute('CREATE TABLE t (x)')
    writer.execute('BEGIN')
    writer.execute('INSERT INTO t VALUES (1)')
    try:
        reader.execute('SELECT * FROM t').fetchall()
    finally:
        writer.close()
        reader.close()


def sqlite_interrupted(conn, tmp_path):
    conn.set_progress_handler(lambda: 1, 1)
    conn.execute('SELECT 1')


def sqlite_full(conn, tmp_path):
    conn.execute('PRAGMA max_page_count = 8')
    conn.execute('INSERT INTO p (id, u) VALUES (?, ?)', ('big', 'y' * 100_000))


def sqlite_read_only(conn, tmp_path):
    read_only = sqlite3.connect(f'file:{tmp_path / "lite.db"}?mode=ro', uri=True)
    try:
        read_only.execute("INSERT INTO p (id) VALUES ('ro')")
    finally:
        read_only.close()


def sqlite_cannot_open(conn, tmp_path):
    sqlite3.connect(f'file:{tmp_path / "missing" / "x.db"}?mode=rw', uri=True)


def sqlite_too_big(conn, tmp_path):
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100)
    conn.execute('SELECT ?', ('x' * 200,))


def sqlite_too_many_variables(conn, tmp_path):
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 2)
    conn.execute('SELECT ?, ?, ?', (1, 2, 3))


def sqlite_too_deep(conn, tmp_path):
    conn.setlimit(sqlite3.SQLITE_LIMIT_EXPR_DEPTH, 10)
    conn.execute('SELECT ' + ' + '.join(['1'] * 50))


def sqlite_statement(sql):
    def provoke(conn, tmp_path):
        conn.execute(sql)

    provoke.__name__ = sql
    return provoke


@pytest.mark.parametrize(
    ('provoke', 'status', 'members'),
    [
        (sqlite_statement("INSERT INTO p (id, u) VALUES ('b', 'x')"), 409, {}),  # unique
        (sqlite_statement("INSERT INTO p (id) VALUES ('a')"), 409, {}),  # primary key
        (sqlite_statement("INSERT INTO ch VALUES ('nowhere')"), 409, {}),  # foreign key
        (sqlite_statement("INSERT INTO p (id, n) VALUES ('c', NULL)"), 400, {'field': 'n'}),  # not null
        (sqlite_statement("INSERT INTO p (id, k) VALUES ('d', 0)"), 400, {}),  # check
        (sqlite_statement("INSERT INTO s VALUES ('abc')"), 400, {}),  # STRICT datatype
        (sqlite_too_big, 413, {}),  # SQLITE_TOOBIG (a DataError)
        (sqlite_too_many_variables, 400, {}),  # statement limits
        (sqlite_too_deep, 400, {}),
        (sqlite_busy, 503, {}),  # SQLITE_BUSY: another writer holds the lock
        (sqlite_locked, 503, {}),  # SQLITE_LOCKED
        (sqlite_interrupted, 503, {}),  # SQLITE_INTERRUPT: the progress handler's time limit
        (sqlite_full, 503, {}),  # SQLITE_FULL
        (sqlite_read_only, 503, {}),  # SQLITE_READONLY
        (sqlite_cannot_open, 503, {}),  # SQLITE_CANTOPEN
    ],
    ids=lambda p: getattr(p, '__name__', None),
)
def test_sqlite_errors_become_the_right_answer(lite, tmp_path, provoke, status, members):
    assert_answer(translated(provoke, lite, tmp_path), status, **members)


@pytest.mark.parametrize('sql', ['SELECT * FROM no_such_table', 'SELECT no_such_function()', 'SELEC 1'])
def test_an_sqlite_error_that_is_a_bug_stays_an_exception(lite, sql):
    with pytest.raises(sqlite3.Error):
        with translate_errors():
            lite.execute(sql)


# -- PostgreSQL ------------------------------------------------------------------------------------

PG_SCHEMA = [
    'CREATE TEMP TABLE p (id text PRIMARY KEY, u text UNIQUE, n text NOT NULL DEFAULT 1, '
    'k int CHECK (k > 0), v varchar(2))',
    'CREATE TEMP TABLE ch (p_id text REFERENCES p (id))',
    'CREATE TEMP TABLE ix (t text)',
    'CREATE INDEX ON ix (t)',
    "INSERT INTO p (id, u) VALUES ('a', 'x')",
]
PROBE_LOCK = 4242777


@pytest.fixture
def pg():
    conn = psycopg.connect(postgres_url(), autocommit=True)
    for statement in PG_SCHEMA:
        conn.execute(statement)
    yield conn
    conn.close()


def four_byte_text(n, seed=1):
    """`n` random characters of 4 UTF-8 bytes each: no compression makes them any shorter."""
    rnd = random.Random(seed)
    return ''.join(chr(rnd.randrange(0x10000, 0x10FFFF)) for _ in range(n))


def pg_statement(sql, params=None):
    def provoke(conn):
        conn.execute(sql, params)

    provoke.__name__ = sql[:60]
    return provoke


def pg_raised(sqlstate):
    """PostgreSQL itself raising `sqlstate`: what psycopg gives for a deadlock or a full disk."""
    return pg_statement(f"DO $$ BEGIN RAISE EXCEPTION 'probe' USING ERRCODE = '{sqlstate}'; END $$")


def pg_statement_timeout(conn):
    conn.execute('SET statement_timeout = 10')
    conn.execute('SELECT pg_sleep(1)')


def pg_lock_timeout(conn):
    holder = psycopg.connect(postgres_url(), autocommit=True)
    try:
        holder.execute('SELECT pg_advisory_lock(%s)', (PROBE_LOCK,))
        conn.execute('SET lock_timeout = 10')
        conn.execute('SELECT pg_advisory_lock(%s)', (PROBE_LOCK,))
    finally:
        holder.close()


def pg_admin_shutdown(conn):
    victim = psycopg.connect(postgres_url(), autocommit=True)
    try:
        conn.execute('SELECT pg_terminate_backend(%s)', (victim.info.backend_pid,))
        victim.execute('SELECT pg_sleep(0.5)')  # the server ends it before or during this
        victim.execute('SELECT 1')
    finally:
        victim.close()


def pg_read_only(conn):
    with conn.transaction():
        conn.execute('SET TRANSACTION READ ONLY')
        conn.execute('CREATE TABLE never_made ()')


def pg_serialization_failure(conn):
    conn.execute('CREATE TABLE IF NOT EXISTS driver_errors_probe (x int)')
    conn.execute('TRUNCATE driver_errors_probe')
    conn.execute('INSERT INTO driver_errors_probe VALUES (1)')
    loser = psycopg.connect(postgres_url())
    try:
        loser.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ')
        loser.execute('SELECT x FROM driver_errors_probe').fetchall()
        conn.execute('UPDATE driver_errors_probe SET x = 2')
        loser.execute('UPDATE driver_errors_probe SET x = 3')
    finally:
        loser.close()
        conn.execute('DROP TABLE driver_errors_probe')


def pg_unreachable(conn):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    psycopg.connect(f'postgresql://postgres@127.0.0.1:{port}/x', connect_timeout=2)


def pg_pool_timeout(conn):
    db = PostgresDatabase(postgres_url(), min_size=1, max_size=1, timeout=0.2)
    try:
        with db.pool().connection():
            with db.transaction():
                pass
    finally:
        db.close()


@pytest.mark.parametrize(
    ('provoke', 'status', 'members'),
    [
        # 23: integrity
        (pg_statement("INSERT INTO p (id, u) VALUES ('b', 'x')"), 409, {}),
        (pg_statement("INSERT INTO ch VALUES ('nowhere')"), 409, {}),
        (pg_statement("INSERT INTO p (id, n) VALUES ('c', NULL)"), 400, {'field': 'n'}),
        (pg_statement("INSERT INTO p (id, k) VALUES ('d', 0)"), 400, {}),
        # 22: data exceptions
        (pg_statement("INSERT INTO p (id, v) VALUES ('e', 'abc')"), 400, {}),  # string too long
        (pg_statement('SELECT 2147483648::int4'), 400, {}),  # numeric out of range
        (pg_statement("SELECT 'x'::int"), 400, {}),  # invalid text representation
        (pg_statement('SELECT \'"\\u0000"\'::jsonb'), 400, {}),  # untranslatable character
        (pg_statement('SELECT %s::text', ('a\x00',)), 400, {}),  # psycopg refuses NUL itself
        # 54: program limits
        (pg_statement('INSERT INTO ix VALUES (%s)', (four_byte_text(1000),)), 413, {}),  # index row size
        (pg_statement('SELECT concat(' + ','.join(['1'] * 101) + ')'), 400, {}),  # too many arguments
        # passing conditions: 503 with Retry-After
        (pg_serialization_failure, 503, {}),  # 40001
        (pg_raised('40P01'), 503, {}),  # deadlock detected
        (pg_statement_timeout, 503, {}),  # 57014 query canceled
        (pg_admin_shutdown, 503, {}),  # 57P01
        (pg_raised('08006'), 503, {}),  # connection failure
        (pg_unreachable, 503, {}),  # no server at all: no SQLSTATE
        (pg_raised('53100'), 503, {}),  # disk full
        (pg_raised('53300'), 503, {}),  # too many connections
        (pg_lock_timeout, 503, {}),  # 55P03 lock not available
        (pg_read_only, 503, {}),  # 25006: a standby during a failover
        (pg_pool_timeout, 503, {}),  # psycopg_pool.PoolTimeout
    ],
    ids=lambda p: getattr(p, '__name__', None),
)
def test_postgresql_errors_become_the_right_answer(pg, provoke, status, members):
    assert_answer(translated(provoke, pg), status, **members)


@pytest.mark.parametrize(
    'sql',
    [
        'SELECT * FROM no_such_table',
        'SELECT no_such_function()',
        'SELEC 1',
        "DO $$ BEGIN RAISE EXCEPTION 'a bug'; END $$",
    ],
)
def test_a_postgresql_error_that_is_a_bug_stays_an_exception(pg, sql):
    with pytest.raises(psycopg.Error):
        with translate_errors():
            pg.execute(sql)


def test_other_exceptions_pass_through_untouched():
    with pytest.raises(KeyError):
        with translate_errors():
            raise KeyError('a bug')


# -- a read statement straight on a pooled connection (PostgresDatabase.statement: a get by id) ---------------


@pytest.fixture
def one_connection():
    """A PostgreSQL engine whose pool holds one connection: a statement that kept it would starve the next one."""
    db = PostgresDatabase(postgres_url(), min_size=1, max_size=1, timeout=2.0, statement_timeout_ms=100)
    yield db
    db.close()


def test_a_read_statement_returns_its_connection_to_the_pool(one_connection):
    for _ in range(3):
        with one_connection.statement() as tx:
            assert tx.one('SELECT 1') == (1,)
    assert one_connection.pool().get_stats()['pool_available'] == 1


def test_a_read_statement_over_the_statement_timeout_is_503_and_the_connection_serves_the_next(one_connection):
    with pytest.raises(CrmError) as caught:
        with one_connection.statement() as tx:
            tx.one('SELECT pg_sleep(1)')
    assert caught.value.status == 503
    with one_connection.statement() as tx:
        assert tx.one('SELECT 1') == (1,)


def test_a_read_statement_on_a_connection_the_server_ended_fails_once_then_reconnects(one_connection, pg):
    with one_connection.statement() as tx:
        pid = tx.one('SELECT pg_backend_pid()')[0]
    pg.execute('SELECT pg_terminate_backend(%s, 5000)', (pid,))
    answers = []
    for _ in range(2):
        try:
            with one_connection.statement() as tx:
                answers.append(tx.one('SELECT pg_backend_pid()')[0])
        except CrmError as exc:
            answers.append(exc.status)
    assert answers[0] == 503 and answers[1] not in (pid, 503)


def test_a_read_statement_inside_a_write_transaction_sees_its_writes(one_connection):
    with pytest.raises(KeyError):
        with one_connection.transaction(write=True) as tx:
            tx.execute('CREATE TEMP TABLE seen_probe (id text)')
            tx.execute("INSERT INTO seen_probe VALUES ('seen')")
            with one_connection.statement() as read:
                assert read.one('SELECT id FROM seen_probe') == ('seen',)
            raise KeyError('roll back')
    with one_connection.statement() as read:
        assert read.one("SELECT to_regclass('pg_temp.seen_probe')") == (None,)


# -- transactions on a pooled connection taken and returned by hand (PostgresDatabase.transaction) -------------


def _fails(db, block):
    with pytest.raises(Exception) as caught:
        with db.transaction(write=True) as tx:
            block(tx)
    return caught.value


def test_a_write_that_fails_rolls_back_and_returns_its_connection_idle_for_the_next(one_connection):
    """A write whose statement fails (a 409), whose code raises, or whose COMMIT is refused (a deferred check) leaves
    nothing behind, and the one pooled connection goes back idle: the next write commits on it."""
    db = one_connection
    with db.transaction(write=True) as tx:
        tx.execute('DROP TABLE IF EXISTS write_probe')
        tx.execute(
            'CREATE TABLE write_probe (id text PRIMARY KEY, next text REFERENCES write_probe DEFERRABLE '
            'INITIALLY DEFERRED)'
        )
    duplicate = _fails(db, lambda tx: [tx.execute("INSERT INTO write_probe VALUES ('a')") for _ in range(2)])
    raised = _fails(db, lambda tx: (tx.execute("INSERT INTO write_probe VALUES ('b')"), {}['a bug']))
    refused = _fails(db, lambda tx: tx.execute("INSERT INTO write_probe VALUES ('c', 'missing')"))
    assert (duplicate.status, type(raised), refused.status) == (409, KeyError, 409)
    assert db.pool().get_stats()['pool_available'] == 1
    with db.transaction(write=True) as tx:
        assert tx.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        tx.execute("INSERT INTO write_probe VALUES ('d')")
    with db.transaction() as tx:
        assert tx.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert tx.rows('SELECT id FROM write_probe') == [('d',)]
        tx.execute('DROP TABLE write_probe')
    assert db._local.tx is None


def test_a_read_that_fails_returns_its_connection_to_the_pool_for_the_next(one_connection):
    with pytest.raises(CrmError) as caught:
        with one_connection.transaction() as tx:
            tx.one('SELECT pg_sleep(1)')
    assert caught.value.status == 503
    assert one_connection.pool().get_stats()['pool_available'] == 1
    with one_connection.transaction() as tx:
        assert tx.one('SELECT 1') == (1,)


# -- indexed text: one documented length limit ----------------------------------------------------

INDEXED = [
    ('contacts', 'city'),
    ('contacts', 'last_name'),
    ('contacts', 'status'),
    ('contacts', 'email'),
    ('contacts', 'company_id'),
    ('companies', 'name'),
    ('deals', 'status'),
    ('tags', 'name'),
    ('configuration', 'key'),
    ('crm_users', 'email'),
    ('tasks', 'contact_id'),
    ('contact_notes', 'contact_id'),
]
NOT_INDEXED = [
    ('contacts', 'first_name'),
    ('contacts', 'background'),
    ('contact_notes', 'text'),
    ('deals', 'description'),
    ('tasks', 'text'),
    ('tags', 'color'),
]


def columns_of(api, resource):
    return {c['name']: c for c in api.get(f'/api/schema/{resource}').json['columns']}


@pytest.mark.parametrize(('resource', 'field'), INDEXED)
def test_the_schema_shows_the_length_limit_of_indexed_text(api, resource, field):
    assert columns_of(api, resource)[field]['max_length'] == MAX_INDEXED_TEXT


@pytest.mark.parametrize(('resource', 'field'), NOT_INDEXED)
def test_text_outside_any_index_has_no_length_limit(api, resource, field):
    assert columns_of(api, resource)[field]['max_length'] is None


def required_fields(api, resource):
    if resource == 'contact_notes':
        return {'contact_id': api.create('contacts', last_name='Noted')['id']}
    return {
        'companies': {'name': 'Acme'},
        'deals': {'name': 'Engine'},
        'tags': {'name': 'vip'},
        'configuration': {'key': 'theme'},
        'crm_users': {'email': 'u@example.com'},
    }.get(resource, {})


@pytest.mark.parametrize(('resource', 'field'), INDEXED)
def test_a_value_longer_than_the_limit_of_an_indexed_column_is_400_naming_it(api, resource, field):
    body = {**required_fields(api, resource), field: four_byte_text(MAX_INDEXED_TEXT + 1)}
    resp = api.post(f'/api/{resource}', body, status=400)
    problem = assert_problem(resp, 400, field=field)
    assert str(MAX_INDEXED_TEXT) in problem['detail']


def test_the_probes_city_just_under_the_body_limit_is_400_not_503(api):
    """The finding: 1 MiB - 4 KiB of city was a 503 on PostgreSQL, forever."""
    city = four_byte_text((MIB - 4096) // 4)
    raw = json.dumps({'last_name': 'Long', 'city': city}, ensure_ascii=False).encode()
    assert MIB - 8192 < len(raw) < MIB
    resp = api.app.post('/api/contacts', raw, headers=api.headers, content_type='application/json', status=400)
    assert_problem(resp, 400, field='city')
    assert api.list('contacts') == []


def test_the_widest_index_takes_both_its_text_columns_at_the_limit_in_four_byte_characters(api):
    """contacts (organization_id, city, last_name, id): 2 x 255 x 4 bytes stays under 2,704."""
    city, last_name = four_byte_text(MAX_INDEXED_TEXT, 1), four_byte_text(MAX_INDEXED_TEXT, 2)
    created = api.create('contacts', city=city, last_name=last_name, status=four_byte_text(MAX_INDEXED_TEXT, 3))
    assert (created['city'], created['last_name']) == (city, last_name)
    assert api.list('contacts', filter={'city': city})[0]['id'] == created['id']


def test_an_update_over_the_limit_is_400_and_changes_nothing(api):
    contact = api.create('contacts', last_name='Short')
    resp = api.put(f'/api/contacts/{contact["id"]}', {'last_name': 'x' * (MAX_INDEXED_TEXT + 1)}, status=400)
    assert_problem(resp, 400, field='last_name')
    assert api.get(f'/api/contacts/{contact["id"]}').json == contact


def test_a_filter_longer_than_the_limit_just_finds_nothing(api):
    api.create('contacts', last_name='Short')
    assert api.list('contacts', filter={'city': 'x' * (MAX_INDEXED_TEXT + 1)}) == []


def test_text_outside_any_index_keeps_only_the_body_size_limit(api):
    contact = api.create('contacts', last_name='Noted', background=four_byte_text(20_000, 4))
    text = four_byte_text(200_000, 5)  # 800,000 bytes of UTF-8
    raw = json.dumps({'contact_id': contact['id'], 'text': text}, ensure_ascii=False).encode()
    note = api.app.post(
        '/api/contact_notes', raw, headers=api.headers, content_type='application/json', status=201
    ).json
    assert api.get(f'/api/contact_notes/{note["id"]}').json['text'] == text
    assert api.get(f'/api/contacts/{contact["id"]}').json['background'] == contact['background']


def test_custom_object_reference_fields_are_indexed_text_and_plain_text_fields_are_not(api):
    api.post(
        '/api/custom_objects',
        {
            'slug': 'projects',
            'fields': [
                {'name': 'owner', 'type': 'reference', 'target': 'contacts'},
                {'name': 'summary', 'type': 'text'},
            ],
        },
    )
    columns = columns_of(api, 'projects')
    assert (columns['owner']['max_length'], columns['summary']['max_length']) == (MAX_INDEXED_TEXT, None)
    resp = api.post('/api/projects', {'owner': 'c_' + 'x' * MAX_INDEXED_TEXT}, status=400)
    assert_problem(resp, 400, field='owner')
    summary = four_byte_text(10_000, 6)
    assert api.create('projects', summary=summary)['summary'] == summary


# -- where the limit comes from: the database's own catalog ---------------------------------------

PROBE_TABLE = 'driver_errors_indexed_probe'


@pytest.fixture
def probe_table(database):
    """A table with an index, a unique constraint and unindexed text, dropped afterwards."""
    with database.transaction(write=True) as tx:
        tx.execute(
            f'CREATE TABLE {PROBE_TABLE} (id TEXT PRIMARY KEY, organization_id TEXT NOT NULL, '
            'label TEXT, code TEXT UNIQUE, body TEXT, size BIGINT)'
        )
        tx.execute(f'CREATE INDEX {PROBE_TABLE}_label ON {PROBE_TABLE} (organization_id, label, size)')
    yield PROBE_TABLE
    with database.transaction(write=True) as tx:
        tx.execute(f'DROP TABLE {PROBE_TABLE}')


def test_indexed_text_columns_are_read_from_the_catalog(database, probe_table):
    catalog = Catalog.load(database, {'probe': ResourceSpec('probe', 'p_', table=probe_table)})
    limits = {name: c.max_length for name, c in catalog.tables['probe'].columns.items()}
    assert limits == {
        'id': None,
        'organization_id': None,
        'label': MAX_INDEXED_TEXT,
        'code': MAX_INDEXED_TEXT,
        'body': None,
        'size': None,
    }


def index_columns(database, table):
    """{index name: [column names]} as the database itself lists them."""
    with database.transaction() as tx:
        if database.name == 'sqlite':
            names = [r[0] for r in tx.rows('SELECT name FROM pragma_index_list(?)', (table,))]
            return {n: [r[0] for r in tx.rows('SELECT name FROM pragma_index_info(?)', (n,))] for n in names}
        rows = tx.rows(
            'SELECT i.indexrelid::regclass::text, a.attname FROM pg_index i '
            'JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) '
            'WHERE i.indrelid = %s::regclass',
            (table,),
        )
    found = {}
    for index, column in rows:
        found.setdefault(index, []).append(column)
    return found


def worst_entry_bytes(info, columns):
    """An upper bound on one btree entry: 16 bytes of tuple header and null bitmap, per column at
    most 7 bytes of varlena header and alignment, 4 bytes a character for limited text, 200 for the
    server's own ids (a prefix and 26 ASCII characters; an Idempotency-Key at most 200), 16 for any
    other kind; 7 to align the end."""
    total = 16 + 7
    for name in columns:
        column = info.columns[name]
        if column.kind != 'text':
            total += 16
        elif column.max_length is not None:
            total += 7 + 4 * column.max_length
        else:
            assert name in ('id', 'organization_id'), f'{info.slug}.{name} is indexed text without a length limit'
            total += 7 + 200
    return total


def test_every_index_of_every_resource_fits_a_btree_entry_at_the_length_limit(api, database):
    api.post(
        '/api/custom_objects',
        {
            'slug': 'links',
            'fields': [
                {'name': 'contact', 'type': 'reference', 'target': 'contacts'},
                {'name': 'deal', 'type': 'reference', 'target': 'deals'},
            ],
        },
    )
    catalog = build_services(database).catalog
    tables = [*catalog.tables.values(), *catalog.internal.values(), catalog.custom.table_for(api.org_id, 'links')]
    checked = 0
    for info in tables:
        if info.spec.read_only:
            continue
        for index, columns in index_columns(database, info.spec.table).items():
            assert worst_entry_bytes(info, columns) <= BTREE_MAX_ITEM, (info.slug, index, columns)
            checked += 1
    assert checked > 20
