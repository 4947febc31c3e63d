"""Automation rules run by `crmapi worker` (issue 12): from the change feed, once per (rule, change) whatever the
number of workers, crashes and retries; attributed to the rule; stopped at depth 3; webhook actions delivered
signed like webhooks; a failing rule holds nothing up."""

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import webtest
from conftest import Client
from conftest import assert_problem
from test_migrations import empty_db  # noqa: F401 -- fixture: an empty database of each kind
from test_webhooks import SHORT
from test_webhooks import admin  # noqa: F401 -- fixture: an administrator of an app that allows private targets
from test_webhooks import database_url
from test_webhooks import deliver
from test_webhooks import private_app  # noqa: F401 -- fixture
from test_webhooks import receiver  # noqa: F401 -- fixture: a local HTTP endpoint that records what it gets
from test_webhooks import settings
from test_webhooks import verify

from crmapi import create_app
from crmapi import migrations
from crmapi import rules
from crmapi.accounts import Accounts
from crmapi.worker import Worker

WON = {
    'name': 'Invoice won deals',
    'trigger': {'resource': 'deals', 'on': ['updated'], 'fields': ['status']},
    'conditions': [{'field': 'status', 'op': 'eq', 'value': 'won'}],
    'actions': [{'type': 'create_task', 'text': 'Send the invoice'}],
}


def patch(api, path, body):
    return api.app.patch_json(path, body, headers=api.headers).json


def won_deal(api):
    deal = api.create('deals', name='Acme renewal', status='open')
    patch(api, f'/api/deals/{deal["id"]}', {'status': 'won'})
    return deal


def runs(api, **filters):
    return api.list('automation_runs', filter=filters, sort=['created_at', 'ASC'])


def test_a_won_deal_gets_its_task_when_the_worker_runs_and_only_one_however_often_it_runs(api, database):
    api.create('deals', name='Won before the rule', status='won')
    rule = api.create('automation_rules', **WON)
    deal = won_deal(api)
    deliver(database)
    (task,) = api.list('tasks')
    assert (task['deal_id'], task['text']) == (deal['id'], 'Send the invoice')
    deliver(database)
    assert len(api.list('tasks')) == 1
    (run,) = runs(api)
    assert (run['rule_id'], run['status'], run['results']) == (
        rule['id'],
        'applied',
        [{'type': 'create_task', 'task_id': task['id']}],
    )


def test_a_worker_killed_before_it_moved_its_cursor_hands_the_changes_over_again_without_a_second_task(api, database):
    api.create('automation_rules', **WON)
    won_deal(api)
    deliver(database)
    with database.transaction(write=True) as tx:  # as if killed after the run committed, before the cursor moved
        tx.execute(*cursor_reset(database, api.org_id))
    deliver(database)
    assert len(api.list('tasks')) == 1 and len(runs(api)) == 1


def cursor_reset(database, org_id):
    p = '?' if database.name == 'sqlite' else '%s'
    return f'UPDATE automation_cursors SET seq = 0 WHERE organization_id = {p}', [org_id]


def test_a_worker_killed_between_the_actions_and_the_run_row_leaves_nothing_and_a_retry_acts_once(
    api, database, monkeypatch
):
    api.create('automation_rules', **WON)
    won_deal(api)
    worker = Worker(database, settings())

    def killed(*args):
        raise SystemExit('killed')  # NOTE: not an error a rule records: it ends the worker mid-transaction

    monkeypatch.setattr(worker.store, 'insert_managed', killed)
    with pytest.raises(SystemExit):
        worker.run(once=True)
    assert api.list('tasks') == [] and runs(api) == []
    monkeypatch.undo()
    deliver(database)
    assert len(api.list('tasks')) == 1 and len(runs(api)) == 1


def test_two_workers_racing_over_the_same_changes_create_one_task_per_deal(api, database):
    api.create('automation_rules', **WON)
    deals = [won_deal(api) for _ in range(8)]
    (cursor,) = [seq for org, seq in rules_due(database) if org == api.org_id]
    start = threading.Barrier(2)

    def race():
        worker = Worker(database, settings())
        start.wait()
        worker.run_rules_org(api.org_id, cursor)  # both from the same cursor: every change twice

    racers = [threading.Thread(target=race) for _ in range(2)]
    for r in racers:
        r.start()
    for r in racers:
        r.join()
    assert sorted(t['deal_id'] for t in api.list('tasks')) == sorted(d['id'] for d in deals)
    assert len(runs(api)) == len(deals)


def rules_due(database):
    """(organization, rules cursor) of the organizations whose changes are ahead of their cursor, as the worker
    finds them (after numbering what was committed)."""
    return Worker(database, settings()).due('automation_cursors')


def test_a_loop_of_rules_stops_at_depth_3_with_a_stopped_run_saying_why(api, database):
    flip = {'trigger': {'resource': 'deals', 'on': ['updated'], 'fields': ['category']}}
    a = api.create(
        'automation_rules',
        name='a to b',
        **flip,
        conditions=[{'field': 'category', 'op': 'eq', 'value': 'a'}],
        actions=[{'type': 'update', 'set': {'category': 'b'}}],
    )
    b = api.create(
        'automation_rules',
        name='b to a',
        **flip,
        conditions=[{'field': 'category', 'op': 'eq', 'value': 'b'}],
        actions=[{'type': 'update', 'set': {'category': 'a'}}],
    )
    deal = api.create('deals', name='Ping pong')
    patch(api, f'/api/deals/{deal["id"]}', {'category': 'a'})
    deliver(database)
    made = [(r['rule_id'], r['depth'], r['status']) for r in runs(api)]
    assert made == [(a['id'], 0, 'applied'), (b['id'], 1, 'applied'), (a['id'], 2, 'applied'), (b['id'], 3, 'stopped')]
    stopped = runs(api, status='stopped')[0]
    assert 'depth 3' in stopped['error'] and stopped['results'] is None
    history = api.get(f'/api/deals/{deal["id"]}/history').json
    assert [(c['actor'], c['depth'], c['changes']['category'][1]) for c in history[:4]] == [
        (f'rule:{a["id"]}', 3, 'b'),
        (f'rule:{b["id"]}', 2, 'a'),
        (f'rule:{a["id"]}', 1, 'b'),
        ('user', None, 'a'),
    ]
    assert api.get(f'/api/deals/{deal["id"]}').json['category'] == 'b'


def test_changes_made_by_a_rule_are_attributed_to_it_in_the_history_and_the_feed(api, database):
    rule = api.create('automation_rules', **WON)
    won_deal(api)
    deliver(database)
    (task,) = api.list('tasks')
    (made,) = api.get(f'/api/tasks/{task["id"]}/history').json
    assert (made['actor'], made['user_id'], made['token_id'], made['depth']) == (f'rule:{rule["id"]}', None, None, 1)
    feed = api.get('/api/changes', {'resource': 'tasks'}).json
    assert [(c['record_id'], c['actor'], c['depth']) for c in feed] == [(task['id'], f'rule:{rule["id"]}', 1)]
    users = api.get('/api/changes', {'resource': 'deals'}).json
    assert {(c['actor'], c['depth']) for c in users} == {('user', None)}


def hook_rule(admin, url, **members):  # noqa: F811 -- the fixture's name
    return admin.post(
        '/api/automation_rules',
        {
            'name': 'Tell the billing system',
            'trigger': {'resource': 'deals', 'on': ['created']},
            'actions': [{'type': 'webhook', 'url': url}],
            **members,
        },
    ).json


def test_a_webhook_action_is_delivered_signed_with_the_rules_secret(admin, receiver, database):  # noqa: F811
    rule = hook_rule(admin, receiver.url)
    secret = rule['secret']
    assert secret.startswith('whsec_')
    deal = admin.create('deals', name='Big', amount=5000)
    deliver(database)
    ((headers, body, _),) = receiver.got
    assert verify(secret, headers, body)
    event = json.loads(body)
    assert event['type'] == 'deals.created' and event['data']['record']['name'] == 'Big'
    assert event['data']['record_id'] == deal['id']
    (run,) = admin.list('automation_runs')
    (result,) = run['results']
    delivery = admin.get(f'/api/webhook_deliveries/{result["delivery_id"]}').json
    assert (delivery['status'], delivery['rule_id'], delivery['webhook_id'], delivery['url']) == (
        'succeeded',
        rule['id'],
        None,
        receiver.url,
    )
    assert headers['webhook-id'] == delivery['id']


def test_a_rules_secret_is_shown_once_and_never_read_back(admin, receiver):  # noqa: F811
    rule = hook_rule(admin, receiver.url)
    secret = rule['secret']
    renamed = admin.put(f'/api/automation_rules/{rule["id"]}', {'name': 'Renamed'}).json
    reads = [
        renamed,
        admin.get(f'/api/automation_rules/{rule["id"]}').json,
        admin.list('automation_rules'),
        admin.get(f'/api/automation_rules/{rule["id"]}/history').json,
        admin.get('/api/changes').json,
    ]
    assert 'secret' not in renamed and all(secret not in json.dumps(r) for r in reads)
    plain = admin.create('automation_rules', **WON)
    assert 'secret' not in plain
    added = admin.put(
        f'/api/automation_rules/{plain["id"]}', {'actions': [{'type': 'webhook', 'url': receiver.url}]}
    ).json
    assert added['secret'].startswith('whsec_') and added['secret'] != secret


def test_a_webhook_url_is_checked_when_it_is_new_to_the_rule_so_a_rule_can_always_be_disabled(
    admin,  # noqa: F811
    receiver,  # noqa: F811
    wsgi_app,
):
    rule = hook_rule(admin, receiver.url)
    strict = Client(wsgi_app, admin.token, admin.org_id)  # an app that refuses private targets
    assert strict.put(f'/api/automation_rules/{rule["id"]}', {'enabled': False}).json['enabled'] is False
    resp = strict.put(
        f'/api/automation_rules/{rule["id"]}',
        {'actions': [*rule['actions'], {'type': 'webhook', 'url': receiver.url + '&new'}]},
        status=400,
    )
    assert_problem(resp, 400, field='actions[1].url')


def test_a_webhook_action_is_retried_on_the_webhook_schedule_until_it_is_received(admin, receiver, database):  # noqa: F811,E501
    hook_rule(admin, receiver.url)
    receiver.statuses = [500]
    admin.create('deals', name='Retry me')
    for _ in range(len(SHORT) + 1):
        deliver(database)
        time.sleep(SHORT[0] + 0.05)
    (delivery,) = admin.list('webhook_deliveries')
    assert (delivery['status'], delivery['attempts']) == ('succeeded', 2)
    assert [e['status_code'] for e in delivery['attempt_log']] == [500, 204]
    assert len(set(receiver.ids())) == 1 and len(receiver.got) == 2


def test_a_webhook_action_to_a_private_address_is_refused_naming_it(api):
    resp = api.post(
        '/api/automation_rules',
        {
            **WON,
            'actions': [{'type': 'create_task', 'text': 'x'}, {'type': 'webhook', 'url': 'https://127.0.0.1:9/hook'}],
        },
        status=400,
    )
    assert_problem(
        resp, 400, field='actions[1].url', detail='The webhook url resolves to a loopback address (127.0.0.1)'
    )


def test_a_failing_rule_records_its_error_and_holds_up_neither_later_changes_nor_webhooks(admin, receiver, database):  # noqa: F811
    admin.post('/api/webhooks', {'url': receiver.url, 'events': ['deals.created']})
    failing = admin.create(
        'automation_rules',
        name='Broken',
        trigger={'resource': 'deals', 'on': ['created']},
        actions=[{'type': 'update', 'set': {'company_id': 'comp_gone'}}],
    )
    tasks = admin.create(
        'automation_rules',
        name='Task',
        trigger={'resource': 'deals', 'on': ['created']},
        actions=[{'type': 'create_task', 'text': 'Call'}],
    )
    first = admin.create('deals', name='First')
    deliver(database)
    second = admin.create('deals', name='Second')
    deliver(database)
    broken = runs(admin, rule_id=failing['id'])
    assert [r['status'] for r in broken] == ['failed', 'failed'] and 'comp_gone' in broken[0]['error']
    assert [r['status'] for r in runs(admin, rule_id=tasks['id'])] == ['applied', 'applied']
    assert sorted(t['deal_id'] for t in admin.list('tasks')) == sorted([first['id'], second['id']])
    assert sorted(e['data']['record_id'] for e in receiver.events()) == sorted([first['id'], second['id']])


def test_a_rule_that_breaks_on_a_bug_is_a_failed_run_and_later_changes_still_run(api, database, monkeypatch):
    api.create('automation_rules', **WON)

    def bug(*args):
        raise ZeroDivisionError('division by zero')

    monkeypatch.setitem(rules.ACTIONS_RUN, 'create_task', bug)
    won_deal(api)
    deliver(database)
    monkeypatch.undo()
    deal = won_deal(api)
    deliver(database)
    assert [(r['status'], r['error']) for r in runs(api)] == [
        ('failed', 'Internal error (ZeroDivisionError); the worker logged it'),
        ('applied', None),
    ]
    assert [t['deal_id'] for t in api.list('tasks')] == [deal['id']]


def test_a_webhook_action_of_a_rule_deleted_before_it_was_sent_fails_without_sending(admin, receiver, database):  # noqa: F811
    rule = hook_rule(admin, receiver.url)
    admin.create('deals', name='Orphan')
    Worker(database, settings()).run_rules()
    admin.delete(f'/api/automation_rules/{rule["id"]}')
    deliver(database)
    (delivery,) = admin.list('webhook_deliveries')
    assert (delivery['status'], delivery['last_error']) == ('failed', 'not sent: its automation rule was deleted')
    assert receiver.got == [] and admin.list('automation_runs')[0]['rule_id'] == rule['id']


def test_rules_stored_before_the_worker_ran_rules_run_on_the_changes_after_the_migration(empty_db):  # noqa: F811
    migrations.migrate(empty_db, target=12)
    accounts = Accounts(empty_db)
    org = accounts.create_org('Early Co')
    p = '?' if empty_db.name == 'sqlite' else '%s'
    with empty_db.transaction(write=True) as tx:
        tx.execute(
            f'INSERT INTO automation_rules (id, organization_id, name, enabled, trigger, conditions, actions, '
            f'created_at, updated_at) VALUES ({p}, {p}, {p}, TRUE, {p}, {p}, {p}, {p}, {p})',
            (
                'rule_early',
                org,
                WON['name'],
                json.dumps(WON['trigger']),
                json.dumps(WON['conditions']),
                json.dumps(WON['actions']),
                '2020-01-01T00:00:00Z',
                '2020-01-01T00:00:00Z',
            ),
        )
    migrations.migrate(empty_db)
    api = Client(
        webtest.TestApp(create_app(settings(), db=empty_db)),
        accounts.create_token(org, 'early@example.com', admin=True),
        org,
    )
    deal = won_deal(api)
    deliver(empty_db)
    assert [t['deal_id'] for t in api.list('tasks')] == [deal['id']]


def test_a_rules_pass_that_breaks_holds_up_neither_webhooks_nor_later_rounds(admin, receiver, database, monkeypatch):  # noqa: F811
    admin.post('/api/webhooks', {'url': receiver.url, 'events': ['deals.*']})
    admin.create('automation_rules', **WON)

    def broken(*args):
        raise RuntimeError('the rules table is on fire')

    monkeypatch.setattr(rules, 'enabled_rules', broken)
    deal = won_deal(admin)
    deliver(database)
    assert sorted(e['type'] for e in receiver.events()) == ['deals.created', 'deals.updated']
    assert admin.list('tasks') == []
    monkeypatch.undo()
    deliver(database)
    assert [t['deal_id'] for t in admin.list('tasks')] == [deal['id']]


@pytest.mark.slow
def test_workers_killed_again_and_again_while_rules_run_never_apply_an_action_twice(api, database):
    api.create('automation_rules', **WON)
    env = {**os.environ, 'CRMAPI_WEBHOOK_POLL_S': '0.01'}
    command = [sys.executable, '-m', 'crmapi', '--database', database_url(database), 'worker']
    won, deadline = [], time.time() + 6
    while time.time() < deadline:
        workers = [subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) for _ in range(2)]
        for _ in range(4):
            won.append(won_deal(api)['id'])
            time.sleep(0.05)
        for w in workers:
            w.send_signal(signal.SIGKILL)
            w.wait()
    subprocess.run([*command, '--once'], env=env, stderr=subprocess.DEVNULL, check=True, timeout=60)
    tasks = collections.Counter(t['deal_id'] for t in api.get('/api/tasks', {'range': [0, 999]}).json)
    assert tasks == collections.Counter(won)
    assert len(api.get('/api/automation_runs', {'range': [0, 999]}).json) == len(won)
