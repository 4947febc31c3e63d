"""The embedded engine: one connection per thread, WAL, writers taking turns, FULL's syncs shared."""

import contextlib
import fcntl
import math
import os

import orjson
import sqlite3
import threading
import time
from decimal import Decimal

from .. import sqlbuild
from .. import values
from ..errors import Unavailable
from .translation import translate_errors
from .base import Database
from .base import KeptCounts
from .base import Tx
from .base import _Statement
from .base import _process


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
            tx = local.statement_tx = _SQLiteTx(conn.cursor())
            # NOTE: statement()'s two contexts (joined, own), made once too: they hold nothing but the Tx and the flag
            local.statements, local.pid = (_Statement(tx, False), _Statement(tx, True)), _process[0]
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
        local = self._local
        if getattr(local, 'pid', None) != _process[0]:  # NOTE: connection()'s test, without its call
            self.connection()
        return local.statements[not local.conn.in_transaction]

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
            self._local.conn = self._local.statement_tx = self._local.statements = None
            self._local.pid = None
