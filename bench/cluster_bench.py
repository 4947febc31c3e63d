"""Scale-out bench (issue 14): the mixed workload through nginx over two app hosts against one, and reads
served from a replica against the primary.

    sudo .venv/bin/python bench/cluster_bench.py --contacts 50000 --duration 10s

It builds tests/test_cluster.py's topology (network namespaces: PostgreSQL primary db1 and its streaming
replica db2; app1 and app2 each with PgBouncer, gunicorn 2 workers x 4 threads and a `crmapi worker`; nginx
on lb), loads bench/load_data.py's data set into the primary, and drives wrk from the root namespace
(bench/run.py's workloads and Lua). Every host shares this machine's cores, so a second app host adds
capacity only where one host leaves cores idle: the figures show what the topology costs, not what more
machines would gain. Root is needed (ip netns). Prints a markdown table.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / 'tests'), str(ROOT / 'bench')]

import run as bench  # noqa: E402  (bench/run.py: workloads, Lua, wrk)
from test_cluster import APP_PORT  # noqa: E402
from test_cluster import Cluster  # noqa: E402
from test_cluster import netns_refusal  # noqa: E402
from test_cluster import wait_until  # noqa: E402


def log(message):
    print(f'[cluster-bench {time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def load(cluster, contacts, directory):
    """bench/load_data.py into the primary: (org id, token, sample ids)."""
    meta = Path(directory) / 'meta.json'
    subprocess.run(
        [
            sys.executable,
            str(ROOT / 'bench' / 'load_data.py'),
            '--contacts',
            str(contacts),
            '--pg',
            cluster.admin_url,
            '--meta',
            str(meta),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    target = json.loads(meta.read_text())['targets']['postgresql']
    data = {'url': cluster.admin_url, 'org_id': target['org_id']}
    return target['token'], bench.sample_ids(data)


def replica_caught_up(cluster):
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        lsn = conn.execute('SELECT pg_current_wal_lsn()').fetchone()[0]
    with psycopg.connect(cluster.pg_url('db2'), autocommit=True) as conn:
        return conn.execute('SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn', (lsn,)).fetchone()[0]


def upstreams(cluster, apps):
    """Point nginx at `apps` (and give it room for wrk's connections), then reload it (SIGHUP)."""
    site = cluster.dir / 'lb'
    conf = (site / 'crmapi.conf').read_text()
    lines = [line for line in conf.splitlines() if not line.strip().startswith(f'server {cluster.net}.')]
    at = next(i for i, line in enumerate(lines) if line.strip().startswith('upstream '))
    lines[at + 1 : at + 1] = [f'        server {cluster.ip(app)}:{APP_PORT};' for app in apps]
    (site / 'crmapi.conf').write_text('\n'.join(lines) + '\n')
    main = (site / 'nginx.conf').read_text().replace('worker_connections 64;', 'worker_connections 1024;')
    (site / 'nginx.conf').write_text(main)
    os.kill(cluster.nginx.pid, signal.SIGHUP)
    time.sleep(1.5)


def replicas(cluster, app, names):
    """Restart `app`'s workers (SIGHUP) reading from the replica (`names`: 'crm2') or only the primary ('')."""
    cluster.write_env(app, primary='crm1', replicas=names)
    os.kill(cluster.gunicorn[app].pid, signal.SIGHUP)

    def settled():
        with urllib.request.urlopen(f'http://{cluster.ip(app)}:{APP_PORT}/readyz', timeout=3) as resp:
            ready = json.loads(resp.read())
        return bool(ready.get('replicas')) == bool(names)

    time.sleep(3)  # NOTE: the old workers finish first; /readyz may still come from one of them until then
    wait_until(settled, 30, f'{app} reading from {names or "the primary"}')


def cell(a, base, prefix, workload, token, ids):
    spec = [(w, m, [prefix + p for p in paths], body) for w, m, paths, body in bench.WORKLOADS[workload]]
    script = Path(a.dir) / f'{workload}.lua'
    script.write_text(bench.lua_script(spec, ids, token, f'cb{int(time.time())}'))
    bench.run_wrk(a, base, str(script), a.warmup)
    load_before = os.getloadavg()[0]
    result = bench.run_wrk(a, base, str(script), a.duration)
    result['load'] = f'{load_before:.1f}–{os.getloadavg()[0]:.1f}'
    return result


def row(label, workload, r):
    errors = r['err_status'] + r['err_timeout'] + r['err_connect'] + r['err_read']
    return (
        f'| {label} | {workload} | {r["rps"]:,.0f} | {r["p50_us"] / 1000:.1f} | {r["p99_us"] / 1000:.1f} | '
        f'{errors} | {r["load"]} |'
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--contacts', type=int, default=50_000)
    p.add_argument('--duration', default='10s')
    p.add_argument('--warmup', default='2s')
    p.add_argument('--connections', type=int, default=32)
    p.add_argument('--wrk-threads', type=int, default=2)
    a = p.parse_args(argv)
    refusal = netns_refusal()
    if refusal:
        sys.exit(f'cluster_bench: network namespaces are not permitted here: {refusal}')
    a.dir = tempfile.mkdtemp(prefix='crmapi-cluster-bench-', dir='/tmp')
    os.chmod(a.dir, 0o755)  # NOTE: postgres must reach its directories in here
    cluster = Cluster(a.dir)
    rows = []
    try:
        log('building the cluster')
        cluster.up()
        log(f'loading {a.contacts} contacts into the primary')
        token, ids = load(cluster, a.contacts, a.dir)
        wait_until(lambda: replica_caught_up(cluster), 120, 'the replica caught up')
        lb = f'http://{cluster.ip("lb")}:80'
        for label, apps in (('nginx → app1 + app2', ('app1', 'app2')), ('nginx → app1', ('app1',))):
            upstreams(cluster, apps)
            log(f'mixed through {label}')
            rows.append(row(label, 'mixed', cell(a, lb, '/crm', 'mixed', token, ids)))
        upstreams(cluster, ('app1', 'app2'))
        app1 = f'http://{cluster.ip("app1")}:{APP_PORT}'
        for label, names in (('app1 reads from the replica', 'crm2'), ('app1 reads from the primary', '')):
            replicas(cluster, 'app1', names)
            for workload in ('list', 'get'):
                log(f'{workload}: {label}')
                rows.append(row(label, workload, cell(a, app1, '', workload, token, ids)))
    finally:
        cluster.close()
        subprocess.run(['rm', '-rf', a.dir])
    print(
        f'\n{a.contacts:,} contacts; wrk -t{a.wrk_threads} -c{a.connections} -d{a.duration} after a {a.warmup} '
        'warm-up, from the root namespace\n'
    )
    print('| path | workload | req/s | p50 ms | p99 ms | errors | load avg |')
    print('|---|---|---:|---:|---:|---:|---|')
    print('\n'.join(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
