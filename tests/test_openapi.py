"""The OpenAPI document is valid 3.1, generated from the live schema, and scoped to the caller."""

import configparser
import fnmatch
import hashlib
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urljoin

import pytest
import webtest
from openapi_spec_validator import validate

import conftest
import crmapi
from conftest import assert_problem
from crmapi import webhooks
from crmapi.openapi import PROBLEM_NAMES
from crmapi.openapi import Docs
from crmapi.api import Records
from crmapi.schema import BUILTIN

KIND_TYPES = {
    'text': 'string',
    'integer': 'integer',
    'number': 'number',
    'boolean': 'boolean',
    'date': 'string',
    'timestamp': 'string',
    'array': 'array',
}
KIND_FORMATS = {'date': 'date', 'timestamp': 'date-time'}
PROJECT = {
    'slug': 'projects',
    'label': 'Projects',
    'fields': [
        {'name': 'title', 'type': 'text', 'required': True},
        {'name': 'budget', 'type': 'number'},
        {'name': 'starts_on', 'type': 'date'},
        {'name': 'seen_at', 'type': 'datetime'},
        {'name': 'active', 'type': 'boolean'},
        {'name': 'seats', 'type': 'integer'},
        {'name': 'extra', 'type': 'json'},
        {'name': 'company_id', 'type': 'reference', 'target': 'companies'},
    ],
}


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
    assert {'/projects', '/projects/{id}', '/projects/{id}/restore'} <= set(doc['paths'])
    assert 'projects' in {t['name'] for t in doc['tags']}


def test_custom_objects_appear_only_for_their_own_organization(api, other_api, anonymous):
    api.post('/api/custom_objects', PROJECT)
    assert '/projects' in document(api)['paths']
    assert '/projects' not in document(other_api)['paths']
    assert '/projects' not in document(anonymous)['paths']
    assert 'projects' not in document(other_api)['components']['schemas']


def test_archived_custom_objects_leave_the_document(api):
    api.post('/api/custom_objects', PROJECT)
    api.delete('/api/custom_objects/projects')
    assert '/projects' not in document(api)['paths']


@pytest.mark.parametrize('slug', sorted(BUILTIN))
def test_every_builtin_resource_and_its_operations_are_listed(anonymous, slug):
    spec, paths = BUILTIN[slug], document(anonymous)['paths']
    collection, item, restore = f'/{slug}', f'/{slug}/{{id}}', f'/{slug}/{{id}}/restore'
    if spec.read_only:
        assert set(paths[collection]) == {'get', 'head'}
        assert set(paths[item]) - {'parameters'} == {'get', 'head'}
        assert restore not in paths
        return
    assert set(paths[collection]) == {'get', 'head', 'post', 'patch', 'delete'}
    assert set(paths[item]) - {'parameters'} == {'get', 'head', 'put', 'patch', 'delete'}
    assert (restore in paths) == (spec.delete in ('archive', 'disable'))
    if slug != 'webhooks':  # one webhook a request
        assert 'required' not in paths[collection]['post']['responses']['201']['headers']['Location'], 'a batch: none'
    if spec.admin_writes:
        assert '403' in paths[collection]['post']['responses']


def test_the_other_routes_are_listed(anonymous):
    paths = document(anonymous)['paths']
    assert set(paths['/merge_contacts']) == {'post'}
    assert {
        '/schema',
        '/schema/{table}',
        '/custom_objects',
        '/custom_objects/{slug}',
        '/custom_objects/{slug}/restore',
        '/custom_objects/{slug}/fields/{name}',
        '/openapi.json',
        '/docs',
    } <= set(paths)
    assert set(paths['/custom_objects/{slug}']) - {'parameters'} == {'get', 'head', 'put', 'delete'}


def routed_operations(app):
    """(URI template, method, resource) of every route the app serves, as Falcon's router holds them."""
    found = []

    def walk(nodes):
        for node in nodes:
            for method, responder in (node.method_map or {}).items():
                # NOTE: Falcon fills in 405 and OPTIONS responders of its own; the resource's are its methods.
                if getattr(responder, '__self__', None) is node.resource:
                    found.append((node.uri_template, method.lower(), node.resource))
            walk(node.children)

    walk(app._router._roots)
    return found


def test_every_routed_path_and_method_is_in_the_document(api, wsgi_app):
    """Each route the app serves, each generic `{resource}` route for each resource, is an operation."""
    api.post('/api/custom_objects', PROJECT)
    doc = document(api)
    resources = {slug: BUILTIN.get(slug) for slug in [r['resource'] for r in api.get('/api/schema').json]}
    missing, checked = [], 0
    for template, method, resource in routed_operations(wsgi_app.app):
        path = template.removeprefix('/api') if template.startswith('/api/') else template
        expanded = [path]
        if isinstance(resource, Records):
            # NOTE: a read-only resource answers writes 405, a resource without archives restore 405: not operations.
            writes = method not in ('get', 'head')
            expanded = [
                path.replace('{resource}', slug)
                for slug, spec in resources.items()
                if slug != 'changes'
                and not (spec and spec.read_only and writes)
                and not (path.endswith('/restore') and spec and spec.delete == 'hard')
            ]
        for one in expanded:
            checked += 1
            if method not in doc['paths'].get(one, {}):
                missing.append(f'{method.upper()} {one}')
    assert not missing, missing
    assert checked > 150
    assert {
        '/projects/{id}/restore',
        '/webhooks/{id}/rotate_secret',
        '/webhook_deliveries/{id}/redeliver',
        '/changes',
        '/me',
        '/readyz',
        '/docs/assets/{name}',
    } <= set(doc['paths'])


JSON_PARAMS = ('range', 'filter', 'filters', 'sorts', 'embed')


def test_list_operations_document_the_query_language_and_content_range(anonymous):
    op = document(anonymous)['paths']['/contacts']['get']
    params = {p['name']: p for p in op['parameters']}
    assert set(params) == {
        'range',
        'filter',
        'filters',
        'sort',
        'order',
        'sorts',
        'cursor',
        'format',
        'Range',
        'Prefer',
        'embed',
        'embed_limit',
    }
    assert params['Range']['in'] == params['Prefer']['in'] == 'header'
    assert re.match(params['Range']['schema']['pattern'], 'contacts=0-24')
    assert params['Prefer']['schema']['enum'] == ['count=exact', 'count=estimated', 'count=none']
    assert params['format']['schema']['enum'] == ['csv', 'ndjson']
    filters = params['filters']['schema']['contentSchema']['items']['properties']
    assert filters['op']['enum'][:2] == ['eq', 'neq'] and 'is_not_empty' in filters['op']['enum']
    assert 'email' in filters['field']['enum'] and 'organization_id' not in filters['field']['enum']
    ok = op['responses']['200']
    assert set(ok['content']) == {'application/json', 'text/csv', 'application/x-ndjson'}
    assert {'Content-Range', 'X-Next-Cursor', 'Preference-Applied', 'RateLimit-Remaining'} <= set(ok['headers'])
    header = document(anonymous)['components']['headers']['Content-Range']
    for value in ('contacts 0-24/142', 'contacts */0', 'contacts 0-24/*'):
        assert re.match(header['schema']['pattern'], value)


def test_json_query_parameters_are_strings_that_generators_see(anonymous):
    """Each is the string it is in the URL, its JSON's schema beside it, and an example the API accepts."""
    paths = document(anonymous)['paths']
    checked = 0
    for path, item in paths.items():
        for method, op in item.items():
            for param in op.get('parameters', []) if isinstance(op, dict) else []:
                assert 'content' not in param, (path, method, param['name'])
                if param['name'] in JSON_PARAMS and param['in'] == 'query':
                    assert param['schema']['type'] == 'string', (path, param['name'])
                    assert param['schema']['contentMediaType'] == 'application/json'
                    assert json.loads(param['example']) is not None
                    assert param['example'] in param['description']
                    checked += 1
    assert checked > 50


def test_the_parameter_examples_are_accepted(api):
    doc = document(api)
    for slug in ('contacts', 'companies', 'deals', 'tasks'):
        listing = {p['name']: p for p in doc['paths'][f'/{slug}']['get']['parameters']}
        for name in ('range', 'filter', 'filters', 'sort', 'sorts', 'embed'):
            api.get(f'/api/{slug}', {name: listing[name]['example']})
        api.get(
            f'/api/{slug}',
            {
                'range': listing['range']['example'],
                'filter': listing['filter']['example'],
                'filters': listing['filters']['example'],
                'sorts': listing['sorts']['example'],
            },
        )


def test_every_error_answer_is_problem_json(anonymous):
    doc = document(anonymous)
    problem = doc['components']['schemas']['Problem']
    assert set(problem['properties']) == {
        'type',
        'title',
        'status',
        'detail',
        'message',
        'param',
        'field',
        'index',
        'items',
        'errors',
        'limit',
        'line',
        'error_count',
    }
    responses = doc['components']['responses']
    for name, response in responses.items():
        assert list(response['content']) == ['application/problem+json'], name
    assert {'Retry-After', 'RateLimit-Limit', 'RateLimit-Reset'} <= set(responses['TooManyRequests']['headers'])
    for path, item in doc['paths'].items():
        for method, op in item.items():
            if method in ('parameters', 'servers'):
                continue
            for code, response in op['responses'].items():
                if int(code) < 400:
                    continue
                if method == 'head':  # a HEAD answer has no body
                    assert 'content' not in response and '$ref' not in response, (path, code)
                else:
                    assert response['$ref'] == '#/components/responses/' + PROBLEM_NAMES[int(code)], (path, code)
            if path not in ('/docs', '/docs/assets/{name}', '/openapi.json', '/health', '/healthz', '/readyz'):
                assert {'401', '429', '503'} <= set(op['responses']), (path, method)
            if 'requestBody' in op:
                assert {'400', '413', '415'} <= set(op['responses']), (path, method)


def test_writes_that_take_an_idempotency_key_document_it_and_its_422(anonymous):
    paths = document(anonymous)['paths']
    for path in ('/contacts', '/deals', '/merge_contacts', '/merge_companies'):
        op = paths[path]['post']
        assert 'Idempotency-Key' in {p['name'] for p in op['parameters']}, path
        assert '422' in op['responses'], path
    assert 'Idempotency-Key' not in {p['name'] for p in paths['/contacts/{id}']['put']['parameters']}


def test_the_csv_import_and_the_exports_are_documented(anonymous):
    paths = document(anonymous)['paths']
    body = paths['/contacts']['post']['requestBody']['content']
    assert set(body) == {'application/json', 'text/csv'}
    created = paths['/contacts']['post']['responses']['201']['content']['application/json']['schema']
    assert {'$ref': '#/components/schemas/contacts'} in created['anyOf']
    assert any(s.get('required') == ['created', 'updated'] for s in created['anyOf'])
    assert 'text/csv' in paths['/deals']['get']['responses']['200']['content']
    assert 'Content-Disposition' in paths['/deals']['get']['responses']['200']['headers']


def schema_of(doc, name):
    return doc['components']['schemas'][name]


def test_one_record_schema_per_resource_with_its_read_only_and_required_fields(api):
    api.post('/api/custom_objects', PROJECT)
    doc = document(api)
    schemas = doc['components']['schemas']
    checked = 0
    for entry in api.get('/api/schema').json:
        slug = entry['resource']
        columns = {c['name']: c for c in api.get(f'/api/schema/{slug}').json['columns']}
        if slug == 'changes':
            continue
        record = schemas[slug]
        assert set(record['properties']) == set(columns), slug
        assert f'{slug}_create' not in schemas, 'a create sends the record schema itself'
        for name, column in columns.items():
            prop = record['properties'][name]
            assert prop.get('readOnly', False) == (not column['writable']), (slug, name)
            if column['max_length']:
                assert prop['maxLength'] == column['max_length'], (slug, name)
            if column['kind'] != 'json':
                assert KIND_TYPES[column['kind']] in types_of(prop), (slug, name)
                assert ('null' in types_of(prop)) == column['nullable'], (slug, name)
                assert prop.get('format') in (KIND_FORMATS.get(column['kind']), 'uri'), (slug, name)
        if entry['read_only']:
            assert set(record['required']) == set(columns), 'every field of a read-only resource is answered'
            assert f'{slug}_update' not in schemas
            continue
        required = {n for n, c in columns.items() if c['required']}
        assert set(record.get('required', [])) - {'trigger', 'actions'} == required, slug
        update = schemas[f'{slug}_update']
        assert update['properties'] == {n: p for n, p in record['properties'].items() if not p.get('readOnly')}, slug
        assert 'required' not in update and 'additionalProperties' not in update, 'a partial update; camelCase too'
        checked += 1
    assert checked >= 10
    assert schemas['projects']['required'] == ['title']
    assert schemas['deals']['required'] == ['name']
    assert schemas['deals']['properties']['amount']['type'] == ['number', 'null']
    assert schemas['contacts']['properties']['last_name']['maxLength'] == 255
    assert schemas['contacts']['properties']['id']['readOnly'] is True
    assert 'required' not in schemas['contacts'], 'a contact needs no field'


def test_request_bodies_point_at_the_record_schema(anonymous):
    paths = document(anonymous)['paths']
    post = paths['/companies']['post']['requestBody']['content']['application/json']['schema']
    put = paths['/companies/{id}']['put']['requestBody']['content']['application/json']['schema']
    assert post['anyOf'][0] == post['anyOf'][1]['items'] == {'$ref': '#/components/schemas/companies'}
    assert put == {'$ref': '#/components/schemas/companies_update'}


def test_automation_rules_and_webhooks_have_their_shapes(anonymous):
    from jsonschema import Draft202012Validator

    doc = document(anonymous)
    rule = schema_of(doc, 'automation_rules')
    assert set(rule['required']) == {'name', 'trigger', 'actions'}
    actions = rule['properties']['actions']['anyOf'][0]['items']['anyOf']
    assert [a['properties']['type']['enum'] for a in actions] == [['create_task'], ['update'], ['add_tag'], ['webhook']]
    trigger = rule['properties']['trigger']['anyOf'][0]
    assert 'contacts' in trigger['properties']['resource']['enum']
    assert 'contacts_summary' not in trigger['properties']['resource']['enum']
    validator = Draft202012Validator({**rule, 'components': doc['components']})
    validator.validate(conftest.RULE_SHAPE | {'name': 'r'})
    assert not validator.is_valid(
        {
            'name': 'r',
            'trigger': {'resource': 'contacts', 'on': ['sent']},
            'actions': [{'type': 'create_task', 'text': 'x'}],
        }
    )
    hook = schema_of(doc, 'webhooks')
    assert set(hook['required']) == {'url', 'events'} and 'secret' not in hook['properties']
    events = Draft202012Validator(hook['properties']['events'])
    assert events.is_valid(['contacts.created', 'deals.*', '*.deleted', '*'])
    assert not events.is_valid(['contacts.sent'])
    secret = schema_of(doc, 'webhooks_with_secret')['allOf'][1]['properties']['secret']
    assert secret['readOnly'] is True and 'in this answer only' in secret['description']
    paths = doc['paths']
    assert paths['/webhooks']['post']['responses']['201']['content']['application/json']['schema'] == {
        '$ref': '#/components/schemas/webhooks_with_secret'
    }
    assert {'/webhooks/{id}/rotate_secret', '/webhook_deliveries/{id}/redeliver'} <= set(paths)


def test_a_created_record_matches_its_documented_schema(api):
    """The record schema is what the API really answers (formats, nullability, every column)."""
    from jsonschema import Draft202012Validator

    doc = document(api)
    company = api.create('companies', name='Initech', size=3)
    deal = api.create('deals', name='X', company_id=company['id'], amount=1.5, expected_closing_date='2026-01-02')
    for slug, record in (('companies', company), ('deals', deal)):
        schema = {**doc['components']['schemas'][slug], 'components': doc['components']}
        Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(record)


@pytest.mark.parametrize('mount', ['', '/crm'])
def test_the_server_carries_the_mount_point_and_the_paths_are_relative_to_it(wsgi_app, mount):
    app = webtest.TestApp(wsgi_app, extra_environ={'SCRIPT_NAME': mount})
    doc = app.get(f'http://localhost{mount}/api/openapi.json').json
    assert doc['servers'] == [{'url': f'{mount}/api', 'description': 'this API, where it is mounted'}]
    assert '/contacts/{id}' in doc['paths'] and not [p for p in doc['paths'] if p.startswith('/api')]
    assert doc['paths']['/healthz']['servers'] == [{'url': mount or '/'}], 'beside the API, not under it'


def test_a_client_that_follows_the_document_reaches_the_app_inside_another_wsgi_app(api, wsgi_app):
    """Mounted at /crm by werkzeug's DispatcherMiddleware: the server URL + a path is where the operation is."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    def host(environ, start_response):
        start_response('404 Not Found', [('Content-Type', 'text/plain')])
        return [b'the host app']

    app = webtest.TestApp(DispatcherMiddleware(host, {'/crm': wsgi_app}))
    doc = app.get('/crm/api/openapi.json').json
    created = app.post_json(doc['servers'][0]['url'] + '/contacts', {'last_name': 'Lovelace'}, headers=api.headers).json
    assert created['last_name'] == 'Lovelace'
    resp = app.get(doc['servers'][0]['url'] + '/contacts/' + created['id'], headers=api.headers)
    assert resp.json == created
    health = doc['paths']['/healthz']['servers'][0]['url'].rstrip('/') + '/healthz'
    assert app.get(health).json == {'status': 'ok'}


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
        'docs/assets/swagger-ui.css',
        'docs/assets/swagger-ui-bundle.js',
        'docs/assets/docs.js',
    }


@pytest.mark.parametrize(
    'mount, path', [('', '/api/docs'), ('', '/api/docs/'), ('/crm', '/api/docs'), ('/crm', '/api/docs/')]
)
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
        'docs.html',
        'static/swagger-ui/LICENSE',
        'static/swagger-ui/NOTICE',
        'static/swagger-ui/VERSION',
        'static/swagger-ui/swagger-ui-bundle.js.LICENSE.txt',
    ]
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
    code = (
        f'const {{addExamples}} = require({json.dumps(str(script))});'
        "process.stdout.write(JSON.stringify(addExamples(JSON.parse(require('fs').readFileSync(0, 'utf8')))))"
    )
    out = subprocess.run([node, '-e', code], input=json.dumps(doc), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def body_example(doc, path, method):
    return doc['paths'][path][method]['requestBody']['content']['application/json']['example']


@pytest.fixture
def online_dns(monkeypatch):
    """hooks.example.com (the webhook example's host) resolves to a public address, as it would online: the
    tests run offline, and a webhook's URL is resolved when it is registered."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        return real('93.184.215.14' if host == 'hooks.example.com' else host, port, *args, **kwargs)

    monkeypatch.setattr(webhooks.socket, 'getaddrinfo', getaddrinfo)


def test_docs_page_starts_every_create_and_update_from_an_example_the_api_accepts(api, online_dns):
    """Try it out sends these as they are; only an id to fill in (`<id of ...>`) may stand in the way."""
    api.post('/api/custom_objects', PROJECT)
    doc = docs_page_examples(document(api))
    base = doc['servers'][0]['url']
    tried = set()
    for path, item in doc['paths'].items():
        if 'post' not in item or '{' in path or '<' in json.dumps(body_example(doc, path, 'post')):
            continue
        if '201' not in item['post']['responses']:  # not a create: duplicates of an unsaved record, merges
            api.post(base + path, body_example(doc, path, 'post'), status=200)
            continue
        created = api.post(base + path, body_example(doc, path, 'post')).json
        tried.add(path)
        if f'{path}/{{id}}' in doc['paths'] and 'put' in doc['paths'][f'{path}/{{id}}']:
            api.put(f'{base}{path}/{created["id"]}', body_example(doc, f'{path}/{{id}}', 'put'))
    assert {
        '/contacts',
        '/companies',
        '/deals',
        '/projects',
        '/custom_objects',
        '/automation_rules',
        '/webhooks',
    } <= tried
    listing = doc['paths']['/contacts']['get']['parameters']
    assert not [p['name'] for p in listing if 'example' in p], 'Try it out starts with no optional parameter set'
    api.get(base + '/contacts')
