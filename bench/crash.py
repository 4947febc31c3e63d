"""Crash test: gunicorn under write load while its workers are SIGKILLed at random.

Clients create merge groups (a target contact, two sources with an email, a task and a note on
each) and merge them; they record every write the server acknowledged with a 2xx. Afterwards,
with gunicorn stopped, the checker reads the database directly:

- every acknowledged create is present (or was merged away by a merge that was applied);
- every acknowledged merge is fully applied: sources gone, their tasks and notes on the target,
  the target's empty email filled from the first source;
- every merge whose answer never came (or came as a 5xx) is either fully applied or not at all;
- no task or note points at a missing contact; on SQLite `PRAGMA integrity_check` is `ok` and
  `PRAGMA foreign_key_check` is empty.

`tests/test_crash.py` runs a short form, plus a negative control (a non-transactional merge that
this checker must catch). The long form runs by hand and prints its figures:

    .venv/bin/python bench/crash.py --seconds 60 --clients 8 --kill-every 0.5
    .venv/bin/python bench/crash.py --database postgresql://postgres@127.0.0.1:5432/postgres --seconds 60
"""

import argparse
import collections
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import Api  # noqa: E402
from bench.load import Gunicorn  # noqa: E402
from bench.load import PostgresScratch  # noqa: E402
from bench.load import Reader  # noqa: E402
from bench.load import prepare_database  # noqa: E402


@dataclass
class Group:
    """One merge: what was created for it, and what became of the merge request."""

    target: str = None
    sources: list = field(default_factory=list)
    emails: dict = field(default_factory=dict)  # source id -> its email
    tasks: dict = field(default_factory=dict)  # acknowledged task id -> contact it was created on
    notes: dict = field(default_factory=dict)  # acknowledged note id -> contact it was created on
    merge: str = 'none'  # 'none' (not sent), 'acked' (2xx), 'unknown' (no answer or a 5xx), 'refused' (4xx)

    @property
    def contacts(self):
        return ([self.target] if self.target else []) + self.sources


@dataclass
class CrashLedger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    groups: list = field(default_factory=list)
    counts: collections.Counter = field(default_factory=collections.Counter)
    no_answer: int = 0
    answered_5xx: list = field(default_factory=list)
    answered_4xx: list = field(default_factory=list)
    kills: list = field(default_factory=list)
    elapsed: float = 0.0


class CrashClient(threading.Thread):
    def __init__(self, n, port, token, ledger, stop):
        super().__init__(name=f'crash-{n}', daemon=True)
        self.n = n
        self.api = Api(port, token, timeout=30)
        self.ledger = ledger
        self.stop = stop
        self.seq = 0

    def call(self, method, path, body):
        """The answer if acknowledged with a 2xx, else None (recording why)."""
        answer = self.api.call(method, path, body)
        with self.ledger.lock:
            self.ledger.counts[path] += 1
            if answer.status is None:
                self.ledger.no_answer += 1
            elif answer.status >= 500:
                self.ledger.answered_5xx.append(f'{method} {path}: {answer.describe()}')
            elif answer.status >= 300:
                self.ledger.answered_4xx.append(f'{method} {path}: {answer.describe()}')
        return answer

    def create(self, path, body):
        """POST until acknowledged (a cut-off create may exist or not; its id is unknown, so it is
        left out of the checks): the new record's id, or None once the run stops."""
        while not self.stop.is_set():
            a = self.call('POST', path, body)
            if a.ok:
                return a.body['id']
        return None

    def one_group(self):
        group = Group()
        with self.ledger.lock:
            self.ledger.groups.append(group)
        for role in ('target', 'source', 'source'):
            self.seq += 1
            body = {'first_name': f'K{self.n}', 'last_name': f'S{self.seq}', 'title': 'crash'}
            if role == 'source':
                body['email'] = f'k{self.n}.{self.seq}@example.com'
            cid = self.create('/api/contacts', body)
            if cid is None:
                return
            if role == 'target':
                group.target = cid
            else:
                group.sources.append(cid)
                group.emails[cid] = body['email']
        for cid in group.sources:
            for path, acked in (('/api/tasks', group.tasks), ('/api/contact_notes', group.notes)):
                child = self.create(path, {'contact_id': cid, 'text': f'on {cid}'})
                if child is None:
                    return
                acked[child] = cid
        a = self.call('POST', '/api/merge_contacts', {'target_id': group.target, 'source_ids': group.sources})
        group.merge = 'acked' if a.ok else 'unknown' if a.status is None or a.status >= 500 else 'refused'

    def run(self):
        try:
            while not self.stop.is_set():
                self.one_group()
        finally:
            self.api.close()


def killer(server, stop, every, rng, kills, min_age=1.0):
    """SIGKILL one random worker every `every` seconds on average, until `stop`.

    Only workers up for `min_age` seconds are shot: they have booted and are serving, so the kill
    lands in a request rather than in an import, and the server keeps making progress.
    """
    while not stop.wait(rng.uniform(0.5 * every, 1.5 * every)):
        pids = server.worker_pids(min_age)
        if pids:
            pid = rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            except ProcessLookupError:
                pass


def run_crash(server, token, clients=6, seconds=6.0, kill_every=0.4, seed=1):
    ledger = CrashLedger()
    stop_clients, stop_killer = threading.Event(), threading.Event()
    threads = [CrashClient(n, server.port, token, ledger, stop_clients) for n in range(clients)]
    kill_thread = threading.Thread(
        target=killer, args=(server, stop_killer, kill_every, random.Random(seed), ledger.kills), daemon=True
    )
    started = time.monotonic()
    for t in threads:
        t.start()
    kill_thread.start()
    time.sleep(seconds)
    stop_killer.set()
    kill_thread.join(10)
    stop_clients.set()
    for t in threads:
        t.join(60)
    ledger.elapsed = time.monotonic() - started
    ledger.hung = [t.name for t in threads if t.is_alive()]
    return ledger


def check_crash(reader, ledger):
    """Problems found in the database after the run (empty: every promise kept, nothing half-done).

    Also fills `ledger.verdicts`: how each unanswered merge ended (applied, not applied, half).
    """
    problems = []
    ledger.verdicts = collections.Counter()
    for g in ledger.groups:
        ids = g.contacts
        if not ids:
            continue
        marks = ','.join('?' * len(ids))
        present = dict(reader.rows(f'SELECT id, email FROM contacts WHERE id IN ({marks})', ids))
        children = {}
        for table, acked in (('tasks', g.tasks), ('contact_notes', g.notes)):
            if acked:
                m = ','.join('?' * len(acked))
                children.update(
                    {
                        (table, i): c
                        for i, c in reader.rows(f'SELECT id, contact_id FROM {table} WHERE id IN ({m})', list(acked))
                    }
                )
        acked_children = {
            **{('tasks', i): c for i, c in g.tasks.items()},
            **{('contact_notes', i): c for i, c in g.notes.items()},
        }
        lost = [k for k in acked_children if k not in children]
        if lost:
            problems.append(f'lost acknowledged creates: {lost[:3]}')

        def state_problems(applied):
            """What differs from the merge being fully applied (or fully not applied)."""
            found = []
            for s in g.sources:
                if (s in present) == applied:
                    found.append(f'source {s} {"still present" if applied else "gone"}')
            if g.target not in present:
                found.append(f'target {g.target} gone')
            for key, original in acked_children.items():
                want = g.target if applied and original in g.sources else original
                if key in children and children[key] != want:
                    found.append(f'{key[0]} {key[1]} on {children[key]}, expected on {want}')
            if g.target in present and g.sources:
                want = g.emails[g.sources[0]] if applied else None
                if present[g.target] != want:
                    found.append(f'target email {present[g.target]!r}, expected {want!r}')
            return found

        if g.merge in ('none', 'refused') or len(g.sources) < 2:
            missing = [c for c in ids if c not in present]
            if missing:
                problems.append(f'acknowledged contacts missing (no merge applied to them): {missing}')
            wrong = state_problems(applied=False) if len(g.sources) == 2 and not missing else []
            if wrong:
                problems.append(f'unmerged group changed: {wrong}')
        elif g.merge == 'acked':
            wrong = state_problems(applied=True)
            if wrong:
                problems.append(f'acknowledged merge into {g.target} not fully applied: {wrong}')
        else:
            not_applied, applied = state_problems(applied=False), state_problems(applied=True)
            ledger.verdicts['not applied' if not not_applied else 'applied' if not applied else 'half'] += 1
            if not_applied and applied:
                problems.append(
                    f'half-applied merge into {g.target}: {not_applied if len(not_applied) < len(applied) else applied}'
                )
    problems += reader.integrity()
    problems += reader.dangling()
    return problems


def crash_run(
    database_url,
    workdir,
    app='crmapi:create_app()',
    clients=6,
    seconds=6.0,
    kill_every=0.4,
    workers=4,
    threads=2,
    seed=1,
    pythonpath=None,
    env=None,
    server='gunicorn',
):
    """Prepare, serve (`server`: gunicorn or granian), load while killing workers, stop, check: (ledger, problems,
    summary line)."""
    _, token = prepare_database(database_url, 'Crash test')
    server = Gunicorn(
        app,
        database_url,
        Path(workdir) / f'{server}.log',
        workers=workers,
        threads=threads,
        pythonpath=pythonpath,
        env=env,
        server=server,
    )
    with server:
        ledger = run_crash(server, token, clients, seconds, kill_every, seed)
        exited = server.proc.poll()
    reader = Reader(database_url)
    try:
        problems = check_crash(reader, ledger)
    finally:
        reader.close()
    if exited is not None:
        # NOTE: killed workers are replaced; a master that gave up on them (granian's crash-loop check) is a failure.
        problems.append(f'the {server.server} master exited ({exited}) under the kills:\n{server.log_tail(10)}')
    if ledger.hung:
        problems.append(f'clients still running after the deadline: {ledger.hung}')
    merges = collections.Counter(g.merge for g in ledger.groups)
    line = (
        f'{sum(ledger.counts.values())} requests in {ledger.elapsed:.1f}s, {len(ledger.kills)} workers SIGKILLed; '
        f'{len(ledger.groups)} groups, merges acknowledged {merges["acked"]}, unanswered {merges["unknown"]} '
        f'(applied {ledger.verdicts["applied"]}, not applied {ledger.verdicts["not applied"]}, '
        f'half-applied {ledger.verdicts["half"]}), refused {merges["refused"]}, '
        f'not sent {merges["none"]}; no answer {ledger.no_answer}, 5xx answers {len(ledger.answered_5xx)}, '
        f'4xx answers {len(ledger.answered_4xx)}'
    )
    return ledger, problems, line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument(
        '--database',
        default='sqlite',
        help="'sqlite' (a temp crm.db) or a PostgreSQL URL (a fresh database is made beside it)",
    )
    p.add_argument('--seconds', type=float, default=60)
    p.add_argument('--clients', type=int, default=8)
    p.add_argument('--kill-every', type=float, default=0.5, help='mean seconds between two SIGKILLs')
    p.add_argument('--workers', type=int, default=4)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--app', default='crmapi:create_app()', help='gunicorn app spec (e.g. a negative control)')
    p.add_argument('--pythonpath', help='extra import path for --app (gunicorn --pythonpath)')
    p.add_argument('--seed', type=int, default=1)
    args = p.parse_args(argv)
    run = dict(
        app=args.app,
        clients=args.clients,
        seconds=args.seconds,
        kill_every=args.kill_every,
        workers=args.workers,
        threads=args.threads,
        seed=args.seed,
        pythonpath=args.pythonpath,
    )
    with tempfile.TemporaryDirectory(prefix='crmapi-crash-') as workdir:
        if args.database == 'sqlite':
            label = 'sqlite'
            ledger, problems, line = crash_run(f'sqlite:///{workdir}/crm.db', workdir, **run)
        else:
            label = 'postgresql'
            with PostgresScratch(args.database, 'crm_crash') as scratch:
                ledger, problems, line = crash_run(scratch.url, workdir, **run)
    print(
        f'{label}: {args.workers} gthread workers x {args.threads} threads, {args.clients} clients, '
        f'a SIGKILL every ~{args.kill_every}s'
    )
    print(line)
    for text in ledger.answered_5xx[:5]:
        print('  5xx: ' + text)
    print('checks: ' + ('OK' if not problems else f'{len(problems)} PROBLEMS'))
    for text in problems[:30]:
        print('  ' + text)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
