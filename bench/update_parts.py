#!/usr/bin/env python3
"""bench/update_parts.py - where the time of a single-record update (PUT/PATCH /api/contacts/:id) goes.

    .venv/bin/python bench/update_parts.py                                  # this checkout, a new SQLite file
    .venv/bin/python bench/update_parts.py --database postgresql://…/db      # a PostgreSQL database (recreated)
    .venv/bin/python bench/update_parts.py --root /tmp/base                 # another checkout
    .venv/bin/python bench/update_parts.py --data sqlite:////tmp/d/crm-100000.db /tmp/d/crm-100000.db.json  # a data set

In process: `--records` contacts are created (one batch), then each is updated once by `--method` with `--body`
(`{n}` is the request's number): the bench's `title`/`status` or the brief's `last_name`/`city`; `--method POST`:
as many single creates instead, to compare. Each request is
timed (wall and CPU, time.process_time) around itself and around its parts: every statement the transaction runs
(labelled by its first words; BEGIN and COMMIT included on PostgreSQL through psycopg's own commands), the store's
steps (_locked, _check_references, _write, index, History.record) and the JSON. It prints per update: wall, CPU,
and on PostgreSQL the statements and the waits for the server (round trips) per update and, a local server, its
backends' CPU (batches.server_cpu: /proc/<pid>/schedstat, nanoseconds). Parts nest (a step includes its
statements), so they do not add up.
"""

import argparse
import collections
import functools
import json
import os
import sys
import tempfile
import time


def _timed(parts, calls, label, original):
    """`original` that adds its CPU time to parts[label] (a callable giving the label from the call's arguments)."""

    @functools.wraps(original)
    def timed(*args, **kwargs):
        started = time.process_time()
        answer = original(*args, **kwargs)  # NOTE: a call that raises is not counted (none does here)
        name = label(*args) if callable(label) else label
        parts[name], calls[name] = parts[name] + time.process_time() - started, calls[name] + 1
        return answer

    return timed


def instrument(parts, calls):
    """write_parts' timers (SQLite's statements, the change rows, the JSON), with the store's steps and, on
    PostgreSQL, each statement psycopg sends (BEGIN and COMMIT included) and each time it waits for the server."""
    import write_parts

    from crmapi import store

    write_parts.instrument(parts)
    for name in ('_locked', '_check_references', '_write', 'index', '_keep_an_administrator', '_prepare_items'):
        setattr(store.Store, name, _timed(parts, calls, f'step Store.{name}', getattr(store.Store, name)))
    try:
        import psycopg
    except ImportError:
        return

    def statement(cursor_or_conn, sql, *args):
        text = sql.decode() if isinstance(sql, bytes) else str(sql)
        return 'SQL ' + ' '.join(text.replace('(', ' ').split()[:3])

    for owner in (psycopg.Cursor, psycopg.RawCursor):
        owner.execute = _timed(parts, calls, statement, owner.execute)
    psycopg.Connection._exec_command = _timed(parts, calls, statement, psycopg.Connection._exec_command)
    psycopg.Connection.wait = _timed(parts, calls, 'round trips (psycopg waits)', psycopg.Connection.wait)


def existing(url, meta, count):
    """(db, app, token, ids) of a data set: `count` ids of its big organization's live contacts spread over the
    table (bench/run.py's sample)."""
    from crmapi import create_app
    from crmapi.config import Settings
    from crmapi.db import connect

    db = connect(url)
    with open(meta) as f:
        target = json.load(f)['targets'][db.name]
    p = '?' if db.name == 'sqlite' else '%s'
    with db.transaction() as tx:
        sql = f'SELECT id FROM contacts WHERE organization_id = {p} AND archived_at IS NULL ORDER BY id'
        ids = [record_id for (record_id,) in tx.rows(sql, (target['org_id'],))]
    ids = ids[:: max(1, len(ids) // count)][:count]
    return db, create_app(Settings(database_url='injected', access_log=False), db=db), target['token'], ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--root', default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument('--database', help='a PostgreSQL URL (its public schema is recreated); default: a new SQLite file')
    p.add_argument('--records', type=int, default=1000)
    p.add_argument('--method', default='PUT')
    p.add_argument('--body', default='{"last_name":"Renamed {n}","city":"City {n}"}')
    p.add_argument('--no-parts', action='store_true', help='time whole requests only (no part timers)')
    p.add_argument(
        '--data',
        nargs=2,
        metavar=('URL', 'META'),
        help="an existing data set instead of a new database (bench/load_data.py's, e.g. a copy of bench/run.py's, and "
        'its meta file): --records of its contacts spread over the table, as bench/run.py picks them, each run writing '
        'values of its own (the creates stay)',
    )
    p.add_argument('--profile', help='with --no-parts: write a cProfile of the updates to this file')
    a = p.parse_args(argv)
    root = os.path.abspath(a.root)
    sys.path.insert(0, root)
    sys.path.insert(0, os.path.join(root, 'bench'))
    import batches

    parts, calls = collections.defaultdict(float), collections.Counter()
    if not a.no_parts:
        instrument(parts, calls)
    run = ''
    if a.data:
        db, app, token, ids = existing(*a.data, a.records + 1)
        run = f'{time.time_ns()}-'  # NOTE: a rerun's values differ from the last run's: an update that changes nothing writes nothing
    else:
        url = a.database or 'sqlite:///' + os.path.join(tempfile.mkdtemp(), 'update_parts.db')
        db, app, token = batches.fresh(url)
        created = batches.request(app, 'POST', '/api/contacts', token, batches.contacts(a.records + 1, 0, 'u'))
        ids = [r['id'] for r in created]
    warm = json.loads(a.body.replace('{n}', run + 'warm'))
    path = '/api/contacts' if a.method == 'POST' else '/api/contacts/{}'  # NOTE: POST: single creates, to compare
    batches.request(app, a.method, path.format(ids.pop()), token, warm)  # NOTE: compiles the statements
    parts.clear()
    calls.clear()
    walls = []
    server = batches.server_cpu(db)
    profile = None
    if a.profile:
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    started = time.process_time()
    for n, record_id in enumerate(ids):
        body = json.loads(a.body.replace('{n}', run + str(n)))
        t0 = time.perf_counter()
        batches.request(app, a.method, path.format(record_id), token, body)
        walls.append(time.perf_counter() - t0)
    cpu = time.process_time() - started
    if profile is not None:
        profile.disable()
        profile.dump_stats(a.profile)
    server = batches.server_cpu(db) - server
    count = len(ids)
    walls.sort()
    statements = sum(c for label, c in calls.items() if label.startswith('SQL '))  # NOTE: PostgreSQL's only
    trips = calls.pop('round trips (psycopg waits)', 0)
    parts.pop('round trips (psycopg waits)', None)
    print(
        f'{root} {db.name} {a.method} {a.body}: {count} updates; wall median {walls[count // 2] * 1e6:,.0f} µs '
        f'(p25 {walls[count // 4] * 1e6:,.0f}); CPU {cpu / count * 1e6:,.1f} µs; statements {statements / count:.2f}'
        + (f'; round trips {trips / count:.2f}' if trips else '')
        + (f'; backend CPU {server / count * 1e6:,.1f} µs' if server else '')
    )
    for label, spent in sorted(parts.items(), key=lambda item: -item[1]):
        times = f'{calls[label] / count:5.2f}×' if calls[label] else ' ' * 6  # NOTE: write_parts' timers count none
        print(f'  {spent / count * 1e6:9.2f} µs  {times}  {label[:100]}')
    db.close()


if __name__ == '__main__':
    main()
