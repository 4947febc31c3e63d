"""Export throughput in-process: `GET /api/contacts` with `Accept: application/x-ndjson` or `text/csv`,
the whole body read, rows per second of wall time and of this process's CPU time.

    .venv/bin/python bench/export_bench.py sqlite:////tmp/crmapi-bench/crm-100000.db TOKEN ndjson
    .venv/bin/python bench/export_bench.py postgresql://…/crm_100000 TOKEN csv

CPU time counts the app's work (and SQLite's, which runs in this process; not PostgreSQL's, which runs
in its own). On a loaded machine wall time includes waiting for a core; CPU time does not.
"""

import io
import sys
import time

from crmapi import create_app
from crmapi.config import Settings
from crmapi.db import connect

ACCEPT = {'ndjson': 'application/x-ndjson', 'csv': 'text/csv'}


def environ(token, path, query='', **headers):
    """A WSGI environ of a GET of `path` with `token` and extra `headers` (HTTP_* names): the app called directly,
    no server, no socket (bench/get_bench.py uses it too)."""
    return {
        'REQUEST_METHOD': 'GET',
        'PATH_INFO': path,
        'QUERY_STRING': query,
        'SERVER_NAME': 'bench',
        'SERVER_PORT': '80',
        'wsgi.url_scheme': 'http',
        'wsgi.input': io.BytesIO(),
        'wsgi.errors': sys.stderr,
        'HTTP_AUTHORIZATION': f'Bearer {token}',
        **headers,
    }


def export(app, token, fmt, query=''):
    """(status, lines, bytes) of one whole export."""
    env = environ(token, '/api/contacts', query, HTTP_ACCEPT=ACCEPT[fmt])
    status = []
    body = app(env, lambda s, headers, exc_info=None: status.append(s))
    lines = size = 0
    for chunk in body:
        lines += chunk.count(b'\n')
        size += len(chunk)
    getattr(body, 'close', lambda: None)()
    return status[0], lines, size


def main(url, token, fmt='ndjson', query=''):
    app = create_app(Settings(database_url=url, access_log=False), db=connect(url))
    cpu, wall = time.process_time(), time.perf_counter()
    status, lines, size = export(app, token, fmt, query)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f'{fmt} {status}: {lines:,} lines, {size:,} bytes in {wall:.2f} s wall ({lines / wall:,.0f} rows/s), '
        f'{cpu:.2f} s CPU ({lines / cpu:,.0f} rows per CPU second)'
    )


if __name__ == '__main__':
    main(*sys.argv[1:])
