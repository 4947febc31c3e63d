"""What operators rely on: health probes, request ids, the access log, Idempotency-Key, backups."""

import gc
import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import weakref

import pytest
import webtest

from crmapi import app as crm_app
from crmapi.db import PostgresDatabase
from crmapi.db import SQLiteDatabase
from conftest import assert_problem


def test_healthz_and_readyz_need_no_token(anonymous):
    assert anonymous.get('/healthz').json == {'status': 'ok'}
    assert anonymous.get('/readyz').json['status'] == 'ready'


def test_readyz_is_503_with_retry_after_when_the_database_is_gone(tmp_path):
    import webtest
    from crmapi import create_app
    from crmapi.cli import init_db
    from crmapi.config import Settings
    from crmapi.db import SQLiteDatabase

    db = SQLiteDatabase(str(tmp_path / 'gone.db'))
    init_db(db)
    client = webtest.TestApp(create_app(Settings(database_url='injected', access_log=False), db=db))
    with db.transaction(write=True) as tx:
        tx.execute('DROP TABLE schema_version')
    resp = client.get('/readyz', status=503)
    assert_problem(resp, 503)
    assert resp.headers['Retry-After']


def test_a_request_id_is_echoed_or_made(api):
    assert api.get('/api/tags', headers={'X-Request-ID': 'abc-123'}).headers['X-Request-ID'] == 'abc-123'
    made = api.get('/api/tags').headers['X-Request-ID']
    assert len(made) == 32
    assert api.get('/api/tags', headers={'X-Request-ID': 'bad id\x7f'}).headers['X-Request-ID'] != 'bad id\x7f'


def _in_a_forked_child(check):
    """check() run in a forked child of this process: its answer (a short string)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            answer = str(check())
        except BaseException as exc:  # noqa: BLE001 - any failure is the answer
            answer = f'error: {exc!r}'
        os.write(write, answer.encode()[:512])
        os._exit(0)
    os.close(write)
    try:
        return os.read(read, 512).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_made_request_ids_are_hex_and_differ_in_a_forked_worker_too(api):
    """Made ids are 32 hex digits from a generator that a forked worker reseeds: never its parent's sequence."""
    made = {api.get('/api/tags').headers['X-Request-ID'] for _ in range(3)}
    assert len(made) == 3 and all(len(m) == 32 and int(m, 16) >= 0 for m in made)
    child = _in_a_forked_child(crm_app.new_request_id)
    assert len(child) == 32 and child != crm_app.new_request_id()


def test_a_forked_worker_reads_through_connections_of_its_own(backend, database, api):
    """A database connection never crosses a fork (SQLite forbids it; two processes on one PostgreSQL socket
    would interleave): the child opens its own, and its reads work."""

    def own():
        return database.connection() if backend == 'sqlite' else database.pool()

    api.get('/api/contacts')
    parents = own()

    def check():
        return own() is not parents and api.get('/api/contacts').status_int == 200

    assert _in_a_forked_child(check) == 'True'
    assert own() is parents


def test_a_connection_that_answered_gets_is_freed_once_closed(backend, database):
    """A get's statement reuses its connection's cursor (Database.statement); closing the database (as a pool does
    with a connection past its lifetime) still frees the connection, and the cursor with it."""
    db = SQLiteDatabase(database.path) if backend == 'sqlite' else PostgresDatabase(database.url)
    for _ in range(2):
        with db.statement() as tx:
            assert tx.one('SELECT 1')[0] == 1
    connection = weakref.ref(tx.cursor.connection)
    db.close()
    del tx
    gc.collect()
    assert connection() is None


def test_sqlite_writers_of_every_process_queue_on_one_lock_file(tmp_path):
    """SQLite: a write waits while another process holds `<database>-writer`, and goes on the moment it is let go,
    instead of polling SQLite's lock with back-off (which let one busy process starve another's writers)."""
    import fcntl
    import threading

    from crmapi.db import SQLiteDatabase

    db = SQLiteDatabase(str(tmp_path / 'crm.db'))
    with db.transaction(write=True) as tx:
        tx.execute('CREATE TABLE t (x INTEGER)', [])
    other = os.open(f'{db.path}-writer', os.O_RDWR)  # an open file of its own, as another process has
    fcntl.flock(other, fcntl.LOCK_EX)
    done = threading.Event()

    def write():
        with db.transaction(write=True) as tx:
            tx.execute('INSERT INTO t (x) VALUES (1)', [])
        done.set()

    writer = threading.Thread(target=write)
    try:
        writer.start()
        assert not done.wait(0.3), 'the write waited for the other process'
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    assert done.wait(5), 'and went on once it let go'
    writer.join()
    with db.transaction() as tx:
        assert tx.one('SELECT COUNT(*) FROM t', []) == (1,)


def _synced_files(monkeypatch, fail=0):
    """Record the files crmapi fdatasyncs ([path]); the first `fail` syncs raise an I/O error instead."""
    from crmapi.db import sqlite as crm_db

    synced, real = [], os.fdatasync

    def fdatasync(fd):
        if len(synced) < fail:
            synced.append(None)
            raise OSError(5, 'Input/output error')
        synced.append(os.readlink(f'/proc/self/fd/{fd}'))
        real(fd)

    monkeypatch.setattr(crm_db.os, 'fdatasync', fdatasync)
    return synced


def _table_db(tmp_path, synchronous='FULL'):
    db = SQLiteDatabase(str(tmp_path / 'crm.db'), synchronous=synchronous)
    with db.transaction(write=True) as tx:
        tx.execute('CREATE TABLE t (x INTEGER)', [])
    return db


def test_a_sqlite_write_at_full_syncs_its_wal_after_the_writer_lock_and_before_it_returns(tmp_path, monkeypatch):
    """SQLite at synchronous=FULL (the default): a write transaction commits at NORMAL and syncs the WAL itself,
    before it returns; reads, and transactions that fail, sync nothing, and every other transaction stays at FULL."""
    db = _table_db(tmp_path)
    synced = _synced_files(monkeypatch)
    with db.transaction(write=True) as tx:
        assert tx.one('PRAGMA synchronous', []) == (1,)  # NORMAL inside: SQLite does not sync at COMMIT
        tx.execute('INSERT INTO t (x) VALUES (1)', [])
    assert synced == [os.path.realpath(db.path) + '-wal']
    with pytest.raises(ZeroDivisionError), db.transaction(write=True) as tx:
        tx.execute('INSERT INTO t (x) VALUES (2)', [])
        1 / 0
    with db.transaction() as tx:
        assert tx.one('PRAGMA synchronous', []) == (2,)  # FULL: SQLite syncs what such a transaction writes
        assert tx.one('SELECT COUNT(*) FROM t', []) == (1,)
    assert len(synced) == 1


def test_sqlite_at_normal_syncs_nothing_itself(tmp_path, monkeypatch):
    db = _table_db(tmp_path, synchronous='NORMAL')
    synced = _synced_files(monkeypatch)
    with db.transaction(write=True) as tx:
        tx.execute('INSERT INTO t (x) VALUES (1)', [])
    assert synced == []


def test_a_sqlite_write_whose_sync_fails_is_an_error_and_the_next_write_syncs_again(tmp_path, monkeypatch):
    db = _table_db(tmp_path)
    synced = _synced_files(monkeypatch, fail=1)
    with pytest.raises(OSError), db.transaction(write=True) as tx:
        tx.execute('INSERT INTO t (x) VALUES (1)', [])
    with db.transaction(write=True) as tx:
        tx.execute('INSERT INTO t (x) VALUES (2)', [])
    assert synced == [None, os.path.realpath(db.path) + '-wal']


def test_concurrent_sqlite_writes_share_wal_syncs_each_returning_after_one_begun_after_its_commit(
    tmp_path, monkeypatch
):
    """Writers that commit while a sync runs share the next one (fewer syncs than writes), and no write returns
    before a sync that began after its COMMIT has ended: acknowledged means on disk, as under FULL."""
    import threading
    import time

    from crmapi.db import sqlite as crm_db

    db = _table_db(tmp_path)
    lock, committed, synced, late = threading.Lock(), set(), [], []
    real, commit = os.fdatasync, crm_db._WalSync.committed

    def fdatasync(fd):
        with lock:
            covered = set(committed)  # the writes whose COMMIT had returned when this sync began
        time.sleep(0.02)
        real(fd)
        with lock:
            synced.append(covered)

    def committed_now(self):
        ticket = commit(self)
        with lock:
            committed.add(ticket)
        write.ticket = ticket
        return ticket

    write = threading.local()
    monkeypatch.setattr(crm_db.os, 'fdatasync', fdatasync)
    monkeypatch.setattr(crm_db._WalSync, 'committed', committed_now)

    def writes(n):
        for k in range(5):
            with db.transaction(write=True) as tx:
                tx.execute('INSERT INTO t (x) VALUES (?)', [n * 10 + k])
            with lock:
                if not any(write.ticket in covered for covered in synced):
                    late.append(write.ticket)

    threads = [threading.Thread(target=writes, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert late == []
    assert len(synced) < 20
    with db.transaction() as tx:
        assert tx.one('SELECT COUNT(*) FROM t', []) == (20,)


def test_the_access_log_is_json_lines_without_tokens(api):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    crm_app.access_log.addHandler(handler)
    crm_app.access_log.setLevel(logging.INFO)
    try:
        api.get('/api/contacts', {'filter': {'q': 'secret-search'}}, headers={'X-Request-ID': 'r1'})
        api.get('/api/nope', status=404)
    finally:
        crm_app.access_log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(entry['method'], entry['path'], entry['status']) for entry in lines] == [
        ('GET', '/api/contacts', 200),
        ('GET', '/api/nope', 404),
    ]
    assert lines[0]['organization'] == api.org_id and lines[0]['request_id'] == 'r1'
    assert lines[0]['duration_ms'] >= 0
    assert api.token not in stream.getvalue() and 'secret-search' not in stream.getvalue()


def test_the_access_log_is_ascii_json_whatever_the_path(api):
    """Each line is compact JSON escaped to ASCII: a path with accents or a lone surrogate (which orjson refuses)
    is logged as it came, and the line is written as the app's handler writes it, the message alone."""
    stream = io.StringIO()
    handler = crm_app.AccessLogLines(stream)
    crm_app.access_log.addHandler(handler)
    crm_app.access_log.setLevel(logging.INFO)
    try:
        api.get('/api/caf%C3%A9s', status=404)
        api.get('/api/%ED%A0%80', status=404)
        api.get('/api/contacts')
    finally:
        crm_app.access_log.removeHandler(handler)
    text = stream.getvalue()
    assert text.isascii() and text.endswith('\n')
    lines = [json.loads(line) for line in text.splitlines()]
    assert [entry['status'] for entry in lines] == [404, 404, 200]
    assert lines[0]['path'] == '/api/caf\u00e9s'
    assert lines[2]['organization'] == api.org_id and len(lines[2]['request_id']) == 32
    assert all(line.startswith('{"time":') and ', ' not in line for line in text.splitlines())


def test_the_access_log_writes_each_line_to_its_file_as_access_line_makes_it(api, tmp_path):
    """To a stream with a file descriptor (a server's stderr), each line goes out in one write: the compact ASCII
    JSON that access_line makes, the escaped one for a path orjson cannot write as ASCII."""
    path = tmp_path / 'access.log'
    with open(path, 'w') as stream:
        handler = crm_app.AccessLogLines(stream)
        crm_app.access_log.addHandler(handler)
        crm_app.access_log.setLevel(logging.INFO)
        try:
            api.get('/api/contacts', headers={'X-Request-ID': 'r1'})
            api.get('/api/caf%C3%A9s', status=404)
            api.get('/api/%ED%A0%80', status=404)
        finally:
            crm_app.access_log.removeHandler(handler)
    data = path.read_bytes()
    assert data.isascii() and data.endswith(b'\n')
    lines = data.decode().splitlines()
    entries = [json.loads(line) for line in lines]
    assert lines == [crm_app.access_line(entry) for entry in entries]
    assert [entry['status'] for entry in entries] == [200, 404, 404]
    assert [entry['path'] for entry in entries[:2]] == ['/api/contacts', '/api/caf\u00e9s']
    assert entries[0]['request_id'] == 'r1' and entries[0]['organization'] == api.org_id


def test_the_access_log_gives_durations_in_milliseconds_to_two_decimals(monkeypatch):
    monkeypatch.setattr(crm_app.time, 'perf_counter', lambda: 102.0123456)
    assert crm_app.duration_ms(102.0) == 12.35
    assert crm_app.duration_ms(102.0123) == 0.05 and crm_app.duration_ms(102.01234) == 0.01
    assert crm_app.duration_ms(102.0123456) == 0.0 and crm_app.duration_ms(2.0123456) == 100000.0


def test_a_request_refused_before_any_middleware_still_has_its_id_and_log_line(api):
    """Falcon refuses a method it reserves before the middleware's first hook: the answer still carries a request
    id, CORS headers and a problem, and is logged without an organization."""
    stream = io.StringIO()
    handler = crm_app.AccessLogLines(stream)
    crm_app.access_log.addHandler(handler)
    crm_app.access_log.setLevel(logging.INFO)
    try:
        # NOTE: without WebTest's lint, which warns of a method PEP 3333 does not name
        client = webtest.TestApp(api.app.app, lint=False)
        resp = client.request('/api/contacts', method='WEBSOCKET', headers=api.headers, status=400)
    finally:
        crm_app.access_log.removeHandler(handler)
    assert_problem(resp, 400)
    assert len(resp.headers['X-Request-ID']) == 32 and resp.headers['Access-Control-Expose-Headers']
    (entry,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (entry['method'], entry['status'], entry['organization']) == ('WEBSOCKET', 400, None)
    assert entry['request_id'] == resp.headers['X-Request-ID']


def test_a_granian_worker_imports_neither_gunicorn_nor_the_openapi_generator():
    """What a worker of `crmapi serve` loads: gunicorn is the other server's, and the OpenAPI document's
    generator is imported at the first request for the document (each costs a worker ~1-3 MB of memory)."""
    code = (
        'import sys, crmapi.serving_granian, crmapi.app; '
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'gunicorn'}), 'crmapi.openapi' in sys.modules)"
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ['[]', 'False']


def test_a_retried_create_with_the_same_idempotency_key_writes_once(api):
    first = api.post('/api/contacts', {'first_name': 'Ada'}, headers={'Idempotency-Key': 'k-1'})
    again = api.post('/api/contacts', {'first_name': 'Ada'}, headers={'Idempotency-Key': 'k-1'})
    assert again.json == first.json and again.headers['Location'] == first.headers['Location']
    assert again.headers['Idempotent-Replayed'] == 'true'
    assert len(api.list('contacts')) == 1
    other = api.post('/api/contacts', {'first_name': 'Ada'}, headers={'Idempotency-Key': 'k-2'})
    assert other.json['id'] != first.json['id']


def test_an_idempotency_key_reused_for_another_body_is_422(api):
    api.post('/api/contacts', {'first_name': 'Ada'}, headers={'Idempotency-Key': 'k-1'})
    resp = api.post('/api/contacts', {'first_name': 'Bob'}, headers={'Idempotency-Key': 'k-1'}, status=422)
    assert_problem(resp, 422, param='Idempotency-Key')


def test_idempotency_keys_belong_to_one_organization(api, other_api):
    mine = api.post('/api/contacts', {'first_name': 'Ada'}, headers={'Idempotency-Key': 'shared'})
    theirs = other_api.post('/api/contacts', {'first_name': 'Ada'}, headers={'Idempotency-Key': 'shared'})
    assert theirs.json['id'] != mine.json['id'] and 'Idempotent-Replayed' not in theirs.headers


def test_a_failed_request_does_not_use_up_its_key(api):
    api.post('/api/companies', {}, headers={'Idempotency-Key': 'k-3'}, status=400)
    assert api.post('/api/companies', {}, headers={'Idempotency-Key': 'k-3'}, status=400)
    assert api.post('/api/companies', {'name': 'Acme'}, headers={'Idempotency-Key': 'k-4'}).json['name'] == 'Acme'


def test_a_retried_merge_with_the_same_key_replays_the_answer(api):
    keep, lose = api.create('contacts', first_name='A'), api.create('contacts', last_name='B')
    body = {'source_ids': [lose['id']], 'target_id': keep['id']}
    first = api.post('/api/merge_contacts', body, headers={'Idempotency-Key': 'm-1'}, status=200)
    again = api.post('/api/merge_contacts', body, headers={'Idempotency-Key': 'm-1'}, status=200)
    assert again.json == first.json and first.json['last_name'] == 'B'


@pytest.mark.parametrize('key', ['', 'x' * 201, 'with space'])
def test_a_malformed_idempotency_key_is_400(api, key):
    assert_problem(
        api.post('/api/tags', {'name': 't'}, headers={'Idempotency-Key': key}, status=400), 400, param='Idempotency-Key'
    )


def test_backup_copies_a_live_sqlite_database(tmp_path):
    url = f'sqlite:///{tmp_path}/live.db'
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, '-m', 'crmapi', '--database', url, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    run('demo')
    live = sqlite3.connect(tmp_path / 'live.db')
    live.execute('BEGIN')
    live.execute("UPDATE contacts SET city = 'Mid-transaction'")  # an open write transaction while backing up
    run('backup', str(tmp_path / 'copy.db'))
    live.rollback()
    copy = sqlite3.connect(tmp_path / 'copy.db')
    assert copy.execute('PRAGMA integrity_check').fetchone() == ('ok',)
    assert copy.execute('SELECT COUNT(*) FROM contacts').fetchone() == (42,)
    assert copy.execute("SELECT COUNT(*) FROM contacts WHERE city = 'Mid-transaction'").fetchone() == (0,)


@pytest.mark.slow
def test_a_database_too_slow_to_answer_is_503_with_retry_after(backend, database, api):
    """PostgreSQL: a query over statement_timeout. SQLite: a write that cannot get the lock within
    the busy timeout. Either is a 503 with Retry-After, never a hang or a 500."""
    import webtest
    from crmapi import create_app
    from crmapi.config import Settings
    from crmapi.db import PostgresDatabase
    from crmapi.db import SQLiteDatabase

    if backend == 'postgresql':
        with database.transaction(write=True) as tx:
            tx.execute(
                'INSERT INTO contacts (id, organization_id, last_name, tags, created_at, updated_at) '
                "SELECT 'c_slow' || g, %s, 'n' || g, '[]', now(), now() FROM generate_series(1, 50000) g",
                (api.org_id,),
            )
        db = PostgresDatabase(database.url)
        settings = Settings(database_url='injected', access_log=False, statement_timeout_ms=1)
        blocker = None
    else:
        db = SQLiteDatabase(database.path, busy_timeout_ms=100)
        settings = Settings(database_url='injected', access_log=False)
        blocker = sqlite3.connect(database.path, isolation_level=None)
        blocker.execute('BEGIN IMMEDIATE')  # another process holds the write lock
    try:
        app = webtest.TestApp(create_app(settings, db=db))
        if blocker is None:
            resp = app.get(
                '/api/contacts',
                {'filters': '[{"field":"last_name","op":"contains","value":"zz"}]'},
                headers=api.headers,
                status=503,
            )
        else:
            resp = app.post_json('/api/tags', {'name': 'blocked'}, headers=api.headers, status=503)
        assert_problem(resp, 503)
        assert resp.headers['Retry-After']
    finally:
        if blocker is not None:
            blocker.rollback()
            blocker.close()
        db.close()
