"""Automation rules (issue 12): the validated shape, legacy rules kept disabled, the condition evaluator
(checked against the list's SQL), and run_for_change: actions, filters, idempotence, the depth limit, runs."""

import datetime as dt
import json

import pytest
import webtest
from conftest import assert_problem
from hypothesis import given
from hypothesis import strategies as st
from test_injection import INJECTIONS
from test_migrations import empty_db  # noqa: F401 -- fixture: an empty database of each kind
from test_properties import bounded

from crmapi import create_app
from crmapi import migrations
from crmapi import rules
from crmapi.accounts import Accounts
from crmapi.accounts import Principal
from crmapi.config import Settings
from crmapi.query import parse_list
from crmapi.services import build_services

RULE = {
    'name': 'Invoice won deals',
    'trigger': {'resource': 'deals', 'on': ['updated'], 'fields': ['status']},
    'conditions': [{'field': 'status', 'op': 'eq', 'value': 'won'}],
    'actions': [{'type': 'create_task', 'text': 'Send the invoice', 'due_in_days': 3}],
}


def rule(**members):
    return {**RULE, **members}


def trigger(**members):
    return {**RULE['trigger'], **members}


@pytest.fixture(scope='module')
def store(database):
    return build_services(database, Settings()).store


def run_feed(store, api, after=0):
    """What `crmapi worker` does: every change of the feed after `after`, through run_for_change, until no rule
    makes another change; the last seq seen."""
    while True:
        changes = store.history.feed(api.org_id, after, 1000)
        if not changes:
            return after
        for change in changes:
            rules.run_for_change(store, change, rules.depth_of(change), org_id=api.org_id)
        after = changes[-1]['seq']


def runs(api, **filters):
    return api.list('automation_runs', filter=filters, sort=['created_at', 'ASC'])


# -- the shape ---------------------------------------------------------------------------------------


def test_a_rule_of_the_shape_is_stored_enabled_without_a_problem(api):
    stored = api.create('automation_rules', **RULE)
    assert stored['trigger'] == RULE['trigger'] and stored['actions'] == RULE['actions']
    assert stored['enabled'] is True and stored['problem'] is None


@pytest.mark.parametrize(
    'body, field',
    [
        (rule(trigger=None), 'trigger'),
        (rule(trigger='deal_created'), 'trigger'),
        (rule(trigger=trigger(when='now')), 'trigger.when'),
        (rule(trigger=trigger(resource='nope')), 'trigger.resource'),
        (rule(trigger=trigger(resource='contacts_summary')), 'trigger.resource'),
        (rule(trigger=trigger(resource='automation_runs')), 'trigger.resource'),
        (rule(trigger=trigger(on=[])), 'trigger.on'),
        (rule(trigger=trigger(on='updated')), 'trigger.on'),
        (rule(trigger=trigger(on=['updated', 'exploded'])), 'trigger.on'),
        (rule(trigger=trigger(on=['updated', 'updated'])), 'trigger.on'),
        (rule(trigger=trigger(fields=['nope'])), 'trigger.fields'),
        (rule(trigger=trigger(fields='status')), 'trigger.fields'),
        (rule(conditions={'status': 'won'}), 'conditions'),
        (rule(conditions=[{'field': 'nope', 'op': 'eq', 'value': 1}]), 'conditions'),
        (rule(conditions=[{'field': 'amount', 'op': 'contains', 'value': 'x'}]), 'conditions'),
        (rule(conditions=[{'field': 'amount', 'op': 'gt', 'value': 'lots'}]), 'conditions'),
        (rule(conditions=[{'field': 'status', 'op': 'eq', 'value': 'won', 'logicalOp': 'xor'}]), 'conditions'),
        (rule(actions=None), 'actions'),
        (rule(actions=[]), 'actions'),
        (rule(actions=[{'type': 'update', 'set': {'status': 'x'}}] * 21), 'actions'),
        (rule(actions=[{'type': 'explode'}]), 'actions[0].type'),
        (rule(actions=['create_task']), 'actions[0].type'),
        (rule(actions=[{'type': 'update', 'set': {'status': 'lost'}, 'colour': 'red'}]), 'actions[0].colour'),
        (rule(actions=[{'type': 'update'}]), 'actions[0].set'),
        (rule(actions=[{'type': 'update', 'set': {}}]), 'actions[0].set'),
        (rule(actions=[{'type': 'update', 'set': {'nope': 1}}]), 'actions[0].set.nope'),
        (rule(actions=[{'type': 'update', 'set': {'id': 'd_x'}}]), 'actions[0].set.id'),
        (rule(actions=[{'type': 'update', 'set': {'amount': 'lots'}}]), 'actions[0].set.amount'),
        (rule(actions=[{'type': 'update', 'set': {'name': None}}]), 'actions[0].set.name'),
        (rule(actions=[{'type': 'create_task', 'due_in_days': 1}]), 'actions[0].text'),
        (rule(actions=[{'type': 'create_task', 'text': ''}]), 'actions[0].text'),
        (rule(actions=[{'type': 'create_task', 'text': 5}]), 'actions[0].text'),
        (rule(actions=[{'type': 'create_task', 'text': 'x', 'due_in_days': -1}]), 'actions[0].due_in_days'),
        (rule(actions=[{'type': 'create_task', 'text': 'x', 'due_in_days': True}]), 'actions[0].due_in_days'),
        (rule(actions=[{'type': 'create_task', 'text': 'x', 'assignee_id': 'u_missing'}]), 'actions[0].assignee_id'),
        (rule(actions=[{'type': 'add_tag', 'tag_id': 'tag_x'}]), 'actions[0].type'),  # deals have no tags
        (
            rule(
                trigger=trigger(resource='contacts', fields=None),
                conditions=None,
                actions=[{'type': 'add_tag', 'tag_id': 'tag_missing'}],
            ),
            'actions[0].tag_id',
        ),
        (rule(actions=[{'type': 'webhook'}]), 'actions[0].url'),
        (rule(actions=[{'type': 'webhook', 'url': 'ftp://example.com/x'}]), 'actions[0].url'),
        (rule(actions=[{'type': 'webhook', 'url': 'not a url'}]), 'actions[0].url'),
        (rule(actions=[{'type': 'webhook', 'url': 'https://'}]), 'actions[0].url'),
    ],
)
def test_a_rule_off_the_shape_is_a_400_naming_the_member(api, body, field):
    resp = api.post('/api/automation_rules', body, status=400)
    assert_problem(resp, 400, field=field)
    assert api.list('automation_rules') == []


def test_a_change_that_breaks_a_rule_is_a_400_and_leaves_it_as_it_was(api):
    stored = api.create('automation_rules', **RULE)
    resp = api.put(f'/api/automation_rules/{stored["id"]}', {'trigger': trigger(on=['sometimes'])}, status=400)
    assert_problem(resp, 400, field='trigger.on')
    assert api.get(f'/api/automation_rules/{stored["id"]}').json['trigger'] == RULE['trigger']


def test_problem_is_read_only(api):
    stored = api.create('automation_rules', **RULE, problem='mine')
    assert stored['problem'] is None
    schema = {c['name']: c for c in api.get('/api/schema/automation_rules').json['columns']}
    assert schema['problem']['writable'] is False


def test_each_bad_rule_of_a_batch_is_listed_by_index(api):
    resp = api.post('/api/automation_rules', [RULE, rule(trigger=None), rule(actions=[])], status=400)
    body = assert_problem(resp, 400, index=1, field='trigger')
    assert [(e['index'], e['field']) for e in body['errors']] == [(1, 'trigger'), (2, 'actions')]


# -- rules stored before the shape -------------------------------------------------------------------


def test_rules_stored_before_the_shape_are_kept_disabled_with_their_problem(empty_db):  # noqa: F811
    migrations.migrate(empty_db, target=7)
    accounts = Accounts(empty_db)
    org = accounts.create_org('Old Co')
    token = accounts.create_token(org, 'old@example.com', admin=True)
    p = '?' if empty_db.name == 'sqlite' else '%s'
    with empty_db.transaction(write=True) as tx:
        for rule_id, name, old_trigger in [('rule_named', 'Welcome', 'contact_created'), ('rule_none', 'Bare', None)]:
            tx.execute(
                f'INSERT INTO automation_rules (id, organization_id, name, enabled, trigger, conditions, '
                f'actions, created_at, updated_at) VALUES ({p}, {p}, {p}, TRUE, {p}, {p}, {p}, {p}, {p})',
                (rule_id, org, name, old_trigger, '{"a": 1}', '[]', '2020-01-01T00:00:00Z', '2020-01-01T00:00:00Z'),
            )
    migrations.migrate(empty_db)
    client = webtest.TestApp(create_app(Settings(database_url='injected'), db=empty_db))
    auth = {'Authorization': f'Bearer {token}'}
    named = client.get('/api/automation_rules/rule_named', headers=auth).json
    bare = client.get('/api/automation_rules/rule_none', headers=auth).json
    assert (named['name'], named['trigger'], named['conditions'], named['actions']) == (
        'Welcome',
        'contact_created',
        {'a': 1},
        [],
    )
    assert named['enabled'] is False and named['problem'].startswith('trigger: ')
    assert bare['enabled'] is False and bare['trigger'] is None and 'no trigger' in bare['problem']
    # enabling it alone is refused; rewriting it to the shape enables it and clears the problem
    resp = client.put_json('/api/automation_rules/rule_named', {'enabled': True}, headers=auth, status=400)
    assert resp.json['field'] == 'trigger'
    fixed = client.put_json('/api/automation_rules/rule_named', {**RULE, 'enabled': True}, headers=auth).json
    assert fixed['enabled'] is True and fixed['problem'] is None


# -- the evaluator agrees with the list's SQL ---------------------------------------------------------

DEAL_VALUES = {
    'name': ['Alpha', 'beta', 'ALPHA deal', ''],
    'status': [None, 'won', 'lost', 'Won'],
    'amount': [None, 0, 10.5, 1000, -3],
    'category': [None, 'a_b', 'a%b', 'x'],
    'expected_closing_date': [None, '2024-02-29', '2024-03-01', '1999-12-31'],
}
DEAL_OPS = {
    'name': (
        'eq',
        'neq',
        'in',
        'not_in',
        'contains',
        'not_contains',
        'starts_with',
        'ends_with',
        'gt',
        'lte',
        'is_empty',
        'is_not_empty',
    ),
    'status': ('eq', 'neq', 'in', 'not_in', 'contains', 'is_empty', 'is_not_empty'),
    'amount': ('eq', 'neq', 'gt', 'gte', 'lt', 'lte', 'in', 'not_in', 'is_empty'),
    'category': ('eq', 'neq', 'contains', 'not_contains', 'starts_with', 'ends_with', 'is_empty'),
    'expected_closing_date': ('eq', 'neq', 'gt', 'gte', 'lt', 'lte', 'is_empty', 'is_not_empty'),
    'contact_ids': ('eq', 'neq', 'in', 'not_in', 'is_empty', 'is_not_empty'),
}
CONTACT_POOL = ['c_one', 'c_two', 'c_three']


@st.composite
def conditions(draw):
    items = []
    for _ in range(draw(st.integers(1, 4))):
        field = draw(st.sampled_from(sorted(DEAL_OPS)))
        op = draw(st.sampled_from(DEAL_OPS[field]))
        pool = CONTACT_POOL if field == 'contact_ids' else [v for v in DEAL_VALUES[field] if v is not None]
        if field == 'status' and op == 'contains':
            pool = ['o', 'W', 'n']
        item = {'field': field, 'op': op}
        if op in ('in', 'not_in'):
            item['value'] = draw(st.lists(st.none() | st.sampled_from(pool), max_size=3))
        elif op in ('eq', 'neq'):
            item['value'] = draw(st.none() | st.sampled_from(pool))
        elif op not in ('is_empty', 'is_not_empty'):
            item['value'] = draw(st.sampled_from(pool))
        item['logicalOp'] = draw(st.sampled_from(['and', 'or']))
        items.append(item)
    return items


@pytest.fixture(scope='module')
def deals(database, store):
    """Deals of one organization with every combination the conditions test, and an archived one."""
    org = Accounts(database).create_org('Evaluator Co')
    admin = Principal.system(org)
    contacts = store.catalog.resolve('contacts')
    ids = [store.create(contacts, admin, {'first_name': name})['id'] for name in CONTACT_POOL]
    info = store.catalog.resolve('deals')
    bodies = []
    for i in range(24):
        body = {field: pool[(i * (n + 1)) % len(pool)] for n, (field, pool) in enumerate(DEAL_VALUES.items())}
        bodies.append({**body, 'name': body['name'] or f'Deal {i}', 'contact_ids': ids[: i % 4]})
    created = store.create_many(info, admin, bodies)
    store.delete(info, admin, created[-1]['id'])
    return admin, info, dict(zip(CONTACT_POOL, ids))


@bounded(40)
@given(items=conditions())
def test_conditions_hold_for_exactly_the_records_a_list_with_those_filters_returns(store, deals, items):
    admin, info, contact_ids = deals
    items = [
        {
            **f,
            'value': [contact_ids.get(v, v) for v in f['value']]
            if isinstance(f.get('value'), list)
            else contact_ids.get(f.get('value'), f.get('value')),
        }
        if 'value' in f
        else f
        for f in items
    ]
    listed, _ = store.list(info, admin, parse_list({'filters': json.dumps(items), 'range': '[0,999]'}, info))
    filters = rules.parse_conditions(info, items)
    everything, _ = store.list(info, admin, parse_list({'range': '[0,999]'}, info))
    held = [d['id'] for d in everything if rules.holds(filters, rules.canonical(info, d))]
    assert sorted(d['id'] for d in listed) == sorted(held), items


# -- run_for_change ----------------------------------------------------------------------------------


def test_an_update_action_changes_the_record_as_the_rule(api, store):
    stored = api.create(
        'automation_rules',
        **rule(
            trigger=trigger(on=['created'], fields=None),
            conditions=[{'field': 'amount', 'op': 'gte', 'value': 1000}],
            actions=[{'type': 'update', 'set': {'category': 'big'}}],
        ),
    )
    big = api.create('deals', name='Big', amount=5000)
    small = api.create('deals', name='Small', amount=10)
    run_feed(store, api)
    assert api.get(f'/api/deals/{big["id"]}').json['category'] == 'big'
    assert api.get(f'/api/deals/{small["id"]}').json['category'] is None
    history = api.get(f'/api/deals/{big["id"]}/history').json
    assert history[0]['actor'] == f'rule:{stored["id"]}' and history[0]['depth'] == 1
    assert history[0]['changes'] == {'category': [None, 'big']}


def test_create_task_links_the_task_to_the_deal(api, store):
    api.create('automation_rules', **RULE)
    deal = api.create('deals', name='Acme renewal', status='open')
    api.put(f'/api/deals/{deal["id"]}', {'status': 'won'})
    run_feed(store, api)
    (task,) = api.list('tasks')
    assert task['deal_id'] == deal['id'] and task['text'] == 'Send the invoice'
    assert task['due_date'] == (store.clock().date() + dt.timedelta(days=3)).isoformat()


def test_create_task_links_the_task_to_the_contact_or_company(api, store):
    for resource, link in [('contacts', 'contact_id'), ('companies', 'company_id')]:
        api.create(
            'automation_rules',
            **rule(
                trigger={'resource': resource, 'on': ['created']},
                conditions=None,
                actions=[{'type': 'create_task', 'text': f'Call {resource}'}],
            ),
        )
    contact = api.create('contacts', first_name='Ada')
    company = api.create('companies', name='Acme')
    run_feed(store, api)
    links = {t['text']: (t['contact_id'], t['company_id']) for t in api.list('tasks')}
    assert links == {'Call contacts': (contact['id'], None), 'Call companies': (None, company['id'])}


def test_add_tag_tags_the_contact_once(api, store):
    tag = api.create('tags', name='vip')
    api.create(
        'automation_rules',
        **rule(
            trigger={'resource': 'contacts', 'on': ['created', 'updated']},
            conditions=[{'field': 'status', 'op': 'eq', 'value': 'vip'}],
            actions=[{'type': 'add_tag', 'tag_id': tag['id']}],
        ),
    )
    contact = api.create('contacts', first_name='Ada', status='vip')
    api.put(f'/api/contacts/{contact["id"]}', {'last_name': 'Lovelace'})
    run_feed(store, api)
    assert api.get(f'/api/contacts/{contact["id"]}').json['tags'] == [tag['id']]


def test_the_fields_filter_runs_the_rule_only_when_one_of_its_fields_changed(api, store):
    api.create('automation_rules', **rule(conditions=None))  # updated, fields: status
    deal = api.create('deals', name='Acme', status='open')
    seen = run_feed(store, api)
    api.put(f'/api/deals/{deal["id"]}', {'description': 'bigger'})
    seen = run_feed(store, api, seen)
    assert api.list('tasks') == []
    api.put(f'/api/deals/{deal["id"]}', {'status': 'negotiation'})
    run_feed(store, api, seen)
    assert len(api.list('tasks')) == 1


def test_conditions_are_evaluated_against_the_record_after_the_change(api, store):
    api.create('automation_rules', **RULE)  # status eq 'won'
    deal = api.create('deals', name='Acme', status='open')
    seen = run_feed(store, api)
    api.put(f'/api/deals/{deal["id"]}', {'status': 'lost'})
    seen = run_feed(store, api, seen)
    assert api.list('tasks') == [] and runs(api) == []
    api.put(f'/api/deals/{deal["id"]}', {'status': 'won'})
    run_feed(store, api, seen)
    assert len(api.list('tasks')) == 1


def test_a_change_runs_a_rule_once_however_often_it_is_handed_over(api, store):
    stored = api.create('automation_rules', **rule(trigger=trigger(on=['created'], fields=None)))
    api.create('deals', name='Acme', status='won')
    (change,) = store.history.feed(api.org_id, 0, 1000, resource='deals')
    first = rules.run_for_change(store, change, 0, org_id=api.org_id)
    again = rules.run_for_change(store, change, 0, org_id=api.org_id)
    assert [r['status'] for r in first] == ['applied'] and again == []
    assert len(api.list('tasks')) == 1
    (run,) = runs(api)
    assert (run['rule_id'], run['change_id'], run['depth']) == (stored['id'], change['id'], 0)


def test_a_rule_that_triggers_itself_stops_at_depth_3_with_the_reason(api, store):
    stored = api.create(
        'automation_rules',
        **rule(
            trigger={'resource': 'tasks', 'on': ['created']},
            conditions=None,
            actions=[{'type': 'create_task', 'text': 'again'}],
        ),
    )
    api.create('tasks', text='first')
    run_feed(store, api)
    assert len(api.list('tasks')) == 4  # the user's, then one at depths 1, 2 and 3
    made = runs(api, rule_id=stored['id'])
    assert [(r['depth'], r['status']) for r in made] == [(0, 'applied'), (1, 'applied'), (2, 'applied'), (3, 'stopped')]
    assert 'depth 3' in made[-1]['error'] and made[-1]['results'] is None


def test_runs_show_each_actions_result_and_errors(api, store):
    api.create(
        'automation_rules',
        **rule(
            trigger=trigger(on=['created'], fields=None),
            conditions=None,
            actions=[
                {'type': 'create_task', 'text': 'Follow up'},
                {'type': 'webhook', 'url': 'https://93.184.215.14/h'},
            ],
        ),
    )
    failing = api.create(
        'automation_rules',
        **rule(
            trigger=trigger(on=['created'], fields=None),
            conditions=None,
            actions=[{'type': 'update', 'set': {'company_id': 'comp_gone'}}],
        ),
    )
    deal = api.create('deals', name='Acme')
    run_feed(store, api)
    by_status = {r['status']: r for r in runs(api)}
    (task,) = api.list('tasks')
    (delivery,) = api.list('webhook_deliveries')
    assert by_status['applied']['results'] == [
        {'type': 'create_task', 'task_id': task['id']},
        {'type': 'webhook', 'url': 'https://93.184.215.14/h', 'delivery_id': delivery['id']},
    ]
    assert by_status['failed']['rule_id'] == failing['id'] and 'comp_gone' in by_status['failed']['error']
    assert api.get(f'/api/deals/{deal["id"]}').json['company_id'] is None  # nothing of a failed run applied
    assert api.get('/api/schema/automation_runs').json['read_only'] is True
    api.post('/api/automation_runs', {'rule_id': 'x'}, status=405)


def test_a_disabled_rule_does_not_run(api, store):
    api.create('automation_rules', **rule(trigger=trigger(on=['created'], fields=None), conditions=None, enabled=False))
    api.create('deals', name='Acme')
    run_feed(store, api)
    assert api.list('tasks') == [] and runs(api) == []


def test_hostile_strings_in_a_rules_text_and_values_are_stored_verbatim(api, store):
    for evil in INJECTIONS[:6]:
        body = rule(
            conditions=[{'field': 'category', 'op': 'eq', 'value': evil}],
            actions=[{'type': 'create_task', 'text': evil}, {'type': 'update', 'set': {'description': evil}}],
        )
        stored = api.create('automation_rules', **body)
        assert {k: stored[k] for k in body} == body
