"""Real server processes for tests: gunicorn with deploy/gunicorn.conf.py or granian through `crmapi serve`, nginx
with deploy/nginx.conf.

Everything listens on a free 127.0.0.1 port, writes its logs and state into a temp directory, and is
stopped by the caller (`with server:` or `server.stop()` in a fixture teardown). Every wait is
bounded. `probe_app()` is the only test code that runs inside the servers; it stays out of crmapi/.
"""

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / 'deploy' / 'gunicorn.conf.py'
NGINX_CONF = ROOT / 'deploy' / 'nginx.conf'
GRANIAN_ENV = ROOT / 'deploy' / 'granian.env'
LOOPBACK = '127.0.0.1'


def free_port(host=LOOPBACK):
    """A port nothing listens on right now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, source=None, timeout=15):
    """One HTTP/1.1 request on a fresh connection: (status, headers as a lower-cased dict, body bytes).

    `source` is the client's own address, e.g. '127.0.0.2' to come from an address gunicorn does not trust.
    """
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout, source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _wait_for(proc, port, logs, timeout, what):
    """Until `port` answers HTTP; fail early with the logs if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f'{what} exited with {proc.returncode}:\n{read_logs(logs)}')
        try:
            request(port, 'GET', '/', timeout=2)
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f'{what} not ready on port {port} after {timeout}s:\n{read_logs(logs)}')


def read_logs(paths):
    return '\n'.join(f'--- {p}\n{Path(p).read_text(errors="replace")}' for p in paths if Path(p).exists())


class Server:
    """A started process: its port, its log files, and a bounded stop (also on leaving a `with`)."""

    def __init__(self, proc, port, logs, files, name=None):
        self.proc, self.port, self.logs, self._files, self.name = proc, port, logs, files, name

    @property
    def pid(self):
        return self.proc.pid

    def request(self, method, path, **kwargs):
        return request(self.port, method, path, **kwargs)

    def wait(self, timeout):
        """The exit code, or TimeoutError."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f'pid {self.pid} still running after {timeout}s') from None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Send `sig`, wait; if it hangs, SIGKILL its process group (the workers it started)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for f in self._files:
            f.close()
        return self.proc.returncode

    def log_text(self):
        return read_logs(self.logs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _spawn(argv, directory, env, name):
    out, err = directory / f'{name}.stdout', directory / f'{name}.stderr'
    files = [open(out, 'wb'), open(err, 'wb')]
    # NOTE: a session of its own, so a hung server's workers can be killed as a group, and ^C on pytest
    # does not reach them before the fixture's teardown does.
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=files[0], stderr=files[1], start_new_session=True
    )
    return proc, files, [out, err]


SERVERS = ('gunicorn', 'granian')


def env_file(path):
    """{KEY: VALUE} of a KEY=VALUE file (# comments), as systemd's EnvironmentFile reads deploy/granian.env."""
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return dict(line.split('=', 1) for line in lines if line and not line.startswith('#'))


def server_argv(server, app, serve):
    """Each server as deployed: gunicorn with deploy/gunicorn.conf.py, or `crmapi serve --server <server>` (granian's
    only deployment; deploy/granian.env holds its settings). `app` is a factory, `module:name` (`()` optional)."""
    app = app.removesuffix('()')
    if server == 'gunicorn' and not serve:
        return [sys.executable, '-m', 'gunicorn', '--config', str(GUNICORN_CONF), f'{app}()']
    return [sys.executable, '-m', 'crmapi', 'serve', '--server', server, '--app', app]


def start_server(directory, server='gunicorn', env=None, app='crmapi:create_app', serve=False, timeout=30):
    """`server` (gunicorn or granian) on a free loopback port (passed as CRMAPI_BIND), ready to answer.

    The other settings come from the environment, as in deployment: deploy/granian.env under granian, then `env`.
    """
    if server not in SERVERS:
        raise ValueError(f'unknown server {server!r}: one of {SERVERS}')
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # NOTE: tests/ is on the path so `servers:probe_app()` can be loaded; crmapi comes from the venv.
    path = os.pathsep.join(p for p in (str(ROOT / 'tests'), os.environ.get('PYTHONPATH')) if p)
    shipped = env_file(GRANIAN_ENV) if server == 'granian' and not serve else {}
    env = {**os.environ, **shipped, 'CRMAPI_BIND': f'{LOOPBACK}:{port}', 'PYTHONPATH': path, **(env or {})}
    name = f'{server}-serve' if serve else server
    proc, files, logs = _spawn(server_argv(server, app, serve), directory, env, name)
    started = Server(proc, port, logs, files, server)
    try:
        _wait_for(proc, port, logs, timeout, name)
    except BaseException:
        started.stop(timeout=5)
        raise
    return started


def start_gunicorn(directory, env=None, app='crmapi:create_app()', timeout=30):
    """gunicorn with deploy/gunicorn.conf.py (start_server for the tests that only run it)."""
    return start_server(directory, 'gunicorn', env, app, timeout=timeout)


def nginx_binary():
    path = shutil.which('nginx') or next((p for p in ('/usr/sbin/nginx', '/sbin/nginx') if os.path.exists(p)), None)
    if path is None:
        raise RuntimeError(
            'nginx is not installed: run `make test` (it installs the Debian package '
            'nginx-light), or apt-get install nginx-light'
        )
    return path


def _replace_once(pattern, replacement, text):
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f'deploy/nginx.conf: expected exactly one match of {pattern!r}, found {count}')
    return new


def render_nginx_conf(directory, port, upstream_port, site=NGINX_CONF):
    """deploy/nginx.conf (an http-level site file) inside a main config whose state all lives in `directory`.

    Only the listen address, the upstream's address and the access log path change; the rest is the
    file as shipped.
    """
    directory = Path(directory)
    text = Path(site).read_text()
    text = _replace_once(r'^(\s*)listen\s+[^;]+;', rf'\g<1>listen {LOOPBACK}:{port};', text)
    text = _replace_once(r'^(\s*)server\s+127\.0\.0\.1:\d+', rf'\g<1>server {LOOPBACK}:{upstream_port}', text)
    text = _replace_once(r'^(\s*)access_log\s+\S+', rf'\g<1>access_log {directory / "access.log"}', text)
    (directory / 'crmapi.conf').write_text(text)
    temp = {name: directory / name for name in ('client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi')}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    # NOTE: as root the workers would drop to `nobody`, who cannot write the private temp dirs.
    user = 'user root;' if os.geteuid() == 0 else ''
    main = f"""
{user}
daemon off;
worker_processes 1;
pid {directory / 'nginx.pid'};
error_log {directory / 'error.log'} info;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {temp['client_body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    default_type application/octet-stream;
    include {directory / 'crmapi.conf'};
}}
"""
    (directory / 'nginx.conf').write_text(main)
    return directory / 'nginx.conf'


def start_nginx(directory, upstream_port, timeout=15, site=NGINX_CONF):
    """nginx in the foreground on a free loopback port, proxying to the app server on `upstream_port`.

    `site` replaces deploy/nginx.conf, e.g. a copy with shorter timeouts.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = render_nginx_conf(directory, port, upstream_port, site=site)
    binary = nginx_binary()
    base = [binary, '-p', str(directory), '-e', str(directory / 'error.log'), '-c', str(conf)]
    check = subprocess.run([*base, '-t'], capture_output=True, text=True, timeout=timeout)
    if check.returncode != 0:
        raise RuntimeError(f'nginx -t failed:\n{check.stderr}')
    proc, files, logs = _spawn(base, directory, dict(os.environ), 'nginx')
    logs.append(directory / 'error.log')
    server = Server(proc, port, logs, files)
    try:
        _wait_for(proc, port, logs, timeout, 'nginx')
    except BaseException:
        server.stop(timeout=5)
        raise
    return server


def start_crmapi_serve(directory, env=None, server='gunicorn', timeout=30):
    """`crmapi serve --server <server>` (its own flags, not deploy/gunicorn.conf.py), 1 worker x 2 threads."""
    env = {'CRMAPI_WORKERS': '1', 'CRMAPI_THREADS': '2', **(env or {})}
    return start_server(directory, server, env, serve=True, timeout=timeout)


def workers_of(pid):
    """The pids whose parent is `pid` (a master's workers), from /proc."""
    found = []
    for entry in filter(str.isdigit, os.listdir('/proc')):
        with contextlib.suppress(OSError):
            stat = Path(f'/proc/{entry}/stat').read_text()
            fields = stat[stat.rindex(')') + 2 :].split()
            if int(fields[1]) == pid and fields[0] != 'Z':
                found.append(int(entry))
    return found


def established(port):
    """How many TCP connections to 127.0.0.1:`port` are open (from /proc/net/tcp): connections kept alive."""
    local = f'0100007F:{port:04X}'
    with open('/proc/net/tcp') as table:
        return sum(1 for line in table.readlines()[1:] if line.split()[1] == local and line.split()[3] == '01')


def raw_request(port, data, timeout=15, piece=64 * 1024, pause=0.001):
    """Send `data` as is (malformed on purpose), then read the one answer: (status, lower-cased headers, body).

    The whole request goes out before anything is read, as a client that sends a body and then waits does,
    `piece` bytes at a time with a `pause` between them, as over a real network (on loopback the kernel would
    otherwise take a whole MiB at once): a server that stops reading and closes makes the send fail.
    """
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        for start in range(0, len(data), piece):
            sock.sendall(data[start : start + piece])
            time.sleep(pause)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def chunked_request(port, method, path, chunks, headers=None, timeout=15):
    """A request whose body goes out with `Transfer-Encoding: chunked` (no Content-Length), one chunk per item."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=iter(chunks), headers=headers or {}, encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# --- runs inside the server ---------------------------------------------------------------------------

ENVIRON_KEYS = (
    'SCRIPT_NAME',
    'PATH_INFO',
    'QUERY_STRING',
    'REMOTE_ADDR',
    'REMOTE_PORT',
    'wsgi.url_scheme',
    'HTTP_HOST',
    'HTTP_X_FORWARDED_FOR',
    'HTTP_X_FORWARDED_PROTO',
    'HTTP_X_FORWARDED_HOST',
    'HTTP_FORWARDED',
    'HTTP_X_FORWARDED_SSL',
    'HTTP_X_REQUEST_ID',
    'HTTP_CONNECTION',
)


def probe_app():
    """crmapi.create_app() unchanged, plus two test-only paths in front of it.

    - `.../_probe/environ`: the WSGI environ keys a proxy influences, as JSON (what the app would trust);
      answered under any prefix, so a prefix that was not stripped shows in PATH_INFO.
    - `/_probe/slow/<path>`: touches `$CRMAPI_PROBE_DIR/started`, sleeps `$CRMAPI_PROBE_SLEEP_S`, then
      serves `<path>` with the real app: an in-flight request to interrupt with SIGTERM.
    - `$CRMAPI_PROBE_BOOT_S`: seconds each worker takes to load the app (a worker to stop while it boots).
    """
    from crmapi import create_app

    time.sleep(float(os.environ.get('CRMAPI_PROBE_BOOT_S', '0')))
    api = create_app()
    directory = Path(os.environ.get('CRMAPI_PROBE_DIR', '.'))
    sleep_s = float(os.environ.get('CRMAPI_PROBE_SLEEP_S', '2'))

    def app(environ, start_response):
        path = environ.get('PATH_INFO', '')
        if path.endswith('/_probe/environ'):  # wherever the prefix ended up
            body = json.dumps({k: environ.get(k) for k in ENVIRON_KEYS}).encode()
            start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', str(len(body)))])
            return [body]
        if path.startswith('/_probe/slow/'):
            (directory / 'started').write_text(str(os.getpid()))
            time.sleep(sleep_s)
            environ = {**environ, 'PATH_INFO': path[len('/_probe/slow') :]}
        return api(environ, start_response)

    return app


def failing_app():
    """A WSGI app that always raises, with a message that must never reach a client: the server's own 500."""

    def app(environ, start_response):
        raise RuntimeError('secret: /etc/crmapi/internal.conf line 3')

    return app
