"""Connections to SQLite and PostgreSQL behind one small interface.

`db.transaction(write=...)` yields a Tx with `rows`, `one` and `execute`; driver errors become
CrmErrors here, so nothing above this module knows which driver runs. Connections are opened
lazily in the process that uses them (never inherited across gunicorn's fork).
"""
import contextlib
import datetime as dt
import json
import math
import os

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
from .errors import InvalidValue
from .errors import PayloadTooLarge
from .errors import Unavailable


class Tx:
    """One transaction's cursor: the only way the store talks to a database."""

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

    def execute(self, sql, params=()):
        self.cursor.execute(sql, params)
        if self.cursor.description is not None:
            self.cursor.fetchall()  # run a RETURNING statement to completion
        return self.cursor.rowcount


def _identity(value):
    return value


class Database:
    """What both engines share: dialect, row readers and error translation."""

    name = ''
    readers = {}

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
        return json.dumps(value, separators=(',', ':'), ensure_ascii=False)
    return value


def _sqlite_json(value):
    # NOTE: a JSONB column has NUMERIC affinity on SQLite, so a bare JSON number comes back as one.
    return orjson.loads(value) if isinstance(value, str) else value


# NOTE: SQLite VM instructions between two looks at the clock: 1-3 ms of work. Each look takes the
# GIL, which a busy Python thread may hold for up to 5 ms, so looking more often slows heavy queries.
PROGRESS_STEPS = 100_000


class _Deadline:
    """When a connection's running statement must stop: PostgreSQL's statement_timeout for SQLite.

    The connection's progress handler asks `passed()` every PROGRESS_STEPS instructions; a true answer
    interrupts the statement (SQLITE_INTERRUPT, a 503). A timeout of 0 or less means no limit, as on
    PostgreSQL.
    """

    def __init__(self, db):
        self.db = db
        self.at = math.inf

    def start(self):
        ms = self.db.statement_timeout_ms
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

    def cursor(self, factory=_Cursor):
        return super().cursor(factory)

    def execute(self, sql, params=()):
        # NOTE: sqlite3's own Connection.execute would run the statement without our cursor's execute.
        return self.cursor().execute(sql, params)


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
        self._local = threading.local()
        # NOTE: SQLite's busy handler polls rather than queues; with many threads per process one
        # writer can starve. Writers of one process take turns here, so only one per process polls.
        self._writer = threading.Lock()

    def _connect(self):
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_ms / 1000, factory=_Connection)
        conn.deadline = _Deadline(self)
        conn.set_progress_handler(conn.deadline.passed, PROGRESS_STEPS)
        conn.execute(f'PRAGMA busy_timeout = {int(self.busy_timeout_ms)}')
        if self.path != ':memory:':
            conn.execute('PRAGMA journal_mode = WAL')
        conn.execute(f'PRAGMA synchronous = {self.synchronous}')
        conn.execute('PRAGMA foreign_keys = ON')
        return conn

    def connection(self):
        local = self._local
        if getattr(local, 'pid', None) != os.getpid():
            local.conn, local.pid = self._connect(), os.getpid()
        return local.conn

    @contextlib.contextmanager
    def transaction(self, write=False):
        """A transaction; inside another one on this thread, the same transaction (joined)."""
        conn = self.connection()
        if conn.in_transaction:
            yield Tx(conn.cursor())
            return
        with translate_errors():
            # NOTE: a deferred BEGIN that reads then writes fails at once under contention,
            # whatever the busy timeout; IMMEDIATE takes the write lock up front.
            with self._writer if write else contextlib.nullcontext():
                conn.execute('BEGIN IMMEDIATE' if write else 'BEGIN')
                try:
                    yield Tx(conn.cursor())
                except BaseException:
                    conn.rollback()
                    raise
                conn.execute('COMMIT')

    @staticmethod
    def statements(sql):
        """Split a script into complete statements, as SQLite itself judges completeness."""
        pending = ''
        for line in sql.splitlines(keepends=True):
            pending += line
            if sqlite3.complete_statement(pending):
                yield pending.strip()
                pending = ''
        if pending.strip() and not all(l.strip().startswith('--') or not l.strip() for l in pending.splitlines()):
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
        """BEGIN IMMEDIATE already holds SQLite's write lock."""

    def table_exists(self, name):
        with self.transaction() as tx:
            return tx.one("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)) is not None

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
                rows = tx.rows('SELECT name, type, "notnull", dflt_value, pk, hidden '
                               'FROM pragma_table_xinfo(?)', (table,))
                if rows:
                    found[table] = [(n, t, not nn and not pk, d) for n, t, nn, d, pk, hidden in rows
                                    if hidden in (0, 2, 3)]
        return found

    def indexed_columns(self, tables):
        """{table: {column}} of every column some index stores (UNIQUE constraints included)."""
        sql = ('SELECT DISTINCT info.name FROM pragma_index_list(?) AS list, pragma_index_info(list.name) AS info '
               'WHERE info.name IS NOT NULL')
        with self.transaction() as tx:
            return {table: {name for (name,) in tx.rows(sql, (table,))} for table in tables}

    def close(self):
        conn = getattr(self._local, 'conn', None)
        if conn is not None:
            conn.close()
            self._local.conn = None
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


class PostgresDatabase(Database):
    """The production engine: a psycopg 3 pool per process, connections checked before use."""

    name = 'postgresql'
    readers = {
        'number': values.number_out,
        'date': dt.date.isoformat,
        'timestamp': values.format_timestamp,
    }

    def __init__(self, url, min_size=1, max_size=4, timeout=10.0, statement_timeout_ms=15_000):
        self.url = url
        self.pool_args = dict(min_size=min_size, max_size=max_size, timeout=timeout)
        self.statement_timeout_ms = statement_timeout_ms
        self.dialect = sqlbuild.postgres_dialect(_pg_adapt)
        self._pool, self._pid = None, None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._last_used = weakref.WeakKeyDictionary()

    def _configure(self, conn):
        from psycopg.types.json import set_json_loads
        set_json_loads(orjson.loads, conn)
        # NOTE: reads run statement by statement (no BEGIN/COMMIT round trips); every write
        # opens a real transaction in transaction() below.
        conn.autocommit = True
        conn.execute(f'SET statement_timeout = {int(self.statement_timeout_ms)}')
        # NOTE: psycopg prepares a statement run five times; PostgreSQL may then plan it once for any value
        # (a generic plan). How many rows a search or filter value matches is what picks a good plan:
        # `q` "jo smi" sorted by last_name took 0.5 s on a generic plan, 7 ms planned for its values.
        conn.execute('SET plan_cache_mode = force_custom_plan')
        conn.execute("SET TIME ZONE 'UTC'")

    def _check(self, conn):
        """Ping a pooled connection before use unless it served a request within the last second:
        a restart still costs at most one failed request per connection, a busy pool no round trip."""
        last = self._last_used.get(conn)
        if last is None or time.monotonic() - last > 1.0:
            from psycopg_pool import ConnectionPool
            ConnectionPool.check_connection(conn)

    def pool(self):
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    from psycopg_pool import ConnectionPool
                    self._pool = ConnectionPool(
                        self.url, configure=self._configure, check=self._check, open=True, **self.pool_args)
                    self._pid = os.getpid()
        return self._pool

    @contextlib.contextmanager
    def transaction(self, write=False):
        """A transaction for writes (a plain connection for reads); inside another one on this
        thread, the same connection, and a write inside a read still gets its transaction."""
        current = getattr(self._local, 'conn', None)
        if current is not None:
            if write and current.info.transaction_status == IDLE:
                with current.transaction():
                    yield Tx(current.cursor())
            else:
                yield Tx(current.cursor())
            return
        with translate_errors():
            with self.pool().connection() as conn:
                self._local.conn = conn
                try:
                    if write:
                        with conn.transaction():
                            yield Tx(conn.cursor())
                    else:
                        yield Tx(conn.cursor())
                    self._last_used[conn] = time.monotonic()
                finally:
                    self._local.conn = None

    def stream(self, sql, params, batch=500):
        """Rows of one query through a server-side cursor: memory stays flat however many rows."""
        with translate_errors(), self.pool().connection() as conn:
            with conn.transaction():
                with conn.cursor(name='crmapi_export') as cursor:
                    cursor.execute(sql, params)
                    while rows := cursor.fetchmany(batch):
                        yield from rows

    def run_script(self, tx, sql):
        tx.execute(sql)

    def lock_for_migration(self, tx):
        """One migrating process at a time, whichever app server started first."""
        tx.execute('SELECT pg_advisory_xact_lock(4242001)')

    def table_exists(self, name):
        with self.transaction() as tx:
            return tx.one('SELECT to_regclass(%s)', (name,))[0] is not None

    def ping(self, timeout=2.0):
        """Readiness: a pooled connection within `timeout` seconds that answers a query."""
        with translate_errors(), self.pool().connection(timeout=timeout) as conn:
            conn.execute('SELECT 1 FROM schema_version')

    def introspect(self, tables):
        sql = ('SELECT table_name, column_name, '
               "CASE WHEN data_type = 'numeric' AND numeric_precision IS NOT NULL "
               "THEN 'numeric(' || numeric_precision || ',' || numeric_scale || ')' ELSE data_type END, "
               "is_nullable = 'YES', column_default "
               'FROM information_schema.columns '
               'WHERE table_schema = current_schema() AND table_name = ANY(%s) '
               'ORDER BY table_name, ordinal_position')
        found = {}
        with self.transaction() as tx:
            for table, name, declared, nullable, default in tx.rows(sql, (list(tables),)):
                found.setdefault(table, []).append((name, declared, nullable, default))
        return found

    def indexed_columns(self, tables):
        """{table: {column}} of every column some index stores (key and INCLUDE columns)."""
        sql = ('SELECT DISTINCT t.relname, a.attname FROM pg_index i '
               'JOIN pg_class t ON t.oid = i.indrelid '
               'JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) '
               'WHERE t.relnamespace = current_schema()::regnamespace AND t.relname = ANY(%s)')
        found = {table: set() for table in tables}
        with self.transaction() as tx:
            for table, name in tx.rows(sql, (list(tables),)):
                found[table].add(name)
        return found

    def close(self):
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()
        self._pool, self._pid = None, None


@contextlib.contextmanager
def translate_errors():
    """Driver exceptions become CrmErrors; the driver's text never reaches a client.

    Bad input is a 4xx, a passing condition (busy, timed out, unreachable, out of resources, a
    lost race) a 503 with Retry-After; anything else is a bug and stays an exception (a logged 500).
    """
    try:
        yield
    except Exception as exc:
        mapped = _map_sqlite(exc) if isinstance(exc, sqlite3.Error) else _map_psycopg(exc)
        if mapped is None:
            raise
        raise mapped from exc


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
_PG_INTEGRITY = {'23505': _unique, '23503': _foreign_key, '23502': _not_null, '23514': _refused_value,
                 '22': _refused_value, '23': _other_integrity, '40002': _other_integrity}
_PG_CONDITIONS = {
    '54000': _too_large,      # program_limit_exceeded: an index row or a value over a size limit
    '54': _too_complex,       # too many columns, arguments or nesting levels
    '40': _lost_race,         # serialization failure, deadlock: the transaction may simply be retried
    '57014': _too_slow,       # query_canceled: statement_timeout
    '57': _down,              # admin or crash shutdown, cannot connect now
    '08': _down,              # connection exception
    '53': _down,              # insufficient resources: disk full, out of memory, too many connections
    '55P03': _busy,           # lock_not_available
    '25006': _down,           # read_only_sql_transaction: a standby during a failover
    '72000': _lost_race,      # snapshot_too_old
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
    sqlite3.SQLITE_CONSTRAINT_UNIQUE: _unique, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY: _unique,
    sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY: _foreign_key, sqlite3.SQLITE_CONSTRAINT_NOTNULL: _not_null,
    sqlite3.SQLITE_CONSTRAINT_CHECK: _refused_value, SQLITE_CONSTRAINT_DATATYPE: _refused_value,
    sqlite3.SQLITE_MISMATCH: _refused_value,
}
_SQLITE_CONDITIONS = {  # primary result code -> error
    sqlite3.SQLITE_BUSY: _busy, sqlite3.SQLITE_LOCKED: _busy,
    sqlite3.SQLITE_INTERRUPT: _too_slow,  # the progress handler's time limit, like statement_timeout
    sqlite3.SQLITE_FULL: _down, sqlite3.SQLITE_IOERR: _down, sqlite3.SQLITE_NOMEM: _down,
    sqlite3.SQLITE_CANTOPEN: _down, sqlite3.SQLITE_READONLY: _down, sqlite3.SQLITE_PROTOCOL: _down,
    sqlite3.SQLITE_TOOBIG: _too_large,
}
# NOTE: SQLite reports its limits on statements as a plain SQLITE_ERROR: only the text tells.
_SQLITE_LIMIT_TEXTS = ('too many SQL variables', 'too many terms', 'too many columns', 'too many arguments',
                       'Expression tree is too large', 'pattern too complex', 'parser stack overflow')


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


def connect(url):
    """A Database for `sqlite:///path`, `sqlite://:memory:` or `postgresql://…`.

    A malformed URL is a ValueError naming what is wrong (never echoing a password): a typo must
    not quietly open another file or an in-memory database.
    """
    parsed = urlparse(url)
    if parsed.scheme == 'sqlite':
        return SQLiteDatabase(_sqlite_path(url, parsed))
    if parsed.scheme in ('postgresql', 'postgres'):
        _check_postgres_url(url)
        return PostgresDatabase(url)
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
        raise ValueError(f"'{url}' names a host ('{parsed.netloc}'); a SQLite URL has none: "
                         f'write sqlite:///{parsed.netloc}{parsed.path} for a relative path')
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
