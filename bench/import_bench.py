#!/usr/bin/env python3
"""bench/import_bench.py - how fast `crmapi import` loads a contacts CSV, and in how much memory.

    .venv/bin/python bench/import_bench.py                          # 100,000 contacts, SQLite only
    CRMAPI_BENCH_PG_URL=postgresql://postgres@127.0.0.1:55439/postgres .venv/bin/python bench/import_bench.py
    .venv/bin/python bench/import_bench.py --rows 1000000 --db postgresql --pg-url postgresql://…/postgres
    .venv/bin/python bench/import_bench.py --rows 1000000 --interrupt kill --at-rows 400000   # kill -9, resume

For each database it (1) writes N contacts as CSV (deterministic: --seed), once, under --dir;
(2) makes a fresh database (a SQLite file; on PostgreSQL a database `crmapi_import_bench` on the
server of --pg-url / CRMAPI_BENCH_PG_URL, dropped and created again) and an organization;
(3) times `crmapi import --org ORG contacts FILE --batch B` as a child process, and reads its
peak RSS from the child's rusage (os.wait4); (4) in this process, through the WSGI app (no HTTP
server), times --single single-record `POST /api/contacts` and one `POST /api/contacts` of the
same CSV (Content-Type: text/csv, --api-rows rows of it), for comparison. Prints a markdown table.

With --interrupt kill (SIGKILL) or int (SIGINT, Ctrl-C), step (3) is instead: start the import, send the
signal once --at-rows contacts have landed, then run it again with `--on-conflict external_id` (the
resume), and check that every contact of the file landed exactly once: the count, and an MD5 of the
sorted external ids against the file's.

Timings vary with the machine and its load: nothing here is a pass/fail threshold.
"""

import argparse
import csv
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

FIELDS = ['external_id', 'first_name', 'last_name', 'email', 'phone', 'title', 'status', 'city', 'background']
FIRST = ['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken', 'Margaret', 'Linus']
LAST = ['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen', 'Thompson', 'Hamilton', "O'Neil"]
CITIES = ['London', 'Paris', 'Zürich', 'New York', 'Tokyo', 'São Paulo', 'Berlin', 'Lagos']
STATUSES = ['cold', 'warm', 'hot', 'in-contract']
TITLES = ['Engineer', 'CTO', 'Head of "Sales"', '=Analyst', 'Director, EMEA']


def generate(path, rows, seed):
    """N contacts as CSV, with the cells an import must handle: quotes, commas, line breaks, formulas."""
    rnd = random.Random(seed)
    with open(path, 'w', newline='', encoding='utf-8') as f:
        out = csv.writer(f, lineterminator='\r\n')
        out.writerow(FIELDS)
        for n in range(rows):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            out.writerow(
                [
                    external_id(n),
                    first,
                    last,
                    f'{first.lower()}.{n}@bench.invalid',
                    f'+44 20 {n % 10_000:04d} {n % 997:04d}',
                    rnd.choice(TITLES),
                    rnd.choice(STATUSES),
                    rnd.choice(CITIES),
                    '' if n % 3 else f'Met at conference {n % 50},\nfollow up in Q{n % 4 + 1}',
                ]
            )


def external_id(n):
    return f'ext-{n:08d}'  # NOTE: zero-padded, so that sorting them as text sorts them by number


def crmapi(url, *args, capture=True):
    env = {**os.environ, 'CRMAPI_DATABASE_URL': url, 'PYTHONPATH': ROOT}
    result = subprocess.run(
        [sys.executable, '-m', 'crmapi', *args], env=env, text=True, capture_output=capture, check=False
    )
    if result.returncode != 0:
        sys.exit(f'crmapi {" ".join(args)} failed:\n{result.stderr}')
    return result.stdout.strip()


def fresh_database(db, directory, pg_url):
    """The URL of an empty, migrated database, with an organization and an administrator's token."""
    if db == 'sqlite':
        path = os.path.join(directory, 'import-bench.db')
        for suffix in ('', '-wal', '-shm'):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        url = f'sqlite:///{path}'
    else:
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute('DROP DATABASE IF EXISTS crmapi_import_bench WITH (FORCE)')
            conn.execute('CREATE DATABASE crmapi_import_bench')
        url = urlunsplit(urlsplit(pg_url)._replace(path='/crmapi_import_bench'))
    crmapi(url, 'init-db')
    return (url, *organization(url, 'Import Bench'))


def organization(url, name):
    """(id, an administrator's token) of a new organization."""
    org = crmapi(url, 'create-org', name, '--allow-duplicate')
    return org, crmapi(url, 'create-token', '--org', org, '--email', 'bench@bench.invalid', '--admin')


def start_import(url, org, path, batch, *more):
    env = {**os.environ, 'CRMAPI_DATABASE_URL': url, 'PYTHONPATH': ROOT}
    return subprocess.Popen(
        [sys.executable, '-m', 'crmapi', 'import', '--org', org, 'contacts', path, '--batch', str(batch), *more],
        env=env,
        stderr=subprocess.PIPE,
    )


def finished(child, started, expect=0):
    """(seconds, peak RSS in MiB, CPU seconds) of a child `crmapi import`, once it has exited."""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    err = child.stderr.read().decode()
    if child.returncode != expect:
        sys.exit(f'crmapi import exited {child.returncode}:\n{err}')
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # Linux: KiB


def timed_cli_import(url, org, path, batch, *more):
    """(seconds, peak RSS in MiB, CPU seconds) of `crmapi import` as a child process."""
    started = time.perf_counter()
    return finished(start_import(url, org, path, batch, *more), started)


def connect(url):
    if url.startswith('sqlite:///'):
        import sqlite3

        return sqlite3.connect(url[len('sqlite:///') :]), '?'
    import psycopg

    return psycopg.connect(url, autocommit=True), '%s'


def landed(url, org):
    """(how many contacts `org` has, an MD5 of their external ids sorted, how many distinct ones)."""
    conn, mark = connect(url)
    try:
        digest, count = hashlib.md5(), 0
        ids = conn.execute(
            f'SELECT external_id FROM contacts WHERE organization_id = {mark} ORDER BY external_id', (org,)
        )
        for count, (value,) in enumerate(ids, 1):
            digest.update(f'{value}\n'.encode())
        (distinct,) = conn.execute(
            f'SELECT count(DISTINCT external_id) FROM contacts WHERE organization_id = {mark}', (org,)
        ).fetchone()
        return count, digest.hexdigest(), distinct
    finally:
        conn.close()


def expected(rows):
    digest = hashlib.md5()
    for n in range(rows):
        digest.update(f'{external_id(n)}\n'.encode())
    return rows, digest.hexdigest(), rows


def interrupted_and_resumed(url, org, path, args):
    """Import, signal the import once --at-rows contacts landed, import again with --on-conflict external_id."""
    conn, mark = connect(url)
    started = time.perf_counter()
    child = start_import(url, org, path, args.batch)
    try:
        while (
            conn.execute(f'SELECT count(*) FROM contacts WHERE organization_id = {mark}', (org,)).fetchone()[0]
            < args.at_rows
        ):
            if child.poll() is not None:
                sys.exit('the import ended before it could be interrupted: raise --rows or lower --at-rows')
            time.sleep(0.05)
    finally:
        conn.close()
    child.send_signal(signal.SIGKILL if args.interrupt == 'kill' else signal.SIGINT)
    first = finished(child, started, expect=-9 if args.interrupt == 'kill' else 1)
    before = landed(url, org)
    again = timed_cli_import(url, org, path, args.batch, '--on-conflict', 'external_id')
    after, wanted = landed(url, org), expected(args.rows)
    print(
        f'interrupted ({args.interrupt}) after {first[0]:.1f} s with {before[0]:,} contacts landed; resumed in '
        f'{again[0]:.1f} s (CPU {again[2]:.1f} s, peak RSS {again[1]:.0f} MiB): {after[0]:,} contacts, '
        f'{after[2]:,} distinct external ids, MD5 {after[1]}; the file: {wanted[0]:,}, MD5 {wanted[1]} -> '
        f'{"SAME" if after == wanted else "DIFFERENT"}',
        file=sys.stderr,
    )
    return after == wanted


class Wsgi:
    """Requests straight into the app, as a server would make them (no sockets)."""

    def __init__(self, url, token):
        from crmapi import create_app
        from crmapi.config import Settings

        self.app = create_app(Settings(database_url=url, access_log=False, max_import_bytes=1 << 40))
        self.token = token

    def post(self, path, body, content_type):
        environ = {
            'REQUEST_METHOD': 'POST',
            'PATH_INFO': path,
            'QUERY_STRING': '',
            'SERVER_NAME': 'bench',
            'SERVER_PORT': '80',
            'SERVER_PROTOCOL': 'HTTP/1.1',
            'wsgi.url_scheme': 'http',
            'wsgi.input': io.BytesIO(body),
            'wsgi.errors': sys.stderr,
            'wsgi.version': (1, 0),
            'wsgi.multithread': False,
            'wsgi.multiprocess': False,
            'wsgi.run_once': False,
            'CONTENT_TYPE': content_type,
            'CONTENT_LENGTH': str(len(body)),
            'HTTP_AUTHORIZATION': f'Bearer {self.token}',
        }
        seen = {}
        result = b''.join(self.app(environ, lambda status, headers, exc_info=None: seen.update(status=status)))
        if not seen['status'].startswith(('200', '201')):
            sys.exit(f'POST {path}: {seen["status"]} {result[:300]!r}')
        return json.loads(result)


def single_posts(wsgi, count):
    """Records a second, one `POST /api/contacts` (one transaction) each."""
    started = time.perf_counter()
    for n in range(count):
        wsgi.post(
            '/api/contacts',
            json.dumps(
                {
                    'first_name': 'Single',
                    'last_name': f'Post {n}',
                    'email': f'single.{n}@bench.invalid',
                    'city': 'London',
                }
            ).encode(),
            'application/json',
        )
    return count / (time.perf_counter() - started)


def api_csv_post(wsgi, path, rows):
    """Records a second of one `POST /api/contacts` with the first `rows` rows of the CSV (one transaction)."""
    with open(path, encoding='utf-8', newline='') as f:
        reader = csv.reader(f)
        buffer = io.StringIO()
        out = csv.writer(buffer, lineterminator='\r\n')
        for n, cells in enumerate(reader):
            if n > rows:
                break
            out.writerow(cells)
    body = buffer.getvalue().encode()
    started = time.perf_counter()
    answer = wsgi.post('/api/contacts', body, 'text/csv')
    return answer['created'] / (time.perf_counter() - started)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--rows', type=int, default=100_000, help='contacts in the CSV')
    p.add_argument('--batch', type=int, default=1000, help='crmapi import --batch')
    p.add_argument('--single', type=int, default=1000, help='single-record POSTs timed for comparison')
    p.add_argument('--api-rows', type=int, default=10_000, help='rows of the CSV posted to the API in one request')
    p.add_argument('--db', default=None, help='sqlite, postgresql or both (default: both if a PostgreSQL URL is set)')
    p.add_argument(
        '--pg-url',
        default=os.environ.get('CRMAPI_BENCH_PG_URL'),
        help='a PostgreSQL server (any database on it; default: $CRMAPI_BENCH_PG_URL)',
    )
    p.add_argument('--dir', default='/tmp/crmapi-import-bench', help='where the CSV and the SQLite database go')
    p.add_argument('--seed', type=int, default=9)
    p.add_argument('--interrupt', choices=('kill', 'int'), help='interrupt the import (SIGKILL or SIGINT), resume it')
    p.add_argument('--at-rows', type=int, default=None, help='with --interrupt: when (default: half of --rows)')
    args = p.parse_args()
    args.at_rows = args.at_rows or args.rows // 2
    databases = (args.db or ('sqlite,postgresql' if args.pg_url else 'sqlite')).split(',')
    if 'postgresql' in databases and not args.pg_url:
        sys.exit('PostgreSQL needs --pg-url or CRMAPI_BENCH_PG_URL')
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f'contacts-{args.rows}-{args.seed}-ext.csv')
    if not os.path.exists(path):
        generate(path, args.rows, args.seed)
    size = os.path.getsize(path) / (1 << 20)
    print(f'{args.rows:,} contacts, {size:.1f} MiB: {path}\n', file=sys.stderr)

    if args.interrupt:
        same = [interrupted_and_resumed(*fresh_database(db, args.dir, args.pg_url)[:2], path, args) for db in databases]
        sys.exit(0 if all(same) else 1)
    lines = [
        '| database | rows | crmapi import s | rows/s | CPU s | peak RSS MiB | API CSV POST rows/s | '
        'single POST rows/s | load avg |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---|',
    ]
    for db in databases:
        url, org, _ = fresh_database(db, args.dir, args.pg_url)
        load = os.getloadavg()[0]
        seconds, rss, cpu = timed_cli_import(url, org, path, args.batch)
        load = f'{load:.1f}–{os.getloadavg()[0]:.1f}'
        wsgi = Wsgi(url, organization(url, 'Import Bench API')[1])  # NOTE: the same external ids, another org
        csv_rate = api_csv_post(wsgi, path, min(args.api_rows, args.rows))
        single_rate = single_posts(wsgi, args.single)
        lines.append(
            f'| {db} | {args.rows:,} | {seconds:.1f} | {args.rows / seconds:,.0f} | {cpu:.1f} | {rss:.0f} | '
            f'{csv_rate:,.0f} | {single_rate:,.0f} | {load} |'
        )
        print(lines[-1], file=sys.stderr)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
