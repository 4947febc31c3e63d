"""`embed=` on lists and single records, and `relation.field` in filters and sorts (issue 11).

Forward relations embed the record(s) a reference names, reverse relations the newest children with
their total; one statement per relation for a whole page. Dotted fields (`company.name`) filter and
sort across one forward reference as if every field were null where there is none. Every test runs on
SQLite and on PostgreSQL (see conftest.py).
"""

import collections
import csv
import io
import json
import re
import threading
import time
import uuid

import pytest

from conftest import assert_problem

from crmapi import sqlbuild
from crmapi.app import build_services
from crmapi.db import Tx

CRM_USER_FIELDS = {'id', 'first_name', 'last_name', 'email', 'administrator', 'disabled', 'created_at', 'updated_at'}
PROJECTS = {
    'slug': 'projects',
    'label': 'Projects',
    'fields': [
        {'name': 'title', 'type': 'text', 'required': True},
        {'name': 'company', 'type': 'reference', 'target': 'companies'},
        {'name': 'owner_id', 'type': 'reference', 'target': 'crm_users'},
    ],
}


# -- helpers ---------------------------------------------------------------------------------------


def embedded(api, resource, embed, record_id=None, **params):
    """A list (or one record) with `embed`; the JSON."""
    path = f'/api/{resource}' if record_id is None else f'/api/{resource}/{record_id}'
    return api.get(path, {'embed': embed, **params}).json


def by_id(records):
    return {r['id']: r for r in records}


def custom_table(api, slug):
    """The table of a custom object (`co_` + its definition id without `obj_`)."""
    return 'co_' + api.get(f'/api/custom_objects/{slug}').json['id'][len('obj_') :]


def write_around_the_api(database, table, column, record_id, value):
    """Set one column of one row directly, as an operator's script could (no reference check)."""
    p = database.dialect.parameter().get_sql()
    with database.transaction(write=True) as tx:
        tx.execute(f'UPDATE "{table}" SET "{column}" = {p} WHERE id = {p}', [value, record_id])


@pytest.fixture
def crm(api):
    """Two companies (one archived), tags, two contacts (one without a company), a deal, tasks, notes."""
    acme = api.create('companies', name='Acme', city='Paris')
    globex = api.create('companies', name='Globex')
    vip, new = api.create('tags', name='vip'), api.create('tags', name='new')
    ada = api.create('contacts', last_name='Lovelace', company_id=acme['id'], tags=[vip['id'], new['id']])
    bob = api.create('contacts', last_name='Nobody')
    deal = api.create('deals', name='Big', company_id=acme['id'], contact_ids=[ada['id'], bob['id']])
    api.delete(f'/api/companies/{globex["id"]}')
    return {'acme': acme, 'globex': globex, 'vip': vip, 'new': new, 'ada': ada, 'bob': bob, 'deal': deal}


# -- forward relations -----------------------------------------------------------------------------


def test_a_reference_embeds_its_record_beside_the_id(api, crm):
    contacts = by_id(embedded(api, 'contacts', 'company'))
    ada, bob = contacts[crm['ada']['id']], contacts[crm['bob']['id']]
    assert ada['company_id'] == crm['acme']['id']
    assert ada['company'] == api.get(f'/api/companies/{crm["acme"]["id"]}').json
    assert bob['company_id'] is None and bob['company'] is None


def test_tags_embed_the_tag_records_in_place_of_their_ids(api, crm):
    ada = embedded(api, 'contacts', 'tags', crm['ada']['id'])
    assert [t['name'] for t in ada['tags']] == ['vip', 'new']
    assert ada['tags'][0] == api.get(f'/api/tags/{crm["vip"]["id"]}').json


def test_deal_contact_ids_embed_as_contacts_beside_the_ids(api, crm):
    deal = embedded(api, 'deals', '["contacts","company"]', crm['deal']['id'])
    assert deal['contact_ids'] == [crm['ada']['id'], crm['bob']['id']]
    assert [c['last_name'] for c in deal['contacts']] == ['Lovelace', 'Nobody']
    assert deal['company']['name'] == 'Acme'


def test_tasks_embed_contact_company_deal_and_assignee_without_token_material(api, crm):
    me = api.get('/api/me').json['user']
    task = api.create(
        'tasks',
        text='call',
        contact_id=crm['ada']['id'],
        company_id=crm['acme']['id'],
        deal_id=crm['deal']['id'],
        assignee_id=me['id'],
    )
    got = embedded(api, 'tasks', ['contact', 'company', 'deal', 'assignee'], task['id'])
    assert (got['contact']['id'], got['company']['id'], got['deal']['id']) == (
        crm['ada']['id'],
        crm['acme']['id'],
        crm['deal']['id'],
    )
    assert set(got['assignee']) == CRM_USER_FIELDS
    assert got['assignee']['email'] == 'admin@example.com'
    assert api.token not in json.dumps(got) and 'token' not in json.dumps(got['assignee'])


def test_notes_embed_their_parent(api, crm):
    parents = {
        'contact_notes': ('contact_id', 'contact', crm['ada']),
        'deal_notes': ('deal_id', 'deal', crm['deal']),
        'company_notes': ('company_id', 'company', crm['acme']),
    }
    for resource, (field, relation, parent) in parents.items():
        note = api.create(resource, text='hello', **{field: parent['id']})
        assert embedded(api, resource, relation, note['id'])[relation]['id'] == parent['id'], resource


def test_an_archived_referenced_record_is_embedded_with_its_archived_at(api, crm):
    contact = api.create('contacts', last_name='Loyal', company_id=crm['globex']['id'])
    company = embedded(api, 'contacts', 'company', contact['id'])['company']
    assert company['id'] == crm['globex']['id'] and company['archived_at'] is not None


def test_an_embedded_record_is_the_record_as_read_on_its_own(api, crm):
    """Forward and reverse embeds, in a list and in one record, give each record exactly as `GET` reads it: every
    kind of column (instants to the microsecond, an archived record's archived_at, numbers, dates, arrays)."""
    ada, acme = crm['ada']['id'], crm['acme']['id']
    leaving = api.create('companies', name='Leaving', size=12)
    api.delete(f'/api/companies/{leaving["id"]}')
    moved = api.create('contacts', last_name='Moved', company_id=leaving['id'], tags=[crm['vip']['id']])
    api.put(f'/api/deals/{crm["deal"]["id"]}', {'amount': 1234.5, 'expected_closing_date': '2026-12-31'})
    task = api.create('tasks', text='call', contact_id=ada, company_id=acme, due_date='2026-12-01')
    note = api.create('contact_notes', contact_id=ada, text='n', date='2026-11-30T10:11:12.345678Z')
    company_note = api.create('company_notes', company_id=acme, text='c')
    whole = api.create('deals', name='Whole', company_id=acme, amount=1000, contact_ids=[ada])

    def read(resource, record_id):
        return api.get(f'/api/{resource}/{record_id}').json

    contacts = by_id(embedded(api, 'contacts', ['company', 'tags', 'notes', 'tasks', 'deals'], range=[0, 9]))
    for contact in (contacts[ada], embedded(api, 'contacts', ['company', 'notes', 'tasks', 'deals'], ada)):
        assert contact['company'] == read('companies', acme)
        assert contact['notes']['items'] == [read('contact_notes', note['id'])]
        assert contact['tasks']['items'] == [read('tasks', task['id'])]
        assert contact['deals']['items'] == [read('deals', whole['id']), read('deals', crm['deal']['id'])]
    assert contacts[ada]['tags'] == [read('tags', crm['vip']['id']), read('tags', crm['new']['id'])]
    assert contacts[moved['id']]['company'] == read('companies', leaving['id'])
    company = embedded(api, 'companies', ['contacts', 'deals', 'tasks', 'notes'], acme)
    assert company['contacts']['items'] == [read('contacts', ada)]
    assert company['deals']['items'] == [read('deals', whole['id']), read('deals', crm['deal']['id'])]
    assert json.dumps(company['deals']['items'][0]['amount']) == '1000', 'an integral amount without a point'
    assert company['tasks']['items'] == [read('tasks', task['id'])]
    assert company['notes']['items'] == [read('company_notes', company_note['id'])]
    deal = embedded(api, 'deals', ['company', 'contacts', 'tasks'], crm['deal']['id'])
    assert deal['company'] == read('companies', acme)
    assert deal['contacts'] == [read('contacts', ada), read('contacts', crm['bob']['id'])]


def test_a_custom_reference_embeds_under_its_field_name_in_place_of_the_id(api, crm):
    api.post('/api/custom_objects', PROJECTS)
    me = api.get('/api/me').json['user']
    project = api.create('projects', title='Apollo', company=crm['acme']['id'], owner_id=me['id'])
    got = embedded(api, 'projects', ['company', 'owner'], project['id'])
    assert got['company']['name'] == 'Acme', "the record takes the id's place under the field name"
    assert got['owner_id'] == me['id'] and got['owner']['email'] == me['email']
    assert set(got['owner']) == CRM_USER_FIELDS
    plain = api.get(f'/api/projects/{project["id"]}').json
    assert plain['company'] == crm['acme']['id'], 'without embed the field holds the id'
    acme = embedded(api, 'companies', 'projects', crm['acme']['id'])
    assert acme['projects']['total'] == 1 and acme['projects']['items'][0]['title'] == 'Apollo'


def test_a_missing_target_embeds_as_null(api, database, crm):
    api.post('/api/custom_objects', PROJECTS)
    project = api.create('projects', title='Orphan', company=crm['acme']['id'])
    write_around_the_api(database, custom_table(api, 'projects'), 'company', project['id'], 'comp_gone')
    assert embedded(api, 'projects', 'company', project['id'])['company'] is None
    vip_only = api.create('contacts', last_name='Tagged', tags=[crm['vip']['id']])
    write_around_the_api(database, 'contacts', 'tags', vip_only['id'], json.dumps([crm['vip']['id'], 'tag_gone']))
    assert [t and t['name'] for t in embedded(api, 'contacts', 'tags', vip_only['id'])['tags']] == ['vip', None]


def test_another_organizations_record_is_never_embedded_nor_matched(api, other_api, database, crm):
    api.post('/api/custom_objects', PROJECTS)
    theirs = other_api.create('companies', name='Acme')
    project = api.create('projects', title='Leaky', company=crm['acme']['id'])
    write_around_the_api(database, custom_table(api, 'projects'), 'company', project['id'], theirs['id'])
    assert embedded(api, 'projects', 'company', project['id'])['company'] is None
    matched = api.get('/api/projects', {'filters': [{'field': 'company.name', 'op': 'eq', 'value': 'Acme'}]})
    assert matched.json == [] and matched.headers['Content-Range'] == 'projects */0'
    # as if the company's fields were all null
    assert [p['title'] for p in api.list('projects', filter={'company.name': None})] == ['Leaky']


# -- reverse relations -----------------------------------------------------------------------------


def test_reverse_relations_embed_the_newest_children_and_their_total(api, crm):
    ada = crm['ada']['id']
    tasks = [api.create('tasks', text=f'task {i}', contact_id=ada) for i in range(12)]
    got = embedded(api, 'contacts', 'tasks', ada, embed_limit=3)['tasks']
    assert got['total'] == 12
    assert [t['id'] for t in got['items']] == [t['id'] for t in reversed(tasks)][:3], 'newest first'
    assert len(embedded(api, 'contacts', 'tasks', ada)['tasks']['items']) == 10, 'the default limit'
    assert embedded(api, 'contacts', 'tasks', ada, embed_limit=0)['tasks'] == {'total': 12, 'items': []}
    bob = embedded(api, 'contacts', 'tasks', crm['bob']['id'])
    assert bob['tasks'] == {'total': 0, 'items': []}


def test_a_contact_embeds_its_notes_and_the_deals_that_name_it(api, crm):
    api.create('contact_notes', contact_id=crm['ada']['id'], text='first')
    api.create('contact_notes', contact_id=crm['ada']['id'], text='second')
    other = api.create('deals', name='Small', contact_ids=[crm['bob']['id']])
    contacts = by_id(embedded(api, 'contacts', ['notes', 'deals'], range=[0, 9]))
    ada, bob = contacts[crm['ada']['id']], contacts[crm['bob']['id']]
    assert [n['text'] for n in ada['notes']['items']] == ['second', 'first'] and ada['notes']['total'] == 2
    assert [d['name'] for d in ada['deals']['items']] == ['Big']
    assert bob['deals']['total'] == 2 and [d['id'] for d in bob['deals']['items']] == [other['id'], crm['deal']['id']]
    assert bob['notes'] == {'total': 0, 'items': []}


def test_companies_and_deals_embed_their_children(api, crm):
    api.create('company_notes', company_id=crm['acme']['id'], text='c-note')
    api.create('deal_notes', deal_id=crm['deal']['id'], text='d-note')
    api.create('tasks', text='follow up', deal_id=crm['deal']['id'])
    acme = embedded(api, 'companies', ['contacts', 'deals', 'notes'], crm['acme']['id'])
    assert [c['last_name'] for c in acme['contacts']['items']] == ['Lovelace']
    assert acme['deals']['total'] == 1 and acme['notes']['items'][0]['text'] == 'c-note'
    deal = embedded(api, 'deals', ['notes', 'tasks'], crm['deal']['id'])
    assert deal['notes']['items'][0]['text'] == 'd-note' and deal['tasks']['items'][0]['text'] == 'follow up'


def test_archived_children_stay_out_of_reverse_relations(api, crm):
    leaving = api.create('contacts', last_name='Leaving', company_id=crm['acme']['id'])
    api.delete(f'/api/contacts/{leaving["id"]}')
    acme = embedded(api, 'companies', 'contacts', crm['acme']['id'])
    assert acme['contacts']['total'] == 1 and [c['last_name'] for c in acme['contacts']['items']] == ['Lovelace']


def test_summaries_embed_like_the_table_they_show(api, crm):
    api.create('contact_notes', contact_id=crm['ada']['id'], text='n')
    row = embedded(api, 'contacts_summary', ['company', 'notes'], crm['ada']['id'])
    assert row['company']['name'] == 'Acme' and row['notes']['total'] == 1


# -- the index of deals.contact_ids (migration 0018) --------------------------------------------------


def deals_of_each(database, org_id, contact_ids, indexed):
    """The rows the contacts -> deals embed reads, through the index of contact_ids or by the scan of every deal."""
    deals = build_services(database).catalog.tables['deals']
    with database.transaction() as tx:
        return tx.rows(
            *sqlbuild.build_children(
                database.dialect, deals, deals.columns['contact_ids'], org_id, contact_ids, 10, indexed=indexed
            )
        )


def test_a_contacts_deals_through_the_index_are_those_a_scan_of_every_deal_finds(api, other_api, database, crm):
    """Whatever writes contact_ids (create, update, archive, merge, an operator's SQL), the index agrees."""
    ada, bob = crm['ada']['id'], crm['bob']['id']
    cy = api.create('contacts', last_name='Cyan')['id']
    moved = api.create('deals', name='Moved', contact_ids=[ada])
    api.put(f'/api/deals/{moved["id"]}', {'contact_ids': [bob, cy]})
    archived = api.create('deals', name='Archived', contact_ids=[ada, bob])
    api.delete(f'/api/deals/{archived["id"]}')
    for i in range(12):
        api.create('deals', name=f'Many {i}', contact_ids=[cy])
    api.post('/api/merge_contacts', {'source_ids': [bob], 'target_id': ada}, status=200)
    sneaked = api.create('deals', name='Sneaked')
    write_around_the_api(database, 'deals', 'contact_ids', sneaked['id'], json.dumps([cy, ada]))
    theirs = other_api.create('deals', name='Theirs')
    write_around_the_api(database, 'deals', 'contact_ids', theirs['id'], json.dumps([ada]))
    ids = [ada, bob, cy]
    indexed = deals_of_each(database, api.org_id, ids, indexed=True)
    assert indexed == deals_of_each(database, api.org_id, ids, indexed=False)
    totals = {parent: total for parent, total, *_ in indexed}
    assert totals == {ada: 3, cy: 14}, 'Big and Moved (merged from bob), Sneaked; the archived and theirs left out'
    deals = build_services(database).catalog.tables['deals']
    with database.transaction() as tx:
        referrers = [
            sorted(
                tx.rows(
                    *sqlbuild.build_referrers(
                        database.dialect, deals, api.org_id, deals.columns['contact_ids'], ids, indexed=indexed
                    )
                )
            )
            for indexed in (True, False)
        ]
    assert referrers[0] == referrers[1] and len(referrers[0]) == 16, 'what a merge rewrites: archived deals too'
    contacts = by_id(embedded(api, 'contacts', 'deals', range=[0, 9]))
    assert contacts[ada]['deals']['total'] == 3 and [d['name'] for d in contacts[ada]['deals']['items']] == [
        'Sneaked',
        'Moved',
        'Big',
    ]
    assert contacts[cy]['deals']['total'] == 14 and len(contacts[cy]['deals']['items']) == 10


def children_of_each(database, info, column, org_id, parent_ids, limit, indexed):
    with database.transaction() as tx:
        return tx.rows(
            *sqlbuild.build_children(
                database.dialect, info, info.columns[column], org_id, parent_ids, limit, indexed=indexed
            )
        )


def test_children_read_per_parent_are_those_one_window_over_the_page_finds(api, database, crm):
    """A scalar reference (built-in or custom) read through its index, parent by parent on PostgreSQL, gives the
    rows of the window partitioned over every parent: the same totals, ranks, newest first, archived left out."""
    acme, ada, bob = crm['acme']['id'], crm['ada']['id'], crm['bob']['id']
    for i in range(4):
        api.create('contacts', last_name=f'Staff {i}', company_id=acme)
    leaving = api.create('contacts', last_name='Leaving', company_id=acme)
    api.delete(f'/api/contacts/{leaving["id"]}')
    api.post(
        '/api/custom_objects',
        {
            'slug': 'meetings',
            'label': 'Meetings',
            'fields': [
                {'name': 'title', 'type': 'text'},
                {'name': 'contact', 'type': 'reference', 'target': 'contacts'},
            ],
        },
    )
    for i in range(3):
        api.create('meetings', title=f'M{i}', contact=ada)
    services = build_services(database)
    contacts = services.catalog.tables['contacts']
    meetings = services.catalog.custom.table_for(api.org_id, 'meetings')
    for info, column, parents in (
        (contacts, 'company_id', [acme, crm['globex']['id'], 'comp_none']),
        (meetings, 'contact', [ada, bob]),
    ):
        for limit in (1, 10):
            rows = children_of_each(database, info, column, api.org_id, parents, limit, indexed=True)
            assert rows == children_of_each(database, info, column, api.org_id, parents, limit, indexed=False)
            assert {parent: total for parent, total, *_ in rows} == {parents[0]: 5 if info is contacts else 3}
            assert [rank for _, _, rank, *_ in rows] == list(range(1, min(limit, rows[0][1]) + 1))


def test_a_custom_object_and_archived_children_embed_alike_beside_the_index(api, crm):
    """A page embedding a custom object's reverse relation and the indexed deals: each relation its own answer."""
    api.post(
        '/api/custom_objects',
        {
            'slug': 'meetings',
            'label': 'Meetings',
            'fields': [
                {'name': 'title', 'type': 'text'},
                {'name': 'contact', 'type': 'reference', 'target': 'contacts'},
            ],
        },
    )
    ada = crm['ada']['id']
    api.create('meetings', title='Kick-off', contact=ada)
    gone = api.create('deals', name='Gone', contact_ids=[ada])
    api.delete(f'/api/deals/{gone["id"]}')
    contact = embedded(api, 'contacts', ['deals', 'meetings'], ada)
    assert [d['name'] for d in contact['deals']['items']] == ['Big'] and contact['deals']['total'] == 1
    assert [m['title'] for m in contact['meetings']['items']] == ['Kick-off']


# -- the children seen (migration 0025) ------------------------------------------------------------


def insert_notes(tx, dialect, org_id, contact_ids):
    """contact_notes rows for `contact_ids`, in one statement, written around the API."""
    p = dialect.parameter().get_sql()
    now = '2026-01-01T00:00:00.000000Z'
    tx.execute(
        'INSERT INTO contact_notes (id, organization_id, contact_id, text, created_at, updated_at) VALUES '
        + ', '.join(f'({p}, {p}, {p}, {p}, {p}, {p})' for _ in contact_ids),
        [v for c in contact_ids for v in ('cn_' + uuid.uuid4().hex, org_id, c, 'raw', now, now)],
    )


def test_a_page_embeds_what_each_contact_read_alone_embeds_whatever_wrote_its_children(api, database, crm):
    """A page asks the children's index only for the contacts whose bit of children_seen is set, so every writer
    must set it: creates, batches, a reference moved by the API or by SQL, a deal's contact_ids, a merge."""
    ada, bob = crm['ada']['id'], crm['bob']['id']
    cy, dee, eve = (api.create('contacts', last_name=name)['id'] for name in ('Cyan', 'Dee', 'Eve'))
    api.create('contact_notes', contact_id=ada, text='created')
    api.post('/api/contact_notes', [{'contact_id': cy, 'text': 'batch'}, {'contact_id': dee, 'text': 'batch'}])
    moved = api.create('tasks', text='moved', contact_id=bob)
    api.put(f'/api/tasks/{moved["id"]}', {'contact_id': cy})
    by_sql = api.create('contact_notes', contact_id=ada, text='by SQL')
    write_around_the_api(database, 'contact_notes', 'contact_id', by_sql['id'], dee)
    api.put(f'/api/deals/{crm["deal"]["id"]}', {'contact_ids': [ada, eve]})
    gone = api.create('tasks', text='archived', contact_id=eve)
    api.delete(f'/api/tasks/{gone["id"]}')
    api.create('tasks', text='to merge', contact_id=dee)
    api.post('/api/merge_contacts', {'source_ids': [dee], 'target_id': eve}, status=200)
    relations = ['notes', 'tasks', 'deals']
    page = by_id(embedded(api, 'contacts', relations, range=[0, 99]))
    assert set(page) == {ada, bob, cy, eve}
    for contact_id, record in page.items():
        assert record == embedded(api, 'contacts', relations, contact_id), contact_id
    assert [n['text'] for n in page[eve]['notes']['items']] == ['by SQL', 'batch'], 'merged from dee'
    assert page[cy]['tasks']['items'][0]['text'] == 'moved' and page[bob]['tasks'] == {'total': 0, 'items': []}
    assert [d['name'] for d in page[eve]['deals']['items']] == ['Big'] and page[bob]['deals']['total'] == 0
    assert 'children_seen' not in page[ada] and 'children_seen' not in api.list('contacts')[0]
    searched = embedded(api, 'contacts', relations, filter={'q': 'Cyan'})
    assert searched == [page[cy]], 'a page of search rows reads the flags too'
    walked = embedded(api, 'contacts', relations, filter={'q': 'Cyan'}, range=[0, 0])
    assert walked == [page[cy]], 'a page found by a walk of the first records (sqlbuild.build_walk) reads them too'


def test_a_deep_page_read_ids_first_embeds_the_children_too(api, crm, monkeypatch):
    monkeypatch.setattr(sqlbuild.reads, 'DEFERRED_FROM', 1)  # PostgreSQL's deep pages: ids first, then the rows
    api.create('contact_notes', contact_id=crm['bob']['id'], text='deep')
    [bob] = embedded(api, 'contacts', ['notes', 'company'], range=[1, 1], sort='last_name')
    assert bob['id'] == crm['bob']['id'] and bob['notes']['items'][0]['text'] == 'deep'


def test_a_page_whose_contacts_never_had_children_asks_no_statement_for_them(api, statements):
    api.create('contacts', last_name='Alone')
    statements.clear()
    [contact] = api.list('contacts', embed=['notes', 'tasks', 'deals'])
    assert contact['notes'] == contact['tasks'] == contact['deals'] == {'total': 0, 'items': []}
    assert not [sql for sql in statements if '_rank' in sql], 'no children statement'


def test_writers_adding_the_first_children_of_the_same_contacts_wait_for_each_other(api, database, crm):
    """The second writer waits for the first (PostgreSQL: the contacts' rows; SQLite: the write lock), then finds
    the bits set: neither fails, and both notes of each contact are embedded."""
    ada, bob = crm['ada']['id'], crm['bob']['id']
    done = []

    def second():
        with database.transaction(write=True) as tx:
            insert_notes(tx, database.dialect, api.org_id, [bob, ada])
        done.append(True)

    with database.transaction(write=True) as tx:
        insert_notes(tx, database.dialect, api.org_id, [ada, bob])
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(0.3)
        assert not done, 'the second writer waits for the first'
    waiting.join(10)
    assert done == [True]
    page = by_id(embedded(api, 'contacts', 'notes'))
    assert page[ada]['notes']['total'] == page[bob]['notes']['total'] == 2


# -- no N+1 ----------------------------------------------------------------------------------------


@pytest.fixture
def statements(monkeypatch):
    """The SQL of every statement run through a Tx while the test runs."""
    seen = []

    def counting(original):
        def counted(self, sql, params=()):
            seen.append(sql)
            return original(self, sql, params)

        return counted

    for name in ('rows', 'one', 'execute'):
        monkeypatch.setattr(Tx, name, counting(getattr(Tx, name)))
    return seen


def test_one_statement_per_relation_whatever_the_page_size(api, statements):
    companies = [api.create('companies', name=f'Co {i}')['id'] for i in range(3)]
    tag = api.create('tags', name='t')['id']
    for i in range(30):
        contact = api.create('contacts', last_name=f'C{i:02}', company_id=companies[i % 3], tags=[tag])
        api.create('contact_notes', contact_id=contact['id'], text='n')
        api.create('tasks', text='t', contact_id=contact['id'])
        api.create('deals', name=f'D{i}', contact_ids=[contact['id']])
    relations = ['company', 'tags', 'notes', 'tasks', 'deals']

    def page(size):
        api.get('/api/contacts', {'range': [0, 0]})  # the token's last use is recorded once a minute
        statements.clear()
        assert len(api.list('contacts', range=[0, size - 1], embed=relations)) == size
        return collections.Counter(re.search(r'FROM "(\w+)"', sql).group(1) for sql in statements)

    small, large = page(3), page(30)
    assert small == large
    for table in ('companies', 'tags', 'contact_notes', 'tasks', 'deals'):
        assert large[table] == 1, (table, large)


# -- refusals --------------------------------------------------------------------------------------


def test_an_unknown_relation_is_a_400_listing_the_valid_ones(api, crm):
    body = assert_problem(api.get('/api/contacts', {'embed': 'compny'}, status=400), 400, param='embed', field='compny')
    for name in ('company', 'tags', 'notes', 'tasks', 'deals'):
        assert name in body['detail']
    assert_problem(
        api.get(f'/api/contacts/{crm["ada"]["id"]}', {'embed': '["company","nope"]'}, status=400),
        400,
        param='embed',
        field='nope',
    )
    assert_problem(api.get('/api/configuration', {'embed': 'company'}, status=400), 400, param='embed')


@pytest.mark.parametrize(
    'params, param',
    [
        ({'embed': '{"company":1}'}, 'embed'),
        ({'embed': '[1]'}, 'embed'),
        ({'embed': '["company"'}, 'embed'),
        ({'embed': ''}, 'embed'),
        ({'embed': 'tasks', 'embed_limit': '101'}, 'embed_limit'),
        ({'embed': 'tasks', 'embed_limit': '-1'}, 'embed_limit'),
        ({'embed': 'tasks', 'embed_limit': 'ten'}, 'embed_limit'),
        ({'embed': 'tasks', 'embed_limit': 'true'}, 'embed_limit'),
        ({'embed_limit': '101'}, 'embed_limit'),
    ],
)
def test_malformed_embed_parameters_are_a_400(api, params, param):
    assert_problem(api.get('/api/contacts', params, status=400), 400, param=param)


def test_an_embed_limit_without_embed_is_ignored(api, crm):
    assert api.get('/api/contacts', {'embed_limit': '5'}).json == api.get('/api/contacts').json


def test_exports_refuse_embed(api, crm):
    for accept in ('text/csv', 'application/x-ndjson'):
        resp = api.get('/api/contacts', {'embed': 'company'}, headers={'Accept': accept}, status=400)
        assert_problem(resp, 400, param='embed')


# -- described -------------------------------------------------------------------------------------


def test_the_schema_lists_each_resources_relations(api):
    relations = {r['name']: r for r in api.get('/api/schema/contacts').json['relations']}
    assert relations['company'] == {
        'name': 'company',
        'kind': 'forward',
        'resource': 'companies',
        'field': 'company_id',
        'many': False,
    }
    assert relations['tags']['many'] and relations['tags']['field'] == 'tags'
    assert relations['notes'] == {
        'name': 'notes',
        'kind': 'reverse',
        'resource': 'contact_notes',
        'field': 'contact_id',
        'many': True,
    }
    assert {'tasks', 'deals'} <= set(relations)
    tasks = {r['name'] for r in api.get('/api/schema/tasks').json['relations']}
    assert {'contact', 'company', 'deal', 'assignee'} <= tasks
    assert {'contacts', 'deals', 'notes'} <= {r['name'] for r in api.get('/api/schema/companies').json['relations']}
    assert api.get('/api/schema/configuration').json['relations'] == []


def test_openapi_documents_embed_per_resource_and_the_embedded_answer(api, crm):
    from jsonschema import Draft202012Validator

    api.post('/api/custom_objects', PROJECTS)
    doc = api.get('/api/openapi.json').json
    for path, names in (
        ('/contacts', {'company', 'tags', 'notes', 'tasks', 'deals'}),
        ('/contacts/{id}', {'company', 'tags', 'notes', 'tasks', 'deals'}),
        ('/projects', {'company', 'owner'}),
    ):
        params = {p['name']: p for p in doc['paths'][path]['get']['parameters']}
        assert set(params['embed']['schema']['contentSchema']['items']['enum']) == names, path
        assert params['embed_limit']['schema']['maximum'] == 100
    assert 'projects' in doc['paths']['/companies']['get']['parameters'][-2]['schema']['contentSchema']['items']['enum']
    api.create('contact_notes', contact_id=crm['ada']['id'], text='n')
    answer = embedded(api, 'contacts', ['company', 'tags', 'notes', 'tasks', 'deals'])
    schema = {
        **doc['paths']['/contacts']['get']['responses']['200']['content']['application/json']['schema'],
        'components': doc['components'],
    }
    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(answer)


# -- filtering and sorting across a reference ------------------------------------------------------


@pytest.fixture
def linked(api):
    """Contacts: `a` at Acme (Paris, 10), `g` at Globex (no city, 50), `i` at Initech (London, no size),
    `n` without a company."""
    acme = api.create('companies', name='Acme', city='Paris', size=10)
    globex = api.create('companies', name='Globex', size=50)
    initech = api.create('companies', name='Initech', city='London')
    for name, company in (('a', acme), ('g', globex), ('i', initech), ('n', None)):
        api.create(
            'contacts', last_name=name, status='x' if name == 'n' else None, company_id=company and company['id']
        )
    return api


def matches(api, *filters, **params):
    """The last names a dotted query selects, checking that the total counts exactly those."""
    resp = api.get(
        '/api/contacts',
        {'filters': list(filters), 'range': [0, 1], **params} if filters else {'range': [0, 1], **params},
    )
    total = int(resp.headers['Content-Range'].rsplit('/', 1)[1])
    everything = api.list('contacts', **({'filters': list(filters)} if filters else {}), range=[0, 99], **params)
    assert total == len(everything), 'the count is exact'
    return {c['last_name'] for c in everything}


def f(field, op, value=None):
    return {'field': field, 'op': op, 'value': value}


@pytest.mark.parametrize(
    'flt, expected',
    [
        (f('company.city', 'eq', 'Paris'), {'a'}),
        (f('company.city', 'eq', None), {'g', 'n'}),
        (f('company.city', 'neq', 'Paris'), {'g', 'i', 'n'}),
        (f('company.city', 'neq', None), {'a', 'i'}),
        (f('company.size', 'gt', 20), {'g'}),
        (f('company.size', 'lte', 10), {'a'}),
        (f('company.size', 'gte', 10), {'a', 'g'}),
        (f('company.size', 'lt', 50), {'a'}),
        (f('company.name', 'contains', 'GLOB'), {'g'}),
        (f('company.city', 'not_contains', 'ari'), {'g', 'i', 'n'}),
        (f('company.city', 'starts_with', 'Lon'), {'i'}),
        (f('company.city', 'ends_with', 'is'), {'a'}),
        (f('company.city', 'in', ['Paris', 'London']), {'a', 'i'}),
        (f('company.city', 'in', ['Paris', None]), {'a', 'g', 'n'}),
        (f('company.city', 'not_in', ['Paris']), {'g', 'i', 'n'}),
        (f('company.city', 'not_in', ['Paris', None]), {'i'}),
        (f('company.city', 'is_empty'), {'g', 'n'}),
        (f('company.city', 'is_not_empty'), {'a', 'i'}),
        (f('company.size', 'is_empty'), {'i', 'n'}),
        (f('company.city', 'like', 'ari'), {'a'}),
        (f('company.city', 'nlike', 'ari'), {'g', 'i', 'n'}),
        (f('company.city', 'blank'), {'g', 'n'}),
        (f('company.city', 'notblank'), {'a', 'i'}),
    ],
)
def test_dotted_filters_treat_a_missing_reference_as_all_null(linked, flt, expected):
    assert matches(linked, flt) == expected


def test_dotted_filters_combine_with_local_ones_and_with_filter(linked):
    assert matches(linked, {**f('company.city', 'eq', 'Paris'), 'logicalOp': 'or'}, f('status', 'eq', 'x')) == {
        'a',
        'n',
    }
    assert matches(linked, filter={'company.city': 'Paris'}) == {'a'}
    assert matches(linked, filter={'company.city': ['London', None]}) == {'g', 'i', 'n'}
    assert matches(linked, f('company.city', 'is_empty'), filter={'company.size': 50}) == {'g'}


def test_dotted_sorts_put_a_missing_reference_where_null_sorts(linked):
    def order(**params):
        return [c['last_name'] for c in linked.list('contacts', range=[0, 9], **params)]

    assert order(sort='company.city') == ['g', 'n', 'i', 'a'], 'NULLs first, ties by id'
    assert order(sort='["company.city","DESC"]') == ['a', 'i', 'n', 'g'], 'NULLs last, ties by id descending'
    assert order(sorts=[{'field': 'company.size', 'order': 'DESC'}, {'field': 'last_name'}]) == ['g', 'a', 'i', 'n']
    assert order(sort='company.name', order='ASC') == ['n', 'a', 'g', 'i']


def test_null_ties_of_a_dotted_sort_are_broken_by_id(linked):
    ids = [c['id'] for c in linked.list('contacts', range=[0, 9], sort='company.city') if c['last_name'] in 'gn']
    assert ids == sorted(ids)


def test_a_dotted_sort_pages_by_range_only(linked):
    full = linked.get('/api/contacts', {'sort': 'company.name', 'range': [0, 1]})
    assert 'X-Next-Cursor' not in full.headers
    plain = linked.get('/api/contacts', {'sort': 'last_name', 'range': [0, 1]})
    cursor = plain.headers['X-Next-Cursor']
    resp = linked.get('/api/contacts', {'sort': 'company.name', 'range': [0, 1], 'cursor': cursor}, status=400)
    assert_problem(resp, 400, param='cursor')
    second = linked.list('contacts', sort='company.name', range=[2, 3])
    assert [c['last_name'] for c in second] == ['g', 'i']


def test_dotted_fields_apply_to_exports(linked):
    params = {'filters': [f('company.city', 'neq', 'Paris')], 'sort': '["company.name","DESC"]'}
    rows = list(csv.DictReader(io.StringIO(linked.get('/api/contacts', params, headers={'Accept': 'text/csv'}).text)))
    assert [r['last_name'] for r in rows] == ['i', 'g', 'n']
    ndjson = linked.get('/api/contacts', params, headers={'Accept': 'application/x-ndjson'}).text
    assert [json.loads(line)['last_name'] for line in ndjson.splitlines()] == ['i', 'g', 'n']


def test_dotted_fields_of_a_custom_reference_and_of_a_task(api):
    api.post('/api/custom_objects', PROJECTS)
    acme = api.create('companies', name='Acme')
    api.create('projects', title='With', company=acme['id'])
    api.create('projects', title='Without')
    assert [p['title'] for p in api.list('projects', filter={'company.name': 'Acme'})] == ['With']
    assert [p['title'] for p in api.list('projects', sort='["company.name","DESC"]')] == ['With', 'Without']
    me = api.get('/api/me').json['user']
    api.create('tasks', text='mine', assignee_id=me['id'])
    api.create('tasks', text='nobody')
    assert [t['text'] for t in api.list('tasks', filter={'assignee.email': me['email']})] == ['mine']


@pytest.mark.parametrize(
    'field',
    [
        'tags.name',
        'notes.text',
        'company.nope',
        'nope.name',
        'company.organization_id',
        'company.',
        '.name',
        'company_id.name',
        'company.name.x',
    ],
)
def test_dotted_fields_cross_one_forward_reference_to_a_single_record(api, field):
    for param, value in (('filters', [f(field, 'eq', 'x')]), ('filter', {field: 'x'}), ('sort', field)):
        assert_problem(api.get('/api/contacts', {param: value}, status=400), 400, param=param, field=field)


def test_a_dotted_filter_is_a_semi_join_scoped_by_organization(api, statements):
    api.get('/api/contacts', {'range': [0, 0]})
    statements.clear()
    api.get('/api/contacts', {'filters': [f('company.name', 'contains', 'a')], 'sort': 'company.name', 'range': [0, 0]})
    listed = next(sql for sql in statements if 'LIMIT' in sql)
    assert re.search(
        r'"company_id" IN \(SELECT "?\w+"?\."id" FROM "companies" "ref_company_id" WHERE '
        r'"ref_company_id"\."organization_id"=',
        listed,
    ), listed
    assert re.search(r'LEFT JOIN "companies" "sort_company_id" ON "sort_company_id"\."organization_id"=', listed)
