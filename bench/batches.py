#!/usr/bin/env python3
"""bench/batches.py - how fast batches and upserts write, in-process (direct WSGI calls, no server).

    .venv/bin/python bench/batches.py                                   # SQLite in a temporary directory
    .venv/bin/python bench/batches.py --database postgresql://postgres@127.0.0.1:55439/crm_bench
    .venv/bin/python bench/batches.py --size 1000 --rounds 20

Creates an empty crmapi database (SQLite: a new file; PostgreSQL: the schema of the database given,
which it drops first), an organization and a token, then times `--rounds` requests of each kind, each
with a batch of `--size` contacts: POST (create), POST ?on_conflict=external_id (upsert: half new, half
updates), PATCH, DELETE (archive). Prints the median wall time of a request and the rows per second, and the
mean CPU time of a request: this process's, plus a PostgreSQL server's when it runs on this machine (/proc).
The targets of issue 9: a batch of 1,000 contacts well under 100 ms on SQLite, >= 20,000 rows/s on
SQLite and >= 10,000 rows/s on PostgreSQL, and >= 20x the rate of single creates measured in the same
run (`single`: one-contact POSTs). Nothing is asserted: this is a measurement, not a test.

`--compare-history` measures the cost of the change history (issue 12's target: >= 0.8x of without), for the
four batch kinds and for `single` (one-contact POSTs, the single-create path): two
databases side by side, one app recording changes and one whose writes record none (History.record made a
no-op in that app's store only), their rounds alternating so both see the same machine load; it prints both
and their ratio. (The webhook outbox adds nothing to a write: the worker fans changes out later.)

`--compare-search` measures the search upkeep's cost (issue 10's target: >= 0.7x of without) the same way, on one
database: the store's search upkeep made a no-op for the 'without' rounds (search_upkeep). Its CPU column is this process's plus, on a
local PostgreSQL, its server's (the backends of the database, from /proc).
"""

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def request(app, method, path, token, body=None, query=''):
    from falcon.testing import create_environ

    data = b'' if body is None else json.dumps(body).encode()
    environ = create_environ(
        path,
        query_string=query,
        method=method,
        body=data,
        headers={'Authorization': f'Bearer {token}', 'Content-Type': 'application/json'},
    )
    out = {}

    def start_response(status, headers, exc_info=None):
        out['status'] = int(status[:3])

    body = b''.join(app(environ, start_response))
    if out['status'] >= 400:
        raise RuntimeError(f'{method} {path}?{query}: {out["status"]} {body[:300]!r}')
    return json.loads(body)


def contacts(size, offset, prefix):
    return [
        {
            'first_name': f'First {i}',
            'last_name': f'Last {i}',
            'email': f'c{i}@bench.invalid',
            'city': 'London',
            'status': 'hot',
            'external_id': f'{prefix}-{i}',
        }
        for i in range(offset, offset + size)
    ]


def server_cpu(db):
    """PostgreSQL on this machine: the CPU seconds its backends serving this database have used, else 0.
    NOTE: with other processes loading the cores, wall time says little; the CPU a write costs holds. Read from
    /proc/<pid>/schedstat (nanoseconds): /proc/<pid>/stat counts 10 ms ticks, so a request's server CPU (25-60 ms)
    came in steps of a fifth of itself and the medians of --compare-search jumped between them."""
    if db.name != 'postgresql':
        return 0.0
    with db.transaction() as tx:
        pids = [pid for (pid,) in tx.rows('SELECT pid FROM pg_stat_activity WHERE datname = current_database()')]
    total = 0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/schedstat') as f:
                total += int(f.read().split()[0])
        except OSError:
            return 0.0
    return total / 1e9


def timed(action, rounds, db=None):
    """The median wall time of `rounds` calls of `action(n)`, and their mean CPU time: this process's plus (a local
    PostgreSQL) its server's."""
    times, server, used = [], server_cpu(db) if db else 0.0, time.process_time()
    for n in range(rounds):
        started = time.perf_counter()
        action(n)
        times.append(time.perf_counter() - started)
    cpu = time.process_time() - used + ((server_cpu(db) - server) if db else 0.0)
    return statistics.median(times), cpu / rounds


def fresh(url, history=True):
    """A new crmapi database at `url`, an organization, an administrator's token and the app: (db, app, token)."""
    from crmapi import create_app
    from crmapi.accounts import Accounts
    from crmapi.cli import init_db
    from crmapi.config import Settings
    from crmapi.db import connect

    db = connect(url)
    if db.name == 'postgresql':
        with db.transaction(write=True) as tx:
            tx.execute('DROP SCHEMA public CASCADE')
            tx.execute('CREATE SCHEMA public')
    init_db(db)
    accounts = Accounts(db)
    org = accounts.create_org('Bench')
    token = accounts.create_token(org, 'bench@bench.invalid', admin=True)
    app = create_app(Settings(database_url='injected', access_log=False), db=db)
    if not history:
        from crmapi.history import History

        record = History.record
        # NOTE: the writes to this database only record no change (their live-row counters, which the same
        # statement keeps, are still kept); the other app's record theirs
        History.record = lambda self, tx, principal, changes, counts=None: record(
            self, tx, principal, [] if self.db is db else changes, counts
        )
    return db, app, token


class Kinds:
    """The timed requests of one app: create, upsert, patch and delete batches of `size` contacts."""

    def __init__(self, app, token, size):
        self.app, self.token, self.size, self.created = app, token, size, []

    def create(self, n):
        body = contacts(self.size, n * self.size, 'c')
        self.created.append(request(self.app, 'POST', '/api/contacts', self.token, body))

    def upsert(self, n):
        size = self.size
        body = contacts(size // 2, n * size, 'c') + contacts(size - size // 2, n * size, f'u{n}')
        request(self.app, 'POST', '/api/contacts', self.token, body, 'on_conflict=external_id')

    def patch(self, n):
        request(
            self.app,
            'PATCH',
            '/api/contacts',
            self.token,
            [{'id': r['id'], 'title': f'Title {n}'} for r in self.created[n]],
        )

    def delete(self, n):
        ids = json.dumps({'id': [r['id'] for r in self.created[n]]})
        request(self.app, 'DELETE', '/api/contacts', self.token, query='filter=' + ids)

    def single(self, n):
        """SINGLES requests that each create one contact (a POST of an object, not a batch)."""
        for body in contacts(SINGLES, n * SINGLES, 's'):
            request(self.app, 'POST', '/api/contacts', self.token, body)


KINDS = ('create', 'upsert', 'patch', 'delete')
SINGLES = 100


def alternating(name, rows, rounds, run, db=None):
    """Time `run(mode, n)` for the modes 'with' and 'without', `rounds` times each, alternating which goes first,
    and print both medians (wall and CPU), the mean CPU and their ratios. `db`: a local PostgreSQL whose server CPU
    counts too."""
    times, cpu = {'with': [], 'without': []}, {'with': [], 'without': []}
    for n in range(rounds):
        for mode in ('with', 'without') if n % 2 else ('without', 'with'):
            server = server_cpu(db) if db else 0.0
            started, used = time.perf_counter(), time.process_time()
            run(mode, n)
            times[mode].append(time.perf_counter() - started)
            cpu[mode].append(time.process_time() - used + ((server_cpu(db) - server) if db else 0.0))
    w, wo = statistics.median(times['with']), statistics.median(times['without'])
    cw, cwo = statistics.median(cpu['with']), statistics.median(cpu['without'])
    mw, mwo = statistics.mean(cpu['with']), statistics.mean(cpu['without'])
    # NOTE: on SQLite the database works in this process, so its CPU time is the cost, whatever else
    # loads the machine; on PostgreSQL (compare_search) the local server's share is added (/proc, nanoseconds).
    # The mean is the throughput's figure: a PostgreSQL batch that merges a GIN pending list costs several times the
    # others, and the median leaves those out.
    print(
        f'  {name:7} with {w * 1000:8.1f} ms {rows / w:10,.0f} rows/s | without {wo * 1000:8.1f} ms '
        f'{rows / wo:10,.0f} rows/s | ratio {wo / w:.2f} | CPU {cw * 1000:.1f} vs {cwo * 1000:.1f} ms, '
        f'ratio {cwo / cw:.2f} | mean CPU {mw * 1000:.1f} vs {mwo * 1000:.1f} ms, ratio {mwo / mw:.2f}'
    )


def compare(urls, size, rounds):
    """Each kind's median with and without history, rounds alternating between the two apps."""
    (db, app, token), (bare_db, bare_app, bare_token) = fresh(urls[0]), fresh(urls[1], history=False)
    apps = {'with': Kinds(app, token, size), 'without': Kinds(bare_app, bare_token, size)}
    print(
        f'{db.name}: batches of {size} contacts (single: {SINGLES} one-contact POSTs), median of {rounds} rounds, '
        'with and without history (alternating)'
    )
    for name in (*KINDS, 'single'):
        alternating(name, SINGLES if name == 'single' else size, rounds, lambda mode, n: getattr(apps[mode], name)(n))
    db.close()
    bare_db.close()


UPKEEP = ('index', 'unindex', '_upkeep', '_index_referrers')  # what the store keeps the search rows with


def search_upkeep(on):
    """Turn the store's search upkeep on or off (the figure before issue 10): off, Store.index/unindex and the
    referrers' rows do nothing and a write's own search statements are none."""
    from crmapi.store import Store

    saved = search_upkeep.__dict__.setdefault('saved', {name: getattr(Store, name) for name in UPKEEP})
    for name in UPKEEP:
        setattr(Store, name, saved[name] if on else (lambda *args, **kwargs: []))


def compare_search(url, size, rounds):
    """Each kind's median with the search upkeep and with it off (search_upkeep), rounds alternating on one
    database."""
    db, app, token = fresh(url)
    kinds = Kinds(app, token, size)
    print(
        f'{db.name}: batches of {size} contacts (single: {SINGLES} one-contact POSTs), median of {rounds} rounds, '
        'with and without the search upkeep (alternating)'
    )

    def run(name, mode, n):
        search_upkeep(mode == 'with')
        try:
            # NOTE: each mode writes its own records (n and n + rounds), so neither finds the other's
            getattr(kinds, name)(n if mode == 'with' else n + rounds)
        finally:
            search_upkeep(True)

    for name in (*KINDS, 'single'):
        alternating(name, SINGLES if name == 'single' else size, rounds, functools.partial(run, name), db)
    db.close()


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument('--database', help='a PostgreSQL URL (default: a new SQLite file)')
    p.add_argument('--baseline-database', help='with --compare-history on PostgreSQL: a second database URL')
    p.add_argument('--size', type=int, default=1000)
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--compare-history', action='store_true', help='with and without the change history')
    p.add_argument('--compare-search', action='store_true', help='with and without the search upkeep (issue 10)')
    a = p.parse_args(argv)
    url = a.database or 'sqlite:///' + os.path.join(tempfile.mkdtemp(), 'batches.db')
    if a.compare_search:
        return compare_search(url, a.size, a.rounds)
    if a.compare_history:
        if a.database and not a.baseline_database:
            p.error('--compare-history on PostgreSQL needs --baseline-database (a second, scratch database)')
        baseline = a.baseline_database or 'sqlite:///' + os.path.join(tempfile.mkdtemp(), 'bare.db')
        return compare((url, baseline), a.size, a.rounds)
    db, app, token = fresh(url)
    kinds = Kinds(app, token, a.size)
    print(
        f'{db.name}: batches of {a.size} contacts, median of {a.rounds} requests (wall; CPU: this process + a local server)'
    )
    rates = {}
    for name in KINDS:
        seconds, cpu = timed(getattr(kinds, name), a.rounds, db)
        rates[name] = a.size / seconds, a.size / cpu
        print(f'  {name:7} {seconds * 1000:8.1f} ms  {rates[name][0]:10,.0f} rows/s | CPU {cpu * 1000:8.1f} ms')
    seconds, cpu = timed(kinds.single, a.rounds, db)
    single = SINGLES / seconds, SINGLES / cpu
    print(
        f'  single  {1000 / single[0]:8.2f} ms  {single[0]:10,.0f} rows/s | CPU {1000 / single[1]:8.3f} ms '
        f'({SINGLES} one-contact POSTs a round)'
    )
    print(
        f'  batch create / single create: {rates["create"][0] / single[0]:.1f}x (CPU: '
        f'{rates["create"][1] / single[1]:.1f}x)'
    )
    db.close()


if __name__ == '__main__':
    main()
