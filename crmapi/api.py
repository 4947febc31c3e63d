"""Falcon resources: parse the request, call the store, render the answer. Nothing else."""

import functools
import re

import falcon
import orjson
from falcon.media import BaseHandler

from . import export as exports
from . import imports
from . import history
from . import query
from . import sqlbuild
from . import values
from .config import Settings
from .relations import Relations
from .errors import Forbidden
from .errors import InvalidBody
from .errors import InvalidParam
from .errors import NotFound
from .errors import PayloadTooLarge
from .errors import UnsupportedMediaType
from .export import CsvFormat
from .export import NdjsonFormat
from .idempotency import fingerprint

EXPORTS = {
    'text/csv': ('text/csv; charset=utf-8', CsvFormat, 'csv'),
    'application/x-ndjson': ('application/x-ndjson', NdjsonFormat, 'ndjson'),
}
FORMATS = {extension: media for media, (_, _, extension) in EXPORTS.items()}
EXPORT_PARAMS = frozenset({'format'})
COUNTS = ('exact', 'estimated', 'none')
HANDLINGS = ('strict', 'lenient')
JSON = 'application/json'
OWN = 'own'  # takes(OWN): the responder checks its query parameters itself


ITEM_PARAMS = frozenset({'embed', 'embed_limit'})


def named_in_path(params):
    """A 404 naming the path segment (`id`, `resource`, `slug`, ...) that holds a character no name or id can hold.

    NOTE: nothing is stored under a NUL (PostgreSQL cannot store one, and writes refuse it on both databases), so such
    a segment names nothing: answered before any lookup, where PostgreSQL's driver would refuse the parameter (a bare
    400) and SQLite would look it up (a 404).
    """
    for name, value in params.items():
        reason = isinstance(value, str) and values.unstorable(value)
        if reason:
            raise NotFound(f'No {name} is named {value!r}: a {name} never holds {reason}', param=name)


def refuse_unknown_params(params, allowed):
    """A 400 naming the first query parameter a route does not take: a misspelt one is never ignored
    (`?on_confict=external_id` would otherwise create a second record instead of updating the first)."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        takes = ', '.join(sorted(allowed)) if allowed else 'no query parameters'
        raise InvalidParam(f"Unknown query parameter '{unknown[0]}': this route takes {takes}", param=unknown[0])


def takes(*names):
    """Declares the query parameters a responder takes (see refuse_unknown_params); `takes(OWN)` marks a
    responder that checks its own (lists, the feed, histories, the item get's hot path).

    NOTE: every responder of a private route declares them (tests/test_qa_edges.py walks the router), so a
    new route cannot ignore its parameters by omission.
    """
    if names == (OWN,):

        def declare(responder):
            responder.query_params = OWN
            return responder

        return declare
    allowed = frozenset(names)

    def declare(responder):
        @functools.wraps(responder)
        def checked(self, req, resp, *args, **kwargs):
            if req.params:
                refuse_unknown_params(req.params, allowed)
            return responder(self, req, resp, *args, **kwargs)

        checked.query_params = allowed
        return checked

    return declare


def export_format(req):
    """`?format=csv|ndjson`, or `Accept: text/csv` or `application/x-ndjson`, asks for the whole filtered set,
    streamed (the parameter wins: a link in a browser cannot set Accept)."""
    named = query.single(req.params, 'format')
    if named is not None:
        if named not in FORMATS:
            raise InvalidParam(f"format is {' or '.join(FORMATS)}, not '{named}'", param='format')
        return FORMATS[named]
    weights = accepted(req.get_header('Accept') or '')
    wanted = max(EXPORTS, key=lambda media: weights.get(media, 0))
    # NOTE: an export named with q=0 is refused, and one ranked below application/json is a fallback: JSON it is.
    if weights.get(wanted, 0) > 0 and weights[wanted] >= weights.get(JSON, 0):
        return wanted
    return None


def accepted(header):
    """{media type: q} of the media types an Accept header names (RFC 9110 12.5.1); ranges (`text/*`) are left out."""
    weights = {}
    for item in header.lower().split(','):
        media, *parameters = item.split(';')
        q = next((p.partition('=')[2].strip() for p in parameters if p.partition('=')[0].strip() == 'q'), '1')
        try:
            weights[media.strip()] = min(max(float(q), 0.0), 1.0)
        except ValueError:
            weights[media.strip()] = 0.0  # NOTE: a malformed weight accepts nothing rather than guessing
    return weights


def preference(req, name, choices):
    """The value of one `Prefer` preference (RFC 7240) among `choices`; None when not sent."""
    for item in (req.get_header('Prefer') or '').split(','):
        key, _, value = item.split(';')[0].strip().partition('=')
        if key.strip().lower() == name:
            value = value.strip().strip('"').lower()
            if value not in choices:
                raise InvalidParam(f'Prefer: {name}= takes {", ".join(choices)}', param='Prefer')
            return value
    return None


def count_preference(req):
    """`Prefer: count=exact|estimated|none`, as PostgREST spells it; exact by default."""
    return preference(req, 'count', COUNTS) or 'exact'


def lenient_handling(req, resp):
    """`Prefer: handling=strict|lenient` (RFC 7240) on a write: strict by default, where a body field
    the resource does not have is a 400; lenient ignores it. A handling sent is echoed as applied."""
    handling = preference(req, 'handling', HANDLINGS)
    if handling is not None:
        resp.append_header('Preference-Applied', f'handling={handling}')
    return handling == 'lenient'


def content_range(resource, start, count, total):
    """`contacts 0-24/142`; an empty page is `contacts */142`; an uncounted total is `*`."""
    total = '*' if total is None else total
    if count == 0:
        return f'{resource} */{total}'
    return f'{resource} {start}-{start + count - 1}/{total}'


_RANGE_HEADER = re.compile(r'\s*([A-Za-z0-9_]+)=([0-9]{1,19})-([0-9]{1,19})\s*\Z')


def list_params(req, resource):
    """The query parameters, with react-admin's `Range: contacts=0-24` header standing in for `range`."""
    header = req.get_header('Range')
    if header is None or 'range' in req.params:
        return req.params
    m = _RANGE_HEADER.match(header)
    if not m or m.group(1) != resource:
        raise InvalidParam(f"The Range header is '{resource}=<start>-<end>'", param='Range')
    # NOTE: int() because HTTP allows leading zeros (`contacts=00-24`) and JSON does not.
    return {**req.params, 'range': f'[{int(m.group(2))},{int(m.group(3))}]'}


_CHARSET = re.compile(r';\s*charset\s*=\s*"?([^";\s]+)', re.IGNORECASE)


def media_type(req):
    return (req.content_type or '').split(';')[0].strip().lower()


class RequestContext(falcon.Context):
    """`req.context`: what the app's middleware (app.Edge) keeps for a request, None until it is known.

    NOTE: defaults on the class, so the answer's hooks read them as plain attributes, also for a request refused
    before its first hook ran (Falcon answers a bad method before any middleware).
    """

    request_id = None
    started = None
    principal = None
    rate_limit = None


class Request(falcon.Request):
    """Falcon's request, whose bounded_stream also reads a chunked body its server has ended."""

    context_type = RequestContext

    @property
    def bounded_stream(self):
        # NOTE: a chunked body has no Content-Length, so Falcon's bounded_stream reads nothing. A server that
        # ends the stream at the end of the body says so with wsgi.input_terminated (gunicorn does, after
        # decoding the chunks); from any other, reading a stream without a length could block, so only the
        # declared length is read.
        if self.content_length is None and self.env.get('wsgi.input_terminated'):
            return self.stream
        return super().bounded_stream


def body_stream(req, max_bytes, too_large=None):
    """The request body's stream, or a 413 (`too_large`) when its declared length is over `max_bytes`."""
    length = req.content_length
    if length is not None and length > max_bytes:
        raise too_large or PayloadTooLarge(f'The body is larger than {max_bytes} bytes')
    return req.bounded_stream


class StrictJSON(BaseHandler):
    """JSON through Falcon's media handlers: request bodies parsed as strictly as the API accepts JSON
    (values.loads_strict), at most `max_bytes` of them, every failure a 4xx; answers written by orjson."""

    def __init__(self, max_bytes=Settings.max_body_bytes):
        super().__init__()
        self.max_bytes = max_bytes

    def serialize(self, media, content_type=None):
        return orjson.dumps(media)

    def deserialize(self, stream, content_type, content_length, max_bytes=None):
        max_bytes = self.max_bytes if max_bytes is None else max_bytes
        if content_length is not None and content_length > max_bytes:
            raise PayloadTooLarge(f'The body is larger than {max_bytes} bytes')
        try:
            raw = stream.read(max_bytes + 1)
        except Exception:  # NOTE: servers raise their own types for a malformed chunk or a client gone mid-body
            raise InvalidBody(
                'The body could not be read: the chunked encoding is malformed or the body is cut short'
            ) from None
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f'The body is larger than {max_bytes} bytes')
        try:
            return values.loads_strict(raw.decode('utf-8'))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidBody(f'The body is not valid JSON: {exc}', field=getattr(exc, 'field', None)) from None


def read_json(req, max_bytes):
    """The JSON a write sends, through the app's JSON media handler (StrictJSON), or a 4xx naming what is wrong.

    NOTE: the handler is looked up by `application/json` for every `+json` type too, which Falcon would
    otherwise refuse as unregistered.
    """
    if media_type(req) != 'application/json' and not media_type(req).endswith('+json'):
        raise UnsupportedMediaType('Send the body as JSON with Content-Type: application/json')
    handler = req.options.media_handlers[JSON]
    return handler.deserialize(req.bounded_stream, req.content_type, req.content_length, max_bytes)


def read_body(req, max_bytes):
    """The JSON object a write sends, strictly parsed, or a 4xx naming what is wrong."""
    body = read_json(req, max_bytes)
    if not isinstance(body, dict):
        raise InvalidBody('The request body must be a JSON object')
    return body


def read_records(req, max_bytes, allow_object=True):
    """A POST's body: one object, or an array (a batch); PATCH on a collection: an array."""
    body = read_json(req, max_bytes)
    if isinstance(body, list) or (allow_object and isinstance(body, dict)):
        return body
    raise InvalidBody('The request body must be a JSON array of objects' + (' (or one object)' if allow_object else ''))


def delete_ids(params):
    """The ids a DELETE on a collection names: `filter={"id":[...]}` and nothing else."""
    unknown = sorted(set(params) - {'filter'})
    if unknown:
        raise InvalidParam(
            f'DELETE on a collection takes only filter={{"id":[...]}}, not \'{unknown[0]}\'', param=unknown[0]
        )
    flt = query.param_json(params, 'filter')
    ids = flt.get('id') if isinstance(flt, dict) and set(flt) == {'id'} else None
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise InvalidParam(
            'DELETE on a collection needs filter={"id":[...]}, the ids of the records to delete', param='filter'
        )
    reason = values.unstorable_among(ids)
    if reason:
        raise InvalidParam(f'An id may not contain {reason}', param='filter', field='id')
    return ids


def upsert_result(created, updated):
    return {'X-Upsert-Result': f'created={created}, updated={updated}'}


def respond_once(req, resp, idempotency, body, action):
    """Run a POST's `action` -> (status, body, headers); with an Idempotency-Key, at most once.

    `body` is what the request asks for (its body, and any parameter that changes the answer)."""
    key = req.get_header('Idempotency-Key')
    if key is None:
        status, record, headers = action()
    else:
        fp = fingerprint(req.method, req.path, body)
        (status, record, headers), replayed = idempotency.run(req.context.principal, key, fp, action)
        if replayed:
            resp.set_header('Idempotent-Replayed', 'true')
    resp.status = status
    resp.media = record
    for name, value in headers.items():
        resp.set_header(name, value)


class Records:
    """`/api/{resource}`, `/api/{resource}/{id}` and `/api/{resource}/{id}/restore`."""

    def __init__(self, store, limits, max_body_bytes, idempotency, secret, max_import_bytes=Settings.max_import_bytes):
        self.store = store
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.max_import_bytes = max_import_bytes
        self.idempotency = idempotency
        self.secret = secret  # the server's secret; cursors are signed with a key per organization
        self.relations = Relations(store)

    def _table(self, req, resource):
        return self.store.catalog.resolve(resource, req.context.principal)

    @takes(OWN)
    def on_get(self, req, resp, resource):
        info = self._table(req, resource)
        params = list_params(req, resource)
        principal = req.context.principal
        key = query.cursor_key(self.secret, principal.org_id)
        lq = query.parse_list(
            params, info, self.limits, extra=EXPORT_PARAMS, cursor_key=key, relations=self.relations.of(info, principal)
        )
        export = export_format(req)
        if export:
            if lq.embeds:
                raise InvalidParam(
                    'Exports do not embed related records: export each resource on its own, '
                    'or page through the list with embed',
                    param='embed',
                )
            content_type, fmt, extension = EXPORTS[export]
            # NOTE: exports.stream runs the query to its first batch here, so an early failure is
            # still an ordinary error answer rather than a 200 cut short.
            resp.stream = exports.stream(fmt(info), self.store.export(info, req.context.principal, lq))
            resp.content_type = content_type
            resp.set_header('Content-Disposition', f'attachment; filename="{info.slug}.{extension}"')
            return
        count = count_preference(req)
        # NOTE: one transaction, so the page and what it embeds are read from the same database state.
        with self.store.db.transaction():
            rows, total = self.store.list(info, principal, lq, count, self.relations.wants_seen(lq.embeds))
            # NOTE: the cursor is made before embedding, which may put records in place of ids.
            cursor = query.make_cursor(lq, info, params, rows[-1], key) if rows and len(rows) == lq.size else None
            self.relations.embed(principal, rows, lq.embeds, lq.embed_limit)
        resp.media = rows
        resp.set_header('Content-Range', content_range(resource, lq.start, len(rows), total))
        if count != 'exact':
            resp.set_header('Preference-Applied', f'count={count}')
        if cursor:
            resp.set_header('X-Next-Cursor', cursor)

    @takes('on_conflict')
    def on_post(self, req, resp, resource):
        """Create one record (an object) or a batch (an array); with `on_conflict`, upsert them."""
        info = self._table(req, resource)
        if media_type(req) == 'text/csv':
            return self._import_csv(req, resp, info)
        lenient = lenient_handling(req, resp)
        body = read_records(req, self.max_body_bytes)
        on_conflict = query.single(req.params, 'on_conflict')
        principal, batch = req.context.principal, isinstance(body, list)

        def location(records):
            return {} if batch else {'Location': f'{req.root_path}/api/{resource}/{records[0]["id"]}'}

        def create():
            records = self.store.create_many(info, principal, body if batch else [body], batch, lenient)
            return 201, records if batch else records[0], location(records)

        def upsert():
            records, created, updated = self.store.upsert(
                info, principal, body if batch else [body], on_conflict, batch, lenient
            )
            return (
                200 if updated else 201,
                records if batch else records[0],
                {**upsert_result(created, updated), **({} if updated else location(records))},
            )

        if on_conflict is None:
            respond_once(req, resp, self.idempotency, body, create)
        else:
            respond_once(req, resp, self.idempotency, {'on_conflict': on_conflict, 'body': body}, upsert)

    @takes()
    def on_patch(self, req, resp, resource):
        """Update a batch: an array of objects, each with the `id` of its record."""
        info = self._table(req, resource)
        lenient = lenient_handling(req, resp)
        resp.media = self.store.update_many(
            info, req.context.principal, read_records(req, self.max_body_bytes, allow_object=False), lenient
        )

    @takes(OWN)
    def on_delete(self, req, resp, resource):
        """Delete (archive, disable) the records of `filter={"id":[...]}`."""
        info = self._table(req, resource)
        resp.media = self.store.delete_many(info, req.context.principal, delete_ids(req.params))

    def _import_csv(self, req, resp, info):
        """A CSV body: every line a record, in one transaction, or none of them (crmapi.imports)."""
        if req.get_header('Idempotency-Key') is not None:
            raise InvalidParam(
                'A CSV import takes no Idempotency-Key: it is all or nothing, and with on_conflict '
                'sending it again changes nothing more',
                param='Idempotency-Key',
            )
        charset = _CHARSET.search(req.content_type or '')
        if charset and charset.group(1).lower() not in ('utf-8', 'utf8', 'us-ascii'):
            raise UnsupportedMediaType(
                f'Send the CSV as UTF-8 (Content-Type: text/csv; charset=utf-8), not {charset.group(1)}'
            )
        on_conflict = query.single(req.params, 'on_conflict')
        lenient = lenient_handling(req, resp)
        limit = self.max_import_bytes
        with imports.spooled(body_stream(req, limit, imports.too_large(limit)), limit) as body:
            created, updated = imports.import_csv(
                self.store, info, req.context.principal, body, on_conflict, lenient=lenient
            )
        resp.status = 200 if updated else 201
        resp.media = {'created': created, 'updated': updated}
        if on_conflict is not None:
            resp.set_header('X-Upsert-Result', f'created={created}, updated={updated}')

    @takes(OWN)
    def on_get_item(self, req, resp, resource, id):
        """One record (archived ones too), with `embed` and `embed_limit` as a list takes them."""
        principal = req.context.principal
        info = self.store.catalog.resolve(resource, principal)  # NOTE: _table's own call, the principal at hand
        # NOTE: a plain get neither looks up the relations nor the media handler (2 µs of ~25); StrictJSON's
        # serialize is this same orjson.dumps.
        embeds, limit = self._item_embeds(req.params, info, principal) if req.params else ((), query.EMBED_LIMIT)
        if not embeds:
            resp.data = orjson.dumps(self.store.get(info, principal, id))
            return
        with self.store.db.transaction():
            record = self.store.get(info, principal, id)
            self.relations.embed(principal, [record], embeds, limit)
        resp.media = record

    def _item_embeds(self, params, info, principal):
        refuse_unknown_params(params, ITEM_PARAMS)
        return query.parse_embed(params, self.relations.of(info, principal))

    @takes()
    def on_put_item(self, req, resp, resource, id):
        """PUT and PATCH alike: a partial update of the fields sent."""
        info = self._table(req, resource)
        lenient = lenient_handling(req, resp)
        resp.media = self.store.update(info, req.context.principal, id, read_body(req, self.max_body_bytes), lenient)

    on_patch_item = on_put_item

    @takes()
    def on_delete_item(self, req, resp, resource, id):
        resp.media = self.store.delete(self._table(req, resource), req.context.principal, id)

    @takes()
    def on_post_restore(self, req, resp, resource, id):
        resp.media = self.store.restore(self._table(req, resource), req.context.principal, id)


class MergeContacts:
    """`POST /api/merge_contacts`."""

    slug = 'contacts'

    def __init__(self, store, max_body_bytes, idempotency):
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.idempotency = idempotency

    @takes()
    def on_post(self, req, resp):
        lenient = lenient_handling(req, resp)
        body = read_body(req, self.max_body_bytes)

        def merge():
            return 200, self.store.merge(self.slug, req.context.principal, body, lenient), {}

        if body.get('dry_run') is True:
            # NOTE: a dry run writes nothing, an Idempotency-Key neither: the same key may then go with the merge.
            resp.media = merge()[1]
            return
        respond_once(req, resp, self.idempotency, body, merge)


class MergeCompanies(MergeContacts):
    """`POST /api/merge_companies`."""

    slug = 'companies'


class Duplicates:
    """`/api/{contacts|companies}/duplicates`: the organization's groups of probable duplicates (GET), the
    candidates of an unsaved record (POST); `/api/{...}/{id}/duplicates`: one record's candidates."""

    def __init__(self, store, slug, limits, max_body_bytes):
        self.store = store
        self.slug = slug
        self.limits = limits
        self.max_body_bytes = max_body_bytes

    def _page(self, req, resp, items):
        """The page of `items` that `range` asks for, with a Content-Range that counts them all."""
        unknown = sorted(set(req.params) - {'range'})
        if unknown:
            raise InvalidParam(f"Unknown parameter '{unknown[0]}': duplicates take only range", param=unknown[0])
        start, end = query.parse_range(req.params, self.limits)
        page = items[start : end + 1]
        resp.set_header('Content-Range', content_range('duplicates', start, len(page), len(items)))
        return page

    def _candidates(self, req, resp, info, found):
        page = self._page(req, resp, found)
        records = self.store.records(info, req.context.principal, [record_id for record_id, _, _ in page])
        # NOTE: a candidate merged away between the two reads is left out of the page rather than shown empty.
        resp.media = [
            {'record': records[record_id], 'score': score, 'reasons': reasons}
            for record_id, score, reasons in page
            if record_id in records
        ]

    @takes(OWN)
    def on_get(self, req, resp):
        info = self.store.catalog.resolve(self.slug, req.context.principal)
        resp.media = self._page(req, resp, self.store.duplicate_groups(info, req.context.principal))

    @takes(OWN)
    def on_get_record(self, req, resp, id):
        info = self.store.catalog.resolve(self.slug, req.context.principal)
        self._candidates(req, resp, info, self.store.duplicate_candidates(info, req.context.principal, record_id=id))

    @takes(OWN)
    def on_post(self, req, resp):
        """A record not saved yet (a form asks before saving): its candidates; nothing is written."""
        info = self.store.catalog.resolve(self.slug, req.context.principal)
        lenient = lenient_handling(req, resp)
        body = read_body(req, self.max_body_bytes)
        self._candidates(
            req, resp, info, self.store.duplicate_candidates(info, req.context.principal, body=body, lenient=lenient)
        )


class Health:
    """`/healthz` (and `/health`, as other clients spell it): the process answers. `/readyz`: and its
    database does too (503 otherwise)."""

    def __init__(self, db):
        self.db = db

    def on_get(self, req, resp):
        resp.media = {'status': 'ok'}

    def on_get_ready(self, req, resp):
        self.db.ping()
        resp.media = {'status': 'ready', 'database': self.db.name}


class Me:
    """`GET /api/me`: who the token speaks for: its CRM user (never token material), the organization,
    and whether the user is an administrator."""

    def __init__(self, store):
        self.store = store

    @takes()
    def on_get(self, req, resp):
        principal, db = req.context.principal, self.store.db
        users = self.store.catalog.resolve('crm_users', principal)
        with db.transaction() as tx:
            user = self.store.get(users, principal, principal.user_id)
            org_id, name = tx.one(*sqlbuild.build_organization(db.dialect, principal.org_id))
        resp.media = {'user': user, 'organization': {'id': org_id, 'name': name}, 'administrator': principal.is_admin}


class Schema:
    """`GET /api/schema` (the resources) and `GET /api/schema/{table}` (one resource's columns and relations)."""

    def __init__(self, store):
        self.catalog = store.catalog
        self.relations = Relations(store)

    @takes()
    def on_get(self, req, resp):
        principal = req.context.principal
        described = [self.catalog.resolve(slug, principal).describe() for slug in self.catalog.visible(principal)]
        resp.media = [{k: v for k, v in d.items() if k != 'columns'} for d in [*described, history.describe()]]

    @takes()
    def on_get_table(self, req, resp, table):
        if table == history.FEED:
            resp.media = history.describe()
            return
        info = self.catalog.resolve(table, req.context.principal)
        resp.media = info.describe(relations=self.relations.of(info, req.context.principal).values())


class CustomObjectDefinitions:
    """`/api/custom_objects[/{slug}[/restore | /fields/{name}]]`: defining an organization's own types."""

    def __init__(self, custom, max_body_bytes):
        self.custom = custom
        self.max_body_bytes = max_body_bytes

    # NOTE: react-admin's getList sends range, sort, order and filter; the definitions (at most 100) come whole.
    @takes('range', 'sort', 'order', 'filter')
    def on_get(self, req, resp):
        rows = [self.custom.to_json(d) for d in self.custom.definitions(req.context.principal.org_id)]
        resp.media = rows
        resp.set_header('Content-Range', content_range('custom_objects', 0, len(rows), len(rows)))

    @takes()
    def on_post(self, req, resp):
        definition = self.custom.define(req.context.principal, read_body(req, self.max_body_bytes))
        resp.status = 201
        resp.set_header('Location', f'{req.root_path}/api/custom_objects/{definition["slug"]}')
        resp.media = definition

    @takes()
    def on_get_item(self, req, resp, slug):
        resp.media = self.custom.get(req.context.principal.org_id, slug)

    @takes()
    def on_put_item(self, req, resp, slug):
        resp.media = self.custom.redefine(req.context.principal, slug, read_body(req, self.max_body_bytes))

    @takes()
    def on_delete_item(self, req, resp, slug):
        resp.media = self.custom.set_archived(req.context.principal, slug, True)

    @takes()
    def on_post_restore(self, req, resp, slug):
        resp.media = self.custom.set_archived(req.context.principal, slug, False)

    @takes()
    def on_delete_field(self, req, resp, slug, name):
        resp.media = self.custom.drop_field(req.context.principal, slug, name)


class History:
    """`GET /api/{resource}/{id}/history` and `/api/custom_objects/{slug}/history`: a record's changes, newest
    first, paged with `range` (archived and deleted records too; an id the organization never had is a 404)."""

    def __init__(self, store, limits):
        self.store = store
        self.limits = limits

    def _range(self, req):
        unknown = sorted(set(req.params) - {'range'})
        if unknown:
            raise InvalidParam(f"Unknown parameter '{unknown[0]}': a history takes only range", param=unknown[0])
        start, end = query.parse_range(req.params, self.limits)
        return start, end - start + 1

    def _page(self, req, resp, resource, record_id, exists):
        org_id = req.context.principal.org_id
        try:
            start, size = self._range(req)
        except InvalidParam:
            # NOTE: an id the organization never had is a 404 whatever the parameters, as for every read
            if not self.store.history.of_record(org_id, resource, record_id, 0, 1)[1]:
                exists()
            raise
        rows, total = self.store.history.of_record(org_id, resource, record_id, start, size)
        if not total:
            exists()  # NOTE: a record without changes (written around the API, or pruned) has an empty history
        resp.media = rows
        resp.set_header('Content-Range', content_range('history', start, len(rows), total))

    @takes(OWN)
    def on_get(self, req, resp, resource, id):
        principal = req.context.principal
        info = self.store.catalog.resolve(resource, principal)
        # NOTE: a summary's records are its table's: their history is that resource's
        slug = info.spec.counted_as if info.spec.read_only else info.slug
        if not self.store.catalog.readable(slug, principal):
            raise Forbidden(f'Only administrators may read the history of {slug}')
        self._page(req, resp, slug, id, lambda: self.store.get(info, principal, id))

    @takes(OWN)
    def on_get_definition(self, req, resp, slug):
        definition = self.store.catalog.custom.get(req.context.principal.org_id, slug)
        self._page(req, resp, history.RESOURCE, definition['id'], lambda: definition)


class Changes:
    """`GET /api/changes?after=<seq>&limit=&resource=`: the organization's changes in `seq` order, for sync
    clients. `X-Next-After` is the `after` of the next poll (the last `seq` answered, or `after` itself)."""

    def __init__(self, store):
        self.store = store

    def _known(self, principal):
        """Whether a name is a resource whose changes are recorded: a writable one, custom_objects, or any of
        the organization's custom objects (archived ones too: their history stays)."""

        def known(name):
            if name == history.RESOURCE:
                return True
            info = self.store.catalog.tables.get(name)
            if info is not None:
                return not info.spec.read_only
            return any(d['slug'] == name for d in self.store.catalog.custom.definitions(principal.org_id))

        return known

    @takes(OWN)
    def on_get(self, req, resp):
        principal = req.context.principal
        after, limit, resource = history.parse_feed(req.params, self._known(principal))
        # NOTE: a user reads the changes of the resources it may read, by the routes' own rule
        hidden = self.store.catalog.unreadable(principal)
        if resource in hidden:
            raise Forbidden(f'Only administrators may read the changes of {resource}')
        rows = self.store.history.feed(principal.org_id, after, limit, resource, hidden)
        resp.media = rows
        resp.set_header('X-Next-After', str(rows[-1]['seq'] if rows else after))


class Webhooks:
    """`/api/webhooks[/{id}[/rotate_secret]]`: reads go the generic way; writes check the URL and the events,
    and a new or rotated secret is in that one answer only."""

    def __init__(self, records, hooks):
        self.records = records
        self.hooks = hooks

    @takes(OWN)
    def on_get(self, req, resp):
        self.records.on_get(req, resp, 'webhooks')

    @takes()
    def on_post(self, req, resp):
        lenient = lenient_handling(req, resp)
        body = read_body(req, self.records.max_body_bytes)
        record = self.hooks.create(req.context.principal, body, lenient)
        resp.status = 201
        resp.set_header('Location', f'{req.root_path}/api/webhooks/{record["id"]}')
        resp.media = record

    @takes()
    def on_patch(self, req, resp):
        lenient = lenient_handling(req, resp)
        resp.media = self.hooks.update_many(
            req.context.principal, read_records(req, self.records.max_body_bytes, allow_object=False), lenient
        )

    @takes(OWN)
    def on_delete(self, req, resp):
        self.records.on_delete(req, resp, 'webhooks')

    @takes(OWN)
    def on_get_item(self, req, resp, id):
        self.records.on_get_item(req, resp, 'webhooks', id)

    @takes()
    def on_put_item(self, req, resp, id):
        lenient = lenient_handling(req, resp)
        resp.media = self.hooks.update(req.context.principal, id, read_body(req, self.records.max_body_bytes), lenient)

    on_patch_item = on_put_item

    @takes()
    def on_delete_item(self, req, resp, id):
        self.records.on_delete_item(req, resp, 'webhooks', id)

    @takes()
    def on_post_rotate(self, req, resp, id):
        resp.media = self.hooks.rotate_secret(req.context.principal, id)


class WebhookDeliveries:
    """`POST /api/webhook_deliveries/{id}/redeliver` (reads are the generic read-only resource's)."""

    def __init__(self, hooks):
        self.hooks = hooks

    @takes()
    def on_post_redeliver(self, req, resp, id):
        resp.status = 202
        resp.media = self.hooks.redeliver(req.context.principal, id)
