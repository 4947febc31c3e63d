"""The resource catalog and the column whitelists read from the database itself.

Python holds only policy: which tables are resources, their id prefixes, how a delete behaves,
which columns the server manages and where references point. Every column name, type,
nullability and default comes from `information_schema` or `PRAGMA table_xinfo`, once at start-up.
"""

import dataclasses
import functools
import re
from dataclasses import dataclass
from dataclasses import field as dc_field

from . import search
from . import values
from .errors import UnknownResource
from .sqlbuild import SCOPE

SERVER_MANAGED = frozenset({'id', SCOPE, 'created_at', 'updated_at', 'archived_at'})
SEARCHABLE_KINDS = ('text',)

# NOTE: PostgreSQL refuses a btree entry over 2,704 bytes (ProgramLimitExceeded); SQLite has no such
# limit. The widest index holds two writable text columns (contacts: organization_id, city or status,
# last_name, id): 2 x 255 characters x 4 bytes (the longest UTF-8 character) = 2,040 bytes, plus the
# two server-made ids (~30 bytes each) and at most ~70 bytes of tuple header, null bitmap, varlena
# headers and alignment: about 2,140 bytes, a fifth under 2,704 (1,000 characters would need 8,000).
# tests/test_driver_errors.py checks every index against this budget, so a wider one fails the suite.
MAX_INDEXED_TEXT = 255


@dataclass(frozen=True)
class SearchPolicy:
    """What `q` reads in a resource's records (see crmapi/search.py). Text operators compare every text column.

    Empty `words` and `names` mean every text column, and the required ones (custom objects: their
    required text fields).
    """

    words: tuple = ()  # columns whose words q finds
    names: tuple = ()  # columns whose matches rank first (also searched)
    phones: tuple = ()  # columns q reads as one number: their digits
    emails: tuple = ()  # columns q reads as words, plus the local part as one word
    related: tuple = ()  # (reference column, target table, its only name column): q finds the target's words
    via: dict = dc_field(default_factory=dict)  # view column -> (reference column, target table, target column)
    indexed: bool = True  # False: rows written around the store (the worker's); no search rows, text operators scan


UNINDEXED = SearchPolicy(indexed=False)


@dataclass(frozen=True)
class ResourceSpec:
    """Policy for one resource: what the database cannot tell us."""

    slug: str
    id_prefix: str
    table: str = ''
    delete: str = 'hard'  # 'archive' (restorable), 'disable' (crm_users) or 'hard'
    read_only: bool = False
    admin_writes: bool = False  # only administrators may write
    references: dict = dc_field(default_factory=dict)  # column -> target slug (array columns too)
    arrays: frozenset = frozenset()  # JSON columns holding a list of ids
    computed: dict = dc_field(default_factory=dict)  # view columns the database leaves untyped
    counted_as: str = ''  # the table whose live-row counter gives this resource's total
    admin_only: bool = False  # only administrators may read it too (webhooks: their URLs are secrets)
    managed: frozenset = frozenset()  # columns only the server writes, besides SERVER_MANAGED
    hidden: frozenset = frozenset()  # columns the API never reads nor writes (a delivery's lease)
    search: SearchPolicy = SearchPolicy()  # what q reads; search rows are kept per `counted_as` table

    def __post_init__(self):
        if not self.table:
            object.__setattr__(self, 'table', self.slug)
        if not self.counted_as:
            object.__setattr__(self, 'counted_as', self.table)


COMPANY_NAME = ('company_id', 'companies', 'name')
CONTACT_SEARCH = SearchPolicy(
    words=('title', 'city'),
    names=('first_name', 'last_name'),
    phones=('phone',),
    emails=('email',),
    related=(COMPANY_NAME,),
)
COMPANY_SEARCH = SearchPolicy(words=('domain', 'website', 'city', 'country', 'description'), names=('name',))
NOTE_SEARCH = SearchPolicy(names=('title', 'text'))

BUILTIN = {
    spec.slug: spec
    for spec in [
        ResourceSpec(
            'contacts',
            'c_',
            delete='archive',
            references={'company_id': 'companies', 'tags': 'tags'},
            arrays=frozenset({'tags'}),
            hidden=frozenset({'children_seen'}),  # which reverse relations may have children (sqlbuild.SEEN_BITS)
            search=CONTACT_SEARCH,
        ),
        ResourceSpec('companies', 'comp_', delete='archive', search=COMPANY_SEARCH),
        ResourceSpec(
            'deals',
            'd_',
            delete='archive',
            references={'company_id': 'companies', 'contact_ids': 'contacts'},
            arrays=frozenset({'contact_ids'}),
            search=SearchPolicy(words=('description', 'category'), names=('name',), related=(COMPANY_NAME,)),
        ),
        ResourceSpec(
            'tasks',
            't_',
            references={
                'contact_id': 'contacts',
                'company_id': 'companies',
                'deal_id': 'deals',
                'assignee_id': 'crm_users',
            },
            search=SearchPolicy(words=('type',), names=('text',)),
        ),
        ResourceSpec('contact_notes', 'cn_', references={'contact_id': 'contacts'}, search=NOTE_SEARCH),
        ResourceSpec('deal_notes', 'dn_', references={'deal_id': 'deals'}, search=NOTE_SEARCH),
        ResourceSpec('company_notes', 'mn_', references={'company_id': 'companies'}, search=NOTE_SEARCH),
        ResourceSpec('tags', 'tag_', search=SearchPolicy(names=('name',))),
        ResourceSpec('configuration', 'cfg_', admin_writes=True, search=SearchPolicy(names=('key',))),
        ResourceSpec(
            'automation_rules',
            'rule_',
            admin_writes=True,
            managed=frozenset({'problem'}),
            search=SearchPolicy(names=('name',)),
        ),
        ResourceSpec(
            'automation_runs', 'run_', read_only=True, references={'rule_id': 'automation_rules'}, search=UNINDEXED
        ),
        ResourceSpec(
            'crm_users',
            'u_',
            delete='disable',
            admin_writes=True,
            search=SearchPolicy(names=('first_name', 'last_name'), emails=('email',)),
        ),
        ResourceSpec(
            'webhooks',
            'wh_',
            admin_writes=True,
            admin_only=True,
            managed=frozenset({'disabled_reason', 'failing_since', 'since_seq'}),
            search=UNINDEXED,
        ),
        ResourceSpec(
            'webhook_deliveries',
            'whd_',
            read_only=True,
            admin_only=True,
            references={'webhook_id': 'webhooks', 'rule_id': 'automation_rules'},
            hidden=frozenset({'payload', 'locked_until'}),
            search=UNINDEXED,
        ),
        ResourceSpec(
            'companies_summary',
            'comp_',
            read_only=True,
            delete='archive',
            counted_as='companies',
            references={'company_id': 'companies'},
            computed={'nb_contacts': 'integer', 'nb_deals': 'integer'},
            search=COMPANY_SEARCH,
        ),
        ResourceSpec(
            'contacts_summary',
            'c_',
            read_only=True,
            delete='archive',
            counted_as='contacts',
            references={'company_id': 'companies', 'tags': 'tags'},
            arrays=frozenset({'tags'}),
            computed={'company_name': 'text', 'nb_tasks': 'integer'},
            search=dataclasses.replace(CONTACT_SEARCH, via={'company_name': COMPANY_NAME}),
        ),
    ]
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    nullable: bool
    default: object
    writable: bool
    precision: tuple = None
    references: str = None
    max_length: int = None  # characters; set on writable text columns that sit in an index

    @property
    def required(self):
        """A writable column the database demands and will not fill in itself."""
        return self.writable and not self.nullable and self.default is None

    @property
    def sortable(self):
        return self.kind not in ('json', 'array')

    def describe(self, declared):
        return {
            'name': self.name,
            'type': declared,
            'kind': self.kind,
            'nullable': self.nullable,
            'default': self.default,
            'writable': self.writable,
            'required': self.required,
            'filterable': True,
            'sortable': self.sortable,
            'references': self.references,
            'max_length': self.max_length,
        }


class ShapeKey(str):
    """A table's shape key: its shape (a tuple of strings and booleans) spelt as one string by repr(), equal only
    for equal shapes, whose hash Python computes once and keeps (a str's).

    NOTE: every cached statement and record reader is looked up by a key holding it: a tuple hashes all its items
    again each time (a contact's 16 columns: ~0.3 µs, twice a get), and a tuple keeping its hash answered through a
    Python __hash__ (a frame for each lookup).
    """

    __slots__ = ()

    def __new__(cls, items):
        return super().__new__(cls, repr(items))


@dataclass(frozen=True)
class TableInfo:
    """A resource with its whitelist: the only source of identifiers for SQL."""

    spec: ResourceSpec
    columns: dict  # name -> Column, in table order
    declared: dict  # name -> declared SQL type, for introspection
    view_columns: frozenset = frozenset()  # what read-only views over this table add (`nb_tasks`)
    hidden: frozenset = frozenset()  # the spec's hidden columns this table has

    @property
    def slug(self):
        return self.spec.slug

    @functools.cached_property
    def required_columns(self):
        """The names of the columns a created record must have a value for (Column.required)."""
        return tuple(name for name, column in self.columns.items() if column.required)

    @functools.cached_property
    def shape_key(self):
        """What a statement over this table depends on besides its values (see sqlbuild)."""
        return ShapeKey((self.spec.table, tuple((c.name, c.kind, c.nullable) for c in self.columns.values())))

    @property
    def writable(self):
        return {n: c for n, c in self.columns.items() if c.writable}

    @property
    def read_only_fields(self):
        """Fields a record is read with but a write never sets (server-managed, computed by a view).

        A body may carry them (react-admin sends back whole records, summaries included); they are ignored.
        """
        return frozenset(n for n, c in self.columns.items() if not c.writable) | self.view_columns

    @property
    def archivable(self):
        return 'archived_at' in self.columns

    @functools.cached_property
    def search_columns(self):
        """The text columns whose folded values are kept in search rows: text operators and q read them."""
        return [
            c
            for c in self.columns.values()
            if c.kind in SEARCHABLE_KINDS and not c.references and c.name not in SERVER_MANAGED
        ]

    @functools.cached_property
    def searched(self):
        return frozenset(c.name for c in self.search_columns)

    @functools.cached_property
    def search_plan(self):
        """How a search row reads this table's records (search.plan), worked out once: every write that changes a
        searched column used to work it out again."""
        return search.plan(self)

    @functools.cached_property
    def search_upkeep(self):
        """The columns whose change rewrites a record's search row: its text columns and the references whose
        name words it takes."""
        return frozenset({*self.searched, *(ref for ref, _, _ in self.spec.search.related)})

    def describe(self, relations=None):
        """The resource, its columns and, given its `relations` (crmapi.relations), what it can embed."""
        described = {
            'resource': self.slug,
            'read_only': self.spec.read_only,
            'delete': self.spec.delete,
            'restorable': self.spec.delete in ('archive', 'disable') and not self.spec.read_only,
            'columns': [c.describe(self.declared[c.name]) for c in self.columns.values() if c.name != SCOPE],
        }
        if relations is not None:
            described['relations'] = [r.describe() for r in relations]
        return described


def make_column(spec, name, declared, nullable, default, indexed=False):
    kind, precision = values.kind_of(declared)
    if not declared and name in spec.computed:
        kind = spec.computed[name]
    if name in spec.arrays:
        kind = 'array'
    writable = not spec.read_only and name not in SERVER_MANAGED and name not in spec.managed
    max_length = MAX_INDEXED_TEXT if writable and indexed and kind == 'text' else None
    return Column(name, kind, bool(nullable), default, writable, precision, spec.references.get(name), max_length)


def table_info(spec, rows, indexed=()):
    """Build a TableInfo from introspected (name, declared type, nullable, default) rows.

    `indexed` names the columns the catalog shows in an index; reference columns always count as
    indexed (custom objects index every reference field).
    """
    indexed = {*indexed, *spec.references}
    columns, declared, hidden = {}, {}, set()
    for name, decl, nullable, default in rows:
        if name in spec.hidden:
            hidden.add(name)
            continue
        columns[name] = make_column(spec, name, decl or '', nullable, default, name in indexed)
        declared[name] = decl or spec.computed.get(name, '')
    return TableInfo(spec, columns, declared, hidden=frozenset(hidden))


_CAMEL = re.compile(r'(?<=[a-z0-9])([A-Z])')


def snake_case(name):
    """`firstName` -> `first_name`; snake_case names are returned unchanged."""
    return _CAMEL.sub(lambda m: '_' + m.group(1).lower(), name)


def with_view_columns(infos):
    """Each table's TableInfo knowing the columns its read-only views add (`company_name` on contacts).

    NOTE: a read-only view names the table it summarises in `counted_as` (its rows are that table's).
    """
    added = {}
    for info in infos.values():
        base = infos.get(info.spec.counted_as)
        if info.spec.read_only and base is not None and base is not info:
            added.setdefault(base.slug, set()).update(set(info.columns) - set(base.columns))
    return {
        slug: dataclasses.replace(info, view_columns=frozenset(added[slug])) if slug in added else info
        for slug, info in infos.items()
    }


INTERNAL = {
    spec.slug: spec
    for spec in [
        ResourceSpec('custom_objects', 'obj_', delete='archive', search=UNINDEXED),
        ResourceSpec('idempotency_keys', '', search=UNINDEXED),
    ]
}


class Catalog:
    """Resources by slug, with their whitelists: built-ins loaded once from the database, custom
    objects resolved per organization through `custom`, given at construction (crmapi.services makes
    it: a crmapi.custom.CustomObjects); without it, the built-ins only."""

    def __init__(self, tables, internal=None, custom=None):
        self.tables = tables
        self.internal = internal or {}
        self.custom = custom

    @classmethod
    def load(cls, db, specs=BUILTIN):
        wanted = {**specs, **INTERNAL}
        found = db.introspect([s.table for s in wanted.values()])
        missing = [s.table for s in wanted.values() if s.table not in found]
        if missing:
            raise RuntimeError(
                f"database has no table {', '.join(missing)}: run 'crmapi migrate' ('crmapi init-db' for a new one)"
            )
        indexed = db.indexed_columns(found)
        infos = {
            slug: table_info(spec, found[spec.table], indexed.get(spec.table, ())) for slug, spec in wanted.items()
        }
        infos = with_view_columns(infos)
        return cls({s: infos[s] for s in specs}, {s: infos[s] for s in INTERNAL})

    def resolve(self, slug, principal=None):
        """The TableInfo for `slug` as `principal` sees it, or UnknownResource (404).

        Another organization's custom slug is exactly as unknown as one that never existed.
        """
        info = self.tables.get(slug)
        if info is None and principal is not None and self.custom is not None:
            info = self.custom.table_for(principal.org_id, slug)
        if info is None:
            raise UnknownResource(f"No resource named '{slug}'", param='resource')
        return info

    def readable(self, slug, principal):
        """Whether `principal` may read the resource `slug`: its records, their history and their changes in the
        feed. Administrators read everything; other users every resource but the admin-only ones (webhooks and
        their deliveries: URLs and payloads are secrets). The one rule for the routes and the change feed."""
        info = self.tables.get(slug)
        return info is None or not info.spec.admin_only or (principal is not None and principal.is_admin)

    def unreadable(self, principal):
        """The resources whose records and changes `principal` may not read (see `readable`)."""
        return frozenset(slug for slug in self.tables if not self.readable(slug, principal))

    def visible(self, principal=None):
        """Every slug `principal` may use: the built-ins, then their active custom objects."""
        custom = (
            []
            if principal is None or self.custom is None
            else [d['slug'] for d in self.custom.definitions(principal.org_id, include_archived=False)]
        )
        return [*self.tables, *custom]

    def all_tables(self, principal):
        """Every table of `principal`'s organization, archived custom objects included."""
        custom = [] if self.custom is None else self.custom.tables_for(principal.org_id)
        return [*self.tables.values(), *custom]
