"""Record operations and their transactions: list, get, create, update, delete, restore, merge.

The store receives parsed, validated input (a ListQuery, a body dict) and a Principal; it turns
them into statements through `sqlbuild` and runs every multi-statement operation in one
transaction, so a failure leaves nothing half-written.
"""
import datetime as dt
import difflib
import os
import threading
import time

from . import sqlbuild
from . import values
from .errors import Conflict
from .errors import Forbidden
from .errors import InvalidBody
from .errors import InvalidValue
from .errors import MethodNotAllowed
from .errors import NotFound
from .errors import RecordNotFound
from .errors import UnknownField
from .query import Filter
from .query import ListQuery
from .schema import snake_case

_CROCKFORD = '0123456789abcdefghjkmnpqrstvwxyz'
MAX_MERGE_SOURCES = 100
MERGE_FIELDS = ('source_ids', 'target_id')


_last_id = [0, 0]
_id_lock = threading.Lock()


def new_id(prefix):
    """Prefix + 26 Crockford base32 characters: 48 bits of milliseconds, then 80 random bits.

    Within one process ids only grow: a second id in the same millisecond is the last one plus 1.
    """
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_id[0]:
            ms, rand = _last_id[0], _last_id[1] + 1
        else:
            rand = int.from_bytes(os.urandom(10), 'big') >> 1  # room to count up within the millisecond
        _last_id[:] = [ms, rand]
    n = ms << 80 | rand
    chars = []
    for _ in range(26):
        n, r = divmod(n, 32)
        chars.append(_CROCKFORD[r])
    return prefix + ''.join(reversed(chars))


def utc_now():
    return dt.datetime.now(values.UTC)


def is_empty(value):
    return value is None or value == '' or value == []


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


class Store:
    def __init__(self, db, catalog, clock=utc_now):
        self.db = db
        self.catalog = catalog
        self.clock = clock
        self._readers = {}

    # -- reading -----------------------------------------------------------------------------------

    def reader(self, info):
        """Raw row tuple -> record dict, compiled once per table shape."""
        read = self._readers.get(info.shape_key)
        if read is None:
            if len(self._readers) > 1000:  # custom objects make new shapes; keep this bounded
                self._readers.clear()
            names = sqlbuild.output_columns(info)
            convert = self.db.reader([info.columns[n].kind for n in names])
            read = self._readers[info.shape_key] = lambda row: dict(zip(names, convert(row)))
        return read

    def _fetch(self, tx, info, principal, record_id, for_update=False):
        row = tx.one(*sqlbuild.build_get(self.db.dialect, info, principal.org_id, record_id, for_update))
        if row is None:
            raise RecordNotFound(f"No {info.slug} record with id '{record_id}'", param='id')
        return self.reader(info)(row)

    def list(self, info, principal, lq, count='exact'):
        """One page of records and the number of matches: exact, estimated, or None for `none`."""
        d = self.db.dialect
        read = self.reader(info)
        with self.db.transaction() as tx:
            rows = [read(r) for r in tx.rows(*sqlbuild.build_list(d, info, principal.org_id, lq))]
            if count == 'none':
                total = None
            elif lq.start == 0 and lq.after is None and len(rows) < lq.size:
                total = len(rows)
            else:
                total = self._total(tx, info, principal, lq, count)
        return rows, total

    def _total(self, tx, info, principal, lq, count='exact'):
        """The live-row counter when nothing narrows the list; else an index-backed COUNT, or on
        PostgreSQL with `count=estimated` the planner's estimate."""
        d = self.db.dialect
        if not (lq.equals or lq.filters or lq.search is not None or lq.include_archived):
            counter = tx.one(*sqlbuild.build_count_read(d, principal.org_id, info.spec.counted_as))
            if counter is not None:
                return counter[0]
        if count == 'estimated' and d.name == 'postgresql':
            plan = tx.one(*sqlbuild.build_estimate(d, info, principal.org_id, lq))[0]
            return int(plan[0]['Plan']['Plan Rows'])
        return tx.one(*sqlbuild.build_count(d, info, principal.org_id, lq))[0]

    def export(self, info, principal, lq):
        """Every matching record, in order, read in batches: for CSV and NDJSON exports."""
        read = self.reader(info)
        for row in self.db.stream(*sqlbuild.build_export(self.db.dialect, info, principal.org_id, lq)):
            yield read(row)

    def _count(self, tx, info, principal, delta):
        """Keep the live-row counter in the same transaction as the write that changes it."""
        if delta:
            tx.execute(*sqlbuild.build_count_add(self.db.dialect, principal.org_id, info.spec.counted_as, delta))

    def recount(self, principal):
        """Rebuild every counter of an organization from its rows (after writes made outside the API)."""
        with self.db.transaction(write=True) as tx:
            for info in self.catalog.all_tables(principal):
                if not info.spec.read_only:
                    tx.execute(*sqlbuild.build_recount(self.db.dialect, principal.org_id, info))

    def get(self, info, principal, record_id):
        with self.db.transaction() as tx:
            return self._fetch(tx, info, principal, record_id)

    # -- writing -----------------------------------------------------------------------------------

    def _check_writable(self, info, principal):
        if info.spec.read_only:
            raise MethodNotAllowed(f"Resource '{info.slug}' is read-only", allow=['GET', 'HEAD'])
        if info.spec.admin_writes and not principal.is_admin:
            raise Forbidden(f"Only administrators may change {info.slug}")

    def prepare(self, info, body, creating, lenient=False):
        """The writable fields of `body`, checked against their columns; every bad field is reported.

        Read-only fields (server-managed, computed by a view) are ignored, so a record read back and
        sent whole still writes; any other unknown field is a 400 unless `lenient` (it is then ignored).
        """
        if not isinstance(body, dict):
            raise InvalidBody('The request body must be a JSON object')
        changes, problems = {}, []
        for key, value in body.items():
            name = key if key in info.columns else snake_case(key)
            if name != key and name in body:
                continue  # the snake_case spelling wins over its camelCase twin
            column = info.columns.get(name)
            if column is None and name not in info.read_only_fields:
                if not lenient:
                    problems.append(unknown_field(info.slug, key, name, info.writable))
                continue
            if column is None or not column.writable:
                continue
            try:
                changes[name] = self._value(column, value)
            except InvalidValue as exc:
                problems.append(exc)
        reported = {p.members.get('field') for p in problems}
        for name, column in info.columns.items():
            if (column.required and (name in changes or creating) and changes.get(name) is None
                    and name not in reported):
                problems.append(InvalidValue(f"Field '{name}' is required", field=name))
        raise_all(problems)
        return changes

    @staticmethod
    def _value(column, value):
        if value is None and not column.nullable:
            raise InvalidValue(f"Field '{column.name}' may not be null", field=column.name)
        return values.check_stored(column, value)

    def _check_references(self, tx, info, principal, changes):
        problems = []
        for name, value in changes.items():
            target = info.columns[name].references
            if target is None or is_empty(value):
                continue
            wanted = value if isinstance(value, list) else [value]
            target_info = self.catalog.resolve(target, principal)
            found = {r[0] for r in tx.rows(*sqlbuild.build_exists(
                self.db.dialect, target_info, principal.org_id, wanted))}
            missing = [i for i in wanted if i not in found]
            if missing:
                problems.append(InvalidValue(
                    f"Field '{name}' refers to {target} '{missing[0]}', which does not exist", field=name))
        raise_all(problems)

    def _stamp(self, info, changes, *names):
        now = self.clock()
        for name in names:
            if name in info.columns:
                changes[name] = now
        return changes

    def create(self, info, principal, body, lenient=False):
        self._check_writable(info, principal)
        row = self.prepare(info, body, creating=True, lenient=lenient)
        row = {'id': new_id(info.spec.id_prefix), 'organization_id': principal.org_id, **row}
        self._stamp(info, row, 'created_at', 'updated_at')
        with self.db.transaction(write=True) as tx:
            self._check_references(tx, info, principal, row)
            created = self.reader(info)(tx.one(*sqlbuild.build_insert(self.db.dialect, info, row)))
            self._count(tx, info, principal, 1)
            return created

    def update(self, info, principal, record_id, body, lenient=False):
        self._check_writable(info, principal)
        changes = self.prepare(info, body, creating=False, lenient=lenient)
        with self.db.transaction(write=True) as tx:
            if not changes:
                return self._fetch(tx, info, principal, record_id)
            self._check_references(tx, info, principal, changes)
            self._keep_an_administrator(tx, info, principal, record_id, changes)
            return self._update(tx, info, principal, record_id, self._stamp(info, changes, 'updated_at'))

    def _update(self, tx, info, principal, record_id, changes):
        row = tx.one(*sqlbuild.build_update(self.db.dialect, info, principal.org_id, record_id, changes))
        if row is None:
            raise RecordNotFound(f"No {info.slug} record with id '{record_id}'", param='id')
        return self.reader(info)(row)

    def delete(self, info, principal, record_id):
        """Archive, disable or delete for good, as the resource's policy says."""
        self._check_writable(info, principal)
        mode = info.spec.delete
        with self.db.transaction(write=True) as tx:
            if mode == 'archive':
                return self._set_flag(tx, info, principal, record_id, 'archived_at', self.clock())
            if mode == 'disable':
                self._keep_an_administrator(tx, info, principal, record_id, {'disabled': True})
                return self._set_flag(tx, info, principal, record_id, 'disabled', True)
            record = self._fetch(tx, info, principal, record_id, for_update=True)
            self.detach_references(tx, info, principal, [record_id])
            tx.one(*sqlbuild.build_delete(self.db.dialect, info, principal.org_id, record_id))
            self._count(tx, info, principal, -1)
            return record

    def restore(self, info, principal, record_id):
        mode = info.spec.delete
        if mode == 'hard' or info.spec.read_only:
            raise MethodNotAllowed(f"Records of '{info.slug}' cannot be restored", allow=[])
        self._check_writable(info, principal)
        with self.db.transaction(write=True) as tx:
            if mode == 'archive':
                return self._set_flag(tx, info, principal, record_id, 'archived_at', None)
            return self._set_flag(tx, info, principal, record_id, 'disabled', False)

    def _set_flag(self, tx, info, principal, record_id, name, value):
        """Archive/restore or disable/enable; the same request twice changes nothing more."""
        record = self._fetch(tx, info, principal, record_id, for_update=True)
        unchanged = ((record[name] is None) == (value is None) if name == 'archived_at'
                     else record[name] == value)
        if unchanged:
            return record
        if name == 'archived_at':
            self._count(tx, info, principal, -1 if value is not None else 1)
        changes = self._stamp(info, {name: value}, 'updated_at')
        return self._update(tx, info, principal, record_id, changes)

    def _keep_an_administrator(self, tx, info, principal, record_id, changes):
        """409 when `changes` would take the organization's last active administrator away.

        NOTE: the active administrators are read, then locked FOR UPDATE in id order and read again
        (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers). Two administrators
        demoting each other at once queue on the locks, and the second sees the first's demotion.
        """
        if info.slug != 'crm_users' or not (changes.get('administrator') is False or changes.get('disabled') is True):
            return
        columns = info.columns
        admins = ListQuery(equals=(Filter(columns['administrator'], 'eq', True),
                                   Filter(columns['disabled'], 'eq', False)))
        d, org, read = self.db.dialect, principal.org_id, self.reader(info)
        ids = [read(row)['id'] for row in tx.rows(*sqlbuild.build_export(d, info, org, admins))]
        if record_id not in ids:
            return
        locked = [read(row) for row in tx.rows(*sqlbuild.build_get(d, info, org, ids, for_update=True))]
        active = [u['id'] for u in locked if u['administrator'] and not u['disabled']]
        if active == [record_id]:
            field = 'administrator' if changes.get('administrator') is False else 'disabled'
            raise Conflict('An organization keeps at least one active administrator: make another user an '
                           'administrator first', field=field)

    # -- references between records ----------------------------------------------------------------

    def referrers(self, principal, slug):
        """Every (table, column) of the organization whose reference points at resource `slug`."""
        return [(info, column) for info in self.catalog.all_tables(principal) if not info.spec.read_only
                for column in info.columns.values() if column.references == slug]

    def _rewrite_references(self, tx, principal, slug, ids, replacement):
        """Point every reference to `ids` at `replacement` (None: drop the link)."""
        d, ids = self.db.dialect, list(ids)
        for info, column in self.referrers(principal, slug):
            rows = tx.rows(*sqlbuild.build_referrers(d, info, principal.org_id, column, ids))
            for record_id, current in rows:
                if column.kind == 'array':
                    current = self.db.reader(['array'])([current])[0]
                    new = [replacement if v in ids else v for v in current]
                    new = [v for v in dict.fromkeys(new) if v is not None]
                elif replacement is None and not column.nullable:
                    raise Conflict(f"{info.slug} '{record_id}' still refers to this record through "
                                   f"'{column.name}'", field=column.name)
                else:
                    new = replacement
                self._update(tx, info, principal, record_id,
                             self._stamp(info, {column.name: new}, 'updated_at'))

    def detach_references(self, tx, info, principal, ids):
        self._rewrite_references(tx, principal, info.slug, ids, None)

    # -- merge -------------------------------------------------------------------------------------

    def merge_contacts(self, principal, body, lenient=False):
        """Fold `source_ids` into `target_id` in one transaction; the sources are then deleted."""
        if not isinstance(body, dict):
            raise InvalidBody('The request body must be a JSON object')
        if not lenient:
            raise_all([unknown_field('merge_contacts', key, snake_case(key), MERGE_FIELDS)
                       for key in body if key not in MERGE_FIELDS])
        sources, target_id = body.get('source_ids'), body.get('target_id')
        if not isinstance(target_id, str) or not target_id:
            raise InvalidValue("Field 'target_id' must be the id of the contact to keep", field='target_id')
        if (not isinstance(sources, list) or not sources
                or not all(isinstance(s, str) and s for s in sources)):
            raise InvalidValue("Field 'source_ids' must be a non-empty array of contact ids", field='source_ids')
        if len(sources) > MAX_MERGE_SOURCES:
            raise InvalidValue(f"At most {MAX_MERGE_SOURCES} source_ids may be merged at once",
                               field='source_ids')
        sources = [s for s in dict.fromkeys(sources) if s != target_id]
        info = self.catalog.resolve('contacts', principal)
        d = self.db.dialect
        with self.db.transaction(write=True) as tx:
            # NOTE: target and sources are locked in one statement, in id order, so two merges of
            # the same contacts in opposite directions queue up instead of deadlocking.
            found = {r['id']: r for r in map(self.reader(info), tx.rows(*sqlbuild.build_get(
                d, info, principal.org_id, [target_id, *sources], for_update=True)))}
            if target_id not in found:
                raise RecordNotFound(f"No contacts record with id '{target_id}'", field='target_id')
            if not sources:
                return found[target_id]
            target = found[target_id]
            missing = [s for s in sources if s not in found]
            if missing:
                raise NotFound(f"No contacts record with id '{missing[0]}'", field='source_ids')
            changes = self._merged_fields(info, target, [found[s] for s in sources])
            self._rewrite_references(tx, principal, 'contacts', sources, target_id)
            tx.execute(*sqlbuild.build_delete(d, info, principal.org_id, sources))
            self._count(tx, info, principal, -sum(1 for s in sources if found[s]['archived_at'] is None))
            if not changes:
                return self._fetch(tx, info, principal, target_id)
            return self._update(tx, info, principal, target_id, self._stamp(info, changes, 'updated_at'))

    @staticmethod
    def _merged_fields(info, target, sources):
        """Target wins; its empty fields take the first non-empty source value; arrays are united."""
        changes = {}
        for name, column in info.writable.items():
            if column.kind == 'array':
                united = list(dict.fromkeys([*(target[name] or []), *(v for s in sources for v in s[name] or [])]))
                if united != (target[name] or []):
                    changes[name] = united
            elif is_empty(target[name]):
                value = next((s[name] for s in sources if not is_empty(s[name])), None)
                if value is not None:
                    changes[name] = values.check(column, value)
        return changes
