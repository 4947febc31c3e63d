"""What both engines share: the transaction interface (Tx), Database, exact totals kept (KeptCounts), the process id."""

import collections
import contextlib
import functools
import itertools
import os
import re

import threading

from .translation import _TRANSLATED


class Tx:
    """One transaction's cursor: the only way the store talks to a database."""

    kept = None  # the KeptCounts of this transaction's totals, or None: counted every time
    version_read = None  # the data version KeptCounts last read or counted at in this transaction

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

    def recalled(self, sql, params=()):
        """What `remember` kept of statement `sql` at the data version this transaction read (KeptCounts.recalled)."""
        return None if self.kept is None else self.kept.recalled(self, sql, params)

    def remember(self, sql, params, value):
        """Keep `value`, an outcome of statement `sql`, under the data version this transaction read."""
        if self.kept is not None:
            self.kept.remember(self, sql, params, value)

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


_process = [os.getpid()]  # this process's id, kept by os.register_at_fork: looking at it makes no system call


def _forked():
    _process[0] = os.getpid()


os.register_at_fork(after_in_child=_forked)


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
        tx.version_read = version
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
        if held is None:
            return None
        tx.version_read = tx.data_version()
        if held[0] != tx.version_read:
            return None
        with self._lock:
            if key in self._totals:
                self._totals.move_to_end(key)
        return held[1]

    def recalled(self, tx, sql, params):
        """What `remember` kept of `sql` with `params` under the data version `tx` read last (reading none: no round
        trip), or None.

        NOTE: an outcome of a statement (which of a search's walks proved its page) is kept beside the totals, and
        like them stands for the data it was had at: at the same version the statement does the same. Unlike a
        total it is a hint, never an answer (the version was read before the statement ran): a caller that acts on
        it still checks what the statement gives.
        """
        key = _count_key(('outcome', tx.counted_on()), sql, params)
        with self._lock:
            held = self._totals.get(key)
        if held is None or tx.version_read is None or held[0] != tx.version_read:
            return None
        return held[1]

    def remember(self, tx, sql, params, value):
        """Keep `value` as the outcome of `sql` with `params` under the data version `tx` read last (none: nothing)."""
        key = _count_key(('outcome', tx.counted_on()), sql, params)
        if key is not None and tx.version_read is not None:
            self._keep(key, tx.version_read, value)

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


class _Statement:
    """SQLiteDatabase.statement's context: its Tx; driver errors translated unless it joined a transaction (whose
    own `with` translates them)."""

    __slots__ = ('tx', 'own')

    def __init__(self, tx, own):
        self.tx, self.own = tx, own

    def __enter__(self):
        return self.tx

    def __exit__(self, kind, exc, traceback):
        return exc is not None and self.own and _TRANSLATED.__exit__(kind, exc, traceback)
