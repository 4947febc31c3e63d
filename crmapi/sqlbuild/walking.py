"""Walks: a broad search's first page found among the first records of its order, each checked on its search row."""

import math
from dataclasses import replace

from pypika import Table
from pypika.terms import Criterion

from .core import Bound
from .core import Sql
from .core import _shaped
from .core import quote
from .conditions import SEARCH_KIND
from .conditions import _row_match
from .conditions import _scope
from .conditions import _score
from .conditions import _words_hold
from .conditions import search_table
from .conditions import searches_only
from .reads import _records_select
from .reads import _select
from .reads import _select_values
from .reads import list_shape
from .reads import page_columns
from .reads import reads_seen


# A broad search (q "mar": 137k of 1M contacts) reads, counts and sorts every match to find page 1. Its first
# page is usually among the first records of the list's order: `build_walk` checks only the first records in that
# order on their search rows (WALK_FIRST, then WALK when the first ones promise a page). When they hold a full page,
# it is the list's page; else the caller reads the matches (build_list). Its total is then counted apart
# (build_count; both databases keep it while the data is unchanged: db.KeptCounts).

WALK_FIRST = 200  # records a page of a search walks first; a rare match stops there
WALK = 1_000  # records it walks when the first ones hold enough matches, before it reads every match instead
WALK_PAGE = 100  # the deepest end of a page (start + size) looked for by a walk
WALK_ROOM = 5 / 4  # how many more records a longer walk reads than the first one's rate of matches says it needs


def longer_walks(found, needed):
    """The lengths of the walks tried after the first one (WALK_FIRST records) held `found` of the `needed` matches
    of a page (its start plus its size), shortest first: none when WALK records would not hold them at that rate; else
    the records that rate needs, with WALK_ROOM, in whole WALK_FIRSTs, then WALK when that is more.

    NOTE: SQLite checks every record a walk is given: it sorts the records that pass (a temporary B-tree) before taking
    the page, where PostgreSQL stops at the page's last match. At 1M contacts q "mar" by last name held 19 of 25 in
    its first 200 and walked 1,000 records (3.6 ms CPU) where ~260 hold the page (0.3 ms for 400).
    """
    if found * WALK < needed * WALK_FIRST:
        return ()
    length = math.ceil(needed * WALK_ROOM / found) * WALK_FIRST
    return (length, WALK) if length < WALK else (WALK,)


def _fence(d):
    """What ends a walk's search-row check so that PostgreSQL runs it as a lookup per record (see build_walk)."""
    return ' OFFSET 0' if d.name == 'postgresql' else ''


def walks(info, lq):
    """Whether build_walk applies: a list that only searches, read from its start, sorted by the record's own
    columns (or ranked, or in id order), its page within WALK_PAGE."""
    return searches_only(info, lq) and 0 < lq.start + lq.size <= WALK_PAGE and all(s.via is None for s in lq.sorts)


def _walk_check(d, info, org_id, lq):
    """The search row of a walked record passes the list's q's and text operators, read on the row; ranked, it
    holds every word asked for in its name columns (the best score: a walk pages only records of that score)."""
    parts = [_scope(search_table(info), org_id)]
    if lq.search is not None:
        parts.append(_words_hold(d, lq.search))
    parts += [_row_match(d, f, indexed=False) for f in lq.filters]
    if lq.ranked:
        parts.append(Sql('{0} = {1}', _score(d, lq), Bound(len(lq.rank_words))))
    return Sql('SELECT 1 FROM search_texts s WHERE {0}', Criterion.all(parts))


def _shaped_check(d, key, info, org_id, lq):
    """(sql, params) of _walk_check for `lq`, its SQL written once per `key` (a shape of the list)."""

    def check():
        return _walk_check(d, info, org_id, lq)

    return _shaped(d, key, check, check, [])


def build_walk(d, info, org_id, lq, length, seen=False):
    """(sql, params) of a search's page found by a walk of `length` records, or None where walks() says no;
    `seen`: as build_list's.

    The first `length` records in the list's order (ranked: id order, among the records of the best score), without
    the search, each checked on its search row; from where its matches can start, when it filters its first sort
    column (`_seek`). NOTE: when the walk returns a full page, every record before the
    page's last one in the list's order was walked, so the page is the list's own; a short one proves nothing.
    """
    if not walks(info, lq):
        return None
    table = Table(info.spec.table)
    plain = replace(lq, filters=(), search=None)
    keys = list(dict.fromkeys(['id', *(s.column.name for s in lq.sorts)]))
    walked, params = _shaped(
        d,
        ('walk', list_shape(info, plain)),
        lambda: _select(d, info, org_id, plain, keys),
        lambda: _select_values(d, table, info, org_id, plain),
        [],
    )
    check, checks = _shaped_check(d, ('walk_check', list_shape(info, lq)), info, org_id, lq)
    name, p = quote(info.spec.table), d.parameter().get_sql()
    head, _, order = walked.rpartition(' ORDER BY ')
    seek = _seek(d, info, org_id, lq, length, head.partition(' WHERE ')[2], params)
    if seek is not None:
        walked, params = f'{head} AND {seek[0]} ORDER BY {order}', [*params, *seek[1]]
    rows = _records_select(d, table, page_columns(info, seen and reads_seen(info)))
    # NOTE: the walk reads only the keys of the order (a covering index), the page's records are read last. Its
    # length is written into the statement: PostgreSQL plans a LIMIT it is not told as a tenth of the table. Each
    # walked record is checked on its own search row: on PostgreSQL `OFFSET 0` keeps the EXISTS a per-record lookup
    # by the whole key; as a semi-join, with the statistics of a table that grew since it was analyzed, it was
    # planned as a scan of all the organization's search rows per record (7.6 s for a page of tags in the tests).
    sql = (
        f'{rows} WHERE "organization_id"={p} AND "id" IN (SELECT "id" FROM ({walked} LIMIT {int(length)}) {name} '
        f'WHERE EXISTS ({check} AND s.record_id = {name}."id"{_fence(d)}) ORDER BY {order} LIMIT {p} OFFSET {p}) '
        f'ORDER BY {order}'
    )
    return sql, [org_id, *params, *checks, int(lq.size), int(lq.start)]


def _seek_filters(lq):
    """The text operators of a walked list on its first sort column: each is decided by that column's value alone."""
    first = lq.sorts[0] if lq.sorts else None
    if first is None or first.column.name == 'id':
        return ()
    return tuple(f for f in lq.filters if f.column.kind != SEARCH_KIND and f.column.name == first.column.name)


def _seek(d, info, org_id, lq, length, scope, scope_params):
    """(sql, params) of where a walk starts: its first sort column at or past the first of its values that passes the
    list's text operators on that column, or None (no such operator). `length`: the walk's; `scope`: the walked
    list's WHERE (and its params).

    NOTE: the matches of an operator on the sort column lie together in the sort's order (contains "mith": the
    Smiths, past 80 % of the contacts by last name), where a walk from the start never gets. Such an operator is decided
    by the value alone, so the values before the run are passed over one at a time (a loose index scan: the next
    value, and one record holding it checked on its search row), at most as many as the records the walk reads (the
    same bound on its cost): stopped there, the walk starts at the first value not proven to fail, and a run that
    starts past it is read as today (build_list). NULL passes no text operator, so it is never a start.
    """
    filters = _seek_filters(lq)
    sort = lq.sorts[0] if filters else None
    if sort is None or sort.column.max_length is None:
        return None  # NOTE: a column no index stores (schema.make_column) would cost a scan per value passed over
    checked = replace(lq, search=None, filters=filters)
    check, checks = _shaped_check(d, ('walk_seek', list_shape(info, lq)), info, org_id, checked)
    c, t = quote(sort.column.name), quote(info.spec.table)
    beyond, first = ('<', 'max') if sort.descending else ('>', 'min')

    def value(condition):
        # NOTE: min/max, not ORDER BY … LIMIT 1: PostgreSQL serves them from an index on the column whatever its
        # NULLS order (an ORDER BY spelled otherwise than the index sorted all of a million contacts per value)
        return f'(SELECT {first}({c}) FROM {t} WHERE {scope} AND {condition})'

    holder = f'(SELECT "id" FROM {t} WHERE {scope} AND {c} = v.x LIMIT 1)'
    sql = (
        f'{c} {beyond}= (WITH RECURSIVE v(x, n) AS (SELECT {value(f"{c} IS NOT NULL")}, 0 UNION ALL '
        f'SELECT {value(f"{c} {beyond} v.x")}, v.n + 1 FROM v WHERE v.x IS NOT NULL AND v.n < {int(length)} '
        f'AND NOT EXISTS ({check} AND s.record_id = {holder}{_fence(d)})) SELECT x FROM v ORDER BY n DESC LIMIT 1)'
    )
    return sql, [*scope_params, *scope_params, *checks, *scope_params]
