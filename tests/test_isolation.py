"""Organization isolation: A never sees nor touches B's records; B's ids look to A like ids that never existed."""

import pytest
from conftest import RULE_SHAPE
from conftest import SUMMARIES
from conftest import WRITABLE
from conftest import assert_problem

RESOURCES = WRITABLE + SUMMARIES
# A change PUT may send to each resource (views answer 405 either way).
UPDATES = {
    'contacts': {'first_name': 'Hacked'},
    'companies': {'name': 'Hacked'},
    'deals': {'name': 'Hacked'},
    'tasks': {'text': 'Hacked'},
    'contact_notes': {'text': 'Hacked'},
    'deal_notes': {'text': 'Hacked'},
    'company_notes': {'text': 'Hacked'},
    'tags': {'name': 'Hacked'},
    'configuration': {'value': 'hacked'},
    'automation_rules': {'name': 'Hacked'},
    'crm_users': {'first_name': 'Hacked'},
    'companies_summary': {'name': 'Hacked'},
    'contacts_summary': {'first_name': 'Hacked'},
}


def make_records(client, label):
    """One linked record of every resource in `client`'s organization: {resource: id}."""
    ids = {}
    ids['companies'] = client.create('companies', name=f'{label} Industries', city=f'{label}ville')['id']
    ids['tags'] = client.create('tags', name=f'{label}-vip', color='red')['id']
    ids['contacts'] = client.create(
        'contacts',
        first_name=label,
        last_name='Smith',
        email=f'{label}@example.com',
        company_id=ids['companies'],
        tags=[ids['tags']],
    )['id']
    ids['deals'] = client.create(
        'deals', name=f'{label} deal', company_id=ids['companies'], contact_ids=[ids['contacts']], amount=1000.5
    )['id']
    ids['crm_users'] = client.create('crm_users', email=f'{label.lower()}.sales@example.com', first_name=label)['id']
    ids['tasks'] = client.create(
        'tasks',
        text=f'Call {label}',
        contact_id=ids['contacts'],
        company_id=ids['companies'],
        deal_id=ids['deals'],
        assignee_id=ids['crm_users'],
    )['id']
    ids['contact_notes'] = client.create('contact_notes', contact_id=ids['contacts'], text=f'{label} note')['id']
    ids['deal_notes'] = client.create('deal_notes', deal_id=ids['deals'], text=f'{label} note')['id']
    ids['company_notes'] = client.create('company_notes', company_id=ids['companies'], text=f'{label} note')['id']
    ids['configuration'] = client.create('configuration', key='theme', value={'owner': label})['id']
    ids['automation_rules'] = client.create(
        'automation_rules',
        name=f'{label} rule',
        **RULE_SHAPE,
        conditions=[{'field': 'status', 'op': 'eq', 'value': 'lead'}],
    )['id']
    ids['companies_summary'] = ids['companies']
    ids['contacts_summary'] = ids['contacts']
    return ids


def snapshot(client, ids):
    """Every record of `ids` as its owner sees it."""
    return {resource: client.get(f'/api/{resource}/{record_id}').json for resource, record_id in ids.items()}


def missing_id(record_id):
    """An id of the same shape that no organization has."""
    return record_id[:-6] + 'zzzzzz'


@pytest.fixture
def theirs(other_api):
    """Organization B's records, and a check that they end every test unchanged."""
    ids = make_records(other_api, 'Bravo')
    before = snapshot(other_api, ids)
    yield ids
    assert snapshot(other_api, ids) == before


@pytest.fixture
def ours(api):
    return make_records(api, 'Alpha')


def request(client, method, path, body=None):
    if method == 'GET':
        return client.get(path, status='*')
    if method == 'DELETE':
        return client.delete(path, status='*')
    if method == 'PUT':
        return client.put(path, body, status='*')
    return client.post(path, body or {}, status='*')


def assert_like_missing(client, method, resource, record_id, suffix=''):
    """`record_id` answers exactly as an id that never existed, apart from the id in the detail."""
    body = UPDATES[resource] if method == 'PUT' else None
    other = missing_id(record_id)
    foreign = request(client, method, f'/api/{resource}/{record_id}{suffix}', body)
    never = request(client, method, f'/api/{resource}/{other}{suffix}', body)
    assert foreign.status_int == never.status_int, (foreign.text, never.text)
    assert foreign.status_int in (404, 405)
    got, expected = assert_problem(foreign, never.status_int), assert_problem(never, never.status_int)
    assert got == {k: (v.replace(other, record_id) if isinstance(v, str) else v) for k, v in expected.items()}
    assert foreign.headers.get('Allow') == never.headers.get('Allow')
    return got


# -- reading and writing one record ----------------------------------------------------------------


@pytest.mark.parametrize('resource', RESOURCES)
def test_get_of_another_organizations_record_is_404_like_a_missing_one(api, theirs, resource):
    body = assert_like_missing(api, 'GET', resource, theirs[resource])
    assert body['status'] == 404
    assert 'Bravo' not in str(body)


@pytest.mark.parametrize('resource', RESOURCES)
def test_put_on_another_organizations_record_is_like_a_missing_one(api, theirs, resource):
    body = assert_like_missing(api, 'PUT', resource, theirs[resource])
    assert body['status'] == (405 if resource in SUMMARIES else 404)


@pytest.mark.parametrize('resource', RESOURCES)
def test_delete_of_another_organizations_record_is_like_a_missing_one(api, theirs, resource):
    body = assert_like_missing(api, 'DELETE', resource, theirs[resource])
    assert body['status'] == (405 if resource in SUMMARIES else 404)


RESTORABLE = ['contacts', 'companies', 'deals', 'crm_users']


@pytest.mark.parametrize('resource', sorted(set(RESOURCES) - set(RESTORABLE)))
def test_restore_of_another_organizations_record_is_like_a_missing_one(api, theirs, resource):
    assert_like_missing(api, 'POST', resource, theirs[resource], '/restore')


@pytest.mark.parametrize('resource', RESTORABLE)
def test_restore_of_another_organizations_archived_record_is_404_and_leaves_it_archived(api, other_api, resource):
    record_id = make_records(other_api, 'Bravo')[resource]
    other_api.delete(f'/api/{resource}/{record_id}')
    before = other_api.get(f'/api/{resource}/{record_id}').json
    body = assert_like_missing(api, 'POST', resource, record_id, '/restore')
    assert body['status'] == 404
    assert_like_missing(api, 'GET', resource, record_id)
    assert other_api.get(f'/api/{resource}/{record_id}').json == before


def test_a_non_administrator_sees_no_foreign_record_either(user_api, theirs):
    for resource in RESOURCES:
        assert_like_missing(user_api, 'GET', resource, theirs[resource])


# -- lists and counts ------------------------------------------------------------------------------


@pytest.mark.parametrize('resource', RESOURCES)
def test_lists_show_only_the_callers_rows(api, ours, theirs, resource):
    resp = api.get(f'/api/{resource}', {'range': [0, 999], 'filter': {'include_archived': True}})
    listed = {r['id'] for r in resp.json}
    assert theirs[resource] not in listed
    if resource == 'crm_users':
        assert ours[resource] in listed and len(listed) == 2  # the admin and the one created
    else:
        assert listed == {ours[resource]}
    assert resp.headers['Content-Range'] == f'{resource} 0-{len(listed) - 1}/{len(listed)}'


@pytest.mark.parametrize('resource', RESOURCES)
def test_a_filter_on_a_foreign_id_matches_nothing(api, ours, theirs, resource):
    for params in (
        {'filter': {'id': theirs[resource]}},
        {'filter': {'id': [theirs[resource], ours[resource]]}},
        {'filters': [{'field': 'id', 'op': 'in', 'value': [theirs[resource]]}]},
        {
            'filters': [
                {'field': 'id', 'op': 'eq', 'value': theirs[resource]},
                {'field': 'id', 'op': 'neq', 'value': ours[resource], 'logicalOp': 'or'},
            ]
        },
    ):
        resp = api.get(f'/api/{resource}', params)
        assert theirs[resource] not in {r['id'] for r in resp.json}


@pytest.mark.parametrize(
    'resource',
    [
        'contacts',
        'companies',
        'deals',
        'tags',
        'companies_summary',
        'contacts_summary',
        'contact_notes',
        'automation_rules',
    ],
)
def test_search_never_finds_foreign_rows(api, ours, theirs, resource):
    resp = api.get(f'/api/{resource}', {'filter': {'q': 'Bravo', 'include_archived': True}})
    assert resp.json == []
    assert resp.headers['Content-Range'] == f'{resource} */0'


@pytest.mark.parametrize('resource', ['contacts', 'tasks', 'crm_users'])
def test_organization_id_is_not_a_filter(api, other_api, theirs, resource):
    resp = api.get(f'/api/{resource}', {'filter': {'organization_id': other_api.org_id}}, status=400)
    assert_problem(resp, 400, param='filter')


def test_records_never_show_their_organization(api, ours):
    for resource in RESOURCES:
        for record in api.list(resource):
            assert 'organization_id' not in record


def test_summary_counts_ignore_foreign_rows(api, ours, theirs):
    [company] = api.list('companies_summary')
    assert (company['nb_contacts'], company['nb_deals']) == (1, 1)
    [contact] = api.list('contacts_summary')
    assert contact['nb_tasks'] == 1
    assert contact['company_name'] == 'Alpha Industries'


def test_same_unique_values_may_exist_in_both_organizations(api, theirs):
    """Unique keys (tag name, configuration key) are per organization."""
    api.create('tags', name='Bravo-vip')
    api.create('configuration', key='theme', value='dark')


# -- references in writes --------------------------------------------------------------------------

REFERENCES = [
    ('contacts', 'company_id', 'companies', False),
    ('contacts', 'tags', 'tags', True),
    ('deals', 'company_id', 'companies', False),
    ('deals', 'contact_ids', 'contacts', True),
    ('tasks', 'contact_id', 'contacts', False),
    ('tasks', 'company_id', 'companies', False),
    ('tasks', 'deal_id', 'deals', False),
    ('tasks', 'assignee_id', 'crm_users', False),
    ('contact_notes', 'contact_id', 'contacts', False),
    ('deal_notes', 'deal_id', 'deals', False),
    ('company_notes', 'company_id', 'companies', False),
]
REFERENCE_IDS = [f'{r}.{f}' for r, f, _, _ in REFERENCES]
BASE = {
    'contacts': {'first_name': 'New'},
    'deals': {'name': 'New deal'},
    'tasks': {'text': 'New task'},
    'contact_notes': {'text': 'n'},
    'deal_notes': {'text': 'n'},
    'company_notes': {'text': 'n'},
}
NOTE_PARENTS = {
    'contact_notes': ('contact_id', 'contacts'),
    'deal_notes': ('deal_id', 'deals'),
    'company_notes': ('company_id', 'companies'),
}


def reference_body(resource, field, value, ours):
    """A valid body for `resource` (own references for required ones) with `field` set to `value`."""
    body = dict(BASE[resource])
    if resource in NOTE_PARENTS:
        required, target = NOTE_PARENTS[resource]
        body[required] = ours[target]
    body[field] = value
    return body


@pytest.mark.parametrize(('resource', 'field', 'target', 'array'), REFERENCES, ids=REFERENCE_IDS)
def test_create_cannot_reference_another_organizations_record(api, ours, theirs, resource, field, target, array):
    value = [ours[target], theirs[target]] if array else theirs[target]
    before = api.get(f'/api/{resource}', {'range': [0, 999]}).headers['Content-Range']
    resp = api.post(f'/api/{resource}', reference_body(resource, field, value, ours), status=400)
    assert_problem(resp, 400, field=field)
    assert api.get(f'/api/{resource}', {'range': [0, 999]}).headers['Content-Range'] == before


@pytest.mark.parametrize(('resource', 'field', 'target', 'array'), REFERENCES, ids=REFERENCE_IDS)
def test_update_cannot_reference_another_organizations_record(api, ours, theirs, resource, field, target, array):
    before = api.get(f'/api/{resource}/{ours[resource]}').json
    value = [theirs[target]] if array else theirs[target]
    resp = api.put(f'/api/{resource}/{ours[resource]}', {field: value, **BASE[resource]}, status=400)
    assert_problem(resp, 400, field=field)
    assert api.get(f'/api/{resource}/{ours[resource]}').json == before


@pytest.mark.parametrize(('resource', 'field', 'target', 'array'), REFERENCES, ids=REFERENCE_IDS)
def test_own_references_are_accepted(api, ours, resource, field, target, array):
    value = [ours[target]] if array else ours[target]
    created = api.post(f'/api/{resource}', reference_body(resource, field, value, ours)).json
    assert created[field] == value


def test_organization_id_in_a_body_is_ignored(api, other_api, theirs):
    created = api.create('contacts', first_name='Mine', organization_id=other_api.org_id)
    api.get(f'/api/contacts/{created["id"]}')
    other_api.get(f'/api/contacts/{created["id"]}', status=404)
    api.put(f'/api/contacts/{created["id"]}', {'organization_id': other_api.org_id, 'organizationId': other_api.org_id})
    api.get(f'/api/contacts/{created["id"]}')
    assert created['id'] not in {c['id'] for c in other_api.list('contacts')}


# -- merge -----------------------------------------------------------------------------------------


def contacts_state(client):
    """Every contact (archived too) and every record that points at one, as `client` sees them."""
    state = {}
    for resource in ('contacts', 'deals', 'tasks', 'contact_notes'):
        state[resource] = client.list(resource, range=[0, 999], filter={'include_archived': True})
    return state


@pytest.mark.parametrize('case', ['foreign-source', 'foreign-among-sources', 'foreign-target', 'all-foreign'])
def test_merge_with_another_organizations_ids_is_404_and_changes_nothing(api, other_api, ours, theirs, case):
    second = api.create('contacts', first_name='Second', tags=[ours['tags']])['id']
    body = {
        'foreign-source': {'source_ids': [theirs['contacts']], 'target_id': ours['contacts']},
        'foreign-among-sources': {'source_ids': [second, theirs['contacts']], 'target_id': ours['contacts']},
        'foreign-target': {'source_ids': [second], 'target_id': theirs['contacts']},
        'all-foreign': {'source_ids': [theirs['contacts']], 'target_id': theirs['contacts']},
    }[case]
    ours_before, theirs_before = contacts_state(api), contacts_state(other_api)
    resp = api.post('/api/merge_contacts', body, status=404)
    assert_problem(resp, 404)
    assert 'Bravo' not in resp.text
    assert contacts_state(api) == ours_before
    assert contacts_state(other_api) == theirs_before


def test_merge_with_a_foreign_id_answers_like_a_missing_id(api, ours, theirs):
    foreign = api.post(
        '/api/merge_contacts', {'source_ids': [theirs['contacts']], 'target_id': ours['contacts']}, status=404
    ).json
    never = api.post(
        '/api/merge_contacts',
        {'source_ids': [missing_id(theirs['contacts'])], 'target_id': ours['contacts']},
        status=404,
    ).json
    assert foreign == {
        k: (v.replace(missing_id(theirs['contacts']), theirs['contacts']) if isinstance(v, str) else v)
        for k, v in never.items()
    }
