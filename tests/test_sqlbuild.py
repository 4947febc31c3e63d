"""The query builder's SQL and parameters, per dialect: values always bound, identifiers whitelisted."""

import json

import pytest

from crmapi import sqlbuild
from crmapi.db import _pg_adapt
from crmapi.db import _sqlite_adapt
from crmapi.query import parse_list
from crmapi.schema import BUILTIN
from crmapi.schema import table_info
from test_query import CONTACTS

SQLITE = sqlbuild.sqlite_dialect(_sqlite_adapt)
POSTGRES = sqlbuild.postgres_dialect(_pg_adapt)
SELECT = (
    'SELECT "id","first_name","last_name","status","company_id","tags","size","amount","due","vip","extra",'
    '"created_at","archived_at" FROM "contacts" '
)


def where_of(d, **params):
    lq = parse_list({k: json.dumps(v) for k, v in params.items()}, CONTACTS)
    sql, values = sqlbuild.build_count(d, CONTACTS, 'org_1', lq)
    return sql.split(' WHERE ', 1)[1], values


def test_list_scopes_to_the_organization_hides_archived_and_ends_with_id():
    lq = parse_list({'range': '[50,59]'}, CONTACTS)
    assert sqlbuild.build_list(SQLITE, CONTACTS, 'org_1', lq) == (
        SELECT + 'WHERE "organization_id"=? AND "archived_at" IS NULL ORDER BY "id" ASC LIMIT ? OFFSET ?',
        ['org_1', 10, 50],
    )


def test_postgres_spells_out_sqlites_null_order():
    lq = parse_list({'sort': '["last_name","DESC"]'}, CONTACTS)
    sql, _ = sqlbuild.build_list(POSTGRES, CONTACTS, 'org_1', lq)
    assert sql.endswith('ORDER BY "last_name" DESC NULLS LAST,"id" DESC LIMIT %s OFFSET %s')
    lq = parse_list({'sort': 'created_at'}, CONTACTS)
    sql, _ = sqlbuild.build_list(POSTGRES, CONTACTS, 'org_1', lq)
    assert sql.endswith('ORDER BY "created_at" ASC,"id" ASC LIMIT %s OFFSET %s'), (
        'NOT NULL columns need no NULLS clause'
    )


def test_an_unnarrowed_total_reads_the_live_row_counter():
    sql, values = sqlbuild.build_count_read(SQLITE, 'org_1', 'contacts')
    assert sql == (
        'SELECT CAST(SUM("n") AS BIGINT) FROM "row_counts" WHERE "organization_id" = ? AND "table_name" = ? '
        'HAVING COUNT(*) > 0'
    ), 'the sum of its slots'
    assert values == ['org_1', 'contacts']
    sql, values = sqlbuild.build_count_add(POSTGRES, 'org_1', 'contacts', -2)
    assert 'pg_try_advisory_xact_lock' in sql, 'a slot no other open transaction is adding to'
    assert sql.endswith('ON CONFLICT (organization_id, table_name, slot) DO UPDATE SET n = row_counts.n + excluded.n')
    assert values == ['org_1', 'contacts', -2]


@pytest.mark.parametrize(
    'flt, sqlite_sql, value',
    [
        ({'op': 'eq', 'value': 'a'}, '"status"=?', 'a'),
        ({'op': 'neq', 'value': 'a'}, '"status" IS NOT ?', 'a'),
        ({'op': 'eq', 'value': None}, '"status" IS NULL', None),
        ({'op': 'in', 'value': ['a']}, '"status" IN (SELECT value FROM json_each(?))', '["a"]'),
        (
            {'op': 'not_in', 'value': ['a']},
            '("status" IS NULL OR NOT ("status" IN (SELECT value FROM json_each(?))))',
            '["a"]',
        ),
        ({'op': 'is_empty'}, '("status" IS NULL OR "status" = \'\')', None),
    ],
)
def test_operators_bind_their_values(flt, sqlite_sql, value):
    sql, values = where_of(SQLITE, filters=[{'field': 'status', **flt}])
    assert sql == '"organization_id"=? AND "archived_at" IS NULL AND ' + sqlite_sql
    assert values == ['org_1'] + ([value] if value is not None else [])


def test_empty_in_matches_nothing_and_empty_not_in_everything():
    assert where_of(SQLITE, filters=[{'field': 'status', 'op': 'in', 'value': []}])[0].endswith('AND 1=0')
    assert where_of(SQLITE, filters=[{'field': 'status', 'op': 'not_in', 'value': []}])[0].endswith('AND 1=1')


def test_logical_operators_fold_left_to_right():
    sql, values = where_of(
        SQLITE,
        filters=[
            {'field': 'status', 'op': 'eq', 'value': 'a', 'logicalOp': 'or'},
            {'field': 'status', 'op': 'eq', 'value': 'b'},
            {'field': 'size', 'op': 'gt', 'value': 3},
        ],
    )
    assert sql.endswith('AND ("status"=? OR "status"=?) AND "size">?')
    assert values == ['org_1', 'a', 'b', 3]


def test_array_columns_test_membership_per_dialect():
    flt = {'filters': [{'field': 'tags', 'op': 'eq', 'value': 'tag_1'}]}
    assert where_of(SQLITE, **flt)[0].endswith('AND EXISTS (SELECT 1 FROM json_each("tags") WHERE json_each.value = ?)')
    sql, values = where_of(POSTGRES, **flt)
    assert sql.endswith('AND "tags" @> %s') and values[-1].obj == ['tag_1']


def test_values_reach_the_driver_in_its_own_types():
    sql, values = where_of(
        SQLITE,
        filter={'vip': True, 'due': '2024-01-31'},
        filters=[{'field': 'created_at', 'op': 'gte', 'value': '2024-01-01T02:00:00+02:00'}],
    )
    assert values == ['org_1', 1, '2024-01-31', '2024-01-01T00:00:00.000000Z']
    _, pg_values = where_of(POSTGRES, filter={'vip': True})
    assert pg_values == ['org_1', True]


# NOTE: text operators and q compare folded text kept in search rows (issue 10): see tests/test_search.py.
SHORT_CONTAINS = (
    'EXISTS (SELECT 1 FROM search_texts s WHERE s.table_name = ? AND s.organization_id = ? AND '
    's.record_id = "contacts"."id" AND instr(json_extract(s.fields, ?), ?) > 0)'
)
TRIGRAMS = (
    '"id" IN (SELECT s.record_id FROM search_texts s WHERE s.id IN (SELECT rowid FROM search_texts_trigrams '
    'WHERE search_texts_trigrams MATCH ?) AND s.table_name = ? AND s.organization_id = ? AND '
)


@pytest.mark.parametrize(
    'flt, sqlite_sql, values',
    [
        (
            {'op': 'contains', 'value': '50%_OFF\\'},
            TRIGRAMS + 'instr(json_extract(s.fields, ?), ?) > 0)',
            [
                '"50%" AND "0%_" AND "%_o" AND "_of" AND "off" AND "ff\\"',
                'contacts',
                'org_1',
                '$."status"',
                '50%_off\\',
            ],
        ),  # each trigram of the value's text a term
        (
            {'op': 'starts_with', 'value': 'Abc'},
            TRIGRAMS + 'instr(json_extract(s.fields, ?), ?) = 1)',
            ['"abc"', 'contacts', 'org_1', '$."status"', 'abc'],
        ),
        (
            {'op': 'starts_with', 'value': 'Ab'},
            SHORT_CONTAINS.replace('> 0', '= 1'),
            ['contacts', 'org_1', '$."status"', 'ab'],
        ),
        (
            {'op': 'ends_with', 'value': 'ä'},
            SHORT_CONTAINS.replace(
                'instr(json_extract(s.fields, ?), ?) > 0', 'substr(json_extract(s.fields, ?), -length(?)) = ?'
            ),
            ['contacts', 'org_1', '$."status"', 'a', 'a'],
        ),
        (
            {'op': 'not_contains', 'value': 'a'},
            f'("status" IS NULL OR NOT ({SHORT_CONTAINS}))',
            ['contacts', 'org_1', '$."status"', 'a'],
        ),
        ({'op': 'contains', 'value': '\u0301'}, 'NOT "status" IS NULL', []),  # folds to '': any value
    ],
)
def test_text_operators_compare_folded_values_in_the_search_rows(flt, sqlite_sql, values):
    sql, bound = where_of(SQLITE, filter={'vip': True}, filters=[{'field': 'status', **flt}])
    assert sql == '"organization_id"=? AND "archived_at" IS NULL AND "vip"=? AND ' + sqlite_sql
    assert bound == ['org_1', 1] + values


def test_a_list_of_text_operators_only_is_counted_in_the_search_rows():
    sql, bound = where_of(
        SQLITE,
        filters=[
            {'field': 'status', 'op': 'contains', 'value': 'Gold'},
            {'field': 'last_name', 'op': 'starts_with', 'value': 'a'},
        ],
    )
    assert sql == (
        's.table_name = ? AND s.organization_id = ? AND s.archived = FALSE AND s.id IN (SELECT rowid FROM '
        'search_texts_trigrams WHERE search_texts_trigrams MATCH ?) AND instr(json_extract(s.fields, ?), ?) '
        '> 0 AND instr(json_extract(s.fields, ?), ?) = 1'
    )
    assert bound == ['contacts', 'org_1', '"gol" AND "old"', '$."status"', 'gold', '$."last_name"', 'a']


def test_postgres_text_operators_are_like_patterns_on_folded_values():
    sql, values = where_of(
        POSTGRES, filter={'vip': True}, filters=[{'field': 'status', 'op': 'starts_with', 'value': '50%_OFF'}]
    )
    assert sql.endswith(
        'AND "id" IN (SELECT s.record_id FROM search_texts s WHERE s.texts LIKE %s '
        "ESCAPE '\\' "
        "AND s.table_name = %s AND s.organization_id = %s AND (s.fields::json ->> %s) LIKE %s ESCAPE '\\')"
    )
    assert values == ['org_1', True, '%50\\%\\_off%', 'contacts', 'org_1', 'status', '50\\%\\_off%']


def test_search_reads_the_records_words_not_their_columns():
    sql, values = where_of(POSTGRES, filter={'q': 'Ad Lo'})
    assert '"first_name"' not in sql and 's.table_name = %s AND s.organization_id = %s AND s.archived = FALSE' in sql
    assert values == ['contacts', 'org_1', "'ad' & 'lo'"], 'words of 1-3 characters: exact lexemes of `prefixes`'
    sql, values = where_of(POSTGRES, filter={'q': 'Ada Lovelace'})
    assert f'{sqlbuild.PREFIXES} @@ CAST(%s AS tsquery) AND strpos(s.words, %s) > 0' in sql
    assert values == ['contacts', 'org_1', "'ada' & 'lov'", '  lovelace'], 'a longer word: its start, then read whole'
    sql, values = where_of(POSTGRES, filter={'q': 'Lovelace Byron'})
    assert f'{sqlbuild.TSVECTOR} @@ CAST(%s AS tsquery)' in sql and 'prefixes' not in sql
    assert values == ['contacts', 'org_1', "('lovelace':* & 'byron':*)"], 'longer words only: the words index'
    sql, values = where_of(SQLITE, filter={'q': 'Ad Lo'})
    assert values == ['contacts', 'org_1', '(" ad" AND " lo")', '  ad', '  lo'], (
        'the trigrams of the word starts (not the first letter after two spaces) find candidates, the search row '
        'confirms each word start'
    )
    sql, values = where_of(SQLITE, filter={'q': 'A Lo'})
    assert values == ['contacts', 'org_1', '("  a" AND " lo")', '  a', '  lo'], (
        'two spaces: a one-letter word start too'
    )
    sql, values = where_of(SQLITE, filter={'q': 'Lovelaceiana'})
    assert values == [
        'contacts',
        'org_1',
        '(" lo" AND "lov" AND "ove" AND "vel" AND "ela" AND "lac" AND "ace" AND "cei" AND "eia")',
        '  lovelaceiana',
    ], 'a long word: the trigrams of its start, then the whole word compared'


def test_injection_in_values_stays_a_parameter():
    evil = "x'; DROP TABLE contacts; --"
    sql, values = where_of(SQLITE, filter={'status': evil})
    assert 'DROP' not in sql and values[-1] == evil


def test_insert_update_and_delete_return_the_record():
    row = {'id': 'c_1', 'first_name': 'Ada', 'tags': ['t'], 'vip': False}
    sql, values = sqlbuild.build_insert(SQLITE, CONTACTS, 'org_1', row)
    assert sql.startswith(
        'INSERT INTO "contacts" ("organization_id","id","first_name","tags","vip") '
        'VALUES (?,?,?,?,?) RETURNING "id","first_name"'
    )
    assert values == ['org_1', 'c_1', 'Ada', '["t"]', 0]
    sql, values = sqlbuild.build_update(POSTGRES, CONTACTS, 'org_1', 'c_1', {'first_name': 'Bo'})
    assert sql.startswith('UPDATE "contacts" SET "first_name"=%s WHERE "organization_id"=%s AND "id"=%s RETURNING')
    assert values == ['Bo', 'org_1', 'c_1']
    sql, values = sqlbuild.build_delete(SQLITE, CONTACTS, 'org_1', ['c_1', 'c_2'])
    assert sql.startswith(
        'DELETE FROM "contacts" WHERE "organization_id"=? AND "id" IN (SELECT value FROM json_each(?)) RETURNING'
    )
    assert values == ['org_1', '["c_1","c_2"]']


@pytest.mark.parametrize(
    'params',
    [
        {'filter': {'status': 'a', 'first_name': ['x', None]}, 'sort': 'last_name'},
        {
            'filters': [
                {'field': 'tags', 'op': 'in', 'value': ['t1', 't2']},
                {'field': 'first_name', 'op': 'not_contains', 'value': '50%', 'logicalOp': 'or'},
                {'field': 'amount', 'op': 'gte', 'value': 1.5},
            ],
            'filter': {'q': 'x'},
        },
        {'sorts': [{'field': 'last_name', 'order': 'DESC'}, {'field': 'due', 'order': 'ASC'}], 'range': [5, 9]},
    ],
)
def test_a_cached_shape_binds_new_values_exactly_as_a_fresh_render(params, monkeypatch):
    """The second request of a shape reuses its SQL; its parameters must be the ones a render gives."""

    def values_of(variant):
        encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
        return parse_list(
            {k: v.replace('"a"', f'"{variant}"').replace('"x"', f'"{variant}"') for k, v in encoded.items()}, CONTACTS
        )

    for d in (SQLITE, POSTGRES):
        first = sqlbuild.build_list(d, CONTACTS, 'org_1', values_of('first'))
        cached = sqlbuild.build_list(d, CONTACTS, 'org_2', values_of('second'))
        monkeypatch.setattr(sqlbuild.core, '_STATEMENTS', {})
        fresh = sqlbuild.build_list(d, CONTACTS, 'org_2', values_of('second'))
        monkeypatch.undo()
        assert cached[0] == fresh[0] == first[0]
        assert [getattr(v, 'obj', v) for v in cached[1]] == [getattr(v, 'obj', v) for v in fresh[1]]
        assert 'org_2' in cached[1] and 'org_1' not in cached[1]


def test_embedded_records_are_json_written_by_sqlite_and_columns_read_from_postgres():
    """SQLite's json_object costs less than reading the columns into records; PostgreSQL's json_build_object looks
    up each argument's type again for every row (3x the columns' executor time), so there the columns come as they
    are, instants spelt for the wire by the server."""
    companies = table_info(
        BUILTIN['companies'],
        [
            ('id', 'TEXT', False, None),
            ('organization_id', 'TEXT', False, None),
            ('name', 'TEXT', False, None),
            ('size', 'BIGINT', True, None),
            ('created_at', 'TIMESTAMPTZ', False, None),
        ],
    )
    sql, values = sqlbuild.build_referenced(SQLITE, companies, 'org_1', ['co_1', 'co_2'])
    assert sql.startswith(
        'SELECT c.id, CAST(json_object(\'id\', c."id", \'name\', c."name", \'size\', c."size", '
        '\'created_at\', c."created_at") AS BLOB) FROM "companies" AS c '
    )
    assert values == ['["co_1","co_2"]', 'org_1']
    sql, values = sqlbuild.build_referenced(POSTGRES, companies, 'org_1', ['co_1', 'co_2'])
    assert sql.startswith(
        'SELECT "id","name","size",to_char("created_at" AT TIME ZONE \'UTC\', '
        '\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\') FROM "companies" '
    )
    assert 'json_build_object' not in sql and values == ['org_1', '["co_1","co_2"]']


def test_rows_of_a_batch_of_any_size_go_in_one_of_a_few_statement_shapes():
    """A statement holds a row of placeholders per item, and each shape is a statement every connection keeps:
    batches of every size from 1 to 1,000 share ten shapes (powers of two), in order, nothing lost."""
    lengths = set()
    for n in range(1, 1001):
        parts = sqlbuild.row_chunks(list(range(n)), width=20)
        assert [i for part in parts for i in part] == list(range(n))
        lengths.update(len(part) for part in parts)
    assert lengths == {2**k for k in range(10)}
    assert {len(p) for p in sqlbuild.row_chunks(range(5000), width=20)} <= {2**k for k in range(11)}


def test_sqlite_takes_the_search_rows_of_a_batch_of_any_size_in_one_statement_of_a_few_shapes():
    """SQLite's trigram index makes a segment of each statement's rows and merges the segments later: a batch's search
    rows go in one statement, of the next power of two rows, the rows past the batch's NULLs that it skips."""
    width, shapes = len(sqlbuild.SEARCH_ROW), set()
    for n in range(1, 1001):
        rows = [(f't{i}', 'org_1', f'id{i}', False, 'w', 'n', '{}', 't') for i in range(n)]
        [(sql, params)] = sqlbuild.build_search_rows(SQLITE, rows)
        size = 1 << (n - 1).bit_length()
        assert params == [v for row in rows for v in row] + [None] * ((size - n) * width)
        shapes.add(sql)
    assert len(shapes) == 11 and all('WHERE column1 IS NOT NULL' in sql for sql in shapes if sql.count('),(') > 0)
