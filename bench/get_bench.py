"""Get by id in-process: 2,000 `GET /api/contacts/{id}` (after 100 to warm up), gets per second of wall time and
per second of this process's CPU (the app's work, and SQLite's; PostgreSQL's runs in its own process).

    .venv/bin/python bench/get_bench.py sqlite:////tmp/crmapi-bench/crm-100000.db TOKEN
"""

import sys
import time

from crmapi import create_app
from crmapi.accounts import Accounts
from crmapi.config import Settings
from crmapi.db import connect
from export_bench import environ

GETS = 2000
WARM_UP = 100


def get(app, token, record_id):
    """The status of one GET of a contact."""
    env = environ(token, f'/api/contacts/{record_id}')
    status = []
    b''.join(app(env, lambda s, headers, exc_info=None: status.append(s)))
    return status[0]


def main(url, token):
    db = connect(url)
    app = create_app(Settings(database_url=url, access_log=False), db=db)
    org_id = Accounts(db).authenticate(token).org_id
    with db.transaction() as tx:
        ids = [
            row[0]
            for row in tx.rows(
                f'SELECT id FROM contacts WHERE organization_id = {db.dialect.parameter().get_sql()} '
                f'ORDER BY id LIMIT {GETS}',
                [org_id],
            )
        ]
    for record_id in ids[:WARM_UP]:
        get(app, token, record_id)
    cpu, wall = time.process_time(), time.perf_counter()
    statuses = {get(app, token, record_id) for record_id in ids}
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f'{len(ids)} gets {statuses}: {len(ids) / wall:,.0f}/s wall ({wall / len(ids) * 1e6:,.0f} µs each), '
        f'{len(ids) / cpu:,.0f} per CPU second'
    )


if __name__ == '__main__':
    main(*sys.argv[1:])
