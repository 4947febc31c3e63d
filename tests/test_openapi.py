"""The OpenAPI document is valid 3.1, generated from the live schema, and scoped to the caller."""
import re

import pytest
from openapi_spec_validator import validate

from conftest import assert_problem
from crmapi.schema import BUILTIN

KIND_TYPES = {'text': 'string', 'integer': 'integer', 'number': 'number', 'boolean': 'boolean',
              'date': 'string', 'timestamp': 'string', 'array': 'array'}
KIND_FORMATS = {'date': 'date', 'timestamp': 'date-time'}
PROJECT = {'slug': 'projects', 'label': 'Projects', 'fields': [
    {'name': 'title', 'type': 'text', 'required': True}, {'name': 'budget', 'type': 'number'},
    {'name': 'starts_on', 'type': 'date'}, {'name': 'seen_at', 'type': 'datetime'},
    {'name': 'active', 'type': 'boolean'}, {'name': 'seats', 'type': 'integer'},
    {'name': 'extra', 'type': 'json'}, {'name': 'company_id', 'type': 'reference', 'target': 'companies'},
]}


def document(client):
    resp = client.get('/api/openapi.json')
    assert resp.content_type == 'application/json'
    return resp.json


def component(doc, ref):
    return doc['components']['schemas'][ref['$ref'].rsplit('/', 1)[1]]


def types_of(schema):
    t = schema.get('type')
    return set(t) if isinstance(t, list) else {t}


def test_anonymous_document_is_valid_openapi_3_1(anonymous):
    doc = document(anonymous)
    assert doc['openapi'].startswith('3.1')
    validate(doc)


def test_document_with_a_token_is_valid_and_has_the_custom_objects(api):
    api.post('/api/custom_objects', PROJECT)
    doc = document(api)
    validate(doc)
    assert {'/api/projects', '/api/projects/{id}', '/api/projects/{id}/restore'} <= set(doc['paths'])
    assert 'projects' in {t['name'] for t in doc['tags']}


def test_custom_objects_appear_only_for_their_own_organization(api, other_api, anonymous):
    api.post('/api/custom_objects', PROJECT)
    assert '/api/projects' in document(api)['paths']
    assert '/api/projects' not in document(other_api)['paths']
    assert '/api/projects' not in document(anonymous)['paths']
    assert 'projects' not in document(other_api)['components']['schemas']


def test_archived_custom_objects_leave_the_document(api):
    api.post('/api/custom_objects', PROJECT)
    api.delete('/api/custom_objects/projects')
    assert '/api/projects' not in document(api)['paths']


@pytest.mark.parametrize('slug', sorted(BUILTIN))
def test_every_builtin_resource_and_its_operations_are_listed(anonymous, slug):
    spec, paths = BUILTIN[slug], document(anonymous)['paths']
    collection, item, restore = f'/api/{slug}', f'/api/{slug}/{{id}}', f'/api/{slug}/{{id}}/restore'
    if spec.read_only:
        assert set(paths[collection]) == {'get', 'head'}
        assert set(paths[item]) - {'parameters'} == {'get', 'head'}
        assert restore not in paths
        return
    assert set(paths[collection]) == {'get', 'head', 'post', 'patch', 'delete'}
    assert set(paths[item]) - {'parameters'} == {'get', 'head', 'put', 'patch', 'delete'}
    assert (restore in paths) == (spec.delete in ('archive', 'disable'))
    assert 'Location' in paths[collection]['post']['responses']['201']['headers'], 'a batch has none'
    if spec.admin_writes:
        assert '403' in paths[collection]['post']['responses']


def test_the_other_routes_are_listed(anonymous):
    paths = document(anonymous)['paths']
    assert set(paths['/api/merge_contacts']) == {'post'}
    assert {'/api/schema', '/api/schema/{table}', '/api/custom_objects', '/api/custom_objects/{slug}',
            '/api/custom_objects/{slug}/restore', '/api/custom_objects/{slug}/fields/{name}',
            '/api/openapi.json', '/api/docs'} <= set(paths)
    assert set(paths['/api/custom_objects/{slug}']) - {'parameters'} == {'get', 'put', 'delete'}


def test_list_operations_document_the_query_language_and_content_range(anonymous):
    op = document(anonymous)['paths']['/api/contacts']['get']
    params = {p['name']: p for p in op['parameters']}
    assert set(params) == {'range', 'filter', 'filters', 'sort', 'order', 'sorts', 'Range', 'embed', 'embed_limit'}
    assert params['Range']['in'] == 'header'
    assert re.match(params['Range']['schema']['pattern'], 'contacts=0-24')
    for name in ('range', 'filter', 'filters', 'sorts'):
        assert params[name]['in'] == 'query'
        assert 'application/json' in params[name]['content'], name
    filters = params['filters']['content']['application/json']['schema']['items']['properties']
    assert filters['op']['enum'][:2] == ['eq', 'neq'] and 'is_not_empty' in filters['op']['enum']
    assert 'email' in filters['field']['enum'] and 'organization_id' not in filters['field']['enum']
    header = op['responses']['200']['headers']['Content-Range']
    assert re.match(header['schema']['pattern'], 'contacts 0-24/142')
    assert re.match(header['schema']['pattern'], 'contacts */0')


def test_every_error_answer_is_problem_json(anonymous):
    doc = document(anonymous)
    problem = doc['components']['schemas']['Problem']
    assert set(problem['properties']) == {'type', 'title', 'status', 'detail', 'message', 'param', 'field', 'index',
                                          'errors', 'limit'}
    for path, item in doc['paths'].items():
        for method, op in item.items():
            if method == 'parameters':
                continue
            for code, response in op['responses'].items():
                if int(code) >= 400 and method != 'head':    # a HEAD answer has no body
                    assert list(response['content']) == ['application/problem+json'], (path, method, code)
            if path not in ('/api/docs', '/api/openapi.json', '/health'):
                assert '401' in op['responses'], (path, method)
            if 'requestBody' in op:
                assert {'400', '413', '415'} <= set(op['responses']), (path, method)


def test_body_schemas_match_the_writable_fields_of_api_schema(api):
    api.post('/api/custom_objects', PROJECT)
    doc = document(api)
    schemas = doc['components']['schemas']
    checked = 0
    for entry in api.get('/api/schema').json:
        slug = entry['resource']
        columns = api.get(f'/api/schema/{slug}').json['columns']
        record = schemas[slug]
        assert set(record['properties']) == {c['name'] for c in columns}, slug
        if entry['read_only']:
            assert f'{slug}_create' not in schemas
            continue
        writable = {c['name']: c for c in columns if c['writable']}
        for suffix in ('create', 'update'):
            body = schemas[f'{slug}_{suffix}']
            assert set(body['properties']) == set(writable), (slug, suffix)
            assert 'additionalProperties' not in body, 'camelCase twins and read-only fields are accepted'
            for name, column in writable.items():
                prop = body['properties'][name]
                if column['kind'] != 'json':
                    assert KIND_TYPES[column['kind']] in types_of(prop), (slug, name)
                    assert ('null' in types_of(prop)) == column['nullable'], (slug, name)
                assert prop.get('format') == KIND_FORMATS.get(column['kind']), (slug, name)
        required = {n for n, c in writable.items() if c['required']}
        assert set(schemas[f'{slug}_create'].get('required', [])) == required, slug
        assert 'required' not in schemas[f'{slug}_update'], 'a PUT is a partial update'
        checked += 1
    assert checked >= 10
    assert schemas['projects_create']['required'] == ['title']
    assert schemas['deals_create']['required'] == ['name']
    assert schemas['deals']['properties']['amount']['type'] == ['number', 'null']


def test_request_bodies_point_at_the_body_schemas(anonymous):
    paths = document(anonymous)['paths']
    post = paths['/api/companies']['post']['requestBody']['content']['application/json']['schema']
    put = paths['/api/companies/{id}']['put']['requestBody']['content']['application/json']['schema']
    assert post['anyOf'][0] == post['anyOf'][1]['items'] == {'$ref': '#/components/schemas/companies_create'}
    assert put == {'$ref': '#/components/schemas/companies_update'}


def test_a_created_record_matches_its_documented_schema(api):
    """The record schema is what the API really answers (formats, nullability, every column)."""
    from jsonschema import Draft202012Validator
    doc = document(api)
    company = api.create('companies', name='Initech', size=3)
    deal = api.create('deals', name='X', company_id=company['id'], amount=1.5, expected_closing_date='2026-01-02')
    for slug, record in (('companies', company), ('deals', deal)):
        schema = {**doc['components']['schemas'][slug], 'components': doc['components']}
        Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(record)


def test_document_follows_the_mount_point(wsgi_app):
    import webtest
    app = webtest.TestApp(wsgi_app, extra_environ={'SCRIPT_NAME': '/crm'})
    doc = app.get('/crm/api/openapi.json').json
    assert doc['servers'] == [{'url': '/crm'}]


def test_an_invalid_token_is_401_even_for_the_document(anonymous):
    resp = anonymous.get('/api/openapi.json', headers={'Authorization': 'Bearer nope'}, status=401)
    assert_problem(resp, 401)


def test_docs_page_is_served_without_a_token(anonymous):
    resp = anonymous.get('/api/docs')
    assert resp.content_type == 'text/html'
    assert '<title>' in resp.text


def test_docs_page_fetches_nothing_from_the_internet(anonymous):
    page = anonymous.get('/api/docs').text
    assert not re.search(r'https?://|//[a-z0-9.-]+\.[a-z]{2,}/', page, re.I), 'no external URL'
    assert not re.search(r'<(script|img|iframe)[^>]*\ssrc=|<link[^>]*\shref=|@import', page, re.I)
    # Relative to the page, so the app may be mounted under a prefix.
    assert "new URL('openapi.json', window.location.href)" in page
    assert "'Bearer ' + token" in page
