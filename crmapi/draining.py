"""Request bodies a server must drop before it answers: what gunicorn's worker (crmapi.serving) and granian's
(crmapi.serving_granian) share.

NOTE: a module of its own so that a granian worker does not import gunicorn (crmapi.serving): 64 modules and
~3 MB of each worker's memory that it never uses.
"""

import time

PROBLEM_JSON = 'application/problem+json'

# A refused body is read and dropped up to this size (declared by Content-Length, or counted as a chunked body
# arrives) and for at most this long. A bigger or slower one is not worth a thread: the answer is still sent,
# then the connection is closed, and a client still sending may see a reset instead of the answer.
DRAIN_MAX_BYTES = 4 * 1024 * 1024
DRAIN_TIMEOUT_S = 5.0
_DRAIN_STEP = 64 * 1024

INTERNAL_DETAIL = 'The server could not complete the request'


def declared_length(value):
    """Content-Length as gunicorn passed it (digits only, or absent for a chunked body)."""
    return int(value) if value else None


def discard_body(body, sock, length=None, max_bytes=DRAIN_MAX_BYTES, timeout=DRAIN_TIMEOUT_S, errors=(OSError,)):
    """Read what is left of a request body and drop it; True when all of it was read.

    `body` is the server's wsgi.input, `sock` the client's socket (its timeout bounds each read; None under a
    server that does not expose it, granian: the deadline is then checked between reads), `length` the declared
    Content-Length (None for a chunked body), `errors` what reading a broken body raises under that server.
    """
    if getattr(body, 'failed', False):
        # NOTE: reading it already raised (a malformed chunk): where it ends is unknown, and reading on would
        # report a clean end. gunicorn then closes the connection.
        return False
    if length is not None and length > max_bytes:
        return False
    deadline = time.monotonic() + timeout
    previous = sock.gettimeout() if sock else None
    drained = 0
    try:
        while drained <= max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if sock:
                sock.settimeout(remaining)
            data = body.read(_DRAIN_STEP)
            if not data:
                return True
            drained += len(data)
        return False
    except errors:  # a timeout, a reset, a malformed chunk: the server closes the connection
        return False
    finally:
        if sock:
            sock.settimeout(previous)


def drain_before_answering(app, errors=(OSError,)):
    """WSGI middleware: when the app starts its answer, the unread rest of the request body is dropped first.

    The answer is then sent on a connection with nothing left to read, so the client gets it whatever it was
    refused for, and the connection can serve the next request.
    """

    def wrapped(environ, start_response):
        length = declared_length(environ.get('CONTENT_LENGTH'))
        if not length and 'HTTP_TRANSFER_ENCODING' not in environ:
            # NOTE: neither a length nor chunks: the request has no body (RFC 9112 6.3), there is nothing to drop. Most
            # requests (every GET) answer without a look at the input stream.
            return app(environ, start_response)

        def start(status, headers, exc_info=None):
            discard_body(environ['wsgi.input'], environ.get('gunicorn.socket'), length, errors=errors)
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped
