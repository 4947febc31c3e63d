"""The exact total of a filtered list stays exact when the same list is asked again after a write.

SQLite keeps a connection's counts while the database is unchanged (db._SQLiteReadTx.count): these tests ask the
same full page twice around writes of the same connection (this thread), of another connection (another thread)
and a write that rolls back. Every test runs on SQLite and on PostgreSQL (see conftest.py).
"""

import threading

CITY = [{'field': 'city', 'op': 'eq', 'value': 'London'}]


def londoners(api, n, city='London'):
    return [api.create('contacts', first_name='A', last_name=f'L{i:02}', city=city)['id'] for i in range(n)]


def total(api):
    resp = api.get('/api/contacts', {'range': [0, 1], 'filters': CITY, 'sort': 'last_name'})
    return int(resp.headers['Content-Range'].rpartition('/')[2])


def test_a_filtered_total_asked_again_counts_the_writes_made_in_between(api):
    ids = londoners(api, 4)
    assert total(api) == total(api) == 4
    londoners(api, 1)
    assert total(api) == 5
    api.delete(f'/api/contacts/{ids[0]}')
    assert total(api) == 4
    api.app.patch_json(f'/api/contacts/{ids[1]}', {'city': 'Paris'}, headers=api.headers)
    assert total(api) == 3


def test_a_filtered_total_asked_again_counts_the_writes_of_another_connection(api):
    londoners(api, 3)
    assert total(api) == 3
    writer = threading.Thread(target=londoners, args=(api, 2))  # its own connection (one per thread)
    writer.start()
    writer.join()
    assert total(api) == 5


def test_a_filtered_total_asked_again_after_a_write_that_rolled_back_is_unchanged(api):
    londoners(api, 3)
    assert total(api) == 3
    batch = [{'first_name': 'B', 'last_name': 'Ok', 'city': 'London'}, {'first_name': 'B', 'nope': 1}]
    api.post('/api/contacts', batch, status=400)
    assert total(api) == 3
    londoners(api, 1)
    assert total(api) == 4


class RolledBack(Exception):
    pass


def test_a_filtered_total_counted_inside_a_transaction_that_rolls_back_is_not_kept(api, database):
    londoners(api, 3)
    assert total(api) == 3
    try:
        with database.transaction(write=True):  # the requests below join it (same thread)
            londoners(api, 2)
            assert total(api) == 5
            raise RolledBack
    except RolledBack:
        pass
    assert total(api) == 3
