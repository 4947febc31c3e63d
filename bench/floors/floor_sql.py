"""floor_sql.py - SQL floor: a bare Falcon app running the one hand-written SQL per request.

Same URL shapes as crmapi, contacts only, for one organization (FLOOR_ORG); no auth, no
whitelist machinery, no ORM or query builder, one connection per worker thread:

  GET  /api/contacts?range=[a,b]&sort=F&order=ASC|DESC[&filters=[{"field","op":"eq"|"contains","value"}]]
                    [&filter={"city": "London"}]
       -> SELECT <15 cols> FROM contacts WHERE organization_id = ? AND archived_at IS NULL [AND ...]
          ORDER BY F ASC [NULLS FIRST on PostgreSQL], id ASC LIMIT ? OFFSET ?  + SELECT COUNT(*), same WHERE
          (COUNT skipped when the first page is short, as crmapi does); Content-Range a-b/total
  GET  /api/contacts/{id}  -> SELECT ... WHERE organization_id = ? AND id = ?
  POST /api/contacts       -> INSERT ... RETURNING ...    (id: c_ + 26 base32 chars, like crmapi)
  PUT  /api/contacts/{id}  -> UPDATE ... SET <given columns>, updated_at = ? ... RETURNING ...

Env: FLOOR_DB = sqlite:///abs/path.db | postgresql://user@host:port/db ; FLOOR_ORG = org id.
SQLite connections get tuned pragmas (FLOOR_SQLITE_PRAGMAS overrides; default
journal_mode=WAL;synchronous=NORMAL;cache_size=-65536;mmap_size=268435456;temp_store=MEMORY;
busy_timeout=10000), autocommit. PostgreSQL: psycopg 3, autocommit, server-side prepared
statements after psycopg's default prepare_threshold (5 executions).
JSON columns are passed through (orjson.Fragment) on SQLite, native on PostgreSQL; encoder orjson.

    FLOOR_DB=sqlite:////tmp/crmapi-bench/crm-100000.db FLOOR_ORG=org_... \
      gunicorn -w 2 -k gthread --threads 4 --keep-alive 5 -b 127.0.0.1:18010 --chdir bench/floors floor_sql:app
"""

import base64
import datetime as dt
import os
import threading
import time

import falcon
import falcon.media
import orjson

DB = os.environ.get('FLOOR_DB', 'sqlite:////tmp/crmapi-bench/crm-100000.db')
ORG = os.environ.get('FLOOR_ORG', '')
IS_PG = DB.startswith('postgres')
PH = '%s' if IS_PG else '?'
PRAGMAS = os.environ.get(
    'FLOOR_SQLITE_PRAGMAS',
    'journal_mode=WAL;synchronous=NORMAL;cache_size=-65536;mmap_size=268435456;temp_store=MEMORY;busy_timeout=10000',
)
COLS = [
    'id',
    'first_name',
    'last_name',
    'email',
    'phone',
    'title',
    'status',
    'city',
    'company_id',
    'linkedin_url',
    'background',
    'tags',
    'created_at',
    'updated_at',
    'archived_at',
]
SEL = ', '.join(COLS)
TAGS = COLS.index('tags')
SORTABLE = set(COLS) - {'tags'}
WRITABLE = {
    'first_name',
    'last_name',
    'email',
    'phone',
    'title',
    'status',
    'city',
    'company_id',
    'linkedin_url',
    'background',
}
_B32 = bytes.maketrans(b'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567', b'0123456789abcdefghjkmnpqrstvwxyz')
_local = threading.local()


def conn():
    c = getattr(_local, 'conn', None)
    if c is None or getattr(_local, 'pid', None) != os.getpid():
        if IS_PG:
            import psycopg

            c = psycopg.connect(DB, autocommit=True)
        else:
            import sqlite3

            c = sqlite3.connect(DB[len('sqlite:///') :], isolation_level=None, check_same_thread=False)
            for p in filter(None, PRAGMAS.split(';')):
                c.execute('PRAGMA ' + p)
        _local.conn, _local.pid = c, os.getpid()
    return c


def q(sql, params=()):
    c = conn()
    if IS_PG:
        with c.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    return c.execute(sql, params).fetchall()


def record(row):
    d = dict(zip(COLS, row))
    if not IS_PG:
        d['tags'] = orjson.Fragment(row[TAGS])
    return d


def new_id(prefix='c_'):
    n = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), 'big')
    return prefix + base64.b32encode(n.to_bytes(20, 'big'))[6:].translate(_B32).decode()


def now():
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec='microseconds') + 'Z'


def json_param(req, name, default):
    raw = req.get_param(name)
    if raw is None:
        return default
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise falcon.HTTPBadRequest(description=f'bad JSON in {name}')


class Contacts:
    def on_get(self, req, resp):
        start, end = json_param(req, 'range', [0, 24])
        limit = end - start + 1
        where, args = [f'organization_id = {PH}', 'archived_at IS NULL'], [ORG]
        for k, v in json_param(req, 'filter', {}).items():
            if k not in SORTABLE:
                raise falcon.HTTPBadRequest(description='unknown field')
            where.append(f'{k} = {PH}')
            args.append(v)
        for f in json_param(req, 'filters', []):
            if f['field'] not in SORTABLE:
                raise falcon.HTTPBadRequest(description='unknown field')
            if f['op'] == 'eq':
                where.append(f'{f["field"]} = {PH}')
                args.append(f['value'])
            elif f['op'] == 'contains':
                where.append(f'{f["field"]} {"ILIKE" if IS_PG else "LIKE"} {PH}')
                args.append('%' + f['value'] + '%')
            else:
                raise falcon.HTTPBadRequest(description='floor supports eq and contains')
        sort = req.get_param('sort', default='id')
        order = req.get_param('order', default='ASC').upper()
        if sort not in SORTABLE or order not in ('ASC', 'DESC'):
            raise falcon.HTTPBadRequest(description='bad sort')
        w = ' AND '.join(where)
        # crmapi's order on both engines: NULLs smallest (SQLite's native order; PostgreSQL spells it,
        # which is also what its NULLS FIRST list indexes serve). id is never NULL.
        nulls = (' NULLS FIRST' if order == 'ASC' else ' NULLS LAST') if IS_PG and sort != 'id' else ''
        order_by = f'{sort} {order}{nulls}' + (f', id {order}' if sort != 'id' else '')
        rows = q(
            f'SELECT {SEL} FROM contacts WHERE {w} ORDER BY {order_by} LIMIT {PH} OFFSET {PH}', args + [limit, start]
        )
        if start == 0 and len(rows) < limit:
            total = len(rows)
        else:
            total = q(f'SELECT COUNT(*) FROM contacts WHERE {w}', args)[0][0]
        resp.media = [record(r) for r in rows]
        resp.set_header(
            'Content-Range', f'contacts {start}-{start + len(rows) - 1}/{total}' if rows else f'contacts */{total}'
        )

    def on_post(self, req, resp):
        body = req.get_media() or {}
        rec = {k: v for k, v in body.items() if k in WRITABLE}
        stamp = now()
        rec.update(id=new_id(), organization_id=ORG, created_at=stamp, updated_at=stamp)
        cols = list(rec)
        rows = q(
            f'INSERT INTO contacts ({", ".join(cols)}) VALUES ({", ".join([PH] * len(cols))}) RETURNING {SEL}',
            [rec[c] for c in cols],
        )
        resp.status = falcon.HTTP_201
        resp.media = record(rows[0])


class Contact:
    def on_get(self, req, resp, id):
        rows = q(f'SELECT {SEL} FROM contacts WHERE organization_id = {PH} AND id = {PH}', (ORG, id))
        if not rows:
            raise falcon.HTTPNotFound()
        resp.media = record(rows[0])

    def on_put(self, req, resp, id):
        body = req.get_media() or {}
        changes = {k: v for k, v in body.items() if k in WRITABLE}
        changes['updated_at'] = now()
        sets = ', '.join(f'{k} = {PH}' for k in changes)
        rows = q(
            f'UPDATE contacts SET {sets} WHERE organization_id = {PH} AND id = {PH} RETURNING {SEL}',
            list(changes.values()) + [ORG, id],
        )
        if not rows:
            raise falcon.HTTPNotFound()
        resp.media = record(rows[0])


def create_app():
    app = falcon.App()
    handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.req_options.media_handlers[falcon.MEDIA_JSON] = handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler
    app.add_route('/api/contacts', Contacts())
    app.add_route('/api/contacts/{id}', Contact())
    return app


app = create_app()
