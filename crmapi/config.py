"""Settings from CRMAPI_* environment variables, in one frozen value."""

import os
import re
from dataclasses import dataclass
from dataclasses import field

from .ratelimit import parse_rate


def _synchronous(raw):
    value = raw.strip().upper()
    if value not in ('FULL', 'NORMAL', 'EXTRA'):
        raise ValueError(f'CRMAPI_SQLITE_SYNCHRONOUS is FULL, NORMAL or EXTRA, not {raw!r}')
    return value


MIN_SECRET_LENGTH = 16


def _secret(raw):
    if len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(f'CRMAPI_SECRET_KEY needs at least {MIN_SECRET_LENGTH} characters (a random string)')
    return raw


def _days(raw):
    days = int(raw) if raw.strip().isdigit() else 0
    if not 1 <= days <= 36_500:
        raise ValueError(f'CRMAPI_HISTORY_DAYS is a whole number of days from 1 to 36500, not {raw!r}')
    return days


def _schedule(raw):
    try:
        steps = tuple(float(part) for part in raw.split(','))
    except ValueError:
        steps = ()
    if not steps or any(not 0 <= step <= 7 * 86_400 for step in steps):
        raise ValueError(
            f'CRMAPI_WEBHOOK_RETRY_SCHEDULE is seconds between attempts, comma-separated (each at most '
            f'a week), not {raw!r}'
        )
    return steps


def _origins(raw):
    return tuple(o.strip() for o in raw.split(',') if o.strip())


def _read_urls(raw):
    """CRMAPI_DATABASE_READ_URLS: PostgreSQL URLs separated by commas.

    NOTE: a libpq URL may itself hold commas (`postgresql://h1:5432,h2:5432/crm`), so the list is cut
    only before a scheme. The URLs are never echoed: they may carry passwords.
    """
    urls = tuple(u.strip() for u in re.split(r',\s*(?=postgres(?:ql)?://)', raw.strip()) if u.strip())
    for index, url in enumerate(urls, 1):
        if not url.startswith(('postgresql://', 'postgres://')):
            raise ValueError(f'CRMAPI_DATABASE_READ_URLS: URL {index} is not a postgresql:// URL')
    return urls


def _flag(name):
    def parse(raw):
        value = raw.strip().lower()
        if value not in ('1', 'true', 'yes', '0', 'false', 'no'):
            raise ValueError(f'{name} is 1 or 0, not {raw!r}')
        return value in ('1', 'true', 'yes')

    return parse


def _milliseconds(name):
    def parse(raw):
        if not raw.strip().isdigit():
            raise ValueError(f'{name} is a whole number of milliseconds, not {raw!r}')
        return int(raw)

    return parse


def _workers():
    """gunicorn's worker processes by default: 2 x CPUs + 1, at most 8 (bounded database connections)."""
    return min(2 * (os.cpu_count() or 1) + 1, 8)


@dataclass(frozen=True)
class Settings:
    database_url: str = 'sqlite:///crm.db'
    cors_origins: tuple = ('*',)
    max_body_bytes: int = 1024 * 1024
    max_import_bytes: int = 50 * 1024 * 1024  # a CSV import's body (POST with Content-Type: text/csv)
    max_page: int = 1000
    max_filters: int = 50
    max_value_length: int = 10_000
    statement_timeout_ms: int = 15_000
    pool_max_size: int = 4
    pool_timeout_s: float = 10.0
    access_log: bool = True
    sqlite_synchronous: str = 'FULL'
    secret_key: str = ''  # signs cursors; empty: a random key kept in the database (server_secrets)
    rate_limit: tuple = None  # (requests, seconds) per API token and process; None: no limit
    database_read_urls: tuple = ()  # read replicas of database_url (PostgreSQL streaming replicas)
    replica_max_lag_ms: int = 2000  # a replica further behind the primary than this is not read from
    pgbouncer: bool = False  # connections go through PgBouncer in transaction pooling mode
    history_days: int = 365  # `crmapi prune` deletes changes older than this
    webhook_allow_private: bool = False  # webhooks may target loopback and private addresses (never link-local)
    webhook_retry_schedule: tuple = (5, 300, 1800, 7200, 18000, 36000)  # seconds before each retry
    webhook_disable_after_s: float = 5 * 86_400  # a webhook failing this long is disabled
    webhook_timeout_s: float = 10.0
    webhook_concurrency: int = 16  # deliveries one worker has in flight
    webhook_poll_s: float = 0.1  # how often an idle worker looks for new changes
    # gunicorn's, read by deploy/gunicorn.conf.py and `crmapi serve`:
    bind: str = '127.0.0.1:8000'
    workers: int = field(default_factory=_workers)
    threads: int = None  # per worker; None: pool_max_size (one thread per pooled connection)
    proxy_ips: str = '127.0.0.1'  # peers whose X-Forwarded-* and SCRIPT_NAME headers are believed

    def __post_init__(self):
        if self.threads is None:
            object.__setattr__(self, 'threads', self.pool_max_size)

    def __repr__(self):
        # NOTE: the URL may carry a password; never print it.
        return f'Settings(database={self.database_url.split("://")[0]}://…, cors_origins={self.cors_origins})'

    @classmethod
    def from_env(cls, environ=None, **overrides):
        """The settings of `environ` (default: os.environ), then `overrides` that are not None; an empty
        variable is an unset one. A bad value is a ValueError naming its variable."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, variable, parse in ENVIRONMENT:
            raw = environ.get(variable)
            if raw in (None, ''):
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                raise ValueError(str(exc) if variable in str(exc) else f'{variable}: {exc}') from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# (Settings field, environment variable, parser): every setting and where it comes from (the README's
# Configuration table lists them all; tests/test_config.py checks that).
ENVIRONMENT = (
    ('database_url', 'CRMAPI_DATABASE_URL', str),
    ('cors_origins', 'CRMAPI_CORS_ORIGINS', _origins),
    ('max_body_bytes', 'CRMAPI_MAX_BODY_BYTES', int),
    ('max_import_bytes', 'CRMAPI_MAX_IMPORT_BYTES', int),
    ('max_page', 'CRMAPI_MAX_PAGE', int),
    ('max_filters', 'CRMAPI_MAX_FILTERS', int),
    ('max_value_length', 'CRMAPI_MAX_VALUE_LENGTH', int),
    ('statement_timeout_ms', 'CRMAPI_STATEMENT_TIMEOUT_MS', int),
    ('pool_max_size', 'CRMAPI_POOL_MAX_SIZE', int),
    ('pool_timeout_s', 'CRMAPI_POOL_TIMEOUT_S', float),
    ('access_log', 'CRMAPI_ACCESS_LOG', _flag('CRMAPI_ACCESS_LOG')),
    ('sqlite_synchronous', 'CRMAPI_SQLITE_SYNCHRONOUS', _synchronous),
    ('secret_key', 'CRMAPI_SECRET_KEY', _secret),
    ('rate_limit', 'CRMAPI_RATE_LIMIT', parse_rate),
    ('database_read_urls', 'CRMAPI_DATABASE_READ_URLS', _read_urls),
    ('replica_max_lag_ms', 'CRMAPI_REPLICA_MAX_LAG_MS', _milliseconds('CRMAPI_REPLICA_MAX_LAG_MS')),
    ('pgbouncer', 'CRMAPI_PGBOUNCER', _flag('CRMAPI_PGBOUNCER')),
    ('history_days', 'CRMAPI_HISTORY_DAYS', _days),
    ('webhook_allow_private', 'CRMAPI_WEBHOOK_ALLOW_PRIVATE', _flag('CRMAPI_WEBHOOK_ALLOW_PRIVATE')),
    ('webhook_retry_schedule', 'CRMAPI_WEBHOOK_RETRY_SCHEDULE', _schedule),
    ('webhook_disable_after_s', 'CRMAPI_WEBHOOK_DISABLE_AFTER_S', float),
    ('webhook_timeout_s', 'CRMAPI_WEBHOOK_TIMEOUT_S', float),
    ('webhook_concurrency', 'CRMAPI_WEBHOOK_CONCURRENCY', int),
    ('webhook_poll_s', 'CRMAPI_WEBHOOK_POLL_S', float),
    ('bind', 'CRMAPI_BIND', str),
    ('workers', 'CRMAPI_WORKERS', int),
    ('threads', 'CRMAPI_THREADS', int),
    ('proxy_ips', 'CRMAPI_PROXY_IPS', str),
)
