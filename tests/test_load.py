"""Concurrency under gunicorn (and granian where the server matters), short and bounded: 4 workers with
concurrent creates, updates, archives and merges get 0 errors and 0 "database is locked", and the data matches what was
acknowledged; on PostgreSQL a server restart under load costs at most one failed request per pooled
connection and nothing after, and a lost database answers 503 with Retry-After, not a hang.

The load harness lives in `bench/load.py` (its long form runs by hand and prints figures).
"""

import copy
import glob
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import load  # noqa: E402

pytestmark = pytest.mark.slow

SECONDS = 5.0
CLIENTS = 8


# NOTE: granian on SQLite only, where writers of several threads and processes take turns; its PostgreSQL side is
# the pool's, the same under either server.
@pytest.mark.parametrize('backend, server', [('sqlite', 'gunicorn'), ('sqlite', 'granian'), ('postgresql', 'gunicorn')])
def test_four_workers_under_concurrent_writes_make_no_error_and_lose_nothing(backend, server, tmp_path):
    run = dict(clients=CLIENTS, seconds=SECONDS, workers=4, threads=4, worker_class='gthread', server=server)
    if backend == 'sqlite':
        ledger, problems, log = load.load_run(f'sqlite:///{tmp_path}/crm.db', tmp_path, **run)
    else:
        from conftest import postgres_url

        with load.PostgresScratch(postgres_url(), 'crm_load') as scratch:
            ledger, problems, log = load.load_run(scratch.url, tmp_path, **run)
    print(load.summary(ledger))
    assert problems == []
    assert 'database is locked' not in log
    # the run did exercise what it claims to
    assert ledger.counts['create'] >= 20
    assert ledger.counts['merge'] >= 5 and ledger.merged_into
    assert ledger.counts['update'] >= 5 and ledger.counts['archive'] + ledger.counts['race_archive'] >= 5


@pytest.mark.parametrize('backend', ['sqlite', 'postgresql'])
def test_two_opposite_merges_at_once_one_wins_and_the_other_is_404(backend, tmp_path):
    """X into Y and Y into X at the same moment: one merge applies, the other finds its source gone.

    Never a 5xx: on PostgreSQL both transactions lock their target first and then their source, so
    without one lock order for both they deadlock, and the victim answers 503.
    """

    def run(url):
        _, token = load.prepare_database(url)
        with load.Gunicorn('crmapi:create_app()', url, tmp_path / 'gunicorn.log', workers=4, threads=2) as server:
            api = load.Api(server.port, token)
            outcomes = []
            for _ in range(PAIRS):
                x, y = (api.call('POST', '/api/contacts', {'first_name': n}).body['id'] for n in 'xy')
                barrier, answers = threading.Barrier(2, timeout=10), []

                def merge(target, source):
                    client = load.Api(server.port, token)
                    barrier.wait()
                    answers.append(
                        client.call('POST', '/api/merge_contacts', {'target_id': target, 'source_ids': [source]})
                    )
                    client.close()

                threads = [threading.Thread(target=merge, args=pair, daemon=True) for pair in ((x, y), (y, x))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                outcomes.append(sorted(a.status for a in answers))
                if outcomes[-1] != [200, 404]:
                    return outcomes, [a.describe() for a in answers]
            api.close()
            return outcomes, []

    if backend == 'sqlite':
        outcomes, bad = run(f'sqlite:///{tmp_path}/crm.db')
    else:
        from conftest import postgres_url

        with load.PostgresScratch(postgres_url(), 'crm_race') as scratch:
            outcomes, bad = run(scratch.url)
    assert bad == [], f'after {len(outcomes)} pairs: {outcomes[-1]}'


PAIRS = 20


# -- PostgreSQL restarts -----------------------------------------------------------------------------

WORKERS = 2
POOL_MAX_SIZE = 2
POOL_TIMEOUT_S = 3.0


class PrivatePostgres:
    """A second throwaway server (scripts/pgtmp.sh) that this test may stop and restart."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix='crmapi-pgrestart-', dir='/tmp'))
        bins = sorted(glob.glob('/usr/lib/postgresql/*/bin'), key=lambda p: int(p.split('/')[-2]))
        self.bin = Path(os.environ.get('PG_BIN') or (bins[-1] if bins else '/usr/bin'))
        self.url = None

    def as_pg(self, *argv):
        prefix = ['runuser', '-u', os.environ.get('PG_USER', 'postgres'), '--'] if os.getuid() == 0 else []
        return prefix + [str(a) for a in argv]

    def pg_ctl(self, *args, timeout=90):
        subprocess.run(
            self.as_pg(self.bin / 'pg_ctl', '-D', self.dir / 'data', *args),
            check=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self):
        done = subprocess.run(
            [ROOT / 'scripts' / 'pgtmp.sh', 'start', self.dir], capture_output=True, text=True, timeout=120, check=True
        )
        self.url = done.stdout.strip().splitlines()[-1]
        return self

    def restart(self):
        # NOTE: -l keeps the server's output off our pipe (pg_ctl would wait for it to close).
        self.pg_ctl('-l', self.dir / 'server.log', '-m', 'fast', '-w', '-t', '60', 'restart')

    def stop_server(self):
        self.pg_ctl('-m', 'fast', '-w', '-t', '60', 'stop')

    def start_server(self):
        port = urlparse(self.url).port
        self.pg_ctl(
            '-l',
            self.dir / 'server.log',
            '-w',
            '-t',
            '60',
            '-o',
            f'-h 127.0.0.1 -p {port} -k {self.dir} -c fsync=off -c max_connections=100',
            'start',
        )

    def running(self):
        status = subprocess.run(self.as_pg(self.bin / 'pg_ctl', '-D', self.dir / 'data', 'status'), capture_output=True)
        return status.returncode == 0

    def with_fresh_database(self):
        """This server, its `url` naming a new empty database (a test's own)."""
        fresh = copy.copy(self)
        fresh.url = load.PostgresScratch(self.url, 'crm_restart').__enter__().url
        return fresh

    def remove(self):
        subprocess.run([ROOT / 'scripts' / 'pgtmp.sh', 'stop', self.dir], capture_output=True, timeout=120)


@pytest.fixture(scope='module')
def private_server():
    server = PrivatePostgres()
    try:
        yield server.start()
    finally:
        server.remove()


@pytest.fixture
def private_postgres(private_server):
    """The module's private server, running (a test that failed may have left it stopped), with a new database.

    NOTE: one server for the module, not one per test: initdb and the server's start and stop took seconds each time.
    """
    if not private_server.running():
        private_server.start_server()
    return private_server.with_fresh_database()


@pytest.fixture
def served(request, private_postgres, tmp_path):
    """gunicorn (or the server named by an indirect parameter) over the private server, with a small pool and a
    short pool timeout: (server, api token)."""
    name = getattr(request, 'param', 'gunicorn')
    _, token = load.prepare_database(private_postgres.url)
    env = {'CRMAPI_POOL_MAX_SIZE': str(POOL_MAX_SIZE), 'CRMAPI_POOL_TIMEOUT_S': str(POOL_TIMEOUT_S)}
    server = load.Gunicorn(
        'crmapi:create_app()',
        private_postgres.url,
        tmp_path / f'{name}.log',
        workers=WORKERS,
        threads=4,
        env=env,
        server=name,
    )
    with server:
        yield server, token


def hammer(port, token, stop, answers, n):
    """Creates and lists in a loop until `stop`; every answer goes into `answers`."""
    api = load.Api(port, token, timeout=30)
    i = 0
    while not stop.is_set():
        i += 1
        if i % 2:
            a = api.call('POST', '/api/contacts', {'first_name': f'R{n}', 'last_name': str(i)})
        else:
            a = api.call('GET', '/api/contacts?range=%5B0%2C4%5D')
        answers.append(a)
    api.close()


def test_a_postgres_restart_under_load_costs_at_most_one_request_per_pooled_connection(private_postgres, served):
    server, token = served
    stop, answers = threading.Event(), []
    clients = [
        threading.Thread(target=hammer, args=(server.port, token, stop, answers, n), daemon=True) for n in range(4)
    ]
    for t in clients:
        t.start()
    try:
        time.sleep(1.5)
        restart_began = time.monotonic()
        private_postgres.restart()
        restarted = time.monotonic()
        time.sleep(3.0)
    finally:
        stop.set()
        for t in clients:
            t.join(40)
    assert not any(t.is_alive() for t in clients), 'a client hung'
    failed = [a for a in answers if not a.ok]
    before = [a for a in answers if a.ok and a.ended < restart_began]
    after = [a for a in answers if a.started >= restarted]
    print(
        f'{len(answers)} requests; restart took {restarted - restart_began:.2f}s; {len(failed)} failed: '
        + ', '.join(f'{a.status} at +{a.started - restart_began:.2f}s' for a in failed)
    )
    assert len(before) >= 5 and len(after) >= 5
    assert all(a.status == 503 and a.headers.get('retry-after') for a in failed), [a.describe() for a in failed]
    assert len(failed) <= WORKERS * POOL_MAX_SIZE
    assert [a.describe() for a in after if not a.ok] == []
    assert 'Traceback' not in server.log_text()


def test_a_lost_database_answers_503_with_retry_after_then_recovers(private_postgres, served):
    server, token = served
    api = load.Api(server.port, token, timeout=60)
    assert api.call('GET', '/api/contacts').ok
    private_postgres.stop_server()
    for method, path, body in (('GET', '/api/contacts', None), ('POST', '/api/contacts', {'first_name': 'Lost'})):
        a = api.call(method, path, body)
        assert a.status == 503, a.describe()
        assert a.headers.get('retry-after')
        assert a.body['status'] == 503 and 'Traceback' not in a.text
        assert a.ended - a.started < POOL_TIMEOUT_S + 5, f'{method} took {a.ended - a.started:.1f}s'
    private_postgres.start_server()
    deadline = time.monotonic() + 20
    while not (a := api.call('GET', '/api/contacts')).ok and time.monotonic() < deadline:
        time.sleep(0.2)
    assert a.ok, a.describe()
    assert api.call('POST', '/api/contacts', {'first_name': 'Back'}).status == 201
    api.close()


@pytest.mark.parametrize('served', ['gunicorn', 'granian'], indirect=True)
def test_a_worker_that_boots_while_the_database_is_down_keeps_the_server_answering(private_postgres, served):
    """gunicorn and granian halt altogether when a worker fails to boot; a worker restarted during an outage
    (a crash, max_requests, a timeout) must not turn a 503 into a dead server."""
    server, token = served
    private_postgres.stop_server()
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    ready = server.GRANIAN_READY if server.server == 'granian' else server.READY
    deadline = time.monotonic() + POOL_TIMEOUT_S + 10
    # NOTE: until the new worker has booted through the outage (its ready line), or the server has halted.
    while time.monotonic() < deadline and server.proc.poll() is None:
        if victim not in server.worker_pids() and server.log_text().count(ready) > WORKERS:
            break
        time.sleep(0.1)
    api = load.Api(server.port, token, timeout=60)
    a = api.call('GET', '/api/contacts')
    assert a.status == 503, f'{a.describe()}\n{server.log_tail(15)}'
    private_postgres.start_server()
    deadline = time.monotonic() + 20
    while not (a := api.call('GET', '/api/contacts')).ok and time.monotonic() < deadline:
        time.sleep(0.2)
    assert a.ok, a.describe()
    api.close()
