"""Custom objects: each organization's own record types, as real tables with typed columns.

A definition lives in `custom_objects`; its table is `co_<definition id>`. Defining, changing and
dropping run the DDL and the definition's row in one transaction, so a failure leaves neither a
half-made table nor a definition without its table. Every request resolves a custom slug against
the definition's `version`, so a change made by one worker is the whitelist of the next request
on any other, with no restart.
"""
import hashlib
import re
from dataclasses import dataclass

from . import sqlbuild
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
from .store import new_id

FIELD_TYPES = {
    'text': 'TEXT', 'integer': 'BIGINT', 'number': 'NUMERIC', 'boolean': 'BOOLEAN', 'date': 'DATE',
    'datetime': 'TIMESTAMPTZ', 'json': 'JSONB', 'reference': 'TEXT',
}
ROUTE_NAMES = frozenset({'schema', 'merge_contacts', 'custom_objects', 'openapi', 'docs'})
NAME = re.compile(r'[a-z][a-z0-9_]{0,62}\Z')
RECORD_PREFIX = 'rec_'
MAX_FIELDS = 200


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False
    target: str = None
    label: str = None

    def to_json(self):
        out = {'name': self.name, 'type': self.type, 'required': self.required}
        if self.target:
            out['target'] = self.target
        if self.label:
            out['label'] = self.label
        return out

    def index_name(self, table):
        return f'{table}_{hashlib.sha1(self.name.encode()).hexdigest()[:10]}'


def check_name(name, what, field):
    """Slugs and field names: lowercase, digits, `_`, a letter first, at most 63, not reserved."""
    allowed = 'lowercase letters, digits and _, starting with a letter, at most 63 characters'
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidValue(f'{what} {name!r} is not allowed: use {allowed}', field=field)
    if name in SQL_KEYWORDS:
        raise InvalidValue(f"{what} '{name}' is an SQL keyword; choose another name", field=field)
    if name in SERVER_MANAGED:
        raise InvalidValue(f"{what} '{name}' is a column the server manages; choose another name", field=field)
    if field == 'slug' and (name in BUILTIN or name in ROUTE_NAMES):
        raise InvalidValue(f"Slug '{name}' is taken by a built-in resource or route", field=field)
    return name


def parse_fields(raw):
    if not isinstance(raw, list) or len(raw) > MAX_FIELDS:
        raise InvalidValue(f"'fields' must be an array of at most {MAX_FIELDS} field objects", field='fields')
    fields, seen = [], set()
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidValue("Each field is an object with 'name' and 'type'", field='fields')
        name = check_name(item.get('name'), 'Field name', 'fields')
        if name in seen:
            raise InvalidValue(f"Field '{name}' is defined twice", field='fields')
        seen.add(name)
        ftype = item.get('type')
        if ftype not in FIELD_TYPES:
            raise InvalidValue(f"Field '{name}' has type {ftype!r}; use one of {', '.join(FIELD_TYPES)}",
                               field='fields')
        required = item.get('required', False)
        label = item.get('label')
        if not isinstance(required, bool) or (label is not None and not isinstance(label, str)):
            raise InvalidValue(f"Field '{name}': 'required' is a boolean and 'label' a string", field='fields')
        target = item.get('target')
        if ftype == 'reference':
            if not isinstance(target, str):
                raise InvalidValue(f"Reference field '{name}' needs a 'target' resource", field='fields')
        elif target is not None:
            raise InvalidValue(f"Only reference fields have a 'target' ('{name}' is {ftype})", field='fields')
        fields.append(Field(name, ftype, required, target, label))
    return fields


class CustomObjects:
    """Definitions (the write path) and per-organization resolution of custom slugs (the read path)."""

    def __init__(self, db, catalog, store):
        self.db = db
        self.catalog = catalog
        self.store = store
        self.info = catalog.internal['custom_objects']
        self._tables = {}

    # -- reading definitions -----------------------------------------------------------------------

    def _query(self, tx, org_id, slug=None, include_archived=True):
        equals = () if slug is None else (Filter(self.info.columns['slug'], 'eq', slug),)
        lq = ListQuery(0, 9999, equals, include_archived=include_archived)
        read = self.store.reader(self.info)
        return [read(r) for r in tx.rows(*sqlbuild.build_list(self.db.dialect, self.info, org_id, lq))]

    def definitions(self, org_id, include_archived=True):
        """Every definition of `org_id` (inside a caller's transaction, that same transaction)."""
        with self.db.transaction() as tx:
            return self._query(tx, org_id, include_archived=include_archived)

    def get(self, org_id, slug):
        with self.db.transaction() as tx:
            return self.to_json(self._definition(tx, org_id, slug))

    def _definition(self, tx, org_id, slug):
        rows = self._query(tx, org_id, slug)
        if not rows:
            raise NotFound(f"No custom object '{slug}'", param='slug')
        return rows[0]

    def table_for(self, org_id, slug, include_archived=False):
        """The TableInfo of `org_id`'s custom object `slug`, or None. One indexed lookup a call."""
        with self.db.transaction() as tx:
            rows = self._query(tx, org_id, slug, include_archived)
        return self._info(rows[0]) if rows else None

    def tables_for(self, org_id):
        return [self._info(d) for d in self.definitions(org_id)]

    def _info(self, definition):
        key = (definition['table_name'], definition['version'])
        info = self._tables.get(key)
        if info is None:
            if len(self._tables) > 1000:
                self._tables.clear()
            fields = parse_fields(definition['fields'])
            spec = ResourceSpec(definition['slug'], RECORD_PREFIX, table=definition['table_name'],
                                delete='archive',
                                references={f.name: f.target for f in fields if f.type == 'reference'})
            required = {f.name for f in fields if f.required}
            rows = self.db.introspect([spec.table])[spec.table]
            info = table_info(spec, [(n, t, nullable and n not in required, d) for n, t, nullable, d in rows])
            self._tables[key] = info
        return info

    @staticmethod
    def to_json(definition):
        return {k: definition[k] for k in ('id', 'slug', 'label', 'fields', 'version', 'created_at',
                                           'updated_at', 'archived_at')}

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
                raise InvalidValue(f"Reference field '{f.name}' targets '{f.target}', which is neither a "
                                   'built-in resource nor one of your custom objects', field='fields')

    def _columns_ddl(self, tx, table, fields):
        for f in fields:
            tx.execute(sqlbuild.build_add_column(table, f.name, FIELD_TYPES[f.type]))
            if f.type == 'reference':
                tx.execute(sqlbuild.build_create_index(table, f.index_name(table), f.name))

    def _label(self, body, default):
        label = body.get('label', default)
        if label is not None and not isinstance(label, str):
            raise InvalidValue("'label' must be a string", field='label')
        return label

    def define(self, principal, body):
        """Create a definition and its table in one transaction."""
        self._require_admin(principal)
        if not isinstance(body, dict):
            raise InvalidBody('The request body must be a JSON object')
        slug = check_name(body.get('slug'), 'Slug', 'slug')
        label = self._label(body, slug)
        fields = parse_fields(body.get('fields', []))
        definition_id = new_id('obj_')
        table = 'co_' + definition_id[len('obj_'):]
        now = self.store.clock()
        row = {'id': definition_id, 'organization_id': principal.org_id, 'slug': slug, 'label': label,
               'table_name': table, 'fields': [f.to_json() for f in fields], 'version': 1,
               'created_at': now, 'updated_at': now}
        with self.db.transaction(write=True) as tx:
            if self._query(tx, principal.org_id, slug):
                raise Conflict(f"A custom object '{slug}' already exists", field='slug')
            self._check_targets(tx, principal, slug, fields)
            tx.execute(sqlbuild.build_create_table(table, []))
            self._columns_ddl(tx, table, fields)
            created = tx.one(*sqlbuild.build_insert(self.db.dialect, self.info, row))
        return self.to_json(self.store.reader(self.info)(created))

    def _save(self, tx, org_id, definition, **changes):
        changes = {**changes, 'version': definition['version'] + 1, 'updated_at': self.store.clock()}
        row = tx.one(*sqlbuild.build_update(self.db.dialect, self.info, org_id, definition['id'], changes))
        return self.to_json(self.store.reader(self.info)(row))

    def redefine(self, principal, slug, body):
        """Add the new fields, change labels; fields the body omits are kept, types never change."""
        self._require_admin(principal)
        if not isinstance(body, dict):
            raise InvalidBody('The request body must be a JSON object')
        if 'slug' in body and body['slug'] != slug:
            raise InvalidValue('A custom object keeps its slug; define a new one instead', field='slug')
        fields = parse_fields(body.get('fields', []))
        with self.db.transaction(write=True) as tx:
            definition = self._definition(tx, principal.org_id, slug)
            current = {f.name: f for f in parse_fields(definition['fields'])}
            added = []
            for f in fields:
                old = current.get(f.name)
                if old is None:
                    added.append(f)
                elif (old.type, old.target, old.required) != (f.type, f.target, f.required):
                    raise Conflict(f"Field '{f.name}' is {old.type}{' required' if old.required else ''}; "
                                   'a field keeps its type, target and requiredness (drop it and add a new one)',
                                   field='fields')
                else:
                    current[f.name] = f
            self._check_targets(tx, principal, slug, added)
            self._columns_ddl(tx, definition['table_name'], added)
            merged = [*current.values(), *added]
            return self._save(tx, principal.org_id, definition, label=self._label(body, definition['label']),
                              fields=[f.to_json() for f in merged])

    def set_archived(self, principal, slug, archived):
        """DELETE archives a definition (its records are kept); restore brings it back."""
        self._require_admin(principal)
        with self.db.transaction(write=True) as tx:
            definition = self._definition(tx, principal.org_id, slug)
            if (definition['archived_at'] is None) != archived:
                return self.to_json(definition)
            return self._save(tx, principal.org_id, definition, archived_at=self.store.clock() if archived else None)

    def drop_field(self, principal, slug, name):
        """Remove one field and its column; answer with what was dropped."""
        self._require_admin(principal)
        with self.db.transaction(write=True) as tx:
            definition = self._definition(tx, principal.org_id, slug)
            fields = parse_fields(definition['fields'])
            dropped = next((f for f in fields if f.name == name), None)
            if dropped is None:
                raise NotFound(f"Custom object '{slug}' has no field '{name}'", field=name)
            table = definition['table_name']
            if dropped.type == 'reference':
                tx.execute(sqlbuild.build_drop_index(dropped.index_name(table)))
            tx.execute(sqlbuild.build_drop_column(table, name))
            saved = self._save(tx, principal.org_id, definition, fields=[f.to_json() for f in fields if f is not dropped])
        return {'dropped': dropped.to_json(), 'custom_object': saved}
