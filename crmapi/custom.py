"""Custom objects: each organization's own record types, as real tables with typed columns.

A definition lives in `custom_objects`; its table is `co_<definition id>`. Defining, changing and
dropping run the DDL and the definition's row in one transaction, so a failure leaves neither a
half-made table nor a definition without its table. Every request resolves a custom slug against
the definition's `version`, so a change made by one worker is the whitelist of the next request
on any other, with no restart.
"""

import dataclasses
import hashlib
import re
from dataclasses import dataclass

from . import history
from . import sqlbuild
from . import values
from .errors import Conflict
from .errors import Forbidden
from .errors import InvalidBody
from .errors import InvalidValue
from .errors import NotFound
from .keywords import SQL_KEYWORDS
from .query import Filter
from .query import ListQuery
from .schema import BUILTIN
from .schema import SERVER_MANAGED
from .schema import ResourceSpec
from .schema import table_info
from .store import Store
from .store import new_id

FIELD_TYPES = {
    'text': 'TEXT',
    'integer': 'BIGINT',
    'number': 'NUMERIC',
    'boolean': 'BOOLEAN',
    'date': 'DATE',
    'datetime': 'TIMESTAMPTZ',
    'json': 'JSONB',
    'reference': 'TEXT',
}
ROUTE_NAMES = frozenset(
    {'schema', 'merge_contacts', 'merge_companies', 'custom_objects', 'openapi', 'docs', 'me', 'changes'}
)
NAME = re.compile(r'[a-z][a-z0-9_]{0,62}\Z')
RECORD_PREFIX = 'rec_'
MAX_FIELDS = 200  # fields of one definition
MAX_OBJECTS = 100  # definitions of one organization, archived ones included (their tables exist)
# NOTE: PostgreSQL's system columns (and `oid`, one before version 12) cannot be column names there;
# SQLite's rowid aliases can, but then shadow the row id. A field name must work on both databases.
SYSTEM_COLUMNS = frozenset({'xmin', 'xmax', 'cmin', 'cmax', 'ctid', 'tableoid', 'oid', 'rowid', '_rowid_'})
FILTER_WORDS = frozenset({'q', 'include_archived'})  # `filter` keys that mean search and archive
# Each member of a field object: the JSON types it may have, and how a detail names them.
FIELD_MEMBERS = {
    'name': ((str,), 'a string'),
    'type': ((str,), 'a string'),
    'required': ((bool,), 'true or false'),
    'target': ((str, type(None)), 'a string'),
    'label': ((str, type(None)), 'a string or null'),
    'unique': ((bool,), 'true or false'),
}
BODY_MEMBERS = frozenset({'slug', 'label', 'fields'})
# What GET answers besides BODY_MEMBERS: a definition read back may be sent back; these are ignored.
READ_ONLY_MEMBERS = frozenset({'id', 'version', 'created_at', 'updated_at', 'archived_at'})


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False
    target: str = None
    label: str = None
    unique: bool = False  # one record per value in an organization (an upsert's on_conflict column)

    def to_json(self):
        out = {'name': self.name, 'type': self.type, 'required': self.required}
        if self.target:
            out['target'] = self.target
        if self.label:
            out['label'] = self.label
        if self.unique:
            out['unique'] = True
        return out

    def index_name(self, table):
        return f'{table}_{hashlib.sha1(self.name.encode()).hexdigest()[:10]}'

    def unique_index_name(self, table):
        return f'{self.index_name(table)}_key'


def check_name(name, what, field):
    """Slugs and field names: lowercase, digits, `_`, a letter first, at most 63, not reserved."""
    allowed = 'lowercase letters, digits and _, starting with a letter, at most 63 characters'
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidValue(f'{what} {name!r} is not allowed: use {allowed}', field=field)
    if name in SQL_KEYWORDS:
        raise InvalidValue(f"{what} '{name}' is an SQL keyword; choose another name", field=field)
    if name in SERVER_MANAGED:
        raise InvalidValue(f"{what} '{name}' is a column the server manages; choose another name", field=field)
    if field == 'fields' and name in SYSTEM_COLUMNS | FILTER_WORDS:
        raise InvalidValue(
            f"{what} '{name}' is reserved by a database or by the list query language; choose another name", field=field
        )
    if field == 'slug' and (name in BUILTIN or name in ROUTE_NAMES):
        raise InvalidValue(f"Slug '{name}' is taken by a built-in resource or route", field=field)
    return name


def check_body(body):
    """A definition is a JSON object of known members (their values are checked one by one later)."""
    if not isinstance(body, dict):
        raise InvalidBody('The request body must be a JSON object')
    unknown = sorted(set(body) - BODY_MEMBERS - READ_ONLY_MEMBERS)
    if unknown:
        raise InvalidValue(
            f"A custom object has no member '{unknown[0]}'; send 'slug', 'label' and 'fields'", field=unknown[0]
        )
    return body


def _check_field_shape(item, index):
    """Every member of a field object has its JSON type, before any of them is compared or hashed."""
    where = f'fields[{index}]'
    if not isinstance(item, dict):
        raise InvalidValue(f"{where} must be an object with 'name' and 'type'", field='fields')
    if isinstance(item.get('name'), str):
        where += f" ('{item['name']}')"
    for key, value in item.items():
        if key not in FIELD_MEMBERS:
            raise InvalidValue(f"{where} has no member '{key}'; a field has {', '.join(FIELD_MEMBERS)}", field='fields')
        types, described = FIELD_MEMBERS[key]
        if not isinstance(value, types):
            raise InvalidValue(f"{where}: '{key}' must be {described}", field='fields')
    if 'name' not in item or 'type' not in item:
        raise InvalidValue(f"{where} needs a 'name' and a 'type'", field='fields')


def parse_field(item, index, known=frozenset()):
    """One field object of a request; a name in `known` (a field already stored) is taken as it is."""
    _check_field_shape(item, index)
    name = item['name'] if item['name'] in known else check_name(item['name'], 'Field name', 'fields')
    ftype, target = item['type'], item.get('target')
    if ftype not in FIELD_TYPES:
        raise InvalidValue(f"Field '{name}' has type {ftype!r}; use one of {', '.join(FIELD_TYPES)}", field='fields')
    if ftype == 'reference' and target is None:
        raise InvalidValue(f"Reference field '{name}' needs a 'target' resource", field='fields')
    if ftype != 'reference' and target is not None:
        raise InvalidValue(f"Only reference fields have a 'target' ('{name}' is {ftype})", field='fields')
    if ftype == 'json' and item.get('unique'):
        raise InvalidValue(f"Field '{name}' holds JSON, which cannot be unique", field='fields')
    # NOTE: `unique` left out is None: on a field already defined, it keeps what it was.
    return Field(name, ftype, item.get('required', False), target, item.get('label'), item.get('unique'))


def parse_fields(raw, known=frozenset()):
    """The fields a request asks for, every member checked (validate what is asked)."""
    if not isinstance(raw, list) or len(raw) > MAX_FIELDS:
        raise InvalidValue(f"'fields' must be an array of at most {MAX_FIELDS} field objects", field='fields')
    fields, seen = [], set()
    for index, item in enumerate(raw):
        field = parse_field(item, index, known)
        if field.name in seen:
            raise InvalidValue(f"Field '{field.name}' is defined twice", field='fields')
        seen.add(field.name)
        fields.append(field)
    return fields


def load_fields(stored):
    """The fields of a stored definition, as stored (load what is stored).

    NOTE: never re-validated: a rule or limit made stricter later (or a definition an older server
    let grow past one) must not turn every request that reads the definition into a 400.
    """
    return [
        Field(f['name'], f['type'], f.get('required', False), f.get('target'), f.get('label'), f.get('unique', False))
        for f in stored
    ]


class CustomObjects:
    """Definitions (the write path) and per-organization resolution of custom slugs (the read path).

    Made before the store and the full catalog (crmapi.services), so it needs only the database, the
    `custom_objects` table's info, the change history its writes are recorded in, and the clock.
    """

    def __init__(self, db, info, changes, clock):
        self.db = db
        self.info = info
        self.history = changes
        self.clock = clock
        names = sqlbuild.output_columns(info)
        self.read = db.record_reader(names, [info.columns[n].kind for n in names])
        self._tables = {}

    # -- reading definitions -----------------------------------------------------------------------

    def _query(self, tx, org_id, slug=None, include_archived=True):
        equals = () if slug is None else (Filter(self.info.columns['slug'], 'eq', slug),)
        lq = ListQuery(0, 9999, equals, include_archived=include_archived)
        return [self.read(r) for r in tx.rows(*sqlbuild.build_list(self.db.dialect, self.info, org_id, lq))]

    def definitions(self, org_id, include_archived=True):
        """Every definition of `org_id` (inside a caller's transaction, that same transaction)."""
        with self.db.transaction() as tx:
            return self._query(tx, org_id, include_archived=include_archived)

    def get(self, org_id, slug):
        with self.db.transaction() as tx:
            return self.to_json(self._definition(tx, org_id, slug))

    def _definition(self, tx, org_id, slug):
        rows = self._query(tx, org_id, slug) if isinstance(slug, str) else []
        if not rows:
            raise NotFound(f"No custom object '{slug}'", param='slug')
        return rows[0]

    def _locked(self, tx, org_id, slug):
        """The definition, its row locked until `tx` ends, so changes of one definition take turns.

        NOTE: SQLite's BEGIN IMMEDIATE already serialises writers. On PostgreSQL the row is read
        again FOR UPDATE: a change that waited for another reads what that one committed.
        """
        found = self._definition(tx, org_id, slug)
        row = tx.one(*sqlbuild.build_get(self.db.dialect, self.info, org_id, found['id'], for_update=True))
        return self.read(row)

    def table_for(self, org_id, slug, include_archived=False):
        """The TableInfo of `org_id`'s custom object `slug`, or None. One indexed lookup a call."""
        with self.db.transaction() as tx:
            rows = self._query(tx, org_id, slug, include_archived)
        return self._info(rows[0]) if rows else None

    def tables_for(self, org_id):
        return [self._info(d) for d in self.definitions(org_id)]

    def active_tables(self, org_id):
        """The TableInfo of each custom object `org_id` may use (archived ones left out), in one read."""
        return [self._info(d) for d in self.definitions(org_id, include_archived=False)]

    def _info(self, definition):
        key = (definition['table_name'], definition['version'])
        info = self._tables.get(key)
        if info is None:
            if len(self._tables) > 1000:
                self._tables.clear()
            fields = load_fields(definition['fields'])
            spec = ResourceSpec(
                definition['slug'],
                RECORD_PREFIX,
                table=definition['table_name'],
                delete='archive',
                references={f.name: f.target for f in fields if f.type == 'reference'},
            )
            required = {f.name for f in fields if f.required}
            rows = self.db.introspect([spec.table])[spec.table]
            info = table_info(spec, [(n, t, nullable and n not in required, d) for n, t, nullable, d in rows])
            self._tables[key] = info
        return info

    @staticmethod
    def to_json(definition):
        return {
            k: definition[k]
            for k in ('id', 'slug', 'label', 'fields', 'version', 'created_at', 'updated_at', 'archived_at')
        }

    # -- changing definitions ----------------------------------------------------------------------

    @staticmethod
    def _require_admin(principal):
        if not principal.is_admin:
            raise Forbidden('Only administrators may define custom objects')

    def _check_targets(self, tx, principal, slug, fields):
        known = {d['slug'] for d in self._query(tx, principal.org_id, include_archived=False)} | {slug}
        for f in fields:
            if f.type != 'reference':
                continue
            builtin = BUILTIN.get(f.target)
            if (builtin is None or builtin.read_only) and f.target not in known:
                raise InvalidValue(
                    f"Reference field '{f.name}' targets '{f.target}', which is neither a "
                    'built-in resource nor one of your custom objects',
                    field='fields',
                )

    def _columns_ddl(self, tx, table, fields):
        """Add each field's column, and a reference's index.

        NOTE: a column the definition lacks may exist (an older server lost a concurrent field
        addition, or an operator added it): it is taken over when its type fits, else a 409.
        """
        columns = self.db.introspect([table]).get(table, [])
        existing = {name: values.kind_of(declared)[0] for name, declared, _, _ in columns}
        for f in fields:
            kind = existing.get(f.name)
            if kind is None:
                tx.execute(sqlbuild.build_add_column(table, f.name, FIELD_TYPES[f.type]))
            elif kind != values.kind_of(FIELD_TYPES[f.type])[0]:
                raise Conflict(
                    f"The table already has a {kind} column '{f.name}' outside the definition; add "
                    f"'{f.name}' with that type to take it over (and drop it if unwanted)",
                    field='fields',
                )
            if f.type == 'reference':
                tx.execute(sqlbuild.build_create_index(table, f.index_name(table), f.name))
            if f.unique:
                self._unique_ddl(tx, table, f)

    def _unique_ddl(self, tx, table, field):
        """Create (or drop) the unique index of `field`; while two records of an organization share a
        value it cannot be made, and a 409 names that value."""
        index = field.unique_index_name(table)
        if not field.unique:
            tx.execute(sqlbuild.build_drop_index(index))
            return
        duplicate = tx.one(*sqlbuild.build_duplicate(self.db.dialect, table, field.name))
        if duplicate is not None:
            shown = str(duplicate[0])
            shown = shown if len(shown) <= 60 else shown[:57] + '...'
            raise Conflict(
                f"Field '{field.name}' cannot be unique: more than one record has the value '{shown}'; "
                'change or remove the duplicates first',
                field='fields',
            )
        tx.execute(sqlbuild.build_create_unique_index(table, index, field.name))

    def _label(self, body, default):
        label = body.get('label', default)
        if label is not None and not isinstance(label, str):
            raise InvalidValue("'label' must be a string", field='label')
        return label

    def _check_room(self, tx, org_id):
        """At most MAX_OBJECTS definitions an organization: each is a table, archived or not."""
        lq = ListQuery(0, 0, include_archived=True)
        (count,) = tx.one(*sqlbuild.build_count(self.db.dialect, self.info, org_id, lq))
        if count >= MAX_OBJECTS:
            raise Conflict(
                f'The organization has {count} custom objects, archived ones included, and may have '
                f'at most {MAX_OBJECTS}; extend an existing one instead'
            )

    def define(self, principal, body):
        """Create a definition and its table in one transaction."""
        self._require_admin(principal)
        check_body(body)
        slug = check_name(body.get('slug'), 'Slug', 'slug')
        label = self._label(body, slug)
        fields = parse_fields(body.get('fields', []))
        definition_id = new_id('obj_')
        table = 'co_' + definition_id[len('obj_') :]
        now = self.clock()
        row = {
            'id': definition_id,
            'slug': slug,
            'label': label,
            'table_name': table,
            'fields': [f.to_json() for f in fields],
            'version': 1,
            'created_at': now,
            'updated_at': now,
        }
        with self.history.recorded(principal) as tx:
            # NOTE: the organization's definitions are counted under its lock, so two concurrent
            # definitions cannot both take the last place.
            tx.execute(*sqlbuild.build_lock_organization(self.db.dialect, principal.org_id))
            if self._query(tx, principal.org_id, slug):
                raise Conflict(f"A custom object '{slug}' already exists", field='slug')
            self._check_room(tx, principal.org_id)
            self._check_targets(tx, principal, slug, fields)
            tx.execute(sqlbuild.build_create_table(table, []))
            self._columns_ddl(tx, table, fields)
            created = self.to_json(
                self.read(tx.one(*sqlbuild.build_insert(self.db.dialect, self.info, principal.org_id, row)))
            )
            tx.changes.append(history.created(history.RESOURCE, created))
        return created

    def _save(self, tx, org_id, definition, operation='updated', **changes):
        """Store `changes` of a definition (a new version), and record what changed."""
        changes = {**changes, 'version': definition['version'] + 1, 'updated_at': self.clock()}
        row = tx.one(*sqlbuild.build_update(self.db.dialect, self.info, org_id, definition['id'], changes))
        saved = self.to_json(self.read(row))
        tx.changes.append(history.updated(history.RESOURCE, self.to_json(definition), saved, operation=operation))
        return saved

    def redefine(self, principal, slug, body):
        """Add the new fields, change labels; fields the body omits are kept, types never change."""
        self._require_admin(principal)
        check_body(body)
        if 'slug' in body and body['slug'] != slug:
            raise InvalidValue('A custom object keeps its slug; define a new one instead', field='slug')
        with self.history.recorded(principal) as tx:
            definition = self._locked(tx, principal.org_id, slug)
            label = self._label(body, definition['label'])
            current = {f.name: f for f in load_fields(definition['fields'])}
            was_unique = {name: f.unique for name, f in current.items()}
            added = self._merge(current, parse_fields(body.get('fields', []), known=current.keys()))
            if added and len(current) + len(added) > MAX_FIELDS:
                raise InvalidValue(
                    f"Custom object '{slug}' would have {len(current) + len(added)} fields; at most "
                    f'{MAX_FIELDS} are allowed (drop some first)',
                    field='fields',
                )
            self._check_targets(tx, principal, slug, added)
            self._columns_ddl(tx, definition['table_name'], added)
            for f in current.values():
                if f.unique != was_unique[f.name]:
                    self._unique_ddl(tx, definition['table_name'], f)
            merged = [f.to_json() for f in [*current.values(), *added]]
            if label == definition['label'] and merged == definition['fields']:
                return self.to_json(definition)  # nothing changes: the version stays, nothing is recorded
            saved = self._save(tx, principal.org_id, definition, label=label, fields=merged)
            self._reindex(tx, principal, slug, added)
            return saved

    @staticmethod
    def _merge(current, fields):
        """Take the new labels (and `unique`, when sent) of `current`'s fields into it; answer the new fields."""
        added = []
        for f in fields:
            old = current.get(f.name)
            if f.unique is None:
                f = dataclasses.replace(f, unique=bool(old and old.unique))
            if old is None:
                added.append(f)
            elif (old.type, old.target, old.required) != (f.type, f.target, f.required):
                raise Conflict(
                    f"Field '{f.name}' is {old.type}{' required' if old.required else ''}; "
                    'a field keeps its type, target and requiredness (drop it and add a new one)',
                    field='fields',
                )
            else:
                current[f.name] = f
        return added

    def _reindex(self, tx, principal, slug, changed):
        """Search rows again when text fields come or go (a column taken over may hold text already).

        NOTE: the ALTER TABLE before this holds the table's lock until the transaction ends, so no record
        write runs meanwhile (a column taken over needs no ALTER: a concurrent write may then make this a 409).
        """
        if any(f.type == 'text' for f in changed):
            info = self.table_for(principal.org_id, slug, include_archived=True)
            # NOTE: a store of this table alone: a custom object's rows take no other record's words
            Store(self.db, None, self.clock, self.history).reindex_table(tx, info, principal.org_id)

    def set_archived(self, principal, slug, archived):
        """DELETE archives a definition (its records are kept); restore brings it back."""
        self._require_admin(principal)
        with self.history.recorded(principal) as tx:
            definition = self._locked(tx, principal.org_id, slug)
            if (definition['archived_at'] is None) != archived:
                return self.to_json(definition)
            return self._save(
                tx,
                principal.org_id,
                definition,
                'archived' if archived else 'restored',
                archived_at=self.clock() if archived else None,
            )

    def drop_field(self, principal, slug, name):
        """Remove one field and its column; answer with what was dropped."""
        self._require_admin(principal)
        with self.history.recorded(principal) as tx:
            definition = self._locked(tx, principal.org_id, slug)
            fields = load_fields(definition['fields'])
            dropped = next((f for f in fields if f.name == name), None)
            if dropped is None:
                raise NotFound(f"Custom object '{slug}' has no field '{name}'", field=name)
            table = definition['table_name']
            if dropped.type == 'reference':
                tx.execute(sqlbuild.build_drop_index(dropped.index_name(table)))
            if dropped.unique:
                tx.execute(sqlbuild.build_drop_index(dropped.unique_index_name(table)))
            tx.execute(sqlbuild.build_drop_column(table, name))
            saved = self._save(
                tx, principal.org_id, definition, fields=[f.to_json() for f in fields if f is not dropped]
            )
            self._reindex(tx, principal, slug, [dropped])
        return {'dropped': dropped.to_json(), 'custom_object': saved}
