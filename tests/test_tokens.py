"""API tokens: listed without secrets, revoked and expired on the next request, use recorded sparingly."""
import datetime
import os
import subprocess
import sys

from crmapi.accounts import Accounts
from conftest import Client
from conftest import assert_problem


def cli(database, *args):
    url = f'sqlite:///{database.path}' if database.name == 'sqlite' else database.url
    return subprocess.run([sys.executable, '-m', 'crmapi', '--database', url, *args], capture_output=True,
                          text=True, env={**os.environ, 'CRMAPI_DATABASE_URL': ''})


def test_list_tokens_shows_one_line_per_token_and_never_the_secret(api, database):
    result = cli(database, 'list-tokens', '--org', api.org_id)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split('\t') == ['id', 'email', 'created', 'last_used', 'expires', 'revoked']
    assert len(lines) == 1 and lines[0].split('\t')[1] == 'admin@example.com'
    assert api.token not in result.stdout and api.token[len('bos_crm_'):] not in result.stdout


def test_a_revoked_token_fails_on_its_next_request(api, database):
    api.get('/api/contacts')
    token_id = cli(database, 'list-tokens', '--org', api.org_id).stdout.splitlines()[1].split('\t')[0]
    result = cli(database, 'revoke-token', token_id)
    assert result.returncode == 0, result.stderr
    resp = api.get('/api/contacts', status=401)
    assert_problem(resp, 401)
    assert resp.headers['WWW-Authenticate'] == 'Bearer'
    assert cli(database, 'list-tokens', '--org', api.org_id).stdout.splitlines()[1].split('\t')[5] != '-'
    assert cli(database, 'revoke-token', 'tok_unknown').returncode != 0


def test_an_expired_token_fails_and_one_with_time_left_works(api, database, wsgi_app):
    accounts = Accounts(database)
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = accounts.create_token(api.org_id, 'late@example.com', expires_at=now - datetime.timedelta(seconds=1))
    fresh = accounts.create_token(api.org_id, 'early@example.com', expires_at=now + datetime.timedelta(days=1))
    assert_problem(Client(wsgi_app, expired).get('/api/contacts', status=401), 401)
    Client(wsgi_app, fresh).get('/api/contacts')


def test_create_token_expires_in_days(api, database):
    result = cli(database, 'create-token', '--org', api.org_id, '--email', 'temp@example.com', '--expires-in', '7')
    assert result.returncode == 0, result.stderr
    line = [row for row in cli(database, 'list-tokens', '--org', api.org_id).stdout.splitlines()
            if '\ttemp@example.com\t' in row][0]
    expires = datetime.datetime.fromisoformat(line.split('\t')[4])
    delta = expires - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=6, hours=23) < delta <= datetime.timedelta(days=7)


def test_last_used_is_written_at_most_once_a_minute(api, database):
    def last_used():
        return dict((row[0], row[3]) for row in Accounts(database).list_tokens(api.org_id))
    api.get('/api/contacts')
    first = last_used()
    assert list(first.values())[0] is not None
    for _ in range(5):
        api.get('/api/contacts')
    assert last_used() == first
