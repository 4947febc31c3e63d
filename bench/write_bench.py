#!/usr/bin/env python3
"""bench/write_bench.py - what one create and one update cost, in-process (no server, no sockets).

    PYTHONPATH=. .venv/bin/python bench/write_bench.py URL TOKEN [--requests 500] [--profile] [--top 25]

Calls crmapi's WSGI app directly: `POST /api/contacts` (a contact linked to a company, with two tags) and
`PUT /api/contacts/{id}` (title + status), --warmup times each, then --requests times each. Prints, per
kind: requests per second of wall time and of this process's CPU, and on PostgreSQL the statements and
round trips of one request with the
statements themselves. --profile adds the top functions of a cProfile run, by own time.
The creates stay (use a throwaway copy of the data set).
"""

import argparse
import cProfile
import io
import itertools
import pstats
import sys
import time

import orjson

from crmapi import create_app
from crmapi.config import Settings
from crmapi.db import connect

COUNTER = itertools.count()
START = time.time()  # every run's titles are new: an update that changes nothing writes nothing


class Trips:
    """Counts the round trips and statements of psycopg connections while `on`."""

    def __init__(self):
        self.on, self.trips, self.statements = False, 0, []

    def install(self):
        """NOTE: psycopg's C PGconn cannot be patched: statements are counted where they are sent from Python
        (cursor executes, COPY, the connection's BEGIN/COMMIT); a round trip is a statement sent on its own, or
        a whole pipeline (its statements go together, and their answers come back together)."""
        import contextlib
        import psycopg

        me, piped = self, [0]

        def wrap(owner, name):
            original = getattr(owner, name)

            def counted(obj, *args, **kwargs):
                if me.on:
                    me.statements.append(('  | ' if piped[0] else '') + str(args[0])[:150])
                    me.trips += not piped[0]
                return original(obj, *args, **kwargs)

            setattr(owner, name, counted)

        for owner, name in (
            (psycopg.Cursor, 'execute'),
            (psycopg.Cursor, 'copy'),
            (psycopg.Connection, '_exec_command'),
        ):
            wrap(owner, name)
        pipeline = psycopg.Connection.pipeline

        @contextlib.contextmanager
        def counted_pipeline(conn):
            if me.on:
                me.trips += 1
            piped[0] += 1
            try:
                with pipeline(conn) as p:
                    yield p
            finally:
                piped[0] -= 1

        psycopg.Connection.pipeline = counted_pipeline


def call(app, method, path, token, body=None):
    data = orjson.dumps(body) if body is not None else b''
    env = {
        'REQUEST_METHOD': method,
        'PATH_INFO': path,
        'QUERY_STRING': '',
        'SERVER_NAME': 'x',
        'SERVER_PORT': '80',
        'wsgi.url_scheme': 'http',
        'wsgi.input': io.BytesIO(data),
        'wsgi.errors': sys.stderr,
        'CONTENT_TYPE': 'application/json',
        'CONTENT_LENGTH': str(len(data)),
        'HTTP_AUTHORIZATION': 'Bearer ' + token,
    }
    status = []
    out = b''.join(app(env, lambda s, h, e=None: status.append(s)))
    if not status[0].startswith('2'):
        raise SystemExit(f'{method} {path}: {status[0]} {out[:300]}')
    return orjson.loads(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('url')
    p.add_argument('token')
    p.add_argument('--requests', type=int, default=500)
    p.add_argument('--warmup', type=int, default=50)
    p.add_argument('--profile', action='store_true')
    p.add_argument('--top', type=int, default=25)
    p.add_argument('--synchronous', default='FULL', help="SQLite's synchronous: FULL (crmapi's default) or NORMAL")
    a = p.parse_args(argv)
    db = connect(a.url)
    app = create_app(Settings(database_url=a.url, access_log=False, sqlite_synchronous=a.synchronous), db=db)
    trips = Trips()
    if db.name == 'postgresql':
        trips.install()
    mark = '?' if db.name == 'sqlite' else '%s'
    with db.transaction() as tx:
        # the token's organization: the one with the most contacts in the bench data set
        (org,) = tx.one("SELECT organization_id FROM row_counts WHERE table_name = 'contacts' ORDER BY n DESC LIMIT 1")
        companies, ids, tags = (
            [
                r[0]
                for r in tx.rows(f'SELECT id FROM {table} WHERE organization_id = {mark} ORDER BY id LIMIT 1000', [org])
            ]
            for table in ('companies', 'contacts', 'tags')
        )

    def create():
        n = next(COUNTER)
        call(
            app,
            'POST',
            '/api/contacts',
            a.token,
            {
                'first_name': 'Bench',
                'last_name': f'Writer {n}',
                'email': f'bench-{n}@bench.invalid',
                'company_id': companies[n % len(companies)],
                'tags': tags[n % 10 : n % 10 + 2],
                'status': 'cold',
            },
        )

    def update():
        n = next(COUNTER)
        call(
            app, 'PUT', f'/api/contacts/{ids[n % len(ids)]}', a.token, {'title': f'Title {n} {START}', 'status': 'hot'}
        )

    for kind, run in (('create', create), ('update', update)):
        for _ in range(a.warmup):
            run()
        if db.name == 'postgresql':
            trips.on, trips.trips, trips.statements = True, 0, []
            run()
            trips.on = False
            print(
                f'{kind}: {sum(s.count("; ") + 1 for s in trips.statements)} statements (BEGIN and COMMIT included), '
                f'{trips.trips} round trips (one line each; several statements on a line go in one query string)'
            )
            for s in trips.statements:
                print('   ', s.replace('\n', ' '))
        profile = cProfile.Profile() if a.profile else None
        c, t = time.process_time(), time.perf_counter()
        if profile:
            profile.enable()
        for _ in range(a.requests):
            run()
        if profile:
            profile.disable()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(
            f'{kind}: {a.requests} in {wall:.2f}s: {a.requests / wall:.0f}/s wall, {a.requests / cpu:.0f}/s CPU, '
            f'{wall / a.requests * 1e6:.0f} us each'
        )
        if profile:
            pstats.Stats(profile).sort_stats('tottime').print_stats(a.top)


if __name__ == '__main__':
    main()
