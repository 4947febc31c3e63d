"""Schemathesis against the generated OpenAPI document, through the WSGI app (no network).

Every operation of the document each organization sees (built-ins and its own custom object) gets
generated requests, valid and invalid, with a fixed seed and a bounded number of examples. Each
answer must be no 5xx, and must conform to the document: a documented status code, its content
type, its headers and its body schema. Item operations are also aimed at records that exist, in
the caller's organization and in the other one: the other organization's ids are never read or
written (a read is 404; a write is 404, or 400 when its body is invalid anyway).
The two organizations share the operations (each built-in operation runs once per database, with
one token or the other; each runs all of its own custom object's). Failures are collected over the
whole run, so one report lists every operation that breaks the contract. `CRMAPI_FUZZ_EXAMPLES`
(valid cases per operation, default 10; invalid ones are half as many) and `CRMAPI_FUZZ_SEED` run it
longer or differently.
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import given
from hypothesis import seed
from hypothesis import settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance
from schemathesis.specs.openapi.checks import response_headers_conformance
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.checks import status_code_conformance

from crmapi.accounts import Accounts

from conftest import new_org

MAX_EXAMPLES = int(os.environ.get('CRMAPI_FUZZ_EXAMPLES', '10'))
SEED = int(os.environ.get('CRMAPI_FUZZ_SEED', '4242'))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MODES = {GenerationMode.POSITIVE: MAX_EXAMPLES, GenerationMode.NEGATIVE: max(1, MAX_EXAMPLES // 2)}
CUSTOM = {'first': 'projects', 'second': 'vehicles'}

pytestmark = pytest.mark.slow


def seed_org(database, app, which):
    """An organization with a custom object, a few records of each kind and a spare user."""
    org = new_org(database, app, name=f'Fuzz {which}', email=f'admin@{which}.example')
    org.post(
        '/api/custom_objects',
        {
            'slug': CUSTOM[which],
            'label': CUSTOM[which].title(),
            'fields': [
                {'name': 'title', 'type': 'text', 'required': True},
                {'name': 'budget', 'type': 'number'},
                {'name': 'starts_on', 'type': 'date'},
                {'name': 'seen_at', 'type': 'datetime'},
                {'name': 'active', 'type': 'boolean'},
                {'name': 'seats', 'type': 'integer'},
                {'name': 'extra', 'type': 'json'},
                {'name': 'company_id', 'type': 'reference', 'target': 'companies'},
            ],
        },
    )
    company = org.create('companies', name='Initech', size=50)
    tag = org.create('tags', name='vip')
    contact = org.create('contacts', first_name='Ada', company_id=company['id'], tags=[tag['id']])
    deal = org.create('deals', name='Big one', company_id=company['id'], contact_ids=[contact['id']], amount=12.5)
    # NOTE: a spare user, so that fuzzing crm_users/{id} never disables or demotes the fuzzing admin.
    Accounts(database).create_token(org.org_id, f'spare@{which}.example')
    spare = [u for u in org.list('crm_users') if u['email'].startswith('spare@')][0]
    ids = {
        'companies': company['id'],
        'tags': tag['id'],
        'contacts': contact['id'],
        'deals': deal['id'],
        'crm_users': spare['id'],
        'companies_summary': company['id'],
        'contacts_summary': contact['id'],
        'tasks': org.create('tasks', text='Call', contact_id=contact['id'])['id'],
        'contact_notes': org.create('contact_notes', contact_id=contact['id'], text='hi')['id'],
        'deal_notes': org.create('deal_notes', deal_id=deal['id'], text='hi')['id'],
        'company_notes': org.create('company_notes', company_id=company['id'], text='hi')['id'],
        'configuration': org.create('configuration', key='theme', value={'dark': True})['id'],
        CUSTOM[which]: org.create(CUSTOM[which], title='First', budget=3.5, company_id=company['id'])['id'],
    }
    return org, ids


@pytest.fixture(scope='module')
def fuzz_orgs(database, wsgi_app):
    return {which: seed_org(database, wsgi_app, which) for which in CUSTOM}


def strategy_for(operation, mode, ids, other_ids):
    """Generated cases, plus (for `/<resource>/{id}...`) cases aimed at records that exist."""
    strategy = operation.as_strategy(generation_mode=mode)
    parts = operation.path.split('/')
    if mode is GenerationMode.POSITIVE and len(parts) > 2 and parts[2] == '{id}':
        for known in (ids, other_ids):
            if parts[1] in known:
                strategy = strategy | operation.as_strategy(
                    generation_mode=mode, path_parameters={'id': known[parts[1]]}
                )
    return strategy


def fuzz(operation, app, headers, ids, other_ids):
    """Run one operation; return a list of failure reports (empty when the contract holds)."""
    failures = []
    foreign = set(other_ids.values()) - set(ids.values())

    def report(mode, text):
        if len(failures) < 3 and not any(text[:200] == f.split('\n', 1)[1][:200] for f in failures):
            failures.append(f'{operation.label} [{mode.value}]\n{text[:3000]}')

    for mode, examples in MODES.items():

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            print_blob=False,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @seed(SEED)
        @given(case=strategy_for(operation, mode, ids, other_ids))
        def run(case):
            # NOTE: the operation's own server (the health checks sit beside /api, not under it); in-process
            # calls otherwise take the document's first server for every path.
            response = case.call(app=app, headers=headers, base_url=case.operation.base_url)
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except Exception as exc:  # noqa: BLE001 -- collected, reported together below
                report(mode, str(exc))
            # NOTE: a write may fail validation (400) before the lookup; that reveals nothing. A read
            # must be 404 and nothing may succeed.
            if (case.path_parameters or {}).get('id') in foreign and (
                200 <= response.status_code < 300 or (case.method == 'GET' and response.status_code != 404)
            ):
                report(
                    mode,
                    f"another organization's record answered {response.status_code}: "
                    f'{case.as_curl_command(headers=headers)}',
                )

        try:
            run()
        except Unsatisfiable:
            # NOTE: an operation with nothing to get wrong (no parameters, no body) has no negative cases.
            assert mode is GenerationMode.NEGATIVE, operation.label
    return failures


def share(operations, which):
    """Each organization takes every other built-in operation, and all of its own custom object's."""
    mine = []
    for index, operation in enumerate(sorted(operations, key=lambda op: op.label)):
        custom = operation.path.split('/')[1] in CUSTOM.values()
        if custom or index % 2 == list(CUSTOM).index(which):
            mine.append(operation)
    return mine


def with_json_content(doc):
    """The document with each JSON query parameter (a string whose `contentSchema` is its JSON's schema) spelt
    as `content`, the same contract in the form Schemathesis generates JSON for.

    NOTE: from a plain string schema it would send any text, which every list refuses with a 400 before it
    reads anything: the filters, sorts and embeds would go unfuzzed.
    """
    for item in doc['paths'].values():
        for operation in [item, *item.values()]:
            for param in operation.get('parameters', []) if isinstance(operation, dict) else []:
                shape = param.get('schema', {}).get('contentSchema')
                if shape is not None:
                    del param['schema']
                    param.pop('example', None)
                    param['content'] = {'application/json': {'schema': shape}}
    return doc


@pytest.mark.parametrize('which', list(CUSTOM))
def test_generated_requests_conform_to_the_document(fuzz_orgs, wsgi_app, which):
    other = 'second' if which == 'first' else 'first'
    (org, ids), (_, other_ids) = fuzz_orgs[which], fuzz_orgs[other]
    headers = {'Authorization': f'Bearer {org.token}'}
    schema = schemathesis.openapi.from_dict(with_json_content(org.get('/api/openapi.json').json))
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert f'GET /{CUSTOM[which]}' in labels
    assert not any(f'/{CUSTOM[other]}' in label for label in labels)
    failures = []
    for operation in share(operations, which):
        failures += fuzz(operation, wsgi_app, headers, ids, other_ids)
    assert not failures, f'{len(failures)} contract violations:\n\n' + '\n\n'.join(failures)
