"""Probable duplicates: GET /api/contacts/duplicates (groups), GET /api/contacts/:id/duplicates and
POST /api/contacts/duplicates (one record's candidates), and the same for companies.

The normalisation rules are checked on their own first (pure Python), then through the API on SQLite
and PostgreSQL (see conftest.py).
"""

import gc
import random
import unicodedata

import pytest

from conftest import assert_problem
from crmapi import duplicates
from crmapi.custom import ROUTE_NAMES

GROUPS = '/api/contacts/duplicates'
COMPANY_GROUPS = '/api/companies/duplicates'


# -- normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'variant',
    [
        'ada.lovelace@gmail.com',
        'Ada.Lovelace@Gmail.com',
        ' ADA.LOVELACE@GMAIL.COM ',
        'adalovelace@gmail.com',
        'a.d.a.lovelace@gmail.com',
        'ada.lovelace+crm@gmail.com',
        'adalovelace+a+b@googlemail.com',
    ],
)
def test_gmail_addresses_ignore_case_tags_dots_and_googlemail(variant):
    assert duplicates.email_key(variant) == 'adalovelace@gmail.com'


def test_other_domains_keep_their_dots_and_lose_only_the_tag():
    assert duplicates.email_key('Ada.Lovelace+news@Example.ORG') == 'ada.lovelace@example.org'
    assert duplicates.email_key('ada.lovelace@example.org') != duplicates.email_key('adalovelace@example.org')


@pytest.mark.parametrize('junk', [None, '', 'no at sign', '@example.org', 'ada@', '+tag@example.org'])
def test_what_is_no_address_has_no_email_key(junk):
    assert duplicates.email_key(junk) is None


@pytest.mark.parametrize(
    'variant', ['+44 20 7946 0000', '0044 20 7946 0000', '+44 (20) 7946-0000', '44.20.7946.0000', '+44 20 7946 0000 ']
)
def test_phones_compare_by_digits_with_a_leading_00_read_as_plus(variant):
    assert duplicates.phone_key(variant) == '442079460000'


@pytest.mark.parametrize('junk', [None, '', 'n/a', '112', '00 12 34'])
def test_short_phone_numbers_are_no_key(junk):
    assert duplicates.phone_key(junk) is None


@pytest.mark.parametrize(
    'text, folded',
    [
        ('Zoë', 'zoe'),
        ("O'Brien-Lévy", 'obrienlevy'),
        ('ÅSE ØSTERGÅRD', 'aseostergard'),
        ('Straße', 'strasse'),
        ('  jean luc ', 'jeanluc'),
        ('Łukasz', 'lukasz'),
        (None, ''),
        ('Ab_c\n1', 'abc1'),
    ],
)
def test_names_fold_case_accents_and_punctuation(text, folded):
    assert duplicates.fold(text) == folded


def test_folding_a_column_is_folding_each_text():
    """Columns are normalised in one pass over their joined text: the same as one text at a time, which is
    NFKD of the case-folded text, a few letters spelt out, and its letters and digits kept."""
    texts = ['Zoë', None, 'a\nb', 'Æsir', 'plain', '', 'Ｆｕｌｌ', 'x\u0301y', 'İstanbul', 'K-9', '\n']

    def one(text):
        text = unicodedata.normalize('NFKD', (text or '').casefold()).translate(duplicates._LETTERS)
        return ''.join(c for c in text if c.isalnum())

    assert duplicates.fold_all(texts) == [one(t) for t in texts]
    assert duplicates.phone_keys(['+1 555 0100 99', None, '1\n234567', '0000 1234 567', '٣٣٣ 1234567']) == [
        '1555010099',
        None,
        '1234567',
        '001234567',
        '1234567',
    ]
    assert duplicates.email_keys([' A@B.org', None, 'x@y.org\n', 'É@Ü.de ']) == ['a@b.org', None, 'x@y.org', 'é@ü.de']


@pytest.mark.parametrize(
    'value',
    [
        'acme.com',
        'ACME.com',
        'https://www.acme.com/about?x=1',
        'http://acme.com:8080',
        'www.acme.com',
        'https://user@www.acme.com/',
        'acme.com.',
    ],
)
def test_hosts_drop_scheme_www_path_port_and_case(value):
    assert duplicates.host_key(value) == 'acme.com'


@pytest.mark.parametrize('junk', [None, '', 'localhost', 'https://www.linkedin.com/company/acme', 'gmail.com'])
def test_hosts_many_companies_share_are_no_key(junk):
    assert duplicates.host_key(junk) is None


@pytest.mark.parametrize(
    'name',
    [
        'Acme',
        'ACME Inc.',
        'Acme, Inc',
        'Acme Ltd',
        'Acme LLC',
        'Acme GmbH',
        'Acme SAS',
        'Acme S.A.',
        'Acme AG',
        'Acme B.V.',
        'Acme Corp',
        'Acme Co., Ltd.',
        'Ácme',
    ],
)
def test_company_names_drop_legal_suffixes(name):
    assert duplicates.company_name_key(name) == 'acme'


def test_a_company_named_only_by_a_suffix_keeps_it():
    assert duplicates.company_name_key('S.A.') == 'sa'
    assert duplicates.company_name_key('Co Op Inc') == 'coop'


@pytest.mark.parametrize(
    'a, b, distance',
    [
        ('smith', 'smith', 0),
        ('smith', 'smyth', 1),
        ('smith', 'smiht', 2),
        ('smith', 'smithers', None),
        ('kowalski', 'kovalsky', 2),
        ('lee', 'li', 2),
        ('lovelace', 'lovelacx', 1),
        ('abc', 'xyz', None),
    ],
)
def test_edit_distance_is_known_up_to_two(a, b, distance):
    assert duplicates.within_edits(a, b) == distance
    assert duplicates.within_edits(b, a) == distance


def test_a_records_candidates_are_exactly_its_pairs_in_the_organization_wide_list():
    """Filed alone at the end (as an unsaved or archived record is), a record meets the same partners, with the
    same reasons, as in the whole organization's blocks: block limits included (some keys here are shared
    by more than MAX_BLOCK records)."""
    rng = random.Random(7)
    rows = [
        (
            f'c_{i:04d}',
            rng.choice(['Ada', 'ada', 'Al', None]),
            rng.choice(['King', 'Kign', 'Kong', 'Lovelace']),
            rng.choice([None, 'a@x.org', 'A+1@x.org', f'u{i}@x.org']),
            rng.choice([None, '+1 555 0100', f'+1 555 {i:04d}']),
            rng.choice([None, 'comp_1', 'comp_2']),
        )
        for i in range(300)
    ]
    matcher = duplicates.MATCHERS['contacts']
    whole = duplicates.file(matcher, rows)
    links = duplicates._links(whole, whole.blocks)
    assert any(len(m) > duplicates.MAX_BLOCK for m in whole.blocks.values())
    for i in range(0, len(rows), 7):
        alone = duplicates.file(matcher, rows[:i] + rows[i + 1 :], extra=rows[i])
        expected = {
            (whole.ids[b if a == i else a], tuple(duplicates.ordered(matcher, reasons)))
            for (a, b), reasons in links.items()
            if i in (a, b)
        }
        found = {(record_id, tuple(reasons)) for record_id, _, reasons in duplicates.candidates(alone, len(rows) - 1)}
        assert found == expected


# -- helpers ---------------------------------------------------------------------------------------


def contacts(api, *bodies):
    """Create contacts in one batch: their ids, in order."""
    return [c['id'] for c in api.post('/api/contacts', list(bodies)).json]


def groups(api, path=GROUPS, **params):
    return api.get(path, params).json


def group_of(api, ids, path=GROUPS):
    """The one group holding `ids` (and nothing else)."""
    found = [g for g in groups(api, path, range=[0, 999]) if set(ids) & set(g['ids'])]
    assert len(found) == 1, found
    assert sorted(found[0]['ids']) == sorted(ids)
    return found[0]


def candidates(api, record_id, path='/api/contacts'):
    return api.get(f'{path}/{record_id}/duplicates').json


# -- reasons ---------------------------------------------------------------------------------------


def test_same_email_in_any_spelling_makes_a_group(api):
    ids = contacts(
        api,
        {'last_name': 'A', 'email': 'Ada.Lovelace+crm@GoogleMail.com'},
        {'last_name': 'B', 'email': 'adalovelace@gmail.com'},
        {'last_name': 'C', 'email': 'ADA.LOVELACE@gmail.com'},
        {'last_name': 'D', 'email': 'ada.lovelace@example.org'},
    )
    group = group_of(api, ids[:3])
    assert group['reasons'] == ['same email']
    assert group['score'] == 0.9
    assert group['ids'] == sorted(ids[:3]), 'ids sort oldest first'


def test_same_phone_in_any_spelling_makes_a_group(api):
    ids = contacts(
        api,
        {'last_name': 'A', 'phone': '+44 20 7946 0000'},
        {'last_name': 'B', 'phone': '0044 (20) 7946-0000'},
        {'last_name': 'C', 'phone': '020 7946 0000'},
    )
    assert group_of(api, ids[:2])['reasons'] == ['same phone']


def test_same_name_matches_within_one_company(api):
    acme, other = (api.create('companies', name=n)['id'] for n in ('Acme', 'Other'))
    ids = contacts(
        api,
        {'first_name': 'Zoë', 'last_name': "O'Brien", 'company_id': acme},
        {'first_name': 'ZOE', 'last_name': 'obrien', 'company_id': acme},
        {'first_name': 'Zoe', 'last_name': "O'Brien", 'company_id': other},
    )
    assert group_of(api, ids[:2])['reasons'] == ['same name']


def test_same_name_matches_when_either_has_no_company(api):
    acme, other = (api.create('companies', name=n)['id'] for n in ('Acme', 'Other'))
    ids = contacts(
        api,
        {'first_name': 'Ada', 'last_name': 'Lovelace', 'company_id': acme},
        {'first_name': 'ada', 'last_name': 'LOVELACE'},
        {'first_name': 'Ada', 'last_name': 'Lovelace', 'company_id': other},
    )
    group = group_of(api, ids)
    assert group['reasons'] == ['same name']
    pair = {c['record']['id']: c['reasons'] for c in candidates(api, ids[0])}
    assert pair == {ids[1]: ['same name']}, "the two companies' contacts are not each other's candidates"


def test_a_name_needs_its_last_name(api):
    contacts(api, {'first_name': 'Ada'}, {'first_name': 'Ada'})
    assert groups(api) == []


def test_similar_last_names_match_within_one_company_and_first_initial(api):
    acme, other = (api.create('companies', name=n)['id'] for n in ('Acme', 'Other'))
    ids = contacts(
        api,
        {'first_name': 'Jon', 'last_name': 'Smith', 'company_id': acme},
        {'first_name': 'John', 'last_name': 'Smyth', 'company_id': acme},  # 1 edit
        {'first_name': 'Jane', 'last_name': 'Smiht', 'company_id': acme},  # 2 edits
        {'first_name': 'Mary', 'last_name': 'Smyth', 'company_id': acme},  # other initial
        {'first_name': 'John', 'last_name': 'Smith', 'company_id': other},  # other company
        {'first_name': 'Jon', 'last_name': 'Smithers', 'company_id': acme},  # 3 edits
        {'first_name': 'John', 'last_name': 'Smitt'},
    )  # no company
    group = group_of(api, ids[:3])
    assert group['reasons'] == ['similar name'] and group['score'] == 0.5


def test_a_key_shared_by_very_many_contacts_means_nothing(api):
    """A switchboard number on 51 contacts groups none of them; a common name still pairs two contacts
    of one company, but a contact without a company no longer matches them all."""
    acme = api.create('companies', name='Acme')['id']
    contacts(api, *[{'last_name': f'Staff {i}', 'phone': '+1 555 0100'} for i in range(duplicates.MAX_BLOCK + 1)])
    assert groups(api) == []
    elsewhere = [
        c['id'] for c in api.post('/api/companies', [{'name': f'C{i}'} for i in range(duplicates.MAX_BLOCK)]).json
    ]
    contacts(api, *[{'first_name': 'John', 'last_name': 'Smith', 'company_id': c} for c in elsewhere])
    pair = contacts(
        api,
        {'first_name': 'John', 'last_name': 'Smith', 'company_id': acme},
        {'first_name': 'John', 'last_name': 'Smith', 'company_id': acme},
    )
    loose = contacts(api, {'first_name': 'John', 'last_name': 'Smith'})
    assert [g['ids'] for g in groups(api)] == [sorted(pair)]
    assert candidates(api, loose[0]) == []


# -- order, scores, paging -------------------------------------------------------------------------


def test_groups_come_best_first_with_more_reasons_scoring_higher(api):
    acme = api.create('companies', name='Acme')['id']
    similar = contacts(
        api,
        {'first_name': 'Al', 'last_name': 'Turing', 'company_id': acme},
        {'first_name': 'Al', 'last_name': 'Turnig', 'company_id': acme},
    )
    name = contacts(api, {'first_name': 'Bo', 'last_name': 'Babbage'}, {'first_name': 'Bo', 'last_name': 'Babbage'})
    phone = contacts(api, {'last_name': 'X', 'phone': '+1 555 0101 11'}, {'last_name': 'Y', 'phone': '1 555 0101 11'})
    email = contacts(api, {'last_name': 'P', 'email': 'c@x.org'}, {'last_name': 'Q', 'email': 'C@X.org'})
    both = contacts(
        api,
        {'first_name': 'Di', 'last_name': 'Hopper', 'email': 'd@x.org'},
        {'first_name': 'Di', 'last_name': 'Hopper', 'email': 'D@x.org'},
    )
    found = groups(api)
    assert [g['ids'] for g in found] == [sorted(ids) for ids in (both, email, phone, name, similar)]
    assert [g['score'] for g in found] == [0.97, 0.9, 0.8, 0.7, 0.5]
    assert found[0]['reasons'] == ['same email', 'same name']


def test_a_group_scores_its_weakest_members_best_link(api):
    """A-B share an email and a name; C shares only a phone with B: the group holds all three, at C's score."""
    a, b, c = contacts(
        api,
        {'first_name': 'Ada', 'last_name': 'King', 'email': 'ada@x.org'},
        {'first_name': 'Ada', 'last_name': 'King', 'email': 'ADA@x.org', 'phone': '+44 1234 5678'},
        {'last_name': 'Byron', 'phone': '0044 1234 5678'},
    )
    group = group_of(api, [a, b, c])
    assert group['score'] == 0.8
    assert group['reasons'] == ['same email', 'same phone', 'same name']


def test_groups_page_with_range_and_content_range_counts_groups(api):
    contacts(api, *[{'last_name': f'N{i}', 'email': f'p{i // 2}@x.org'} for i in range(10)])
    everything = groups(api, range=[0, 99])
    assert len(everything) == 5
    resp = api.get(GROUPS, {'range': [1, 2]})
    assert resp.headers['Content-Range'] == 'duplicates 1-2/5'
    assert resp.json == everything[1:3]
    assert api.get(GROUPS).headers['Content-Range'] == 'duplicates 0-4/5'
    assert api.get(GROUPS, {'range': [10, 19]}).headers['Content-Range'] == 'duplicates */5'
    head = api.app.head(GROUPS, headers=api.headers)
    assert head.headers['Content-Range'] == 'duplicates 0-4/5' and head.body == b''


@pytest.mark.parametrize(
    'params, param',
    [
        ({'range': [3, 1]}, 'range'),
        ({'range': 'nope'}, 'range'),
        ({'range': [0, 5000]}, 'range'),
        ({'filter': {}}, 'filter'),
        ({'sort': 'id'}, 'sort'),
    ],
)
def test_bad_paging_is_a_400_naming_the_parameter(api, params, param):
    assert_problem(api.get(GROUPS, params, status=400), 400, param=param)


def test_no_duplicates_is_an_empty_page(api):
    contacts(api, {'last_name': 'Alone'})
    resp = api.get(GROUPS)
    assert resp.json == [] and resp.headers['Content-Range'] == 'duplicates */0'


# -- one record's candidates -----------------------------------------------------------------------


def test_a_contacts_candidates_come_with_their_records_best_first(api):
    me, email, phone, _ = contacts(
        api,
        {'first_name': 'Ada', 'last_name': 'King', 'email': 'ada@x.org', 'phone': '+1 555 0199 00'},
        {'last_name': 'Other', 'email': 'ADA@x.org'},
        {'last_name': 'Third', 'phone': '001 555 0199 00'},
        {'last_name': 'Nobody'},
    )
    resp = api.get(f'/api/contacts/{me}/duplicates')
    assert resp.headers['Content-Range'] == 'duplicates 0-1/2'
    assert [(c['record']['id'], c['score'], c['reasons']) for c in resp.json] == [
        (email, 0.9, ['same email']),
        (phone, 0.8, ['same phone']),
    ]
    assert resp.json[0]['record'] == api.get(f'/api/contacts/{email}').json
    assert candidates(api, phone)[0]['record']['id'] == me


def test_candidates_of_an_unknown_or_foreign_contact_are_404(api, other_api):
    foreign = other_api.create('contacts', last_name='Spy')['id']
    for record_id in ('c_doesnotexist', foreign):
        assert_problem(api.get(f'/api/contacts/{record_id}/duplicates', status=404), 404)


def test_an_unsaved_contact_gets_its_candidates_and_nothing_is_written(api):
    acme = api.create('companies', name='Acme')['id']
    ada, _ = contacts(
        api,
        {'first_name': 'Ada', 'last_name': 'Lovelace', 'company_id': acme, 'email': 'ada@x.org'},
        {'last_name': 'Else'},
    )
    before = api.get('/api/contacts').headers['Content-Range']
    resp = api.post(GROUPS, {'firstName': 'ADA', 'last_name': 'Lovelace', 'email': 'Ada@X.org'}, status=200)
    assert [(c['record']['id'], c['reasons']) for c in resp.json] == [(ada, ['same email', 'same name'])]
    assert resp.headers['Content-Range'] == 'duplicates 0-0/1'
    assert api.get('/api/contacts').headers['Content-Range'] == before
    # a record read back and sent whole is not its own duplicate
    record = api.get(f'/api/contacts/{ada}').json
    assert api.post(GROUPS, record, status=200).json == []


def test_an_unsaved_body_is_checked_like_an_update(api):
    assert_problem(api.post(GROUPS, {'emial': 'x@y.org'}, status=400), 400, field='emial')
    assert_problem(api.post(GROUPS, {'email': 42}, status=400), 400, field='email')
    assert_problem(api.post(GROUPS, [{'email': 'x@y.org'}], status=400), 400)
    lenient = api.post(GROUPS, {'emial': 'x@y.org'}, status=200, headers={'Prefer': 'handling=lenient'})
    assert lenient.json == [] and lenient.headers['Preference-Applied'] == 'handling=lenient'


def test_a_non_administrator_may_look_for_duplicates(api, user_api):
    contacts(api, {'last_name': 'A', 'email': 'a@x.org'}, {'last_name': 'B', 'email': 'A@x.org'})
    assert len(groups(user_api)) == 1
    assert user_api.post(GROUPS, {'email': 'a@x.org'}, status=200).json


# -- what is left out ------------------------------------------------------------------------------


def test_archived_contacts_are_left_out(api):
    a, b, c = contacts(
        api,
        {'last_name': 'A', 'email': 'a@x.org'},
        {'last_name': 'B', 'email': 'A@x.org'},
        {'last_name': 'C', 'email': 'a@X.org'},
    )
    api.delete(f'/api/contacts/{c}')
    assert group_of(api, [a, b])
    api.delete(f'/api/contacts/{b}')
    assert groups(api) == []
    assert candidates(api, a) == []
    assert [x['record']['id'] for x in candidates(api, b)] == [a], 'an archived contact still gets its live candidates'


def test_another_organizations_contacts_never_appear(api, other_api):
    mine = contacts(api, {'first_name': 'Ada', 'last_name': 'King', 'email': 'ada@x.org'})
    theirs = contacts(
        other_api,
        {'first_name': 'Ada', 'last_name': 'King', 'email': 'ada@x.org'},
        {'first_name': 'Ada', 'last_name': 'King', 'email': 'ADA@x.org'},
    )
    assert groups(api) == []
    assert candidates(api, mine[0]) == []
    assert [c['record']['id'] for c in api.post(GROUPS, {'email': 'ada@x.org'}, status=200).json] == mine
    assert [g['ids'] for g in groups(other_api)] == [sorted(theirs)]


# -- routes ----------------------------------------------------------------------------------------


def test_duplicates_is_never_taken_for_a_record_id(api):
    record = api.create('contacts', last_name='Real')
    assert api.get(f'/api/contacts/{record["id"]}').json == record
    for method in ('put_json', 'patch_json', 'delete'):
        resp = getattr(api.app, method)(
            GROUPS, headers=api.headers, status=405, **({'params': {}} if method != 'delete' else {})
        )
        assert_problem(resp, 405)
        assert 'GET' in resp.headers['Allow']
    assert_problem(api.get('/api/deals/duplicates', status=404), 404)


def test_duplicates_need_a_token(anonymous):
    assert_problem(anonymous.get(GROUPS, status=401), 401)
    assert_problem(anonymous.post(GROUPS, {'email': 'a@x.org'}, status=401), 401)
    assert_problem(anonymous.get('/api/companies/comp_x/duplicates', status=401), 401)


def test_duplicates_is_not_a_route_name_a_custom_object_could_take():
    assert {'merge_contacts', 'merge_companies'} <= ROUTE_NAMES


# -- companies -------------------------------------------------------------------------------------


def companies(api, *bodies):
    return [c['id'] for c in api.post('/api/companies', list(bodies)).json]


def test_companies_with_the_same_domain_or_website_host_are_a_group(api):
    ids = companies(
        api,
        {'name': 'Initech', 'domain': 'initech.com'},
        {'name': 'Initrode', 'website': 'https://www.Initech.com/about'},
        {'name': 'Initech Europe', 'website': 'http://initech.com:8080'},
        {'name': 'Page', 'website': 'https://www.linkedin.com/company/initech'},
        {'name': 'Page 2', 'website': 'https://www.linkedin.com/company/other'},
    )
    group = group_of(api, ids[:3], COMPANY_GROUPS)
    assert group['reasons'] == ['same domain'] and group['score'] == 0.9


def test_companies_with_the_same_name_but_their_legal_suffix_are_a_group(api):
    ids = companies(
        api, {'name': 'Globex Corporation'}, {'name': 'GLOBEX, Inc.'}, {'name': 'Globex GmbH'}, {'name': 'Globex Labs'}
    )
    group = group_of(api, ids[:3], COMPANY_GROUPS)
    assert group['reasons'] == ['same name'] and group['score'] == 0.7


def test_a_companys_candidates_and_an_unsaved_companys(api, other_api):
    acme, same, _ = companies(
        api,
        {'name': 'Acme Inc', 'domain': 'acme.com'},
        {'name': 'ACME Ltd', 'website': 'www.acme.com'},
        {'name': 'Zenith'},
    )
    other_api.create('companies', name='Acme', domain='acme.com')
    assert [(c['record']['id'], c['score'], c['reasons']) for c in candidates(api, acme, '/api/companies')] == [
        (same, 0.97, ['same domain', 'same name'])
    ]
    unsaved = api.post(COMPANY_GROUPS, {'name': 'acme s.a.'}, status=200).json
    assert [(c['record']['id'], c['reasons']) for c in unsaved] == [(acme, ['same name']), (same, ['same name'])]
    assert_problem(api.get('/api/companies/comp_nope/duplicates', status=404), 404)


def test_archived_companies_are_left_out(api):
    a, b = companies(api, {'name': 'Acme'}, {'name': 'Acme Inc'})
    assert group_of(api, [a, b], COMPANY_GROUPS)
    api.delete(f'/api/companies/{b}')
    assert groups(api, COMPANY_GROUPS) == []


# -- the garbage collector's pause -------------------------------------------------------------------


def test_finding_duplicates_leaves_the_garbage_collector_as_it_found_it(api):
    """The collector is off while records are filed (see duplicates.collector_paused), then as it was."""
    api.create('contacts', first_name='Ada', last_name='Lovelace', email='ada@example.com')
    twin = api.create('contacts', first_name='ADA', last_name='Lovelace', email='Ada@Example.com')
    assert len(api.get(GROUPS).json) == 1 and gc.isenabled()
    gc.disable()
    try:
        api.get(f'/api/contacts/{twin["id"]}/duplicates')
        assert not gc.isenabled(), 'a collector someone else turned off stays off'
    finally:
        gc.enable()


def test_concurrent_pauses_turn_the_collector_back_on_when_the_last_ends():
    first, second = duplicates.collector_paused(), duplicates.collector_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled(), 'the second is still filing'
    second.__exit__(None, None, None)
    assert gc.isenabled()
