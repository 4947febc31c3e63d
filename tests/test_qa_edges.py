"""Edges a first user meets, found by an adversarial pass over the API (curl users, react-admin, embedders)."""

from conftest import assert_problem
from crmapi import app as application


def test_a_misspelt_on_conflict_is_a_400_and_creates_nothing(api):
    """`?on_confict=` (sic) ignored would create a second record where the client asked for an update."""
    api.post('/api/contacts?on_conflict=external_id', [{'external_id': 'crm-1', 'last_name': 'Lovelace'}])
    resp = api.post(
        '/api/contacts?on_confict=external_id', [{'external_id': 'crm-1', 'last_name': 'Byron'}], status=400
    )
    assert_problem(resp, 400, param='on_confict')
    csv = api.app.post(
        '/api/contacts?onConflict=external_id',
        'external_id,last_name\ncrm-1,Byron\n',
        headers={**api.headers, 'Content-Type': 'text/csv'},
        status=400,
    )
    assert_problem(csv, 400, param='onConflict')
    assert [c['last_name'] for c in api.list('contacts')] == ['Lovelace']


def test_writes_to_a_record_refuse_query_parameters_they_do_not_take(api):
    contact = api.create('contacts', last_name='Lovelace')
    path = f'/api/contacts/{contact["id"]}'
    assert_problem(api.put(f'{path}?dry_run=true', {'city': 'Oslo'}, status=400), 400, param='dry_run')
    assert_problem(api.app.patch_json(f'{path}?x=1', {'city': 'Oslo'}, headers=api.headers, status=400), 400, param='x')
    assert_problem(api.delete(f'{path}?force=true', status=400), 400, param='force')
    assert_problem(api.post(f'{path}/restore?now=1', status=400), 400, param='now')
    assert api.get(path).json == contact


def test_a_merge_refuses_query_parameters_and_merges_nothing(api):
    """`?dry_run=true` in the URL, not the body: ignoring it would merge for real."""
    a, b = api.create('contacts', last_name='A'), api.create('contacts', last_name='B')
    body = {'source_ids': [b['id']], 'target_id': a['id']}
    assert_problem(api.post('/api/merge_contacts?dry_run=true', body, status=400), 400, param='dry_run')
    assert len(api.list('contacts')) == 2


def test_a_record_get_names_an_unknown_parameter_and_still_embeds(api):
    company = api.create('companies', name='Acme')
    contact = api.create('contacts', last_name='Lovelace', company_id=company['id'])
    path = f'/api/contacts/{contact["id"]}'
    assert_problem(api.get(path, {'embd': 'company'}, status=400), 400, param='embd')
    assert api.app.head(f'{path}?embd=company', headers=api.headers, status=400)
    assert api.get(path, {'embed': 'company', 'embed_limit': '3'}).json['company']['name'] == 'Acme'
    assert_problem(api.get('/api/me', {'verbose': '1'}, status=400), 400, param='verbose')


def test_every_private_responder_declares_the_query_parameters_it_takes(wsgi_app):
    """A new route cannot ignore its query parameters by omission (crmapi.api.takes)."""
    undeclared = []

    def walk(nodes):
        for node in nodes:
            private = application.ACCESS.get(type(node.resource), application.PRIVATE) == application.PRIVATE
            for method, responder in (node.method_map or {}).items():
                # NOTE: Falcon fills in 405 and OPTIONS responders of its own; the resource's are its methods.
                if private and getattr(responder, '__self__', None) is node.resource:
                    if not hasattr(responder, 'query_params'):
                        undeclared.append((node.uri_template, method))
            walk(node.children)

    walk(wsgi_app.app._router._roots)
    assert undeclared == []


def test_an_estimated_total_is_never_below_the_rows_its_page_shows(api):
    """PostgreSQL's planner guessed 1 row for a filter across a reference: `contacts 0-1/1` beside two rows."""
    company = api.create('companies', name='Acme')
    for name in ('Ada', 'Bob', 'Cy'):
        api.create('contacts', first_name=name, company_id=company['id'])
    estimated = {'Prefer': 'count=estimated'}
    flt = {'company.name': 'Acme'}
    full = api.get('/api/contacts', {'filter': flt, 'range': [0, 1]}, headers=estimated)
    assert int(full.headers['Content-Range'].split('/')[1]) >= 2
    short = api.get('/api/contacts', {'filter': flt, 'range': [1, 9]}, headers=estimated)
    assert short.headers['Content-Range'] == 'contacts 1-2/3'


def test_a_reference_to_an_archived_custom_object_is_a_400_naming_the_field(api):
    """Not a 404 "No resource named 'projects'" for a POST to /api/milestones, which exists."""
    api.post(
        '/api/custom_objects',
        {'slug': 'projects', 'label': 'Projects', 'fields': [{'name': 'title', 'type': 'text'}]},
    )
    api.post(
        '/api/custom_objects',
        {
            'slug': 'milestones',
            'label': 'Milestones',
            'fields': [
                {'name': 'name', 'type': 'text'},
                {'name': 'project', 'type': 'reference', 'target': 'projects'},
            ],
        },
    )
    project = api.create('projects', title='Apollo')
    milestone = api.create('milestones', name='Launch', project=project['id'])
    api.delete('/api/custom_objects/projects')
    resp = api.post('/api/milestones', [{'name': 'Orbit'}, {'name': 'Moon', 'project': project['id']}], status=400)
    assert_problem(resp, 400, field='project', index=1)
    assert [m['name'] for m in api.list('milestones')] == ['Launch']
    other = api.create('milestones', name='Orbit')
    path = f'/api/milestones/{other["id"]}'
    assert_problem(api.put(path, {'project': project['id']}, status=400), 400, field='project')
    assert api.put(f'/api/milestones/{milestone["id"]}', {**milestone, 'name': 'Lift-off'}).json['name'] == 'Lift-off'
    assert api.put(f'/api/milestones/{milestone["id"]}', {'project': None}).json['project'] is None


def test_accept_weights_choose_between_json_and_an_export(api):
    """`q=0` means "not acceptable" (RFC 9110): a CSV named with it, or ranked below JSON, is not what was asked."""
    api.create('contacts', last_name='Lovelace')

    def kind(accept):
        return api.get('/api/contacts', headers={'Accept': accept}).content_type

    assert kind('text/csv;q=0, application/json') == 'application/json'
    assert kind('application/json, text/csv;q=0.5') == 'application/json'
    assert kind('application/json;q=0.5, text/csv') == 'text/csv'
    assert kind('text/csv;q=0.2, application/x-ndjson;q=0.9') == 'application/x-ndjson'
    assert kind('text/csv') == 'text/csv'


def test_a_q_with_a_nul_says_so(api):
    """It was "Filter 'q' must be a string", of a string."""
    for params in ({'filter': {'q': 'ada\x00'}}, {'filters': [{'field': 'q', 'op': 'eq', 'value': '\x00'}]}):
        resp = api.get('/api/contacts', params, status=400)
        body = assert_problem(resp, 400, field='q', param=next(iter(params)))
        assert 'NUL' in body['detail']


def test_a_nul_in_a_path_segment_names_nothing_on_both_databases(api):
    """PostgreSQL's driver refused the parameter (a 400 naming nothing) where SQLite answered 404."""
    for path, param in (
        ('/api/contacts/c_%00', 'id'),
        ('/api/contacts/c_%00/history', 'id'),
        ('/api/contacts/c_%00/duplicates', 'id'),
        ('/api/contacts%00', 'resource'),
        ('/api/schema/%00', 'table'),
        ('/api/custom_objects/%00', 'slug'),
    ):
        assert_problem(api.get(path, status=404), 404, param=param)
    assert_problem(api.put('/api/contacts/c_%00', {'city': 'Oslo'}, status=404), 404, param='id')
    assert_problem(api.delete('/api/%00/c_1', status=404), 404, param='resource')


def test_an_id_with_a_nul_in_a_body_is_a_400_naming_its_field(api):
    contact = api.create('contacts', last_name='Lovelace')
    bad = 'c_\x00'
    resp = api.app.patch_json('/api/contacts', [{'id': bad, 'city': 'Oslo'}], headers=api.headers, status=400)
    assert_problem(resp, 400, field='id', index=0)
    resp = api.app.delete(
        '/api/contacts?filter=%7B%22id%22%3A%5B%22c_%5Cu0000%22%5D%7D', headers=api.headers, status=400
    )
    assert_problem(resp, 400, param='filter', field='id')
    merge = {'source_ids': [bad], 'target_id': contact['id']}
    assert_problem(api.post('/api/merge_contacts', merge, status=400), 400, field='source_ids')
    assert_problem(
        api.post('/api/merge_contacts', {'loserId': contact['id'], 'winnerId': bad}, status=400), 400, field='winnerId'
    )
    assert_problem(api.post('/api/contacts/duplicates', {'id': bad}, status=400), 400, field='id')
    assert api.get(f'/api/contacts/{contact["id"]}').json == contact


def test_a_unique_value_taken_is_a_409_naming_the_field(api):
    """Both drivers name the key's columns; the 409 said only "the same unique value" before."""
    api.post(
        '/api/custom_objects',
        {'slug': 'badges', 'label': 'Badges', 'fields': [{'name': 'code', 'type': 'text', 'unique': True}]},
    )
    for resource, record, field in (
        ('tags', {'name': 'vip'}, 'name'),
        ('configuration', {'key': 'theme', 'value': 'dark'}, 'key'),
        ('crm_users', {'email': 'ada@example.com'}, 'email'),
        ('contacts', {'last_name': 'Lovelace', 'external_id': 'crm-1'}, 'external_id'),
        ('badges', {'code': 'gold'}, 'code'),
    ):
        api.post(f'/api/{resource}', record)
        assert_problem(api.post(f'/api/{resource}', record, status=409), 409, field=field)
        assert_problem(api.post(f'/api/{resource}', [record], status=409), 409, field=field)
        assert len(api.list(resource)) == (2 if resource == 'crm_users' else 1)


def test_a_webhook_url_with_spaces_or_control_characters_is_a_400(api):
    """They were stored as sent while deliveries went to the URL urlsplit made of them (or failed every time)."""
    for url in (
        ' https://93.184.216.34/h',
        'https://93.184.216.34/a b',
        'https://93.184.216.34/h\n',
        'https://93.18\t4.216.34/',
    ):
        resp = api.post('/api/webhooks', {'url': url, 'events': ['*']}, status=400)
        assert_problem(resp, 400, field='url')
    assert api.list('webhooks') == []
    assert api.post('/api/webhooks', {'url': 'https://93.184.216.34/h', 'events': ['*']}).json['url']
