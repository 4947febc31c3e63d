"""The OpenAPI document is valid 3.1, generated from the live schema, and scoped to the caller."""
import configparser
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urljoin

import pytest
import webtest
from openapi_spec_validator import validate

import crmapi
from conftest import assert_problem
from crmapi.openapi import Docs
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
                                          'items', 'errors', 'limit'}
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


ASSET_REF = re.compile(r'<(?:script|link)\b[^>]*\s(?:src|href)="([^"]*)"', re.IGNORECASE)


def page_assets(page):
    """The URLs the page loads, as written in it (the icon is an empty data: URL)."""
    return [url for url in ASSET_REF.findall(page) if url != 'data:,']


def test_docs_page_fetches_nothing_from_the_internet(anonymous):
    page = anonymous.get('/api/docs').text
    assert not re.search(r'https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import', page, re.IGNORECASE), 'no external URL'
    # Relative to the page (`docs/assets/...` from /api/docs), so the app may be mounted under a prefix.
    assert {url.split('?')[0] for url in page_assets(page)} == {
        'docs/assets/swagger-ui.css', 'docs/assets/swagger-ui-bundle.js', 'docs/assets/docs.js'}


@pytest.mark.parametrize('mount, path', [('', '/api/docs'), ('', '/api/docs/'), ('/crm', '/api/docs'),
                                         ('/crm', '/api/docs/')])
def test_docs_assets_load_from_the_page_under_any_mount_point(wsgi_app, mount, path):
    app = webtest.TestApp(wsgi_app, extra_environ={'SCRIPT_NAME': mount})
    page_url = f'http://localhost{mount}{path}'
    for url in page_assets(app.get(page_url).text):
        resp = app.get(urljoin(page_url, url))
        assert resp.content_type in ('text/css', 'text/javascript'), url
        assert resp.headers['Cache-Control'] == 'public, max-age=31536000, immutable'
        assert resp.headers['X-Content-Type-Options'] == 'nosniff'


def test_docs_asset_urls_change_with_their_content(anonymous):
    """Each URL carries its file's digest, so a year of caching never serves a stale viewer."""
    for url in page_assets(anonymous.get('/api/docs').text):
        name, _, version = url.rpartition('/')[2].partition('?v=')
        assert version == hashlib.sha256(anonymous.get(f'/api/docs/assets/{name}').body).hexdigest()[:16]


def test_docs_page_allows_scripts_from_its_own_origin_only(anonymous):
    resp = anonymous.get('/api/docs')
    csp = dict(d.strip().split(' ', 1) for d in resp.headers['Content-Security-Policy'].split(';'))
    assert csp['default-src'] == "'none'" and csp['script-src'] == "'self'" and csp['connect-src'] == "'self'"
    assert 'unsafe' not in resp.headers['Content-Security-Policy']
    assert csp['frame-ancestors'] == "'none'"
    # No inline script, style or event handler: the CSP would block them.
    assert not re.search(r'<script(?![^>]*\ssrc=)[^>]*>|<style|\sstyle=|\son[a-z]+=', resp.text, re.IGNORECASE)
    assert resp.headers['Cache-Control'] == 'no-cache'


@pytest.mark.parametrize('name', ['nope.js', 'docs.html', 'LICENSE', 'swagger-ui.js', 'swagger-ui-bundle.js.map'])
def test_only_the_docs_pages_own_assets_are_served(anonymous, name):
    assert_problem(anonymous.get(f'/api/docs/assets/{name}', status=404), 404)


@pytest.mark.parametrize('path', ['..%2Fdocs.html', '..%2F..%2Fopenapi.py', '%2e%2e/swagger-ui/LICENSE'])
def test_no_path_reaches_another_file_of_the_package(anonymous, path):
    resp = anonymous.get(f'/api/docs/assets/{path}', status='*')
    assert resp.status_int in (401, 404) and resp.content_type == 'application/problem+json'


def test_the_vendored_viewer_is_shipped_in_the_package_with_its_license():
    """setup.cfg's package_data covers every asset and the viewer's license and version note."""
    config = configparser.ConfigParser()
    config.read(Path(__file__).parent.parent / 'setup.cfg')
    patterns = [p.strip() for p in config['options.package_data']['crmapi'].split(',')]
    shipped = [path for path, _ in Docs.ASSETS.values()] + [
        'docs.html', 'static/swagger-ui/LICENSE', 'static/swagger-ui/NOTICE', 'static/swagger-ui/VERSION',
        'static/swagger-ui/swagger-ui-bundle.js.LICENSE.txt']
    package = Path(crmapi.__file__).parent
    for path in shipped:
        assert (package / path).is_file(), path
        assert any(fnmatch.fnmatch(path, p) for p in patterns), path
    assert re.match(r'swagger-ui-dist \d+\.\d+\.\d+ ', (package / 'static/swagger-ui/VERSION').read_text())

def docs_page_examples(doc):
    """The document as the docs page shows it: docs.js's addExamples run under Node."""
    node = shutil.which('node')
    if node is None:
        pytest.fail('Node.js is needed to run the docs page script (it is on every machine make test runs on)')
    script = Path(crmapi.__file__).parent / 'static' / 'docs.js'
    code = (f'const {{addExamples}} = require({json.dumps(str(script))});'
            "process.stdout.write(JSON.stringify(addExamples(JSON.parse(require('fs').readFileSync(0, 'utf8')))))")
    out = subprocess.run([node, '-e', code], input=json.dumps(doc), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def body_example(doc, path, method):
    return doc['paths'][path][method]['requestBody']['content']['application/json']['example']


def test_docs_page_starts_every_create_and_update_from_an_example_the_api_accepts(api):
    """Try it out sends these as they are; only an id to fill in (`<id of ...>`) may stand in the way."""
    api.post('/api/custom_objects', PROJECT)
    doc = docs_page_examples(document(api))
    tried = set()
    for path, item in doc['paths'].items():
        if 'post' not in item or '{' in path or '<' in json.dumps(body_example(doc, path, 'post')):
            continue
        if path == '/api/webhooks':   # its url must resolve to a public address: no example can, offline
            continue
        if path == '/api/automation_rules':   # NOTE: the document does not describe a rule's shape yet
            continue
        if '201' not in item['post']['responses']:   # not a create: duplicates of an unsaved record, merges
            api.post(path, body_example(doc, path, 'post'), status=200)
            continue
        created = api.post(path, body_example(doc, path, 'post')).json
        tried.add(path)
        if f'{path}/{{id}}' in doc['paths'] and 'put' in doc['paths'][f'{path}/{{id}}']:
            api.put(f"{path}/{created['id']}", body_example(doc, f'{path}/{{id}}', 'put'))
    assert {'/api/contacts', '/api/companies', '/api/deals', '/api/projects', '/api/custom_objects'} <= tried
    listing = {p['name']: p for p in doc['paths']['/api/contacts']['get']['parameters']}
    assert listing['filter']['content']['application/json']['example'] == {}
    api.get('/api/contacts', {'filter': {}, 'filters': [], 'sorts': []})
