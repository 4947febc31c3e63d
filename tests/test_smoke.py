def test_create_then_list_contacts(api):
    created = api.create('contacts', first_name='Ada', last_name='Lovelace')
    assert created['id'].startswith('c_')
    resp = api.get('/api/contacts')
    assert resp.headers['Content-Range'] == 'contacts 0-0/1'
    assert [c['id'] for c in resp.json] == [created['id']]
