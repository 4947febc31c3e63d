"""Text no database of ours can store, and text no JSON encoder can write, on both databases.

- A lone UTF-16 surrogate (`\\ud800`) is valid JSON but not Unicode: it is refused with a 400, and
  wherever the client's text is echoed in a problem (a field name, a slug) it is written as its
  `\\ud800` escape, so every error body serialises.
- A NUL character (`\\u0000`) is refused with a 400 naming the field, in text and in JSON values, in
  their keys and at any depth: PostgreSQL refuses it (text and jsonb) while SQLite would store it.
"""

import json

import orjson
import pytest
from conftest import assert_problem

import servers
from crmapi.accounts import Accounts
from crmapi.errors import InvalidBody
from crmapi.errors import problem

SURROGATE_BYTES = '%ED%A0%80'  # the UTF-8-like spelling of U+D800 in a URL
SURROGATE_HEADER = '\xed\xa0\x80'  # the same bytes as a WSGI server hands over a header (latin-1)


def post_raw(client, path, raw, status='*', headers=None):
    return client.app.post(
        path, raw, headers={**client.headers, **(headers or {})}, content_type='application/json', status=status
    )


def get_raw(client, path, status='*', headers=None):
    return client.app.get(path, headers={**client.headers, **(headers or {})}, status=status)


def query(**params):
    return '&'.join(f'{k}={json.dumps(v) if not isinstance(v, str) else v}' for k, v in params.items())


# -- lone surrogates: every problem body serialises ------------------------------------------------


def test_a_problem_writes_lone_surrogates_as_escapes_in_every_member():
    body = problem(
        400, 'Bad \ud800', 'Field \udfff is odd', field='\ud800', param='ok', errors=[{'name\udc00': 'x\ud800y'}]
    )
    assert orjson.loads(orjson.dumps(body)) == {
        'type': 'about:blank',
        'title': 'Bad \\ud800',
        'status': 400,
        'detail': 'Field \\udfff is odd',
        'message': 'Field \\udfff is odd',
        'field': '\\ud800',
        'param': 'ok',
        'errors': [{'name\\udc00': 'x\\ud800y'}],
    }


def test_an_error_naming_a_lone_surrogate_still_renders():
    assert orjson.dumps(InvalidBody('bad', field='\ud800').to_problem())


@pytest.mark.parametrize(
    ('method', 'path'),
    [
        ('POST', '/api/contacts'),
        ('PUT', '/api/contacts/{id}'),
        ('POST', '/api/merge_contacts'),
        ('POST', '/api/custom_objects'),
    ],
)
def test_a_lone_surrogate_as_a_body_key_is_a_400_naming_it_escaped(api, method, path):
    contact = api.create('contacts', last_name='Kept')
    resp = api.app.request(
        path.format(id=contact['id']),
        method=method,
        body=b'{"\\ud800": "a"}',
        headers=api.headers,
        content_type='application/json',
        expect_errors=True,
    )
    body = assert_problem(resp, 400, field='\\ud800')
    assert 'surrogate' in body['detail']
    assert api.list('contacts') == [contact]


def test_a_lone_surrogate_as_a_nested_key_is_a_400_naming_the_field(api):
    resp = post_raw(api, '/api/configuration', b'{"key": "k", "value": {"ok": {"\\udc00x": 1}}}')
    assert_problem(resp, 400, field='value')
    assert api.list('configuration') == []


@pytest.mark.parametrize(
    ('path', 'status', 'members'),
    [
        (f'/api/contacts?{SURROGATE_BYTES}=1', 400, {}),  # query parameter name
        (f'/api/contacts?filter={{"{SURROGATE_BYTES}":1}}', 400, {'field': '\ufffd' * 3}),  # raw bytes: replaced
        ('/api/contacts?' + query(filter='{"\\ud800":1}'), 400, {'param': 'filter'}),  # filter field name
        ('/api/contacts?' + query(filters='[{"field":"\\ud800","op":"eq","value":1}]'), 400, {'param': 'filters'}),
        ('/api/contacts?' + query(sort='["\\ud800","ASC"]'), 400, {'param': 'sort'}),
        (f'/api/contacts?sort={SURROGATE_BYTES}', 400, {'param': 'sort'}),
        (f'/api/{SURROGATE_BYTES}', 404, {'param': 'resource'}),  # resource slug
        (f'/api/{SURROGATE_BYTES}/x_1', 404, {'param': 'resource'}),
        (f'/api/contacts/{SURROGATE_BYTES}', 404, {'param': 'id'}),  # record id
        (f'/api/custom_objects/{SURROGATE_BYTES}', 404, {}),  # custom object slug
        (f'/api/schema/{SURROGATE_BYTES}', 404, {}),
    ],
)
def test_a_lone_surrogate_anywhere_in_a_url_is_a_json_problem(api, path, status, members):
    assert_problem(get_raw(api, path), status, **members)


@pytest.mark.parametrize(
    ('method', 'path', 'header'),
    [
        ('POST', '/api/tags', 'Idempotency-Key'),
        ('GET', '/api/contacts', 'Prefer'),
        ('GET', '/api/contacts', 'Range'),
    ],
)
def test_a_lone_surrogate_in_a_header_is_a_400_problem(api, method, path, header):
    value = f'count={SURROGATE_HEADER}' if header == 'Prefer' else SURROGATE_HEADER
    resp = api.app.request(
        path,
        method=method,
        body=b'{"name": "x"}' if method == 'POST' else None,
        headers={**api.headers, header: value},
        content_type='application/json',
        expect_errors=True,
    )
    assert_problem(resp, 400, param=header)
    assert api.list('tags') == []


# -- NUL: refused on both databases, wherever it hides in JSON -----------------------------------

NUL_VALUES = [
    'a\x00b',
    {'a': 'b\x00'},
    {'a\x00': 'b'},
    ['x', 'y\x00'],
    {'deep': [[{'er': [{'still\x00': 1}]}]]},
    {'deep': [[{'er': [{'still': ['\x00']}]}]]},
]


@pytest.mark.parametrize('value', NUL_VALUES)
@pytest.mark.parametrize(
    ('resource', 'fields', 'field'),
    [
        ('configuration', {'key': 'theme'}, 'value'),
        ('automation_rules', {'name': 'Welcome'}, 'conditions'),
        ('automation_rules', {'name': 'Welcome'}, 'actions'),
    ],
)
def test_a_nul_in_a_json_value_or_key_at_any_depth_is_400_naming_the_field(api, resource, fields, field, value):
    resp = api.post(f'/api/{resource}', {**fields, field: value}, status=400)
    body = assert_problem(resp, 400, field=field)
    assert 'NUL' in body['detail']
    assert api.list(resource) == []


def test_a_nul_in_a_json_value_on_update_is_400_and_changes_nothing(api):
    setting = api.create('configuration', key='theme', value={'colour': 'blue'})
    resp = api.put(f'/api/configuration/{setting["id"]}', {'value': {'colour': 'bl\x00ue'}}, status=400)
    assert_problem(resp, 400, field='value')
    assert api.get(f'/api/configuration/{setting["id"]}').json == setting


def test_a_nul_in_a_custom_json_field_is_400_naming_it(api):
    api.post('/api/custom_objects', {'slug': 'gadgets', 'fields': [{'name': 'specs', 'type': 'json'}]})
    assert_problem(api.post('/api/gadgets', {'specs': {'k\x00': 1}}, status=400), 400, field='specs')
    assert api.create('gadgets', specs={'k': 'fine'})['specs'] == {'k': 'fine'}


def test_json_without_nul_is_stored_and_read_back_alike(api):
    value = {'unicode': 'é😀', 'escaped': '\\u0000 is just text here', 'list': [1, 'two', None]}
    assert api.create('configuration', key='theme', value=value)['value'] == value


@pytest.mark.parametrize(
    ('param', 'value', 'members'),
    [
        ('filter', {'ci\x00ty': 'Paris'}, {'field': 'ci\x00ty'}),
        ('filter', {'city': ['Paris', 'Ly\x00on']}, {'field': 'city'}),
        ('filter', {'tags': ['tag_\x00']}, {'field': 'tags'}),
        ('filters', [{'field': 'ci\x00ty', 'op': 'eq', 'value': 'x'}], {'field': 'ci\x00ty'}),
        ('filters', [{'field': 'city', 'op': 'e\x00q', 'value': 'x'}], {'field': 'city'}),
        ('filters', [{'field': 'city', 'op': 'in', 'value': ['x\x00']}], {'field': 'city'}),
        ('filters', [{'field': 'city', 'op': 'eq', 'value': 'x', 'logicalOp': 'o\x00r'}], {}),
        ('filters', [{'field': 'background', 'op': 'ends_with', 'value': '\x00'}], {'field': 'background'}),
    ],
)
def test_a_nul_in_a_filter_is_400(api, param, value, members):
    api.create('contacts', last_name='Kept', city='Paris')
    assert_problem(api.get('/api/contacts', {param: value}, status=400), 400, param=param, **members)


# -- through the app server (gunicorn, granian): its own 500 never shows -----------------------------


@pytest.mark.slow
@pytest.mark.parametrize('name', servers.SERVERS)
def test_through_the_server_unencodable_and_unstorable_text_is_a_json_400(backend, database, tmp_path, name):
    url = f'sqlite:///{database.path}' if backend == 'sqlite' else database.url
    accounts = Accounts(database)
    token = accounts.create_token(accounts.create_org('Served'), 'ops@example.com', admin=True)
    headers = {'Authorization': f'Bearer {token}', 'Content-Type': 'application/json'}
    env = {'CRMAPI_DATABASE_URL': url, 'CRMAPI_WORKERS': '1'}
    with servers.start_server(tmp_path / name, name, env=env) as server:
        answers = [
            server.request('POST', '/api/contacts', body=b'{"\\ud800": "a"}', headers=headers),
            server.request(
                'POST', '/api/configuration', body=b'{"key": "k", "value": {"a": "\\u0000"}}', headers=headers
            ),
            server.request('GET', f'/api/{SURROGATE_BYTES}', headers=headers),
            server.request(
                'POST', '/api/tags', body=b'{"name": "x"}', headers={**headers, 'Idempotency-Key': SURROGATE_HEADER}
            ),
        ]
        log = server.log_text()
    assert [status for status, _, _ in answers] == [400, 400, 404, 400]
    for status, resp_headers, raw in answers:
        assert resp_headers['content-type'] == 'application/problem+json', raw
        assert json.loads(raw)['status'] == status
    assert json.loads(answers[0][2])['field'] == '\\ud800'
    assert json.loads(answers[1][2])['field'] == 'value'
    assert 'Traceback' not in log, log
