"""The list query language parser, with no database: parameters in, ListQuery or a 400 out."""

import json

import pytest

from crmapi.errors import InvalidParam
from crmapi.errors import InvalidValue
from crmapi.errors import UnknownField
from crmapi.query import Limits
from crmapi.query import parse_list
from crmapi.schema import BUILTIN
from crmapi.schema import table_info

COLUMNS = [
    ('id', 'TEXT', False, None),
    ('organization_id', 'TEXT', False, None),
    ('first_name', 'TEXT', True, None),
    ('last_name', 'TEXT', True, None),
    ('status', 'TEXT', True, None),
    ('company_id', 'TEXT', True, None),
    ('tags', 'JSONB', False, "'[]'"),
    ('size', 'BIGINT', True, None),
    ('amount', 'NUMERIC(14, 2)', True, None),
    ('due', 'DATE', True, None),
    ('vip', 'BOOLEAN', True, None),
    ('extra', 'JSONB', True, None),
    ('created_at', 'TIMESTAMPTZ', False, None),
    ('archived_at', 'TIMESTAMPTZ', True, None),
]
CONTACTS = table_info(BUILTIN['contacts'], COLUMNS)


def parse(**params):
    return parse_list({k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}, CONTACTS)


def test_defaults_are_first_25_rows_unsorted_without_archived():
    lq = parse()
    assert (lq.start, lq.end, lq.equals, lq.filters, lq.sorts, lq.include_archived) == (0, 24, (), (), (), False)


@pytest.mark.parametrize(
    'rng',
    [
        '[0]',
        '[1,0]',
        '[-1,5]',
        '[0,1000]',
        '["0","1"]',
        '[0.0,1]',
        '[true,1]',
        '{"a":1}',
        'nope',
        f'[{2**60},{2**60 + 1}]',
    ],
)
def test_bad_range_is_invalid_param(rng):
    with pytest.raises(InvalidParam) as err:
        parse(range=rng)
    assert err.value.members['param'] == 'range'


def test_a_page_may_hold_exactly_the_limit():
    assert parse(range=[10, 1009]).end == 1009
    with pytest.raises(InvalidParam):
        parse_list({'range': '[0,10]'}, CONTACTS, Limits(max_page=10))


def test_filter_object_gives_equalities_in_lists_and_nulls():
    lq = parse(
        filter={'status': 'hot', 'first_name': ['Ada', 'Alan'], 'company_id': None, 'q': 'lo', 'include_archived': True}
    )
    assert [(f.column.name, f.op, f.value) for f in lq.equals] == [
        ('status', 'eq', 'hot'),
        ('first_name', 'in', ('Ada', 'Alan')),
        ('company_id', 'eq', None),
    ]
    assert lq.search.text == 'lo' and lq.search.alternatives == (('lo',),) and lq.include_archived


def test_a_filter_on_archived_at_includes_archived_rows():
    assert parse(filters=[{'field': 'archived_at', 'op': 'is_not_empty'}]).include_archived


def test_filters_keep_their_logical_operators():
    lq = parse(
        filters=[
            {'field': 'status', 'op': 'eq', 'value': 'a', 'logicalOp': 'or'},
            {'field': 'status', 'op': 'eq', 'value': 'b', 'logicalOp': 'AND'},
            {'field': 'size', 'op': 'gt', 'value': 3},
        ]
    )
    assert [f.logical for f in lq.filters] == ['or', 'and', 'and']


@pytest.mark.parametrize(
    'flt, error, param',
    [
        ({'field': 'nope', 'op': 'eq', 'value': 1}, UnknownField, 'filters'),
        ({'field': 'organization_id', 'op': 'eq', 'value': 'x'}, UnknownField, 'filters'),
        ({'field': 'status', 'op': 'regex', 'value': 'x'}, InvalidParam, 'filters'),
        ({'field': 'status', 'op': 'eq', 'value': 'x', 'logicalOp': 'xor'}, InvalidParam, 'filters'),
        ({'field': 'status', 'op': 'eq', 'value': 'x', 'extra': 1}, InvalidParam, 'filters'),
        ({'field': 'size', 'op': 'contains', 'value': '1'}, InvalidParam, 'filters'),
        ({'field': 'size', 'op': 'eq', 'value': 'ten'}, InvalidValue, 'filters'),
        ({'field': 'size', 'op': 'eq', 'value': 2**63}, InvalidValue, 'filters'),
        ({'field': 'amount', 'op': 'gt', 'value': 1e20}, InvalidValue, 'filters'),
        ({'field': 'due', 'op': 'lt', 'value': 20240101}, InvalidValue, 'filters'),
        ({'field': 'due', 'op': 'lt', 'value': '2024-02-30'}, InvalidValue, 'filters'),
        ({'field': 'status', 'op': 'eq', 'value': 5}, InvalidValue, 'filters'),
        ({'field': 'status', 'op': 'eq', 'value': 'a\x00b'}, InvalidValue, 'filters'),
        ({'field': 'status', 'op': 'in', 'value': 'a'}, InvalidParam, 'filters'),
        ({'field': 'status', 'op': 'gt', 'value': None}, InvalidParam, 'filters'),
        ({'field': 'vip', 'op': 'gt', 'value': True}, InvalidParam, 'filters'),
        ({'field': 'extra', 'op': 'eq', 'value': {'a': 1}}, InvalidParam, 'filters'),
        ({'field': 'status', 'op': 'eq', 'value': ['a']}, InvalidParam, 'filters'),
        ({'field': 'status', 'op': 'eq', 'value': 'x' * 10_001}, InvalidParam, 'filters'),
    ],
)
def test_bad_filters_name_the_parameter_and_field(flt, error, param):
    with pytest.raises(error) as err:
        parse(filters=[flt])
    assert err.value.members['param'] == param
    if 'field' in err.value.members:
        assert err.value.members['field'] == flt['field']


def test_more_than_50_filters_is_invalid():
    with pytest.raises(InvalidParam):
        parse(filters=[{'field': 'status', 'op': 'eq', 'value': 'x'}] * 51)


def test_timestamps_are_compared_as_instants():
    a = parse(filters=[{'field': 'created_at', 'op': 'eq', 'value': '2024-01-01T12:00:00Z'}]).filters[0].value
    b = parse(filters=[{'field': 'created_at', 'op': 'eq', 'value': '2024-01-01T14:00:00+02:00'}]).filters[0].value
    assert a == b


@pytest.mark.parametrize(
    'params, expected',
    [
        ({'sort': 'last_name'}, [('last_name', False)]),
        ({'sort': 'last_name', 'order': 'desc'}, [('last_name', True)]),
        ({'sort': '["last_name","DESC"]'}, [('last_name', True)]),
        (
            {'sorts': '[{"field":"last_name","order":"ASC"},{"field":"created_at","order":"DESC"}]'},
            [('last_name', False), ('created_at', True)],
        ),
    ],
)
def test_three_spellings_of_sort(params, expected):
    lq = parse_list(params, CONTACTS)
    assert [(s.column.name, s.descending) for s in lq.sorts] == expected


@pytest.mark.parametrize(
    'params, param',
    [
        ({'sort': 'nope'}, 'sort'),
        ({'sort': 'last_name', 'order': 'UP'}, 'order'),
        ({'order': 'ASC'}, 'order'),
        ({'sort': 'tags'}, 'sort'),
        ({'sort': '["a","b","c"]'}, 'sort'),
        ({'sorts': '{"field":"x"}'}, 'sorts'),
        ({'sorts': '[{"field":"last_name"}]', 'sort': 'x'}, 'sorts'),
        ({'sort': ['a', 'b']}, 'sort'),
        ({'filtr': '{}'}, 'filtr'),
        ({'filter': '{"status": NaN}'}, 'filter'),
        ({'filter': '{"a":1,"a":2}'}, 'filter'),
    ],
)
def test_bad_sorts_and_parameters_name_the_parameter(params, param):
    with pytest.raises((InvalidParam, UnknownField)) as err:
        parse_list(params, CONTACTS)
    assert err.value.members['param'] == param
