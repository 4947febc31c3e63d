"""The OpenAPI 3.1 document, generated from the live schema, and the page that renders it.

Paths, parameters, bodies and records come from the catalog (the same whitelists the API enforces), so
the document cannot drift from the API. Written here only what the database cannot tell: the shapes of
automation rules' and webhooks' JSON fields (from crmapi.rules and crmapi.webhooks) and an example create
per built-in resource (tests/test_openapi.py sends each). With a principal it also describes that
organization's custom objects; without one, the built-ins only. Tools consume it: every routed operation
is in it, and a client generated from it (openapi-python-client) works (tests/test_generated_client.py).
"""

import hashlib
import re
from importlib import resources

import orjson

from . import __version__
from . import duplicates
from . import history
from . import query
from . import relations as relations_module
from . import rules
from . import webhooks as webhooks_module
from .errors import NotFound
from .sqlbuild import SCOPE
from .store import MAX_BATCH
from .store import MAX_MERGE_SOURCES
from .values import INT64_MAX
from .values import INT64_MIN

OPENAPI_VERSION = '3.1.0'
PROBLEM_JSON = 'application/problem+json'

# NOTE: the wire types of each column kind, as values.check accepts them and the readers return them.
KIND_SCHEMAS = {
    'text': {'type': 'string'},
    'integer': {'type': 'integer', 'minimum': INT64_MIN, 'maximum': INT64_MAX},
    'number': {'type': 'number'},
    'boolean': {'type': 'boolean'},
    'date': {'type': 'string', 'format': 'date'},
    'timestamp': {'type': 'string', 'format': 'date-time'},
    'json': {},
    'array': {'type': 'array', 'items': {'type': 'string', 'minLength': 1}},
}

STATUS_TEXT = {
    400: 'Bad request: a malformed, unknown or repeated parameter, or a value of the wrong type',
    401: 'Missing, invalid, expired or revoked token',
    403: 'The write needs an administrator',
    404: 'Unknown resource or record (records of other organizations are unknown too)',
    405: 'The resource does not support this method',
    409: 'A unique value is taken, or a record is still referred to',
    413: 'The request body is larger than the limit',
    415: 'The body is not JSON (send Content-Type: application/json)',
    422: 'The Idempotency-Key was used before with another request',
    429: 'The token spent its request budget (CRMAPI_RATE_LIMIT); retry after `Retry-After` seconds',
    503: 'The database is unavailable or too slow; retry later',
}
PROBLEM_NAMES = {
    400: 'BadRequest',
    401: 'Unauthorized',
    403: 'Forbidden',
    404: 'NotFound',
    405: 'MethodNotAllowed',
    409: 'Conflict',
    413: 'PayloadTooLarge',
    415: 'UnsupportedMediaType',
    422: 'KeyReused',
    429: 'TooManyRequests',
    503: 'Unavailable',
}

ITEMS_NAMED = {
    'type': 'array',
    'items': {'type': 'integer', 'minimum': 0},
    'description': 'in a batch, the items a problem is about together (a unique value sent twice)',
}

PROBLEM_SCHEMA = {
    'type': 'object',
    'description': 'RFC 9457 problem details; `message` repeats `detail` for react-admin.',
    'required': ['type', 'title', 'status', 'detail', 'message'],
    'properties': {
        'type': {'type': 'string'},
        'title': {'type': 'string'},
        'status': {'type': 'integer', 'minimum': 400, 'maximum': 599},
        'detail': {'type': 'string'},
        'message': {'type': 'string'},
        'param': {'type': 'string', 'description': 'the query parameter at fault'},
        'field': {'type': 'string', 'description': 'the field at fault'},
        'index': {'type': 'integer', 'minimum': 0, 'description': 'in a batch, the item at fault (the first one)'},
        'items': ITEMS_NAMED,
        'errors': {
            'type': 'array',
            'description': "every problem of the body (`field` and `detail` are the first one's); in a batch each names its item (`index`)",
            'items': {
                'type': 'object',
                'required': ['detail'],
                'properties': {
                    'index': {'type': 'integer', 'minimum': 0},
                    'line': {'type': 'integer', 'minimum': 1},
                    'field': {'type': 'string'},
                    'detail': {'type': 'string'},
                    'items': ITEMS_NAMED,
                },
            },
        },
        'limit': {'type': 'integer', 'description': 'the most records one batch may hold'},
        'line': {'type': 'integer', 'minimum': 1, 'description': 'in a CSV import, the line at fault'},
        'error_count': {
            'type': 'integer',
            'minimum': 0,
            'description': 'in a CSV import, how many problems in all (`errors` lists the first 100)',
        },
    },
}

HEADERS = {
    'Content-Range': {
        'description': 'First and last index returned and the total number of matches, '
        '`contacts 0-24/142`; an empty page is `contacts */142`; `*` for the total with '
        '`Prefer: count=none`.',
        'schema': {'type': 'string', 'pattern': r'^[a-z][a-z0-9_]* (\*|[0-9]+-[0-9]+)/([0-9]+|\*)$'},
    },
    'Location': {
        'description': 'The URL of the created record (with the mount point of the API).',
        'schema': {'type': 'string', 'format': 'uri-reference'},
    },
    'X-Upsert-Result': {
        'description': 'What an upsert (`on_conflict`) did: `created=N, updated=M`.',
        'schema': {'type': 'string', 'pattern': '^created=[0-9]+, updated=[0-9]+$'},
    },
    'X-Next-After': {
        'description': 'The `after` of the next poll: the last `seq` answered, or the `after` sent when none was.',
        'schema': {'type': 'string', 'pattern': '^[0-9]+$'},
    },
    'X-Next-Cursor': {
        'description': 'On a full page: send it back as `cursor` (with the same filters, sorts and page size) '
        'for the next page, read by keyset.',
        'schema': {'type': 'string'},
    },
    'Preference-Applied': {
        'description': 'The `Prefer` preferences honoured (RFC 7240): `count=estimated`, `count=none`, '
        '`handling=strict`, `handling=lenient`.',
        'schema': {'type': 'string'},
    },
    'Idempotent-Replayed': {
        'description': '`true` when the answer is the stored one of an earlier request with the same '
        '`Idempotency-Key`.',
        'schema': {'type': 'string', 'enum': ['true']},
    },
    'Content-Disposition': {
        'description': 'An export is an attachment: `attachment; filename="contacts.csv"`.',
        'schema': {'type': 'string'},
    },
    'WWW-Authenticate': {'schema': {'type': 'string'}},
    'Retry-After': {
        'description': 'Seconds to wait before retrying.',
        'schema': {'type': 'string', 'pattern': '^[0-9]+$'},
    },
    'Allow': {'schema': {'type': 'string'}},
    'RateLimit-Limit': {
        'description': "The token's budget: requests per window (with CRMAPI_RATE_LIMIT set).",
        'schema': {'type': 'string', 'pattern': '^[0-9]+$'},
    },
    'RateLimit-Remaining': {
        'description': 'Requests left in the budget after this one.',
        'schema': {'type': 'string', 'pattern': '^[0-9]+$'},
    },
    'RateLimit-Reset': {
        'description': 'Seconds until the budget is full again.',
        'schema': {'type': 'string', 'pattern': '^[0-9]+$'},
    },
    'RateLimit-Policy': {'description': '`<limit>;w=<window seconds>`.', 'schema': {'type': 'string'}},
}
RATE_LIMIT_HEADERS = ('RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset', 'RateLimit-Policy')
EXPORTS = {
    'text/csv': 'CSV: a header row of field names, one record a line',
    'application/x-ndjson': 'NDJSON: one record (a JSON object) a line',
}

TIMESTAMP = {'type': 'string', 'format': 'date-time'}
COLUMN_DESCRIPTION = {
    'type': 'object',
    'required': [
        'name',
        'type',
        'kind',
        'nullable',
        'default',
        'writable',
        'required',
        'filterable',
        'sortable',
        'references',
        'max_length',
    ],
    'properties': {
        'name': {'type': 'string'},
        'type': {'type': 'string', 'description': 'the declared SQL type'},
        'kind': {'type': 'string', 'enum': list(KIND_SCHEMAS)},
        'nullable': {'type': 'boolean'},
        'default': {},
        'writable': {'type': 'boolean'},
        'required': {'type': 'boolean'},
        'filterable': {'type': 'boolean'},
        'sortable': {'type': 'boolean'},
        'references': {'type': ['string', 'null']},
        'max_length': {'type': ['integer', 'null'], 'description': 'characters, on indexed text'},
    },
}
RELATION_DESCRIPTION = {
    'type': 'object',
    'required': ['name', 'kind', 'resource', 'field', 'many'],
    'properties': {
        'name': {'type': 'string', 'description': 'what `embed` names it, and the key it is embedded under'},
        'kind': {
            'type': 'string',
            'enum': ['forward', 'reverse'],
            'description': 'forward: the record(s) a reference names; reverse: the records whose reference '
            'names this one',
        },
        'resource': {'type': 'string', 'description': 'the resource embedded'},
        'field': {
            'type': 'string',
            'description': 'the reference field (forward: of this resource; reverse: of the embedded resource)',
        },
        'many': {'type': 'boolean'},
    },
}
RESOURCE_SUMMARY = {
    'type': 'object',
    'required': ['resource', 'read_only', 'delete', 'restorable'],
    'properties': {
        'resource': {'type': 'string'},
        'read_only': {'type': 'boolean'},
        'delete': {'type': 'string', 'enum': ['archive', 'disable', 'hard']},
        'restorable': {'type': 'boolean'},
    },
}
FIELD_DEFINITION = {
    'type': 'object',
    'required': ['name', 'type'],
    'properties': {
        'name': {'type': 'string', 'pattern': '^[a-z][a-z0-9_]{0,62}$'},
        'type': {
            'type': 'string',
            'enum': ['text', 'integer', 'number', 'boolean', 'date', 'datetime', 'json', 'reference'],
        },
        'required': {'type': 'boolean'},
        'target': {'type': 'string', 'description': 'the resource a reference field points at'},
        'label': {'type': 'string'},
        'unique': {
            'type': 'boolean',
            'description': 'one record per value in the organization: a column '
            'upserts (`on_conflict`) can match on; not for json fields',
        },
    },
}
CUSTOM_OBJECT = {
    'type': 'object',
    'required': ['id', 'slug', 'label', 'fields', 'version', 'created_at', 'updated_at', 'archived_at'],
    'properties': {
        'id': {'type': 'string'},
        'slug': {'type': 'string'},
        'label': {'type': ['string', 'null']},
        'fields': {'type': 'array', 'items': {'$ref': '#/components/schemas/CustomField'}},
        'version': {'type': 'integer'},
        'created_at': TIMESTAMP,
        'updated_at': TIMESTAMP,
        'archived_at': {'type': ['string', 'null'], 'format': 'date-time'},
    },
}
CUSTOM_OBJECT_BODY = {
    'type': 'object',
    'properties': {
        'slug': {'type': 'string', 'pattern': '^[a-z][a-z0-9_]{0,62}$'},
        'label': {'type': ['string', 'null']},
        'fields': {'type': 'array', 'maxItems': 200, 'items': {'$ref': '#/components/schemas/CustomField'}},
    },
}


def ref(name):
    return {'$ref': f'#/components/schemas/{name}'}


def compact(value):
    """JSON as it goes in a URL: no spaces."""
    return orjson.dumps(value).decode()


def filters_schema(fields, max_items):
    """The list query language's `filters` array over `fields` (rule conditions use it too)."""
    return {
        'type': 'array',
        'maxItems': max_items,
        'items': {
            'type': 'object',
            'required': ['field', 'op'],
            'additionalProperties': False,
            'properties': {
                'field': {'type': 'string', 'enum': list(fields)},
                'op': {
                    'type': 'string',
                    'enum': [*query.OPERATORS, *query.ALIASES],
                    'description': 'aliases: ' + ', '.join(f'`{a}` = `{op}`' for a, op in query.ALIASES.items()),
                },
                'value': {},
                'logicalOp': {'type': 'string', 'enum': ['and', 'or']},
            },
        },
    }


def rule_shapes(slugs, fields):
    """An automation rule's trigger, conditions and actions (crmapi.rules), over the resources `slugs`
    with writable records and the field names `fields` (of any of them: the trigger's resource decides)."""
    an_id = {'type': 'string', 'minLength': 1}
    action = {
        'create_task': (
            {
                'text': {'type': 'string', 'minLength': 1},
                'due_in_days': {'type': 'integer', 'minimum': 0, 'maximum': rules.MAX_DUE_DAYS},
                'assignee_id': {**an_id, 'description': 'id of a crm_users record'},
            },
            'a task linked to the record (deals, contacts, companies)',
        ),
        'update': (
            {
                'set': {
                    'type': 'object',
                    'minProperties': 1,
                    'description': "writable fields of the trigger's resource and their new values",
                }
            },
            'set fields of the record',
        ),
        'add_tag': ({'tag_id': {**an_id, 'description': 'id of a tags record'}}, 'tag the record (contacts)'),
        'webhook': (
            {'url': {'type': 'string', 'format': 'uri', 'maxLength': rules.MAX_URL}},
            'POST the change to an http(s) URL',
        ),
    }
    # NOTE: create_task first: a viewer's example starts from the first choice, and it needs no id to fill in.
    actions = [
        {
            'type': 'object',
            'description': description,
            'additionalProperties': False,
            'required': ['type', *rules.ACTIONS[name][0]],
            'properties': {'type': {'type': 'string', 'enum': [name]}, **members},
        }
        for name, (members, description) in action.items()
    ]
    trigger = {
        'type': 'object',
        'required': ['resource', 'on'],
        'additionalProperties': False,
        'description': 'the changes the rule reacts to',
        'properties': {
            'resource': {'type': 'string', 'enum': list(slugs)},
            'on': {
                'type': 'array',
                'minItems': 1,
                'uniqueItems': True,
                'items': {'type': 'string', 'enum': list(rules.OPERATIONS)},
            },
            'fields': {
                'type': 'array',
                'minItems': 1,
                'items': {'type': 'string'},
                'description': 'only changes of these fields (updates)',
            },
        },
    }
    legacy = 'null only on a rule stored before rules had a shape (`problem` says so); a write must set it'
    return {
        'trigger': {'anyOf': [trigger, {'type': 'null'}], 'description': legacy},
        'conditions': {
            'anyOf': [filters_schema(sorted(fields), query.Limits.max_filters), {'type': 'null'}],
            'description': "the list query language's `filters` over the trigger's resource; "
            'null or absent: every change',
        },
        'actions': {
            'anyOf': [
                {'type': 'array', 'minItems': 1, 'maxItems': rules.MAX_ACTIONS, 'items': {'anyOf': actions}},
                {'type': 'null'},
            ],
            'description': legacy,
        },
    }


def webhook_shapes():
    """A webhook's URL and events (crmapi.webhooks), beyond their columns' kinds."""
    pattern = '^(\\*|(\\*|[a-z][a-z0-9_]{0,62})\\.(\\*|' + '|'.join(webhooks_module.ACTIONS) + '))$'
    return {
        'url': {
            'type': 'string',
            'format': 'uri',
            'maxLength': webhooks_module.MAX_URL,
            'description': 'https, resolving to public addresses only (CRMAPI_WEBHOOK_ALLOW_PRIVATE: http '
            'and private ones too)',
            'example': 'https://hooks.example.com/crm',
        },
        'events': {
            'type': 'array',
            'minItems': 1,
            'maxItems': webhooks_module.MAX_EVENTS,
            'items': {'type': 'string', 'pattern': pattern},
            'description': '`<resource>.<action>` patterns: `contacts.created`, `deals.*`, `*.deleted`, `*`',
            'example': ['contacts.created', 'deals.*'],
        },
    }


SECRET = {
    'type': 'string',
    'pattern': f'^{webhooks_module.SECRET_PREFIX}',
    'readOnly': True,
    'description': 'the signing secret (Standard Webhooks): in this answer only, never in a read',
}
# Fields a create must carry although their column may be null (the resource's own rules demand them).
CREATE_REQUIRED = {'automation_rules': ('trigger', 'actions')}


def value_schema(column, nullable):
    """The JSON Schema of one column's values; `nullable` adds null to the type."""
    schema = dict(KIND_SCHEMAS[column.kind])
    if column.kind == 'number' and column.precision:
        precision, scale = column.precision
        bound = 10 ** (precision - scale)
        schema.update(
            exclusiveMinimum=-bound,
            exclusiveMaximum=bound,
            description=f'exact decimal, at most {scale} decimal places',
        )
    if column.max_length:
        schema['maxLength'] = column.max_length
    if column.references:
        schema['description'] = (
            f'id of a {column.references} record' if column.kind != 'array' else f'ids of {column.references} records'
        )
    if nullable and 'type' in schema:
        schema['type'] = [schema['type'], 'null']
    return schema


def field_schemas(info, shapes):
    """Every field of a record: read-only ones (server-managed, computed) marked `readOnly`, and the JSON
    fields whose shape is known (`shapes`) described."""
    properties = {}
    for name, column in info.columns.items():
        if name == SCOPE:
            continue
        schema = shapes.get(name) or value_schema(column, column.nullable)
        properties[name] = schema if column.writable else {**schema, 'readOnly': True}
    return properties


def record_schema(info, shapes=None):
    """The one schema of a resource's records: what reads answer and what a create sends.

    `required` lists what a create must carry (OpenAPI applies it to requests and responses alike; every
    field is in every answer anyway). A read-only resource is never written: all of its fields are required.
    """
    properties = field_schemas(info, shapes or {})
    if info.spec.read_only:
        required = list(properties)
    else:
        demanded = CREATE_REQUIRED.get(info.slug, ())
        required = [n for n, c in info.writable.items() if c.required or n in demanded]
    schema = {'type': 'object', 'properties': properties}
    if required:
        schema['required'] = required
    return schema


def update_schema(info, shapes=None):
    """PUT and PATCH bodies: the record's writable fields, none required (a partial update of the fields sent).

    NOTE: not `additionalProperties: false`: the camelCase spellings, and the read-only fields of a whole record
    sent back, are accepted too. The read-only fields are left out rather than marked: a batch item adds a
    required `id`, which a readOnly `id` would forbid in a request.
    """
    properties = field_schemas(info, shapes or {})
    return {
        'type': 'object',
        'description': 'The fields to change (camelCase spellings accepted). Read-only fields (`id`, timestamps, '
        'computed columns) are ignored; any other field is a 400 unless the request sends '
        '`Prefer: handling=lenient`.',
        'properties': {n: schema for n, schema in properties.items() if not schema.get('readOnly')},
    }


def json_param(name, shape, description, example, required=False):
    """A query parameter holding JSON (`range=[0,24]`), URL-encoded as usual.

    NOTE: declared as the string it is, with the JSON's own schema as `contentSchema`, not as `content`:
    code generators (openapi-python-client, openapi-generator) leave `content` parameters out.
    """
    return {
        'name': name,
        'in': 'query',
        'required': required,
        'description': f'{description}. A JSON value, e.g. `{compact(example)}`',
        'schema': {'type': 'string', 'contentMediaType': 'application/json', 'contentSchema': shape},
        'example': compact(example),
    }


def embedded_schema(record, relations):
    """A record (its schema: `record`) as a list or a get answers it with `embed`: forward relations add the
    record(s) they name (in place of the ids where the relation is named as its field), reverse ones
    {"total", "items"}."""
    properties = dict(record['properties'])
    for relation in relations.values():
        one = {'anyOf': [ref(relation.target.slug), {'type': 'null'}]}
        if relation.reverse:
            embedded = {
                'type': 'object',
                'required': ['total', 'items'],
                'properties': {
                    'total': {'type': 'integer', 'minimum': 0},
                    'items': {'type': 'array', 'maxItems': query.MAX_EMBED_LIMIT, 'items': ref(relation.target.slug)},
                },
            }
        else:
            embedded = {'type': 'array', 'items': one} if relation.many else one
        if relation.replaces:
            embedded = {'anyOf': [properties[relation.name], embedded]}
        properties[relation.name] = {**embedded, 'readOnly': True}
    return {**record, 'properties': properties}


def dotted_fields(relations):
    """`company.name` -> the target's Column, for every forward relation to a single record."""
    return {
        f'{r.name}.{n}': c
        for r in relations.values()
        if not r.reverse and not r.many
        for n, c in r.target.columns.items()
        if n != SCOPE
    }


def embed_parameters(relations):
    """`embed` (an enum of the resource's relations) and `embed_limit`; none for a resource without relations."""
    if not relations:
        return []
    return [
        json_param(
            'embed',
            {'type': 'array', 'uniqueItems': True, 'items': {'type': 'string', 'enum': list(relations)}},
            'relations to embed in each record, as a JSON array (`["company","tags"]`) or one bare name '
            '(`company`). Forward relations embed the record(s) a reference names (archived ones too; a missing '
            'one is null) under the relation\'s name; reverse ones embed {"total", "items"}: the newest live '
            'records naming this one. Exports refuse it',
            list(relations)[:2],
        ),
        {
            'name': 'embed_limit',
            'in': 'query',
            'required': False,
            'schema': {'type': 'integer', 'minimum': 0, 'maximum': query.MAX_EMBED_LIMIT},
            'description': f'records of each reverse relation embedded per record (default {query.EMBED_LIMIT}); '
            'needs `embed`',
        },
    ]


def range_param(limits, what='rows'):
    return json_param(
        'range',
        {'type': 'array', 'items': {'type': 'integer', 'minimum': 0}, 'minItems': 2, 'maxItems': 2},
        f'[start, end], inclusive; default [0,24], at most {limits.max_page} {what}',
        [0, 24],
    )


def header_param(name, schema, description, example=None):
    param = {'name': name, 'in': 'header', 'required': False, 'schema': schema, 'description': description}
    if example is not None:
        param['example'] = example
    return param


COUNT_PARAM = header_param(
    'Prefer',
    {'type': 'string', 'enum': [f'count={c}' for c in ('exact', 'estimated', 'none')]},
    'RFC 7240: how the total of `Content-Range` is counted: `count=exact` (the default), `count=estimated` '
    "(PostgreSQL's planner estimate; SQLite: exact up to 1,000, else scaled from a sample of rows), `count=none` "
    '(`*`); a count other than exact is answered with '
    '`Preference-Applied`',
)
HANDLING_PARAM = header_param(
    'Prefer',
    {'type': 'string', 'enum': ['handling=strict', 'handling=lenient']},
    'RFC 7240: `handling=strict` (the default) refuses a body field the resource does not have; '
    '`handling=lenient` ignores it (answered with `Preference-Applied`)',
)
IDEMPOTENCY_PARAM = header_param(
    'Idempotency-Key',
    {'type': 'string', 'minLength': 1, 'maxLength': 255},
    'Send the same key again (the same token, the same request) to get the first answer again instead of '
    'writing twice (`Idempotent-Replayed: true`); the key with another request is a 422',
)


def list_parameters(info, limits, relations=None):
    """A list's query: range, filter, filters, sort/order, sorts, cursor, format, the Range and Prefer headers,
    embed (each JSON one as a string holding JSON, see json_param)."""
    relations = relations or {}
    dotted = dotted_fields(relations)
    names = [n for n in info.columns if n != SCOPE]
    sortable = [n for n in names if info.columns[n].sortable] + [n for n, c in dotted.items() if c.sortable]
    columns = {**{n: info.columns[n] for n in names}, **dotted}
    equality = {}
    for n, column in columns.items():
        one = value_schema(column, True)
        if column.kind == 'array':
            one = {'type': ['string', 'null']}
        equality[n] = {'anyOf': [one, {'type': 'array', 'items': one}]}
    equality['q'] = {'type': 'string', 'description': 'search the text columns'}
    equality['include_archived'] = {'type': 'boolean'}
    text = [c.name for c in info.search_columns]
    sort_by = 'created_at' if 'created_at' in sortable else sortable[0]
    return [
        range_param(limits),
        json_param(
            'filter',
            {'type': 'object', 'properties': equality, 'additionalProperties': False},
            'equality per field ({"field": value}); an array means IN, null means IS NULL; `q` searches the '
            'text columns, `include_archived` shows archived records too',
            {'q': 'ada'} if text else {'id': ['<id>']},
        ),
        json_param(
            'filters',
            filters_schema(columns, limits.max_filters),
            '[{"field","op","value","logicalOp"}], folded left to right; `relation.field` (`company.name`) '
            'filters by a field of the record a reference names, as if all null where there is none',
            [{'field': text[0], 'op': 'contains', 'value': 'ada'}]
            if text
            else [{'field': 'id', 'op': 'in', 'value': ['<id>']}],
        ),
        {
            'name': 'sort',
            'in': 'query',
            'required': False,
            'schema': {'type': 'string'},
            'example': sort_by,
            'description': f'a field name (with `order`), or react-admin\'s JSON ["field","ASC"|"DESC"]; one of '
            f'{", ".join(sortable)}',
        },
        {'name': 'order', 'in': 'query', 'required': False, 'schema': {'type': 'string', 'enum': ['ASC', 'DESC']}},
        json_param(
            'sorts',
            {
                'type': 'array',
                'maxItems': limits.max_filters,
                'items': {
                    'type': 'object',
                    'required': ['field'],
                    'additionalProperties': False,
                    'properties': {
                        'field': {'type': 'string', 'enum': sortable},
                        'order': {'type': 'string', 'enum': ['ASC', 'DESC']},
                    },
                },
            },
            'several sorts, [{"field","order"}] (not with `sort`)',
            [{'field': sort_by, 'order': 'DESC'}],
        ),
        {
            'name': 'cursor',
            'in': 'query',
            'required': False,
            'schema': {'type': 'string'},
            'description': 'the `X-Next-Cursor` of the page before, with the same filters, sorts and page size: the '
            'next page, read by keyset (no offset scan)',
        },
        {
            'name': 'format',
            'in': 'query',
            'required': False,
            'schema': {'type': 'string', 'enum': ['csv', 'ndjson']},
            'description': 'export every matching record (filters and sorts apply, `range` does not) as a CSV or '
            'NDJSON attachment, streamed; as `Accept: text/csv` or `Accept: application/x-ndjson`',
        },
        header_param(
            'Range',
            {'type': 'string', 'pattern': f'^{info.slug}=[0-9]{{1,19}}-[0-9]{{1,19}}$'},
            f"react-admin's spelling of `range`: `{info.slug}=0-24`; the `range` parameter wins",
        ),
        COUNT_PARAM,
        *embed_parameters(relations),
    ]


def header(name, required=False):
    """A response header: inline when required (a reference cannot say so), else a reference."""
    if required:
        return {**HEADERS[name], 'required': True}
    return {'$ref': f'#/components/headers/{name}'}


def problem_response(status, head=False):
    """A problem answer: a reference to the shared one; for HEAD, the same without a body."""
    if not head:
        return {'$ref': f'#/components/responses/{PROBLEM_NAMES[status]}'}
    response = {'description': STATUS_TEXT[status]}
    names = {
        401: ['WWW-Authenticate'],
        405: ['Allow'],
        429: ['Retry-After', *RATE_LIMIT_HEADERS],
        503: ['Retry-After'],
    }.get(status)
    if names:
        response['headers'] = {name: header(name) for name in names}
    return response


def problem_responses():
    """components.responses: one problem answer per status."""
    responses = {}
    for status, name in PROBLEM_NAMES.items():
        response = problem_response(status, head=True)
        response['content'] = {PROBLEM_JSON: {'schema': ref('Problem')}}
        responses[name] = response
    return responses


def json_response(description, schema, headers=(), optional=()):
    """A JSON answer with its `headers` (always sent) and `optional` ones; a token's RateLimit fields too."""
    response = {'description': description, 'content': {'application/json': {'schema': schema}}}
    response['headers'] = {
        **{h: header(h, True) for h in headers},
        **{h: header(h) for h in optional},
        **{h: header(h) for h in RATE_LIMIT_HEADERS},
    }
    return response


def operation(op_id, summary, tag, ok, errors, body=None, parameters=None, public=False, idempotent=False):
    """An operation: its answers (`ok`), its problems (`errors`, besides those every operation may answer)."""
    responses = {str(code): resp for code, resp in ok.items()}
    codes = {400, 503, *errors} if public else {400, 401, 429, 503, *errors}
    if body is not None:
        codes |= {413, 415}
    if idempotent:
        codes.add(422)
        parameters = [*(parameters or []), IDEMPOTENCY_PARAM]
    responses.update({str(code): problem_response(code) for code in sorted(codes)})
    op = {'operationId': op_id, 'summary': summary, 'tags': [tag], 'responses': responses}
    if parameters:
        op['parameters'] = parameters
    if body is not None:
        content = body if 'content' in body else {'content': {'application/json': {'schema': body}}}
        op['requestBody'] = {'required': True, **content}
    if public:
        op['security'] = [{}, {'bearerAuth': []}]
    return op


ID_PARAM = {'name': 'id', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}


def head_operation(get):
    """HEAD: the GET's parameters, status codes and headers, without a body."""
    responses = {}
    for code, response in get['responses'].items():
        if '$ref' in response:
            responses[code] = problem_response(int(code), head=True)
        else:
            responses[code] = {k: v for k, v in response.items() if k != 'content'}
    return {
        **get,
        'operationId': f'head_{get["operationId"]}',
        'summary': f'{get["summary"]}: headers only',
        'responses': responses,
    }


def one_or_many(schema):
    return {'anyOf': [schema, {'type': 'array', 'minItems': 1, 'maxItems': MAX_BATCH, 'items': schema}]}


IMPORT_RESULT = {
    'type': 'object',
    'required': ['created', 'updated'],
    'description': 'what a CSV import did',
    'properties': {'created': {'type': 'integer', 'minimum': 0}, 'updated': {'type': 'integer', 'minimum': 0}},
}


def list_response(info, read):
    """A page of records (JSON), or with `format` (or Accept) the whole filtered set as CSV or NDJSON."""
    response = json_response(
        'One page of records (JSON), or an export of every match (CSV, NDJSON)',
        {'type': 'array', 'items': read},
        (),
        ['Content-Range', 'X-Next-Cursor', 'Preference-Applied', 'Content-Disposition'],
    )
    # NOTE: Content-Range is on every page, but not on an export (a header cannot be required for one media type).
    response['content'].update(
        {media: {'schema': {'type': 'string', 'description': what}} for media, what in EXPORTS.items()}
    )
    return response


def create_operation(info, record, forbidden, unique):
    """POST on a collection: one record, a batch (an array), or a CSV import; with on_conflict, an upsert."""
    slug = info.slug
    on_conflict = {
        'name': 'on_conflict',
        'in': 'query',
        'required': False,
        'schema': {'type': 'string', 'enum': unique} if unique else {'type': 'string'},
        'description': 'upsert: a record of the organization (archived ones too, which stay archived) '
        'holding the same value in this unique column is updated with the fields sent',
    }
    answer = {'anyOf': [*one_or_many(record)['anyOf'], IMPORT_RESULT]}
    created = json_response(
        'The created record, or the batch of created records, in order (a CSV import: how many)',
        answer,
        (),
        ['Location', 'X-Upsert-Result', 'Preference-Applied', 'Idempotent-Replayed'],
    )
    updated = json_response(
        'An upsert that updated at least one record: the record(s), in order (a CSV import: how many)',
        answer,
        ['X-Upsert-Result'],
        ['Preference-Applied', 'Idempotent-Replayed'],
    )
    body = {
        'content': {
            'application/json': {'schema': one_or_many(record)},
            'text/csv': {
                'schema': {
                    'type': 'string',
                    'description': 'a header row of field names, then one record a '
                    'line (all or none; no Idempotency-Key)',
                }
            },
        }
    }
    example = EXAMPLES.get(slug)
    if example:
        body['content']['application/json']['example'] = example
    return operation(
        f'create_{slug}',
        f'Create a {slug} record, or a batch of up to {MAX_BATCH} (an array: all or none), or '
        'import CSV; with on_conflict, upsert them',
        slug,
        {201: created, 200: updated},
        {404, 409, *forbidden},
        body=body,
        parameters=[on_conflict, HANDLING_PARAM],
        idempotent=True,
    )


def batch_operations(info, record, forbidden, deleted):
    """PATCH and DELETE on a resource's collection."""
    slug = info.slug
    records = {'type': 'array', 'items': record}
    with_id = {
        'allOf': [
            ref(f'{slug}_update'),
            {
                'type': 'object',
                'required': ['id'],
                'properties': {'id': {'type': 'string', 'minLength': 1, 'description': 'the record to update'}},
            },
        ]
    }
    ids = {
        'type': 'object',
        'required': ['id'],
        'additionalProperties': False,
        'properties': {
            'id': {'type': 'array', 'minItems': 1, 'maxItems': MAX_BATCH, 'items': {'type': 'string', 'minLength': 1}}
        },
    }
    id_filter = json_param(
        'filter', ids, f'the ids of the records, at most {MAX_BATCH}', {'id': ['<id>']}, required=True
    )
    return {
        'patch': operation(
            f'update_{slug}_batch',
            f'Update a batch of {slug} records, each item with its id (all or none)',
            slug,
            {200: json_response('The updated records, in order', records, (), ['Preference-Applied'])},
            {404, 409, *forbidden},
            body={'type': 'array', 'minItems': 1, 'maxItems': MAX_BATCH, 'items': with_id},
            parameters=[HANDLING_PARAM],
        ),
        'delete': operation(
            f'delete_{slug}_batch',
            f'Delete a batch of {slug} records ({deleted} them; all or none)',
            slug,
            {200: json_response('The records as they were left, in order', records)},
            {404, 409, *forbidden},
            parameters=[id_filter],
        ),
    }


def webhook_operations(paths, record):
    """Webhooks differ from other resources: a create is one object (no batch, upsert or import) and answers
    the secret, which rotate_secret replaces; a delivery can be sent again."""
    with_secret = ref('webhooks_with_secret')
    paths['/webhooks']['post'] = operation(
        'create_webhooks',
        'Register a webhook (administrators): the answer shows its secret, once',
        'webhooks',
        {201: json_response('The webhook and its secret', with_secret, ['Location'], ['Preference-Applied'])},
        {403},
        body={'content': {'application/json': {'schema': record, 'example': EXAMPLES['webhooks']}}},
        parameters=[HANDLING_PARAM],
    )
    paths['/webhooks/{id}/rotate_secret'] = {
        'parameters': [ID_PARAM],
        'post': operation(
            'rotate_webhook_secret',
            'A new secret for the webhook, shown once; the old one signs nothing more',
            'webhooks',
            {200: json_response('The webhook and its new secret', with_secret)},
            {403, 404},
        ),
    }
    paths['/webhook_deliveries/{id}/redeliver'] = {
        'parameters': [ID_PARAM],
        'post': operation(
            'redeliver_webhook_delivery',
            'Send a delivery again, now, with a fresh round of retries',
            'webhook_deliveries',
            {202: json_response('The delivery, due now', ref('webhook_deliveries'))},
            {403, 404, 409},
        ),
    }


# A create each built-in resource accepts as it is (the docs page starts from it; custom objects get one made
# from their schema there). None where a create needs the id of another record.
EXAMPLES = {
    'contacts': {'first_name': 'Ada', 'last_name': 'Lovelace', 'email': 'ada@example.com', 'status': 'lead'},
    'companies': {'name': 'Initech', 'city': 'Austin', 'size': 50},
    'deals': {
        'name': 'Initech renewal',
        'amount': 12500.5,
        'status': 'proposal',
        'expected_closing_date': '2030-06-30',
    },
    'tasks': {'text': 'Call Ada about the renewal', 'due_date': '2030-01-15'},
    'tags': {'name': 'vip'},
    'automation_rules': {
        'name': 'Follow up new leads',
        'trigger': {'resource': 'contacts', 'on': ['created']},
        'conditions': [{'field': 'status', 'op': 'eq', 'value': 'lead'}],
        'actions': [{'type': 'create_task', 'text': 'Call the new lead', 'due_in_days': 2}],
    },
    'webhooks': {
        'url': 'https://hooks.example.com/crm',
        'events': ['contacts.created', 'deals.*'],
        'description': 'CRM sync',
    },
}


def resource_paths(info, limits, unique=(), relations=None):
    """The paths of one resource: list/create, get/update/delete, restore (where it applies)."""
    slug, spec = info.slug, info.spec
    record = ref(f'{slug}')
    read = ref(f'{slug}_embedded') if relations else record
    forbidden = {403} if spec.admin_writes else set()
    collection, item = f'/{slug}', f'/{slug}/{{id}}'
    paths = {
        collection: {
            'get': operation(
                f'list_{slug}',
                f'List {slug}',
                slug,
                {200: list_response(info, read)},
                {404},
                parameters=list_parameters(info, limits, relations),
            ),
        },
        item: {
            'parameters': [ID_PARAM],
            'get': operation(
                f'get_{slug}',
                f'Get one {slug} record (archived ones too)',
                slug,
                {200: json_response('The record', read)},
                {404},
                parameters=embed_parameters(relations),
            ),
        },
    }
    for path_item in paths.values():
        path_item['head'] = head_operation(path_item['get'])
    if spec.read_only:
        return paths
    deleted = {'archive': 'archives', 'disable': 'disables', 'hard': 'deletes'}[spec.delete]
    paths[collection]['post'] = create_operation(info, record, forbidden, unique)
    paths[collection].update(batch_operations(info, record, forbidden, deleted))
    for method, op_id in (('put', f'update_{slug}'), ('patch', f'patch_{slug}')):
        paths[item][method] = operation(
            op_id,
            f'Update a {slug} record (partial: the fields sent)',
            slug,
            {200: json_response('The updated record', record, (), ['Preference-Applied'])},
            {404, 409, *forbidden},
            body=ref(f'{slug}_update'),
            parameters=[HANDLING_PARAM],
        )
    paths[item]['delete'] = operation(
        f'delete_{slug}',
        f'Delete a {slug} record ({deleted} it)',
        slug,
        {200: json_response('The record as it was left', record)},
        {404, 409, *forbidden},
    )
    if spec.delete in ('archive', 'disable'):
        paths[f'{item}/restore'] = {
            'parameters': [ID_PARAM],
            'post': operation(
                f'restore_{slug}',
                f'Restore an archived or disabled {slug} record',
                slug,
                {200: json_response('The restored record', record)},
                {404, 409, *forbidden},
            ),
        }
    if slug == webhooks_module.RESOURCE:
        webhook_operations(paths, record)
    return paths


def merge_paths():
    """`POST /api/merge_contacts` and `/api/merge_companies`: a merge, or with dry_run what it would do."""
    an_id = {'type': 'string', 'minLength': 1}
    dry_run = {'type': 'boolean', 'description': 'answer what the merge would do, and write nothing'}
    paths = {}
    for slug, noun in (('contacts', 'contact'), ('companies', 'company')):
        body = {
            'anyOf': [
                {
                    'type': 'object',
                    'required': ['source_ids', 'target_id'],
                    'properties': {
                        'source_ids': {'type': 'array', 'minItems': 1, 'maxItems': MAX_MERGE_SOURCES, 'items': an_id},
                        'target_id': an_id,
                        'dry_run': dry_run,
                    },
                },
                {
                    'type': 'object',
                    'required': ['loserId', 'winnerId'],
                    'description': "Atomic CRM's shape",
                    'properties': {'loserId': an_id, 'winnerId': an_id, 'dry_run': dry_run},
                },
            ]
        }
        preview = {
            'type': 'object',
            'required': ['dry_run', 'target', 'moves', 'deleted'],
            'properties': {
                'dry_run': {'const': True},
                'target': ref(slug),
                'moves': {
                    'type': 'object',
                    'description': 'per resource, how many of its records would point at '
                    'the target instead of a source',
                    'additionalProperties': {'type': 'integer', 'minimum': 0},
                },
                'deleted': {'type': 'array', 'items': {'type': 'string'}},
            },
        }
        paths[f'/merge_{slug}'] = {
            'post': operation(
                f'merge_{slug}',
                f'Merge {slug}: the sources fold into the target, then are deleted',
                slug,
                {
                    200: json_response(
                        f'The merged target {noun}; with dry_run, what the merge would do',
                        {'anyOf': [ref(slug), preview]},
                    )
                },
                {404, 409},
                body=body,
                parameters=[HANDLING_PARAM],
                idempotent=True,
            )
        }
    return paths


def duplicate_paths(limits):
    """`/api/{contacts|companies}/duplicates` (GET the groups, POST an unsaved record) and `.../{id}/duplicates`."""
    limits = limits or query.Limits()
    page = range_param(limits, 'entries')
    paths = {}
    for slug, matcher in duplicates.MATCHERS.items():
        score = {'type': 'number', 'minimum': 0, 'maximum': 1}
        reasons = {'type': 'array', 'minItems': 1, 'items': {'type': 'string', 'enum': [r for r, _ in matcher.reasons]}}
        group = {
            'type': 'object',
            'required': ['ids', 'score', 'reasons'],
            'properties': {
                'ids': {'type': 'array', 'minItems': 2, 'items': {'type': 'string'}},
                'score': score,
                'reasons': reasons,
            },
        }
        candidate = {
            'type': 'object',
            'required': ['record', 'score', 'reasons'],
            'properties': {'record': ref(slug), 'score': score, 'reasons': reasons},
        }
        candidates = json_response(
            'The candidates, best first', {'type': 'array', 'items': candidate}, ['Content-Range']
        )
        listing = {
            'get': operation(
                f'list_{slug}_duplicates',
                f'Groups of probable duplicate {slug}, best first',
                slug,
                {
                    200: json_response(
                        'One page of groups; Content-Range counts groups',
                        {'type': 'array', 'items': group},
                        ['Content-Range'],
                    )
                },
                set(),
                parameters=[page],
            ),
            'post': operation(
                f'find_{slug}_duplicates',
                f'The probable duplicates of an unsaved {slug} record (nothing is written)',
                slug,
                {200: candidates},
                set(),
                body=ref(f'{slug}_update'),
                parameters=[page, HANDLING_PARAM],
            ),
        }
        one = {
            'parameters': [ID_PARAM],
            'get': operation(
                f'get_{slug}_duplicates',
                f'The probable duplicates of one {slug} record',
                slug,
                {200: candidates},
                {404},
                parameters=[page],
            ),
        }
        for item in (listing, one):
            item['head'] = head_operation(item['get'])
        paths[f'/{slug}/duplicates'] = listing
        paths[f'/{slug}/{{id}}/duplicates'] = one
    return paths


def change_schema():
    """A change as the history and the feed answer it: every field always present."""
    schemas = {'text': {'type': 'string'}, 'integer': {'type': 'integer', 'minimum': 1}, 'timestamp': TIMESTAMP}
    properties = {}
    for name, kind, _, nullable, meaning in history.FIELDS:
        schema = dict(schemas.get(kind, {}))
        if nullable and 'type' in schema:
            schema['type'] = [schema['type'], 'null']
        properties[name] = {**schema, 'description': meaning}
    properties['operation']['enum'] = list(history.OPERATIONS)
    properties['actor']['enum'] = ['user', 'system']
    return {'type': 'object', 'required': [name for name, *_ in history.FIELDS], 'properties': properties}


def history_path(op_id, summary, tag, params, limits):
    return {
        'parameters': params,
        'get': operation(
            op_id,
            summary,
            tag,
            {
                200: json_response(
                    'One page of changes, newest first',
                    {'type': 'array', 'items': ref(history.FEED)},
                    ['Content-Range'],
                )
            },
            {404},
            parameters=[range_param(limits)],
        ),
    }


def feed_paths(limits, slugs):
    """The organization's change feed, the history of a record of any resource (`slugs`), and a custom object
    definition's history.

    NOTE: one path serves the histories of every resource, not one path each: it is one operation, and a
    document a third longer would take the contract tests (which fuzz every operation) a third longer.
    """
    slug_param = {'name': 'slug', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}
    resource_param = {
        'name': 'resource',
        'in': 'path',
        'required': True,
        'schema': {'type': 'string', 'enum': list(slugs)},
    }
    return {
        '/{resource}/{id}/history': history_path(
            'history',
            "The changes of one record, newest first (archived and deleted ones too; a summary's are its resource's)",
            history.FEED,
            [resource_param, ID_PARAM],
            limits,
        ),
        '/changes': {
            'get': operation(
                'list_changes',
                "The organization's changes in seq order, after the seq `after`: poll with the "
                '`X-Next-After` of each answer to see every change exactly once',
                history.FEED,
                {
                    200: json_response(
                        'The changes, oldest first', {'type': 'array', 'items': ref(history.FEED)}, ['X-Next-After']
                    )
                },
                set(),
                parameters=[
                    {
                        'name': 'after',
                        'in': 'query',
                        'required': False,
                        'schema': {'type': 'integer', 'minimum': 0, 'maximum': INT64_MAX, 'default': 0},
                        'description': 'the last seq already seen',
                    },
                    {
                        'name': 'limit',
                        'in': 'query',
                        'required': False,
                        'schema': {
                            'type': 'integer',
                            'minimum': 1,
                            'maximum': history.MAX_LIMIT,
                            'default': history.DEFAULT_LIMIT,
                        },
                    },
                    {
                        'name': 'resource',
                        'in': 'query',
                        'required': False,
                        'schema': {'type': 'string'},
                        'description': 'only the changes of this resource (custom_objects: the definitions)',
                    },
                ],
            )
        },
        '/custom_objects/{slug}/history': history_path(
            'history_custom_object', "A definition's changes, newest first", 'custom_objects', [slug_param], limits
        ),
    }


def fixed_paths(limits=None):
    """The routes that are not one resource's: merges, duplicates, schema, custom object definitions, the docs."""
    slug_param = {'name': 'slug', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}
    definition = ref('CustomObject')
    admin = {403, 409}
    return {
        **merge_paths(),
        **duplicate_paths(limits),
        '/me': {
            'get': operation(
                'me',
                'The caller: its CRM user (no token material), its organization, whether it is an administrator',
                'me',
                {
                    200: json_response(
                        'The caller',
                        {
                            'type': 'object',
                            'required': ['user', 'organization', 'administrator'],
                            'properties': {
                                'user': ref('crm_users'),
                                'organization': {
                                    'type': 'object',
                                    'required': ['id', 'name'],
                                    'properties': {'id': {'type': 'string'}, 'name': {'type': 'string'}},
                                },
                                'administrator': {'type': 'boolean'},
                            },
                        },
                    )
                },
                set(),
            )
        },
        '/schema': {
            'get': operation(
                'list_schema',
                'The resources this caller may use',
                'schema',
                {200: json_response('One entry per resource', {'type': 'array', 'items': ref('ResourceSummary')})},
                set(),
            )
        },
        '/schema/{table}': {
            'parameters': [{'name': 'table', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}],
            'get': operation(
                'get_schema',
                "One resource's columns and relations",
                'schema',
                {200: json_response('The resource, its columns and relations', ref('ResourceSchema'))},
                {404},
            ),
        },
        '/custom_objects': {
            'get': operation(
                'list_custom_objects',
                "The organization's custom object definitions",
                'custom_objects',
                {
                    200: json_response(
                        'Every definition, archived ones too', {'type': 'array', 'items': definition}, ['Content-Range']
                    )
                },
                set(),
            ),
            'post': operation(
                'create_custom_object',
                'Define a custom object (administrators)',
                'custom_objects',
                {201: json_response('The definition', definition, ['Location'])},
                admin,
                body={**CUSTOM_OBJECT_BODY, 'required': ['slug']},
            ),
        },
        '/custom_objects/{slug}': {
            'parameters': [slug_param],
            'get': operation(
                'get_custom_object',
                'One definition',
                'custom_objects',
                {200: json_response('The definition', definition)},
                {404},
            ),
            'put': operation(
                'update_custom_object',
                'Add fields or change labels (administrators)',
                'custom_objects',
                {200: json_response('The definition', definition)},
                {404, *admin},
                body=CUSTOM_OBJECT_BODY,
            ),
            'delete': operation(
                'archive_custom_object',
                'Archive a definition (records are kept)',
                'custom_objects',
                {200: json_response('The definition', definition)},
                {404, *admin},
            ),
        },
        '/custom_objects/{slug}/restore': {
            'parameters': [slug_param],
            'post': operation(
                'restore_custom_object',
                'Restore an archived definition',
                'custom_objects',
                {200: json_response('The definition', definition)},
                {404, *admin},
            ),
        },
        '/custom_objects/{slug}/fields/{name}': {
            'parameters': [slug_param, {'name': 'name', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}],
            'delete': operation(
                'drop_custom_field',
                'Drop one field and its column',
                'custom_objects',
                {
                    200: json_response(
                        'What was dropped',
                        {
                            'type': 'object',
                            'required': ['dropped', 'custom_object'],
                            'properties': {'dropped': ref('CustomField'), 'custom_object': definition},
                        },
                    )
                },
                {404, *admin},
            ),
        },
        '/openapi.json': {
            'get': operation(
                'openapi',
                "This document; with a token, the caller's organization's custom objects too",
                'docs',
                {200: json_response('An OpenAPI 3.1 document', {'type': 'object', 'required': ['openapi', 'paths']})},
                {401},
                public=True,
            )
        },
        '/docs': {
            'get': {
                'operationId': 'docs',
                'summary': 'A page rendering this document for people',
                'tags': ['docs'],
                'security': [{}],
                'responses': {
                    '200': {'description': 'An HTML page', 'content': {'text/html': {'schema': {'type': 'string'}}}}
                },
            }
        },
        '/docs/assets/{name}': {
            'parameters': [
                {
                    'name': 'name',
                    'in': 'path',
                    'required': True,
                    'schema': {'type': 'string', 'enum': list(Docs.ASSETS)},
                }
            ],
            'get': {
                'operationId': 'docs_asset',
                'summary': "The docs page's scripts and styles",
                'tags': ['docs'],
                'security': [{}],
                'responses': {
                    '200': {
                        'description': 'The asset',
                        'content': {
                            media.split(';')[0]: {'schema': {'type': 'string'}} for media in (Docs.JS, Docs.CSS)
                        },
                    },
                    '404': problem_response(404),
                },
            },
        },
    }


def health_paths(root_path):
    """`/healthz` (`/health`) and `/readyz`: beside the API, not under it (their own `servers`), public."""
    up = {'type': 'object', 'required': ['status'], 'properties': {'status': {'type': 'string', 'enum': ['ok']}}}
    ready = {
        'type': 'object',
        'required': ['status', 'database'],
        'properties': {
            'status': {'type': 'string', 'enum': ['ready']},
            'database': {'type': 'string'},
            'replicas': {'type': 'array', 'description': "each read replica's lag", 'items': {'type': 'object'}},
        },
    }
    health = (
        ('/healthz', 'The process answers (no token needed)', 'Up', up),
        ('/health', 'The process answers (as /healthz, as other clients spell it)', 'Up', up),
        ('/readyz', 'The process and its database answer (503 otherwise)', 'Ready', ready),
    )
    paths = {
        path: {'get': operation(path[1:], summary, 'health', {200: json_response(title, body)}, set(), public=True)}
        for path, summary, title, body in health
    }
    for item in paths.values():
        item['head'] = head_operation(item['get'])
        item['servers'] = [{'url': root_path or '/'}]
    return paths


def resource_schemas(info, relations, writable_slugs, fields):
    """components.schemas of one resource: its record, its partial update, its embedded form."""
    shapes = {}
    if info.slug == rules.RULES:
        shapes = rule_shapes(writable_slugs, fields)
    elif info.slug == webhooks_module.RESOURCE:
        shapes = webhook_shapes()
    record = record_schema(info, shapes)
    schemas = {info.slug: record}
    if relations:
        schemas[f'{info.slug}_embedded'] = embedded_schema(record, relations)
    if not info.spec.read_only:
        schemas[f'{info.slug}_update'] = update_schema(info, shapes)
    if info.slug == webhooks_module.RESOURCE:
        schemas['webhooks_with_secret'] = {
            'allOf': [ref(info.slug), {'type': 'object', 'required': ['secret'], 'properties': {'secret': SECRET}}]
        }
    return schemas


def build_document(catalog, principal=None, limits=None, root_path='', store=None):
    """The OpenAPI 3.1 document for `principal` (None: the built-in resources only).

    Paths are relative to the one server, `<mount point>/api` (`root_path`: the request's SCRIPT_NAME, which
    gunicorn sets from the proxy's header), so the document stays true wherever the app is mounted.
    """
    limits = limits or query.Limits()
    schemas = {
        'Problem': PROBLEM_SCHEMA,
        'ResourceSummary': RESOURCE_SUMMARY,
        'ResourceSchema': {
            **RESOURCE_SUMMARY,
            'required': [*RESOURCE_SUMMARY['required'], 'columns', 'relations'],
            'properties': {
                **RESOURCE_SUMMARY['properties'],
                'columns': {'type': 'array', 'items': ref('Column')},
                'relations': {'type': 'array', 'items': ref('Relation')},
            },
        },
        'Column': COLUMN_DESCRIPTION,
        'Relation': RELATION_DESCRIPTION,
        'CustomField': FIELD_DEFINITION,
        'CustomObject': CUSTOM_OBJECT,
        history.FEED: change_schema(),
    }
    paths, tags, slugs = {}, [], catalog.visible(principal)
    tables = {slug: catalog.resolve(slug, principal) for slug in slugs}
    writable = [slug for slug, info in tables.items() if not info.spec.read_only]
    fields = {n for slug in writable for n in tables[slug].columns if n != SCOPE}
    for slug, info in tables.items():
        relations = relations_module.relations_of(info, tables)
        schemas.update(resource_schemas(info, relations, writable, fields))
        unique = [] if info.spec.read_only or store is None else sorted(store.unique_columns(info))
        paths.update(resource_paths(info, limits, unique, relations))
        custom = slug not in catalog.tables
        tags.append(
            {
                'name': slug,
                'description': ('custom object' if custom else 'built-in resource')
                + (', read-only' if info.spec.read_only else ''),
            }
        )
    paths.update(fixed_paths(limits))
    paths.update(feed_paths(limits, slugs))
    # NOTE: every GET route answers HEAD too (app.App); the resources' own HEADs are made with their GETs.
    for item in paths.values():
        if 'get' in item and 'head' not in item:
            item['head'] = head_operation(item['get'])
    paths.update(health_paths(root_path))
    tags += [
        {'name': 'custom_objects'},
        {'name': history.FEED},
        {'name': 'schema'},
        {'name': 'me'},
        {'name': 'docs'},
        {'name': 'health'},
    ]
    return {
        'openapi': OPENAPI_VERSION,
        'info': {
            'title': 'crmapi',
            'version': __version__,
            'description': 'A CRM REST API. Every request carries `Authorization: Bearer <token>`; '
            'errors are `application/problem+json`; lists page with `range` and answer '
            '`Content-Range`. Query parameters such as `filter` hold JSON, URL-encoded. With '
            'CRMAPI_RATE_LIMIT set, every answer to a token carries its `RateLimit-*` fields.'
            + ('' if principal else " Send a token to see your organization's custom objects."),
        },
        'servers': [{'url': f'{root_path}/api', 'description': 'this API, where it is mounted'}],
        'security': [{'bearerAuth': []}],
        'tags': tags,
        'paths': paths,
        'components': {
            'schemas': schemas,
            'responses': problem_responses(),
            'headers': {name: HEADERS[name] for name in HEADERS},
            'securitySchemes': {
                'bearerAuth': {
                    'type': 'http',
                    'scheme': 'bearer',
                    'description': 'an API token (`crmapi create-token`)',
                }
            },
        },
    }


class OpenAPI:
    """`GET /api/openapi.json`: the document for the caller (anonymous: the built-ins)."""

    def __init__(self, catalog, limits=None, store=None):
        self.catalog = catalog
        self.limits = limits
        self.store = store

    def on_get(self, req, resp):
        document = build_document(self.catalog, req.context.principal, self.limits, req.root_path, self.store)
        resp.content_type = 'application/json'
        resp.data = orjson.dumps(document)
        # NOTE: the answer depends on the token, so shared caches must keep them apart.
        resp.set_header('Vary', 'Authorization')
        resp.cache_control = ['private', 'no-cache']


class Docs:
    """`GET /api/docs`: Swagger UI over the document, to read and try every operation; its assets too.

    NOTE: the viewer is vendored (crmapi/static/swagger-ui, see its VERSION) and served under
    /api/docs/assets/, so the page works offline and its CSP lets scripts come from this origin only.
    """

    JS, CSS = 'text/javascript; charset=utf-8', 'text/css; charset=utf-8'
    # The name under /api/docs/assets/: (the file in the package, its content type). Nothing else is served.
    ASSETS = {
        'swagger-ui-bundle.js': ('static/swagger-ui/swagger-ui-bundle.js', JS),
        'swagger-ui.css': ('static/swagger-ui/swagger-ui.css', CSS),
        'docs.js': ('static/docs.js', JS),
    }
    ASSET_REF = re.compile(rb'\$assets/([\w.-]+)')
    # NOTE: Swagger UI sets styles through the DOM (allowed) and shows its icons as data: images;
    # it calls this origin only (the document, and the operations a reader sends).
    CSP = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    # NOTE: the page names each asset with its digest (?v=), so a new release is a new URL: cache for a year.
    ASSET_CACHE = ('public', 'max-age=31536000', 'immutable')

    def __init__(self):
        self.page = None
        self.assets = {}

    def asset(self, name):
        """(bytes, content type, digest) of one asset, read from the package on first use.

        NOTE: read on first use, so a packaging slip costs the page, never the whole app.
        """
        if name not in self.assets:
            path, content_type = self.ASSETS[name]
            data = resources.files('crmapi').joinpath(path).read_bytes()
            self.assets[name] = (data, content_type, hashlib.sha256(data).hexdigest()[:16])
        return self.assets[name]

    def on_get(self, req, resp):
        if self.page is None:
            self.page = resources.files('crmapi').joinpath('docs.html').read_bytes()
        # NOTE: relative URLs, so a proxy may mount the app anywhere. They resolve against the page URL's
        # last segment: `/api/docs` needs `docs/assets/`, `/api/docs/` (the same route) `assets/`.
        base = 'assets/' if req.env.get('PATH_INFO', '').endswith('/') else 'docs/assets/'

        def url(match):
            name = match.group(1).decode()
            return f'{base}{name}?v={self.asset(name)[2]}'.encode()

        resp.content_type = 'text/html; charset=utf-8'
        resp.data = self.ASSET_REF.sub(url, self.page)
        resp.cache_control = ['no-cache']
        resp.set_header('Content-Security-Policy', self.CSP)
        resp.set_header('X-Content-Type-Options', 'nosniff')
        resp.set_header('Referrer-Policy', 'no-referrer')

    def on_get_asset(self, req, resp, name):
        if name not in self.ASSETS:
            raise NotFound('The docs page has no such asset')
        data, content_type, _ = self.asset(name)
        resp.content_type = content_type
        resp.data = data
        resp.cache_control = self.ASSET_CACHE
        resp.set_header('X-Content-Type-Options', 'nosniff')
