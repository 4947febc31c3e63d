#!/usr/bin/env python3
"""bench/embed_bench.py - what `embed` costs: a 1,000-row contacts page, plain and with embeds.

    .venv/bin/python bench/embed_bench.py                        # 100k contacts, SQLite
    .venv/bin/python bench/embed_bench.py --pg postgresql://postgres@127.0.0.1:55439/postgres
    .venv/bin/python bench/embed_bench.py --contacts 1000000 --requests 20
    .venv/bin/python bench/embed_bench.py --resource companies --sort name --embed '["contacts","deals"]'
    .venv/bin/python bench/embed_bench.py --before /tmp/base                # this checkout against another
    .venv/bin/python bench/embed_bench.py --before /tmp/base --pg URL --before-pg URL2

Loads (once, into BENCH_DIR, default /tmp/crmapi-bench) the data set bench/run.py uses: the big
organization's N contacts, 90 % of them at a company, 0-2 tags each, N/5 contact notes. Builds crmapi's
WSGI app in-process and calls it directly (no server, no sockets): `GET /api/contacts?range=[0,999]
&sort=last_name`, plain and with each `--embed` set, --warmup times then --requests times each,
interleaved so that a slower moment of the machine weighs on every variant alike. Prints the median
and mean milliseconds of each and the ratio of the medians to the plain page's; the aim is at most 2x
for two embeds. Also the median CPU time of this process (on SQLite: the whole request, the database
included; on PostgreSQL: the app's share), which other processes on the machine disturb less than
the wall time. --resource/--sort: another page (companies, deals); the default embeds are every pair of the
contacts' relations (company, tags, deals, notes, tasks), or a few pairs of the companies' and the deals'.

--before PATH compares this checkout with another one (e.g. `git worktree add /tmp/base main`): each runs in a
process of its own on a data set of its own (loaded and migrated by its own code: SQLite under BENCH_DIR/before,
PostgreSQL on the --before-pg server, which must differ from --pg), their requests alternating one by one
(which goes first changes every round), so both see the same machine. Nothing is asserted: it measures.
"""

import argparse
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
# NOTE: a --worker runs another checkout's code: its crmapi and its bench/run.py (which loads and migrates).
CODE = os.environ.get('EMBED_BENCH_CODE') or os.path.dirname(HERE)
sys.path.insert(0, os.path.join(CODE, 'bench'))
sys.path.insert(1, CODE)
import run  # noqa: E402  (the data sets: loaded once, reused)


def pairs(*names):
    return tuple(json.dumps(list(pair), separators=(',', ':')) for pair in itertools.combinations(names, 2))


DEFAULT_EMBEDS = {
    'contacts': pairs('company', 'tags', 'deals', 'notes', 'tasks'),
    'companies': ('["contacts","deals"]', '["deals","notes"]', '["deals","tasks"]', '["notes","tasks"]'),
    'deals': ('["company","contacts"]', '["company","notes"]', '["company","tasks"]', '["notes","tasks"]'),
}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument('--contacts', type=int, default=100_000)
    p.add_argument('--pg', metavar='URL', help='a PostgreSQL server URL (the data set goes into crm_<contacts>)')
    p.add_argument('--embed', action='append', help='an embed value to time (default: per --resource, see above)')
    p.add_argument('--requests', type=int, default=30)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--resource', default='contacts', help='the resource listed (default: contacts)')
    p.add_argument('--sort', default='last_name', help='its sort field (default: last_name)')
    p.add_argument('--before', metavar='PATH', help='another checkout to compare with, side by side')
    p.add_argument('--before-pg', metavar='URL', help="with --pg and --before: the other checkout's server")
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    embeds = a.embed or DEFAULT_EMBEDS.get(a.resource, ())
    variants = {'plain': None, **{embed: embed for embed in embeds}}
    if a.worker:
        return serve(a, variants)
    if a.pg and a.before and not a.before_pg:
        p.error('--before on PostgreSQL needs --before-pg (another server: each checkout migrates its own data set)')
    sides = {'after': Side(a, None, a.pg)}
    if a.before:
        sides = {'before': Side(a, a.before, a.before_pg), **sides}
    times = {side: {name: [] for name in variants} for side in sides}
    order = list(sides)
    for round_ in range(a.warmup + a.requests):
        for name in variants:
            for side in order:
                took = sides[side].call(name)
                if round_ >= a.warmup:
                    times[side][name].append(took)
            order.reverse()
    print(
        f'# GET /api/{a.resource}?range=[0,999]&sort={a.sort}, {a.contacts} contacts, '
        f'{"postgresql" if a.pg else "sqlite"}, {a.requests} requests each, load average {os.getloadavg()[0]:.1f}'
        + (f'; before: {a.before} ({sides["before"].commit}), after: {sides["after"].commit}' if a.before else '')
    )
    for side, took in times.items():
        if len(sides) > 1:
            print(f'## {side}')
        report(took)
    return 0


def report(times):
    """Median and mean wall time of each variant, and its ratios to the plain page's (wall and CPU)."""
    plain = statistics.median(wall for wall, _ in times['plain'])
    plain_cpu = statistics.median(cpu for _, cpu in times['plain'])
    for name, took in times.items():
        median, cpu = statistics.median(w for w, _ in took), statistics.median(c for _, c in took)
        label = 'plain' if name == 'plain' else f'embed={name}'
        print(
            f'{label:32} median {median * 1000:8.1f} ms   mean {statistics.mean(w for w, _ in took) * 1000:8.1f} ms'
            f'   x{median / plain:.2f}   cpu {cpu * 1000:7.1f} ms   x{cpu / plain_cpu:.2f}'
        )


class Side:
    """One checkout's app in a process of its own (`--worker`), asked for one request at a time."""

    def __init__(self, a, code, pg):
        argv = [sys.executable, os.path.abspath(__file__), '--worker', '--contacts', str(a.contacts)]
        argv += ['--resource', a.resource, '--sort', a.sort, *itertools.chain(*(('--embed', e) for e in a.embed or ()))]
        argv += ['--pg', pg] if pg else []
        env = dict(os.environ, EMBED_BENCH_CODE=code or os.path.dirname(HERE))
        if code:
            env['BENCH_DIR'] = os.path.join(os.environ.get('BENCH_DIR', '/tmp/crmapi-bench'), 'before')
        root = env['EMBED_BENCH_CODE']
        self.commit = subprocess.run(
            ['git', '-C', root, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True
        ).stdout.strip()
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self.process.stdout.readline().strip() != 'ready':
            raise SystemExit(f'the worker of {root} did not start')

    def call(self, name):
        self.process.stdin.write(name + '\n')
        self.process.stdin.flush()
        wall, cpu = map(float, self.process.stdout.readline().split())
        return wall, cpu


def serve(a, variants):
    """--worker: build the app on the data set, then answer each variant name read with `wall cpu` seconds."""
    data = dataset(a)
    from falcon.testing import create_environ

    from crmapi import create_app
    from crmapi.config import Settings

    app = create_app(Settings(database_url=data['url'], access_log=False))
    calls = {
        name: request(app, create_environ, data['token'], embed, a.resource, a.sort) for name, embed in variants.items()
    }
    print('ready', flush=True)
    for line in sys.stdin:
        wall, cpu = calls[line.strip()]()
        print(f'{wall} {cpu}', flush=True)
    return 0


def dataset(a):
    """The bench data set (loaded by bench/load_data.py on first use): its URL and the big organization's token."""
    settings = types.SimpleNamespace(
        contacts=a.contacts, data_dir=os.environ.get('BENCH_DIR', '/tmp/crmapi-bench'), load_timeout=3600
    )
    os.makedirs(settings.data_dir, exist_ok=True)
    return run.ensure_pg(settings, a.pg) if a.pg else run.ensure_sqlite(settings)


def request(app, create_environ, token, embed, resource='contacts', sort='last_name'):
    """A function that makes the request once and answers its wall and CPU time (checking it is a full page)."""
    query = f'range=[0,999]&sort={sort}' + ('' if embed is None else '&embed=' + embed)
    environ = create_environ(path=f'/api/{resource}', query_string=query, headers={'Authorization': f'Bearer {token}'})
    status = {}

    def start_response(line, headers, exc_info=None):
        status['line'] = line

    def call():
        env = dict(environ, **{'wsgi.input': io.BytesIO(b'')})
        started, cpu = time.perf_counter(), time.process_time()
        body = b''.join(app(env, start_response))
        took = time.perf_counter() - started, time.process_time() - cpu
        if not status['line'].startswith('200') or len(json.loads(body)) != 1000:
            raise SystemExit(f'{query}: {status["line"]} {body[:300]!r}')
        return took

    return call


if __name__ == '__main__':
    sys.exit(main())
