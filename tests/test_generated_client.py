"""A Python client generated from the OpenAPI document (openapi-python-client, offline) works against a live server.

The document is what a tool consumes: this generates a client from the one an organization is served (its
custom object `projects` included) into a temp dir, imports it, and through a real HTTP server (a WSGI server
thread over the suite's app, on both databases) lists contacts filtered, sorted and ranged through the JSON
query parameters, and creates, reads, updates and deletes contacts and projects with the generated models.
"""

import importlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.simple_server import make_server

import pytest

from conftest import new_org

GENERATOR = Path(sys.executable).parent / 'openapi-python-client'
# NOTE: no post hooks (the generator's default runs ruff over the code it wrote; formatting is not needed here).
CONFIG = Path(__file__).parent / 'openapi-python-client.yaml'
PROJECTS = {
    'slug': 'projects',
    'fields': [
        {'name': 'title', 'type': 'text', 'required': True},
        {'name': 'budget', 'type': 'number'},
        {'name': 'company_id', 'type': 'reference', 'target': 'companies'},
    ],
}

pytestmark = pytest.mark.slow


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope='module')
def server(wsgi_app):
    """The suite's app behind a real HTTP server on a free port: its base URL."""
    httpd = make_server('127.0.0.1', 0, wsgi_app, handler_class=Quiet)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)  # NOTE: a quick shutdown()
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_port}'
    httpd.shutdown()
    thread.join(timeout=10)
    httpd.server_close()


@pytest.fixture(scope='module')
def org(database, wsgi_app):
    org = new_org(database, wsgi_app, name='Generated client', email='gen@example.com')
    org.post('/api/custom_objects', PROJECTS)
    return org


def generate(document, directory, package):
    """The client package generated from `document` into `directory`, imported."""
    spec = directory / 'openapi.json'
    spec.write_text(json.dumps(document))
    out = subprocess.run(
        [
            str(GENERATOR),
            'generate',
            '--path',
            str(spec),
            '--output-path',
            str(directory / package),
            '--meta',
            'none',
            '--config',
            str(CONFIG),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # The one thing it leaves out: a CSV import's text/csv body (the JSON body of the same operation is there).
    warnings = out.stdout.count('WARNING parsing')
    assert warnings == out.stdout.count('Unsupported content type text/csv'), out.stdout[:3000]
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(package)
    finally:
        sys.path.remove(str(directory))


# The generated package of each document text: both databases' organizations see the same document, and one
# generator run (seconds) serves both.
GENERATED = {}


@pytest.fixture(scope='module')
def client(org, server, backend, tmp_path_factory):
    """(the generated package, a client authenticated as the organization's administrator)."""
    document = org.get('/api/openapi.json').json
    text = json.dumps(document, sort_keys=True)
    if text not in GENERATED:
        GENERATED[text] = generate(document, tmp_path_factory.mktemp('client'), f'crm_client_{backend}')
    package = GENERATED[text]
    base_url = server + document['servers'][0]['url']
    return package, package.AuthenticatedClient(base_url=base_url, token=org.token)


def api(package, module):
    return importlib.import_module(f'{package.__name__}.api.{module}')


def test_a_generated_client_lists_contacts_filtered_sorted_and_ranged(client):
    package, authenticated = client
    contacts = api(package, 'contacts')
    Contacts = importlib.import_module(f'{package.__name__}.models').Contacts
    create = importlib.import_module(f'{contacts.__name__}.create_contacts')
    for first, last, city in (
        ('Ada', 'Lovelace', 'London'),
        ('Grace', 'Hopper', 'New York'),
        ('Alan', 'Turing', 'London'),
        ('Mary', 'Somerville', 'London'),
    ):
        assert (
            create.sync_detailed(
                client=authenticated, body=Contacts(first_name=first, last_name=last, city=city)
            ).status_code
            == 201
        )
    listing = importlib.import_module(f'{contacts.__name__}.list_contacts')
    page = listing.sync_detailed(
        client=authenticated,
        filter_=json.dumps({'city': 'London'}),
        range_query=json.dumps([0, 1]),
        filters=json.dumps([{'field': 'last_name', 'op': 'neq', 'value': 'Hopper'}]),
        sorts=json.dumps([{'field': 'last_name', 'order': 'DESC'}]),
    )
    assert page.status_code == 200, page.content
    assert page.headers['content-range'] == 'contacts 0-1/3'
    assert [c.last_name for c in page.parsed] == ['Turing', 'Somerville']
    assert 'x-next-cursor' in page.headers
    rest = listing.sync(
        client=authenticated,
        filter_=json.dumps({'city': 'London'}),
        range_query='[0,1]',
        filters=json.dumps([{'field': 'last_name', 'op': 'neq', 'value': 'Hopper'}]),
        sorts=json.dumps([{'field': 'last_name', 'order': 'DESC'}]),
        cursor=page.headers['x-next-cursor'],
    )
    assert [c.last_name for c in rest] == ['Lovelace']
    ordered = listing.sync(client=authenticated, sort='first_name', order=listing.ListContactsOrder.ASC)
    assert [c.first_name for c in ordered] == ['Ada', 'Alan', 'Grace', 'Mary']


def test_a_generated_client_creates_reads_updates_and_deletes_contacts(client):
    package, authenticated = client
    models = importlib.import_module(f'{package.__name__}.models')
    contacts = f'{package.__name__}.api.contacts'
    create, get, patch, delete, restore = (
        importlib.import_module(f'{contacts}.{name}_contacts')
        for name in ('create', 'get', 'patch', 'delete', 'restore')
    )
    created = create.sync(
        client=authenticated, body=models.Contacts(first_name='Ada', last_name='Byron', email='ada@example.com')
    )
    assert isinstance(created, models.Contacts) and created.id.startswith('c_')
    assert created.email == 'ada@example.com' and created.archived_at is None
    assert get.sync(id=created.id, client=authenticated).last_name == 'Byron'
    updated = patch.sync(
        id=created.id, client=authenticated, body=models.ContactsUpdate(last_name='Lovelace', city=None)
    )
    assert (updated.last_name, updated.first_name, updated.city) == ('Lovelace', 'Ada', None)
    archived = delete.sync(id=created.id, client=authenticated)
    assert archived.archived_at is not None
    assert restore.sync(id=created.id, client=authenticated).archived_at is None
    missing = get.sync_detailed(id='c_missing', client=authenticated)
    assert missing.status_code == 404 and missing.parsed.status == 404 and missing.parsed.title


def test_a_generated_client_creates_reads_updates_and_deletes_a_custom_objects_records(client):
    package, authenticated = client
    models = importlib.import_module(f'{package.__name__}.models')
    projects = f'{package.__name__}.api.projects'
    create, get, update, delete, listing = (
        importlib.import_module(f'{projects}.{name}')
        for name in ('create_projects', 'get_projects', 'update_projects', 'delete_projects', 'list_projects')
    )
    created = create.sync(client=authenticated, body=models.Projects(title='Apollo', budget=1.5))
    assert (created.title, created.budget) == ('Apollo', 1.5)
    create.sync(client=authenticated, body=models.Projects(title='Gemini', budget=3))
    assert get.sync(id=created.id, client=authenticated).title == 'Apollo'
    assert update.sync(id=created.id, client=authenticated, body=models.ProjectsUpdate(budget=2.25)).budget == 2.25
    page = listing.sync_detailed(
        client=authenticated,
        filters=json.dumps([{'field': 'budget', 'op': 'gte', 'value': 2}]),
        sort='title',
        order=listing.ListProjectsOrder.DESC,
        range_query='[0,9]',
    )
    assert [p.title for p in page.parsed] == ['Gemini', 'Apollo']
    assert page.headers['content-range'] == 'projects 0-1/2'
    assert delete.sync_detailed(id=created.id, client=authenticated).status_code == 200
    refused = create.sync_detailed(client=authenticated, body=models.Projects(title='X', company_id='comp_nope'))
    assert refused.status_code == 400 and refused.parsed.field == 'company_id', 'a problem, parsed'
