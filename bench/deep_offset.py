"""The PostgreSQL deep OFFSET page (offset 50,000, sorted by last name), timed in-process, and its SQL.

.venv/bin/python bench/load_data.py --contacts 100000 --pg URL --meta /tmp/deep.json
.venv/bin/python bench/deep_offset.py /tmp/deep.json
"""

import json
import sys
import time

import webtest

from crmapi import create_app
from crmapi import sqlbuild
from crmapi.config import Settings
from crmapi.db import connect

PATH = '/api/contacts?range=[50000,50024]&sort=last_name&order=ASC'


def main(meta_path):
    meta = json.load(open(meta_path))['targets']['postgresql']
    app = webtest.TestApp(create_app(Settings(database_url=meta['url'], access_log=False), db=connect(meta['url'])))
    headers = {'Authorization': 'Bearer ' + meta['token']}
    seen = []
    build_list = sqlbuild.build_list
    sqlbuild.build_list = lambda *a, **k: seen.append(build_list(*a, **k)) or seen[-1]
    app.get(PATH, headers=headers)
    times = []
    for _ in range(10):
        started = time.perf_counter()
        app.get(PATH, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    print(f'{PATH}: median {times[len(times) // 2]:.1f} ms, min {times[0]:.1f} ms over 10 requests')
    print(seen[-1][0])


if __name__ == '__main__':
    main(sys.argv[1])
