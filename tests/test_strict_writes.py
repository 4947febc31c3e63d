"""Writes an integrator can trust: strict bodies (`Prefer: handling`), every bad field reported, PATCH, HEAD.

A body field the resource does not have is a 400 naming it; the fields a record is read with but
never written (`id`, timestamps, a summary's computed columns) are ignored, so a record read from
any resource, summaries included, can be changed and sent back whole. Every test runs on SQLite
and on PostgreSQL (see conftest.py).
"""

import falcon
import falcon.testing
import pytest

from conftest import RULE_SHAPE
from conftest import assert_problem
from test_deploy import PREFIX
from test_deploy import auth
from test_deploy import call
from test_deploy import nginx  # noqa: F401 -- fixtures, for the test through the shipped servers
from test_deploy import stack  # noqa: F401
from test_deploy import token  # noqa: F401
from crmapi.api import lenient_handling
from crmapi.schema import Catalog
from crmapi.schema import ResourceSpec
from crmapi.schema import table_info
from crmapi.schema import with_view_columns

LENIENT = {'Prefer': 'handling=lenient'}
PROJECTS = {
    'slug': 'projects',
    'label': 'Projects',
    'fields': [
        {'name': 'title', 'type': 'text', 'required': True},
        {'name': 'budget', 'type': 'number'},
        {'name': 'company', 'type': 'reference', 'target': 'companies'},
    ],
}


def url(resource, record_id=None):
    return f'/api/{resource}' if record_id is None else f'/api/{resource}/{record_id}'


def write(api, method, path, body, status=200, headers=None):
    """PUT or PATCH a JSON body."""
    send = api.app.put_json if method == 'PUT' else api.app.patch_json
    return send(path, body, headers={**api.headers, **(headers or {})}, status=status)


def fields_in(problem):
    return [e['field'] for e in problem['errors']]


@pytest.fixture
def records(api):
    """One record of every writable resource (and a custom object's), with references filled in."""
    api.post('/api/custom_objects', PROJECTS)
    company = api.create('companies', name='Initech', city='Austin')
    tag = api.create('tags', name='vip', color='#f00')
    contact = api.create('contacts', first_name='Ada', last_name='Lovelace', company_id=company['id'], tags=[tag['id']])
    deal = api.create('deals', name='Engine', company_id=company['id'], contact_ids=[contact['id']], amount=12.5)
    return {
        'companies': company['id'],
        'tags': tag['id'],
        'contacts': contact['id'],
        'deals': deal['id'],
        'tasks': api.create('tasks', text='Call', contact_id=contact['id'])['id'],
        'contact_notes': api.create('contact_notes', contact_id=contact['id'], text='hi')['id'],
        'deal_notes': api.create('deal_notes', deal_id=deal['id'], text='hi')['id'],
        'company_notes': api.create('company_notes', company_id=company['id'], text='hi')['id'],
        'configuration': api.create('configuration', key='theme', value={'dark': True})['id'],
        'automation_rules': api.create('automation_rules', name='Welcome', **RULE_SHAPE)['id'],
        'crm_users': api.create('crm_users', email='grace@example.com', last_name='Hopper')['id'],
        'projects': api.create('projects', title='Apollo', budget=3.5, company=company['id'])['id'],
    }


# -- unknown fields --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('resource', 'body', 'field', 'detail'),
    [
        (
            'contacts',
            {'first_name': 'X', 'emial': 'x@y.z'},
            'emial',
            "Resource 'contacts' has no field 'emial'; did you mean 'email'?",
        ),
        ('deals', {'name': 'Big', 'stage': 'won'}, 'stage', "Resource 'deals' has no field 'stage'"),
        ('companies', {'name': 'Acme', 'sector': 'retail'}, 'sector', "Resource 'companies' has no field 'sector'"),
        (
            'contacts',
            {'firstNmae': 'Ada'},
            'firstNmae',
            "Resource 'contacts' has no field 'firstNmae'; did you mean 'first_name'?",
        ),
    ],
    ids=['typo', 'deal-stage', 'company-sector', 'camel-case-typo'],
)
def test_a_body_field_the_resource_does_not_have_is_400_and_nothing_is_written(api, resource, body, field, detail):
    assert_problem(api.post(url(resource), body, status=400), 400, title='Unknown field', field=field, detail=detail)
    assert api.list(resource) == []
    kept = api.create(resource, **{k: v for k, v in body.items() if k != field})
    assert_problem(api.put(url(resource, kept['id']), {**body, 'name': 'Changed'}, status=400), 400, field=field)
    assert api.get(url(resource, kept['id'])).json == kept


def test_did_you_mean_only_suggests_fields_a_client_may_write(api):
    problem = assert_problem(api.post('/api/deals', {'name': 'X', 'create_at': '2020-01-01'}, status=400), 400)
    assert 'created_at' not in problem['detail']


def test_an_unknown_field_of_a_custom_object_is_400_with_a_suggestion(api):
    api.post('/api/custom_objects', PROJECTS)
    problem = assert_problem(
        api.post('/api/projects', {'title': 'Apollo', 'budgte': 3}, status=400), 400, field='budgte'
    )
    assert problem['detail'].endswith("did you mean 'budget'?")


def test_camel_case_spellings_are_still_accepted(api):
    contact = api.create('contacts', firstName='Ada', lastName='Lovelace', linkedinUrl='https://l.example/ada')
    assert (contact['first_name'], contact['last_name']) == ('Ada', 'Lovelace')
    updated = write(api, 'PATCH', url('contacts', contact['id']), {'lastName': 'Byron', 'last_name': 'King'}).json
    assert updated['last_name'] == 'King'


# -- the react-admin round trip -------------------------------------------------------------------

# (read from, write to, field changed, new value): every built-in resource, the summaries, a custom object.
ROUND_TRIPS = [
    ('contacts', 'contacts', 'last_name', 'Byron'),
    ('companies', 'companies', 'city', 'Oslo'),
    ('deals', 'deals', 'status', 'won'),
    ('tasks', 'tasks', 'text', 'Call again'),
    ('contact_notes', 'contact_notes', 'text', 'changed'),
    ('deal_notes', 'deal_notes', 'text', 'changed'),
    ('company_notes', 'company_notes', 'text', 'changed'),
    ('tags', 'tags', 'color', '#0f0'),
    ('configuration', 'configuration', 'value', {'dark': False}),
    ('automation_rules', 'automation_rules', 'enabled', False),
    ('crm_users', 'crm_users', 'last_name', 'Murray Hopper'),
    ('companies_summary', 'companies', 'city', 'Oslo'),
    ('contacts_summary', 'contacts', 'city', 'Paris'),
    ('projects', 'projects', 'budget', 99.5),
]


def without_updated_at(record):
    return {k: v for k, v in record.items() if k != 'updated_at'}


@pytest.mark.parametrize('method', ['PUT', 'PATCH'])
@pytest.mark.parametrize(('source', 'target', 'field', 'value'), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_a_record_read_changed_and_sent_back_whole_writes_the_change(
    api, records, method, source, target, field, value
):
    record_id = records[target]
    before = api.get(url(target, record_id)).json
    whole = {**api.get(url(source, record_id)).json, field: value}
    written = write(api, method, url(target, record_id), whole).json
    assert without_updated_at(written) == without_updated_at({**before, field: value})
    assert api.get(url(target, record_id)).json == written


@pytest.mark.parametrize('method', ['PUT', 'PATCH'])
@pytest.mark.parametrize(
    ('source', 'target'),
    [('contacts_summary', 'contacts'), ('companies_summary', 'companies'), ('projects', 'projects')],
)
def test_a_whole_record_with_one_unknown_field_reports_only_that_field(api, records, method, source, target):
    whole = {**api.get(url(source, records[target])).json, 'colour': 'blue'}
    problem = assert_problem(write(api, method, url(target, records[target]), whole, status=400), 400, field='colour')
    assert fields_in(problem) == ['colour']


def test_the_ignored_fields_are_the_server_managed_and_the_summaries_computed_columns(database):
    tables = Catalog.load(database).tables
    assert tables['contacts'].view_columns == {'company_name', 'nb_tasks'}
    assert tables['companies'].view_columns == {'nb_contacts', 'nb_deals'}
    assert tables['deals'].view_columns == frozenset()
    assert tables['contacts'].read_only_fields == {
        'id',
        'organization_id',
        'created_at',
        'updated_at',
        'archived_at',
        'company_name',
        'nb_tasks',
    }


def test_view_columns_are_read_from_the_views_not_listed_by_hand():
    base = ResourceSpec('widgets', 'w_')
    view = ResourceSpec('widgets_summary', 'w_', read_only=True, counted_as='widgets')
    row = ('id', 'TEXT', False, None), ('name', 'TEXT', True, None)
    infos = with_view_columns(
        {'widgets': table_info(base, row), 'widgets_summary': table_info(view, [*row, ('score', 'BIGINT', True, None)])}
    )
    assert infos['widgets'].read_only_fields == {'id', 'score'}
    assert infos['widgets_summary'].view_columns == frozenset()


# -- Prefer: handling ------------------------------------------------------------------------------


def test_lenient_handling_ignores_unknown_fields_and_says_so(api, records):
    created = api.post('/api/contacts', {'first_name': 'X', 'emial': 'x@y.z'}, headers=LENIENT)
    assert created.headers['Preference-Applied'] == 'handling=lenient'
    assert created.json['email'] is None and 'emial' not in created.json
    for method in ('PUT', 'PATCH'):
        resp = write(api, method, url('contacts', created.json['id']), {'city': 'Oslo', 'sector': 'x'}, headers=LENIENT)
        assert resp.headers['Preference-Applied'] == 'handling=lenient'
        assert resp.json['city'] == 'Oslo'


def test_lenient_handling_still_refuses_a_bad_value(api):
    problem = assert_problem(
        api.post('/api/deals', {'name': 'X', 'amount': 'lots', 'stage': 'won'}, status=400, headers=LENIENT),
        400,
        field='amount',
    )
    assert fields_in(problem) == ['amount']


@pytest.mark.parametrize(
    'prefer', ['handling=strict', 'HANDLING=Strict', 'count=none, handling="strict"', 'handling=strict; x=1']
)
def test_strict_handling_is_the_default_and_may_be_sent(api, prefer):
    resp = api.post('/api/contacts', {'first_name': 'X', 'emial': 'x@y.z'}, status=400, headers={'Prefer': prefer})
    assert_problem(resp, 400, field='emial')
    assert resp.headers['Preference-Applied'] == 'handling=strict'
    assert 'Preference-Applied' not in api.post('/api/contacts', {'first_name': 'X'}).headers


@pytest.mark.parametrize('prefer', ['handling=sloppy', 'handling', 'handling='])
def test_an_unknown_handling_is_400_naming_prefer(api, prefer):
    assert_problem(
        api.post('/api/contacts', {'first_name': 'X'}, status=400, headers={'Prefer': prefer}), 400, param='Prefer'
    )
    assert api.list('contacts') == []


def test_preference_applied_adds_to_what_is_already_applied():
    req = falcon.testing.create_req(method='POST', headers={'Prefer': 'count=none, handling=lenient'})
    resp = falcon.Response()
    resp.set_header('Preference-Applied', 'count=none')
    assert lenient_handling(req, resp) is True
    assert resp.get_header('Preference-Applied') == 'count=none, handling=lenient'


def test_merge_refuses_unknown_fields_unless_lenient(api):
    keep, lose = api.create('contacts', last_name='Keep'), api.create('contacts', last_name='Lose')
    body = {'source_ids': [lose['id']], 'target_id': keep['id'], 'preview': True}
    assert_problem(api.post('/api/merge_contacts', body, status=400), 400, field='preview')
    assert api.get(url('contacts', lose['id'])).json == lose
    merged = api.post('/api/merge_contacts', body, status=200, headers=LENIENT)
    assert merged.headers['Preference-Applied'] == 'handling=lenient'
    api.get(url('contacts', lose['id']), status=404)


# -- every invalid field reported -----------------------------------------------------------------


def test_every_invalid_field_of_a_body_is_reported(api):
    body = {'name': None, 'stage': 'won', 'amount': 'lots'}
    problem = assert_problem(
        api.post('/api/deals', body, status=400),
        400,
        title='Invalid value',
        field='name',
        detail="Field 'name' may not be null",
    )
    assert fields_in(problem) == ['name', 'stage', 'amount']
    assert [e['detail'] for e in problem['errors']] == [
        "Field 'name' may not be null",
        "Resource 'deals' has no field 'stage'",
        'Field \'amount\' expects a number, got "lots"',
    ]
    assert api.list('deals') == []


def test_a_missing_required_field_is_reported_with_the_others(api):
    api.post('/api/custom_objects', PROJECTS)
    problem = assert_problem(
        api.post('/api/projects', {'titel': 'Apollo', 'budget': 'cheap'}, status=400), 400, field='titel'
    )
    assert fields_in(problem) == ['titel', 'budget', 'title']
    assert problem['errors'][0]['detail'].endswith("did you mean 'title'?")
    assert problem['errors'][2]['detail'] == "Field 'title' is required"


@pytest.mark.parametrize('method', ['PUT', 'PATCH'])
def test_a_required_field_set_to_null_is_reported_once(api, method):
    deal = api.create('deals', name='Engine')
    problem = assert_problem(
        write(api, method, url('deals', deal['id']), {'name': None}, status=400), 400, field='name'
    )
    assert fields_in(problem) == ['name']


def test_every_missing_reference_is_reported(api):
    problem = assert_problem(
        api.post('/api/contacts', {'company_id': 'comp_missing', 'tags': ['tag_missing']}, status=400),
        400,
        field='company_id',
    )
    assert fields_in(problem) == ['company_id', 'tags']
    assert api.list('contacts') == []


# -- PATCH ------------------------------------------------------------------------------------------


def test_patch_is_a_partial_update(api):
    contact = api.create('contacts', first_name='Ada', last_name='Lovelace', city='London')
    patched = write(api, 'PATCH', url('contacts', contact['id']), {'city': 'Paris'}).json
    assert (patched['first_name'], patched['last_name'], patched['city']) == ('Ada', 'Lovelace', 'Paris')
    assert api.get(url('contacts', contact['id'])).json == patched


def test_patch_of_an_unknown_or_foreign_record_is_404(api, other_api):
    foreign = other_api.create('contacts', last_name='Spy')
    for record_id in ('c_doesnotexist', foreign['id']):
        assert_problem(write(api, 'PATCH', url('contacts', record_id), {'last_name': 'X'}, status=404), 404, param='id')
    assert other_api.get(url('contacts', foreign['id'])).json == foreign


@pytest.mark.parametrize('resource', ['contacts_summary', 'companies_summary'])
def test_patch_of_a_summary_is_405_allowing_get_and_head(api, resource):
    resp = write(api, 'PATCH', url(resource, 'c_1'), {'city': 'X'}, status=405)
    assert_problem(resp, 405)
    assert resp.headers['Allow'] == 'GET, HEAD'


def test_patch_is_for_records_only_not_custom_object_definitions(api):
    api.post('/api/custom_objects', PROJECTS)
    resp = write(api, 'PATCH', '/api/custom_objects/projects', {'label': 'X'}, status=405)
    assert_problem(resp, 405)
    assert 'PATCH' not in resp.headers['Allow'] and 'PUT' in resp.headers['Allow']


def test_a_wrong_method_on_a_record_allows_head_and_patch(api):
    resp = api.app.post_json('/api/contacts/c_1', {}, headers=api.headers, status=405)
    allow = {m.strip() for m in resp.headers['Allow'].split(',')}
    assert {'GET', 'HEAD', 'PUT', 'PATCH', 'DELETE'} <= allow


@pytest.mark.parametrize('method', ['PATCH', 'HEAD'])
def test_cors_preflights_allow_patch_and_head(api, method):
    resp = api.app.options(
        '/api/contacts/c_1', headers={'Origin': 'https://crm.example.com', 'Access-Control-Request-Method': method}
    )
    assert method in {m.strip() for m in resp.headers['Access-Control-Allow-Methods'].split(',')}


# -- HEAD -------------------------------------------------------------------------------------------

HEAD_PATHS = [
    '/api/contacts',
    '/api/contacts/{contacts}',
    '/api/contacts_summary?range=[0,0]',
    '/api/contacts_summary/{contacts}',
    '/api/projects',
    '/api/projects/{projects}',
    '/api/schema',
    '/api/schema/deals',
    '/api/custom_objects',
    '/api/custom_objects/projects',
    '/api/openapi.json',
    '/api/docs',
    '/healthz',
    '/readyz',
]


def same_headers(resp):
    return {k.lower(): v for k, v in resp.headers.items() if k.lower() != 'x-request-id'}


@pytest.mark.parametrize('path', HEAD_PATHS)
def test_head_answers_every_get_route_with_its_headers_and_no_body(api, records, path):
    path = path.format(**records)
    got = api.app.get(path, headers=api.headers)
    head = api.app.head(path, headers=api.headers)
    assert head.status_int == 200 and head.body == b''
    assert same_headers(head) == same_headers(got)


def test_head_of_a_list_has_content_range_and_the_next_cursor(api):
    for name in ('A', 'B', 'C'):
        api.create('contacts', last_name=name)
    head = api.app.head('/api/contacts', headers={**api.headers, 'Range': 'contacts=0-1'})
    assert head.headers['Content-Range'] == 'contacts 0-1/3'
    assert head.headers['X-Next-Cursor']
    assert head.body == b''


def test_head_errors_have_the_status_and_no_body(api, anonymous):
    missing = api.app.head('/api/contacts/c_doesnotexist', headers=api.headers, status=404)
    assert missing.content_type == 'application/problem+json' and missing.body == b''
    denied = anonymous.app.head('/api/contacts', status=401)
    assert denied.headers['WWW-Authenticate'] == 'Bearer' and denied.body == b''
    assert api.app.head('/api/merge_contacts', headers=api.headers, status=405).body == b''


# -- the document -----------------------------------------------------------------------------------


def test_openapi_documents_patch_head_and_the_handling_preference(api):
    api.post('/api/custom_objects', PROJECTS)
    paths = api.get('/api/openapi.json').json['paths']
    for slug in ('contacts', 'projects'):
        item, collection = paths[f'/{slug}/{{id}}'], paths[f'/{slug}']
        assert item['patch']['requestBody'] == item['put']['requestBody']
        assert 'Content-Range' in collection['head']['responses']['200']['headers']
        assert 'content' not in collection['head']['responses']['200']
        assert 'content' not in item['head']['responses']['404']
        for op in (item['patch'], item['put'], collection['post'], collection['patch']):
            assert any({'name': 'Prefer', 'in': 'header'}.items() <= p.items() for p in op['parameters'])
    assert 'patch' not in paths['/contacts_summary/{id}'] and 'head' in paths['/contacts_summary/{id}']


# -- through the shipped servers --------------------------------------------------------------------


@pytest.mark.slow
def test_head_and_patch_work_through_nginx_and_gunicorn(nginx, token):  # noqa: F811 -- the imported fixtures
    status, headers, created = call(nginx, 'POST', f'{PREFIX}/api/contacts', token, {'last_name': 'Lovelace'})
    assert status == 201, created
    status, headers, body = nginx.request('HEAD', f'{PREFIX}/api/contacts', headers=auth(token))
    assert (status, headers['content-range'], body) == (200, 'contacts 0-0/1', b'')
    status, _, patched = call(nginx, 'PATCH', f'{PREFIX}/api/contacts/{created["id"]}', token, {'city': 'London'})
    assert (status, patched['city'], patched['last_name']) == (200, 'London', 'Lovelace')
    status, _, refused = call(nginx, 'PATCH', f'{PREFIX}/api/contacts/{created["id"]}', token, {'cty': 'Paris'})
    assert (status, refused['field']) == (400, 'cty')
    status, _, listed = call(nginx, 'GET', f'{PREFIX}/api/contacts', token)  # the connection after HEAD is sound
    assert status == 200 and [c['city'] for c in listed] == ['London']
