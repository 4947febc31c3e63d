"""Fixtures: every API test runs once on SQLite and once on PostgreSQL.

Each test gets its own organization (and so its own data) in one shared database per backend;
organization isolation is what keeps the tests apart, which also exercises it on every test.
"""

import io
import json
import os
from urllib.parse import unquote
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

import psycopg
import time

import pytest
import webtest
from psycopg import sql

from crmapi import authcache
from crmapi import create_app
from crmapi.accounts import Accounts
from crmapi.cli import init_db
from crmapi.config import Settings
from crmapi.db import PostgresDatabase
from crmapi.db import SQLiteDatabase

BACKENDS = ['sqlite', 'postgresql']
# The built-in resources a client writes, and the read-only summaries: what the API-wide tests run over.
WRITABLE = [
    'contacts',
    'companies',
    'deals',
    'tasks',
    'contact_notes',
    'deal_notes',
    'company_notes',
    'tags',
    'configuration',
    'automation_rules',
    'crm_users',
]
SUMMARIES = ['companies_summary', 'contacts_summary']
PROBLEM_KEYS = {'type', 'title', 'status', 'detail', 'message'}


# The slow tier's files, longest first (seconds each on 2 loaded cores, 2026-12-01); the others follow in collection
# order. NOTE: the slow tier gives whole files to its workers (--dist loadfile, in this order with
# --no-loadscope-reorder; xdist's own order is by test count, which left files of 1-5 long tests to the end): a long
# file given out last would leave the other worker idle until it ends.
SLOW_FILES_LONGEST_FIRST = (
    'test_schemathesis.py',  # 114
    'test_load.py',  # 100
    'test_crash.py',  # 57
    'test_deploy.py',  # 56
    'test_cluster.py',  # 52
    'test_event_crash.py',  # 34
    'test_scaleout.py',  # 33
    'test_properties.py',  # 31
    'test_server_edge.py',  # 26
    'test_webhooks.py',  # 21
    'test_docs_browser.py',  # 17
    'test_csv_import.py',  # 17
    'test_cursors_exports.py',  # 15
)


def pytest_collection_modifyitems(config, items):
    if getattr(config.option, 'dist', None) == 'loadfile':
        rank = {name: n for n, name in enumerate(SLOW_FILES_LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def base_postgres_url():
    """CRMAPI_TEST_POSTGRES_URL: the database of a serial run, and where a worker's own one is made."""
    url = os.environ.get('CRMAPI_TEST_POSTGRES_URL')
    if not url:
        pytest.fail(
            'CRMAPI_TEST_POSTGRES_URL is not set: run the suite with `make test`, '
            'which starts a throwaway PostgreSQL server'
        )
    return url


def postgres_url():
    """The test PostgreSQL database of this process.

    NOTE: under pytest-xdist each worker gets a database of its own, `<name>_<worker id>` on the same
    server (made by `worker_postgres_database`), because `database` drops and recreates the `public`
    schema and tests create fixed-name tables; a serial run uses CRMAPI_TEST_POSTGRES_URL as is.
    """
    url = base_postgres_url()
    worker = os.environ.get('PYTEST_XDIST_WORKER')
    if not worker:
        return url
    parsed = urlsplit(url)
    return urlunsplit(parsed._replace(path=f'{parsed.path}_{worker}'))


def _on_the_server(statement, name):
    with psycopg.connect(base_postgres_url(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL(statement).format(sql.Identifier(name)))


@pytest.fixture(scope='session', autouse=True)
def worker_postgres_database():
    """This xdist worker's PostgreSQL database, made empty at the start (a leftover of an interrupted
    run is dropped first) and dropped at the end; nothing to do in a serial run or without PostgreSQL."""
    if not os.environ.get('PYTEST_XDIST_WORKER') or not os.environ.get('CRMAPI_TEST_POSTGRES_URL'):
        yield
        return
    name = unquote(urlsplit(postgres_url()).path.lstrip('/'))
    _on_the_server('DROP DATABASE IF EXISTS {} WITH (FORCE)', name)
    _on_the_server('CREATE DATABASE {}', name)
    yield
    _on_the_server('DROP DATABASE IF EXISTS {} WITH (FORCE)', name)


def fresh_database(backend, directory):
    """An empty database with crmapi's schema."""
    if backend == 'sqlite':
        db = SQLiteDatabase(str(directory / 'crm.db'))
    else:
        db = PostgresDatabase(postgres_url())
        with db.transaction(write=True) as tx:
            tx.execute('DROP SCHEMA public CASCADE')
            tx.execute('CREATE SCHEMA public')
    init_db(db)
    return db


@pytest.fixture(scope='session', params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope='session')
def databases():
    """{backend: its database}: each made when a test first needs it, all closed at the end of the session."""
    made = {}
    yield made
    for db in made.values():
        db.close()


@pytest.fixture(scope='session')
def database(backend, databases, tmp_path_factory):
    """The backend's database, one for the whole session.

    NOTE: kept in `databases`, not torn down when the tests switch backend: the slow tier runs each file's SQLite
    tests, then its PostgreSQL ones (--dist loadfile), and a database made at each switch was migrated again for
    every file, by every worker.
    """
    if backend not in databases:
        databases[backend] = fresh_database(backend, tmp_path_factory.mktemp(backend))
    return databases[backend]


LEAK_MARKERS = (
    'Traceback (most recent call last)',
    'File "/',
    'psycopg.',
    'sqlite3.',
    'OperationalError',
    'IntegrityError',
    'ProgrammingError',
    'UniqueViolation',
    'ForeignKeyViolation',
)


class NoLeaks:
    """WSGI middleware for the whole suite: no error answer may show a traceback or a driver.

    A marker the request itself carried (a fuzzer's slug 'sqlite3.', echoed in a 404) is the
    client's own text, not a leak.
    """

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        length = int(environ.get('CONTENT_LENGTH') or 0)
        request_body = environ['wsgi.input'].read(length) if length else b''
        environ['wsgi.input'] = io.BytesIO(request_body)
        sent = (
            unquote(environ.get('PATH_INFO', '') + '?' + environ.get('QUERY_STRING', ''))
            + request_body.decode('utf-8', 'replace')
            + json.dumps(request_body.decode('utf-8', 'replace'))
        )
        seen = {}

        def remember(status, headers, exc_info=None):
            seen['status'] = status
            return start_response(status, headers, exc_info)

        result = self.app(environ, remember)
        try:
            body = b''.join(result)
        finally:
            getattr(result, 'close', lambda: None)()
        if int(seen['status'][:3]) >= 400:
            text = body.decode('utf-8', 'replace')
            leaked = [m for m in LEAK_MARKERS if m in text and m not in sent]
            assert not leaked, f'error body leaks {leaked}: {text[:300]}'
        return [body]


@pytest.fixture(scope='session')
def wsgi_app(database):
    return NoLeaks(create_app(Settings(database_url='injected', access_log=False), db=database))


class Client:
    """A WebTest app that speaks JSON with one token; query values that are not strings are JSON-encoded."""

    def __init__(self, app, token, org_id=None):
        self.app = app if isinstance(app, webtest.TestApp) else webtest.TestApp(app)
        self.token = token
        self.org_id = org_id
        self.headers = {'Authorization': f'Bearer {token}'} if token else {}

    def _headers(self, headers):
        return {**self.headers, **(headers or {})}

    @staticmethod
    def encode(params):
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}

    def get(self, path, params=None, status=200, headers=None):
        return self.app.get(path, self.encode(params), headers=self._headers(headers), status=status)

    def post(self, path, body=None, status=201, headers=None):
        return self.app.post_json(path, body if body is not None else {}, headers=self._headers(headers), status=status)

    def put(self, path, body, status=200, headers=None):
        return self.app.put_json(path, body, headers=self._headers(headers), status=status)

    def delete(self, path, status=200, headers=None):
        return self.app.delete(path, headers=self._headers(headers), status=status)

    def create(self, resource, **fields):
        """POST a record and return its JSON."""
        return self.post(f'/api/{resource}', fields).json

    def list(self, resource, **params):
        return self.get(f'/api/{resource}', params).json


def new_org(database, app, name='Acme', admin=True, email='admin@example.com'):
    accounts = Accounts(database)
    org_id = accounts.create_org(name)
    return Client(app, accounts.create_token(org_id, email, admin=admin), org_id)


@pytest.fixture
def api(database, wsgi_app):
    """An administrator of a brand-new organization."""
    return new_org(database, wsgi_app)


@pytest.fixture
def other_api(database, wsgi_app):
    """An administrator of a second organization, for isolation tests."""
    return new_org(database, wsgi_app, name='Other Corp', email='boss@other.example')


@pytest.fixture
def user_api(api, database, wsgi_app):
    """A non-administrator of the same organization as `api`."""
    token = Accounts(database).create_token(api.org_id, 'user@example.com', admin=False)
    return Client(wsgi_app, token, api.org_id)


@pytest.fixture
def anonymous(wsgi_app):
    return Client(wsgi_app, None)


# Any valid automation rule's trigger and actions (crmapi.rules), for tests that need a rule, not a particular one.
# NOTE: no webhook action: its URL would be resolved when the rule is written, and its answer carry a secret.
RULE_SHAPE = {
    'trigger': {'resource': 'contacts', 'on': ['created']},
    'actions': [{'type': 'create_task', 'text': 'Welcome them'}],
}


def wait_out_the_token_bound(since):
    """Wait until crmapi.authcache.RECHECK_S has passed since `since` (time.monotonic() when a revocation or a user
    change committed): from then on every other process and host refuses what it withdrew."""
    time.sleep(max(0.0, authcache.RECHECK_S - (time.monotonic() - since)))


def assert_problem(resp, status, **members):
    """An RFC 9457 problem body with `status`, the common keys and the given members."""
    assert resp.status_int == status
    assert resp.content_type == 'application/problem+json'
    body = resp.json
    assert PROBLEM_KEYS <= set(body), body
    assert body['status'] == status
    assert body['message'] == body['detail']
    assert 'Traceback' not in resp.text
    for key, value in members.items():
        assert body.get(key) == value, (key, body)
    return body
