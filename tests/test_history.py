"""Change history: every write records one change per record it touched, in the write's own transaction;
`GET /api/:resource/:id/history` and the feed `GET /api/changes?after=` read them back, on both databases."""

import datetime as dt
import json
import threading

import pytest
import webtest

from crmapi import cli
from crmapi import create_app
from crmapi.accounts import Accounts
from crmapi.config import Settings
from crmapi.db import PostgresDatabase
from crmapi.db import SQLiteDatabase
from crmapi.history import History
from crmapi.store import new_ids
from crmapi.store import utc_now
from crmapi.values import format_timestamp

from conftest import Client
from conftest import assert_problem

CHANGE_FIELDS = {
    'id',
    'seq',
    'resource',
    'record_id',
    'operation',
    'actor',
    'user_id',
    'token_id',
    'changed_at',
    'changes',
    'record',
    'target_id',
    'source_ids',
    'depth',
}


def feed_page(api, **params):
    resp = api.get('/api/changes', params)
    return resp.json, int(resp.headers['X-Next-After'])


def feed(api, after=0, **params):
    """Every change of the organization after `after`, polled to the end."""
    changes = []
    while True:
        page, after = feed_page(api, after=after, limit=1000, **params)
        if not page:
            return changes
        changes += page


def last_seq(api):
    changes = feed(api)
    return changes[-1]['seq'] if changes else 0


def recorded(api, action):
    """What `action()` answers, and the changes it recorded."""
    mark = last_seq(api)
    answer = action()
    return answer, feed(api, after=mark)


def summary(changes):
    return [(c['operation'], c['resource'], c['record_id']) for c in changes]


def history(api, resource, record_id, status=200, **params):
    return api.get(f'/api/{resource}/{record_id}/history', params, status=status)


def database_url(database):
    return database.url if database.name == 'postgresql' else f'sqlite:///{database.path}'


def sql(database, text):
    """`text` with `?` placeholders, in the database's own style."""
    return text if database.name == 'sqlite' else text.replace('?', '%s')


# -- what each operation records ---------------------------------------------------------------------


def test_a_create_records_the_new_record_by_the_user_and_token_that_made_it(api, database):
    mark = last_seq(api)
    contact, [change] = recorded(api, lambda: api.create('contacts', first_name='Ada', last_name='Lovelace'))
    principal = Accounts(database).authenticate(api.token)
    assert set(change) == CHANGE_FIELDS
    assert change['seq'] == mark + 1 and change['id'].startswith('chg_') and len(change['id']) == 30
    assert (change['operation'], change['resource'], change['record_id']) == ('created', 'contacts', contact['id'])
    assert change['record'] == contact and change['changes'] is None
    assert (change['actor'], change['user_id'], change['token_id']) == ('user', principal.user_id, principal.token_id)
    assert dt.datetime.fromisoformat(change['changed_at']) >= dt.datetime.fromisoformat(contact['created_at'])


@pytest.mark.parametrize('method', ['put', 'patch'])
def test_an_update_records_only_the_fields_it_changed(api, method):
    contact = api.create('contacts', first_name='Ada', city='London', tags=[])
    body = {'first_name': 'Ada', 'city': 'Paris', 'email': 'ada@example.com', 'tags': []}
    write = getattr(api.app, f'{method}_json')
    _, [change] = recorded(api, lambda: write(f'/api/contacts/{contact["id"]}', body, headers=api.headers))
    assert change['operation'] == 'updated' and change['record'] is None
    assert change['changes'] == {'city': ['London', 'Paris'], 'email': [None, 'ada@example.com']}
    deal = api.create('deals', name='Big', amount=12.5)
    _, [change] = recorded(api, lambda: api.put(f'/api/deals/{deal["id"]}', {'amount': 13}))
    assert change['changes'] == {'amount': [12.5, 13]}


def test_a_write_that_changes_nothing_records_nothing_and_leaves_the_record_as_it_was(api):
    contact = api.create('contacts', first_name='Ada', city='London', external_id='ext-1', tags=[])
    archived = api.create('contacts', first_name='Old')
    api.delete(f'/api/contacts/{archived["id"]}')
    deal = api.create('deals', name='Big', amount=12.5)
    note = api.create('contact_notes', contact_id=contact['id'], date='2026-01-01T10:00:00Z')
    config = api.create('configuration', key='theme', value={'dark': True, 'size': 1})
    api.post('/api/custom_objects', {'slug': 'projects', 'fields': [{'name': 'title', 'type': 'text'}]})

    def nothing():
        api.put(f'/api/contacts/{contact["id"]}', {'first_name': 'Ada', 'city': 'London', 'tags': []})
        api.app.patch_json('/api/contacts', [{'id': contact['id'], 'city': 'London'}], headers=api.headers)
        api.post('/api/contacts?on_conflict=external_id', {'external_id': 'ext-1', 'first_name': 'Ada'}, status=200)
        api.post(f'/api/contacts/{contact["id"]}/restore', status=200)
        api.delete(f'/api/contacts/{archived["id"]}')
        api.put(f'/api/deals/{deal["id"]}', {'amount': 12.50})
        api.put(f'/api/contact_notes/{note["id"]}', {'date': '2026-01-01T11:00:00+01:00'})
        api.put(f'/api/configuration/{config["id"]}', {'value': {'size': 1, 'dark': True}})
        api.put('/api/custom_objects/projects', {'fields': [{'name': 'title', 'type': 'text'}]})

    _, changes = recorded(api, nothing)
    assert changes == []
    assert api.get(f'/api/contacts/{contact["id"]}').json == contact, 'updated_at kept'
    assert api.get('/api/custom_objects/projects').json['version'] == 1
    _, [change] = recorded(
        api, lambda: api.put(f'/api/configuration/{config["id"]}', {'value': {'dark': 1, 'size': 1}})
    )
    assert change['changes'] == {'value': [{'dark': True, 'size': 1}, {'dark': 1, 'size': 1}]}, 'true is not 1'


def test_archive_and_restore_record_the_archived_at_they_set(api):
    contact = api.create('contacts', first_name='Ada')
    archived, [change] = recorded(api, lambda: api.delete(f'/api/contacts/{contact["id"]}').json)
    assert change['operation'] == 'archived' and change['changes'] == {'archived_at': [None, archived['archived_at']]}
    _, [change] = recorded(api, lambda: api.post(f'/api/contacts/{contact["id"]}/restore', status=200))
    assert change['operation'] == 'restored' and change['changes'] == {'archived_at': [archived['archived_at'], None]}


def test_a_hard_delete_records_the_last_record_whose_history_stays_readable(api):
    task = api.create('tasks', text='Call Ada')
    task = api.put(f'/api/tasks/{task["id"]}', {'text': 'Call Ada back'}).json
    _, [change] = recorded(api, lambda: api.delete(f'/api/tasks/{task["id"]}'))
    assert (change['operation'], change['record']) == ('deleted', task)
    api.get(f'/api/tasks/{task["id"]}', status=404)
    assert [c['operation'] for c in history(api, 'tasks', task['id']).json] == ['deleted', 'updated', 'created']


def test_deleting_a_tag_records_the_contacts_it_is_removed_from(api):
    vip, other = api.create('tags', name='vip'), api.create('tags', name='other')
    contact = api.create('contacts', first_name='Ada', tags=[vip['id'], other['id']])
    _, changes = recorded(api, lambda: api.delete(f'/api/tags/{vip["id"]}'))
    assert summary(changes) == [('updated', 'contacts', contact['id']), ('deleted', 'tags', vip['id'])]
    assert changes[0]['changes'] == {'tags': [[vip['id'], other['id']], [other['id']]]}


def test_disabling_and_enabling_a_user_are_recorded_and_no_change_holds_a_token_hash(api, database):
    user, [change] = recorded(api, lambda: api.create('crm_users', email='bob@example.com'))
    assert change['operation'] == 'created' and 'token_hash' not in change['record']
    Accounts(database).create_token(api.org_id, 'bob@example.com')
    _, [change] = recorded(api, lambda: api.delete(f'/api/crm_users/{user["id"]}'))
    assert (change['operation'], change['changes']) == ('disabled', {'disabled': [False, True]})
    _, [change] = recorded(api, lambda: api.post(f'/api/crm_users/{user["id"]}/restore', status=200))
    assert (change['operation'], change['changes']) == ('enabled', {'disabled': [True, False]})
    with database.transaction() as tx:
        stored = str(tx.rows(sql(database, 'SELECT * FROM changes WHERE organization_id = ?'), [api.org_id]))
        hashes = [
            h
            for (h,) in tx.rows(
                sql(database, 'SELECT token_hash FROM api_tokens WHERE organization_id = ?'), [api.org_id]
            )
        ]
    assert len(hashes) == 2 and 'token_hash' not in stored and not any(h in stored for h in hashes)


def test_a_merge_records_merged_on_the_target_and_merged_into_on_each_source(api):
    target = api.create('contacts', first_name='Ada')
    one = api.create('contacts', first_name='Ada', email='ada@one.example')
    two = api.create('contacts', last_name='Lovelace')
    task = api.create('tasks', text='Call', contact_id=one['id'])
    merged, changes = recorded(
        api,
        lambda: (
            api.post(
                '/api/merge_contacts', {'source_ids': [one['id'], two['id']], 'target_id': target['id']}, status=200
            ).json
        ),
    )
    assert summary(changes) == [
        ('updated', 'tasks', task['id']),
        ('merged_into', 'contacts', one['id']),
        ('merged_into', 'contacts', two['id']),
        ('merged', 'contacts', target['id']),
    ]
    assert changes[0]['changes'] == {'contact_id': [one['id'], target['id']]}
    assert [(c['target_id'], c['record']) for c in changes[1:3]] == [(target['id'], one), (target['id'], two)]
    assert changes[3]['changes'] == {'email': [None, 'ada@one.example'], 'last_name': [None, 'Lovelace']}
    assert changes[3]['source_ids'] == [one['id'], two['id']] and merged['email'] == 'ada@one.example'


def test_a_batch_records_one_change_per_record_in_consecutive_numbers(api):
    mark = last_seq(api)
    created, changes = recorded(api, lambda: api.post('/api/contacts', [{'first_name': n} for n in 'ABC']).json)
    assert summary(changes) == [('created', 'contacts', c['id']) for c in created]
    _, patched = recorded(
        api,
        lambda: api.app.patch_json(
            '/api/contacts', [{'id': c['id'], 'city': 'Oslo'} for c in created], headers=api.headers
        ),
    )
    assert summary(patched) == [('updated', 'contacts', c['id']) for c in created]
    ids = json.dumps({'id': [c['id'] for c in created]})
    _, archived = recorded(api, lambda: api.app.delete(f'/api/contacts?filter={ids}', headers=api.headers))
    assert summary(archived) == [('archived', 'contacts', c['id']) for c in created]
    assert [c['seq'] for c in changes + patched + archived] == list(range(mark + 1, mark + 10))


def test_a_large_batch_records_every_change_and_every_character(api):
    text = 'tab\there, line\nbreak, back\\slash, "quotes", \\N, é, 😀'
    created, changes = recorded(
        api,
        lambda: api.post('/api/contacts', [{'first_name': f'{i} {text}', 'background': text} for i in range(30)]).json,
    )
    assert [c['record'] for c in changes] == created and created[7]['background'] == text
    _, changes = recorded(
        api,
        lambda: api.app.patch_json(
            '/api/contacts', [{'id': c['id'], 'background': None} for c in created], headers=api.headers
        ),
    )
    assert [c['changes'] for c in changes] == [{'background': [text, None]}] * 30


def test_an_upsert_records_created_and_updated(api):
    first = api.create('companies', name='Old A', external_id='a')
    answer, changes = recorded(
        api,
        lambda: (
            api.post(
                '/api/companies?on_conflict=external_id',
                [{'external_id': 'b', 'name': 'New B'}, {'external_id': 'a', 'name': 'Renamed A'}],
                status=200,
            ).json
        ),
    )
    assert summary(changes) == [('created', 'companies', answer[0]['id']), ('updated', 'companies', first['id'])]
    assert changes[0]['record'] == answer[0] and changes[1]['changes'] == {'name': ['Old A', 'Renamed A']}


def test_custom_object_records_and_definition_changes_are_recorded(api):
    definition, [change] = recorded(
        api,
        lambda: (
            api.post('/api/custom_objects', {'slug': 'projects', 'fields': [{'name': 'title', 'type': 'text'}]}).json
        ),
    )
    assert (change['operation'], change['resource'], change['record']) == ('created', 'custom_objects', definition)
    project, [change] = recorded(api, lambda: api.create('projects', title='Apollo'))
    assert (change['operation'], change['resource'], change['record']) == ('created', 'projects', project)
    _, [change] = recorded(api, lambda: api.put(f'/api/projects/{project["id"]}', {'title': 'Gemini'}))
    assert change['changes'] == {'title': ['Apollo', 'Gemini']}
    api.put('/api/custom_objects/projects', {'label': 'All projects'})
    api.delete('/api/custom_objects/projects')
    api.post('/api/custom_objects/projects/restore', status=200)
    api.delete('/api/custom_objects/projects/fields/title')
    changes = api.get('/api/custom_objects/projects/history').json
    assert [c['operation'] for c in changes] == ['updated', 'restored', 'archived', 'updated', 'created']
    assert changes[3]['changes'] == {'label': ['projects', 'All projects'], 'version': [1, 2]}
    assert changes[0]['changes']['fields'] == [[{'name': 'title', 'type': 'text', 'required': False}], []]
    assert {c['record_id'] for c in changes} == {definition['id']}
    api.get('/api/custom_objects/unicorns/history', status=404)


def test_the_command_line_writes_as_system(api, database, tmp_path, capsys):
    url = database_url(database)
    (tmp_path / 'def.json').write_text(json.dumps({'slug': 'vehicles', 'fields': [{'name': 'plate', 'type': 'text'}]}))

    def run():
        cli.main(['--database', url, 'define-object', '--org', api.org_id, '--file', str(tmp_path / 'def.json')])
        cli.main(['--database', url, 'create-token', '--org', api.org_id, '--email', 'eve@example.com'])
        cli.main(['--database', url, 'create-token', '--org', api.org_id, '--email', 'eve@example.com', '--admin'])

    _, changes = recorded(api, run)
    eve = next(u for u in api.list('crm_users') if u['email'] == 'eve@example.com')
    assert summary(changes) == [
        ('created', 'custom_objects', api.get('/api/custom_objects/vehicles').json['id']),
        ('created', 'crm_users', eve['id']),
        ('updated', 'crm_users', eve['id']),
    ]
    assert changes[2]['changes'] == {'administrator': [False, True]}
    assert {(c['actor'], c['user_id'], c['token_id']) for c in changes} == {('system', None, None)}


def test_an_idempotent_replay_records_nothing_more(api):
    headers = {'Idempotency-Key': 'once'}
    first, changes = recorded(api, lambda: api.post('/api/contacts', {'first_name': 'Ada'}, headers=headers).json)
    again, replayed = recorded(api, lambda: api.post('/api/contacts', {'first_name': 'Ada'}, headers=headers).json)
    assert summary(changes) == [('created', 'contacts', first['id'])] and again == first and replayed == []


# -- reading a record's history ----------------------------------------------------------------------


def test_a_history_pages_newest_first_with_content_range(api):
    contact = api.create('contacts', first_name='Ada')
    for city in ('Oslo', 'Paris', 'Rome', 'Lima'):
        api.put(f'/api/contacts/{contact["id"]}', {'city': city})
    resp = history(api, 'contacts', contact['id'], range=[0, 1])
    assert resp.headers['Content-Range'] == 'history 0-1/5'
    assert [c['changes']['city'][1] for c in resp.json] == ['Lima', 'Rome']
    resp = history(api, 'contacts', contact['id'], range=[4, 9])
    assert resp.headers['Content-Range'] == 'history 4-4/5' and resp.json[0]['operation'] == 'created'
    assert history(api, 'contacts', contact['id'], range=[5, 9]).headers['Content-Range'] == 'history */5'
    assert history(api, 'contacts_summary', contact['id']).json == history(api, 'contacts', contact['id']).json
    assert_problem(history(api, 'contacts', contact['id'], status=400, range=[0, 1000]), 400, param='range')
    assert_problem(history(api, 'contacts', contact['id'], status=400, sort='seq'), 400, param='sort')


def test_a_history_is_readable_by_every_user_of_the_organization_only(api, user_api, other_api):
    config = api.create('configuration', key='theme', value=1)
    assert [c['operation'] for c in history(user_api, 'configuration', config['id']).json] == ['created']
    assert_problem(history(other_api, 'configuration', config['id'], status=404), 404)
    assert_problem(history(other_api, 'configuration', config['id'], status=404, range=[9, 0]), 404)
    assert_problem(history(api, 'contacts', 'c_01nevernevernevernevernever', status=404), 404)
    assert_problem(history(api, 'unicorns', config['id'], status=404), 404)


def test_a_record_written_around_the_api_has_an_empty_history(api, database):
    with database.transaction(write=True) as tx:
        tx.execute(
            sql(
                database,
                "INSERT INTO tags (id, organization_id, name, created_at, updated_at) VALUES (?, ?, 'imported', ?, ?)",
            ),
            ['tag_imported', api.org_id, *[utc_now()] * 2],
        )
    resp = history(api, 'tags', 'tag_imported')
    assert resp.json == [] and resp.headers['Content-Range'] == 'history */0'


# -- the organization's feed -------------------------------------------------------------------------


def test_the_feed_answers_in_seq_order_after_a_number_up_to_a_limit_and_of_one_resource(api, user_api, other_api):
    mark = last_seq(api)
    contacts = api.post('/api/contacts', [{'first_name': n} for n in 'ABC']).json
    company = api.create('companies', name='Initech')
    page, after = feed_page(user_api, after=mark, limit=2)
    assert [c['record_id'] for c in page] == [contacts[0]['id'], contacts[1]['id']] and after == mark + 2
    page, after = feed_page(user_api, after=after)
    assert [c['record_id'] for c in page] == [contacts[2]['id'], company['id']] and after == mark + 4
    assert feed_page(user_api, after=after) == ([], after)
    assert [c['record_id'] for c in feed(api, after=mark, resource='companies')] == [company['id']]
    assert feed(api, resource='custom_objects') == []
    exposed = api.get('/api/changes').headers['Access-Control-Expose-Headers']
    assert 'X-Next-After' in {h.strip() for h in exposed.split(',')}
    assert not {c['record_id'] for c in feed(other_api)} & {company['id'], *(c['id'] for c in contacts)}


@pytest.mark.parametrize(
    'params, param',
    [
        ({'after': '-1'}, 'after'),
        ({'after': 'x'}, 'after'),
        ({'limit': '0'}, 'limit'),
        ({'limit': '1001'}, 'limit'),
        ({'resource': 'unicorns'}, 'resource'),
        ({'resource': 'contacts_summary'}, 'resource'),
        ({'range': '[0,9]'}, 'range'),
    ],
)
def test_a_bad_feed_parameter_is_a_400_naming_it(api, params, param):
    assert_problem(api.get('/api/changes', params, status=400), 400, param=param)


def test_changes_is_a_read_only_resource_of_the_schema_and_a_reserved_name(api):
    summary_ = {r['resource']: r for r in api.get('/api/schema').json}['changes']
    assert summary_['read_only'] is True
    columns = api.get('/api/schema/changes').json['columns']
    assert {c['name'] for c in columns} == CHANGE_FIELDS and not any(c['writable'] for c in columns)
    assert_problem(api.post('/api/changes', {}, status=405), 405)
    assert_problem(api.post('/api/custom_objects', {'slug': 'changes'}, status=400), 400, field='slug')
    doc = api.get('/api/openapi.json').json
    assert {'/changes', '/{resource}/{id}/history', '/custom_objects/{slug}/history'} <= set(doc['paths'])
    assert 'contacts' in doc['paths']['/{resource}/{id}/history']['parameters'][0]['schema']['enum']
    assert set(doc['components']['schemas']['changes']['properties']) == CHANGE_FIELDS


def test_a_user_reads_only_the_changes_of_resources_it_may_read(api, user_api):
    """Webhooks are for administrators only (their URLs are secrets): so are their changes, in the feed and in
    a history, as the records themselves."""
    mark = last_seq(api)
    hook = api.post('/api/webhooks', {'url': 'https://8.8.8.8/secret-path', 'events': ['*']}).json
    api.put(f'/api/webhooks/{hook["id"]}', {'description': 'sync'})
    contact = api.create('contacts', first_name='Ada')
    seen = feed(user_api, after=mark)
    assert summary(seen) == [('created', 'contacts', contact['id'])] and 'secret-path' not in json.dumps(seen)
    assert [(c['resource'], c['operation']) for c in feed(api, after=mark)] == [
        ('webhooks', 'created'),
        ('webhooks', 'updated'),
        ('contacts', 'created'),
    ]
    page, after = feed_page(user_api, after=mark, limit=1)
    assert summary(page) == [('created', 'contacts', contact['id'])] and after == mark + 3, 'hidden ones are passed'
    assert_problem(user_api.get('/api/changes', {'resource': 'webhooks'}, status=403), 403)
    assert [c['operation'] for c in feed(api, resource='webhooks')] == ['created', 'updated']
    assert_problem(history(user_api, 'webhooks', hook['id'], status=403), 403)
    assert [c['operation'] for c in history(api, 'webhooks', hook['id']).json] == ['updated', 'created']


def test_no_change_ever_holds_a_secret_or_a_token_hash(api, user_api, database):
    hook = api.post('/api/webhooks', {'url': 'https://8.8.8.8/hook', 'events': ['*']}).json
    rotated = api.post(f'/api/webhooks/{hook["id"]}/rotate_secret', status=200).json
    api.put(f'/api/webhooks/{hook["id"]}', {'enabled': False})
    user = api.create('crm_users', email='bob@example.com')
    token = Accounts(database).create_token(api.org_id, 'bob@example.com')
    api.put(f'/api/crm_users/{user["id"]}', {'first_name': 'Bob'})
    api.delete(f'/api/webhooks/{hook["id"]}')
    with database.transaction() as tx:
        stored = str(tx.rows(sql(database, 'SELECT * FROM changes WHERE organization_id = ?'), [api.org_id]))
        hashes = [
            h
            for (h,) in tx.rows(
                sql(database, 'SELECT token_hash FROM api_tokens WHERE organization_id = ?'), [api.org_id]
            )
        ]
    assert 'webhooks' in stored and 'crm_users' in stored
    secrets = [hook['secret'], rotated['secret'], token, user_api.token, *hashes]
    assert len(hashes) == 3 and not any(s in stored for s in secrets)
    assert 'secret' not in stored and 'token_hash' not in stored


def test_a_write_that_fails_records_nothing_and_takes_no_number(api):
    mark = last_seq(api)
    api.create('tags', name='vip')
    _, changes = recorded(api, lambda: api.post('/api/tags', [{'name': 'new'}, {'name': 'vip'}], status=409))
    assert changes == [] and [t['name'] for t in api.list('tags')] == ['vip']
    api.create('tags', name='next')
    assert [c['seq'] for c in feed(api, after=mark)] == [mark + 1, mark + 2], 'no number taken'


@pytest.mark.parametrize('first', [0, (1 << 20) - 3, (7 << 60) + (1 << 40) - 2])
def test_a_batch_of_ids_is_the_ids_made_one_by_one_counting_up_across_a_carry(monkeypatch, first):
    from crmapi import store

    monkeypatch.setattr(store, '_reserve', lambda count: first)
    ids = new_ids('chg_', 6)
    assert ids == [f'chg_{store.crockford(first + k)}' for k in range(6)] and ids == sorted(set(ids))


# -- the feed never skips a change -------------------------------------------------------------------

WRITERS, ROUNDS = 8, 6


def app_instances(database, wsgi_app, backend):
    """Several app instances over the same database, each with its own connections (as processes have)."""
    if backend == 'sqlite':
        dbs = [SQLiteDatabase(database.path) for _ in range(2)]
    else:
        dbs = [PostgresDatabase(database.url) for _ in range(3)]
    return dbs, [create_app(Settings(database_url='injected', access_log=False), db=db) for db in dbs]


def write_concurrently(apps, token, done):
    """WRITERS clients writing at once (creates, batches, updates, archives): the ids each write acknowledged."""
    acknowledged, errors = [], []

    def writer(n):
        client = Client(webtest.TestApp(apps[n % len(apps)]), token)
        try:
            for r in range(ROUNDS):
                batch = client.post('/api/contacts', [{'first_name': f'W{n}-{r}-{i}'} for i in range(1 + r % 3)]).json
                acknowledged.extend(('created', c['id']) for c in batch)
                client.put(f'/api/contacts/{batch[0]["id"]}', {'city': f'City {n}'})
                acknowledged.append(('updated', batch[0]['id']))
                client.delete(f'/api/contacts/{batch[-1]["id"]}')
                acknowledged.append(('archived', batch[-1]['id']))
        except Exception as exc:  # noqa: BLE001 -- reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    return acknowledged, errors


def test_a_poller_sees_every_acknowledged_change_exactly_once_and_in_order_while_eight_clients_write(
    api, database, wsgi_app, backend
):
    mark = last_seq(api)
    dbs, apps = app_instances(database, wsgi_app, backend)
    done, seen = threading.Event(), []

    def poll():
        client, after = Client(webtest.TestApp(apps[0]), api.token), mark
        while True:
            finished = done.is_set()
            page, after = feed_page(client, after=after, limit=7)
            seen.extend(page)
            if finished and not page:
                return

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        acknowledged, errors = write_concurrently(apps, api.token, done)
        poller.join()
    finally:
        for db in dbs:
            db.close()
    assert errors == []
    seqs = [c['seq'] for c in seen]
    assert seqs == list(range(mark + 1, mark + 1 + len(seen))), 'in order, none skipped, none twice'
    assert seen == feed(api, after=mark), 'what the poller saw is what was recorded'
    assert sorted((c['operation'], c['record_id']) for c in seen) == sorted(acknowledged)


def test_the_changes_of_one_record_chain_up_in_feed_order_while_eight_clients_update_it(
    api, database, wsgi_app, backend
):
    """Writes to one record take turns (its row lock): the feed numbers their changes in that order, so each
    change's old value is the previous change's new one."""
    shared = [api.create('contacts', first_name='Shared', title='0') for _ in range(2)]
    mark = last_seq(api)
    dbs, apps = app_instances(database, wsgi_app, backend)
    errors = []

    def writer(n):
        client = Client(webtest.TestApp(apps[n % len(apps)]), api.token)
        try:
            for r in range(ROUNDS):
                client.put(f'/api/contacts/{shared[r % 2]["id"]}', {'title': f'{n}-{r}'})
        except Exception as exc:  # noqa: BLE001 -- reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for db in dbs:
            db.close()
    assert errors == []
    changes = feed(api, after=mark)
    assert [c['seq'] for c in changes] == list(range(mark + 1, mark + 1 + WRITERS * ROUNDS))
    for contact in shared:
        titles = [c['changes']['title'] for c in changes if c['record_id'] == contact['id']]
        assert [old for old, _ in titles] == ['0'] + [new for _, new in titles[:-1]], 'each from the one before'
        assert titles[-1][1] == api.get(f'/api/contacts/{contact["id"]}').json['title']


def test_two_writes_of_one_organization_are_uncommitted_at_once_on_postgresql_and_the_feed_stays_gap_free(
    api, database, backend
):
    """PostgreSQL: an organization's open write holds neither its change numbers nor its live-row counter, so a
    second write goes through meanwhile, and a change is numbered once committed: a reader in between sees the
    second write's change alone, and the first one's comes after it. SQLite has one writer at a time: the second
    write waits for the first."""
    from crmapi.accounts import Principal
    from crmapi.services import build_services

    mark, store, principal = last_seq(api), build_services(database).store, Principal.system(api.org_id)
    info, made, errors = store.catalog.resolve('contacts', principal), {}, []
    first_wrote, second_done = threading.Event(), threading.Event()

    def first():
        try:
            with database.transaction(write=True):
                made['first'] = store.create(info, principal, {'first_name': 'First'})['id']
                first_wrote.set()
                made['overlapped'] = second_done.wait(10 if backend == 'postgresql' else 1)
        except Exception as exc:  # noqa: BLE001 -- reported by the test
            errors.append(exc)

    def second():
        try:
            first_wrote.wait(10)
            made['second'] = store.create(info, principal, {'first_name': 'Second'})['id']
            made['seen between'] = feed(api, after=mark)
            second_done.set()
        except Exception as exc:  # noqa: BLE001 -- reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert made['overlapped'] is (backend == 'postgresql'), 'both uncommitted at once on PostgreSQL only'
    changes = feed(api, after=mark)
    assert [c['seq'] for c in changes] == [mark + 1, mark + 2], 'none skipped'
    assert changes[: len(made['seen between'])] == made['seen between'], 'what was read before stays first'
    order = ['second', 'first'] if backend == 'postgresql' else ['first', 'second']
    assert [c['record_id'] for c in changes] == [made[name] for name in order]
    assert api.get('/api/contacts', {'range': [0, 0]}).headers['Content-Range'].endswith('/2'), 'exact total'


# -- retention ---------------------------------------------------------------------------------------


def backdate(database, org_id, up_to, days):
    when = format_timestamp(utc_now() - dt.timedelta(days=days))
    with database.transaction(write=True) as tx:
        tx.execute(
            sql(database, 'UPDATE changes SET changed_at = ? WHERE organization_id = ? AND seq <= ?'),
            [when, org_id, up_to],
        )


def test_prune_deletes_old_changes_a_batch_at_a_time_and_never_reuses_a_number(api, database, capsys, monkeypatch):
    contact = api.create('contacts', first_name='Ada')
    for city in ('Oslo', 'Paris', 'Rome', 'Lima', 'Kyiv'):
        api.put(f'/api/contacts/{contact["id"]}', {'city': city})
    mark = last_seq(api)
    backdate(database, api.org_id, mark - 3, days=400)
    monkeypatch.setenv('CRMAPI_HISTORY_DAYS', '365')
    capsys.readouterr()
    cli.main(['--database', database_url(database), 'prune'])
    assert 'pruned 3 change(s) older than 365 days' in capsys.readouterr().err
    backdate(database, api.org_id, mark - 1, days=40)
    assert History(database, utc_now, new_ids).prune(30, batch=1) == 2, 'one transaction each'
    assert [c['seq'] for c in history(api, 'contacts', contact['id']).json] == [mark]
    api.put(f'/api/contacts/{contact["id"]}', {'city': 'Bern'})
    assert [c['seq'] for c in feed(api)] == [mark, mark + 1]


def test_prune_refuses_a_retention_that_is_not_a_number_of_days(database, capsys, monkeypatch):
    monkeypatch.setenv('CRMAPI_HISTORY_DAYS', 'forever')
    with pytest.raises(SystemExit) as exit_:
        cli.main(['--database', database_url(database), 'prune'])
    assert 'CRMAPI_HISTORY_DAYS' in str(exit_.value.code)


def eight_clients_write(api, database, wsgi_app, backend):
    """Eight clients write at once through app instances of their own; then the live contacts of api's org."""
    dbs, apps = app_instances(database, wsgi_app, backend)
    try:
        acknowledged, errors = write_concurrently(apps, api.token, threading.Event())
    finally:
        for db in dbs:
            db.close()
    assert errors == [] and acknowledged
    with database.transaction() as tx:
        (live,) = tx.one(
            sql(database, 'SELECT COUNT(*) FROM contacts WHERE organization_id = ? AND archived_at IS NULL'),
            [api.org_id],
        )
    return live


def test_the_unfiltered_total_stays_exact_while_eight_clients_write(api, database, wsgi_app, backend):
    live = eight_clients_write(api, database, wsgi_app, backend)
    total = api.get('/api/contacts', {'range': [0, 0]}).headers['Content-Range'].rsplit('/', 1)[1]
    assert int(total) == live


def test_recount_gathers_a_counter_written_by_concurrent_clients_into_one_exact_slot(api, database, wsgi_app, backend):
    from crmapi.accounts import Principal
    from crmapi.services import build_services

    live = eight_clients_write(api, database, wsgi_app, backend)
    build_services(database).store.recount(Principal.system(api.org_id))
    with database.transaction() as tx:
        slots = tx.rows(
            sql(database, "SELECT slot, n FROM row_counts WHERE organization_id = ? AND table_name = 'contacts'"),
            [api.org_id],
        )
    assert slots == [(0, live)]
    total = api.get('/api/contacts', {'range': [0, 0]}).headers['Content-Range'].rsplit('/', 1)[1]
    assert int(total) == live
