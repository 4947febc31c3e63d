"""Record operations and their transactions: list, get, create, update, delete, restore, merge.

The store receives parsed, validated input (a ListQuery, a body dict) and a Principal; it turns
them into statements through `sqlbuild` and runs every multi-statement operation in one
transaction, so a failure leaves nothing half-written.
"""

import datetime as dt
import difflib
import functools
import os
import threading
import time
from dataclasses import dataclass
from operator import itemgetter

import orjson

from . import duplicates
from . import history
from . import search
from . import sqlbuild
from . import values
from .errors import BadRequest
from .errors import Conflict
from .errors import Forbidden
from .errors import InvalidBody
from .errors import InvalidParam
from .errors import InvalidValue
from .errors import MethodNotAllowed
from .errors import NotFound
from .errors import RecordNotFound
from .errors import UnknownField
from .errors import UnknownResource
from .query import Filter
from .query import ListQuery
from .schema import snake_case

_CROCKFORD = '0123456789abcdefghjkmnpqrstvwxyz'
MAX_MERGE_SOURCES = 100
MERGE_FIELDS = ('source_ids', 'target_id', 'dry_run', 'loserId', 'winnerId')
ATOMIC_MERGE_FIELDS = ('loserId', 'winnerId')  # Atomic CRM's merge: one loser into one winner
MAX_BATCH = 1000  # records one batch request may write
ESTIMATE_SCOPE = 200  # count=estimated on SQLite: sampled rows of the organization needed (a tenth of the sample)
ESTIMATE_MATCHES = 40  # ... and matches among them
SHAPED = frozenset({'automation_rules'})  # resources whose records have a shape beyond their columns (crmapi.rules)


_last_id = [0, 0]
_id_lock = threading.Lock()


def new_id(prefix):
    """Prefix + 26 Crockford base32 characters: 48 bits of milliseconds, then 80 random bits.

    Within one process ids only grow: a second id in the same millisecond is the last one plus 1.
    """
    return prefix + crockford(_reserve(1))


def new_ids(prefix, count):
    """`count` ids as new_id makes them, in order, taken at once (a batch's).

    NOTE: consecutive numbers share all but their last digits: the first 22 digits (the bits above the lowest
    20) are spelt once per run of numbers that share them, and only the last four per id.
    """
    first = _reserve(count)
    ids, n, end = [], first, first + count
    while n < end:
        stop = min(end, ((n >> 20) + 1) << 20)
        head = prefix + crockford(n)[:22]
        ids += [head + _DIGIT_PAIRS[(m >> 10) & 1023] + _DIGIT_PAIRS[m & 1023] for m in range(n, stop)]
        n = stop
    return ids


def _reserve(count):
    """The first of `count` consecutive id numbers: milliseconds, then random bits counting up."""
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_id[0]:
            ms, rand = _last_id[0], _last_id[1] + 1
        else:
            rand = int.from_bytes(os.urandom(10), 'big') >> 1  # room to count up within the millisecond
        _last_id[:] = [ms, rand + count - 1]
    return ms << 80 | rand


# NOTE: two digits (10 bits) a step, from a table: an id is made for every record and every change a write
# records, and digit by digit took a third of a batch's Python time.
_DIGIT_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = range(120, -1, -10)


def crockford(n):
    """A number below 2**130 as 26 Crockford base32 digits."""
    return ''.join([_DIGIT_PAIRS[(n >> shift) & 1023] for shift in _PAIR_SHIFTS])


class Page(list):
    """A page of records (Store.list); `seen`: each record's sqlbuild.SEEN_COLUMN when the page read it, else None."""

    seen = None


MAX_SHAPES = 1000  # entries of a per_shape cache: custom objects make new table shapes, so it is bounded
_MISSING = object()


def per_shape(cache, key, make):
    """cache[key], made by make() the first time (None is a value too); the cache is emptied when full."""
    value = cache.get(key, _MISSING)
    if value is _MISSING:
        if len(cache) > MAX_SHAPES:
            cache.clear()
        value = cache[key] = make()
    return value


def utc_now():
    return dt.datetime.now(values.UTC)


def is_empty(value):
    return value is None or value == '' or value == []


def _holds(column, stored, value):
    """Whether a record's value as read (`stored`) is the checked value `value` a write would store."""
    if stored is None or value is None:
        return stored is None and value is None
    try:
        current = values.check(column, stored)
    except InvalidValue:  # NOTE: stored before a rule was made stricter: a write replaces it
        return False
    return history.same(current, value)


def unknown_field(resource, key, name, known):
    """A body field `resource` does not have, with the closest known field name when there is one."""
    detail = f"Resource '{resource}' has no field '{key}'"
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        detail += f"; did you mean '{close[0]}'?"
    return UnknownField(detail, field=key)


def raise_all(problems):
    """Raise the first problem of a body, carrying every one of them in `errors`."""
    if problems:
        first = problems[0]
        first.members['errors'] = [{'field': p.members.get('field'), 'detail': p.detail} for p in problems]
        raise first


def reference_ids(value):
    """The ids a reference value names: none, one, or an array's."""
    if is_empty(value):
        return []
    return value if isinstance(value, list) else [value]


def check_batch(items, param=None):
    """A batch is 1 to MAX_BATCH items: a JSON array body, or the ids of the query parameter `param`.

    NOTE: more is a 400, not a 413: the body may be well under the size limit; the count is what is refused.
    """
    error = InvalidBody if param is None else functools.partial(InvalidParam, param=param)
    if not isinstance(items, list) or not items:
        raise error(f'A batch is a JSON array of 1 to {MAX_BATCH} records')
    if len(items) > MAX_BATCH:
        raise error(
            f'A batch holds at most {MAX_BATCH} records and this one has {len(items)}: send it in parts',
            limit=MAX_BATCH,
        )


def repeated(first, index, field, says):
    """Item `index` repeats what item `first` holds (an id, a unique value): a problem that names both.

    Its `items` lists them, so that whoever numbers the items otherwise (a CSV, by line) names them its
    way with named_items rather than by parsing the detail.
    """
    return InvalidValue(f'{items_phrase((first, index))} {says}', field=field, items=[first, index])


def items_phrase(numbers, noun='Items'):
    """'Items 0 and 1': how a problem's detail starts when it names several items."""
    return f'{noun} {", ".join(str(n) for n in numbers[:-1])} and {numbers[-1]}'


def named_items(problem, number, noun):
    """The detail of a batch problem ({'detail', 'items'}) with the items it names given by
    `number(index)` (a CSV's line) and `noun` ('Lines') instead of by index."""
    items = problem.get('items')
    if not items:
        return problem['detail']
    return items_phrase([number(i) for i in items], noun) + problem['detail'][len(items_phrase(items)) :]


def item_problems(index, exc):
    """What one bad item adds to a batch's error: each of its problems, with the item's index."""
    listed = exc.members.get('errors') or [
        {'field': exc.members.get('field'), 'detail': exc.detail, 'items': exc.members.get('items')}
    ]
    return [{'index': index, **{k: v for k, v in problem.items() if v is not None}} for problem in listed]


def raise_items(failures, batch=True):
    """[(index, error)] of a request's items -> the first error; in a batch it names its item (`index`)
    and lists every item's problems (`errors`: index, field, detail)."""
    if not failures:
        return
    index, first = failures[0]
    if not batch:
        raise_all([exc for _, exc in failures])
    problems = [problem for i, exc in failures for problem in item_problems(i, exc)]
    first.members = {**first.members, 'index': index, 'errors': problems}
    raise first


def item_ids(items):
    """The `id` each item of a PATCH batch carries: a string, and no id twice."""
    failures, seen = [], {}
    for index, item in enumerate(items):
        record_id = item.get('id') if isinstance(item, dict) else None
        if not isinstance(record_id, str) or not record_id:
            failures.append((index, InvalidValue("Each item needs the 'id' of the record it changes", field='id')))
        elif reason := values.unstorable(record_id):
            failures.append((index, InvalidValue(f'An id may not contain {reason}', field='id')))
        elif record_id in seen:
            failures.append(
                (index, repeated(seen[record_id], index, 'id', f"both change '{record_id}': send each record once"))
            )
        else:
            seen[record_id] = index
    raise_items(failures)
    return [item['id'] for item in items]


def upsert_keys(changes, column, batch):
    """Each item's value of the on_conflict column: there, and not twice in one request."""
    failures, seen = [], {}
    for index, change in enumerate(changes):
        key = change.get(column)
        if key is None:
            failures.append(
                (
                    index,
                    InvalidValue(
                        f"Field '{column}' is required: it is the on_conflict column that finds the record",
                        field=column,
                    ),
                )
            )
        elif key in seen:
            failures.append(
                (index, repeated(seen[key], index, column, f"have the same '{column}' ({key}): send each key once"))
            )
        else:
            seen[key] = index
    raise_items(failures, batch)
    return [change[column] for change in changes]


@dataclass(frozen=True)
class MergeRequest:
    source_ids: list
    target_id: str
    dry_run: bool
    sources_field: str  # the body fields that named them, for the errors
    target_field: str


def merge_request(slug, body, lenient=False):
    """A merge body checked: {"source_ids", "target_id", "dry_run"}, or Atomic CRM's {"loserId", "winnerId"}.

    The target is left out of the sources, and a source named twice is merged once.
    """
    if not isinstance(body, dict):
        raise InvalidBody('The request body must be a JSON object')
    if not lenient:
        raise_all(
            [
                unknown_field(f'merge_{slug}', key, snake_case(key), MERGE_FIELDS)
                for key in body
                if key not in MERGE_FIELDS
            ]
        )
    noun = 'company' if slug == 'companies' else slug.rstrip('s')
    dry_run = body.get('dry_run', False)
    if not isinstance(dry_run, bool):
        raise InvalidValue("Field 'dry_run' must be true or false", field='dry_run')
    if any(key in body for key in ATOMIC_MERGE_FIELDS):
        if 'source_ids' in body or 'target_id' in body:
            raise InvalidValue(
                'Send source_ids and target_id, or loserId and winnerId, not both',
                field='source_ids' if 'source_ids' in body else 'target_id',
            )
        sources_field, target_field = ATOMIC_MERGE_FIELDS
        loser = body.get(sources_field)
        sources = [loser] if isinstance(loser, str) and loser else None
        sources_detail = f"Field 'loserId' must be the id of the {noun} to merge away"
    else:
        sources_field, target_field = MERGE_FIELDS[:2]
        sources = body.get(sources_field)
        sources_detail = f"Field 'source_ids' must be a non-empty array of {noun} ids"
    target_id = body.get(target_field)
    if not isinstance(target_id, str) or not target_id:
        raise InvalidValue(f"Field '{target_field}' must be the id of the {noun} to keep", field=target_field)
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
        raise InvalidValue(sources_detail, field=sources_field)
    for field, ids in ((target_field, [target_id]), (sources_field, sources)):
        reason = values.unstorable_among(ids)
        if reason:
            raise InvalidValue(f"Field '{field}' holds an id with {reason}", field=field)
    if len(sources) > MAX_MERGE_SOURCES:
        raise InvalidValue(f'At most {MAX_MERGE_SOURCES} source_ids may be merged at once', field=sources_field)
    sources = [s for s in dict.fromkeys(sources) if s != target_id]
    return MergeRequest(sources, target_id, dry_run, sources_field, target_field)


class Store:
    def __init__(self, db, catalog, clock=utc_now, changes=None):
        self.db = db
        self.catalog = catalog
        self.clock = clock
        self._readers = {}
        self._uniques = {}
        self.history = changes or history.History(db, lambda: self.clock(), new_ids)
        self.webhook_allow_private = False  # the app's CRMAPI_WEBHOOK_ALLOW_PRIVATE: rules' webhook actions

    # -- reading -----------------------------------------------------------------------------------

    def reader(self, info):
        """Raw row tuple -> record dict, compiled once per table shape (columns after the record's are left out)."""
        # NOTE: a known shape's reader by one lookup: per_shape's call and its maker's closure were ~0.2 µs a get
        read = self._readers.get(info.shape_key)
        return read if read is not None else per_shape(self._readers, info.shape_key, lambda: self._reader_of(info))

    def _reader_of(self, info):
        names = sqlbuild.output_columns(info)
        kinds = [info.columns[n].kind for n in names]
        return self.db.record_reader(names, kinds)

    def _fetch(self, tx, info, principal, record_id, for_update=False):
        row = tx.one(*sqlbuild.build_get(self.db.dialect, info, principal.org_id, record_id, for_update))
        if row is None:
            raise RecordNotFound(f"No {info.slug} record with id '{record_id}'", param='id')
        return self.reader(info)(row)

    def list(self, info, principal, lq, count='exact', seen=False):
        """One page of records (a Page) and the number of matches: exact, estimated, or None for `none`.

        `seen`: the page's `seen` holds each record's sqlbuild.SEEN_COLUMN where its table has one (for
        Relations.embed).
        """
        d = self.db.dialect
        seen = seen and sqlbuild.reads_seen(info)
        read = self.reader(info)
        with self.db.transaction() as tx:
            # NOTE: a total kept (db.KeptCounts) is read once, before a walk, which it may spare (see _walked)
            kept = (
                tx.kept_count(*sqlbuild.build_count(d, info, principal.org_id, lq))
                if count != 'none' and sqlbuild.walks(info, lq)
                else None
            )
            raw, counted = self._walked(tx, info, principal, lq, seen, kept), None
            if raw is None:
                raw = tx.rows(*sqlbuild.build_list(d, info, principal.org_id, lq, seen))
                counted = raw[0][-1] if raw and sqlbuild.pages_in_rows(info, lq) else None
            rows = Page([read(r[:-1] if counted is not None else r) for r in raw])
            if seen:
                # NOTE: the flags come after the record's columns, which the reader reads alone: the records are the
                # plain page's, and no record holds a key to take out again before the answer is written.
                rows.seen = list(map(itemgetter(len(sqlbuild.output_columns(info))), raw))
            if count == 'none':
                total = None
            elif lq.start == 0 and lq.after is None and len(rows) < lq.size:
                total = len(rows)
            elif counted is not None and count == 'exact':
                total = counted
            elif kept is not None:
                total = kept
            else:
                total = self._total(tx, info, principal, lq, count)
            if count == 'estimated':
                total = self._within_page(total, lq, rows)
        return rows, total

    @staticmethod
    def _within_page(estimate, lq, rows):
        """An estimate never below what the page proves: `contacts 0-2/1` would contradict itself (react-admin shows
        "1-3 of 1"). A short page that holds rows ends the list, so its total is known exactly."""
        if rows and len(rows) < lq.size:
            return lq.start + len(rows)
        return max(estimate, lq.start + len(rows))

    def _walked(self, tx, info, principal, lq, seen=False, kept=None):
        """A broad search's page from a walk of the first records in its order (sqlbuild.build_walk), or None:
        not a search it applies to, or too few matches among them to prove the page.

        NOTE: a walk of WALK_FIRST records goes on to longer ones only when its matches promise a page within WALK
        (walking.longer_walks): a rare match (q "jo smi": 0.3 % of the records) costs the short walk only. An exact
        total kept from an earlier count (`kept`) of at most WALK_FIRST matches skips the walk: reading them all costs
        no more. Which walk proved the page, or that none did, is kept beside the totals (Tx.remember): a repeated
        request on the same data goes to that walk, or to reading the matches, without the walks that fell short.
        """
        d, org_id, first = self.db.dialect, principal.org_id, sqlbuild.walking.WALK_FIRST
        walk = sqlbuild.build_walk(d, info, org_id, lq, first, seen)
        if walk is None or (kept is not None and kept <= first):
            return None
        known = tx.recalled(*walk)
        if known == 0:
            return None
        length = known or first
        rows = tx.rows(*(walk if length == first else sqlbuild.build_walk(d, info, org_id, lq, length, seen)))
        if len(rows) < lq.size and not known:
            for length in sqlbuild.walking.longer_walks(lq.start + len(rows), lq.start + lq.size):
                rows = tx.rows(*sqlbuild.build_walk(d, info, org_id, lq, length, seen))
                if len(rows) == lq.size:
                    break
        proved = len(rows) == lq.size
        tx.remember(*walk, length if proved else 0)
        return rows if proved else None

    def _total(self, tx, info, principal, lq, count='exact'):
        """The live-row counter when nothing narrows the list; else an index-backed COUNT, or with
        `count=estimated` an estimate (`_estimate`) where there is one."""
        d = self.db.dialect
        if not (lq.equals or lq.filters or lq.search is not None or lq.include_archived):
            counter = tx.one(*sqlbuild.build_count_read(d, principal.org_id, info.spec.counted_as))
            if counter is not None:
                return counter[0]
        exact = sqlbuild.build_count(d, info, principal.org_id, lq)
        if count == 'estimated':
            # NOTE: an exact total kept from an earlier count beats any estimate, and costs less than sampling one
            estimate = tx.kept_count(*exact)
            if estimate is None:
                estimate = self._estimate(tx, info, principal.org_id, lq)
            if estimate is not None:
                return estimate
        return tx.count(*exact)

    def _estimate(self, tx, info, org_id, lq):
        """PostgreSQL: the planner's estimate. SQLite: exact below sqlbuild.ESTIMATE_FROM matches, else the live-row
        counter times the share of matches among the organization's rows of a fixed sample (see sqlbuild's
        "estimated totals"). None where the sample cannot tell (the caller counts exactly).

        NOTE: the sample needs ESTIMATE_SCOPE of the organization's rows (an organization with a small share of a
        big table falls back) and ESTIMATE_MATCHES matches among them (relative error at least 1/sqrt(matches), more
        as neighbouring rows are alike: +14 % measured at ~300 in 1M contacts); rarer filters are counted exactly,
        at the cost of a count of a small share.
        """
        d = self.db.dialect
        if d.name == 'postgresql':
            plan = tx.one(*sqlbuild.build_estimate(d, info, org_id, lq))[0]
            return int(plan[0]['Plan']['Plan Rows'])
        if not sqlbuild.samples(info, lq):
            return None
        capped = tx.one(*sqlbuild.build_capped_count(d, info, org_id, lq, sqlbuild.ESTIMATE_FROM))[0]
        if capped < sqlbuild.ESTIMATE_FROM:
            return capped
        counter = tx.one(*sqlbuild.build_count_read(d, org_id, info.spec.counted_as))
        rowids = sqlbuild.sample_rowids(*tx.one(*sqlbuild.build_rowid_span(d, info)))
        in_scope, matches = tx.one(*sqlbuild.build_sample_count(d, info, org_id, lq, rowids))
        if counter is None or in_scope < ESTIMATE_SCOPE or matches < ESTIMATE_MATCHES:
            return None
        return max(capped, min(counter[0], round(counter[0] * matches / in_scope)))

    def export(self, info, principal, lq):
        """Every matching record, in order, read in batches: for CSV and NDJSON exports."""
        read = self.reader(info)
        for row in self.db.stream(*sqlbuild.build_export(self.db.dialect, info, principal.org_id, lq)):
            yield read(row)

    @staticmethod
    def _count(tx, info, principal, delta):
        """Keep the live-row counter in the same transaction as the write that changes it: History.record adds
        `tx.counts` to the counters with the write's last statements (on PostgreSQL in the very statement that
        numbers its changes), so the counter row is locked only from there to COMMIT."""
        if delta:
            tx.counts[info.spec.counted_as] = tx.counts.get(info.spec.counted_as, 0) + delta

    def recount(self, principal):
        """Rebuild every counter of an organization from its rows (after writes made outside the API)."""
        with self.db.transaction(write=True) as tx:
            for info in self.catalog.all_tables(principal):
                if not info.spec.read_only:
                    for statement in sqlbuild.build_recount(self.db.dialect, principal.org_id, info):
                        tx.execute(*statement)

    def get(self, info, principal, record_id):
        with self.db.statement() as tx:
            return self._fetch(tx, info, principal, record_id)

    # -- writing -----------------------------------------------------------------------------------

    def _check_writable(self, info, principal):
        if info.spec.read_only:
            raise MethodNotAllowed(f"Resource '{info.slug}' is read-only", allow=['GET', 'HEAD'])
        if info.spec.admin_writes and not principal.is_admin:
            raise Forbidden(f'Only administrators may change {info.slug}')

    def prepare(self, info, body, creating, lenient=False):
        """The writable fields of `body`, checked against their columns; every bad field is reported.

        Read-only fields (server-managed, computed by a view) are ignored, so a record read back and
        sent whole still writes; any other unknown field is a 400 unless `lenient` (it is then ignored).
        """
        if not isinstance(body, dict):
            raise InvalidBody('The request body must be a JSON object')
        columns, changes, problems = info.columns, {}, []
        for key, value in body.items():
            # NOTE: this runs for every field of every item of a batch: a known name is looked up once
            name, column = key, columns.get(key)
            if column is None:
                name = snake_case(key)
                if name != key and name in body:
                    continue  # the snake_case spelling wins over its camelCase twin
                column = columns.get(name)
                if column is None and name not in info.read_only_fields:
                    if not lenient:
                        problems.append(unknown_field(info.slug, key, name, info.writable))
                    continue
            if column is None or not column.writable:
                continue
            if value is None and not column.nullable:
                problems.append(InvalidValue(f"Field '{column.name}' may not be null", field=column.name))
                continue
            try:
                changes[name] = values.check_stored(column, value)
            except InvalidValue as exc:
                problems.append(exc)
        if info.required_columns:
            reported = {p.members.get('field') for p in problems}
            for name in info.required_columns:
                if (name in changes or creating) and changes.get(name) is None and name not in reported:
                    problems.append(InvalidValue(f"Field '{name}' is required", field=name))
        raise_all(problems)
        return changes

    def _prepare_items(self, info, bodies, creating, batch, indexes=None, lenient=False):
        """prepare() each body; in a batch every bad item is reported, each with its index."""
        rows, failures = [], []
        for index, body in zip(indexes or range(len(bodies)), bodies):
            try:
                rows.append(self.prepare(info, body, creating, lenient))
            except BadRequest as exc:
                if not batch:
                    raise
                failures.append((index, exc))
        raise_items(failures)
        return rows

    def _check_references(self, tx, info, principal, rows, batch=False):
        """Every reference in `rows` names a record of the organization, checked with one query for all the
        reference columns (not per row). Another organization's id is exactly as unknown as a missing one."""
        wanted = {}
        for name, column in info.columns.items():
            ids = column.references and dict.fromkeys(
                i for value in [row.get(name) for row in rows] if value is not None for i in reference_ids(value)
            )
            if ids:
                wanted[name] = ids
        if not wanted:
            return
        targets, failures = {}, []
        for name in list(wanted):
            try:
                targets[name] = self.catalog.resolve(info.columns[name].references, principal)
            except UnknownResource:
                failures += self._archived_target(info, rows, name)
                del wanted[name]
        found = self._existing(tx, principal, [(targets[name], ids) for name, ids in wanted.items()]) if wanted else []
        for name, present in zip(wanted, found):
            for index, row in enumerate(rows):
                missing = next((i for i in reference_ids(row.get(name)) if i not in present), None)
                if missing is not None:
                    failures.append(
                        (
                            index,
                            InvalidValue(
                                f"Field '{name}' refers to {info.columns[name].references} '{missing}', which does not exist",
                                field=name,
                            ),
                        )
                    )
        raise_items(sorted(failures, key=lambda failure: failure[0]), batch)

    @staticmethod
    def _archived_target(info, rows, name):
        """[(index, 400)] of the rows whose reference `name` names a record of an archived custom object: a 400
        naming the field, not the 404 of a resource that the request did not ask for."""
        target = info.columns[name].references
        return [
            (
                index,
                InvalidValue(
                    f"Field '{name}' refers to {target}, an archived custom object: restore it "
                    f'(POST /api/custom_objects/{target}/restore) or leave the field empty',
                    field=name,
                ),
            )
            for index, row in enumerate(rows)
            if reference_ids(row.get(name))
        ]

    def _existing(self, tx, principal, wanted):
        """For each (info, ids) of `wanted`, the ids that name records of the organization in `info`: one
        statement for them all (each list is one parameter)."""
        found = [set() for _ in wanted]
        tables = [info for info, _ in wanted]
        for k, record_id in tx.rows(
            *sqlbuild.build_exists(self.db.dialect, tables, principal.org_id, [ids for _, ids in wanted])
        ):
            found[k].add(record_id)
        return found

    def _stamp(self, info, changes, *names):
        now = self.clock()
        for name in names:
            if name in info.columns:
                changes[name] = now
        return changes

    def create(self, info, principal, body, lenient=False):
        return self.create_many(info, principal, [body], batch=False, lenient=lenient)[0]

    def create_many(self, info, principal, bodies, batch=True, lenient=False):
        """Create every record of `bodies` in one transaction, or none of them: the records, in order."""
        self._check_writable(info, principal)
        if batch:
            check_batch(bodies)
        rows = self._prepare_items(info, bodies, True, batch, lenient=lenient)
        self._unique_once(info, rows)
        stamps = self._stamp(info, {}, 'created_at', 'updated_at')
        rows = [
            {'id': record_id, **row, **stamps} for record_id, row in zip(new_ids(info.spec.id_prefix, len(rows)), rows)
        ]
        with self.history.recorded(principal) as tx:
            self._check_shapes(info, principal, [{}] * len(rows), rows, batch)
            self._check_references(tx, info, principal, rows, batch)
            records = self._insert_new(tx, info, principal.org_id, rows)
            self._count(tx, info, principal, len(rows))
            tx.changes += [history.created(info.slug, record) for record in records]
            records = self._shaped_written(tx, info, principal, records)
        return records

    def insert_managed(self, info, org_id, rows):
        """Insert rows of `org_id` only the server writes (a read-only resource's, such as automation_runs): no
        checks, no history, no counter: the records."""
        with self.db.transaction(write=True) as tx:
            return [record for record, _ in self._insert(tx, info, org_id, rows)]

    def _insert_new(self, tx, info, org_id, rows):
        """INSERT the new records `rows` (checked values with their ids and stamps): the records, in order.

        NOTE: a new record is what was written plus its columns' defaults, so it is built here rather than read
        back: one statement per shape of row sends the values (an INSERT of each chunk of rows; PostgreSQL: COPY),
        which costs the database less than a multi-row INSERT … RETURNING. A table with a
        default that is not a constant, or with a JSON column (SQLite reads a bare 1.0 back as 1, PostgreSQL's
        jsonb orders keys its own way), is read back as before.
        """
        build = self._new_records(info)
        if build is None:
            created = {record['id']: record for record, _ in self._insert(tx, info, org_id, rows)}
            return [created[row['id']] for row in rows]
        groups = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        records = build(rows, set().union(*groups))
        d = self.db.dialect
        copied = self._indexed(info) and sqlbuild.copies_search_rows(d, len(records))
        upkeep = [] if copied else self._upkeep(info, org_id, records)  # NOTE: the search rows, in the first INSERT
        for names, group in groups.items():
            statements, upkeep = sqlbuild.build_insert_rows(d, info, org_id, names, group, upkeep)
            for statement in statements:
                tx.write_rows(*statement)
        for statement in upkeep:
            tx.execute(*statement)
        if copied:
            self.index(tx, info, org_id, records, fresh=True, new=True)
        return records

    def _new_records(self, info):
        """A function (rows, the names they hold) -> the records as a read of them would answer, or None when
        the table's new records must be read back (see _insert_new); made once per table shape."""
        key = ('new', info.shape_key, tuple(c.default for c in info.columns.values()))
        return per_shape(self._readers, key, lambda: self._new_records_of(info))

    @staticmethod
    def _new_records_of(info):
        """What _new_records answers for `info`: the builder, or None (a default that is not a constant, or a
        JSON column)."""
        names, plan = sqlbuild.output_columns(info), []
        for name in names:
            column = info.columns[name]
            known, default = values.default_value(column.kind, column.default)
            if not known or column.kind == 'json':
                return None
            plan.append((name, values.READ_BACK.get(column.kind), default, isinstance(default, (list, dict))))

        template = {name: default for name, _, default, _ in plan}
        fresh = [(name, orjson.dumps(default)) for name, _, default, mutable in plan if mutable]

        def build(rows, present):
            if present.issubset(template):
                return merged(rows, present)
            columns = []
            for name, convert, default, mutable in plan:
                if mutable:  # NOTE: each record its own [] (a caller may change one record's)
                    text = orjson.dumps(default)
                    column = [row[name] if name in row else orjson.loads(text) for row in rows]
                elif name in present:
                    column = [row.get(name, default) for row in rows]
                else:
                    column = [default] * len(rows)
                columns.append(column if convert is None else values.converted(convert, column))
            return [dict(zip(names, record)) for record in zip(*columns)]

        def merged(rows, present):
            """build() of rows that hold only output columns: each record the defaults updated with its row (the
            defaults' dict gives the columns' order), then the present columns converted, column by column.

            NOTE: a thousand dicts merged at C speed, where zipping a record out of every column cost ~1 µs more
            a record."""
            records = [{**template, **row} for row in rows]
            for name, convert, _, _ in plan:
                if convert is not None and name in present:
                    for record, value in zip(records, values.converted(convert, [r[name] for r in records])):
                        record[name] = value
            for name, text in fresh:  # NOTE: each record its own [] (a caller may change one record's)
                for record, row in zip(records, rows):
                    if name not in row:
                        record[name] = orjson.loads(text)
            return records

        return build

    def _insert(self, tx, info, org_id, rows, conflict=None, updates=None):
        """INSERT `rows` of `org_id`, one statement per chunk of rows with the same columns: [(record, inserted)].

        With `conflict` = (column, partial), an upsert: row i updates the columns `updates[i]` of the
        record that holds its key. `inserted` says which rows were new on PostgreSQL (None elsewhere).
        """
        groups = {}
        for i, row in enumerate(rows):
            groups.setdefault((tuple(row), updates[i] if updates else ()), []).append(row)
        read, width, out = self.reader(info), len(sqlbuild.output_columns(info)), []
        for (names, sets), group in groups.items():
            for part in sqlbuild.row_chunks(group, len(names)):
                statement = sqlbuild.build_insert_many(self.db.dialect, info, org_id, names, part, conflict, sets)
                for raw in tx.rows(*statement):
                    out.append((read(raw), raw[width] if len(raw) > width else None))
        if rows:
            self.index(tx, info, org_id, [record for record, _ in out], fresh=conflict is None, new=conflict is None)
        return out

    def update(self, info, principal, record_id, body, lenient=False):
        self._check_writable(info, principal)
        return self._update_items(info, principal, [record_id], [body], batch=False, lenient=lenient)[0]

    def update_many(self, info, principal, items, lenient=False):
        """PATCH a collection: every item carries the `id` of the record it changes; all or nothing."""
        self._check_writable(info, principal)
        check_batch(items)
        return self._update_items(info, principal, item_ids(items), items, batch=True, lenient=lenient)

    def _update_items(self, info, principal, ids, bodies, batch, lenient=False):
        """Update the records `ids`, each with its body's fields, in one transaction: the records, in order."""
        changes = self._prepare_items(info, bodies, False, batch, lenient=lenient)
        self._unique_once(info, changes)
        stamp = self._stamp(info, {}, 'updated_at')
        with self.history.recorded(principal) as tx:
            # NOTE: the administrator rule locks the organization's admins (in id order) before the records are.
            self._keep_an_administrator(tx, info, principal, dict(zip(ids, changes)))
            records = self._locked(tx, info, principal, ids, batch)
            changes = self._check_shapes(info, principal, [records[i] for i in ids], changes, batch)
            changes = [self._effective(info, records[i], change) for i, change in zip(ids, changes)]
            # NOTE: after _effective: a reference sent back unchanged (a record PUT whole) is not checked again, so a
            # record whose reference names an archived custom object's record can still be edited.
            self._check_references(tx, info, principal, changes, batch)
            written = self._write(tx, info, principal, {i: {**c, **stamp} for i, c in zip(ids, changes) if c}, records)
            tx.changes += [
                history.updated(info.slug, records[i], written[i], c) for i, c in zip(ids, changes) if i in written
            ]
            records.update(written)
            records.update((r['id'], r) for r in self._shaped_written(tx, info, principal, list(written.values())))
        return [records[i] for i in ids]

    def _check_shapes(self, info, principal, records, changes, batch):
        """A resource with a shape (SHAPED) checks each record as the write leaves it: every bad one is a 400;
        a record that passes loses its `problem`."""
        if info.slug not in SHAPED:
            return changes
        from . import rules  # NOTE: here, not at the top: rules -> accounts -> store is an import cycle

        failures = []
        for index, (record, change) in enumerate(zip(records, changes)):
            try:
                rules.check_rule(self, principal, {**record, **change}, record)
            except BadRequest as exc:
                failures.append((index, exc))
        raise_items(failures, batch)
        return [
            {**change, 'problem': None} if record.get('problem') else change for record, change in zip(records, changes)
        ]

    def _shaped_written(self, tx, info, principal, records):
        """A resource with a shape (SHAPED) after a write, in its transaction (after its history: what the hook
        adds to the records, a rule's new secret, is in the answer only)."""
        if info.slug not in SHAPED or not records:
            return records
        from . import rules

        return rules.written(self, tx, principal, records)

    @staticmethod
    def _effective(info, record, change):
        """The fields of `change` that would change `record`: a write that changes nothing is not made (and
        leaves no history), as archiving an archived record is not."""
        return {name: value for name, value in change.items() if not _holds(info.columns[name], record[name], value)}

    def _locked(self, tx, info, principal, ids, batch=False):
        """{id: record} of `ids`, locked until the transaction ends, or a 404 naming the (first) missing one.

        NOTE: locked in id order, whatever order the request gave: two transactions that lock the same
        records queue up instead of deadlocking.
        """
        read, found = self.reader(info), {}
        for part in sqlbuild.chunks(sorted(set(ids))):
            wanted = part[0] if len(part) == 1 else part
            for raw in tx.rows(*sqlbuild.build_get(self.db.dialect, info, principal.org_id, wanted, for_update=True)):
                record = read(raw)
                found[record['id']] = record
        missing = [(index, record_id) for index, record_id in enumerate(ids) if record_id not in found]
        if missing and not batch:
            raise RecordNotFound(f"No {info.slug} record with id '{missing[0][1]}'", param='id')
        raise_items(
            [
                (index, RecordNotFound(f"No {info.slug} record with id '{record_id}'", field='id'))
                for index, record_id in missing
            ]
        )
        return found

    def _write(self, tx, info, principal, changes, before):
        """UPDATE each record of `changes` ({id: {column: value}}) with its own values, one statement per
        chunk of records that change the same columns: {id: record}. `before`: {id: record} of every record, as this
        transaction read (and on PostgreSQL locked) it.

        NOTE: the search rows are made from the records as the write leaves them, the write's values over `before`
        (a row holds text columns and references, which read back as they were written), so they are known before the
        UPDATE and PostgreSQL writes them in its statement (sqlbuild.build_update_many).
        """
        groups = {}
        for record_id, change in changes.items():
            groups.setdefault(tuple(change), []).append({'id': record_id, **change})
        d, org, read, out = self.db.dialect, principal.org_id, self.reader(info), {}
        for names, group in groups.items():
            upkeep = self._upkeep(info, org, [{**before[row['id']], **row} for row in group], names)
            for part in sqlbuild.row_chunks(group, len(names) + 1):
                statement, upkeep = sqlbuild.build_update_many(d, info, org, names, part, upkeep)
                for raw in tx.rows(*statement):
                    record = read(raw)
                    out[record['id']] = record
            for statement in upkeep:
                tx.execute(*statement)
            if not info.search_upkeep.isdisjoint(names):
                self._index_referrers(tx, info, org, [row['id'] for row in group], names)
        return out

    def _update(self, tx, info, principal, record, changes):
        """Write `changes` to `record` (as this transaction locked it): the record as written."""
        written = self._write(tx, info, principal, {record['id']: changes}, {record['id']: record}).get(record['id'])
        if written is None:
            raise RecordNotFound(f"No {info.slug} record with id '{record['id']}'", param='id')
        return written

    def delete(self, info, principal, record_id):
        return self.delete_many(info, principal, [record_id], batch=False)[0]

    def delete_many(self, info, principal, ids, batch=True):
        """Archive, disable or delete for good, as the resource's policy says, every record of `ids` in one
        transaction: the records as they were left."""
        self._check_writable(info, principal)
        if batch:
            check_batch(ids, param='filter')
        ids = list(dict.fromkeys(ids))
        mode = info.spec.delete
        with self.history.recorded(principal) as tx:
            if mode == 'archive':
                return self._set_flags(tx, info, principal, ids, 'archived_at', self.clock(), batch)
            if mode == 'disable':
                self._keep_an_administrator(tx, info, principal, dict.fromkeys(ids, {'disabled': True}))
                return self._set_flags(tx, info, principal, ids, 'disabled', True, batch)
            records = self._locked(tx, info, principal, ids, batch)
            self.detach_references(tx, info, principal, ids)
            for part in sqlbuild.chunks(ids):
                tx.execute(*sqlbuild.build_delete(self.db.dialect, info, principal.org_id, part))
            self.unindex(tx, info, principal.org_id, ids)
            self._count(tx, info, principal, -len(ids))
            tx.changes += [history.deleted(info.slug, records[i]) for i in ids]
            return [records[i] for i in ids]

    def restore(self, info, principal, record_id):
        mode = info.spec.delete
        if mode == 'hard' or info.spec.read_only:
            raise MethodNotAllowed(f"Records of '{info.slug}' cannot be restored", allow=[])
        self._check_writable(info, principal)
        with self.history.recorded(principal) as tx:
            if mode == 'archive':
                return self._set_flags(tx, info, principal, [record_id], 'archived_at', None)[0]
            return self._set_flags(tx, info, principal, [record_id], 'disabled', False)[0]

    def _set_flags(self, tx, info, principal, ids, name, value, batch=False):
        """Archive/restore or disable/enable `ids`; a record already so is left as it is, so the same
        request twice changes nothing more."""
        records = self._locked(tx, info, principal, ids, batch)
        changing = [i for i in ids if not self._flagged(records[i], name, value)]
        if changing:
            if name == 'archived_at':
                self._count(tx, info, principal, len(changing) * (-1 if value is not None else 1))
            change = self._stamp(info, {name: value}, 'updated_at')
            written = self._write(tx, info, principal, dict.fromkeys(changing, change), records)
            tx.changes += [history.flagged(info.slug, records[i], written[i], name, value) for i in changing]
            records.update(written)
        return [records[i] for i in ids]

    @staticmethod
    def _flagged(record, name, value):
        """Whether `record` is already as `name` = `value` would leave it (any archived_at is archived)."""
        return (record[name] is None) == (value is None) if name == 'archived_at' else record[name] == value

    # -- search rows -------------------------------------------------------------------------------
    # What q and the text operators read (crmapi/search.py; sqlbuild's search section): one row per
    # record, written in the transaction of every write that changes it (a record is findable once its
    # write is acknowledged, and a rolled-back write leaves nothing behind), in one statement per batch.

    def index(self, tx, info, org_id, records, columns=None, fresh=False, new=False):
        """Write the search rows of `records` (as stored). `columns`: the columns a write changed (None: all
        of them); `fresh`: the records are new (no other record's row holds their words yet); `new`: they were
        inserted by this transaction, so no search row of theirs can be there yet.
        """
        d = self.db.dialect
        if new and self._indexed(info) and sqlbuild.copies_search_rows(d, len(records)):
            rows = self._with_related_words(tx, info, org_id, self._search_rows(info, org_id, records))
            tx.write_rows(*sqlbuild.build_search_copy(d, rows))
        else:
            for statement in self._upkeep(info, org_id, records, columns):
                tx.execute(*statement)
        if not fresh and (columns is None or not info.search_upkeep.isdisjoint(columns)):
            self._index_referrers(tx, info, org_id, [r['id'] for r in records], columns or info.columns)

    @staticmethod
    def _indexed(info):
        return not info.spec.read_only and info.spec.search.indexed

    def _upkeep(self, info, org_id, records, columns=None):
        """The statements that bring the search rows of `records` (as the write leaves them) up to date; `columns`:
        the columns the write changes (None: all of them).

        NOTE: a write that changes no searchable column costs nothing here; an archive or restore only
        flips the rows' archived state.
        """
        if not (self._indexed(info) and records):
            return []
        if columns is not None and info.search_upkeep.isdisjoint(columns):
            if 'archived_at' in columns and info.archivable:
                return self._archived_statements(info, org_id, records)
            return []
        targets = [target for _, target, _ in info.spec.search.related]
        return sqlbuild.build_search_rows(self.db.dialect, self._search_rows(info, org_id, records), targets)

    def _search_rows(self, info, org_id, records):
        """build_search_rows' rows of `records`: their search rows without the words of the records they refer to
        (PostgreSQL: and their words' prefixes, sqlbuild.search_row), then the ids they refer to."""
        table, plan, refs = sqlbuild.search_table(info), info.search_plan, [r for r, _, _ in info.spec.search.related]
        prefixed = len(sqlbuild.search_row(self.db.dialect)) > len(sqlbuild.SEARCH_ROW)
        return [
            (
                table,
                org_id,
                r['id'],
                r.get('archived_at') is not None,
                *row,
                *((search.prefixes(row.words),) if prefixed else ()),
                *[r.get(ref) for ref in refs],
            )
            for r, row in ((r, plan.row(r)) for r in records)
        ]

    def _archived_statements(self, info, org_id, records):
        groups = {}
        for r in records:
            groups.setdefault(r.get('archived_at') is not None, []).append(r['id'])
        return [
            sqlbuild.build_search_archived(self.db.dialect, sqlbuild.search_table(info), org_id, part, archived)
            for archived, ids in groups.items()
            for part in sqlbuild.chunks(ids)
        ]

    def unindex(self, tx, info, org_id, ids):
        """Remove the search rows of records deleted for good."""
        if info.spec.read_only or not info.spec.search.indexed:
            return
        for part in sqlbuild.chunks(ids):
            tx.execute(*sqlbuild.build_search_forget(self.db.dialect, sqlbuild.search_table(info), org_id, part))

    def _with_related_words(self, tx, info, org_id, rows):
        """`rows` (build_search_rows') as sqlbuild.search_row tuples, their words (and prefixes) followed by the name
        words of the records they refer to (what build_search_rows' statement appends itself), read in one statement
        per chunk."""
        columns, related, found = sqlbuild.search_row(self.db.dialect), info.spec.search.related, {}
        size, words = len(columns), columns.index('words')
        prefixes = columns.index('prefixes') if 'prefixes' in columns else None
        for k, (_, target, _) in enumerate(related):
            ids = sorted({row[size + k] for row in rows if row[size + k] is not None})
            for part in sqlbuild.chunks(ids):
                for record_id, names in tx.rows(*sqlbuild.build_search_names(self.db.dialect, target, org_id, part)):
                    found[(k, record_id)] = names
        out = []
        for row in rows:
            names = [found.get((k, row[size + k])) for k in range(len(related))] if found else ()
            if not any(names):  # NOTE: nothing to append (no company, or one without name words): the row as made
                out.append(row[:size])
                continue
            whole = list(row[:size])
            whole[words] = search.with_related(row[words], names)
            if prefixes is not None:
                whole[prefixes] += ''.join(search.prefixes(n) for n in names if n)
            out.append(tuple(whole))
        return out

    def _index_referrers(self, tx, info, org_id, ids, columns):
        """A change of a text other records' words include (a company renamed): their rows again.

        NOTE: the referring records are locked (FOR UPDATE, in id order) before they are read, so a
        concurrent write of one of them is either seen here or sees this change.
        """
        for referrer in self.catalog.tables.values():
            for ref, target, column in referrer.spec.search.related:
                if target != info.spec.table or column not in columns or referrer.spec.read_only:
                    continue
                read = self.reader(referrer)
                for part in sqlbuild.chunks(ids):
                    found = [
                        read(raw)
                        for raw in tx.rows(
                            *sqlbuild.build_get_by(
                                self.db.dialect, referrer, org_id, referrer.columns[ref], part, for_update=True
                            )
                        )
                    ]
                    self.index(tx, referrer, org_id, found, fresh=True)

    def reindex(self, principal, log=None):
        """Rebuild the search rows of every record of an organization, one transaction per table.

        NOTE: the tables whose names other records' rows take (a contact's company) go first: those rows read
        them from the target's own row, which a database migrated from before search rows does not hold yet.
        """
        tables = [info for info in self.catalog.all_tables(principal) if not info.spec.read_only]
        named = {target for info in tables for _, target, _ in info.spec.search.related}
        for info in sorted(tables, key=lambda info: info.spec.table not in named):
            with self.db.transaction(write=True) as tx:
                self.reindex_table(tx, info, principal.org_id, log)
            if info.spec.table in named:
                self.analyze_search_rows()

    def analyze_search_rows(self):
        """Fresh planner statistics of the search rows (after a rebuild).

        NOTE: a rebuild reads the names of the tables it built first (a contact's company) by primary key; on a
        search_texts never analyzed with rows (a new database, `crmapi migrate` to 0019, a bulk load) PostgreSQL
        planned that lookup as a scan of every row written so far: at 1M contacts the first 50,000 contacts took
        over 90 s instead of 5 s, and the whole rebuild did not finish in 25 minutes.
        """
        with self.db.transaction(write=True) as tx:
            for statement in sqlbuild.build_search_analyze(self.db.dialect):
                tx.execute(statement)

    def reindex_table(self, tx, info, org_id, log=None, batch=1000):
        """Rebuild the search rows of `org_id`'s records of `info` inside `tx` (custom fields added or dropped)."""
        d = self.db.dialect
        tx.execute(*sqlbuild.build_search_forget_organization(d, info, org_id))
        read, done, after = self.reader(info), 0, None
        while True:
            lq = ListQuery(0, batch - 1, include_archived=True, after=after)
            records = [read(raw) for raw in tx.rows(*sqlbuild.build_list(d, info, org_id, lq))]
            self.index(tx, info, org_id, records, fresh=True)
            done += len(records)
            finished = len(records) < batch
            if log is not None and done and (finished or done % (50 * batch) == 0):
                log(f'reindexed {done} {info.slug} of {org_id}' + ('' if finished else ' so far'))
            if finished:
                return done
            after = (records[-1]['id'],)

    # -- upserts -----------------------------------------------------------------------------------

    def unique_columns(self, info):
        """{column: partial} for the writable columns unique per organization, read from the database's
        unique indexes and constraints (once per TableInfo: a custom object's change makes a new one)."""
        cached = self._uniques.get(id(info))
        if cached is None or cached[0] is not info:
            with self.db.transaction() as tx:
                rows = tx.rows(*sqlbuild.build_unique_keys(self.db.dialect, info.spec.table))
            keys = {
                name: partial
                for name, partial in sqlbuild.read_unique_keys(rows).items()
                if name in info.columns and info.columns[name].writable
            }
            if len(self._uniques) > 1000:
                self._uniques.clear()
            cached = self._uniques[id(info)] = (info, keys)
        return cached[1]

    def _unique_once(self, info, rows, key=None):
        """A batch may hold a value of a unique column (other than the upsert's `key`) once: a 400 naming
        both items and the field, where the database would refuse the second with a 409 naming neither."""
        if len(rows) < 2:
            return
        failures = []
        for name in [n for n in self.unique_columns(info) if n != key]:
            seen = {}
            for index, row in enumerate(rows):
                value = row.get(name)
                if value is None:
                    continue
                if value in seen:
                    failures.append(
                        (
                            index,
                            repeated(
                                seen[value],
                                index,
                                name,
                                (f"have the same '{name}' ({value}), which is unique: send each value once"),
                            ),
                        )
                    )
                else:
                    seen[value] = index
        raise_items(sorted(failures, key=lambda failure: failure[0]))

    def _arbiter(self, info, column):
        """(column, partial) of the unique column an upsert matches records on, or a 400 naming on_conflict."""
        keys = self.unique_columns(info)
        if column not in keys:
            known = ', '.join(sorted(keys)) or 'none'
            raise InvalidParam(
                f"on_conflict must name a unique column of '{info.slug}' ({known}); '{column}' is not one",
                param='on_conflict',
            )
        return column, keys[column]

    def upsert(self, info, principal, bodies, column, batch=True, lenient=False):
        """Insert each item, or update the organization's record (live or archived) that holds the item's
        value in the unique `column`: (the records in order, how many were created, how many updated).

        An updated record keeps the fields the item leaves out (required ones too) and its archived_at.
        """
        self._check_writable(info, principal)
        if batch:
            check_batch(bodies)
        conflict = self._arbiter(info, column)
        key_column = info.columns[column]
        changes = self._prepare_items(info, bodies, False, batch, lenient=lenient)
        keys = upsert_keys(changes, column, batch)
        self._unique_once(info, changes, column)
        stamps = self._stamp(info, {}, 'created_at', 'updated_at')
        with self.history.recorded(principal) as tx:
            # NOTE: read (and on PostgreSQL lock) the records holding the keys: those that exist stay so
            # until the end, and on SQLite, under the write lock, this is also what tells created from updated.
            existing = {
                values.check(key_column, record[column]): record
                for record in self._by_key(tx, info, principal, key_column, keys)
            }
            new = [index for index, key in enumerate(keys) if key not in existing]
            # a record to create needs every required field
            self._prepare_items(info, [bodies[i] for i in new], True, batch, new, lenient)
            self._check_references(tx, info, principal, changes, batch)
            self._keep_an_administrator(
                tx,
                info,
                principal,
                {existing[key]['id']: change for key, change in zip(keys, changes) if key in existing},
            )
            rows, updates, touched = [], [], tuple(n for n in stamps if n == 'updated_at')
            stored, created, recorded, sent = {}, 0, {}, dict(zip(keys, changes))
            # NOTE: rows go in key order, so two upserts inserting the same new keys queue up instead of deadlocking.
            for key, change in sorted(sent.items(), key=lambda pair: pair[0]):
                if key in existing and not self._effective(info, existing[key], change):
                    stored[key] = existing[key]  # it holds every value sent already: not written
                    continue
                rows.append(
                    {
                        'id': new_id(info.spec.id_prefix),
                        **self._kept_required(info, existing.get(key), change),
                        **change,
                        **stamps,
                    }
                )
                updates.append(tuple(n for n in change if n != column) + touched or (column,))
            for record, inserted in self._insert(tx, info, principal.org_id, rows, conflict, updates):
                key = values.check(key_column, record[column])
                is_new = key not in existing if inserted is None else inserted
                created += is_new
                stored[key] = record
                recorded[key] = self._upserted(info, existing.get(key), record, is_new, sent[key])
            self._count(tx, info, principal, created)
            tx.changes += [recorded[key] for key in keys if key in recorded]
        return [stored[key] for key in keys], created, len(keys) - created

    @staticmethod
    def _upserted(info, current, record, is_new, change):
        """The change an upsert made to one record.

        NOTE: on PostgreSQL a record another transaction created after this one looked for it is updated
        (`is_new` false) without having been read: its change then carries the record as written, not a diff.
        """
        if is_new:
            return history.created(info.slug, record)
        if current is None:
            return info.slug, record['id'], 'updated', {'record': record}
        return history.updated(info.slug, current, record, change)

    def _by_key(self, tx, info, principal, column, keys):
        read = self.reader(info)
        return [
            read(raw)
            for part in sqlbuild.chunks(keys)
            for raw in tx.rows(
                *sqlbuild.build_get_by(self.db.dialect, info, principal.org_id, column, part, for_update=True)
            )
        ]

    @staticmethod
    def _kept_required(info, current, change):
        """The stored values of the required fields an update leaves out.

        NOTE: the INSERT half of an upsert must carry every NOT NULL column even when the row turns into an
        update; DO UPDATE then sets the fields sent only, so these values are not written.
        """
        if current is None:
            return {}
        return {n: values.check(c, current[n]) for n, c in info.columns.items() if c.required and n not in change}

    def _keep_an_administrator(self, tx, info, principal, changes):
        """409 when `changes` ({id: fields}) would take the organization's last active administrators away.

        NOTE: the active administrators are read, then locked FOR UPDATE in id order and read again
        (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers). Two administrators
        demoting each other at once queue on the locks, and the second sees the first's demotion.
        """
        leaving = {
            i: 'administrator' if c.get('administrator') is False else 'disabled'
            for i, c in changes.items()
            if info.slug == 'crm_users' and (c.get('administrator') is False or c.get('disabled') is True)
        }
        if not leaving:
            return
        columns = info.columns
        admins = ListQuery(
            equals=(Filter(columns['administrator'], 'eq', True), Filter(columns['disabled'], 'eq', False))
        )
        d, org, read = self.db.dialect, principal.org_id, self.reader(info)
        ids = [read(row)['id'] for row in tx.rows(*sqlbuild.build_export(d, info, org, admins))]
        if not leaving.keys() & set(ids):
            return
        locked = [read(row) for row in tx.rows(*sqlbuild.build_get(d, info, org, ids, for_update=True))]
        active = {u['id'] for u in locked if u['administrator'] and not u['disabled']}
        if active and active <= leaving.keys():
            raise Conflict(
                'An organization keeps at least one active administrator: make another user an administrator first',
                field=leaving[min(active)],
            )

    # -- references between records ----------------------------------------------------------------

    def referrers(self, principal, slug):
        """Every (table, column) of the organization whose reference points at resource `slug`."""
        return [
            (info, column)
            for info in self.catalog.all_tables(principal)
            if not info.spec.read_only
            for column in info.columns.values()
            if column.references == slug
        ]

    def _rewrite_references(self, tx, principal, slug, ids, replacement, write=True):
        """Point every reference to `ids` at `replacement` (None: drop the link), in one UPDATE per chunk
        of referring records: {resource: how many of its records change}. `write=False` only counts them.

        NOTE: referrers are looked up 100 ids at a time: an array column's match is one term per id. A write reads
        them whole and locks them (PostgreSQL: FOR UPDATE, in id order), as _write makes their search rows from them.
        """
        d, ids = self.db.dialect, list(ids)
        gone, moved = set(ids), {}
        for info, column in self.referrers(principal, slug):
            changes, old, read = {}, {}, self.reader(info)
            for part in sqlbuild.chunks(ids, size=100):
                referring = sqlbuild.build_referrers(d, info, principal.org_id, column, part, for_update=write)
                for record in map(read, tx.rows(*referring)):
                    record_id, current = record['id'], record[column.name]
                    if column.kind == 'array':
                        new = [replacement if v in gone else v for v in current]
                        new = [v for v in dict.fromkeys(new) if v is not None]
                    elif replacement is None and not column.nullable:
                        raise Conflict(
                            f"{info.slug} '{record_id}' still refers to this record through '{column.name}'",
                            field=column.name,
                        )
                    else:
                        new = replacement
                    changes[record_id], old[record_id] = {column.name: new}, record
            moved.setdefault(info.slug, set()).update(changes)
            if changes and write:
                stamp = self._stamp(info, {}, 'updated_at')
                changes = {i: {**change, **stamp} for i, change in changes.items()}
                written = self._write(tx, info, principal, changes, old)
                tx.changes += [
                    history.updated(info.slug, old[i], record, (column.name,)) for i, record in written.items()
                ]
        return {resource: len(records) for resource, records in moved.items()}

    def detach_references(self, tx, info, principal, ids):
        self._rewrite_references(tx, principal, info.slug, ids, None)

    # -- duplicates ----------------------------------------------------------------------------------

    def _filed(self, info, principal, extra=None, leave_out=None):
        """The organization's live records of `info` filed under their duplicate blocks, read in one pass;
        `extra` ((id, *values) of a record to compare) is filed last, and the stored row `leave_out` not at all.

        NOTE: computed from the rows on every request, nothing kept between requests: there is no cache
        to go stale when a record changes, whichever worker or host changed it.
        """
        matcher = duplicates.MATCHERS[info.slug]
        rows = self.db.stream(
            *sqlbuild.build_duplicate_rows(self.db.dialect, info, principal.org_id, matcher.columns, leave_out),
            batch=5000,
        )
        return duplicates.file(matcher, rows, extra)

    def duplicate_groups(self, info, principal):
        """Every group of probable duplicates among the organization's live records, best first."""
        with duplicates.collector_paused():
            return duplicates.groups(self._filed(info, principal))

    def duplicate_candidates(self, info, principal, record_id=None, body=None, lenient=False):
        """The probable duplicates of the record `record_id`, or of an unsaved `body` (checked like an update;
        an `id` it carries is left out of its own candidates), best first: [(id, score, reasons)]."""
        matcher = duplicates.MATCHERS[info.slug]
        if record_id is not None:
            probe = self.get(info, principal, record_id)
        else:
            probe = self.prepare(info, body, creating=False, lenient=lenient)
            record_id = body.get('id') if isinstance(body.get('id'), str) else None
            reason = record_id is not None and values.unstorable(record_id)
            if reason:
                raise InvalidValue(f"Field 'id' may not contain {reason}", field='id')
        extra = (record_id, *(probe.get(name) for name in matcher.columns))
        with duplicates.collector_paused():
            found = self._filed(info, principal, extra, leave_out=record_id)
            return duplicates.candidates(found, len(found.ids) - 1)

    def records(self, info, principal, ids):
        """{id: record} of the organization's records among `ids` (archived ones too)."""
        read, found = self.reader(info), {}
        with self.db.transaction() as tx:
            for part in sqlbuild.chunks(ids):
                for raw in tx.rows(*sqlbuild.build_get(self.db.dialect, info, principal.org_id, part)):
                    record = read(raw)
                    found[record['id']] = record
        return found

    # -- merge -------------------------------------------------------------------------------------

    def merge_contacts(self, principal, body, lenient=False):
        return self.merge('contacts', principal, body, lenient)

    def merge_companies(self, principal, body, lenient=False):
        return self.merge('companies', principal, body, lenient)

    def merge(self, slug, principal, body, lenient=False):
        """Fold the sources into the target in one transaction: every reference to a source moves to the
        target, the target's empty fields take the sources' values, then the sources are deleted.

        With `dry_run`, the same checks in a read transaction that writes nothing, and what the merge
        would do: {'dry_run', 'target' (as it would be), 'moves' ({resource: records that would move}),
        'deleted' (the sources)}.
        """
        request = merge_request(slug, body, lenient)
        info = self.catalog.resolve(slug, principal)
        with self.db.transaction() if request.dry_run else self.history.recorded(principal) as tx:
            target, sources = self._merge_parties(tx, info, principal, request)
            changes = self._merged_fields(info, target, sources)
            ids = [s['id'] for s in sources]
            if request.dry_run:
                moves = self._rewrite_references(tx, principal, slug, ids, target['id'], write=False)
                if changes:
                    target = {**target, **changes, 'updated_at': values.format_timestamp(self.clock())}
                return {'dry_run': True, 'target': target, 'moves': moves, 'deleted': ids}
            if not sources:
                return target
            self._rewrite_references(tx, principal, slug, ids, target['id'])
            tx.execute(*sqlbuild.build_delete(self.db.dialect, info, principal.org_id, ids))
            self.unindex(tx, info, principal.org_id, ids)
            self._count(tx, info, principal, -sum(1 for s in sources if s['archived_at'] is None))
            stored = {
                n: v if info.columns[n].kind == 'array' else values.check(info.columns[n], v)
                for n, v in changes.items()
            }
            merged = (
                self._update(tx, info, principal, target, self._stamp(info, stored, 'updated_at'))
                if stored
                else self._fetch(tx, info, principal, target['id'])
            )
            tx.changes += [history.merged_into(info.slug, s, target['id']) for s in sources]
            tx.changes.append(history.merged(info.slug, target, merged, stored, ids))
            return merged

    def _merge_parties(self, tx, info, principal, request):
        """(target, [sources]) of a merge, or a 404 naming the first id that is not the organization's.

        NOTE: target and sources are locked (a dry run reads them only) in one statement, in id order, so
        two merges of the same records in opposite directions queue up instead of deadlocking.
        """
        target_id, sources = request.target_id, request.source_ids
        found = {
            r['id']: r
            for r in map(
                self.reader(info),
                tx.rows(
                    *sqlbuild.build_get(
                        self.db.dialect, info, principal.org_id, [target_id, *sources], for_update=not request.dry_run
                    )
                ),
            )
        }
        if target_id not in found:
            raise RecordNotFound(f"No {info.slug} record with id '{target_id}'", field=request.target_field)
        missing = [s for s in sources if s not in found]
        if missing:
            raise NotFound(f"No {info.slug} record with id '{missing[0]}'", field=request.sources_field)
        return found[target_id], [found[s] for s in sources]

    @staticmethod
    def _merged_fields(info, target, sources):
        """Target wins; its empty fields take the first non-empty source value; arrays are united.
        The values as they read (a dry run answers them)."""
        changes = {}
        for name, column in info.writable.items():
            if column.kind == 'array':
                united = list(dict.fromkeys([*(target[name] or []), *(v for s in sources for v in s[name] or [])]))
                if united != (target[name] or []):
                    changes[name] = united
            elif is_empty(target[name]):
                value = next((s[name] for s in sources if not is_empty(s[name])), None)
                if value is not None:
                    changes[name] = value
        return changes


def reindex_database(db, org_ids=None, log=None):
    """Rebuild the search rows of every record of `org_ids` (default: every organization): after a
    migration that adds search data, or rows written around the API."""
    from .accounts import Accounts
    from .accounts import Principal
    from .services import build_services

    org_ids = [o for o, _ in Accounts(db).list_orgs()] if org_ids is None else org_ids
    if org_ids:
        store = build_services(db).store
        for org_id in org_ids:
            store.reindex(Principal(org_id, None), log)
        store.analyze_search_rows()
    return len(org_ids)
