"""Relations between resources, derived from the catalog's references, and embedding them in pages.

A forward relation follows a reference of the record to the record(s) it names: contacts `company_id`
-> `company`, `tags` -> `tags`, deals `contact_ids` -> `contacts`, a custom field `company` -> `company`.
A reverse relation lists the records whose reference names it: contacts -> `notes` (contact_notes),
`tasks`, `deals` (whose contact_ids hold it). Nothing here is written per resource: every reference
column of every table the organization sees (custom objects included) makes its two relations.

Embedding runs one statement per relation for a whole page, whatever its size (no N+1).
"""

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter

import orjson

from . import sqlbuild
from .duplicates import collector_paused
from .errors import UnknownResource
from .store import per_shape


@dataclass(frozen=True)
class Relation:
    name: str
    reverse: bool
    column: object  # forward: the record's reference column; reverse: the child's column naming the record
    target: object  # the TableInfo embedded: the referenced resource, or the children's

    @property
    def many(self):
        return self.reverse or self.column.kind == 'array'

    @property
    def seen_bit(self):
        """A reverse relation's bit in its parents' sqlbuild.SEEN_COLUMN, or None (no flag: every parent is asked)."""
        return sqlbuild.seen_bit(self.target, self.column) if self.reverse else None

    @property
    def replaces(self):
        """A forward relation named as its column (`tags`, a custom `company`): the records take the ids' place."""
        return not self.reverse and self.name == self.column.name

    def describe(self):
        return {
            'name': self.name,
            'kind': 'reverse' if self.reverse else 'forward',
            'resource': self.target.slug,
            'field': self.column.name,
            'many': self.many,
        }


def _plural(word):
    if word.endswith('y') and word[-2:-1] not in ('a', 'e', 'i', 'o', 'u'):
        return word[:-1] + 'ies'
    return word + ('es' if word.endswith(('s', 'x', 'ch', 'sh')) else 's')


def stem(column):
    """The reference's name without its id suffix: `company_id` -> `company`, `contact_ids` -> `contact`."""
    suffix = '_ids' if column.kind == 'array' else '_id'
    name = column.name
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name


def forward_name(column):
    """`company_id` -> `company`, `contact_ids` -> `contacts`; a name without the suffix stays as it is."""
    base = stem(column)
    return _plural(base) if column.kind == 'array' and base != column.name else base


def forward_relations(info, resolve):
    """name -> Relation for each reference column of `info`; `resolve(slug)` is the target TableInfo or None
    (a target the caller cannot see has no relation).

    NOTE: where the derived name is another column's (a custom object with both `company` and
    `company_id`), the relation takes its own column's name and replaces the id in an embed.
    """
    taken = set(info.columns) | info.view_columns
    relations = {}
    for column in info.columns.values():
        target = resolve(column.references) if column.references else None
        if target is None:
            continue
        name = forward_name(column)
        if name != column.name and (name in taken or name in relations):
            name = column.name
        relations[name] = Relation(name, False, column, target)
    return relations


def reverse_relations(info, tables, taken):
    """name -> Relation for each reference of `tables` (slug -> TableInfo) naming `info`'s records.

    A child named after the reference (contact_notes for `contact_id`) is embedded under the rest of its
    name (`notes`), any other under its slug (`tasks`, `deals`); a name already taken (`taken`: the
    columns and forward relations) falls back to the slug, then `<slug>_by_<field>`. A read-only view
    (contacts_summary) has the reverse relations of the table it shows.
    """
    parent = info.spec.counted_as if info.spec.read_only else info.slug
    relations = {}
    for child in tables.values():
        if child.spec.read_only:
            continue
        for column in child.columns.values():
            if column.references != parent:
                continue
            short = child.slug.removeprefix(stem(column) + '_')
            name = next(
                (
                    n
                    for n in (short, child.slug, f'{child.slug}_by_{column.name}')
                    if n and n not in taken and n not in relations
                ),
                None,
            )
            if name is not None:
                relations[name] = Relation(name, True, column, child)
    return relations


def relations_of(info, tables, forward=None):
    """Every relation of `info` (forward, then reverse) among `tables` (slug -> TableInfo the caller sees);
    `forward`: its forward relations when already known."""
    forward = forward_relations(info, tables.get) if forward is None else forward
    taken = set(info.columns) | info.view_columns | set(forward)
    return {**forward, **reverse_relations(info, tables, taken)}


class RelationMap(Mapping):
    """The relations of one resource for one caller, worked out when first asked for.

    NOTE: forward relations need only the targets (no query for built-in ones), and so do the reverse ones
    among built-in resources; the others need every table of the organization (one indexed read), so they
    are looked up only when a name is none of those, or all are listed.
    """

    def __init__(self, relations, info, principal):
        self._relations, self._info, self._principal = relations, info, principal
        self._forward = self._built_in = self._all = None

    def forward(self):
        if self._forward is None:
            self._forward = forward_relations(self._info, self._resolve)
        return self._forward

    def _resolve(self, slug):
        try:
            return self._relations.catalog.resolve(slug, self._principal)
        except UnknownResource:
            return None

    def all(self):
        if self._all is None:
            self._all = relations_of(self._info, self._relations.visible_tables(self._principal), self.forward())
        return self._all

    def built_in(self):
        """The relations among the built-in resources alone (no query).

        NOTE: the built-in tables come first among the visible ones (visible_tables), so a reverse relation
        they name is named so whatever custom objects the organization has: they can only add names.
        """
        if self._built_in is None:
            self._built_in = relations_of(self._info, self._relations.catalog.tables, self.forward())
        return self._built_in

    def __getitem__(self, name):
        forward = self.forward()
        if name in forward:
            return forward[name]
        built_in = self.built_in()
        return built_in[name] if name in built_in else self.all()[name]

    def __iter__(self):
        return iter(self.all())

    def __len__(self):
        return len(self.all())


# NOTE: what a record without children embeds, shared: most of a page's records have none of a relation, and each
# its own {"total": 0, "items": []} made two objects per record to write out the same bytes.
NO_CHILDREN = orjson.Fragment(b'{"total":0,"items":[]}')


def _written(start):
    """Row -> the record as the JSON text the database wrote in the row's column `start` (sqlbuild.embeds_as_json),
    which orjson writes out as it is."""
    return lambda row: orjson.Fragment(row[start])


def _written_by_id(rows):
    """{id: record} of build_referenced's rows of (id, JSON text): see _written."""
    return {key: orjson.Fragment(text) for key, text in rows}


def _written_group(group):
    """A parent's {"total", "items"} of JSON texts the database wrote, as one JSON text (written as it is).

    NOTE: no dict and list per parent left for orjson to walk, nor for the cyclic collector to count until the answer
    is written.
    """
    return orjson.Fragment(b'{"total":%d,"items":[%b]}' % (group['total'], b','.join(group['items'])))


def in_order(ids):
    """A page's ids sorted, as the statement that reads their records takes them.

    NOTE: ids are time-ordered, so sorted they meet the index and the table in about the order both were
    written: neighbouring searches share pages (-15 % for the 900 companies of a 1,000-contact page on
    SQLite, -25 % on PostgreSQL). An id some row written around the API made a number sorts as its text.
    """
    try:
        return sorted(ids)
    except TypeError:
        return sorted(ids, key=str)


class Relations:
    """Relations per caller, and embedding them into records the store has read."""

    def __init__(self, store):
        self.store = store
        self.catalog = store.catalog
        self.db = store.db
        self._readers = {}

    def reader(self, info, start=0):
        """Raw row -> record, for the records the statements that embed `info` read (sqlbuild._embedded_columns),
        from the row's column `start` on: the JSON text the database wrote, carried into the answer as it is, or a
        dict of the columns (read where they are: no copy of the row's tail)."""
        return per_shape(self._readers, (info.shape_key, start), lambda: self._reader_of(info, start))

    def _reader_of(self, info, start):
        if sqlbuild.embeds_as_json(self.db.dialect, info):
            return _written(start)
        kinds = sqlbuild.embedded_kinds(self.db.dialect, info)
        return self.db.record_reader(sqlbuild.output_columns(info), kinds, start)

    def by_id(self, info):
        """build_referenced's rows -> {id: record}, in one comprehension over the rows."""
        return per_shape(self._readers, (info.shape_key, 'by_id'), lambda: self._by_id_of(info))

    def _by_id_of(self, info):
        if sqlbuild.embeds_as_json(self.db.dialect, info):
            return _written_by_id
        read, key = self.reader(info), sqlbuild.output_columns(info).index('id')
        return lambda rows: {row[key]: read(row) for row in rows}

    def of(self, info, principal):
        return RelationMap(self, info, principal)

    def visible_tables(self, principal):
        """slug -> TableInfo of every resource `principal` may use: built-ins and active custom objects."""
        tables = dict(self.catalog.tables)
        custom = self.catalog.custom
        if principal is not None and custom is not None:
            tables.update({t.slug: t for t in custom.active_tables(principal.org_id)})
        return tables

    @staticmethod
    def wants_seen(relations):
        """Whether a page embedding `relations` should read its records' sqlbuild.SEEN_COLUMN (Store.list)."""
        return any(relation.seen_bit is not None for relation in relations)

    def embed(self, principal, records, relations, limit):
        """Add each relation to each record, in place: at most one statement per relation for all the records.

        A page Store.list read with `seen` holds each record's sqlbuild.SEEN_COLUMN: a reverse relation with a bit
        in it asks only for the records whose bit is set (none set: no statement).
        """
        if not records or not relations:
            return records
        seen = getattr(records, 'seen', None)
        parents = None
        with self.db.transaction() as tx, collector_paused():
            for relation in relations:
                if not relation.reverse:
                    self._referenced(tx, principal, records, relation)
                    continue
                bit = relation.seen_bit if seen is not None else None
                if bit is not None:
                    flagged = in_order({r['id']: None for r, flags in zip(records, seen) if flags & bit})
                    self._children(tx, principal, records, relation, limit, flagged)
                    continue
                if parents is None:
                    # NOTE: the page's ids, sorted once for all its reverse relations (~0.1 ms for 1,000 records).
                    parents = in_order({record['id']: None for record in records})
                self._children(tx, principal, records, relation, limit, parents)
        return records

    def _referenced(self, tx, principal, records, relation):
        """Forward: the record(s) each reference names, archived ones too; a missing one is null.

        NOTE: read by id within the caller's organization, so another organization's id (which no write
        lets in, but rows written around the API might hold) embeds as null, like a missing record.
        """
        name, column = relation.name, relation.column.name
        many = relation.column.kind == 'array'
        values = list(map(itemgetter(column), records))
        ids = dict.fromkeys(itertools.chain.from_iterable(filter(None, values)) if many else values)
        ids.pop(None, None)
        found = {}
        if ids:
            statement = sqlbuild.build_referenced(self.db.dialect, relation.target, principal.org_id, in_order(ids))
            found = self.by_id(relation.target)(tx.rows(*statement))
        get = found.get
        for record, value in zip(records, values):
            record[name] = [get(i) for i in value or ()] if many else get(value)

    def _children(self, tx, principal, records, relation, limit, ids):
        """Reverse: {"total", "items"} per record, the newest `limit` live children first; `ids`: the records' ids,
        in_order."""
        written = sqlbuild.embeds_as_json(self.db.dialect, relation.target)
        read = itemgetter(3) if written else self.reader(relation.target, 3)
        groups = {}
        # NOTE: at least one row per parent comes back even for a limit of 0, to carry the total.
        for row in (
            tx.rows(
                *sqlbuild.build_children(
                    self.db.dialect, relation.target, relation.column, principal.org_id, ids, max(limit, 1)
                )
            )
            if ids
            else ()
        ):
            group = groups.get(row[0])
            if group is None:
                group = groups[row[0]] = {'total': row[1], 'items': []}
            if row[2] <= limit:
                group['items'].append(read(row))
        if written:
            groups = {parent: _written_group(group) for parent, group in groups.items()}
        name, get = relation.name, groups.get
        for record in records:
            record[name] = get(record['id'], NO_CHILDREN)
