"""Webhook delivery: one `crmapi worker` process to a local receiver.

    PYTHONPATH=. python bench/webhook_bench.py [--database URL] [--events 5000] [--samples 200]

1. throughput: --events changes are written with the worker stopped, then one worker is started: events
   received per second, from its start to the last receipt (targets: >= 500/s);
2. latency: with the worker running, one write at a time: p50/p95 from the write's commit to its receipt at
   the receiver (target p50 < 200 ms).
The database defaults to a fresh SQLite file in a temporary directory.
"""

import argparse
import http.server
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from crmapi.accounts import Accounts
from crmapi.accounts import Principal
from crmapi.services import build_services
from crmapi.cli import init_db
from crmapi.config import Settings
from crmapi.db import connect
from crmapi.webhooks import Webhooks


class Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self):
        self.received = {}  # record id -> time of receipt
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.0'

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                with server.lock:
                    server.received.setdefault(body['data']['record_id'], time.perf_counter())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(('127.0.0.1', 0), Handler)


def wait_for(receiver, ids, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with receiver.lock:
            if all(i in receiver.received for i in ids):
                return
        time.sleep(0.005)
    raise SystemExit(f'timed out: {sum(i in receiver.received for i in ids)} of {len(ids)} received')


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--database', help='a database URL (default: a new SQLite file)')
    p.add_argument('--events', type=int, default=5000)
    p.add_argument('--samples', type=int, default=200)
    args = p.parse_args()
    url = args.database or f'sqlite:///{tempfile.mkdtemp()}/bench.db'
    db = connect(url)
    init_db(db)
    store = build_services(db).store
    org = Accounts(db).create_org('webhook bench')
    principal = Principal.system(org)
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hooks = Webhooks(store, Settings(database_url=url, webhook_allow_private=True))
    hooks.create(principal, {'url': f'http://127.0.0.1:{receiver.server_port}/', 'events': ['tags.created']})
    tags = store.catalog.resolve('tags')
    env = {**os.environ, 'CRMAPI_WEBHOOK_ALLOW_PRIVATE': '1', 'CRMAPI_WEBHOOK_POLL_S': '0.02'}
    command = [sys.executable, '-m', 'crmapi', '--database', url, 'worker']

    ids = [
        r['id']
        for start in range(0, args.events, 1000)
        for r in store.create_many(
            tags, principal, [{'name': f'tag {i}'} for i in range(start, min(args.events, start + 1000))]
        )
    ]
    started = time.perf_counter()
    worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(receiver, ids)
        elapsed = max(receiver.received.values()) - started
        print(
            f'{db.name}: throughput {len(ids) / elapsed:.0f} events/s ({len(ids)} events in {elapsed:.2f} s, '
            'one worker, from its start)'
        )
        latencies = []
        for i in range(args.samples):
            (record,) = store.create_many(tags, principal, [{'name': f'sample {i}'}], batch=False)
            committed = time.perf_counter()
            wait_for(receiver, [record['id']])
            latencies.append((receiver.received[record['id']] - committed) * 1000)
        q = statistics.quantiles(latencies, n=100)
        print(
            f'{db.name}: commit-to-receipt latency p50 {statistics.median(latencies):.1f} ms, '
            f'p95 {q[94]:.1f} ms ({len(latencies)} writes one at a time, poll 20 ms)'
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


if __name__ == '__main__':
    main()
