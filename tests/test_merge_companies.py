"""POST /api/merge_companies, and what both merges take besides source_ids/target_id: `dry_run` (what the
merge would do, writing nothing) and Atomic CRM's {"loserId", "winnerId"}.

Every test runs on SQLite and on PostgreSQL (see conftest.py).
"""

from types import SimpleNamespace

import pytest

from conftest import assert_problem

MERGE = '/api/merge_companies'
MERGE_CONTACTS = '/api/merge_contacts'
EVERYTHING = {'range': [0, 999], 'filter': {'include_archived': True}}
REFERRERS = ('contacts', 'deals', 'tasks', 'company_notes')


def merge(api, source_ids, target_id, status=200, **extra):
    return api.post(MERGE, {'source_ids': source_ids, 'target_id': target_id, **extra}, status=status)


def get(api, resource, record_id, status=200):
    return api.get(f'/api/{resource}/{record_id}', status=status).json


def total(api, resource):
    """The list total (the organization's live-row counter when nothing filters)."""
    return int(api.get(f'/api/{resource}').headers['Content-Range'].rsplit('/', 1)[1])


def companies(api):
    """A target company, two duplicates of it and everything that refers to them.

    The target has a name and a domain; the first source a website and a city, the second a city too (which
    loses), a phone and a size.
    """
    target = api.create('companies', name='Acme Inc', domain='acme.com')
    first = api.create('companies', name='ACME Ltd', website='https://www.acme.com', city='Paris')
    second = api.create('companies', name='Acme GmbH', city='Berlin', phone='+49 30 1234567', size=40)
    bystander = api.create('companies', name='Initech')
    t, s1, s2, other = target['id'], first['id'], second['id'], bystander['id']
    return SimpleNamespace(
        target=target,
        first=first,
        second=second,
        t=t,
        s1=s1,
        s2=s2,
        other=other,
        contacts=[api.create('contacts', last_name=f'Of {c}', company_id=c)['id'] for c in (t, s1, s2, s2, other)],
        deals=[api.create('deals', name=f'Deal of {c}', company_id=c)['id'] for c in (s1, other)],
        tasks=[api.create('tasks', text=f'Task of {c}', company_id=c)['id'] for c in (t, s1, s2)],
        notes=[api.create('company_notes', company_id=c, text=f'Note on {c}')['id'] for c in (s1, s2)],
    )


def snapshot(api):
    return {resource: api.list(resource, **EVERYTHING) for resource in ('companies', *REFERRERS, 'contact_notes')}


# -- merging companies -----------------------------------------------------------------------------


def test_merge_companies_moves_everything_to_the_target_and_deletes_the_sources(api):
    w = companies(api)
    merged = merge(api, [w.s1, w.s2], w.t).json
    assert merged == get(api, 'companies', w.t)
    for source in (w.s1, w.s2):
        assert_problem(api.get(f'/api/companies/{source}', status=404), 404)
    assert sorted(c['id'] for c in api.list('companies', **EVERYTHING)) == sorted([w.t, w.other])
    assert [get(api, 'contacts', i)['company_id'] for i in w.contacts] == [w.t, w.t, w.t, w.t, w.other]
    assert [get(api, 'deals', i)['company_id'] for i in w.deals] == [w.t, w.other]
    assert [get(api, 'tasks', i)['company_id'] for i in w.tasks] == [w.t, w.t, w.t]
    assert [get(api, 'company_notes', i)['company_id'] for i in w.notes] == [w.t, w.t]


def test_merge_companies_fills_the_targets_empty_fields_in_source_order(api):
    w = companies(api)
    merged = merge(api, [w.s1, w.s2], w.t).json
    assert (merged['name'], merged['domain']) == ('Acme Inc', 'acme.com')
    assert (merged['website'], merged['city'], merged['phone'], merged['size']) == (
        'https://www.acme.com',
        'Paris',
        '+49 30 1234567',
        40,
    )
    assert merged['created_at'] == w.target['created_at'] and merged['updated_at'] > w.target['updated_at']
    assert merge(api, [w.other], w.t).json['city'] == 'Paris'


def test_merge_companies_keeps_the_counters_right(api):
    w = companies(api)
    api.delete(f'/api/companies/{w.s2}')  # an archived source is not counted twice
    before = {r: total(api, r) for r in ('companies', 'contacts', 'deals')}
    merge(api, [w.s1, w.s2], w.t)
    assert {r: total(api, r) for r in ('companies', 'contacts', 'deals')} == {
        **before,
        'companies': before['companies'] - 1,
    }
    assert total(api, 'companies') == len(api.list('companies', range=[0, 999]))
    summary = get(api, 'companies_summary', w.t)
    assert (summary['nb_contacts'], summary['nb_deals']) == (4, 1)


def test_merging_a_company_into_itself_changes_nothing(api):
    w = companies(api)
    before = snapshot(api)
    assert merge(api, [w.t, w.t], w.t).json == w.target
    assert snapshot(api) == before


def test_merge_companies_leaves_other_organizations_alone(api, other_api):
    w = companies(api)
    theirs = other_api.create('companies', name='Acme', domain='acme.com')
    their_contact = other_api.create('contacts', last_name='Theirs', company_id=theirs['id'])
    merge(api, [w.s1, w.s2], w.t)
    assert other_api.get(f'/api/companies/{theirs["id"]}').json == theirs
    assert other_api.get(f'/api/contacts/{their_contact["id"]}').json == their_contact


@pytest.mark.parametrize(
    'body, status, member',
    [
        (lambda w: {'source_ids': [w.s1, 'comp_doesnotexist'], 'target_id': w.t}, 404, {'field': 'source_ids'}),
        (lambda w: {'source_ids': [w.s1, w.foreign], 'target_id': w.t}, 404, {'field': 'source_ids'}),
        (lambda w: {'source_ids': [w.s1], 'target_id': 'comp_doesnotexist'}, 404, {'field': 'target_id'}),
        (lambda w: {'source_ids': [w.s1], 'target_id': w.foreign}, 404, {'field': 'target_id'}),
        (lambda w: {'source_ids': [w.s1], 'target_id': w.contact}, 404, {'field': 'target_id'}),
        (lambda w: {'source_ids': [], 'target_id': w.t}, 400, {'field': 'source_ids'}),
        (lambda w: {'source_ids': w.s1, 'target_id': w.t}, 400, {'field': 'source_ids'}),
        (lambda w: {'source_ids': [w.s1, 7], 'target_id': w.t}, 400, {'field': 'source_ids'}),
        (lambda w: {'source_ids': [w.s1]}, 400, {'field': 'target_id'}),
        (lambda w: {'source_ids': [w.s1], 'target_id': None}, 400, {'field': 'target_id'}),
        (
            lambda w: {'source_ids': [w.s1] + [f'comp_{i}' for i in range(100)], 'target_id': w.t},
            400,
            {'field': 'source_ids'},
        ),
        (lambda w: {'source_ids': [w.s1], 'target_id': w.t, 'sources': []}, 400, {'field': 'sources'}),
        (lambda w: {'source_ids': [w.s1], 'target_id': w.t, 'dry_run': 'yes'}, 400, {'field': 'dry_run'}),
    ],
    ids=[
        'unknown-source',
        'foreign-source',
        'unknown-target',
        'foreign-target',
        'contact-as-target',
        'empty-sources',
        'sources-not-array',
        'source-not-string',
        'missing-target',
        'null-target',
        'over-100-sources',
        'unknown-field',
        'dry-run-not-boolean',
    ],
)
def test_a_bad_company_merge_is_refused_and_changes_nothing(api, other_api, body, status, member):
    w = companies(api)
    w.foreign = other_api.create('companies', name='Spy Corp')['id']
    w.contact = w.contacts[0]
    before = snapshot(api)
    sent = body(w)
    problem = assert_problem(api.post(MERGE, sent, status=status), status, **member)
    if status == 404:
        missing = [i for i in [*sent['source_ids'], sent['target_id']] if f"'{i}'" in problem['detail']]
        assert missing and missing[0] not in (w.t, w.s1), problem['detail']
    assert snapshot(api) == before


def test_a_dry_run_with_an_unknown_id_is_the_same_404(api):
    w = companies(api)
    assert_problem(merge(api, [w.s1, 'comp_nope'], w.t, status=404, dry_run=True), 404, field='source_ids')


def test_merge_companies_honours_idempotency_keys(api):
    w = companies(api)
    headers = {'Idempotency-Key': 'merge-acme'}
    body = {'source_ids': [w.s1, w.s2], 'target_id': w.t}
    first = api.post(MERGE, body, headers=headers, status=200)
    again = api.post(MERGE, body, headers=headers, status=200)
    assert again.headers['Idempotent-Replayed'] == 'true' and again.json == first.json
    assert total(api, 'companies') == 2
    assert_problem(
        api.post(MERGE, {**body, 'source_ids': [w.other]}, headers=headers, status=422), 422, param='Idempotency-Key'
    )
    assert get(api, 'companies', w.other)['name'] == 'Initech'


def test_a_non_administrator_may_merge_companies_and_a_stranger_may_not(api, user_api, anonymous):
    w = companies(api)
    assert_problem(anonymous.post(MERGE, {'source_ids': [w.s1], 'target_id': w.t}, status=401), 401)
    assert merge(user_api, [w.s1], w.t).json['id'] == w.t


def test_merge_companies_answers_only_post(api):
    assert_problem(api.get(MERGE, status=405), 405)


def test_merge_companies_is_a_route_no_custom_object_may_take(api):
    resp = api.post('/api/custom_objects', {'slug': 'merge_companies', 'fields': []}, status=400)
    assert_problem(resp, 400, field='slug')


# -- dry runs --------------------------------------------------------------------------------------


def test_a_company_dry_run_answers_what_would_move_and_writes_nothing(api):
    w = companies(api)
    before = snapshot(api)
    preview = merge(api, [w.s1, w.s2], w.t, dry_run=True).json
    assert snapshot(api) == before
    assert preview['dry_run'] is True and preview['deleted'] == [w.s1, w.s2]
    assert preview['moves'] == {'contacts': 3, 'deals': 1, 'tasks': 2, 'company_notes': 2}
    merged = merge(api, [w.s1, w.s2], w.t).json
    assert {**preview['target'], 'updated_at': None} == {**merged, 'updated_at': None}
    assert preview['target']['updated_at'] > w.target['updated_at']


def contacts(api):
    """A target contact and two duplicates: notes, tasks and deal links on both sides."""
    t, s1, s2 = (
        api.create('contacts', first_name=n, last_name='Lovelace', email=e)['id']
        for n, e in (('Ada', None), ('Augusta', 'ada@one.example'), (None, 'ada@two.example'))
    )
    for c in (s1, s1, s2):
        api.create('contact_notes', contact_id=c, text='note')
    for c in (t, s2):
        api.create('tasks', text='call', contact_id=c)
    api.create('deals', name='Both', contact_ids=[s1, t])
    api.create('deals', name='Source', contact_ids=[s2])
    api.create('deals', name='None', contact_ids=[t])
    return t, s1, s2


def test_a_contact_dry_run_counts_notes_tasks_and_deal_links_and_writes_nothing(api):
    t, s1, s2 = contacts(api)
    before = snapshot(api)
    contacts_total = total(api, 'contacts')
    preview = api.post(MERGE_CONTACTS, {'source_ids': [s1, s2], 'target_id': t, 'dry_run': True}, status=200).json
    assert snapshot(api) == before and total(api, 'contacts') == contacts_total
    assert preview['moves'] == {'contact_notes': 3, 'tasks': 1, 'deals': 2}
    assert preview['deleted'] == [s1, s2]
    assert preview['target']['email'] == 'ada@one.example' and preview['target']['first_name'] == 'Ada'
    merged = api.post(MERGE_CONTACTS, {'source_ids': [s1, s2], 'target_id': t}, status=200).json
    assert {**preview['target'], 'updated_at': None} == {**merged, 'updated_at': None}


def test_a_dry_run_into_itself_moves_nothing(api):
    t, _, _ = contacts(api)
    preview = api.post(MERGE_CONTACTS, {'source_ids': [t], 'target_id': t, 'dry_run': True}, status=200).json
    assert preview == {
        'dry_run': True,
        'target': get(api, 'contacts', t),
        'deleted': [],
        'moves': {'contact_notes': 0, 'tasks': 0, 'deals': 0},
    }


def test_a_dry_run_stores_no_idempotency_key(api):
    """The key a form sent with its preview can go with the merge itself: the merge runs, it is no replay."""
    t, s1, _ = contacts(api)
    headers = {'Idempotency-Key': 'merge-ada'}
    body = {'source_ids': [s1], 'target_id': t}
    api.post(MERGE_CONTACTS, {**body, 'dry_run': True}, headers=headers, status=200)
    resp = api.post(MERGE_CONTACTS, body, headers=headers, status=200)
    assert 'Idempotent-Replayed' not in resp.headers
    assert_problem(api.get(f'/api/contacts/{s1}', status=404), 404)


# -- Atomic CRM's shape ----------------------------------------------------------------------------


def test_loser_and_winner_merge_like_source_and_target(api):
    t, s1, _ = contacts(api)
    merged = api.post(MERGE_CONTACTS, {'loserId': s1, 'winnerId': t}, status=200).json
    assert merged['id'] == t and merged['email'] == 'ada@one.example'
    assert_problem(api.get(f'/api/contacts/{s1}', status=404), 404)
    w = companies(api)
    assert api.post(MERGE, {'loserId': w.s1, 'winnerId': w.t, 'dry_run': True}, status=200).json['deleted'] == [w.s1]


@pytest.mark.parametrize(
    'body, status, field',
    [
        (lambda t, s: {'loserId': s, 'winnerId': 'c_nope'}, 404, 'winnerId'),
        (lambda t, s: {'loserId': 'c_nope', 'winnerId': t}, 404, 'loserId'),
        (lambda t, s: {'loserId': s}, 400, 'winnerId'),
        (lambda t, s: {'winnerId': t}, 400, 'loserId'),
        (lambda t, s: {'loserId': [s], 'winnerId': t}, 400, 'loserId'),
        (lambda t, s: {'loserId': s, 'winnerId': t, 'target_id': t}, 400, 'target_id'),
        (lambda t, s: {'loserId': s, 'winnerId': t, 'source_ids': [s]}, 400, 'source_ids'),
    ],
    ids=[
        'unknown-winner',
        'unknown-loser',
        'missing-winner',
        'missing-loser',
        'loser-not-string',
        'mixed-target',
        'mixed-sources',
    ],
)
def test_a_bad_loser_winner_merge_names_the_field(api, body, status, field):
    t, s1, _ = contacts(api)
    before = snapshot(api)
    assert_problem(api.post(MERGE_CONTACTS, body(t, s1), status=status), status, field=field)
    assert snapshot(api) == before
