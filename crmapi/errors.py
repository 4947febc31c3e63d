"""Every error a client can see, and the one RFC 9457 body they all render to.

Nothing here imports Falcon, so the parser and the store raise these in plain unit tests;
`app.py` maps the hierarchy to HTTP in one place.
"""

from http import HTTPStatus


class CrmError(Exception):
    """Base for every error a client may see; maps to one problem+json body."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    title = 'Internal error'
    headers: dict = {}

    def __init__(self, detail, **members):
        super().__init__(detail)
        self.detail = detail
        self.members = {k: v for k, v in members.items() if v is not None}

    def to_problem(self):
        return problem(self.status, self.title, self.detail, **self.members)


class BadRequest(CrmError):
    status, title = HTTPStatus.BAD_REQUEST, 'Bad request'


class InvalidParam(BadRequest):
    """A query parameter is malformed, out of range or repeated."""

    title = 'Invalid query parameter'


class UnknownField(BadRequest):
    """A field named in a filter or a sort is not a column of the resource."""

    title = 'Unknown field'


class InvalidBody(BadRequest):
    """The request body is not a JSON object we can use."""

    title = 'Invalid request body'


class InvalidValue(BadRequest):
    """A value does not fit the type of the column it is meant for."""

    title = 'Invalid value'


class Unauthorized(CrmError):
    status, title = HTTPStatus.UNAUTHORIZED, 'Unauthorized'
    headers = {'WWW-Authenticate': 'Bearer'}


class Forbidden(CrmError):
    status, title = HTTPStatus.FORBIDDEN, 'Forbidden'


class NotFound(CrmError):
    status, title = HTTPStatus.NOT_FOUND, 'Not found'


class UnknownResource(NotFound):
    title = 'Unknown resource'


class RecordNotFound(NotFound):
    title = 'Record not found'


class MethodNotAllowed(CrmError):
    """The resource exists but does not support this method (read-only views, restore)."""

    status, title = HTTPStatus.METHOD_NOT_ALLOWED, 'Method not allowed'

    def __init__(self, detail, allow, **members):
        super().__init__(detail, **members)
        self.headers = {'Allow': ', '.join(allow)}


class Conflict(CrmError):
    status, title = HTTPStatus.CONFLICT, 'Conflict'


class KeyReused(CrmError):
    """An Idempotency-Key sent again with a different request."""

    status, title = HTTPStatus.UNPROCESSABLE_ENTITY, 'Idempotency key reused'


class PayloadTooLarge(CrmError):
    status, title = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, 'Payload too large'


class UnsupportedMediaType(CrmError):
    status, title = HTTPStatus.UNSUPPORTED_MEDIA_TYPE, 'Unsupported media type'


class Unavailable(CrmError):
    """The database is unreachable or too slow; the client may retry."""

    status, title = HTTPStatus.SERVICE_UNAVAILABLE, 'Service unavailable'
    headers = {'Retry-After': '1'}


def problem(status, title, detail, **members):
    """Build an RFC 9457 problem body; `message` repeats `detail` for react-admin."""
    status = HTTPStatus(status)
    body = {
        'type': 'about:blank',
        'title': title or status.phrase,
        'status': status.value,
        'detail': detail or status.phrase,
    }
    body['message'] = body['detail']
    body.update(members)
    return encodable(body)


def encodable(value):
    """`value` with every string made valid UTF-8: a lone surrogate becomes its `\\udxxx` escape.

    NOTE: problems echo what the client sent (a field name, a slug); a lone surrogate there would
    make the JSON encoder fail and the answer a bare 500. Every problem body passes through here.
    """
    if isinstance(value, str):
        return value if value.isascii() else value.encode('utf-8', 'backslashreplace').decode('utf-8')
    if isinstance(value, dict):
        return {encodable(k): encodable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encodable(v) for v in value]
    return value
