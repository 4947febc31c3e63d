"""A write transaction is all or nothing however its statements travel (PostgreSQL sends a statement whose answer
nobody reads, `Tx.later`, with the next one or with COMMIT), and a write's references are checked in one
statement that still names every field that refers to nothing."""
import pytest

from crmapi.errors import Conflict

from conftest import assert_problem


def sql(database, text):
    return text if database.name == 'sqlite' else text.replace('?', '%s')


def organization_names(database, org_id):
    with database.transaction() as tx:
        return [name for (name,) in tx.rows(sql(database, 'SELECT name FROM organizations WHERE id = ?'), [org_id])]


def rename(database, org_id, name):
    return sql(database, 'UPDATE organizations SET name = ? WHERE id = ?'), [name, org_id]


def test_a_statement_sent_later_that_fails_undoes_the_whole_write_and_the_connection_serves_the_next(api, database):
    before = organization_names(database, api.org_id)
    with pytest.raises(Conflict):
        with database.transaction(write=True) as tx:
            tx.execute(*rename(database, api.org_id, 'Renamed'))
            tx.later(sql(database, 'INSERT INTO organizations (id, name, created_at) SELECT id, name, created_at '
                                   'FROM organizations WHERE id = ?'), [api.org_id])   # a duplicate key
    assert organization_names(database, api.org_id) == before
    with database.transaction(write=True) as tx:
        tx.later(*rename(database, api.org_id, 'Later'))
    assert organization_names(database, api.org_id) == ['Later'], 'a write of later statements only commits them'


def test_an_error_raised_after_a_later_statement_discards_it(api, database):
    before = organization_names(database, api.org_id)
    with pytest.raises(RuntimeError):
        with database.transaction(write=True) as tx:
            tx.later(*rename(database, api.org_id, 'Never'))
            raise RuntimeError('the write fails before it is sent')
    assert organization_names(database, api.org_id) == before


def test_a_record_with_several_dangling_references_names_each_field(api):
    contact = api.create('contacts', first_name='Ada')
    body = assert_problem(api.post('/api/deals', {'name': 'Deal', 'company_id': 'comp_missing',
                                                  'contact_ids': [contact['id'], 'c_missing']}, status=400),
                          400, field='company_id')
    assert [e['field'] for e in body['errors']] == ['company_id', 'contact_ids']
    deal = api.create('deals', name='Deal', contact_ids=[contact['id']])
    assert deal['contact_ids'] == [contact['id']]
