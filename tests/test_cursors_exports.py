"""Security of big lists (issue 16): signed keyset cursors, CSV cells a spreadsheet will not run, and
exports whose failures are visible: before the status line a problem+json answer, after it a trailer line.
"""

import base64
import csv
import hashlib
import io
import json
import logging
import os
import re
import threading
import uuid

import psycopg
import pytest
import webtest

import servers
from conftest import Client
from conftest import assert_problem
from conftest import postgres_url
from crmapi import create_app
from crmapi import migrations
from crmapi import query
from crmapi.accounts import Accounts
from crmapi.services import build_services
from crmapi.app import server_secret
from crmapi.config import Settings
from crmapi.db import PostgresDatabase
from crmapi.db import connect
from crmapi.errors import Unavailable
from crmapi.export import BATCH
from test_deploy import database_url
from test_migrations import empty_db  # noqa: F401 (a fixture: an empty database of each kind)

URL_SAFE = re.compile(r'[A-Za-z0-9_-]+\Z')


@pytest.fixture
def people(api):
    """Seven contacts, so a page of three has a next page."""
    return [api.create('contacts', first_name=f'p{i}', last_name=f'n{i % 3}')['id'] for i in range(7)]


def next_cursor(client, params):
    return client.get('/api/contacts', {**params, 'range': [0, 2]}).headers['X-Next-Cursor']


def b64(data):
    return base64.urlsafe_b64encode(data).decode().rstrip('=')


def signed(database, org_id, params, body):
    """A contacts cursor whose body is `body` (bytes), signed with the server's own key: a forgery by
    someone who knows the key, to show the body is still parsed strictly."""
    key = query.cursor_key(server_secret(Settings(database_url='injected'), database), org_id)
    return query.sign_cursor(key, build_services(database).catalog.resolve('contacts', None), params, body)


def assert_cursor_refused(client, params, cursor):
    resp = client.get('/api/contacts', {**params, 'range': [0, 2], 'cursor': cursor}, status=400)
    return assert_problem(resp, 400, param='cursor')


# -- 7. cursors: bounded, strictly parsed, signed, bound to the organization and the query -----------


def test_a_cursor_is_url_safe_and_pages_on(api, people):
    cursor = next_cursor(api, {'sort': 'last_name'})
    assert URL_SAFE.match(cursor)
    assert b'last_name' not in base64.urlsafe_b64decode(cursor + '==='), 'no field names: opaque'
    page = api.get('/api/contacts', {'sort': 'last_name', 'range': [0, 2], 'cursor': cursor})
    assert page.headers['Content-Range'] == 'contacts 3-5/7'


@pytest.mark.parametrize(
    'forged',
    [
        b64(b'[' * 5000),
        b64(json.dumps({'v': ['\ud800', 'c_x'], 'i': 3}).encode()),
        b64(b'{"v":["' + '\ud800'.encode('utf-8', 'surrogatepass') + b'","c_x"],"i":3}'),
        b64(b'\xff\xfe' * 40),
        '',
        '!!!!',
        'A' * 5000,
    ],
)
def test_a_forged_cursor_is_400_naming_cursor(api, people, forged):
    assert_cursor_refused(api, {}, forged)


def test_the_cursors_the_probe_forged_are_400(api, people):
    """What issue 16 sent, in the unsigned format cursors had before (a 500 then): the query digest
    was all a forger needed."""
    digest = hashlib.sha256(json.dumps(['contacts', None, None, None, None, None]).encode()).hexdigest()[:16]
    assert_cursor_refused(api, {}, b64(json.dumps({'v': ['\ud800', 'c_x'], 'i': 3, 'q': digest}).encode()))
    assert_cursor_refused(api, {}, b64(b'[' * 5000))


@pytest.mark.parametrize(
    'body',
    [
        b'[' * 5000,
        b'{"v":["\\ud800"],"i":3}',
        b'{"v":["c_\\u0000x"],"i":3}',
        b'{"v":["c_x"],"i":3,"v":["c_y"]}',
        b'{"v":[1e999],"i":3}',
        b'{"v":["c_x"],"i":-1}',
        b'{"v":["c_x"],"i":true}',
        b'{"v":"c_x","i":3}',
        b'{"v":[],"i":3}',
        b'{"v":["' + b'x' * 20_000 + b'"],"i":3}',
        b'["c_x",3]',
        b'\xff',
    ],
)
def test_even_a_validly_signed_cursor_is_parsed_strictly(api, people, database, body):
    assert_cursor_refused(api, {}, signed(database, api.org_id, {}, body))


def test_a_cursor_longer_than_4_kib_is_400_before_it_is_decoded(api, people, database):
    cursor = signed(database, api.org_id, {}, json.dumps({'v': ['x' * 4000], 'i': 3}).encode())
    assert len(cursor) > query.MAX_CURSOR_LENGTH
    body = assert_cursor_refused(api, {}, cursor)
    assert str(query.MAX_CURSOR_LENGTH) in body['detail']


def test_a_page_whose_cursor_would_be_too_long_gives_none(api):
    for i in range(4):
        api.create('contacts', first_name='x' * 3000 + str(i))
    resp = api.get('/api/contacts', {'sort': 'first_name', 'range': [0, 1]})
    assert len(resp.json) == 2 and 'X-Next-Cursor' not in resp.headers


def test_a_tampered_cursor_is_400(api, people):
    """Moving a cursor's index (`"i":3` -> `"i":6`) would skip rows and misreport Content-Range."""
    cursor = next_cursor(api, {})
    raw = base64.urlsafe_b64decode(cursor + '=' * (-len(cursor) % 4))
    assert raw.count(b'"i":3') == 1
    assert_cursor_refused(api, {}, b64(raw.replace(b'"i":3', b'"i":6')))


def test_a_cursor_from_another_organization_is_400(api, other_api, people):
    for i in range(7):
        other_api.create('contacts', first_name=f'o{i}')
    assert_cursor_refused(other_api, {}, next_cursor(api, {}))
    assert_cursor_refused(api, {}, next_cursor(other_api, {}))


@pytest.mark.parametrize(
    'other',
    [
        {'sort': 'first_name'},
        {'sort': 'last_name', 'order': 'DESC'},
        {'filter': {'last_name': 'n1'}},
        {'filters': [{'field': 'last_name', 'op': 'neq', 'value': 'zz'}]},
    ],
)
def test_a_cursor_from_another_query_is_400(api, people, other):
    assert_cursor_refused(api, other, next_cursor(api, {'sort': 'last_name'}))


def test_a_cursor_from_another_resource_is_400(api, people):
    for i in range(4):
        api.create('companies', name=f'co{i}')
    cursor = api.get('/api/companies', {'range': [0, 2]}).headers['X-Next-Cursor']
    assert_cursor_refused(api, {}, cursor)


def test_the_generated_key_is_made_once_and_shared_by_every_worker(empty_db):  # noqa: F811
    """Workers starting together on a new database agree on one key (insert-if-absent, then read)."""
    migrations.migrate(empty_db)
    keys, errors = [], []

    def start_worker():
        try:
            keys.append(server_secret(Settings(database_url='injected'), empty_db))
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=start_worker) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not errors and len(keys) == 4 and len(set(keys)) == 1
    assert len(keys[0]) >= 32


def test_a_second_app_on_the_same_database_accepts_the_first_apps_cursors(api, people, database):
    second = Client(create_app(Settings(database_url='injected', access_log=False), db=database), api.token)
    cursor = next_cursor(api, {'sort': 'last_name'})
    page = second.get('/api/contacts', {'sort': 'last_name', 'range': [0, 2], 'cursor': cursor})
    assert page.headers['Content-Range'] == 'contacts 3-5/7'


def test_crmapi_secret_key_signs_the_cursors_when_set(api, people, database, monkeypatch):
    monkeypatch.setenv('CRMAPI_SECRET_KEY', 's3cret-for-every-host-0123456789')
    settings = Settings.from_env(database_url='injected', access_log=False)
    assert 's3cret' not in repr(settings)
    first, second = (Client(create_app(settings, db=database), api.token) for _ in range(2))
    cursor = next_cursor(first, {})
    assert second.get('/api/contacts', {'range': [0, 2], 'cursor': cursor}).headers['Content-Range'] == 'contacts 3-5/7'
    assert_cursor_refused(api, {}, cursor)  # the database's own key is another key
    assert_cursor_refused(first, {}, next_cursor(api, {}))


def test_a_short_crmapi_secret_key_is_refused_at_start(monkeypatch):
    monkeypatch.setenv('CRMAPI_SECRET_KEY', 'short')
    with pytest.raises(ValueError, match='CRMAPI_SECRET_KEY'):
        Settings.from_env()


# -- 7, siblings: the Range header and the range parameter -----------------------------------------


@pytest.mark.parametrize(
    'header',
    [
        'contacts=' + '9' * 19 + '-' + '9' * 19,
        'contacts=5-2',
        'contacts=0-5000',
        'contacts=-1-2',
        'contacts=0-',
        'contacts=0-2,4-5',
        'contacts=\u0660-\u0662',
        'contacts=' + '[' * 5000,
        'other=0-2',
        'contacts 0-2',
        '',
    ],
)
def test_a_bad_range_header_is_400_naming_range(api, people, header):
    resp = api.app.get('/api/contacts', headers={**api.headers, 'Range': header}, status=400)
    assert_problem(resp, 400)
    assert resp.json['param'] in ('Range', 'range')


def test_a_range_header_with_leading_zeros_is_read_as_numbers(api, people):
    resp = api.app.get('/api/contacts', headers={**api.headers, 'Range': 'contacts=00-02'})
    assert resp.headers['Content-Range'] == 'contacts 0-2/7'


@pytest.mark.parametrize(
    'raw',
    ['[' * 5000, '[0,"\\ud800"]', '[0,' + '9' * 5000 + ']', '[0,1e999]', '[0,24', '[' + ','.join(['0'] * 5000) + ']'],
)
def test_a_crash_shaped_range_parameter_is_400(api, people, raw):
    assert_problem(api.get('/api/contacts', {'range': raw}, status=400), 400, param='range')


# -- 6. CSV cells a spreadsheet would run as formulas --------------------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.example","x")',
    "+1+cmd|' /C calc'!A0",
    '-2+3',
    '@SUM(A1:A9)',
    '\tlooks-blank',
    '\r=1+1',
]


def csv_rows(client, resource, params=None):
    resp = client.get(f'/api/{resource}', params or {}, headers={'Accept': 'text/csv'})
    assert resp.content_type == 'text/csv'
    return list(csv.DictReader(io.StringIO(resp.text, newline='')))


def test_csv_export_prefixes_text_that_a_spreadsheet_would_run_with_a_quote(api):
    texts = FORMULAS + ['a=b', "'quoted already", 'Ada', '']
    for i, text in enumerate(texts):
        api.create('contacts', first_name=text, last_name=f'k{i}')
    exported = {r['last_name']: r['first_name'] for r in csv_rows(api, 'contacts')}
    assert [exported[f'k{i}'] for i in range(len(texts))] == ["'" + t for t in FORMULAS] + [
        'a=b',
        "'quoted already",
        'Ada',
        '',
    ]


def test_csv_export_leaves_numbers_as_numbers(api):
    api.create('deals', name='refund', amount=-5)
    api.create('deals', name='fee', amount=-0.5)
    assert {r['name']: r['amount'] for r in csv_rows(api, 'deals')} == {'refund': '-5', 'fee': '-0.5'}
    api.post(
        '/api/custom_objects',
        {
            'slug': 'ledgers',
            'label': 'Ledgers',
            'fields': [
                {'name': 'title', 'type': 'text'},
                {'name': 'units', 'type': 'integer'},
                {'name': 'balance', 'type': 'number'},
            ],
        },
    )
    api.create('ledgers', title='-owed', units=-7, balance=-12.25)
    (row,) = csv_rows(api, 'ledgers')
    assert (row['title'], row['units'], row['balance']) == ("'-owed", '-7', '-12.25')


def test_csv_export_of_json_fields_is_json_text_never_a_formula(api):
    """Every JSON value is compact JSON text, as the CSV import reads it back: a string in quotes, a number
    as a number (a leading `-` is a number's, never a formula)."""
    for key, value in [('negative', -5), ('formula', '=1+1'), ('list', ['-1', '=2']), ('object', {'a': '@x'})]:
        api.create('configuration', key=key, value=value)
    values = {r['key']: r['value'] for r in csv_rows(api, 'configuration')}
    assert values == {'negative': '-5', 'formula': '"=1+1"', 'list': '["-1","=2"]', 'object': '{"a":"@x"}'}


def test_ndjson_export_carries_text_exactly_as_stored(api):
    api.create('contacts', first_name='=1+1')
    resp = api.get('/api/contacts', headers={'Accept': 'application/x-ndjson'})
    assert json.loads(resp.text.splitlines()[0])['first_name'] == '=1+1'


# -- 9. exports that fail ---------------------------------------------------------------------------

TIMEOUT = 'The query took too long; retry or narrow it'
TIMEOUT_PROBLEM = {
    'type': 'about:blank',
    'title': 'Service unavailable',
    'status': 503,
    'detail': TIMEOUT,
    'message': TIMEOUT,
}


@pytest.fixture
def batch_and_more(api):
    """A custom object with more rows than one export batch, numbered in order."""
    api.post('/api/custom_objects', {'slug': 'lines', 'label': 'Lines', 'fields': [{'name': 'n', 'type': 'integer'}]})
    api.post('/api/lines', [{'n': i} for i in range(BATCH + 20)])  # one batch request, not 520 single ones
    return BATCH + 20


def failing_stream(real, after, exc):
    """`real` (a database's stream) raising `exc` after `after` rows, as a statement timeout would."""

    def stream(sql, params, batch=500):
        for i, row in enumerate(real(sql, params, batch)):
            if i == after:
                raise exc
            yield row

    return stream


def fail_after(monkeypatch, database, after, exc):
    monkeypatch.setattr(database, 'stream', failing_stream(database.stream, after, exc))


@pytest.mark.parametrize('accept', ['text/csv', 'application/x-ndjson'])
def test_an_export_failing_in_its_first_batch_is_a_problem_answer(api, people, database, monkeypatch, accept):
    fail_after(monkeypatch, database, 3, Unavailable(TIMEOUT))
    resp = api.get('/api/contacts', headers={'Accept': accept}, status=503)
    assert assert_problem(resp, 503) == TIMEOUT_PROBLEM
    assert resp.headers['Retry-After'] == '1'


def test_an_export_failing_with_a_bug_in_its_first_row_is_a_500_problem(api, people, database, monkeypatch):
    fail_after(monkeypatch, database, 0, RuntimeError('driver text that must not leak'))
    resp = api.get('/api/contacts', headers={'Accept': 'text/csv'}, status=500)
    assert_problem(resp, 500)
    assert 'driver text' not in resp.text


def test_an_ndjson_export_failing_later_ends_with_an_error_line_and_a_log(
    api, batch_and_more, database, monkeypatch, caplog
):
    fail_after(monkeypatch, database, BATCH + 5, Unavailable(TIMEOUT))
    with caplog.at_level(logging.ERROR, logger='crmapi'):
        resp = api.get('/api/lines', {'sort': 'n'}, headers={'Accept': 'application/x-ndjson'})
    assert resp.status_int == 200
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert [r['n'] for r in lines[:-1]] == list(range(BATCH))
    assert lines[-1] == {'error': TIMEOUT_PROBLEM}
    (logged,) = [r for r in caplog.records if r.name == 'crmapi']
    assert 'lines' in logged.getMessage() and logged.exc_info


def test_a_csv_export_failing_later_ends_with_an_error_record_and_a_log(
    api, batch_and_more, database, monkeypatch, caplog
):
    fail_after(monkeypatch, database, BATCH + 5, RuntimeError('driver text that must not leak'))
    with caplog.at_level(logging.ERROR, logger='crmapi'):
        resp = api.get('/api/lines', {'sort': 'n'}, headers={'Accept': 'text/csv'})
    rows = list(csv.reader(io.StringIO(resp.text, newline='')))
    assert 'n' in rows[0] and len(rows) == 1 + BATCH + 1
    marker, problem = rows[-1]
    assert marker == '#error' and json.loads(problem)['status'] == 500
    assert 'driver text' not in resp.text
    assert [r.exc_info[1] for r in caplog.records if r.name == 'crmapi'][0].args == ('driver text that must not leak',)


def test_an_export_the_client_leaves_ends_its_database_read_at_once(
    api, batch_and_more, database, wsgi_app, monkeypatch
):
    """A server closes the body when its client goes away: the database read (its transaction, its
    pooled connection) ends then, not after the rows nobody will receive."""
    ended = []
    real = database.stream

    def stream(sql, params, batch=500):
        try:
            yield from real(sql, params, batch)
        finally:
            ended.append(True)

    monkeypatch.setattr(database, 'stream', stream)
    environ = webtest.TestRequest.blank('/api/lines', headers={**api.headers, 'Accept': 'text/csv'}).environ
    body = wsgi_app.app(environ, lambda status, headers, exc_info=None: None)
    assert next(iter(body)).startswith(b'id,') and not ended
    body.close()
    assert ended == [True]


@pytest.fixture
def pg_app_with_a_short_statement_timeout(tmp_path):
    """A PostgreSQL database of its own (the lock below must not stall other tests) and an app on it
    whose statement_timeout is 300 ms, with an administrator's client."""
    base = postgres_url()
    name = 'timeout_' + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE {name}')
    # NOTE: the timeout is the database's own: Settings reach only connections opened after create_app.
    db = PostgresDatabase(base.rsplit('/', 1)[0] + '/' + name, statement_timeout_ms=300)
    try:
        migrations.migrate(db)
        accounts = Accounts(db)
        org = accounts.create_org('Slow')
        client = Client(
            create_app(Settings(database_url='injected', access_log=False, statement_timeout_ms=300), db=db),
            accounts.create_token(org, 'slow@example.com', admin=True),
            org,
        )
        yield client, db.url
    finally:
        db.close()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE {name} WITH (FORCE)')


@pytest.mark.slow
def test_a_postgresql_statement_timeout_before_the_first_row_is_a_503_not_a_cut_200(
    pg_app_with_a_short_statement_timeout,
):
    """statement_timeout is PostgreSQL's: the export waits on a table another transaction holds."""
    client, url = pg_app_with_a_short_statement_timeout
    client.create('contacts', first_name='Ada')
    with psycopg.connect(url) as holder:
        holder.execute('LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE')
        for accept in ('text/csv', 'application/x-ndjson'):
            resp = client.get('/api/contacts', headers={'Accept': accept}, status=503)
            assert assert_problem(resp, 503) == TIMEOUT_PROBLEM
    assert client.get('/api/contacts', headers={'Accept': 'text/csv'}).text.count('\n') == 2


def failing_export_app():
    """Runs inside the app server (tests/ is on its path): crmapi.create_app() on $CRMAPI_DATABASE_URL whose
    exports fail after $CRMAPI_FAIL_AFTER rows with a statement timeout."""
    db = connect(os.environ['CRMAPI_DATABASE_URL'])
    db.stream = failing_stream(db.stream, int(os.environ['CRMAPI_FAIL_AFTER']), Unavailable(TIMEOUT))
    return create_app(db=db)


@pytest.mark.slow
# NOTE: the server's part (the chunked body ended after the app's last chunk) is the same for both formats.
@pytest.mark.parametrize(
    'accept, name',
    [('application/x-ndjson', 'gunicorn'), ('text/csv', 'gunicorn'), ('application/x-ndjson', 'granian')],
)
def test_through_the_server_an_export_failing_later_still_ends_its_chunked_body(
    api, batch_and_more, backend, database, tmp_path, accept, name
):
    env = {
        'CRMAPI_DATABASE_URL': database_url(backend, database),
        'CRMAPI_WORKERS': '1',
        'CRMAPI_FAIL_AFTER': str(BATCH + 5),
    }
    with servers.start_server(tmp_path, name, env=env, app='test_cursors_exports:failing_export_app') as server:
        # NOTE: http.client raises IncompleteRead if the connection ends before the last chunk.
        status, headers, body = server.request('GET', '/api/lines?sort=n', headers={**api.headers, 'Accept': accept})
        log = server.log_text()
    assert status == 200 and headers['transfer-encoding'] == 'chunked'
    last = body.decode().splitlines()[-1]
    problem = json.loads(last)['error'] if accept == 'application/x-ndjson' else json.loads(next(csv.reader([last]))[1])
    assert problem == TIMEOUT_PROBLEM
    assert 'export of lines failed after its answer started' in log


def test_an_app_on_a_database_not_yet_migrated_says_to_migrate(empty_db):  # noqa: F811
    migrations.migrate(empty_db, target=4)
    with pytest.raises(RuntimeError, match='crmapi migrate'):
        create_app(Settings(database_url='injected', access_log=False), db=empty_db)
