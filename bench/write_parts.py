#!/usr/bin/env python3
"""bench/write_parts.py - where the CPU of a 1,000-contact batch create and of a single create goes (SQLite).

    .venv/bin/python bench/write_parts.py                       # this checkout
    .venv/bin/python bench/write_parts.py --root /tmp/base      # another one

In process, on a new SQLite file: `--batches` warm creates of `--size` contacts (the bench's bodies, bench/batches.py),
then `--singles` one-contact POSTs, each timed with time.process_time() around the request and around its parts:
every SQL statement (by its first words: the statement's own work, bindings, and for COMMIT the WAL writes, the fsync
call and any checkpoint), the search rows' text (search.Plan.row), the change rows (history.History.record, its SQL
included), the request's JSON, the response's, and the bench's own JSON (the client's). It prints each part per
record of a batch (µs) and per single create (µs). The parts are measured inside the request, so they add up to less
than the request: the rest is the Python of the write path. The timers cost ~0.3 µs a call (Plan.row's count).
"""

import argparse
import collections
import functools
import json
import os
import sys
import tempfile
import time


def instrument(parts):
    """Wrap the measured functions: each call adds its CPU time to parts[label]."""
    from crmapi import api
    from crmapi.db import sqlite as engines
    from crmapi import history
    from crmapi import search

    def wrap(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                parts[label] += time.process_time() - started

        setattr(owner, name, timed)

    execute = engines._Cursor.execute

    def statement(cursor, sql, params=()):
        started = time.process_time()
        try:
            return execute(cursor, sql, params)
        finally:
            parts['SQL ' + ' '.join(sql.replace('(', ' ').split()[:3])] += time.process_time() - started

    engines._Cursor.execute = statement
    wrap(search.Plan, 'row', 'search row text (Plan.row)')
    wrap(history.History, 'record', 'change rows (History.record, with its SQL)')
    wrap(api.StrictJSON, 'deserialize', 'request JSON (strict parse)')
    wrap(api.StrictJSON, 'serialize', 'response JSON')
    wrap(json, 'dumps', 'bench: the client json.dumps')
    wrap(json, 'loads', 'bench: the client json.loads')


def report(title, parts, total, per):
    print(f'{title}: {total / per * 1e6:,.1f} µs CPU')
    for label, spent in sorted(parts.items(), key=lambda item: -item[1]):
        print(f'  {spent / per * 1e6:9.2f} µs  {label}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--root', default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument('--size', type=int, default=1000)
    p.add_argument('--batches', type=int, default=20)
    p.add_argument('--singles', type=int, default=1000)
    a = p.parse_args(argv)
    root = os.path.abspath(a.root)
    sys.path.insert(0, root)
    sys.path.insert(0, os.path.join(root, 'bench'))
    import batches

    parts = collections.defaultdict(float)
    instrument(parts)
    db, app, token = batches.fresh('sqlite:///' + os.path.join(tempfile.mkdtemp(), 'write_parts.db'))
    kinds = batches.Kinds(app, token, a.size)
    kinds.create(0)
    kinds.single(0)  # NOTE: the first request of each shape compiles its statements: not counted
    parts.clear()
    started = time.process_time()
    for n in range(1, a.batches + 1):
        kinds.create(n)
    report(
        f'{root}: a record of a batch of {a.size} (mean of {a.batches})',
        parts,
        time.process_time() - started,
        a.batches * a.size,
    )
    parts.clear()
    rounds = max(1, a.singles // batches.SINGLES)
    started = time.process_time()
    for n in range(1, rounds + 1):
        kinds.single(n)
    report(
        f'a single create (mean of {rounds * batches.SINGLES})',
        parts,
        time.process_time() - started,
        rounds * batches.SINGLES,
    )
    db.close()


if __name__ == '__main__':
    main()
