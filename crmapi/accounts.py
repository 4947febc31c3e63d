"""Organizations, CRM users and API tokens: who is calling, and how they got a token.

A token is `bos_crm_<secret>`; only its SHA-256 digest is stored, so a database dump holds no
usable credential. Lookups compare digests through a unique index.
"""

import datetime
import hashlib
import logging
import secrets
from dataclasses import dataclass

from . import authcache
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
    is_system: bool = False  # the server itself (the CLI, automation), not a user: recorded as `system`

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
        self._users = None  # the crm_users whitelist, loaded when a user is first created
        self.cache = authcache.TokenCache(self._read_generation)

    def create_org(self, name, unique=False):
        """A new organization's id; with `unique`, a Conflict if one of that name (ignoring case) exists."""
        org_id = new_id('org_')
        with self.db.transaction(write=True) as tx:
            if unique:
                self._refuse_duplicate(tx, name)
            tx.execute(*sqlbuild.build_org_insert(self.db.dialect, org_id, name, self.clock()))
        return org_id

    def _refuse_duplicate(self, tx, name):
        # NOTE: compared in Python: SQL's LOWER() folds only ASCII on SQLite (and under the C locale).
        for org_id, existing in tx.rows(*sqlbuild.build_org_names(self.db.dialect)):
            if existing.casefold() == name.casefold():
                raise Conflict(f"an organization named '{existing}' already exists ({org_id})", field='name')

    def list_orgs(self):
        with self.db.transaction() as tx:
            return tx.rows(*sqlbuild.build_org_names(self.db.dialect))

    def ensure_user(self, tx, org_id, email, admin=False):
        """The id of the CRM user with `email` in `org_id`, created if needed."""
        d = self.db.dialect
        found = tx.one(*sqlbuild.build_user_find(d, org_id, email))
        if found:
            if admin and not found[1]:
                tx.execute(*sqlbuild.build_user_make_admin(d, org_id, found[0]))
                tx.execute(*sqlbuild.build_auth_changed())  # NOTE: its cached tokens say "not an administrator"
            return found[0]
        if tx.one(*sqlbuild.build_organization(d, org_id)) is None:
            raise LookupError(f'no organization {org_id}')
        user_id = new_id('u_')
        now = self.clock()
        tx.execute(
            *sqlbuild.build_user_insert(
                d, org_id, {'id': user_id, 'email': email, 'administrator': admin, 'created_at': now, 'updated_at': now}
            )
        )
        self._index_user(tx, org_id, {'id': user_id, 'email': email})
        return user_id

    def _index_user(self, tx, org_id, record):
        """The new user's search rows, written as the store writes every record's.

        NOTE: a schema older than the search rows (migration 0019) has none; migrating to it fills them in.
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
            tx.execute(
                *sqlbuild.build_token_insert(
                    self.db.dialect,
                    org_id,
                    {
                        'id': new_id('tok_'),
                        'user_id': user_id,
                        'token_hash': token_digest(token),
                        'created_at': self.clock(),
                        'expires_at': expires_at,
                    },
                )
            )
        if admin:
            authcache.changed_here()  # the user may have been made an administrator (ensure_user)
        return token

    def authenticate(self, token):
        """The Principal behind a bearer token, or Unauthorized (the same 401 whatever the reason).

        A token verified by this process before answers without a database round trip while nothing that
        could withdraw it has changed (crmapi/authcache.py: within a second on every host).
        """
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise _refuse('malformed token')
        digest = token_digest(token)
        verified, generation = self.cache.lookup(digest)
        if verified is None:
            verified = self._verify(digest, generation)
        now = self.clock()
        if verified.expires_at is not None and _as_text(verified.expires_at) <= _as_text(now):
            raise _refuse('expired token', verified.principal.token_id)
        # NOTE: the once-a-minute test before the call: a token used within the minute (nearly every request) makes none
        if verified.touch_at is None or now >= verified.touch_at:
            self._touch(verified.principal.token_id, now)
            verified.touch_at = now + TOUCH_INTERVAL
        return verified.principal

    def _verify(self, digest, generation):
        """The token's row, checked, and cached under `generation` (read before the row was)."""
        sql = sqlbuild.build_authenticate(self.db.dialect)
        with self.db.transaction() as tx:
            row = tx.one(sql, [digest])
        if row is None:
            raise _refuse('unknown token')
        token_id, org_id, user_id, admin, disabled, revoked_at, expires_at, last_used_at = row
        if revoked_at is not None:
            raise _refuse('revoked token', token_id)
        if disabled:
            raise _refuse('token of a disabled user', token_id)
        # NOTE: when use is next recorded, as an instant, so that the requests that follow compare theirs unformatted.
        touch_at = None if last_used_at is None else _as_instant(last_used_at) + TOUCH_INTERVAL
        verified = authcache.Verified(
            Principal(org_id, user_id, bool(admin), token_id), expires_at, touch_at, generation
        )
        self.cache.put(digest, verified)
        return verified

    def _read_generation(self):
        with self.db.transaction() as tx:
            return tx.one(*sqlbuild.build_auth_generation())[0]

    def _touch(self, token_id, now):
        """Record the token's use, unless another request recorded it within the minute: at most once a minute per
        token (authenticate asks only then, by the cached Verified.touch_at), so reads stay reads."""
        with self.db.transaction(write=True) as tx:
            tx.execute(*sqlbuild.build_token_touch(self.db.dialect, token_id, now, now - TOUCH_INTERVAL))

    def list_tokens(self, org_id):
        """(id, email, created, last used, expires, revoked) per token of `org_id`; never a secret."""
        with self.db.transaction() as tx:
            return [
                tuple(v if v is None or isinstance(v, str) else _as_text(v) for v in row)
                for row in tx.rows(*sqlbuild.build_token_list(self.db.dialect, org_id))
            ]

    def revoke_token(self, token_id):
        """Revoke a token by id: refused within a second everywhere (authcache). False if there is no such token."""
        d = self.db.dialect
        with self.db.transaction(write=True) as tx:
            changed = tx.execute(*sqlbuild.build_token_revoke(d, token_id, self.clock()))
            exists = tx.one(*sqlbuild.build_token_exists(d, token_id))
            if changed:
                tx.execute(*sqlbuild.build_auth_changed())
        if changed:
            authcache.changed_here()
        return changed > 0 or exists is not None


def _refuse(reason, token_id=None):
    """The one 401 for a failing token; the reason, and the token's id when known, go to the log
    (never the token or its digest)."""
    log.warning('authentication refused: %s%s', reason, f' ({token_id})' if token_id else '')
    return Unauthorized(INVALID_TOKEN)


def _as_text(value):
    return value if isinstance(value, str) else format_timestamp(value)


def _as_instant(value):
    """A timestamp as SQLite stores it (format_timestamp's text) or PostgreSQL returns it, as an aware datetime."""
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value
