"""The production engine: psycopg pools, read replicas, PgBouncer, prepared statements, kept totals by snapshot."""

import collections
import contextlib
import datetime as dt
import functools
import itertools
import math
import re

import orjson
import threading
import time
import weakref

from .. import sqlbuild
from .. import values
from ..errors import CrmError
from .translation import _TRANSLATED
from .translation import translate_errors
from .base import Database
from .base import KeptCounts
from .base import Tx
from .base import _numbered
from .base import _process


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
        with _pg_cursors()[2](conn):  # psycopg's Transaction (what conn.transaction() opens, without its generator)
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
        with self._transaction_block(conn), tx.settled():
            yield tx
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
