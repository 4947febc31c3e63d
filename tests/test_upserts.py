"""Upserts: `POST /api/:resource?on_conflict=<unique column>` with one object or an array inserts each
row, or updates the organization's record (live or archived) that holds the same value in that column
with the fields sent. 201 when every row was created, 200 otherwise, and `X-Upsert-Result`.
The column must be unique per organization: `external_id` (contacts, companies, deals), `tags.name`,
`configuration.key`, `crm_users.email`, or a custom field defined `"unique": true`.
"""

import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import webtest

from crmapi import create_app
from crmapi.config import Settings
from crmapi.db import PostgresDatabase
from crmapi.db import SQLiteDatabase

from conftest import Client
from conftest import assert_problem


def upsert(api, resource, body, column='external_id', status=None, headers=None):
    expected = status if status is not None else [200, 201]
    return api.post(f'/api/{resource}?on_conflict={column}', body, status=expected, headers=headers)


def result(resp):
    return resp.headers['X-Upsert-Result']


def total(api, resource):
    resp = api.get(f'/api/{resource}', {'range': [0, 0]})
    return int(resp.headers['Content-Range'].rsplit('/', 1)[1])


# -- create, update, both ---------------------------------------------------------------------------


def test_an_upsert_of_new_keys_creates_them_201(api):
    resp = upsert(
        api,
        'contacts',
        [{'external_id': 'crm-1', 'last_name': 'Ada'}, {'external_id': 'crm-2', 'last_name': 'Grace'}],
        status=201,
    )
    assert result(resp) == 'created=2, updated=0'
    assert [(c['external_id'], c['last_name']) for c in resp.json] == [('crm-1', 'Ada'), ('crm-2', 'Grace')]
    assert 'Location' not in resp.headers
    assert total(api, 'contacts') == 2


def test_an_upsert_of_a_taken_key_updates_the_fields_sent_and_keeps_the_others(api):
    first = api.create('contacts', external_id='crm-1', first_name='Ada', last_name='Lovelace', city='London')
    resp = upsert(api, 'contacts', [{'external_id': 'crm-1', 'city': 'Paris', 'email': None}], status=200)
    assert result(resp) == 'created=0, updated=1'
    [stored] = resp.json
    assert stored['id'] == first['id'] and stored['created_at'] == first['created_at']
    assert (stored['first_name'], stored['last_name'], stored['city'], stored['email']) == (
        'Ada',
        'Lovelace',
        'Paris',
        None,
    )
    assert stored['updated_at'] > first['updated_at']
    assert api.get(f'/api/contacts/{first["id"]}').json == stored, 'the answer is the stored row'
    assert total(api, 'contacts') == 1


def test_a_mixed_upsert_is_200_counts_both_and_answers_in_the_order_sent(api):
    old = api.post(
        '/api/companies', [{'name': 'Old A', 'external_id': 'a'}, {'name': 'Old C', 'external_id': 'c'}]
    ).json
    body = [
        {'external_id': 'c', 'city': 'Oslo'},
        {'external_id': 'b', 'name': 'New B'},
        {'external_id': 'a', 'name': 'Renamed A'},
        {'external_id': 'd', 'name': 'New D'},
    ]
    resp = upsert(api, 'companies', body, status=200)
    assert result(resp) == 'created=2, updated=2'
    assert [(c['external_id'], c['name']) for c in resp.json] == [
        ('c', 'Old C'),
        ('b', 'New B'),
        ('a', 'Renamed A'),
        ('d', 'New D'),
    ]
    assert resp.json[0]['id'] == old[1]['id'] and resp.json[2]['id'] == old[0]['id']
    assert total(api, 'companies') == 4, 'only the created rows count'


def test_one_object_upserts_too_201_with_a_location_then_200(api):
    resp = upsert(api, 'deals', {'external_id': 'deal-9', 'name': 'Big', 'amount': 10}, status=201)
    assert result(resp) == 'created=1, updated=0'
    assert urlsplit(resp.headers['Location']).path == f'/api/deals/{resp.json["id"]}'
    again = upsert(api, 'deals', {'externalId': 'deal-9', 'amount': 12.5}, status=200)
    assert result(again) == 'created=0, updated=1' and 'Location' not in again.headers
    assert (again.json['id'], again.json['name'], again.json['amount']) == (resp.json['id'], 'Big', 12.5)


def test_an_update_may_leave_out_required_fields_but_a_new_record_may_not(api):
    api.create('companies', name='Acme', external_id='acme')
    resp = upsert(
        api, 'companies', [{'external_id': 'acme', 'city': 'Oslo'}, {'external_id': 'new', 'city': 'Rome'}], status=400
    )
    problem = assert_problem(resp, 400, index=1, field='name')
    assert [e['index'] for e in problem['errors']] == [1]
    assert api.list('companies')[0]['city'] is None, 'nothing written'
    resp = upsert(api, 'companies', [{'external_id': 'acme', 'city': 'Oslo'}, {'external_id': 'new', 'name': 'New'}])
    assert result(resp) == 'created=1, updated=1'
    assert resp.json[0]['name'] == 'Acme' and resp.json[0]['city'] == 'Oslo'


def test_an_archived_record_matched_by_an_upsert_is_updated_and_stays_archived(api):
    contact = api.create('contacts', external_id='gone', last_name='Old')
    api.delete(f'/api/contacts/{contact["id"]}')
    assert total(api, 'contacts') == 0
    resp = upsert(api, 'contacts', [{'external_id': 'gone', 'last_name': 'New'}], status=200)
    [stored] = resp.json
    assert stored['id'] == contact['id'] and stored['last_name'] == 'New' and stored['archived_at'] is not None
    assert api.list('contacts') == [] and total(api, 'contacts') == 0
    assert api.post(f'/api/contacts/{contact["id"]}/restore', status=200).json['last_name'] == 'New'
    assert total(api, 'contacts') == 1


def test_a_key_repeated_in_one_request_is_a_400_naming_both_items(api):
    body = [{'external_id': 'x', 'last_name': 'A'}, {'external_id': 'y'}, {'external_id': 'x', 'last_name': 'B'}]
    problem = assert_problem(upsert(api, 'contacts', body, status=400), 400, index=2, field='external_id')
    assert 'Items 0 and 2' in problem['detail']
    assert api.list('contacts') == []


@pytest.mark.parametrize('item', [{'last_name': 'No key'}, {'external_id': None, 'last_name': 'Null key'}])
def test_a_row_without_a_value_for_the_key_is_a_400(api, item):
    body = [{'external_id': 'k', 'last_name': 'Fine'}, item]
    assert_problem(upsert(api, 'contacts', body, status=400), 400, index=1, field='external_id')
    assert_problem(upsert(api, 'contacts', item, status=400), 400, field='external_id')
    assert api.list('contacts') == []


@pytest.mark.parametrize(
    'resource, column',
    [
        ('contacts', 'email'),
        ('contacts', 'id'),
        ('contacts', 'organization_id'),
        ('contacts', 'nope'),
        ('tasks', 'text'),
        ('tags', 'color'),
        ('contacts', ''),
    ],
)
def test_on_conflict_must_name_a_unique_column_of_the_resource(api, resource, column):
    problem = assert_problem(
        upsert(api, resource, [{'text': 'x', 'email': 'a@b.c', 'color': 'red'}], column, status=400),
        400,
        param='on_conflict',
    )
    assert f"'{column}'" in problem['detail']
    assert total(api, resource) == 0


def test_items_are_validated_and_listed_before_anything_is_written(api):
    body = [{'external_id': 'a', 'last_name': 1}, {'external_id': 'b'}, {'external_id': 'c', 'tags': 'x'}]
    problem = assert_problem(upsert(api, 'contacts', body, status=400), 400, index=0, field='last_name')
    assert [(e['index'], e['field']) for e in problem['errors']] == [(0, 'last_name'), (2, 'tags')]
    assert api.list('contacts') == []


def test_upserts_on_builtin_unique_columns_tags_name_and_configuration_key(api):
    tag = api.create('tags', name='vip', color='red')
    resp = upsert(api, 'tags', [{'name': 'vip', 'color': 'gold'}, {'name': 'new'}], 'name')
    assert result(resp) == 'created=1, updated=1' and resp.json[0]['id'] == tag['id']
    assert resp.json[0]['color'] == 'gold'
    first = upsert(api, 'configuration', {'key': 'theme', 'value': {'dark': True}}, 'key', status=201).json
    second = upsert(api, 'configuration', {'key': 'theme', 'value': [1, 2]}, 'key', status=200).json
    assert second['id'] == first['id'] and second['value'] == [1, 2]


def test_upserts_never_match_another_organizations_record(api, other_api):
    theirs = other_api.create('contacts', external_id='shared', last_name='Theirs')
    mine = upsert(api, 'contacts', {'external_id': 'shared', 'last_name': 'Mine'}, status=201).json
    assert mine['id'] != theirs['id']
    assert other_api.get(f'/api/contacts/{theirs["id"]}').json == theirs


def test_a_foreign_reference_in_an_upsert_is_refused_like_a_missing_one(api, other_api):
    foreign = other_api.create('companies', name='Theirs')
    body = [{'external_id': 'a', 'company_id': foreign['id']}, {'external_id': 'b', 'company_id': 'comp_nobody'}]
    problem = assert_problem(upsert(api, 'contacts', body, status=400), 400, index=0, field='company_id')
    first, second = problem['errors']
    assert first['detail'].replace(foreign['id'], '?') == second['detail'].replace('comp_nobody', '?')
    assert api.list('contacts') == []


def test_upserts_respect_roles_and_read_only_resources(api, user_api):
    assert_problem(upsert(user_api, 'configuration', {'key': 'k', 'value': 1}, 'key', status=403), 403)
    assert_problem(upsert(api, 'contacts_summary', {'external_id': 'x'}, status=405), 405)
    assert upsert(user_api, 'contacts', {'external_id': 'x'}, status=201).json['external_id'] == 'x'


def test_external_ids_are_unique_per_organization_for_plain_writes_too(api):
    api.create('contacts', external_id='one')
    assert_problem(api.post('/api/contacts', {'external_id': 'one'}, status=409), 409)
    problem = assert_problem(
        api.post('/api/contacts', [{'external_id': 'two'}, {'external_id': 'two'}], status=400),
        400,
        index=1,
        field='external_id',
        items=[0, 1],
    )
    assert problem['detail'] == "Items 0 and 1 have the same 'external_id' (two), which is unique: send each value once"
    assert len(api.post('/api/contacts', [{'external_id': None}, {}]).json) == 2, 'many records have none'
    summary = api.get('/api/contacts_summary', {'filter': {'external_id': 'one'}}).json
    assert [s['external_id'] for s in summary] == ['one']


def test_an_idempotency_key_replays_an_upsert_with_its_result(api):
    api.create('contacts', external_id='a', last_name='A')
    body = [{'external_id': 'a', 'city': 'Oslo'}, {'external_id': 'b', 'last_name': 'B'}]
    headers = {'Idempotency-Key': 'upsert-1'}
    first = upsert(api, 'contacts', body, headers=headers, status=200)
    again = upsert(api, 'contacts', body, headers=headers, status=200)
    assert again.json == first.json and again.headers['Idempotent-Replayed'] == 'true'
    assert result(again) == result(first) == 'created=1, updated=1'
    assert total(api, 'contacts') == 2
    assert_problem(api.post('/api/contacts', body, headers=headers, status=422), 422, param='Idempotency-Key')
    single = upsert(api, 'contacts', {'external_id': 'c'}, headers={'Idempotency-Key': 'upsert-2'}, status=201)
    replay = upsert(api, 'contacts', {'external_id': 'c'}, headers={'Idempotency-Key': 'upsert-2'}, status=201)
    assert replay.headers['Location'] == single.headers['Location'] and result(replay) == 'created=1, updated=0'


# -- custom objects ---------------------------------------------------------------------------------


def define_products(api, unique=True):
    sku = {'name': 'sku', 'type': 'text', **({'unique': True} if unique else {})}
    return api.post(
        '/api/custom_objects',
        {
            'slug': 'products',
            'fields': [
                sku,
                {'name': 'title', 'type': 'text', 'required': True},
                {'name': 'price', 'type': 'number'},
                {'name': 'serial', 'type': 'integer'},
                {'name': 'meta', 'type': 'json'},
            ],
        },
    ).json


def test_a_custom_field_defined_unique_is_an_upsert_key(api):
    definition = define_products(api)
    assert definition['fields'][0] == {'name': 'sku', 'type': 'text', 'required': False, 'unique': True}
    first = upsert(api, 'products', [{'sku': 'A-1', 'title': 'Anvil', 'price': 9.5}], 'sku', status=201).json
    resp = upsert(api, 'products', [{'sku': 'A-1', 'price': 11}, {'sku': 'B-2', 'title': 'Bell'}], 'sku')
    assert result(resp) == 'created=1, updated=1'
    assert (resp.json[0]['id'], resp.json[0]['title'], resp.json[0]['price']) == (first[0]['id'], 'Anvil', 11)
    assert_problem(api.post('/api/products', {'sku': 'B-2', 'title': 'Copy'}, status=409), 409)
    assert_problem(upsert(api, 'products', {'serial': 1, 'title': 'x'}, 'serial', status=400), 400, param='on_conflict')
    assert total(api, 'products') == 2


def test_turning_unique_on_for_a_field_with_duplicates_is_a_409_naming_one(api):
    define_products(api, unique=False)
    api.post(
        '/api/products',
        [{'sku': 'dup', 'title': 'A'}, {'sku': 'dup', 'title': 'B'}, {'title': 'No sku'}, {'title': 'No sku either'}],
    )
    problem = assert_problem(
        api.put(
            '/api/custom_objects/products', {'fields': [{'name': 'sku', 'type': 'text', 'unique': True}]}, status=409
        ),
        409,
    )
    assert "'dup'" in problem['detail']
    assert 'unique' not in api.get('/api/custom_objects/products').json['fields'][0]
    [second] = api.list('products', filter={'title': 'B'})
    api.put(f'/api/products/{second["id"]}', {'sku': 'other'})
    sku = {'name': 'sku', 'type': 'text', 'unique': True}
    definition = api.put('/api/custom_objects/products', {'fields': [sku]}).json
    assert definition['fields'][0]['unique'] is True
    resp = upsert(api, 'products', {'sku': 'other', 'title': 'B2'}, 'sku', status=200)
    assert resp.json['id'] == second['id'] and resp.json['title'] == 'B2'


def test_a_unique_field_stays_unique_when_a_redefinition_leaves_the_member_out_and_may_be_turned_off(api):
    define_products(api)
    kept = api.put('/api/custom_objects/products', {'fields': [{'name': 'sku', 'type': 'text', 'label': 'SKU'}]}).json
    assert kept['fields'][0] == {'name': 'sku', 'type': 'text', 'required': False, 'label': 'SKU', 'unique': True}
    off = api.put('/api/custom_objects/products', {'fields': [{'name': 'sku', 'type': 'text', 'unique': False}]}).json
    assert 'unique' not in off['fields'][0]
    api.post('/api/products', [{'sku': 'same', 'title': 'A'}, {'sku': 'same', 'title': 'B'}])
    assert_problem(upsert(api, 'products', {'sku': 'same', 'title': 'C'}, 'sku', status=400), 400, param='on_conflict')


def test_unique_fields_are_checked_when_defined_and_can_be_dropped(api):
    resp = api.post(
        '/api/custom_objects',
        {'slug': 'things', 'fields': [{'name': 'data', 'type': 'json', 'unique': True}]},
        status=400,
    )
    assert_problem(resp, 400, field='fields')
    assert_problem(
        api.post(
            '/api/custom_objects',
            {'slug': 'things', 'fields': [{'name': 'code', 'type': 'text', 'unique': 'yes'}]},
            status=400,
        ),
        400,
        field='fields',
    )
    define_products(api)
    api.create('products', sku='A', title='A')
    assert api.delete('/api/custom_objects/products/fields/sku').json['dropped']['unique'] is True
    api.put('/api/custom_objects/products', {'fields': [{'name': 'sku', 'type': 'text'}]})
    assert len(api.post('/api/products', [{'sku': 'A', 'title': 'x'}, {'sku': 'A', 'title': 'y'}]).json) == 2


def test_a_unique_integer_or_date_field_matches_by_value(api):
    api.post(
        '/api/custom_objects',
        {
            'slug': 'days',
            'fields': [
                {'name': 'day', 'type': 'date', 'unique': True},
                {'name': 'n', 'type': 'integer', 'unique': True},
                {'name': 'note', 'type': 'text'},
            ],
        },
    )
    first = upsert(api, 'days', [{'day': '2026-01-02', 'n': 7, 'note': 'a'}], 'day', status=201).json[0]
    by_day = upsert(api, 'days', [{'day': '2026-01-02', 'note': 'b'}], 'day', status=200).json[0]
    by_n = upsert(api, 'days', [{'n': 7.0, 'note': 'c'}], 'n', status=200).json[0]
    assert first['id'] == by_day['id'] == by_n['id'] and by_n['note'] == 'c'


# -- concurrency -------------------------------------------------------------------------------------


def second_app(backend, database):
    """Another app over the same database through its own connections, as another gunicorn worker."""
    db = SQLiteDatabase(database.path) if backend == 'sqlite' else PostgresDatabase(database.url)
    return db, create_app(Settings(database_url='injected', access_log=False), db=db)


def race(clients, body, rounds=5):
    """Every client upserts `body` `rounds` times, all at once; the X-Upsert-Result of every answer."""
    results, errors, start = [], [], threading.Barrier(len(clients))

    def run(client):
        try:
            start.wait()
            for _ in range(rounds):
                results.append(result(upsert(client, 'contacts', body)))
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_concurrent_upserts_of_one_key_end_with_one_record(api, wsgi_app, backend, database):
    db, app = second_app(backend, database)
    try:
        clients = [Client(webtest.TestApp(a), api.token) for a in (wsgi_app, app) * 3]
        body = [{'external_id': 'race-1', 'last_name': 'Runner'}, {'external_id': 'race-2', 'last_name': 'Other'}]
        results = race(clients, body)
    finally:
        db.close()
    assert sum(int(r.split(',')[0].split('=')[1]) for r in results) == 2, results
    assert sorted(c['external_id'] for c in api.list('contacts')) == ['race-1', 'race-2']
    assert total(api, 'contacts') == 2


RACER = """
import json, sys, time
import webtest
from crmapi import create_app
from crmapi.config import Settings
url, token, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
app = webtest.TestApp(create_app(Settings(database_url=url, access_log=False)))
time.sleep(max(0, start - time.time()))
for i in range(10):
    resp = app.post_json('/api/contacts?on_conflict=external_id', [{'external_id': 'proc', 'city': str(i)}],
                         headers={'Authorization': 'Bearer ' + token})
    print(resp.headers['X-Upsert-Result'])
"""


def test_concurrent_upserts_from_two_processes_end_with_one_record(api, backend, database):
    url = f'sqlite:///{database.path}' if backend == 'sqlite' else database.url  # an absolute path: sqlite:////tmp/...
    start = str(time.time() + 1.5)
    racers = [
        subprocess.Popen(
            [sys.executable, '-c', RACER, url, api.token, start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [r.communicate(timeout=60) for r in racers]
    assert all(r.returncode == 0 for r in racers), [err[-2000:] for _, err in outputs]
    results = [line for out, _ in outputs for line in out.splitlines()]
    assert len(results) == 20 and sum(line.startswith('created=1') for line in results) == 1, results
    assert [c['external_id'] for c in api.list('contacts')] == ['proc']
    assert total(api, 'contacts') == 1


def test_a_key_committed_by_another_transaction_while_an_upsert_waits_is_updated_not_duplicated(api, backend, database):
    """Another writer inserts the key and holds its transaction open; the upsert waits for it (SQLite: the
    write lock; PostgreSQL: the unique index) and then updates that row, counting it as updated."""
    if backend == 'sqlite':
        import sqlite3

        conn = sqlite3.connect(database.path, isolation_level=None)
        conn.execute('BEGIN IMMEDIATE')
        p = '?'
    else:
        import psycopg

        conn = psycopg.connect(database.url)
        p = '%s'
    stamp = '2026-01-01T00:00:00.000000Z'
    conn.execute(
        f'INSERT INTO contacts (id, organization_id, external_id, last_name, tags, created_at, updated_at) '
        f"VALUES ({p}, {p}, {p}, {p}, '[]', {p}, {p})",
        ('c_elsewhere', api.org_id, 'late', 'Raw', stamp, stamp),
    )
    conn.execute(
        f"INSERT INTO row_counts (organization_id, table_name, n) VALUES ({p}, 'contacts', 1) "
        'ON CONFLICT (organization_id, table_name, slot) DO UPDATE SET n = row_counts.n + 1',
        (api.org_id,),
    )
    answers = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            upsert(api, 'contacts', [{'external_id': 'late', 'city': 'Oslo'}, {'external_id': 'fresh'}])
        )
    )
    waiting.start()
    time.sleep(0.5)
    conn.commit()
    conn.close()
    waiting.join(30)
    [resp] = answers
    assert result(resp) == 'created=1, updated=1'
    assert (resp.json[0]['id'], resp.json[0]['last_name'], resp.json[0]['city']) == ('c_elsewhere', 'Raw', 'Oslo')
    assert sorted(c['external_id'] for c in api.list('contacts')) == ['fresh', 'late']
    assert total(api, 'contacts') == 2
