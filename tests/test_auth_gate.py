"""Who may reach what: the gate holds for every spelling of a path the router resolves, 401s say
no more than "invalid", keyed writes are authorized like any write, an organization keeps an admin.

Runs on SQLite and PostgreSQL; the path table also runs under werkzeug's DispatcherMiddleware, and
through the shipped app servers (gunicorn, granian) and nginx (slow).
"""

import datetime as dt
import json
import logging
import threading
import time

import pytest
import webob
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import servers
from conftest import RULE_SHAPE
from conftest import Client
from conftest import assert_problem
from crmapi.accounts import Accounts
from crmapi.accounts import token_digest

# Spellings that reach, or once reached, a private route: doubled and tripled slashes, dot segments,
# trailing dots and slashes, case, `;` parameters, backslashes and percent-encodings a server may
# leave undecoded. Each is a PATH_INFO as the WSGI server hands it over (after its own decoding).
SPELLINGS = [
    '//api/contacts',
    '///api/contacts',
    '//api//contacts',
    '/api//contacts',
    '/api/contacts//',
    '/api/contacts/',
    '//api/contacts/',
    '/api/./contacts',
    '/./api/contacts',
    '/api/../api/contacts',
    '/x/../api/contacts',
    '/api/contacts/.',
    '/api/contacts.',
    '/api./contacts',
    '/API/contacts',
    '/Api/Contacts',
    '/api/CONTACTS',
    '/api;x/contacts',
    '/api/contacts;x',
    '/api/contacts;/',
    '/api%2Fcontacts',
    '/api%2fcontacts',
    '/%61pi/contacts',
    '/api\\contacts',
    '/api/contacts%00',
    '/api/contacts\x00',
    '//api/schema',
    '//api/schema/contacts',
    '//api/schema/contacts/',
    '/api//schema/contacts',
    '//api/crm_users',
    '//api/configuration',
    '//api/companies_summary',
    '//api/custom_objects',
    '//api/contacts/{id}',
    '//api/contacts/{id}/',
    '/api//contacts/{id}',
    '/api/contacts//{id}',
    '//api/contacts/{id}/restore',
    '//api/merge_contacts',
    '//api/merge_contacts/',
    '/api//merge_contacts',
    '//api/custom_objects/projects',
    '//api/projects',
    '//api/no_such_resource',
    '//nothing/here',
    '/',
]
METHODS = ['GET', 'POST', 'PUT', 'DELETE']
PUBLIC = ['/healthz', '/readyz', '/api/docs', '/api/openapi.json', '//api/docs', '/api/docs/', '//healthz']


def raw(app, method, path, token=None, body=b'{}'):
    """One request with exactly this PATH_INFO (no client-side normalisation): a webob Response."""
    req = webob.Request.blank('/', method=method)
    req.environ['PATH_INFO'] = path
    if method in ('POST', 'PUT'):
        req.body, req.content_type = body, 'application/json'
    if token:
        req.authorization = ('Bearer', token)
    return req.get_response(app)


@pytest.fixture
def secret_record(api):
    """A record whose id and name must never show in an answer given without a token."""
    return api.create('contacts', first_name='Confidential', last_name='Person')


def assert_refused(resp, with_token, *secrets):
    """401; or 404 where nothing is routed at all (`with_token`, the same request with a valid token,
    is a 404 too): no answer without a token differs but by refusing."""
    assert resp.status_int in (401, 404), (resp.status, resp.text[:200])
    assert resp.content_type == 'application/problem+json'
    if resp.status_int == 401:
        assert resp.headers['WWW-Authenticate'].startswith('Bearer')
    else:
        assert with_token.status_int == 404 and with_token.json['title'] == '404 Not Found', with_token.text[:200]
    assert not any(s in resp.text for s in secrets), resp.text[:200]


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('spelling', SPELLINGS)
def test_no_spelling_of_a_private_path_answers_without_a_token(api, wsgi_app, secret_record, spelling, method):
    path = spelling.format(id=secret_record['id'])
    assert_refused(
        raw(wsgi_app, method, path), raw(wsgi_app, method, path, token=api.token), secret_record['id'], 'Confidential'
    )


@pytest.mark.parametrize('spelling', SPELLINGS)
def test_with_a_token_every_spelling_answers_without_a_server_error(api, wsgi_app, secret_record, spelling):
    resp = raw(wsgi_app, 'GET', spelling.format(id=secret_record['id']), token=api.token)
    assert resp.status_int < 500, (resp.status, resp.text[:200])


def test_a_doubled_slash_reaches_the_resource_with_its_principal(api, wsgi_app, secret_record):
    resp = raw(wsgi_app, 'GET', '//api/contacts', token=api.token)
    assert resp.status_int == 200 and [r['id'] for r in resp.json] == [secret_record['id']]


@pytest.fixture(scope='module')
def mounted(wsgi_app):
    """The app mounted at /crm in a host application whose own paths answer 200 to anyone."""

    def host(environ, start_response):
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'host']

    return DispatcherMiddleware(host, {'/crm': wsgi_app})


@pytest.mark.parametrize('method', ['GET', 'POST'])
@pytest.mark.parametrize('spelling', SPELLINGS)
def test_under_a_mount_prefix_no_spelling_answers_without_a_token(api, mounted, secret_record, spelling, method):
    path = '/crm' + spelling.format(id=secret_record['id'])
    assert_refused(
        raw(mounted, method, path), raw(mounted, method, path, token=api.token), secret_record['id'], 'Confidential'
    )


@pytest.mark.parametrize('path', PUBLIC)
def test_public_paths_answer_without_a_token(wsgi_app, path):
    resp = raw(wsgi_app, 'GET', path)
    assert resp.status_int == 200, resp.text[:200]


@pytest.mark.parametrize('path', PUBLIC)
def test_public_paths_answer_without_a_token_under_a_mount_prefix(mounted, path):
    assert raw(mounted, 'GET', '/crm' + path).status_int == 200


def test_the_openapi_document_narrows_to_the_callers_organization_with_a_token(api, anonymous):
    api.post('/api/custom_objects', {'slug': 'gadgets', 'fields': [{'name': 'title', 'type': 'text'}]})
    assert '/gadgets' in api.get('/api/openapi.json').json['paths']
    assert '/gadgets' not in anonymous.get('/api/openapi.json').json['paths']


def test_a_bad_token_on_the_optional_auth_document_is_401(wsgi_app):
    resp = Client(wsgi_app, 'bos_crm_' + 'x' * 43).get('/api/openapi.json', status=401)
    assert_problem(resp, 401)


# -- one 401 for every reason a token fails; the reason goes to the server's log ---------------------


def _expired(api, database):
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    return Accounts(database).create_token(api.org_id, 'late@example.com', expires_at=past)


def _revoked(api, database):
    accounts = Accounts(database)
    token = accounts.create_token(api.org_id, 'gone@example.com')
    [token_id] = [row[0] for row in accounts.list_tokens(api.org_id) if row[1] == 'gone@example.com']
    accounts.revoke_token(token_id)
    return token


def _disabled(api, database):
    token = Accounts(database).create_token(api.org_id, 'off@example.com')
    [user] = api.list('crm_users', filter={'email': 'off@example.com'})
    api.delete(f'/api/crm_users/{user["id"]}')
    return token


def _unknown(api, database):
    return 'bos_crm_' + 'u' * 43


def _malformed(api, database):
    return 'not-a-crm-token'


FAILING_TOKENS = {
    'expired': _expired,
    'revoked': _revoked,
    'disabled': _disabled,
    'unknown': _unknown,
    'malformed': _malformed,
}


@pytest.mark.parametrize('why', FAILING_TOKENS)
def test_every_failing_token_gets_the_same_401_and_the_reason_is_logged_without_the_token(
    api, database, wsgi_app, caplog, why
):
    token = FAILING_TOKENS[why](api, database)
    with caplog.at_level(logging.INFO, logger='crmapi'):
        resp = Client(wsgi_app, token).get('/api/contacts', status=401)
    body = assert_problem(resp, 401, detail='A valid bearer token is required')
    assert set(body) == {'type', 'title', 'status', 'detail', 'message'}
    logged = [r for r in caplog.records if r.name == 'crmapi']
    assert logged and why in logged[-1].getMessage()
    text = '\n'.join(r.getMessage() for r in caplog.records)
    secret = token.removeprefix('bos_crm_')
    assert secret not in text and token_digest(token) not in text


# -- Idempotency-Key: a key belongs to its user; a replay is authorized like the write it replays -----


def me(client, email='admin@example.com'):
    """The id of the CRM user `email` (the `api` fixture's administrator by default)."""
    return client.list('crm_users', filter={'email': email})[0]['id']


def second_admin(api, database, wsgi_app):
    """Another administrator of `api`'s organization."""
    return Client(
        wsgi_app, Accounts(database).create_token(api.org_id, 'other-admin@example.com', admin=True), api.org_id
    )


ADMIN_WRITES = [
    ('configuration', {'key': 'theme', 'value': {'dark': True}}),
    ('automation_rules', {'name': 'Welcome', **RULE_SHAPE}),
]


@pytest.mark.parametrize(('resource', 'body'), ADMIN_WRITES, ids=[r for r, _ in ADMIN_WRITES])
def test_a_non_admin_replaying_an_admins_key_on_an_admin_resource_is_403(api, user_api, resource, body):
    key = {'Idempotency-Key': f'{resource}-1'}
    first = api.post(f'/api/{resource}', body, headers=key)
    resp = user_api.post(f'/api/{resource}', body, headers=key, status=403)
    assert_problem(resp, 403)
    assert 'Idempotent-Replayed' not in resp.headers and first.json['id'] not in resp.text
    assert [r['id'] for r in api.list(resource)] == [first.json['id']]


@pytest.mark.parametrize(('resource', 'body'), ADMIN_WRITES, ids=[r for r, _ in ADMIN_WRITES])
def test_an_admin_demoted_since_cannot_replay_their_own_admin_write(api, database, wsgi_app, resource, body):
    boss = second_admin(api, database, wsgi_app)
    key = {'Idempotency-Key': f'{resource}-2'}
    api.post(f'/api/{resource}', body, headers=key)
    boss.put(f'/api/crm_users/{me(api)}', {'administrator': False})
    resp = api.post(f'/api/{resource}', body, headers=key, status=403)
    assert_problem(resp, 403)
    assert 'Idempotent-Replayed' not in resp.headers


def test_a_replay_on_a_resource_gone_since_is_404(api):
    api.post('/api/custom_objects', {'slug': 'gizmos', 'fields': [{'name': 'title', 'type': 'text'}]})
    key = {'Idempotency-Key': 'gizmo-1'}
    api.post('/api/gizmos', {'title': 'A'}, headers=key)
    api.delete('/api/custom_objects/gizmos')
    assert_problem(api.post('/api/gizmos', {'title': 'A'}, headers=key, status=404), 404)


def test_a_keyed_write_to_a_read_only_resource_is_405_every_time(api):
    for _ in range(2):
        resp = api.post('/api/companies_summary', {'name': 'X'}, headers={'Idempotency-Key': 'ro-1'}, status=405)
        assert_problem(resp, 405)


def test_the_same_key_from_two_users_is_two_keys(api, user_api):
    key = {'Idempotency-Key': 'shared-by-two'}
    mine = api.post('/api/contacts', {'first_name': 'Ada'}, headers=key)
    theirs = user_api.post('/api/contacts', {'first_name': 'Ada'}, headers=key)
    assert theirs.json['id'] != mine.json['id'] and 'Idempotent-Replayed' not in theirs.headers
    again = user_api.post('/api/contacts', {'first_name': 'Ada'}, headers=key)
    assert again.json == theirs.json and again.headers['Idempotent-Replayed'] == 'true'
    assert len(api.list('contacts')) == 2


def test_another_users_merge_key_is_not_replayed_to_them(api, user_api):
    keep, lose = api.create('contacts', first_name='Keep'), api.create('contacts', last_name='Lose')
    body, key = {'source_ids': [lose['id']], 'target_id': keep['id']}, {'Idempotency-Key': 'merge-1'}
    api.post('/api/merge_contacts', body, headers=key, status=200)
    resp = user_api.post('/api/merge_contacts', body, headers=key, status=404)
    assert_problem(resp, 404, field='source_ids')
    assert 'Idempotent-Replayed' not in resp.headers
    again = api.post('/api/merge_contacts', body, headers=key, status=200)
    assert again.headers['Idempotent-Replayed'] == 'true'


# -- an organization always keeps one active administrator -----------------------------------------


@pytest.mark.parametrize('change', ['demote', 'disable', 'disable-by-put'])
def test_the_last_administrator_cannot_demote_or_disable_themselves(api, change):
    uid = me(api)
    path = f'/api/crm_users/{uid}'
    resp = {
        'demote': lambda: api.put(path, {'administrator': False}, status=409),
        'disable': lambda: api.delete(path, status=409),
        'disable-by-put': lambda: api.put(path, {'disabled': True}, status=409),
    }[change]()
    assert_problem(resp, 409)
    user = api.get(path).json
    assert (user['administrator'], user['disabled']) == (True, False)


def test_an_admin_cannot_demote_or_disable_the_last_other_active_admin(api, database, wsgi_app):
    boss = second_admin(api, database, wsgi_app)
    api.delete(f'/api/crm_users/{me(api)}', status=200)  # two admins: one may go
    other = me(boss, 'other-admin@example.com')
    assert_problem(boss.put(f'/api/crm_users/{other}', {'administrator': False}, status=409), 409)
    assert_problem(boss.delete(f'/api/crm_users/{other}', status=409), 409)


def test_a_disabled_administrator_does_not_count(api, database, wsgi_app):
    boss = second_admin(api, database, wsgi_app)
    boss.delete(f'/api/crm_users/{me(api)}')
    assert_problem(
        boss.put(f'/api/crm_users/{me(boss, "other-admin@example.com")}', {'administrator': False}, status=409), 409
    )


def test_with_two_administrators_one_may_step_down_and_non_admins_change_freely(api, user_api, database, wsgi_app):
    boss = second_admin(api, database, wsgi_app)
    assert boss.delete(f'/api/crm_users/{me(user_api, "user@example.com")}').json['disabled'] is True
    uid = me(api)
    assert api.put(f'/api/crm_users/{uid}', {'administrator': False}).json['administrator'] is False
    assert_problem(api.put(f'/api/crm_users/{uid}', {'administrator': True}, status=403), 403)


def wait_for_lock_waiters(tx, count, timeout=15):
    """Until `count` PostgreSQL sessions wait on a lock (the ones this transaction holds)."""
    deadline = time.monotonic() + timeout
    # NOTE: pg_locks, not pg_stat_activity, which a transaction sees as a snapshot taken once.
    sql = 'SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted'
    while tx.one(sql)[0] < count:
        assert time.monotonic() < deadline, 'the demotions never queued on the lock'
        time.sleep(0.02)


def test_two_admins_demoting_each_other_at_once_leave_one(api, database, wsgi_app):
    """Both pass authentication as administrators, then queue: on PostgreSQL behind the admins' rows
    this test holds FOR UPDATE, on SQLite behind its write lock. The second to go finds itself last."""
    boss = second_admin(api, database, wsgi_app)
    a, b = me(api), me(api, 'other-admin@example.com')
    answers = []

    def demote(client, target):
        answers.append(client.put(f'/api/crm_users/{target}', {'administrator': False}, status='*').status_int)

    threads = [threading.Thread(target=demote, args=(api, b)), threading.Thread(target=demote, args=(boss, a))]
    with database.transaction(write=True) as tx:
        if database.name == 'postgresql':
            tx.execute('SELECT id FROM crm_users WHERE organization_id = %s FOR UPDATE', (api.org_id,))
        for t in threads:
            t.start()
        if database.name == 'postgresql':
            wait_for_lock_waiters(tx, 2)
        else:
            time.sleep(1)
    for t in threads:
        t.join(30)
    # NOTE: on SQLite a demotion that has not authenticated before the first commits is a plain 403.
    assert sorted(answers) in ([200, 409], [200, 403] if database.name == 'sqlite' else [200, 409]), answers
    assert len(api.list('crm_users', filter={'administrator': True, 'disabled': False})) == 1


# -- behind the shipped app server (gunicorn or granian) and nginx ---------------------------------


@pytest.fixture(scope='module', params=servers.SERVERS)
def stack(request, backend, database, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f'gate-{backend}-{request.param}')
    url = f'sqlite:///{database.path}' if backend == 'sqlite' else database.url
    app_server = servers.start_server(
        directory / request.param, request.param, env={'CRMAPI_DATABASE_URL': url, 'CRMAPI_WORKERS': '1'}
    )
    try:
        nginx = servers.start_nginx(directory / 'nginx', upstream_port=app_server.port)
        try:
            yield nginx, app_server
        finally:
            nginx.stop()
    finally:
        app_server.stop()
    assert 'Traceback' not in app_server.log_text(), app_server.log_text()


# What clients can put on the wire (curl --path-as-is): nginx and the app servers decode and normalise some.
WIRE = [
    '//api/contacts',
    '/api//contacts',
    '/api/./contacts',
    '/api/../api/contacts',
    '/./api/contacts',
    '/api/%2E/contacts',
    '/%61pi/contacts',
    '/api%2Fcontacts',
    '/api%2fcontacts',
    '/api/contacts%2F',
    '/api/contacts;x',
    '/api;x/contacts',
    '/API/contacts',
    '/api/contacts.',
    '/api/contacts/',
    '//api/schema/contacts',
    '//api/contacts/{id}',
    '/api/%63ontacts/{id}',
    '//api/merge_contacts',
]


def wire_record(server, prefix, database):
    """A contact made through `server` by a new organization's admin: (its id, the admin's token)."""
    accounts = Accounts(database)
    token = accounts.create_token(accounts.create_org('Wire'), 'wire@example.com', admin=True)
    status, _, body = server.request(
        'POST',
        prefix + '/api/contacts',
        body=b'{"first_name": "Confidential"}',
        headers={'Authorization': f'Bearer {token}', 'Content-Type': 'application/json'},
    )
    assert status == 201, body
    return json.loads(body)['id'], token


@pytest.mark.slow
@pytest.mark.parametrize('through', ['nginx', 'direct'])
def test_no_spelling_on_the_wire_answers_without_a_token(stack, database, through):
    """401, or 400/404 where the path is refused or unrouted with a valid token too."""
    nginx, app_server = stack
    server, prefix = (nginx, '/crm') if through == 'nginx' else (app_server, '')
    record_id, token = wire_record(server, prefix, database)
    for spelling in WIRE:
        for method in ('GET', 'POST', 'DELETE'):
            path = prefix + spelling.format(id=record_id)
            send = dict(body=b'{}' if method == 'POST' else None, headers={'Content-Type': 'application/json'})
            status, _, body = server.request(method, path, **send)
            assert record_id.encode() not in body and b'Confidential' not in body, (spelling, body[:200])
            if status != 401:
                send['headers']['Authorization'] = f'Bearer {token}'
                assert status in (400, 404) and server.request(method, path, **send)[0] == status, (
                    spelling,
                    method,
                    status,
                    body[:200],
                )
