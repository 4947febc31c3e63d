#!/usr/bin/env python3
"""bench/walk_prepared.py - one list page's walk statement run 12 times on one PostgreSQL connection, ms per run.

    .venv/bin/python bench/walk_prepared.py /tmp/peer-bench/crm-100000.pg-55449.json \\
        '{"filters":[{"field":"last_name","op":"contains","value":"mith"}]}'

Shows whether a statement degrades once it is prepared (psycopg prepares after 5 runs; PostgreSQL may then plan it
generically). The first argument is a data set's meta file (bench/run.py's loader writes it).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crmapi import db as dbm  # noqa: E402
from crmapi import sqlbuild  # noqa: E402
from crmapi.app import build_services  # noqa: E402
from crmapi.query import parse_list  # noqa: E402


def main(meta_path, params, runs=12):
    meta = json.load(open(meta_path))['targets']['postgresql']
    database = dbm.connect(meta['url'])
    info = build_services(database).catalog.resolve('contacts')
    lq = parse_list({k: json.dumps(v) for k, v in json.loads(params).items()}, info)
    sql, values = sqlbuild.build_walk(database.dialect, info, meta['org_id'], lq, sqlbuild.walking.WALK, False)
    times = []
    with database.transaction() as tx:
        for _ in range(runs):
            start = time.perf_counter()
            tx.rows(sql, values)
            times.append(round((time.perf_counter() - start) * 1000, 1))
    print(times)


if __name__ == '__main__':
    main(*sys.argv[1:3])
