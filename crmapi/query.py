"""Parsing the list query language into frozen values. No Falcon, no SQL.

`parse_list(params, info)` turns `range`, `filter`, `filters`, `sort`/`order` and `sorts` into a
ListQuery whose fields are Columns from the whitelist and whose values are already checked
against those columns, or raises InvalidParam / UnknownField (400) naming the parameter.
"""

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from dataclasses import replace

import orjson

from . import search as searching
from . import values
from .errors import InvalidParam
from .errors import InvalidValue
from .errors import UnknownField
from .schema import Column
from .sqlbuild import SCOPE

LIST_PARAMS = frozenset({'range', 'filter', 'filters', 'sort', 'order', 'sorts', 'cursor', 'embed', 'embed_limit'})
TEXT_OPS = frozenset({'contains', 'not_contains', 'starts_with', 'ends_with'})
ORDER_OPS = frozenset({'gt', 'gte', 'lt', 'lte'})
LIST_OPS = frozenset({'in', 'not_in'})
EMPTY_OPS = frozenset({'is_empty', 'is_not_empty'})
OPERATORS = (
    'eq',
    'neq',
    'gt',
    'gte',
    'lt',
    'lte',
    'contains',
    'not_contains',
    'starts_with',
    'ends_with',
    'in',
    'not_in',
    'is_empty',
    'is_not_empty',
)
# Other clients' spellings of operators, taken as the operator they name.
ALIASES = {'like': 'contains', 'nlike': 'not_contains', 'blank': 'is_empty', 'notblank': 'is_not_empty'}
ORDERABLE_KINDS = frozenset({'text', 'integer', 'number', 'date', 'timestamp'})
EMBED_LIMIT = 10  # children embedded per parent and reverse relation, unless `embed_limit` says
MAX_EMBED_LIMIT = 100
MAX_OFFSET = 2**53


@dataclass(frozen=True)
class Limits:
    """Caps on what one list request may ask for."""

    max_page: int = 1000
    max_filters: int = 50
    max_value_length: int = 10_000
    max_list_length: int = 1000  # values of one `in`/`not_in` (and `filter` array, getMany's ids)


@dataclass(frozen=True)
class Filter:
    column: object
    op: str
    value: object = None
    logical: str = 'and'
    via: object = None  # a forward relation (crmapi.relations.Relation): `column` is its target's


@dataclass(frozen=True)
class Sort:
    column: object
    descending: bool = False
    via: object = None


def field_name(item):
    """The field a Filter or Sort names as the client spelt it: `last_name`, or `company.name`."""
    return item.column.name if item.via is None else f'{item.via.name}.{item.column.name}'


@dataclass(frozen=True)
class ListQuery:
    start: int = 0
    end: int = 24
    equals: tuple = ()  # from `filter`: ANDed
    filters: tuple = ()  # from `filters`: folded left to right
    search: searching.Terms = None  # `filter`'s q; `filters` may hold more (column SEARCH)
    include_archived: bool = False
    sorts: tuple = ()
    after: tuple = None  # keyset: the sort values (then id) of the row before this page
    embeds: tuple = ()  # relations (crmapi.relations.Relation) to embed in each record
    embed_limit: int = EMBED_LIMIT

    @property
    def size(self):
        return self.end - self.start + 1

    @property
    def searches(self):
        """Every q of the query: `filter`'s, then those in `filters`."""
        found = [] if self.search is None else [self.search]
        return found + [f.value for f in self.filters if f.column is SEARCH]

    @property
    def ranked(self):
        """A search without a sort lists best first (see sqlbuild._ranking); such a list has no cursor."""
        return not self.sorts and any(t.words for t in self.searches)

    @property
    def rank_words(self):
        return tuple(dict.fromkeys(w for t in self.searches for w in t.words))


def param_json(params, name, default=None):
    """One query parameter parsed as strict JSON, or `default` when absent."""
    raw = single(params, name)
    if raw is None:
        return default
    try:
        return values.loads_strict(raw)
    except ValueError as exc:
        raise InvalidParam(f"Parameter '{name}' is not valid JSON: {exc}", param=name) from None


def single(params, name):
    raw = params.get(name)
    if isinstance(raw, list):
        raise InvalidParam(f"Parameter '{name}' is given more than once", param=name)
    return raw


def parse_range(params, limits):
    rng = param_json(params, 'range', [0, 24])
    if (
        not isinstance(rng, list)
        or len(rng) != 2
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in rng)
    ):
        raise InvalidParam("Parameter 'range' must be a JSON array of two integers, like [0,24]", param='range')
    start, end = rng
    if start < 0 or end < start:
        raise InvalidParam("Parameter 'range' needs 0 <= start <= end", param='range')
    if end - start + 1 > limits.max_page:
        raise InvalidParam(
            f"Parameter 'range' asks for {end - start + 1} rows; a page holds at most {limits.max_page}", param='range'
        )
    if start > MAX_OFFSET:
        raise InvalidParam(f"Parameter 'range' starts beyond {MAX_OFFSET}", param='range')
    return start, end


# `{"field": "q", "op": "eq", "value": "…"}` in `filters`: a search, like `filter`'s q.
SEARCH = Column('q', 'search', True, None, False)


def parse_search(value, param):
    """A q's Terms, or a 400 naming it: a string of at most MAX_QUERY_WORDS words."""
    if not isinstance(value, str):
        raise InvalidParam("Filter 'q' must be a string", param=param, field='q')
    reason = values.unstorable(value)
    if reason:
        raise InvalidParam(f"Filter 'q' must be a string without {reason}", param=param, field='q')
    try:
        return searching.parse(value)
    except ValueError as exc:
        raise InvalidParam(f"Filter 'q' {exc}", param=param, field='q') from None


def column_for(info, name, param):
    if not isinstance(name, str) or name not in info.columns or name == SCOPE:
        shown = name if isinstance(name, str) else repr(name)
        raise UnknownField(f"Resource '{info.slug}' has no field '{shown}'", param=param, field=shown)
    return info.columns[name]


def field_for(info, name, param, relations=None):
    """(column, via) for a field name: a column of `info`, or `relation.field` across a forward scalar
    reference (`company.name`), whose column is the target's and `via` the relation."""
    if relations is None or not isinstance(name, str) or '.' not in name:
        return column_for(info, name, param), None
    prefix, _, rest = name.partition('.')
    relation = relations.get(prefix) if prefix else None
    if relation is None or relation.reverse or relation.column.kind == 'array':
        single = ', '.join(r.name for r in relations.values() if not r.reverse and r.column.kind != 'array')
        raise UnknownField(
            f"Resource '{info.slug}' has no field '{name}': a dotted field crosses one forward "
            f'reference to a single record ({single or "none here"})',
            param=param,
            field=name,
        )
    if rest not in relation.target.columns or rest == SCOPE:
        raise UnknownField(
            f"Resource '{info.slug}' has no field '{name}' ({relation.target.slug} has no field '{rest}')",
            param=param,
            field=name,
        )
    return relation.target.columns[rest], relation


def check_value(column, value, param, limits, field=None):
    """values.check for a filter value; array columns compare one element (an id) at a time."""
    field = field or column.name
    if isinstance(value, str) and len(value) > limits.max_value_length:
        raise InvalidParam(
            f"A value for '{field}' is longer than {limits.max_value_length} characters", param=param, field=field
        )
    target = replace(column, kind='text') if column.kind == 'array' else column
    try:
        return values.check(target, value)
    except InvalidValue as exc:
        raise InvalidValue(exc.detail, param=param, field=field) from None


def make_filter(column, op, value, logical, param, limits, via=None):
    """Validate one (field, op, value) triple against the column's kind."""
    name = field_name(Filter(column, op, via=via))
    if isinstance(op, str):
        op = ALIASES.get(op, op)
    if op not in OPERATORS:
        raise InvalidParam(f"Unknown operator '{op}'; use one of {', '.join(OPERATORS)}", param=param, field=name)
    if op in EMPTY_OPS:
        return Filter(column, op, None, logical, via)
    if column.kind == 'json' and not (op in ('eq', 'neq') and value is None):
        raise InvalidParam(
            f"Field '{name}' holds JSON: filter it with is_empty or is_not_empty", param=param, field=name
        )
    if op in TEXT_OPS and (column.kind != 'text' or not isinstance(value, str)):
        raise InvalidParam(f"Operator '{op}' needs a text field and a string value", param=param, field=name)
    if op in ORDER_OPS and (column.kind not in ORDERABLE_KINDS or value is None):
        raise InvalidParam(f"Operator '{op}' needs an ordered field and a non-null value", param=param, field=name)
    if op in LIST_OPS:
        if not isinstance(value, list):
            raise InvalidParam(f"Operator '{op}' needs an array value", param=param, field=name)
        if len(value) > limits.max_list_length:
            raise InvalidParam(
                f"A list for '{name}' holds {len(value)} values; at most {limits.max_list_length} are allowed",
                param=param,
                field=name,
            )
        checked = tuple(check_value(column, v, param, limits, name) for v in value)
        return Filter(column, op, checked, logical, via)
    if isinstance(value, (list, dict)):
        raise InvalidParam(f"Operator '{op}' needs a single value for '{name}'", param=param, field=name)
    return Filter(column, op, check_value(column, value, param, limits, name), logical, via)


def parse_filter(params, info, limits, relations=None):
    """`filter={...}`: equality per key, arrays as IN, null as IS NULL, plus `q` and `include_archived`."""
    obj = param_json(params, 'filter', {})
    if not isinstance(obj, dict):
        raise InvalidParam("Parameter 'filter' must be a JSON object", param='filter')
    search, include_archived, equals = None, False, []
    for key, value in obj.items():
        if key == 'q':
            if isinstance(value, str) and len(value) > limits.max_value_length:
                raise InvalidParam(
                    f"Filter 'q' is longer than {limits.max_value_length} characters", param='filter', field='q'
                )
            search = parse_search(value, 'filter')
        elif key == 'include_archived':
            if not isinstance(value, bool):
                raise InvalidParam(
                    "Filter 'include_archived' must be true or false", param='filter', field='include_archived'
                )
            include_archived = value
        else:
            column, via = field_for(info, key, 'filter', relations)
            op = 'in' if isinstance(value, list) else 'eq'
            equals.append(make_filter(column, op, value, 'and', 'filter', limits, via))
    return search, include_archived, equals


def search_filter(item, logical, limits):
    """`q` in `filters`: `eq` only, its value searched as `filter`'s q is."""
    if item['op'] != 'eq':
        raise InvalidParam(f"Filter 'q' takes the operator 'eq' only, not {item['op']!r}", param='filters', field='q')
    value = item.get('value')
    if isinstance(value, str) and len(value) > limits.max_value_length:
        raise InvalidParam(
            f"Filter 'q' is longer than {limits.max_value_length} characters", param='filters', field='q'
        )
    return Filter(SEARCH, 'eq', parse_search(value, 'filters'), logical)


def parse_filters(params, info, limits, relations=None):
    items = param_json(params, 'filters', [])
    if not isinstance(items, list):
        raise InvalidParam("Parameter 'filters' must be a JSON array of filter objects", param='filters')
    if len(items) > limits.max_filters:
        raise InvalidParam(f'At most {limits.max_filters} filters are allowed', param='filters')
    parsed = []
    for item in items:
        if not isinstance(item, dict) or 'field' not in item or 'op' not in item:
            raise InvalidParam(
                'Each filter is an object with "field", "op" and, for most operators, "value"', param='filters'
            )
        extra = set(item) - {'field', 'op', 'value', 'logicalOp'}
        if extra:
            raise InvalidParam(f"Unknown filter key '{sorted(extra)[0]}'", param='filters')
        logical = item.get('logicalOp', 'and')
        if logical not in ('and', 'or', 'AND', 'OR'):
            raise InvalidParam(f"logicalOp must be 'and' or 'or', not {logical!r}", param='filters')
        if item['field'] == 'q':
            parsed.append(search_filter(item, logical.lower(), limits))
            continue
        column, via = field_for(info, item['field'], 'filters', relations)
        parsed.append(make_filter(column, item['op'], item.get('value'), logical.lower(), 'filters', limits, via))
    return parsed


def make_sort(info, name, order, param, order_param=None, relations=None):
    column, via = field_for(info, name, param, relations)
    if not column.sortable:
        raise InvalidParam(f"Cannot sort {info.slug} by '{name}' (a JSON field)", param=param, field=name)
    if not isinstance(order, str) or order.upper() not in ('ASC', 'DESC'):
        raise InvalidParam(f'Sort order must be ASC or DESC, not {order!r}', param=order_param or param, field=name)
    return Sort(column, order.upper() == 'DESC', via)


def parse_sorts(params, info, limits, relations=None):
    """All three spellings: `sort=f&order=DESC`, react-admin's `sort=["f","DESC"]`, and `sorts=[...]`."""
    sort, order = single(params, 'sort'), single(params, 'order')
    if 'sorts' in params:
        if sort is not None or order is not None:
            raise InvalidParam("Use either 'sorts' or 'sort'/'order', not both", param='sorts')
        items = param_json(params, 'sorts')
        if not isinstance(items, list) or not all(isinstance(i, dict) and 'field' in i for i in items):
            raise InvalidParam('Parameter \'sorts\' must be a JSON array of {"field", "order"} objects', param='sorts')
        if len(items) > limits.max_filters:
            raise InvalidParam(f'At most {limits.max_filters} sorts are allowed', param='sorts')
        for item in items:
            if set(item) - {'field', 'order'}:
                raise InvalidParam(f"Unknown sort key '{sorted(set(item) - {'field', 'order'})[0]}'", param='sorts')
        return [make_sort(info, i['field'], i.get('order', 'ASC'), 'sorts', relations=relations) for i in items]
    if sort is None:
        if order is not None:
            raise InvalidParam("Parameter 'order' needs 'sort'", param='order')
        return []
    if sort.startswith('['):
        pair = param_json(params, 'sort')
        if not (isinstance(pair, list) and 1 <= len(pair) <= 2 and order is None):
            raise InvalidParam('Parameter \'sort\' as JSON is ["field", "ASC" or "DESC"]', param='sort')
        return [make_sort(info, pair[0], pair[1] if len(pair) > 1 else 'ASC', 'sort', relations=relations)]
    return [make_sort(info, sort, order or 'ASC', 'sort', 'order', relations)]


def parse_embed(params, relations):
    """`embed=company` or `embed=["company","tags"]` (with `embed_limit`, 0 to 100 children per reverse
    relation): (the relations, in the order asked, each once; the limit). `relations`: name -> Relation."""
    raw = single(params, 'embed')
    limit = embed_limit(params)
    if raw is None:
        return (), EMBED_LIMIT  # NOTE: a limit alone is checked, then ignored (OpenAPI cannot tie it to embed)
    names = param_json(params, 'embed') if raw.lstrip().startswith('[') else [raw]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidParam(
            'Parameter \'embed\' is a relation name or a JSON array of them, like ["company","tags"]', param='embed'
        )
    unknown = next((n for n in names if n not in relations), None)
    if unknown is not None:
        valid = ', '.join(relations) or 'none'
        raise InvalidParam(
            f"Unknown relation '{unknown}'; this resource can embed: {valid}", param='embed', field=unknown
        )
    return tuple(relations[n] for n in dict.fromkeys(names)), EMBED_LIMIT if limit is None else limit


def embed_limit(params):
    """`embed_limit`: an integer from 0 to MAX_EMBED_LIMIT, or None when absent."""
    if single(params, 'embed_limit') is None:
        return None
    limit = param_json(params, 'embed_limit')
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_EMBED_LIMIT:
        raise InvalidParam(f"Parameter 'embed_limit' is an integer from 0 to {MAX_EMBED_LIMIT}", param='embed_limit')
    return limit


# -- keyset cursors -------------------------------------------------------------------------------
# A cursor is opaque to clients: base64url of an HMAC-SHA256 tag and then the JSON of the last row's
# sort values and the index of the next row (so Content-Range stays right). The tag is made with a
# key of the organization (derived from the server's secret) over the query's digest and that JSON,
# so a cursor is good only for the organization and the list it came from, and a changed one is refused
# before its JSON is read.

MAX_CURSOR_LENGTH = 4096
TAG_BYTES = 32


def cursor_key(secret, org_id):
    """The organization's own cursor key: one server secret, a different key for every organization."""
    return hmac.new(secret, b'crmapi cursor\x00' + org_id.encode(), hashlib.sha256).digest()


def query_digest(info, params):
    """Which list a cursor belongs to: the resource and its filter and sort parameters."""
    shape = [info.slug] + [params.get(name) for name in ('filter', 'filters', 'sort', 'order', 'sorts')]
    return hashlib.sha256(values.ascii_json(shape).encode()).digest()


def _tag(key, info, params, body):
    return hmac.new(key, query_digest(info, params) + body, hashlib.sha256).digest()


def sign_cursor(key, info, params, body):
    """The cursor for `body` (bytes): tag + body, base64url without padding."""
    return base64.urlsafe_b64encode(_tag(key, info, params, body) + body).decode().rstrip('=')


def keyset_columns(lq, info):
    """The columns a keyset compares, in order: the sorts up to `id`, then `id`."""
    names = []
    for s in lq.sorts:
        if s.via is None and s.column.name == 'id':
            break
        names.append(s.column.name)
    return names + ['id']


def across_references(lq):
    """Whether a sort crosses a reference (`company.name`): such lists page by `range` only.

    NOTE: a keyset would compare the referenced record's value, which another record's write changes
    under the cursor; refusing the cursor keeps paging honest (each range page is exact).
    """
    return any(s.via is not None for s in lq.sorts)


def make_cursor(lq, info, params, last_row, key):
    """The next page's cursor, or None when the last row's sort values would make it too long to accept
    (or a sort crosses a reference), or when the list is ranked by relevance (no keyset: page on with `range`)."""
    if across_references(lq) or lq.ranked:
        return None
    body = orjson.dumps({'v': [last_row[n] for n in keyset_columns(lq, info)], 'i': lq.start + lq.size})
    cursor = sign_cursor(key, info, params, body)
    return cursor if len(cursor) <= MAX_CURSOR_LENGTH else None


def _cursor_body(raw, info, params, key):
    """The JSON a cursor carries, once its length and tag check out; ValueError otherwise."""
    if len(raw) > MAX_CURSOR_LENGTH:
        raise ValueError(f'longer than {MAX_CURSOR_LENGTH} characters')
    if key is None or not raw.isascii():
        raise ValueError('not a cursor this list gave out')
    try:
        data = base64.urlsafe_b64decode(raw + '=' * (-len(raw) % 4))
    except (ValueError, binascii.Error):
        raise ValueError('not a cursor this list gave out') from None
    tag, body = data[:TAG_BYTES], data[TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(key, info, params, body)):
        raise ValueError('not a cursor this list gave out (for this organization, filters and sorts)')
    # NOTE: only a holder of the key can get this far; the body is still parsed as strictly as any
    # other client JSON (depth, lone surrogates, repeated keys), so a leaked key cannot crash a list.
    try:
        return values.loads_strict(body.decode('utf-8'))
    except ValueError as exc:
        raise ValueError(f'not valid JSON: {exc}') from None


def apply_cursor(lq, info, params, limits, key=None):
    """`cursor=` (from X-Next-Cursor) turns the page into a keyset page after the cursor's row.

    Without a `key` (parsing outside a request) every cursor is refused.
    """
    raw = single(params, 'cursor')
    if raw is None:
        return lq
    if across_references(lq):
        raise InvalidParam(
            "Parameter 'cursor' does not apply to a sort across a reference; page with 'range'", param='cursor'
        )
    try:
        body = _cursor_body(raw, info, params, key)
    except ValueError as exc:
        raise InvalidParam(
            f"Parameter 'cursor' is {exc}; send back the X-Next-Cursor of the same list", param='cursor'
        ) from None
    if lq.ranked:
        raise InvalidParam(
            "Parameter 'cursor' does not fit a list ranked by relevance (a q without a sort); page on with 'range'",
            param='cursor',
        )
    names = keyset_columns(lq, info)
    keys, index = (body.get('v'), body.get('i')) if isinstance(body, dict) else (None, None)
    if (
        not isinstance(keys, list)
        or len(keys) != len(names)
        or not isinstance(index, int)
        or isinstance(index, bool)
        or not 0 <= index <= MAX_OFFSET
    ):
        raise InvalidParam("Parameter 'cursor' does not fit this list; send back its X-Next-Cursor", param='cursor')
    after = tuple(check_value(info.columns[n], v, 'cursor', limits) for n, v in zip(names, keys))
    return replace(lq, start=index, end=index + lq.size - 1, after=after)


def parse_list(params, info, limits=Limits(), extra=frozenset(), cursor_key=None, relations=None):
    """Everything a list request asks for, validated against `info`'s whitelist.

    `relations` (name -> Relation, see crmapi.relations) allows `embed` and dotted fields (`company.name`).
    """
    unknown = sorted(set(params) - LIST_PARAMS - extra)
    if unknown:
        raise InvalidParam(
            f"Unknown query parameter '{unknown[0]}'; list parameters are {', '.join(sorted(LIST_PARAMS))}",
            param=unknown[0],
        )
    start, end = parse_range(params, limits)
    search, include_archived, equals = parse_filter(params, info, limits, relations)
    ids = next((f.value for f in equals if f.via is None and f.column.name == 'id' and f.op == 'in'), None)
    if 'range' not in params and ids is not None:
        # NOTE: react-admin's getMany sends filter={"id":[...]} without a range: answer every id asked for.
        end = max(end, min(len(ids), limits.max_page) - 1)
    filters = parse_filters(params, info, limits, relations)
    if any(f.via is None and f.column.name == 'archived_at' for f in (*equals, *filters)):
        include_archived = True
    sorts = parse_sorts(params, info, limits, relations)
    embeds, embed_limit = parse_embed(params, {} if relations is None else relations)
    lq = ListQuery(
        start,
        end,
        tuple(equals),
        tuple(filters),
        search,
        include_archived,
        tuple(sorts),
        embeds=embeds,
        embed_limit=embed_limit,
    )
    return apply_cursor(lq, info, params, limits, cursor_key)
