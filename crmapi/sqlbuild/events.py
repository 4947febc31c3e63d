"""Change history, the change feed, the outbox, webhooks and their deliveries."""

import orjson
from pypika import Order
from pypika import Table
from pypika import functions as fn

from .core import Bound
from .core import Sql
from .core import _statement
from .core import _values
from .writes import _count_add
from .writes import _inserts


# -- change history --------------------------------------------------------------------------------

CHANGES = Table('changes')
CHANGE_COLUMNS = (
    'id',
    'organization_id',
    'seq',
    'resource',
    'record_id',
    'operation',
    'actor',
    'user_id',
    'token_id',
    'changed_at',
    'data',
)
CHANGE_OUTPUT = tuple(n for n in CHANGE_COLUMNS if n != 'organization_id')
CHANGE_KINDS = {'seq': 'integer', 'changed_at': 'timestamp', 'data': 'json'}


# NOTE: on PostgreSQL a write inserts its changes unnumbered (seq NULL) with a `tick` from the change_ticks
# sequence, taken by its last statement (after every lock it waited for), and holds no organization-wide lock; the
# first reader of the feed then numbers the committed unnumbered changes in tick order, under the organization's
# change counter row (History.number). SQLite has one writer at a time: a write numbers its changes itself.
PENDING_COLUMNS = (*CHANGE_COLUMNS, 'tick')


def build_change_numbers(d, org_id, count):
    """SQLite: take `count` change numbers of `org_id`: answers the last one. The counter row stays locked until
    the transaction ends, so the organization's changes commit in number order."""
    return _statement(d, 'change_numbers', lambda: _numbers(d.parameter().get_sql())), [org_id, int(count)]


def build_change_tick(d, org_id, counts=()):
    """PostgreSQL: add `counts` ([(table, delta)]) to the organization's live-row counters and take the tick of a
    write's changes (see PENDING_COLUMNS), in one statement (one round trip)."""

    def tick():
        kept = _counts_added(d, d.parameter().get_sql(), len(counts))
        return f'WITH {kept}{_TICK} SELECT tick FROM t'

    return _statement(d, ('change_tick', len(counts)), tick), _count_values(org_id, counts)


_TICK = "t AS MATERIALIZED (SELECT nextval('change_ticks') AS tick)"  # a write's tick, taken once by its statement


def _counts_added(d, p, n):
    """The CTEs (`k0 AS (…), `…) that add `n` counts to live-row counters, for a PostgreSQL statement's WITH."""
    return ''.join(f'k{i} AS ({_count_add(d, p)}), ' for i in range(n))


def _count_values(org_id, counts):
    return [value for table, delta in counts for value in (org_id, table, int(delta))]


def build_pending_changes(d, org_id, who, items, counts=()):
    """PostgreSQL: add `counts` ([(table, delta)]) to the organization's live-row counters and insert `items`
    unnumbered with one new tick, in one statement (one round trip).

    `who` is (actor, user_id, token_id, changed_at as text), shared by every change; each item is (id, resource,
    record_id, operation, data as JSON text). NOTE: VALUES in FROM types its columns as text, so the time and the
    JSON are cast; a CTE is evaluated once, so the write's changes share its tick.
    """

    def write():
        p = d.parameter().get_sql()
        kept = _counts_added(d, p, len(counts))
        return (
            f'WITH {kept}{_TICK} '
            f'INSERT INTO changes ({",".join(PENDING_COLUMNS)}) '
            f'SELECT v.id, {p}, NULL, v.resource, v.record_id, v.operation, {p}, {p}, {p}, '
            f'CAST({p} AS TIMESTAMPTZ), CAST(v.data AS JSON), t.tick FROM t, ({_values(d, len(items), 5)}) '
            'AS v (id, resource, record_id, operation, data)'
        )

    sql = _statement(d, ('pending_changes', len(items), len(counts)), write)
    return sql, [*_count_values(org_id, counts), org_id, *who, *[value for item in items for value in item]]


def _numbers(p):
    return (
        f'INSERT INTO change_counters (organization_id, n) VALUES ({p}, {p}) ON CONFLICT (organization_id) '
        'DO UPDATE SET n = change_counters.n + excluded.n RETURNING n'
    )


def build_unnumbered(d, org_id):
    """A row when the organization has committed changes not numbered yet (PostgreSQL)."""
    p = d.parameter().get_sql()
    return f'SELECT 1 FROM changes WHERE organization_id = {p} AND seq IS NULL LIMIT 1', [org_id]


def build_unnumbered_organizations(d):
    """The organizations that have committed changes not numbered yet (PostgreSQL)."""
    return 'SELECT DISTINCT organization_id FROM changes WHERE seq IS NULL ORDER BY organization_id', []


def build_numbering_lock(d, org_id):
    """The organization's last change number, its counter row locked until the transaction ends (made if
    missing). NOTE: a statement of its own: the statements after it, under READ COMMITTED, see every change
    committed before the lock was granted, the previous numbering's included."""
    p = d.parameter().get_sql()
    return (
        f'INSERT INTO change_counters (organization_id, n) VALUES ({p}, 0) ON CONFLICT (organization_id) '
        'DO UPDATE SET n = change_counters.n RETURNING n'
    ), [org_id]


def build_unnumbered_ids(d, org_id):
    """The ids of the organization's committed unnumbered changes, in the order they get their numbers: tick order,
    then id order (a write's own)."""
    p = d.parameter().get_sql()
    return f'SELECT id FROM changes WHERE organization_id = {p} AND seq IS NULL ORDER BY tick, id', [org_id]


def build_number_changes(d, org_id, last, ids):
    """Number the changes `ids` (build_unnumbered_ids) after `last`, in order, and move the organization's counter
    past them.

    NOTE: the ids come as one array and each row is found by its key: a join of the changes on themselves (by
    organization and seq IS NULL) let the planner, estimating one unnumbered row from statistics taken when there
    were none, scan them all again for each one (15 s for 7,000 changes)."""
    p = d.parameter().get_sql()
    sql = (
        f'WITH numbered AS (UPDATE changes c SET seq = CAST({p} AS BIGINT) + v.k '
        f'FROM unnest(CAST({p} AS TEXT[])) WITH ORDINALITY AS v (id, k) WHERE c.id = v.id RETURNING 1) '
        f'UPDATE change_counters SET n = CAST({p} AS BIGINT) + (SELECT COUNT(*) FROM numbered) '
        f'WHERE organization_id = {p} RETURNING n'
    )
    return sql, [int(last), list(ids), int(last), org_id]


def build_write_changes(d, rows):
    """The statements Tx.write_rows stores change `rows` with (tuples in CHANGE_COLUMNS order, PENDING_COLUMNS on
    PostgreSQL, `changed_at` as text, `data` as JSON text, as orjson makes it): PostgreSQL's COPY, SQLite's INSERT of
    each chunk (`_inserts`)."""
    if d.name == 'postgresql':
        return [(f'COPY changes ({",".join(PENDING_COLUMNS)}) FROM STDIN', rows)]
    return _inserts(d, ('write_changes',), f'INSERT INTO changes ({",".join(CHANGE_COLUMNS)}) ', rows)


def _change_select(d):
    return d.from_(CHANGES).select(*[CHANGES.field(n) for n in CHANGE_OUTPUT])


def build_record_changes(d, org_id, resource, record_id, start, size):
    """One page of a record's numbered changes, newest first."""

    def build():
        return (
            _change_select(d)
            .where(
                (CHANGES.organization_id == Bound(None))
                & (CHANGES.resource == Bound(None))
                & (CHANGES.record_id == Bound(None))
                & CHANGES.seq.notnull()
            )
            .orderby(CHANGES.seq, order=Order.desc)
        )

    p = d.parameter().get_sql()
    sql = d.memo('record_changes', build) + f' LIMIT {p} OFFSET {p}'
    return sql, [org_id, resource, record_id, int(size), int(start)]


def build_record_changes_count(d, org_id, resource, record_id):
    sql = d.memo(
        'record_changes_count',
        lambda: (
            d.from_(CHANGES)
            .select(fn.Count('*'))
            .where(
                (CHANGES.organization_id == Bound(None))
                & (CHANGES.resource == Bound(None))
                & (CHANGES.record_id == Bound(None))
                & CHANGES.seq.notnull()
            )
        ),
    )
    return sql, [org_id, resource, record_id]


def build_change_feed(d, org_id, after, limit, resource=None, hidden=()):
    """The organization's changes numbered above `after`, in number order; of one resource if given; none of
    the resources `hidden` (those the reader may not read)."""

    def build():
        condition = (CHANGES.organization_id == Bound(None)) & (CHANGES.seq > Bound(None))
        if resource is not None:
            condition &= CHANGES.resource == Bound(None)
        if hidden:
            condition &= Sql('NOT ({0})', d.one_of(CHANGES.resource, 'text', ['']))
        return _change_select(d).where(condition).orderby(CHANGES.seq)

    p = d.parameter().get_sql()
    sql = d.memo(('change_feed', resource is None, bool(hidden)), build) + f' LIMIT {p}'
    return sql, [
        org_id,
        int(after),
        *([] if resource is None else [resource]),
        *([_ids(d, sorted(hidden))] if hidden else []),
        int(limit),
    ]


def build_change_organizations(d):
    """The organizations that have recorded changes (each has its counter)."""
    return 'SELECT organization_id FROM change_counters ORDER BY organization_id', []


def build_oldest_changes(d, org_id, limit):
    """(seq, changed_at) of an organization's `limit` oldest numbered changes, by number."""
    p = d.parameter().get_sql()
    return (
        f'SELECT seq, changed_at FROM changes WHERE organization_id = {p} AND seq IS NOT NULL ORDER BY seq LIMIT {p}',
        [org_id, int(limit)],
    )


def build_delete_changes(d, org_id, up_to, cutoff):
    """Delete an organization's changes numbered at most `up_to` and made before `cutoff` (text)."""
    p = d.parameter().get_sql()
    return (
        f'DELETE FROM changes WHERE organization_id = {p} AND seq <= {p} AND changed_at < {p}',
        [org_id, int(up_to), cutoff],
    )


def build_outbox_cursor_read(d, org_id):
    """The lowest of the organization's worker cursors (webhook fan-out, automation rules): its changes numbered
    above it are not all handed on yet (NULL: no cursor, nothing waits)."""
    p = d.parameter().get_sql()
    return (
        f'SELECT MIN(seq) FROM (SELECT seq FROM webhook_cursors WHERE organization_id = {p} '
        f'UNION ALL SELECT seq FROM automation_cursors WHERE organization_id = {p}) AS cursors'
    ), [org_id, org_id]


def build_prune_runs(d, org_id, cutoff, kept_after, limit):
    """Delete up to `limit` of an organization's automation runs made before `cutoff` whose change is gone or
    is pruned next (made before `cutoff` too, and numbered at most `kept_after`)."""
    p = d.parameter().get_sql()
    sql = (
        f'DELETE FROM automation_runs WHERE id IN (SELECT r.id FROM automation_runs r WHERE r.organization_id = {p} '
        f'AND r.created_at < {p} AND NOT EXISTS (SELECT 1 FROM changes c WHERE c.id = r.change_id '
        f'AND (c.seq > {p} OR c.changed_at >= {p})) ORDER BY r.created_at LIMIT {p})'
    )
    return sql, [org_id, cutoff, int(kept_after), cutoff, int(limit)]


def build_prune_deliveries(d, org_id, cutoff, limit):
    """Delete up to `limit` of an organization's webhook deliveries no longer pending (succeeded or failed)
    whose last attempt was before `cutoff`. NOTE: a pending one (due, retrying, or being sent) always stays."""
    p = d.parameter().get_sql()
    sql = (
        f'DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries WHERE organization_id = {p} '
        f"AND status <> 'pending' AND updated_at < {p} ORDER BY id LIMIT {p})"
    )
    return sql, [org_id, cutoff, int(limit)]


# -- webhooks --------------------------------------------------------------------------------------
# NOTE: timestamps are bound as text (format_timestamp): SQLite compares that spelling, PostgreSQL gives an
# untyped parameter its column's type. The worker's statements are few and fixed, so they are written here whole.

DELIVERY_COLUMNS = (
    'id',
    'organization_id',
    'webhook_id',
    'change_id',
    'seq',
    'event_type',
    'payload',
    'status',
    'attempts',
    'next_attempt_at',
    'created_at',
    'updated_at',
    'rule_id',
    'url',
)
CLAIMED = ('id', 'organization_id', 'webhook_id', 'change_id', 'payload', 'attempts', 'attempt_log', 'rule_id', 'url')
# The cursors over the change feed: the webhooks' fan-out, and the automation rules' (crmapi.worker).
CURSOR_TABLES = ('webhook_cursors', 'automation_cursors')


def _ids_in(d, column):
    """`column` is one of the ids bound as ONE parameter (as Dialect.one_of)."""
    p = d.parameter().get_sql()
    return f'{column} IN (SELECT value FROM json_each({p}))' if d.name == 'sqlite' else f'{column} = ANY({p})'


def _ids(d, ids):
    return orjson.dumps(list(ids)).decode() if d.name == 'sqlite' else list(ids)


def build_webhook_secret_insert(d, webhook_id, secret):
    p = d.parameter().get_sql()
    return f'INSERT INTO webhook_secrets (webhook_id, secret) VALUES ({p}, {p})', [webhook_id, secret]


def build_webhook_secret_set(d, org_id, webhook_id, secret):
    """Replace the secret of the organization's webhook `webhook_id` (0 rows: not one of its webhooks)."""
    p = d.parameter().get_sql()
    sql = (
        f'UPDATE webhook_secrets SET secret = {p} WHERE webhook_id = '
        f'(SELECT id FROM webhooks WHERE organization_id = {p} AND id = {p})'
    )
    return sql, [secret, org_id, webhook_id]


def build_change_counter_read(d, org_id):
    """The organization's last change number (no row: none yet)."""
    p = d.parameter().get_sql()
    return f'SELECT n FROM change_counters WHERE organization_id = {p}', [org_id]


def build_webhook_cursor_init(d, org_id, seq, table='webhook_cursors'):
    """The organization's fan-out cursor (or another of CURSOR_TABLES), at `seq` if it has none yet."""
    assert table in CURSOR_TABLES
    p = d.parameter().get_sql()
    sql = f'INSERT INTO {table} (organization_id, seq) VALUES ({p}, {p}) ON CONFLICT (organization_id) DO NOTHING'
    return sql, [org_id, int(seq)]


def build_fanout_due(d, table='webhook_cursors'):
    """(organization, cursor) of every organization with changes its cursor (of CURSOR_TABLES) has not reached."""
    assert table in CURSOR_TABLES
    sql = (
        f'SELECT k.organization_id, k.seq FROM {table} k JOIN change_counters c '
        'ON c.organization_id = k.organization_id WHERE c.n > k.seq ORDER BY k.organization_id'
    )
    return sql, []


def build_rules_advance(d, org_id, old, new):
    """Move the organization's rules cursor from `old` to `new`: 0 rows when another worker moved it first."""
    p = d.parameter().get_sql()
    sql = f'UPDATE automation_cursors SET seq = {p} WHERE organization_id = {p} AND seq = {p}'
    return sql, [int(new), org_id, int(old)]


def build_rule_secret_insert(d, rule_id, secret):
    """The rule's secret, unless it has one: 1 row when this made it."""
    p = d.parameter().get_sql()
    sql = f'INSERT INTO automation_rule_secrets (rule_id, secret) VALUES ({p}, {p}) ON CONFLICT (rule_id) DO NOTHING'
    return sql, [rule_id, secret]


def build_rule_secrets(d, rule_ids):
    """(rule id, secret) of the rules `rule_ids` that have one."""
    return f'SELECT rule_id, secret FROM automation_rule_secrets WHERE {_ids_in(d, "rule_id")}', [_ids(d, rule_ids)]


def build_fanout_lock(d, org_id):
    """The organization's cursor, locked until the transaction ends; on PostgreSQL no row when another worker
    holds it (SKIP LOCKED: that worker fans the organization out). SQLite's writers take turns anyway."""
    p = d.parameter().get_sql()
    sql = f'SELECT seq FROM webhook_cursors WHERE organization_id = {p}'
    return (sql + ' FOR UPDATE SKIP LOCKED' if d.name == 'postgresql' else sql), [org_id]


def build_fanout_advance(d, org_id, seq):
    p = d.parameter().get_sql()
    return f'UPDATE webhook_cursors SET seq = {p} WHERE organization_id = {p}', [int(seq), org_id]


def build_enabled_webhooks(d, org_id):
    """(id, events, since_seq) of the organization's enabled webhooks."""
    p = d.parameter().get_sql()
    return f'SELECT id, events, since_seq FROM webhooks WHERE organization_id = {p} AND enabled', [org_id]


def build_insert_deliveries(d, rows):
    """One INSERT of delivery rows (tuples in DELIVERY_COLUMNS order); a (webhook, change) already there stays."""
    sql = _statement(
        d,
        ('insert_deliveries', len(rows)),
        lambda: (
            f'INSERT INTO webhook_deliveries ({",".join(DELIVERY_COLUMNS)}) '
            + _values(d, len(rows), len(DELIVERY_COLUMNS))
            + ' ON CONFLICT (webhook_id, change_id) DO NOTHING'
        ),
    )
    return sql, [value for row in rows for value in row]


def build_claim_deliveries(d, now, until, limit):
    """Lease up to `limit` due deliveries of enabled webhooks until `until`: their CLAIMED columns.

    NOTE: on PostgreSQL SKIP LOCKED lets workers claim side by side, each taking rows no other is taking; on
    SQLite BEGIN IMMEDIATE makes them take turns. The lease (locked_until) is what keeps a claimed row from
    being claimed again once the transaction is over, until the worker records the attempt or dies.
    """
    p = d.parameter().get_sql()
    lock = ' FOR UPDATE SKIP LOCKED' if d.name == 'postgresql' else ''
    due, params = build_due_deliveries(d, now, limit)
    sql = f'UPDATE webhook_deliveries SET locked_until = {p} WHERE id IN ({due}{lock}) RETURNING {", ".join(CLAIMED)}'
    return sql, [until, *params]


def build_due_deliveries(d, now, limit):
    """The ids of up to `limit` deliveries due at `now` and not leased, of enabled webhooks (or of automation
    rules' webhook actions), oldest first.

    NOTE: an idle worker asks this (a read) before it claims (a write: on SQLite, the database's write lock).
    """
    p = d.parameter().get_sql()
    sql = (
        f"SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= {p} "
        f'AND (locked_until IS NULL OR locked_until <= {p}) AND (webhook_id IS NULL OR webhook_id IN (SELECT id '
        f'FROM webhooks WHERE enabled)) ORDER BY next_attempt_at, seq LIMIT {p}'
    )
    return sql, [now, now, int(limit)]


def build_delivery_targets(d, webhook_ids):
    """(id, url, secret) of the webhooks `webhook_ids`."""
    sql = (
        f'SELECT w.id, w.url, s.secret FROM webhooks w JOIN webhook_secrets s ON s.webhook_id = w.id '
        f'WHERE {_ids_in(d, "w.id")}'
    )
    return sql, [_ids(d, webhook_ids)]


def build_delivery_attempted(
    d, delivery_id, status, attempts, next_attempt_at, code, duration_ms, error, log, now, delivered_at
):
    """Record one attempt and release the lease."""
    p = d.parameter().get_sql()
    sql = (
        f'UPDATE webhook_deliveries SET status = {p}, attempts = {p}, next_attempt_at = {p}, locked_until = NULL, '
        f'last_status_code = {p}, last_duration_ms = {p}, last_error = {p}, attempt_log = {p}, updated_at = {p}, '
        f'delivered_at = COALESCE({p}, delivered_at) WHERE id = {p}'
    )
    return sql, [status, attempts, next_attempt_at, code, duration_ms, error, log, now, delivered_at, delivery_id]


def build_webhook_healthy(d, webhook_id):
    p = d.parameter().get_sql()
    return f'UPDATE webhooks SET failing_since = NULL WHERE id = {p} AND failing_since IS NOT NULL', [webhook_id]


def build_webhook_failing(d, webhook_id, now):
    """Mark the webhook failing since `now` unless it already is."""
    p = d.parameter().get_sql()
    return (f'UPDATE webhooks SET failing_since = {p} WHERE id = {p} AND failing_since IS NULL', [now, webhook_id])


def build_webhook_disable(d, webhook_id, failing_before, reason, now):
    """Disable the webhook if it has been failing since before `failing_before`: 1 row if it was."""
    p = d.parameter().get_sql()
    sql = (
        f'UPDATE webhooks SET enabled = FALSE, disabled_reason = {p}, updated_at = {p} '
        f'WHERE id = {p} AND enabled AND failing_since <= {p}'
    )
    return sql, [reason, now, webhook_id, failing_before]


def build_webhook_enabled_again(d, org_id, webhook_id):
    """A webhook an administrator enables starts afresh: no reason to show, no failures counted."""
    p = d.parameter().get_sql()
    sql = f'UPDATE webhooks SET disabled_reason = NULL, failing_since = NULL WHERE organization_id = {p} AND id = {p}'
    return sql, [org_id, webhook_id]


def build_redeliver(d, org_id, delivery_id, now):
    """Make the organization's delivery due now, a new round of attempts; 0 rows when it is in flight."""
    p = d.parameter().get_sql()
    sql = (
        f"UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = {p}, updated_at = {p} "
        f'WHERE organization_id = {p} AND id = {p} AND (locked_until IS NULL OR locked_until <= {p})'
    )
    return sql, [now, now, org_id, delivery_id, now]
