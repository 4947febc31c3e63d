"""react-admin's `ra-data-simple-rest`, unmodified, under Node against a real server (`crmapi serve`: granian).

The server is `python -m crmapi serve` on a free loopback port, over a temporary SQLite file or the
test PostgreSQL database, with one allowed CORS origin. The Node side (tests/js) is installed from
its committed package-lock.json with `npm ci` (make test does it; so does this module if needed).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import postgres_url

JS = Path(__file__).parent / 'js'
ORIGIN = 'http://localhost:5173'
START_TIMEOUT_S = 30
NODE_TIMEOUT_S = 180

pytestmark = pytest.mark.slow


def cli(url, *args):
    out = subprocess.run(
        [sys.executable, '-m', 'crmapi', '--database', url, *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def fetch(url, method='GET', headers=None):
    """(status, headers, body) of one request; errors are answers too."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.fixture(scope='module')
def node_modules():
    node, npm = shutil.which('node'), shutil.which('npm')
    if node is None or npm is None:
        pytest.fail('Node.js 20+ and npm are needed for the react-admin test')
    version = subprocess.run([node, '--version'], capture_output=True, text=True, timeout=30).stdout
    assert int(version.lstrip('v').split('.')[0]) >= 20, version
    lock = JS / 'package-lock.json'
    installed = JS / 'node_modules' / '.package-lock.json'
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        # NOTE: make test runs `npm ci --prefix tests/js` first; this covers a bare `pytest`.
        out = subprocess.run(
            [npm, 'ci', '--no-audit', '--no-fund'], cwd=JS, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stdout + out.stderr
    return node


@pytest.fixture(scope='module')
def server(backend, database, tmp_path_factory):
    """`crmapi serve` (granian) over a fresh SQLite file or the test PostgreSQL; yields (api url, admin token)."""
    if backend == 'sqlite':
        url = f'sqlite:///{tmp_path_factory.mktemp("react-admin") / "crm.db"}'
    else:
        url = postgres_url()
    cli(url, 'init-db')
    org = cli(url, 'create-org', 'React Admin')
    token = cli(url, 'create-token', '--org', org, '--email', 'ra@example.com', '--admin')
    port = free_port()
    env = {**os.environ, 'CRMAPI_CORS_ORIGINS': ORIGIN}
    proc = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'crmapi',
            '--database',
            url,
            'serve',
            '--bind',
            f'127.0.0.1:{port}',
            '--workers',
            '1',
            '--threads',
            '4',
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f'http://127.0.0.1:{port}/api'
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if fetch(f'{base}/openapi.json')[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f'crmapi serve did not start: {proc.stderr.read().decode(errors="replace")[-2000:]}')
            time.sleep(0.2)
        yield base, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_ra_data_simple_rest_drives_the_api(node_modules, server):
    base, token = server
    env = {**os.environ, 'CRMAPI_URL': base, 'CRMAPI_TOKEN': token, 'CRMAPI_ORIGIN': ORIGIN}
    out = subprocess.run(
        [node_modules, '--test', '--test-reporter=spec', 'react_admin.test.mjs'],
        cwd=JS,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-4000:]
    assert '# fail 0' in out.stdout or 'fail 0' in out.stdout, out.stdout[-4000:]


def test_preflight_is_answered_without_a_token(server):
    base, _ = server
    status, headers, _ = fetch(
        f'{base}/deals/d_x',
        method='OPTIONS',
        headers={
            'Origin': ORIGIN,
            'Access-Control-Request-Method': 'PUT',
            'Access-Control-Request-Headers': 'Authorization, Content-Type, Range',
        },
    )
    assert 200 <= status < 300
    assert headers['Access-Control-Allow-Origin'] == ORIGIN
    assert 'PUT' in headers['Access-Control-Allow-Methods']
    allowed = headers['Access-Control-Allow-Headers'].lower()
    assert {'authorization', 'content-type', 'range'} <= {h.strip() for h in allowed.split(',')}
    assert 'Content-Range' in headers['Access-Control-Expose-Headers']
    assert headers['Access-Control-Allow-Origin'] != '*'


def test_the_range_header_pages_like_the_range_parameter(server):
    base, token = server
    auth = {'Authorization': f'Bearer {token}'}
    status, headers, body = fetch(f'{base}/crm_users', headers={**auth, 'Range': 'crm_users=1-1'})
    assert status == 200
    assert headers['Content-Range'] == 'crm_users */1'
    assert json.loads(body) == []
