"""gunicorn settings for crmapi in production, behind deploy/nginx.conf.

    gunicorn --config deploy/gunicorn.conf.py 'crmapi:create_app()'

Read through crmapi's own Settings.from_env, as the app and the CLI read them, so the three cannot
disagree: CRMAPI_BIND (127.0.0.1:8000), CRMAPI_WORKERS (2 x CPUs + 1, at most 8), CRMAPI_THREADS (= the
PostgreSQL pool size, CRMAPI_POOL_MAX_SIZE, default 4), CRMAPI_STATEMENT_TIMEOUT_MS (15000),
CRMAPI_POOL_TIMEOUT_S (10), CRMAPI_PROXY_IPS (127.0.0.1). A bad value stops gunicorn before it forks.

CRMAPI_ENV_FILE names a file of KEY=VALUE lines (# comments) read at start and again on every SIGHUP:
its values win over the environment and reach the app's new workers. A failover is then an edit of
CRMAPI_DATABASE_URL there and `kill -HUP <master>` (a service manager's EnvironmentFile is read only at
start, and a HUP keeps the master's environment).
"""

import math
import os

from crmapi.config import Settings


def _env_file(path):
    """{KEY: VALUE} of an env file; a malformed line stops gunicorn with its line number."""
    found = {}
    if not path:
        return found
    with open(path, encoding='utf-8') as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            key, sep, value = line.partition('=')
            if not sep or not key.strip().isidentifier():
                raise ValueError(f'{path}:{number}: expected KEY=VALUE')
            found[key.strip()] = value.strip()
    return found


_file = _env_file(os.environ.get('CRMAPI_ENV_FILE'))
# NOTE: gunicorn sets these in its environment on (re)load, before it forks the new workers.
raw_env = [f'{key}={value}' for key, value in _file.items()]


settings = Settings.from_env({**os.environ, **_file})

# Loopback only: nginx is the one listener the world sees; gunicorn is never exposed directly.
bind = settings.bind

# Processes give CPU parallelism (Python runs one thread at a time per process); the cap keeps
# SQLite writers and PostgreSQL connections (workers x pool size) bounded on big machines.
workers = settings.workers

# Threads overlap the time a request waits on the database. One thread per pooled connection:
# more threads than connections would only queue inside the pool.
# crmapi's worker is gunicorn's gthread plus two things a client sees (crmapi/serving.py): a body the
# app refused unread (401, 404, 413, 415) is read and dropped, up to 4 MiB, before the answer goes out,
# so the client gets the answer instead of a connection reset; and gunicorn's own refusals of
# malformed requests (400, 431, 501, ...) are problem+json like the app's errors, not HTML.
worker_class = 'crmapi.serving.ThreadWorker'
threads = settings.threads

# The longest a legitimate request can take: wait for a pooled connection, then a statement that
# PostgreSQL cancels at statement_timeout (the app answers 503 for both), plus a margin to
# write the answer. Default: 10 s + 15 s + 5 s = 30 s.
_longest_request_s = math.ceil(settings.pool_timeout_s + settings.statement_timeout_ms / 1000) + 5

# A worker silent for longer than this is killed and replaced. It must exceed both database
# timeouts, so that the database gives up first and the client gets the app's 503, never a dead
# worker. (With gthread the heartbeat comes from the worker's main loop, so this catches a hung
# process rather than one slow request; the database timeouts bound those.)
timeout = _longest_request_s

# On SIGTERM (and on HUP/upgrade) workers stop accepting and get this long to finish in-flight
# requests before they are killed: as long as the longest legitimate request.
graceful_timeout = _longest_request_s

# nginx keeps idle connections to us open (upstream keepalive, its keepalive_timeout 50 s).
# gunicorn must hold them longer than nginx does, or nginx may send a request on a connection
# gunicorn is closing at that moment (a 502 for a POST, which nginx may not retry).
keepalive = 75

# 0 = no limit on the request line: long `filters=` URLs must reach the app, which answers with a
# JSON 400 naming the parameter. nginx bounds the line (large_client_header_buffers).
limit_request_line = 0

# X-Forwarded-* and the SCRIPT_NAME header are believed only from these peers: the proxy on
# loopback. From any other address gunicorn ignores them (scheme) or drops them (SCRIPT_NAME).
forwarded_allow_ips = settings.proxy_ips

# nginx sets exactly X-Forwarded-Proto. gunicorn's default also believes X-Forwarded-Ssl and
# X-Forwarded-Protocol, which nginx passes through from the client untouched: a forged
# `X-Forwarded-Ssl: on` would then contradict the real scheme and fail the request.
secure_scheme_headers = {'X-FORWARDED-PROTO': 'https'}

# The proxy passes the mount point (`/crm`) as a SCRIPT_NAME request header, which becomes the
# WSGI SCRIPT_NAME (and so the prefix of Location headers). Only from forwarded_allow_ips; the
# default also lets the proxy set PATH_INFO, which we never need.
forwarder_headers = 'SCRIPT_NAME'

# No preload: each worker imports and builds the app after fork, so SQLite connections and the
# PostgreSQL pool are opened in the process that uses them, never inherited from the master.
preload_app = False

# A request budget per API token and worker (token bucket; README "Rate limits"): one token gets at
# most CRMAPI_WORKERS x 600 requests a minute from this host. CRMAPI_RATE_LIMIT=0 turns it off.
os.environ.setdefault('CRMAPI_RATE_LIMIT', '600/60')

# Errors to stderr for the service manager (journald, docker) to collect. No gunicorn access log:
# nginx logs every request with its request id (deploy/nginx.conf).
accesslog = None
errorlog = '-'
loglevel = 'info'
