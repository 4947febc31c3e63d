"""crmapi's gunicorn worker: gthread, plus what a client sees when a request is refused at the server.

- A body the app did not read (an early 401, 404, 413 or 415) is read and dropped before the answer goes out,
  up to DRAIN_MAX_BYTES: a server that answers and closes with request bytes still unread makes the kernel
  reset the connection, and a client still sending its body then gets the reset instead of the answer.
- gunicorn's own refusals of requests it cannot parse (400, 414, 431, 501, ...) are problem+json like every
  error of the app, instead of gunicorn's text/html page.

deploy/gunicorn.conf.py and `crmapi serve` use it: worker_class = 'crmapi.serving.ThreadWorker'.
"""

from gunicorn import util
from gunicorn.http.errors import ParseException
from gunicorn.workers import gthread

from . import values
from .draining import DRAIN_MAX_BYTES
from .draining import INTERNAL_DETAIL
from .draining import PROBLEM_JSON
from .draining import declared_length
from .draining import drain_before_answering
from .errors import problem

# gunicorn's message can echo the whole malformed request line: keep the answer small.
DETAIL_MAX_CHARS = 300
# What reading a request body raises under gunicorn: a timeout, a reset, a malformed chunk.
READ_ERRORS = (OSError, ParseException)


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
        self.wsgi = drain_before_answering(self.wsgi, READ_ERRORS)

    def handle_request(self, req, conn):
        length = declared_length(next((value for name, value in req.headers if name == 'CONTENT-LENGTH'), None))
        if length is not None and length > DRAIN_MAX_BYTES:
            # NOTE: a body too big to drain if refused: the answer says `Connection: close`, and the connection
            # closes right after it instead of gunicorn waiting for a body it would not read anyway.
            req.force_close()
        return super().handle_request(req, conn)
