"""crmapi's gunicorn worker: gthread, plus what a client sees when a request is refused at the server.

- A body the app did not read (an early 401, 404, 413 or 415) is read and dropped before the answer goes out,
  up to DRAIN_MAX_BYTES: a server that answers and closes with request bytes still unread makes the kernel
  reset the connection, and a client still sending its body then gets the reset instead of the answer.
- gunicorn's own refusals of requests it cannot parse (400, 414, 431, 501, ...) are problem+json like every
  error of the app, instead of gunicorn's text/html page.

deploy/gunicorn.conf.py and `crmapi serve` use it: worker_class = 'crmapi.serving.ThreadWorker'.
"""

import time

from gunicorn import util
from gunicorn.http.errors import ParseException
from gunicorn.workers import gthread

from . import values
from .errors import problem

PROBLEM_JSON = 'application/problem+json'

# A refused body is read and dropped up to this size (declared by Content-Length, or counted as a chunked body
# arrives) and for at most this long. A bigger or slower one is not worth a thread: the answer is still sent,
# then the connection is closed, and a client still sending may see a reset instead of the answer.
DRAIN_MAX_BYTES = 4 * 1024 * 1024
DRAIN_TIMEOUT_S = 5.0
_DRAIN_STEP = 64 * 1024

# gunicorn's message can echo the whole malformed request line: keep the answer small.
DETAIL_MAX_CHARS = 300
INTERNAL_DETAIL = 'The server could not complete the request'


def declared_length(value):
    """Content-Length as gunicorn passed it (digits only, or absent for a chunked body)."""
    return int(value) if value else None


def discard_body(body, sock, length=None, max_bytes=DRAIN_MAX_BYTES, timeout=DRAIN_TIMEOUT_S):
    """Read what is left of a request body and drop it; True when all of it was read.

    `body` is the server's wsgi.input, `sock` the client's socket (its timeout bounds each read; None under a
    server that does not expose it, granian: the deadline is then checked between reads), `length` the declared
    Content-Length (None for a chunked body).
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
    except (OSError, ParseException):  # a timeout, a reset, a malformed chunk: gunicorn closes the connection
        return False
    finally:
        if sock:
            sock.settimeout(previous)


def drain_before_answering(app):
    """WSGI middleware: when the app starts its answer, the unread rest of the request body is dropped first.

    The answer is then sent on a connection with nothing left to read, so the client gets it whatever it was
    refused for, and the connection can serve the next request.
    """

    def wrapped(environ, start_response):
        def start(status, headers, exc_info=None):
            length = declared_length(environ.get('CONTENT_LENGTH'))
            discard_body(environ['wsgi.input'], environ.get('gunicorn.socket'), length)
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped


def sentence_case(reason):
    """'URI Too Long' -> 'URI too long': titles as the app writes them."""
    words = [word if word.isupper() else word.lower() for word in reason.split()]
    return ' '.join(words)[:1].upper() + ' '.join(words)[1:]


def problem_response(status, reason, message):
    """The bytes of a complete problem+json answer that closes the connection."""
    if status == 500:
        detail = INTERNAL_DETAIL  # NOTE: a bug or a misconfiguration: the details are in gunicorn's log only
    else:
        detail = ' '.join((message or '').split())[:DETAIL_MAX_CHARS] or reason
    # NOTE: not orjson: the echoed request line may hold any code point, lone surrogates included.
    body = values.ascii_json(problem(status, sentence_case(reason), detail)).encode()
    head = (
        f'HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_JSON}\r\n'
        f'Content-Length: {len(body)}\r\n\r\n'
    )
    return head.encode('latin-1') + body


def write_problem(sock, status, reason, message):
    """Stands in for gunicorn.util.write_error (same arguments), which writes a text/html page."""
    util.write_nonblock(sock, problem_response(status, reason, message))


class ThreadWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker, with drained bodies and problem+json refusals (see the module docstring)."""

    def init_process(self):
        # NOTE: Worker.handle_error classifies every malformed request (status, reason, message), logs it and
        # ends with util.write_error. Swapping that one writer, in this worker process only, keeps gunicorn's
        # classification of every parse error, present and future, and changes only the body sent.
        util.write_error = write_problem
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        self.wsgi = drain_before_answering(self.wsgi)

    def handle_request(self, req, conn):
        length = declared_length(next((value for name, value in req.headers if name == 'CONTENT-LENGTH'), None))
        if length is not None and length > DRAIN_MAX_BYTES:
            # NOTE: a body too big to drain if refused: the answer says `Connection: close`, and the connection
            # closes right after it instead of gunicorn waiting for a body it would not read anyway.
            req.force_close()
        return super().handle_request(req, conn)
