"""Settings from CRMAPI_* environment variables, in one frozen value."""
import os
import re
from dataclasses import dataclass
from dataclasses import field

from .ratelimit import parse_rate


def _env(name, default, cast=str):
    raw = os.environ.get(name)
    return default if raw in (None, '') else cast(raw)


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
        raise ValueError(f'CRMAPI_WEBHOOK_RETRY_SCHEDULE is seconds between attempts, comma-separated (each at most '
                         f'a week), not {raw!r}')
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


@dataclass(frozen=True)
class Settings:
    database_url: str = 'sqlite:///crm.db'
    cors_origins: tuple = ('*',)
    max_body_bytes: int = 1024 * 1024
    max_import_bytes: int = 50 * 1024 * 1024     # a CSV import's body (POST with Content-Type: text/csv)
    max_page: int = 1000
    max_filters: int = 50
    max_value_length: int = 10_000
    statement_timeout_ms: int = 15_000
    pool_max_size: int = 4
    pool_timeout_s: float = 10.0
    access_log: bool = True
    sqlite_synchronous: str = 'FULL'
    secret_key: str = ''        # signs cursors; empty: a random key kept in the database (server_secrets)
    rate_limit: tuple = None        # (requests, seconds) per API token and process; None: no limit
    database_read_urls: tuple = ()  # read replicas of database_url (PostgreSQL streaming replicas)
    replica_max_lag_ms: int = 2000  # a replica further behind the primary than this is not read from
    pgbouncer: bool = False         # connections go through PgBouncer in transaction pooling mode
    history_days: int = 365         # `crmapi prune` deletes changes older than this
    webhook_allow_private: bool = False     # webhooks may target loopback and private addresses (never link-local)
    webhook_retry_schedule: tuple = (5, 300, 1800, 7200, 18000, 36000)   # seconds before each retry
    webhook_disable_after_s: float = 5 * 86_400     # a webhook failing this long is disabled
    webhook_timeout_s: float = 10.0
    webhook_concurrency: int = 16   # deliveries one worker has in flight
    webhook_poll_s: float = 0.1     # how often an idle worker looks for new changes
    extra: dict = field(default_factory=dict, repr=False)

    def __repr__(self):
        # NOTE: the URL may carry a password; never print it.
        return f'Settings(database={self.database_url.split("://")[0]}://…, cors_origins={self.cors_origins})'

    @classmethod
    def from_env(cls, **overrides):
        values = dict(
            database_url=_env('CRMAPI_DATABASE_URL', cls.database_url),
            cors_origins=_env('CRMAPI_CORS_ORIGINS', cls.cors_origins, _origins),
            max_body_bytes=_env('CRMAPI_MAX_BODY_BYTES', cls.max_body_bytes, int),
            max_import_bytes=_env('CRMAPI_MAX_IMPORT_BYTES', cls.max_import_bytes, int),
            max_page=_env('CRMAPI_MAX_PAGE', cls.max_page, int),
            max_filters=_env('CRMAPI_MAX_FILTERS', cls.max_filters, int),
            max_value_length=_env('CRMAPI_MAX_VALUE_LENGTH', cls.max_value_length, int),
            statement_timeout_ms=_env('CRMAPI_STATEMENT_TIMEOUT_MS', cls.statement_timeout_ms, int),
            pool_max_size=_env('CRMAPI_POOL_MAX_SIZE', cls.pool_max_size, int),
            pool_timeout_s=_env('CRMAPI_POOL_TIMEOUT_S', cls.pool_timeout_s, float),
            access_log=_env('CRMAPI_ACCESS_LOG', cls.access_log, lambda v: v.lower() not in ('0', 'false', 'no')),
            sqlite_synchronous=_env('CRMAPI_SQLITE_SYNCHRONOUS', cls.sqlite_synchronous, _synchronous),
            secret_key=_env('CRMAPI_SECRET_KEY', cls.secret_key, _secret),
            rate_limit=_env('CRMAPI_RATE_LIMIT', cls.rate_limit, parse_rate),
            database_read_urls=_env('CRMAPI_DATABASE_READ_URLS', cls.database_read_urls, _read_urls),
            replica_max_lag_ms=_env('CRMAPI_REPLICA_MAX_LAG_MS', cls.replica_max_lag_ms,
                                    _milliseconds('CRMAPI_REPLICA_MAX_LAG_MS')),
            pgbouncer=_env('CRMAPI_PGBOUNCER', cls.pgbouncer, _flag('CRMAPI_PGBOUNCER')),
            history_days=_env('CRMAPI_HISTORY_DAYS', cls.history_days, _days),
            webhook_allow_private=_env('CRMAPI_WEBHOOK_ALLOW_PRIVATE', cls.webhook_allow_private,
                                        _flag('CRMAPI_WEBHOOK_ALLOW_PRIVATE')),
            webhook_retry_schedule=_env('CRMAPI_WEBHOOK_RETRY_SCHEDULE', cls.webhook_retry_schedule, _schedule),
            webhook_disable_after_s=_env('CRMAPI_WEBHOOK_DISABLE_AFTER_S', cls.webhook_disable_after_s, float),
            webhook_timeout_s=_env('CRMAPI_WEBHOOK_TIMEOUT_S', cls.webhook_timeout_s, float),
            webhook_concurrency=_env('CRMAPI_WEBHOOK_CONCURRENCY', cls.webhook_concurrency, int),
            webhook_poll_s=_env('CRMAPI_WEBHOOK_POLL_S', cls.webhook_poll_s, float),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
