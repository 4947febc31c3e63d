"""Driver errors become CrmErrors here, in one place for both drivers."""

import re
import sqlite3

from ..errors import BadRequest
from ..errors import Conflict
from ..errors import InvalidValue
from ..errors import PayloadTooLarge
from ..errors import Unavailable


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


def _busy():
    return Unavailable('The database is busy; retry the request')


def _too_slow():
    return Unavailable('The query took too long; retry or narrow it')


def _down():
    return Unavailable('The database is unavailable; retry shortly')


def _lost_race():
    return Unavailable('The change collided with a concurrent one; retry the request')


def _unique(field):
    if field:
        return Conflict(f"A record with the same '{field}' already exists", field=field)
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
            return integrity(exc.diag.column_name or _key_column(exc.diag.message_detail))
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
    """`NOT NULL constraint failed: contacts.last_name` names its column, `UNIQUE constraint failed:
    tags.organization_id, tags.name` its key's (see _key_column); other messages do not."""
    prefix, _, where = message.partition('constraint failed: ')
    if prefix.startswith('NOT NULL') and '.' in where and ',' not in where:
        return where.rsplit('.', 1)[1]
    if prefix.startswith('UNIQUE') and '.' in where:
        return where.rsplit('.', 1)[1]
    return None


_KEY = re.compile(r'Key \((\w+(?:, \w+)*)\)=')


def _key_column(detail):
    """The field a PostgreSQL key violation names: `Key (organization_id, name)=(…) already exists.` -> `name`.

    NOTE: every unique key a client can collide with is the organization and one field, last (so is SQLite's message);
    an expression key (parentheses inside) names none.
    """
    m = _KEY.match(detail or '')
    return m.group(1).rsplit(', ', 1)[-1] if m else None
