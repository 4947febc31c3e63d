"""Change history: every write records one change per record it touched, in the write's own transaction.

A change carries the organization's change number `seq`, the resource, the record id, the operation,
the actor, the time and what changed (updates: the changed fields as {field: [old, new]}; creates the
new record, deletes the last one). `GET /api/:resource/:id/history` reads one record's changes,
`GET /api/changes?after=` the organization's feed in `seq` order.

NOTE: the feed must never skip a change: a reader that has seen `seq` 7 must never later find a 6. A database
sequence would not do (a lower number can commit after a higher one is read), nor would a per-organization counter
row taken by each write: locked until COMMIT, it makes an organization's writes commit one at a time.

So on PostgreSQL a write stores its changes unnumbered (seq NULL) with a `tick` from a sequence, taken by its last
statement, and locks nothing organization-wide; `number` numbers an organization's committed unnumbered changes, in
tick order, under the organization's counter row (`change_counters`), before anything reads `seq`: the feed, a
record's history, the worker's fan-out and rules, a new webhook's or rule's start, retention. Under that lock one
statement lists every change committed before it started, and all get numbers after the last one, so a change
committed later gets a higher number than every one already read. A write that waited for another's row lock took
its tick after that one committed, so the changes of one record are numbered in the order they were made. A
rolled-back write leaves nothing. SQLite has one writer at a time: a write numbers its changes itself, from the
counter row, with its last statements.
"""

import contextlib
import datetime as dt

import orjson

from . import authcache
from . import sqlbuild
from . import values
from .errors import InvalidParam

RESOURCE = 'custom_objects'  # the resource name of custom object definitions in the history
FEED = 'changes'  # the read-only resource of the organization's changes
CHANGE_PREFIX = 'chg_'
UNTRACKED = frozenset({'updated_at'})  # a field every update changes: the change's own time says it
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
PRUNE_BATCH = 1000
AUTH_RESOURCES = frozenset({'crm_users'})  # a change to one of these (but a create) may withdraw a token
# NOTE: from this many changes of one write on, PostgreSQL gets them by COPY: a 1,000-row INSERT spends most of
# its time binding 11,000 parameters, COPY a fifth of that; below, one INSERT also takes the numbers (one round
# trip where COPY needs three).
COPY_ROWS = sqlbuild.COPY_ROWS
OPERATIONS = ('created', 'updated', 'archived', 'restored', 'deleted', 'disabled', 'enabled', 'merged', 'merged_into')
# The fields of a change on the wire, always present: (name, kind, declared type, nullable, meaning).
FIELDS = (
    ('id', 'text', 'TEXT', False, 'the change id (chg_ + 26 characters), stable'),
    ('seq', 'integer', 'BIGINT', False, "the change's number in its organization: the feed's order"),
    ('resource', 'text', 'TEXT', False, 'the resource of the record (custom_objects for definitions)'),
    ('record_id', 'text', 'TEXT', False, 'the id of the record'),
    ('operation', 'text', 'TEXT', False, ', '.join(OPERATIONS)),
    ('actor', 'text', 'TEXT', False, 'user, system (the command line), or rule:<id> (an automation rule)'),
    ('user_id', 'text', 'TEXT', True, "the acting user's id (crm_users); null for system"),
    ('token_id', 'text', 'TEXT', True, "the id of the acting user's token; null for system"),
    ('changed_at', 'timestamp', 'TIMESTAMPTZ', False, 'when the change was made'),
    ('changes', 'json', 'JSON', True, 'the fields that changed: {"field": [old, new]}'),
    ('record', 'json', 'JSON', True, 'created: the new record; deleted and merged_into: the last one'),
    ('target_id', 'text', 'TEXT', True, 'merged_into: the contact the record was merged into'),
    ('source_ids', 'json', 'JSON', True, 'merged: the contacts merged into this one'),
    ('depth', 'integer', 'INTEGER', True, 'made by an automation rule: how many rules led to it (null: by a user)'),
)
DATA_FIELDS = dict.fromkeys(('changes', 'record', 'target_id', 'source_ids', 'depth'))  # what `data` holds
FLAG_OPERATIONS = {
    ('archived_at', True): 'archived',
    ('archived_at', False): 'restored',
    ('disabled', True): 'disabled',
    ('disabled', False): 'enabled',
}


def same(a, b):
    """Whether two values are equal and of one type: true is not 1 (as == has it), nor 1 the JSON number 1.0."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if kind is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def diff(old, new, names=None):
    """{field: [old, new]} of the fields (among `names`, by default all) whose value differs between two
    readings of a record."""
    return {
        name: [old.get(name), new[name]]
        for name in (new if names is None else names)
        if name not in UNTRACKED and not same(old.get(name), new[name])
    }


# -- the changes a write makes: (resource, record id, operation, data) ------------------------------


def created(resource, record):
    return resource, record['id'], 'created', {'record': record}


def deleted(resource, record):
    return resource, record['id'], 'deleted', {'record': record}


def updated(resource, old, new, names=None, operation='updated'):
    """An update's change: the fields (among `names`, the ones written) it changed; None when it changed
    none (then nothing is recorded)."""
    changes = diff(old, new, names)
    return (resource, new['id'], operation, {'changes': changes}) if changes else None


def flagged(resource, old, new, name, value):
    """Archived/restored or disabled/enabled."""
    return updated(resource, old, new, (name,), FLAG_OPERATIONS[name, value is not None and value is not False])


def merged(resource, old, new, names, source_ids):
    return resource, new['id'], 'merged', {'changes': diff(old, new, names), 'source_ids': list(source_ids)}


def merged_into(resource, record, target_id):
    return resource, record['id'], 'merged_into', {'target_id': target_id, 'record': record}


def actor(principal):
    """('system', None, None) for the server itself (the CLI), (`rule:<id>`, None, None) for an automation rule
    (crmapi.rules.RulePrincipal), else ('user', user, token)."""
    if principal.is_system or principal.user_id is None:
        return getattr(principal, 'actor', 'system'), None, None
    return 'user', principal.user_id, principal.token_id


class History:
    """Records changes inside write transactions and reads them back."""

    def __init__(self, db, clock, new_ids):
        self.db = db
        self.clock = clock
        self.new_ids = new_ids  # store.new_ids: time-ordered, so change ids sort as they were made
        self.later = db.dialect.name == 'postgresql'  # changes are numbered after their write (the module's NOTE)
        self.read_change = db.record_reader(
            sqlbuild.CHANGE_OUTPUT, [sqlbuild.CHANGE_KINDS.get(n, 'text') for n in sqlbuild.CHANGE_OUTPUT]
        )

    @contextlib.contextmanager
    def recorded(self, principal):
        """A write transaction: append each change the write makes to `tx.changes`; they are stored as its last
        statements, and only when it is about to commit.

        NOTE: inside another transaction (an Idempotency-Key's) the changes are stored at the end of this
        block: on SQLite the counter row is then held a little longer, and commits stay in `seq` order.
        """
        with self.db.transaction(write=True) as tx:
            tx.changes, tx.counts = [], {}
            yield tx
            changes = [c for c in tx.changes if c is not None]
            self.record(tx, principal, changes, {table: n for table, n in tx.counts.items() if n})
            withdraws = any(c[0] in AUTH_RESOURCES and c[2] != 'created' for c in changes)
            if withdraws:
                tx.execute(*sqlbuild.build_auth_changed())
        if withdraws:
            authcache.changed_here()

    def record(self, tx, principal, changes, counts=None):
        """Store `changes` (numbered on SQLite, unnumbered on PostgreSQL: see the module's NOTE); add `counts`
        ({table: delta}) to the organization's live-row counters (store.Store._count).

        NOTE: on PostgreSQL one statement adds the counts and inserts a few changes (one round trip); more go by COPY
        after the statement that adds the counts and takes their tick. On SQLite (no round trips): the counters, then
        INSERTs. The changes' JSON is made before the first statement: on PostgreSQL, while the server still inserts
        what the write copied before (see db._PostgresTx).
        """
        d, org, count = self.db.dialect, principal.org_id, len(changes)
        counts = sorted((counts or {}).items())  # NOTE: one order of the counter rows for every writer
        if not (changes and self.later):  # NOTE: PostgreSQL's go in the statement that takes the changes' tick
            for table, delta in counts:
                tx.execute(*sqlbuild.build_count_add(d, org, table, delta))
        if not changes:
            return
        who = (*actor(principal), values.format_timestamp(self.clock()))
        depth = getattr(principal, 'depth', None)  # a rule's changes say how deep in a chain of rules they are
        items = [
            (
                change_id,
                resource,
                record_id,
                operation,
                orjson.dumps(data if depth is None else {**data, 'depth': depth}).decode(),
            )
            for change_id, (resource, record_id, operation, data) in zip(self.new_ids(CHANGE_PREFIX, count), changes)
        ]
        if self.later and count < COPY_ROWS:
            tx.execute(*sqlbuild.build_pending_changes(d, org, who, items, counts))
            return
        if self.later:
            (tick,) = tx.one(*sqlbuild.build_change_tick(d, org, counts))
            rows = [
                (change_id, org, None, resource, record_id, operation, *who, data, tick)
                for change_id, resource, record_id, operation, data in items
            ]
        else:
            (last,) = tx.one(*sqlbuild.build_change_numbers(d, org, count))
            first = last - count  # NOTE: the rows made in one pass (a batch's thousand changes)
            rows = [
                (change_id, org, first + n, resource, record_id, operation, *who, data)
                for n, (change_id, resource, record_id, operation, data) in enumerate(items, 1)
            ]
        for statement in sqlbuild.build_write_changes(d, rows):
            tx.write_rows(*statement)

    # -- numbering (PostgreSQL) --------------------------------------------------------------------

    def number(self, tx, org_id):
        """Number the organization's committed unnumbered changes, in `tx` (the counter row stays locked until it
        ends): the organization's last change number (0: none yet)."""
        d = self.db.dialect
        if not self.later:
            counter = tx.one(*sqlbuild.build_change_counter_read(d, org_id))
            return counter[0] if counter else 0
        (last,) = tx.one(*sqlbuild.build_numbering_lock(d, org_id))
        ids = [change_id for (change_id,) in tx.rows(*sqlbuild.build_unnumbered_ids(d, org_id))]
        return tx.one(*sqlbuild.build_number_changes(d, org_id, last, ids))[0] if ids else last

    def number_all(self):
        """Number the committed unnumbered changes of every organization, one transaction each (the worker and
        retention, before they look at the counters)."""
        if not self.later:
            return
        with self.db.transaction() as tx:
            orgs = [org for (org,) in tx.rows(*sqlbuild.build_unnumbered_organizations(self.db.dialect))]
        for org in orgs:
            with self.db.transaction(write=True) as tx:
                self.number(tx, org)

    @contextlib.contextmanager
    def numbered(self, org_id):
        """A transaction to read the organization's changes in, after its committed changes are numbered.

        NOTE: with nothing to number it is a read (a replica's, where the request may use one: replicas replay the
        numbering whole, so they show a prefix of the feed); else a write on the primary that numbers, then reads.
        """
        with self.db.transaction() as tx:
            if not (self.later and tx.one(*sqlbuild.build_unnumbered(self.db.dialect, org_id))):
                yield tx
                return
        with self.db.transaction(write=True) as tx:
            self.number(tx, org_id)
            yield tx

    # -- reading -----------------------------------------------------------------------------------

    def _wire(self, row):
        change = self.read_change(row)
        data = change.pop('data')
        return {**change, **DATA_FIELDS, **(data or {})}

    def of_record(self, org_id, resource, record_id, start, size):
        """One page of a record's changes, newest first, and how many it has."""
        d = self.db.dialect
        with self.numbered(org_id) as tx:
            rows = tx.rows(*sqlbuild.build_record_changes(d, org_id, resource, record_id, start, size))
            if start == 0 and len(rows) < size:
                total = len(rows)
            else:
                total = tx.one(*sqlbuild.build_record_changes_count(d, org_id, resource, record_id))[0]
        return [self._wire(r) for r in rows], total

    def feed(self, org_id, after, limit, resource=None, hidden=()):
        """The organization's changes after `seq` `after`, in `seq` order, but none of the resources `hidden`."""
        with self.numbered(org_id) as tx:
            rows = tx.rows(*sqlbuild.build_change_feed(self.db.dialect, org_id, after, limit, resource, hidden))
        return [self._wire(r) for r in rows]

    # -- retention ---------------------------------------------------------------------------------

    def prune(self, days, batch=PRUNE_BATCH):
        """Delete the changes older than `days` days: how many (see `retention`)."""
        return self.retention(days, batch)['changes']

    def retention(self, days, batch=PRUNE_BATCH):
        """Delete what is older than `days` days, `batch` rows at a time per transaction: the changes, the
        automation runs of those changes, and the webhook deliveries no longer pending; {table: rows deleted}.
        The counters stay, so a `seq` is never given out twice.

        NOTE: a change the worker has not handed on yet (numbered after the organization's webhook fan-out or
        automation rules cursor) is kept whatever its age, and so is a pending delivery: the outbox loses nothing it still has to send.
        An automation run goes before its change (a reference to the change never dangles).
        """
        cutoff = values.format_timestamp(self.clock() - dt.timedelta(days=days))
        d, deleted = self.db.dialect, dict.fromkeys(('changes', 'automation_runs', 'webhook_deliveries'), 0)
        self.number_all()  # NOTE: an organization's counter row (its place in the list below) comes with its numbers
        with self.db.transaction() as tx:
            orgs = [org for (org,) in tx.rows(*sqlbuild.build_change_organizations(d))]
        for org in orgs:
            with self.db.transaction() as tx:
                (cursor,) = tx.one(*sqlbuild.build_outbox_cursor_read(d, org))
            kept_after = values.INT64_MAX if cursor is None else cursor
            deleted['automation_runs'] += self._batches(batch, sqlbuild.build_prune_runs, d, org, cutoff, kept_after)
            deleted['changes'] += self._prune_changes(org, cutoff, kept_after, batch)
            deleted['webhook_deliveries'] += self._batches(batch, sqlbuild.build_prune_deliveries, d, org, cutoff)
        return deleted

    def _batches(self, batch, build, *args):
        """Run a DELETE of at most `batch` rows, one transaction each, until one deletes fewer: how many in all."""
        total = 0
        while True:
            with self.db.transaction(write=True) as tx:
                count = tx.execute(*build(*args, batch))
            total += count
            if count < batch:
                return total

    def _prune_changes(self, org, cutoff, kept_after, batch):
        """NOTE: the organization is walked in `seq` order from its oldest change and stops at the first batch
        that holds a newer one (or one after `kept_after`), so a run reads little more than what it deletes."""
        d, deleted_count = self.db.dialect, 0
        while True:
            with self.db.transaction(write=True) as tx:
                rows = tx.rows(*sqlbuild.build_oldest_changes(d, org, batch))
                old = [seq for seq, at in rows if _instant(at) < cutoff and seq <= kept_after]
                if old:
                    deleted_count += tx.execute(*sqlbuild.build_delete_changes(d, org, old[-1], cutoff))
            if len(old) < batch:
                return deleted_count


def _instant(value):
    return value if isinstance(value, str) else values.format_timestamp(value)


def describe():
    """`GET /api/schema/changes`: a change's fields, in the shape of a resource's description."""
    return {
        'resource': FEED,
        'read_only': True,
        'delete': 'hard',
        'restorable': False,
        'columns': [
            {
                'name': name,
                'type': declared,
                'kind': kind,
                'nullable': nullable,
                'default': None,
                'writable': False,
                'required': False,
                'filterable': name in ('seq', 'resource'),
                'sortable': False,
                'references': None,
                'max_length': None,
                'description': meaning,
            }
            for name, kind, declared, nullable, meaning in FIELDS
        ],
    }


def parse_feed(params, known):
    """`after` (a seq, default 0), `limit` (1 to MAX_LIMIT, default DEFAULT_LIMIT), `resource` (`known(name)`)."""
    unknown = sorted(set(params) - {'after', 'limit', 'resource'})
    if unknown:
        raise InvalidParam(
            f"Unknown parameter '{unknown[0]}': the feed takes after, limit and resource", param=unknown[0]
        )
    after = _whole(params, 'after', 0, 0, values.INT64_MAX)
    limit = _whole(params, 'limit', DEFAULT_LIMIT, 1, MAX_LIMIT)
    resource = params.get('resource')
    if isinstance(resource, list):
        raise InvalidParam("Parameter 'resource' is given more than once", param='resource')
    if resource is not None and not known(resource):
        raise InvalidParam(
            f"Parameter 'resource': '{resource}' is not a resource of this organization that records changes",
            param='resource',
        )
    return after, limit, resource


def _whole(params, name, default, low, high):
    raw = params.get(name)
    if raw is None:
        return default
    if isinstance(raw, list):
        raise InvalidParam(f"Parameter '{name}' is given more than once", param=name)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise InvalidParam(f"Parameter '{name}' is a whole number from {low} to {high}", param=name)
    return int(raw)
