"""The shipped deployment, for real: nginx (deploy/nginx.conf) in front of the app server, gunicorn
(deploy/gunicorn.conf.py) or granian (`crmapi serve`, crmapi.serving_granian).

Both run as processes on loopback, with the API mounted under /crm, on SQLite and on PostgreSQL, each with
either app server. The app server serves `servers:probe_app()`: crmapi.create_app() untouched, plus
`/_probe/environ` (what the app would see of the forwarded headers) and `/_probe/slow/...`.
If nginx is not installed these tests fail; `make test` installs it.
"""

import json
import os
import re
import signal
import threading
import time
from urllib.parse import quote

import pytest

import servers
from conftest import wait_out_the_token_bound
from conftest import Client
from crmapi.accounts import Accounts

pytestmark = pytest.mark.slow
MIB = 1024 * 1024
PREFIX = '/crm'


def database_url(backend, database):
    return f'sqlite:///{database.path}' if backend == 'sqlite' else database.url


@pytest.fixture(scope='module', params=servers.SERVERS)
def stack(request, backend, database, tmp_path_factory):
    """The app server (2 workers) and nginx in front of it; both stopped at the end, whatever happened."""
    directory = tmp_path_factory.mktemp(f'deploy-{backend}-{request.param}')
    env = {'CRMAPI_DATABASE_URL': database_url(backend, database), 'CRMAPI_WORKERS': '2'}
    app_server = servers.start_server(directory / request.param, request.param, env=env, app='servers:probe_app')
    try:
        nginx = servers.start_nginx(directory / 'nginx', upstream_port=app_server.port)
        try:
            yield nginx, app_server
        finally:
            nginx.stop()
    finally:
        assert app_server.stop() == 0, app_server.log_text()
    assert 'Traceback' not in app_server.log_text(), app_server.log_text()


@pytest.fixture
def nginx(stack):
    return stack[0]


@pytest.fixture
def app_server(stack):
    return stack[1]


@pytest.fixture
def token(database):
    accounts = Accounts(database)
    return accounts.create_token(accounts.create_org('Deployed'), 'ops@example.com', admin=True)


def auth(token, **headers):
    return {'Authorization': f'Bearer {token}', **headers}


def call(server, method, path, token=None, body=None, headers=None, **kwargs):
    """(status, headers, parsed JSON body or raw bytes)."""
    headers = {**(auth(token) if token else {}), **(headers or {})}
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault('Content-Type', 'application/json')
    status, resp_headers, raw = server.request(method, path, body=body, headers=headers, **kwargs)
    if resp_headers.get('content-type', '').split(';')[0] in ('application/json', 'application/problem+json'):
        return status, resp_headers, json.loads(raw)
    return status, resp_headers, raw


def query(**params):
    return '&'.join(f'{k}={quote(v if isinstance(v, str) else json.dumps(v), safe="")}' for k, v in params.items())


def assert_problem(status, headers, body, expected, **members):
    assert status == expected, body
    assert headers['content-type'] == 'application/problem+json'
    assert body['status'] == expected and body['message'] == body['detail']
    for key, value in members.items():
        assert body.get(key) == value, (key, body)


def probe(server, path=f'{PREFIX}/_probe/environ', **kwargs):
    status, _, environ = call(server, 'GET', path, **kwargs)
    assert status == 200, environ
    return environ


# --- the API through the prefix ------------------------------------------------------------------


def test_create_returns_a_location_under_the_prefix_that_reads_back_through_nginx(nginx, token):
    status, headers, created = call(
        nginx, 'POST', f'{PREFIX}/api/contacts', token, {'first_name': 'Ada', 'last_name': 'Lovelace'}
    )
    assert status == 201, created
    assert headers['location'] == f'{PREFIX}/api/contacts/{created["id"]}'
    status, _, fetched = call(nginx, 'GET', headers['location'], token)
    assert status == 200
    assert fetched == created


def test_list_with_filters_keeps_content_range_through_nginx(nginx, token):
    for name in ('Ada', 'Grace', 'Alan'):
        assert call(nginx, 'POST', f'{PREFIX}/api/contacts', token, {'first_name': name})[0] == 201
    q = query(
        filters=[{'field': 'first_name', 'op': 'starts_with', 'value': 'a'}], sort=['first_name', 'ASC'], range=[0, 0]
    )
    status, headers, rows = call(nginx, 'GET', f'{PREFIX}/api/contacts?{q}', token)
    assert status == 200, rows
    assert headers['content-range'] == 'contacts 0-0/2'
    assert 'Content-Range' in headers['access-control-expose-headers']
    assert [r['first_name'] for r in rows] == ['Ada']
    status, headers, rows = call(nginx, 'GET', f'{PREFIX}/api/contacts?{query(range=[0, 24])}', token)
    assert headers['content-range'] == 'contacts 0-2/3'


def test_errors_through_nginx_are_the_apps_problem_json(nginx, token):
    assert_problem(*call(nginx, 'GET', f'{PREFIX}/api/contactz', token), 404)
    status, headers, body = call(nginx, 'GET', f'{PREFIX}/api/contacts')
    assert_problem(status, headers, body, 401)
    assert headers['www-authenticate'].startswith('Bearer')


def test_a_long_filter_url_reaches_the_app_and_gets_a_json_400(nginx, token):
    # ~10 KiB request line: over nginx's default 8 KiB buffer and gunicorn's default 4094 limit.
    q = query(filters=[{'field': 'first_name', 'op': 'eq', 'value': 'x' * 10_001}])
    assert len(q) > 10_000
    assert_problem(*call(nginx, 'GET', f'{PREFIX}/api/contacts?{q}', token), 400, param='filters')


def test_a_request_line_over_64_kib_is_refused_by_nginx_as_problem_json(nginx, token):
    status, headers, body = call(nginx, 'GET', f'{PREFIX}/api/contacts?q={"x" * 70_000}', token)
    assert_problem(status, headers, body, 414)


def test_a_body_of_exactly_1_mib_is_accepted(nginx, token):
    body = json.dumps({'first_name': 'Big'}).encode()
    body += b' ' * (MIB - len(body))
    status, _, created = call(
        nginx, 'POST', f'{PREFIX}/api/contacts', token, body, {'Content-Type': 'application/json'}
    )
    assert status == 201, created
    assert created['first_name'] == 'Big'


def test_a_body_over_1_mib_is_refused_at_the_edge(nginx, token):
    body = json.dumps({'first_name': 'Huge'}).encode()
    body += b' ' * (MIB + 1 - len(body))
    status, headers, problem = call(
        nginx,
        'POST',
        f'{PREFIX}/api/contacts',
        token,
        body,
        {'Content-Type': 'application/json', 'X-Request-ID': 'big-1'},
    )
    assert_problem(status, headers, problem, 413, detail='The body is over 1 MiB')
    assert headers['x-request-id'] == 'big-1'
    # The refusal is nginx's own (the app's 413 reads differently), so the body never reached the app server.
    status, _, rows = call(nginx, 'GET', f'{PREFIX}/api/contacts?{query(filter={"first_name": "Huge"})}', token)
    assert status == 200 and rows == []


# --- forwarded headers ---------------------------------------------------------------------------

FORGED = {
    'X-Forwarded-For': '203.0.113.66',
    'X-Forwarded-Proto': 'https',
    'X-Forwarded-Host': 'evil.example',
    'X-Forwarded-Ssl': 'on',
    'Forwarded': 'for=203.0.113.66;proto=https;host=evil.example',
    'SCRIPT_NAME': '/evil',
}


def test_nginx_replaces_forwarded_headers_a_client_forged(nginx):
    environ = probe(nginx, headers=FORGED)
    assert environ['HTTP_X_FORWARDED_FOR'] == '127.0.0.1'
    assert environ['HTTP_X_FORWARDED_PROTO'] == 'http'
    assert environ['wsgi.url_scheme'] == 'http'
    assert environ['HTTP_X_FORWARDED_HOST'] == f'127.0.0.1:{nginx.port}'
    assert environ['HTTP_FORWARDED'] is None
    assert (environ['SCRIPT_NAME'], environ['PATH_INFO']) == (PREFIX, '/_probe/environ')


def test_the_app_server_trusts_forwarded_headers_only_from_the_proxy_address(app_server):
    # Positive control: from 127.0.0.1 (forwarded_allow_ips, where nginx connects from) they count.
    trusted = probe(app_server, headers=FORGED | {'SCRIPT_NAME': PREFIX})
    assert trusted['wsgi.url_scheme'] == 'https'
    assert (trusted['SCRIPT_NAME'], trusted['PATH_INFO']) == (PREFIX, '/_probe/environ')
    # The same request from another loopback address: scheme ignored, SCRIPT_NAME header dropped.
    untrusted = probe(app_server, headers=FORGED | {'SCRIPT_NAME': PREFIX}, source='127.0.0.2')
    assert untrusted['REMOTE_ADDR'] == '127.0.0.2'
    assert untrusted['wsgi.url_scheme'] == 'http'
    assert (untrusted['SCRIPT_NAME'], untrusted['PATH_INFO']) == ('', f'{PREFIX}/_probe/environ')


def test_the_app_builds_locations_from_a_prefix_only_the_proxy_may_set(app_server, token):
    path, headers = f'{PREFIX}/api/contacts', auth(token, SCRIPT_NAME=PREFIX)
    status, resp_headers, created = call(app_server, 'POST', path, body={'first_name': 'Via proxy'}, headers=headers)
    assert status == 201
    assert resp_headers['location'] == f'{PREFIX}/api/contacts/{created["id"]}'
    status, resp_headers, body = call(
        app_server, 'POST', path, body={'first_name': 'Spoof'}, headers=headers, source='127.0.0.2'
    )
    assert_problem(status, resp_headers, body, 404)


def test_the_request_id_passes_through_or_is_made_at_the_edge(nginx):
    assert probe(nginx, headers={'X-Request-ID': 'client-id.42'})['HTTP_X_REQUEST_ID'] == 'client-id.42'
    made = probe(nginx)['HTTP_X_REQUEST_ID']
    assert re.fullmatch(r'[0-9a-f]{32}', made)
    assert probe(nginx)['HTTP_X_REQUEST_ID'] != made
    replaced = probe(nginx, headers={'X-Request-ID': 'no spaces\tor tabs'})['HTTP_X_REQUEST_ID']
    assert re.fullmatch(r'[0-9a-f]{32}', replaced)


def test_nginx_keeps_its_connections_to_the_app_server_alive(nginx, app_server):
    first, second = probe(nginx), probe(nginx)
    assert first['HTTP_CONNECTION'] is None  # no `Connection: close` towards the app server
    assert (first['REMOTE_ADDR'], first['REMOTE_PORT']) == (second['REMOTE_ADDR'], second['REMOTE_PORT'])
    # granian's environ has no REMOTE_PORT: the connections still open from nginx say it.
    assert servers.established(app_server.port) >= 1


# --- shutdown ------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', servers.SERVERS)
def test_sigterm_lets_an_in_flight_request_finish(backend, database, wsgi_app, token, tmp_path, name):
    env = {
        'CRMAPI_DATABASE_URL': database_url(backend, database),
        'CRMAPI_WORKERS': '1',
        'CRMAPI_PROBE_DIR': str(tmp_path),
        'CRMAPI_PROBE_SLEEP_S': '2',
    }
    answers = []
    with servers.start_server(tmp_path / name, name, env=env, app='servers:probe_app') as server:
        client = threading.Thread(
            target=lambda: answers.append(
                call(server, 'POST', '/_probe/slow/api/contacts', token, {'first_name': 'In flight'}, timeout=30)
            )
        )
        client.start()
        deadline = time.monotonic() + 10
        while not (tmp_path / 'started').exists():
            assert time.monotonic() < deadline, 'the slow request never reached the app'
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        client.join(30)
        assert not client.is_alive()
        assert server.wait(30) == 0
    [(status, headers, created)] = answers
    assert status == 201, created
    assert headers['location'] == f'/api/contacts/{created["id"]}'
    assert Client(wsgi_app, token).get(f'/api/contacts/{created["id"]}').json == created
    with pytest.raises(ConnectionRefusedError):
        call(server, 'GET', '/api/contacts', token)
    assert 'Traceback' not in server.log_text(), server.log_text()


@pytest.mark.parametrize('name', servers.SERVERS)
def test_sigterm_while_a_worker_boots_stops_the_server_at_once(backend, database, tmp_path, name):
    env = {
        **os.environ,
        'CRMAPI_DATABASE_URL': database_url(backend, database),
        'CRMAPI_WORKERS': '1',
        'CRMAPI_BIND': f'{servers.LOOPBACK}:{servers.free_port()}',
        'CRMAPI_PROBE_BOOT_S': '3',
        'PYTHONPATH': os.pathsep.join(filter(None, (str(servers.ROOT / 'tests'), os.environ.get('PYTHONPATH')))),
    }
    proc, files, logs = servers._spawn(servers.server_argv(name, 'servers:probe_app', serve=False), tmp_path, env, name)
    with servers.Server(proc, None, logs, files, name) as server:
        deadline = time.monotonic() + 15
        while not servers.workers_of(server.pid):  # a worker is loading the app (3 s)
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log_text()
            time.sleep(0.05)
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        # NOTE: well under the 30 s kill timeout: granian's worker used to miss a SIGTERM sent while it loaded the
        # app and serve on until killed. (gunicorn lets the boot finish, then stops.)
        assert server.wait(15) == 0, server.log_text()


# --- the log, several masters, recycled workers ----------------------------------------------------


def test_each_request_is_one_json_access_log_line_with_the_edge_request_id(nginx, app_server, token):
    request_id = f'access-{token[-12:]}'
    assert call(nginx, 'GET', f'{PREFIX}/api/contacts', token, headers={'X-Request-ID': request_id})[0] == 200
    deadline = time.monotonic() + 5
    while not (lines := [line for line in app_server.log_text().splitlines() if request_id in line]):
        assert time.monotonic() < deadline, app_server.log_text()[-2000:]
        time.sleep(0.05)
    [line] = lines
    entry = json.loads(line)
    assert (entry['method'], entry['path'], entry['status'], entry['request_id']) == (
        'GET',
        '/api/contacts',
        200,
        request_id,
    )
    assert entry['organization'].startswith('org_') and token not in app_server.log_text()


def test_two_masters_on_one_database_see_each_others_writes_and_revoked_tokens(backend, database, app_server, tmp_path):
    accounts = Accounts(database)
    org = accounts.create_org('Two masters')
    token = accounts.create_token(org, 'both@example.com', admin=True)
    env = {'CRMAPI_DATABASE_URL': database_url(backend, database), 'CRMAPI_WORKERS': '1'}
    with servers.start_server(tmp_path / app_server.name, app_server.name, env=env) as other:
        status, _, created = call(app_server, 'POST', '/api/contacts', token, {'first_name': 'Shared'})
        assert status == 201, created
        assert call(other, 'GET', f'/api/contacts/{created["id"]}', token)[2] == created
        [(token_id, *_)] = accounts.list_tokens(org)
        assert accounts.revoke_token(token_id)
        revoked = time.monotonic()
        wait_out_the_token_bound(revoked)  # the bound for other processes
        for server in (app_server, other):
            status, headers, body = call(server, 'GET', '/api/contacts', token)
            assert_problem(status, headers, body, 401)


@pytest.mark.parametrize('name', servers.SERVERS)
def test_sighup_replaces_every_worker_and_no_request_fails(backend, database, token, tmp_path, name):
    # NOTE: no rate limit: the client sends as fast as it is answered.
    env = {'CRMAPI_DATABASE_URL': database_url(backend, database), 'CRMAPI_WORKERS': '1', 'CRMAPI_RATE_LIMIT': '0'}
    answers, stop = [], threading.Event()

    def client(port):
        while not stop.is_set():
            answers.append(servers.request(port, 'GET', '/api/contacts', headers=auth(token))[0])

    with servers.start_server(tmp_path / name, name, env=env) as server:
        before = set(servers.workers_of(server.pid))
        worker = threading.Thread(target=client, args=(server.port,))
        worker.start()
        try:
            server.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while not (set(servers.workers_of(server.pid)) - before and len(servers.workers_of(server.pid)) == 1):
                assert time.monotonic() < deadline, server.log_text()[-2000:]
                time.sleep(0.1)
            count = len(answers)
            while len(answers) < count + 5:  # the new worker answers too
                assert time.monotonic() < deadline, server.log_text()[-2000:]
                time.sleep(0.05)
        finally:
            stop.set()
            worker.join(30)
    assert set(answers) == {200}, answers
