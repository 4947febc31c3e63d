"""Events crash test: webhooks delivered at least once while gunicorn workers and `crmapi worker`s are SIGKILLed.

gunicorn (2 workers) and two `crmapi worker` processes run against one database; a receiver on 127.0.0.1
records every delivery it gets; a webhook sends it every `contacts.*` event, and an automation rule makes a
task for each created contact. Writers POST contacts and PATCH their own contacts (each PATCH writes a value
no other write does, so its change can be told apart) and record what the server acknowledged. A killer
SIGKILLs a random gunicorn worker (the master starts another) and a random `crmapi worker` (restarted) every
2-4 seconds. Afterwards one worker runs alone until every committed change is delivered, and the checker reads
the database and the receiver:

- every acknowledged write's change is delivered at least once;
- every delivery of one change carries the same webhook-id (the change's id) and the same body;
- the receiver's de-duplicated set is exactly the set of committed contacts changes: the acknowledged ones,
  plus writes cut off by a kill that committed anyway (never more of those than requests left unanswered);
- no rule action is applied twice: at most one task per contact (trivially true where the worker does not run
  rules yet).

`tests/test_event_crash.py` runs the short form (CRMAPI_CRASH_SECONDS, 12 s by default). The long form:

    .venv/bin/python bench/event_crash.py --seconds 60
    .venv/bin/python bench/event_crash.py --database postgresql://postgres@127.0.0.1:5432/postgres --seconds 60
"""

import argparse
import collections
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import ROOT  # noqa: E402
from bench.load import Api  # noqa: E402
from bench.load import Gunicorn  # noqa: E402
from bench.load import PostgresScratch  # noqa: E402
from bench.load import Reader  # noqa: E402
from bench.load import prepare_database  # noqa: E402

# NOTE: a lease is 2 x timeout + 1 s: a killed worker's claims are sent again within seconds.
WORKER_ENV = {
    'CRMAPI_WEBHOOK_ALLOW_PRIVATE': '1',
    'CRMAPI_WEBHOOK_TIMEOUT_S': '2',
    'CRMAPI_WEBHOOK_POLL_S': '0.05',
    'CRMAPI_WEBHOOK_RETRY_SCHEDULE': '0.2,0.5,1,1,1,1,1,1,1,1,1,1',
}
RULE = {
    'name': 'call every new contact',
    'trigger': {'resource': 'contacts', 'on': ['created']},
    'actions': [{'type': 'create_task', 'text': 'Call them', 'due_in_days': 1}],
}


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records each delivery it reads whole: (webhook-id, body)."""

    def __init__(self):
        self.got, self.lock = [], threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers['Content-Length'])
                body = self.rfile.read(length)
                if len(body) < length:  # NOTE: a sender killed mid-request never got an answer: it sends again
                    return
                with receiver.lock:
                    receiver.got.append((self.headers['webhook-id'], body))
                self.send_response(204)
                self.send_header('Content-Length', '0')
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        # NOTE: shutdown() waits for the loop's next poll: the default 0.5 s was paid by every test that stops one.
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f'http://127.0.0.1:{self.server.server_port}/hook'

    def received(self):
        with self.lock:
            return list(self.got)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Workers:
    """`crmapi worker` processes: started, SIGKILLed, restarted."""

    def __init__(self, database_url, log_path, count):
        self.database_url, self.log_path, self.count = database_url, log_path, count
        self.procs = []

    def start_one(self):
        with open(self.log_path, 'ab') as log:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, '-m', 'crmapi', '--database', self.database_url, 'worker'],
                    cwd=ROOT,
                    env={**os.environ, **WORKER_ENV},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

    def fill(self):
        self.procs = [p for p in self.procs if p.poll() is None]
        while len(self.procs) < self.count:
            self.start_one()

    def kill_one(self, rng):
        """SIGKILL a random running worker, then start another in its place."""
        proc = rng.choice(self.procs)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.fill()

    def stop(self, timeout=15):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


@dataclass
class EventLedger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    created: set = field(default_factory=set)  # acknowledged creates: contact ids
    updated: set = field(default_factory=set)  # acknowledged PATCHes: (contact id, the city written)
    sent: int = 0
    no_answer: int = 0
    refused: list = field(default_factory=list)  # answers other than 2xx (never expected)
    gunicorn_kills: int = 0
    worker_kills: int = 0
    elapsed: float = 0.0


class Writer(threading.Thread):
    """POSTs contacts and PATCHes its own, each PATCH with a city no other write uses."""

    def __init__(self, n, port, token, ledger, stop, rng, pause):
        super().__init__(name=f'writer-{n}', daemon=True)
        self.n, self.api, self.ledger, self.stop, self.rng = n, Api(port, token, timeout=30), ledger, stop, rng
        self.pause = pause
        self.mine, self.writes = [], 0

    def call(self, method, path, body):
        answer = self.api.call(method, path, body)
        with self.ledger.lock:
            self.ledger.sent += 1
            if answer.status is None:
                self.ledger.no_answer += 1
            elif not answer.ok:
                self.ledger.refused.append(f'{method} {path}: {answer.describe()}')
        return answer

    def step(self):
        self.writes += 1
        if not self.mine or self.rng.random() < 0.5:
            answer = self.call('POST', '/api/contacts', {'first_name': f'W{self.n}', 'last_name': f'N{self.writes}'})
            if answer.ok:
                self.mine.append(answer.body['id'])
                with self.ledger.lock:
                    self.ledger.created.add(answer.body['id'])
            return
        contact, city = self.rng.choice(self.mine), f'w{self.n}-{self.writes}'
        if self.call('PATCH', '/api/contacts', [{'id': contact, 'city': city}]).ok:
            with self.ledger.lock:
                self.ledger.updated.add((contact, city))

    def run(self):
        try:
            while not self.stop.wait(self.pause):
                self.step()
        finally:
            self.api.close()


def killer(server, workers, stop, ledger, rng, every=(2.0, 4.0)):
    """Every 2-4 s: SIGKILL one gunicorn worker that has served for a second (its master starts another), and
    one `crmapi worker` (restarted at once)."""
    while not stop.wait(rng.uniform(*every)):
        pids = server.worker_pids(min_age=1.0)
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                ledger.gunicorn_kills += 1
            except ProcessLookupError:
                pass
        workers.kill_one(rng)
        ledger.worker_kills += 1


def committed_changes(reader, org_id):
    """{change id: (record id, operation, city written or None)} of the organization's contacts changes."""
    found = {}
    for change_id, record_id, operation, data in reader.rows(
        "SELECT id, record_id, operation, data FROM changes WHERE organization_id = ? AND resource = 'contacts'",
        [org_id],
    ):
        data = json.loads(data) if isinstance(data, str) else data
        city = ((data or {}).get('changes') or {}).get('city', [None, None])[1]
        found[change_id] = (record_id, operation, city)
    return found


def check_events(ledger, received, committed, tasks_per_contact):
    """Problems (empty: every promise kept) and the figures of the run."""
    problems, bodies = [], collections.defaultdict(set)
    for webhook_id, body in received:
        event = json.loads(body)
        bodies[webhook_id].add(body)
        if event['data']['id'] != webhook_id:
            problems.append(f'a delivery of change {event["data"]["id"]} carries webhook-id {webhook_id}')
    changed = [i for i, b in bodies.items() if len(b) > 1]
    if changed:
        problems.append(f'{len(changed)} changes delivered with different bodies, e.g. {changed[0]}')
    delivered = set(bodies)
    if delivered != set(committed):
        problems.append(
            f'delivered but not committed: {sorted(delivered - set(committed))[:3]}; '
            f'committed but never delivered: {sorted(set(committed) - delivered)[:3]}'
        )
    keys = {
        (record_id, 'created' if city is None else city)
        for record_id, operation, city in (committed[i] for i in delivered & set(committed))
    }
    acknowledged = {(c, 'created') for c in ledger.created} | ledger.updated
    lost = acknowledged - keys
    if lost:
        problems.append(f'{len(lost)} acknowledged writes never delivered, e.g. {sorted(lost)[:3]}')
    unacknowledged = len(keys - acknowledged)
    if unacknowledged > ledger.no_answer:
        problems.append(f'{unacknowledged} changes no write asked for (only {ledger.no_answer} went unanswered)')
    twice = {c: n for c, n in tasks_per_contact.items() if n > 1}
    if twice:
        problems.append(
            f'a rule action applied twice: {len(twice)} contacts with more than one task, '
            f'e.g. {next(iter(twice.items()))}'
        )
    if ledger.refused:
        problems.append(f'{len(ledger.refused)} writes refused, e.g. {ledger.refused[0]}')
    figures = {
        'writes acknowledged': len(acknowledged),
        'creates': len(ledger.created),
        'patches': len(ledger.updated),
        'requests': ledger.sent,
        'unanswered': ledger.no_answer,
        'committed unacknowledged': unacknowledged,
        'changes committed': len(committed),
        'deliveries received': len(received),
        'distinct events': len(delivered),
        'duplicates': len(received) - len(delivered),
        'gunicorn kills': ledger.gunicorn_kills,
        'worker kills': ledger.worker_kills,
        'tasks by rules': sum(tasks_per_contact.values()),
    }
    return problems, figures


def drain(receiver, reader, org_id, timeout):
    """Wait until every committed contacts change was received (or `timeout`): the committed changes."""
    deadline = time.monotonic() + timeout
    while True:
        committed = committed_changes(reader, org_id)
        if set(committed) <= {i for i, _ in receiver.received()} or time.monotonic() > deadline:
            return committed
        time.sleep(0.25)


def event_crash_run(database_url, workdir, seconds=12.0, writers=4, pause=0.05, seed=1, drain_timeout=120.0):
    """Prepare, serve and deliver under write load while killing, drain, check: (problems, figures)."""
    workdir, rng = Path(workdir), random.Random(seed)
    org_id, token = prepare_database(database_url, 'Events crash test')
    receiver, ledger = Receiver(), EventLedger()
    workers = Workers(database_url, workdir / 'workers.log', 2)
    server = Gunicorn(
        'crmapi:create_app()', database_url, workdir / 'gunicorn.log', workers=2, threads=2, env=WORKER_ENV
    )
    try:
        with server:
            admin = Api(server.port, token)
            for path, body in (
                ('/api/webhooks', {'url': receiver.url, 'events': ['contacts.*']}),
                ('/api/automation_rules', RULE),
            ):
                answer = admin.call('POST', path, body)
                if not answer.ok:
                    raise RuntimeError(f'POST {path}: {answer.describe()}')
            admin.close()
            workers.fill()
            stop_writers, stop_killer = threading.Event(), threading.Event()
            threads = [
                Writer(n, server.port, token, ledger, stop_writers, random.Random(seed * 100 + n), pause)
                for n in range(writers)
            ]
            kill = threading.Thread(target=killer, args=(server, workers, stop_killer, ledger, rng), daemon=True)
            started = time.monotonic()
            for t in [*threads, kill]:
                t.start()
            time.sleep(seconds)
            stop_killer.set()
            kill.join(30)
            stop_writers.set()
            for t in threads:
                t.join(60)
            ledger.elapsed = time.monotonic() - started
        workers.stop()
        workers.count = 1
        workers.fill()
        reader = Reader(database_url)
        try:
            drained = time.monotonic()
            committed = drain(receiver, reader, org_id, drain_timeout)
            drained = time.monotonic() - drained
            workers.stop()
            tasks = collections.Counter(
                c
                for (c,) in reader.rows(
                    'SELECT contact_id FROM tasks WHERE organization_id = ? AND contact_id IS NOT NULL', [org_id]
                )
            )
            problems = reader.integrity()
        finally:
            reader.close()
    finally:
        workers.stop()
        receiver.close()
    found, figures = check_events(ledger, receiver.received(), committed, tasks)
    return problems + found, {'seconds': round(ledger.elapsed, 1), 'drained in': round(drained, 1), **figures}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument(
        '--database',
        default='sqlite',
        help="'sqlite' (a temp crm.db, WAL) or a PostgreSQL URL (a fresh database is made beside it)",
    )
    p.add_argument('--seconds', type=float, default=60)
    p.add_argument('--writers', type=int, default=4)
    p.add_argument('--pause', type=float, default=0.05, help="seconds between two of a writer's writes")
    p.add_argument('--seed', type=int, default=1)
    args = p.parse_args(argv)
    run = dict(seconds=args.seconds, writers=args.writers, pause=args.pause, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix='crmapi-event-crash-') as workdir:
        if args.database == 'sqlite':
            problems, figures = event_crash_run(f'sqlite:///{workdir}/crm.db', workdir, **run)
        else:
            with PostgresScratch(args.database, 'crm_event_crash') as scratch:
                problems, figures = event_crash_run(scratch.url, workdir, **run)
    print(
        f'{"sqlite" if args.database == "sqlite" else "postgresql"}: '
        + ', '.join(f'{name} {value}' for name, value in figures.items())
    )
    print('checks: ' + ('OK' if not problems else f'{len(problems)} PROBLEMS'))
    for text in problems[:30]:
        print('  ' + text)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
