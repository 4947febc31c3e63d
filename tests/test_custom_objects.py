"""Custom objects: an organization defines its own record types and uses them like contacts."""

import json

import pytest

from crmapi import create_app
from crmapi.config import Settings
from crmapi.custom import CustomObjects
from crmapi.db import PostgresDatabase
from crmapi.db import SQLiteDatabase
from conftest import Client
from conftest import assert_problem

PROJECTS = {
    'slug': 'projects',
    'label': 'Projects',
    'fields': [
        {'name': 'title', 'type': 'text', 'required': True},
        {'name': 'budget', 'type': 'number'},
        {'name': 'seats', 'type': 'integer'},
        {'name': 'active', 'type': 'boolean'},
        {'name': 'due', 'type': 'date'},
        {'name': 'kickoff', 'type': 'datetime'},
        {'name': 'meta', 'type': 'json'},
        {'name': 'company', 'type': 'reference', 'target': 'companies'},
    ],
}


def define(api, definition=PROJECTS, status=201):
    return api.post('/api/custom_objects', definition, status=status)


def test_define_create_list_update_archive_restore(api):
    created = define(api)
    assert created.headers['Location'].endswith('/api/custom_objects/projects')
    assert [f['name'] for f in created.json['fields']][:2] == ['title', 'budget']
    company = api.create('companies', name='Acme')
    a = api.create(
        'projects',
        title='Apollo',
        budget=1500.5,
        seats=3,
        active=True,
        due='2027-03-01',
        kickoff='2027-01-01T09:00:00+02:00',
        meta={'k': [1, 2]},
        company=company['id'],
    )
    b = api.create('projects', title='Gemini', budget=99, seats=10, active=False)
    assert a['kickoff'] == '2027-01-01T07:00:00.000000Z' and a['meta'] == {'k': [1, 2]} and a['budget'] == 1500.5

    resp = api.get(
        '/api/projects', {'filters': [{'field': 'budget', 'op': 'gt', 'value': 100}], 'sort': 'seats', 'order': 'DESC'}
    )
    assert [r['id'] for r in resp.json] == [a['id']]
    assert resp.headers['Content-Range'] == 'projects 0-0/1'
    same_instant = api.list('projects', filters=[{'field': 'kickoff', 'op': 'eq', 'value': '2027-01-01T07:00:00Z'}])
    assert [r['id'] for r in same_instant] == [a['id']]
    assert [r['title'] for r in api.list('projects', sorts=[{'field': 'title', 'order': 'DESC'}])] == [
        'Gemini',
        'Apollo',
    ]
    assert [r['id'] for r in api.list('projects', filter={'q': 'gem'})] == [b['id']]

    updated = api.put(f'/api/projects/{b["id"]}', {'seats': 11}).json
    assert updated['seats'] == 11 and updated['title'] == 'Gemini'
    assert api.delete(f'/api/projects/{b["id"]}').json['archived_at'] is not None
    assert [r['id'] for r in api.list('projects')] == [a['id']]
    assert api.post(f'/api/projects/{b["id"]}/restore', status=200).json['archived_at'] is None
    assert len(api.list('projects')) == 2


def test_schema_introspects_a_custom_object(api):
    define(api)
    columns = {c['name']: c for c in api.get('/api/schema/projects').json['columns']}
    assert columns['budget']['kind'] == 'number' and columns['title']['required'] is True
    assert columns['company']['references'] == 'companies'
    assert columns['id']['writable'] is False and 'organization_id' not in columns
    assert 'projects' in [r['resource'] for r in api.get('/api/schema').json]


@pytest.mark.parametrize(
    'field, value',
    [
        ('title', 5),
        ('budget', 'much'),
        ('budget', 1e301),
        ('budget', 0.1234567890123456),
        ('seats', 1.5),
        ('seats', 2**63),
        ('active', 'yes'),
        ('due', '2027-02-30'),
        ('kickoff', 'tomorrow'),
        ('company', 'comp_missing'),
        ('title', None),
    ],
)
def test_values_of_the_wrong_type_are_rejected_per_field(api, field, value):
    define(api)
    body = {'title': 'x', field: value}
    assert_problem(api.post('/api/projects', body, status=400), 400, field=field)


def test_required_fields_are_enforced(api):
    define(api)
    assert_problem(api.post('/api/projects', {'budget': 1}, status=400), 400, field='title')


@pytest.mark.parametrize(
    'slug',
    [
        'Projects',
        '1st',
        'with-dash',
        'x' * 64,
        '',
        'contacts',
        'schema',
        'openapi',
        'docs',
        'custom_objects',
        'merge_contacts',
        'select',
        'table',
        'id',
        'created_at',
        'été',
        None,
        5,
    ],
)
def test_bad_slugs_are_400_and_say_what_is_allowed(api, slug):
    body = assert_problem(define(api, {**PROJECTS, 'slug': slug}, status=400), 400, field='slug')
    assert body['detail']


@pytest.mark.parametrize(
    'field',
    [
        {'name': 'Budget', 'type': 'number'},
        {'name': 'order', 'type': 'text'},
        {'name': 'archived_at', 'type': 'text'},
        {'name': 'x', 'type': 'money'},
        {'name': 'x', 'type': 'reference'},
        {'name': 'x', 'type': 'reference', 'target': 'nowhere'},
        {'name': 'x', 'type': 'reference', 'target': 'companies_summary'},
        {'name': 'x', 'type': 'text', 'target': 'tags'},
        {'name': 'x', 'type': 'text', 'required': 'yes'},
        'not an object',
    ],
)
def test_bad_fields_are_400(api, field):
    assert_problem(define(api, {'slug': 'things', 'fields': [field]}, status=400), 400, field='fields')
    api.get('/api/things', status=404)


def test_duplicate_slug_is_409(api):
    define(api)
    assert_problem(define(api, status=409), 409, field='slug')


def test_two_organizations_may_use_one_slug_with_different_fields(api, other_api):
    define(api)
    define(other_api, {'slug': 'projects', 'fields': [{'name': 'codename', 'type': 'text'}]})
    mine = api.create('projects', title='Apollo')
    theirs = other_api.create('projects', codename='X')
    assert 'codename' not in mine and 'title' not in theirs
    assert [r['id'] for r in api.list('projects')] == [mine['id']]
    assert [r['id'] for r in other_api.list('projects')] == [theirs['id']]
    other_api.get(f'/api/projects/{mine["id"]}', status=404)


def test_another_organizations_slug_is_as_unknown_as_a_missing_one(api, other_api):
    define(api)
    unknown = other_api.get('/api/nothing_here', status=404).json
    foreign = other_api.get('/api/projects', status=404).json
    assert foreign['title'] == unknown['title'] and foreign['status'] == 404
    other_api.get('/api/custom_objects/projects', status=404)


def test_references_must_name_a_record_of_the_same_organization(api, other_api):
    define(api)
    foreign = other_api.create('companies', name='Theirs')
    assert_problem(
        api.post('/api/projects', {'title': 'x', 'company': foreign['id']}, status=400), 400, field='company'
    )


def test_references_to_another_custom_object(api):
    define(api)
    define(api, {'slug': 'milestones', 'fields': [{'name': 'project', 'type': 'reference', 'target': 'projects'}]})
    project = api.create('projects', title='Apollo')
    milestone = api.create('milestones', project=project['id'])
    assert milestone['project'] == project['id']
    assert_problem(api.post('/api/milestones', {'project': 'rec_nope'}, status=400), 400, field='project')


def test_redefinition_adds_fields_changes_labels_and_keeps_data(api):
    define(api)
    record = api.create('projects', title='Apollo', seats=3)
    redefined = api.put(
        '/api/custom_objects/projects', {'label': 'Our projects', 'fields': [{'name': 'owner', 'type': 'text'}]}
    ).json
    assert redefined['label'] == 'Our projects'
    assert [f['name'] for f in redefined['fields']][-1] == 'owner' and len(redefined['fields']) == 9
    kept = api.get(f'/api/projects/{record["id"]}').json
    assert kept['seats'] == 3 and kept['owner'] is None
    api.put(f'/api/projects/{record["id"]}', {'owner': 'ann'})
    assert api.list('projects', filter={'owner': 'ann'})[0]['id'] == record['id']


def test_a_field_keeps_its_type(api):
    define(api)
    assert_problem(
        api.put('/api/custom_objects/projects', {'fields': [{'name': 'seats', 'type': 'text'}]}, status=409),
        409,
        field='fields',
    )


def test_archiving_a_definition_hides_the_resource_until_restored(api):
    define(api)
    record = api.create('projects', title='Apollo')
    assert api.delete('/api/custom_objects/projects').json['archived_at'] is not None
    api.get('/api/projects', status=404)
    assert 'projects' not in [r['resource'] for r in api.get('/api/schema').json]
    api.post('/api/custom_objects/projects/restore', status=200)
    assert [r['id'] for r in api.list('projects')] == [record['id']]


def test_dropping_a_field_answers_with_what_it_dropped(api):
    define(api)
    api.create('projects', title='Apollo', seats=4)
    answer = api.delete('/api/custom_objects/projects/fields/seats').json
    assert answer['dropped'] == {'name': 'seats', 'type': 'integer', 'required': False}
    assert 'seats' not in api.list('projects')[0]
    assert_problem(api.get('/api/projects', {'sort': 'seats'}, status=400), 400, field='seats')
    api.delete('/api/custom_objects/projects/fields/seats', status=404)


def test_only_administrators_define_objects_and_everyone_uses_them(api, user_api):
    assert_problem(define(user_api, status=403), 403)
    define(api)
    assert user_api.create('projects', title='Apollo')['title'] == 'Apollo'
    assert len(user_api.get('/api/custom_objects').json) == 1
    user_api.put('/api/custom_objects/projects', {'fields': []}, status=403)
    user_api.delete('/api/custom_objects/projects', status=403)


def second_instance(backend, database):
    """Another app over the same database through its own connections, as another gunicorn worker."""
    db = SQLiteDatabase(database.path) if backend == 'sqlite' else PostgresDatabase(database.url)
    return db, create_app(Settings(database_url='injected'), db=db)


def test_a_redefinition_is_seen_by_another_worker_at_once(api, backend, database):
    db, app = second_instance(backend, database)
    try:
        other_worker = Client(app, api.token)
        other_worker.get('/api/projects', status=404)
        define(api)
        assert other_worker.create('projects', title='Apollo')['title'] == 'Apollo'
        api.put('/api/custom_objects/projects', {'fields': [{'name': 'owner', 'type': 'text'}]})
        assert other_worker.create('projects', title='B', owner='ann')['owner'] == 'ann'
        api.delete('/api/custom_objects/projects/fields/owner')
        assert 'owner' not in other_worker.list('projects')[0]
        api.delete('/api/custom_objects/projects')
        other_worker.get('/api/projects', status=404)
    finally:
        db.close()


def test_a_failed_definition_leaves_no_table_and_no_definition(api, database, monkeypatch):
    attempted = []

    def explode(self, tx, table, fields):
        attempted.append(table)  # the CREATE TABLE has run by now
        raise RuntimeError('disk on fire')

    monkeypatch.setattr(CustomObjects, '_columns_ddl', explode)
    assert_problem(define(api, status=500), 500)
    monkeypatch.undo()
    assert api.get('/api/custom_objects').json == []
    assert database.introspect(attempted) == {}
    define(api)


def test_a_failed_field_addition_changes_nothing(api, monkeypatch):
    define(api)
    original = CustomObjects._columns_ddl

    def add_then_fail(self, tx, table, fields):
        original(self, tx, table, fields)
        raise RuntimeError('after the ALTER TABLE')

    monkeypatch.setattr(CustomObjects, '_columns_ddl', add_then_fail)
    assert_problem(
        api.put('/api/custom_objects/projects', {'fields': [{'name': 'owner', 'type': 'text'}]}, status=500), 500
    )
    monkeypatch.undo()
    assert 'owner' not in [f['name'] for f in api.get('/api/custom_objects/projects').json['fields']]
    assert 'owner' not in {c['name'] for c in api.get('/api/schema/projects').json['columns']}
    api.put('/api/custom_objects/projects', {'fields': [{'name': 'owner', 'type': 'text'}]})


def test_merging_contacts_moves_custom_references(api):
    define(api, {'slug': 'visits', 'fields': [{'name': 'contact', 'type': 'reference', 'target': 'contacts'}]})
    keep, lose = api.create('contacts', first_name='A'), api.create('contacts', first_name='B')
    visit = api.create('visits', contact=lose['id'])
    api.post('/api/merge_contacts', {'source_ids': [lose['id']], 'target_id': keep['id']}, status=200)
    assert api.get(f'/api/visits/{visit["id"]}').json['contact'] == keep['id']


def test_deleting_a_referenced_record_clears_the_custom_reference(api):
    define(api, {'slug': 'labels', 'fields': [{'name': 'tag', 'type': 'reference', 'target': 'tags'}]})
    tag = api.create('tags', name='vip')
    label = api.create('labels', tag=tag['id'])
    api.delete(f'/api/tags/{tag["id"]}')
    assert api.get(f'/api/labels/{label["id"]}').json['tag'] is None


def test_define_object_from_the_command_line(api, backend, database, tmp_path):
    import subprocess
    import sys

    if backend == 'sqlite':
        url = f'sqlite:///{database.path}'
    else:
        url = database.url
    path = tmp_path / 'definition.json'
    path.write_text(json.dumps(PROJECTS))
    result = subprocess.run(
        [sys.executable, '-m', 'crmapi', '--database', url, 'define-object', '--org', api.org_id, '--file', str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)['slug'] == 'projects'
    assert api.create('projects', title='From the CLI')['title'] == 'From the CLI'
