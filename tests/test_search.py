"""Search (issue 10), on SQLite and PostgreSQL: `q` finds words, text operators fold all of Unicode.

`q` splits its text into words (runs of letters and digits) and finds a record when each word starts a
word of one of its searchable columns; case and accents are ignored (crmapi/search.py folds both sides
with one function). Without a sort the best matches come first. contains/starts_with/ends_with compare
folded text too. Both read search rows the store keeps in the transaction of every write.
"""

import argparse
import contextlib
import json
import random
import threading
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmapi import cli
from crmapi import db
from crmapi import migrations
from crmapi import rules
from crmapi import search
from crmapi import sqlbuild
from crmapi.accounts import Accounts
from crmapi.accounts import Principal
from crmapi.app import build_services
from crmapi.query import parse_list
from crmapi.schema import BUILTIN
from crmapi.schema import ResourceSpec
from crmapi.schema import table_info
from crmapi.store import Store
from conftest import assert_problem
from test_migrations import empty_db  # noqa: F401 - a fixture
from test_properties import bounded


def ids(records):
    return [r['id'] for r in records]


def found(api, q, resource='contacts', **params):
    return ids(api.list(resource, filter={'q': q}, range=[0, 99], **params))


@pytest.fixture
def homer(api):
    return api.create(
        'contacts',
        first_name='Homer',
        last_name='Simpson',
        email='homer.simpson@springfield.com',
        phone='+44 20 7946 0000',
        title='Safety inspector',
        city='Springfield',
    )


# -- q: words -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'q',
    [
        'homer simpson',
        'simpson homer',
        'hom simp',
        'HOMER',
        'Simp',
        'safety insp',
        'springfield homer',
        'homer.simpson@springfield.com',
        'homersimp',
        'spring',
    ],
)
def test_q_finds_each_word_at_the_start_of_a_word_in_any_order(api, homer, q):
    assert found(api, q) == [homer['id']]


@pytest.mark.parametrize('q', ['homer x', 'omer', 'impson', 'homer simpsonx', 'field'])
def test_q_needs_every_word_at_a_word_start(api, homer, q):
    assert found(api, q) == []


@pytest.mark.parametrize(
    'q, hit',
    [
        ('+44 20 7946', True),
        ('+44 (20) 7946-0000', True),
        ('4420', True),
        ('442079460000', True),
        ('7946', False),
        ('+44 21', False),
    ],
)
def test_a_phone_like_q_matches_phones_whose_digits_start_with_its_digits(api, homer, q, hit):
    assert found(api, q) == ([homer['id']] if hit else [])


def test_punctuation_separates_words(api):
    obrien = api.create('contacts', first_name='Conan', last_name="O'Brien", email='conan@www.acme.io')
    assert found(api, 'brien') == found(api, 'o brien') == found(api, "o'bri") == [obrien['id']]
    assert found(api, 'acme.io') == found(api, 'www') == [obrien['id']]
    assert found(api, '%_') == [obrien['id']], 'a q without letters or digits matches every record'


@pytest.mark.parametrize(
    'stored, asked',
    [
        ('Zoë', 'zoe'),
        ('Zoe', 'ZOË'),
        ('åsa', 'ÅSA'),
        ('Straße', 'strasse'),
        ('STRASSE', 'straße'),
        ('Σωκράτης', 'σωκρα'),
        ('ΣΩΚΡΆΤΗΣ', 'Σωκράτης'),
        ('Пётр', 'петр'),
        ('ПЁТР', 'пётр'),
        ('Ǆemal', 'dže'),
        ('ﬁnance', 'fin'),
        ('İstanbul', 'istan'),
        ('Ｔｏｋｙｏ', 'tokyo'),
        ('北京大学', '北京大学'),
        ('北京大学', '北京'),
        ('東京 タワー', 'タワー'),
        ('서울', '서울'),
    ],
)
def test_q_ignores_case_and_accents_across_scripts(api, stored, asked):
    record = api.create('contacts', last_name=stored)
    assert found(api, asked) == [record['id']]


def test_cjk_text_is_found_by_whole_terms_and_never_breaks(api):
    record = api.create('contacts', last_name='北京大学', title='東京タワー 😀 \u202e')
    assert found(api, '北京大学 東京タワー') == [record['id']]
    assert found(api, '上海') == []
    for q in ['😀', '\u202e', '字' * 300, 'a' * 500]:
        api.get('/api/contacts', {'filter': {'q': q}})


def test_q_reads_the_company_name_of_contacts_and_deals(api):
    company = api.create('companies', name='Acme Rockets')
    contact = api.create('contacts', last_name='Coyote', company_id=company['id'])
    deal = api.create('deals', name='Order', company_id=company['id'])
    assert found(api, 'coyote rocket') == [contact['id']]
    assert found(api, 'rocket', 'deals') == [deal['id']]
    assert found(api, 'rocket', 'contacts_summary') == [contact['id']]


def test_a_renamed_company_is_found_by_its_new_name_on_its_contacts_and_deals(api):
    company = api.create('companies', name='Acme Rockets')
    contact = api.create('contacts', last_name='Coyote', company_id=company['id'])
    deal = api.create('deals', name='Order', company_id=company['id'])
    api.put(f'/api/companies/{company["id"]}', {'name': 'Globex'})
    assert found(api, 'globex') == [contact['id']] and found(api, 'globex', 'deals') == [deal['id']]
    assert found(api, 'rocket') == [] and found(api, 'rocket', 'deals') == []
    api.post('/api/companies?on_conflict=external_id', {'external_id': 'acme-1', 'name': 'Globex'}, status=201)
    api.put(f'/api/companies/{company["id"]}', {'external_id': 'acme-2'})
    api.post('/api/companies?on_conflict=external_id', {'external_id': 'acme-2', 'name': 'Umbrella'}, status=200)
    assert found(api, 'umbrella') == [contact['id']], 'an upsert renames too'
    other = api.create('companies', name='Initech')
    api.put(f'/api/contacts/{contact["id"]}', {'company_id': other['id']})
    assert found(api, 'initech') == [contact['id']] and found(api, 'umbrella') == []


@pytest.mark.parametrize(
    'resource, body, q',
    [
        ('companies', {'name': 'Globex', 'website': 'https://globex.example', 'country': 'Österreich'}, 'osterr'),
        ('deals', {'name': 'Big Deal', 'description': 'Renewal for 2027'}, 'renewal 2027'),
        ('tasks', {'text': 'Call back Mr. Burns'}, 'burns call'),
        ('tags', {'name': 'Very Important'}, 'important'),
        ('crm_users', {'email': 'ned.flanders@example.com', 'first_name': 'Ned'}, 'flanders'),
    ],
)
def test_q_finds_every_resource_by_its_words(api, resource, body, q):
    record = api.create(resource, **body)
    assert found(api, q, resource) == [record['id']]


def test_notes_are_found_by_title_and_text(api, homer):
    note = api.create('contact_notes', contact_id=homer['id'], title='Donut order', text='Pink frosting')
    assert found(api, 'donut frost', 'contact_notes') == [note['id']]


# -- ranking, paging, exports ---------------------------------------------------------------------------


def test_without_a_sort_name_matches_come_first_then_by_id(api):
    city = api.create('contacts', last_name='Zed', city='Homerton')
    title = api.create('contacts', last_name='Young', title='Homer fan')
    name = api.create('contacts', first_name='Homer', last_name='Simpson')
    both = api.create('contacts', first_name='Homer', last_name='Homerton')
    assert found(api, 'homer') == [name['id'], both['id'], city['id'], title['id']]
    assert found(api, 'homer homerton') == [both['id'], city['id']], 'two name words beat one'
    assert found(api, 'homer', sort='last_name') == [both['id'], name['id'], title['id'], city['id']]
    export = api.get('/api/contacts', {'filter': {'q': 'homer'}}, headers={'Accept': 'application/x-ndjson'})
    assert [json.loads(line)['id'] for line in export.text.splitlines()] == found(api, 'homer')


def test_a_ranked_list_counts_exactly_and_pages_by_range_without_a_cursor(api):
    made = [api.create('contacts', first_name=f'Ann{i}', city='Annecy') for i in range(5)]
    resp = api.get('/api/contacts', {'filter': {'q': 'ann'}, 'range': [0, 1]})
    assert resp.headers['Content-Range'] == 'contacts 0-1/5'
    assert 'X-Next-Cursor' not in resp.headers
    assert found(api, 'ann') == ids(made)
    assert ids(api.list('contacts', filter={'q': 'ann'}, range=[2, 4])) == ids(made)[2:]
    sorted_page = api.get('/api/contacts', {'filter': {'q': 'ann'}, 'sort': 'first_name', 'range': [0, 1]})
    cursor = sorted_page.headers['X-Next-Cursor']
    rest = api.get('/api/contacts', {'filter': {'q': 'ann'}, 'sort': 'first_name', 'range': [0, 1], 'cursor': cursor})
    assert ids(rest.json) == ids(made)[2:4] and rest.headers['Content-Range'] == 'contacts 2-3/5'


def test_a_page_found_by_walking_the_first_records_in_order_is_the_page_read_in_full(api, other_api, monkeypatch):
    """A broad search's page is looked for among the first records of the list's order (sqlbuild.build_walk): what
    it finds is exactly the page of the full read (ranked, sorted, text operators, archived), and a walk too short
    for a page reads in full."""
    for first, last, city in [
        ('Zoë', 'Smith', 'Marrakech'),  # NOTE: first in id order, a match outside its name: ranked after the others
        ('Mary', 'Marsh', 'Paris'),
        ('Mark', 'Smith', 'Marseille'),
        ('Ann', 'Marley', None),
        ('Omar', 'Smithson', 'Lyon'),
        ('Mario', None, 'Martigues'),
        ('Bob', 'Goldsmith', 'Paris'),
        ('Marta', 'Mar', 'Paris'),
        ('Mar', 'Blacksmith', None),
    ]:
        api.create('contacts', first_name=first, last_name=last, city=city)
        other_api.create('contacts', first_name=first, last_name=last, city=city)
    api.delete(f'/api/contacts/{api.create("contacts", first_name="Marcel", last_name="Smith")["id"]}')
    smith = {'field': 'last_name', 'op': 'contains', 'value': 'SMITH'}
    cases = [
        {'filter': {'q': 'mar'}},
        {'filter': {'q': 'mar'}, 'sort': ['last_name', 'DESC']},
        {'filter': {'q': 'mar', 'include_archived': True}, 'sort': ['last_name', 'ASC']},
        {'filter': {'q': 'mar smi'}},
        {'filters': [smith]},
        {'filters': [smith], 'sort': ['first_name', 'ASC']},
        {'filters': [q_filter('mar'), {'field': 'city', 'op': 'starts_with', 'value': 'ma'}], 'sort': ['city', 'ASC']},
    ]
    walked = []
    walk = Store._walked
    monkeypatch.setattr(Store, '_walked', lambda *a: walked.append(walk(*a)) or walked[-1])

    def page(params, bounds):
        resp = api.get('/api/contacts', {**params, 'range': bounds})
        return ids(resp.json), resp.headers['Content-Range']

    for params in cases:
        for bounds in ([0, 0], [0, 1], [1, 2], [0, 3]):
            monkeypatch.setattr(sqlbuild.walking, 'WALK_PAGE', 0)
            full = page(params, bounds)
            monkeypatch.setattr(sqlbuild.walking, 'WALK_PAGE', 100)
            for first, size in ((1, 2), (1, 4), (2, 1000), (1000, 1000)):
                monkeypatch.setattr(sqlbuild.walking, 'WALK_FIRST', first)
                monkeypatch.setattr(sqlbuild.walking, 'WALK', size)
                assert page(params, bounds) == full, (params, bounds, first, size)
    assert any(w is not None for w in walked) and None in walked, 'some pages were walked, some read in full'


def test_a_walk_starts_where_the_matches_of_a_text_operator_on_its_sort_column_start(api, other_api, monkeypatch):
    """Matches of an operator on the sort column lie together in its order (contains "smith" by last name: past
    every other name), out of reach of a walk from the start: the walk passes over the values that fail first, one
    record each (sqlbuild._seek), and its page is the full read's, asc and desc, ties in id order, NULLs, offsets,
    with other filters; the values it may pass over are bounded, and a run beyond the bound is read in full.
    NOTE: each walking case has more matches than WALK_FIRST: a smaller total, kept, reads without walking."""
    names = ['Adams'] * 3 + ['Brown'] * 3 + ['Clark'] * 3 + ['Goldsmith', *['Smith'] * 5, 'Smithson']
    for last in [None, *names, *['Young'] * 3, None]:
        for client in (api, other_api):
            client.create('contacts', first_name='Ann' if last == 'Smith' else 'Bob', last_name=last)
    api.delete(f'/api/contacts/{api.create("contacts", first_name="Al", last_name="Smith")["id"]}')
    smith = {'field': 'last_name', 'op': 'contains', 'value': 'SMITH'}
    walking = [
        {'filters': [smith], 'sort': ['last_name', 'ASC']},
        {'filters': [smith], 'sort': ['last_name', 'DESC']},
        {'filters': [{'field': 'last_name', 'op': 'ends_with', 'value': 'smith'}], 'sort': ['last_name', 'ASC']},
        {'filters': [smith, {'field': 'first_name', 'op': 'starts_with', 'value': 'a'}], 'sort': ['last_name', 'ASC']},
        {'filters': [q_filter('ann'), smith], 'sort': ['last_name', 'ASC']},
        {'filters': [smith], 'filter': {'include_archived': True}, 'sort': ['last_name', 'ASC']},
    ]
    beyond_the_bound = {'filters': [{'field': 'last_name', 'op': 'starts_with', 'value': 'you'}], 'sort': 'last_name'}
    walked = []
    walk = Store._walked
    monkeypatch.setattr(Store, '_walked', lambda *a: walked.append(walk(*a)) or walked[-1])
    for params in [*walking, beyond_the_bound]:
        for bounds in ([0, 0], [0, 3], [1, 2], [2, 5]):
            monkeypatch.setattr(sqlbuild.walking, 'WALK_PAGE', 0)
            full = api.get('/api/contacts', {**params, 'range': bounds})
            monkeypatch.setattr(sqlbuild.walking, 'WALK_PAGE', 100)
            monkeypatch.setattr(sqlbuild.walking, 'WALK_FIRST', 4)
            monkeypatch.setattr(sqlbuild.walking, 'WALK', 8)
            resp = api.get('/api/contacts', {**params, 'range': bounds})
            assert (ids(resp.json), resp.headers['Content-Range']) == (ids(full.json), full.headers['Content-Range'])
            assert (walked[-1] is not None) == (params in walking and len(full.json) > bounds[1] - bounds[0]), params


def test_a_walk_goes_on_with_as_many_records_as_the_rate_of_its_matches_needs(api, other_api, monkeypatch):
    """A first walk that holds part of its page is followed by one of the records its rate of matches needs (with
    room, in whole first walks), then by the longest one where that falls short: SQLite checks every record a walk is
    given, so a walk of WALK records where a few hundred hold the page cost it 10x. The page is the full read's."""
    spread = ['mar' if i % 2 else 'bob' for i in range(40)]  # every other record matches
    bunched = ['mar', 'mar', *['bob'] * 30, *['mar'] * 8]  # two, then none until the end
    lengths = []
    build = sqlbuild.build_walk
    monkeypatch.setattr(sqlbuild, 'build_walk', lambda *a: lengths.append(a[4]) or build(*a))
    params = {'filters': [q_filter('mar')], 'sort': 'last_name', 'range': [0, 2]}
    for client, firsts, expected in ((api, spread, [4, 8]), (other_api, bunched, [4, 8, 40])):
        for i, first in enumerate(firsts):
            client.create('contacts', first_name=first, last_name=f'x{i:02d}')
        monkeypatch.setattr(sqlbuild.walking, 'WALK_PAGE', 0)
        full = client.get('/api/contacts', params)
        monkeypatch.setattr(sqlbuild.walking, 'WALK_PAGE', 100)
        monkeypatch.setattr(sqlbuild.walking, 'WALK_FIRST', 4)
        monkeypatch.setattr(sqlbuild.walking, 'WALK', 40)
        lengths.clear()
        walked = client.get('/api/contacts', params)
        assert ids(walked.json) == ids(full.json) and len(full.json) == 3
        assert walked.headers['Content-Range'] == full.headers['Content-Range']
        assert lengths == expected, (firsts, lengths)


def test_a_repeated_search_on_the_same_data_goes_to_the_walk_that_proved_its_page(api, monkeypatch):
    """Which walk proved a page, or that none did, is kept beside the exact totals (KeptCounts, the same data
    version): asked again, the page comes from that walk alone, or from reading the matches without walking; a write
    forgets it. The page is always the full read's."""
    firsts = ['mar', 'mar', *['bob'] * 30, *['mar'] * 8]  # two, then none until the end
    for i, first in enumerate(firsts):
        api.create('contacts', first_name=first, last_name=f'x{i:02d}')
    lengths = []
    build = sqlbuild.build_walk
    monkeypatch.setattr(sqlbuild, 'build_walk', lambda *a: lengths.append(a[4]) or build(*a))
    monkeypatch.setattr(sqlbuild.walking, 'WALK_FIRST', 4)
    monkeypatch.setattr(sqlbuild.walking, 'WALK', 40)
    for bounds, walks, again in (([0, 2], [4, 8, 40], [4, 40]), ([0, 10], [4, 28, 40], [4])):
        params = {'filters': [q_filter('mar')], 'sort': 'last_name', 'range': bounds}
        monkeypatch.setattr(sqlbuild.walking, 'WALK_PAGE', 0)
        full = api.get('/api/contacts', params)
        monkeypatch.setattr(sqlbuild.walking, 'WALK_PAGE', 100)
        seen = []
        for _ in range(50):
            lengths.clear()
            page = api.get('/api/contacts', params)
            assert (ids(page.json), page.headers['Content-Range']) == (ids(full.json), full.headers['Content-Range'])
            seen.append(lengths[:])
            # NOTE: PostgreSQL keeps what it kept while nothing commits on the server: another pytest-xdist worker's
            # commit between two pages makes the second walk as the first did.
            if seen[-1] == again and walks in seen:
                break
        assert seen[0] == walks and seen[-1] == again, (bounds, seen)
    api.create('contacts', first_name='mar', last_name='x99')
    lengths.clear()
    api.get('/api/contacts', params)
    assert lengths == [4, 28, 40], 'a write forgets which walks proved nothing'


def test_a_search_whose_kept_total_is_no_longer_than_a_walk_reads_its_matches_without_walking(api, monkeypatch):
    """A walk proves a page only among the records it reads: with an exact total kept (db.KeptCounts) of no more
    matches than it would read, reading every match costs no more, and a rare match is not walked in vain."""
    made = [api.create('contacts', first_name='Bob', last_name=last) for last in ['Smith', 'Adams', 'Smithson']]
    monkeypatch.setattr(sqlbuild.walking, 'WALK_FIRST', 3)
    walked = []
    walk = Store._walked
    monkeypatch.setattr(Store, '_walked', lambda *a: walked.append(walk(*a)) or walked[-1])
    params = {'filters': [{'field': 'last_name', 'op': 'contains', 'value': 'smith'}], 'sort': 'last_name'}
    for _ in range(50):
        page = api.get('/api/contacts', {**params, 'range': [0, 0]})
        assert ids(page.json) == [made[0]['id']] and page.headers['Content-Range'] == 'contacts 0-0/2'
        # NOTE: PostgreSQL's kept totals hold while nothing commits on the server: a commit of another pytest-xdist
        # worker (its own database, the same server) between two pages makes the second count (and walk) again.
        if len(walked) > 1 and walked[-1] is None:
            break
    assert walked[0] is not None, 'the first page counted, and walked'
    assert walked[-1] is None, 'a later one used its kept total and read the matches without walking'


# -- q inside filters ----------------------------------------------------------------------------------


def q_filter(value, logical=None):
    item = {'field': 'q', 'op': 'eq', 'value': value}
    return {**item, 'logicalOp': logical} if logical else item


def test_q_inside_filters_combines_by_logical_op(api, homer):
    marge = api.create('contacts', first_name='Marge', last_name='Simpson', status='hot')
    ned = api.create('contacts', first_name='Ned', last_name='Flanders', status='hot')
    status = {'field': 'status', 'op': 'eq', 'value': 'hot'}
    assert ids(api.list('contacts', filters=[q_filter('simpson'), status])) == [marge['id']]
    assert set(ids(api.list('contacts', filters=[q_filter('homer', 'or'), status]))) == {
        homer['id'],
        marge['id'],
        ned['id'],
    }
    assert ids(api.list('contacts', filters=[q_filter('simpson'), q_filter('marge')])) == [marge['id']]
    assert ids(api.list('contacts', filter={'q': 'flanders'}, filters=[status])) == [ned['id']]
    export = api.get(
        '/api/contacts',
        {'filters': [q_filter('simpson')], 'sort': 'first_name'},
        headers={'Accept': 'application/x-ndjson'},
    )
    assert [json.loads(line)['id'] for line in export.text.splitlines()] == [homer['id'], marge['id']]


@pytest.mark.parametrize(
    'item, detail',
    [
        ({'field': 'q', 'op': 'contains', 'value': 'x'}, "operator 'eq' only"),
        ({'field': 'q', 'op': 'eq', 'value': 5}, 'must be a string'),
        ({'field': 'q', 'op': 'eq', 'value': 'a\x00'}, 'must be a string'),
        ({'field': 'q', 'op': 'eq', 'value': ' '.join(f'w{i}' for i in range(33))}, 'more than 32 words'),
    ],
)
def test_a_bad_q_in_filters_is_a_400_naming_it(api, item, detail):
    body = assert_problem(api.get('/api/contacts', {'filters': [item]}, status=400), 400, param='filters', field='q')
    assert detail in body['detail']


def test_a_q_of_too_many_words_is_a_400(api):
    words = ' '.join(f'w{i}' for i in range(40))
    assert_problem(api.get('/api/contacts', {'filter': {'q': words}}, status=400), 400, param='filter', field='q')
    assert found(api, 'w ' * 40) == [], 'a word asked twice counts once'


OTHER_FILTERS = [  # one filter per operator, on another field than q's words
    {'field': 'status', 'op': 'eq', 'value': 'hot'},
    {'field': 'status', 'op': 'neq', 'value': 'hot'},
    {'field': 'city', 'op': 'gt', 'value': 'M'},
    {'field': 'city', 'op': 'gte', 'value': 'Paris'},
    {'field': 'city', 'op': 'lt', 'value': 'M'},
    {'field': 'city', 'op': 'lte', 'value': 'London'},
    {'field': 'city', 'op': 'contains', 'value': 'ari'},
    {'field': 'city', 'op': 'not_contains', 'value': 'ari'},
    {'field': 'city', 'op': 'starts_with', 'value': 'lo'},
    {'field': 'city', 'op': 'ends_with', 'value': 'IS'},
    {'field': 'status', 'op': 'in', 'value': ['hot', 'cold']},
    {'field': 'status', 'op': 'not_in', 'value': ['hot']},
    {'field': 'status', 'op': 'is_empty'},
    {'field': 'status', 'op': 'is_not_empty'},
]


@pytest.mark.parametrize('other', OTHER_FILTERS, ids=lambda f: f['op'])
def test_q_with_every_other_operator_is_the_intersection(api, other):
    for first, city, status in [
        ('Ann', 'London', 'hot'),
        ('Ann', 'Paris', None),
        ('Anna', 'Lyon', 'cold'),
        ('Bob', 'Paris', 'hot'),
        ('Annette', None, 'hot'),
    ]:
        api.create('contacts', first_name=first, city=city, status=status)
    by_q = set(found(api, 'ann'))
    by_other = set(ids(api.list('contacts', filters=[other], range=[0, 99])))
    both = api.get('/api/contacts', {'filter': {'q': 'ann'}, 'filters': [other], 'range': [0, 99]})
    assert set(ids(both.json)) == by_q & by_other
    assert both.headers['Content-Range'].endswith(f'/{len(by_q & by_other)}')


# -- custom objects, archive, merge -------------------------------------------------------------------


def test_custom_objects_are_searched_by_their_text_fields_and_ranked_by_required_ones(api):
    api.post(
        '/api/custom_objects',
        {
            'slug': 'projects',
            'fields': [
                {'name': 'title', 'type': 'text', 'required': True},
                {'name': 'notes', 'type': 'text'},
                {'name': 'budget', 'type': 'number'},
            ],
        },
    )
    noted = api.create('projects', title='Gemini', notes='Apollo follow-up')
    titled = api.create('projects', title='Apollo', budget=5)
    assert found(api, 'apollo', 'projects') == [titled['id'], noted['id']]
    assert ids(api.list('projects', filters=[{'field': 'notes', 'op': 'contains', 'value': 'FOLLOW'}])) == [noted['id']]
    api.put('/api/custom_objects/projects', {'fields': [{'name': 'code', 'type': 'text'}]})
    coded = api.put(f'/api/projects/{titled["id"]}', {'code': 'Ωmega-7'}).json
    assert found(api, 'ωmega 7', 'projects') == [coded['id']]
    api.delete('/api/custom_objects/projects/fields/notes')
    assert found(api, 'follow', 'projects') == []
    assert found(api, 'gemini', 'projects') == [noted['id']]


def test_archived_records_are_found_only_when_archived_ones_are_asked_for(api, homer):
    api.delete(f'/api/contacts/{homer["id"]}')
    assert found(api, 'homer') == []
    assert ids(api.list('contacts', filter={'q': 'homer', 'include_archived': True})) == [homer['id']]
    api.post(f'/api/contacts/{homer["id"]}/restore', status=200)
    assert found(api, 'homer') == [homer['id']]


def test_a_merge_leaves_the_target_findable_by_what_it_took_and_the_sources_gone(api):
    target = api.create('contacts', first_name='Homer', last_name='Simpson')
    source = api.create('contacts', first_name='Homie', last_name='J', email='mr.plow@example.com')
    api.post('/api/merge_contacts', {'source_ids': [source['id']], 'target_id': target['id']}, status=200)
    assert found(api, 'plow') == [target['id']]
    assert found(api, 'homie') == []


def test_a_company_merge_gives_the_sources_contacts_and_deals_the_targets_name(api):
    """The records a merge points at its target keep their search rows current: their words take its name."""
    target, source = api.create('companies', name='Globex'), api.create('companies', name='Initech')
    contact = api.create('contacts', first_name='Milton', company_id=source['id'])
    deal = api.create('deals', name='Stapler', company_id=source['id'])
    api.post('/api/merge_companies', {'source_ids': [source['id']], 'target_id': target['id']}, status=200)
    assert found(api, 'milton globex') == [contact['id']] and found(api, 'globex', 'deals') == [deal['id']]
    assert found(api, 'initech') == [] and found(api, 'initech', 'deals') == []


def test_deleted_records_leave_the_search(api):
    tag = api.create('tags', name='Gold customer')
    api.delete(f'/api/tags/{tag["id"]}')
    assert found(api, 'gold', 'tags') == []
    assert ids(api.list('tags', filters=[{'field': 'name', 'op': 'contains', 'value': 'old'}])) == []


def test_a_rolled_back_write_leaves_no_search_rows(api, database):
    store = build_services(database).store
    info = store.catalog.resolve('contacts')
    principal = Principal(api.org_id, None, True)
    with pytest.raises(RuntimeError), database.transaction(write=True):
        record = store.create(info, principal, {'first_name': 'Ghost', 'last_name': 'Rider'})
        assert search_rows(database, record['id']) > 0, 'written in the same transaction'
        raise RuntimeError('the write fails after its search rows')
    assert search_rows(database, record['id']) == 0
    assert found(api, 'ghost') == []
    api.post('/api/contacts', [{'first_name': 'Phantom'}, {'first_name': 'Bad', 'tags': ['tag_missing']}], status=400)
    assert found(api, 'phantom') == []


def test_every_write_path_keeps_the_search_rows_current(api, database):
    """Batches, upserts, a CSV import and a rule's action all write through the store's single paths."""
    made = api.post('/api/contacts', [{'first_name': 'Apu', 'external_id': 'k1'}, {'first_name': 'Moe'}]).json
    api.app.patch_json('/api/contacts', [{'id': made[1]['id'], 'last_name': 'Szyslak'}], headers=api.headers)
    api.post(
        '/api/contacts?on_conflict=external_id',
        [{'external_id': 'k1', 'last_name': 'Nahasapeemapetilon'}, {'external_id': 'k2', 'first_name': 'Barney'}],
        status=200,
    )
    api.app.post(
        '/api/contacts',
        b'first_name,last_name\nEdna,Krabappel\n',
        status=201,
        headers={**api.headers, 'Content-Type': 'text/csv'},
    )
    assert found(api, 'apu nahas') == [made[0]['id']] and found(api, 'moe szys') == [made[1]['id']]
    assert len(found(api, 'barney')) == 1 and len(found(api, 'edna krab')) == 1
    api.post(
        '/api/automation_rules',
        {
            'name': 'Tag the bartender',
            'trigger': {'resource': 'contacts', 'on': ['updated'], 'fields': ['title']},
            'conditions': [],
            'actions': [{'type': 'update', 'set': {'city': 'Springfield'}}],
        },
    )
    api.put(f'/api/contacts/{made[1]["id"]}', {'title': 'Bartender'})
    store = build_services(database).store
    after = 0
    while changes := store.history.feed(api.org_id, after, 1000):
        for change in changes:
            rules.run_for_change(store, change, rules.depth_of(change), org_id=api.org_id)
        after = changes[-1]['seq']
    assert found(api, 'springf bartend') == [made[1]['id']]


def test_a_batch_of_new_records_is_findable_like_single_writes(api):
    """A batch of at least sqlbuild.COPY_ROWS new records writes its search rows in one go (PostgreSQL: COPY):
    each record is found by its words and substrings, and a later change of one rewrites its row."""
    n = sqlbuild.COPY_ROWS + 5
    made = api.post(
        '/api/contacts',
        [{'first_name': f'Batch{i:02d}', 'last_name': 'Gumble', 'email': f'b.{i}@moes.example'} for i in range(n)],
    ).json
    assert found(api, 'batch07') == [made[7]['id']] and len(found(api, 'gumb')) == n
    assert len(api.list('contacts', filters=[{'field': 'email', 'op': 'contains', 'value': '@moes'}])) == n
    api.app.patch_json('/api/contacts', [{'id': made[7]['id'], 'last_name': 'Simpson'}], headers=api.headers)
    assert found(api, 'batch07 simps') == [made[7]['id']] and len(found(api, 'gumb')) == n - 1


def test_q_words_of_every_length_find_the_same_records_through_every_write_path(api, database):
    """PostgreSQL finds a q word of 1-3 characters as one exact lexeme of its row's word starts (`prefixes`, written
    beside `words` by every write path: single, a batch by COPY, an update, a company rename, a rebuild) and a longer
    word by its first 3 characters there, then whole on the row: the records SQLite's trigram index finds."""
    zenith = api.create('companies', name='Zenith Labs')
    jo = api.create('contacts', first_name='Jo', last_name='Smith', email='jsmith@acme.io', company_id=zenith['id'])
    batch = api.post(
        '/api/contacts',
        [{'first_name': 'John', 'last_name': f'Smithers{i}', 'company_id': zenith['id']} for i in range(20)],
    ).json
    joanna = api.create('contacts', first_name='Joanna', last_name='Smi')
    bob = api.create('contacts', first_name='Bob', last_name='Jones', phone='+1 555 0100')
    api.put(f'/api/contacts/{joanna["id"]}', {'title': 'Zealot'})
    smithers = {r['id'] for r in batch}
    expected = {
        'jo smi': {jo['id'], joanna['id'], *smithers},
        'SMI J': {jo['id'], joanna['id'], *smithers},
        'JÖ SMÏ': {jo['id'], joanna['id'], *smithers},
        'joh smith': smithers,
        'smith jo': {jo['id'], *smithers},
        'smithers1 j': {r['id'] for r in batch if r['last_name'].startswith('Smithers1')},
        'jsm': {jo['id']},
        'acm io': {jo['id']},
        'z jo': {jo['id'], joanna['id'], *smithers},
        'zen jo': {jo['id'], *smithers},
        'zenith labs j': {jo['id'], *smithers},
        'jon': {bob['id']},
        '+1 55': {bob['id']},
        'jo x': set(),
        'smix jo': set(),
    }

    def answers():
        return {q: set(found(api, q)) for q in expected}

    assert answers() == expected
    api.put(f'/api/companies/{zenith["id"]}', {'name': 'Globex'})
    assert set(found(api, 'gl jo')) == {jo['id'], *smithers} and found(api, 'ze jo') == [joanna['id']]  # a Zealot
    expected['zenith labs j'], expected['zen jo'], expected['z jo'] = set(), set(), {joanna['id']}
    cli.cmd_reindex(database, argparse.Namespace(org=api.org_id))
    assert answers() == expected
    if database.name == 'postgresql':
        with database.transaction() as tx:
            rows = tx.rows('SELECT words, prefixes FROM search_texts WHERE organization_id = %s', (api.org_id,))
        for words, prefixes in rows:
            assert set(prefixes.split()) == {w[:n] for w in words.split() for n in (1, 2, 3)}, words


def test_a_batch_of_any_size_writes_exactly_its_search_rows(api, database):
    """On SQLite a batch's search rows go in one statement of a power of two rows (sqlbuild._search_parts): the rows
    it pads with are skipped, and every record of the batch has its row."""
    for size in (3, 5, 17):
        made = api.post(
            '/api/contacts', [{'first_name': f'Pad{size}x{i}', 'last_name': 'Szyslak'} for i in range(size)]
        )
        assert found(api, f'pad{size}x{size - 1}') == [made.json[-1]['id']]
    assert len(found(api, 'szysl')) == 3 + 5 + 17
    p = database.dialect.parameter().get_sql()
    with database.transaction() as tx:
        rows = tx.count(
            f"SELECT COUNT(*) FROM search_texts WHERE table_name = 'contacts' AND organization_id = {p}", [api.org_id]
        )
    assert rows == 3 + 5 + 17


def test_a_write_that_changes_no_searchable_column_writes_no_search_row(api, homer, monkeypatch):
    written = []
    monkeypatch.setattr(sqlbuild, 'build_search_rows', lambda *a: written.append(a) or [])
    tag = api.create('tags', name='Vip')
    written.clear()
    api.put(f'/api/contacts/{homer["id"]}', {'tags': [tag['id']]})
    api.delete(f'/api/contacts/{homer["id"]}')
    assert written == [], 'a tags change and an archive rewrite no words'
    monkeypatch.undo()
    assert found(api, 'homer') == [] and ids(api.list('contacts', filter={'q': 'homer', 'include_archived': True}))


def test_a_list_that_only_searches_counts_and_ranks_in_the_search_rows(api, database):
    """The count and a ranked page of a broad q never join each match to its record."""
    info = build_services(database).catalog.resolve('contacts')
    for params in [{'filter': {'q': 'mar'}}, {'filters': [{'field': 'q', 'op': 'eq', 'value': 'a'}]}]:
        lq = parse_list({k: json.dumps(v) for k, v in params.items()}, info)
        count_sql, _ = sqlbuild.build_count(database.dialect, info, api.org_id, lq)
        page_sql, _ = sqlbuild.build_list(database.dialect, info, api.org_id, lq)
        assert 'FROM search_texts s WHERE' in count_sql and '"contacts"' not in count_sql
        assert page_sql.index('LIMIT') < page_sql.index('JOIN "contacts"'), 'the page is cut before the join'


def test_a_sorted_list_that_only_searches_reads_its_matches_before_sorting_them(api, database):
    """PostgreSQL would walk the sort's index under the LIMIT, looking each record up, as if matches were spread
    evenly: clustered ones (q "jo smi" by last name: the Smiths) cost a walk of most of the table."""
    info = build_services(database).catalog.resolve('contacts')
    for params in [
        {'filter': {'q': 'jo smi'}},
        {'filters': [{'field': 'last_name', 'op': 'contains', 'value': 'mith'}]},
    ]:
        lq = parse_list({k: json.dumps(v) for k, v in {**params, 'sort': ['last_name', 'ASC']}.items()}, info)
        page_sql, _ = sqlbuild.build_list(database.dialect, info, api.org_id, lq)
        read_first = 'ANY(ARRAY(SELECT s.record_id' if database.name == 'postgresql' else 'IN (SELECT s.record_id'
        assert read_first in page_sql


def test_postgresql_connections_read_broad_matches_through_an_exact_bitmap(database):
    """A GIN bitmap of ~100k matches turns lossy in PostgreSQL's default 4 MB of work_mem: every row of a lossy page
    is checked again, 4x the time of a broad q's count at 1M contacts."""
    if database.name == 'postgresql':
        with database.transaction() as tx:
            assert tx.one('SHOW work_mem')[0] == db.WORK_MEM


def test_postgresql_never_prepares_a_statement_that_matches_a_text_pattern(database, api):
    """A prepared statement is planned generically from its 6th run, and a generic plan cannot see a LIKE pattern:
    a contains walk went from 1.3 ms to 72 ms at 100k contacts; nor a q's words (tsquery): q "jo smi" went from
    30-60 ms to 250-500 ms at 1M. Statements without one are still prepared."""
    if database.name != 'postgresql':
        return
    info = build_services(database).catalog.resolve('contacts')

    def page_sql(params):
        lq = parse_list({k: json.dumps(v) for k, v in params.items()}, info)
        return sqlbuild.build_list(database.dialect, info, api.org_id, lq)

    contains = page_sql({'filters': [{'field': 'last_name', 'op': 'contains', 'value': 'mith'}]})
    equal = page_sql({'filters': [{'field': 'last_name', 'op': 'eq', 'value': 'Smith'}]})
    words = page_sql({'filter': {'q': 'jo smi'}})
    with database.transaction() as tx:
        for sql, params in (contains, equal, words):
            for _ in range(8):
                tx.rows(sql, params)
        prepared = [r[0] for r in tx.rows('SELECT statement FROM pg_prepared_statements')]
    assert any('"last_name"=' in s for s in prepared)
    assert not any(' LIKE ' in s or ' @@ ' in s for s in prepared)


def plan_nodes(node, subplan=None, inside=False):
    """(node, whether it is inside the subplan named `subplan`…) for every node of an EXPLAIN (FORMAT JSON) plan."""
    inside = inside or (subplan is not None and node.get('Subplan Name', '').startswith(subplan))
    yield node, inside
    for child in node.get('Plans', ()):
        yield from plan_nodes(child, subplan, inside)


def test_postgresql_walks_check_each_record_on_its_own_search_row(database, api):
    """A walk looks each record up by its search row's whole key, whatever the planner makes of the statistics: as a
    semi-join, with a table's statistics older than its rows, it was planned as a scan of every search row of the
    organization per record (a 7.6 s page of tags). Here nested loops are off, the other way a semi-join goes."""
    if database.name != 'postgresql':
        return
    info = build_services(database).catalog.resolve('tags')
    lq = parse_list({'filter': json.dumps({'q': 'w1x'}), 'range': '[0,9]'}, info)
    sql, params = sqlbuild.build_walk(database.dialect, info, api.org_id, lq, sqlbuild.walking.WALK_FIRST, False)
    with database.transaction(write=True) as tx:
        tx.execute('SET LOCAL enable_nestloop = off')
        tx.execute('SET LOCAL enable_seqscan = off')  # NOTE: an index or nothing, as on a big table
        plan = tx.one('EXPLAIN (FORMAT JSON) ' + sql, params)[0]

    searched = [n for n, _ in plan_nodes(plan[0]['Plan']) if n.get('Relation Name') == 'search_texts']
    assert searched and all('record_id' in n.get('Index Cond', '') for n in searched), searched


def test_postgresql_walks_pass_over_sort_values_checking_one_search_row_each(database, api):
    """A walk that passes over the values of its sort column first (sqlbuild._seek) checks a record of each on its
    search row by the whole key, as the walk itself does, whatever the planner makes of the statistics."""
    if database.name != 'postgresql':
        return
    info = build_services(database).catalog.resolve('contacts')
    params = {'filters': json.dumps([{'field': 'last_name', 'op': 'contains', 'value': 'mith'}]), 'sort': 'last_name'}
    sql, params = sqlbuild.build_walk(database.dialect, info, api.org_id, parse_list(params, info), 200, False)
    with database.transaction(write=True) as tx:
        tx.execute('SET LOCAL enable_nestloop = off')
        tx.execute('SET LOCAL enable_seqscan = off')  # NOTE: an index or nothing, as on a big table
        plan = tx.one('EXPLAIN (FORMAT JSON) ' + sql, params)[0]

    searched = [n for n, _ in plan_nodes(plan[0]['Plan']) if n.get('Relation Name') == 'search_texts']
    assert len(searched) == 2 and all('record_id' in n.get('Index Cond', '') for n in searched), searched


def test_a_walk_passes_over_sort_values_only_of_a_column_an_index_stores(database, api):
    """Passing over a value costs an index seek on an indexed column (last_name, email), a scan on another (first_name):
    there the walk starts from the first record. On PostgreSQL each value is a seek whatever the index's NULLS order
    (an ORDER BY spelled otherwise than an index's order sorted every contact)."""
    info = build_services(database).catalog.resolve('contacts')

    def walk(column):
        params = {'filters': json.dumps([{'field': column, 'op': 'contains', 'value': 'mith'}]), 'sort': column}
        return sqlbuild.build_walk(database.dialect, info, api.org_id, parse_list(params, info), 200, False)

    assert ['WITH RECURSIVE' in walk(c)[0] for c in ('last_name', 'email', 'first_name')] == [True, True, False]
    if database.name != 'postgresql':
        return
    for column in ('last_name', 'email'):
        with database.transaction(write=True) as tx:
            tx.execute('SET LOCAL enable_seqscan = off')
            plan = tx.one('EXPLAIN (FORMAT JSON) ' + walk(column)[0], walk(column)[1])[0]

        passed = [n for n, inside in plan_nodes(plan[0]['Plan'], 'CTE v') if inside]
        assert passed and not [n for n in passed if n['Node Type'] == 'Sort'], (column, passed)


def search_rows(database, record_id):
    p = '?' if database.name == 'sqlite' else '%s'
    with database.transaction() as tx:
        return tx.one(f'SELECT COUNT(*) FROM search_texts WHERE record_id = {p}', (record_id,))[0]


# -- text operators --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'op, value, expected',
    [
        ('contains', 'ZOË', {'Zoë Ångström', 'zoe'}),
        ('contains', 'ANGSTR', {'Zoë Ångström'}),
        ('starts_with', 'zo', {'Zoë Ångström', 'zoe'}),
        ('ends_with', 'STROM', {'Zoë Ångström'}),
        ('not_contains', 'zoe', {'Straße', 'Σίσυφος', None}),
        ('contains', 'SS', {'Straße'}),
        ('contains', 'ΣΊΣ', {'Σίσυφος'}),
        ('ends_with', 'ος', {'Σίσυφος'}),
        ('contains', '', {'Zoë Ångström', 'zoe', 'Straße', 'Σίσυφος'}),
    ],
)
def test_text_operators_ignore_case_and_accents_for_all_of_unicode(api, op, value, expected):
    for name in ['Zoë Ångström', 'zoe', 'Straße', 'Σίσυφος', None]:
        api.create('contacts', last_name=name, first_name='x')
    got = api.list('contacts', filters=[{'field': 'last_name', 'op': op, 'value': value}])
    assert {r['last_name'] for r in got} == expected


def test_text_operators_on_the_company_name_of_contacts_summary_read_the_company(api):
    company = api.create('companies', name='Société Générale')
    contact = api.create('contacts', last_name='Dupont', company_id=company['id'])
    api.create('contacts', last_name='Alone')
    for op, value in [('contains', 'GENERALE'), ('starts_with', 'so'), ('ends_with', 'rale')]:
        got = api.list('contacts_summary', filters=[{'field': 'company_name', 'op': op, 'value': value}])
        assert ids(got) == [contact['id']], op


def test_substrings_of_three_characters_or_more_are_found_through_the_trigram_index(api, database):
    api.create('contacts', last_name='Smithers')
    info = build_services(database).catalog.resolve('contacts')
    lq = parse_list(
        {
            'filters': json.dumps([{'field': 'last_name', 'op': 'contains', 'value': 'mithe'}]),
            'filter': json.dumps({'q': 'smi'}),
        },
        info,
    )
    sql, params = sqlbuild.build_count(database.dialect, info, api.org_id, lq)
    with database.transaction(write=True) as tx:
        if database.name == 'sqlite':
            plan = [str(row) for row in tx.rows('EXPLAIN QUERY PLAN ' + sql, params)]
            assert sum('search_texts_trigrams VIRTUAL TABLE' in step for step in plan) == 2, plan
        else:
            # NOTE: on a small table the planner rightly prefers other plans; the point is that the conditions
            # sqlbuild writes are the ones the GIN indexes serve (scans off: an index or nothing).
            tx.execute('SET LOCAL enable_seqscan = off')
            assert "s.texts LIKE %s ESCAPE '\\'" in sql and 'array_to_tsvector(' in sql
            for condition, value, index in [
                ("s.texts LIKE %s ESCAPE '\\'", '%mithe%', 'search_texts_trigrams'),
                (f'{sqlbuild.PREFIXES} @@ CAST(%s AS tsquery)', "'smi'", 'search_texts_prefixes'),
                (f'{sqlbuild.TSVECTOR} @@ CAST(%s AS tsquery)', "('smith':*)", 'search_texts_words'),
            ]:
                assert value in params or index == 'search_texts_words'  # NOTE: q "smi" is a short word
                plan = ' '.join(
                    row[0] for row in tx.rows(f'EXPLAIN SELECT 1 FROM search_texts s WHERE {condition}', [value])
                )
                assert f'Bitmap Index Scan on {index}' in plan, plan
        assert tx.one(sql, params)[0] == 1


def test_sqlite_looks_q_words_up_without_the_trigram_of_their_first_letter(api, database):
    """SQLite finds a q word's candidates by the trigrams of its word start but the first, two spaces and the word's
    first letter (every word that starts with that letter: at 1M contacts "  s" is in 928k of 1.6M search rows); a
    one-letter word has only that one. The row decides: a word inside another, or only in a column q does not read
    (background), is not found."""
    jo = api.create('contacts', first_name='Jo', last_name='Smith')
    api.create('contacts', first_name='Mojo', last_name='Asmith')
    api.create('contacts', first_name='Al', last_name='Brown', background='met jo smith at the fair')
    a = api.create('contacts', first_name='A', last_name='Zed')
    assert found(api, 'jo smi') == [jo['id']] and found(api, 'a zed') == [a['id']]
    if database.name != 'sqlite':
        return
    info = build_services(database).catalog.resolve('contacts')
    lq = parse_list({'filter': json.dumps({'q': 'jo smi a'})}, info)
    _, params = sqlbuild.build_count(database.dialect, info, api.org_id, lq)
    assert '(" jo" AND " sm" AND "smi" AND "  a")' in params, params


# Random Unicode, with the characters folding is about weighing more: combining marks, cased
# letters of several scripts, ligatures and compatibility forms, and text operators' own specials.
SPECIAL = 'aAeE\u00e9\u00c9\u0301\u0308\u00df\u1e9eSs\u0130\u0131i\u03a3\u03c3\u03c2\u0401\u0451\ufb01\uff21%_\\ \u5b57'
unicode_text = st.text(
    st.sampled_from(SPECIAL) | st.characters(blacklist_categories=('Cs',), blacklist_characters='\x00'), max_size=8
)


@pytest.fixture(scope='module')
def scratch(database):
    """A table of two text columns, outside the catalog, whose rows get search rows as the store writes them."""
    table = 'search_prop_' + uuid.uuid4().hex[:10]
    with database.transaction(write=True) as tx:
        tx.execute(f'CREATE TABLE {table} (id TEXT PRIMARY KEY, organization_id TEXT NOT NULL, a TEXT, b TEXT)')
    spec = ResourceSpec(table, 'p_')
    yield table_info(spec, database.introspect([table])[table])
    with database.transaction(write=True) as tx:
        tx.execute(f'DROP TABLE {table}')


class RollBack(Exception):
    pass


@bounded()
@given(values=st.lists(st.none() | unicode_text, min_size=1, max_size=12), data=st.data())
def test_text_operators_agree_with_python_on_random_unicode(database, scratch, values, data):
    rows = [{'id': f'r{i:02d}', 'organization_id': 'org_p', 'a': v, 'b': None} for i, v in enumerate(values)]
    p = '?' if database.name == 'sqlite' else '%s'
    with contextlib.suppress(RollBack), database.transaction(write=True) as tx:
        insert = f'INSERT INTO {scratch.spec.table} (id, organization_id, a, b) VALUES ({p}, {p}, {p}, {p})'
        tx.cursor.executemany(insert, [(r['id'], r['organization_id'], r['a'], r['b']) for r in rows])
        Store(database, None).index(tx, scratch, 'org_p', rows, fresh=True)
        for _ in range(4):
            source = data.draw(st.sampled_from([v for v in values if v] or ['x']))
            start = data.draw(st.integers(0, len(source)))
            needle = data.draw(st.just(source[start : start + data.draw(st.integers(0, 5))]) | unicode_text)
            for op in ('contains', 'not_contains', 'starts_with', 'ends_with'):
                lq = parse_list(
                    {'filters': json.dumps([{'field': 'a', 'op': op, 'value': needle}]), 'range': '[0,99]'}, scratch
                )
                got = [row[0] for row in tx.rows(*sqlbuild.build_list(database.dialect, scratch, 'org_p', lq))]
                assert got == [r['id'] for r in rows if reference(op, r['a'], needle)], (op, needle, values)
        raise RollBack


def reference(op, value, needle):
    if value is None:
        return op == 'not_contains'
    text, part = search.fold(value), search.fold(needle)
    return {
        'contains': part in text,
        'not_contains': part not in text,
        'starts_with': text.startswith(part),
        'ends_with': text.endswith(part),
    }[op]


def test_folding_is_what_the_readme_says():
    assert search.fold('Zoë ÅSA') == 'zoe asa'
    assert search.fold('Straße') == 'strasse' == search.fold('STRASSE')
    assert search.fold('İ') == 'i' and search.fold('ﬁ') == 'fi' and search.fold('Ａ') == 'a'
    assert search.words("O'Brien www.acme.io") == ['o', 'brien', 'www', 'acme', 'io']
    assert search.parse('+44 (20) 7946').alternatives == (('44207946',), ('44', '20', '7946'))


# -- upkeep under concurrent writes, rebuilding --------------------------------------------------------------


def test_concurrent_writes_keep_every_live_record_findable_by_its_name(api, database, wsgi_app):
    """8 writers create, rename and delete for a few seconds while a searcher searches; then every live
    record is found by its own name and no deleted one is."""
    stop, errors, names = threading.Event(), [], {}
    lock = threading.Lock()

    def writer(n):
        rng = random.Random(n)
        try:
            while not stop.is_set():
                name = f'w{n}x{rng.randrange(10**9):09d}'
                record = api.create('tags', name=name)
                with lock:
                    names[record['id']] = name
                action = rng.random()
                if action < 0.3:
                    renamed = f'r{n}y{rng.randrange(10**9):09d}'
                    api.put(f'/api/tags/{record["id"]}', {'name': renamed})
                    with lock:
                        names[record['id']] = renamed
                elif action < 0.5:
                    api.delete(f'/api/tags/{record["id"]}')
                    with lock:
                        names[record['id']] = None
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def searcher():
        try:
            while not stop.is_set():
                api.get('/api/tags', {'filter': {'q': 'w1x'}, 'range': [0, 9]})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)] + [threading.Thread(target=searcher)]
    for t in threads:
        t.start()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    live = {i: n for i, n in names.items() if n is not None}
    gone = [i for i, n in names.items() if n is None]
    assert len(live) > 20 and gone
    items = sorted(live.items())
    for start in range(0, len(items), 50):  # NOTE: names have one width: each is found by its own only
        part = dict(items[start : start + 50])
        by_name = [q_filter(name, 'or') for name in part.values()]
        by_substring = [
            {'field': 'name', 'op': 'contains', 'value': name[1:].upper(), 'logicalOp': 'or'} for name in part.values()
        ]
        for filters in (by_name, by_substring):
            assert set(ids(api.list('tags', filters=filters, range=[0, 99]))) == set(part)
    everything = {
        i for start in range(0, len(names), 1000) for i in ids(api.list('tags', sort='id', range=[start, start + 999]))
    }
    assert everything == set(live) and not everything & set(gone)
    assert all(search_rows(database, i) == 0 for i in gone)


def test_reindex_rebuilds_search_rows_written_around_the_api(api, database, capsys):
    homer = api.create('contacts', first_name='Homer', last_name='Simpson')
    p = '?' if database.name == 'sqlite' else '%s'
    with database.transaction(write=True) as tx:
        for table in ('search_texts',):
            tx.execute(f'DELETE FROM {table} WHERE record_id = {p}', (homer['id'],))
        tx.execute(f"UPDATE contacts SET last_name = 'Flanders' WHERE id = {p}", (homer['id'],))
    assert found(api, 'homer') == []
    cli.cmd_reindex(database, argparse.Namespace(org=api.org_id))
    err = capsys.readouterr().err
    assert f'reindexed 1 contacts of {api.org_id}' in err and 'reindexed 1 organization(s)' in err
    assert found(api, 'homer flanders') == [homer['id']] and found(api, 'simpson') == []


def all_search_rows(database, org_id):
    p = '?' if database.name == 'sqlite' else '%s'
    with database.transaction() as tx:
        return tx.rows(
            f'SELECT table_name, record_id, archived, words, names, fields, texts FROM search_texts '
            f'WHERE organization_id = {p} ORDER BY table_name, record_id',
            (org_id,),
        )


def word_starts(database, org_id):
    """PostgreSQL: the search rows' `prefixes` (each one's set of word starts); SQLite keeps none."""
    if database.name != 'postgresql':
        return None
    with database.transaction() as tx:
        rows = tx.rows('SELECT record_id, prefixes FROM search_texts WHERE organization_id = %s', (org_id,))
    return {record_id: set(prefixes.split()) for record_id, prefixes in rows}


def test_reindex_leaves_exactly_the_search_rows_the_writes_wrote(api, database, capsys):
    """A rebuild writes what every write keeps: a company's name in its contacts' and deals' rows, updates,
    archived records."""
    company = api.create('companies', name='Zenith Labs')
    homer = api.create('contacts', first_name='Homer', last_name='Simpson', company_id=company['id'])
    marge = api.create('contacts', first_name='Marge', last_name='Bouvier', email='marge@example.com')
    api.put(f'/api/contacts/{marge["id"]}', {'last_name': 'Simpson', 'city': 'Springfield'})
    api.create('deals', name='Donut supply', company_id=company['id'])
    api.create('tasks', text='Call Homer', contact_id=homer['id'])
    api.delete(f'/api/contacts/{homer["id"]}')
    written = all_search_rows(database, api.org_id)
    assert [r[0] for r in written] == ['companies', 'contacts', 'contacts', 'crm_users', 'deals', 'tasks']
    cli.cmd_reindex(database, argparse.Namespace(org=api.org_id))
    assert all_search_rows(database, api.org_id) == written
    assert 'reindexed 1 organization(s)' in capsys.readouterr().err


def test_a_batch_of_contacts_takes_its_companies_names_as_single_writes_and_a_rebuild_do(api, database):
    """A contact's row takes its company's name words in the statement that writes the row (single writes, updates,
    a rebuild), or from a read before a batch's rows sent by COPY (PostgreSQL, from COPY_ROWS new records): the
    rows are the same either way, a word of the contact's own that the company's name repeats included."""
    acme, globex = api.create('companies', name='Acme Rockets'), api.create('companies', name='Globex')
    bodies = [
        {'last_name': f'Acme {n}', 'company_id': [acme['id'], globex['id'], None][n % 3]}
        for n in range(sqlbuild.COPY_ROWS)
    ]
    batch = api.post('/api/contacts', bodies).json
    single = api.create('contacts', last_name='Acme', company_id=acme['id'])
    api.put(f'/api/contacts/{batch[2]["id"]}', {'company_id': globex['id']})
    written = all_search_rows(database, api.org_id)
    cli.cmd_reindex(database, argparse.Namespace(org=api.org_id))
    assert all_search_rows(database, api.org_id) == written
    assert set(found(api, 'acme rockets')) == {single['id'], *(r['id'] for r in batch[::3])}
    assert set(found(api, 'globex')) == {r['id'] for r in batch if r['company_id'] == globex['id']} | {batch[2]['id']}


def test_a_batch_of_contacts_whose_companies_give_no_words_gets_the_rows_a_rebuild_makes(api, database):
    """Contacts of a batch sent by COPY whose company's name has no words (or with no company) keep their rows as
    made, without the related words (nothing to append); the others take theirs: a rebuild writes the same rows."""
    stars, acme = api.create('companies', name='***'), api.create('companies', name='Acme')
    bodies = [
        {'first_name': f'Lenny {n}', 'company_id': [stars['id'], None, acme['id']][n % 3]}
        for n in range(sqlbuild.COPY_ROWS)
    ]
    batch = api.post('/api/contacts', bodies).json
    written, starts = all_search_rows(database, api.org_id), word_starts(database, api.org_id)
    cli.cmd_reindex(database, argparse.Namespace(org=api.org_id))
    assert all_search_rows(database, api.org_id) == written and word_starts(database, api.org_id) == starts
    assert set(found(api, 'lenny acme')) == {r['id'] for r in batch[2::3]}
    assert len(found(api, 'lenny')) == len(batch)


def test_reindex_analyzes_the_rows_it_reads_names_from_before_the_rows_that_read_them(api, database, monkeypatch):
    """A contact's and a deal's rows take their company's name from the company's search row, looked up by primary
    key: PostgreSQL planned that lookup as a scan of every row on a search_texts never analyzed with rows (a new
    database, a bulk load), and `crmapi reindex` at 1M contacts did not finish."""
    steps = []
    rebuild, analyze = Store.reindex_table, Store.analyze_search_rows

    def rebuilding(store, tx, info, *args, **kwargs):
        steps.append(info.spec.table)
        return rebuild(store, tx, info, *args, **kwargs)

    def analyzing(store):
        steps.append('ANALYZE')
        return analyze(store)

    monkeypatch.setattr(Store, 'reindex_table', rebuilding)
    monkeypatch.setattr(Store, 'analyze_search_rows', analyzing)
    company = api.create('companies', name='Zenith Labs')
    homer = api.create('contacts', first_name='Homer', company_id=company['id'])
    cli.cmd_reindex(database, argparse.Namespace(org=api.org_id))
    assert steps[:2] == ['companies', 'ANALYZE'] and {'contacts', 'deals'} <= set(steps[2:])
    assert steps[-1] == 'ANALYZE' and steps.count('ANALYZE') == 2
    assert found(api, 'homer zenith') == [homer['id']]


def test_migrating_to_the_search_rows_builds_them_for_the_records_already_there(empty_db):  # noqa: F811
    migrations.migrate(empty_db, target=18)
    org = Accounts(empty_db).create_org('Old Co')
    p = '?' if empty_db.name == 'sqlite' else '%s'
    stamp = '2020-01-01T00:00:00.000000Z'
    with empty_db.transaction(write=True) as tx:
        tx.execute(
            f'INSERT INTO companies (id, organization_id, name, created_at, updated_at) VALUES ({p}, {p}, {p}, {p}, {p})',
            ('co_old', org, 'Zenith Labs', stamp, stamp),
        )
        tx.execute(
            f'INSERT INTO contacts (id, organization_id, first_name, company_id, tags, created_at, updated_at) '
            f"VALUES ({p}, {p}, {p}, {p}, '[]', {p}, {p})",
            ('c_old', org, 'Zoë', 'co_old', stamp, stamp),
        )
    lines = []
    migrations.migrate(empty_db, log=lines.append)
    # NOTE: later migrations apply in the same run; the rows are built once, after the last of them, companies
    # first (a contact's row takes its company's name from the company's row).
    assert lines[0] == 'applied 0019_search'
    assert lines[-2:] == [f'reindexed 1 companies of {org}', f'reindexed 1 contacts of {org}']
    store = build_services(empty_db).store
    info = store.catalog.resolve('contacts')
    for q in ('ZOE', 'zenith', 'zoe lab'):  # the company's name too: its row was built first
        rows, total = store.list(info, Principal(org, None), parse_list({'filter': json.dumps({'q': q})}, info))
        assert ids(rows) == ['c_old'] and total == 1, q


def test_a_related_column_is_the_only_name_column_of_its_target():
    """A contact's words take its company's name words from the company's own search row (its `names`)."""
    for spec in BUILTIN.values():
        for _, target, column in spec.search.related:
            assert BUILTIN[target].search.names == (column,), spec.slug
