"""Records: create, read, update, delete and restore every built-in resource, as the API documents them.

Each test runs on SQLite and on PostgreSQL (see conftest.py); a value written on one reads back
exactly as it does on the other.
"""

import datetime as dt
import json
import time
from urllib.parse import urlsplit

import pytest

from conftest import RULE_SHAPE
from conftest import SUMMARIES
from conftest import WRITABLE
from conftest import assert_problem

PREFIXES = {
    'contacts': 'c_',
    'companies': 'comp_',
    'deals': 'd_',
    'tasks': 't_',
    'contact_notes': 'cn_',
    'deal_notes': 'dn_',
    'company_notes': 'mn_',
    'tags': 'tag_',
    'configuration': 'cfg_',
    'automation_rules': 'rule_',
    'crm_users': 'u_',
}
ARCHIVED = ['contacts', 'companies', 'deals']
HARD_DELETED = ['tasks', 'contact_notes', 'deal_notes', 'company_notes', 'tags', 'configuration', 'automation_rules']
ADMIN_ONLY = ['crm_users', 'configuration', 'automation_rules']
SERVER_MANAGED = {'id', 'created_at', 'updated_at', 'archived_at'}


# -- helpers ---------------------------------------------------------------------------------------

_serial = iter(range(10**9))


def unique(text):
    """A value no other record of the test has, for columns that are unique per organization."""
    return f'{text}-{next(_serial)}'


def sample(api, resource):
    """A valid body for `resource`, with the parent records it needs created first."""
    if resource == 'contact_notes':
        return {'contact_id': api.create('contacts', last_name='Parent')['id'], 'title': 'Met at the fair'}
    if resource == 'deal_notes':
        return {'deal_id': api.create('deals', name='Parent deal')['id'], 'title': 'Sent the quote'}
    if resource == 'company_notes':
        return {'company_id': api.create('companies', name='Parent Inc')['id'], 'title': 'Visited HQ'}
    return {
        'contacts': {'first_name': 'Ada', 'last_name': 'Lovelace', 'email': 'ada@example.com'},
        'companies': {'name': 'Analytical Engines Ltd', 'city': 'London'},
        'deals': {'name': 'Difference engine', 'amount': 12.5},
        'tasks': {'text': 'Call Ada back', 'type': 'call'},
        'tags': {'name': unique('vip'), 'color': '#ff0000'},
        'configuration': {'key': unique('theme'), 'value': {'dark': True}},
        'automation_rules': {'name': 'Welcome mail', **RULE_SHAPE},
        'crm_users': {'email': unique('new') + '@example.com', 'first_name': 'Grace'},
    }[resource]


def create(api, resource, **fields):
    """Create a sample record of `resource`, with `fields` on top; return its JSON."""
    return api.create(resource, **{**sample(api, resource), **fields})


def url(resource, record_id=None, restore=False):
    path = f'/api/{resource}' if record_id is None else f'/api/{resource}/{record_id}'
    return path + '/restore' if restore else path


def restore(api, resource, record_id, status=200):
    return api.post(url(resource, record_id, restore=True), status=status)


def post_raw(api, resource, text, status):
    """POST a body as given, not JSON-encoded by the client."""
    return api.app.post(url(resource), text, headers=api.headers, content_type='application/json', status=status)


def user_id(api, email):
    [user] = api.list('crm_users', filter={'email': email})
    return user['id']


def parse_instant(text):
    assert text.endswith('Z'), text
    return dt.datetime.fromisoformat(text[:-1]).replace(tzinfo=dt.timezone.utc)


def same_json(got, expected):
    """Equal as JSON text: 1 and 1.0, or 2**63 and 9.2e18, are not the same value on the wire."""
    return json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def ids(records):
    return [r['id'] for r in records]


# -- create ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('resource', WRITABLE)
def test_create_answers_201_with_the_record_and_a_location(api, resource):
    body = sample(api, resource)
    resp = api.post(url(resource), body, status=201)
    record = resp.json
    assert record['id'].startswith(PREFIXES[resource])
    assert {k: record[k] for k in body} == body
    assert 'organization_id' not in record
    assert parse_instant(record['created_at']) == parse_instant(record['updated_at'])
    assert urlsplit(resp.headers['Location']).path == url(resource, record['id'])
    assert api.get(resp.headers['Location']).json == record


@pytest.mark.parametrize('resource', ARCHIVED)
def test_create_starts_unarchived(api, resource):
    assert create(api, resource)['archived_at'] is None


def test_ids_are_unique_and_time_ordered(api):
    created = []
    for i in range(6):
        created.append(api.create('contacts', last_name=f'Person {i}')['id'])
        time.sleep(0.002)  # ids order by millisecond; within one they are random
    assert len(set(created)) == len(created)
    assert sorted(created) == created
    assert all(len(i) == len(created[0]) for i in created)


def test_create_ignores_server_managed_fields(api, other_api):
    body = {
        'id': 'c_chosen_by_client',
        'organization_id': other_api.org_id,
        'created_at': '2000-01-01T00:00:00Z',
        'updated_at': '2000-01-01T00:00:00Z',
        'archived_at': '2000-01-01T00:00:00Z',
        'last_name': 'Hopper',
    }
    record = api.create('contacts', **body)
    assert record['id'] != 'c_chosen_by_client' and record['id'].startswith('c_')
    assert not record['created_at'].startswith('2000')
    assert not record['updated_at'].startswith('2000')
    assert record['archived_at'] is None
    assert ids(api.list('contacts')) == [record['id']]
    other_api.get(url('contacts', record['id']), status=404)
    api.get(url('contacts', 'c_chosen_by_client'), status=404)


def test_create_ignores_unknown_fields_when_lenient(api):
    record = api.post(
        '/api/companies',
        {'name': 'Acme', 'favourite_colour': 'blue', 'nb_contacts': 12},
        headers={'Prefer': 'handling=lenient'},
    ).json
    assert record['name'] == 'Acme'
    assert 'favourite_colour' not in record and 'nb_contacts' not in record


def test_camel_case_names_are_mapped_to_columns(api):
    contact = api.create('contacts', firstName='Ada', lastName='Lovelace', linkedinUrl='https://l.example/ada')
    assert (contact['first_name'], contact['last_name'], contact['linkedin_url']) == (
        'Ada',
        'Lovelace',
        'https://l.example/ada',
    )
    assert 'firstName' not in contact
    deal = api.create('deals', name='Engine', expectedClosingDate='2025-06-30', companyId=None)
    assert deal['expected_closing_date'] == '2025-06-30'
    updated = api.put(url('deals', deal['id']), {'expectedClosingDate': '2025-07-01'}).json
    assert updated['expected_closing_date'] == '2025-07-01'


def test_snake_case_wins_over_its_camel_case_twin(api):
    contact = api.create('contacts', firstName='camel', first_name='snake')
    assert contact['first_name'] == 'snake'


def test_organization_id_never_appears_in_a_response(api):
    contact = api.create('contacts', last_name='Lovelace')
    path = url('contacts', contact['id'])
    answers = [
        contact,
        api.get(path).json,
        api.put(path, {'city': 'London'}).json,
        *api.list('contacts'),
        api.delete(path).json,
        restore(api, 'contacts', contact['id']).json,
        *api.list('contacts_summary'),
        *api.list('crm_users'),
    ]
    assert all('organization_id' not in a for a in answers)


def test_crm_users_carry_no_token_material(api):
    for user in api.list('crm_users'):
        assert not any('token' in key or 'hash' in key for key in user), user


# -- types -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('amount', [12.5, 100, 0.1, 1234567.89, 0, -42.25, 999999999999.99])
def test_deal_amounts_are_exact_decimals(api, amount):
    deal = api.create('deals', name='Engine', amount=amount)
    assert deal['amount'] == amount
    assert api.get(url('deals', deal['id'])).json['amount'] == amount
    [listed] = api.list('deals')
    assert listed['amount'] == amount
    assert api.get(url('deals', deal['id'])).text.count(f'"amount":{amount}') == 1


def test_amount_may_be_null(api):
    assert api.create('deals', name='Engine', amount=None)['amount'] is None


def test_dates_read_back_as_yyyy_mm_dd(api):
    deal = api.create('deals', name='Engine', expected_closing_date='2024-02-29')
    task = api.create('tasks', text='Call', due_date='2024-12-31', done_date='2025-01-01')
    assert api.get(url('deals', deal['id'])).json['expected_closing_date'] == '2024-02-29'
    got = api.get(url('tasks', task['id'])).json
    assert (got['due_date'], got['done_date']) == ('2024-12-31', '2025-01-01')


def test_timestamps_read_back_in_utc_ending_in_z(api):
    contact = api.create('contacts', last_name='Lovelace')
    note = api.create('contact_notes', contact_id=contact['id'], date='2024-03-01T10:30:00+02:00')
    for record in (note, api.get(url('contact_notes', note['id'])).json):
        assert record['date'].startswith('2024-03-01T08:30:00')
        assert parse_instant(record['date']) == dt.datetime(2024, 3, 1, 8, 30, tzinfo=dt.timezone.utc)
    for name in ('created_at', 'updated_at'):
        assert abs(parse_instant(note[name]) - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)


def test_booleans_read_back_as_json_booleans(api):
    rule = api.create('automation_rules', name='Welcome', **RULE_SHAPE)
    assert rule['enabled'] is True
    off = api.put(url('automation_rules', rule['id']), {'enabled': False}).json
    assert off['enabled'] is False
    assert api.get(url('automation_rules', rule['id'])).json['enabled'] is False
    user = api.create('crm_users', email='grace@example.com', administrator=True)
    assert (user['administrator'], user['disabled']) == (True, False)


@pytest.mark.parametrize(
    'value',
    [
        {'theme': {'dark': True, 'accent': '#123456'}, 'columns': ['name', 'email']},
        [1, 'two', None, {'three': 3.5}],
        'a plain string',
        '42',
        '',
        42,
        1.5,
        -7,
        True,
        False,
        None,
        {},
        [],
    ],
)
def test_json_values_read_back_unchanged(api, value):
    entry = api.create('configuration', key='setting', value=value)
    assert same_json(entry['value'], value)
    assert same_json(api.get(url('configuration', entry['id'])).json['value'], value)


@pytest.mark.parametrize(
    'value',
    [2**63, 2**64, -(2**63) - 1, 12345678901234567890, {'n': 2**64}, [-(2**64)]],
    ids=['2^63', '2^64', '-2^63-1', '20-digits', 'nested-2^64', 'nested--2^64'],
)
def test_a_json_integer_beyond_64_bits_reads_back_exactly_or_is_refused(api, value):
    resp = api.app.post_json(
        url('configuration'), {'key': 'big', 'value': value}, headers=api.headers, status=[201, 400]
    )
    if resp.status_int == 400:
        assert_problem(resp, 400, field='value')
        assert api.list('configuration') == []
    else:
        assert same_json(resp.json['value'], value)
        assert same_json(api.get(url('configuration', resp.json['id'])).json['value'], value)


def test_json_columns_of_automation_rules(api):
    rule = api.create(
        'automation_rules',
        name='Big deals',
        trigger={'resource': 'deals', 'on': ['created']},
        conditions=[{'field': 'amount', 'op': 'gt', 'value': 1000}],
        actions=[{'type': 'update', 'set': {'category': 'big'}}],
    )
    got = api.get(url('automation_rules', rule['id'])).json
    assert got['conditions'] == [{'field': 'amount', 'op': 'gt', 'value': 1000}]
    assert got['actions'] == [{'type': 'update', 'set': {'category': 'big'}}]


def test_arrays_of_ids_read_back_in_order(api):
    vip, hot = create(api, 'tags')['id'], create(api, 'tags')['id']
    contact = api.create('contacts', last_name='Lovelace', tags=[hot, vip])
    assert api.get(url('contacts', contact['id'])).json['tags'] == [hot, vip]
    other = api.create('contacts', last_name='Babbage')
    deal = api.create('deals', name='Engine', contact_ids=[other['id'], contact['id']])
    assert api.get(url('deals', deal['id'])).json['contact_ids'] == [other['id'], contact['id']]


def test_arrays_default_to_empty(api):
    assert api.create('contacts', last_name='Lovelace')['tags'] == []
    assert api.create('deals', name='Engine')['contact_ids'] == []


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'resource, fields, field',
    [
        ('deals', {'name': 'Engine', 'amount': '12.5'}, 'amount'),
        ('deals', {'name': 'Engine', 'amount': 1.234}, 'amount'),
        ('deals', {'name': 'Engine', 'amount': 10**12}, 'amount'),
        ('deals', {'name': 'Engine', 'amount': -(10**12)}, 'amount'),
        ('deals', {'name': 'Engine', 'amount': True}, 'amount'),
        ('deals', {'name': 'Engine', 'expected_closing_date': '2024-02-30'}, 'expected_closing_date'),
        ('deals', {'name': 'Engine', 'expected_closing_date': '30/06/2024'}, 'expected_closing_date'),
        ('deals', {'name': 'Engine', 'expected_closing_date': '2024-06-30T10:00:00Z'}, 'expected_closing_date'),
        ('deals', {'name': 'Engine', 'contact_ids': 'c_1'}, 'contact_ids'),
        ('deals', {'name': 42}, 'name'),
        ('companies', {'name': 'Acme', 'size': 'big'}, 'size'),
        ('companies', {'name': 'Acme', 'size': 2.5}, 'size'),
        ('contacts', {'first_name': 42}, 'first_name'),
        ('contacts', {'first_name': ['Ada']}, 'first_name'),
        ('contacts', {'first_name': 'Ada\x00Lovelace'}, 'first_name'),
        ('contacts', {'email': {'work': 'ada@example.com'}}, 'email'),
        ('contacts', {'tags': 'tag_1'}, 'tags'),
        ('contacts', {'tags': {'id': 'tag_1'}}, 'tags'),
        ('contacts', {'tags': [1, 2]}, 'tags'),
        ('contacts', {'tags': None}, 'tags'),
        ('tasks', {'due_date': 'tomorrow'}, 'due_date'),
        ('tasks', {'due_date': 20240101}, 'due_date'),
        ('automation_rules', {'name': 'Welcome', 'enabled': 'true'}, 'enabled'),
        ('automation_rules', {'name': 'Welcome', 'enabled': 1}, 'enabled'),
        ('automation_rules', {'name': 'Welcome', 'enabled': None}, 'enabled'),
        ('crm_users', {'email': 'x@example.com', 'administrator': 'yes'}, 'administrator'),
    ],
)
def test_a_wrong_value_is_400_naming_the_field(api, resource, fields, field):
    before = api.list(resource)
    resp = api.post(url(resource), fields, status=400)
    assert_problem(resp, 400, field=field)
    assert field in resp.json['detail']
    assert api.list(resource) == before


@pytest.mark.parametrize('date', ['yesterday', '2024-13-01T00:00:00Z', '2024-03-01 25:00', 1709280000])
def test_a_bad_timestamp_is_400_naming_the_field(api, date):
    contact = api.create('contacts', last_name='Lovelace')
    resp = api.post(url('contact_notes'), {'contact_id': contact['id'], 'date': date}, status=400)
    assert_problem(resp, 400, field='date')


@pytest.mark.parametrize(
    'resource, fields, field',
    [
        ('deals', {'amount': 'lots'}, 'amount'),
        ('deals', {'amount': 0.001}, 'amount'),
        ('deals', {'expected_closing_date': 'soon'}, 'expected_closing_date'),
        ('deals', {'name': None}, 'name'),
        ('companies', {'name': None}, 'name'),
        ('contacts', {'tags': None}, 'tags'),
        ('contacts', {'last_name': 'Nul\x00'}, 'last_name'),
        ('deals', {'contact_ids': None}, 'contact_ids'),
        ('crm_users', {'administrator': None}, 'administrator'),
    ],
)
def test_a_wrong_value_on_update_is_400_and_changes_nothing(api, resource, fields, field):
    record = create(api, resource)
    resp = api.put(url(resource, record['id']), fields, status=400)
    assert_problem(resp, 400, field=field)
    assert api.get(url(resource, record['id'])).json == record


@pytest.mark.parametrize(
    'resource, field',
    [
        ('companies', 'name'),
        ('deals', 'name'),
        ('contact_notes', 'contact_id'),
        ('deal_notes', 'deal_id'),
        ('company_notes', 'company_id'),
        ('tags', 'name'),
        ('configuration', 'key'),
        ('automation_rules', 'name'),
        ('crm_users', 'email'),
    ],
)
def test_required_fields_are_enforced_on_create(api, resource, field):
    body = {k: v for k, v in sample(api, resource).items() if k != field}
    assert_problem(api.post(url(resource), body, status=400), 400, field=field)
    assert_problem(api.post(url(resource), {**body, field: None}, status=400), 400, field=field)


@pytest.mark.parametrize(
    'resource, field',
    [
        ('contacts', 'company_id'),
        ('deals', 'company_id'),
        ('tasks', 'company_id'),
        ('tasks', 'contact_id'),
        ('tasks', 'deal_id'),
        ('company_notes', 'company_id'),
        ('contact_notes', 'contact_id'),
        ('deal_notes', 'deal_id'),
    ],
)
def test_a_reference_must_point_at_a_record_of_the_same_organization(api, other_api, resource, field):
    target = {'company_id': 'companies', 'contact_id': 'contacts', 'deal_id': 'deals'}[field]
    foreign = create(other_api, target)['id']
    body = sample(api, resource)
    for wrong in (foreign, PREFIXES[target] + 'doesnotexist'):
        resp = api.post(url(resource), {**body, field: wrong}, status=400)
        assert_problem(resp, 400, field=field)
    own = create(api, target)['id']
    assert api.create(resource, **{**body, field: own})[field] == own


def test_tags_must_be_tags_of_the_same_organization(api, other_api):
    own, foreign = create(api, 'tags')['id'], create(other_api, 'tags')['id']
    assert_problem(api.post(url('contacts'), {'tags': [own, foreign]}, status=400), 400, field='tags')
    contact = api.create('contacts', tags=[own])
    resp = api.put(url('contacts', contact['id']), {'tags': [own, 'tag_nope']}, status=400)
    assert_problem(resp, 400, field='tags')
    assert api.get(url('contacts', contact['id'])).json['tags'] == [own]


def test_deal_contacts_must_be_contacts_of_the_same_organization(api, other_api):
    own = api.create('contacts', last_name='Lovelace')['id']
    foreign = other_api.create('contacts', last_name='Spy')['id']
    resp = api.post(url('deals'), {'name': 'Engine', 'contact_ids': [own, foreign]}, status=400)
    assert_problem(resp, 400, field='contact_ids')


def test_task_assignee_must_be_a_user_of_the_same_organization(api, other_api):
    foreign = user_id(other_api, 'boss@other.example')
    assert_problem(api.post(url('tasks'), {'assignee_id': foreign}, status=400), 400, field='assignee_id')
    own = user_id(api, 'admin@example.com')
    assert api.create('tasks', text='Call', assignee_id=own)['assignee_id'] == own


@pytest.mark.parametrize(
    'text',
    [
        '[1, 2]',
        '"a contact"',
        '42',
        'null',
        'true',
        '{"first_name": ',
        'not json',
        '{"first_name": "Ada", "first_name": "Bob"}',
        '',
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(api, text):
    assert_problem(post_raw(api, 'contacts', text, status=400), 400)
    assert api.list('contacts') == []


def test_a_put_body_that_is_not_a_json_object_is_400(api):
    contact = api.create('contacts', last_name='Lovelace')
    assert_problem(api.put(url('contacts', contact['id']), ['last_name', 'Byron'], status=400), 400)


@pytest.mark.parametrize('resource, field', [('tags', 'name'), ('configuration', 'key')])
def test_a_duplicate_unique_value_is_409(api, other_api, resource, field):
    value = unique('same')
    first = create(api, resource, **{field: value})
    assert_problem(api.post(url(resource), {**sample(api, resource), field: value}, status=409), 409)
    second = create(api, resource)
    assert_problem(api.put(url(resource, second['id']), {field: value}, status=409), 409)
    assert ids(api.list(resource)) == sorted([first['id'], second['id']])
    assert create(other_api, resource, **{field: value})[field] == value


# -- update ----------------------------------------------------------------------------------------


def test_put_is_a_partial_update(api):
    company = api.create('companies', name='Acme')
    contact = api.create(
        'contacts', first_name='Ada', last_name='Lovelace', email='ada@example.com', company_id=company['id']
    )
    time.sleep(0.002)
    resp = api.put(url('contacts', contact['id']), {'email': 'ada.new@example.com'})
    updated = resp.json
    assert resp.status_int == 200
    assert updated['email'] == 'ada.new@example.com'
    unchanged = {k: v for k, v in contact.items() if k not in ('email', 'updated_at')}
    assert {k: updated[k] for k in unchanged} == unchanged
    assert updated['created_at'] == contact['created_at']
    assert parse_instant(updated['updated_at']) > parse_instant(contact['updated_at'])
    assert api.get(url('contacts', contact['id'])).json == updated


def test_put_can_clear_a_field_with_null(api):
    contact = api.create('contacts', last_name='Lovelace', city='London')
    assert api.put(url('contacts', contact['id']), {'city': None}).json['city'] is None


def test_put_of_a_whole_record_ignores_server_managed_and_unknown_fields(api, other_api):
    contact = api.create('contacts', last_name='Lovelace')
    body = {
        **contact,
        'id': 'c_other',
        'organization_id': other_api.org_id,
        'created_at': '2000-01-01T00:00:00Z',
        'archived_at': '2000-01-01T00:00:00Z',
        'company_name': 'ignored',
        'last_name': 'Byron',
    }
    updated = api.put(url('contacts', contact['id']), body).json
    assert (updated['id'], updated['last_name']) == (contact['id'], 'Byron')
    assert updated['created_at'] == contact['created_at']
    assert updated['archived_at'] is None
    other_api.get(url('contacts', contact['id']), status=404)


@pytest.mark.parametrize('body', [{'last_name': 'Byron'}, {}])
def test_put_of_an_unknown_id_is_404(api, other_api, body):
    assert_problem(api.put(url('contacts', 'c_doesnotexist'), body, status=404), 404)
    foreign = other_api.create('contacts', last_name='Spy')
    assert_problem(api.put(url('contacts', foreign['id']), body, status=404), 404)
    assert other_api.get(url('contacts', foreign['id'])).json['last_name'] == 'Spy'


@pytest.mark.parametrize('resource', WRITABLE)
def test_get_of_an_unknown_id_is_404(api, resource):
    assert_problem(api.get(url(resource, PREFIXES[resource] + 'doesnotexist'), status=404), 404)


# -- delete and restore ----------------------------------------------------------------------------


@pytest.mark.parametrize('resource', ARCHIVED)
def test_delete_archives_and_restore_brings_back(api, resource):
    record, kept = create(api, resource), create(api, resource)
    archived = api.delete(url(resource, record['id'])).json
    assert archived['archived_at'] is not None
    parse_instant(archived['archived_at'])
    assert {k: v for k, v in archived.items() if k not in ('archived_at', 'updated_at')} == {
        k: v for k, v in record.items() if k not in ('archived_at', 'updated_at')
    }
    assert ids(api.list(resource)) == [kept['id']]
    assert set(ids(api.list(resource, filter={'include_archived': True}))) == {record['id'], kept['id']}
    assert api.get(url(resource, record['id'])).json == archived

    restored = restore(api, resource, record['id']).json
    assert restored['archived_at'] is None
    assert set(ids(api.list(resource))) == {record['id'], kept['id']}
    assert api.get(url(resource, record['id'])).json == restored


@pytest.mark.parametrize('resource', ARCHIVED)
def test_deleting_or_restoring_twice_is_harmless(api, resource):
    record = create(api, resource)
    first = api.delete(url(resource, record['id'])).json
    second = api.delete(url(resource, record['id'])).json
    assert second == first
    restored = restore(api, resource, record['id']).json
    assert restore(api, resource, record['id']).json == restored


@pytest.mark.parametrize('resource', ARCHIVED)
def test_delete_and_restore_of_another_organizations_record_is_404(api, other_api, resource):
    foreign = create(other_api, resource)
    assert_problem(api.delete(url(resource, foreign['id']), status=404), 404)
    assert_problem(restore(api, resource, foreign['id'], status=404), 404)
    assert other_api.get(url(resource, foreign['id'])).json['archived_at'] is None


def test_archiving_a_company_keeps_its_contacts_and_deals(api):
    company = api.create('companies', name='Acme')
    contact = api.create('contacts', last_name='Lovelace', company_id=company['id'])
    deal = api.create('deals', name='Engine', company_id=company['id'])
    api.delete(url('companies', company['id']))
    assert api.get(url('contacts', contact['id'])).json['company_id'] == company['id']
    assert api.get(url('deals', deal['id'])).json['company_id'] == company['id']


def test_deleting_a_crm_user_disables_it_and_restore_enables_it(api, user_api):
    uid = user_id(api, 'user@example.com')
    user_api.get('/api/contacts')
    disabled = api.delete(url('crm_users', uid)).json
    assert (disabled['id'], disabled['disabled']) == (uid, True)
    resp = user_api.get('/api/contacts', status=401)
    assert_problem(resp, 401)
    assert resp.headers['WWW-Authenticate'].startswith('Bearer')
    assert api.get(url('crm_users', uid)).json['disabled'] is True
    assert api.delete(url('crm_users', uid)).json['disabled'] is True

    assert restore(api, 'crm_users', uid).json['disabled'] is False
    user_api.get('/api/contacts')


@pytest.mark.parametrize('resource', HARD_DELETED)
def test_delete_removes_other_records_for_good(api, resource):
    record, kept = create(api, resource), create(api, resource)
    assert api.delete(url(resource, record['id'])).json == record
    assert_problem(api.get(url(resource, record['id']), status=404), 404)
    assert ids(api.list(resource)) == [kept['id']]
    assert_problem(api.delete(url(resource, record['id']), status=404), 404)
    assert_problem(restore(api, resource, record['id'], status=405), 405)
    assert_problem(restore(api, resource, kept['id'], status=405), 405)
    assert api.get(url(resource, kept['id'])).json == kept


def test_deleting_a_tag_removes_it_from_every_contact(api):
    vip, hot = create(api, 'tags')['id'], create(api, 'tags')['id']
    both = api.create('contacts', last_name='Both', tags=[vip, hot])
    only = api.create('contacts', last_name='Only', tags=[vip])
    archived = api.create('contacts', last_name='Archived', tags=[hot, vip])
    api.delete(url('contacts', archived['id']))
    api.delete(url('tags', vip))
    assert api.get(url('contacts', both['id'])).json['tags'] == [hot]
    assert api.get(url('contacts', only['id'])).json['tags'] == []
    assert api.get(url('contacts', archived['id'])).json['tags'] == [hot]
    assert api.list('contacts', filter={'tags': vip, 'include_archived': True}) == []


def test_deleting_a_tag_leaves_other_organizations_alone(api, other_api):
    mine = create(api, 'tags')['id']
    theirs = create(other_api, 'tags')['id']
    contact = other_api.create('contacts', last_name='Other', tags=[theirs])
    api.delete(url('tags', mine))
    assert other_api.get(url('contacts', contact['id'])).json['tags'] == [theirs]


def test_delete_of_an_unknown_resource_is_404(api):
    assert_problem(api.delete('/api/unicorns/x_1', status=404), 404)


# -- read-only summaries ---------------------------------------------------------------------------


@pytest.mark.parametrize('resource', SUMMARIES)
def test_summaries_are_read_only(api, resource):
    company = api.create('companies', name='Acme')
    record_id = (
        api.create('contacts', last_name='Lovelace', company_id=company['id'])['id']
        if resource == 'contacts_summary'
        else company['id']
    )
    before = api.get(url(resource, record_id)).json
    answers = [
        api.post(url(resource), {'name': 'New'}, status=405),
        api.put(url(resource, record_id), {'name': 'Changed', 'last_name': 'Changed'}, status=405),
        api.delete(url(resource, record_id), status=405),
        restore(api, resource, record_id, status=405),
    ]
    for resp in answers:
        assert_problem(resp, 405)
        assert 'Allow' in resp.headers
        assert 'POST' not in resp.headers['Allow'] and 'PUT' not in resp.headers['Allow']
    assert api.get(url(resource, record_id)).json == before
    assert ids(api.list(resource)) == [record_id]


def test_companies_summary_counts_contacts_and_deals(api):
    acme = api.create('companies', name='Acme')
    empty = api.create('companies', name='Empty')
    api.create('contacts', last_name='One', company_id=acme['id'])
    api.create('contacts', last_name='Two', company_id=acme['id'])
    gone = api.create('contacts', last_name='Gone', company_id=acme['id'])
    api.delete(url('contacts', gone['id']))
    api.create('deals', name='Engine', company_id=acme['id'])
    summary = {r['id']: r for r in api.list('companies_summary')}
    assert (summary[acme['id']]['nb_contacts'], summary[acme['id']]['nb_deals']) == (2, 1)
    assert (summary[empty['id']]['nb_contacts'], summary[empty['id']]['nb_deals']) == (0, 0)
    assert summary[acme['id']]['name'] == 'Acme'
    assert api.get(url('companies_summary', empty['id'])).json['nb_contacts'] == 0


def test_contacts_summary_has_company_name_and_open_tasks(api):
    acme = api.create('companies', name='Acme')
    busy = api.create('contacts', last_name='Busy', company_id=acme['id'])
    idle = api.create('contacts', last_name='Idle')
    api.create('tasks', text='Open', contact_id=busy['id'])
    api.create('tasks', text='Done', contact_id=busy['id'], done_date='2024-01-01')
    summary = {r['id']: r for r in api.list('contacts_summary')}
    assert (summary[busy['id']]['company_name'], summary[busy['id']]['nb_tasks']) == ('Acme', 1)
    assert (summary[idle['id']]['company_name'], summary[idle['id']]['nb_tasks']) == (None, 0)
    assert summary[busy['id']]['tags'] == []


# -- administrators ----------------------------------------------------------------------------------


@pytest.mark.parametrize('resource', ADMIN_ONLY)
def test_only_administrators_may_write_admin_resources(api, user_api, resource):
    record = create(api, resource)
    path = url(resource, record['id'])
    for resp in (
        user_api.post(url(resource), sample(api, resource), status=403),
        user_api.put(path, {'first_name': 'X', 'name': 'X', 'value': 1}, status=403),
        user_api.delete(path, status=403),
    ):
        assert_problem(resp, 403)
    if resource == 'crm_users':
        assert_problem(restore(user_api, resource, record['id'], status=403), 403)
    assert user_api.get(path).json == record
    assert record['id'] in ids(user_api.list(resource))


def test_a_user_cannot_make_itself_an_administrator(api, user_api):
    uid = user_id(api, 'user@example.com')
    assert_problem(user_api.put(url('crm_users', uid), {'administrator': True}, status=403), 403)
    assert user_api.get(url('crm_users', uid)).json['administrator'] is False


def test_a_non_administrator_uses_contacts_fully(user_api):
    tag = user_api.create('tags', name='vip')
    contact = user_api.create('contacts', last_name='Lovelace', tags=[tag['id']])
    path = url('contacts', contact['id'])
    assert user_api.put(path, {'city': 'London'}).json['city'] == 'London'
    assert user_api.delete(path).json['archived_at'] is not None
    assert restore(user_api, 'contacts', contact['id']).json['archived_at'] is None
    note = user_api.create('contact_notes', contact_id=contact['id'], text='Hello')
    assert user_api.delete(url('contact_notes', note['id'])).json['id'] == note['id']


# -- schema ----------------------------------------------------------------------------------------


def test_schema_lists_the_resources(api):
    resources = {r['resource']: r for r in api.get('/api/schema').json}
    assert set(WRITABLE + SUMMARIES) <= set(resources)
    assert resources['contacts_summary']['read_only'] is True
    assert resources['contacts']['read_only'] is False


def test_schema_describes_each_column(api):
    described = api.get('/api/schema/contacts').json
    columns = {c['name']: c for c in described['columns']}
    assert 'organization_id' not in columns
    assert {
        'id',
        'first_name',
        'last_name',
        'email',
        'company_id',
        'tags',
        'created_at',
        'updated_at',
        'archived_at',
    } <= set(columns)
    for column in columns.values():
        assert {'name', 'type', 'nullable', 'default', 'writable', 'filterable', 'sortable'} <= set(column)
    first_name = columns['first_name']
    assert (first_name['nullable'], first_name['default'], first_name['writable']) == (True, None, True)
    assert (first_name['filterable'], first_name['sortable']) == (True, True)
    assert columns['tags']['nullable'] is False and columns['tags']['default'] is not None
    assert columns['tags']['sortable'] is False
    for name in SERVER_MANAGED:
        assert columns[name]['writable'] is False
    assert columns['created_at']['nullable'] is False


def test_schema_of_required_and_read_only_columns(api):
    companies = {c['name']: c for c in api.get('/api/schema/companies').json['columns']}
    assert (companies['name']['nullable'], companies['name']['writable']) == (False, True)
    summary = {c['name']: c for c in api.get('/api/schema/companies_summary').json['columns']}
    assert 'nb_contacts' in summary and 'organization_id' not in summary
    assert not any(c['writable'] for c in summary.values())


def test_schema_of_an_unknown_table_is_404(api):
    assert_problem(api.get('/api/schema/unicorns', status=404), 404)


def test_a_record_with_several_dangling_references_names_each_field(api):
    contact = api.create('contacts', first_name='Ada')
    body = assert_problem(
        api.post(
            '/api/deals',
            {'name': 'Deal', 'company_id': 'comp_missing', 'contact_ids': [contact['id'], 'c_missing']},
            status=400,
        ),
        400,
        field='company_id',
    )
    assert [e['field'] for e in body['errors']] == ['company_id', 'contact_ids']
    assert api.create('deals', name='Deal', contact_ids=[contact['id']])['contact_ids'] == [contact['id']]
