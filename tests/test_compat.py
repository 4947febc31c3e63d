"""What other clients expect: `/health`, `/api/me`, and their spellings of filter operators.

Every test runs on SQLite and on PostgreSQL (see conftest.py).
"""

import json

import pytest

from conftest import assert_problem

CRM_USER_FIELDS = {'id', 'first_name', 'last_name', 'email', 'administrator', 'disabled', 'created_at', 'updated_at'}


def test_health_answers_like_healthz_without_a_token(anonymous):
    assert anonymous.get('/health').json == anonymous.get('/healthz').json == {'status': 'ok'}
    assert anonymous.get('/health', headers={'Authorization': 'Bearer nope'}).json == {'status': 'ok'}


def test_me_answers_the_user_the_organization_and_the_role(api, user_api, database):
    me = api.get('/api/me').json
    assert set(me) == {'user', 'organization', 'administrator'}
    assert set(me['user']) == CRM_USER_FIELDS, 'a crm_user record, never token material'
    assert me['user']['email'] == 'admin@example.com' and me['administrator'] is True
    assert me['organization'] == {'id': api.org_id, 'name': 'Acme'}
    assert me['user'] == api.get(f'/api/crm_users/{me["user"]["id"]}').json
    assert api.token not in json.dumps(me)
    them = user_api.get('/api/me').json
    assert them['user']['email'] == 'user@example.com' and them['administrator'] is False
    assert them['organization'] == me['organization']


def test_me_needs_a_token(anonymous):
    assert_problem(anonymous.get('/api/me', status=401), 401)


def test_me_is_a_route_no_custom_object_may_take(api):
    resp = api.post('/api/custom_objects', {'slug': 'me', 'fields': []}, status=400)
    assert_problem(resp, 400, field='slug')


@pytest.mark.parametrize(
    'alias, operator, value',
    [
        ('like', 'contains', 'ov'),
        ('nlike', 'not_contains', 'ov'),
        ('blank', 'is_empty', None),
        ('notblank', 'is_not_empty', None),
    ],
)
def test_operator_aliases_mean_their_operators(api, alias, operator, value):
    for name, city in (('Lovelace', 'London'), ('Hopper', None), ('Turing', ''), ('Moore', 'Hove')):
        api.create('contacts', last_name=name, city=city)

    def names(op):
        resp = api.get('/api/contacts', {'filters': [{'field': 'city', 'op': op, 'value': value}], 'range': [0, 0]})
        rows = api.list('contacts', filters=[{'field': 'city', 'op': op, 'value': value}], range=[0, 9])
        return {c['last_name'] for c in rows}, resp.headers['Content-Range'].rsplit('/', 1)[1]

    assert names(alias) == names(operator)
    assert names(alias)[0], 'the filter selects something'


def test_aliases_are_checked_like_their_operators(api):
    resp = api.get('/api/companies', {'filters': [{'field': 'size', 'op': 'like', 'value': 'x'}]}, status=400)
    assert_problem(resp, 400, param='filters', field='size')


def test_openapi_lists_the_aliases_me_and_health(anonymous, api):
    doc = anonymous.get('/api/openapi.json').json
    filters = {p['name']: p for p in doc['paths']['/contacts']['get']['parameters']}['filters']
    op = filters['schema']['contentSchema']['items']['properties']['op']
    assert {'like', 'nlike', 'blank', 'notblank'} <= set(op['enum'])
    assert '`like` = `contains`' in op['description']
    assert doc['paths']['/health']['get']['security'] == [{}, {'bearerAuth': []}]
    me = doc['paths']['/me']['get']['responses']['200']['content']['application/json']['schema']
    from jsonschema import Draft202012Validator

    Draft202012Validator(
        {**me, 'components': doc['components']}, format_checker=Draft202012Validator.FORMAT_CHECKER
    ).validate(api.get('/api/me').json)
