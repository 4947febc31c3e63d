#!/usr/bin/env python3
"""bench/embed_bench.py - what `embed` costs: a 1,000-row contacts page, plain and with embeds.

    .venv/bin/python bench/embed_bench.py                        # 100k contacts, SQLite
    .venv/bin/python bench/embed_bench.py --pg postgresql://postgres@127.0.0.1:55439/postgres
    .venv/bin/python bench/embed_bench.py --contacts 1000000 --requests 20
    .venv/bin/python bench/embed_bench.py --resource companies --sort name --embed '["contacts","deals"]'

Loads (once, into BENCH_DIR, default /tmp/crmapi-bench) the data set bench/run.py uses: the big
organization's N contacts, 90 % of them at a company, 0-2 tags each, N/5 contact notes. Builds crmapi's
WSGI app in-process and calls it directly (no server, no sockets): `GET /api/contacts?range=[0,999]
&sort=last_name`, plain and with each `--embed` set, --warmup times then --requests times each,
interleaved so that a slower moment of the machine weighs on every variant alike. Prints the median
and mean milliseconds of each and the ratio of the medians to the plain page's; the aim is at most 2x
for two embeds. Also the median CPU time of this process (on SQLite: the whole request, the database
included; on PostgreSQL: the app's share), which other processes on the machine disturb less than
the wall time. --resource/--sort: another page (companies, deals). Nothing is asserted: it measures.
"""

import argparse
import io
import json
import os
import statistics
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))
import run  # noqa: E402  (the data sets: loaded once, reused)

DEFAULT_EMBEDS = (
    '["company","tags"]',
    '["company","notes"]',
    '["deals","notes"]',  # contacts' relations
    '["company","tasks"]',
)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument('--contacts', type=int, default=100_000)
    p.add_argument('--pg', metavar='URL', help='a PostgreSQL server URL (the data set goes into crm_<contacts>)')
    p.add_argument('--embed', action='append', help=f'an embed value to time (default: {", ".join(DEFAULT_EMBEDS)})')
    p.add_argument('--requests', type=int, default=30)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--resource', default='contacts', help='the resource listed (default: contacts)')
    p.add_argument('--sort', default='last_name', help='its sort field (default: last_name)')
    a = p.parse_args(argv)
    data = dataset(a)
    from falcon.testing import create_environ

    from crmapi import create_app
    from crmapi.config import Settings

    app = create_app(Settings(database_url=data['url'], access_log=False))
    variants = {'plain': None, **{embed: embed for embed in a.embed or DEFAULT_EMBEDS}}
    calls = {
        name: request(app, create_environ, data['token'], embed, a.resource, a.sort) for name, embed in variants.items()
    }
    times = {name: [] for name in variants}
    for round_ in range(a.warmup + a.requests):
        for name, call in calls.items():
            took = call()
            if round_ >= a.warmup:
                times[name].append(took)
    plain = statistics.median(wall for wall, _ in times['plain'])
    plain_cpu = statistics.median(cpu for _, cpu in times['plain'])
    print(
        f'# GET /api/{a.resource}?range=[0,999]&sort={a.sort}, {a.contacts} contacts, '
        f'{data["url"].split("://")[0]}, {a.requests} requests each, load average {os.getloadavg()[0]:.1f}'
    )
    for name, took in times.items():
        median, cpu = statistics.median(w for w, _ in took), statistics.median(c for _, c in took)
        label = 'plain' if name == 'plain' else f'embed={name}'
        print(
            f'{label:32} median {median * 1000:8.1f} ms   mean {statistics.mean(w for w, _ in took) * 1000:8.1f} ms'
            f'   x{median / plain:.2f}   cpu {cpu * 1000:7.1f} ms   x{cpu / plain_cpu:.2f}'
        )
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
