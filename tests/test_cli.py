"""The `crmapi` command line, run as a real process against a fresh database of each kind."""
import os
import subprocess
import sys
import uuid

import psycopg
import pytest
import webtest

from crmapi import create_app
from crmapi.config import Settings
from crmapi.db import connect
from conftest import postgres_url


@pytest.fixture
def database_url(backend, tmp_path):
    """A URL to an empty database: a new SQLite file, or a new PostgreSQL database."""
    if backend == 'sqlite':
        yield f'sqlite:///{tmp_path}/cli.db'
        return
    base = postgres_url()
    name = 'cli_' + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE {name}')
    yield base.rsplit('/', 1)[0] + '/' + name
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE {name} WITH (FORCE)')


def crmapi(url, *args, check=True):
    env = {**os.environ, 'CRMAPI_DATABASE_URL': url}
    result = subprocess.run([sys.executable, '-m', 'crmapi', *args], capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def schema_dump(url):
    db = connect(url)
    try:
        return db.introspect(['contacts', 'companies', 'deals', 'tasks', 'crm_users', 'api_tokens',
                              'companies_summary', 'contacts_summary', 'schema_version'])
    finally:
        db.close()


def test_init_db_is_idempotent(database_url):
    crmapi(database_url, 'init-db')
    first = schema_dump(database_url)
    assert crmapi(database_url, 'init-db').returncode == 0
    assert schema_dump(database_url) == first
    assert set(first) >= {'contacts', 'companies_summary', 'contacts_summary'}


def test_create_org_and_token_print_one_line_each_and_the_token_works(database_url):
    crmapi(database_url, 'init-db')
    org = crmapi(database_url, 'create-org', 'Acme Ltd').stdout
    assert org.count('\n') == 1 and org.startswith('org_')
    token = crmapi(database_url, 'create-token', '--org', org.strip(), '--email', 'ann@acme.example',
                   '--admin').stdout
    assert token.count('\n') == 1 and token.startswith('bos_crm_')
    db = connect(database_url)
    try:
        client = webtest.TestApp(create_app(Settings(database_url=database_url), db=db))
        headers = {'Authorization': f'Bearer {token.strip()}'}
        users = client.get('/api/crm_users', headers=headers).json
        assert [(u['email'], u['administrator']) for u in users] == [('ann@acme.example', True)]
        with db.transaction() as tx:
            stored = tx.rows('SELECT token_hash FROM api_tokens')
        assert token.strip() not in str(stored)
    finally:
        db.close()


def test_create_token_for_an_unknown_org_fails_cleanly(database_url):
    crmapi(database_url, 'init-db')
    result = crmapi(database_url, 'create-token', '--org', 'org_nope', '--email', 'a@b.c', check=False)
    assert result.returncode != 0 and 'org_nope' in result.stderr and 'Traceback' not in result.stderr


def test_demo_fills_an_organization_and_prints_a_working_token(database_url):
    token = crmapi(database_url, 'demo').stdout.strip()
    db = connect(database_url)
    try:
        client = webtest.TestApp(create_app(Settings(database_url=database_url), db=db))
        resp = client.get('/api/contacts', headers={'Authorization': f'Bearer {token}'})
        assert resp.headers['Content-Range'].endswith('/40')
    finally:
        db.close()


def test_database_option_overrides_the_environment(tmp_path):
    url = f'sqlite:///{tmp_path}/opt.db'
    result = subprocess.run([sys.executable, '-m', 'crmapi', '--database', url, 'init-db'],
                            capture_output=True, text=True,
                            env={**os.environ, 'CRMAPI_DATABASE_URL': 'sqlite:////nonexistent/dir/x.db'})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'opt.db').exists()
