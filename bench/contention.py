#!/usr/bin/env python3
"""bench/contention.py - creates (or updates) from many clients into ONE organization, through gunicorn.

    .venv/bin/python bench/contention.py URL TOKEN [--tree DIR ...] [--clients 16] [--duration 10s] [--rounds 2]

For each --tree (a crmapi checkout: its code is what gunicorn imports; default: this one), in turn and
--rounds times: starts gunicorn as bench/run.py does (2 workers x 4 gthreads, loopback), then
`wrk -t2 -c<clients>` of `POST /api/contacts` (or `--kind update`: `PUT /api/contacts/{id}` over 200
contacts) of the token's organization (or of both, with --other-token) for --duration after a 2 s warm-up.
Prints requests/s, p50 and p99 (ms), non-2xx answers, socket errors and the load average, one line per cell.

Before migration 0024 every write of an organization took its change counter row on PostgreSQL (the gap-free
feed) and held it until COMMIT: this measures whether one organization's writes serialize (--other-token: the
same writes spread over two organizations, for comparison). --poll: one more client reads TOKEN's organization's
change feed meanwhile, as a sync client does (`GET /api/changes?after=`, 1,000 at a time, 50 ms apart when it is
caught up), and reports how many changes it read and any gap in their `seq`.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import types
import urllib.request

from run import gunicorn_argv  # bench/run.py, beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = r"""
local n = 0
request = function()
  n = n + 1
  local k = (n %% #tokens) + 1
  local auth = {["Authorization"] = "Bearer " .. tokens[k], ["Content-Type"] = "application/json"}
  if "%(kind)s" == "create" then
    return wrk.format("POST", "/api/contacts", auth,
      '{"first_name":"Bench","last_name":"User' .. n .. '","email":"bench-' .. n .. '@bench.invalid","city":"London","status":"warm","title":"Engineer"}')
  end
  local id = ids[k][(math.floor(n / #tokens) %% #ids[k]) + 1]
  return wrk.format("PUT", "/api/contacts/" .. id, auth, '{"title":"Bench ' .. n .. '","status":"hot"}')
end
wrk.headers["Authorization"] = "Bearer %(token)s"
tokens = {%(tokens)s}
wrk.headers["Content-Type"] = "application/json"
ids = {%(ids)s}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%.1f %%.2f %%.2f %%d %%d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def sample_ids(token, port):
    request = urllib.request.Request(
        f'http://127.0.0.1:{port}/api/contacts?range=[0,199]', headers={'Authorization': 'Bearer ' + token}
    )
    with urllib.request.urlopen(request) as answer:
        return [r['id'] for r in json.load(answer)]


def call(port, token, method, path, body=None):
    request = urllib.request.Request(
        f'http://127.0.0.1:{port}{path}',
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'},
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


class Poller(threading.Thread):
    """Reads the organization's change feed until stopped, from a change made when it starts (a new contact's,
    read back from its history): how many changes it read, and how many did not follow the one before."""

    def __init__(self, token, port):
        super().__init__(daemon=True)
        self.token, self.port, self.stopped = token, port, threading.Event()
        self.read = self.gaps = 0
        mark = call(port, token, 'POST', '/api/contacts', {'first_name': 'Poller', 'last_name': 'Mark'})
        (self.after,) = [c['seq'] for c in call(port, token, 'GET', f'/api/contacts/{mark["id"]}/history')]

    def run(self):
        while not self.stopped.is_set():
            rows = call(self.port, self.token, 'GET', f'/api/changes?after={self.after}&limit=1000')
            for row in rows:
                self.gaps += row['seq'] != self.after + 1
                self.after = row['seq']
            self.read += len(rows)
            if not rows:
                time.sleep(0.05)


def serve(tree, url, port):
    env = {**os.environ, 'PYTHONPATH': tree, 'CRMAPI_DATABASE_URL': url, 'CRMAPI_ACCESS_LOG': 'false'}
    # NOTE: the servers bench/run.py runs: 2 gthread workers x 4 threads, keep-alive 5 s
    argv = gunicorn_argv(types.SimpleNamespace(workers=2, threads_per_worker=4), port, 'crmapi:create_app()', tree)
    # NOTE: started in `tree`: `python -m gunicorn` puts its working directory first on sys.path, before PYTHONPATH,
    # so started anywhere else it would serve that directory's crmapi, whatever the tree
    proc = subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f'gunicorn for {tree} exited (port {port} taken?)')
        try:
            urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f'gunicorn for {tree} did not start')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('url')
    p.add_argument('token')
    p.add_argument('--tree', action='append')
    p.add_argument('--kind', default='create', choices=['create', 'update'])
    p.add_argument('--clients', type=int, default=16)
    p.add_argument('--other-token', help="writes alternate between TOKEN's organization and this token's")
    p.add_argument('--duration', default='10s')
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--port', type=int, help='default: a free one')
    p.add_argument('--poll', action='store_true', help="read TOKEN's organization's change feed meanwhile")
    a = p.parse_args(argv)
    trees = a.tree or [os.path.dirname(HERE)]
    if a.port is None:
        with socket.socket() as probe:
            probe.bind(('127.0.0.1', 0))
            a.port = probe.getsockname()[1]
    for round_ in range(a.rounds):
        for tree in trees:
            proc = serve(tree, a.url, a.port)
            try:
                tokens = [t for t in (a.token, a.other_token) if t]
                ids = [sample_ids(t, a.port) for t in tokens]
                with tempfile.NamedTemporaryFile('w', suffix='.lua', delete=False) as script:
                    script.write(
                        LUA
                        % {
                            'kind': a.kind,
                            'token': a.token,
                            'tokens': ','.join(f'"{t}"' for t in tokens),
                            'ids': ','.join('{' + ','.join(f'"{i}"' for i in each) + '}' for each in ids),
                        }
                    )
                target = f'http://127.0.0.1:{a.port}'
                subprocess.run(
                    ['wrk', '-t2', f'-c{a.clients}', '-d2s', '-s', script.name, target], capture_output=True, check=True
                )
                load = os.getloadavg()[0]
                poller = Poller(a.token, a.port) if a.poll else None
                if poller:
                    poller.start()
                out = subprocess.run(
                    ['wrk', '-t2', f'-c{a.clients}', f'-d{a.duration}', '-s', script.name, target],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                if poller:
                    poller.stopped.set()
                    poller.join()
                rate, p50, p99, bad, broken = re.search(r'RESULT (\S+) (\S+) (\S+) (\d+) (\d+)', out).groups()
                feed = f' feed read {poller.read} gaps {poller.gaps}' if poller else ''
                print(
                    f'round {round_ + 1} {tree}: {a.kind} {float(rate):.0f}/s p50 {p50} ms p99 {p99} ms '
                    f'non-2xx {bad} socket errors {broken}{feed} load {load:.1f}-{os.getloadavg()[0]:.1f}',
                    flush=True,
                )
                os.unlink(script.name)
            finally:
                proc.terminate()
                proc.wait()


if __name__ == '__main__':
    main()
