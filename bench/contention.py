#!/usr/bin/env python3
"""bench/contention.py - creates (or updates) from many clients into ONE organization, through gunicorn.

    .venv/bin/python bench/contention.py URL TOKEN [--tree DIR ...] [--clients 16] [--duration 10s] [--rounds 2]

For each --tree (a crmapi checkout: its code is what gunicorn imports; default: this one), in turn and
--rounds times: starts gunicorn as bench/run.py does (2 workers x 4 gthreads, loopback), then
`wrk -t2 -c<clients>` of `POST /api/contacts` (or `--kind update`: `PUT /api/contacts/{id}` over 200
contacts) of the token's organization (or of both, with --other-token) for --duration after a 2 s warm-up. Prints requests/s, p50 and p99
(ms), non-2xx answers, socket errors and the load average, one line per cell. On PostgreSQL every write of an
organization takes its change counter (the gap-free feed): this measures how long that serializes them
(--other-token: the same writes spread over two organizations, for comparison).
"""

import argparse
import json
import os
import re
import socket
import subprocess
import tempfile
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


def serve(tree, url, port):
    env = {**os.environ, 'PYTHONPATH': tree, 'CRMAPI_DATABASE_URL': url, 'CRMAPI_ACCESS_LOG': 'false'}
    # NOTE: the servers bench/run.py runs: 2 gthread workers x 4 threads, keep-alive 5 s
    argv = gunicorn_argv(types.SimpleNamespace(workers=2, threads_per_worker=4), port, 'crmapi:create_app()', tree)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
                out = subprocess.run(
                    ['wrk', '-t2', f'-c{a.clients}', f'-d{a.duration}', '-s', script.name, target],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                rate, p50, p99, bad, broken = re.search(r'RESULT (\S+) (\S+) (\S+) (\d+) (\d+)', out).groups()
                print(
                    f'round {round_ + 1} {tree}: {a.kind} {float(rate):.0f}/s p50 {p50} ms p99 {p99} ms '
                    f'non-2xx {bad} socket errors {broken} load {load:.1f}-{os.getloadavg()[0]:.1f}',
                    flush=True,
                )
                os.unlink(script.name)
            finally:
                proc.terminate()
                proc.wait()


if __name__ == '__main__':
    main()
