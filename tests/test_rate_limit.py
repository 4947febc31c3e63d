"""A request budget per API token (CRMAPI_RATE_LIMIT, a token bucket per process): 429 with
Retry-After once it is spent, and draft-ietf-httpapi-ratelimit-headers-06 fields on every
authenticated answer. Off unless configured; on in deploy/gunicorn.conf.py and deploy/granian.env.
"""

import threading

import pytest
import webtest

import servers
from conftest import NoLeaks
from conftest import assert_problem
from conftest import new_org
from crmapi import create_app
from crmapi.accounts import Accounts
from crmapi.config import Settings
from crmapi.ratelimit import TokenBuckets
from crmapi.ratelimit import parse_rate

FIELDS = ('RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset', 'RateLimit-Policy')


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- the bucket ------------------------------------------------------------------------------------


def test_a_token_gets_its_burst_then_waits_for_the_refill():
    clock = Clock()
    buckets = TokenBuckets(10, 60, clock)  # 10 deep, one more every 6 s
    decisions = [buckets.take('tok_a') for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert [d.remaining for d in decisions[:3]] == [9, 8, 7] and decisions[9].remaining == 0
    refused = decisions[10]
    assert (refused.retry_after, refused.reset) == (6, 60)
    clock.now += 5.9
    assert not buckets.take('tok_a').allowed
    clock.now += 0.1
    assert buckets.take('tok_a').allowed and not buckets.take('tok_a').allowed


def test_tokens_have_budgets_of_their_own():
    buckets = TokenBuckets(1, 60, Clock())
    assert buckets.take('tok_a').allowed and not buckets.take('tok_a').allowed
    assert buckets.take('tok_b').allowed


def test_a_refill_never_exceeds_the_limit():
    clock = Clock()
    buckets = TokenBuckets(3, 3, clock)
    buckets.take('tok_a')
    clock.now += 3600
    assert [buckets.take('tok_a').allowed for _ in range(4)] == [True, True, True, False]


def test_the_headers_of_an_allowed_and_a_refused_request():
    buckets = TokenBuckets(2, 60, Clock())
    assert buckets.take('t').headers() == {
        'RateLimit-Limit': '2',
        'RateLimit-Remaining': '1',
        'RateLimit-Reset': '30',
        'RateLimit-Policy': '2;w=60',
    }
    buckets.take('t')
    refused = buckets.take('t').headers()
    assert refused['Retry-After'] == '30' and refused['RateLimit-Remaining'] == '0'


def test_concurrent_requests_never_spend_more_than_the_budget():
    buckets = TokenBuckets(300, 60, Clock())
    allowed, lock = [], threading.Lock()
    barrier = threading.Barrier(16)

    def client():
        barrier.wait()
        mine = sum(buckets.take('tok_shared').allowed for _ in range(50))
        with lock:
            allowed.append(mine)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(allowed) == 300


def test_buckets_idle_for_a_whole_window_are_forgotten():
    clock = Clock()
    buckets = TokenBuckets(5, 10, clock)
    for n in range(1000):
        buckets.take(f'tok_{n}')
    clock.now += 10
    buckets.take('tok_new')
    assert list(buckets.buckets) == ['tok_new']


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('raw', 'parsed'), [('600/60', (600, 60.0)), (' 5/0.5 ', (5, 0.5)), ('0', None), ('0/60', None)]
)
def test_the_rate_limit_setting(raw, parsed):
    assert parse_rate(raw) == parsed


@pytest.mark.parametrize(
    'raw', ['600', '600/', '/60', 'x/60', '600/x', '-1/60', '600/0', '600/-5', '1.5/60', '600/inf', '600/nan']
)
def test_a_malformed_rate_limit_setting_is_refused_at_start(monkeypatch, raw):
    monkeypatch.setenv('CRMAPI_RATE_LIMIT', raw)
    with pytest.raises(ValueError, match='CRMAPI_RATE_LIMIT'):
        Settings.from_env()


@pytest.mark.parametrize('raw', [None, ''])
def test_no_rate_limit_unless_configured(monkeypatch, raw):
    monkeypatch.delenv('CRMAPI_RATE_LIMIT', raising=False)
    if raw is not None:
        monkeypatch.setenv('CRMAPI_RATE_LIMIT', raw)
    assert Settings.from_env().rate_limit is None


# -- through the app, on both databases ------------------------------------------------------------


@pytest.fixture(scope='module')
def limited_app(database):
    """3 requests per hour per token: nothing refills while a test runs."""
    return NoLeaks(create_app(Settings(database_url='injected', access_log=False, rate_limit=(3, 3600)), db=database))


@pytest.fixture
def limited(database, limited_app):
    return new_org(database, limited_app)


def test_the_request_over_the_budget_is_429_with_retry_after(limited):
    for remaining in ('2', '1', '0'):
        assert limited.get('/api/contacts').headers['RateLimit-Remaining'] == remaining
    resp = limited.get('/api/contacts', status=429)
    assert_problem(resp, 429, title='Too many requests')
    assert resp.headers['Retry-After'] == '1200'
    assert (resp.headers['RateLimit-Limit'], resp.headers['RateLimit-Remaining']) == ('3', '0')
    assert resp.headers['RateLimit-Policy'] == '3;w=3600'
    assert int(resp.headers['RateLimit-Reset']) > 0


def test_every_authenticated_answer_carries_the_ratelimit_fields(limited):
    answers = [
        limited.get('/api/contacts', {'range': [5, 1]}, status=400),
        limited.get('/api/contacts/c_missing', status=404),
        limited.post('/api/contacts', {'first_name': 'Ada'}, status=201),
    ]
    for resp in answers:
        assert all(name in resp.headers for name in FIELDS), (resp.status, resp.headers)
    assert [r.headers['RateLimit-Remaining'] for r in answers] == ['2', '1', '0']


def test_every_kind_of_request_spends_the_budget_and_writes_are_refused_too(limited):
    limited.get('/api/schema')
    limited.get('/api/nothing/here/at/all', status=404)
    limited.get('/api/openapi.json')
    assert_problem(limited.post('/api/contacts', {'first_name': 'Ada'}, status=429), 429)
    assert limited.get('/api/contacts', status=429).headers['Retry-After']


def test_one_tokens_budget_leaves_the_others_alone(database, limited_app, limited):
    for _ in range(3):
        limited.get('/api/contacts')
    limited.get('/api/contacts', status=429)
    same_user = Accounts(database).create_token(limited.org_id, 'admin@example.com', admin=True)
    assert webtest.TestApp(limited_app).get(
        '/api/contacts', headers={'Authorization': f'Bearer {same_user}'}, status=200
    )
    other = new_org(database, limited_app, name='Elsewhere')
    other.get('/api/contacts', status=200)


def test_unauthenticated_and_public_answers_carry_no_budget(limited_app):
    app = webtest.TestApp(limited_app)
    for path, status in [('/api/contacts', 401), ('/healthz', 200), ('/api/docs', 200), ('/api/openapi.json', 200)]:
        resp = app.get(path, status=status)
        assert not any(name in resp.headers for name in FIELDS), path
    for _ in range(5):
        app.get('/api/contacts', headers={'Authorization': 'Bearer bos_crm_' + 'x' * 43}, status=401)


def test_browsers_may_read_the_ratelimit_fields(limited):
    resp = limited.get('/api/contacts', headers={'Origin': 'https://admin.example'})
    exposed = {h.strip() for h in resp.headers['Access-Control-Expose-Headers'].split(',')}
    assert {'Retry-After', *FIELDS} <= exposed


def test_without_a_limit_no_ratelimit_fields_are_sent(api):
    resp = api.get('/api/contacts')
    assert not any(name in resp.headers for name in FIELDS)


# -- the shipped configurations (deploy/gunicorn.conf.py, deploy/granian.env) turn it on ----------


def _serve(backend, database, directory, server='gunicorn', **env):
    url = f'sqlite:///{database.path}' if backend == 'sqlite' else database.url
    return servers.start_server(directory, server, env={'CRMAPI_DATABASE_URL': url, 'CRMAPI_WORKERS': '1', **env})


def _auth(database):
    """The Authorization header of a new organization's user."""
    accounts = Accounts(database)
    return {'Authorization': f'Bearer {accounts.create_token(accounts.create_org("Served"), "ops@example.com")}'}


@pytest.mark.slow
@pytest.mark.parametrize('name', servers.SERVERS)
def test_the_shipped_config_limits_600_a_minute_by_default(backend, database, tmp_path, monkeypatch, name):
    monkeypatch.delenv('CRMAPI_RATE_LIMIT', raising=False)
    with _serve(backend, database, tmp_path, name) as server:
        status, headers, _ = server.request('GET', '/api/contacts', headers=_auth(database))
    assert status == 200
    assert (headers['ratelimit-limit'], headers['ratelimit-policy']) == ('600', '600;w=60')


@pytest.mark.slow
def test_gunicorn_answers_429_once_a_configured_budget_is_spent(backend, database, tmp_path):
    auth = _auth(database)
    with _serve(backend, database, tmp_path, CRMAPI_RATE_LIMIT='2/3600') as server:
        statuses = [server.request('GET', '/api/contacts', headers=auth) for _ in range(3)]
        other = server.request('GET', '/api/contacts', headers=_auth(database))
    assert [s for s, _, _ in statuses] == [200, 200, 429]
    assert statuses[2][1]['retry-after'] == '1800' and statuses[2][1]['content-type'] == 'application/problem+json'
    assert other[0] == 200


@pytest.mark.slow
def test_gunicorn_without_a_limit_when_set_to_zero(backend, database, tmp_path):
    with _serve(backend, database, tmp_path, CRMAPI_RATE_LIMIT='0') as server:
        status, headers, _ = server.request('GET', '/api/contacts', headers=_auth(database))
    assert status == 200 and 'ratelimit-limit' not in headers
