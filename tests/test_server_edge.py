"""What a client sees at the edge: chunked bodies, bodies refused unread, requests too malformed to reach the app.

The app's part in-process (WebTest); the servers' part through real processes, each test on both app servers:
gunicorn with deploy/gunicorn.conf.py (crmapi.serving.ThreadWorker) or granian through `crmapi serve`
(crmapi.serving_granian), nginx with deploy/nginx.conf in front of it, and `crmapi serve`. Every answer a client
can get is problem+json, with the status it is sent with, and no traceback; except granian's own refusals of what it
cannot parse (the status alone, see GRANIAN), which nginx in front refuses first but for one (NGINX_PASSES_ON).
"""

import http.client
import io
import json
import re
import socket

import pytest
import requests
import webtest
from gunicorn.http.errors import InvalidChunkSize

import servers
from crmapi import create_app
from crmapi import serving_granian
from crmapi.accounts import Accounts
from crmapi.config import Settings
from crmapi.serving import DRAIN_MAX_BYTES
from test_deploy import database_url

MIB = 1024 * 1024
PREFIX = '/crm'
LEAKS = ('Traceback', 'File "/', 'secret')


@pytest.fixture
def token(database):
    accounts = Accounts(database)
    return accounts.create_token(accounts.create_org('Edge'), 'edge@example.com', admin=True)


def auth(token, **headers):
    return {'Authorization': f'Bearer {token}', 'Content-Type': 'application/json', **headers}


def assert_problem(status, headers, raw, expected, **members):
    """A problem+json answer sent with `expected`, whose body says the same status; never a traceback."""
    assert status == expected, raw
    assert headers['content-type'] == 'application/problem+json', raw
    text = raw.decode()
    assert not [leak for leak in LEAKS if leak in text], text
    body = json.loads(text)
    assert body['status'] == expected and body['type'] == 'about:blank'
    assert body['title'] and body['detail'] and body['message'] == body['detail']
    for key, value in members.items():
        assert body.get(key) == value, (key, body)
    return body


# --- in-process: the app reads a chunked body ----------------------------------------------------


@pytest.fixture(scope='module')
def app(database):
    # NOTE: not conftest's wsgi_app: its leak check re-reads the body by Content-Length, which a chunked body
    # does not have, so the app would get it empty.
    return webtest.TestApp(create_app(Settings(database_url='injected', access_log=False), db=database))


def chunked(app, method, path, token, body, status, terminated=True):
    """The environ gunicorn builds for a chunked body: no CONTENT_LENGTH, a stream that ends with the body."""
    req = webtest.TestRequest.blank(path, method=method, headers=auth(token, **{'Transfer-Encoding': 'chunked'}))
    req.environ.pop('CONTENT_LENGTH', None)
    req.environ['wsgi.input'] = body if hasattr(body, 'read') else io.BytesIO(body)
    if terminated:
        req.environ['wsgi.input_terminated'] = True
    return app.do_request(req, status=status)


def problem_of(resp, expected):
    return assert_problem(resp.status_int, {'content-type': resp.content_type}, resp.body, expected)


def test_a_chunked_body_is_read_to_its_end(app, token):
    created = chunked(app, 'POST', '/api/contacts', token, b'{"first_name": "Chunked"}', 201).json
    assert created['first_name'] == 'Chunked'
    updated = chunked(app, 'PUT', f'/api/contacts/{created["id"]}', token, b'{"last_name": "Body"}', 200).json
    assert (updated['first_name'], updated['last_name']) == ('Chunked', 'Body')


def test_a_chunked_body_over_the_limit_is_a_413(app, token):
    body = b'{"first_name": "Huge"}'.ljust(MIB + 1)
    problem = problem_of(chunked(app, 'POST', '/api/contacts', token, body, 413), 413)
    assert problem['detail'] == 'The body is larger than 1048576 bytes'
    assert chunked(app, 'POST', '/api/contacts', token, body[:MIB], 201).json['first_name'] == 'Huge'


class Unending(io.RawIOBase):
    """A stream that never ends: what reading past a body looks like on a server that does not end it."""

    def read(self, size=-1):
        assert size == 0, 'read a stream that has no end'
        return b''


def test_without_a_length_the_stream_is_read_only_if_the_server_ends_it(app, token):
    resp = chunked(app, 'POST', '/api/contacts', token, Unending(), 400, terminated=False)
    assert problem_of(resp, 400)['detail'].startswith('The body is not valid JSON')


class Malformed(io.RawIOBase):
    """gunicorn's wsgi.input when a chunk size is not hexadecimal."""

    def read(self, size=-1):
        raise InvalidChunkSize(b'zz')


def test_a_body_the_server_cannot_decode_is_a_400_not_a_500(app, token):
    problem = problem_of(chunked(app, 'POST', '/api/contacts', token, Malformed(), 400), 400)
    assert problem['detail'].startswith('The body could not be read')


# --- in-process: granian's edge (crmapi.serving_granian) ----------------------------------------------


def environ_seen(environ):
    """What the app behind serving_granian.behind_proxy sees of `environ`: (scheme, SCRIPT_NAME, PATH_INFO)."""
    seen = {}

    def app(env, start_response):
        seen.update(env)
        return []

    serving_granian.behind_proxy(app, serving_granian.trusted_peers('127.0.0.1, 10.0.0.0/8'))(environ, None)
    return seen['wsgi.url_scheme'], seen.get('SCRIPT_NAME', ''), seen['PATH_INFO'], 'HTTP_SCRIPT_NAME' in seen


@pytest.mark.parametrize(
    'peer, expected',
    [
        ('127.0.0.1', ('https', '/crm', '/api/contacts', False)),
        ('10.1.2.3', ('https', '/crm', '/api/contacts', False)),
        ('127.0.0.2', ('http', '', '/crm/api/contacts', False)),
        ('not an address', ('http', '', '/crm/api/contacts', False)),
    ],
)
def test_granian_believes_the_prefix_and_scheme_only_from_a_trusted_proxy(peer, expected):
    environ = {
        'REMOTE_ADDR': peer,
        'wsgi.url_scheme': 'http',
        'SCRIPT_NAME': '',
        'PATH_INFO': '/crm/api/contacts',
        'HTTP_SCRIPT_NAME': '/crm',
        'HTTP_X_FORWARDED_PROTO': 'https',
    }
    assert environ_seen(environ) == expected


def test_granian_mounts_a_prefix_only_on_a_segment_boundary():
    environ = {
        'REMOTE_ADDR': '127.0.0.1',
        'wsgi.url_scheme': 'http',
        'PATH_INFO': '/crmx/api',
        'HTTP_SCRIPT_NAME': '/crm',
    }
    assert environ_seen(environ) == ('http', '', '/crmx/api', False)


def test_granian_judges_the_peer_only_when_a_proxy_header_asks_for_something():
    judged, seen = [], {}

    def trusted(address):
        judged.append(address)
        return True

    def app(env, start_response):
        seen.update(env)
        return []

    edge = serving_granian.behind_proxy(app, trusted)
    plain = {'REMOTE_ADDR': '127.0.0.1', 'wsgi.url_scheme': 'http', 'PATH_INFO': '/api/contacts'}
    edge(dict(plain), None)
    assert (judged, seen['wsgi.url_scheme']) == ([], 'http')
    edge({**plain, 'HTTP_X_FORWARDED_PROTO': 'https'}, None)
    assert (judged, seen['wsgi.url_scheme']) == (['127.0.0.1'], 'https')


def test_granian_answers_an_error_escaping_the_app_with_a_bare_problem_500(capsys):
    def app(environ, start_response):
        raise RuntimeError('secret: /etc/crmapi/internal.conf')

    answer = webtest.TestApp(serving_granian.last_resort(app)).get('/', status=500)
    assert problem_of(answer, 500)['detail'] == 'The server could not complete the request'
    assert 'secret' in capsys.readouterr().err


# --- through the app server and nginx ------------------------------------------------------------------


@pytest.fixture(scope='module', params=servers.SERVERS)
def stack(request, backend, database, tmp_path_factory):
    """The app server as shipped (gunicorn, or granian through `crmapi serve`) and nginx in front of it; the probe's
    slow path (2 s) is there for nginx's 504."""
    name = request.param
    directory = tmp_path_factory.mktemp(f'edge-{backend}-{name}')
    env = {
        'CRMAPI_DATABASE_URL': database_url(backend, database),
        'CRMAPI_WORKERS': '1',
        'CRMAPI_PROBE_DIR': str(directory),
        'CRMAPI_PROBE_SLEEP_S': '2',
    }
    app_server = servers.start_server(directory / name, name, env=env, app='servers:probe_app')
    try:
        nginx = servers.start_nginx(directory / 'nginx', upstream_port=app_server.port)
        try:
            yield {'name': name, 'direct': (app_server, ''), 'nginx': (nginx, PREFIX)}
        finally:
            nginx.stop()
    finally:
        assert app_server.stop() == 0, app_server.log_text()
    assert 'Traceback' not in app_server.log_text(), app_server.log_text()


@pytest.fixture(params=['direct', 'nginx'])
def server(request, stack):
    """(the server a client talks to, the prefix the API has there)."""
    return stack[request.param]


def fetch(server, prefix, path, token):
    status, _, raw = server.request('GET', f'{prefix}{path}', headers=auth(token))
    assert status == 200, raw
    return json.loads(raw)


@pytest.mark.slow
def test_a_chunked_body_is_read_through_the_server(server, token):
    server, prefix = server
    status, headers, raw = servers.chunked_request(
        server.port,
        'POST',
        f'{prefix}/api/contacts',
        [b'{"first_name":', b' "Chunked",', b' "last_name": "Body"}'],
        auth(token),
    )
    assert status == 201, raw
    created = json.loads(raw)
    assert (created['first_name'], created['last_name']) == ('Chunked', 'Body')
    assert fetch(server, prefix, f'/api/contacts/{created["id"]}', token) == created


@pytest.mark.slow
def test_a_chunked_body_over_1_mib_is_a_413_through_the_server(server, token):
    server, prefix = server
    chunks = [b'{"first_name": "Huge"}'] + [b' ' * 64 * 1024] * 17
    status, headers, raw = servers.chunked_request(server.port, 'POST', f'{prefix}/api/contacts', chunks, auth(token))
    assert_problem(status, headers, raw, 413)
    # NOTE: `"` percent-encoded, as clients do: granian refuses it raw (test_deploy.py).
    assert fetch(server, prefix, '/api/contacts?filter={%22first_name%22:%22Huge%22}', token) == []


def refusals(token):
    """Requests the app refuses before it reads their body: (path, headers, status)."""
    return {
        'over the limit': ('/api/contacts', auth(token), 413),
        'not JSON': ('/api/contacts', auth(token, **{'Content-Type': 'text/plain'}), 415),
        'no token': ('/api/contacts', {'Content-Type': 'application/json'}, 401),
        'unknown resource': ('/api/nothing_here', auth(token), 404),
    }


REFUSALS = ['over the limit', 'not JSON', 'no token', 'unknown resource']


@pytest.mark.slow
@pytest.mark.parametrize('refusal', REFUSALS)
def test_a_client_that_sends_its_whole_body_first_gets_the_answer_from_the_app_server(stack, token, refusal):
    app_server, _ = stack['direct']
    path, headers, expected = refusals(token)[refusal]
    body = b' ' * (MIB + 100 * 1024)
    resp = requests.post(f'http://{servers.LOOPBACK}:{app_server.port}{path}', data=body, headers=headers, timeout=15)
    assert_problem(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content, expected)
    # A stricter client than requests (which ignores a failed send), sending over time: the send must not fail.
    head = ''.join(f'{name}: {value}\r\n' for name, value in headers.items())
    request = f'POST {path} HTTP/1.1\r\nHost: edge\r\n{head}Content-Length: {len(body)}\r\n\r\n'.encode() + body
    assert_problem(*servers.raw_request(app_server.port, request), expected)


@pytest.mark.slow
def test_the_connection_serves_the_next_request_after_a_refused_body(stack):
    app_server, _ = stack['direct']
    conn = http.client.HTTPConnection(servers.LOOPBACK, app_server.port, timeout=15)
    try:
        conn.request(
            'POST', '/api/contacts', body=b'{}'.ljust(512 * 1024), headers={'Content-Type': 'application/json'}
        )
        refused = conn.getresponse()
        assert (refused.status, refused.read() and refused.will_close) == (401, False)
        first = conn.sock
        conn.request('GET', '/healthz')
        assert conn.getresponse().status == 200
        assert conn.sock is first  # the same connection, not a new one
    finally:
        conn.close()


@pytest.mark.slow
def test_a_body_over_the_drain_cap_is_not_read_and_the_connection_closes(stack, token):
    app_server, _ = stack['direct']
    length = DRAIN_MAX_BYTES + 1
    request = (
        f'POST /api/contacts HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {token}\r\n'
        f'Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n'
    ).encode()
    with socket.create_connection((servers.LOOPBACK, app_server.port), timeout=15) as sock:
        sock.sendall(request)  # and not a byte of the body: the answer comes at once, and then the close
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert_problem(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read(), 413)
        assert answer.getheader('Connection') == 'close'
        sock.settimeout(1)
        assert sock.recv(1) == b''


@pytest.mark.slow
@pytest.mark.parametrize('refusal', ['not JSON', 'no token', 'unknown resource'])  # nginx refuses over 1 MiB itself
def test_a_refused_body_through_nginx_gets_the_apps_answer_never_a_502(stack, token, refusal):
    nginx, prefix = stack['nginx']
    path, headers, expected = refusals(token)[refusal]
    body = b' ' * MIB
    with requests.Session() as session:
        statuses = {
            session.post(
                f'http://{servers.LOOPBACK}:{nginx.port}{prefix}{path}', data=body, headers=headers, timeout=15
            ).status_code
            for _ in range(15)
        }
    assert statuses == {expected}


# Requests no server can make sense of: (the request, the status from gunicorn, the status from nginx).
# `{prefix}` is where the API is on that server, `{token}` a valid token.
MALFORMED = {
    'invalid request line': (b'GARBAGE\r\n\r\n', 400, 400),
    'unsupported HTTP version': (b'GET {prefix}/api/contacts HTTP/3.0\r\nHost: edge\r\n\r\n', 400, 505),
    'header line over 64 KiB': (
        b'GET {prefix}/api/contacts HTTP/1.1\r\nHost: edge\r\nX-Big: ' + b'a' * 70_000 + b'\r\n\r\n',
        431,
        431,
    ),
    'over 100 header fields': (
        b'GET {prefix}/api/contacts HTTP/1.1\r\nHost: edge\r\n'
        + b''.join(b'X-Field-%d: x\r\n' % i for i in range(101))
        + b'\r\n',
        431,
        431,
    ),
    'negative Content-Length': (
        b'POST {prefix}/api/contacts HTTP/1.1\r\nHost: edge\r\nContent-Length: -1\r\n\r\n',
        400,
        400,
    ),
    'two Content-Lengths': (
        b'POST {prefix}/api/contacts HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}',
        400,
        400,
    ),
    'Content-Length and Transfer-Encoding': (
        b'POST {prefix}/api/contacts HTTP/1.1\r\nHost: edge\r\nContent-Length: 5'
        b'\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
        400,
        400,
    ),
    'unknown Transfer-Encoding': (
        b'POST {prefix}/api/contacts HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: foo\r\n\r\n',
        501,
        501,
    ),
    'malformed chunk': (
        b'POST {prefix}/api/contacts HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {token}\r\n'
        b'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
        400,
        400,
    ),
}


# granian, for the same requests: (status, whether the app answers it). What granian cannot parse it answers itself
# with the status alone and an empty body: it has no hook to write problem+json, and nginx in front refuses each of
# these first (above). The rest reaches the app: a 70 KB header line (granian reads up to 400 KiB of headers), a
# Content-Length beside chunked (the chunked body is read, as RFC 9112 allows, and the connection closed after), a
# malformed chunk (the body ends there: the app finds it is not JSON).
GRANIAN = {
    'invalid request line': (400, False),
    'unsupported HTTP version': (400, False),
    'header line over 64 KiB': (401, True),
    'over 100 header fields': (431, False),
    'negative Content-Length': (400, False),
    'two Content-Lengths': (400, False),
    'Content-Length and Transfer-Encoding': (401, True),
    'unknown Transfer-Encoding': (400, False),
    'malformed chunk': (400, True),
}


# nginx has no limit on the number of header fields: it passes such a request on, and granian's bare 431 back.
NGINX_PASSES_ON = {'over 100 header fields'}


def assert_refused(answer, server, name, case):
    """`answer` to MALFORMED[case], as `name` (direct or nginx) in front of `server` (gunicorn or granian) sends it."""
    _, from_gunicorn, from_nginx = MALFORMED[case]
    passed_on = name == 'nginx' and case in NGINX_PASSES_ON
    if server == 'gunicorn' or (name == 'nginx' and not passed_on):
        return assert_problem(*answer, from_nginx if name == 'nginx' else from_gunicorn)
    status, by_app = GRANIAN[case]
    if by_app:
        return assert_problem(*answer, status)
    assert (answer[0], answer[2]) == (status, b'')  # granian's own: nothing but the status, nothing leaked
    assert 'content-type' not in answer[1]


@pytest.mark.slow
@pytest.mark.parametrize('case', list(MALFORMED))
@pytest.mark.parametrize('name', ['direct', 'nginx'])
def test_a_malformed_request_gets_problem_json_with_its_status(stack, token, name, case):
    server, prefix = stack[name]
    request = MALFORMED[case][0].replace(b'{prefix}', prefix.encode()).replace(b'{token}', token.encode())
    assert_refused(servers.raw_request(server.port, request), stack['name'], name, case)


@pytest.mark.slow
@pytest.mark.parametrize('name', servers.SERVERS)
def test_an_app_that_fails_inside_the_server_gets_a_bare_500(tmp_path, name):
    with servers.start_server(tmp_path, name, app='servers:failing_app') as app_server:
        assert_problem(
            *app_server.request('GET', '/api/contacts'), 500, detail='The server could not complete the request'
        )
    assert 'secret' in app_server.log_text()  # the operator sees what the client does not


@pytest.mark.slow
def test_a_quote_unencoded_in_the_url_is_a_problem_json_400_from_nginx(stack, token):
    unencoded = '/api/contacts?filter={"first_name":"Quote"}'
    request = 'GET {}{} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {}\r\n\r\n'
    nginx, prefix = stack['nginx']
    assert_problem(*servers.raw_request(nginx.port, request.format(prefix, unencoded, token).encode()), 400)
    assert fetch(nginx, prefix, unencoded.replace('"', '%22'), token) == []
    app_server, _ = stack['direct']
    status, _, raw = servers.raw_request(app_server.port, request.format('', unencoded, token).encode())
    # gunicorn serves it; granian refuses it with the status alone.
    assert (status, raw) == ((200, b'[]') if stack['name'] == 'gunicorn' else (400, b''))


# --- errors nginx answers itself -----------------------------------------------------------------


@pytest.mark.slow
def test_a_path_outside_the_api_is_a_problem_json_404_from_nginx(stack):
    nginx, _ = stack['nginx']
    for path in ('/', '/index.html', '/api/contacts', '/crmapi/contacts'):
        assert_problem(*nginx.request('GET', path), 404)


@pytest.mark.slow
def test_an_upstream_that_is_down_is_a_502_with_retry_after(tmp_path):
    with servers.start_nginx(tmp_path, upstream_port=servers.free_port()) as nginx:
        status, headers, raw = nginx.request(
            'POST', f'{PREFIX}/api/contacts', body=b'{}', headers={'X-Request-ID': 'down-1'}
        )
    assert_problem(status, headers, raw, 502)
    assert (headers['retry-after'], headers['x-request-id']) == ('5', 'down-1')


@pytest.mark.slow
def test_an_upstream_that_does_not_answer_in_time_is_a_504(stack, tmp_path):
    app_server, _ = stack['direct']
    site = tmp_path / 'crmapi.conf'
    text, count = re.subn(r'proxy_read_timeout \S+;', 'proxy_read_timeout 1s;', servers.NGINX_CONF.read_text())
    assert count == 1
    site.write_text(text)
    with servers.start_nginx(tmp_path / 'nginx', upstream_port=app_server.port, site=site) as nginx:
        status, headers, raw = nginx.request('GET', f'{PREFIX}/_probe/slow/healthz')
    assert_problem(status, headers, raw, 504)
    assert headers['retry-after'] == '5'


def test_every_error_page_of_nginx_has_a_title_and_a_detail():
    conf = servers.NGINX_CONF.read_text()
    pages = [line.split() for line in conf.splitlines() if line.strip().startswith('error_page')]
    statuses = {int(word.lstrip('=')) for words in pages for word in words[1:-1]} - {494}
    assert {400, 408, 413, 414, 431, 500, 502, 503, 504} <= statuses
    for name in ('crmapi_error_title', 'crmapi_error_detail'):
        block = re.search(r'map \$status \$' + name + r' \{(.*?)\}', conf, re.S).group(1)
        assert statuses <= {int(code) for code in re.findall(r'^\s*(\d{3})\s', block, re.M)}, name


# --- crmapi serve --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('name', servers.SERVERS)
def test_crmapi_serve_drains_refused_bodies_and_answers_problem_json(backend, database, token, tmp_path, name):
    env = {'CRMAPI_DATABASE_URL': database_url(backend, database)}
    with servers.start_crmapi_serve(tmp_path, env=env, server=name) as serve:
        assert_refused(
            servers.raw_request(serve.port, MALFORMED['invalid request line'][0]),
            name,
            'direct',
            'invalid request line',
        )
        body = b' ' * (MIB + 1)
        request = (
            f'POST /api/contacts HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {token}\r\n'
            f'Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n'
        ).encode() + body
        assert_problem(*servers.raw_request(serve.port, request), 413)
        status, _, raw = servers.chunked_request(
            serve.port, 'POST', '/api/contacts', [b'{"first_name": "Served"}'], auth(token)
        )
        assert status == 201, raw
    assert 'Traceback' not in serve.log_text(), serve.log_text()
