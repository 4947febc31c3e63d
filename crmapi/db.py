"""Connections to SQLite and PostgreSQL behind one small interface.

`db.transaction(write=...)` yields a Tx with `rows`, `one` and `execute`; driver errors become
CrmErrors here, so nothing above this module knows which driver runs. Connections are opened
lazily in the process that uses them (never inherited across gunicorn's fork).

PostgreSQL may have read replicas: a read outside any write transaction, in a request that allows it
(`begin_request` / `allow_replica_reads`), goes to a replica caught up enough; everything else goes to
the primary. With `pgbouncer`, no session state is kept (PgBouncer's transaction pooling).
"""

import collections
import contextlib
import datetime as dt
import fcntl
import functools
import itertools
import math
import os
import re

import orjson
import sqlite3
import threading
import time
import weakref
from decimal import Decimal
from urllib.parse import unquote
from urllib.parse import urlparse

from . import sqlbuild
from . import values
from .errors import BadRequest
from .errors import Conflict
from .errors import CrmError
from .errors import InvalidValue
from .errors import PayloadTooLarge
from .errors import Unavailable


class Tx:
    """One transaction's cursor: the only way the store talks to a database."""

    kept = None  # the KeptCounts of this transaction's totals, or None: counted every time

    def __init__(self, cursor):
        self.cursor = cursor

    def rows(self, sql, params=()):
        self.cursor.execute(sql, params)
        return self.cursor.fetchall()

    def one(self, sql, params=()):
        """The first row or None; the statement always runs to completion (SQLite's RETURNING needs it)."""
        self.cursor.execute(sql, params)
        rows = self.cursor.fetchall()
        return rows[0] if rows else None

    def count(self, sql, params=()):
        """The one number a COUNT statement answers: kept while the data is unchanged (KeptCounts)."""
        if self.kept is None:
            return self.one(sql, params)[0]
        return self.kept.total(self, sql, params)

    def kept_count(self, sql, params=()):
        """What `count` would answer without counting, or None: no exact total of it is kept."""
        return None if self.kept is None else self.kept.held(self, sql, params)

    # NOTE: what an engine's Tx tells KeptCounts (SQLite: _SQLiteTx, PostgreSQL: _PostgresCounts).
    def counted_on(self):
        """The server the statements run on (part of a kept total's key): None for the one database."""
        return None

    def data_version(self):
        """The version of the data this transaction sees now, or None when its totals must not be kept."""
        raise NotImplementedError

    def versioned_count(self, sql, params):
        """(total, the data_version it is exact for)."""
        raise NotImplementedError

    def execute(self, sql, params=()):
        self.cursor.execute(sql, params)
        if self.cursor.description is not None:
            self.cursor.fetchall()  # run a RETURNING statement to completion
        return self.cursor.rowcount

    def write_rows(self, sql, runs):
        """Run a statement of sqlbuild.build_insert_rows (no RETURNING: the caller knows what it wrote) with each
        parameter tuple of `runs`; to a COPY, each is a row."""
        if sql.startswith('COPY '):
            self.copy(sql, runs)
        elif len(runs) == 1:
            self.execute(sql, runs[0])
        else:
            self.cursor.executemany(sql, runs)

    def copy(self, sql, rows):
        """Send `rows` (tuples) to a `COPY … FROM STDIN` statement: PostgreSQL's bulk load."""
        with self.cursor.copy(sql, writer=self._copy_writer()) as copy:
            for row in rows:
                copy.write_row(row)

    def _copy_writer(self):
        """The writer of a COPY: None, psycopg's own (it waits for the outcome at the end of the data)."""
        return None

    def settled(self):
        """A block after which every statement's outcome is known (see _PostgresTx: here, always)."""
        return contextlib.nullcontext(self)


# The version of the data a PostgreSQL statement sees: its snapshot, unless its transaction has written (an xid).
PG_DATA_VERSION = 'CASE WHEN pg_current_xact_id_if_assigned() IS NULL THEN pg_current_snapshot()::text END'
PG_VERSION = f'SELECT {PG_DATA_VERSION}'


@functools.lru_cache(maxsize=128)
def _versioned(sql):
    """A COUNT statement that also answers the version of the data it counted (the same statement's snapshot)."""
    return f'SELECT ({sql}), {PG_DATA_VERSION}'


class _PostgresCounts:
    """The PostgreSQL side of KeptCounts: a transaction's data version is its statement's snapshot.

    NOTE: why equal snapshots mean equal data. A snapshot (`pg_current_snapshot()`, xmin:xmax:xip) sees exactly
    the transactions below xmax that are not in xip; xmax is the latest completed xid + 1. Any commit either
    completes an xid at or above xmax (xmax moves) or one listed in xip (it leaves the list), so two snapshots with
    the same text see the same committed transactions; and a server's snapshots only move forward, so when the one
    read now equals the one a total was counted at, nothing committed since: the total is exact. xids are the whole
    server's, so a commit to any table (of any database of the server) forgets every total: never a stale one,
    sometimes a recount. A transaction's own xid is not in its snapshot, so once it has written (it has an xid) its
    version is None and nothing is kept or reused. The version is a value, not session state: PgBouncer's
    transaction pooling changes nothing. A total is kept per server (the primary, each replica): a request reads
    one server (PostgresDatabase._read_replica).
    """

    def counted_on(self):
        replica = getattr(self, 'replica', None)
        return None if replica is None else replica.url

    def data_version(self):
        return self.one(PG_VERSION)[0]

    def versioned_count(self, sql, params):
        """One statement: the count and the snapshot it was taken at (no round trip for the version)."""
        return self.one(_versioned(sql), params)


@functools.lru_cache(maxsize=512)
def _prepare(sql):
    """psycopg's `prepare` for a statement: None (prepared after a few runs, psycopg's choice), or False (never) for
    one that matches a text pattern or a q's words (a tsquery, `@@`).

    NOTE: PostgreSQL plans a prepared statement generically from its 6th run when the generic plan's estimate is no
    worse, and a generic plan cannot see a LIKE pattern: the walk of contains "mith" in 100k contacts took 1.3 ms
    with its custom plan and 72 ms from the 6th run on one connection (bench/RESULTS.md). Nor the words of a q: the
    page of q "jo smi" at 1M contacts went from 30-60 ms to 250-500 ms. Planning such a statement every time costs
    far less than that.
    """
    return False if ' LIKE ' in sql or ' @@ ' in sql else None


class _Preparing:
    """A psycopg cursor whose statements are prepared as `_prepare` says, unless the caller says otherwise."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        if prepare is None and type(query) is str:
            prepare = _prepare(query)
        return super().execute(query, params, prepare=prepare, binary=binary)


@functools.cache
def _pg_cursors():
    """(cursor, raw cursor, transaction) classes of PostgreSQL connections (psycopg is imported only for
    PostgreSQL)."""
    import psycopg

    class Cursor(_Preparing, psycopg.Cursor):
        pass

    class RawCursor(_Preparing, psycopg.RawCursor):
        pass

    return Cursor, RawCursor, psycopg.Transaction


class _PostgresTx(_PostgresCounts, Tx):
    """A PostgreSQL write transaction: a long statement goes with numbered parameters ($1, $2, …).

    NOTE: psycopg parses the `%s` of a statement longer than 4,096 bytes again at every execution (it
    caches shorter ones): a 1,000-record INSERT has 10,000 and spent ~20 ms a batch there. Ours are the
    same few texts (sqlbuild caches them), so they are numbered once and sent through a RawCursor.

    NOTE: a COPY's outcome is read only when the transaction next needs the connection (`settle`: its next
    statement, or its end): the server inserts the rows and their index entries while this process builds
    what comes next (a batch's search rows, its change rows), where it used to wait for them. Its error, if any, is
    raised there, inside the same transaction, so it rolls back and is translated as before.
    """

    def __init__(self, conn):
        super().__init__(_statement_tx(conn).cursor)
        self.conn = conn
        self.raw = None
        self.pending = None  # the COPY whose end was sent and whose outcome is not read yet

    def settle(self):
        """Read the outcome of the COPY whose end was sent (see the class's NOTE): raise its error, if any."""
        copy, self.pending = self.pending, None
        if copy is not None:
            copy.outcome()

    @contextlib.contextmanager
    def settled(self):
        """A block after which no COPY's outcome is left unread (the connection can commit or roll back)."""
        try:
            yield self
        except BaseException:
            with contextlib.suppress(Exception):  # NOTE: the block's own error is the one that rolls back
                self.settle()
            raise
        self.settle()

    def write_rows(self, sql, runs):
        self.settle()
        super().write_rows(sql, runs)

    def _copy_writer(self):
        self.settle()
        return _copy_ending_later(self)

    def _cursor(self, sql):
        self.settle()
        if len(sql) <= LONG_STATEMENT:
            return self.cursor, sql
        if self.raw is None:
            self.raw = _pg_cursors()[1](self.conn)
        return self.raw, _numbered(sql)

    def rows(self, sql, params=()):
        cursor, sql = self._cursor(sql)
        cursor.execute(sql, params)
        return cursor.fetchall()

    def one(self, sql, params=()):
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def execute(self, sql, params=()):
        cursor, sql = self._cursor(sql)
        cursor.execute(sql, params)
        if cursor.description is not None:
            cursor.fetchall()
        return cursor.rowcount


LONG_STATEMENT = 4096  # psycopg's MAX_CACHED_STATEMENT_LENGTH


def _copy_ending_later(tx):
    """A psycopg COPY writer that sends the end of the data without waiting for the outcome: `tx.settle()` reads it.
    An aborted COPY (an error while writing) ends the usual way."""
    writer = _ending_later()(tx.cursor)
    writer.tx = tx
    return writer


@functools.cache
def _ending_later():
    """The writer class of _copy_ending_later: psycopg's LibpqWriter, whose `finish` sends the end and waits.

    NOTE: made on first use, so SQLite users never import psycopg. It drives psycopg's own generators and
    waiting (not public API), which is why setup.cfg pins psycopg to one minor version (3.3.x).
    """
    from psycopg import errors
    from psycopg.copy import LibpqWriter
    from psycopg.generators import fetch_many
    from psycopg.pq import ExecStatus
    from psycopg.waiting import Wait

    def end_sent(pgconn):
        while pgconn.put_copy_end(None) == 0:
            while not (yield Wait.W):
                continue
        while True:
            while not (yield Wait.W):
                continue
            if pgconn.flush() == 0:
                return

    class EndingLater(LibpqWriter):
        def finish(self, exc=None):
            if exc is not None:
                return super().finish(exc)
            self.connection.wait(end_sent(self._pgconn))
            self.tx.pending = self

        def outcome(self):
            results = self.connection.wait(fetch_many(self._pgconn))
            failed = [r for r in results if r.status != ExecStatus.COMMAND_OK]
            if failed:
                raise errors.error_from_result(failed[0], encoding=self.connection.info.encoding)

    return EndingLater


@functools.lru_cache(maxsize=128)
def _numbered(sql):
    """A statement with `%s` parameters (and `%%` for a percent sign) as PostgreSQL takes it: `$1`, `$2`, …."""
    numbers = itertools.count(1)
    return re.sub('%([%s])', lambda match: '%' if match.group(1) == '%' else f'${next(numbers)}', sql)


def _identity(value):
    return value


class Database:
    """What both engines share: dialect, row readers and error translation."""

    name = ''
    readers = {}
    replicas = ()

    def configure(self, settings):
        """Take the engine's part of a crmapi.config.Settings (before the first connection is opened)."""
        self.statement_timeout_ms = settings.statement_timeout_ms

    def reader(self, kinds):
        """A function turning a raw row tuple into JSON-ready values, one converter per column kind."""
        convert = [(i, self.readers[k]) for i, k in enumerate(kinds) if k in self.readers]

        def read(row):
            row = list(row)
            for i, f in convert:
                if row[i] is not None:
                    row[i] = f(row[i])
            return row

        return read

    def record_reader(self, names, kinds, start=0):
        """A function turning a raw row tuple into a record {name: JSON-ready value}, generated once per shape;
        the record's columns start at `start` (the row's own columns before them are left for the caller).

        NOTE: generated source, as namedtuple and dataclasses do: a dict display with each converter inlined
        is several times faster than converting a list and zipping it with the names, and that was most of
        an export's Python time. `names` are catalog identifiers; repr() makes each a plain string literal.
        """
        scope, items = {}, []
        for i, (name, kind) in enumerate(zip(names, kinds), start):
            if kind in self.readers:
                scope[f'convert{i}'] = self.readers[kind]
                items.append(f'{name!r}: None if row[{i}] is None else convert{i}(row[{i}])')
            else:
                items.append(f'{name!r}: row[{i}]')
        exec(f'def read(row):\n    return {{{", ".join(items)}}}\n', scope)
        return scope['read']

    def statement(self):
        """Where one read statement runs: as `transaction()` unless the engine can do without one (SQLite)."""
        return self.transaction()

    # NOTE: read replicas are PostgreSQL's (PostgresDatabase); elsewhere every read is the one database's.
    def begin_request(self, read_after=None):
        """A request starts on this thread (see PostgresDatabase.begin_request)."""

    def allow_replica_reads(self):
        """The rest of this request only reads."""

    def end_request(self, token=True):
        """The request is over: its read-after token, when there is one."""
        return None

    def for_bulk_writes(self):
        """This process writes large batches from now on (`crmapi import`); see SQLiteDatabase's."""

    def replica_status(self, wait=0.0):
        return []


# -- SQLite ----------------------------------------------------------------------------------------


def _sqlite_adapt(kind, value):
    if value is None:
        return None
    if kind == 'boolean':
        return int(value)
    if kind == 'number':
        return str(value) if isinstance(value, Decimal) else value
    if kind == 'date':
        return value.isoformat()
    if kind == 'timestamp':
        return values.format_timestamp(value)
    if kind in ('json', 'array'):
        return orjson.dumps(value).decode()
    return value


def _sqlite_json(value):
    # NOTE: a JSONB column has NUMERIC affinity on SQLite, so a bare JSON number comes back as one.
    return orjson.loads(value) if isinstance(value, str) else value


# NOTE: SQLite VM instructions between two looks at the clock: 1-3 ms of work. Each look takes the
# GIL, which a busy Python thread may hold for up to 5 ms, so looking more often slows heavy queries.
PROGRESS_STEPS = 100_000
BULK_CACHE_KIB = 16 * 1024  # the page cache of a process that writes in bulk (SQLiteDatabase.for_bulk_writes)
# NOTE: the page cache of every other connection. A server worker holds one connection per thread (granian's 4
# blocking threads), and each cache fills up under gets spread over the table: SQLite's default of 2 MiB took a
# worker's peak RSS from 51 to 58 MiB (issue 15's bound: 60). Gets and 25-row pages take the same CPU time with
# 512 KiB, but the exact total of a filtered list walks the filter's index range on every request (the 8,310
# contacts of one city in 100k: 160 pages), and a cache smaller than that range reads every page of it back from
# the operating system each time, a system call a page: that count took 471 µs with 512 KiB, 368 µs with 1 MiB,
# 363 µs with 2 MiB. A filter matching twice as many rows (15,636: 300 pages) needs 1.5 MiB.
CACHE_KIB = 1024


_process = [os.getpid()]  # this process's id, kept by os.register_at_fork: looking at it makes no system call


def _forked():
    _process[0] = os.getpid()


os.register_at_fork(after_in_child=_forked)


class _Deadline:
    """When a connection's running statement must stop: PostgreSQL's statement_timeout for SQLite.

    The connection's progress handler asks `passed()` every PROGRESS_STEPS instructions; a true answer
    interrupts the statement (SQLITE_INTERRUPT, a 503). A timeout of 0 or less means no limit, as on
    PostgreSQL. `lifted`: none for the rest of the connection's transaction (a migration step's).
    """

    def __init__(self, db):
        self.db = db
        self.at = math.inf
        self.lifted = False

    def start(self):
        ms = 0 if self.lifted else self.db.statement_timeout_ms
        self.at = time.monotonic() + ms / 1000 if ms > 0 else math.inf

    def passed(self):
        return time.monotonic() > self.at


class _Cursor(sqlite3.Cursor):
    """Every execution starts its statement's deadline, which the fetches of its rows share; each
    `fetchmany` batch (an export's) starts a new one, as each FETCH of a PostgreSQL cursor does."""

    def execute(self, sql, params=()):
        self.connection.deadline.start()
        return super().execute(sql, params)

    def executemany(self, sql, seq_of_params):
        self.connection.deadline.start()
        return super().executemany(sql, seq_of_params)

    def fetchmany(self, *size):
        self.connection.deadline.start()
        return super().fetchmany(*size)


class _Connection(sqlite3.Connection):
    """A connection whose every statement, `BEGIN` and `COMMIT` included, runs under a deadline."""

    kept = None  # this connection's KeptCounts (_SQLiteTx)
    syncs = False  # its write transactions commit at NORMAL and sync after the writer lock (_WalSync)

    def cursor(self, factory=_Cursor):
        return super().cursor(factory)

    def execute(self, sql, params=()):
        # NOTE: sqlite3's own Connection.execute would run the statement without our cursor's execute.
        return self.cursor().execute(sql, params)


COUNTS_KEPT = 256  # the exact totals a KeptCounts holds (then the least recently used is forgotten)


class KeptCounts:
    """Exact totals kept while the data they counted is unchanged: one keeper for both engines, each telling its
    own version of the data (`Tx.data_version`: SQLite _SQLiteTx, PostgreSQL _PostgresCounts).

    NOTE: an exact total counts every match (a city of 100k contacts: 8,310 index entries, more than half a filtered
    page's cost; q "mar" in 1M contacts: 137k search rows, 250-300 ms), and asking again gives the same number until
    a commit changes the rows. A total is kept under the version read before it was counted (or by its own
    statement), and given again only while the version read now is the same: a version moves with every commit,
    so equal versions mean no commit came in between and the total is still exact. A version of None (a transaction
    that wrote, on PostgreSQL) keeps nothing. Keys are the server, the statement and all its parameters (the
    organization's id is one). Bounded: COUNTS_KEPT totals, the least recently used forgotten first; a lock, as a
    PostgreSQL process's threads share one keeper.
    """

    def __init__(self, size=COUNTS_KEPT):
        self.size = size
        self._totals = collections.OrderedDict()  # key -> (version, total)
        self._lock = threading.Lock()

    def total(self, tx, sql, params):
        key = _count_key(tx.counted_on(), sql, params)
        if key is None:
            return tx.versioned_count(sql, params)[0]
        held = self._held(tx, key)
        if held is not None:
            return held
        total, version = tx.versioned_count(sql, params)
        if version is not None:
            self._keep(key, version, total)
        return total

    def held(self, tx, sql, params):
        """The total kept for this COUNT and still exact, or None (none is kept, or a commit came since)."""
        key = _count_key(tx.counted_on(), sql, params)
        return None if key is None else self._held(tx, key)

    def _held(self, tx, key):
        with self._lock:
            held = self._totals.get(key)
        # NOTE: a key never counted needs no version: the count's own answers it (PostgreSQL: the same statement)
        if held is None or held[0] != tx.data_version():
            return None
        with self._lock:
            if key in self._totals:
                self._totals.move_to_end(key)
        return held[1]

    def _keep(self, key, version, total):
        with self._lock:
            self._totals[key] = (version, total)
            self._totals.move_to_end(key)
            while len(self._totals) > self.size:
                self._totals.popitem(last=False)

    def forget(self):
        """Forget every kept total (a rollback of rows this SQLite connection changed)."""
        with self._lock:
            self._totals.clear()


def _count_key(server, sql, params):
    """A kept total's key, or None when a parameter cannot be one (counted every time).

    NOTE: PostgreSQL's one-parameter IN list (Dialect.one_of) is a Python list: as a tuple it compares by value.
    """
    key = (server, sql, *(tuple(p) if isinstance(p, list) else p for p in params))
    try:
        hash(key)
    except TypeError:
        return None
    return key


class _SQLiteTx(Tx):
    """A transaction whose totals are kept by its connection (KeptCounts) while the database is as it was.

    NOTE: the version is (`PRAGMA data_version`, `total_changes`). data_version changes whenever another connection
    (of any process) has committed since this connection last looked, as of this transaction's snapshot;
    total_changes whenever this connection itself changed rows, committed or not. A rollback takes rows back without
    taking total_changes back, so it forgets every kept total (SQLiteDatabase.transaction). Each connection keeps
    its own: data_version is a connection's.
    """

    def __init__(self, cursor):
        super().__init__(cursor)
        self.kept = cursor.connection.kept

    def data_version(self):
        return self.one('PRAGMA data_version')[0], self.cursor.connection.total_changes

    def versioned_count(self, sql, params):
        """The version read first: a commit between the two only makes the total newer than its version (recounted
        at the next look), never older."""
        version = self.data_version()
        return self.one(sql, params)[0], version


class _WriterLock:
    """Writers take turns: the threads of a process through a mutex, the processes through `flock` on a file
    beside the database (`<database>-writer`), before BEGIN IMMEDIATE.

    NOTE: SQLite's busy handler polls, sleeping up to 100 ms between tries, so while one process always has a
    writer ready, another's can starve: creates from 32 clients had a p99 of 784 ms with two workers and 67 ms
    with one. A process blocked in `flock` is woken the moment the lock is released. Like the mutex it waits
    without a deadline: a holder's statements are bounded by the statement timeout, and the lock goes with its
    process (kill -9 included). SQLite's own lock and busy timeout still guard against other programs.
    """

    def __init__(self, path):
        self.path = path
        self._mutex = threading.Lock()
        self._fd = self._pid = None

    def __enter__(self):
        self._mutex.acquire()
        try:
            if self.path:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._mutex.release()
            raise

    def __exit__(self, *exc):
        try:
            if self.path:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def _file(self):
        """This process's own descriptor of the lock file: one inherited across a fork shares its lock."""
        if self._pid != _process[0]:
            if self._fd is not None:
                os.close(self._fd)  # NOTE: the parent's lock stays: its own descriptor still holds it
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            self._pid = _process[0]
        return self._fd


class _WalSync:
    """`synchronous=FULL` for a process's writes, with one `fdatasync` of the WAL for the commits of many.

    A write transaction commits at `synchronous=NORMAL` (SQLite writes its WAL frames but does not sync them) and,
    after it lets the writer lock go, waits here until a `fdatasync` of the WAL file that started after its COMMIT
    returned; only then is it acknowledged. What FULL syncs at each COMMIT is exactly that file (SQLite syncs the WAL's
    header on every restart, and a checkpoint syncs the WAL before it copies it, at NORMAL too), so an acknowledged
    write survives a power loss as under FULL; a crashed process never loses what it wrote to the file.

    NOTE: under FULL every writer of every process waited, holding the lock, for its own sync (~0.2–4 ms here). Now
    the next writer runs while this one syncs, and the writes that committed while one sync ran share the next: a
    sync costs the lock nothing and is paid once per group. Another connection may read a commit before its sync
    ends (never one whose write was acknowledged before).
    """

    def __init__(self, path):
        self.path = path
        self._pid = None

    def committed(self):
        """The ticket of a COMMIT that just returned, taken before the writer lock is let go."""
        if self._pid != _process[0]:  # NOTE: under the writer lock: one thread of a new process makes the state
            self._cond, self._made, self._synced, self._busy = threading.Condition(), 0, 0, False
            self._pid = _process[0]
        with self._cond:
            self._made += 1
            return self._made

    def wait(self, ticket):
        """Return once a sync that started after COMMIT `ticket` ended: this thread's own, or another's it joins."""
        cond = self._cond
        with cond:
            while self._synced < ticket:
                if self._busy:
                    cond.wait()
                    continue
                self._busy, target = True, self._made
                cond.release()
                try:
                    self._sync()
                finally:
                    cond.acquire()
                    self._busy = False
                    cond.notify_all()
                self._synced = max(self._synced, target)  # NOTE: a sync that raised covers nothing: each waiter retries

    def _sync(self):
        try:
            fd = os.open(f'{self.path}-wal', os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # NOTE: checkpointed into the database and removed (SQLite synced the database)
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)


class SQLiteDatabase(Database):
    """The embedded default: one connection per thread, WAL, writes under BEGIN IMMEDIATE."""

    name = 'sqlite'
    readers = {'boolean': bool, 'number': values.number_out, 'json': _sqlite_json, 'array': _sqlite_json}

    def __init__(self, path, busy_timeout_ms=20_000, synchronous='FULL', statement_timeout_ms=15_000):
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.statement_timeout_ms = statement_timeout_ms
        self.dialect = sqlbuild.sqlite_dialect(_sqlite_adapt)
        self.cache_kib = CACHE_KIB  # the page cache of each connection
        self._local = threading.local()
        self._writer = _WriterLock(None if path == ':memory:' else f'{path}-writer')
        self._wal = _WalSync(None)

    def configure(self, settings):
        super().configure(settings)
        self.synchronous = settings.sqlite_synchronous

    def _connect(self):
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self.busy_timeout_ms / 1000,
            factory=_Connection,
        )
        conn.deadline = _Deadline(self)
        conn.kept = KeptCounts()
        conn.set_progress_handler(conn.deadline.passed, PROGRESS_STEPS)
        conn.execute(f'PRAGMA busy_timeout = {int(self.busy_timeout_ms)}')
        journal = conn.execute('PRAGMA journal_mode = WAL').fetchone()[0] if self.path != ':memory:' else None
        conn.execute(f'PRAGMA synchronous = {self.synchronous}')
        # NOTE: FULL's write transactions commit at NORMAL and sync the WAL after the writer lock (_WalSync)
        conn.syncs = self.synchronous == 'FULL' and journal == 'wal'
        if conn.syncs and self._wal.path is None:  # NOTE: the file SQLite opened, symbolic links followed
            self._wal.path = conn.execute('PRAGMA database_list').fetchone()[2]
        conn.execute('PRAGMA foreign_keys = ON')
        conn.execute(f'PRAGMA cache_size = {-int(self.cache_kib)}')
        return conn

    def for_bulk_writes(self, cache_kib=BULK_CACHE_KIB):
        """Give this process's connections a page cache that holds what a batch of 1,000 records dirties.

        NOTE: such a batch touches a page of every index for each record. Past the cache (2 MiB by default)
        SQLite spills dirty pages to the WAL in the middle of the transaction and reads them back: 100,000
        contacts read 897 MiB back and made 534k write calls; with 16 MiB, 316 MiB and 373k (more gains
        nothing). The cache is a bound, so memory stays flat.
        """
        self.cache_kib = cache_kib
        conn = getattr(self._local, 'conn', None)
        if conn is not None and getattr(self._local, 'pid', None) == _process[0]:
            conn.execute(f'PRAGMA cache_size = {-int(cache_kib)}')

    def connection(self):
        # NOTE: a connection is never used across a fork (SQLite forbids it): one of another process is replaced.
        # os.getpid() is a system call, and every statement asks for its connection.
        local = self._local
        if getattr(local, 'pid', None) != _process[0]:
            local.conn = conn = self._connect()
            # NOTE: statement()'s Tx, one cursor made once (a cursor a statement took ~0.3 µs of a get): each such
            # statement's rows are all fetched before it returns, on this thread. Beside the connection, not on it,
            # so that no cycle keeps the connection open after its thread ends.
            local.statement_tx, local.pid = _SQLiteTx(conn.cursor()), _process[0]
        return local.conn

    @contextlib.contextmanager
    def transaction(self, write=False):
        """A transaction; inside another one on this thread, the same transaction (joined)."""
        conn = self.connection()
        if conn.in_transaction:
            yield _SQLiteTx(conn.cursor())
            return
        with translate_errors(), self._synced(conn, write) as tickets:
            # NOTE: a deferred BEGIN that reads then writes fails at once under contention,
            # whatever the busy timeout; IMMEDIATE takes the write lock up front.
            with self._writer if write else contextlib.nullcontext():
                conn.execute('BEGIN IMMEDIATE' if write else 'BEGIN')
                try:
                    yield _SQLiteTx(conn.cursor())
                except BaseException:
                    conn.kept.forget()  # a rollback: see _SQLiteTx
                    conn.rollback()
                    conn.deadline.lifted = False
                    raise
                try:
                    conn.execute('COMMIT')
                except BaseException:
                    conn.kept.forget()  # NOTE: a COMMIT that fails (a full disk) may have rolled back
                    raise
                finally:
                    conn.deadline.lifted = False
                if tickets is not None:
                    tickets.append(self._wal.committed())

    @contextlib.contextmanager
    def _synced(self, conn, write):
        """Around a transaction: at FULL (conn.syncs), a write one commits at NORMAL and its block ends once the WAL
        is synced (_WalSync), after the writer lock; it gives the list its COMMIT's ticket goes in (else None)."""
        if not (write and conn.syncs):
            yield None
            return
        tickets = []
        conn.execute('PRAGMA synchronous = NORMAL')
        try:
            yield tickets
        finally:
            conn.execute('PRAGMA synchronous = FULL')  # NOTE: every other transaction syncs as it commits
        if tickets:
            self._wal.wait(tickets[0])  # NOTE: acknowledged only once durable, as under FULL

    def statement(self):
        """One read statement, in the transaction of this thread if there is one, else in its own.

        NOTE: SQLite runs a statement outside BEGIN in a transaction of its own, as consistent as BEGIN's for that
        one statement: a get by id was BEGIN, SELECT and COMMIT, three statements where one does.
        """
        conn = self.connection()
        return _Statement(self._local.statement_tx, not conn.in_transaction)

    @staticmethod
    def statements(sql):
        """Split a script into complete statements, as SQLite itself judges completeness."""
        pending = ''
        for line in sql.splitlines(keepends=True):
            pending += line
            if sqlite3.complete_statement(pending):
                yield pending.strip()
                pending = ''
        if pending.strip() and not all(
            line.strip().startswith('--') or not line.strip() for line in pending.splitlines()
        ):
            raise ValueError('incomplete SQL statement at the end of a script')

    def stream(self, sql, params, batch=500):
        """Rows of one query, fetched `batch` at a time inside one read transaction."""
        with self.transaction() as tx:
            cursor = tx.cursor
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(batch):
                yield from rows

    def run_script(self, tx, sql):
        """Run every statement of `sql` inside `tx` (sqlite3's executescript would commit first)."""
        for statement in self.statements(sql):
            tx.execute(statement)

    def lock_for_migration(self, tx):
        """BEGIN IMMEDIATE already holds SQLite's write lock; the step's statements run without a deadline (a step
        may rewrite a whole table: PostgreSQL's lock_for_migration)."""
        tx.cursor.connection.deadline.lifted = True

    def table_exists(self, name):
        with self.transaction() as tx:
            return tx.one('SELECT 1 FROM sqlite_master WHERE name = ?', (name,)) is not None

    def ping(self):
        try:
            with self.transaction() as tx:
                tx.one('SELECT 1 FROM schema_version')
        except sqlite3.Error as exc:
            raise Unavailable('The database is not ready') from exc

    def introspect(self, tables):
        """{table: [(name, declared type, nullable, default)]} from PRAGMA table_xinfo."""
        found = {}
        with self.transaction() as tx:
            for table in tables:
                rows = tx.rows(
                    'SELECT name, type, "notnull", dflt_value, pk, hidden FROM pragma_table_xinfo(?)', (table,)
                )
                if rows:
                    found[table] = [
                        (n, t, not nn and not pk, d) for n, t, nn, d, pk, hidden in rows if hidden in (0, 2, 3)
                    ]
        return found

    def indexed_columns(self, tables):
        """{table: {column}} of every column some index stores (UNIQUE constraints included)."""
        sql = (
            'SELECT DISTINCT info.name FROM pragma_index_list(?) AS list, pragma_index_info(list.name) AS info '
            'WHERE info.name IS NOT NULL'
        )
        with self.transaction() as tx:
            return {table: {name for (name,) in tx.rows(sql, (table,))} for table in tables}

    def close(self):
        conn = getattr(self._local, 'conn', None)
        if conn is not None:
            conn.close()
            self._local.conn = self._local.statement_tx = None
            self._local.pid = None


# -- PostgreSQL ------------------------------------------------------------------------------------


def _pg_adapt(kind, value):
    if value is None:
        return None
    if kind in ('json', 'array'):
        from psycopg.types.json import Jsonb

        return Jsonb(value)
    return value


IDLE = 0  # psycopg.pq.TransactionStatus.IDLE, without importing psycopg for SQLite users

# Where the primary's WAL ends now, and how far a replica has replayed it: byte positions (LSNs) as integers.
PRIMARY_LSN = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
REPLICA_LSN = "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint"
SET_LOCAL_TIMEOUT = "SELECT set_config('statement_timeout', %s, true)"
WORK_MEM = '32MB'  # PostgreSQL: memory of one sort, hash or bitmap of a statement (the server's default is 4 MB)
SERVER_TIMEOUT = "SELECT setting::int FROM pg_settings WHERE name = 'statement_timeout'"
MONITOR_INTERVAL_S = 0.5  # how often each process looks at the primary's and each replica's position
MONITOR_STALE_S = 2.0  # a replica not seen for this long (hung, unreachable) is not read from
REPLICA_RETRY_S = 5.0  # a replica that failed a read is skipped for this long
REPLICA_WAIT_S = 1.0  # the longest a read waits for a replica's pooled connection before the primary
MONITOR_CONNECT_TIMEOUT_S = 2
_TOKEN = re.compile(r'[0-9a-f]{1,16}\Z')
_NOT_YET = object()  # a request's replica, not chosen yet


def read_after_token(lsn):
    """The opaque `X-Read-After` token of a WAL position."""
    return format(lsn, 'x')


def parse_read_after(token):
    """The WAL position a client's token names; anything unreadable is the end of time (the primary).

    NOTE: the token is a hint a client sends back; a damaged one must never make a read less fresh.
    """
    token = (token or '').strip().lower()
    if not token:
        return None
    return int(token, 16) if _TOKEN.match(token) else math.inf


class _Request:
    """What one request of this thread asked for: how fresh its reads must be, and where they go."""

    __slots__ = ('read_after', 'replica_ok', 'replica', 'wrote')

    def __init__(self, read_after=None):
        self.read_after = read_after
        self.replica_ok = False  # set once the caller is authenticated, for requests that only read
        self.replica = _NOT_YET  # chosen at the first read, then kept: one request, one server
        self.wrote = False


class Replica:
    """One read replica: its URL (never shown) and what this process last saw of it."""

    def __init__(self, name, url):
        self.name, self.url = name, url
        self.seen_at = None  # monotonic time of the last successful look
        self.replay_lsn = None
        self.lag_ms = None
        self.in_recovery = None
        self.failed_until = 0.0
        self.problem = 'not checked yet'

    def observe(self, in_recovery, replay_lsn, lag_ms, now):
        self.in_recovery, self.replay_lsn, self.lag_ms, self.seen_at = in_recovery, replay_lsn, lag_ms, now
        self.problem = None

    def unreachable(self):
        self.seen_at, self.problem = None, 'unreachable'

    def failed(self, now):
        self.failed_until = now + REPLICA_RETRY_S

    def unusable(self, now, max_lag_ms, read_after=None):
        """Why reads may not go here now (a short phrase), or None."""
        # NOTE: each field read once: the monitor thread may change them meanwhile.
        seen, lag, replay = self.seen_at, self.lag_ms, self.replay_lsn
        if seen is None or now - seen > MONITOR_STALE_S:
            return self.problem or 'not answering'
        if not self.in_recovery:
            return 'not a replica (promoted?)'
        if lag is None:
            return 'lag unknown'
        if lag > max_lag_ms:
            return 'lagging'
        if now < self.failed_until:
            return 'failed a read'
        if read_after is not None and (replay is None or replay < read_after):
            return 'behind the request'
        return None


class _Monitor:
    """This process's view of replication: the primary's WAL position and each replica's replay position,
    every MONITOR_INTERVAL_S, each looked at on its own connection and thread (a hung server stalls only
    its own thread, and its replica then goes stale).

    A replica's lag is the age of the oldest primary position it has not replayed: 0 when it has replayed
    everything the primary had, however long ago the last write was (an idle primary is not a lag).
    """

    def __init__(self, db):
        self.db = db
        self.stop = threading.Event()
        self.samples = collections.deque(maxlen=int(120 / MONITOR_INTERVAL_S))
        self.first = threading.Event()
        targets = [('primary', db.url, self._primary, lambda exc: None)]
        targets += [
            (r.name, r.url, functools.partial(self._replica, r), lambda exc, r=r: r.unreachable()) for r in db.replicas
        ]
        self.threads = [
            threading.Thread(target=self._watch, args=target[1:], name=f'crmapi-monitor-{target[0]}', daemon=True)
            for target in targets
        ]
        for thread in self.threads:
            thread.start()

    def _watch(self, url, observe, fail):
        import psycopg

        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(
                        url, autocommit=True, connect_timeout=MONITOR_CONNECT_TIMEOUT_S, **self.db.connect_kwargs()
                    )
                observe(conn)
            except Exception:  # noqa: BLE001 - any failure means: not usable until the next good look
                fail(None)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self.stop.wait(MONITOR_INTERVAL_S)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _primary(self, conn):
        (lsn,) = conn.execute(PRIMARY_LSN).fetchone()
        self.samples.append((time.monotonic(), lsn))

    def _replica(self, replica, conn):
        in_recovery, replay = conn.execute(REPLICA_LSN).fetchone()
        now = time.monotonic()
        lag = self.lag_ms(replay, now)
        replica.observe(bool(in_recovery), replay, lag, now)
        if lag is not None:
            self.first.set()

    def lag_ms(self, replay, now):
        """How long ago the primary first stood past `replay`: 0 when no sample is past it; None while
        the primary has never been seen."""
        samples = list(self.samples)
        if not samples or replay is None:
            return None
        for at, lsn in samples:
            if lsn > replay:
                return round((now - at) * 1000)
        return 0

    def close(self):
        self.stop.set()


def _replica_fault(exc):
    """(usable, retry elsewhere) for an error a replica raised: whether the replica itself is at fault
    (unreachable, shutting down: skip it for a while), and whether the statement should run on the primary.

    NOTE: a replica that has not yet replayed a schema change (a custom object defined a moment ago)
    answers "undefined table/column", and one replaying a conflicting change cancels a read (40001):
    the primary answers both. A statement timeout is not retried: the query would only run twice.
    """
    import psycopg
    from psycopg_pool import PoolTimeout

    if isinstance(exc, PoolTimeout):
        return False, True
    if not isinstance(exc, psycopg.Error):
        return True, False
    sqlstate = exc.sqlstate or ''
    if not sqlstate:
        return (False, True) if isinstance(exc, psycopg.OperationalError) else (True, False)
    if sqlstate[:2] in ('08', '53') or sqlstate in ('57P01', '57P02', '57P03'):
        return False, True
    return True, sqlstate in ('42P01', '42703', '40001')


class _ReadTx(_PostgresCounts, Tx):
    """A read: statement by statement on one connection (with PgBouncer and no server-wide timeout, in a
    transaction that carries the timeout). On a replica, a statement the replica cannot answer runs again
    on the primary, which then serves the rest of the request."""

    def __init__(self, db, stack, conn, replica):
        super().__init__(_statement_tx(conn).cursor)
        self.db, self.stack, self.conn, self.replica = db, stack, conn, replica
        self.kept = db.kept
        self.open = False

    def begin(self):
        if self.db.needs_local_timeout(self.conn):
            self.conn.execute('BEGIN')
            self.db.set_local_timeout(self.conn)
            self.open = True

    def end(self, committing):
        """Close the transaction `begin` opened; a write joined into it is committed with it."""
        if self.open:
            self.open = False
            if committing:
                self.conn.execute('COMMIT')
            elif not self.conn.closed:
                with contextlib.suppress(Exception):
                    self.conn.execute('ROLLBACK')

    def rows(self, sql, params=()):
        return self._run(Tx.rows, sql, params)

    def one(self, sql, params=()):
        return self._run(Tx.one, sql, params)

    def execute(self, sql, params=()):
        return self._run(Tx.execute, sql, params)

    def _run(self, method, sql, params):
        if self.replica is None:
            return method(self, sql, params)
        try:
            return method(self, sql, params)
        except Exception as exc:
            usable, elsewhere = _replica_fault(exc)
            if not elsewhere:
                raise
            self.to_primary(usable)
        return method(self, sql, params)

    def to_primary(self, replica_usable):
        """Leave the replica for the primary, for this statement and the rest of the request."""
        self.end(committing=False)
        self.db.replica_failed(self.replica, replica_usable)
        self.replica = None
        self.conn = self.stack.enter_context(self.db.pool().connection())
        self.cursor = _statement_tx(self.conn).cursor
        self.begin()


class PostgresDatabase(Database):
    """The production engine: a psycopg 3 pool per process, connections checked before use.

    With read replicas, a read outside any write transaction, in a request that allows it (see
    `begin_request`), goes to a replica that is caught up enough; everything else goes to the primary.
    """

    name = 'postgresql'
    readers = {
        'number': values.number_out,
        'date': dt.date.isoformat,
        'timestamp': values.format_timestamp,
    }

    def __init__(
        self,
        url,
        min_size=1,
        max_size=4,
        timeout=10.0,
        statement_timeout_ms=15_000,
        read_urls=(),
        max_lag_ms=2000,
        pgbouncer=False,
    ):
        self.url = url
        self.pool_args = dict(min_size=min_size, max_size=max_size, timeout=timeout)
        self.statement_timeout_ms = statement_timeout_ms
        self.max_lag_ms = max_lag_ms
        self.pgbouncer = pgbouncer
        self.replicas = [Replica(f'replica{i}', u) for i, u in enumerate(read_urls, 1)]
        self.dialect = sqlbuild.postgres_dialect(_pg_adapt)
        self._pools, self._pid, self._monitor = {}, None, None
        self.kept = KeptCounts()  # this process's exact totals (KeptCounts, _PostgresCounts)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._last_used = weakref.WeakKeyDictionary()
        self._server_timeout = weakref.WeakKeyDictionary()
        self._turn = itertools.count()

    def configure(self, settings):
        super().configure(settings)
        self.pool_args.update(max_size=settings.pool_max_size, timeout=settings.pool_timeout_s)
        self.max_lag_ms = settings.replica_max_lag_ms

    # -- connections -------------------------------------------------------------------------------

    def connect_kwargs(self):
        # NOTE: PgBouncer in transaction pooling mode hands each transaction a server connection of its
        # own choosing: a statement prepared on one is unknown on the next.
        return {'prepare_threshold': None} if self.pgbouncer else {}

    def _configure(self, conn):
        from psycopg.types.json import set_json_loads

        set_json_loads(orjson.loads, conn)
        conn.cursor_factory = _pg_cursors()[0]
        # NOTE: reads run statement by statement (no BEGIN/COMMIT round trips); every write
        # opens a real transaction in transaction() below.
        conn.autocommit = True
        # NOTE: PgBouncer keeps a client's TimeZone (a parameter it tracks) across server connections.
        conn.execute("SET TIME ZONE 'UTC'")
        if self.pgbouncer:
            # NOTE: ... but not statement_timeout: a session SET would stay on a shared server connection (other
            # clients get it, we lose it). The server's own default is used when it is ours, else SET LOCAL.
            self._server_timeout[conn] = conn.execute(SERVER_TIMEOUT).fetchone()[0]
        else:
            conn.execute(f'SET statement_timeout = {int(self.statement_timeout_ms)}')
            # NOTE: a broad search reads its matches through a bitmap of the GIN index; in the default 4 MB it turns
            # lossy from ~100k matches, and every row of a lossy page is checked again (q "mar" at 1M contacts counted
            # in 2.1 s, in 0.5 s with the bitmap exact). Under PgBouncer the server's own setting holds.
            conn.execute(f"SET work_mem = '{WORK_MEM}'")

    def needs_local_timeout(self, conn):
        """Whether statements on `conn` get the statement timeout only from a SET LOCAL (PgBouncer)."""
        return self.pgbouncer and self._server_timeout.get(conn) != self.statement_timeout_ms

    def set_local_timeout(self, conn):
        conn.execute(SET_LOCAL_TIMEOUT, (str(int(self.statement_timeout_ms)),))

    @contextlib.contextmanager
    def _transaction_block(self, conn):
        """A real transaction on `conn`, with the statement timeout set for it when PgBouncer needs that."""
        with conn.transaction():
            if self.needs_local_timeout(conn):
                self.set_local_timeout(conn)
            yield

    def _check(self, conn):
        """Ping a pooled connection before use unless it served a request within the last second:
        a restart still costs at most one failed request per connection, a busy pool no round trip."""
        last = self._last_used.get(conn)
        if last is None or time.monotonic() - last > 1.0:
            from psycopg_pool import ConnectionPool

            ConnectionPool.check_connection(conn)

    def _pool_of(self, url):
        if self._pid != _process[0]:
            with self._lock:
                if self._pid != _process[0]:
                    # NOTE: a forked child starts afresh: pools and monitor threads do not survive a fork (nor a
                    # lock another thread may have held: the kept totals start again too).
                    self._pools, self._monitor, self._pid = {}, None, _process[0]
                    self.kept = KeptCounts()
        pool = self._pools.get(url)
        if pool is None:
            with self._lock:
                pool = self._pools.get(url)
                if pool is None:
                    from psycopg_pool import ConnectionPool

                    pool = self._pools[url] = ConnectionPool(
                        url,
                        configure=self._configure,
                        check=self._check,
                        kwargs=self.connect_kwargs(),
                        open=True,
                        **self.pool_args,
                    )
        return pool

    def pool(self):
        """The primary's pool."""
        return self._pool_of(self.url)

    # -- requests and replicas ---------------------------------------------------------------------

    def begin_request(self, read_after=None):
        """A request starts on this thread: reads go to the primary until `allow_replica_reads`; with
        `read_after` (a WAL position, see parse_read_after), a replica only once it has replayed that far."""
        self._local.request = _Request(read_after)

    def allow_replica_reads(self):
        """The rest of this request only reads: its reads may go to a replica."""
        request = getattr(self._local, 'request', None)
        if request is not None and self.replicas:
            request.replica_ok = True

    def end_request(self, token=True):
        """The request is over: its `X-Read-After` token when it wrote (and `token`) and replicas are in use."""
        request, self._local.request = getattr(self._local, 'request', None), None
        if not (token and request is not None and request.wrote and self.replicas):
            return None
        try:
            with self.transaction() as tx:
                return read_after_token(tx.one(PRIMARY_LSN)[0])
        except CrmError:
            return None  # NOTE: the write is done; only the hint for the next read is missing

    def _monitoring(self):
        self._pool_of(self.url)  # NOTE: also resets the monitor after a fork
        if self._monitor is None:
            with self._lock:
                if self._monitor is None:
                    self._monitor = _Monitor(self)
        return self._monitor

    def _read_replica(self):
        """The replica this thread's read may use now, or None for the primary."""
        request = getattr(self._local, 'request', None)
        if request is None or not request.replica_ok:
            return None
        if request.replica is _NOT_YET:
            self._monitoring()
            now = time.monotonic()
            usable = [r for r in self.replicas if r.unusable(now, self.max_lag_ms, request.read_after) is None]
            request.replica = usable[next(self._turn) % len(usable)] if usable else None
        return request.replica

    def replica_failed(self, replica, usable=False):
        """A read left `replica` for the primary; unless it is still `usable`, skip it for a while."""
        if not usable:
            replica.failed(time.monotonic())
        request = getattr(self._local, 'request', None)
        if request is not None:
            request.replica = None

    def replica_status(self, wait=0.0):
        """Each replica's name, lag and whether reads use it: for /readyz (never a URL)."""
        if not self.replicas:
            return []
        self._monitoring().first.wait(wait)
        now = time.monotonic()
        report = []
        for replica in self.replicas:
            problem = replica.unusable(now, self.max_lag_ms)
            report.append(
                {
                    'name': replica.name,
                    'lag_ms': None if replica.seen_at is None else replica.lag_ms,
                    'in_use': problem is None,
                    **({'problem': problem} if problem else {}),
                }
            )
        return report

    # -- transactions --------------------------------------------------------------------------------

    def statement(self):
        """One read statement: straight on a pooled connection of the primary when nothing needs more (no replicas to
        route to, no PgBouncer timeout to set, no transaction of this thread to join); else as `transaction()`.

        NOTE: a get by id spent ~9 µs of CPU in transaction()'s generator, its ExitStack, the pool's `with conn`
        (a commit that sends nothing under autocommit) and _ReadTx's indirections; this does the same checkout,
        check (`_check`) and return with none of them.
        """
        if self.replicas or self.pgbouncer or getattr(self._local, 'tx', None) is not None:
            return self.transaction()
        return _PooledStatement(self, self.pool())

    @contextlib.contextmanager
    def transaction(self, write=False):
        """A transaction for writes (a plain connection for reads); inside another one on this
        thread, the same connection, and a write inside a read still gets its transaction (on the
        primary: a write inside a replica's read gets a transaction of its own there)."""
        local = self._local
        current = getattr(local, 'tx', None)
        if current is not None and not (write and getattr(current, 'replica', None) is not None):
            if write and current.conn.info.transaction_status == IDLE:
                with self._transaction_block(current.conn), current.settled():
                    yield current
            else:
                with current.settled():  # NOTE: a block's errors are raised in that block (imports locate them)
                    yield current
            if write:
                self._wrote()
            return
        if write or not self.replicas:
            # NOTE: the primary's pooled connection taken and returned by hand, its transaction (a write's) opened and
            # ended by psycopg's Transaction itself: the pool's `connection()` context, its `with conn` (a commit
            # that sends nothing under autocommit, still a locked wait), an ExitStack and two more generator contexts
            # were ~10 µs of CPU a write, ~4 a read (bench/RESULTS.md, h9-pgget). What runs is the same.
            with translate_errors():
                pool = self.pool()
                conn = pool.getconn()
                try:
                    if write:
                        yield from self._written(local, conn)
                    else:
                        yield from self._read(local, conn)
                    self._last_used[conn] = time.monotonic()
                finally:
                    local.tx = current
                    pool.putconn(conn)
            return
        with translate_errors(), contextlib.ExitStack() as stack:
            tx = self._begin(stack)
            local.tx = tx
            try:
                yield from self._read(local, tx.conn, tx)
                self._last_used[tx.conn] = time.monotonic()
            finally:
                local.tx = current

    def _written(self, local, conn):
        """The body of a write transaction on the primary's `conn`: BEGIN, the block, COMMIT (or ROLLBACK)."""
        tx = local.tx = _PostgresTx(conn)
        tx.replica, tx.kept = None, self.kept
        with _pg_cursors()[2](conn):  # psycopg's Transaction
            if self.needs_local_timeout(conn):
                self.set_local_timeout(conn)
            try:
                yield tx
            except BaseException:
                with contextlib.suppress(Exception):  # NOTE: the block's own error is the one that rolls back
                    tx.settle()
                raise
            tx.settle()
        self._wrote()

    def _read(self, local, conn, tx=None):
        """The body of a read on `conn` (or in `tx`, a replica's): statement by statement, or in the transaction that
        carries PgBouncer's timeout."""
        if tx is None:
            tx = local.tx = _ReadTx(self, None, conn, None)
            tx.begin()
        try:
            yield tx
        except BaseException:
            tx.end(committing=False)
            raise
        tx.end(committing=True)

    def _begin(self, stack):
        """The Tx of a new read, with replicas: on a replica when this read may use one and it answers, else the
        primary."""
        replica = self._read_replica()
        if replica is not None:
            try:
                conn = stack.enter_context(self._pool_of(replica.url).connection(timeout=REPLICA_WAIT_S))
            except Exception as exc:  # noqa: BLE001 - a pool timeout or a failed connection
                if not _replica_fault(exc)[1]:
                    raise
                self.replica_failed(replica)
            else:
                tx = _ReadTx(self, stack, conn, replica)
                try:
                    tx.begin()
                except Exception as exc:  # noqa: BLE001
                    if not _replica_fault(exc)[1]:
                        raise
                    tx.to_primary(False)
                return tx
        conn = stack.enter_context(self.pool().connection())
        tx = _ReadTx(self, stack, conn, None)
        tx.begin()
        return tx

    def _wrote(self):
        request = getattr(self._local, 'request', None)
        if request is not None:
            request.wrote = True

    def stream(self, sql, params, batch=500):
        """Rows of one query through a server-side cursor: memory stays flat however many rows.

        On a replica when the request may read from one; a replica that fails before the first batch
        leaves the export to the primary (after it, the export ends with its error trailer)."""
        with translate_errors():
            replica, batches, first = self._read_replica(), None, None
            if replica is not None:
                batches = self._batches(self._pool_of(replica.url), sql, params, batch, REPLICA_WAIT_S)
                try:
                    first = next(batches, None)
                except Exception as exc:  # noqa: BLE001
                    usable, elsewhere = _replica_fault(exc)
                    if not elsewhere:
                        raise
                    self.replica_failed(replica, usable)
                    batches = None
            if batches is None:
                batches = self._batches(self.pool(), sql, params, batch)
                first = next(batches, None)
            try:
                while first is not None:
                    yield from first
                    first = next(batches, None)
            finally:
                batches.close()

    def _batches(self, pool, sql, params, size, timeout=None):
        with pool.connection(timeout=timeout) as conn, self._transaction_block(conn):
            with conn.cursor(name='crmapi_export') as cursor:
                cursor.execute(sql, params)
                while rows := cursor.fetchmany(size):
                    yield rows

    def run_script(self, tx, sql):
        tx.execute(sql)

    def lock_for_migration(self, tx):
        """One migrating process at a time, whichever app server started first.

        NOTE: a transaction-level advisory lock: it ends with the step's transaction, so it works through
        PgBouncer in transaction pooling mode (a session lock would stay on a server connection others get). The
        step's statements run without the statement timeout, as its lock does: a step may rewrite a whole table
        (migration 0025 marks every contact with children: longer than 15 s at a million contacts).
        """
        tx.execute('SET LOCAL statement_timeout = 0')
        tx.execute('SELECT pg_advisory_xact_lock(4242001)')

    def table_exists(self, name):
        with self.transaction() as tx:
            return tx.one('SELECT to_regclass(%s)', (name,))[0] is not None

    def ping(self, timeout=2.0):
        """Readiness: a pooled connection within `timeout` seconds that answers a query."""
        with translate_errors(), self.pool().connection(timeout=timeout) as conn:
            conn.execute('SELECT 1 FROM schema_version')

    def introspect(self, tables):
        sql = (
            'SELECT table_name, column_name, '
            "CASE WHEN data_type = 'numeric' AND numeric_precision IS NOT NULL "
            "THEN 'numeric(' || numeric_precision || ',' || numeric_scale || ')' ELSE data_type END, "
            "is_nullable = 'YES', column_default "
            'FROM information_schema.columns '
            'WHERE table_schema = current_schema() AND table_name = ANY(%s) '
            'ORDER BY table_name, ordinal_position'
        )
        found = {}
        with self.transaction() as tx:
            for table, name, declared, nullable, default in tx.rows(sql, (list(tables),)):
                found.setdefault(table, []).append((name, declared, nullable, default))
        return found

    def indexed_columns(self, tables):
        """{table: {column}} of every column some index stores (key and INCLUDE columns)."""
        sql = (
            'SELECT DISTINCT t.relname, a.attname FROM pg_index i '
            'JOIN pg_class t ON t.oid = i.indrelid '
            'JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) '
            'WHERE t.relnamespace = current_schema()::regnamespace AND t.relname = ANY(%s)'
        )
        found = {table: set() for table in tables}
        with self.transaction() as tx:
            for table, name in tx.rows(sql, (list(tables),)):
                found[table].add(name)
        return found

    def close(self):
        if self._pid == _process[0]:
            if self._monitor is not None:
                self._monitor.close()
            for pool in self._pools.values():
                pool.close()
        self._pools, self._pid, self._monitor = {}, None, None


class _Translated:
    """translate_errors' context. NOTE: a class, not a generator (contextlib.contextmanager): it holds no state,
    so one serves every `with`, and entering it costs no generator (a get by id enters one or two)."""

    def __enter__(self):
        return None

    def __exit__(self, kind, exc, traceback):
        if exc is None or not isinstance(exc, Exception):
            return False
        mapped = _map_sqlite(exc) if isinstance(exc, sqlite3.Error) else _map_psycopg(exc)
        if mapped is None:
            return False
        raise mapped from exc


_TRANSLATED = _Translated()


def translate_errors():
    """Driver exceptions become CrmErrors; the driver's text never reaches a client.

    Bad input is a 4xx, a passing condition (busy, timed out, unreachable, out of resources, a
    lost race) a 503 with Retry-After; anything else is a bug and stays an exception (a logged 500).
    """
    return _TRANSLATED


STATEMENT_TX = '_crmapi_statement_tx'  # the attribute of a pooled psycopg connection holding statement()'s Tx


def _statement_tx(conn):
    """The Tx of `conn`'s read statements (PostgresDatabase.statement), whose cursor every Tx on `conn` uses.

    NOTE: one Tx and cursor per connection, made at its first statement (a psycopg cursor took ~1.5 µs of a get, and
    of every transaction): the connection is one thread's until it goes back to the pool, one Tx at a time uses it
    (a transaction inside another on the thread is the same Tx), and each statement's rows are fetched before the
    next. Kept on the connection itself: a cursor refers to its connection, so in a WeakKeyDictionary it would keep
    alive every connection the pool drops; this cycle goes with it.
    """
    tx = getattr(conn, STATEMENT_TX, None)
    if tx is None:
        tx = Tx(conn.cursor())
        setattr(conn, STATEMENT_TX, tx)
    return tx


class _PooledStatement:
    """PostgresDatabase.statement's context: a pooled connection's Tx for one read statement, outside any
    transaction (autocommit), the connection returned to the pool after it; driver errors translated."""

    __slots__ = ('db', 'pool', 'conn')

    def __init__(self, db, pool):
        self.db, self.pool, self.conn = db, pool, None

    def __enter__(self):
        with _TRANSLATED:
            self.conn = conn = self.pool.getconn()
        return _statement_tx(conn)

    def __exit__(self, kind, exc, traceback):
        conn = self.conn
        if exc is None:
            self.db._last_used[conn] = time.monotonic()
        # NOTE: a connection broken by the statement's failure is discarded here by the pool (it checks the status).
        self.pool.putconn(conn)
        return _TRANSLATED.__exit__(kind, exc, traceback)


class _Statement:
    """SQLiteDatabase.statement's context: its Tx; driver errors translated unless it joined a transaction (whose
    own `with` translates them)."""

    __slots__ = ('tx', 'own')

    def __init__(self, tx, own):
        self.tx, self.own = tx, own

    def __enter__(self):
        return self.tx

    def __exit__(self, kind, exc, traceback):
        return self.own and _TRANSLATED.__exit__(kind, exc, traceback)


def _busy():
    return Unavailable('The database is busy; retry the request')


def _too_slow():
    return Unavailable('The query took too long; retry or narrow it')


def _down():
    return Unavailable('The database is unavailable; retry shortly')


def _lost_race():
    return Unavailable('The change collided with a concurrent one; retry the request')


def _unique(field):
    return Conflict('A record with the same unique value already exists')


def _foreign_key(field):
    return Conflict('The record refers to, or is referred to by, another record')


def _other_integrity(field):
    return Conflict('The change conflicts with the stored data')


def _not_null(field):
    detail = f"Field '{field}' may not be null" if field else 'A required value is missing'
    return InvalidValue(detail, field=field)


def _refused_value(field):
    return InvalidValue('A value does not fit its column', field=field)


def _too_large():
    return PayloadTooLarge('A value is too large for the database to store or index')


def _too_complex():
    return BadRequest('The request is too complex for the database; ask for fewer values or filters')


# SQLSTATE (exact code first, then its two-character class) -> the error a client sees. An
# integrity violation takes the column PostgreSQL names, when it names one.
_PG_INTEGRITY = {
    '23505': _unique,
    '23503': _foreign_key,
    '23502': _not_null,
    '23514': _refused_value,
    '22': _refused_value,
    '23': _other_integrity,
    '40002': _other_integrity,
}
_PG_CONDITIONS = {
    '54000': _too_large,  # program_limit_exceeded: an index row or a value over a size limit
    '54': _too_complex,  # too many columns, arguments or nesting levels
    '40': _lost_race,  # serialization failure, deadlock: the transaction may simply be retried
    '57014': _too_slow,  # query_canceled: statement_timeout
    '57': _down,  # admin or crash shutdown, cannot connect now
    '08': _down,  # connection exception
    '53': _down,  # insufficient resources: disk full, out of memory, too many connections
    '55P03': _busy,  # lock_not_available
    '25006': _down,  # read_only_sql_transaction: a standby during a failover
    '72000': _lost_race,  # snapshot_too_old
}


def _by_state(table, sqlstate):
    return table.get(sqlstate) or table.get(sqlstate[:2])


def _map_psycopg(exc):
    try:
        import psycopg
        from psycopg_pool import PoolTimeout
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return None
    if isinstance(exc, PoolTimeout):
        return _down()
    if not isinstance(exc, psycopg.Error):
        return None
    sqlstate = exc.sqlstate or ''
    if sqlstate:
        integrity = _by_state(_PG_INTEGRITY, sqlstate)
        if integrity is not None:
            return integrity(exc.diag.column_name)
        condition = _by_state(_PG_CONDITIONS, sqlstate)
        return None if condition is None else condition()
    # NOTE: errors without a SQLSTATE come from psycopg itself: a NUL in a text parameter
    # (DataError) or a connection that broke (OperationalError).
    if isinstance(exc, psycopg.DataError):
        return _refused_value(None)
    if isinstance(exc, psycopg.OperationalError):
        return _down()
    return None


SQLITE_CONSTRAINT_DATATYPE = 3091  # a STRICT table's type check; sqlite3 has no constant for it
_SQLITE_INTEGRITY = {  # extended result code -> error, for IntegrityError
    sqlite3.SQLITE_CONSTRAINT_UNIQUE: _unique,
    sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY: _unique,
    sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY: _foreign_key,
    sqlite3.SQLITE_CONSTRAINT_NOTNULL: _not_null,
    sqlite3.SQLITE_CONSTRAINT_CHECK: _refused_value,
    SQLITE_CONSTRAINT_DATATYPE: _refused_value,
    sqlite3.SQLITE_MISMATCH: _refused_value,
}
_SQLITE_CONDITIONS = {  # primary result code -> error
    sqlite3.SQLITE_BUSY: _busy,
    sqlite3.SQLITE_LOCKED: _busy,
    sqlite3.SQLITE_INTERRUPT: _too_slow,  # the progress handler's time limit, like statement_timeout
    sqlite3.SQLITE_FULL: _down,
    sqlite3.SQLITE_IOERR: _down,
    sqlite3.SQLITE_NOMEM: _down,
    sqlite3.SQLITE_CANTOPEN: _down,
    sqlite3.SQLITE_READONLY: _down,
    sqlite3.SQLITE_PROTOCOL: _down,
    sqlite3.SQLITE_TOOBIG: _too_large,
}
# NOTE: SQLite reports its limits on statements as a plain SQLITE_ERROR: only the text tells.
_SQLITE_LIMIT_TEXTS = (
    'too many SQL variables',
    'too many terms',
    'too many columns',
    'too many arguments',
    'Expression tree is too large',
    'pattern too complex',
    'parser stack overflow',
)


def _map_sqlite(exc):
    code = getattr(exc, 'sqlite_errorcode', None) or 0
    if isinstance(exc, sqlite3.IntegrityError):
        return _SQLITE_INTEGRITY.get(code, _other_integrity)(_sqlite_column(str(exc)))
    condition = _SQLITE_CONDITIONS.get(code & 0xFF)
    if condition is not None:
        return condition()
    if any(text in str(exc) for text in _SQLITE_LIMIT_TEXTS):
        return _too_complex()
    if isinstance(exc, sqlite3.DataError):
        return _refused_value(None)
    return None


def _sqlite_column(message):
    """`NOT NULL constraint failed: contacts.last_name` names its column; other messages do not."""
    prefix, _, where = message.partition('constraint failed: ')
    if prefix.startswith('NOT NULL') and '.' in where and ',' not in where:
        return where.rsplit('.', 1)[1]
    return None


def connect(url, read_urls=(), pgbouncer=False):
    """A Database for `sqlite:///path`, `sqlite://:memory:` or `postgresql://…`, with the read
    replicas `read_urls` (PostgreSQL only), through PgBouncer in transaction pooling mode or not.

    A malformed URL is a ValueError naming what is wrong (never echoing a password): a typo must
    not quietly open another file or an in-memory database.
    """
    parsed = urlparse(url)
    if parsed.scheme == 'sqlite':
        if read_urls:
            raise ValueError('read replicas (CRMAPI_DATABASE_READ_URLS) need PostgreSQL as the database')
        return SQLiteDatabase(_sqlite_path(url, parsed))
    if parsed.scheme in ('postgresql', 'postgres'):
        _check_postgres_url(url)
        for index, read_url in enumerate(read_urls, 1):
            try:
                _check_postgres_url(read_url)
            except ValueError as exc:
                raise ValueError(f'read replica {index}: {exc}') from None
        return PostgresDatabase(url, read_urls=read_urls, pgbouncer=pgbouncer)
    if not url.strip():
        raise ValueError('the database URL is empty: use sqlite:///PATH or postgresql://…')
    if not parsed.scheme:
        raise ValueError(f"'{url}' has no scheme: for a SQLite file write sqlite:///{url}")
    raise ValueError(f"unsupported database URL scheme '{parsed.scheme}': use sqlite:/// or postgresql://")


def _sqlite_path(url, parsed):
    """The file of a SQLite URL: sqlite:///crm.db is relative, sqlite:////var/crm.db absolute (as in SQLAlchemy)."""
    rest = url.split(':', 1)[1]
    if not rest.startswith('//'):
        raise ValueError(f"'{url}' is not a SQLite URL: write sqlite:///relative.db or sqlite:////absolute/path.db")
    if (parsed.netloc, parsed.path) in (('', ''), (':memory:', ''), ('', '/:memory:')):
        return ':memory:'
    if parsed.netloc:
        raise ValueError(
            f"'{url}' names a host ('{parsed.netloc}'); a SQLite URL has none: "
            f'write sqlite:///{parsed.netloc}{parsed.path} for a relative path'
        )
    if parsed.params or parsed.query or parsed.fragment:
        raise ValueError(f"'{url}': a SQLite URL takes no parameters")
    path = unquote(parsed.path)[1:]
    if not path or path.endswith('/'):
        raise ValueError(f"'{url}' names no file: write sqlite:///crm.db or sqlite:////var/lib/crm.db")
    return path


def _check_postgres_url(url):
    """libpq's own parse of the URL, reported without its text (which may quote the password)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        reason = str(exc).split(':', 1)[0].strip()
        raise ValueError(f'the PostgreSQL URL does not parse ({reason})') from None
    for port in str(params.get('port') or '').split(','):
        if port and not port.isdigit():
            raise ValueError(f"the PostgreSQL URL's port '{port}' is not a number")
