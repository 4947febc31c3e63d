"""Load test: gunicorn with several workers under concurrent creates, updates, archives and merges.

Every answer must be a 2xx (or a 404 where a client races on purpose for a contact another client
may have merged away); no answer and no log line may say "database is locked"; afterwards the
database must hold exactly the acknowledged writes. `tests/test_load.py` runs a short form of this;
the long form runs by hand and prints its figures:

    .venv/bin/python bench/load.py --seconds 30 --clients 16                  # SQLite, a temp crm.db
    .venv/bin/python bench/load.py --database postgresql://postgres@127.0.0.1:5432/postgres --seconds 30

With a PostgreSQL URL a fresh database is created next to the given one and dropped afterwards.
The process helpers here (gunicorn, the CLI, an HTTP client, a direct database reader) are shared
with `bench/crash.py` and the tests; they depend on nothing but the standard library and crmapi's
own dependencies.
"""

import argparse
import collections
import http.client
import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from urllib.parse import unquote
from urllib.parse import urlparse
from urllib.parse import urlunparse

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = '127.0.0.1'
LOCKED_MARKERS = ('database is locked', 'database is busy')


# -- processes -------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def crmapi_cli(url, *args, timeout=60):
    """Run `python -m crmapi --database URL ARGS…`; its stdout, stripped."""
    done = subprocess.run(
        [sys.executable, '-m', 'crmapi', '--database', url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f'crmapi {" ".join(args)} failed ({done.returncode}): {done.stderr.strip()}')
    return done.stdout.strip()


def prepare_database(url, org_name='Load test'):
    """init-db, one organization and an administrator's token, all through the CLI: (org_id, token)."""
    crmapi_cli(url, 'init-db')
    org_id = crmapi_cli(url, 'create-org', org_name)
    token = crmapi_cli(url, 'create-token', '--org', org_id, '--email', 'load@example.com', '--admin')
    return org_id, token


def children_of(pid, min_age=0.0):
    """Pids whose parent is `pid` and that have run for `min_age` seconds, read from /proc.

    gunicorn's workers are its master's children.
    """
    with open('/proc/uptime') as f:
        uptime = float(f.read().split()[0])
    ticks = os.sysconf('SC_CLK_TCK')
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(')') + 2 :].split()
        if int(fields[1]) == pid and fields[0] != 'Z' and uptime - int(fields[19]) / ticks >= min_age:
            found.append(int(entry))
    return found


class Gunicorn:
    """One app server master on a free loopback port, its own process group, its log in a file: gunicorn, or
    granian through `crmapi serve --server granian` (server='granian'; worker_class and timeout are gunicorn's).

    Use it as a context manager: leaving the block stops it (SIGTERM, then SIGKILL to the whole
    group after `stop_timeout`), so no test leaves a server behind.
    """

    def __init__(
        self,
        app,
        database_url,
        log_path,
        workers=4,
        threads=4,
        worker_class='gthread',
        timeout=30,
        env=None,
        pythonpath=None,
        server='gunicorn',
    ):
        self.server = server
        self.app = app
        self.database_url = database_url
        self.log_path = Path(log_path)
        self.workers, self.threads, self.worker_class = workers, threads, worker_class
        self.timeout = timeout
        self.env = env or {}
        self.pythonpath = pythonpath
        self.port = None
        self.proc = None
        self.log_offset = 0

    def argv(self):
        if self.server == 'granian':
            return [
                sys.executable,
                '-m',
                'crmapi',
                'serve',
                '--server',
                'granian',
                '--bind',
                f'{LOOPBACK}:{self.port}',
                '--workers',
                str(self.workers),
                '--threads',
                str(self.threads),
                '--app',
                self.app,
            ]
        argv = [
            sys.executable,
            '-m',
            'gunicorn',
            '--bind',
            f'{LOOPBACK}:{self.port}',
            '--workers',
            str(self.workers),
            '--worker-class',
            self.worker_class,
            '--threads',
            str(self.threads),
            '--timeout',
            str(self.timeout),
            '--graceful-timeout',
            '10',
            '--limit-request-line',
            '0',
            '--config',
            str(self.conf_path),
        ]
        if self.pythonpath:
            argv += ['--pythonpath', str(self.pythonpath)]
        return argv + [self.app]

    READY = 'crmapi-bench: worker ready'
    # NOTE: granian logs it once a worker has loaded its app and serves.
    GRANIAN_READY = 'Started worker-'

    @property
    def conf_path(self):
        return self.log_path.with_suffix('.conf.py')

    def start(self, ready_timeout=30):
        """Start, and return once every worker has loaded the app (so none is still booting)."""
        self.port = free_port()
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # NOTE: post_worker_init runs after a worker has loaded the app; a pid that answered HTTP
        # says nothing about the others, which may still be opening the database.
        self.conf_path.write_text(
            f'def post_worker_init(worker):\n    worker.log.info({self.READY!r} + " %s", worker.pid)\n'
        )
        env = {**os.environ, 'CRMAPI_DATABASE_URL': self.database_url, **self.env}
        if self.server == 'granian' and self.pythonpath:
            env['PYTHONPATH'] = os.pathsep.join(p for p in (str(self.pythonpath), env.get('PYTHONPATH')) if p)
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f'{self.server} exited with {self.proc.returncode}:\n{self.log_tail()}')
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f'{self.server} did not answer within {ready_timeout}s:\n{self.log_tail()}')
            ready = self.GRANIAN_READY if self.server == 'granian' else self.READY
            if self.log_text().count(ready) >= self.workers and self._answers():
                return self
            time.sleep(0.1)

    def _answers(self):
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
        try:
            conn.request('GET', '/api/schema')
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def worker_pids(self, min_age=0.0):
        return children_of(self.proc.pid, min_age) if self.proc is not None else []

    def log_text(self):
        try:
            with open(self.log_path, 'rb') as f:
                f.seek(self.log_offset)
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def log_tail(self, lines=40):
        return '\n'.join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout=20):
        """Graceful stop (SIGTERM lets in-flight requests finish); SIGKILL for the group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.kill()  # the master is gone; this reaps any worker it left behind


# -- HTTP ------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int  # None when no HTTP answer came back (connection refused, reset, timeout)
    headers: dict
    text: str
    error: str
    started: float
    ended: float

    @property
    def ok(self):
        return self.status is not None and 200 <= self.status < 300

    @property
    def body(self):
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    def describe(self):
        return self.error if self.status is None else f'{self.status} {self.text[:200]}'


class Api:
    """One client: a keep-alive connection, reopened after any failure or when idle (gunicorn closes it)."""

    def __init__(self, port, token, timeout=30.0, idle_reopen=1.0):
        self.port = port
        self.timeout = timeout
        self.idle_reopen = idle_reopen
        self.headers = {'Authorization': f'Bearer {token}', 'Content-Type': 'application/json'}
        self.conn = None
        self.last_used = 0.0

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, method, path, body=None):
        started = time.monotonic()
        if self.conn is not None and started - self.last_used > self.idle_reopen:
            self.close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
        payload = None if body is None else json.dumps(body)
        try:
            self.conn.request(method, path, body=payload, headers=self.headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Answer(None, {}, '', f'{type(exc).__name__}: {exc}', started, time.monotonic())
        self.last_used = time.monotonic()
        if resp.will_close:
            self.close()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return Answer(resp.status, headers, raw.decode('utf-8', 'replace'), None, started, self.last_used)


# -- direct database access (for the checks) -------------------------------------------------------


def sqlite_path(url):
    parsed = urlparse(url)
    return unquote(parsed.path)[1:]


class Reader:
    """Read the database behind crmapi's back, with `?` placeholders on both engines."""

    def __init__(self, url):
        self.url = url
        self.is_pg = not url.startswith('sqlite')
        if self.is_pg:
            import psycopg

            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        else:
            self.conn = sqlite3.connect(sqlite_path(url), timeout=10)

    def rows(self, sql, params=()):
        if self.is_pg:
            sql = sql.replace('?', '%s')
        return self.conn.execute(sql, params).fetchall()

    def integrity(self):
        """Problems SQLite's own checks find (empty on PostgreSQL, which enforces its keys itself)."""
        if self.is_pg:
            return []
        problems = []
        result = [r[0] for r in self.rows('PRAGMA integrity_check')]
        if result != ['ok']:
            problems.append(f'PRAGMA integrity_check: {result[:5]}')
        fk = self.rows('PRAGMA foreign_key_check')
        if fk:
            problems.append(f'PRAGMA foreign_key_check: {len(fk)} rows, first {fk[:3]}')
        return problems

    def dangling(self):
        """Tasks and notes whose contact does not exist, checked with plain SQL on both engines."""
        problems = []
        for table, nullable in (('tasks', True), ('contact_notes', False)):
            rows = self.rows(
                f'SELECT t.id, t.contact_id FROM {table} t LEFT JOIN contacts c ON c.id = t.contact_id '
                'WHERE t.contact_id IS NOT NULL AND c.id IS NULL'
            )
            if rows:
                problems.append(f'{len(rows)} {table} point at a missing contact, e.g. {rows[0]}')
        return problems

    def close(self):
        self.conn.close()


def pg_url_with_database(url, name):
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path='/' + name))


class PostgresScratch:
    """A fresh database on the server behind `admin_url`, dropped (WITH FORCE) on exit."""

    def __init__(self, admin_url, prefix='crm_bench'):
        self.admin_url = admin_url
        self.name = f'{prefix}_{secrets.token_hex(4)}'
        self.url = pg_url_with_database(admin_url, self.name)

    def _admin(self, sql):
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def __enter__(self):
        self._admin(f'CREATE DATABASE {self.name}')
        return self

    def __exit__(self, *exc):
        self._admin(f'DROP DATABASE IF EXISTS {self.name} WITH (FORCE)')


# -- the load ---------------------------------------------------------------------------------------

# op -> weight; `race_*` ops aim at any contact, including ones another client may merge away.
# `race_merge` (off unless asked for) merges any two contacts, so even a client's own contacts may
# vanish under it: then every 404 (or 400/409 for a task or note on a vanished contact) is accepted
# if, in the end, one of the contacts involved was indeed merged away.
MIX = {
    'create': 24,
    'task': 10,
    'note': 8,
    'update': 14,
    'race_update': 8,
    'archive': 6,
    'race_archive': 4,
    'merge': 10,
    'list': 10,
    'get': 6,
}
GONE_STATUSES = {404: 'all', 400: ('task', 'note'), 409: ('task', 'note')}


@dataclass
class Ledger:
    """What the server acknowledged, shared by all clients (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    contacts: set = field(default_factory=set)
    tasks: dict = field(default_factory=dict)  # task id -> contact it was created on
    notes: dict = field(default_factory=dict)  # note id -> contact it was created on
    merged_into: dict = field(default_factory=dict)  # source -> target, from acknowledged merges
    archived: set = field(default_factory=set)
    titles: dict = field(default_factory=dict)  # contact -> last title its owner set and had acknowledged
    not_found: list = field(default_factory=list)  # (op, contact ids, status): a race lost on purpose
    errors: list = field(default_factory=list)  # (op, description)
    counts: collections.Counter = field(default_factory=collections.Counter)
    latencies: list = field(default_factory=list)
    locked: list = field(default_factory=list)  # answers that mention a locked database

    def resolve(self, contact_id):
        while contact_id in self.merged_into:
            contact_id = self.merged_into[contact_id]
        return contact_id


class LoadClient(threading.Thread):
    def __init__(self, n, port, token, ledger, deadline, max_requests, seed, race_merges=0):
        super().__init__(name=f'load-{n}', daemon=True)
        self.n = n
        self.api = Api(port, token)
        self.ledger = ledger
        self.deadline = deadline
        self.max_requests = max_requests
        self.rng = random.Random(seed)
        self.mine = []  # own contacts still alive (not merged away)
        self.seq = 0
        self.mix = {**MIX, 'race_merge': race_merges}

    def call(self, op, method, path, body=None, gone=None):
        """The answer if 2xx; else None, recording an error unless the contacts `gone` may have vanished."""
        answer = self.api.call(method, path, body)
        ledger = self.ledger
        with ledger.lock:
            ledger.counts[op] += 1
            ledger.latencies.append(answer.ended - answer.started)
            if any(m in answer.text.lower() for m in LOCKED_MARKERS):
                ledger.locked.append((op, answer.describe()))
            if answer.ok:
                return answer
            allowed = GONE_STATUSES.get(answer.status)
            if gone and allowed and (allowed == 'all' or op in allowed):
                ledger.not_found.append((op, tuple(gone), answer.status))
                self.mine = [c for c in self.mine if c not in gone]
                return None
            ledger.errors.append((op, f'{method} {path}: {answer.describe()}'))
        return None

    def pick_op(self):
        if len(self.mine) < 3:
            return 'create'
        ops, weights = zip(*self.mix.items())
        return self.rng.choices(ops, weights)[0]

    def any_contact(self):
        with self.ledger.lock:
            pool = tuple(self.ledger.contacts)
        return self.rng.choice(pool)

    def step(self):
        op, rng, ledger = self.pick_op(), self.rng, self.ledger
        racing = self.mix['race_merge'] > 0
        self.seq += 1
        if op == 'create':
            a = self.call(
                op,
                'POST',
                '/api/contacts',
                {
                    'first_name': f'C{self.n}',
                    'last_name': f'L{self.seq}',
                    'title': 'v0',
                    'email': f'c{self.n}.{self.seq}@example.com',
                    'tags': [],
                },
            )
            if a:
                cid = a.body['id']
                self.mine.append(cid)
                with ledger.lock:
                    ledger.contacts.add(cid)
                    ledger.titles[cid] = 'v0'
        elif op in ('task', 'note'):
            cid = rng.choice(self.mine)
            path = '/api/tasks' if op == 'task' else '/api/contact_notes'
            a = self.call(
                op,
                'POST',
                path,
                {'contact_id': cid, 'text': f'{op} {self.n}.{self.seq}'},
                gone=[cid] if racing else None,
            )
            if a:
                with ledger.lock:
                    (ledger.tasks if op == 'task' else ledger.notes)[a.body['id']] = cid
        elif op == 'update':
            cid, title = rng.choice(self.mine), f'v{self.n}.{self.seq}'
            if self.call(op, 'PUT', f'/api/contacts/{cid}', {'title': title}, gone=[cid] if racing else None):
                with ledger.lock:
                    ledger.titles[cid] = title
        elif op == 'race_update':
            cid = self.any_contact()
            self.call(op, 'PUT', f'/api/contacts/{cid}', {'background': f'seen by {self.n}'}, gone=[cid])
        elif op in ('archive', 'race_archive'):
            cid = rng.choice(self.mine) if op == 'archive' else self.any_contact()
            if self.call(op, 'DELETE', f'/api/contacts/{cid}', gone=[cid] if racing or op == 'race_archive' else None):
                with ledger.lock:
                    ledger.archived.add(cid)
        elif op == 'merge':
            target, *sources = rng.sample(self.mine, rng.randint(2, min(3, len(self.mine))))
            if self.call(
                op,
                'POST',
                '/api/merge_contacts',
                {'target_id': target, 'source_ids': sources},
                gone=[target, *sources] if racing else None,
            ):
                self.mine = [c for c in self.mine if c not in sources]
                with ledger.lock:
                    for s in sources:
                        ledger.merged_into[s] = target
        elif op == 'race_merge':
            with ledger.lock:
                alive = tuple(ledger.contacts - set(ledger.merged_into))
            if len(alive) >= 2:
                target, source = rng.sample(alive, 2)
                if self.call(
                    op,
                    'POST',
                    '/api/merge_contacts',
                    {'target_id': target, 'source_ids': [source]},
                    gone=[target, source],
                ):
                    self.mine = [c for c in self.mine if c != source]
                    with ledger.lock:
                        ledger.merged_into[source] = target
        elif op == 'list':
            self.call(op, 'GET', '/api/contacts?range=%5B0%2C9%5D&sort=%5B%22last_name%22%2C%22ASC%22%5D')
        elif op == 'get':
            cid = rng.choice(self.mine)
            self.call(op, 'GET', f'/api/contacts/{cid}', gone=[cid] if racing else None)

    def run(self):
        try:
            while time.monotonic() < self.deadline:
                with self.ledger.lock:
                    if sum(self.ledger.counts.values()) >= self.max_requests:
                        return
                self.step()
        except Exception as exc:  # a harness bug must show up as an error, not a silent thread death
            with self.ledger.lock:
                self.ledger.errors.append(('harness', f'{type(exc).__name__}: {exc}'))
        finally:
            self.api.close()


def run_load(port, token, clients=8, seconds=5.0, max_requests=10**9, seed=1, race_merges=0):
    ledger = Ledger()
    deadline = time.monotonic() + seconds
    threads = [
        LoadClient(n, port, token, ledger, deadline, max_requests, seed * 1000 + n, race_merges) for n in range(clients)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    ledger.elapsed = time.monotonic() - started
    ledger.hung = [t.name for t in threads if t.is_alive()]
    return ledger


def check_load(reader, org_id, ledger):
    """Everything the server acknowledged is stored exactly so; returns a list of problems (empty: fine)."""
    problems = []
    merged_away = set(ledger.merged_into)
    stray = [entry for entry in ledger.not_found if not merged_away & set(entry[1])]
    if stray:
        problems.append(f'{len(stray)} lost races for contacts that were never merged away, e.g. {stray[:3]}')
    rows = {
        r[0]: r for r in reader.rows('SELECT id, title, archived_at FROM contacts WHERE organization_id = ?', (org_id,))
    }
    expected = ledger.contacts - merged_away
    if set(rows) != expected:
        missing, extra = expected - set(rows), set(rows) - expected
        problems.append(
            f'contacts: {len(rows)} stored, {len(expected)} expected '
            f'({len(ledger.contacts)} created - {len(merged_away)} merged away); '
            f'missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}'
        )
    for cid in expected & set(rows):
        if rows[cid][1] != ledger.titles.get(cid):
            problems.append(f'contact {cid}: title {rows[cid][1]!r}, last acknowledged {ledger.titles.get(cid)!r}')
        if cid in ledger.archived and rows[cid][2] is None:
            problems.append(f'contact {cid}: archived (acknowledged) but archived_at is empty')
    for table, acked in (('tasks', ledger.tasks), ('contact_notes', ledger.notes)):
        stored = dict(reader.rows(f'SELECT id, contact_id FROM {table} WHERE organization_id = ?', (org_id,)))
        if set(stored) != set(acked):
            problems.append(f'{table}: {len(stored)} stored, {len(acked)} acknowledged')
        wrong = [(i, stored.get(i), ledger.resolve(c)) for i, c in acked.items() if stored.get(i) != ledger.resolve(c)]
        if wrong:
            problems.append(f'{table}: {len(wrong)} not on their (merged) contact, e.g. {wrong[:3]}')
    problems += reader.integrity()
    problems += reader.dangling()
    return problems


def percentile(values, p):
    if not values:
        return float('nan')
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(ledger):
    total = sum(ledger.counts.values())
    lat = ledger.latencies
    return (
        f'{total} requests in {ledger.elapsed:.1f}s = {total / max(ledger.elapsed, 1e-9):.0f} req/s; '
        f'latency p50 {percentile(lat, 50) * 1000:.1f} ms, p95 {percentile(lat, 95) * 1000:.1f} ms, '
        f'p99 {percentile(lat, 99) * 1000:.1f} ms, max {max(lat, default=0) * 1000:.1f} ms; '
        f'errors {len(ledger.errors)}, "locked" answers {len(ledger.locked)}, '
        f'races lost on purpose (404) {len(ledger.not_found)}; '
        f'acknowledged: {len(ledger.contacts)} contacts, {len(ledger.merged_into)} merged away, '
        f'{len(ledger.tasks)} tasks, {len(ledger.notes)} notes, {len(ledger.archived)} archived; '
        f'ops {dict(sorted(ledger.counts.items()))}'
    )


def log_problems(log_text):
    """Lines of a gunicorn log that a clean run must not have."""
    bad = ('database is locked', 'Traceback', 'WORKER TIMEOUT', 'was sent SIGKILL', 'exited with code')
    return [line for line in log_text.splitlines() if any(b in line for b in bad)]


def load_run(
    database_url,
    workdir,
    clients=8,
    seconds=5.0,
    max_requests=10**9,
    workers=4,
    threads=4,
    worker_class='gthread',
    seed=1,
    race_merges=0,
    env=None,
    server='gunicorn',
):
    """Prepare the database, serve it (`server`: gunicorn or granian), load it, stop, check: (ledger, problems,
    server log text)."""
    org_id, token = prepare_database(database_url)
    server = Gunicorn(
        'crmapi:create_app()',
        database_url,
        Path(workdir) / f'{server}.log',
        workers=workers,
        threads=threads,
        worker_class=worker_class,
        env=env,
        server=server,
    )
    with server:
        ledger = run_load(server.port, token, clients, seconds, max_requests, seed, race_merges)
    log = server.log_text()
    problems = [f'{op}: {d}' for op, d in ledger.errors[:20]]
    if len(ledger.errors) > 20:
        problems.append(f'… {len(ledger.errors) - 20} more errors')
    problems += [f'locked: {op}: {d}' for op, d in ledger.locked[:5]]
    problems += [f'gunicorn log: {line}' for line in log_problems(log)[:10]]
    if ledger.hung:
        problems.append(f'clients still running after the deadline: {ledger.hung}')
    reader = Reader(database_url)
    try:
        problems += check_load(reader, org_id, ledger)
    finally:
        reader.close()
    return ledger, problems, log


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument(
        '--database',
        default='sqlite',
        help="'sqlite' (a temp crm.db) or a PostgreSQL URL (a fresh database is made beside it)",
    )
    p.add_argument('--seconds', type=float, default=30)
    p.add_argument('--clients', type=int, default=16)
    p.add_argument('--workers', type=int, default=4)
    p.add_argument('--threads', type=int, default=4)
    p.add_argument('--worker-class', default='gthread', choices=['gthread', 'sync'])
    p.add_argument('--max-requests', type=int, default=10**9)
    p.add_argument('--seed', type=int, default=1)
    p.add_argument(
        '--race-merges',
        type=int,
        default=0,
        metavar='WEIGHT',
        help='also merge any two contacts (weight in the op mix; the others sum to 100)',
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='crmapi-load-') as workdir:
        run = dict(
            clients=args.clients,
            seconds=args.seconds,
            max_requests=args.max_requests,
            workers=args.workers,
            threads=args.threads,
            worker_class=args.worker_class,
            seed=args.seed,
            race_merges=args.race_merges,
        )
        if args.database == 'sqlite':
            label = 'sqlite'
            ledger, problems, _ = load_run(f'sqlite:///{workdir}/crm.db', workdir, **run)
        else:
            label = 'postgresql'
            with PostgresScratch(args.database) as scratch:
                ledger, problems, _ = load_run(scratch.url, workdir, **run)
    print(f'{label}: {args.workers} {args.worker_class} workers x {args.threads} threads, {args.clients} clients')
    print(summary(ledger))
    print('consistency: ' + ('OK' if not problems else f'{len(problems)} PROBLEMS'))
    for line in problems:
        print('  ' + line)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
