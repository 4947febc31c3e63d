"""One SQL boundary: crmapi.sqlbuild (a package, one module per statement family) is the only code that imports
PyPika, holds SQL or names the organization column, and its INSERT builders stamp the organization themselves."""

import ast
import pathlib
import re

import pytest

import crmapi
from crmapi import sqlbuild
from crmapi.db import _sqlite_adapt
from test_query import CONTACTS

PACKAGE = pathlib.Path(crmapi.__file__).parent
SQLITE = sqlbuild.sqlite_dialect(_sqlite_adapt)
# crmapi/db/ keeps the engines' own statements: connection settings (PRAGMA, SET, BEGIN/COMMIT), replica
# positions and catalog introspection. It may not import PyPika or name the organization column.
SQL_ALLOWED = ('db/',)  # the modules under these folders
LOOKS_LIKE_SQL = re.compile(
    r'\bselect\s.+?\sfrom\s|\binsert\s+into\s|\bupdate\s+\S+\s+set\s|\bdelete\s+from\s|\bexplain\s*\('
    r'|\b(create|alter|drop)\s+(unique\s+)?(table|index)\b'
    r'|\bwhere\s+[\w."]+\s*(=|<|>|\bis\s+(not\s+)?null\b|\bin\s*\(|\blike\s)',
    re.I | re.S,
)


def modules():
    return sorted(p for p in PACKAGE.rglob('*.py'))


def in_sqlbuild(name):
    return name.startswith('sqlbuild/')


def docstrings(tree):
    """The docstring nodes of `tree`: prose may speak of an UPDATE; code may not hold one."""
    bodies = [
        n.body
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    return {id(b[0].value) for b in bodies if b and isinstance(b[0], ast.Expr) and isinstance(b[0].value, ast.Constant)}


def literals(tree):
    """(line, text) of every string literal but docstrings; an f-string's constant parts joined around `{}`."""
    skip = docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            for part in node.values:
                skip.add(id(part))
            yield node.lineno, ''.join(v.value if isinstance(v, ast.Constant) else '{}' for v in node.values)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def imported(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            yield node.lineno, node.module


def crossings(path, name):
    """What the module `name` at `path` does that only sqlbuild may: ['name:line: what']."""
    tree = ast.parse(path.read_text())
    found = [f'{name}:{line}: imports {module}' for line, module in imported(tree) if module.split('.')[0] == 'pypika']
    for line, text in literals(tree):
        if sqlbuild.SCOPE in text:
            found.append(f'{name}:{line}: names {sqlbuild.SCOPE}: {text[:60]!r}')
        if not name.startswith(SQL_ALLOWED) and not in_sqlbuild(name) and LOOKS_LIKE_SQL.search(text):
            found.append(f'{name}:{line}: holds SQL: {text[:60]!r}')
    return found


def test_only_sqlbuild_imports_pypika_writes_sql_or_names_the_organization_column():
    found = [
        c
        for path in modules()
        if not in_sqlbuild(path.relative_to(PACKAGE).as_posix())
        for c in crossings(path, path.relative_to(PACKAGE).as_posix())
    ]
    assert found == []


def test_the_boundary_check_sees_what_it_forbids(tmp_path):
    path = tmp_path / 'probe.py'
    sample = (
        'from pypika import Table\n'
        "ROW = {'organization_id': 1}\n"
        "SQL = f'SELECT id FROM {TABLE} WHERE id = ?'\n"
        "def f():\n    '''Docstrings may say SELECT x FROM y.'''\n"
        "    return 'UPDATE contacts SET name = ?'\n"
    )
    path.write_text(sample)
    found = crossings(path, 'probe.py')
    assert sorted(c.split(': ')[0] + ': ' + c.split(': ')[1] for c in found) == [
        'probe.py:1: imports pypika',
        'probe.py:2: names organization_id',
        'probe.py:3: holds SQL',
        'probe.py:6: holds SQL',
    ]
    assert crossings(path, 'db/postgres.py') == [
        'db/postgres.py:1: imports pypika',
        'db/postgres.py:2: names organization_id: ' + repr('organization_id'),
    ]


@pytest.mark.parametrize(
    'build',
    [
        lambda row: sqlbuild.build_insert(SQLITE, CONTACTS, 'org_1', row),
        lambda row: sqlbuild.build_insert_many(SQLITE, CONTACTS, 'org_1', list(row), [row]),
        lambda row: sqlbuild.build_user_insert(SQLITE, 'org_1', row),
        lambda row: sqlbuild.build_token_insert(SQLITE, 'org_1', row),
    ],
)
def test_an_insert_builder_refuses_a_row_that_names_its_own_organization(build):
    with pytest.raises(ValueError, match='organization_id'):
        build({'id': 'c_1', sqlbuild.SCOPE: 'org_2'})


def test_insert_many_stamps_the_organization_on_every_row():
    sql, values = sqlbuild.build_insert_many(
        SQLITE,
        CONTACTS,
        'org_1',
        ['id', 'first_name'],
        [{'id': 'c_1', 'first_name': 'Ada'}, {'id': 'c_2', 'first_name': 'Bo'}],
    )
    assert sql.startswith('INSERT INTO "contacts" ("organization_id","id","first_name") VALUES (?,?,?),(?,?,?)')
    assert values == ['org_1', 'c_1', 'Ada', 'org_1', 'c_2', 'Bo']
