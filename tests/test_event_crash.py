"""Events under kill -9: gunicorn workers and `crmapi worker`s SIGKILLed every 2-4 s under write load lose no
acknowledged change's delivery, send every change under one webhook-id, and apply no rule action twice.

The harness and the checker live in `bench/event_crash.py` (its 60-second form runs by hand); this is the short
form: CRMAPI_CRASH_SECONDS of load (12 by default; 60 is the issue's long run).
"""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import event_crash  # noqa: E402
from bench.load import PostgresScratch  # noqa: E402

SECONDS = float(os.environ.get('CRMAPI_CRASH_SECONDS', '12'))


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['sqlite', 'postgresql'])
def test_killed_servers_and_workers_deliver_every_acknowledged_change_once_in_effect(backend, tmp_path):
    if backend == 'sqlite':
        problems, figures = event_crash.event_crash_run(f'sqlite:///{tmp_path}/crm.db', tmp_path, seconds=SECONDS)
    else:
        from conftest import postgres_url

        with PostgresScratch(postgres_url(), 'crm_event_crash') as scratch:
            problems, figures = event_crash.event_crash_run(scratch.url, tmp_path, seconds=SECONDS)
    print(figures)
    assert problems == []
    # NOTE: the run meant something: processes were killed while writes were acknowledged and delivered
    assert figures['gunicorn kills'] >= 2 and figures['worker kills'] >= 2
    assert figures['writes acknowledged'] >= 100 and figures['creates'] and figures['patches']
    # NOTE: trivially true while the worker runs no rules; once it does, each created contact gets one task
    assert figures['tasks by rules'] <= figures['creates'] + figures['committed unacknowledged']


def delivery(change_id, record_id, webhook_id=None, city=None):
    data = {'id': change_id, 'record_id': record_id, 'changes': {'city': [None, city]} if city else None}
    return webhook_id or change_id, json.dumps({'type': 'contacts.updated', 'data': data}).encode()


def test_the_event_checker_catches_a_lost_a_relabelled_or_an_altered_delivery_and_a_rule_run_twice():
    ledger = event_crash.EventLedger(created={'c_1'}, updated={('c_1', 'Oslo')})
    committed = {'chg_1': ('c_1', 'created', None), 'chg_2': ('c_1', 'updated', 'Oslo')}
    received = [delivery('chg_1', 'c_1'), delivery('chg_2', 'c_1', city='Oslo'), delivery('chg_1', 'c_1')]
    assert event_crash.check_events(ledger, received, committed, {'c_1': 1})[0] == []
    checks = {
        'lost': (received[:1], {'c_1': 1}),
        'relabelled': ([*received, delivery('chg_2', 'c_1', webhook_id='chg_9', city='Oslo')], {'c_1': 1}),
        'altered': ([*received, delivery('chg_2', 'c_1', city='Rome')], {'c_1': 1}),
        'rule twice': (received, {'c_1': 2}),
    }
    for name, (got, tasks) in checks.items():
        assert event_crash.check_events(ledger, got, committed, tasks)[0], f'the checker missed a {name} delivery'
