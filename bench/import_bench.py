#!/usr/bin/env python3
"""bench/import_bench.py - how fast `crmapi import` loads a contacts CSV, and in how much memory.

    .venv/bin/python bench/import_bench.py                          # 100,000 contacts, SQLite only
    CRMAPI_BENCH_PG_URL=postgresql://postgres@127.0.0.1:55439/postgres .venv/bin/python bench/import_bench.py
    .venv/bin/python bench/import_bench.py --rows 1000000 --db postgresql --pg-url postgresql://…/postgres

For each database it (1) writes N contacts as CSV (deterministic: --seed), once, under --dir;
(2) makes a fresh database (a SQLite file; on PostgreSQL a database `crmapi_import_bench` on the
server of --pg-url / CRMAPI_BENCH_PG_URL, dropped and created again) and an organization;
(3) times `crmapi import --org ORG contacts FILE --batch B` as a child process, and reads its
peak RSS from the child's rusage (os.wait4); (4) in this process, through the WSGI app (no HTTP
server), times --single single-record `POST /api/contacts` and one `POST /api/contacts` of the
same CSV (Content-Type: text/csv, --api-rows rows of it), for comparison. Prints a markdown table.

Timings vary with the machine and its load: nothing here is a pass/fail threshold.
"""
import argparse
import csv
import io
import json
import os
import random
import subprocess
import sys
import time
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

FIELDS = ['first_name', 'last_name', 'email', 'phone', 'title', 'status', 'city', 'background']
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
            out.writerow([first, last, f'{first.lower()}.{n}@bench.invalid', f'+44 20 {n % 10_000:04d} {n % 997:04d}',
                          rnd.choice(TITLES), rnd.choice(STATUSES), rnd.choice(CITIES),
                          '' if n % 3 else f'Met at conference {n % 50},\nfollow up in Q{n % 4 + 1}'])


def crmapi(url, *args, capture=True):
    env = {**os.environ, 'CRMAPI_DATABASE_URL': url, 'PYTHONPATH': ROOT}
    result = subprocess.run([sys.executable, '-m', 'crmapi', *args], env=env, text=True,
                            capture_output=capture, check=False)
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
    org = crmapi(url, 'create-org', 'Import Bench', '--allow-duplicate')
    token = crmapi(url, 'create-token', '--org', org, '--email', 'bench@bench.invalid', '--admin')
    return url, org, token


def timed_cli_import(url, org, path, batch):
    """(seconds, peak RSS in MiB) of `crmapi import` as a child process."""
    env = {**os.environ, 'CRMAPI_DATABASE_URL': url, 'PYTHONPATH': ROOT}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, '-m', 'crmapi', 'import', '--org', org, 'contacts', path,
                              '--batch', str(batch)], env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    err = child.stderr.read().decode()
    if child.returncode != 0:
        sys.exit(f'crmapi import failed:\n{err}')
    return seconds, usage.ru_maxrss / 1024   # Linux: KiB


class Wsgi:
    """Requests straight into the app, as a server would make them (no sockets)."""

    def __init__(self, url, token):
        from crmapi import create_app
        from crmapi.config import Settings
        self.app = create_app(Settings(database_url=url, access_log=False, max_import_bytes=1 << 40))
        self.token = token

    def post(self, path, body, content_type):
        environ = {
            'REQUEST_METHOD': 'POST', 'PATH_INFO': path, 'QUERY_STRING': '', 'SERVER_NAME': 'bench',
            'SERVER_PORT': '80', 'SERVER_PROTOCOL': 'HTTP/1.1', 'wsgi.url_scheme': 'http',
            'wsgi.input': io.BytesIO(body), 'wsgi.errors': sys.stderr, 'wsgi.version': (1, 0),
            'wsgi.multithread': False, 'wsgi.multiprocess': False, 'wsgi.run_once': False,
            'CONTENT_TYPE': content_type, 'CONTENT_LENGTH': str(len(body)),
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
        wsgi.post('/api/contacts', json.dumps({'first_name': 'Single', 'last_name': f'Post {n}',
                                               'email': f'single.{n}@bench.invalid', 'city': 'London'}).encode(),
                  'application/json')
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
    p.add_argument('--pg-url', default=os.environ.get('CRMAPI_BENCH_PG_URL'),
                   help='a PostgreSQL server (any database on it; default: $CRMAPI_BENCH_PG_URL)')
    p.add_argument('--dir', default='/tmp/crmapi-import-bench', help='where the CSV and the SQLite database go')
    p.add_argument('--seed', type=int, default=9)
    args = p.parse_args()
    databases = (args.db or ('sqlite,postgresql' if args.pg_url else 'sqlite')).split(',')
    if 'postgresql' in databases and not args.pg_url:
        sys.exit('PostgreSQL needs --pg-url or CRMAPI_BENCH_PG_URL')
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f'contacts-{args.rows}-{args.seed}.csv')
    if not os.path.exists(path):
        generate(path, args.rows, args.seed)
    size = os.path.getsize(path) / (1 << 20)
    print(f'{args.rows:,} contacts, {size:.1f} MiB: {path}\n', file=sys.stderr)

    lines = ['| database | rows | crmapi import s | rows/s | peak RSS MiB | API CSV POST rows/s | single POST rows/s |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for db in databases:
        url, org, token = fresh_database(db, args.dir, args.pg_url)
        seconds, rss = timed_cli_import(url, org, path, args.batch)
        wsgi = Wsgi(url, token)
        csv_rate = api_csv_post(wsgi, path, min(args.api_rows, args.rows))
        single_rate = single_posts(wsgi, args.single)
        lines.append(f'| {db} | {args.rows:,} | {seconds:.1f} | {args.rows / seconds:,.0f} | {rss:.0f} | '
                     f'{csv_rate:,.0f} | {single_rate:,.0f} |')
        print(lines[-1], file=sys.stderr)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
