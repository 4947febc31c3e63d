"""Webhooks: administrators register endpoints; the worker delivers every matching change, signed (Standard
Webhooks), retried on a schedule, from the change history as an outbox; targets are checked against SSRF. Both
databases, against a real HTTP receiver on 127.0.0.1."""

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from crmapi import cli
from crmapi import create_app
from crmapi import webhooks
from crmapi.config import Settings
from crmapi.errors import Unavailable
from crmapi.history import History
from crmapi.store import new_ids
from crmapi.store import utc_now
from crmapi.worker import Worker

from conftest import RULE_SHAPE
from conftest import NoLeaks
from conftest import assert_problem
from conftest import new_org

SHORT = (0.2, 0.2)


class Receiver:
    """An HTTP endpoint that records each request and answers the next status of `statuses` (then 204)."""

    def __init__(self, host='127.0.0.1'):
        self.got, self.statuses, self.lock = [], [], threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers['Content-Length'])
                body = self.rfile.read(length)
                if len(body) < length:  # NOTE: a sender killed mid-request; it never got an answer, so it retries
                    return
                with receiver.lock:
                    receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body, time.time()))
                    status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                self.send_header('Content-Length', '0')
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        # NOTE: shutdown() waits for the loop's next poll: the default 0.5 s was paid by every test that stops one.
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f'http://{host}:{self.server.server_port}/hook?x=1'

    def events(self):
        return [json.loads(body) for _, body, _ in self.got]

    def ids(self):
        return [headers['webhook-id'] for headers, _, _ in self.got]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def settings(**overrides):
    return Settings(
        database_url='injected',
        access_log=False,
        webhook_allow_private=True,
        webhook_retry_schedule=SHORT,
        webhook_timeout_s=2,
        webhook_concurrency=4,
        **overrides,
    )


@pytest.fixture(scope='module')
def private_app(database):
    """The API as an operator runs it with CRMAPI_WEBHOOK_ALLOW_PRIVATE=1 (the receiver is on 127.0.0.1)."""
    return NoLeaks(create_app(settings(), db=database))


@pytest.fixture
def admin(database, private_app):
    return new_org(database, private_app)


def deliver(database, **overrides):
    """A worker's pass: fan out, send what is due, until nothing is."""
    Worker(database, settings(**overrides)).run(once=True)


def test_a_worker_outlives_a_database_outage_and_then_delivers(database, admin, receiver, monkeypatch):
    hook(admin, receiver.url, ['contacts.created'])
    created = admin.post('/api/contacts', {'first_name': 'Outage'}).json
    worker = Worker(database, settings())
    step, outages = worker.step, []

    def flaky_step():
        if len(outages) < 2:
            outages.append(1)
            raise Unavailable('The database is unavailable; retry shortly')
        if receiver.got:
            worker.stopping.set()
        return step()

    monkeypatch.setattr(worker, 'step', flaky_step)
    monkeypatch.setattr('crmapi.worker.OUTAGE_WAITS', (0.01, 0.02))
    thread = threading.Thread(target=worker.run)
    thread.start()
    thread.join(20)
    assert not thread.is_alive() and len(outages) == 2
    assert [e['data']['record_id'] for e in receiver.events()] == [created['id']]


def hook(admin, url, events=('*',), **fields):
    return admin.post('/api/webhooks', {'url': url, 'events': list(events), **fields}).json


def verify(secret, headers, body):
    """An independent Standard Webhooks check: HMAC-SHA256 of "id.timestamp.body" keyed by the secret's bytes."""
    key = base64.b64decode(secret.removeprefix('whsec_'))
    signed = f'{headers["webhook-id"]}.{headers["webhook-timestamp"]}.'.encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig.partition(',')[2] == expected for sig in headers['webhook-signature'].split())


def test_the_signature_matches_the_standard_webhooks_test_vector():
    # the published example of the Standard Webhooks specification and its reference libraries
    secret, msg_id, timestamp = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330
    body = b'{"test": 2432232314}'
    expected = 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='
    assert webhooks.sign(secret, msg_id, timestamp, body) == expected
    assert verify(
        secret, {'webhook-id': msg_id, 'webhook-timestamp': str(timestamp), 'webhook-signature': expected}, body
    )


def test_the_secret_is_shown_once_at_creation_and_at_rotation(admin, receiver):
    created = hook(admin, receiver.url, ['contacts.created'], description='CRM sync')
    assert created['secret'].startswith('whsec_') and len(base64.b64decode(created['secret'][6:])) == 32
    assert created['enabled'] is True and created['disabled_reason'] is None
    shown = [
        admin.get(f'/api/webhooks/{created["id"]}').json,
        *admin.list('webhooks'),
        *admin.get(f'/api/webhooks/{created["id"]}/history').json,
        *admin.get('/api/changes').json,
    ]
    assert shown and all(created['secret'] not in json.dumps(x) and 'secret' not in x for x in shown)
    assert 'secret' not in json.dumps(admin.get('/api/schema/webhooks').json)
    rotated = admin.post(f'/api/webhooks/{created["id"]}/rotate_secret', status=200).json
    assert rotated['secret'].startswith('whsec_') and rotated['secret'] != created['secret']
    assert 'secret' not in admin.get(f'/api/webhooks/{created["id"]}').json
    assert_problem(admin.post('/api/webhooks/wh_nope/rotate_secret', status=404), 404)


def test_webhooks_are_for_administrators_only(api, user_api):
    created = api.post('/api/webhooks', {'url': 'https://8.8.8.8/hook', 'events': ['*']}).json
    for path in ('/api/webhooks', f'/api/webhooks/{created["id"]}', '/api/webhook_deliveries'):
        assert_problem(user_api.get(path, status=403), 403)
    assert_problem(user_api.post('/api/webhooks', {'url': 'https://8.8.8.8/x', 'events': ['*']}, status=403), 403)
    assert_problem(user_api.post(f'/api/webhooks/{created["id"]}/rotate_secret', status=403), 403)


@pytest.mark.parametrize(
    'events, detail',
    [
        ([], 'array'),
        ('*', 'array'),
        (['contacts.exploded'], 'not an event type'),
        (['nothing.created'], 'nothing'),
        (['webhooks.created'], 'webhooks'),
        ([1], 'not an event type'),
    ],
)
def test_bad_events_are_refused_naming_events(api, events, detail):
    resp = api.post('/api/webhooks', {'url': 'https://8.8.8.8/hook', 'events': events}, status=400)
    assert detail in assert_problem(resp, 400, field='events')['detail']


@pytest.mark.parametrize(
    'url',
    [
        'http://example.com/hook',
        'https://127.0.0.1/',
        'https://[::1]/',
        'https://2130706433/',
        'https://0177.0.0.1/',
        'https://localhost/',
        'https://10.1.2.3/',
        'https://192.168.0.1/',
        'https://[::ffff:127.0.0.1]/',
        'https://169.254.169.254/latest/meta-data',
        'https://[fe80::1]/',
        'https://0.0.0.0/',
        'https://[::]/',
        'https://224.0.0.1/',
        'ftp://example.com/',
        'https://user:pw@example.com/',
        'not a url',
    ],
)
def test_unsafe_targets_are_refused_at_creation(api, url):
    assert_problem(api.post('/api/webhooks', {'url': url, 'events': ['*']}, status=400), 400, field='url')


@pytest.mark.parametrize(
    'url',
    ['http://169.254.169.254/', 'http://[fe80::1]/', 'http://0.0.0.0/', 'http://[::]/', 'http://[fd00:ec2::254]/'],
)
def test_link_local_metadata_and_unspecified_targets_stay_refused_when_private_ones_are_allowed(admin, url):
    assert_problem(admin.post('/api/webhooks', {'url': url, 'events': ['*']}, status=400), 400, field='url')


def test_a_target_is_checked_again_at_delivery_time(receiver):
    code, _, error = webhooks.send(receiver.url, 'msg_1', b'{}', webhooks.new_secret(), 2, allow_private=False)
    assert code is None and error.startswith('refused') and not receiver.got


def test_matching_changes_are_delivered_signed_with_the_record_after_the_change(admin, receiver, database):
    secret = hook(admin, receiver.url, ['contacts.created', 'deals.*'])['secret']
    contact = admin.create('contacts', first_name='Ann', last_name='Lee')
    admin.put(f'/api/contacts/{contact["id"]}', {'city': 'Oslo'})  # contacts.updated: not wanted
    admin.create('companies', name='Acme')  # not wanted
    deal = admin.create('deals', name='Big', status='open')
    admin.put(f'/api/deals/{deal["id"]}', {'status': 'won'})
    admin.delete(f'/api/deals/{deal["id"]}')
    deliver(database)
    # NOTE: deliveries are sent side by side, so they may arrive in any order: `seq` orders them
    got = sorted(receiver.got, key=lambda g: json.loads(g[1])['data']['seq'])
    events = [json.loads(body) for _, body, _ in got]
    assert [e['type'] for e in events] == ['contacts.created', 'deals.created', 'deals.updated', 'deals.archived']
    changes = {c['id']: c for c in admin.get('/api/changes').json}
    for (headers, body, _), event in zip(got, events):
        assert verify(secret, headers, body)
        assert headers['webhook-id'] == event['data']['id'] and headers['webhook-id'] in changes
        assert abs(int(headers['webhook-timestamp']) - time.time()) < 60
        assert {k: v for k, v in event['data'].items() if k != 'record'} == {
            k: v for k, v in changes[headers['webhook-id']].items() if k != 'record'
        }
    assert events[0]['data']['record']['first_name'] == 'Ann'
    assert events[2]['data']['changes']['status'] == ['open', 'won'] and events[2]['data']['record']['status'] == 'won'
    assert events[2]['data']['record']['name'] == 'Big'
    assert events[3]['data']['record']['archived_at'] is not None
    assert events[2]['timestamp'] == events[2]['data']['changed_at']


def test_changes_before_the_webhook_and_webhook_edits_are_not_delivered(admin, receiver, database):
    admin.create('contacts', first_name='Before', last_name='Hook')
    created = hook(admin, receiver.url)
    admin.put(f'/api/webhooks/{created["id"]}', {'description': 'changed'})
    admin.create('tags', name='after')
    deliver(database)
    assert [e['type'] for e in receiver.events()] == ['tags.created']


def test_custom_object_records_are_events_too(admin, receiver, database):
    admin.post(
        '/api/custom_objects', {'slug': 'projects', 'label': 'Projects', 'fields': [{'name': 'title', 'type': 'text'}]}
    )
    hook(admin, receiver.url, ['projects.*'])
    admin.create('projects', title='Launch')
    deliver(database)
    assert [(e['type'], e['data']['record']['title']) for e in receiver.events()] == [('projects.created', 'Launch')]


def test_failed_deliveries_are_retried_and_the_deliveries_show_each_attempt(admin, receiver, database):
    hook(admin, receiver.url, ['tags.created'])
    receiver.statuses = [500, 302]
    admin.create('tags', name='retry me')
    deliver(database)
    (delivery,) = admin.list('webhook_deliveries')
    assert (delivery['status'], delivery['attempts'], delivery['last_status_code']) == ('pending', 1, 500)
    time.sleep(0.3)
    deliver(database)  # the 302 is a failure: redirects are not followed
    time.sleep(0.3)
    deliver(database)
    (delivery,) = admin.list('webhook_deliveries')
    assert (delivery['status'], delivery['attempts'], delivery['last_status_code']) == ('succeeded', 3, 204)
    assert [a['status_code'] for a in delivery['attempt_log']] == [500, 302, 204]
    assert all(a['duration_ms'] >= 0 for a in delivery['attempt_log']) and delivery['attempt_log'][1]['error']
    assert len(set(receiver.ids())) == 1 and len(receiver.got) == 3
    assert len({body for _, body, _ in receiver.got}) == 1
    assert 'payload' not in delivery and 'locked_until' not in delivery
    assert_problem(admin.post('/api/webhook_deliveries', {}, status=405), 405)


def test_a_delivery_can_be_redelivered(admin, receiver, database):
    hook(admin, receiver.url, ['tags.created'])
    admin.create('tags', name='again')
    deliver(database)
    (delivery,) = admin.list('webhook_deliveries')
    again = admin.post(f'/api/webhook_deliveries/{delivery["id"]}/redeliver', status=202).json
    assert again['status'] == 'pending'
    deliver(database)
    assert len(receiver.got) == 2 and len(set(receiver.ids())) == 1
    assert admin.get(f'/api/webhook_deliveries/{delivery["id"]}').json['status'] == 'succeeded'
    assert_problem(admin.post('/api/webhook_deliveries/whd_nope/redeliver', status=404), 404)


def test_a_webhook_failing_past_the_window_is_disabled_and_says_why(admin, receiver, database):
    created = hook(admin, receiver.url, ['tags.created'])
    receiver.statuses = [503] * 10
    admin.create('tags', name='a')
    deliver(database, webhook_disable_after_s=0.3)
    time.sleep(0.35)
    deliver(database, webhook_disable_after_s=0.3)
    webhook = admin.get(f'/api/webhooks/{created["id"]}').json
    assert webhook['enabled'] is False and 'HTTP 503' in webhook['disabled_reason']
    admin.put(f'/api/webhooks/{created["id"]}', {'disabled_reason': 'mine'})  # read-only: ignored
    enabled = admin.put(f'/api/webhooks/{created["id"]}', {'enabled': True}).json
    assert enabled['enabled'] is True and enabled['disabled_reason'] is None


def test_failed_after_the_last_retry(admin, receiver, database):
    hook(admin, receiver.url, ['tags.created'])
    receiver.statuses = [500] * 10
    admin.create('tags', name='doomed')
    for _ in range(len(SHORT) + 1):
        deliver(database)
        time.sleep(0.25)
    (delivery,) = admin.list('webhook_deliveries')
    assert (delivery['status'], delivery['attempts']) == ('failed', len(SHORT) + 1)


def test_two_workers_deliver_each_event_once(admin, receiver, database):
    hook(admin, receiver.url, ['contacts.created'])
    admin.post('/api/contacts', [{'first_name': f'P{i}', 'last_name': 'Q'} for i in range(60)])
    workers = [threading.Thread(target=deliver, args=(database,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(receiver.got) == 60 and len(set(receiver.ids())) == 60


def database_url(database):
    return f'sqlite:///{database.path}' if database.name == 'sqlite' else database.url


@pytest.mark.slow
def test_a_worker_killed_again_and_again_loses_no_acknowledged_change(admin, receiver, database):
    hook(admin, receiver.url, ['tags.created'])
    # NOTE: a lease of 2 x 1 + 1 s outlives a killed worker's claims soon; retries enough for a busy machine
    env = {
        **os.environ,
        'CRMAPI_WEBHOOK_ALLOW_PRIVATE': '1',
        'CRMAPI_WEBHOOK_TIMEOUT_S': '1',
        'CRMAPI_WEBHOOK_RETRY_SCHEDULE': '0.2,0.2,0.2,0.2,0.2',
        'CRMAPI_WEBHOOK_POLL_S': '0.02',
    }
    command = [sys.executable, '-m', 'crmapi', '--database', database_url(database), 'worker']
    acknowledged, deadline = [], time.time() + 8
    while time.time() < deadline:
        worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        for _ in range(5):
            acknowledged.append(admin.create('tags', name=f't{len(acknowledged)}')['id'])
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        until = time.time() + 15
        while time.time() < until and not set(acknowledged) <= {e['data']['record_id'] for e in receiver.events()}:
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        # NOTE: when the killed workers already delivered everything, this one may be signalled before it has
        # installed its handler: it then dies of SIGTERM with nothing in flight, which is fine here.
        assert worker.wait(timeout=10) in (0, -signal.SIGTERM)
    events = receiver.events()
    assert set(acknowledged) <= {e['data']['record_id'] for e in events}
    by_id = {}
    for headers, body, _ in receiver.got:
        by_id.setdefault(headers['webhook-id'], set()).add(body)
    assert all(len(bodies) == 1 for bodies in by_id.values())  # a duplicate is the same message


def run(database, text, params=()):
    """One statement with `?` placeholders, in the database's own style: its rows, if it answers any."""
    with database.transaction(write=True) as tx:
        text = text if database.name == 'sqlite' else text.replace('?', '%s')
        return tx.rows(text, list(params)) if text.startswith('SELECT') else tx.execute(text, list(params))


def test_prune_deletes_old_sent_deliveries_and_runs_never_what_the_worker_still_has_to_send(
    admin, receiver, database, capsys, monkeypatch
):
    hook(admin, receiver.url, ['tags.created'])
    sent = [admin.create('tags', name=f'sent {i}') for i in range(3)]
    deliver(database)
    receiver.statuses = [500]
    retrying = admin.create('tags', name='retrying')
    Worker(database, dataclasses.replace(settings(), webhook_retry_schedule=(3600,))).run(once=True)  # retries in 1 h
    unfanned = admin.create('tags', name='not fanned out yet')  # after the fan-out cursor
    changes = {
        record_id: change_id
        for change_id, record_id in run(
            database, 'SELECT id, record_id FROM changes WHERE organization_id = ?', [admin.org_id]
        )
    }
    old = (utc_now() - dt.timedelta(days=400)).isoformat()
    for record in (sent[0], unfanned):
        run(
            database,
            'INSERT INTO automation_runs (id, organization_id, rule_id, change_id, resource, record_id, '
            "depth, status, created_at) VALUES (?, ?, 'rule_x', ?, 'tags', ?, 0, 'succeeded', ?)",
            [f'run_{record["id"]}', admin.org_id, changes[record['id']], record['id'], old],
        )
    run(database, 'UPDATE changes SET changed_at = ? WHERE organization_id = ?', [old, admin.org_id])
    run(
        database,
        'UPDATE webhook_deliveries SET created_at = ?, updated_at = ? WHERE organization_id = ?',
        [old, old, admin.org_id],
    )
    capsys.readouterr()
    monkeypatch.setenv('CRMAPI_HISTORY_DAYS', '365')
    assert History(database, utc_now, new_ids).retention(365, batch=1) == {
        'changes': 5,
        'automation_runs': 1,
        'webhook_deliveries': 3,
    }, 'the webhook, the sent tags, the retrying tag'
    cli.main(['--database', database_url(database), 'prune'])
    assert 'pruned 0 delivered or failed webhook delivery(ies) and 0 automation run(s)' in capsys.readouterr().err
    assert [c['record_id'] for c in admin.get('/api/changes').json] == [unfanned['id']]
    assert [(d['change_id'], d['status']) for d in admin.list('webhook_deliveries')] == [
        (changes[retrying['id']], 'pending')
    ]
    assert [
        r for (r,) in run(database, 'SELECT record_id FROM automation_runs WHERE organization_id = ?', [admin.org_id])
    ] == [unfanned['id']]
    deliver(database)
    assert sorted(e['data']['record']['name'] for e in receiver.events()) == sorted(
        [*(t['name'] for t in sent), 'retrying', 'not fanned out yet']
    )
    History(database, utc_now, new_ids).retention(365)  # NOTE: leaves no old change for other tests' prunes


def test_prune_keeps_the_changes_automation_rules_have_not_run_on_yet(admin, database):
    admin.create('automation_rules', name='greet', **RULE_SHAPE)
    contact = admin.create('contacts', first_name='Waits', last_name='For its rule')
    old = (utc_now() - dt.timedelta(days=400)).isoformat()
    run(database, 'UPDATE changes SET changed_at = ? WHERE organization_id = ?', [old, admin.org_id])
    History(database, utc_now, new_ids).retention(365)
    deliver(database)  # the worker's rules run on the change prune left
    assert [(t['text'], t['contact_id']) for t in admin.list('tasks')] == [('Welcome them', contact['id'])]
    History(database, utc_now, new_ids).retention(365)
    assert contact['id'] not in [c['record_id'] for c in admin.get('/api/changes').json], 'handed on: now it goes'


@pytest.mark.parametrize('raw, allowed', [('1', True), ('0', False), ('no', False)])
def test_crmapi_webhook_allow_private_reads_as_the_flag_it_says(monkeypatch, raw, allowed):
    monkeypatch.setenv('CRMAPI_WEBHOOK_ALLOW_PRIVATE', raw)
    assert Settings.from_env().webhook_allow_private is allowed
