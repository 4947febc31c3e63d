"""Organizations, users and tokens, the schema version, custom objects' tables (DDL) and server secrets."""

from pypika import Table

from .core import Bound
from .core import quote
from .writes import scoped


# -- organizations, users and tokens (crmapi.accounts) ---------------------------------------------

ORGS, USERS, TOKENS = Table('organizations'), Table('crm_users'), Table('api_tokens')
_ACCOUNT_KINDS = {
    'created_at': 'timestamp',
    'updated_at': 'timestamp',
    'expires_at': 'timestamp',
    'administrator': 'boolean',
}


def _account_insert(d, table, row):
    return d.render(
        d.into(table).columns(*row).insert(*[Bound(d.adapt(_ACCOUNT_KINDS.get(k, 'text'), v)) for k, v in row.items()])
    )


def build_org_insert(d, org_id, name, created_at):
    return _account_insert(d, ORGS, {'id': org_id, 'name': name, 'created_at': created_at})


def build_org_names(d):
    """(id, name) of every organization, oldest first."""
    return d.render(d.from_(ORGS).select(ORGS.id, ORGS.field('name')).orderby(ORGS.created_at))


def build_user_find(d, org_id, email):
    """(id, administrator) of the user `email` of `org_id`."""
    return d.render(
        d.from_(USERS)
        .select(USERS.id, USERS.administrator)
        .where((USERS.organization_id == Bound(org_id)) & (USERS.email == Bound(email)))
    )


def build_user_make_admin(d, org_id, user_id):
    return d.render(
        d.update(USERS)
        .set(USERS.administrator, Bound(d.adapt('boolean', True)))
        .where((USERS.organization_id == Bound(org_id)) & (USERS.id == Bound(user_id)))
    )


def build_user_insert(d, org_id, row):
    """A CRM user of `org_id` (`row`: its other columns)."""
    return _account_insert(d, USERS, scoped(org_id, [row])[0])


def build_token_insert(d, org_id, row):
    """An API token of `org_id` (`row`: its other columns)."""
    return _account_insert(d, TOKENS, scoped(org_id, [row])[0])


def build_authenticate(d):
    """The SQL finding a token by its digest (the one parameter), with its user's state."""
    return d.memo(
        'authenticate',
        lambda: (
            d.from_(TOKENS)
            .join(USERS)
            .on((USERS.organization_id == TOKENS.organization_id) & (USERS.id == TOKENS.user_id))
            .select(
                TOKENS.id,
                TOKENS.organization_id,
                TOKENS.user_id,
                USERS.administrator,
                USERS.disabled,
                TOKENS.revoked_at,
                TOKENS.expires_at,
                TOKENS.last_used_at,
            )
            .where(TOKENS.token_hash == Bound(None))
        ),
    )


def build_token_touch(d, token_id, now, stale):
    """Set a token's last use to `now` unless it was used after `stale`."""
    ts = lambda value: Bound(d.adapt('timestamp', value))  # noqa: E731
    return d.render(
        d.update(TOKENS)
        .set(TOKENS.last_used_at, ts(now))
        .where((TOKENS.id == Bound(token_id)) & (TOKENS.last_used_at.isnull() | (TOKENS.last_used_at < ts(stale))))
    )


def build_token_list(d, org_id):
    """(id, email, created, last used, expires, revoked) per token of `org_id`, oldest first."""
    return d.render(
        d.from_(TOKENS)
        .join(USERS)
        .on((USERS.organization_id == TOKENS.organization_id) & (USERS.id == TOKENS.user_id))
        .select(TOKENS.id, USERS.email, TOKENS.created_at, TOKENS.last_used_at, TOKENS.expires_at, TOKENS.revoked_at)
        .where(TOKENS.organization_id == Bound(org_id))
        .orderby(TOKENS.created_at)
    )


def build_token_revoke(d, token_id, now):
    return d.render(
        d.update(TOKENS)
        .set(TOKENS.revoked_at, Bound(d.adapt('timestamp', now)))
        .where((TOKENS.id == Bound(token_id)) & TOKENS.revoked_at.isnull())
    )


def build_token_exists(d, token_id):
    return d.render(d.from_(TOKENS).select(TOKENS.id).where(TOKENS.id == Bound(token_id)))


# -- schema version (crmapi.migrations) ------------------------------------------------------------

VERSION_TABLE = 'CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)'
VERSION_READ = 'SELECT MAX(version) FROM schema_version'


def build_version_set(version):
    """The statements recording that the database is at `version` (it holds one row)."""
    return ['DELETE FROM schema_version', f'INSERT INTO schema_version (version) VALUES ({int(version)})']


# NOTE: SQLite only. An index created on a database whose tables have statistics (sqlite_stat1) has none of its
# own, and the planner then takes its equality on organization_id for a near-unique key: after migration 0021
# every contacts list sorted all of an organization's rows through it (2.4 s at 100k) instead of walking the
# sort's index. Only such indexes are analyzed: a database without statistics keeps planning without them.
UNANALYZED_INDEXES = (
    "SELECT i.name FROM sqlite_master AS i WHERE i.type = 'index' "
    'AND EXISTS (SELECT 1 FROM sqlite_stat1 AS s WHERE s.tbl = i.tbl_name) '
    'AND NOT EXISTS (SELECT 1 FROM sqlite_stat1 AS s WHERE s.idx = i.name) ORDER BY i.name'
)
HAS_STATISTICS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"


def build_analyze_index(name):
    """Planner statistics of one SQLite index (see UNANALYZED_INDEXES)."""
    return f'ANALYZE {quote(name)}'


# -- custom object tables (DDL) --------------------------------------------------------------------
# Names reaching these builders passed custom.NAME (lowercase letters, digits, `_`) and are never
# SQL keywords; they are still quoted, and table names are made by the server.


def build_create_table(table, columns):
    """CREATE TABLE for a custom object: server-managed columns, then `columns` [(name, sql type)]."""
    parts = [
        'id TEXT PRIMARY KEY',
        'organization_id TEXT NOT NULL REFERENCES organizations (id)',
        'created_at TIMESTAMPTZ NOT NULL',
        'updated_at TIMESTAMPTZ NOT NULL',
        'archived_at TIMESTAMPTZ',
        *(f'{quote(name)} {sql_type}' for name, sql_type in columns),
        'UNIQUE (organization_id, id)',
    ]
    return f'CREATE TABLE {quote(table)} (\n    ' + ',\n    '.join(parts) + '\n)'


def build_add_column(table, name, sql_type):
    return f'ALTER TABLE {quote(table)} ADD COLUMN {quote(name)} {sql_type}'


def build_drop_column(table, name):
    return f'ALTER TABLE {quote(table)} DROP COLUMN {quote(name)}'


def build_create_index(table, index, column):
    """IF NOT EXISTS: a field taken over with its column may have its index already."""
    return f'CREATE INDEX IF NOT EXISTS {quote(index)} ON {quote(table)} (organization_id, {quote(column)})'


def build_create_unique_index(table, index, column):
    """Unique per organization among the records that have a value: the arbiter of an upsert on `column`."""
    return (
        f'CREATE UNIQUE INDEX {quote(index)} ON {quote(table)} (organization_id, {quote(column)}) '
        f'WHERE {quote(column)} IS NOT NULL'
    )


def build_drop_index(index):
    return f'DROP INDEX IF EXISTS {quote(index)}'


def build_lock_organization(d, org_id):
    """Lock an organization's row until the transaction ends (SQLite's writers take turns anyway).

    NOTE: FOR NO KEY UPDATE, not FOR UPDATE: the foreign key checks of the organization's record
    writes (FOR KEY SHARE) do not wait for it.
    """
    orgs = Table('organizations')
    sql, params = d.render(d.from_(orgs).select(orgs.id).where(orgs.id == Bound(org_id)))
    return (sql + ' FOR NO KEY UPDATE' if d.name == 'postgresql' else sql), params


# -- server secrets --------------------------------------------------------------------------------

SECRETS = Table('server_secrets')


def build_secret_init(d, name, value):
    """Store `value` as the secret `name` unless one is there: the first process to start wins, and
    every other process then reads that one back (build_secret_read), whichever host it runs on."""
    sql, params = d.render(
        d.into(SECRETS).columns(SECRETS.field('name'), SECRETS.field('value')).insert(Bound(name), Bound(value))
    )
    return sql + ' ON CONFLICT (name) DO NOTHING', params


def build_secret_read(d, name):
    return d.render(d.from_(SECRETS).select(SECRETS.field('value')).where(SECRETS.field('name') == Bound(name)))


# -- cached tokens (crmapi/authcache.py) ---------------------------------------------------------------


def build_auth_generation():
    """The number every change that can withdraw a token increments (none yet: 0)."""
    return 'SELECT COALESCE(MAX(generation), 0) FROM auth_generation', []


def build_auth_changed():
    """Increment it, in the transaction of the change (the row is made by the first one)."""
    return (
        'INSERT INTO auth_generation (id, generation) VALUES (1, 1) '
        'ON CONFLICT (id) DO UPDATE SET generation = auth_generation.generation + 1'
    ), []
