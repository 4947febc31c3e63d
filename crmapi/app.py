"""The WSGI application: routes, middleware and the one place errors become HTTP answers."""
import json
import logging
import re
import sys
import threading
import time
import traceback
import uuid

import falcon
import orjson
from falcon import media

from . import api
from .accounts import Accounts
from .config import Settings
from .custom import CustomObjects
from .db import connect
from .errors import CrmError
from .errors import InvalidParam
from .errors import Unauthorized
from .errors import Unavailable
from .errors import problem
from .idempotency import Idempotency
from .query import Limits
from .schema import Catalog
from .store import Store

log = logging.getLogger('crmapi')
PROBLEM_JSON = 'application/problem+json'
EXPOSED_HEADERS = 'Content-Range, Location, X-Request-ID, X-Next-Cursor, Preference-Applied, X-Upsert-Result'
ALLOWED_HEADERS = 'Authorization, Content-Type, Range, Prefer, Idempotency-Key, X-Request-ID'


PUBLIC_PATHS = frozenset({'/api/docs'})          # served to anyone
OPTIONAL_AUTH_PATHS = frozenset({'/api/openapi.json'})  # a token narrows the answer to its organization


class AuthMiddleware:
    """Every /api request carries `Authorization: Bearer <token>`; the principal goes on the context."""

    def __init__(self, accounts):
        self.accounts = accounts

    def process_request(self, req, resp):
        req.context.principal = None
        if req.method == 'OPTIONS' or not req.path.startswith('/api') or req.path in PUBLIC_PATHS:
            return
        if 'token' in req.params or 'access_token' in req.params:
            raise InvalidParam('Send the token in the Authorization header, never in the URL', param='token')
        header = req.get_header('Authorization')
        if header is None and req.path in OPTIONAL_AUTH_PATHS:
            return
        scheme, _, token = (header or '').partition(' ')
        if scheme.lower() != 'bearer':
            raise Unauthorized('Send Authorization: Bearer <token>')
        req.context.principal = self.accounts.authenticate(token.strip())


_REQUEST_ID = re.compile(r'[A-Za-z0-9._:-]{1,128}\Z')
access_log = logging.getLogger('crmapi.access')


class RequestLog:
    """`X-Request-ID` echoed (or made), and one JSON line per request: never a token, never a query."""

    def process_request(self, req, resp):
        given = req.get_header('X-Request-ID')
        req.context.request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        req.context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        request_id = getattr(req.context, 'request_id', None) or uuid.uuid4().hex
        resp.set_header('X-Request-ID', request_id)
        if access_log.isEnabledFor(logging.INFO):
            principal = getattr(req.context, 'principal', None)
            started = getattr(req.context, 'started', time.perf_counter())
            access_log.info(json.dumps({
                'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                'method': req.method, 'path': req.path, 'status': resp.status_code,
                'duration_ms': round((time.perf_counter() - started) * 1000, 2),
                'organization': principal.org_id if principal else None,
                'request_id': request_id,
            }))


def enable_access_log(stream=None):
    """JSON lines on stderr (gunicorn collects them); once per process."""
    if not access_log.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter('%(message)s'))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False


class CorsMiddleware:
    """CORS for browser front ends; errors carry the headers too, so react-admin can read them."""

    def __init__(self, origins):
        self.origins = tuple(origins)

    def process_response(self, req, resp, resource, req_succeeded):
        resp.set_header('Access-Control-Expose-Headers', EXPOSED_HEADERS)
        origin = req.get_header('Origin')
        if origin is None:
            return
        if '*' in self.origins:
            resp.set_header('Access-Control-Allow-Origin', '*')
        elif origin in self.origins:
            resp.set_header('Access-Control-Allow-Origin', origin)
            resp.append_header('Vary', 'Origin')
        else:
            return
        if req.method == 'OPTIONS' and req.get_header('Access-Control-Request-Method'):
            resp.set_header('Access-Control-Allow-Methods', 'GET, POST, PUT, DELETE, OPTIONS')
            resp.set_header('Access-Control-Allow-Headers', ALLOWED_HEADERS)
            resp.set_header('Access-Control-Max-Age', '600')


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


def build_services(db):
    """The catalog, the store and the custom objects over one database (the app and the CLI share it)."""
    catalog = Catalog.load(db)
    store = Store(db, catalog)
    catalog.custom = CustomObjects(db, catalog, store)
    return catalog


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
                    start_response('503 Service Unavailable', [
                        ('Content-Type', PROBLEM_JSON), ('Retry-After', '1'), ('Content-Length', str(len(body)))])
                    return [body]
        return self.app(environ, start_response)


def create_app(settings=None, db=None):
    """Build the WSGI callable. Pass `db` (a crmapi.db.Database) to share or inject one in tests."""
    settings = settings or Settings.from_env()
    db = db or connect(settings.database_url)
    if hasattr(db, 'synchronous'):
        db.synchronous = settings.sqlite_synchronous
    if hasattr(db, 'pool_args'):
        db.pool_args.update(max_size=settings.pool_max_size, timeout=settings.pool_timeout_s)
        db.statement_timeout_ms = settings.statement_timeout_ms
    try:
        return build_app(settings, db)
    except Unavailable:
        return DeferredApp(lambda: build_app(settings, db))


def build_app(settings, db):
    catalog = build_services(db)
    store = catalog.custom.store
    limits = Limits(settings.max_page, settings.max_filters, settings.max_value_length)

    if settings.access_log:
        enable_access_log()
    middleware = [RequestLog(), CorsMiddleware(settings.cors_origins), AuthMiddleware(Accounts(db))]
    app = falcon.App(middleware=middleware)
    json_handler = media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.resp_options.media_handlers.update({'application/json': json_handler, PROBLEM_JSON: json_handler})
    app.req_options.strip_url_path_trailing_slash = True

    idempotency = Idempotency(db, catalog, store.clock)
    records = api.Records(store, limits, settings.max_body_bytes, idempotency)
    health = api.Health(db)
    app.add_route('/healthz', health)
    app.add_route('/readyz', health, suffix='ready')
    schema = api.Schema(catalog)
    definitions = api.CustomObjectDefinitions(catalog.custom, settings.max_body_bytes)
    app.add_route('/api/custom_objects', definitions)
    app.add_route('/api/custom_objects/{slug}', definitions, suffix='item')
    app.add_route('/api/custom_objects/{slug}/restore', definitions, suffix='restore')
    app.add_route('/api/custom_objects/{slug}/fields/{name}', definitions, suffix='field')
    app.add_route('/api/merge_contacts', api.MergeContacts(store, settings.max_body_bytes, idempotency))
    app.add_route('/api/schema', schema)
    app.add_route('/api/schema/{table}', schema, suffix='table')
    from . import openapi
    app.add_route('/api/openapi.json', openapi.OpenAPI(catalog, limits))
    app.add_route('/api/docs', openapi.Docs())
    app.add_route('/api/{resource}', records)
    app.add_route('/api/{resource}/{id}', records, suffix='item')
    app.add_route('/api/{resource}/{id}/restore', records, suffix='restore')

    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(CrmError, handle_crm_error)
    app.set_error_serializer(serialize_http_error)
    return app
