"""Get by id in-process: 2,000 `GET /api/contacts/{id}` (after 100 to warm up), gets per second of wall time and
per second of this process's CPU (the app's work, and SQLite's; PostgreSQL's runs in its own process).

    .venv/bin/python bench/get_bench.py sqlite:////tmp/crmapi-bench/crm-100000.db TOKEN
"""
import io
import sys
import time

from crmapi import create_app
from crmapi.config import Settings
from crmapi.db import connect

url, token = sys.argv[1], sys.argv[2]
db = connect(url)
app = create_app(Settings(database_url=url, access_log=False), db=db)
with db.transaction() as tx:
    ids = [r[0] for r in tx.rows('SELECT id FROM contacts ORDER BY id LIMIT 2000', [])]
def get(i):
    env = {'REQUEST_METHOD': 'GET', 'PATH_INFO': f'/api/contacts/{i}', 'QUERY_STRING': '', 'SERVER_NAME': 'x', 'SERVER_PORT': '80',
           'wsgi.url_scheme': 'http', 'wsgi.input': io.BytesIO(), 'wsgi.errors': sys.stderr, 'HTTP_AUTHORIZATION': 'Bearer ' + token}
    st = []
    b = b''.join(app(env, lambda s, h, e=None: st.append(s)))
    return st[0]
for i in ids[:100]: get(i)
c = time.process_time(); t = time.perf_counter()
n = 0
for i in ids:
    s = get(i); n += 1
wall = time.perf_counter() - t; cpu = time.process_time() - c
print(s, n, 'gets', round(n / wall), '/s wall', round(n / cpu), '/s cpu', round(wall / n * 1e6), 'us each')
