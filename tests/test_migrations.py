"""Versioned migrations: from empty they build exactly schema.sql; from an old version they keep the data."""

import json
import pathlib
import uuid

import psycopg
import pytest
import webtest

from crmapi import create_app
from crmapi import migrations
from crmapi import sqlbuild
from crmapi.accounts import Accounts
from crmapi.config import Settings
from crmapi.db import PostgresDatabase
from crmapi.db import SQLiteDatabase
from crmapi.errors import Unavailable
from crmapi.store import reindex_database
from conftest import postgres_url

SCHEMA_SQL = pathlib.Path(__file__).parent.parent / 'schema.sql'


def schema_sql(dialect):
    """schema.sql as `dialect` runs it: without the statements marked `-- <the other database> only`."""
    other = {'sqlite': 'postgresql', 'postgresql': 'sqlite'}[dialect]
    return '\n'.join(
        statement
        for statement in SQLiteDatabase.statements(SCHEMA_SQL.read_text())
        if f'-- {other} only' not in statement.splitlines()
    )


@pytest.fixture
def empty_db(backend, tmp_path):
    """A database with nothing in it, of each kind."""
    if backend == 'sqlite':
        db = SQLiteDatabase(str(tmp_path / 'empty.db'))
        yield db
        db.close()
        return
    base = postgres_url()
    name = 'mig_' + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE {name}')
    db = PostgresDatabase(base.rsplit('/', 1)[0] + '/' + name)
    yield db
    db.close()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE {name} WITH (FORCE)')


def structure(db):
    """Tables, views, columns and indexes, in a form that does not depend on how they were made."""
    with db.transaction() as tx:
        if db.name == 'postgresql':
            return structure_in(tx, 'public')
        objects = tx.rows(
            "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
        )
        columns = {
            name: tx.rows('SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_xinfo(?)', (name,))
            for kind, name, _ in objects
            if kind in ('table', 'view')
        }
        indexes = {
            name: tx.rows('SELECT name FROM pragma_index_info(?)', (name,))
            for kind, name, _ in objects
            if kind == 'index'
        }
        return objects, columns, indexes, tx.rows('SELECT version FROM schema_version')


def structure_in(tx, schema):
    tables = tx.rows(
        'SELECT table_type, table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1, 2', (schema,)
    )
    columns = tx.rows(
        'SELECT table_name, column_name, data_type, is_nullable, column_default, numeric_precision, '
        'numeric_scale FROM information_schema.columns WHERE table_schema = %s '
        'ORDER BY table_name, ordinal_position',
        (schema,),
    )
    indexes = tx.rows(
        'SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1, 2', (schema,)
    )
    version = tx.rows(f'SELECT version FROM {schema}.schema_version')
    # NOTE: PostgreSQL's migration twin indexes nullable sort columns NULLS FIRST (crmapi's list
    # order); schema.sql stays portable, so that spelling is the one difference allowed here.
    return (
        tables,
        columns,
        [(t, n, d.replace(f' {schema}.', ' ').replace(' NULLS FIRST', '')) for t, n, d in indexes],
        version,
    )


def test_migrating_from_empty_builds_exactly_schema_sql(empty_db, backend, tmp_path):
    migrations.migrate(empty_db)
    if backend == 'sqlite':
        reference = SQLiteDatabase(str(tmp_path / 'reference.db'))
        try:
            with reference.transaction(write=True) as tx:
                reference.run_script(tx, schema_sql('sqlite'))
            assert structure(empty_db) == structure(reference)
        finally:
            reference.close()
        return
    # PostgreSQL: run schema.sql in a scratch schema of the same database and compare the two.
    with empty_db.transaction(write=True) as tx:
        tx.execute('CREATE SCHEMA reference')
        # NOTE: public stays on the path: the pg_trgm extension (and its operator classes) lives there.
        tx.execute('SET LOCAL search_path TO reference, public')
        empty_db.run_script(tx, schema_sql('postgresql'))
        reference = structure_in(tx, 'reference')
    assert structure(empty_db) == reference


def test_migrating_twice_changes_nothing(empty_db):
    assert migrations.migrate(empty_db) == [v for v, _, _ in migrations.available(empty_db.name)]
    before = structure(empty_db)
    assert migrations.migrate(empty_db) == []
    assert structure(empty_db) == before


def test_data_written_under_the_first_version_survives(empty_db):
    migrations.migrate(empty_db, target=1)
    accounts = Accounts(empty_db)
    org = accounts.create_org('Old Co')
    token = accounts.create_token(org, 'old@example.com', admin=True)
    with empty_db.transaction(write=True) as tx:
        p = '?' if empty_db.name == 'sqlite' else '%s'
        tx.execute(
            f'INSERT INTO contacts (id, organization_id, first_name, tags, created_at, updated_at) '
            f"VALUES ({p}, {p}, {p}, '[]', {p}, {p})",
            ('c_old', org, 'Ada', '2020-01-01T00:00:00.000000Z', '2020-01-01T00:00:00.000000Z'),
        )
    migrations.migrate(empty_db)
    client = webtest.TestApp(create_app(Settings(database_url='injected'), db=empty_db))
    contact = client.get('/api/contacts/c_old', headers={'Authorization': f'Bearer {token}'}).json
    assert contact['first_name'] == 'Ada' and contact['created_at'] == '2020-01-01T00:00:00.000000Z'


def test_a_migration_step_runs_without_the_statement_timeout(backend, tmp_path):
    """A step may rewrite a whole table (0025 marked every contact with children: past the 15 s default at a
    million contacts on PostgreSQL), so under the migration lock no statement times out; the next transaction has
    its timeout again."""
    if backend == 'sqlite':
        db = SQLiteDatabase(str(tmp_path / 'timed.db'), statement_timeout_ms=50)
        slow = (
            'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT COUNT(*) FROM c'
        )
    else:
        db = PostgresDatabase(postgres_url(), statement_timeout_ms=50)
        slow = 'SELECT pg_sleep(0.3)'
    try:
        with db.transaction(write=True) as tx:
            db.lock_for_migration(tx)
            tx.execute(slow)
        with pytest.raises(Unavailable, match='took too long'), db.transaction(write=True) as tx:
            tx.execute(slow)
    finally:
        db.close()


def test_schema_sql_declares_the_newest_version():
    assert f'VALUES ({migrations.latest("sqlite")})' in SCHEMA_SQL.read_text()
    assert migrations.latest('sqlite') == migrations.latest('postgresql')


def test_indexes_a_migration_adds_to_an_analyzed_sqlite_database_get_statistics_too(tmp_path):
    """Without statistics of its own a new index looks near-unique to SQLite's planner: a contacts list
    would sort every row of the organization through it instead of walking the last_name index."""
    db = SQLiteDatabase(str(tmp_path / 'old.db'))
    migrations.migrate(db, target=20)
    org = Accounts(db).create_org('Old Co')
    stamp = '2020-01-01T00:00:00.000000Z'
    with db.transaction(write=True) as tx:
        for i in range(400):
            tx.execute(
                'INSERT INTO contacts (id, organization_id, last_name, tags, created_at, updated_at) '
                "VALUES (?, ?, ?, '[]', ?, ?)",
                (f'c_{i:04d}', org, f'Name{i % 37}', stamp, stamp),
            )
        tx.execute('ANALYZE')
    lines = []
    migrations.migrate(db, log=lines.append)
    with db.transaction() as tx:
        plan = tx.rows(
            'EXPLAIN QUERY PLAN SELECT id FROM contacts WHERE organization_id = ? AND archived_at IS NULL '
            'ORDER BY last_name, id LIMIT 25',
            (org,),
        )
    db.close()
    assert 'analyzed contacts_org_company_newest' in lines
    assert not any('TEMP B-TREE' in row[-1] for row in plan), plan


def writing_as_before_29(monkeypatch):
    """Search rows written as the store wrote them before migration 0029 (PostgreSQL: without `prefixes`), until
    monkeypatch.undo()."""
    for module in (sqlbuild, sqlbuild.search_rows):  # NOTE: the store's name for it, and its statements'
        monkeypatch.setattr(module, 'search_row', lambda d: sqlbuild.SEARCH_ROW)


def test_records_found_by_search_before_migration_22_are_found_the_same_after_it(empty_db, monkeypatch):
    """0022 rebuilds SQLite's trigram index without positions from the search rows already there: q (word starts)
    and the text operators (substrings) answer what they answered before."""
    migrations.migrate(empty_db, target=21)
    writing_as_before_29(monkeypatch)
    accounts = Accounts(empty_db)
    org = accounts.create_org('Old Co')
    headers = {'Authorization': f'Bearer {accounts.create_token(org, "old@example.com", admin=True)}'}
    client = webtest.TestApp(create_app(Settings(database_url='injected'), db=empty_db))
    people = [('Ada', 'Lovelace'), ('Adam', 'Smith'), ('Lola', 'Adler'), ('Bob', 'Smithers')]
    # NOTE: written around the API and indexed by `reindex` (search rows as the API writes them): today's write path
    # needs the counter slots and change ticks of migration 0024, which a database at 21 does not have yet
    ids = {first: f'c_{first.lower()}' for first, _ in people}
    with empty_db.transaction(write=True) as tx:
        p = '?' if empty_db.name == 'sqlite' else '%s'
        for first, last in people:
            tx.execute(
                f'INSERT INTO contacts (id, organization_id, first_name, last_name, tags, created_at, updated_at) '
                f"VALUES ({p}, {p}, {p}, {p}, '[]', {p}, {p})",
                (ids[first], org, first, last, '2020-01-01T00:00:00.000000Z', '2020-01-01T00:00:00.000000Z'),
            )
    reindex_database(empty_db, [org])
    monkeypatch.undo()
    questions = [
        {'filter': '{"q": "ad"}'},  # a word start: Ada, Adam, Adler, not Lovelace's "ad" inside a word
        {'filter': '{"q": "lo ad"}'},
        {'filters': '[{"field": "last_name", "op": "contains", "value": "mith"}]'},
        {'filters': '[{"field": "last_name", "op": "ends_with", "value": "ers"}]'},
    ]

    def answers():
        return [sorted(r['id'] for r in client.get('/api/contacts', q, headers=headers).json) for q in questions]

    before = answers() if empty_db.name == 'sqlite' else None  # NOTE: PostgreSQL's q reads 0029's prefixes
    migrations.migrate(empty_db)
    assert before in (None, answers())
    assert answers() == [
        sorted([ids['Ada'], ids['Adam'], ids['Lola']]),
        sorted([ids['Ada'], ids['Lola']]),
        sorted([ids['Adam'], ids['Bob']]),
        [ids['Bob']],
    ]
    client.post_json('/api/contacts', {'first_name': 'Adele', 'last_name': 'Mithras'}, headers=headers)
    assert [len(found) for found in answers()] == [4, 2, 3, 1], 'the rebuilt index keeps up with new writes'


def test_search_rows_written_before_migration_29_find_word_starts_of_every_length_after_it(empty_db, monkeypatch):
    """0029 gives PostgreSQL's search rows already there the starts of their words (`prefixes`), their company's name
    words on contacts included: q finds them by words of 1, 2, 3 and more characters, as it finds new rows."""
    migrations.migrate(empty_db, target=28)
    writing_as_before_29(monkeypatch)
    accounts = Accounts(empty_db)
    org = accounts.create_org('Old Co')
    headers = {'Authorization': f'Bearer {accounts.create_token(org, "old@example.com", admin=True)}'}
    stamp = '2020-01-01T00:00:00.000000Z'
    p = '?' if empty_db.name == 'sqlite' else '%s'
    with empty_db.transaction(write=True) as tx:
        tx.execute(
            f'INSERT INTO companies (id, organization_id, name, created_at, updated_at) VALUES ({p}, {p}, {p}, {p}, {p})',
            ('co_1', org, 'Zenith Labs', stamp, stamp),
        )
        for contact, first, last, email, company in [
            ('c_jo', 'Joan', 'Smith', 'jsmith@acme.io', 'co_1'),
            ('c_zo', 'Zoë', 'Ångström', None, None),
        ]:
            tx.execute(
                'INSERT INTO contacts (id, organization_id, first_name, last_name, email, company_id, tags, created_at, '
                f"updated_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, '[]', {p}, {p})",
                (contact, org, first, last, email, company, stamp, stamp),
            )
    reindex_database(empty_db, [org])
    monkeypatch.undo()
    migrations.migrate(empty_db)
    client = webtest.TestApp(create_app(Settings(database_url='injected'), db=empty_db))

    def found(q):
        return [r['id'] for r in client.get('/api/contacts', {'filter': json.dumps({'q': q})}, headers=headers).json]

    for q in ['j', 'jo sm', 'smi joa', 'SMITH j', 'z l', 'zen jo', 'jsm', 'acm io', 'joan zenith']:
        assert found(q) == ['c_jo'], q
    assert found('zo ang') == found('ÅNG') == ['c_zo']
    assert found('jo zo') == found('lab zo') == found('smithx j') == []
    client.put_json('/api/companies/co_1', {'name': 'Globex'}, headers=headers)
    assert found('gl jo') == ['c_jo'] and found('ze jo') == []


@pytest.mark.parametrize('skipped', [False, True], ids=['migrated', 'skipped'])
def test_contacts_with_children_before_migration_25_embed_them_after_it(empty_db, skipped, monkeypatch):
    """0025 sets children_seen from the children already there (notes, tasks, deals' contact_ids): a page, which
    asks only the contacts whose bit is set, embeds them. A database that skipped 0025 (numbered past it by a
    migration merged first) has no flags: its pages ask every contact, and embed the same."""
    migrations.migrate(empty_db, target=24)
    writing_as_before_29(monkeypatch)
    accounts = Accounts(empty_db)
    org = accounts.create_org('Old Co')
    headers = {'Authorization': f'Bearer {accounts.create_token(org, "old@example.com", admin=True)}'}
    monkeypatch.undo()
    stamp = '2020-01-01T00:00:00.000000Z'
    p = '?' if empty_db.name == 'sqlite' else '%s'
    with empty_db.transaction(write=True) as tx:
        for contact in ('c_ada', 'c_bob', 'c_cy'):
            tx.execute(
                f"INSERT INTO contacts (id, organization_id, tags, created_at, updated_at) VALUES ({p}, {p}, '[]', {p}, {p})",
                (contact, org, stamp, stamp),
            )
        tx.execute(
            f'INSERT INTO contact_notes (id, organization_id, contact_id, text, created_at, updated_at) '
            f'VALUES ({p}, {p}, {p}, {p}, {p}, {p})',
            ('cn_1', org, 'c_ada', 'old note', stamp, stamp),
        )
        tx.execute(
            f'INSERT INTO tasks (id, organization_id, contact_id, text, created_at, updated_at) '
            f'VALUES ({p}, {p}, {p}, {p}, {p}, {p})',
            ('t_1', org, 'c_bob', 'old task', stamp, stamp),
        )
        tx.execute(
            f'INSERT INTO deals (id, organization_id, name, contact_ids, created_at, updated_at) '
            f'VALUES ({p}, {p}, {p}, {p}, {p}, {p})',
            ('d_1', org, 'old deal', '["c_ada", "c_cy"]', stamp, stamp),
        )
        if skipped:
            tx.execute('UPDATE schema_version SET version = 99')
    migrations.migrate(empty_db)
    client = webtest.TestApp(create_app(Settings(database_url='injected'), db=empty_db))
    page = client.get('/api/contacts', {'embed': '["notes","tasks","deals"]'}, headers=headers).json
    totals = {c['id']: (c['notes']['total'], c['tasks']['total'], c['deals']['total']) for c in page}
    assert totals == {'c_ada': (1, 0, 1), 'c_bob': (0, 1, 0), 'c_cy': (0, 0, 1)}
