#!/usr/bin/env python3
"""bench/batch_ab.py - two checkouts' batch writes on PostgreSQL, request by request, alternating (A B B A …).

    .venv/bin/python bench/batch_ab.py --kind create --rounds 60 \\
        --a /tmp/base-worktree postgresql://postgres@127.0.0.1:55439/crm_a --a-label base \\
        --b . postgresql://postgres@127.0.0.1:55439/crm_b --b-label branch

Each side is a process of its own (its checkout's crmapi, its own database, which bench/batches.py's `fresh` drops
and rebuilds), driven one request at a time, so both see the same machine load. Per request of `--kind` (create,
upsert, patch: 1,000 contacts; single: 100 one-contact POSTs): wall time, this process's CPU, and the CPU of the
database's backends on this machine (/proc/<pid>/schedstat, nanoseconds: not /proc's 10 ms ticks), and the WAL it
wrote. The first two requests of each side are left out (they compile the connection's statements). Prints the
median, 25th percentile and minimum wall time and the median and mean CPU: a batch that cleans a GIN index's pending
list costs several times the others, so the mean is the fair figure for the server.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(root, url):
    """One side: read `kind n` lines, answer [wall, app CPU, server CPU, WAL bytes] of that request."""
    sys.path.insert(0, root)
    sys.path.insert(0, os.path.join(root, 'bench'))
    import batches

    db, app, token = batches.fresh(url)
    kinds = batches.Kinds(app, token, 1000)

    def server():
        with db.transaction() as tx:
            pids = [p for (p,) in tx.rows('SELECT pid FROM pg_stat_activity WHERE datname = current_database()')]
            wal = tx.one("SELECT pg_current_wal_insert_lsn() - '0/0'")[0]
        used = 0
        for pid in pids:
            with open(f'/proc/{pid}/schedstat') as f:
                used += int(f.read().split()[0])
        return used / 1e9, int(wal)

    print('ready', flush=True)
    for line in sys.stdin:
        kind, n = line.split()
        n = int(n)
        if kind in ('upsert', 'patch'):
            kinds.create(n)  # NOTE: what the upsert half-updates and the patch changes, as in bench/batches.py
        (cpu0, wal0), used, started = server(), time.process_time(), time.perf_counter()
        getattr(kinds, kind)(n)
        wall, used = time.perf_counter() - started, time.process_time() - used
        cpu1, wal1 = server()
        print(json.dumps([wall, used, cpu1 - cpu0, wal1 - wal0]), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument('--kind', default='create', choices=('create', 'upsert', 'patch', 'single'))
    p.add_argument('--rounds', type=int, default=30)
    p.add_argument('--a', nargs=2, metavar=('ROOT', 'URL'), required=True)
    p.add_argument('--b', nargs=2, metavar=('ROOT', 'URL'), required=True)
    p.add_argument('--a-label', default='A')
    p.add_argument('--b-label', default='B')
    a = p.parse_args(argv)
    sides = {a.a_label: a.a, a.b_label: a.b}
    procs = {
        label: subprocess.Popen(
            [sys.executable, __file__, '--worker', os.path.abspath(root), url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for label, (root, url) in sides.items()
    }
    for label, proc in procs.items():
        if proc.stdout.readline().strip() != 'ready':
            sys.exit(f'{label}: the side did not start (run bench/batches.py --database … there to see why)')
    results, loads, order = {label: [] for label in procs}, [], list(procs)
    for n in range(a.rounds + 2):
        for label in order if n % 2 else order[::-1]:
            procs[label].stdin.write(f'{a.kind} {n}\n')
            procs[label].stdin.flush()
            answer = json.loads(procs[label].stdout.readline())
            if n >= 2:
                results[label].append(answer)
        loads.append(os.getloadavg()[0])
    scale = 10 if a.kind == 'single' else 1000  # single: ms per one-contact POST (100 a round)
    print(f'{a.kind}: {a.rounds} requests a side, alternating; load average {min(loads):.1f}-{max(loads):.1f}')
    for label, rows in results.items():
        wall, app, srv = ([r[i] * scale for r in rows] for i in range(3))
        wal = statistics.mean(r[3] for r in rows) / 1024
        print(
            f'  {label:10} wall median {statistics.median(wall):7.2f} p25 {statistics.quantiles(wall, n=4)[0]:7.2f} '
            f'min {min(wall):7.2f} ms | CPU app {statistics.median(app):6.2f} (mean {statistics.mean(app):6.2f}) '
            f'server {statistics.median(srv):6.2f} (mean {statistics.mean(srv):6.2f}) ms | WAL {wal:,.0f} kB'
        )
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()


if __name__ == '__main__':
    if sys.argv[1:2] == ['--worker']:
        worker(*sys.argv[2:4])
    else:
        main()
