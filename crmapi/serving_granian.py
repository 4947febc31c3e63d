"""crmapi under granian (a Rust HTTP server, WSGI interface): what crmapi.serving's worker gives gunicorn, for granian.

`crmapi serve --server granian` runs `python -m crmapi.serving_granian <granian options> <app>`: granian's own
command line, with its server class swapped for `Server` below and every worker's app wrapped in `edge()`.

- A body the app refused unread is read and dropped before the answer goes out (draining.drain_before_answering):
  without it granian answers and closes with the body unread, and a client still sending gets a reset. A body over
  draining.DRAIN_MAX_BYTES is not read: the answer says `Connection: close` (granian closes right after it).
- Proxy headers: granian believes none. As gunicorn's forwarded_allow_ips, only a peer in CRMAPI_PROXY_IPS
  (default 127.0.0.1, the nginx of deploy/nginx.conf) sets the mount point (the `SCRIPT_NAME` request header) and
  the scheme (`X-Forwarded-Proto: https`); from any other peer both are ignored.
- A SIGTERM that reaches a worker while it loads the app ends it (granian's would be lost, and the stop take the
  whole kill timeout).
- One listening socket for all workers (granian's own choice on Linux is one per worker): connections wait for
  a worker while one is killed or respawned, instead of being reset or refused.
- Killed workers: granian stops altogether when a worker it respawned dies again within 5.5 s ("crash loop"), the
  right call for a worker that cannot boot, the wrong one for a serving worker that was killed (the OOM killer,
  kill -9): `Server` respawns a worker that had loaded its app, however soon it dies, as gunicorn does.
- An error that escapes the app is a problem+json 500 (granian's own is an empty 500), as under gunicorn.
- granian's own refusals of requests it cannot parse (400, 414, 431) have an empty body, not problem+json: granian
  offers no hook for them. deploy/nginx.conf in front refuses such requests first, with problem+json, but for one:
  over 100 header fields (nginx has no such limit; granian's bare 431 passes through it).
"""

import ctypes
import functools
import ipaddress
import multiprocessing
import os
import signal
import socket
import sys
import traceback

import orjson
from granian.net import SocketSpec
from granian.server import MPServer

from .errors import problem
from .draining import DRAIN_MAX_BYTES
from .draining import INTERNAL_DETAIL
from .draining import PROBLEM_JSON
from .draining import declared_length
from .draining import drain_before_answering

DEFAULT_PROXY_IPS = '127.0.0.1'
M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def trusted_peers(spec):
    """A predicate on REMOTE_ADDR for CRMAPI_PROXY_IPS: comma-separated addresses or networks, or '*'."""
    items = [item.strip() for item in spec.split(',') if item.strip()]
    if '*' in items:
        return lambda address: True
    networks = [ipaddress.ip_network(item, strict=False) for item in items]

    def trusted(address):
        try:
            ip = ipaddress.ip_address(address or '')
        except ValueError:
            return False
        return any(ip in network for network in networks)

    return trusted


def mount(environ, prefix):
    """SCRIPT_NAME = the proxy's mount point, PATH_INFO what follows it (a path outside it is left as it is)."""
    prefix = '/' + prefix.strip('/')
    path = environ.get('PATH_INFO', '')
    if prefix != '/' and (path == prefix or path.startswith(prefix + '/')):
        environ['SCRIPT_NAME'] = environ.get('SCRIPT_NAME', '') + prefix
        environ['PATH_INFO'] = path[len(prefix) :]


def behind_proxy(app, trusted):
    """WSGI middleware: the mount point and the scheme from a trusted proxy's headers, from no one else's."""

    def wrapped(environ, start_response):
        prefix = environ.pop('HTTP_SCRIPT_NAME', None)
        # NOTE: the peer's address is judged only when a header asks for something: parsing it and matching the
        # networks cost ~4 µs, on every request otherwise.
        if (prefix or 'HTTP_X_FORWARDED_PROTO' in environ) and trusted(environ.get('REMOTE_ADDR')):
            if 'HTTP_X_FORWARDED_PROTO' in environ:
                environ['wsgi.url_scheme'] = 'https' if environ['HTTP_X_FORWARDED_PROTO'] == 'https' else 'http'
            if prefix:
                mount(environ, prefix)
        return app(environ, start_response)

    return wrapped


def close_when_unread(app):
    """WSGI middleware: an answer to a body too big to drain says `Connection: close` (granian then closes)."""

    def wrapped(environ, start_response):
        length = declared_length(environ.get('CONTENT_LENGTH'))
        if length is None or length <= DRAIN_MAX_BYTES:
            return app(environ, start_response)

        def start(status, headers, exc_info=None):
            return start_response(status, [*headers, ('Connection', 'close')], exc_info)

        return app(environ, start)

    return wrapped


def last_resort(app):
    """WSGI middleware: an error that escapes the app is a bare problem+json 500 (granian would send an empty 500),
    its traceback on stderr only. crmapi's own app answers whatever it raises; this is for a broken deployment."""

    def wrapped(environ, start_response):
        try:
            return app(environ, start_response)
        except Exception:
            traceback.print_exc()
            body = orjson.dumps(problem(500, 'Internal error', INTERNAL_DETAIL))
            start_response(
                '500 Internal Server Error',
                [('Content-Type', PROBLEM_JSON), ('Content-Length', str(len(body)))],
                sys.exc_info(),
            )
            return [body]

    return wrapped


def edge(app):
    """The app as granian serves it: proxy headers, unread bodies drained (or the connection closed), no bare 500."""
    trusted = trusted_peers(os.environ.get('CRMAPI_PROXY_IPS') or DEFAULT_PROXY_IPS)
    return behind_proxy(close_when_unread(drain_before_answering(last_resort(app))), trusted)


def _load(loader, booted, idx):
    """In the worker: load the app, wrap it, and mark worker `idx` as booted."""
    # NOTE: a forked worker inherits the master's SIGTERM handler, which only flags the master's loop, and sets its
    # own once its app is loaded: a SIGTERM while the app loads would be lost, and the worker would serve on until
    # the master's kill timeout. Until granian's handler is set, a SIGTERM ends a worker that serves nothing yet.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    app = edge(loader())
    booted[idx] = 1
    return app


class Server(MPServer):
    """granian's process server; a worker that had loaded its app is respawned however soon it dies."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # NOTE: shared memory made before the workers fork: each worker marks its slot once its app is loaded.
        self._booted = multiprocessing.RawArray('b', self.workers)

    def _init_shared_socket(self):
        # NOTE: on Linux granian gives each worker a listening socket of its own (SO_REUSEPORT): a killed worker's
        # accept queue dies with it (those clients get a reset) and while no worker is up, connections are
        # refused. As granian does elsewhere (and for unix sockets), and as gunicorn does: one socket, made here
        # and inherited by every worker, where connections wait for the next worker to accept them.
        if self.bind_uds:
            return super()._init_shared_socket()
        self._shd = SocketSpec(self.bind_addr, self.bind_port, self.backlog).build()
        self._sfd = self._shd.get_fd()
        self._ssp = None
        self._sso = socket.socket(fileno=self._sfd)
        self._sso.set_inheritable(True)

    def _spawn_worker(self, idx, target, callback_loader):
        self._booted[idx] = 0
        return super()._spawn_worker(idx, target, functools.partial(_load, callback_loader, self._booted, idx))

    def _respawn_workers(self, workers, spawn_target, target_loader, delay=0):
        # NOTE: granian's crash-loop check (its serve loop) reads respawned_wrks: a worker respawned less than
        # 5.5 s ago that dies again stops the server. A dead worker that had booted was killed, not unable to
        # boot: its respawn is left out of that record.
        killed = [idx for idx in workers if self._booted[idx] and not self.wrks[idx].is_alive()]
        super()._respawn_workers(workers, spawn_target, target_loader, delay)
        for idx in killed:
            self.respawned_wrks.pop(idx, None)


def limit_malloc_arenas(arenas=MALLOC_ARENAS):
    """At most `arenas` glibc malloc arenas in this process and the workers it forks (MALLOC_ARENA_MAX); elsewhere
    (another C library) nothing.

    NOTE: glibc gives each thread that allocates while another does an arena of its own, up to 8 per core, and
    an arena keeps the memory freed into it: a worker's blocking threads (and granian's own) left 1-2 MB more
    resident at the peak than two arenas do. Set in the server process before it forks, the workers inherit it.
    """
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def main(argv=None):
    """granian's command line (same options), serving with `Server`."""
    import granian.cli

    limit_malloc_arenas()
    granian.cli.Server = Server
    sys.argv[1:] = argv if argv is not None else sys.argv[1:]
    granian.cli.entrypoint()


if __name__ == '__main__':
    main()
