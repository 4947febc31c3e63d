"""Every error is an RFC 9457 problem: application/problem+json, type/title/status/detail, message == detail.

The table below is the catalogue of error cases: each row is one request and the answer it must get.
"""

import json

import pytest
from conftest import assert_problem

LEAKS = (
    'Traceback',
    'File "',
    'sqlite',
    'psycopg',
    'SELECT',
    'INSERT',
    'UPDATE ',
    'DELETE FROM',
    'IntegrityError',
    'constraint',
    'organization_id',
)
MIB = 1024 * 1024


def send(client, method, path, raw=None, content_type='application/json', headers=None):
    """A request with a raw (bytes) body; `None` sends no body at all."""
    all_headers = client._headers(headers)
    if raw is None:
        return client.app.request(path, method=method, headers=all_headers, expect_errors=True)
    return client.app.request(
        path, method=method, body=raw, content_type=content_type, headers=all_headers, expect_errors=True
    )


def assert_clean_problem(resp, status, **members):
    """The problem shape, plus: no traceback, SQL or driver name anywhere in the answer."""
    body = assert_problem(resp, status, **members)
    assert body['type'] and isinstance(body['type'], str)
    assert body['title'] and isinstance(body['title'], str)
    assert isinstance(body['detail'], str) and body['detail']
    for word in LEAKS:
        assert word not in resp.text, (word, resp.text)
    return body


# (method, path, raw body, content type, status, members the problem must carry)
CASES = {
    'unknown-resource': ('GET', '/api/no_such_thing', None, None, 404, {'param': 'resource'}),
    'unknown-resource-post': ('POST', '/api/no_such_thing', b'{}', 'application/json', 404, {'param': 'resource'}),
    'unknown-resource-item': ('GET', '/api/no_such_thing/x_1', None, None, 404, {'param': 'resource'}),
    'unknown-schema-table': ('GET', '/api/schema/no_such_thing', None, None, 404, {}),
    'unknown-record': ('GET', '/api/contacts/c_doesnotexist', None, None, 404, {'param': 'id'}),
    'unknown-record-put': (
        'PUT',
        '/api/contacts/c_doesnotexist',
        b'{"first_name":"x"}',
        'application/json',
        404,
        {'param': 'id'},
    ),
    'unknown-record-delete': ('DELETE', '/api/tags/tag_doesnotexist', None, None, 404, {'param': 'id'}),
    'unknown-record-restore': ('POST', '/api/deals/d_doesnotexist/restore', None, None, 404, {'param': 'id'}),
    'unrouted-path': ('GET', '/api/contacts/x/y/z', None, None, 404, {}),
    'unrouted-path-post': ('POST', '/api/contacts/x/restore/y', b'{}', 'application/json', 404, {}),
    'unrouted-root': ('GET', '/nowhere', None, None, 404, {}),
    'merge-get': ('GET', '/api/merge_contacts', None, None, 405, {}),
    'post-item': ('POST', '/api/contacts/c_1', b'{"first_name":"x"}', 'application/json', 405, {}),
    'patch-list-object': ('PATCH', '/api/contacts', b'{}', 'application/json', 400, {}),
    'delete-list-without-ids': ('DELETE', '/api/contacts', None, None, 400, {'param': 'filter'}),
    'read-only-view-post': ('POST', '/api/contacts_summary', b'{}', 'application/json', 405, {}),
    'restore-hard-delete': ('POST', '/api/tags/tag_1/restore', None, None, 405, {}),
    'malformed-json': ('POST', '/api/contacts', b'{"first_name": ', 'application/json', 400, {}),
    'not-utf8': ('POST', '/api/contacts', b'{"first_name": "\xff\xfe"}', 'application/json', 400, {}),
    'empty-body': ('POST', '/api/contacts', b'', 'application/json', 400, {}),
    'array-body-bad-item': ('POST', '/api/contacts', b'[{"first_name": 1}]', 'application/json', 400, {'index': 0}),
    'string-body': ('POST', '/api/contacts', b'"x"', 'application/json', 400, {}),
    'null-body': ('POST', '/api/contacts', b'null', 'application/json', 400, {}),
    'nan': ('POST', '/api/deals', b'{"name": "d", "amount": NaN}', 'application/json', 400, {}),
    'infinity': ('POST', '/api/deals', b'{"name": "d", "amount": Infinity}', 'application/json', 400, {}),
    'minus-infinity': ('POST', '/api/deals', b'{"name": "d", "amount": -Infinity}', 'application/json', 400, {}),
    'huge-float': ('POST', '/api/deals', b'{"name": "d", "amount": 1e400}', 'application/json', 400, {}),
    'duplicate-keys': ('POST', '/api/contacts', b'{"first_name": "a", "first_name": "b"}', 'application/json', 400, {}),
    'nested-duplicate-keys': (
        'POST',
        '/api/configuration',
        b'{"key": "k", "value": {"a": 1, "a": 2}}',
        'application/json',
        400,
        {},
    ),
    'array-put': ('PUT', '/api/contacts/c_1', b'[]', 'application/json', 400, {}),
    'merge-array': ('POST', '/api/merge_contacts', b'[]', 'application/json', 400, {}),
    'merge-malformed': ('POST', '/api/merge_contacts', b'{', 'application/json', 400, {}),
    'text-plain': ('POST', '/api/contacts', b'{"first_name": "x"}', 'text/plain', 415, {}),
    'form': ('POST', '/api/contacts', b'first_name=x', 'application/x-www-form-urlencoded', 415, {}),
    'xml-put': ('PUT', '/api/contacts/c_1', b'<contact/>', 'application/xml', 415, {}),
    'merge-text': ('POST', '/api/merge_contacts', b'{}', 'text/plain', 415, {}),
    'wrong-field-type': (
        'POST',
        '/api/companies',
        b'{"name": "c", "size": "big"}',
        'application/json',
        400,
        {'field': 'size'},
    ),
    'missing-required': (
        'POST',
        '/api/companies',
        b'{"domain": "x.example"}',
        'application/json',
        400,
        {'field': 'name'},
    ),
    'bad-reference': (
        'POST',
        '/api/contacts',
        b'{"company_id": "comp_nope"}',
        'application/json',
        400,
        {'field': 'company_id'},
    ),
    'merge-no-target': (
        'POST',
        '/api/merge_contacts',
        b'{"source_ids": ["c_1"]}',
        'application/json',
        400,
        {'field': 'target_id'},
    ),
    'merge-empty-sources': (
        'POST',
        '/api/merge_contacts',
        b'{"source_ids": [], "target_id": "c_1"}',
        'application/json',
        400,
        {'field': 'source_ids'},
    ),
    'bad-range': ('GET', '/api/contacts?range=[5,1]', None, None, 400, {'param': 'range'}),
    'range-not-json': ('GET', '/api/contacts?range=[0,', None, None, 400, {'param': 'range'}),
    'page-too-big': ('GET', '/api/contacts?range=[0,5000]', None, None, 400, {'param': 'range'}),
    'unknown-param': ('GET', '/api/contacts?colour=red', None, None, 400, {'param': 'colour'}),
    'unknown-filter-field': (
        'GET',
        '/api/contacts?filter={"emial":"x"}',
        None,
        None,
        400,
        {'param': 'filter', 'field': 'emial'},
    ),
    'unknown-operator': (
        'GET',
        '/api/contacts?filters=[{"field":"city","op":"regex","value":"x"}]',
        None,
        None,
        400,
        {'param': 'filters'},
    ),
    'unknown-sort': ('GET', '/api/contacts?sort=emial', None, None, 400, {'param': 'sort', 'field': 'emial'}),
    'bad-order': ('GET', '/api/contacts?sort=city&order=UP', None, None, 400, {'param': 'order'}),
    'text-vs-number': ('GET', '/api/companies?filter={"size":"ten"}', None, None, 400, {'param': 'filter'}),
    'nan-in-query': ('GET', '/api/companies?filter={"size":NaN}', None, None, 400, {'param': 'filter'}),
    'duplicate-param': ('GET', '/api/contacts?sort=city&sort=email', None, None, 400, {'param': 'sort'}),
}


@pytest.mark.parametrize('case', CASES)
def test_every_error_is_a_problem(api, case):
    method, path, raw, content_type, status, members = CASES[case]
    assert_clean_problem(send(api, method, path, raw, content_type), status, **members)


@pytest.mark.parametrize(
    ('method', 'path', 'allowed', 'refused'),
    [
        ('GET', '/api/merge_contacts', {'POST'}, {'GET', 'PUT', 'DELETE'}),
        ('POST', '/api/contacts/c_1', {'GET', 'HEAD', 'PUT', 'PATCH', 'DELETE'}, {'POST'}),
        ('PATCH', '/api/merge_contacts', {'POST'}, {'PATCH'}),
        ('PUT', '/api/contacts/c_1/restore', {'POST'}, {'PUT'}),
    ],
)
def test_a_wrong_method_is_405_with_an_allow_header(api, method, path, allowed, refused):
    resp = send(api, method, path, b'{}' if method in ('PATCH', 'PUT') else None)
    assert_clean_problem(resp, 405)
    allow = {m.strip() for m in resp.headers['Allow'].split(',')}
    assert allowed <= allow and not refused & allow, allow


@pytest.mark.parametrize('method', ['POST', 'PUT', 'DELETE'])
@pytest.mark.parametrize('resource', ['companies_summary', 'contacts_summary'])
def test_writes_to_a_read_only_view_are_405_allowing_get(api, resource, method):
    path = f'/api/{resource}' if method == 'POST' else f'/api/{resource}/comp_1'
    resp = send(api, method, path, b'{}' if method != 'DELETE' else None)
    assert_clean_problem(resp, 405)
    assert 'GET' in resp.headers['Allow'] and method not in resp.headers['Allow']


def test_an_unknown_record_looks_like_falcons_own_404(api):
    ours = assert_clean_problem(send(api, 'GET', '/api/contacts/c_doesnotexist'), 404)
    falcons = assert_clean_problem(send(api, 'GET', '/api/contacts/x/y/z'), 404)
    assert set(ours) >= set(falcons) >= {'type', 'title', 'status', 'detail', 'message'}


def test_an_unknown_record_names_the_id(api):
    body = assert_clean_problem(send(api, 'GET', '/api/contacts/c_doesnotexist'), 404, param='id')
    assert 'c_doesnotexist' in body['detail']


def test_an_unknown_resource_names_it(api):
    body = assert_clean_problem(send(api, 'GET', '/api/widgets'), 404, param='resource')
    assert 'widgets' in body['detail']


# -- body size -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('method', 'path'), [('POST', '/api/contacts'), ('PUT', '/api/contacts/c_1'), ('POST', '/api/merge_contacts')]
)
def test_a_body_over_one_mib_is_413(api, method, path):
    raw = json.dumps({'first_name': 'x', 'background': 'y' * MIB}).encode()
    resp = send(api, method, path, raw)
    assert_clean_problem(resp, 413)
    assert api.list('contacts') == []


def test_a_body_just_under_one_mib_is_accepted(api):
    padding = MIB - len(json.dumps({'first_name': 'x', 'background': ''})) - 1
    raw = json.dumps({'first_name': 'x', 'background': 'y' * padding}).encode()
    assert len(raw) < MIB
    resp = send(api, 'POST', '/api/contacts', raw)
    assert resp.status_int == 201
    assert len(resp.json['background']) == padding


def test_content_type_with_a_charset_is_accepted(api):
    resp = send(api, 'POST', '/api/contacts', b'{"first_name": "x"}', 'application/json; charset=utf-8')
    assert resp.status_int == 201


# -- errors the database would raise ---------------------------------------------------------------


@pytest.mark.parametrize(
    ('resource', 'body'),
    [
        ('tags', {'name': 'vip'}),
        ('configuration', {'key': 'theme', 'value': 1}),
        ('crm_users', {'email': 'dup@example.com'}),
    ],
)
def test_a_duplicate_unique_value_is_409_without_driver_text(api, resource, body):
    api.create(resource, **body)
    resp = api.post(f'/api/{resource}', body, status=409)
    assert_clean_problem(resp, 409)
    assert 'UNIQUE' not in resp.text and 'duplicate key' not in resp.text


@pytest.mark.parametrize(
    ('params', 'param'),
    [
        ({'filter': {'size': 2**70}}, 'filter'),
        ({'filters': [{'field': 'created_at', 'op': 'gt', 'value': 'yesterday'}]}, 'filters'),
        ({'filters': [{'field': 'size', 'op': 'gt', 'value': '10'}]}, 'filters'),
        ({'filter': {'name': 'a\x00b'}}, 'filter'),
        ({'range': [2**62, 2**62 + 1]}, 'range'),
    ],
)
def test_what_one_database_would_reject_is_a_400_on_both(api, params, param):
    assert_clean_problem(api.get('/api/companies', params, status='*'), 400, param=param)


def test_a_validation_error_has_the_documented_shape(api):
    """`type` is about:blank (no problem-type URIs are defined) and `status` repeats the HTTP status."""
    resp = api.post('/api/companies', {'name': 'c', 'size': 'big'}, status=400)
    body = assert_clean_problem(resp, 400, field='size')
    assert body['type'] == 'about:blank'
    assert body['status'] == 400


def test_errors_carry_cors_headers(api):
    resp = send(api, 'GET', '/api/no_such_thing', headers={'Origin': 'https://crm.example.com'})
    assert_clean_problem(resp, 404)
    assert 'Content-Range' in resp.headers['Access-Control-Expose-Headers']


# -- hostile JSON shapes ---------------------------------------------------------------------------


def nested(depth, leaf='x'):
    """`depth` arrays, one inside the other, as JSON text."""
    return '[' * depth + json.dumps(leaf) + ']' * depth


@pytest.mark.parametrize(
    ('method', 'path', 'raw'),
    [
        ('POST', '/api/contacts', f'{{"first_name": {nested(100_000)}}}'),
        ('POST', '/api/configuration', f'{{"key": "deep", "value": {nested(100_000)}}}'),
        ('PUT', '/api/contacts/c_1', nested(100_000)),
        ('POST', '/api/merge_contacts', f'{{"source_ids": {nested(100_000)}, "target_id": "c_1"}}'),
    ],
    ids=['field', 'json-column', 'put-body', 'merge'],
)
def test_a_body_nested_too_deep_to_parse_is_400(api, method, path, raw):
    assert_clean_problem(send(api, method, path, raw.encode()), 400)


@pytest.mark.parametrize('param', ['filter', 'filters', 'sorts', 'range', 'sort'])
def test_a_query_parameter_nested_too_deep_to_parse_is_400(api, param):
    raw = '[' * 100_000 + ']' * 100_000
    assert_clean_problem(api.get('/api/contacts', {param: raw}, status='*'), 400, param=param)


@pytest.mark.parametrize('depth', [100, 300, 900])
def test_a_deep_json_value_is_refused_or_read_back_never_a_500(api, depth):
    """A value the API accepts must be one it can answer with: stored JSON must not poison later reads."""
    raw = json.dumps({'key': f'deep-{depth}', 'value': json.loads(nested(depth))}).encode()
    resp = send(api, 'POST', '/api/configuration', raw)
    if resp.status_int == 201:
        assert api.get(f'/api/configuration/{resp.json["id"]}').json['value'] == json.loads(nested(depth))
    else:
        assert_clean_problem(resp, 400, field='value')
    api.get('/api/configuration', status=200)
