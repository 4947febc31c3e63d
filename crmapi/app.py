"""The WSGI application: routes, middleware and the one place errors become HTTP answers."""

import logging
import os
import random
import re
import secrets
import select
import sys
import threading
import time
import traceback

import falcon
import orjson

from . import api
from . import duplicates
from . import sqlbuild
from . import values
from .config import Settings
from .db import connect
from .db import parse_read_after
from .errors import CrmError
from .errors import Forbidden
from .errors import InvalidParam
from .errors import Unauthorized
from .errors import Unavailable
from .errors import problem
from .idempotency import Idempotency
from .query import Limits
from .ratelimit import TokenBuckets
from .ratelimit import TooManyRequests
from .services import build_services
from .webhooks import Webhooks

log = logging.getLogger('crmapi')
PROBLEM_JSON = 'application/problem+json'
EXPOSED_HEADERS = (
    'Content-Range, Location, X-Request-ID, X-Next-Cursor, Preference-Applied, Retry-After, '
    'Content-Disposition, X-Upsert-Result, X-Read-After, X-Next-After, '
    'RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, RateLimit-Policy'
)
ALLOWED_HEADERS = 'Authorization, Content-Type, Range, Prefer, Idempotency-Key, X-Request-ID, X-Read-After'
READ_AFTER_COOKIE = 'crmapi_read_after'
SAFE_METHODS = frozenset({'GET', 'HEAD'})
ALLOWED_METHODS = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS'


class Health(api.Health):
    """`/healthz` and `/readyz`; readiness also reports each read replica's lag (never its URL)."""

    def on_get_ready(self, req, resp):
        super().on_get_ready(req, resp)
        replicas = self.db.replica_status(wait=1.0)
        if replicas:
            resp.media['replicas'] = replicas


class _Deferred:
    """A resource of crmapi.openapi (its class named by NAME), that module imported at the first request for it.

    NOTE: the document's generator (1,700 lines, ~1 MB of a worker's memory) is imported by the workers that
    serve the document or the docs page, not by every one.
    """

    NAME = ''

    def __init__(self, *args):
        self.args = args
        self.resource = None

    def _target(self):
        if self.resource is None:
            from . import openapi

            self.resource = getattr(openapi, self.NAME)(*self.args)
        return self.resource


class OpenAPIDocument(_Deferred):
    """`GET /api/openapi.json`: crmapi.openapi.OpenAPI."""

    NAME = 'OpenAPI'

    def on_get(self, req, resp):
        self._target().on_get(req, resp)


class DocsPage(_Deferred):
    """`GET /api/docs` and its assets: crmapi.openapi.Docs."""

    NAME = 'Docs'

    def on_get(self, req, resp):
        self._target().on_get(req, resp)

    def on_get_asset(self, req, resp, name):
        self._target().on_get_asset(req, resp, name)


PUBLIC, OPTIONAL, PRIVATE = 'public', 'optional', 'private'
# Who may call each resource: anyone (PUBLIC), anyone but a token narrows the answer (OPTIONAL).
# Every resource not named here, and every unrouted /api path, is PRIVATE: refuse by default.
ACCESS = {api.Health: PUBLIC, Health: PUBLIC, DocsPage: PUBLIC, OpenAPIDocument: OPTIONAL}
# The resource each write lands in, so that it is authorized before the handler runs.
WRITES_TO = {
    api.Records: lambda params: params['resource'],
    api.MergeContacts: lambda params: 'contacts',
    api.MergeCompanies: lambda params: 'companies',
    api.Webhooks: lambda params: 'webhooks',
}
# The resource a route reads or acts on besides the generic `{resource}`: for resources only administrators see.
READS_FROM = {api.Webhooks: 'webhooks', api.WebhookDeliveries: 'webhook_deliveries'}
WRITE_METHODS = frozenset({'POST', 'PUT', 'PATCH', 'DELETE'})


class AuthMiddleware:
    """Authentication by the route that matched, after routing: the principal goes on the context.

    NOTE: deciding by the path's spelling before routing let `//api/...` through (the router
    resolves spellings a prefix test does not see); the resource the router picked cannot be spelt
    two ways. Writes are then authorized (role, read-only, the resource exists) before the handler:
    an Idempotency-Key replay is answered inside the handler, and must be refused alike.
    """

    def __init__(self, accounts, store, limiter=None):
        self.accounts = accounts
        self.store = store
        self.limiter = limiter

    def process_resource(self, req, resp, resource, params):
        self.admit(req, ACCESS.get(type(resource), PRIVATE))
        api.named_in_path(params)
        self.admin_only(req, READS_FROM.get(type(resource)) or params.get('resource'))
        if req.method in WRITE_METHODS and type(resource) in WRITES_TO:
            info = self.store.catalog.resolve(WRITES_TO[type(resource)](params), req.context.principal)
            # NOTE: the store's own rule, the one every write also runs, so the two cannot drift.
            self.store._check_writable(info, req.context.principal)

    def admin_only(self, req, slug):
        """403 for a non-administrator on a resource only administrators may see (webhooks: URLs are secrets)."""
        principal = req.context.principal
        if isinstance(slug, str) and principal is not None and not self.store.catalog.readable(slug, principal):
            raise Forbidden(f'Only administrators may use {slug}')

    def admit(self, req, access):
        """Establish `req.context.principal` as `access` demands, or raise 400/401/429."""
        if req.method == 'OPTIONS' or access == PUBLIC:
            return
        params = req.params
        if params and ('token' in params or 'access_token' in params):
            raise InvalidParam('Send the token in the Authorization header, never in the URL', param='token')
        header = req.env.get('HTTP_AUTHORIZATION')  # NOTE: req.get_header's own lookup, without its name mangling
        if header is None and access == OPTIONAL:
            return
        scheme, _, token = (header or '').partition(' ')
        if scheme.lower() != 'bearer':
            raise Unauthorized('Send Authorization: Bearer <token>')
        req.context.principal = self.accounts.authenticate(token.strip())
        if self.limiter is not None:
            self.spend(req)

    def spend(self, req):
        """One request of the token's budget (kept for the answer's RateLimit fields), or 429."""
        decision = req.context.rate_limit = self.limiter.take(req.context.principal.token_id)
        if not decision.allowed:
            raise TooManyRequests(
                f'This token may make {decision.limit} requests every {decision.window:g} '
                f'seconds; retry after {decision.retry_after} seconds',
                decision.headers(),
            )


class ReadRouting:
    """Where a request's reads go (read replicas, read-your-writes), after AuthMiddleware.

    Authentication reads the primary: a token revoked on any host is refused on the next request.
    After it, a GET or HEAD may read from a replica, as fresh as the `X-Read-After` token (header or
    cookie) it presents; every other request reads and writes the primary. A request that wrote
    answers with the primary's position as that token, for the client's next reads.

    NOTE: a read request looks up custom-object definitions on the same server as their records, so
    the two agree (a definition newer than that server's table would name columns it lacks); a write
    request looks them up on the primary, where its DDL and rows go.
    """

    def __init__(self, db):
        self.db = db

    def process_request(self, req, resp):
        tokens = [parse_read_after(t) for t in (req.get_header('X-Read-After'), req.cookies.get(READ_AFTER_COOKIE))]
        self.db.begin_request(max((t for t in tokens if t is not None), default=None))

    def process_resource(self, req, resp, resource, params):
        if req.method in SAFE_METHODS:
            self.db.allow_replica_reads()

    def process_response(self, req, resp, resource, req_succeeded):
        token = self.db.end_request(token=req.method in WRITE_METHODS)
        if token is not None:
            resp.set_header('X-Read-After', token)
            resp.set_cookie(
                READ_AFTER_COOKIE, token, path='/', http_only=True, same_site='Lax', secure=req.scheme == 'https'
            )


class NoRoute:
    """Where no route matches under /api: private like every route (401 without a token), then 404.

    NOTE: a sink, so Falcon's process_resource does not run; it admits the caller itself. Other
    unrouted paths (the mount point itself) are a plain 404: none of them serves anything.
    """

    def __init__(self, auth):
        self.auth = auth

    def __call__(self, req, resp, **params):
        self.auth.admit(req, PRIVATE)
        raise falcon.HTTPNotFound()


_REQUEST_ID = re.compile(r'[A-Za-z0-9._:-]{1,128}\Z')
access_log = logging.getLogger('crmapi.access')


class Edge:
    """The one middleware of every request: its `X-Request-ID` (echoed or made), authentication by the route that
    matched (AuthMiddleware's process_resource), and on the answer the rate limit's headers, CORS, the request id
    and one JSON access log line (never a token, never a query).

    NOTE: one object with one hook a stage, because Falcon calls every hook of every middleware: the request log,
    CORS and authentication were three middleware and six calls a request. The answer's constant headers are
    set by the exact lowercase names Falcon keeps (set_header lowercases and checks each name, every request).
    """

    def __init__(self, auth, origins):
        self.process_resource = auth.process_resource
        self.origins = frozenset(origins)
        self.any_origin = '*' in self.origins

    def process_request(self, req, resp):
        context = req.context  # NOTE: an api.RequestContext: principal and rate_limit are None until known
        given = req.env.get('HTTP_X_REQUEST_ID')
        context.request_id = given if given and _REQUEST_ID.match(given) else new_request_id()
        context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        context = req.context
        decision = context.rate_limit
        if decision is not None:
            for name, value in decision.headers().items():
                resp.set_header(name, value)
        self.cors(req, resp)
        request_id = context.request_id or new_request_id()
        resp._headers['x-request-id'] = request_id
        if access_log.isEnabledFor(logging.INFO):
            principal = context.principal
            started = context.started or time.perf_counter()
            write_access_entry(
                {
                    'time': utc_second(),
                    'method': req.method,
                    'path': req.path,
                    'status': resp.status_code,
                    'duration_ms': duration_ms(started),
                    'organization': principal.org_id if principal else None,
                    'request_id': request_id,
                }
            )

    def cors(self, req, resp):
        """CORS for browser front ends; errors carry the headers too, so react-admin can read them."""
        headers = resp._headers
        headers['access-control-expose-headers'] = EXPOSED_HEADERS
        origin = req.env.get('HTTP_ORIGIN')
        if origin is None:
            return
        if self.any_origin:
            headers['access-control-allow-origin'] = '*'
        elif origin in self.origins:
            headers['access-control-allow-origin'] = origin
            resp.append_header('Vary', 'Origin')
        else:
            return
        if req.method == 'OPTIONS' and req.get_header('Access-Control-Request-Method'):
            headers['access-control-allow-methods'] = ALLOWED_METHODS
            headers['access-control-allow-headers'] = ALLOWED_HEADERS
            headers['access-control-max-age'] = '600'


def write_access_entry(entry):
    """One access log line of `entry`: to the handler of enable_access_log as orjson's bytes when they are ASCII (the
    line access_line would make, without decoding it and encoding it again), else as write_access_line writes it."""
    handler = _own_handler()
    if handler is not None and handler.descriptor is not None:
        try:
            data = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # NOTE: a lone surrogate in the path: access_line escapes it
            data = None
        if data is not None and data.isascii() and handler.write_bytes(data):
            return
    write_access_line(access_line(entry))


def _own_handler():
    """The handler of enable_access_log when it is the access log's only handler, without filters; else None."""
    handlers = access_log.handlers
    if len(handlers) == 1 and type(handlers[0]) is AccessLogLines and not (handlers[0].filters or access_log.filters):
        return handlers[0]
    return None


def write_access_line(line):
    """Hand one access log line to the logger's handlers, as Logger.info would, but without looking up the caller's
    file and line on the stack (the access log was a third of a get's time); to the handler of enable_access_log
    alone, straight to its stream.

    NOTE: a LogRecord (the time, thread, process id: a system call) and the logger's dispatch took 3 µs of a
    get's 25 µs of CPU; any other handler or filter gets its LogRecord as before.
    """
    handler = _own_handler()
    if handler is not None:
        handler.write(line)
    else:
        access_log.handle(logging.LogRecord(access_log.name, logging.INFO, __file__, 0, line, None, None))


def duration_ms(started):
    """Milliseconds since `started` (a perf_counter), to two decimals.

    NOTE: rounded as a whole number of hundredths: round(x, 2) goes through Python's decimal conversion (~1 µs, a
    twentieth of a get's CPU); the two differ only where x * 100 falls within a rounding error of a half.
    """
    return round((time.perf_counter() - started) * 100_000) / 100


def new_request_id():
    """32 random hex digits (uuid4().hex's length).

    NOTE: from the `random` module (reseeded in every forked child), not os.urandom: an id tells requests apart in
    logs and grants nothing, and a system call per request was a tenth of a get's CPU time outside the database.
    """
    return random.getrandbits(128).to_bytes(16, 'little').hex()  # NOTE: random.randbytes's own work, without its call


_second = (None, '')  # (a second since the epoch, its text): one tuple, so threads read a matching pair


def utc_second():
    """The current UTC second as the access log spells it, formatted once a second."""
    global _second
    now, known = int(time.time()), _second
    if known[0] != now:
        known = _second = (now, time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now)))
    return known[1]


def access_line(entry):
    """One access log line: compact JSON escaped to ASCII.

    NOTE: orjson first (a tenth of the time); a path with a lone surrogate (which orjson refuses) or any other
    non-ASCII character goes through values.ascii_json, so the line is ASCII whatever the path.
    """
    try:
        line = orjson.dumps(entry)
        if line.isascii():
            return line.decode()
    except TypeError:
        pass
    return values.ascii_json(entry, separators=(',', ':'))


class AccessLogLines(logging.StreamHandler):
    """The access log's handler: each record's message is the whole line, written as it is.

    NOTE: a line goes straight to the stream's file descriptor, one system call without the handler's lock, where
    the stream has one and writes ASCII as such: through the stream (its text layer, the lock, a flush) the line
    took a third of a get's CPU under granian, its threads queueing on the lock of the one that was in the system
    call. A line of at most PIPE_BUF bytes is written whole by one call (POSIX: not interleaved with another
    thread's or process's on a pipe; appended whole to a file), as it was under the lock; a longer one, or a stream
    without a descriptor (tests' StringIO), goes through the stream under the lock as before. The stream is
    flushed once first, so nothing it held comes after the lines.
    """

    def __init__(self, stream=None):
        super().__init__(stream)
        self.descriptor = _ascii_descriptor(self.stream)

    def emit(self, record):
        self.write(record.msg, record)

    def write_bytes(self, data, record=None):
        """One ASCII line, its terminator included, straight to the descriptor: whether it was written (False: it is
        longer than PIPE_BUF, for `write` to write through the stream)."""
        if len(data) > select.PIPE_BUF:
            return False
        try:
            fd, rest = self.descriptor(), data
            written = os.write(fd, rest)
            while written < len(rest):  # NOTE: a partial write; never for a regular file or a pipe (PIPE_BUF)
                rest = rest[written:]
                written = os.write(fd, rest)
        except Exception:  # noqa: BLE001 - as logging.StreamHandler.emit: a broken stream must not fail requests
            self.handleError(
                record or logging.makeLogRecord({'name': access_log.name, 'msg': data.decode().rstrip('\n')})
            )
        return True

    def write(self, line, record=None):
        """One line, whole: straight to the descriptor when it is ASCII and short enough (write_bytes), else through
        the stream under the handler's lock."""
        text = line + self.terminator
        if self.descriptor is not None and text.isascii() and self.write_bytes(text.encode(), record):
            return
        try:
            with self.lock:
                self.stream.write(text)
                self.flush()
        except Exception:  # noqa: BLE001 - as logging.StreamHandler.emit: a broken stream must not fail requests
            self.handleError(record or logging.makeLogRecord({'name': access_log.name, 'msg': line}))


def _ascii_descriptor(stream):
    """The stream's `fileno` method, if it has a file descriptor and writes ASCII text as those bytes; else None.

    NOTE: the method, not its number: a stream closed later raises on `fileno()`, as on a write, instead of writing
    to whatever file took its number."""
    try:
        stream.fileno()
        if '{"a":1}\n'.encode(stream.encoding) != b'{"a":1}\n':
            return None
        stream.flush()
    except (AttributeError, OSError, ValueError, LookupError, TypeError):
        return None
    return stream.fileno


def enable_access_log(stream=None):
    """JSON lines on stderr (gunicorn collects them); once per process."""
    if not access_log.handlers:
        access_log.addHandler(AccessLogLines(stream or sys.stderr))
        access_log.setLevel(logging.INFO)
        access_log.propagate = False


class App(falcon.App):
    """falcon.App where every GET route answers HEAD too: the GET's headers, no body.

    NOTE: Falcon drops the body of a HEAD answer itself, but routes HEAD only to `on_head*`
    responders (405 otherwise); each `on_get[_suffix]` doubles as its `on_head[_suffix]`.
    """

    def add_route(self, uri_template, resource, **kwargs):
        for name in dir(resource):
            if name == 'on_get' or name.startswith('on_get_'):
                head = 'on_head' + name[len('on_get') :]
                if not hasattr(resource, head):
                    setattr(resource, head, getattr(resource, name))
        super().add_route(uri_template, resource, **kwargs)


def _render(resp, status, body, headers=None):
    resp.status = status
    resp.content_type = PROBLEM_JSON
    resp.data = orjson.dumps(body)
    for name, value in (headers or {}).items():
        resp.set_header(name, value)


def handle_crm_error(req, resp, exc, params):
    _render(resp, exc.status, exc.to_problem(), exc.headers)


def handle_unexpected(req, resp, exc, params):
    """A bug: log it with its traceback on the server, answer a bare 500 problem."""
    if isinstance(exc, falcon.HTTPError):
        raise exc
    traceback.print_exception(exc, file=sys.stderr)
    _render(resp, 500, problem(500, 'Internal error', 'The server could not complete the request'))


def serialize_http_error(req, resp, exc):
    """Falcon's own 400/404/405/… in the same problem+json shape."""
    _render(resp, exc.status_code, problem(exc.status_code, exc.title, exc.description or exc.title))


def server_secret(settings, db):
    """The secret that signs cursors: CRMAPI_SECRET_KEY, else the database's own random one.

    NOTE: every worker and host must sign alike, so the random key lives in the database: the first
    process to start inserts its candidate (ON CONFLICT DO NOTHING) and all of them read back the winner.
    """
    if settings.secret_key:
        return settings.secret_key.encode()
    if not db.table_exists('server_secrets'):
        raise RuntimeError('The database predates server_secrets: run `crmapi migrate` (or set CRMAPI_SECRET_KEY)')
    with db.transaction(write=True) as tx:
        tx.execute(*sqlbuild.build_secret_init(db.dialect, 'secret_key', secrets.token_urlsafe(32)))
        return tx.one(*sqlbuild.build_secret_read(db.dialect, 'secret_key'))[0].encode()


class DeferredApp:
    """Stands in for the app while the database is unreachable at start-up: 503 until it is back.

    NOTE: gunicorn halts when a worker fails to boot; a worker (re)started during a database
    outage must answer 503 and recover, not take the whole server down.
    """

    def __init__(self, build):
        self.build, self.app = build, None
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if self.app is None:
            with self.lock:
                try:
                    self.app = self.app or self.build()
                except Unavailable as exc:
                    body = orjson.dumps(exc.to_problem())
                    start_response(
                        '503 Service Unavailable',
                        [('Content-Type', PROBLEM_JSON), ('Retry-After', '1'), ('Content-Length', str(len(body)))],
                    )
                    return [body]
        return self.app(environ, start_response)


def create_app(settings=None, db=None):
    """Build the WSGI callable. Pass `db` (a crmapi.db.Database) to share or inject one in tests."""
    settings = settings or Settings.from_env()
    db = db or connect(settings.database_url, settings.database_read_urls, settings.pgbouncer)
    db.configure(settings)
    try:
        return build_app(settings, db)
    except Unavailable:
        return DeferredApp(lambda: build_app(settings, db))


def build_app(settings, db):
    services = build_services(db, settings)
    catalog, store = services.catalog, services.store
    store.webhook_allow_private = settings.webhook_allow_private
    limits = Limits(settings.max_page, settings.max_filters, settings.max_value_length)

    if settings.access_log:
        enable_access_log()
    limiter = TokenBuckets(*settings.rate_limit) if settings.rate_limit else None
    auth = AuthMiddleware(services.accounts, store, limiter)
    middleware = [Edge(auth, settings.cors_origins)]
    if db.replicas:
        # NOTE: without read replicas every read is the primary's, and a read-after token has nothing to wait for.
        middleware.append(ReadRouting(db))
    app = App(middleware=middleware, request_type=api.Request)
    # NOTE: one handler both ways: request bodies strictly parsed (api.read_json), answers by orjson.
    json_handler = api.StrictJSON(settings.max_body_bytes)
    app.req_options.media_handlers[api.JSON] = json_handler
    app.resp_options.media_handlers.update({api.JSON: json_handler, PROBLEM_JSON: json_handler})
    app.req_options.strip_url_path_trailing_slash = True

    idempotency = Idempotency(db, catalog, store.clock)
    records = api.Records(
        store, limits, settings.max_body_bytes, idempotency, server_secret(settings, db), settings.max_import_bytes
    )
    health = Health(db)
    app.add_route('/healthz', health)
    app.add_route('/health', health)
    app.add_route('/readyz', health, suffix='ready')
    schema = api.Schema(store)
    definitions = api.CustomObjectDefinitions(services.custom, settings.max_body_bytes)
    app.add_route('/api/custom_objects', definitions)
    app.add_route('/api/custom_objects/{slug}', definitions, suffix='item')
    app.add_route('/api/custom_objects/{slug}/restore', definitions, suffix='restore')
    app.add_route('/api/custom_objects/{slug}/fields/{name}', definitions, suffix='field')
    histories = api.History(store, limits)
    app.add_route('/api/custom_objects/{slug}/history', histories, suffix='definition')
    app.add_route('/api/changes', api.Changes(store))
    hooks = Webhooks(store, settings)
    webhook_routes = api.Webhooks(records, hooks)
    app.add_route('/api/webhooks', webhook_routes)
    app.add_route('/api/webhooks/{id}', webhook_routes, suffix='item')
    app.add_route('/api/webhooks/{id}/rotate_secret', webhook_routes, suffix='rotate')
    app.add_route('/api/webhook_deliveries/{id}/redeliver', api.WebhookDeliveries(hooks), suffix='redeliver')
    app.add_route('/api/merge_contacts', api.MergeContacts(store, settings.max_body_bytes, idempotency))
    app.add_route('/api/me', api.Me(store))
    app.add_route('/api/merge_companies', api.MergeCompanies(store, settings.max_body_bytes, idempotency))
    # NOTE: Falcon's router tries a literal segment before a field (whatever the order routes are added in),
    # so `duplicates` is never read as a record id by /api/{resource}/{id} (PUT or DELETE on it is a 405).
    for slug in duplicates.MATCHERS:
        finder = api.Duplicates(store, slug, limits, settings.max_body_bytes)
        app.add_route(f'/api/{slug}/duplicates', finder)
        app.add_route(f'/api/{slug}/{{id}}/duplicates', finder, suffix='record')
    app.add_route('/api/schema', schema)
    app.add_route('/api/schema/{table}', schema, suffix='table')
    app.add_route('/api/openapi.json', OpenAPIDocument(catalog, limits, store))
    docs = DocsPage()
    app.add_route('/api/docs', docs)
    # The page's own scripts and styles (public like the page, see ACCESS).
    app.add_route('/api/docs/assets/{name}', docs, suffix='asset')
    app.add_route('/api/{resource}', records)
    app.add_route('/api/{resource}/{id}', records, suffix='item')
    app.add_route('/api/{resource}/{id}/restore', records, suffix='restore')
    app.add_route('/api/{resource}/{id}/history', histories)
    app.add_sink(NoRoute(auth), '/api')

    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(CrmError, handle_crm_error)
    app.set_error_serializer(serialize_http_error)
    return app
