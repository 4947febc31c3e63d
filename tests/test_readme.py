"""The README's curl examples run: every `curl` line of its ```sh blocks, in the README's order, against an
organization filled with `crmapi demo`'s data (the data `make run` serves), on both databases.

A `c_...` in an example is a contact id the reader fills in: here the first two demo contacts by id, and `c_a`/`c_b`
the two Ada Lovelaces the demo plants as duplicates. An example that still needs something only the reader has (a
file to upload, a cursor from an earlier answer) is not run: NOT_RUN names each, so a new example runs or is
named there on purpose.
"""

import json
import pathlib
import re
import shlex
from urllib.parse import quote
from urllib.parse import urlsplit

import pytest
import webtest

from crmapi import demo

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'
NOT_RUN = {
    'a file to upload': 2,  # --data-binary @contacts.csv, @tags.csv
    'a cursor from an earlier answer': 1,  # cursor=eyJ2Ij...
}
FLAGS_WITH_VALUE = {'-o', '-D'}


def curl_lines():
    """The README's curl commands, each whole (continued lines and quoted newlines joined), without what a shell
    pipes them into."""
    lines = []
    for block in re.findall(r'```sh\n(.*?)```', README.read_text(), re.S):
        command = None
        for line in block.replace('\\\n', ' ').splitlines():
            if command is None and line.strip().startswith('curl '):
                command = line.strip()
            elif command is not None:
                command += ' ' + line.strip()
            if command is not None and complete(command):
                lines.append(command)
                command = None
    return lines


def complete(command):
    try:
        shlex.split(command)
    except ValueError:  # a quote still open: the command goes on on the next line
        return False
    return True


def parse(line):
    """(method, path, query pairs, headers, body) of a curl command, or the reason it cannot run here."""
    words = shlex.split(line.split(' | ')[0])[1:]
    method, url, query, headers, body, as_query = None, None, [], {}, None, False
    words = iter(words)
    for word in words:
        if word == '-X':
            method = next(words)
        elif word == '-H':
            name, _, value = next(words).partition(': ')
            headers[name] = value
        elif word == '--data-urlencode':
            query.append(tuple(next(words).split('=', 1)))
        elif word in ('-d', '--data-binary'):
            body = next(words)
        elif word in FLAGS_WITH_VALUE:
            next(words)
        elif word.startswith('-'):
            as_query = as_query or 'G' in word
        else:
            url = word
    if body is not None and body.startswith('@'):
        return 'a file to upload'
    if any('...' in value for _, value in query):
        return 'a cursor from an earlier answer'
    parts = urlsplit(url)
    query = [*(tuple(p.split('=', 1)) for p in parts.query.split('&') if p), *query]
    method = method or ('POST' if body is not None and not as_query else 'GET')
    return method, parts.path, query, headers, body


@pytest.fixture
def demo_token(database):
    return demo.fill(database)


def test_every_curl_example_of_the_readme_runs_against_the_demo_data(database, wsgi_app, demo_token):
    app = webtest.TestApp(wsgi_app)
    auth = {'Authorization': f'Bearer {demo_token}'}
    contacts = app.get('/api/contacts', {'sort': 'id', 'range': '[0,999]'}, headers=auth).json
    adas = [c['id'] for c in contacts if (c['first_name'], c['last_name']) == ('Ada', 'Lovelace')]
    fill = {'"c_a"': json.dumps(adas[0]), '"c_b"': json.dumps(adas[1])}
    not_run, ran = {}, 0
    for line in curl_lines():
        for placeholder, value in fill.items():
            line = line.replace(placeholder, value)
        ids = iter([contacts[0]['id'], contacts[1]['id']])  # an example's first c_... and its second
        line = re.sub(r'c_\.\.\.', lambda _: next(ids), line)
        parsed = parse(line)
        if isinstance(parsed, str):
            not_run[parsed] = not_run.get(parsed, 0) + 1
            continue
        method, path, query, headers, body = parsed
        headers = {**headers, **auth}
        if query:
            path += '?' + '&'.join(k + '=' + quote(v, safe='') for k, v in query)
        resp = app.request(path, method=method, headers=headers, body=(body or '').encode(), expect_errors=True)
        assert resp.status_int < 400, (line, resp.status, resp.text)
        ran += 1
    assert not_run == NOT_RUN
    assert ran >= 30


def test_the_readme_search_example_finds_what_it_says(database, wsgi_app, demo_token):
    app = webtest.TestApp(wsgi_app)
    found = app.get(
        '/api/contacts', {'filter': '{"q":"tur MARG"}'}, headers={'Authorization': f'Bearer {demo_token}'}
    ).json
    assert found and {(c['first_name'], c['last_name']) for c in found} == {('Margaret', 'Turing')}


def test_the_demo_data_holds_the_one_duplicate_group_the_readme_shows(database, wsgi_app, demo_token):
    app = webtest.TestApp(wsgi_app)
    auth = {'Authorization': f'Bearer {demo_token}'}
    groups = app.get('/api/contacts/duplicates', headers=auth).json
    assert len(groups) == 1 and 'same email' in groups[0]['reasons']
    pair = app.get('/api/contacts', {'filter': json.dumps({'id': groups[0]['ids']})}, headers=auth).json
    assert {(c['first_name'], c['last_name']) for c in pair} == {('Ada', 'Lovelace')}
