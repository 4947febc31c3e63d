"""One wiring: the services are built in one place and passed down; JSON comes in through the app's
strict media handler and goes out through orjson."""

import ast
import io
import pathlib

import pytest
from conftest import assert_problem

import crmapi
from crmapi import create_app
from crmapi import api as resources
from crmapi.config import Settings
from crmapi.errors import InvalidBody
from crmapi.errors import PayloadTooLarge
from crmapi.services import build_services

PACKAGE = pathlib.Path(crmapi.__file__).parent


def test_the_catalog_is_given_its_custom_objects_when_it_is_made(api, database):
    api.post('/api/custom_objects', {'slug': 'projects', 'fields': [{'name': 'title', 'type': 'text'}]})
    services = build_services(database, Settings())
    assert services.catalog.custom is services.custom and services.store.catalog is services.catalog
    assert services.store.history is services.custom.history
    principal = services.accounts.authenticate(api.token)
    assert services.catalog.resolve('projects', principal).spec.slug == 'projects'


def test_request_bodies_are_read_by_the_apps_strict_json_media_handler(database):
    app = create_app(Settings(database_url='injected', access_log=False, max_body_bytes=200), db=database)
    handler = app.req_options.media_handlers[resources.JSON]
    assert isinstance(handler, resources.StrictJSON) and app.resp_options.media_handlers[resources.JSON] is handler
    assert handler.deserialize(io.BytesIO(b'{"a": 1}'), resources.JSON, 8) == {'a': 1}
    for body, problem in [
        (b'{"a": 1, "a": 2}', InvalidBody),
        (b'{"a": NaN}', InvalidBody),
        (b'[' * 70 + b']' * 70, InvalidBody),
        (b'"' + b'x' * 210 + b'"', PayloadTooLarge),
    ]:
        with pytest.raises(problem):
            handler.deserialize(io.BytesIO(body), resources.JSON, None)


def test_a_repeated_key_in_a_body_is_a_400_naming_it(api):
    resp = api.app.post(
        '/api/contacts',
        '{"first_name": "Ada", "first_name": "Bo"}',
        headers={'Content-Type': 'application/json', **api.headers},
        status='*',
    )
    assert_problem(resp, 400)
    assert 'first_name' in resp.json['detail']


def test_only_values_uses_the_standard_json_module():
    """orjson everywhere; values.py keeps the standard parser for what orjson cannot do (report a repeated
    key, write an integer past 64 bits or a lone surrogate)."""
    users = []
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if 'json' in names or (isinstance(node, ast.ImportFrom) and node.module == 'json'):
                users.append(path.name)
    assert users == ['values.py']
