"""Batches: `POST /api/:resource` with an array creates every record, `PATCH /api/:resource` updates
every item (each carries its `id`), `DELETE /api/:resource?filter={"id":[...]}` deletes, archives or
disables every listed record. Each is one transaction of at most 1,000 records: all of it or nothing,
with every bad item listed by its index. The single-record routes are the same code path with one item.
"""

import json
from urllib.parse import urlencode

import pytest

from conftest import assert_problem

MAX_BATCH = 1000


# -- helpers ---------------------------------------------------------------------------------------


def patch(api, resource, items, status=200, headers=None):
    return api.app.patch_json(f'/api/{resource}', items, headers={**api.headers, **(headers or {})}, status=status)


def delete(api, resource, ids, status=200, **params):
    query = urlencode({'filter': json.dumps({'id': ids}), **params}) if ids is not None else urlencode(params)
    return api.app.delete(f'/api/{resource}?{query}', headers=api.headers, status=status)


def total(api, resource):
    """The total of Content-Range for the default list (the live-row counter when there are rows)."""
    resp = api.get(f'/api/{resource}', {'range': [0, 0]})
    return int(resp.headers['Content-Range'].rsplit('/', 1)[1])


def people(n, start=0):
    return [{'first_name': f'First {i}', 'last_name': f'Last {i}'} for i in range(start, start + n)]


# -- POST an array ---------------------------------------------------------------------------------


def test_a_batch_creates_every_record_and_answers_them_in_order(api):
    resp = api.post('/api/contacts', people(3) + [{'lastName': 'Camel'}])
    created = resp.json
    assert [c['last_name'] for c in created] == ['Last 0', 'Last 1', 'Last 2', 'Camel']
    assert len({c['id'] for c in created}) == 4 and all(c['id'].startswith('c_') for c in created)
    assert 'Location' not in resp.headers, 'a batch has no one record to point at'
    assert api.get(f'/api/contacts/{created[1]["id"]}').json == created[1]
    assert total(api, 'contacts') == 4


def test_a_batch_of_one_thousand_is_accepted(api):
    created = api.post('/api/contacts', people(MAX_BATCH)).json
    assert len(created) == MAX_BATCH and created[-1]['last_name'] == f'Last {MAX_BATCH - 1}'
    assert total(api, 'contacts') == MAX_BATCH


def test_a_bad_item_at_the_end_of_a_thousand_leaves_nothing_written(api):
    body = people(MAX_BATCH - 1) + [{'last_name': 42}]
    problem = assert_problem(api.post('/api/contacts', body, status=400), 400, index=MAX_BATCH - 1, field='last_name')
    assert problem['errors'] == [{'index': MAX_BATCH - 1, 'field': 'last_name', 'detail': problem['detail']}]
    assert api.list('contacts') == []
    assert total(api, 'contacts') == 0


def test_a_batch_the_database_refuses_at_its_last_item_is_a_409_and_leaves_nothing_written(api):
    """NOTE: fifty records go to PostgreSQL by COPY, whose outcome is read only at the write's next statement."""
    kept = api.create('contacts', external_id='taken')
    changes = api.get('/api/changes').json
    body = people(49) + [{'last_name': 'Late', 'external_id': 'taken'}]
    assert_problem(api.post('/api/contacts', body, status=409), 409)
    assert api.list('contacts') == [kept]
    assert total(api, 'contacts') == 1
    assert api.get('/api/changes').json == changes
    assert api.list('contacts', filter={'q': 'Last'}) == []


def test_every_bad_item_is_listed_with_its_index_and_the_first_leads(api):
    body = [
        {'name': 'Fine'},
        {'name': 'Bad size', 'size': 'big'},
        {'name': 'Fine too'},
        'not an object',
        {'city': 'Oslo'},
    ]
    problem = assert_problem(api.post('/api/companies', body, status=400), 400, index=1, field='size')
    errors = problem['errors']
    assert [(e['index'], e.get('field')) for e in errors] == [(1, 'size'), (3, None), (4, 'name')]
    assert errors[0]['detail'] == problem['detail'] and 'size' in problem['detail']
    assert 'object' in errors[1]['detail'] and 'required' in errors[2]['detail']
    assert api.list('companies') == []


def test_more_than_a_thousand_items_is_a_400_naming_the_limit(api):
    problem = assert_problem(api.post('/api/contacts', people(MAX_BATCH + 1), status=400), 400, limit=MAX_BATCH)
    assert '1000' in problem['detail'] and '1001' in problem['detail']
    assert api.list('contacts') == []


def test_one_item_nested_past_the_depth_limit_among_flat_ones_is_a_400_and_nothing_is_written(api):
    """Flat items are not walked for depth (values._shallow); one holding nested JSON still is."""
    deep = json.loads('[' * 70 + '1' + ']' * 70)
    body = [{'key': f'flat-{i}', 'value': i} for i in range(3)] + [{'key': 'deep', 'value': deep}]
    resp = api.app.post(
        '/api/configuration', json.dumps(body), headers=api.headers, content_type='application/json', status=400
    )
    assert 'nested more than 64 levels deep' in assert_problem(resp, 400)['detail']
    assert not [r for r in api.list('configuration') if r['key'].startswith('flat-')]


@pytest.mark.parametrize('body', [[], 42, 'text', None])
def test_an_empty_array_or_a_body_that_is_neither_object_nor_array_is_a_400(api, body):
    resp = api.app.post(
        '/api/contacts', json.dumps(body), headers=api.headers, content_type='application/json', status=400
    )
    assert_problem(resp, 400)


def test_a_batch_needs_an_administrator_where_a_single_write_does(user_api):
    body = [{'key': 'a', 'value': 1}, {'key': 'b', 'value': 2}]
    assert_problem(user_api.post('/api/configuration', body, status=403), 403)
    assert_problem(patch(user_api, 'configuration', [{'id': 'cfg_x', 'value': 1}], status=403), 403)
    assert_problem(delete(user_api, 'configuration', ['cfg_x'], status=403), 403)


@pytest.mark.parametrize('resource', ['contacts_summary', 'companies_summary'])
def test_read_only_resources_refuse_batches_with_405(api, resource):
    resp = api.post(f'/api/{resource}', [{'name': 'x'}], status=405)
    assert_problem(resp, 405) and resp.headers['Allow'].startswith('GET')
    assert_problem(patch(api, resource, [{'id': 'x', 'name': 'y'}], status=405), 405)
    assert_problem(delete(api, resource, ['x'], status=405), 405)


def test_a_foreign_reference_in_a_batch_is_refused_exactly_like_a_missing_one(api, other_api):
    mine = api.create('companies', name='Mine')
    theirs = other_api.create('companies', name='Theirs')
    body = [
        {'last_name': 'A', 'company_id': mine['id']},
        {'last_name': 'B', 'company_id': theirs['id']},
        {'last_name': 'C', 'company_id': 'comp_00000000000000000000000000'},
    ]
    problem = assert_problem(api.post('/api/contacts', body, status=400), 400, index=1, field='company_id')
    foreign, missing = problem['errors']
    assert missing['index'] == 2
    nobody = 'comp_00000000000000000000000000'
    assert foreign['detail'].replace(theirs['id'], '?') == missing['detail'].replace(nobody, '?')
    assert api.list('contacts') == [] and other_api.list('contacts') == []


def test_references_of_a_batch_are_checked_for_arrays_too(api, other_api):
    tag = api.create('tags', name='vip')
    foreign_tag = other_api.create('tags', name='theirs')
    body = [{'last_name': 'A', 'tags': [tag['id']]}, {'last_name': 'B', 'tags': [tag['id'], foreign_tag['id']]}]
    assert_problem(api.post('/api/contacts', body, status=400), 400, index=1, field='tags')
    created = api.post('/api/contacts', body[:1] * 3).json
    assert [c['tags'] for c in created] == [[tag['id']]] * 3


def test_an_idempotency_key_replays_a_batch_instead_of_writing_it_twice(api):
    headers = {'Idempotency-Key': 'batch-1'}
    first = api.post('/api/contacts', people(3), headers=headers)
    again = api.post('/api/contacts', people(3), headers=headers)
    assert again.json == first.json and again.headers['Idempotent-Replayed'] == 'true'
    assert total(api, 'contacts') == 3
    assert_problem(api.post('/api/contacts', people(2), headers=headers, status=422), 422, param='Idempotency-Key')
    failed = {'Idempotency-Key': 'batch-2'}
    api.post('/api/contacts', [{'last_name': 1}], headers=failed, status=400)
    assert len(api.post('/api/contacts', people(2), headers=failed).json) == 2, 'a failed batch keeps no key'


def test_a_batch_of_a_custom_object_checks_its_fields_and_references(api, other_api):
    api.post(
        '/api/custom_objects',
        {
            'slug': 'projects',
            'fields': [
                {'name': 'title', 'type': 'text', 'required': True},
                {'name': 'budget', 'type': 'number'},
                {'name': 'company', 'type': 'reference', 'target': 'companies'},
            ],
        },
    )
    company = api.create('companies', name='Initech')
    foreign = other_api.create('companies', name='Elsewhere')
    body = [{'title': 'A', 'company': company['id']}, {'budget': 'lots'}, {'title': 'C', 'company': foreign['id']}]
    problem = assert_problem(api.post('/api/projects', body, status=400), 400, index=1, field='budget')
    assert {e['index'] for e in problem['errors']} == {1}, 'the foreign reference is checked once the items are valid'
    problem = assert_problem(api.post('/api/projects', [body[0], body[2]], status=400), 400, index=1, field='company')
    created = api.post('/api/projects', [body[0], {'title': 'B', 'budget': 2.5}]).json
    assert [p['title'] for p in created] == ['A', 'B'] and total(api, 'projects') == 2
    updated = patch(api, 'projects', [{'id': created[1]['id'], 'company': company['id']}]).json
    assert updated[0]['company'] == company['id'] and updated[0]['budget'] == 2.5
    archived = delete(api, 'projects', [p['id'] for p in created]).json
    assert all(p['archived_at'] for p in archived) and total(api, 'projects') == 0


def test_created_records_are_answered_exactly_as_they_read_back_for_every_field_type(api):
    """A create answers its records without reading them again (crmapi.store.Store._insert_new): built from the
    values written and the columns' defaults, they must be what a GET answers, type for type."""
    fields = [
        {'name': n, 'type': t, **({'target': 'companies'} if t == 'reference' else {})}
        for n, t in [('title', 'text'), ('size', 'integer'), ('budget', 'number'), ('done', 'boolean')]
        + [('due', 'date'), ('at', 'datetime'), ('company', 'reference'), ('extra', 'json')]
    ]
    api.post('/api/custom_objects', {'slug': 'projects', 'fields': fields[:-1]})
    api.post('/api/custom_objects', {'slug': 'plans', 'fields': fields})  # a JSON column: read back
    company = api.create('companies', name='Initech')
    item = {
        'title': 'A',
        'size': 3.0,
        'budget': 2.50,
        'done': True,
        'due': '2024-02-29',
        'at': '2024-05-01T10:00:00.5+02:00',
        'company': company['id'],
    }
    sparse = {'title': 'B', 'budget': 1e2}
    for resource, extra in (('projects', {}), ('plans', {'extra': {'b': 1.0, 'a': [1, 'x']}})):
        # NOTE: 25 items: PostgreSQL writes 20 or more by COPY, fewer by one INSERT
        for body in ([{**item, **extra}, sparse] * 12 + [sparse], {**item, **extra}, [sparse]):
            answered = api.post(f'/api/{resource}', body).json
            for record in answered if isinstance(body, list) else [answered]:
                read = api.get(f'/api/{resource}/{record["id"]}').json
                assert json.dumps(record, sort_keys=True) == json.dumps(read, sort_keys=True)
    contacts = api.post('/api/contacts', people(25)).json
    assert all(c['tags'] == [] for c in contacts) and contacts[0]['tags'] is not contacts[1]['tags']
    assert api.get(f'/api/contacts/{contacts[3]["id"]}').json == contacts[3]


# -- PATCH an array --------------------------------------------------------------------------------


def test_patch_on_a_collection_updates_every_item_and_keeps_fields_not_sent(api):
    created = api.post('/api/contacts', people(3)).json
    items = [{'id': created[2]['id'], 'city': 'Oslo'}, {'id': created[0]['id'], 'firstName': 'Ada', 'city': None}]
    updated = patch(api, 'contacts', items).json
    assert [u['id'] for u in updated] == [created[2]['id'], created[0]['id']], 'in the order of the items'
    assert updated[0]['city'] == 'Oslo' and updated[0]['first_name'] == 'First 2'
    assert updated[1]['first_name'] == 'Ada' and updated[1]['last_name'] == 'Last 0'
    assert all(u['updated_at'] > c['updated_at'] for u, c in zip(updated, [created[2], created[0]]))
    assert api.get(f'/api/contacts/{created[1]["id"]}').json == created[1]
    assert patch(api, 'contacts', [{'id': created[1]['id']}]).json == [created[1]], 'nothing to change'


@pytest.mark.parametrize('whose', ['unknown', 'foreign'])
def test_patch_with_an_unknown_or_foreign_id_is_a_404_naming_it_and_writes_nothing(api, other_api, whose):
    mine = api.post('/api/contacts', people(2)).json
    stranger = other_api.create('contacts', last_name='Theirs')['id'] if whose == 'foreign' else 'c_nobody'
    items = [{'id': mine[0]['id'], 'city': 'Oslo'}, {'id': stranger, 'city': 'Oslo'}, {'id': mine[1]['id']}]
    problem = assert_problem(patch(api, 'contacts', items, status=404), 404, index=1, field='id')
    assert problem['detail'] == f"No contacts record with id '{stranger}'"
    assert api.get(f'/api/contacts/{mine[0]["id"]}').json['city'] is None
    if whose == 'foreign':
        assert other_api.get(f'/api/contacts/{stranger}').json['city'] is None


def test_patch_items_each_need_an_id_and_name_a_record_once(api):
    contact = api.create('contacts', last_name='Once')
    problem = assert_problem(
        patch(api, 'contacts', [{'city': 'Oslo'}, {'id': contact['id']}, {'id': 7}], status=400),
        400,
        index=0,
        field='id',
    )
    assert [e['index'] for e in problem['errors']] == [0, 2]
    problem = assert_problem(
        patch(api, 'contacts', [{'id': contact['id']}, {'id': contact['id'], 'city': 'x'}], status=400),
        400,
        index=1,
        field='id',
    )
    assert 'Items 0 and 1' in problem['detail']


@pytest.mark.parametrize('write', ['post', 'patch'])
def test_a_unique_value_twice_in_a_batch_is_a_400_naming_both_items_and_the_field(api, write):
    tags = api.post('/api/tags', [{'name': 'a'}, {'name': 'b'}, {'name': 'c'}]).json
    items = [{'name': 'x'}, {'name': 'y'}, {'name': 'x'}]
    if write == 'patch':
        items = [{**item, 'id': tag['id']} for item, tag in zip(items, tags)]
    resp = patch(api, 'tags', items, status=400) if write == 'patch' else api.post('/api/tags', items, status=400)
    problem = assert_problem(resp, 400, index=2, field='name', items=[0, 2])
    assert problem['detail'] == "Items 0 and 2 have the same 'name' (x), which is unique: send each value once"
    assert sorted(t['name'] for t in api.list('tags')) == ['a', 'b', 'c']


def test_patch_validates_every_item_and_reports_them_all(api):
    created = api.post('/api/deals', [{'name': 'A'}, {'name': 'B'}]).json
    items = [{'id': created[0]['id'], 'amount': 'much'}, {'id': created[1]['id'], 'name': None}]
    problem = assert_problem(patch(api, 'deals', items, status=400), 400, index=0, field='amount')
    assert [(e['index'], e['field']) for e in problem['errors']] == [(0, 'amount'), (1, 'name')]
    assert [d['name'] for d in api.list('deals', sort='name')] == ['A', 'B']


def test_patch_needs_an_array(api):
    contact = api.create('contacts', last_name='One')
    assert_problem(patch(api, 'contacts', {'id': contact['id'], 'city': 'Oslo'}, status=400), 400)
    assert_problem(patch(api, 'contacts', [], status=400), 400)


# -- DELETE with an id filter ----------------------------------------------------------------------


def test_delete_on_a_collection_archives_contacts_and_answers_them(api):
    created = api.post('/api/contacts', people(4)).json
    gone = [created[3]['id'], created[1]['id']]
    archived = delete(api, 'contacts', gone).json
    assert [a['id'] for a in archived] == gone and all(a['archived_at'] for a in archived)
    assert [c['id'] for c in api.list('contacts')] == [created[0]['id'], created[2]['id']]
    assert total(api, 'contacts') == 2
    assert delete(api, 'contacts', gone).json == archived, 'archiving again changes nothing'
    assert total(api, 'contacts') == 2
    api.post(f'/api/contacts/{gone[0]}/restore', status=200)
    assert total(api, 'contacts') == 3


def test_delete_on_a_collection_of_tags_deletes_them_and_detaches_them_from_contacts(api):
    tags = api.post('/api/tags', [{'name': 'a'}, {'name': 'b'}, {'name': 'c'}]).json
    contacts = api.post(
        '/api/contacts',
        [{'last_name': 'X', 'tags': [t['id'] for t in tags]}, {'last_name': 'Y', 'tags': [tags[0]['id']]}],
    ).json
    deleted = delete(api, 'tags', [tags[0]['id'], tags[2]['id']]).json
    assert [t['name'] for t in deleted] == ['a', 'c']
    assert [t['name'] for t in api.list('tags')] == ['b'] and total(api, 'tags') == 1
    assert api.get(f'/api/contacts/{contacts[0]["id"]}').json['tags'] == [tags[1]['id']]
    assert api.get(f'/api/contacts/{contacts[1]["id"]}').json['tags'] == []
    assert_problem(delete(api, 'tags', [tags[0]['id']], status=404), 404)


def test_deleting_a_thousand_tags_detaches_them_all(api):
    tags = api.post('/api/tags', [{'name': f'tag {i}'} for i in range(MAX_BATCH)]).json
    contact = api.create('contacts', last_name='Tagged', tags=[t['id'] for t in tags[::10]])
    delete(api, 'tags', [t['id'] for t in tags])
    assert api.get(f'/api/contacts/{contact["id"]}').json['tags'] == []
    assert total(api, 'tags') == 0


def test_delete_on_a_collection_of_crm_users_disables_them(api, database):
    from crmapi.accounts import Accounts

    for email in ('a@example.com', 'b@example.com'):
        Accounts(database).create_token(api.org_id, email)
    users = [u for u in api.list('crm_users') if u['email'] in ('a@example.com', 'b@example.com')]
    disabled = delete(api, 'crm_users', [u['id'] for u in users]).json
    assert all(u['disabled'] for u in disabled) and len(disabled) == 2


def test_hard_deletes_of_a_still_referenced_record_are_refused_and_change_nothing(api):
    api.post(
        '/api/custom_objects',
        {'slug': 'pins', 'fields': [{'name': 'task', 'type': 'reference', 'target': 'tasks', 'required': True}]},
    )
    tasks = api.post('/api/tasks', [{'text': 'a'}, {'text': 'b'}]).json
    api.create('pins', task=tasks[1]['id'])
    assert_problem(delete(api, 'tasks', [t['id'] for t in tasks], status=409), 409, field='task')
    assert total(api, 'tasks') == 2


@pytest.mark.parametrize('whose', ['unknown', 'foreign'])
def test_delete_with_an_unknown_or_foreign_id_is_a_404_and_changes_nothing(api, other_api, whose):
    mine = api.post('/api/tags', [{'name': 'a'}, {'name': 'b'}]).json
    stranger = other_api.create('tags', name='theirs')['id'] if whose == 'foreign' else 'tag_nobody'
    problem = assert_problem(
        delete(api, 'tags', [mine[0]['id'], stranger, mine[1]['id']], status=404), 404, index=1, field='id'
    )
    assert problem['detail'] == f"No tags record with id '{stranger}'"
    assert total(api, 'tags') == 2
    if whose == 'foreign':
        other_api.get(f'/api/tags/{stranger}')


@pytest.mark.parametrize(
    'params',
    [
        {},
        {'filter': '{}'},
        {'filter': '{"id":[]}'},
        {'filter': '{"name":"a"}'},
        {'filter': '{"id":["x"],"name":"a"}'},
        {'filter': '{"id":[1]}'},
        {'filter': 'not json'},
        {'filter': '{"id":["x"]}', 'range': '[0,9]'},
    ],
)
def test_delete_on_a_collection_without_exactly_an_id_filter_is_a_400(api, params):
    api.create('contacts', last_name='Kept')
    resp = api.app.delete('/api/contacts?' + urlencode(params), headers=api.headers, status=400)
    assert_problem(resp, 400, param='range' if 'range' in params else 'filter')
    assert total(api, 'contacts') == 1


def test_delete_of_more_than_a_thousand_ids_is_a_400(api):
    assert_problem(
        delete(api, 'contacts', [f'c_{i}' for i in range(MAX_BATCH + 1)], status=400),
        400,
        limit=MAX_BATCH,
        param='filter',
    )


# -- counters ---------------------------------------------------------------------------------------


def test_content_range_totals_stay_right_through_batches(api):
    created = api.post('/api/contacts', people(10)).json
    assert total(api, 'contacts') == 10
    delete(api, 'contacts', [c['id'] for c in created[:4]])
    assert total(api, 'contacts') == 6
    delete(api, 'contacts', [c['id'] for c in created[:6]])
    assert total(api, 'contacts') == 4
    api.post('/api/contacts', [{'last_name': 1}] + people(3), status=400)
    assert total(api, 'contacts') == 4
    patch(api, 'contacts', [{'id': c['id'], 'city': 'Oslo'} for c in created])
    assert total(api, 'contacts') == 4
    assert total(api, 'contacts') == len(api.list('contacts', range=[0, 99]))
