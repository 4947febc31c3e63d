"""Versioned schema migrations: `NNNN_name.sql` files in this package, applied in order.

Each step runs in its own transaction together with the bump of `schema_version`, so a database
is always at exactly one version. `init-db` is "migrate from empty". A file may have dialect
twins (`NNNN_name.sqlite.sql`, `NNNN_name.postgresql.sql`) for the rare statement the two
databases spell differently; the twin for the running database replaces the portable file.
"""

import re
from importlib import resources

from .. import sqlbuild

_FILE = re.compile(r'(\d{4})_([a-z0-9_]+?)(?:\.(sqlite|postgresql))?\.sql\Z')


def available(dialect):
    """[(version, name, sql)] for `dialect`, in order."""
    steps = {}
    for entry in resources.files(__name__).iterdir():
        m = _FILE.match(entry.name)
        if not m or (m.group(3) and m.group(3) != dialect):
            continue
        version = int(m.group(1))
        if version in steps and not m.group(3):
            continue  # a dialect twin wins over the portable file
        steps[version] = (version, m.group(2), entry.read_text())
    return [steps[v] for v in sorted(steps)]


def latest(dialect):
    return available(dialect)[-1][0]


def current_version(tx):
    row = tx.one(sqlbuild.VERSION_READ)
    return row[0] or 0


def migrate(db, target=None, log=lambda message: None):
    """Bring `db` up to `target` (default: the newest version). Returns the versions applied.

    Safe to run from many hosts at once: each step, the version table's creation included, runs under
    the migration lock (a transaction-level advisory lock on PostgreSQL, the write lock on SQLite).
    NOTE: PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against itself: two at once may both
    find no table and one then fails on the catalog's unique index. Under the lock the second finds it.
    """
    applied = []
    for version, name, sql in available(db.name):
        if target is not None and version > target:
            break
        with db.transaction(write=True) as tx:
            db.lock_for_migration(tx)
            tx.execute(sqlbuild.VERSION_TABLE)
            if version <= current_version(tx):
                continue  # another process got here first
            db.run_script(tx, sql)
            for statement in sqlbuild.build_version_set(version):
                tx.execute(statement)
        applied.append(version)
        log(f'applied {version:04d}_{name}')
    if applied and db.name == 'sqlite':
        analyze_new_indexes(db, log)
    backfill(db, applied, log)
    return applied


def analyze_new_indexes(db, log):
    """Statistics for the indexes the steps created on a SQLite database that has statistics (see
    sqlbuild.UNANALYZED_INDEXES): without them the planner misjudges every new index."""
    with db.transaction(write=True) as tx:
        if tx.one(sqlbuild.HAS_STATISTICS) is None:
            return
        for (name,) in tx.rows(sqlbuild.UNANALYZED_INDEXES):
            tx.execute(sqlbuild.build_analyze_index(name))
            log(f'analyzed {name}')


# Steps whose data SQL cannot make (text folded in Python): filled in once the schema is at its newest.
BACKFILLS = {19: 'search rows'}


def backfill(db, applied, log):
    """Fill in what the steps just `applied` added for the records already there (in Python)."""
    if not any(v in BACKFILLS for v in applied):
        return
    with db.transaction() as tx:
        newest = current_version(tx) == latest(db.name)
    if not newest:
        log('run `crmapi reindex` once the schema is at its newest version (search rows)')
        return
    from ..store import reindex_database

    reindex_database(db, log=log)
