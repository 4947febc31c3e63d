#!/usr/bin/env python3
"""bench/floor_cpu.py - CPU time per request of crmapi's WSGI app and of floors/floor_sql.py's, in one process.

    .venv/bin/python bench/floor_cpu.py get                       # 2,000 gets, the 100k SQLite data set
    .venv/bin/python bench/floor_cpu.py filter --requests 2000 --root /tmp/base   # crmapi as checked out in /tmp/base
    .venv/bin/python bench/floor_cpu.py get --database postgresql://postgres@127.0.0.1:5432/crm_100000 \
        --meta /tmp/crmapi-bench/crm-100000.pg-5432.json

Both apps are called directly with WSGI environs of a bench/run.py workload (gets cycle over 1,000 sample ids), no
server and no sockets, in ten alternating batches, so that load from other processes falls on both alike; it prints
each one's CPU time (this process's: SQLite's work included, PostgreSQL's server not) and wall time per request, and
the floor's CPU ÷ crmapi's. crmapi runs with its settings from the environment (CRMAPI_ACCESS_LOG: its access log
goes to stderr). --root: the crmapi checkout to import (default: this one), to compare a change with the code
before it, run after run.
"""

import argparse
import io
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('workload', choices=['list', 'filter', 'filter_status', 'contains', 'get', 'deep'])
    p.add_argument('--requests', type=int, default=2000)
    p.add_argument('--root', default=os.path.dirname(HERE), help='the crmapi checkout to measure')
    p.add_argument('--database', default=None, help='default: sqlite:///$BENCH_DIR/crm-<contacts>.db')
    p.add_argument('--meta', default=None, help="the data set's .json (token, organization)")
    p.add_argument('--contacts', type=int, default=100_000)
    a = p.parse_args(argv)
    data_dir = os.environ.get('BENCH_DIR', '/tmp/crmapi-bench')
    url = a.database or 'sqlite:///' + os.path.join(data_dir, f'crm-{a.contacts}.db')
    meta_path = a.meta or os.path.join(data_dir, f'crm-{a.contacts}.db.json')
    with open(meta_path) as f:
        target = json.load(f)['targets']['sqlite' if url.startswith('sqlite') else 'postgresql']
    token, org = target['token'], target['org_id']
    sys.path[:0] = [a.root, HERE, os.path.join(HERE, 'floors')]
    os.environ.update(CRMAPI_DATABASE_URL=url, FLOOR_DB=url, FLOOR_ORG=org)
    import crmapi
    import floor_sql
    import run
    from falcon.testing import create_environ

    assert crmapi.__file__.startswith(os.path.abspath(a.root)), crmapi.__file__
    apps = {'crmapi': crmapi.create_app(), 'floor-sql': floor_sql.app}
    raw = run.WORKLOADS[a.workload][0][2][0]
    ids = run.sample_ids({'url': url, 'org_id': org}, 1000) if '{id}' in raw else ['']
    environs = []
    for record_id in ids:
        route, _, qs = run.encode(raw.replace('{id}', record_id)).partition('?')
        environs.append(create_environ(path=route, query_string=qs, headers={'Authorization': f'Bearer {token}'}))
    statuses = {}

    def start_response(status, headers, exc_info=None):
        statuses[status] = statuses.get(status, 0) + 1

    def batch(app, n):
        for k in range(n):
            env = dict(environs[k % len(environs)])
            env['wsgi.input'] = io.BytesIO(b'')
            for _ in app(env, start_response):
                pass

    for app in apps.values():
        batch(app, 200)
    spent = {name: [0.0, 0.0] for name in apps}
    for k in range(10):
        for name, app in apps.items() if k % 2 == 0 else reversed(apps.items()):
            cpu, wall = time.process_time(), time.perf_counter()
            batch(app, a.requests // 10)
            spent[name][0] += time.process_time() - cpu
            spent[name][1] += time.perf_counter() - wall
    n = a.requests // 10 * 10
    print(
        f'{a.workload} ({a.root}, {url.split("://")[0]}): statuses {statuses}; '
        + '; '.join(
            f'{name} {cpu / n * 1e6:,.1f} µs CPU, {wall / n * 1e6:,.1f} µs wall' for name, (cpu, wall) in spent.items()
        )
        + f'; floor-sql CPU ÷ crmapi CPU {spent["floor-sql"][0] / spent["crmapi"][0]:.2f}; '
        f'load average {os.getloadavg()[0]:.1f}'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
