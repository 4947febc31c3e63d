"""Past one machine (README "Scaling out"): read replicas with read-your-writes, PgBouncer in transaction
pooling mode, state shared by hosts through the database, and migrations run from many hosts at once.

The in-process parts: two apps on one database stand for two hosts; a streaming replica of the test server
(scripts/pgnode.sh) and a PgBouncer from deploy/pgbouncer.ini (scripts/pgbouncer.sh) run on loopback.
tests/test_cluster.py runs the whole topology, with its faults, in network namespaces.
"""

import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import webtest

import servers
from conftest import Client
from conftest import NoLeaks
from conftest import assert_problem
from conftest import postgres_url
from crmapi import create_app
from crmapi.db import postgres as dbmod
from crmapi import migrations
from crmapi import authcache
from crmapi.accounts import Accounts
from crmapi.cli import init_db
from crmapi.config import Settings
from crmapi.db import PostgresDatabase
from crmapi.db import SQLiteDatabase
from crmapi.db import connect
from crmapi.db import parse_read_after
from crmapi.errors import Unavailable

# NOTE: its own PostgreSQL primary, replica and PgBouncer: one xdist worker runs the whole module.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / 'scripts'
COOKIE = 'crmapi_read_after'


def script(name, *args, timeout=60):
    """Run scripts/<name> with `args`; its stdout, stripped (a failure shows its stderr)."""
    result = subprocess.run([str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f'{name} {args}: {result.stderr}'
    return result.stdout.strip()


def wait_until(condition, timeout=10.0, what='the condition'):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f'{what} not met after {timeout}s'
        time.sleep(0.05)


def sibling_url(url, name):
    return url.rsplit('/', 1)[0] + '/' + name


# -- settings ------------------------------------------------------------------------------------------


def test_read_urls_are_split_before_each_scheme_so_multi_host_urls_stay_whole(monkeypatch):
    monkeypatch.setenv(
        'CRMAPI_DATABASE_READ_URLS',
        'postgresql://u:p@r1:5432/crm, postgres://r2a:5432,r2b:5432/crm?target_session_attrs=any',
    )
    monkeypatch.setenv('CRMAPI_REPLICA_MAX_LAG_MS', '500')
    monkeypatch.setenv('CRMAPI_PGBOUNCER', '1')
    settings = Settings.from_env()
    assert settings.database_read_urls == (
        'postgresql://u:p@r1:5432/crm',
        'postgres://r2a:5432,r2b:5432/crm?target_session_attrs=any',
    )
    assert (settings.replica_max_lag_ms, settings.pgbouncer) == (500, True)
    assert 'p@r1' not in repr(settings)


def test_scale_out_defaults_are_one_database_no_pgbouncer_and_a_two_second_lag_limit():
    settings = Settings()
    assert (settings.database_read_urls, settings.replica_max_lag_ms, settings.pgbouncer) == ((), 2000, False)


@pytest.mark.parametrize(
    'name, raw, message',
    [
        ('CRMAPI_DATABASE_READ_URLS', 'mysql://secret@r1/crm', 'URL 1 is not a postgresql:// URL'),
        ('CRMAPI_REPLICA_MAX_LAG_MS', '2s', 'whole number of milliseconds'),
        ('CRMAPI_PGBOUNCER', 'maybe', 'is 1 or 0'),
    ],
)
def test_a_bad_scale_out_setting_is_named_without_echoing_a_password(monkeypatch, name, raw, message):
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=message) as raised:
        Settings.from_env()
    assert 'secret' not in str(raised.value)


def test_read_replicas_need_postgresql_and_each_url_is_checked():
    with pytest.raises(ValueError, match='need PostgreSQL'):
        connect('sqlite:///crm.db', read_urls=('postgresql://r1/crm',))
    with pytest.raises(ValueError, match="read replica 2: .*port 'x'") as raised:
        connect('postgresql://p/crm', read_urls=('postgresql://r1/crm', 'postgresql://u:secret@r2:x/crm'))
    assert 'secret' not in str(raised.value)


def test_a_read_after_token_is_a_wal_position_and_a_damaged_one_means_the_primary():
    assert parse_read_after(dbmod.read_after_token(0x1A2B3C4D)) == 0x1A2B3C4D
    assert parse_read_after(None) is None and parse_read_after(' ') is None
    for damaged in ('0/1A2B', 'zz', '1' * 17, '-1'):
        assert parse_read_after(damaged) == float('inf')


@pytest.mark.parametrize(
    'error, usable, elsewhere',
    [
        (psycopg.errors.UndefinedTable(), True, True),  # a schema change not replayed yet
        (psycopg.errors.UndefinedColumn(), True, True),
        (psycopg.errors.SerializationFailure(), True, True),  # a read cancelled by a conflict with recovery
        (psycopg.errors.AdminShutdown(), False, True),  # the replica is going away
        (psycopg.OperationalError('server closed the connection unexpectedly'), False, True),
        (psycopg.errors.QueryCanceled(), True, False),  # statement timeout: not run twice
        (psycopg.errors.UniqueViolation(), True, False),
        (ValueError('a bug'), True, False),
    ],
)
def test_which_replica_errors_send_a_read_to_the_primary(error, usable, elsewhere):
    assert dbmod._replica_fault(error) == (usable, elsewhere)


# -- state shared by hosts: two apps on one database -------------------------------------------------


@pytest.fixture(scope='session')
def host_b(backend, database):
    """A second host: its own app, connections and caches over the `database` the `api` fixture's host uses."""
    other = SQLiteDatabase(database.path) if backend == 'sqlite' else PostgresDatabase(database.url)
    yield NoLeaks(create_app(Settings(database_url='injected', access_log=False), db=other))
    other.close()


def test_a_custom_object_defined_on_one_host_is_in_force_on_the_other_at_once(api, host_b):
    b = Client(host_b, api.token)
    api.post('/api/custom_objects', {'slug': 'vehicles', 'fields': [{'name': 'plate', 'type': 'text'}]})
    b.post('/api/vehicles', {'plate': 'AB-123'})
    api.put('/api/custom_objects/vehicles', {'fields': [{'name': 'color', 'type': 'text'}]})
    b.post('/api/vehicles', {'plate': 'CD-456', 'color': 'red'})
    api.delete('/api/custom_objects/vehicles/fields/color')
    assert_problem(b.post('/api/vehicles', {'plate': 'EF-789', 'color': 'blue'}, status=400), 400, field='color')
    assert sorted(v['plate'] for v in b.list('vehicles')) == ['AB-123', 'CD-456']


def test_a_token_revoked_through_one_host_is_refused_by_the_other_on_its_next_request(api, database, host_b):
    b = Client(host_b, api.token)
    b.get('/api/contacts')
    [(token_id, *_)] = Accounts(database).list_tokens(api.org_id)
    Accounts(database).revoke_token(token_id)
    assert_problem(b.get('/api/contacts', status=401), 401)


def test_an_idempotency_key_used_on_one_host_replays_on_the_other(api, host_b):
    body = {'first_name': 'Once', 'last_name': 'Only'}
    first = api.post('/api/contacts', body, headers={'Idempotency-Key': 'scaleout-1'})
    again = Client(host_b, api.token).post('/api/contacts', body, headers={'Idempotency-Key': 'scaleout-1'})
    assert again.headers['Idempotent-Replayed'] == 'true'
    assert again.json['id'] == first.json['id']
    assert api.get('/api/contacts').headers['Content-Range'] == 'contacts 0-0/1'


def test_a_cursor_signed_on_one_host_pages_on_the_other(api, host_b):
    for name in ('Ames', 'Bell', 'Cole'):
        api.create('contacts', first_name='P', last_name=name)
    cursor = api.get('/api/contacts', {'sort': 'last_name', 'range': [0, 0]}).headers['X-Next-Cursor']
    page = Client(host_b, api.token).get('/api/contacts', {'sort': 'last_name', 'range': [0, 0], 'cursor': cursor})
    assert [c['last_name'] for c in page.json] == ['Bell']


def test_rate_limits_are_per_process_so_each_host_grants_a_token_its_own_budget(api, database, backend):
    """The documented bound: a token may make hosts x workers x CRMAPI_RATE_LIMIT requests."""
    other = SQLiteDatabase(database.path) if backend == 'sqlite' else PostgresDatabase(database.url)
    try:
        hosts = [
            Client(
                create_app(Settings(database_url='injected', access_log=False, rate_limit=(2, 3600)), db=db), api.token
            )
            for db in (database, other)
        ]
        for host in hosts:
            host.get('/api/contacts')
            host.get('/api/contacts')
            host.get('/api/contacts', status=429)
    finally:
        other.close()


def test_without_replicas_a_write_carries_no_read_after_token(api):
    resp = api.post('/api/contacts', {'first_name': 'No', 'last_name': 'Token'})
    assert 'X-Read-After' not in resp.headers
    assert 'Set-Cookie' not in resp.headers


# -- a streaming replica on loopback ----------------------------------------------------------------


@pytest.fixture(scope='module')
def scaleout_url():
    """A primary of its own, small (the replica below copies the whole server), with crmapi's schema."""
    directory = tempfile.mkdtemp(prefix='crmapi-primary-', dir='/tmp')
    try:
        url = script('pgnode.sh', 'primary', directory, '127.0.0.1', servers.free_port())
        db = PostgresDatabase(url)
        init_db(db)
        db.close()
        yield url
    finally:
        script('pgnode.sh', 'remove', directory)


class Node:
    """A PostgreSQL server started by scripts/pgnode.sh."""

    def __init__(self, directory, url):
        self.directory, self.url = directory, url

    def delay(self, duration):
        script('pgnode.sh', 'delay', self.directory, duration)


@pytest.fixture(scope='module')
def replica(scaleout_url):
    directory = tempfile.mkdtemp(prefix='crmapi-replica-', dir='/tmp')
    try:
        yield Node(directory, script('pgnode.sh', 'replica', directory, '127.0.0.1', servers.free_port(), scaleout_url))
    finally:
        script('pgnode.sh', 'remove', directory)


class ReplicaHost:
    """An app whose database has read replicas; `routes` lists where each read went (a replica's name
    or 'primary'), newest last."""

    def __init__(self, url, read_urls, max_lag_ms=60_000):
        self.db = PostgresDatabase(url, read_urls=read_urls)
        self.app = NoLeaks(
            create_app(Settings(database_url='injected', access_log=False, replica_max_lag_ms=max_lag_ms), db=self.db)
        )
        self.routes = []
        choose = self.db._read_replica

        def recorded():
            replica = choose()
            self.routes.append(replica.name if replica else 'primary')
            return replica

        self.db._read_replica = recorded
        accounts = Accounts(self.db)
        self.org_id = accounts.create_org('Replicated')
        self.token = accounts.create_token(self.org_id, 'admin@example.com', admin=True)
        wait_until(lambda: all(r['in_use'] for r in self.db.replica_status(wait=0.5)), what='replicas in use')

    def client(self):
        """A client of its own (its own cookie jar), its token verified once (so `routed` sees one read for it)."""
        client = Client(webtest.TestApp(self.app), self.token, self.org_id)
        client.get('/api/me', status='*')  # NOTE: a lagging replica may not have the user yet: any answer will do
        return client

    def routed(self, action):
        """Where the reads of `action()` went, after the first (authentication: a cached token's check of the
        auth generation, made at once here as after a change in this process)."""
        self.routes.clear()
        authcache.changed_here()
        action()
        assert self.routes[0] == 'primary', 'authentication reads the primary'
        return set(self.routes[1:])

    def caught_up(self, token):
        return all(r.replay_lsn is not None and r.replay_lsn >= parse_read_after(token) for r in self.db.replicas)

    def close(self):
        self.db.close()


@pytest.fixture
def replicated(scaleout_url, replica):
    host = ReplicaHost(scaleout_url, [replica.url])
    yield host
    host.close()


@pytest.fixture
def delayed(replica):
    """The replica applies changes 2 seconds late for the length of the test."""
    replica.delay('2s')
    yield replica
    replica.delay('0')


def test_list_get_export_and_schema_read_a_replica(replicated):
    api = replicated.client()
    contact = api.create('contacts', first_name='Ada', last_name='Lovelace')
    wait_until(lambda: replicated.caught_up(api.app.cookies[COOKIE]), what='the replica catching up')
    api.app.cookiejar.clear()
    on_replica = {'replica1'}
    assert replicated.routed(lambda: api.get('/api/contacts')) == on_replica
    assert replicated.routed(lambda: api.get(f'/api/contacts/{contact["id"]}')) == on_replica
    assert replicated.routed(lambda: api.get('/api/contacts', headers={'Accept': 'text/csv'})) == on_replica
    assert replicated.routed(lambda: api.get('/api/schema')) == on_replica
    assert replicated.routed(lambda: api.get('/api/custom_objects')) == on_replica


def filtered_total(api):
    """The Content-Range total of a page of one of several contacts named A: counted, not read off the page."""
    resp = api.get('/api/contacts', {'range': [0, 0], 'filter': {'first_name': 'A'}})
    return resp.headers['Content-Range'].rpartition('/')[2]


def test_a_filtered_total_read_from_a_replica_is_kept_while_it_replays_nothing_new(replicated):
    api = replicated.client()
    api.post('/api/contacts', [{'first_name': 'A', 'last_name': str(i)} for i in range(3)])
    wait_until(lambda: replicated.caught_up(api.app.cookies[COOKIE]), what='the replica catching up')
    api.app.cookiejar.clear()
    for _ in range(3):  # NOTE: the replica's own snapshot keys it (a standby has no xid of its own)
        assert replicated.routed(lambda: filtered_total(api)) == {'replica1'}
        assert filtered_total(api) == '3'
    api.post('/api/contacts', {'first_name': 'A', 'last_name': 'new'})
    wait_until(lambda: replicated.caught_up(api.app.cookies[COOKIE]), what='the replica replaying the write')
    api.app.cookiejar.clear()
    assert replicated.routed(lambda: filtered_total(api)) == {'replica1'}
    assert filtered_total(api) == '4'


def test_writes_and_every_read_of_a_writing_request_use_the_primary(replicated, delayed):
    api = replicated.client()
    assert replicated.routed(lambda: api.create('companies', name='Acme')) <= {'primary'}
    company = api.create('companies', name='Initech')
    # NOTE: the replica is 2 s behind: the reference check would not find the company there.
    contact = api.create('contacts', first_name='Bo', last_name='Bright', company_id=company['id'])
    assert contact['company_id'] == company['id']
    upserted = api.post(
        '/api/contacts?on_conflict=external_id', {'external_id': 'x-1', 'first_name': 'Cy', 'last_name': 'Dee'}
    )
    assert upserted.headers['X-Upsert-Result'] == 'created=1, updated=0'
    merged = api.post(
        '/api/merge_contacts', {'target_id': contact['id'], 'source_ids': [upserted.json['id']]}, status=200
    )
    assert merged.json['id'] == contact['id']


def test_a_write_answers_with_a_read_after_token_and_reads_presenting_it_see_the_write(replicated, delayed):
    api = replicated.client()
    resp = api.post('/api/contacts', {'first_name': 'Grace', 'last_name': 'Hopper'})
    token, record = resp.headers['X-Read-After'], resp.json
    assert re.fullmatch(r'[0-9a-f]{1,16}', token)
    cookie = resp.headers['Set-Cookie']
    assert cookie.startswith(f'{COOKIE}={token};')
    assert {'Path=/', 'HttpOnly', 'SameSite=Lax'} <= {part.strip() for part in cookie.split(';')}
    assert 'Secure' not in cookie, 'over http a Secure cookie would never come back'

    stranger = replicated.client()  # no token: the replica, 2 s behind, may serve a stale answer
    assert replicated.routed(lambda: stranger.get(f'/api/contacts/{record["id"]}', status=404)) == {'replica1'}
    # the header, then the cookie the browser kept: the primary until the replica has replayed the write
    assert replicated.routed(
        lambda: stranger.get(f'/api/contacts/{record["id"]}', headers={'X-Read-After': token})
    ) == {'primary'}
    assert replicated.routed(lambda: api.get(f'/api/contacts/{record["id"]}')) == {'primary'}
    assert 'Set-Cookie' not in api.get('/api/contacts').headers, 'reads carry no token'

    wait_until(lambda: replicated.caught_up(token), what='the replica replaying the write')
    assert replicated.routed(lambda: api.get(f'/api/contacts/{record["id"]}')) == {'replica1'}
    assert replicated.routed(lambda: stranger.get('/api/contacts', headers={'X-Read-After': 'not-a-token'})) == {
        'primary'
    }


def test_a_feed_read_that_numbers_changes_numbers_and_reads_them_on_the_primary(replicated, delayed):
    """A change is numbered by the first read of the feed after it (crmapi.history): that read numbers and reads on
    the primary, where the replica, 2 s behind, would still show the change unnumbered (and the feed without it)."""
    api = replicated.client()
    written = api.post('/api/contacts', {'first_name': 'Ada', 'last_name': 'Lovelace'})
    wait_until(lambda: replicated.caught_up(written.headers['X-Read-After']), what='the replica replaying the write')
    api.app.cookiejar.clear()
    read = api.get('/api/changes')
    assert read.json[-1]['record_id'] == written.json['id']
    assert [c['seq'] for c in read.json] == list(range(1, len(read.json) + 1))
    with replicated.db.transaction(write=True) as tx:
        numbered = dbmod.read_after_token(tx.one(dbmod.PRIMARY_LSN)[0])
    wait_until(lambda: replicated.caught_up(numbered), what='the replica replaying the numbering')
    api.app.cookiejar.clear()
    assert replicated.routed(lambda: api.get('/api/changes')) == {'replica1'}, 'nothing to number: the replica'
    assert api.get('/api/changes').json == read.json


def test_a_token_revoked_is_refused_at_once_though_the_replica_lags(replicated, delayed):
    accounts = Accounts(replicated.db)
    token = accounts.create_token(replicated.org_id, 'late@example.com')
    late = Client(webtest.TestApp(replicated.app), token)
    late.get('/api/contacts')  # the replica has not replayed the new token yet: authentication reads the primary
    [token_id] = [t[0] for t in accounts.list_tokens(replicated.org_id) if t[1] == 'late@example.com']
    accounts.revoke_token(token_id)
    assert_problem(late.get('/api/contacts', status=401), 401)


def test_a_replica_lagging_past_the_limit_is_not_read_and_readyz_says_so(scaleout_url, replica, delayed):
    host = ReplicaHost(scaleout_url, [replica.url], max_lag_ms=300)
    try:
        api = host.client()
        record = api.create('contacts', first_name='Late', last_name='Comer')
        api.app.cookiejar.clear()
        wait_until(lambda: not host.db.replica_status()[0]['in_use'], what='the lag limit')
        assert host.routed(lambda: api.get(f'/api/contacts/{record["id"]}')) == {'primary'}
        ready = webtest.TestApp(host.app).get('/readyz').json
        [status] = ready['replicas']
        assert (status['name'], status['in_use'], status['problem']) == ('replica1', False, 'lagging')
        assert status['lag_ms'] > 300
    finally:
        host.close()


def test_readyz_reports_each_replica_lag_but_never_its_address(replicated, replica):
    resp = webtest.TestApp(replicated.app).get('/readyz')
    assert resp.json['replicas'] == [{'name': 'replica1', 'lag_ms': resp.json['replicas'][0]['lag_ms'], 'in_use': True}]
    assert isinstance(resp.json['replicas'][0]['lag_ms'], int)
    address = replica.url.split('@')[1].split('/')[0]
    assert address not in resp.text and 'postgres' not in resp.text.replace('"postgresql"', '')


def test_reads_take_turns_over_replicas_and_a_failed_one_is_skipped_then_used_again(scaleout_url, replica):
    host = ReplicaHost(scaleout_url, [replica.url, replica.url])
    try:
        api = host.client()
        routes = set()
        for _ in range(4):
            routes |= host.routed(lambda: api.get('/api/contacts'))
        assert routes == {'replica1', 'replica2'}

        script('pgnode.sh', 'stop', replica.directory)
        try:
            for _ in range(3):
                api.get('/api/contacts')  # a read that meets the stopped replica goes on to the primary
            wait_until(lambda: not any(r['in_use'] for r in host.db.replica_status()), what='replicas skipped')
            assert host.routed(lambda: api.get('/api/contacts')) == {'primary'}
        finally:
            script('pgnode.sh', 'start', replica.directory)
        wait_until(lambda: all(r['in_use'] for r in host.db.replica_status()), timeout=15, what='replicas back')
        assert host.routed(lambda: api.get('/api/contacts')) <= {'replica1', 'replica2'}
    finally:
        host.close()


# -- PgBouncer in transaction pooling mode ----------------------------------------------------------


@pytest.fixture(scope='module')
def bouncer(scaleout_url):
    """PgBouncer from deploy/pgbouncer.ini on loopback: `crm` is the scale-out database, `fixed` a database
    whose own default statement_timeout is 300 ms."""
    fixed = 'scaleout_fixed'
    with psycopg.connect(scaleout_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE {fixed}')
        conn.execute(f'ALTER DATABASE {fixed} SET statement_timeout = 300')
    info = psycopg.conninfo.conninfo_to_dict(scaleout_url)
    server = f'host={info["host"]} port={info["port"]}'
    directory = tempfile.mkdtemp(prefix='crmapi-pgbouncer-', dir='/tmp')
    port = servers.free_port()
    script(
        'pgbouncer.sh',
        'start',
        directory,
        '127.0.0.1',
        port,
        f'crm={server} dbname={info["dbname"]}',
        f'fixed={server} dbname={fixed}',
    )
    try:
        yield f'postgresql://postgres@127.0.0.1:{port}/crm'
    finally:
        script('pgbouncer.sh', 'stop', directory)
        subprocess.run(['rm', '-rf', directory])


def test_the_api_works_through_pgbouncer_in_transaction_pooling_mode(bouncer):
    db = PostgresDatabase(bouncer, pgbouncer=True)
    try:
        api = Client(
            NoLeaks(create_app(Settings(database_url='injected', access_log=False, pgbouncer=True), db=db)), None
        )
        accounts = Accounts(db)
        org_id = accounts.create_org('Bounced')
        api = Client(api.app, accounts.create_token(org_id, 'admin@example.com', admin=True), org_id)
        api.post('/api/contacts', [{'first_name': 'A', 'last_name': str(i)} for i in range(5)])
        for _ in range(8):  # more than psycopg's prepare threshold (5)
            assert (
                api.get('/api/contacts', {'filter': {'first_name': 'A'}}).headers['Content-Range'] == 'contacts 0-4/5'
            )
            assert filtered_total(api) == '5'  # NOTE: counted once, then kept (no session state to lose)
        assert api.get('/api/contacts', headers={'Accept': 'text/csv'}).text.count('\n') == 6
        api.post('/api/contacts', {'first_name': 'A', 'last_name': 'new'})
        assert filtered_total(api) == '6'
        api.post('/api/custom_objects', {'slug': 'boats', 'fields': [{'name': 'name', 'type': 'text'}]})
        api.post('/api/boats', {'name': 'Ketch'})
        assert [b['name'] for b in api.list('boats')] == ['Ketch']
    finally:
        db.close()


def test_two_pools_through_one_pgbouncer_share_server_connections_without_prepared_statements(bouncer):
    """Through PgBouncer two clients' statements land on one server connection: a statement prepared by
    one (psycopg prepares after 5 runs) would collide with the other's or be missing there."""
    workers = [PostgresDatabase(bouncer, pgbouncer=True) for _ in range(2)]
    try:
        for _ in range(8):
            for db in workers:
                with db.transaction() as tx:
                    assert tx.one('SELECT count(*) FROM organizations WHERE id <> %s', ('x',))[0] >= 0
                with db.transaction(write=True) as tx:
                    tx.execute('UPDATE organizations SET name = name WHERE id = %s', ('x',))
    finally:
        for db in workers:
            db.close()


def test_the_statement_timeout_holds_through_pgbouncer_and_never_reaches_other_clients(bouncer):
    db = PostgresDatabase(bouncer, pgbouncer=True, statement_timeout_ms=200)
    try:
        with pytest.raises(Unavailable, match='took too long'):
            with db.transaction() as tx:
                tx.one('SELECT pg_sleep(1)')
        with pytest.raises(Unavailable, match='took too long'):
            with db.transaction(write=True) as tx:
                tx.one('SELECT pg_sleep(1)')
        with pytest.raises(Unavailable, match='took too long'):
            list(db.stream('SELECT pg_sleep(1)', ()))
        with psycopg.connect(bouncer, autocommit=True) as other:
            other.execute("SET TIME ZONE 'Asia/Tokyo'")
            assert other.execute('SHOW statement_timeout').fetchone() == ('0',)
            with db.transaction() as tx:
                assert tx.one("SELECT current_setting('TimeZone')") == ('UTC',)
    finally:
        db.close()


def test_a_server_side_default_timeout_spares_reads_the_transaction_around_them(bouncer):
    db = PostgresDatabase(sibling_url(bouncer, 'fixed'), pgbouncer=True, statement_timeout_ms=300)
    try:
        with db.transaction() as tx:
            assert tx.conn.info.transaction_status == dbmod.IDLE, 'statement by statement, as without PgBouncer'
            with pytest.raises(psycopg.errors.QueryCanceled):
                tx.one('SELECT pg_sleep(1)')
    finally:
        db.close()


# -- migrations from many hosts ---------------------------------------------------------------------


@pytest.fixture
def fresh_database():
    base = postgres_url()
    name = 'migrate_' + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE {name}')
    yield sibling_url(base, name)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE {name} WITH (FORCE)')


def schema_version(url):
    with psycopg.connect(url) as conn:
        return conn.execute('SELECT version FROM schema_version').fetchall()


def test_migrations_started_by_many_hosts_at_the_same_moment_all_succeed(fresh_database):
    """The first step used to create the version table outside the lock: two at once could collide."""
    hosts = [PostgresDatabase(fresh_database) for _ in range(4)]
    for db in hosts:
        db.pool().wait()
    start, failures = threading.Barrier(len(hosts)), []

    def migrate(db):
        start.wait()
        try:
            migrations.migrate(db)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=migrate, args=(db,)) for db in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for db in hosts:
        db.close()
    assert failures == []
    assert schema_version(fresh_database) == [(migrations.latest('postgresql'),)]


def test_two_crmapi_migrate_processes_at_once_on_a_fresh_database(fresh_database):
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, '-m', 'crmapi', '--database', fresh_database, 'migrate'],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(proc.wait(60), proc.stderr.read()) for proc in procs]
    assert [code for code, _ in results] == [0, 0], results
    logs = ''.join(err for _, err in results)
    assert logs.count('applied 0001_initial') == 1, 'each step applied once, by one of them'
    assert schema_version(fresh_database) == [(migrations.latest('postgresql'),)]


def test_the_code_keeps_no_session_state_that_transaction_pooling_would_lose():
    """No LISTEN, no session advisory lock, no session SET but in PostgresDatabase._configure: PgBouncer-safe."""
    sources = [*(ROOT / 'crmapi').rglob('*.py'), *(ROOT / 'crmapi').rglob('*.sql')]
    text = {path: path.read_text() for path in sources}
    for path, body in text.items():
        assert not re.search(r'\bLISTEN\b', body), path
        assert not re.search(r'pg_(try_)?advisory_lock\(', body), path
    assert 'pg_advisory_xact_lock' in text[ROOT / 'crmapi' / 'db' / 'postgres.py']
