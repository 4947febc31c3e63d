"""The OpenAPI 3.1 document, generated from the live schema, and the page that renders it.

Nothing here is written by hand per resource: paths, parameters, bodies and records come from the
catalog (the same whitelists the API enforces), so the document cannot drift from the API. With a
principal it also describes that organization's custom objects; without one, the built-ins only.
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
from .errors import NotFound
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
    503: 'The database is unavailable or too slow; retry later',
}

ITEMS_NAMED = {'type': 'array', 'items': {'type': 'integer', 'minimum': 0},
               'description': 'in a batch, the items a problem is about together (a unique value sent twice)'}

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
            'type': 'array', 'description': 'every problem of the body (`field` and `detail` are the first one\'s); in a batch each names its item (`index`)',
            'items': {'type': 'object', 'required': ['detail'], 'properties': {
                'index': {'type': 'integer', 'minimum': 0}, 'field': {'type': 'string'},
                'detail': {'type': 'string'}, 'items': ITEMS_NAMED}},
        },
        'limit': {'type': 'integer', 'description': 'the most records one batch may hold'},
    },
}

HEADERS = {
    'Content-Range': {
        'description': 'First and last index returned and the total number of matches, '
                       '`contacts 0-24/142`; an empty page is `contacts */142`.',
        'schema': {'type': 'string', 'pattern': r'^[a-z][a-z0-9_]* (\*|[0-9]+-[0-9]+)/[0-9]+$'},
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
    'WWW-Authenticate': {'schema': {'type': 'string'}},
    'Retry-After': {'schema': {'type': 'string'}},
    'Allow': {'schema': {'type': 'string'}},
}

TIMESTAMP = {'type': 'string', 'format': 'date-time'}
COLUMN_DESCRIPTION = {
    'type': 'object',
    'required': ['name', 'type', 'kind', 'nullable', 'default', 'writable', 'required', 'filterable',
                 'sortable', 'references'],
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
    },
}
RELATION_DESCRIPTION = {
    'type': 'object',
    'required': ['name', 'kind', 'resource', 'field', 'many'],
    'properties': {
        'name': {'type': 'string', 'description': 'what `embed` names it, and the key it is embedded under'},
        'kind': {'type': 'string', 'enum': ['forward', 'reverse'],
                 'description': 'forward: the record(s) a reference names; reverse: the records whose reference '
                                'names this one'},
        'resource': {'type': 'string', 'description': 'the resource embedded'},
        'field': {'type': 'string', 'description': 'the reference field (forward: of this resource; reverse: of '
                                                   'the embedded resource)'},
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
        'type': {'type': 'string',
                 'enum': ['text', 'integer', 'number', 'boolean', 'date', 'datetime', 'json', 'reference']},
        'required': {'type': 'boolean'},
        'target': {'type': 'string', 'description': 'the resource a reference field points at'},
        'label': {'type': 'string'},
        'unique': {'type': 'boolean', 'description': 'one record per value in the organization: a column '
                                                     'upserts (`on_conflict`) can match on; not for json fields'},
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


def value_schema(column, nullable):
    """The JSON Schema of one column's values; `nullable` adds null to the type."""
    schema = dict(KIND_SCHEMAS[column.kind])
    if column.kind == 'number' and column.precision:
        precision, scale = column.precision
        bound = 10 ** (precision - scale)
        schema.update(exclusiveMinimum=-bound, exclusiveMaximum=bound,
                      description=f'exact decimal, at most {scale} decimal places')
    if column.references:
        schema['description'] = (f'id of a {column.references} record' if column.kind != 'array'
                                 else f'ids of {column.references} records')
    if nullable and 'type' in schema:
        schema['type'] = [schema['type'], 'null']
    return schema


def record_schema(info):
    """A record as the API returns it: every column but the organization, always present."""
    names = [n for n in info.columns if n != 'organization_id']
    return {
        'type': 'object',
        'required': names,
        'properties': {n: value_schema(info.columns[n], info.columns[n].nullable) for n in names},
    }


def body_schema(info, creating):
    """A write body: the writable fields (camelCase twins accepted, read-only fields ignored).

    NOTE: not `additionalProperties: false`: the camelCase spellings and the fields a record is read
    with (`id`, `created_at`, a summary's `nb_tasks`) are accepted too.
    """
    writable = info.writable
    schema = {
        'type': 'object',
        'description': 'Writable fields (camelCase spellings accepted). The fields a record is read with but '
                       'cannot write (`id`, timestamps, computed columns) are ignored; any other field is a 400 '
                       'unless the request sends `Prefer: handling=lenient`.',
        'properties': {n: value_schema(c, c.nullable) for n, c in writable.items()},
    }
    required = [n for n, c in writable.items() if c.required]
    if creating and required:
        schema['required'] = required
    return schema


def json_param(name, schema, description):
    """A query parameter carrying JSON (`range=[0,24]`), URL-encoded as usual."""
    return {'name': name, 'in': 'query', 'required': False, 'description': description,
            'content': {'application/json': {'schema': schema}}}


def embedded_schema(info, relations):
    """A record as a list or a get answers it with `embed`: forward relations add the record(s) they name
    (in place of the ids where the relation is named as its field), reverse ones {"total", "items"}."""
    schema = record_schema(info)
    properties = dict(schema['properties'])
    for relation in relations.values():
        one = {'anyOf': [ref(relation.target.slug), {'type': 'null'}]}
        if relation.reverse:
            embedded = {'type': 'object', 'required': ['total', 'items'], 'properties': {
                'total': {'type': 'integer', 'minimum': 0},
                'items': {'type': 'array', 'maxItems': query.MAX_EMBED_LIMIT, 'items': ref(relation.target.slug)}}}
        else:
            embedded = {'type': 'array', 'items': one} if relation.many else one
        if relation.replaces:
            embedded = {'anyOf': [properties[relation.name], embedded]}
        properties[relation.name] = embedded
    return {**schema, 'properties': properties}


def dotted_fields(relations):
    """`company.name` -> the target's Column, for every forward relation to a single record."""
    return {f'{r.name}.{n}': c for r in relations.values() if not r.reverse and not r.many
            for n, c in r.target.columns.items() if n != 'organization_id'}


def embed_parameters(relations):
    """`embed` (an enum of the resource's relations) and `embed_limit`; none for a resource without relations."""
    if not relations:
        return []
    return [
        json_param('embed', {'type': 'array', 'uniqueItems': True, 'items': {'type': 'string', 'enum': list(relations)}},
                   'relations to embed in each record, as a JSON array (`["company","tags"]`) or one bare name '
                   '(`company`). Forward relations embed the record(s) a reference names (archived ones too; a missing '
                   'one is null) under the relation\'s name; reverse ones embed {"total", "items"}: the newest live '
                   'records naming this one. Exports refuse it.'),
        {'name': 'embed_limit', 'in': 'query', 'required': False,
         'schema': {'type': 'integer', 'minimum': 0, 'maximum': query.MAX_EMBED_LIMIT},
         'description': f'records of each reverse relation embedded per record (default {query.EMBED_LIMIT}); '
                        'needs `embed`'},
    ]


def range_param(limits):
    return json_param('range', {'type': 'array', 'items': {'type': 'integer', 'minimum': 0}, 'minItems': 2,
                                'maxItems': 2},
                      f'[start, end], inclusive; default [0,24], at most {limits.max_page} rows')


def list_parameters(info, limits, relations=None):
    relations = relations or {}
    dotted = dotted_fields(relations)
    names = [n for n in info.columns if n != 'organization_id']
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
    return [
        range_param(limits),
        json_param('filter', {'type': 'object', 'properties': equality, 'additionalProperties': False},
                   'equality per field; an array means IN, null means IS NULL; `q` searches the text columns'),
        json_param('filters', {
            'type': 'array', 'maxItems': limits.max_filters,
            'items': {'type': 'object', 'required': ['field', 'op'], 'additionalProperties': False,
                      'properties': {'field': {'type': 'string', 'enum': list(columns)},
                                     'op': {'type': 'string', 'enum': [*query.OPERATORS, *query.ALIASES],
                                            'description': 'aliases: ' + ', '.join(
                                                f'`{a}` = `{op}`' for a, op in query.ALIASES.items())},
                                     'value': {},
                                     'logicalOp': {'type': 'string', 'enum': ['and', 'or']}}}},
            '[{"field","op","value","logicalOp"}], folded left to right; `relation.field` (`company.name`) filters '
            'by a field of the record a reference names, as if all null where there is none'),
        {'name': 'sort', 'in': 'query', 'required': False, 'schema': {'type': 'string'},
         'description': 'a field name (with `order`), or react-admin\'s ["field","ASC"|"DESC"]'},
        {'name': 'order', 'in': 'query', 'required': False, 'schema': {'type': 'string', 'enum': ['ASC', 'DESC']}},
        json_param('sorts', {
            'type': 'array', 'maxItems': limits.max_filters,
            'items': {'type': 'object', 'required': ['field'], 'additionalProperties': False,
                      'properties': {'field': {'type': 'string', 'enum': sortable},
                                     'order': {'type': 'string', 'enum': ['ASC', 'DESC']}}}},
            'several sorts, [{"field","order"}]'),
        {'name': 'Range', 'in': 'header', 'required': False,
         'schema': {'type': 'string', 'pattern': f'^{info.slug}=[0-9]{{1,19}}-[0-9]{{1,19}}$'},
         'description': f"react-admin's spelling of `range`: `{info.slug}=0-24`; the `range` parameter wins"},
        *embed_parameters(relations),
    ]


def problem_response(status):
    response = {'description': STATUS_TEXT[status],
                'content': {PROBLEM_JSON: {'schema': ref('Problem')}}}
    extra = {401: 'WWW-Authenticate', 405: 'Allow', 503: 'Retry-After'}.get(status)
    if extra:
        response['headers'] = {extra: HEADERS[extra]}
    return response


def json_response(description, schema, headers=()):
    response = {'description': description, 'content': {'application/json': {'schema': schema}}}
    if headers:
        response['headers'] = {h: {**HEADERS[h], 'required': True} for h in headers}
    return response


def operation(op_id, summary, tag, ok, errors, body=None, parameters=None, public=False):
    responses = {str(code): resp for code, resp in ok.items()}
    codes = {400, 503, *errors} if public else {400, 401, 503, *errors}
    if body is not None:
        codes |= {413, 415}
    responses.update({str(code): problem_response(code) for code in sorted(codes)})
    op = {'operationId': op_id, 'summary': summary, 'tags': [tag], 'responses': responses}
    if parameters:
        op['parameters'] = parameters
    if body is not None:
        op['requestBody'] = {'required': True, 'content': {'application/json': {'schema': body}}}
    if public:
        op['security'] = [{}, {'bearerAuth': []}]
    return op


ID_PARAM = {'name': 'id', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}
HANDLING_PARAM = {
    'name': 'Prefer', 'in': 'header', 'required': False,
    'schema': {'type': 'string', 'enum': ['handling=strict', 'handling=lenient']},
    'description': 'RFC 7240: `handling=strict` (the default) refuses a body field the resource does not have; '
                   '`handling=lenient` ignores it (answered with `Preference-Applied`)',
}


def head_operation(get):
    """HEAD: the GET's parameters, status codes and headers, without a body."""
    responses = {code: {k: v for k, v in response.items() if k != 'content'}
                 for code, response in get['responses'].items()}
    return {**get, 'operationId': f"head_{get['operationId']}", 'summary': f"{get['summary']}: headers only",
            'responses': responses}


def one_or_many(schema):
    return {'anyOf': [schema, {'type': 'array', 'minItems': 1, 'maxItems': MAX_BATCH, 'items': schema}]}


def batch_operations(info, record, forbidden, deleted, unique):
    """POST (one record or a batch, or an upsert), PATCH and DELETE on a resource's collection."""
    slug = info.slug
    records = {'type': 'array', 'items': record}
    on_conflict = {'name': 'on_conflict', 'in': 'query', 'required': False,
                   'schema': {'type': 'string', 'enum': unique} if unique else {'type': 'string'},
                   'description': 'upsert: a record of the organization (archived ones too, which stay archived) '
                                  'holding the same value in this unique column is updated with the fields sent'}
    created = json_response('The created record, or the batch of created records, in order',
                            one_or_many(record), ['Location'])
    created['headers']['Location']['required'] = False
    created['headers']['X-Upsert-Result'] = HEADERS['X-Upsert-Result']
    updated = json_response('An upsert that updated at least one record: the record(s), in order',
                            one_or_many(record), ['X-Upsert-Result'])
    with_id = {'allOf': [ref(f'{slug}_update'), {'type': 'object', 'required': ['id'],
                                                   'properties': {'id': {'type': 'string', 'minLength': 1}}}]}
    ids = {'type': 'object', 'required': ['id'], 'additionalProperties': False, 'properties': {'id': {
        'type': 'array', 'minItems': 1, 'maxItems': MAX_BATCH, 'items': {'type': 'string', 'minLength': 1}}}}
    id_filter = {**json_param('filter', ids, f'the ids of the records, at most {MAX_BATCH}'), 'required': True}
    return {
        'post': operation(
            f'create_{slug}', f'Create a {slug} record, or a batch of up to {MAX_BATCH} (an array: all or none); '
            'with on_conflict, upsert them', slug, {201: created, 200: updated},
            {404, 409, *forbidden}, body=one_or_many(ref(f'{slug}_create')), parameters=[on_conflict, HANDLING_PARAM]),
        'patch': operation(
            f'update_{slug}_batch', f'Update a batch of {slug} records, each item with its id (all or none)', slug,
            {200: json_response('The updated records, in order', records)}, {404, 409, *forbidden},
            body={'type': 'array', 'minItems': 1, 'maxItems': MAX_BATCH, 'items': with_id}, parameters=[HANDLING_PARAM]),
        'delete': operation(
            f'delete_{slug}_batch', f'Delete a batch of {slug} records ({deleted} them; all or none)', slug,
            {200: json_response('The records as they were left, in order', records)}, {404, 409, *forbidden},
            parameters=[id_filter]),
    }


def resource_paths(info, limits, unique=(), relations=None):
    """The paths of one resource: list/create, get/update/delete, restore (where it applies)."""
    slug, spec = info.slug, info.spec
    record = ref(f'{slug}')
    read = ref(f'{slug}_embedded') if relations else record
    forbidden = {403} if spec.admin_writes else set()
    paths = {
        f'/api/{slug}': {
            'get': operation(f'list_{slug}', f'List {slug}', slug,
                             {200: json_response('One page of records', {'type': 'array', 'items': read},
                                                 ['Content-Range'])},
                             {404}, parameters=list_parameters(info, limits, relations)),
        },
        f'/api/{slug}/{{id}}': {
            'parameters': [ID_PARAM],
            'get': operation(f'get_{slug}', f'Get one {slug} record (archived ones too)', slug,
                             {200: json_response('The record', read)}, {404},
                             parameters=embed_parameters(relations)),
        },
    }
    for item in paths.values():
        item['head'] = head_operation(item['get'])
    if spec.read_only:
        return paths
    deleted = {'archive': 'archives', 'disable': 'disables', 'hard': 'deletes'}[spec.delete]
    paths[f'/api/{slug}'].update(batch_operations(info, record, forbidden, deleted, unique))
    for method, op_id in (('put', f'update_{slug}'), ('patch', f'patch_{slug}')):
        paths[f'/api/{slug}/{{id}}'][method] = operation(
            op_id, f'Update a {slug} record (partial: the fields sent)', slug,
            {200: json_response('The updated record', record)}, {404, 409, *forbidden}, body=ref(f'{slug}_update'),
            parameters=[HANDLING_PARAM])
    paths[f'/api/{slug}/{{id}}']['delete'] = operation(
        f'delete_{slug}', f'Delete a {slug} record ({deleted} it)', slug,
        {200: json_response('The record as it was left', record)}, {404, 409, *forbidden})
    if spec.delete in ('archive', 'disable'):
        paths[f'/api/{slug}/{{id}}/restore'] = {
            'parameters': [ID_PARAM],
            'post': operation(f'restore_{slug}', f'Restore an archived or disabled {slug} record', slug,
                              {200: json_response('The restored record', record)}, {404, 409, *forbidden}),
        }
    return paths


def merge_paths():
    """`POST /api/merge_contacts` and `/api/merge_companies`: a merge, or with dry_run what it would do."""
    an_id = {'type': 'string', 'minLength': 1}
    dry_run = {'type': 'boolean', 'description': 'answer what the merge would do, and write nothing'}
    paths = {}
    for slug, noun in (('contacts', 'contact'), ('companies', 'company')):
        body = {'anyOf': [
            {'type': 'object', 'required': ['source_ids', 'target_id'], 'properties': {
                'source_ids': {'type': 'array', 'minItems': 1, 'maxItems': MAX_MERGE_SOURCES, 'items': an_id},
                'target_id': an_id, 'dry_run': dry_run}},
            {'type': 'object', 'required': ['loserId', 'winnerId'], 'description': "Atomic CRM's shape",
             'properties': {'loserId': an_id, 'winnerId': an_id, 'dry_run': dry_run}},
        ]}
        preview = {'type': 'object', 'required': ['dry_run', 'target', 'moves', 'deleted'], 'properties': {
            'dry_run': {'const': True}, 'target': ref(slug),
            'moves': {'type': 'object', 'description': 'per resource, how many of its records would point at '
                                                       'the target instead of a source',
                      'additionalProperties': {'type': 'integer', 'minimum': 0}},
            'deleted': {'type': 'array', 'items': {'type': 'string'}}}}
        paths[f'/api/merge_{slug}'] = {'post': operation(
            f'merge_{slug}', f'Merge {slug}: the sources fold into the target, then are deleted', slug,
            {200: json_response(f'The merged target {noun}; with dry_run, what the merge would do',
                                {'anyOf': [ref(slug), preview]})},
            {404, 409}, body=body, parameters=[HANDLING_PARAM])}
    return paths


def duplicate_paths(limits):
    """`/api/{contacts|companies}/duplicates` (GET the groups, POST an unsaved record) and `.../{id}/duplicates`."""
    limits = limits or query.Limits()
    range_param = json_param('range', {'type': 'array', 'items': {'type': 'integer', 'minimum': 0},
                                       'minItems': 2, 'maxItems': 2},
                             f'[start, end], inclusive; default [0,24], at most {limits.max_page} entries')
    paths = {}
    for slug, matcher in duplicates.MATCHERS.items():
        score = {'type': 'number', 'minimum': 0, 'maximum': 1}
        reasons = {'type': 'array', 'minItems': 1, 'items': {'type': 'string', 'enum': [r for r, _ in matcher.reasons]}}
        group = {'type': 'object', 'required': ['ids', 'score', 'reasons'], 'properties': {
            'ids': {'type': 'array', 'minItems': 2, 'items': {'type': 'string'}}, 'score': score, 'reasons': reasons}}
        candidate = {'type': 'object', 'required': ['record', 'score', 'reasons'],
                     'properties': {'record': ref(slug), 'score': score, 'reasons': reasons}}
        candidates = json_response('The candidates, best first', {'type': 'array', 'items': candidate},
                                   ['Content-Range'])
        listing = {
            'get': operation(f'list_{slug}_duplicates', f'Groups of probable duplicate {slug}, best first', slug,
                             {200: json_response('One page of groups; Content-Range counts groups',
                                                 {'type': 'array', 'items': group}, ['Content-Range'])},
                             set(), parameters=[range_param]),
            'post': operation(f'find_{slug}_duplicates', f'The probable duplicates of an unsaved {slug} record '
                              '(nothing is written)', slug, {200: candidates}, set(), body=ref(f'{slug}_update'),
                              parameters=[range_param, HANDLING_PARAM]),
        }
        one = {'parameters': [ID_PARAM],
               'get': operation(f'get_{slug}_duplicates', f'The probable duplicates of one {slug} record', slug,
                                {200: candidates}, {404}, parameters=[range_param])}
        for item in (listing, one):
            item['head'] = head_operation(item['get'])
        paths[f'/api/{slug}/duplicates'] = listing
        paths[f'/api/{slug}/{{id}}/duplicates'] = one
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
    return {'parameters': params, 'get': operation(
        op_id, summary, tag, {200: json_response('One page of changes, newest first',
                                                 {'type': 'array', 'items': ref(history.FEED)}, ['Content-Range'])},
        {404}, parameters=[range_param(limits)])}


def feed_paths(limits, slugs):
    """The organization's change feed, the history of a record of any resource (`slugs`), and a custom object
    definition's history.

    NOTE: one path serves the histories of every resource, not one path each: it is one operation, and a
    document a third longer would take the contract tests (which fuzz every operation) a third longer.
    """
    slug_param = {'name': 'slug', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}
    resource_param = {'name': 'resource', 'in': 'path', 'required': True,
                      'schema': {'type': 'string', 'enum': list(slugs)}}
    return {
        '/api/{resource}/{id}/history': history_path(
            'history', "The changes of one record, newest first (archived and deleted ones too; a summary's are its "
            "resource's)", history.FEED, [resource_param, ID_PARAM], limits),
        '/api/changes': {'get': operation(
            'list_changes', "The organization's changes in seq order, after the seq `after`: poll with the "
            '`X-Next-After` of each answer to see every change exactly once', history.FEED,
            {200: json_response('The changes, oldest first', {'type': 'array', 'items': ref(history.FEED)},
                                ['X-Next-After'])}, set(), parameters=[
                {'name': 'after', 'in': 'query', 'required': False,
                 'schema': {'type': 'integer', 'minimum': 0, 'maximum': INT64_MAX, 'default': 0},
                 'description': 'the last seq already seen'},
                {'name': 'limit', 'in': 'query', 'required': False,
                 'schema': {'type': 'integer', 'minimum': 1, 'maximum': history.MAX_LIMIT,
                            'default': history.DEFAULT_LIMIT}},
                {'name': 'resource', 'in': 'query', 'required': False, 'schema': {'type': 'string'},
                 'description': 'only the changes of this resource (custom_objects: the definitions)'}])},
        '/api/custom_objects/{slug}/history': history_path(
            'history_custom_object', "A definition's changes, newest first", 'custom_objects', [slug_param], limits),
    }


def fixed_paths(limits=None):
    """The routes that are not one resource's: merges, duplicates, schema, custom object definitions, the docs."""
    slug_param = {'name': 'slug', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}
    definition = ref('CustomObject')
    admin = {403, 409}
    return {
        **merge_paths(),
        **duplicate_paths(limits),
        '/api/me': {'get': operation(
            'me', 'The caller: its CRM user (no token material), its organization, whether it is an administrator',
            'me', {200: json_response('The caller', {
                'type': 'object', 'required': ['user', 'organization', 'administrator'], 'properties': {
                    'user': ref('crm_users'),
                    'organization': {'type': 'object', 'required': ['id', 'name'], 'properties': {
                        'id': {'type': 'string'}, 'name': {'type': 'string'}}},
                    'administrator': {'type': 'boolean'}}})}, set())},
        '/health': {'get': operation(
            'health', 'The process answers (as /healthz; no token needed)', 'health',
            {200: json_response('Up', {'type': 'object', 'required': ['status'],
                                       'properties': {'status': {'type': 'string', 'enum': ['ok']}}})},
            set(), public=True)},
        '/api/schema': {'get': operation(
            'list_schema', 'The resources this caller may use', 'schema',
            {200: json_response('One entry per resource', {'type': 'array', 'items': ref('ResourceSummary')})},
            set())},
        '/api/schema/{table}': {
            'parameters': [{'name': 'table', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}],
            'get': operation('get_schema', "One resource's columns and relations", 'schema',
                             {200: json_response('The resource, its columns and relations', ref('ResourceSchema'))},
                             {404})},
        '/api/custom_objects': {
            'get': operation('list_custom_objects', "The organization's custom object definitions",
                             'custom_objects',
                             {200: json_response('Every definition, archived ones too',
                                                 {'type': 'array', 'items': definition}, ['Content-Range'])},
                             set()),
            'post': operation('create_custom_object', 'Define a custom object (administrators)', 'custom_objects',
                              {201: json_response('The definition', definition, ['Location'])}, admin,
                              body={**CUSTOM_OBJECT_BODY, 'required': ['slug']}),
        },
        '/api/custom_objects/{slug}': {
            'parameters': [slug_param],
            'get': operation('get_custom_object', 'One definition', 'custom_objects',
                             {200: json_response('The definition', definition)}, {404}),
            'put': operation('update_custom_object', 'Add fields or change labels (administrators)',
                             'custom_objects', {200: json_response('The definition', definition)},
                             {404, *admin}, body=CUSTOM_OBJECT_BODY),
            'delete': operation('archive_custom_object', 'Archive a definition (records are kept)',
                                'custom_objects', {200: json_response('The definition', definition)},
                                {404, *admin}),
        },
        '/api/custom_objects/{slug}/restore': {
            'parameters': [slug_param],
            'post': operation('restore_custom_object', 'Restore an archived definition', 'custom_objects',
                              {200: json_response('The definition', definition)}, {404, *admin}),
        },
        '/api/custom_objects/{slug}/fields/{name}': {
            'parameters': [slug_param, {'name': 'name', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}],
            'delete': operation('drop_custom_field', 'Drop one field and its column', 'custom_objects',
                                {200: json_response('What was dropped', {
                                    'type': 'object', 'required': ['dropped', 'custom_object'],
                                    'properties': {'dropped': ref('CustomField'), 'custom_object': definition}})},
                                {404, *admin}),
        },
        '/api/openapi.json': {'get': operation(
            'openapi', "This document; with a token, the caller's organization's custom objects too", 'docs',
            {200: json_response('An OpenAPI 3.1 document', {'type': 'object', 'required': ['openapi', 'paths']})},
            {401}, public=True)},
        '/api/docs': {'get': {
            'operationId': 'docs', 'summary': 'A page rendering this document for people', 'tags': ['docs'],
            'security': [{}],
            'responses': {'200': {'description': 'An HTML page',
                                  'content': {'text/html': {'schema': {'type': 'string'}}}}},
        }},
    }


def build_document(catalog, principal=None, limits=None, root_path=''):
    """The OpenAPI 3.1 document for `principal` (None: the built-in resources only)."""
    limits = limits or query.Limits()
    schemas = {
        'Problem': PROBLEM_SCHEMA, 'ResourceSummary': RESOURCE_SUMMARY,
        'ResourceSchema': {**RESOURCE_SUMMARY, 'required': [*RESOURCE_SUMMARY['required'], 'columns', 'relations'],
                           'properties': {**RESOURCE_SUMMARY['properties'],
                                          'columns': {'type': 'array', 'items': ref('Column')},
                                          'relations': {'type': 'array', 'items': ref('Relation')}}},
        'Column': COLUMN_DESCRIPTION, 'Relation': RELATION_DESCRIPTION, 'CustomField': FIELD_DEFINITION,
        'CustomObject': CUSTOM_OBJECT, history.FEED: change_schema(),
    }
    paths, tags, slugs = {}, [], catalog.visible(principal)
    tables = {slug: catalog.resolve(slug, principal) for slug in slugs}
    for slug, info in tables.items():
        relations = relations_module.relations_of(info, tables)
        schemas[slug] = record_schema(info)
        if relations:
            schemas[f'{slug}_embedded'] = embedded_schema(info, relations)
        if not info.spec.read_only:
            schemas[f'{slug}_create'] = body_schema(info, creating=True)
            schemas[f'{slug}_update'] = body_schema(info, creating=False)
        unique = [] if info.spec.read_only or catalog.custom is None else sorted(
            catalog.custom.store.unique_columns(info))
        paths.update(resource_paths(info, limits, unique, relations))
        custom = slug not in catalog.tables
        tags.append({'name': slug, 'description': ('custom object' if custom else 'built-in resource')
                     + (', read-only' if info.spec.read_only else '')})
    paths.update(fixed_paths(limits))
    paths.update(feed_paths(limits, slugs))
    tags += [{'name': 'custom_objects'}, {'name': history.FEED}, {'name': 'schema'}, {'name': 'me'}, {'name': 'docs'},
             {'name': 'health'}]
    return {
        'openapi': OPENAPI_VERSION,
        'info': {
            'title': 'crmapi',
            'version': __version__,
            'description': 'A CRM REST API. Every request carries `Authorization: Bearer <token>`; '
                           'errors are `application/problem+json`; lists page with `range` and answer '
                           '`Content-Range`.' + ('' if principal else ' Send a token to see your '
                                                 "organization's custom objects."),
        },
        'servers': [{'url': root_path or '/'}],
        'security': [{'bearerAuth': []}],
        'tags': tags,
        'paths': paths,
        'components': {
            'schemas': schemas,
            'securitySchemes': {'bearerAuth': {'type': 'http', 'scheme': 'bearer'}},
        },
    }


class OpenAPI:
    """`GET /api/openapi.json`: the document for the caller (anonymous: the built-ins)."""

    def __init__(self, catalog, limits=None):
        self.catalog = catalog
        self.limits = limits

    def on_get(self, req, resp):
        document = build_document(self.catalog, req.context.principal, self.limits, req.root_path)
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
    CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
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
