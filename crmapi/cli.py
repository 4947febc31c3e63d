"""The `crmapi` command line: init-db, create-org, create-token, import, demo, serve, worker.

Bad input or a bad environment ends in one line on stderr (`crmapi: …`) and a non-zero status,
never a traceback: exit 1 for a refusal, 2 for a malformed command line, 70 for a bug
(CRMAPI_DEBUG=1 then prints the traceback too).
"""

import argparse
import csv
import logging
import math
import os
import re
import signal
import sqlite3
import sys
import time
import traceback
from . import imports
from . import migrations
from .accounts import Accounts
from .db import connect
from .errors import Conflict
from .errors import CrmError
from .errors import NotFound

DEFAULT_URL = 'sqlite:///crm.db'
CONNECT_TIMEOUT_S = 5
MAX_EXPIRY_DAYS = 36_500
EX_SOFTWARE = 70
EMAIL = re.compile(r'[^@\s]+@[^@\s.][^@\s]*\Z')


class CliError(CrmError):
    """A command refused: bad input or a bad environment. main() prints its detail on one line."""


def settings():
    """Settings.from_env(), the app's own; a bad CRMAPI_* variable is one line naming it."""
    from .config import Settings

    try:
        return Settings.from_env()
    except ValueError as exc:
        raise CliError(str(exc)) from None


def services(db):
    """The app's services over `db` (crmapi.services), with the environment's settings."""
    from .services import build_services

    return build_services(db, settings())


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help, except where there is none (None, a flag's False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `crmapi: …` line, like every other refusal of the CLI."""

    def __init__(self, **kwargs):
        kwargs.setdefault('formatter_class', HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        self.exit(2, f'crmapi: {message} (see {self.prog} --help)\n')


def expiry_days(text):
    """--expires-in: a whole number of days, at least one (omit the option for no expiry)."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of days") from None
    if not 1 <= days <= MAX_EXPIRY_DAYS:
        raise argparse.ArgumentTypeError(
            f'{days} days: use 1 to {MAX_EXPIRY_DAYS}, or omit the option for a token that never expires'
        )
    return days


def history_days(text):
    """--days of prune: a whole number of days, at least one."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of days") from None
    if not 1 <= days <= MAX_EXPIRY_DAYS:
        raise argparse.ArgumentTypeError(f'{days} days: use 1 to {MAX_EXPIRY_DAYS}')
    return days


def email_address(text):
    if len(text) > 254 or not EMAIL.match(text):
        raise argparse.ArgumentTypeError(f"'{text}' is not an email address")
    return text


def org_name(text):
    name = text.strip()
    if not name or not name.isprintable():
        raise argparse.ArgumentTypeError(f'{text!r} is not an organization name (empty or unprintable)')
    return name


def init_db(db):
    """Migrate from empty (or from wherever the database is); running it twice changes nothing."""
    return migrations.migrate(db, log=lambda message: print(message, file=sys.stderr))


def cmd_init_db(db, args):
    applied = init_db(db)
    print(f'schema at version {migrations.latest(db.name)}' + ('' if applied else ' (nothing to do)'), file=sys.stderr)


def cmd_migrate(db, args):
    if args.to is not None:
        check_target(db, args.to)
    applied = migrations.migrate(db, target=args.to, log=lambda message: print(message, file=sys.stderr))
    if not applied:
        print('already up to date', file=sys.stderr)


def check_target(db, target):
    """Migrations only go forward, to a version that exists."""
    newest = migrations.latest(db.name)
    if not 1 <= target <= newest:
        raise CliError(f'no schema version {target}: versions run from 1 to {newest}')
    current = 0
    if db.table_exists('schema_version'):
        with db.transaction() as tx:
            current = migrations.current_version(tx)
    if target < current:
        raise CliError(f'the schema is at version {current}; migrations only go forward')


def cmd_create_org(db, args):
    try:
        print(Accounts(db).create_org(args.name, unique=not args.allow_duplicate))
    except Conflict as exc:
        raise CliError(f'{exc.detail}; pass --allow-duplicate to create another') from None


def require_org(db, org_id):
    if org_id not in {known for known, _ in Accounts(db).list_orgs()}:
        raise CliError(f'no organization {org_id}')


def cmd_list_orgs(db, args):
    for org_id, name in Accounts(db).list_orgs():
        print(f'{org_id}\t{name}')


def cmd_create_token(db, args):
    expires_at = None
    if args.expires_in is not None:
        import datetime as dt
        from .store import utc_now

        expires_at = utc_now() + dt.timedelta(days=args.expires_in)
    try:
        print(issue_token(db, args.org, args.email, args.admin, expires_at))
    except LookupError as exc:
        sys.exit(f'crmapi: {exc}')


def issue_token(db, org_id, email, admin, expires_at):
    """A new token (Accounts.create_token), in a transaction that records, as `system`, the user it creates
    or makes an administrator."""
    from .accounts import Principal
    from .history import created
    from .history import updated

    store = services(db).store
    users = store.catalog.resolve('crm_users')
    principal = Principal.system(org_id)

    def user(tx):
        found = store._by_key(tx, users, principal, users.columns['email'], [email])
        return found[0] if found else None

    with store.history.recorded(principal) as tx:
        before = user(tx)
        token = Accounts(db).create_token(org_id, email, admin=admin, expires_at=expires_at)
        after = user(tx)
        tx.changes.append(created(users.slug, after) if before is None else updated(users.slug, before, after))
    return token


def cmd_list_tokens(db, args):
    require_org(db, args.org)
    print('id\temail\tcreated\tlast_used\texpires\trevoked')
    for row in Accounts(db).list_tokens(args.org):
        print('\t'.join('-' if v is None else str(v) for v in row))


def cmd_revoke_token(db, args):
    if not Accounts(db).revoke_token(args.token_id):
        sys.exit(f'crmapi: no token {args.token_id}')
    print(f'revoked {args.token_id}', file=sys.stderr)


def cmd_recount(db, args):
    """Rebuild the live-row counters (needed only after rows were written around the API)."""
    from .accounts import Principal

    if args.org:
        require_org(db, args.org)
    store = services(db).store
    orgs = [args.org] if args.org else [org_id for org_id, _ in Accounts(db).list_orgs()]
    for org_id in orgs:
        store.recount(Principal(org_id, None))
    print(f'recounted {len(orgs)} organization(s)', file=sys.stderr)


def cmd_reindex(db, args):
    """Rebuild the search rows (needed only after rows were written around the API)."""
    from .store import reindex_database

    if args.org:
        require_org(db, args.org)
    done = reindex_database(db, [args.org] if args.org else None, log=lambda line: print(line, file=sys.stderr))
    print(f'reindexed {done} organization(s)', file=sys.stderr)


def cmd_define_object(db, args):
    """Define (or, if the slug exists, extend) a custom object from a JSON file."""
    import orjson
    from .accounts import Principal
    from .values import loads_strict

    try:
        with open(args.file, encoding='utf-8') as f:
            body = loads_strict(f.read())  # as strictly as the API reads the same body
    except (OSError, ValueError) as exc:
        raise CliError(f'cannot read {args.file}: {exc}') from None
    if not isinstance(body, dict):
        raise CliError(f'{args.file} must hold one JSON object: {{"slug": …, "fields": [...]}}')
    require_org(db, args.org)
    custom = services(db).custom
    principal = Principal.system(args.org)
    definition = existing_definition(custom, args.org, body)
    if definition is None:
        definition = custom.define(principal, body)
    elif not unchanged(definition, body):
        definition = custom.redefine(principal, body['slug'], body)
    print(orjson.dumps(definition, option=orjson.OPT_INDENT_2).decode())


def existing_definition(custom, org_id, body):
    """The definition `body` names by its slug, or None (then define() creates or refuses it)."""
    slug = body.get('slug')
    if not isinstance(slug, str):
        return None
    try:
        return custom.get(org_id, slug)
    except NotFound:
        return None


def unchanged(definition, body):
    """True when redefining `definition` with `body` would change nothing, so its version stays."""
    from .custom import parse_fields

    current = {f.name: f for f in parse_fields(definition['fields'])}
    return body.get('label', definition['label']) == definition['label'] and all(
        current.get(f.name) == f for f in parse_fields(body.get('fields', []))
    )


def cmd_prune(db, args):
    """Delete the changes, their automation runs and the sent webhook deliveries older than --days (default
    CRMAPI_HISTORY_DAYS), a thousand per transaction; never a change or a delivery the worker still has to send."""
    from .history import History
    from .store import new_ids
    from .store import utc_now

    days = args.days or settings().history_days
    pruned = History(db, utc_now, new_ids).retention(days)
    print(f'pruned {pruned["changes"]} change(s) older than {days} days', file=sys.stderr)
    print(
        f'pruned {pruned["webhook_deliveries"]} delivered or failed webhook delivery(ies) and '
        f'{pruned["automation_runs"]} automation run(s) older than {days} days',
        file=sys.stderr,
    )


def cmd_backup(db, args):
    """An online copy of a SQLite database (safe while the API serves it), written whole or not at all."""
    import tempfile

    if db.name != 'sqlite':
        raise CliError('backup copies SQLite databases; for PostgreSQL use pg_dump (see the README)')
    target = os.path.abspath(args.path)
    check_backup_target(db.path, target, args.force)
    try:
        fd, partial = tempfile.mkstemp(prefix='.crmapi-backup-', dir=os.path.dirname(target))
    except OSError as exc:
        raise CliError(f'cannot write {args.path}: {exc.strerror}') from None
    os.close(fd)
    try:
        copy = sqlite3.connect(partial)
        try:
            db.connection().backup(copy)
        finally:
            copy.close()
        os.replace(partial, target)
    except (OSError, sqlite3.Error) as exc:
        raise CliError(f'cannot back up to {args.path}: {exc}') from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    print(f'backed up to {args.path}', file=sys.stderr)


def check_backup_target(source, target, force):
    """A backup goes into an existing directory and replaces a file only when asked to."""
    if not os.path.isdir(os.path.dirname(target)):
        raise CliError(f'no directory {os.path.dirname(target)} for the backup')
    if os.path.isdir(target):
        raise CliError(f'{target} is a directory: name the backup file')
    if os.path.exists(target):
        if os.path.samefile(target, source):
            raise CliError(f'{target} is the database itself')
        if not force:
            raise CliError(f'{target} exists; pass --force to replace it')


def batch_size(text):
    """--batch: rows per transaction, at least one."""
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of rows") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f'{size} rows: a batch holds at least one row')
    return size


SYSTEM_USER = 'system'  # who the CLI's writes are made by: not a CRM user, an administrator of --org


class ImportProgress:
    """Rows, rows/s and an ETA (from the bytes read of the file) redrawn on a terminal; elsewhere (a log)
    one plain line at least every `interval` seconds."""

    WIDTH = 24

    def __init__(self, stream, total_bytes, interval=5.0):
        self.stream = stream
        self.total = max(total_bytes, 1)
        self.tty = stream.isatty()
        self.interval = 0.1 if self.tty else interval
        self.started = self.shown = time.monotonic()

    def rate(self, rows):
        return rows / max(time.monotonic() - self.started, 1e-6)

    def update(self, rows, bytes_read):
        now = time.monotonic()
        if now - self.shown < self.interval:
            return
        self.shown = now
        rate = self.rate(rows)
        if not self.tty:
            print(f'{rows:,} rows, {rate:,.0f} rows/s', file=self.stream, flush=True)
            return
        done = min(bytes_read / self.total, 1.0)
        eta = (now - self.started) * (1 - done) / done if done else 0
        bar = '#' * int(done * self.WIDTH)
        print(
            f'\r[{bar:<{self.WIDTH}}] {done:4.0%} {rows:,} rows, {rate:,.0f} rows/s, '
            f'ETA {int(eta) // 60}:{int(eta) % 60:02d} ',
            end='',
            file=self.stream,
            flush=True,
        )

    def finish(self):
        if self.tty:
            print(file=self.stream)


class StopAfterBatch:
    """While importing, the first Ctrl-C asks to stop once the current batch has landed; a second one
    interrupts at once (the batch's transaction is then rolled back)."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print('\ncrmapi: stopping after the current batch (Ctrl-C again to stop at once)', file=sys.stderr)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def errors_path(path):
    """`contacts.csv` -> `contacts.errors.csv`: where the lines that did not land go."""
    stem = path[:-4] if path.lower().endswith('.csv') else path
    return stem + '.errors.csv'


class ErrorsFile:
    """FILE.errors.csv: the header and each refused line's cells as read, plus a last column `error`.

    Written from the first refused line on; an older one (from an earlier run) is removed at the start.
    """

    def __init__(self, path, header):
        self.path, self.header, self.file, self.count = path, header, None, 0
        if os.path.exists(path):
            os.unlink(path)

    def write(self, refused):
        if refused and self.file is None:
            self.file = open(self.path, 'w', newline='', encoding='utf-8')
            self.writer = csv.writer(self.file, lineterminator='\r\n')
            self.writer.writerow([*self.header, 'error'])
        for row, detail in refused:
            self.writer.writerow([*row.cells, f'line {row.line}: {detail}'])
            self.count += 1

    def close(self):
        if self.file is not None:
            self.file.close()


def cmd_import(db, args):
    """Stream a CSV file into a resource, `--batch` rows a transaction, through the API's store path."""
    from .accounts import Principal

    require_org(db, args.org)
    db.for_bulk_writes()
    store = services(db).store
    principal = Principal(args.org, SYSTEM_USER, is_admin=True)
    info = store.catalog.resolve(args.resource, principal)
    store._check_writable(info, principal)
    write_batch = imports.batch_writer(store, info, principal, args.on_conflict)
    try:
        source = open(args.file, 'rb')
    except OSError as exc:
        raise CliError(f'cannot read {args.file}: {exc.strerror}') from None
    with source:
        counted = imports.CountingReader(source)
        records = imports.CsvRecords(info, counted)
        errors = ErrorsFile(errors_path(args.file), records.header)
        try:
            run_import(store, write_batch, records, counted, errors, args)
        finally:
            errors.close()


def run_import(store, write_batch, records, counted, errors, args):
    progress = ImportProgress(sys.stderr, os.path.getsize(args.file))
    rows = created = updated = 0
    last_line = 1  # the header
    stopped = None
    with StopAfterBatch() as stop:
        try:
            for batch in imports.chunks(records, args.batch):
                done_created, done_updated, refused = imports.land(store, write_batch, batch)
                created, updated, rows = created + done_created, updated + done_updated, rows + len(batch)
                errors.write(refused)
                last_line = batch[-1].line
                progress.update(rows, counted.count)
                if stop.requested:
                    stopped = 'stopped'
                    break
        except KeyboardInterrupt:
            stopped = 'interrupted'
        except CrmError as exc:
            progress.finish()
            raise CliError(
                f'{first_line(exc.detail)}; stopped there, the batches up to line {last_line} landed'
            ) from None
    progress.finish()
    summarize(args, progress, rows, created, updated, errors, stopped, last_line)


def summarize(args, progress, rows, created, updated, errors, stopped, last_line):
    """The last word of an import; exit status 1 unless every row landed."""
    landed = rows - errors.count
    print(
        f'{args.resource}: {landed:,} of {rows:,} rows imported ({created:,} created, {updated:,} updated), '
        f'{progress.rate(landed):,.0f} rows/s',
        file=sys.stderr,
    )
    if errors.count:
        print(f'{errors.count:,} lines refused: see {errors.path}', file=sys.stderr)
    if stopped:
        again = f'--on-conflict {args.on_conflict}' if args.on_conflict else '--on-conflict <a unique column>'
        print(
            f'crmapi: {stopped} after line {last_line}; run the same command with {again} to resume without duplicates',
            file=sys.stderr,
        )
    if stopped or errors.count:
        sys.exit(1)


def cmd_demo(db, args):
    from .demo import fill

    init_db(db)
    token = fill(db)
    print(token)


def cmd_worker(db, args):
    """Deliver webhooks and run automation rules until SIGTERM (the deliveries in flight finish first), or with
    --once until nothing is due."""
    from .worker import Worker

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    Worker(db, settings()).run(once=args.once)


SERVERS = ('granian', 'gunicorn')


def longest_request_s(settings):
    """The longest a legitimate request takes: a pooled connection's wait, then a statement at statement_timeout
    (the app answers 503 for both), plus a margin to write the answer (deploy/gunicorn.conf.py's timeout too)."""
    return math.ceil(settings.pool_timeout_s + settings.statement_timeout_ms / 1000) + 5


def serve_argv(args, settings):
    """The server's command line: gunicorn with crmapi's worker class, or granian with crmapi's server class; the
    options given, else the settings' bind, workers and threads."""
    app = args.app.removesuffix('()')
    bind, workers, threads = (
        args.bind or settings.bind,
        args.workers or settings.workers,
        args.threads or settings.threads,
    )
    if args.server == 'gunicorn':
        return [
            sys.executable,
            '-m',
            'gunicorn',
            '--bind',
            bind,
            '--workers',
            str(workers),
            # NOTE: gthread, plus refused bodies drained and gunicorn's own errors as problem+json.
            '--threads',
            str(threads),
            '--worker-class',
            'crmapi.serving.ThreadWorker',
            # NOTE: long filter URLs must reach the app, which answers them with a JSON 400.
            '--limit-request-line',
            '0',
            f'{app}()',
        ]
    host, _, port = bind.rpartition(':')
    return [
        sys.executable,
        '-m',
        'crmapi.serving_granian',
        '--interface',
        'wsgi',
        '--factory',
        '--http',
        '1',
        '--host',
        host.strip('[]'),
        '--port',
        port,
        '--workers',
        str(workers),
        '--blocking-threads',
        str(threads),
        # NOTE: a killed worker is replaced (crmapi.serving_granian.Server: also when killed soon after a
        # respawn); on SIGTERM a worker gets as long as the longest legitimate request before it is killed.
        '--respawn-failed-workers',
        '--workers-kill-timeout',
        str(longest_request_s(settings)),
        # NOTE: granian closes a kept-alive connection idle for this long (the default is 30 s): longer than the
        # 50 s deploy/nginx.conf keeps its idle upstream connections, or nginx may reuse one being closed (a 502).
        '--http1-header-read-timeout',
        '60000',
        # NOTE: the app writes the access log (CRMAPI_ACCESS_LOG), as under gunicorn.
        '--no-access-log',
        app,
    ]


def cmd_serve(db, args):
    """granian (the default) or gunicorn, with the options given, else CRMAPI_SERVER, CRMAPI_BIND, CRMAPI_WORKERS and
    CRMAPI_THREADS (Settings)."""
    if args.server not in SERVERS:  # NOTE: argparse checks `choices` on the command line only, not on a default
        raise CliError(f"CRMAPI_SERVER must be one of {', '.join(SERVERS)}, not '{args.server}'")
    os.environ['CRMAPI_DATABASE_URL'] = args.database
    os.execv(sys.executable, serve_argv(args, settings()))


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number of at least 1, got {text}')
    return value


def parser():
    p = Parser(prog='crmapi', description='A small, fast CRM REST API.')
    # NOTE: no default here: --help must not print a CRMAPI_DATABASE_URL that carries a password.
    p.add_argument(
        '--database',
        metavar='URL',
        help='sqlite:///relative.db, sqlite:////absolute.db or postgresql://user:pass@host:port/dbname '
        f'(default: CRMAPI_DATABASE_URL, else {DEFAULT_URL})',
    )
    sub = p.add_subparsers(dest='command', required=True, metavar='COMMAND')
    # `needs`: what must exist before the command runs ('schema': a migrated database; 'file': the
    # database itself; None: nothing, the command creates it).
    sub.add_parser('init-db', help='create the schema (idempotent)').set_defaults(func=cmd_init_db, needs=None)
    s = sub.add_parser('migrate', help='apply pending schema migrations, one transaction per step')
    s.add_argument('--to', type=int, metavar='VERSION', help='stop at this version (default: the newest)')
    s.set_defaults(func=cmd_migrate, needs=None)
    s = sub.add_parser('create-org', help='create an organization; prints its id')
    s.add_argument(
        'name',
        metavar='NAME',
        type=org_name,
        help="the organization's name; refused if one of that name exists (ignoring case)",
    )
    s.add_argument('--allow-duplicate', action='store_true', help='create it even if the name is taken')
    s.set_defaults(func=cmd_create_org, needs='schema')
    sub.add_parser('list-orgs', help='print each organization: id, tab, name').set_defaults(
        func=cmd_list_orgs, needs='schema'
    )
    s = sub.add_parser('create-token', help='create an API token (and the user if needed); prints it')
    s.add_argument('--org', required=True, metavar='ORG_ID', help='the organization (from list-orgs)')
    s.add_argument('--email', required=True, type=email_address, help="the user's email address")
    s.add_argument('--admin', action='store_true', help='make the user an administrator')
    s.add_argument(
        '--expires-in',
        type=expiry_days,
        metavar='DAYS',
        help=f'days until the token expires, 1 to {MAX_EXPIRY_DAYS} (default: never)',
    )
    s.set_defaults(func=cmd_create_token, needs='schema')
    s = sub.add_parser('list-tokens', help="list an organization's tokens (never their secrets)")
    s.add_argument('--org', required=True, metavar='ORG_ID', help='the organization (from list-orgs)')
    s.set_defaults(func=cmd_list_tokens, needs='schema')
    s = sub.add_parser('revoke-token', help='revoke a token by its id (from list-tokens)')
    s.add_argument('token_id', help="the token's id (tok_…), as list-tokens prints it")
    s.set_defaults(func=cmd_revoke_token, needs='schema')
    s = sub.add_parser('recount', help='rebuild the live-row counters behind list totals')
    s.add_argument('--org', metavar='ORG_ID', help='one organization (default: all)')
    s.set_defaults(func=cmd_recount, needs='schema')
    s = sub.add_parser('reindex', help='rebuild the search rows behind q and the text operators')
    s.add_argument('--org', metavar='ORG_ID', help='one organization (default: all)')
    s.set_defaults(func=cmd_reindex, needs='schema')
    s = sub.add_parser('define-object', help='define or extend a custom object from a JSON file')
    s.add_argument('--org', required=True, metavar='ORG_ID', help='the organization (from list-orgs)')
    s.add_argument('--file', required=True, help='a JSON definition: {"slug": …, "label": …, "fields": [...]}')
    s.set_defaults(func=cmd_define_object, needs='schema')
    s = sub.add_parser(
        'prune', help='delete the change history and sent webhook deliveries older than --days, 1000 per transaction'
    )
    s.add_argument(
        '--days',
        type=history_days,
        metavar='DAYS',
        help='keep this many days of changes (default: CRMAPI_HISTORY_DAYS, else 365)',
    )
    s.set_defaults(func=cmd_prune, needs='schema')
    s = sub.add_parser('backup', help='copy a live SQLite database to PATH (online backup API)')
    s.add_argument('path', metavar='PATH', help='the backup file, in an existing directory')
    s.add_argument('--force', action='store_true', help='replace PATH if it exists')
    s.set_defaults(func=cmd_backup, needs='file')
    s = sub.add_parser('import', help='import a CSV file into a resource, a transaction per batch')
    s.add_argument('--org', required=True, metavar='ORG_ID', help='the organization (from list-orgs)')
    s.add_argument('resource', metavar='RESOURCE', help='contacts, companies, … or a custom object')
    s.add_argument('file', metavar='FILE.csv', help='a header row of field names, then one record a line')
    s.add_argument(
        '--on-conflict',
        metavar='COLUMN',
        help='update the record holding the same value of this unique column instead (resumes an '
        'interrupted import without duplicates)',
    )
    s.add_argument('--batch', type=batch_size, default=1000, help='rows per transaction')
    s.set_defaults(func=cmd_import, needs='schema')
    sub.add_parser('demo', help='fill a new organization with demo records; prints a token').set_defaults(
        func=cmd_demo, needs=None
    )
    s = sub.add_parser(
        'worker', help='deliver webhooks and run automation rules (beside the server; any number, on any host)'
    )
    s.add_argument('--once', action='store_true', help='deliver what is due now, then exit')
    s.set_defaults(func=cmd_worker, needs='schema')
    s = sub.add_parser('serve', help='serve the API with granian (default) or gunicorn')
    s.add_argument(
        '--server',
        choices=SERVERS,
        default=os.environ.get('CRMAPI_SERVER') or 'granian',
        help='the HTTP server (default: CRMAPI_SERVER, else granian)',
    )
    s.add_argument('--bind', help='address:port to listen on (default: CRMAPI_BIND, else 127.0.0.1:8000)')
    s.add_argument(
        '--workers', type=positive, help='worker processes (default: CRMAPI_WORKERS, else 2 x CPUs + 1, at most 8)'
    )
    s.add_argument(
        '--threads',
        type=positive,
        help='threads per worker, gunicorn threads or granian blocking threads '
        '(default: CRMAPI_THREADS, else CRMAPI_POOL_MAX_SIZE, 4)',
    )
    s.add_argument(
        '--app',
        default='crmapi:create_app',
        metavar='MODULE:FACTORY',
        help='the WSGI app factory, called once per worker (default: crmapi:create_app)',
    )
    s.set_defaults(func=cmd_serve)
    return p


def open_url(url):
    """The Database for a URL, configured from the settings as the app's is, or a CliError saying what is wrong
    with the URL or the settings.

    NOTE: the server's settings (CRMAPI_PGBOUNCER above all: a worker or a migration going through PgBouncer must
    not keep prepared statements; the statement timeout, SQLite's synchronous) apply to every command too.
    """
    env = settings()
    try:
        db = connect(url, pgbouncer=env.pgbouncer)
    except ValueError as exc:
        raise CliError(f'bad database URL: {exc}') from None
    db.configure(env)
    return db


def check_sqlite_directory(db):
    if db.name == 'sqlite' and db.path != ':memory:':
        directory = os.path.dirname(os.path.abspath(db.path))
        if not os.path.isdir(directory):
            raise CliError(f'no directory {directory} for the SQLite database {db.path}')


def open_database(url, needs):
    """The database, checked as far as the command `needs`, before the command touches it."""
    db = open_url(url)
    if db.name == 'sqlite':
        check_sqlite_directory(db)
        if needs and db.path != ':memory:' and not os.path.isfile(db.path):
            # NOTE: opening the file would create it; a command that reads must not leave one behind.
            raise CliError(f'no SQLite database at {db.path}: run crmapi init-db first')
        try:
            db.connection()
        except sqlite3.Error as exc:
            raise CliError(f'cannot open the SQLite database {db.path}: {exc}') from None
    else:
        check_postgres(db)
    if needs == 'schema':
        check_schema(db)
    return db


def check_postgres(db):
    """One direct connection with a short timeout: an unreachable server is one line after seconds,
    not the pool's retries logged for the length of its timeout."""
    import psycopg

    logging.getLogger('psycopg.pool').setLevel(logging.CRITICAL)
    db.pool_args.update(timeout=CONNECT_TIMEOUT_S)
    try:
        psycopg.connect(db.url, connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg.Error as exc:
        raise CliError(f'cannot connect to PostgreSQL: {first_line(exc)}') from None


def check_schema(db):
    if not db.table_exists('schema_version'):
        raise CliError('the database has no crmapi schema: run crmapi init-db first')
    with db.transaction() as tx:
        current = migrations.current_version(tx)
    newest = migrations.latest(db.name)
    if current < newest:
        raise CliError(f'the schema is at version {current}, this crmapi needs {newest}: run crmapi migrate first')


def first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def run(args):
    args.database = args.database or os.environ.get('CRMAPI_DATABASE_URL') or DEFAULT_URL
    if args.command == 'serve':
        # NOTE: only the URL is checked: the app itself waits out an unreachable database (503s).
        check_sqlite_directory(open_url(args.database))
        return cmd_serve(None, args)
    db = open_database(args.database, args.needs)
    try:
        args.func(db, args)
    finally:
        db.close()


def main(argv=None):
    """Run one command; whatever goes wrong ends in one `crmapi: …` line and a non-zero status."""
    args = parser().parse_args(argv)
    try:
        run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # NOTE: `crmapi list-orgs | head -1` closes stdout early: nothing to report, and nothing
        # more may be written (the interpreter's last flush would complain).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except CrmError as exc:
        sys.exit(f'crmapi: {first_line(exc.detail)}')
    except KeyboardInterrupt:
        print('crmapi: interrupted', file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last guard: a bug still gets one line, not a traceback
        if os.environ.get('CRMAPI_DEBUG') == '1':
            traceback.print_exc()
        print(
            f'crmapi: unexpected {type(exc).__name__}: {first_line(exc)} (a bug: CRMAPI_DEBUG=1 shows the traceback)',
            file=sys.stderr,
        )
        sys.exit(EX_SOFTWARE)


if __name__ == '__main__':
    main()
