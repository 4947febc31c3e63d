"""CSV import (issue 9): `POST /api/:resource` with `Content-Type: text/csv`, exports that import back as they
are, and `crmapi import` for files of any size. Every test runs on SQLite and on PostgreSQL.
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import webtest

import servers

from conftest import Client
from conftest import assert_problem
from conftest import postgres_url
from crmapi import cli
from crmapi import create_app
from crmapi import imports
from crmapi.config import Settings
from test_cli import cli_env
from test_deploy import database_url as deployed_url

SERVER_MANAGED = ('id', 'created_at', 'updated_at', 'archived_at')
MIB = 1024 * 1024


def post_csv(client, resource, body, status=201, query='', headers=None):
    body = body.encode() if isinstance(body, str) else body
    return client.app.post(
        f'/api/{resource}{query}',
        body,
        status=status,
        headers={**client.headers, 'Content-Type': 'text/csv', **(headers or {})},
    )


def export(client, resource, fmt='csv'):
    resp = client.get(f'/api/{resource}', {'format': fmt, 'sort': 'id'})
    return resp.body


def records(client, resource):
    return client.list(resource, sort='id', range=[0, 999])


def without_server_columns(rows, ids=None):
    """The records as their fields say, server-managed columns left out and references to `ids` mapped."""
    ids = ids or {}
    out = []
    for row in rows:
        row = {k: v for k, v in row.items() if k not in SERVER_MANAGED}
        out.append(
            {
                k: [ids.get(i, i) for i in v]
                if isinstance(v, list) and k in ('tags', 'contact_ids')
                else ids.get(v, v)
                if isinstance(v, str)
                else v
                for k, v in row.items()
            }
        )
    return out


def copy_into(source, target, resource, ids=None):
    """Export `resource` from `source` and import the file into `target`, its references to `ids` mapped."""
    body = export(source, resource).decode()
    for old, new in (ids or {}).items():
        body = body.replace(old, new)
    resp = post_csv(target, resource, body)
    return resp.json


def same_ids(source, target, resource, key='name'):
    """{id in source: id in target} of the records of `resource` with the same `key`."""
    new = {r[key]: r['id'] for r in records(target, resource)}
    return {r['id']: new[r[key]] for r in records(source, resource)}


# -- export, then import: the same records ---------------------------------------------------------------


def test_exported_contacts_import_into_a_new_organization_as_the_same_contacts(api, other_api):
    acme = api.create('companies', name='Acme "Quoted", Inc.', website='https://acme.example', category='=tools')
    vip, formula = api.create('tags', name='vip', color='#f00'), api.create('tags', name='=HYPERLINK()', color='')
    api.create(
        'contacts',
        first_name='Ada',
        last_name='Lovelace',
        email='ada@example.com',
        company_id=acme['id'],
        tags=[vip['id'], formula['id']],
        background='first line\nsecond, "quoted" line\r\nthird',
    )
    api.create(
        'contacts',
        first_name='=1+1',
        last_name="'=already quoted",
        title='-',
        city='Zürich 東京',
        tags=[],
        company_id=None,
        status='@cold',
    )
    api.create('contacts', first_name="'plain quote", last_name='+33 1 23 45', phone='\tTAB')
    assert copy_into(api, other_api, 'companies') == {'created': 1, 'updated': 0}
    assert copy_into(api, other_api, 'tags') == {'created': 2, 'updated': 0}
    ids = {**same_ids(api, other_api, 'companies'), **same_ids(api, other_api, 'tags')}

    assert copy_into(api, other_api, 'contacts', ids) == {'created': 3, 'updated': 0}

    assert without_server_columns(records(other_api, 'contacts')) == without_server_columns(
        records(api, 'contacts'), ids
    )
    assert {r['id'] for r in records(other_api, 'contacts')}.isdisjoint({r['id'] for r in records(api, 'contacts')})


def test_exported_companies_import_as_the_same_companies(api, other_api):
    api.create('companies', name='Acme', size=50, phone='+1 555', address='1 Main St\nSpringfield', country='FR')
    api.create('companies', name='Globex', description='-negative outlook', size=None)
    copy_into(api, other_api, 'companies')
    assert without_server_columns(records(other_api, 'companies')) == without_server_columns(records(api, 'companies'))


LEDGER = {
    'slug': 'ledgers',
    'label': 'Ledgers',
    'fields': [
        {'name': 'title', 'type': 'text', 'required': True},
        {'name': 'units', 'type': 'integer'},
        {'name': 'balance', 'type': 'number'},
        {'name': 'settled', 'type': 'boolean'},
        {'name': 'due', 'type': 'date'},
        {'name': 'posted_at', 'type': 'datetime'},
        {'name': 'extra', 'type': 'json'},
        {'name': 'company', 'type': 'reference', 'target': 'companies'},
    ],
}


def test_an_exported_custom_object_imports_as_the_same_records(api, other_api):
    for client in (api, other_api):
        client.post('/api/custom_objects', LEDGER)
    acme = api.create('companies', name='Acme')
    api.create(
        'ledgers',
        title='-owed',
        units=-7,
        balance=-12.25,
        settled=True,
        due='2024-02-29',
        posted_at='2024-03-01T12:30:00.123456Z',
        extra={'a': ['=x', 1.5, None], 'b': True},
        company=acme['id'],
    )
    api.create('ledgers', title='zero', units=0, balance=0, settled=False, extra='=1+1')
    api.create('ledgers', title='json scalars', extra=-5)
    api.create('ledgers', title='json string', extra='plain text, with "quotes"')
    api.create('ledgers', title='nulls')
    copy_into(api, other_api, 'companies')
    ids = same_ids(api, other_api, 'companies')
    copy_into(api, other_api, 'ledgers', ids)
    assert without_server_columns(records(other_api, 'ledgers')) == without_server_columns(records(api, 'ledgers'), ids)


def test_a_csv_export_writes_array_fields_as_ids_separated_by_semicolons_and_json_as_json_text(api):
    tags = [api.create('tags', name=n)['id'] for n in ('a', 'b')]
    api.create('contacts', first_name='Ada', tags=tags)
    api.create('configuration', key='formula', value='=1+1')
    (row,) = csv.DictReader(io.StringIO(export(api, 'contacts').decode(), newline=''))
    assert row['tags'] == ';'.join(tags)
    (row,) = csv.DictReader(io.StringIO(export(api, 'configuration').decode(), newline=''))
    assert row['value'] == '"=1+1"'


# -- what a CSV body may look like ----------------------------------------------------------------------


def test_quoted_cells_with_commas_quotes_and_line_breaks_are_read_as_written(api):
    body = 'first_name,last_name,background\r\n"Smith, Jr.","O""Brien","one\r\ntwo\nthree"\r\nPlain,Cells,\r\n'
    post_csv(api, 'contacts', body)
    rows = records(api, 'contacts')
    assert [(r['first_name'], r['last_name'], r['background']) for r in rows] == [
        ('Smith, Jr.', 'O"Brien', 'one\r\ntwo\nthree'),
        ('Plain', 'Cells', None),
    ]


def test_a_utf8_byte_order_mark_and_lf_line_ends_are_accepted(api):
    post_csv(api, 'contacts', '\ufefffirst_name,city\nAda,Zürich\n\nBob,東京')
    assert [(r['first_name'], r['city']) for r in records(api, 'contacts')] == [('Ada', 'Zürich'), ('Bob', '東京')]


def test_the_header_takes_camel_case_names_and_ignores_read_only_columns(api):
    post_csv(
        api,
        'contacts',
        'id,firstName,last_name,createdAt,updated_at,organization_id,archived_at,nb_tasks\n'
        'c_forged,Ada,Lovelace,2000-01-01T00:00:00Z,x,org_other,2001-01-01T00:00:00Z,99\n',
    )
    (row,) = records(api, 'contacts')
    assert (row['first_name'], row['last_name'], row['archived_at']) == ('Ada', 'Lovelace', None)
    assert row['id'] != 'c_forged' and not row['created_at'].startswith('2000')


def test_empty_cells_are_null_and_an_empty_array_cell_is_an_empty_array(api):
    post_csv(api, 'contacts', 'first_name,email,tags\nAda,,\n')
    (row,) = records(api, 'contacts')
    assert (row['email'], row['tags']) == (None, [])


def test_an_export_prefix_is_taken_off_text_that_a_spreadsheet_would_run(api):
    cells = ["'=1+1", "'+1", "'-1", "'@SUM(A1)", '"\'\tTAB"', '"\'\rCR"', "'plain", "''=twice", 'a=b']
    body = 'first_name,last_name\n' + ''.join(f'{cell},k{i}\n' for i, cell in enumerate(cells))
    post_csv(api, 'contacts', body)
    got = {r['last_name']: r['first_name'] for r in records(api, 'contacts')}
    assert [got[f'k{i}'] for i in range(len(cells))] == [
        '=1+1',
        '+1',
        '-1',
        '@SUM(A1)',
        '\tTAB',
        '\rCR',
        "'plain",
        "'=twice",
        'a=b',
    ]


def test_cells_are_typed_from_their_columns(api):
    api.post('/api/custom_objects', LEDGER)
    post_csv(
        api,
        'ledgers',
        'title,units,balance,settled,due,posted_at,extra\n'
        'typed,+42,1.5e2,TRUE,2024-01-31,2024-01-31T10:00:00+02:00,"{""k"": [1, ""v""]}"\n',
    )
    (row,) = records(api, 'ledgers')
    assert (row['units'], row['balance'], row['settled'], row['due'], row['posted_at'], row['extra']) == (
        42,
        150,
        True,
        '2024-01-31',
        '2024-01-31T08:00:00.000000Z',
        {'k': [1, 'v']},
    )


def test_a_header_with_no_records_imports_nothing(api):
    assert post_csv(api, 'contacts', 'first_name,last_name\r\n').json == {'created': 0, 'updated': 0}


# -- bad bodies: a 400 (or 413) naming the problem, and nothing written ----------------------------------


@pytest.mark.parametrize('body', [b'', b'\n', b'\r\n'])
def test_a_body_without_a_header_is_a_400(api, body):
    resp = post_csv(api, 'contacts', body, status=400)
    assert 'header' in assert_problem(resp, 400)['detail']


def test_an_unknown_header_column_is_a_400_naming_it(api):
    resp = post_csv(api, 'contacts', 'first_name,frist_name,shoe_size\nAda,Ada,42\n', status=400)
    problem = assert_problem(resp, 400, field='frist_name', title='Unknown field')
    assert problem['detail'] == "Resource 'contacts' has no field 'frist_name'; did you mean 'first_name'?"
    assert [e['field'] for e in problem['errors']] == ['frist_name', 'shoe_size']
    assert records(api, 'contacts') == []


def test_an_unknown_header_column_is_ignored_with_prefer_handling_lenient(api):
    resp = post_csv(api, 'contacts', 'first_name,shoe_size\nAda,42\n', headers={'Prefer': 'handling=lenient'})
    assert resp.headers['Preference-Applied'] == 'handling=lenient'
    assert [r['first_name'] for r in records(api, 'contacts')] == ['Ada']


@pytest.mark.parametrize(('header', 'field'), [('first_name,,last_name', ''), ('first_name,firstName', 'firstName')])
def test_an_empty_or_repeated_header_column_is_a_400(api, header, field):
    assert_problem(post_csv(api, 'contacts', header + '\nA,B,C\n'[: len(header) + 1], status=400), 400, field=field)


def test_bad_values_are_listed_by_line_and_nothing_is_written(api):
    api.post('/api/custom_objects', LEDGER)
    body = (
        'title,units,settled,due,extra,company\n'
        'good,1,true,2024-01-01,{},\n'
        'bad units,one,true,,,\n'
        'good too,2,,,,\n'
        ',3,yes,2024-02-30,,\n'
        'bad json,4,,,{oops},\n'
        'bad reference,5,,,,comp_nope\n'
    )
    problem = assert_problem(post_csv(api, 'ledgers', body, status=400), 400, line=3, field='units', error_count=6)
    assert (
        problem['detail'] == 'Line 3: Field \'units\' expects an integer, got "one" (and 5 more problems); '
        'nothing was imported'
    )
    assert [(e['line'], e['field']) for e in problem['errors']] == [
        (3, 'units'),
        (5, 'title'),
        (5, 'settled'),
        (5, 'due'),
        (6, 'extra'),
        (7, 'company'),
    ]
    assert problem['errors'][-1]['detail'] == "Field 'company' refers to companies 'comp_nope', which does not exist"
    assert records(api, 'ledgers') == []


def test_a_refused_import_lists_100_problems_and_counts_them_all(api):
    body = 'name,amount\n' + 'ok,1\n' + ''.join(f'deal {i},not a number\n' for i in range(150))
    problem = assert_problem(post_csv(api, 'deals', body, status=400), 400, error_count=150)
    assert [e['line'] for e in problem['errors']] == list(range(3, 103))
    assert records(api, 'deals') == []


def test_an_import_is_all_or_nothing_a_bad_last_line_leaves_nothing(api):
    lines = imports.BATCH + 10  # more than one batch of the store's batch path
    body = 'name\n' + ''.join(f'tag {i}\n' for i in range(lines)) + '"never closed\n'
    problem = assert_problem(post_csv(api, 'tags', body, status=400), 400, line=lines + 2)
    assert problem['detail'] == f'Line {lines + 2} is not valid CSV: a quoted cell is never closed'
    assert api.get('/api/tags').headers['Content-Range'] == 'tags */0'


def test_a_reference_to_another_organizations_record_is_listed_like_a_missing_one(api, other_api):
    theirs = other_api.create('companies', name='Theirs')
    problem = assert_problem(
        post_csv(api, 'contacts', f'first_name,company_id\nAda,{theirs["id"]}\n', status=400),
        400,
        line=2,
        field='company_id',
    )
    assert 'does not exist' in problem['detail']


def test_a_ragged_row_is_a_400_naming_its_line(api):
    resp = post_csv(api, 'contacts', 'first_name,last_name\nAda,Lovelace\nBob\nCy,D,extra\n', status=400)
    problem = assert_problem(resp, 400, line=3, error_count=2)
    assert problem['detail'] == 'Line 3: 1 cell where the header has 2 (and 1 more problem); nothing was imported'
    assert [e['detail'] for e in problem['errors']] == [
        '1 cell where the header has 2',
        '3 cells where the header has 2',
    ]
    assert records(api, 'contacts') == []


@pytest.mark.parametrize(
    'body', [b'first_name\nAda\nBj\xf6rn\n', b'first_name\xff\nAda\n', '\ufefffirst_name\nAda\n'.encode('utf-16')]
)
def test_a_body_that_is_not_utf8_is_a_400(api, body):
    problem = assert_problem(post_csv(api, 'contacts', body, status=400), 400)
    assert 'is not UTF-8 text' in problem['detail']
    assert records(api, 'contacts') == []


def test_a_csv_declared_in_another_charset_is_a_415(api):
    resp = post_csv(
        api, 'contacts', b'first_name\nBj\xf6rn\n', status=415, headers={'Content-Type': 'text/csv; charset=ISO-8859-1'}
    )
    assert (
        assert_problem(resp, 415)['detail']
        == 'Send the CSV as UTF-8 (Content-Type: text/csv; charset=utf-8), not ISO-8859-1'
    )
    post_csv(api, 'contacts', 'first_name\nBjörn\n', headers={'Content-Type': 'text/csv; charset="UTF-8"'})
    assert [r['first_name'] for r in records(api, 'contacts')] == ['Björn']


@pytest.mark.parametrize(
    ('body', 'detail'),
    [
        (
            'first_name\nAda\n"' + 'x' * 200_000 + '"\n',
            'Line 3 is not valid CSV: a cell is longer than 131072 characters',
        ),
        ('first_name\nAda\n' + 'x' * (imports.MAX_LINE_BYTES + 1) + '\n', 'Line 3 is longer than 1048576 bytes'),
        ('first_name\n"Ada"Lovelace\n', 'Line 2 is not valid CSV: a quoted cell goes on after its closing quote'),
        (
            'first_name\nAda\rBob\n',
            'Line 2 is not valid CSV: a line break (CR) inside a cell that is not quoted; '
            'save the file with LF or CRLF line ends',
        ),
    ],
)
def test_a_line_that_is_not_csv_or_too_long_is_a_400_naming_it(api, body, detail):
    assert_problem(post_csv(api, 'contacts', body, status=400), 400, detail=detail)
    assert records(api, 'contacts') == []


def test_a_unique_value_twice_is_a_400_naming_both_lines_and_the_field(api):
    resp = post_csv(api, 'tags', 'name\nvip\nother\nvip\n', status=400)
    problem = assert_problem(resp, 400, line=4, field='name', error_count=1)
    assert problem['errors'] == [
        {
            'line': 4,
            'field': 'name',
            'detail': ("Lines 2 and 4 have the same 'name' (vip), which is unique: send each value once"),
        }
    ]
    assert records(api, 'tags') == []


def test_a_key_twice_in_an_upsert_import_is_a_400_naming_both_lines_and_the_field(api):
    body = 'external_id,first_name\nx-1,Ada\nx-2,Bob\nx-1,Cy\n'
    problem = assert_problem(
        post_csv(api, 'contacts', body, status=400, query='?on_conflict=external_id'),
        400,
        line=4,
        field='external_id',
        error_count=1,
    )
    assert problem['detail'] == (
        "Line 4: Lines 2 and 4 have the same 'external_id' (x-1): send each key once; nothing was imported"
    )
    assert records(api, 'contacts') == []


def test_a_value_in_a_conflict_with_a_stored_record_is_a_conflict_that_says_where(api):
    api.create('tags', name='vip')
    resp = post_csv(api, 'tags', 'name\nnew\nvip\n', status=409)
    assert 'lines 2 to 3' in assert_problem(resp, 409)['detail']
    assert [r['name'] for r in records(api, 'tags')] == ['vip']


def test_a_conflict_with_a_stored_record_among_many_lines_says_where_and_imports_nothing(api):
    api.create('contacts', external_id='x-29')
    lines = ''.join(f'Last {i},x-{i}\n' for i in range(30))
    resp = post_csv(api, 'contacts', 'last_name,external_id\n' + lines, status=409)
    assert 'lines 2 to 31' in assert_problem(resp, 409)['detail']
    assert [r['external_id'] for r in records(api, 'contacts')] == ['x-29']


def test_a_csv_import_takes_no_idempotency_key(api):
    resp = post_csv(api, 'tags', 'name\nvip\n', status=400, headers={'Idempotency-Key': 'k1'})
    assert_problem(resp, 400, param='Idempotency-Key')


def test_a_csv_import_is_refused_where_a_json_write_is(api, user_api):
    assert_problem(post_csv(api, 'contacts_summary', 'first_name\nAda\n', status=405), 405)
    assert_problem(post_csv(user_api, 'configuration', 'key,value\nk,1\n', status=403), 403)


@pytest.fixture
def small_limit(database, api):
    """The app with CRMAPI_MAX_IMPORT_BYTES at 200, as `api`'s organization."""
    app = webtest.TestApp(
        create_app(Settings(database_url='injected', access_log=False, max_import_bytes=200), db=database)
    )
    return Client(app, api.token, api.org_id)


def test_a_csv_over_max_import_bytes_is_a_413_and_nothing_is_written(small_limit):
    body = 'name\n' + ''.join(f'tag {i}\n' for i in range(40))
    problem = assert_problem(post_csv(small_limit, 'tags', body, status=413), 413, limit=200)
    assert 'CRMAPI_MAX_IMPORT_BYTES' in problem['detail']
    assert records(small_limit, 'tags') == []
    assert post_csv(small_limit, 'tags', body[:200]).json['created'] > 0


def test_a_chunked_csv_over_max_import_bytes_is_a_413_and_nothing_is_written(small_limit):
    body = ('name\n' + ''.join(f'tag {i}\n' for i in range(40))).encode()
    req = webtest.TestRequest.blank(
        '/api/tags',
        method='POST',
        headers={**small_limit.headers, 'Content-Type': 'text/csv', 'Transfer-Encoding': 'chunked'},
    )
    req.environ.pop('CONTENT_LENGTH', None)
    req.environ['wsgi.input'] = io.BytesIO(body)
    req.environ['wsgi.input_terminated'] = True
    assert_problem(small_limit.app.do_request(req, status=413), 413)
    assert records(small_limit, 'tags') == []


def test_a_csv_body_may_be_larger_than_the_json_body_limit(database, api):
    app = webtest.TestApp(
        create_app(Settings(database_url='injected', access_log=False, max_body_bytes=100), db=database)
    )
    body = 'name\n' + ''.join(f'tag {i}\n' for i in range(40))
    assert post_csv(Client(app, api.token), 'tags', body).json == {'created': 40, 'updated': 0}


@pytest.fixture(scope='module', params=servers.SERVERS)
def app_server(request, backend, database, tmp_path_factory):
    """crmapi under gunicorn or granian as shipped, with CRMAPI_MAX_IMPORT_BYTES at 2 MiB."""
    env = {
        'CRMAPI_DATABASE_URL': deployed_url(backend, database),
        'CRMAPI_WORKERS': '1',
        'CRMAPI_MAX_IMPORT_BYTES': str(2 * MIB),
    }
    server = servers.start_server(tmp_path_factory.mktemp(f'csv-{backend}-{request.param}'), request.param, env=env)
    yield server
    assert server.stop() == 0, server.log_text()
    assert 'Traceback' not in server.log_text(), server.log_text()


def tag_lines(count, width=60):
    return [f'{"tag %d" % i:<{width}}\n'.encode() for i in range(count)]


@pytest.mark.slow
def test_through_the_server_a_csv_over_the_json_limit_imports_with_a_length_or_chunked(api, app_server):
    lines = tag_lines(25_000)  # 1.5 MiB: over CRMAPI_MAX_BODY_BYTES, under CRMAPI_MAX_IMPORT_BYTES
    headers = {'Authorization': f'Bearer {api.token}', 'Content-Type': 'text/csv'}
    status, _, raw = app_server.request('POST', '/api/tags', body=b'name\n' + b''.join(lines[:12_500]), headers=headers)
    assert (status, json.loads(raw)) == (201, {'created': 12_500, 'updated': 0})
    status, _, raw = servers.chunked_request(
        app_server.port, 'POST', '/api/tags', [b'name\n', *lines[12_500:]], headers
    )
    assert (status, json.loads(raw)) == (201, {'created': 12_500, 'updated': 0})


@pytest.mark.slow
def test_through_the_server_a_chunked_csv_over_max_import_bytes_is_a_413_and_nothing_is_written(api, app_server):
    lines = tag_lines(40_000)  # 2.4 MiB
    headers = {'Authorization': f'Bearer {api.token}', 'Content-Type': 'text/csv'}
    status, answer_headers, raw = servers.chunked_request(
        app_server.port, 'POST', '/api/tags', [b'name\n', *lines], headers
    )
    assert (status, answer_headers['content-type']) == (413, 'application/problem+json')
    assert json.loads(raw)['limit'] == 2 * MIB
    assert records(api, 'tags') == []


# -- on_conflict: passed to the store's upsert ------------------------------------------------------------


def test_on_conflict_updates_the_records_that_hold_the_same_value(api):
    # NOTE: h-batch's upsert answers this; switch to contacts and external_id once that column exists.
    vip = api.create('tags', name='vip', color='red')
    resp = post_csv(api, 'tags', 'name,color\nvip,gold\nnew,blue\n', query='?on_conflict=name', status=200)
    assert resp.json == {'created': 1, 'updated': 1}
    assert resp.headers['X-Upsert-Result'] == 'created=1, updated=1'
    assert {r['name']: (r['id'] == vip['id'], r['color']) for r in records(api, 'tags')} == {
        'vip': (True, 'gold'),
        'new': (False, 'blue'),
    }


def test_on_conflict_must_name_a_column(api):
    assert_problem(
        post_csv(api, 'tags', 'name\nvip\n', query='?on_conflict=nope', status=400), 400, param='on_conflict'
    )


# -- exports: a file to save ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('params', 'headers', 'media', 'filename'),
    [
        ({'format': 'csv'}, {}, 'text/csv', 'contacts.csv'),
        ({}, {'Accept': 'text/csv'}, 'text/csv', 'contacts.csv'),
        ({'format': 'ndjson'}, {}, 'application/x-ndjson', 'contacts.ndjson'),
        ({}, {'Accept': 'application/x-ndjson'}, 'application/x-ndjson', 'contacts.ndjson'),
        ({'format': 'csv'}, {'Accept': 'application/x-ndjson'}, 'text/csv', 'contacts.csv'),
    ],
)
def test_an_export_is_an_attachment_named_after_its_resource(api, params, headers, media, filename):
    api.create('contacts', first_name='Ada')
    resp = api.get('/api/contacts', params, headers=headers)
    assert resp.content_type == media
    assert resp.headers['Content-Disposition'] == f'attachment; filename="{filename}"'


def test_a_list_answer_is_no_attachment(api):
    assert 'Content-Disposition' not in api.get('/api/contacts').headers


def test_an_unknown_format_is_a_400_naming_the_parameter(api):
    problem = assert_problem(api.get('/api/contacts', {'format': 'xlsx'}, status=400), 400, param='format')
    assert problem['detail'] == "format is csv or ndjson, not 'xlsx'"


def test_a_filtered_ndjson_export_by_format_parameter(api):
    api.create('contacts', first_name='Ada', city='Paris')
    api.create('contacts', first_name='Bob', city='Rome')
    lines = export(api, 'contacts', 'ndjson').decode().splitlines()
    assert [json.loads(line)['first_name'] for line in lines] == ['Ada', 'Bob']
    resp = api.get('/api/contacts', {'format': 'ndjson', 'filter': {'city': 'Rome'}})
    assert [json.loads(line)['first_name'] for line in resp.text.splitlines()] == ['Bob']


# -- crmapi import -------------------------------------------------------------------------------------------


@pytest.fixture
def database_url(backend, database):
    """The URL of the tests' own database (the CLI opens its own connection to it)."""
    return f'sqlite:///{database.path}' if backend == 'sqlite' else postgres_url()


def run_cli(database_url, *args):
    """`crmapi --database URL …` in this process: its exit status."""
    try:
        cli.main(['--database', database_url, *args])
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)  # as the interpreter does when the process ends
            return 1
        return exc.code
    return 0


def write(path, text):
    path.write_text(text, encoding='utf-8', newline='')
    return str(path)


def test_cli_import_streams_a_file_in_batches_and_exits_0(api, database_url, tmp_path, capsys):
    acme = api.create('companies', name='Acme')
    rows = [f'Contact {i},{acme["id"]}' for i in range(25)]
    path = write(tmp_path / 'contacts.csv', 'first_name,company_id\r\n' + '\r\n'.join(rows) + '\r\n')
    assert run_cli(database_url, 'import', '--org', api.org_id, 'contacts', path, '--batch', '10') == 0
    assert sorted(r['first_name'] for r in records(api, 'contacts')) == sorted(f'Contact {i}' for i in range(25))
    assert 'contacts: 25 of 25 rows imported (25 created, 0 updated)' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'contacts.errors.csv')


def test_cli_import_writes_the_bad_lines_to_an_errors_file_and_exits_1(api, database_url, tmp_path, capsys):
    body = (
        'name,amount,contact_ids\n'
        'good 1,10,\n'
        'bad amount,ten,\n'
        'good 2,20,\n'
        'ragged,30\n'
        'good 3,30,c_missing\n'
        'good 4,"1,5",\n'
        'good 5,50,\n'
    )
    path = write(tmp_path / 'deals.csv', body)
    assert run_cli(database_url, 'import', '--org', api.org_id, 'deals', path, '--batch', '3') == 1
    assert sorted(r['name'] for r in records(api, 'deals')) == ['good 1', 'good 2', 'good 5']
    err = capsys.readouterr().err
    assert 'deals: 3 of 7 rows imported (3 created, 0 updated)' in err
    assert f'4 lines refused: see {tmp_path / "deals.errors.csv"}' in err
    with open(tmp_path / 'deals.errors.csv', newline='', encoding='utf-8') as f:
        refused = list(csv.reader(f))
    assert refused[0] == ['name', 'amount', 'contact_ids', 'error']
    assert [row[:-1] for row in refused[1:]] == [
        ['bad amount', 'ten', ''],
        ['ragged', '30'],
        ['good 3', '30', 'c_missing'],
        ['good 4', '1,5', ''],
    ]
    assert [row[-1] for row in refused[1:]] == [
        'line 3: Field \'amount\' expects a number, got "ten"',
        'line 5: 2 cells where the header has 3',
        "line 6: Field 'contact_ids' refers to contacts 'c_missing', which does not exist",
        'line 7: Field \'amount\' expects a number, got "1,5"',
    ]


@pytest.mark.parametrize('on_conflict', [(), ('--on-conflict', 'external_id')])
def test_cli_import_names_both_lines_of_a_key_repeated_within_a_batch(api, database_url, tmp_path, on_conflict):
    path = write(tmp_path / 'contacts.csv', 'external_id,first_name\nx-1,Ada\nx-2,Bob\nx-1,Cy\n')
    assert run_cli(database_url, 'import', '--org', api.org_id, 'contacts', path, *on_conflict) == 1
    assert sorted(r['first_name'] for r in records(api, 'contacts')) == ['Ada', 'Bob']
    with open(tmp_path / 'contacts.errors.csv', newline='', encoding='utf-8') as f:
        refused = list(csv.reader(f))[1:]
    unique = ', which is unique: send each value once' if not on_conflict else ': send each key once'
    assert refused == [['x-1', 'Cy', f"line 4: Lines 2 and 4 have the same 'external_id' (x-1){unique}"]]


def test_cli_import_refuses_an_unknown_column_before_writing(api, database_url, tmp_path, capsys):
    path = write(tmp_path / 'contacts.csv', 'first_name,shoe_size\nAda,42\n')
    assert run_cli(database_url, 'import', '--org', api.org_id, 'contacts', path) == 1
    assert capsys.readouterr().err.strip() == "crmapi: Resource 'contacts' has no field 'shoe_size'"
    assert records(api, 'contacts') == []


def test_cli_import_refuses_an_on_conflict_column_the_resource_does_not_have(api, database_url, tmp_path, capsys):
    path = write(tmp_path / 'tags.csv', 'name\nvip\n')
    assert run_cli(database_url, 'import', '--org', api.org_id, 'tags', path, '--on-conflict', 'nope') == 1
    assert capsys.readouterr().err.startswith("crmapi: on_conflict must name a unique column of 'tags'")
    assert records(api, 'tags') == []


def test_cli_import_stops_after_the_current_batch_on_ctrl_c_and_resumes_without_duplicates(
    api, database_url, tmp_path, capsys, monkeypatch
):
    # NOTE: tags' `name` is unique already; switch to contacts and external_id once h-batch adds that column.
    path = write(tmp_path / 'tags.csv', 'name,color\n' + ''.join(f'tag {i},c{i}\n' for i in range(7)))
    shown = cli.ImportProgress.update

    def ctrl_c_after_the_first_batch(self, rows, bytes_read):
        shown(self, rows, bytes_read)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli.ImportProgress, 'update', ctrl_c_after_the_first_batch)
    assert run_cli(database_url, 'import', '--org', api.org_id, 'tags', path, '--batch', '3') == 1
    assert sorted(r['name'] for r in records(api, 'tags')) == ['tag 0', 'tag 1', 'tag 2']
    err = capsys.readouterr().err
    assert 'tags: 3 of 3 rows imported' in err
    assert (
        'crmapi: stopped after line 4; run the same command with --on-conflict <a unique column> to resume '
        'without duplicates'
    ) in err

    monkeypatch.setattr(cli.ImportProgress, 'update', shown)
    assert (
        run_cli(database_url, 'import', '--org', api.org_id, 'tags', path, '--batch', '3', '--on-conflict', 'name') == 0
    )
    assert sorted((r['name'], r['color']) for r in records(api, 'tags')) == [(f'tag {i}', f'c{i}') for i in range(7)]
    assert 'tags: 7 of 7 rows imported (4 created, 3 updated)' in capsys.readouterr().err


def test_cli_import_interrupted_within_a_batch_keeps_the_batches_before_it(
    api, database_url, tmp_path, capsys, monkeypatch
):
    path = write(tmp_path / 'tags.csv', 'name\n' + ''.join(f'tag {i}\n' for i in range(7)))
    land, calls = imports.land, []

    def interrupted_in_the_second_batch(store, write_batch, rows):
        calls.append(rows)
        if len(calls) == 2:
            with store.db.transaction(write=True):
                imports.write_valid(write_batch, rows[:1])
                raise KeyboardInterrupt
        return land(store, write_batch, rows)

    monkeypatch.setattr(imports, 'land', interrupted_in_the_second_batch)
    assert (
        run_cli(database_url, 'import', '--org', api.org_id, 'tags', path, '--batch', '3', '--on-conflict', 'name') == 1
    )
    assert sorted(r['name'] for r in records(api, 'tags')) == ['tag 0', 'tag 1', 'tag 2']
    assert (
        'crmapi: interrupted after line 4; run the same command with --on-conflict name to resume without duplicates'
    ) in capsys.readouterr().err


def contacts_landed(client):
    return int(client.get('/api/contacts', {'range': [0, 0]}).headers['Content-Range'].rpartition('/')[2])


@pytest.mark.slow
def test_cli_import_killed_mid_file_resumes_with_on_conflict_and_no_row_is_lost_or_doubled(
    api, database_url, tmp_path, capsys
):
    rows, batch = 10_000, 250
    ids = [f'ext-{n:05d}' for n in range(rows)]
    path = write(tmp_path / 'contacts.csv', 'external_id,first_name\n' + ''.join(f'{i},Contact {i}\n' for i in ids))
    child = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'crmapi',
            '--database',
            database_url,
            'import',
            '--org',
            api.org_id,
            'contacts',
            path,
            '--batch',
            str(batch),
        ],
        env=cli_env(),
        stderr=subprocess.DEVNULL,
    )
    try:
        while contacts_landed(api) < 2 * batch:
            assert child.poll() is None, 'the import ended before the test could kill it'
            time.sleep(0.01)
    finally:
        child.kill()  # SIGKILL: no handler runs, the batch in flight is never committed
        child.wait()
    landed = contacts_landed(api)
    assert landed % batch == 0 and 2 * batch <= landed < rows  # whole batches, mid-file

    assert (
        run_cli(
            database_url,
            'import',
            '--org',
            api.org_id,
            'contacts',
            path,
            '--batch',
            str(batch),
            '--on-conflict',
            'external_id',
        )
        == 0
    )
    assert (
        f'contacts: {rows:,} of {rows:,} rows imported ({rows - landed:,} created, {landed:,} updated)'
        in capsys.readouterr().err
    )
    stored = sorted(json.loads(line)['external_id'] for line in export(api, 'contacts', 'ndjson').splitlines())
    assert stored == ids and contacts_landed(api) == rows


def test_cli_import_progress_is_a_plain_line_when_stderr_is_not_a_terminal():
    out = io.StringIO()
    progress = cli.ImportProgress(out, total_bytes=1000, interval=0)
    progress.update(500, 400)
    progress.finish()
    assert out.getvalue().startswith('500 rows, ') and out.getvalue().endswith(' rows/s\n')


def test_cli_import_progress_on_a_terminal_is_a_bar_with_rows_per_second_and_an_eta():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    progress = cli.ImportProgress(out, total_bytes=1000)
    progress.shown -= 1
    progress.update(500, 250)
    progress.finish()
    line = out.getvalue()
    assert line.startswith('\r[######                  ]  25% 500 rows, ') and ' rows/s, ETA ' in line


@pytest.mark.parametrize('size', ['0', '-1', 'x'])
def test_cli_import_batch_is_a_positive_number_of_rows(size):
    with pytest.raises(SystemExit) as exit:
        cli.parser().parse_args(['import', '--org', 'o', 'contacts', 'f.csv', '--batch', size])
    assert exit.value.code == 2
