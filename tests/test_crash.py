"""Crash safety: workers SIGKILLed at random under write load lose no acknowledged write and leave
no merge half-applied; a non-transactional merge under the same harness is caught (negative control).

The harness and the checker live in `bench/crash.py` (its long form runs by hand); this is the short,
bounded form. `naive_merge_app()` below is the only code that runs inside gunicorn besides crmapi.
"""

import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import crash  # noqa: E402
from bench.load import PostgresScratch  # noqa: E402
from bench.load import sqlite_path  # noqa: E402

SECONDS = 8.0  # of load, per run
KILL_EVERY = 0.6  # mean seconds between two SIGKILLs
CLIENTS = 6

pytestmark = pytest.mark.slow


def naive_merge_app():
    """NEGATIVE CONTROL, for this test only: crmapi, except that a merge is four autocommitted
    statements with a pause between them, the way a merge written without a transaction behaves.

    gunicorn loads it as `test_crash:naive_merge_app()` (with `--pythonpath tests`).
    """
    from crmapi import create_app

    inner = create_app()
    path = sqlite_path(os.environ['CRMAPI_DATABASE_URL'])
    pause = float(os.environ.get('NAIVE_MERGE_PAUSE', '0.3'))

    def app(environ, start_response):
        if environ['PATH_INFO'] != '/api/merge_contacts' or environ['REQUEST_METHOD'] != 'POST':
            return inner(environ, start_response)
        body = json.loads(environ['wsgi.input'].read(int(environ.get('CONTENT_LENGTH') or 0)))
        target, sources = body['target_id'], body['source_ids']
        marks = ','.join('?' * len(sources))
        conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            conn.execute('PRAGMA foreign_keys = ON')
            for sql, params in [
                (f'UPDATE tasks SET contact_id = ? WHERE contact_id IN ({marks})', [target, *sources]),
                (f'UPDATE contact_notes SET contact_id = ? WHERE contact_id IN ({marks})', [target, *sources]),
                (
                    'UPDATE contacts SET email = (SELECT email FROM contacts WHERE id = ?) '
                    'WHERE id = ? AND email IS NULL',
                    [sources[0], target],
                ),
                (f'DELETE FROM contacts WHERE id IN ({marks})', sources),
            ]:
                conn.execute(sql, params)
                time.sleep(pause)
        finally:
            conn.close()
        start_response('200 OK', [('Content-Type', 'application/json')])
        return [json.dumps({'id': target}).encode()]

    return app


def assert_the_run_meant_something(ledger):
    """Workers were killed, clients saw it, and enough was acknowledged to check."""
    assert len(ledger.kills) >= 3, f'only {len(ledger.kills)} workers were killed'
    assert ledger.no_answer >= 1, 'no request was cut off: the kills did not hit the traffic'
    assert sum(g.merge == 'acked' for g in ledger.groups) >= 1, 'no acknowledged merge to check'


@pytest.mark.parametrize('server', ['gunicorn', 'granian'])
@pytest.mark.parametrize('backend', ['sqlite', 'postgresql'])
def test_killed_workers_lose_no_acknowledged_write_and_leave_no_half_merge(backend, server, tmp_path):
    run = dict(clients=CLIENTS, seconds=SECONDS, kill_every=KILL_EVERY, workers=4, threads=2, server=server)
    if backend == 'sqlite':
        ledger, problems, line = crash.crash_run(f'sqlite:///{tmp_path}/crm.db', tmp_path, **run)
    else:
        from conftest import postgres_url

        with PostgresScratch(postgres_url(), 'crm_crash') as scratch:
            ledger, problems, line = crash.crash_run(scratch.url, tmp_path, **run)
    print(line)
    assert problems == []
    assert_the_run_meant_something(ledger)
    # NOTE: a kill cuts a request off (no answer); it must never turn into an error answer.
    assert ledger.answered_5xx == []
    assert ledger.answered_4xx == []


def test_the_checker_catches_a_non_transactional_merge(tmp_path):
    ledger, problems, line = crash.crash_run(
        f'sqlite:///{tmp_path}/crm.db',
        tmp_path,
        app='test_crash:naive_merge_app()',
        pythonpath=Path(__file__).parent,
        env={'NAIVE_MERGE_PAUSE': '0.3'},
        clients=CLIENTS,
        seconds=SECONDS,
        kill_every=KILL_EVERY,
        workers=4,
        threads=2,
    )
    print(line)
    half = [p for p in problems if p.startswith('half-applied merge')]
    assert half, f'the checker missed the half-applied merges of a non-transactional merge: {problems}'
    assert len(ledger.kills) >= 3
