"""/api/docs in a real browser: a reader authorizes once, lists with a filter and creates a record.

Debian's Chromium, driven by Playwright (both installed by `make test`; Playwright's own browser
download is not used), opens the page through the shipped nginx and gunicorn over a SQLite file,
mounted under /crm as deploy/nginx.conf does, so the relative asset URLs and the document's server
are checked where they matter. Any console error (a CSP violation is one), uncaught exception, failed
request, answer of 400 or more, or request leaving the server (the page must work offline) fails it.
"""

import json
import os
import shutil

import pytest

import servers
from conftest import fresh_database
from crmapi.accounts import Accounts

CHROMIUM = '/usr/bin/chromium'
TIMEOUT_MS = 20_000
MOUNT = '/crm'


@pytest.fixture(scope='module')
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail('Playwright is not installed: run `make test` (the test extras install it)')
    path = shutil.which('chromium') or CHROMIUM
    if not os.path.exists(path):
        pytest.fail('Chromium is not installed: run `make test` (it installs the Debian package chromium)')
    # NOTE: Debian's Chromium, never `playwright install` (that download is not reachable); --no-sandbox
    # because CI runs as root, where Chromium's sandbox refuses to start.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=['--no-sandbox'])
        yield chromium
        chromium.close()


@pytest.fixture(scope='module')
def sqlite_file(tmp_path_factory):
    """A database of its own.

    NOTE: SQLite only, to keep this test within its time budget (a page load is seconds): the page does
    the same on both databases, and test_openapi.py checks the document and the page's examples on both.
    """
    db = fresh_database('sqlite', tmp_path_factory.mktemp('docs-db'))
    yield db
    db.close()


@pytest.fixture(scope='module')
def site(sqlite_file, tmp_path_factory):
    """nginx (the API under /crm) in front of gunicorn: yields nginx's Server."""
    directory = tmp_path_factory.mktemp('docs-site')
    env = {'CRMAPI_DATABASE_URL': f'sqlite:///{sqlite_file.path}', 'CRMAPI_WORKERS': '1'}
    with (
        servers.start_gunicorn(directory / 'gunicorn', env=env) as gunicorn,
        servers.start_nginx(directory / 'nginx', upstream_port=gunicorn.port) as nginx,
    ):
        yield nginx
    assert 'Traceback' not in gunicorn.log_text(), gunicorn.log_text()


def call(site, method, path, token, body=None):
    status, _, data = site.request(
        method,
        MOUNT + path,
        body=json.dumps(body).encode() if body else None,
        headers={'Authorization': f'Bearer {token}', 'Content-Type': 'application/json'},
    )
    assert status < 300, data
    return json.loads(data)


@pytest.fixture
def organization(site, sqlite_file):
    """An administrator's token, a custom object `projects` and two contacts."""
    accounts = Accounts(sqlite_file)
    token = accounts.create_token(accounts.create_org('Docs'), 'docs@example.com', admin=True)
    call(
        site,
        'POST',
        '/api/custom_objects',
        token,
        {'slug': 'projects', 'fields': [{'name': 'title', 'type': 'text', 'required': True}]},
    )
    call(
        site,
        'POST',
        '/api/contacts',
        token,
        [{'first_name': 'Ada', 'last_name': 'Lovelace'}, {'first_name': 'Grace', 'last_name': 'Hopper'}],
    )
    return token


def watch(tab, origin):
    """Everything that goes wrong in `tab`, as a list that fills while the test runs."""
    problems = []

    def console(message):
        if message.type == 'error':
            problems.append(f'console error: {message.text}')

    def response(answer):
        if answer.status >= 400:
            problems.append(f'{answer.status}: {answer.request.method} {answer.url}')

    def request(sent):
        if not sent.url.startswith((origin + '/', 'data:')):
            problems.append(f'off-site request: {sent.url}')

    tab.on('console', console)
    tab.on('response', response)
    tab.on('request', request)
    tab.on('pageerror', lambda exc: problems.append(f'uncaught: {exc}'))
    tab.on('requestfailed', lambda sent: problems.append(f'failed: {sent.url} {sent.failure}'))
    return problems


@pytest.fixture
def page(browser, site):
    """A fresh tab (its own sessionStorage); `page.problems` lists what went wrong in it."""
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.origin = f'http://{servers.LOOPBACK}:{site.port}'
    tab.problems = watch(tab, tab.origin)
    yield tab
    context.close()


def open_operation(page, tag, operation_id):
    """Expand the operation (Try it out is on from the start): its block."""
    block = page.locator(f'#operations-{tag}-{operation_id}')
    if not block.is_visible():
        page.click(f'#operations-tag-{tag}')
    block.locator('.opblock-summary-control').click()
    return block


def execute(page, block):
    """Send the operation as filled in: (status, the response's header lines, its body's text)."""
    # NOTE: the answer shown before is cleared before the request goes out: once the new answer has
    # arrived, what the block shows is the new one.
    with page.expect_response(lambda answer: answer.request.resource_type == 'fetch'):
        block.locator('button.execute').click()
    response = block.locator('.live-responses-table .response')
    status = response.locator('.response-col_status').inner_text().strip()
    headers = [line.strip() for line in response.locator('.headerline').all_inner_texts()]
    return status, headers, response.locator('.highlight-code code').inner_text()


@pytest.mark.slow
def test_a_reader_authorizes_once_then_lists_with_a_filter_and_creates_a_contact(page, organization, site):
    page.goto(page.origin + MOUNT + '/api/docs')
    page.wait_for_selector('#operations-tag-contacts')
    assert page.locator('#operations-tag-projects').count() == 0  # anonymous: the built-ins only

    page.click('.auth-wrapper button.authorize')
    page.fill('#auth-bearer-value', organization)
    page.click('.auth-container button[type=submit]')
    page.click('.auth-container button.btn-done')
    # The document is fetched again with the token: the organization's custom objects appear.
    page.wait_for_selector('#operations-tag-projects')

    listing = open_operation(page, 'contacts', 'list_contacts')
    listing.locator('tr[data-param-name="filter"] input').fill('{"last_name": "Lovelace"}')
    status, headers, body = execute(page, listing)
    assert status == '200'
    assert 'content-range: contacts 0-0/1' in headers
    assert [c['first_name'] for c in json.loads(body)] == ['Ada']
    curl = listing.locator('.curl-command').inner_text()
    assert f'{MOUNT}/api/contacts?filter=' in curl and 'Authorization: Bearer ' in curl
    # A full page (react-admin's Range header, one row) carries the cursor to the next one.
    listing.locator('tr[data-param-name="filter"] input').fill('{}')
    listing.locator('tr[data-param-name="Range"] input').fill('contacts=0-0')
    status, headers, _ = execute(page, listing)
    assert status == '200' and 'content-range: contacts 0-0/2' in headers
    assert any(line.startswith('x-next-cursor: ') for line in headers), headers

    creating = open_operation(page, 'contacts', 'create_contacts')
    status, headers, body = execute(page, creating)  # the example the body starts with, as is
    assert status == '201'
    created = json.loads(body)
    assert f'location: {MOUNT}/api/contacts/{created["id"]}' in headers
    assert call(site, 'GET', f'/api/contacts/{created["id"]}', organization) == created

    # The token stays in the tab: a reload shows the custom objects without authorizing again.
    page.reload()
    page.wait_for_selector('#operations-tag-projects')
    assert page.problems == []
