"""POST /api/merge_contacts: fold duplicate contacts into one, in one transaction.

Every test runs on SQLite and on PostgreSQL (see conftest.py).
"""

from types import SimpleNamespace

import pytest

from conftest import assert_problem
from crmapi import sqlbuild
from crmapi.store import Store

MERGE = '/api/merge_contacts'
EVERYTHING = {'range': [0, 999], 'filter': {'include_archived': True}}


# -- helpers ---------------------------------------------------------------------------------------


def merge(api, source_ids, target_id, status=200):
    return api.post(MERGE, {'source_ids': source_ids, 'target_id': target_id}, status=status)


def duplicates(api):
    """A target contact, two duplicates of it and everything that refers to them.

    The target has a first name but no email or phone; the first source has an email, the second
    an email too (which loses) and a phone; tags overlap.
    """
    vip, hot, cold = (api.create('tags', name=n)['id'] for n in ('vip', 'hot', 'cold'))
    company = api.create('companies', name='Analytical Engines')['id']
    target = api.create('contacts', first_name='Ada', last_name='Lovelace', city='London', tags=[vip])
    first = api.create(
        'contacts', first_name='Augusta', email='ada@one.example', title='Countess', city='Paris', tags=[hot, vip]
    )
    second = api.create('contacts', email='ada@two.example', phone='+44 20 7946 0000', company_id=company, tags=[cold])
    bystander = api.create('contacts', first_name='Charles', last_name='Babbage')
    t, s1, s2, other = target['id'], first['id'], second['id'], bystander['id']
    return SimpleNamespace(
        target=target,
        first=first,
        second=second,
        t=t,
        s1=s1,
        s2=s2,
        other=other,
        company=company,
        tags=[vip, hot, cold],
        tasks=[api.create('tasks', text=f'Task of {c}', contact_id=c)['id'] for c in (t, s1, s2)],
        notes=[api.create('contact_notes', contact_id=c, text=f'Note on {c}')['id'] for c in (s1, s2)],
        deal_both=api.create('deals', name='Both', contact_ids=[s1, t])['id'],
        deal_source=api.create('deals', name='Source', contact_ids=[s2, other])['id'],
        deal_none=api.create('deals', name='None', contact_ids=[other])['id'],
    )


def snapshot(api):
    """Every record a merge may touch, to prove that a failed one changed nothing."""
    return {
        resource: api.list(resource, **EVERYTHING)
        for resource in ('contacts', 'tasks', 'contact_notes', 'deals', 'tags')
    }


def get(api, resource, record_id, status=200):
    return api.get(f'/api/{resource}/{record_id}', status=status).json


def assert_unchanged(api, before, w):
    assert snapshot(api) == before
    assert [get(api, 'tasks', i)['contact_id'] for i in w.tasks] == [w.t, w.s1, w.s2]
    assert get(api, 'contacts', w.s1) == w.first
    assert get(api, 'contacts', w.t) == w.target


# -- merging ---------------------------------------------------------------------------------------


def test_merge_moves_everything_to_the_target_and_deletes_the_sources(api):
    w = duplicates(api)
    resp = merge(api, [w.s1, w.s2], w.t)
    merged = resp.json
    assert resp.status_int == 200
    assert merged == get(api, 'contacts', w.t)
    assert 'organization_id' not in merged
    for source in (w.s1, w.s2):
        assert_problem(api.get(f'/api/contacts/{source}', status=404), 404)
    assert sorted(c['id'] for c in api.list('contacts', **EVERYTHING)) == sorted([w.t, w.other])

    assert [get(api, 'tasks', i)['contact_id'] for i in w.tasks] == [w.t, w.t, w.t]
    assert [get(api, 'contact_notes', i)['contact_id'] for i in w.notes] == [w.t, w.t]
    assert get(api, 'deals', w.deal_both)['contact_ids'] == [w.t]
    assert get(api, 'deals', w.deal_source)['contact_ids'] == [w.t, w.other]
    assert get(api, 'deals', w.deal_none)['contact_ids'] == [w.other]


def test_merge_fills_the_targets_empty_fields_in_source_order(api):
    w = duplicates(api)
    merged = merge(api, [w.s1, w.s2], w.t).json
    assert (merged['first_name'], merged['last_name'], merged['city']) == ('Ada', 'Lovelace', 'London')
    assert merged['email'] == 'ada@one.example'
    assert (merged['title'], merged['phone'], merged['company_id']) == ('Countess', '+44 20 7946 0000', w.company)
    assert merged['created_at'] == w.target['created_at']
    assert merged['updated_at'] > w.target['updated_at']


def test_merge_in_the_other_order_takes_the_other_sources_values_first(api):
    w = duplicates(api)
    assert merge(api, [w.s2, w.s1], w.t).json['email'] == 'ada@two.example'


def test_merge_unites_tags_without_duplicates(api):
    w = duplicates(api)
    tags = merge(api, [w.s1, w.s2], w.t).json['tags']
    assert sorted(tags) == sorted(w.tags)
    assert tags[0] == w.tags[0]


def test_merged_target_keeps_its_summary_counts(api):
    w = duplicates(api)
    merge(api, [w.s1, w.s2], w.t)
    assert get(api, 'contacts_summary', w.t)['nb_tasks'] == 3
    assert get(api, 'companies_summary', w.company)['nb_contacts'] == 1


def test_the_target_may_appear_among_the_sources(api):
    w = duplicates(api)
    merged = merge(api, [w.t, w.s1, w.s1], w.t).json
    assert merged['id'] == w.t and merged['email'] == 'ada@one.example'
    assert_problem(api.get(f'/api/contacts/{w.s1}', status=404), 404)
    assert get(api, 'contacts', w.s2) == w.second


def test_merging_a_contact_into_itself_changes_nothing(api):
    w = duplicates(api)
    before = snapshot(api)
    assert merge(api, [w.t], w.t).json == w.target
    assert snapshot(api) == before


def test_merge_leaves_other_organizations_alone(api, other_api):
    w = duplicates(api)
    theirs = other_api.create('contacts', last_name='Other')
    their_task = other_api.create('tasks', text='Theirs', contact_id=theirs['id'])
    merge(api, [w.s1, w.s2], w.t)
    assert other_api.get(f'/api/contacts/{theirs["id"]}').json == theirs
    assert other_api.get(f'/api/tasks/{their_task["id"]}').json == their_task


# -- errors change nothing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    'body, status, member',
    [
        (lambda w: {'source_ids': [w.s1, 'c_doesnotexist'], 'target_id': w.t}, 404, {}),
        (lambda w: {'source_ids': [w.s1, w.foreign], 'target_id': w.t}, 404, {}),
        (lambda w: {'source_ids': [w.s1], 'target_id': 'c_doesnotexist'}, 404, {}),
        (lambda w: {'source_ids': [w.s1], 'target_id': w.foreign}, 404, {}),
        (lambda w: {'source_ids': [], 'target_id': w.t}, 400, {'field': 'source_ids'}),
        (lambda w: {'source_ids': w.s1, 'target_id': w.t}, 400, {'field': 'source_ids'}),
        (lambda w: {'source_ids': [w.s1, 42], 'target_id': w.t}, 400, {'field': 'source_ids'}),
        (lambda w: {'source_ids': [w.s1, None], 'target_id': w.t}, 400, {'field': 'source_ids'}),
        (lambda w: {'target_id': w.t}, 400, {'field': 'source_ids'}),
        (lambda w: {'source_ids': [w.s1]}, 400, {'field': 'target_id'}),
        (lambda w: {'source_ids': [w.s1], 'target_id': None}, 400, {'field': 'target_id'}),
        (lambda w: {'source_ids': [w.s1], 'target_id': [w.t]}, 400, {'field': 'target_id'}),
        (
            lambda w: {'source_ids': [w.s1] + [f'c_{i}' for i in range(100)], 'target_id': w.t},
            400,
            {'field': 'source_ids'},
        ),
    ],
    ids=[
        'unknown-source',
        'foreign-source',
        'unknown-target',
        'foreign-target',
        'empty-sources',
        'sources-not-array',
        'source-not-string',
        'source-null',
        'missing-sources',
        'missing-target',
        'null-target',
        'target-not-string',
        'over-100-sources',
    ],
)
def test_a_bad_merge_is_refused_and_changes_nothing(api, other_api, body, status, member):
    w = duplicates(api)
    w.foreign = other_api.create('contacts', first_name='Spy', email='spy@other.example')['id']
    before = snapshot(api)
    assert_problem(api.post(MERGE, body(w), status=status), status, **member)
    assert_unchanged(api, before, w)
    assert other_api.get(f'/api/contacts/{w.foreign}').json['email'] == 'spy@other.example'


def test_exactly_100_sources_is_allowed_but_must_exist(api):
    w = duplicates(api)
    before = snapshot(api)
    sources = [w.s1] + [f'c_missing{i}' for i in range(99)]
    assert_problem(merge(api, sources, w.t, status=404), 404)
    assert_unchanged(api, before, w)


@pytest.mark.parametrize('text', ['not json', '[1, 2]', '"c_1"', '', '{"source_ids": ['])
def test_a_body_that_is_not_a_json_object_is_400(api, text):
    w = duplicates(api)
    before = snapshot(api)
    resp = api.app.post(MERGE, text, headers=api.headers, content_type='application/json', status=400)
    assert_problem(resp, 400)
    assert_unchanged(api, before, w)


def test_merge_needs_a_token(anonymous, api):
    w = duplicates(api)
    resp = anonymous.post(MERGE, {'source_ids': [w.s1], 'target_id': w.t}, status=401)
    assert_problem(resp, 401)
    assert get(api, 'contacts', w.s1) == w.first


def test_merge_answers_only_post(api):
    assert_problem(api.get(MERGE, status=405), 405)


# -- atomicity -------------------------------------------------------------------------------------


class InjectedFailure(RuntimeError):
    """Raised by a patched store step to break a merge halfway."""


def fail_updating_contacts(monkeypatch):
    """Break the merge when it writes the target, after references have moved and sources are gone."""
    original = Store._update

    def _update(self, tx, info, principal, record_id, changes):
        if info.slug == 'contacts':
            raise InjectedFailure('disk on fire')
        return original(self, tx, info, principal, record_id, changes)

    monkeypatch.setattr(Store, '_update', _update)


def fail_deleting(monkeypatch):
    """Break the merge when it deletes the sources, after references have moved."""

    def build_delete(*args, **kwargs):
        raise InjectedFailure('disk on fire')

    monkeypatch.setattr(sqlbuild, 'build_delete', build_delete)


@pytest.mark.parametrize('break_merge', [fail_updating_contacts, fail_deleting], ids=['update', 'delete'])
def test_a_merge_that_fails_halfway_changes_nothing(api, monkeypatch, break_merge):
    w = duplicates(api)
    before = snapshot(api)
    with monkeypatch.context() as patch:
        break_merge(patch)
        assert_problem(merge(api, [w.s1, w.s2], w.t, status=500), 500)
    assert_unchanged(api, before, w)
    assert get(api, 'deals', w.deal_both)['contact_ids'] == [w.s1, w.t]
    assert [get(api, 'contact_notes', i)['contact_id'] for i in w.notes] == [w.s1, w.s2]

    merged = merge(api, [w.s1, w.s2], w.t).json
    assert merged['email'] == 'ada@one.example'
    assert [get(api, 'tasks', i)['contact_id'] for i in w.tasks] == [w.t, w.t, w.t]
