#!/usr/bin/env python3
"""bench/profile_list.py - where a crmapi list request spends its time (cProfile, in-process).

    .venv/bin/python bench/profile_list.py                       # 500 x the `list` workload, 100k SQLite
    .venv/bin/python bench/profile_list.py --workload filter --requests 200 --top 40
    .venv/bin/python bench/profile_list.py --database postgresql://postgres@127.0.0.1:55439/crm_100000 \
        --token bos_crm_...

Builds crmapi's WSGI app (crmapi.create_app) against the data set bench/run.py loads
(default /tmp/crmapi-bench/crm-<contacts>.db and its token from the .json beside it), calls it
directly with a WSGI environ (no server, no sockets) --warmup times, then --requests times under
cProfile, and prints the mean wall time per request plus the top functions by cumulative and by
own time. --out FILE also saves the raw stats (snakeviz/pstats).
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))
import run  # noqa: E402  (the workload definitions)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument('--contacts', type=int, default=100_000)
    p.add_argument('--database', help='crmapi database URL (default: the bench SQLite file)')
    p.add_argument('--token', help='API token (default: from the bench data set .json)')
    p.add_argument('--workload', default='list', choices=['list', 'filter', 'contains', 'get', 'deep'])
    p.add_argument('--requests', type=int, default=500)
    p.add_argument('--warmup', type=int, default=20)
    p.add_argument('--top', type=int, default=30)
    p.add_argument('--out', help='save raw pstats here')
    a = p.parse_args(argv)
    data_dir = os.environ.get('BENCH_DIR', '/tmp/crmapi-bench')
    path = os.path.join(data_dir, f'crm-{a.contacts}.db')
    url = a.database or 'sqlite:///' + path
    token = a.token
    if token is None:
        with open(path + '.json') as f:
            token = json.load(f)['targets']['sqlite']['token']
    os.environ['CRMAPI_DATABASE_URL'] = url

    from falcon.testing import create_environ
    from crmapi import create_app

    app = create_app()
    raw = run.WORKLOADS[a.workload][0][2][0]
    if '{id}' in raw:
        import sqlite3

        con = sqlite3.connect(path)
        raw = raw.replace('{id}', con.execute('SELECT id FROM contacts ORDER BY id LIMIT 1 OFFSET 5000').fetchone()[0])
    target = run.encode(raw)
    route, _, qs = target.partition('?')
    base_env = create_environ(path=route, query_string=qs, headers={'Authorization': f'Bearer {token}'})
    statuses = {}

    def start_response(status, headers, exc_info=None):
        statuses[status] = statuses.get(status, 0) + 1

    def one():
        env = dict(base_env)
        env['wsgi.input'] = io.BytesIO(b'')
        for chunk in app(env, start_response):
            pass

    for _ in range(a.warmup):
        one()
    statuses.clear()
    t0 = time.perf_counter()
    for _ in range(a.requests):
        one()
    plain = (time.perf_counter() - t0) / a.requests
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(a.requests):
        one()
    prof.disable()
    print(
        f'# {a.workload}: GET {target}\n# {url}; {a.requests} requests; statuses {statuses}; '
        f'{plain * 1000:.2f} ms/request without the profiler ({1 / plain:.0f} req/s on one thread)\n'
    )
    for key in ('cumulative', 'tottime'):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(a.top)
        print(f'## top {a.top} by {key}\n' + out.getvalue().split('\n', 4)[-1])
    if a.out:
        prof.dump_stats(a.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
