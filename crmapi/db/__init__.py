"""Connections to SQLite and PostgreSQL behind one small interface.

`db.transaction(write=...)` yields a Tx with `rows`, `one` and `execute`; driver errors become
CrmErrors here, so nothing above this module knows which driver runs. Connections are opened
lazily in the process that uses them (never inherited across gunicorn's fork).

PostgreSQL may have read replicas: a read outside any write transaction, in a request that allows it
(`begin_request` / `allow_replica_reads`), goes to a replica caught up enough; everything else goes to
the primary. With `pgbouncer`, no session state is kept (PgBouncer's transaction pooling).

One module per part: base (what both engines share), sqlite, postgres, translation (driver errors); the
names callers use are re-exported here.
"""

from urllib.parse import unquote
from urllib.parse import urlparse

from .translation import (
    translate_errors,
)
from .base import (
    Database,
    KeptCounts,
    Tx,
)
from .sqlite import (
    SQLiteDatabase,
    _sqlite_adapt,
)
from .postgres import (
    PostgresDatabase,
    WORK_MEM,
    _PostgresTx,
    _pg_adapt,
    parse_read_after,
)

__all__ = [
    'translate_errors',
    'Database',
    'KeptCounts',
    'Tx',
    'SQLiteDatabase',
    '_sqlite_adapt',
    'PostgresDatabase',
    'WORK_MEM',
    '_PostgresTx',
    '_pg_adapt',
    'parse_read_after',
    'connect',
]


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
