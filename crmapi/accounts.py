"""Organizations, CRM users and API tokens: who is calling, and how they got a token.

A token is `bos_crm_<secret>`; only its SHA-256 digest is stored, so a database dump holds no
usable credential. Lookups compare digests through a unique index.
"""
import datetime
import hashlib
import logging
import secrets
from dataclasses import dataclass

from pypika import Table

from . import sqlbuild
from .errors import Conflict
from .errors import Unauthorized
from .schema import BUILTIN
from .schema import Catalog
from .store import Store
from .store import new_id
from .store import utc_now
from .values import format_timestamp

TOKEN_PREFIX = 'bos_crm_'
TOUCH_INTERVAL = datetime.timedelta(minutes=1)
# NOTE: one answer for every failing token: telling "expired" from "revoked" from "never existed"
# would tell a holder of a stolen token which ones are worth keeping. The reason goes to our log.
INVALID_TOKEN = 'A valid bearer token is required'
log = logging.getLogger('crmapi')


@dataclass(frozen=True)
class Principal:
    """The caller, as authentication established it."""

    org_id: str
    user_id: str
    is_admin: bool = False
    token_id: str = None
    is_system: bool = False     # the server itself (the CLI, automation), not a user: recorded as `system`

    @classmethod
    def system(cls, org_id):
        """The server acting for an organization: an administrator without a user or a token."""
        return cls(org_id, None, True, None, True)


def token_digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, db, clock=utc_now):
        self.db = db
        self.clock = clock
        self._users = None     # the crm_users whitelist, loaded when a user is first created

    def _insert(self, tx, table, row):
        d = self.db.dialect
        t = Table(table)
        kinds = {'created_at': 'timestamp', 'updated_at': 'timestamp', 'expires_at': 'timestamp',
                 'administrator': 'boolean'}
        query = d.into(t).columns(*row).insert(*[sqlbuild.Bound(d.adapt(kinds.get(k, 'text'), v))
                                                      for k, v in row.items()])
        tx.execute(*d.render(query))

    def create_org(self, name, unique=False):
        """A new organization's id; with `unique`, a Conflict if one of that name (ignoring case) exists."""
        org_id = new_id('org_')
        with self.db.transaction(write=True) as tx:
            if unique:
                self._refuse_duplicate(tx, name)
            self._insert(tx, 'organizations', {'id': org_id, 'name': name, 'created_at': self.clock()})
        return org_id

    def _refuse_duplicate(self, tx, name):
        # NOTE: compared in Python: SQL's LOWER() folds only ASCII on SQLite (and under the C locale).
        d = self.db.dialect
        orgs = Table('organizations')
        for org_id, existing in tx.rows(*d.render(d.from_(orgs).select(orgs.id, orgs.name))):
            if existing.casefold() == name.casefold():
                raise Conflict(f"an organization named '{existing}' already exists ({org_id})", field='name')

    def list_orgs(self):
        d = self.db.dialect
        orgs = Table('organizations')
        with self.db.transaction() as tx:
            return tx.rows(*d.render(d.from_(orgs).select(orgs.id, orgs.name).orderby(orgs.created_at)))

    def ensure_user(self, tx, org_id, email, admin=False):
        """The id of the CRM user with `email` in `org_id`, created if needed."""
        d = self.db.dialect
        users = Table('crm_users')
        found = tx.one(*d.render(d.from_(users).select(users.id, users.administrator).where(
            (users.organization_id == sqlbuild.Bound(org_id)) & (users.email == sqlbuild.Bound(email)))))
        if found:
            if admin and not found[1]:
                tx.execute(*d.render(d.update(users).set(users.administrator, sqlbuild.Bound(
                    d.adapt('boolean', True))).where(users.id == sqlbuild.Bound(found[0]))))
            return found[0]
        orgs = Table('organizations')
        if tx.one(*d.render(d.from_(orgs).select(orgs.id).where(orgs.id == sqlbuild.Bound(org_id)))) is None:
            raise LookupError(f'no organization {org_id}')
        user_id = new_id('u_')
        now = self.clock()
        self._insert(tx, 'crm_users', {'id': user_id, 'organization_id': org_id, 'email': email,
                                       'administrator': admin, 'created_at': now, 'updated_at': now})
        self._index_user(tx, org_id, {'id': user_id, 'email': email})
        return user_id

    def _index_user(self, tx, org_id, record):
        """The new user's search rows, written as the store writes every record's.

        NOTE: a schema older than the search rows (migration 0008) has none; migrating to it fills them in.
        """
        if self._users is None:
            if not self.db.table_exists('search_texts'):
                return
            self._users = Catalog.load(self.db, {'crm_users': BUILTIN['crm_users']})
        Store(self.db, self._users).index(tx, self._users.tables['crm_users'], org_id, [record], fresh=True)

    def create_token(self, org_id, email, admin=False, expires_at=None):
        """A new secret token for the user `email` of `org_id` (created if needed); returns the token."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.transaction(write=True) as tx:
            user_id = self.ensure_user(tx, org_id, email, admin)
            self._insert(tx, 'api_tokens', {
                'id': new_id('tok_'), 'organization_id': org_id, 'user_id': user_id,
                'token_hash': token_digest(token), 'created_at': self.clock(), 'expires_at': expires_at})
        return token

    def authenticate(self, token):
        """The Principal behind a bearer token, or Unauthorized (the same 401 whatever the reason)."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise _refuse('malformed token')
        d = self.db.dialect
        tokens, users = Table('api_tokens'), Table('crm_users')
        sql = d.memo('authenticate', lambda: d.from_(tokens).join(users).on(
            (users.organization_id == tokens.organization_id) & (users.id == tokens.user_id))
            .select(tokens.id, tokens.organization_id, tokens.user_id, users.administrator,
                    users.disabled, tokens.revoked_at, tokens.expires_at, tokens.last_used_at)
            .where(tokens.token_hash == sqlbuild.Bound(None)))
        with self.db.transaction() as tx:
            row = tx.one(sql, [token_digest(token)])
        if row is None:
            raise _refuse('unknown token')
        token_id, org_id, user_id, admin, disabled, revoked_at, expires_at, last_used_at = row
        now = self.clock()
        if revoked_at is not None:
            raise _refuse('revoked token', token_id)
        if disabled:
            raise _refuse('token of a disabled user', token_id)
        if expires_at is not None and _as_text(expires_at) <= _as_text(now):
            raise _refuse('expired token', token_id)
        self._touch(token_id, last_used_at, now)
        return Principal(org_id, user_id, bool(admin), token_id)

    def _touch(self, token_id, last_used_at, now):
        """Record use at most once a minute per token, so reads stay reads."""
        stale = _as_text(now - TOUCH_INTERVAL)
        if last_used_at is not None and _as_text(last_used_at) > stale:
            return
        d = self.db.dialect
        tokens = Table('api_tokens')
        ts = lambda value: sqlbuild.Bound(d.adapt('timestamp', value))  # noqa: E731
        query = d.update(tokens).set(tokens.last_used_at, ts(now)).where(
            (tokens.id == sqlbuild.Bound(token_id))
            & (tokens.last_used_at.isnull() | (tokens.last_used_at < ts(now - TOUCH_INTERVAL))))
        with self.db.transaction(write=True) as tx:
            tx.execute(*d.render(query))

    def list_tokens(self, org_id):
        """(id, email, created, last used, expires, revoked) per token of `org_id`; never a secret."""
        d = self.db.dialect
        tokens, users = Table('api_tokens'), Table('crm_users')
        query = (d.from_(tokens).join(users).on(
            (users.organization_id == tokens.organization_id) & (users.id == tokens.user_id))
            .select(tokens.id, users.email, tokens.created_at, tokens.last_used_at, tokens.expires_at,
                    tokens.revoked_at)
            .where(tokens.organization_id == sqlbuild.Bound(org_id)).orderby(tokens.created_at))
        with self.db.transaction() as tx:
            return [tuple(v if v is None or isinstance(v, str) else _as_text(v) for v in row)
                    for row in tx.rows(*d.render(query))]

    def revoke_token(self, token_id):
        """Revoke a token by id; its next request fails. Returns False if there is no such token."""
        d = self.db.dialect
        tokens = Table('api_tokens')
        query = d.update(tokens).set(tokens.revoked_at, sqlbuild.Bound(d.adapt('timestamp', self.clock()))) \
            .where((tokens.id == sqlbuild.Bound(token_id)) & tokens.revoked_at.isnull())
        with self.db.transaction(write=True) as tx:
            changed = tx.execute(*d.render(query))
            exists = tx.one(*d.render(d.from_(tokens).select(tokens.id).where(
                tokens.id == sqlbuild.Bound(token_id))))
        return changed > 0 or exists is not None


def _refuse(reason, token_id=None):
    """The one 401 for a failing token; the reason, and the token's id when known, go to the log
    (never the token or its digest)."""
    log.warning('authentication refused: %s%s', reason, f' ({token_id})' if token_id else '')
    return Unauthorized(INVALID_TOKEN)


def _as_text(value):
    return value if isinstance(value, str) else format_timestamp(value)
