"""The `crmapi` command line: init-db, create-org, create-token, demo, serve."""
import argparse
import os
import sys
from . import migrations
from .accounts import Accounts
from .db import connect

DEFAULT_URL = 'sqlite:///crm.db'


def init_db(db):
    """Migrate from empty (or from wherever the database is); running it twice changes nothing."""
    return migrations.migrate(db, log=lambda message: print(message, file=sys.stderr))


def cmd_init_db(db, args):
    applied = init_db(db)
    print(f'schema at version {migrations.latest(db.name)}' + ('' if applied else ' (nothing to do)'),
          file=sys.stderr)


def cmd_migrate(db, args):
    applied = migrations.migrate(db, target=args.to, log=lambda message: print(message, file=sys.stderr))
    if not applied:
        print('already up to date', file=sys.stderr)


def cmd_create_org(db, args):
    print(Accounts(db).create_org(args.name))


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
        print(Accounts(db).create_token(args.org, args.email, admin=args.admin, expires_at=expires_at))
    except LookupError as exc:
        sys.exit(f'crmapi: {exc}')


def cmd_list_tokens(db, args):
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
    from .app import build_services
    store = build_services(db).custom.store
    orgs = [args.org] if args.org else [org_id for org_id, _ in Accounts(db).list_orgs()]
    for org_id in orgs:
        store.recount(Principal(org_id, None))
    print(f'recounted {len(orgs)} organization(s)', file=sys.stderr)


def cmd_define_object(db, args):
    """Define (or, if the slug exists, extend) a custom object from a JSON file."""
    import json
    from .accounts import Principal
    from .app import build_services
    from .errors import CrmError
    from .errors import NotFound
    try:
        with open(args.file) as f:
            body = json.load(f)
    except (OSError, ValueError) as exc:
        sys.exit(f'crmapi: cannot read {args.file}: {exc}')
    if args.org not in {org_id for org_id, _ in Accounts(db).list_orgs()}:
        sys.exit(f'crmapi: no organization {args.org}')
    custom = build_services(db).custom
    principal = Principal(args.org, None, is_admin=True)
    try:
        try:
            custom.get(args.org, body.get('slug') if isinstance(body, dict) else None)
            definition = custom.redefine(principal, body['slug'], body)
        except NotFound:
            definition = custom.define(principal, body)
    except CrmError as exc:
        sys.exit(f'crmapi: {exc.detail}')
    print(json.dumps(definition, indent=2))


def cmd_backup(db, args):
    """An online copy of a SQLite database (safe while the API serves it)."""
    if db.name != 'sqlite':
        sys.exit('crmapi: backup copies SQLite databases; for PostgreSQL use pg_dump (see the README)')
    import sqlite3
    target = sqlite3.connect(args.path)
    try:
        db.connection().backup(target)
    finally:
        target.close()
    print(f'backed up to {args.path}', file=sys.stderr)


def cmd_demo(db, args):
    from .demo import fill
    init_db(db)
    token = fill(db)
    print(token)


def cmd_serve(db, args):
    argv = [sys.executable, '-m', 'gunicorn', '--bind', args.bind, '--workers', str(args.workers),
            # NOTE: gthread, plus refused bodies drained and gunicorn's own errors as problem+json.
            '--threads', str(args.threads), '--worker-class', 'crmapi.serving.ThreadWorker',
            # NOTE: long filter URLs must reach the app, which answers them with a JSON 400.
            '--limit-request-line', '0', 'crmapi:create_app()']
    os.environ['CRMAPI_DATABASE_URL'] = args.database
    os.execv(sys.executable, argv)


def parser():
    p = argparse.ArgumentParser(prog='crmapi', description='A small, fast CRM REST API.')
    p.add_argument('--database', default=os.environ.get('CRMAPI_DATABASE_URL') or DEFAULT_URL,
                   help='sqlite:///crm.db (default) or postgresql://user:pass@host:port/dbname; '
                        'also CRMAPI_DATABASE_URL')
    sub = p.add_subparsers(dest='command', required=True)
    sub.add_parser('init-db', help='create the schema (idempotent)').set_defaults(func=cmd_init_db)
    s = sub.add_parser('migrate', help='apply pending schema migrations, one transaction per step')
    s.add_argument('--to', type=int, metavar='VERSION', help='stop at this version')
    s.set_defaults(func=cmd_migrate)
    s = sub.add_parser('create-org', help="create an organization; prints its id")
    s.add_argument('name')
    s.set_defaults(func=cmd_create_org)
    sub.add_parser('list-orgs', help='print each organization: id, tab, name').set_defaults(func=cmd_list_orgs)
    s = sub.add_parser('create-token', help='create an API token (and the user if needed); prints it')
    s.add_argument('--org', required=True)
    s.add_argument('--email', required=True)
    s.add_argument('--admin', action='store_true', help='make the user an administrator')
    s.add_argument('--expires-in', type=int, metavar='DAYS')
    s.set_defaults(func=cmd_create_token)
    s = sub.add_parser('list-tokens', help="list an organization's tokens (never their secrets)")
    s.add_argument('--org', required=True)
    s.set_defaults(func=cmd_list_tokens)
    s = sub.add_parser('revoke-token', help='revoke a token by its id (from list-tokens)')
    s.add_argument('token_id')
    s.set_defaults(func=cmd_revoke_token)
    s = sub.add_parser('recount', help='rebuild the live-row counters behind list totals')
    s.add_argument('--org', help='one organization (default: all)')
    s.set_defaults(func=cmd_recount)
    s = sub.add_parser('define-object', help='define or extend a custom object from a JSON file')
    s.add_argument('--org', required=True)
    s.add_argument('--file', required=True)
    s.set_defaults(func=cmd_define_object)
    s = sub.add_parser('backup', help='copy a live SQLite database to PATH (online backup API)')
    s.add_argument('path')
    s.set_defaults(func=cmd_backup)
    sub.add_parser('demo', help='fill a new organization with demo records; prints a token').set_defaults(
        func=cmd_demo)
    s = sub.add_parser('serve', help='serve the API with gunicorn')
    s.add_argument('--bind', default='127.0.0.1:8000')
    s.add_argument('--workers', type=int, default=2)
    s.add_argument('--threads', type=int, default=4)
    s.set_defaults(func=cmd_serve)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.command == 'serve':
        return cmd_serve(None, args)
    db = connect(args.database)
    try:
        args.func(db, args)
    finally:
        db.close()


if __name__ == '__main__':
    main()
