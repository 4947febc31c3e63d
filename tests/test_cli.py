"""The `crmapi` command line, run as a real process against a fresh database of each kind."""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import webtest

from crmapi import cli
from crmapi import create_app
from crmapi.config import Settings
from crmapi.db import connect
from crmapi.errors import Conflict
from conftest import postgres_url


@pytest.fixture
def database_url(backend, tmp_path):
    """A URL to an empty database: a new SQLite file, or a new PostgreSQL database."""
    if backend == 'sqlite':
        yield f'sqlite:///{tmp_path}/cli.db'
        return
    base = postgres_url()
    name = 'cli_' + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE {name}')
    yield base.rsplit('/', 1)[0] + '/' + name
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE {name} WITH (FORCE)')


def crmapi(url, *args, check=True):
    env = {**os.environ, 'CRMAPI_DATABASE_URL': url}
    result = subprocess.run([sys.executable, '-m', 'crmapi', *args], capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def schema_dump(url):
    db = connect(url)
    try:
        return db.introspect(
            [
                'contacts',
                'companies',
                'deals',
                'tasks',
                'crm_users',
                'api_tokens',
                'companies_summary',
                'contacts_summary',
                'schema_version',
            ]
        )
    finally:
        db.close()


def test_init_db_is_idempotent(database_url):
    crmapi(database_url, 'init-db')
    first = schema_dump(database_url)
    assert crmapi(database_url, 'init-db').returncode == 0
    assert schema_dump(database_url) == first
    assert set(first) >= {'contacts', 'companies_summary', 'contacts_summary'}


def test_create_org_and_token_print_one_line_each_and_the_token_works(database_url):
    crmapi(database_url, 'init-db')
    org = crmapi(database_url, 'create-org', 'Acme Ltd').stdout
    assert org.count('\n') == 1 and org.startswith('org_')
    token = crmapi(database_url, 'create-token', '--org', org.strip(), '--email', 'ann@acme.example', '--admin').stdout
    assert token.count('\n') == 1 and token.startswith('bos_crm_')
    db = connect(database_url)
    try:
        client = webtest.TestApp(create_app(Settings(database_url=database_url), db=db))
        headers = {'Authorization': f'Bearer {token.strip()}'}
        users = client.get('/api/crm_users', headers=headers).json
        assert [(u['email'], u['administrator']) for u in users] == [('ann@acme.example', True)]
        with db.transaction() as tx:
            stored = tx.rows('SELECT token_hash FROM api_tokens')
        assert token.strip() not in str(stored)
    finally:
        db.close()


def test_create_token_for_an_unknown_org_fails_cleanly(database_url):
    crmapi(database_url, 'init-db')
    result = crmapi(database_url, 'create-token', '--org', 'org_nope', '--email', 'a@b.c', check=False)
    assert result.returncode != 0 and 'org_nope' in result.stderr and 'Traceback' not in result.stderr


def test_demo_fills_an_organization_and_prints_a_working_token(database_url):
    token = crmapi(database_url, 'demo').stdout.strip()
    db = connect(database_url)
    try:
        client = webtest.TestApp(create_app(Settings(database_url=database_url), db=db))
        resp = client.get('/api/contacts', headers={'Authorization': f'Bearer {token}'})
        assert resp.headers['Content-Range'].endswith('/42')
    finally:
        db.close()


def test_database_option_overrides_the_environment(tmp_path):
    url = f'sqlite:///{tmp_path}/opt.db'
    result = subprocess.run(
        [sys.executable, '-m', 'crmapi', '--database', url, 'init-db'],
        capture_output=True,
        text=True,
        env={**os.environ, 'CRMAPI_DATABASE_URL': 'sqlite:////nonexistent/dir/x.db'},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'opt.db').exists()


# -- refusals: one `crmapi: …` line and a non-zero status, never a traceback ------------------------

ROOT = Path(__file__).resolve().parent.parent
DEAD_POSTGRES = 'postgresql://127.0.0.1:1/x'


def cli_env(**extra):
    """The environment of a crmapi subprocess: this checkout's code, no database from the caller."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))
    return {**os.environ, 'PYTHONPATH': path, 'CRMAPI_DATABASE_URL': '', **extra}


def run_cli(*args, cwd=None, timeout=60, **env):
    return subprocess.run(
        [sys.executable, '-m', 'crmapi', *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(**env),
        timeout=timeout,
    )


def assert_refused(result, message, status=1):
    """One line on stderr, prefixed `crmapi: `, saying `message`; the given exit status; nothing on stdout."""
    assert 'Traceback' not in result.stderr, result.stderr
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('crmapi: '), result.stderr
    assert message in lines[0], result.stderr
    assert result.stdout == ''


def refused_in_process(capsys, argv, message, status=1):
    """cli.main() in this process: SystemExit with `status` and one `crmapi: …` line saying `message`."""
    capsys.readouterr()  # what set-up printed
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert exit_.value.code == status or (status == 1 and str(exit_.value.code).startswith('crmapi: ')), err
    text = err or str(exit_.value.code)
    assert len(text.splitlines()) == 1 and text.startswith('crmapi: ') and message in text, text
    return text


@pytest.fixture
def sqlite_url(tmp_path):
    """A migrated SQLite database, made through the CLI in this process."""
    url = f'sqlite:///{tmp_path}/crm.db'
    cli.main(['--database', url, 'init-db'])
    return url


def test_commands_before_init_db_say_run_init_db_first(database_url, tmp_path):
    for args in (['create-org', 'Acme'], ['list-orgs'], ['list-tokens', '--org', 'org_x']):
        assert_refused(run_cli('--database', database_url, *args), 'run crmapi init-db first')
    if database_url.startswith('sqlite'):
        assert list(tmp_path.iterdir()) == []  # reading commands leave no empty database behind


def test_an_empty_sqlite_file_says_run_init_db_first(tmp_path):
    (tmp_path / 'empty.db').touch()
    assert_refused(
        run_cli('--database', f'sqlite:///{tmp_path}/empty.db', 'create-org', 'Acme'),
        'no crmapi schema: run crmapi init-db first',
    )


def test_an_old_schema_says_run_migrate_first(tmp_path):
    url = f'sqlite:///{tmp_path}/old.db'
    cli.main(['--database', url, 'migrate', '--to', '1'])
    assert_refused(run_cli('--database', url, 'list-orgs'), 'run crmapi migrate first')


@pytest.mark.parametrize(
    'url, message',
    [
        ('mysql://crm:s3cret@db/crm', "unsupported database URL scheme 'mysql'"),
        ('crm.db', "'crm.db' has no scheme: for a SQLite file write sqlite:///crm.db"),
        ('sqlite:/crm.db', "'sqlite:/crm.db' is not a SQLite URL"),
        ('sqlite:crm.db', "'sqlite:crm.db' is not a SQLite URL"),
        ('sqlite://crm.db', "'sqlite://crm.db' names a host ('crm.db'); a SQLite URL has none: write sqlite:///crm.db"),
        ('sqlite:///crm.db?mode=ro', "'sqlite:///crm.db?mode=ro': a SQLite URL takes no parameters"),
        ('sqlite:///', "'sqlite:///' names no file"),
        ('postgresql://crm@db:abc/crm', "the PostgreSQL URL's port 'abc' is not a number"),
        ('postgresql://crm:s3cret%zz@db/crm', 'the PostgreSQL URL does not parse (invalid percent-encoded token)'),
        ('postgresql://db/crm?nosuchoption=1', 'the PostgreSQL URL does not parse (invalid URI query parameter)'),
    ],
)
def test_a_malformed_database_url_is_refused_without_creating_anything(url, message, tmp_path):
    for command in ('init-db', 'serve'):
        result = run_cli('--database', url, command, cwd=tmp_path)
        assert_refused(result, f'bad database URL: {message}')
        assert 's3cret' not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_database_url_comes_from_the_environment_when_there_is_no_option(tmp_path):
    assert_refused(run_cli('init-db', cwd=tmp_path, CRMAPI_DATABASE_URL='crm.db'), "'crm.db' has no scheme")


def test_commands_connect_the_way_the_server_does_through_pgbouncer(monkeypatch):
    monkeypatch.setenv('CRMAPI_PGBOUNCER', '1')
    assert cli.open_url('postgresql://crm@db.invalid/crm').pgbouncer
    monkeypatch.setenv('CRMAPI_PGBOUNCER', '0')
    assert not cli.open_url('postgresql://crm@db.invalid/crm').pgbouncer


def test_a_bad_setting_is_one_line_for_every_command(tmp_path):
    result = run_cli('--database', f'sqlite:///{tmp_path}/crm.db', 'init-db', CRMAPI_PGBOUNCER='maybe')
    assert_refused(result, 'CRMAPI_PGBOUNCER')
    assert 'bad database URL' not in result.stderr, 'the URL is fine; the setting is not'


@pytest.mark.parametrize('command', ['init-db', 'list-orgs', 'demo', 'serve'])
def test_a_sqlite_path_in_a_missing_directory_is_refused(command, tmp_path):
    result = run_cli('--database', f'sqlite:///{tmp_path}/missing/crm.db', command)
    assert_refused(result, f'no directory {tmp_path}/missing for the SQLite database')
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_sqlite_database_is_refused(tmp_path):
    (tmp_path / 'notes.txt').write_text('not a database, but long enough to have a header' * 4)
    assert_refused(
        run_cli('--database', f'sqlite:///{tmp_path}/notes.txt', 'init-db'),
        f'cannot open the SQLite database {tmp_path}/notes.txt',
    )


@pytest.mark.parametrize('command', [['init-db'], ['list-orgs'], ['create-org', 'Acme']])
def test_an_unreachable_postgresql_is_one_line_at_once(command):
    started = time.monotonic()
    result = run_cli('--database', DEAD_POSTGRES, *command)
    assert_refused(result, 'cannot connect to PostgreSQL: connection failed')
    assert time.monotonic() - started < cli.CONNECT_TIMEOUT_S


@pytest.mark.slow
def test_a_postgresql_that_never_answers_is_given_up_after_the_connect_timeout():
    with socket.socket() as silent:  # accepts the TCP connection (backlog), never says a word
        silent.bind(('127.0.0.1', 0))
        silent.listen(1)
        started = time.monotonic()
        result = run_cli('--database', f'postgresql://127.0.0.1:{silent.getsockname()[1]}/x', 'list-orgs')
        elapsed = time.monotonic() - started
    assert_refused(result, 'cannot connect to PostgreSQL')
    assert cli.CONNECT_TIMEOUT_S - 1 < elapsed < cli.CONNECT_TIMEOUT_S + 5


def test_a_missing_postgresql_database_is_named():
    base = postgres_url()
    result = run_cli('--database', base.rsplit('/', 1)[0] + '/no_such_database', 'list-orgs')
    assert_refused(result, 'database "no_such_database" does not exist')


def test_make_run_stops_before_gunicorn_when_the_database_is_unreachable():
    venv = sys.prefix  # the virtualenv running these tests; -o: never (re)install into it from here
    make = subprocess.Popen(
        [
            'make',
            '--no-print-directory',
            '-o',
            f'{venv}/.installed',
            'run',
            f'VENV={venv}',
            f'DB_URL={DEAD_POSTGRES}',
            'BIND=127.0.0.1:1',
        ],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = make.communicate(timeout=30)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)  # the server was started: the test fails below
            make.wait()
    assert make.returncode not in (0, None), output
    assert 'crmapi: cannot connect to PostgreSQL' in output
    # 'Starting g': granian's first line, or gunicorn's
    assert 'Traceback' not in output and ' serve --bind' not in output and 'Starting g' not in output


@pytest.mark.parametrize(
    'choice, server',
    [([], 'granian'), (['--server', 'gunicorn'], 'gunicorn'), ({'CRMAPI_SERVER': 'gunicorn'}, 'gunicorn')],
)
def test_serve_runs_granian_unless_told_otherwise_with_the_same_workers_and_threads(monkeypatch, choice, server):
    for name, value in {'CRMAPI_WORKERS': '3', 'CRMAPI_THREADS': '5', 'CRMAPI_BIND': '127.0.0.1:9001'}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv('CRMAPI_SERVER', raising=False)
    if isinstance(choice, dict):
        monkeypatch.setenv('CRMAPI_SERVER', choice['CRMAPI_SERVER'])
    argv = cli.serve_argv(
        cli.parser().parse_args(['serve', *(choice if isinstance(choice, list) else [])]), Settings.from_env()
    )

    def option(name):
        return argv[argv.index(name) + 1]

    if server == 'granian':
        assert argv[1:3] == ['-m', 'crmapi.serving_granian'] and argv[-1] == 'crmapi:create_app'
        assert (option('--workers'), option('--blocking-threads'), option('--host'), option('--port')) == (
            '3',
            '5',
            '127.0.0.1',
            '9001',
        )
        assert option('--interface') == 'wsgi' and '--respawn-failed-workers' in argv
    else:
        assert argv[1:3] == ['-m', 'gunicorn'] and argv[-1] == 'crmapi:create_app()'
        assert (option('--workers'), option('--threads'), option('--bind')) == ('3', '5', '127.0.0.1:9001')
        assert option('--worker-class') == 'crmapi.serving.ThreadWorker'


def test_serve_refuses_an_unknown_server_named_in_the_environment(tmp_path):
    assert_refused(
        run_cli('serve', cwd=tmp_path, CRMAPI_SERVER='uwsgi'),
        "CRMAPI_SERVER must be one of granian, gunicorn, not 'uwsgi'",
    )
    assert list(tmp_path.iterdir()) == []


def test_create_org_refuses_an_existing_name_unless_allowed(database_url):
    crmapi(database_url, 'init-db')
    first = crmapi(database_url, 'create-org', 'Acme Ltd').stdout.strip()
    result = crmapi(database_url, 'create-org', 'ACME LTD', check=False)
    assert_refused(result, f"an organization named 'Acme Ltd' already exists ({first}); pass --allow-duplicate")
    second = crmapi(database_url, 'create-org', 'Acme Ltd', '--allow-duplicate').stdout.strip()
    assert second != first
    assert crmapi(database_url, 'list-orgs').stdout.splitlines() == [f'{first}\tAcme Ltd', f'{second}\tAcme Ltd']


@pytest.mark.parametrize('name', ['', '   ', 'tab\there'])
def test_create_org_refuses_a_blank_or_unprintable_name(name, capsys, sqlite_url):
    refused_in_process(capsys, ['--database', sqlite_url, 'create-org', name], 'is not an organization name', 2)


@pytest.mark.parametrize(
    'option, value, message',
    [
        ('--email', 'notanemail', "'notanemail' is not an email address"),
        ('--email', 'two@at@signs.example', "'two@at@signs.example' is not an email address"),
        ('--email', 'ann @acme.example', "'ann @acme.example' is not an email address"),
        ('--expires-in', '-5', '-5 days: use 1 to 36500'),
        ('--expires-in', '0', '0 days: use 1 to 36500'),
        ('--expires-in', '99999999', '99999999 days: use 1 to 36500'),
        ('--expires-in', 'soon', "'soon' is not a whole number of days"),
    ],
)
def test_create_token_refuses_bad_options_before_touching_the_database(option, value, message, capsys, tmp_path):
    args = {'--email': 'ann@acme.example', '--expires-in': '7', option: value}
    argv = ['--database', f'sqlite:///{tmp_path}/crm.db', 'create-token', '--org', 'org_x']
    text = refused_in_process(
        capsys, argv + [arg for pair in args.items() for arg in pair], f'argument {option}: {message}', 2
    )
    assert text.endswith('(see crmapi create-token --help)\n')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    'command',
    [
        ['list-tokens', '--org', 'org_nope'],
        ['recount', '--org', 'org_nope'],
        ['create-token', '--org', 'org_nope', '--email', 'a@b.example'],
    ],
)
def test_commands_on_an_unknown_organization_are_refused(command, database_url):
    crmapi(database_url, 'init-db')
    assert_refused(crmapi(database_url, *command, check=False), 'no organization org_nope')


@pytest.mark.parametrize(
    'to, message',
    [
        (0, 'no schema version 0: versions run from 1 to'),
        (999, 'no schema version 999'),
        (1, 'the schema is at version'),
    ],
)
def test_migrate_goes_only_forward_to_a_version_that_exists(to, message, capsys, sqlite_url):
    refused_in_process(capsys, ['--database', sqlite_url, 'migrate', '--to', str(to)], message)


def test_backup_of_a_missing_database_creates_nothing(tmp_path):
    result = run_cli('--database', f'sqlite:///{tmp_path}/missing.db', 'backup', str(tmp_path / 'copy.db'))
    assert_refused(result, f'no SQLite database at {tmp_path}/missing.db: run crmapi init-db first')
    assert list(tmp_path.iterdir()) == []


def test_backup_replaces_an_existing_file_only_with_force(capsys, sqlite_url, tmp_path):
    cli.main(['--database', sqlite_url, 'create-org', 'Acme'])
    target = tmp_path / 'copy.db'
    target.write_text('yesterday')
    refused_in_process(
        capsys, ['--database', sqlite_url, 'backup', str(target)], f'{target} exists; pass --force to replace it'
    )
    assert target.read_text() == 'yesterday'
    cli.main(['--database', sqlite_url, 'backup', str(target), '--force'])
    capsys.readouterr()
    cli.main(['--database', f'sqlite:///{target}', 'list-orgs'])
    assert capsys.readouterr().out.split('\t')[1] == 'Acme\n'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.crmapi-backup-')]


@pytest.mark.parametrize(
    'target, message',
    [
        ('missing/copy.db', 'no directory {tmp}/missing for the backup'),
        ('.', '{tmp} is a directory: name the backup file'),
        ('crm.db', '{tmp}/crm.db is the database itself'),
    ],
)
def test_backup_refuses_a_target_it_cannot_or_must_not_write(target, message, capsys, sqlite_url, tmp_path):
    argv = ['--database', sqlite_url, 'backup', str(tmp_path / target), '--force']
    refused_in_process(capsys, argv, message.format(tmp=tmp_path))
    assert not (tmp_path / 'missing').exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.crmapi-backup-')]


def test_backup_of_postgresql_points_to_pg_dump(database_url, tmp_path):
    if database_url.startswith('sqlite'):
        return  # the SQLite side is the backups above
    crmapi(database_url, 'init-db')
    assert_refused(crmapi(database_url, 'backup', str(tmp_path / 'copy.db'), check=False), 'use pg_dump')


def test_define_object_with_an_unchanged_file_keeps_the_version(database_url, tmp_path):
    crmapi(database_url, 'init-db')
    org = crmapi(database_url, 'create-org', 'Acme').stdout.strip()
    definition = tmp_path / 'projects.json'

    def define(body):
        definition.write_text(json.dumps(body))
        return json.loads(crmapi(database_url, 'define-object', '--org', org, '--file', str(definition)).stdout)

    body = {'slug': 'projects', 'label': 'Projects', 'fields': [{'name': 'budget', 'type': 'number'}]}
    assert define(body)['version'] == 1
    assert define(body)['version'] == 1
    assert define({'slug': 'projects'})['version'] == 1  # fields left out are kept, not changed
    assert define({**body, 'label': 'Projects (all)'})['version'] == 2
    assert define({**body, 'label': 'Projects (all)'})['version'] == 2
    assert define({'slug': 'projects', 'fields': [{'name': 'budget', 'type': 'number', 'label': 'B'}]})['version'] == 3


@pytest.mark.parametrize(
    'content, message',
    [
        ('[1, 2]', 'must hold one JSON object'),
        ('{"slug": ', 'cannot read'),
        ('{"slug": "x", "fields": "budget"}', "'fields' must be an array"),
    ],
)
def test_define_object_refuses_a_file_that_is_not_a_definition(content, message, capsys, sqlite_url, tmp_path):
    cli.main(['--database', sqlite_url, 'create-org', 'Acme'])
    org = capsys.readouterr().out.strip()
    (tmp_path / 'def.json').write_text(content)
    refused_in_process(
        capsys, ['--database', sqlite_url, 'define-object', '--org', org, '--file', str(tmp_path / 'def.json')], message
    )


def test_every_option_of_every_command_is_described_with_its_default(capsys):
    commands = cli.parser()._subparsers._group_actions[0].choices
    for name, command in [('crmapi', cli.parser()), *commands.items()]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(['--help'] if name == 'crmapi' else [name, '--help'])
        assert exit_.value.code == 0
        shown = ' '.join(capsys.readouterr().out.split())
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f'{name}: {action.dest} has no help'
            assert ' '.join(action.help.split()) in shown
            if action.default not in (None, False, argparse.SUPPRESS):
                assert f'(default: {action.default})' in shown, f'{name}: {action.dest}'


def test_help_never_prints_the_database_url_of_the_environment(monkeypatch, capsys):
    monkeypatch.setenv('CRMAPI_DATABASE_URL', 'postgresql://crm:s3cret@db/crm')
    with pytest.raises(SystemExit):
        cli.main(['--help'])
    out = capsys.readouterr().out
    assert 's3cret' not in out and '(default: CRMAPI_DATABASE_URL, else sqlite:///crm.db)' in ' '.join(out.split())


def test_a_crm_error_is_one_line_and_status_1(monkeypatch, capsys, sqlite_url):
    def refuse(db, args):
        raise Conflict('first line\nsecond line')

    monkeypatch.setattr(cli, 'cmd_list_orgs', refuse)
    refused_in_process(capsys, ['--database', sqlite_url, 'list-orgs'], 'crmapi: first line')


def test_an_unexpected_error_is_one_line_and_status_70(monkeypatch, capsys, sqlite_url):
    def crash(db, args):
        raise KeyError('boom')

    monkeypatch.setattr(cli, 'cmd_list_orgs', crash)
    monkeypatch.delenv('CRMAPI_DEBUG', raising=False)
    refused_in_process(capsys, ['--database', sqlite_url, 'list-orgs'], "crmapi: unexpected KeyError: 'boom'", 70)
    monkeypatch.setenv('CRMAPI_DEBUG', '1')
    with pytest.raises(SystemExit) as exit_:
        cli.main(['--database', sqlite_url, 'list-orgs'])
    err = capsys.readouterr().err
    assert exit_.value.code == 70 and 'Traceback' in err and err.splitlines()[-1].startswith('crmapi: unexpected')


def test_a_reader_that_stops_early_gets_no_complaint(sqlite_url):
    for i in range(3):
        cli.main(['--database', sqlite_url, 'create-org', f'Org {i}'])
    reader = subprocess.Popen(
        [sys.executable, '-m', 'crmapi', '--database', sqlite_url, 'list-orgs'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        text=True,
    )
    reader.stdout.close()  # like `| head -0`: gone before the first line is written
    err = reader.stderr.read()
    reader.wait(timeout=60)
    assert err == ''
