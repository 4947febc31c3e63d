"""crmapi.create_app() mounted inside another WSGI application answers exactly as it does standalone.

The composite is real: werkzeug's DispatcherMiddleware routes `/crm` (and a deeper `/tenants/eu/crm`)
to the API, with a sibling application on everything else, driven through WebTest (which lints
every WSGI exchange). Runs on SQLite and PostgreSQL.
"""

import json
from typing import NamedTuple
from urllib.parse import urlencode

import pytest
import webtest
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from conftest import assert_problem
from conftest import new_org

MOUNTS = ('/crm', '/tenants/eu/crm')
REQUEST_ID = {'X-Request-ID': 'embedding-test'}


def sibling(environ, start_response):
    """The host application: says where it was called, so a misrouted request shows."""
    body = json.dumps(
        {'app': 'sibling', 'script_name': environ['SCRIPT_NAME'], 'path_info': environ['PATH_INFO']}
    ).encode()
    start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', str(len(body)))])
    return [body]


@pytest.fixture(scope='session')
def site(wsgi_app):
    return webtest.TestApp(DispatcherMiddleware(sibling, {mount: wsgi_app for mount in MOUNTS}))


@pytest.fixture
def standalone(database, wsgi_app):
    return new_org(database, wsgi_app)


@pytest.fixture
def token(standalone):
    return standalone.token


def exchange(app, method, path, token=None, body=None, content_type='application/json', headers=None, prefix=''):
    """One request; (status, headers without Location, body, Location with `prefix` removed)."""
    headers = {**REQUEST_ID, **({'Authorization': f'Bearer {token}'} if token else {}), **(headers or {})}
    params = dict(method=method, headers=headers)
    if body is not None:
        params.update(body=body, content_type=content_type)
    resp = app.request(prefix + path, status='*', **params)
    location = resp.headers.get('Location')
    if location is not None:
        assert location.startswith(prefix + '/api/'), location
        location = location[len(prefix) :]
    others = sorted((k, v) for k, v in resp.headerlist if k.lower() != 'location')
    return resp.status_int, others, resp.body, location


def seed(api):
    """Records to read back, made through the standalone app."""
    company = api.create('companies', name='Analytical Engines')
    rows = [
        api.create('contacts', first_name=first, last_name=last, status=status, city=city, company_id=company['id'])
        for first, last, status, city in [
            ('Ada', 'Lovelace', 'hot', 'London'),
            ('Grace', 'Hopper', 'cold', 'NYC'),
            ('Alan', 'Turing', 'hot', 'Manchester'),
            ('Mary', 'Somerville', 'warm', 'London'),
        ]
    ]
    return company, rows


class Call(NamedTuple):
    method: str
    path: str
    body: bytes = None
    authenticated: bool = True
    content_type: str = 'application/json'
    headers: dict = None

    def send(self, app, token, prefix=''):
        return exchange(
            app,
            self.method,
            self.path,
            token if self.authenticated else None,
            self.body,
            self.content_type,
            self.headers,
            prefix,
        )


def scenario(contact_id):
    """Reads of every shape and every kind of error a client can cause."""
    filters = json.dumps(
        [
            {'field': 'status', 'op': 'eq', 'value': 'hot', 'logicalOp': 'or'},
            {'field': 'city', 'op': 'eq', 'value': 'London'},
        ]
    )
    sorts = json.dumps([{'field': 'last_name', 'order': 'ASC'}])
    missing = 'c_00000000000000000000000000'
    return [
        Call('GET', '/api/contacts?' + urlencode({'filters': filters, 'sorts': sorts, 'range': '[0,1]'})),
        Call('GET', '/api/contacts?' + urlencode({'filters': filters, 'range': '[10,19]'})),
        Call('GET', '/api/contacts?' + urlencode({'filter': '{"q":"love"}'})),
        Call('GET', '/api/companies_summary'),
        Call('GET', f'/api/contacts/{contact_id}'),
        Call('GET', '/api/schema/contacts'),
        Call('GET', '/api/contactz'),
        Call('GET', f'/api/contacts/{missing}'),
        Call('GET', '/api/contacts?' + urlencode({'filters': '[{"field":"emial","op":"eq","value":"x"}]'})),
        Call('GET', '/api/contacts?range=[0'),
        Call('GET', '/api/contacts', authenticated=False),
        Call('POST', '/api/companies_summary', b'{}'),
        Call('POST', '/api/contacts', b'{"first_name": '),
        Call('POST', '/api/contacts', b'first_name=Ada', content_type='application/x-www-form-urlencoded'),
        Call('POST', '/api/contacts', b'{"first_name": 12}'),
        Call('PUT', f'/api/contacts/{missing}', b'{"first_name": "X"}'),
        Call(
            'OPTIONS',
            '/api/contacts',
            authenticated=False,
            headers={'Origin': 'https://admin.example', 'Access-Control-Request-Method': 'POST'},
        ),
    ]


@pytest.mark.parametrize('prefix', MOUNTS)
def test_mounted_answers_exactly_as_standalone(site, standalone, prefix):
    _, contacts = seed(standalone)
    statuses = set()
    for call in scenario(contacts[0]['id']):
        alone = call.send(standalone.app, standalone.token)
        assert call.send(site, standalone.token, prefix) == alone, call
        statuses.add(alone[0])
    assert {200, 400, 401, 404, 405, 415} <= statuses  # the comparison covered every kind of answer


@pytest.mark.parametrize('prefix', MOUNTS)
def test_list_with_filters_and_content_range_under_the_prefix(site, standalone, prefix):
    seed(standalone)
    filters = [
        {'field': 'status', 'op': 'eq', 'value': 'hot', 'logicalOp': 'or'},
        {'field': 'city', 'op': 'eq', 'value': 'London'},
    ]
    resp = site.get(
        f'{prefix}/api/contacts',
        {'filters': json.dumps(filters), 'sort': '["last_name","ASC"]', 'range': '[0,1]'},
        headers={'Authorization': f'Bearer {standalone.token}'},
    )
    assert resp.headers['Content-Range'] == 'contacts 0-1/3'
    assert [c['last_name'] for c in resp.json] == ['Lovelace', 'Somerville']


@pytest.mark.parametrize('prefix', MOUNTS)
def test_create_gives_a_location_under_the_prefix_that_reads_back(site, token, prefix):
    auth = {'Authorization': f'Bearer {token}'}
    resp = site.post_json(f'{prefix}/api/contacts', {'first_name': 'Ada'}, headers=auth, status=201)
    assert resp.headers['Location'] == f'{prefix}/api/contacts/{resp.json["id"]}'
    assert site.get(resp.headers['Location'], headers=auth).json == resp.json


def test_location_includes_the_host_applications_own_mount_point(wsgi_app, token):
    """The whole composite served under /outer (its SCRIPT_NAME): Locations carry both prefixes."""
    site = webtest.TestApp(DispatcherMiddleware(sibling, {'/crm': wsgi_app}), extra_environ={'SCRIPT_NAME': '/outer'})
    resp = site.post_json(
        '/crm/api/contacts', {'first_name': 'Ada'}, headers={'Authorization': f'Bearer {token}'}, status=201
    )
    assert resp.headers['Location'] == f'/outer/crm/api/contacts/{resp.json["id"]}'


def test_errors_under_the_prefix_are_problem_json(site, token):
    auth = {'Authorization': f'Bearer {token}'}
    assert_problem(site.get('/crm/api/contactz', headers=auth, status=404), 404)
    assert_problem(
        site.get(
            '/crm/api/contacts', {'filters': '[{"field":"emial","op":"eq","value":"x"}]'}, headers=auth, status=400
        ),
        400,
        param='filters',
        field='emial',
    )
    resp = site.get('/crm/api/contacts', status=401)
    assert_problem(resp, 401)
    assert resp.headers['WWW-Authenticate'].startswith('Bearer')
    assert_problem(
        site.post(
            '/crm/api/contacts', b'x' * (1024 * 1024 + 1), headers=auth, content_type='application/json', status=413
        ),
        413,
    )
    assert_problem(site.get('/crm', status=404), 404)


@pytest.mark.parametrize('path', ['/', '/api/contacts', '/crmx/api/contacts', '/tenants/eu', '/other/crm/api'])
def test_the_sibling_application_is_unaffected(site, path):
    resp = site.get(path, status=200)
    assert resp.json == {'app': 'sibling', 'script_name': '', 'path_info': path}
    assert 'Access-Control-Expose-Headers' not in resp.headers
