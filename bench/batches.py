#!/usr/bin/env python3
"""bench/batches.py - how fast batches and upserts write, in-process (direct WSGI calls, no server).

    .venv/bin/python bench/batches.py                                   # SQLite in a temporary directory
    .venv/bin/python bench/batches.py --database postgresql://postgres@127.0.0.1:55439/crm_bench
    .venv/bin/python bench/batches.py --size 1000 --rounds 20

Creates an empty crmapi database (SQLite: a new file; PostgreSQL: the schema of the database given,
which it drops first), an organization and a token, then times `--rounds` requests of each kind, each
with a batch of `--size` contacts: POST (create), POST ?on_conflict=external_id (upsert: half new, half
updates), PATCH, DELETE (archive). Prints the median wall time of a request and the rows per second.
The targets of issue 9: a batch of 1,000 contacts well under 100 ms on SQLite, >= 20,000 rows/s on
SQLite and >= 10,000 rows/s on PostgreSQL. Nothing is asserted: this is a measurement, not a test.
"""
import argparse
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
    environ = create_environ(path, query_string=query, method=method, body=data,
                             headers={'Authorization': f'Bearer {token}', 'Content-Type': 'application/json'})
    out = {}

    def start_response(status, headers, exc_info=None):
        out['status'] = int(status[:3])
    body = b''.join(app(environ, start_response))
    if out['status'] >= 400:
        raise RuntimeError(f'{method} {path}?{query}: {out["status"]} {body[:300]!r}')
    return json.loads(body)


def contacts(size, offset, prefix):
    return [{'first_name': f'First {i}', 'last_name': f'Last {i}', 'email': f'c{i}@bench.invalid',
             'city': 'London', 'status': 'hot', 'external_id': f'{prefix}-{i}'} for i in range(offset, offset + size)]


def timed(action, rounds):
    times = []
    for n in range(rounds):
        started = time.perf_counter()
        action(n)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed_both(action, rounds):
    """(median with search upkeep, median without): rounds alternate, so a busy machine weighs on both alike.
    Round n with upkeep and round n + rounds without write different records (`action(n)`)."""
    from crmapi.store import Store
    index, unindex = Store.index, Store.unindex
    on, off = [], []
    for n in range(rounds):
        for mode, times in (('on', on), ('off', off)):
            if mode == 'off':
                Store.index = Store.unindex = lambda *a, **k: None
            try:
                started = time.perf_counter()
                action(n if mode == 'on' else n + rounds)
                times.append(time.perf_counter() - started)
            finally:
                Store.index, Store.unindex = index, unindex
    return statistics.median(on), statistics.median(off)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--database', help='a PostgreSQL URL (default: a new SQLite file)')
    p.add_argument('--size', type=int, default=1000)
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--search-off', action='store_true',
                   help='also time each kind with the search upkeep off (the before figure), round by round')
    a = p.parse_args(argv)
    from crmapi import create_app
    from crmapi.accounts import Accounts
    from crmapi.cli import init_db
    from crmapi.config import Settings
    from crmapi.db import connect
    url = a.database or 'sqlite:///' + os.path.join(tempfile.mkdtemp(), 'batches.db')
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
    size, rounds = a.size, a.rounds
    created = []

    def create(n):
        created.append(request(app, 'POST', '/api/contacts', token, contacts(size, n * size, 'c')))

    def upsert(n):
        body = contacts(size // 2, n * size, 'c') + contacts(size - size // 2, n * size, f'u{n}')
        request(app, 'POST', '/api/contacts', token, body, 'on_conflict=external_id')

    def patch(n):
        request(app, 'PATCH', '/api/contacts', token, [{'id': r['id'], 'title': f'Title {n}'} for r in created[n]])

    def delete(n):
        ids = json.dumps({'id': [r['id'] for r in created[n]]})
        request(app, 'DELETE', '/api/contacts', token, query='filter=' + ids)

    print(f'{db.name}: batches of {size} contacts, median of {rounds} requests')
    for name, action in (('create', create), ('upsert', upsert), ('patch', patch), ('delete', delete)):
        if not a.search_off:
            seconds = timed(action, rounds)
            print(f'  {name:7} {seconds * 1000:8.1f} ms  {size / seconds:10,.0f} rows/s')
            continue
        on, off = timed_both(action, rounds)
        print(f'  {name:7} {on * 1000:8.1f} ms  {size / on:10,.0f} rows/s   search off: {off * 1000:8.1f} ms '
              f'{size / off:10,.0f} rows/s   ratio {off / on:.2f}')
    db.close()


if __name__ == '__main__':
    main()
