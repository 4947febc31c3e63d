"""Authentication: a Bearer token on every /api request, stored only as a SHA-256 digest; CORS."""

import datetime as dt
import hashlib

import pytest
from conftest import Client
from conftest import assert_problem

from crmapi.accounts import Accounts

# Every route the API serves, with a method; ids need not exist: authentication comes first.
ROUTES = [
    ('GET', '/api/contacts'),
    ('POST', '/api/contacts'),
    ('GET', '/api/contacts/c_doesnotexist'),
    ('PUT', '/api/contacts/c_doesnotexist'),
    ('DELETE', '/api/contacts/c_doesnotexist'),
    ('POST', '/api/contacts/c_doesnotexist/restore'),
    ('POST', '/api/merge_contacts'),
    ('GET', '/api/schema'),
    ('GET', '/api/schema/contacts'),
    ('GET', '/api/companies_summary'),
    ('GET', '/api/no_such_resource'),
    ('GET', '/api/contacts/x/y/z'),
]
ROUTE_IDS = [f'{m} {p}' for m, p in ROUTES]


def call(client, method, path, headers=None, status='*'):
    """One request with `client`'s headers plus `headers`; writes send an empty JSON object."""
    all_headers = client._headers(headers)
    app = client.app
    if method == 'GET':
        return app.get(path, headers=all_headers, status=status)
    if method == 'DELETE':
        return app.delete(path, headers=all_headers, status=status)
    if method == 'OPTIONS':
        return app.options(path, headers=all_headers, status=status)
    send = {'POST': app.post_json, 'PUT': app.put_json}[method]
    return send(path, {}, headers=all_headers, status=status)


def assert_unauthorized(resp):
    body = assert_problem(resp, 401)
    assert resp.headers['WWW-Authenticate'].split()[0] == 'Bearer'
    return body


def with_auth(wsgi_app, value):
    """A client whose Authorization header is exactly `value`."""
    client = Client(wsgi_app, None)
    client.headers = {'Authorization': value}
    return client


def user_id(api, email):
    [user] = api.list('crm_users', filter={'email': email})
    return user['id']


def sql(database, text):
    """`?` placeholders in `text`, spelled as the database's driver wants them."""
    return text if database.name == 'sqlite' else text.replace('?', '%s')


# -- the header is required and must be a valid bearer token ---------------------------------------


@pytest.mark.parametrize(('method', 'path'), ROUTES, ids=ROUTE_IDS)
def test_every_api_route_without_authorization_is_401(anonymous, method, path):
    assert_unauthorized(call(anonymous, method, path))


@pytest.mark.parametrize(('method', 'path'), ROUTES, ids=ROUTE_IDS)
def test_every_api_route_with_an_unknown_token_is_401(wsgi_app, method, path):
    client = with_auth(wsgi_app, 'Bearer bos_crm_' + 'x' * 43)
    assert_unauthorized(call(client, method, path))


@pytest.mark.parametrize(
    'header',
    [
        '',
        'Bearer',
        'Bearer ',
        'Basic dXNlcjpwYXNz',
        'Token bos_crm_abc',
        'bos_crm_abc',
        'Bearer bos_crm_',
        'Bearer not_a_crm_token',
        'Bearer ' + 'bos_crm_' + 'a' * 500,
        "Bearer bos_crm_' OR '1'='1",
    ],
    ids=[
        'empty',
        'scheme-only',
        'scheme-and-space',
        'basic',
        'token-scheme',
        'no-scheme',
        'prefix-only',
        'no-prefix',
        'too-long',
        'injection',
    ],
)
def test_malformed_or_unknown_authorization_is_401(wsgi_app, header):
    assert_unauthorized(with_auth(wsgi_app, header).get('/api/contacts', status=401))


@pytest.mark.parametrize('scheme', ['Basic', 'Token', 'JWT'])
def test_a_valid_token_under_another_scheme_is_401(api, wsgi_app, scheme):
    assert_unauthorized(with_auth(wsgi_app, f'{scheme} {api.token}').get('/api/contacts', status=401))


def test_the_bearer_scheme_is_case_insensitive(api, wsgi_app):
    with_auth(wsgi_app, f'bearer {api.token}').get('/api/contacts', status=200)


def test_a_valid_token_answers_200(api):
    resp = api.get('/api/contacts')
    assert resp.json == []


def test_a_token_without_the_prefix_is_401_even_when_its_digest_is_stored(api, database, wsgi_app):
    secret = api.token[len('bos_crm_') :]
    with database.transaction(write=True) as tx:
        tx.execute(
            sql(database, 'UPDATE api_tokens SET token_hash = ? WHERE token_hash = ?'),
            (hashlib.sha256(secret.encode()).hexdigest(), hashlib.sha256(api.token.encode()).hexdigest()),
        )
    assert_unauthorized(with_auth(wsgi_app, f'Bearer {secret}').get('/api/contacts', status=401))


def test_a_token_with_one_character_changed_is_401(api, wsgi_app):
    tampered = api.token[:-1] + ('A' if api.token[-1] != 'A' else 'B')
    assert_unauthorized(with_auth(wsgi_app, f'Bearer {tampered}').get('/api/contacts', status=401))


# -- disabled users and expired tokens -------------------------------------------------------------


def test_a_disabled_users_token_is_401_and_works_again_once_restored(api, user_api):
    user_api.get('/api/contacts', status=200)
    uid = user_id(api, 'user@example.com')
    disabled = api.delete(f'/api/crm_users/{uid}').json
    assert disabled['disabled'] is True
    assert_unauthorized(user_api.get('/api/contacts', status=401))
    assert_unauthorized(user_api.get(f'/api/contacts/{uid}', status=401))
    api.post(f'/api/crm_users/{uid}/restore', status=200)
    user_api.get('/api/contacts', status=200)


def test_disabling_one_user_leaves_the_others_tokens_working(api, user_api):
    api.delete(f'/api/crm_users/{user_id(api, "user@example.com")}')
    api.get('/api/contacts', status=200)


@pytest.mark.parametrize('age', [dt.timedelta(seconds=1), dt.timedelta(days=400)], ids=['just-now', 'long-ago'])
def test_an_expired_token_is_401(api, database, wsgi_app, age):
    past = dt.datetime.now(dt.timezone.utc) - age
    token = Accounts(database).create_token(api.org_id, 'late@example.com', expires_at=past)
    assert_unauthorized(Client(wsgi_app, token).get('/api/contacts', status=401))


def test_a_token_expiring_in_the_future_works(api, database, wsgi_app):
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    token = Accounts(database).create_token(api.org_id, 'soon@example.com', expires_at=future)
    Client(wsgi_app, token).get('/api/contacts', status=200)


# -- never in the URL ------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['token', 'access_token'])
@pytest.mark.parametrize('with_header', [False, True], ids=['alone', 'with-valid-header'])
def test_a_token_in_the_query_string_is_400(api, anonymous, name, with_header):
    client = api if with_header else anonymous
    resp = client.get('/api/contacts', {name: api.token}, status=400)
    body = assert_problem(resp, 400)
    assert body.get('param') in (name, 'token')
    assert api.token not in resp.text


@pytest.mark.parametrize(
    ('method', 'path'),
    [('POST', '/api/contacts'), ('GET', '/api/contacts/c_x'), ('DELETE', '/api/contacts/c_x')],
    ids=['post', 'get-item', 'delete'],
)
def test_a_token_in_the_query_string_is_400_on_every_method(api, method, path):
    assert_problem(call(api, method, f'{path}?access_token={api.token}'), 400)


# -- storage ---------------------------------------------------------------------------------------


def test_only_the_sha256_of_a_token_is_stored(api, database):
    token = Accounts(database).create_token(api.org_id, 'stored@example.com')
    digest = hashlib.sha256(token.encode()).hexdigest()
    with database.transaction() as tx:
        rows = tx.rows('SELECT * FROM api_tokens')
        names = [c[0] for c in tx.cursor.description]
    mine = [dict(zip(names, row)) for row in rows if digest in map(str, row)]
    assert len(mine) == 1
    assert mine[0]['token_hash'] == digest
    secret = token[len('bos_crm_') :]
    for row in rows:
        for value in row:
            assert token not in str(value) and secret not in str(value)


def test_crm_users_never_show_token_material(api, user_api):
    resp = api.get('/api/crm_users')
    assert api.token not in resp.text and user_api.token not in resp.text
    for user in resp.json:
        assert not any('token' in key or 'hash' in key for key in user), user


def test_every_token_is_distinct(api, database):
    accounts = Accounts(database)
    tokens = {accounts.create_token(api.org_id, 'many@example.com') for _ in range(5)}
    assert len(tokens) == 5
    assert all(t.startswith('bos_crm_') for t in tokens)


# -- CORS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'path', ['/api/contacts', '/api/contacts/c_x', '/api/contacts/c_x/restore', '/api/merge_contacts']
)
def test_cors_preflight_needs_no_token(anonymous, path):
    resp = anonymous.app.options(
        path,
        headers={
            'Origin': 'https://crm.example.com',
            'Access-Control-Request-Method': 'PUT',
            'Access-Control-Request-Headers': 'Authorization, Content-Type',
        },
        status='*',
    )
    assert resp.status_int in (200, 204)
    assert resp.headers['Access-Control-Allow-Origin'] in ('*', 'https://crm.example.com')
    assert 'PUT' in resp.headers['Access-Control-Allow-Methods']
    assert 'authorization' in resp.headers['Access-Control-Allow-Headers'].lower()
    assert 'WWW-Authenticate' not in resp.headers


def exposed(resp):
    return {h.strip().lower() for h in resp.headers.get('Access-Control-Expose-Headers', '').split(',')}


@pytest.mark.parametrize(
    ('method', 'path', 'status'),
    [
        ('GET', '/api/contacts', 200),
        ('GET', '/api/contacts?range=[5,1]', 400),
        ('GET', '/api/no_such_resource', 404),
        ('GET', '/api/contacts/c_missing', 404),
        ('GET', '/api/merge_contacts', 405),
        ('POST', '/api/contacts_summary', 405),
    ],
    ids=['list', 'bad-param', 'unknown-resource', 'unknown-record', 'falcon-405', 'read-only-405'],
)
def test_content_range_is_exposed_on_answers_and_errors(api, method, path, status):
    resp = call(api, method, path, headers={'Origin': 'https://crm.example.com'})
    assert resp.status_int == status
    assert 'content-range' in exposed(resp)
    assert resp.headers.get('Access-Control-Allow-Origin') in ('*', 'https://crm.example.com')


def test_content_range_is_exposed_on_401(anonymous):
    resp = call(anonymous, 'GET', '/api/contacts', headers={'Origin': 'https://crm.example.com'})
    assert_unauthorized(resp)
    assert 'content-range' in exposed(resp)
