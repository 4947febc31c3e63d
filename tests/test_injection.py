"""SQL injection: hostile strings through every list parameter, path segment and body field have no effect.

Identifiers (fields, operators, orders, resources) are checked against the whitelist and refused with
a 400/404; values are bound parameters, so they are stored verbatim and matched literally. Every
test ends by counting every table's rows through the API, in the caller's organization and in a
bystander's, and finds them as they were.
"""

import json
import uuid
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import quote

import pytest
from conftest import RULE_SHAPE
from conftest import SUMMARIES as SUMMARY_VIEWS
from conftest import WRITABLE

from crmapi import search
from crmapi.schema import BUILTIN
from conftest import Client
from conftest import assert_problem
from conftest import new_org

INJECTIONS = [
    "'; DROP TABLE contacts; --",
    '" OR 1=1 --',
    "x') OR ('1'='1",
    "' OR '1'='1",
    '1 OR 1=1',
    "'; DELETE FROM companies WHERE '1'='1",
    "Robert'); DROP TABLE api_tokens;--",
    "' UNION SELECT token_hash, token_hash FROM api_tokens --",
    '%',
    '_',
    '%_%',
    '\\',
    '\\%',
    "\\'; --",
    '?',
    '%s',
    '$1',
    ':name',
    '"id"',
    '`id`',
    '[id]',
    'id; --',
    'a\nb\tc\r',
    'ü café 北京 😀 \u202e',
    'x' * 5000,
]
RESOURCES = WRITABLE + SUMMARY_VIEWS
SUMMARIES = {'contacts': 'contacts_summary', 'companies': 'companies_summary'}
SERVER_MANAGED = {'id', 'organization_id', 'created_at', 'updated_at', 'archived_at'}
TABLES = [
    'organizations',
    'crm_users',
    'api_tokens',
    'companies',
    'contacts',
    'deals',
    'tasks',
    'contact_notes',
    'deal_notes',
    'company_notes',
    'tags',
    'configuration',
    'automation_rules',
    'schema_version',
    'companies_summary',
    'contacts_summary',
]
PLAIN = ['Ada', 'ada', 'Grace', 'x', 'X_ray', '100%', None]  # ordinary first names around the hostile ones


CORE = [INJECTIONS[i] for i in (0, 1, 2, 8, 9, 11, 23, 24)]  # a cross-section, for the widest sweeps

# -- helpers ---------------------------------------------------------------------------------------


def total(resp):
    return int(resp.headers['Content-Range'].rsplit('/', 1)[1])


def counts(client):
    """Rows of every resource, archived ones included, as the API counts them."""
    return {
        r: total(client.get(f'/api/{r}', {'range': [0, 0], 'filter': {'include_archived': True}})) for r in RESOURCES
    }


def columns(client, resource):
    return client.get(f'/api/schema/{resource}').json['columns']


def everything(client, resource):
    return client.list(resource, range=[0, 999], filter={'include_archived': True})


def seed(client, label, hostile):
    """A few linked records in every table; with `hostile`, one contact per hostile string as its first name."""
    company = client.create('companies', name=f'{label} Corp', size=10)
    tag = client.create('tags', name=f'{label}-tag')
    names = PLAIN + INJECTIONS if hostile else PLAIN[:1]
    contacts = [
        client.create('contacts', first_name=name, last_name='Seed', company_id=company['id'], tags=[tag['id']])
        for name in names
    ]
    deal = client.create(
        'deals',
        name=f'{label} deal',
        company_id=company['id'],
        amount=12.5,
        contact_ids=[contacts[0]['id']],
        expected_closing_date='2030-01-31',
    )
    client.create('tasks', text='Call', contact_id=contacts[0]['id'], deal_id=deal['id'], due_date='2030-01-01')
    client.create('contact_notes', contact_id=contacts[0]['id'], text='note', date='2030-01-01T10:00:00Z')
    client.create('deal_notes', deal_id=deal['id'], text='note')
    client.create('company_notes', company_id=company['id'], text='note')
    client.create('configuration', key='theme', value={'mode': 'dark'})
    client.create('automation_rules', name='rule', enabled=True, **RULE_SHAPE)
    client.delete(f'/api/companies/{client.create("companies", name="Archived")["id"]}')
    return {'company': company['id'], 'tag': tag['id'], 'contact': contacts[0]['id'], 'deal': deal['id']}


@dataclass
class World:
    """Two seeded organizations: `api` is attacked, `bystander` must never notice."""

    api: Client
    bystander: Client
    ids: dict
    counts: tuple = ()
    records: dict = field(default_factory=dict)

    def snapshot(self):
        return counts(self.api), counts(self.bystander), {r: everything(self.api, r) for r in WRITABLE}


@pytest.fixture(scope='module')
def seeded(database, wsgi_app):
    api = new_org(database, wsgi_app, name='Target', email='admin@target.example')
    bystander = new_org(database, wsgi_app, name='Bystander', email='admin@bystander.example')
    world = World(api, bystander, seed(api, 'Mine', hostile=True))
    seed(bystander, 'Theirs', hostile=False)
    world.counts = world.snapshot()
    return world


@pytest.fixture
def world(seeded, database):
    """The seeded organizations; afterwards every table exists and every row is as it was."""
    yield seeded
    for table in TABLES:
        assert database.table_exists(table), table
    assert seeded.snapshot() == seeded.counts
    seeded.api.get('/api/contacts', status=200)  # tokens still work


LEAKS = ('SELECT', 'INSERT', 'UPDATE', 'sqlite', 'psycopg', 'syntax error', 'Traceback')


def assert_rejected(resp, status, evil='', **members):
    """A 4xx problem, never a 500, that leaks no SQL (the hostile input itself may be echoed)."""
    body = assert_problem(resp, status, **members)
    for word in LEAKS:
        if word.lower() not in evil.lower():
            assert word not in resp.text, word
    return body


def get(client, resource, params, status='*'):
    return client.get(f'/api/{resource}', params, status=status)


# -- identifiers in list parameters ----------------------------------------------------------------

# (query params built from a hostile string, the parameter the 400 must name)
IDENTIFIER_PARAMS = {
    'filter-key': (lambda s: {'filter': {s: 'x'}}, 'filter'),
    'filter-key-null': (lambda s: {'filter': {s: None}}, 'filter'),
    'filter-raw': (lambda s: {'filter': s}, 'filter'),
    'filters-field': (lambda s: {'filters': [{'field': s, 'op': 'eq', 'value': 'x'}]}, 'filters'),
    'filters-op': (lambda s: {'filters': [{'field': 'first_name', 'op': s, 'value': 'x'}]}, 'filters'),
    'filters-logicalOp': (
        lambda s: {
            'filters': [
                {'field': 'first_name', 'op': 'eq', 'value': 'x', 'logicalOp': s},
                {'field': 'last_name', 'op': 'eq', 'value': 'y'},
            ]
        },
        'filters',
    ),
    'filters-extra-key': (
        lambda s: {'filters': [{'field': 'first_name', 'op': 'eq', 'value': 'x', s: 'y'}]},
        'filters',
    ),
    'filters-raw': (lambda s: {'filters': s}, 'filters'),
    'sort': (lambda s: {'sort': s}, 'sort'),
    'order': (lambda s: {'sort': 'first_name', 'order': s}, 'order'),
    'sort-json-field': (lambda s: {'sort': [s, 'ASC']}, 'sort'),
    'sort-json-order': (lambda s: {'sort': ['first_name', s]}, 'sort'),
    'sorts-field': (lambda s: {'sorts': [{'field': s, 'order': 'ASC'}]}, 'sorts'),
    'sorts-order': (lambda s: {'sorts': [{'field': 'first_name', 'order': s}]}, 'sorts'),
    'sorts-extra-key': (lambda s: {'sorts': [{'field': 'first_name', s: 'ASC'}]}, 'sorts'),
    'sorts-raw': (lambda s: {'sorts': s}, 'sorts'),
    'range': (lambda s: {'range': s}, 'range'),
    'range-end': (lambda s: {'range': [0, s]}, 'range'),
    'range-suffix': (lambda s: {'range': f'[0,24{s}]'}, 'range'),
}


@pytest.mark.parametrize('case', IDENTIFIER_PARAMS)
@pytest.mark.parametrize('resource', ['contacts', 'contacts_summary'])
def test_hostile_identifiers_in_list_parameters_are_400(world, resource, case):
    make, param = IDENTIFIER_PARAMS[case]
    for evil in INJECTIONS:
        assert_rejected(get(world.api, resource, make(evil)), 400, evil, param=param)


def test_a_hostile_query_parameter_name_is_400(world):
    for evil in INJECTIONS:
        resp = world.api.app.get(f'/api/contacts?{quote(evil, safe="")}=1', headers=world.api.headers, status='*')
        assert_rejected(resp, 400, evil)


# -- values in list parameters ---------------------------------------------------------------------


def lower(value):
    return value.lower() if isinstance(value, str) else None


# What each text operator keeps, in Python, for a stored value v and a filter value s.
TEXT_OPS = {
    'eq': lambda v, s: v == s,
    'neq': lambda v, s: v != s,
    'contains': lambda v, s: v is not None and lower(s) in lower(v),
    'not_contains': lambda v, s: v is None or lower(s) not in lower(v),
    'starts_with': lambda v, s: v is not None and lower(v).startswith(lower(s)),
    'ends_with': lambda v, s: v is not None and lower(v).endswith(lower(s)),
    'in': lambda v, s: v in (s, 'Ada'),
    'not_in': lambda v, s: v is None or v not in (s, 'Ada'),
}


@pytest.mark.parametrize('op', TEXT_OPS)
@pytest.mark.parametrize('resource', ['contacts', 'contacts_summary'])
def test_hostile_values_in_filters_match_literally(world, resource, op):
    rows = everything(world.api, resource)
    for evil in INJECTIONS:
        value = [evil, 'Ada'] if op in ('in', 'not_in') else evil
        resp = get(
            world.api,
            resource,
            {'filters': [{'field': 'first_name', 'op': op, 'value': value}], 'range': [0, 999]},
            status=200,
        )
        wanted = {r['id'] for r in rows if TEXT_OPS[op](r['first_name'], evil)}
        assert {r['id'] for r in resp.json} == wanted, (op, evil[:40])
        assert total(resp) == len(wanted)


def test_a_hostile_value_in_filter_matches_only_that_exact_value(world):
    for evil in INJECTIONS:
        [match] = world.api.list('contacts', filter={'first_name': evil})
        assert match['first_name'] == evil
        both = world.api.list('contacts', filter={'first_name': [evil, 'Grace']})
        assert sorted(r['first_name'] for r in both) == sorted([evil, 'Grace'])


@pytest.mark.parametrize('op', ['gt', 'gte', 'lt', 'lte'])
def test_hostile_ordering_comparisons_are_plain_values(world, op):
    rows = [r for r in everything(world.api, 'contacts') if r['first_name'] is not None]
    for evil in INJECTIONS:
        resp = get(
            world.api,
            'contacts',
            {'filters': [{'field': 'first_name', 'op': op, 'value': evil}], 'range': [0, 999]},
            status=200,
        )
        got = {r['id'] for r in resp.json}
        assert got <= {r['id'] for r in rows}
        assert any(r['first_name'] == evil for r in resp.json) == op.endswith('e')  # gte/lte keep the equal one


def q_finds(evil, texts):
    """q (README): every word of `evil` starts a word of one of `texts`, folded (crmapi.search)."""
    found = [w for text in texts if text for w in search.words(text)]
    return all(any(f.startswith(w) for f in found) for w in search.words(evil))


@pytest.mark.parametrize('resource', ['contacts', 'contacts_summary', 'companies'])
def test_hostile_search_text_matches_literally(world, resource):
    rows = everything(world.api, resource)
    policy = BUILTIN[resource].search
    names = [*policy.names, *policy.words, *policy.emails, *policy.phones]
    company = {c['id']: c['name'] for c in everything(world.api, 'companies')}  # q finds a contact's company
    for evil in INJECTIONS:
        resp = get(
            world.api, resource, {'filter': {'q': evil, 'include_archived': True}, 'range': [0, 999]}, status=200
        )
        wanted = {r['id'] for r in rows if q_finds(evil, [*(r[n] for n in names), company.get(r.get('company_id'))])}
        assert {r['id'] for r in resp.json} == wanted, evil[:40]


@pytest.mark.parametrize('resource', RESOURCES)
def test_hostile_values_on_every_column_are_matched_or_refused(world, resource):
    """Text and id-array columns match literally; other kinds refuse a string with a 400 naming the field."""
    for column in columns(world.api, resource):
        for evil in CORE:
            resp = get(world.api, resource, {'filter': {column['name']: evil}})
            if column['kind'] in ('text', 'array'):
                assert resp.status_int == 200, (column['name'], resp.text[:300])
                seeded = column['name'] == 'first_name' and resource.startswith('contacts')
                assert [r[column['name']] for r in resp.json] == ([evil] if seeded else []), column['name']
            else:
                assert_rejected(resp, 400, evil, param='filter', field=column['name'])


def test_nul_bytes_in_values_are_400_not_500(world):
    for params, param in [
        ({'filter': {'first_name': 'a\x00b'}}, 'filter'),
        ({'filters': [{'field': 'first_name', 'op': 'contains', 'value': '\x00'}]}, 'filters'),
        ({'filter': {'q': "x\x00'; DROP TABLE contacts; --"}}, 'filter'),
    ]:
        assert_rejected(get(world.api, 'contacts', params), 400, 'DROP TABLE', param=param)


# -- path segments ---------------------------------------------------------------------------------

PATH_SAFE = [s for s in INJECTIONS if '/' not in s]  # an encoded slash would still split the path


def test_a_hostile_resource_name_in_the_path_is_404(world):
    app, headers = world.api.app, world.api.headers
    for evil in PATH_SAFE:
        segment = quote(evil, safe='')
        for resp in (
            app.get(f'/api/{segment}', headers=headers, status='*'),
            app.get(f'/api/{segment}/c_1', headers=headers, status='*'),
            app.delete(f'/api/{segment}/c_1', headers=headers, status='*'),
            app.get(f'/api/schema/{segment}', headers=headers, status='*'),
            app.post_json(f'/api/{segment}', {'name': 'x'}, headers=headers, status='*'),
            app.put_json(f'/api/{segment}/c_1', {'name': 'x'}, headers=headers, status='*'),
            app.post_json(f'/api/{segment}/c_1/restore', {}, headers=headers, status='*'),
        ):
            assert_rejected(resp, 404, evil)


@pytest.mark.parametrize('resource', ['contacts', 'deals', 'tags', 'crm_users'])
def test_a_hostile_id_in_the_path_is_404(world, resource):
    api = world.api
    change = {'deals': {'name': 'x'}, 'tags': {'name': 'x'}}.get(resource, {'first_name': 'x'})
    for evil in PATH_SAFE:
        path = f'/api/{resource}/{quote(evil, safe="")}'
        for resp in (api.get(path, status='*'), api.put(path, change, status='*'), api.delete(path, status='*')):
            body = assert_rejected(resp, 404, evil)
            assert body.get('param') == 'id'
        restore = api.post(f'{path}/restore', status='*')
        assert_rejected(restore, 405 if resource == 'tags' else 404, evil)  # tags are deleted for good


def test_hostile_ids_in_a_merge_are_404_or_400(world):
    contact = world.ids['contact']
    for evil in INJECTIONS:
        for body in (
            {'source_ids': [evil], 'target_id': contact},
            {'source_ids': [contact], 'target_id': evil},
            {'source_ids': [evil, contact], 'target_id': evil},
        ):
            resp = world.api.post('/api/merge_contacts', body, status='*')
            assert resp.status_int in (400, 404), resp.text
            assert_rejected(resp, resp.status_int, evil)


def test_a_hostile_body_on_a_read_only_view_is_405(world):
    for evil in INJECTIONS:
        for resource in ('companies_summary', 'contacts_summary'):
            resp = world.api.post(f'/api/{resource}', {'name': evil, evil: evil}, status='*')
            assert_rejected(resp, 405, evil)


# -- body fields -----------------------------------------------------------------------------------


@pytest.fixture
def writer(api, world):
    """A fresh organization to write into, with the parents notes need; counts its rows before and after."""
    parents = {'company': api.create('companies', name='Parent')['id']}
    parents['contact'] = api.create('contacts', first_name='Parent', company_id=parents['company'])['id']
    parents['deal'] = api.create('deals', name='Parent', company_id=parents['company'])['id']
    before, created = counts(api), {}
    yield api, parents, created
    assert counts(api) == {r: n + created.get(r, 0) for r, n in before.items()}


def base_body(resource, parents):
    """What a create of `resource` needs besides the fields under test."""
    return {
        'companies': {'name': 'Base'},
        'deals': {'name': 'Base'},
        'automation_rules': {'name': 'Base', **RULE_SHAPE},
        'contact_notes': {'contact_id': parents['contact']},
        'deal_notes': {'deal_id': parents['deal']},
        'company_notes': {'company_id': parents['company']},
        'crm_users': {'email': f'{uuid.uuid4().hex}@example.com'},
    }.get(resource, {})


def count_created(created, resource):
    """Count a new row of `resource` (and of its summary view) for the final row count."""
    for name in (resource, SUMMARIES.get(resource)):
        if name:
            created[name] = created.get(name, 0) + 1


RULE_SHAPED = ('trigger', 'conditions', 'actions')  # JSON with a shape: hostile strings in it are in test_rules.py


def fields_by_fate(client, resource):
    """Writable columns split into those that store any string, JSON ones, and those that refuse one."""
    stored, as_json, refused = [], [], []
    for column in columns(client, resource):
        if not column['writable'] or (resource == 'automation_rules' and column['name'] in RULE_SHAPED):
            continue
        if column['kind'] == 'text' and column['references'] is None:
            stored.append(column['name'])
        elif column['kind'] == 'json':
            as_json.append(column['name'])
        else:
            refused.append(column['name'])
    return stored, as_json, refused


@pytest.mark.parametrize('resource', WRITABLE)
def test_hostile_strings_in_every_body_field_are_stored_verbatim_or_refused(writer, resource):
    api, parents, created_rows = writer
    all_stored, as_json, refused = fields_by_fate(api, resource)
    assert all_stored, resource
    limits = {c['name']: c['max_length'] for c in columns(api, resource)}
    for evil in INJECTIONS:
        # NOTE: indexed text holds at most max_length characters: longer strings are refused below.
        stored = [n for n in all_stored if limits[n] is None or len('upd ' + evil) <= limits[n]]
        too_long = [n for n in all_stored if n not in stored]
        body = {
            **base_body(resource, parents),
            **{n: f'{uuid.uuid4().hex}@example.com' for n in too_long},
            **{n: evil for n in stored},
            **{n: {evil: [evil, {'k': evil}]} for n in as_json},
        }
        created = api.post(f'/api/{resource}', body).json
        count_created(created_rows, resource)
        for name, value in body.items():
            assert created[name] == value, (name, evil[:40])
        assert api.get(f'/api/{resource}/{created["id"]}').json == created

        changes = {**{n: 'upd ' + evil for n in stored}, **{n: evil for n in as_json}}
        updated = api.put(f'/api/{resource}/{created["id"]}', changes).json
        assert {n: updated[n] for n in changes} == changes
        for name in stored[:1]:
            found = api.list(resource, filter={name: changes[name]})
            assert [r['id'] for r in found] == [created['id']]

        for name in too_long:
            resp = api.post(f'/api/{resource}', {**base_body(resource, parents), name: evil}, status='*')
            assert_rejected(resp, 400, evil, field=name)
        for name in refused:
            resp = api.post(
                f'/api/{resource}', {**base_body(resource, parents), all_stored[0]: 'refused', name: evil}, status='*'
            )
            assert_rejected(resp, 400, evil, field=name)
            as_array = [evil] if name in ('tags', 'contact_ids') else evil
            resp = api.put(f'/api/{resource}/{created["id"]}', {name: as_array}, status='*')
            assert_rejected(resp, 400, evil, field=name)
        assert api.get(f'/api/{resource}/{created["id"]}').json == updated


@pytest.mark.parametrize('resource', WRITABLE)
def test_hostile_field_names_in_a_body_are_400_or_ignored_when_lenient(writer, resource):
    api, parents, created_rows = writer
    stored, _, _ = fields_by_fate(api, resource)
    lenient = {'Prefer': 'handling=lenient'}
    for i, evil in enumerate(INJECTIONS):
        body = {
            **base_body(resource, parents),
            stored[0]: f'named {i}',
            evil: 'ignored',
            f'{stored[0]}"; --': 'ignored',
            f'{stored[0]}, organization_id': 'ignored',
        }
        refused = assert_rejected(api.post(f'/api/{resource}', body, status='*'), 400, evil, field=evil)
        assert [e['field'] for e in refused['errors']] == list(body)[-3:]
        created = api.post(f'/api/{resource}', body, headers=lenient).json
        count_created(created_rows, resource)
        assert created[stored[0]] == f'named {i}'
        assert 'ignored' not in json.dumps(created)
        updated = api.put(f'/api/{resource}/{created["id"]}', {evil: 'ignored', 'id': evil}, headers=lenient).json
        assert updated == created


def test_nul_bytes_in_body_fields_are_400(writer):
    api, _, _ = writer
    resp = api.post('/api/contacts', {'first_name': "x\x00'; DROP TABLE contacts; --"}, status='*')
    assert_rejected(resp, 400, 'DROP TABLE', field='first_name')


# -- text that is not valid Unicode ------------------------------------------------------------------

# JSON may spell a lone UTF-16 surrogate (`\ud800`); no UTF-8 database can store it, so it is a 400.
SURROGATES = ['\\ud800', 'a\\udfffb', '\\udc00\\ud800']


@pytest.mark.parametrize('text', SURROGATES)
@pytest.mark.parametrize(
    ('resource', 'field'), [('contacts', 'first_name'), ('configuration', 'value'), ('tags', 'name')]
)
def test_a_lone_surrogate_in_a_body_field_is_400(writer, resource, field, text):
    api, _, _ = writer
    others = json.dumps({k: v for k, v in {'key': 'k', 'name': 'n'}.items() if k != field})
    raw = f'{others[:-1]}, "{field}": "{text}"}}'.encode()
    resp = api.app.post(
        f'/api/{resource}', raw, headers=api.headers, content_type='application/json', expect_errors=True
    )
    assert_rejected(resp, 400, field=field)


@pytest.mark.parametrize('text', SURROGATES)
@pytest.mark.parametrize(
    ('param', 'template'),
    [
        ('filter', '{{"first_name": "{}"}}'),
        ('filter', '{{"q": "{}"}}'),
        ('filter', '{{"id": ["c_1", "{}"]}}'),
        ('filters', '[{{"field": "first_name", "op": "contains", "value": "{}"}}]'),
        ('filters', '[{{"field": "tags", "op": "eq", "value": "{}"}}]'),
    ],
    ids=['filter-eq', 'filter-q', 'filter-in', 'filters-contains', 'filters-array'],
)
def test_a_lone_surrogate_in_a_list_parameter_is_400(world, param, template, text):
    resp = get(world.api, 'contacts', {param: template.format(text)})
    assert_rejected(resp, 400, param=param)


def test_a_lone_surrogate_in_a_path_id_is_404(world):
    resp = world.api.get('/api/contacts/%ED%A0%80', status='*')  # the UTF-8-like bytes of U+D800
    assert resp.status_int in (400, 404)
    assert_rejected(resp, resp.status_int)
