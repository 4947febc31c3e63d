#!/usr/bin/env python3
"""bench/flat.py - first pages of indexed filters at two sizes, side by side: is the 1M latency flat?

    .venv/bin/python bench/flat.py --db sqlite --rounds 3
    .venv/bin/python bench/flat.py --db postgresql --pg-url postgresql://postgres@127.0.0.1:55439/postgres

Starts crmapi (as bench/run.py does: granian, --workers 2 --blocking-threads 4) on the data set of each size in
--sizes (default 100,000 and 1,000,000 contacts, loaded by run.py's loader under --data-dir when missing), then,
round after round, drives each workload (run.py's: filter, filter_status and their `count=estimated` twins by
default) with wrk -t2 -c32 on one size and then the other, the order of the sizes reversed every round, so load
from other processes falls on both alike. Prints each cell's median over the rounds and p50(big) / p50(small).
"""

import argparse
import os
import statistics
import sys
import tempfile
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

WORKLOADS = 'filter,filter_status,filter_estimated,filter_status_estimated'


def data_for(a, db, contacts):
    ns = types.SimpleNamespace(contacts=contacts, data_dir=a.data_dir, load_timeout=a.load_timeout)
    return run.ensure_sqlite(ns) if db == 'sqlite' else run.ensure_pg(ns, a.pg_url)


def cell(a, server, data, wname):
    """One wrk run of `wname` on `server` after a warm-up: the run.py result dict."""
    spec = run.WORKLOADS[wname]
    headers = run.WORKLOAD_HEADERS.get(wname)
    fd, script = tempfile.mkstemp(prefix='crmapi_flat_', suffix='.lua')
    with os.fdopen(fd, 'w') as f:
        f.write(run.lua_script(spec, [], data['token'], f'flat{wname}', headers))
    probe = run.encode(run.list_path())
    idle = min(run.http(server.base + probe, 'GET', None, data['token'])[3] for _ in range(3))
    try:
        run.run_wrk(a, server.base, script, f'{a.warmup}s')
        load0 = os.getloadavg()[0]
        r = run.run_wrk(a, server.base, script, a.duration)
        r['loadavg_1m'] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        run.drain(server, probe, 'GET', None, data['token'], idle)
    finally:
        os.unlink(script)
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__)
    p.add_argument('--db', default='sqlite', choices=['sqlite', 'postgresql'])
    p.add_argument('--sizes', default='100000,1000000')
    p.add_argument('--workloads', default=WORKLOADS)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--duration', default='5s')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--threads-per-worker', type=int, default=4)
    p.add_argument('--wrk-threads', type=int, default=2)
    p.add_argument('--connections', type=int, default=32)
    p.add_argument('--port-base', type=int, default=18500)
    p.add_argument('--data-dir', default=os.environ.get('BENCH_DIR', '/tmp/crmapi-bench'))
    p.add_argument('--pg-url', help='PostgreSQL server (superuser URL) holding the data sets')
    p.add_argument('--load-timeout', type=int, default=7200)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(',')]
    workloads = [w for w in a.workloads.split(',') if w]
    if a.db == 'postgresql' and not a.pg_url:
        p.error('--pg-url is needed with --db postgresql')
    os.makedirs(os.path.join(a.data_dir, 'logs'), exist_ok=True)
    data, servers = {}, {}
    try:
        for k, n in enumerate(sizes):
            data[n] = data_for(a, a.db, n)
            a.contacts = n  # start_servers names its log files by size
            servers[n] = run.start_servers(a, a.db, data[n], a.port_base + 100 * k, ['crmapi'], 'granian')['crmapi']
        results = {}
        for rnd in range(a.rounds):
            for wname in workloads:
                for n in sizes if rnd % 2 == 0 else sizes[::-1]:
                    r = cell(a, servers[n], data[n], wname)
                    results.setdefault((wname, n), []).append(r)
                    run.log(
                        f'round {rnd + 1} {wname:24} {n:>8} {r["rps"]:7.0f} req/s  p50 {r["p50_us"] / 1000:6.2f} ms  '
                        f'load {r["loadavg_1m"][0]:.1f}->{r["loadavg_1m"][1]:.1f}'
                    )
    finally:
        for server in servers.values():
            server.stop()
    small, big = sizes[0], sizes[-1]
    print(
        f'\n{a.db}, crmapi, wrk -t{a.wrk_threads} -c{a.connections} {a.duration} per cell, median of {a.rounds} rounds'
    )
    print(f'| workload | {small:,} req/s | p50 ms | {big:,} req/s | p50 ms | p50 {big:,} ÷ {small:,} | load avg |')
    print('|---|---:|---:|---:|---:|---:|---|')
    for wname in workloads:
        s, b = results[(wname, small)], results[(wname, big)]
        p50s, p50b = (statistics.median(r['p50_us'] for r in rs) / 1000 for rs in (s, b))
        rps_s, rps_b = (statistics.median(r['rps'] for r in rs) for rs in (s, b))
        loads = [x for r in s + b for x in r['loadavg_1m']]
        print(
            f'| {wname} | {rps_s:,.0f} | {p50s:.1f} | {rps_b:,.0f} | {p50b:.1f} | {p50b / p50s:.2f} | '
            f'{min(loads):.1f}–{max(loads):.1f} |'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
