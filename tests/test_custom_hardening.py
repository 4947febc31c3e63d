"""Custom object definitions under abuse: limits, reserved names, malformed members, concurrent changes.

Limits are enforced on what a request asks for and on the definition it would result in; what is
already stored is loaded as it is, so no stored definition can lock an organization out.
"""

import threading

import pytest
import webtest

from crmapi import custom
from crmapi import sqlbuild
from crmapi.custom import MAX_FIELDS
from crmapi.custom import MAX_OBJECTS
from crmapi.schema import Catalog
from crmapi.store import utc_now
from conftest import Client
from conftest import assert_problem


def fields(count, prefix='f'):
    return [{'name': f'{prefix}{i}', 'type': 'text'} for i in range(count)]


def define(api, slug='things', field_list=(), status=201):
    return api.post('/api/custom_objects', {'slug': slug, 'fields': list(field_list)}, status=status)


def table_of(definition):
    """A definition's table is `co_` + the id without its `obj_` prefix (see crmapi.custom)."""
    return 'co_' + definition['id'][len('obj_') :]


def write_around_the_api(database, api, slug, extra_fields, extra_columns):
    """Store fields and columns straight into the database, as an older, buggier server did."""
    definition = api.get(f'/api/custom_objects/{slug}').json
    info = Catalog.load(database).internal['custom_objects']
    changes = {
        'fields': definition['fields'] + extra_fields,
        'version': definition['version'] + 1,
        'updated_at': utc_now(),
    }
    with database.transaction(write=True) as tx:
        for name in extra_columns:
            tx.execute(sqlbuild.build_add_column(table_of(definition), name, 'TEXT'))
        tx.execute(*sqlbuild.build_update(database.dialect, info, api.org_id, definition['id'], changes))


def field_names(api, slug='things'):
    return [f['name'] for f in api.get(f'/api/custom_objects/{slug}').json['fields']]


def column_names(api, slug='things'):
    return {c['name'] for c in api.get(f'/api/schema/{slug}').json['columns']}


# -- 1. the field cap applies to the definition a change results in ----------------------------------


def test_adding_a_field_to_a_full_definition_is_400_and_changes_nothing(api):
    define(api, field_list=fields(MAX_FIELDS))
    body = assert_problem(
        api.put('/api/custom_objects/things', {'fields': fields(1, 'extra')}, status=400), 400, field='fields'
    )
    assert str(MAX_FIELDS) in body['detail']
    definition = api.get('/api/custom_objects/things').json
    assert len(definition['fields']) == MAX_FIELDS and definition['version'] == 1
    assert 'extra0' not in column_names(api)


def test_a_full_definition_takes_changes_that_add_no_field(api):
    define(api, field_list=fields(MAX_FIELDS))
    changed = api.put('/api/custom_objects/things', {'label': 'Things', 'fields': fields(3)}).json
    assert changed['label'] == 'Things' and len(changed['fields']) == MAX_FIELDS


def test_an_organization_whose_stored_definition_exceeds_the_cap_keeps_working(api, database):
    define(api, field_list=fields(MAX_FIELDS))
    define(api, 'visits', [{'name': 'contact', 'type': 'reference', 'target': 'contacts'}])
    write_around_the_api(database, api, 'things', fields(1, 'over'), ['over0'])
    assert len(field_names(api)) == MAX_FIELDS + 1

    record = api.create('things', f0='a', over0='b')
    assert record['over0'] == 'b'
    assert [r['id'] for r in api.list('things', filter={'over0': 'b'})] == [record['id']]
    assert 'things' in [r['resource'] for r in api.get('/api/schema').json]
    assert 'over0' in column_names(api)
    assert 'things' in api.get('/api/openapi.json').json['components']['schemas']

    tag = api.create('tags', name='vip')
    api.delete(f'/api/tags/{tag["id"]}')
    task = api.create('tasks', text='call')
    api.delete(f'/api/tasks/{task["id"]}')
    keep, lose = api.create('contacts', first_name='A'), api.create('contacts', first_name='B')
    visit = api.create('visits', contact=lose['id'])
    api.post('/api/merge_contacts', {'source_ids': [lose['id']], 'target_id': keep['id']}, status=200)
    assert api.get(f'/api/visits/{visit["id"]}').json['contact'] == keep['id']

    api.put('/api/custom_objects/things', {'label': 'Still editable'})
    assert_problem(
        api.put('/api/custom_objects/things', {'fields': fields(1, 'more')}, status=400), 400, field='fields'
    )
    assert api.delete('/api/custom_objects/things/fields/f0').json['dropped']['name'] == 'f0'
    assert len(field_names(api)) == MAX_FIELDS
    assert 'f0' not in api.get(f'/api/things/{record["id"]}').json


# -- 10. names the databases reserve for themselves -------------------------------------------------

RESERVED = [
    'xmin',
    'xmax',
    'cmin',
    'cmax',
    'ctid',
    'tableoid',
    'oid',
    'rowid',
    '_rowid_',
    'id',
    'organization_id',
    'created_at',
    'updated_at',
    'archived_at',
    'q',
    'include_archived',
]


@pytest.mark.parametrize('name', RESERVED)
def test_system_and_server_column_names_are_refused_as_field_names(api, name):
    body = assert_problem(define(api, field_list=[{'name': name, 'type': 'text'}], status=400), 400, field='fields')
    assert name in body['detail']
    api.get('/api/things', status=404)
    define(api, field_list=fields(1))
    body = assert_problem(
        api.put('/api/custom_objects/things', {'fields': [{'name': name, 'type': 'integer'}]}, status=400),
        400,
        field='fields',
    )
    assert name in body['detail'] and name not in field_names(api)


def test_system_column_names_are_fine_as_slugs(api):
    define(api, 'xmin', fields(1))
    assert api.create('xmin', f0='a')['f0'] == 'a'


def test_a_stored_field_whose_name_is_now_reserved_keeps_working_and_can_be_sent_back(api, database):
    define(api, field_list=fields(1))
    write_around_the_api(database, api, 'things', [{'name': 'q', 'type': 'text', 'required': False}], ['q'])
    assert api.create('things', q='kept')['q'] == 'kept'
    definition = api.get('/api/custom_objects/things').json
    resent = api.put(
        '/api/custom_objects/things', {**definition, 'fields': [*definition['fields'], *fields(1, 'new')]}
    ).json
    assert [f['name'] for f in resent['fields']] == ['f0', 'q', 'new0']


# -- 14. every member of a definition has its JSON type --------------------------------------------

BAD_FIELDS = [
    ({'name': 'a', 'type': {}}, 'a'),
    ({'name': 'a', 'type': []}, 'a'),
    ({'name': 'a', 'type': 5}, 'a'),
    ({'name': {}, 'type': 'text'}, 'fields[0]'),
    ({'name': ['a'], 'type': 'text'}, 'fields[0]'),
    ({'name': 5, 'type': 'text'}, 'fields[0]'),
    ({'type': 'text'}, 'fields[0]'),
    ({'name': 'a', 'type': 'text', 'label': {}}, 'a'),
    ({'name': 'a', 'type': 'text', 'label': []}, 'a'),
    ({'name': 'a', 'type': 'reference', 'target': {}}, 'a'),
    ({'name': 'a', 'type': 'reference', 'target': []}, 'a'),
    ({'name': 'a', 'type': 'text', 'required': 1}, 'a'),
    ({'name': 'a', 'type': 'text', 'required': None}, 'a'),
    ({'name': 'a', 'type': 'text', 'colour': 'red'}, 'colour'),
    ([], 'fields[0]'),
    (None, 'fields[0]'),
]


@pytest.mark.parametrize('field, named', BAD_FIELDS)
def test_a_field_member_of_the_wrong_json_type_is_400_naming_it(api, field, named):
    body = assert_problem(define(api, field_list=[field], status=400), 400, field='fields')
    assert named in body['detail']
    define(api, field_list=fields(1))
    body = assert_problem(api.put('/api/custom_objects/things', {'fields': [field]}, status=400), 400, field='fields')
    assert named in body['detail']
    assert field_names(api) == ['f0']


@pytest.mark.parametrize(
    'body, field',
    [
        ({'slug': {}}, 'slug'),
        ({'slug': []}, 'slug'),
        ({'slug': 'things', 'label': {}}, 'label'),
        ({'slug': 'things', 'label': []}, 'label'),
        ({'slug': 'things', 'fields': {}}, 'fields'),
        ({'slug': 'things', 'fields': 'f0'}, 'fields'),
        ({'slug': 'things', 'fields': None}, 'fields'),
        ({'slug': 'things', 'colour': 'red'}, 'colour'),
    ],
)
def test_a_definition_member_of_the_wrong_json_type_or_unknown_is_400_naming_it(api, body, field):
    assert_problem(api.post('/api/custom_objects', body, status=400), 400, field=field)
    api.get('/api/things', status=404)
    define(api, field_list=fields(1))
    assert_problem(api.put('/api/custom_objects/things', body, status=400), 400, field=field)
    assert api.get('/api/custom_objects/things').json['version'] == 1


def test_a_definition_read_back_can_be_sent_back_with_a_new_field(api):
    definition = define(api, field_list=fields(2)).json
    changed = api.put(
        '/api/custom_objects/things', {**definition, 'fields': [*definition['fields'], *fields(1, 'new')]}
    ).json
    assert [f['name'] for f in changed['fields']] == ['f0', 'f1', 'new0'] and changed['version'] == 2


# -- a cap on custom objects per organization -------------------------------------------------------


def test_an_organization_defines_at_most_max_objects_archived_ones_included(api, other_api):
    assert MAX_OBJECTS == 100
    for i in range(MAX_OBJECTS):
        define(api, f'o{i}')
    api.delete('/api/custom_objects/o0')
    body = assert_problem(define(api, 'one_more', status=409), 409)
    assert str(MAX_OBJECTS) in body['detail'] and 'archived' in body['detail']
    api.get('/api/custom_objects/one_more', status=404)
    assert len(api.get('/api/custom_objects').json) == MAX_OBJECTS
    api.post('/api/custom_objects/o0/restore', status=200)
    define(other_api, 'one_more')


# -- 5. concurrent changes of one definition all land -----------------------------------------------


def concurrently(*requests):
    """Run each request (a callable) in its own thread, all released at once; their answers in order."""
    barrier = threading.Barrier(len(requests))
    answers = [None] * len(requests)

    def run(i, request):
        barrier.wait()
        answers[i] = request()

    threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def own_client(api):
    """A client with its own WebTest app (one per thread), same token."""
    return Client(webtest.TestApp(api.app.app), api.token, api.org_id)


ADD_FA = ('put', '/api/custom_objects/things', {'fields': [{'name': 'fa', 'type': 'text'}]})
ADD_FB = ('put', '/api/custom_objects/things', {'fields': [{'name': 'fb', 'type': 'integer'}]})
DROP_F0 = ('delete', '/api/custom_objects/things/fields/f0', None)
ARCHIVE = ('delete', '/api/custom_objects/things', None)


def send(client, change):
    method, path, body = change
    if method == 'put':
        return client.app.put_json(path, body, headers=client.headers, expect_errors=True)
    return client.app.delete(path, headers=client.headers, expect_errors=True)


@pytest.mark.parametrize('attempt', range(3))
@pytest.mark.parametrize(
    'first, second, names, archived',
    [
        (ADD_FA, ADD_FB, ['f0', 'fa', 'fb'], False),
        (ADD_FA, DROP_F0, ['fa'], False),
        (ADD_FA, ARCHIVE, ['f0', 'fa'], True),
    ],
)
def test_concurrent_changes_of_one_definition_all_land(api, attempt, first, second, names, archived):
    define(api, field_list=fields(1))
    a, b = own_client(api), own_client(api)
    answers = concurrently(lambda: send(a, first), lambda: send(b, second))
    assert [r.status_int for r in answers] == [200, 200], [r.text for r in answers]
    versions = sorted((r.json.get('custom_object') or r.json)['version'] for r in answers)
    assert versions == [2, 3]
    definition = api.get('/api/custom_objects/things').json
    assert definition['version'] == 3 and sorted(f['name'] for f in definition['fields']) == names
    assert (definition['archived_at'] is not None) == archived
    if archived:
        api.post('/api/custom_objects/things/restore', status=200)
    assert {'fa', *names} <= column_names(api) and ('f0' in names) == ('f0' in column_names(api))
    assert api.create('things', fa='x')['fa'] == 'x'


@pytest.mark.parametrize('attempt', range(3))
def test_concurrent_definitions_cannot_both_take_the_last_place(api, monkeypatch, attempt):
    monkeypatch.setattr(custom, 'MAX_OBJECTS', 2)
    define(api, 'one')
    a, b = own_client(api), own_client(api)
    answers = concurrently(
        *[
            lambda c=c, slug=slug: c.app.post_json(
                '/api/custom_objects', {'slug': slug}, headers=c.headers, expect_errors=True
            )
            for c, slug in ((a, 'two'), (b, 'three'))
        ]
    )
    assert sorted(r.status_int for r in answers) == [201, 409], [r.text for r in answers]
    assert len(api.get('/api/custom_objects').json) == 2


def test_adding_a_field_whose_column_exists_outside_the_definition_adopts_it(api, database):
    define(api, field_list=fields(1))
    write_around_the_api(database, api, 'things', [], ['orphan'])
    adopted = api.put('/api/custom_objects/things', {'fields': [{'name': 'orphan', 'type': 'text'}]}).json
    assert [f['name'] for f in adopted['fields']] == ['f0', 'orphan']
    assert api.create('things', orphan='kept')['orphan'] == 'kept'
    assert api.delete('/api/custom_objects/things/fields/orphan').json['dropped']['name'] == 'orphan'
    assert 'orphan' not in column_names(api)


def test_a_field_whose_column_exists_with_another_type_is_409_and_changes_nothing(api, database):
    define(api, field_list=fields(1))
    write_around_the_api(database, api, 'things', [], ['orphan'])
    body = assert_problem(
        api.put(
            '/api/custom_objects/things',
            {'fields': [{'name': 'orphan', 'type': 'integer'}, *fields(1, 'new')]},
            status=409,
        ),
        409,
        field='fields',
    )
    assert 'orphan' in body['detail']
    assert field_names(api) == ['f0'] and 'new0' not in column_names(api)
    api.put('/api/custom_objects/things', {'fields': [{'name': 'orphan', 'type': 'text'}]})


def test_a_reference_field_whose_column_and_index_exist_is_adopted(api, database):
    define(api, field_list=fields(1))
    definition = api.get('/api/custom_objects/things').json
    table = table_of(definition)
    index = custom.Field('company', 'reference', target='companies').index_name(table)
    write_around_the_api(database, api, 'things', [], ['company'])
    with database.transaction(write=True) as tx:
        tx.execute(sqlbuild.build_create_index(table, index, 'company'))
    api.put('/api/custom_objects/things', {'fields': [{'name': 'company', 'type': 'reference', 'target': 'companies'}]})
    company = api.create('companies', name='Acme')
    assert api.create('things', company=company['id'])['company'] == company['id']
    assert_problem(api.post('/api/things', {'company': 'comp_missing'}, status=400), 400, field='company')
