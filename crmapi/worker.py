"""`crmapi worker`: delivers webhooks and runs automation rules from the change history, a transactional outbox.

A write's changes commit with the write (crmapi/history.py). The worker then, for each organization whose
changes are ahead of its fan-out cursor:

1. fan-out: reads the changes after the cursor, and in ONE transaction inserts a delivery row per (matching
   enabled webhook, change) and moves the cursor past them. A change is never skipped (changes are numbered once
   committed, in one go, after every number given: crmapi.history) and never fanned out twice (the cursor moves
   with the rows, and a worker that finds the cursor moved under it drops its batch; (webhook, change) is unique
   besides).
2. delivery: claims due rows under a lease (`locked_until`; FOR UPDATE SKIP LOCKED on PostgreSQL), POSTs them
   from a small thread pool, and records each attempt: success, or the next try on the retry schedule, or
   failed. A worker killed mid-send leaves its lease to expire; another then sends the same message again
   (same webhook-id): at least once, never two workers at once.
3. rules: hands each change after the organization's rules cursor to its enabled automation rules
   (crmapi.rules.run_for_change; a rule's webhook actions queue deliveries sent as in 2).

NOTE: rules have a cursor of their own (automation_cursors), not the fan-out's: fan-out is one short transaction
per batch that only inserts rows, while a rule's actions are writes of their own that may fail, wait on locks or
be slow; on one cursor a stuck rule would hold every webhook event up (and a fan-out retry would hand changes to
rules again). Each cursor moves at its own pace; an organization without rules has no rules cursor at all.

Any number of workers may run, on any number of hosts. SIGTERM: the deliveries in flight finish and are
recorded, then the worker exits.
"""

import concurrent.futures
import datetime as dt
import logging
import random
import signal
import threading

import orjson

from . import rules
from . import sqlbuild
from . import values
from . import webhooks
from .accounts import Principal
from .errors import CrmError
from .errors import Unavailable
from .store import utc_now

log = logging.getLogger('crmapi.worker')
FANOUT_BATCH = 1000  # changes one fan-out transaction reads
RULES_BATCH = 100  # changes read at once for the rules
MAX_LOG = 50  # attempts kept in a delivery's attempt_log
JITTER = 0.1  # each retry's delay is the schedule's, give or take this fraction
OUTAGE_WAITS = (0.5, 10.0)  # first and longest wait before trying a database that was unavailable again
EVENT_RECORD = frozenset({'created', 'deleted', 'merged_into'})  # changes that carry the record itself


def apply(record, change):
    """The record after `change`, from the record before it."""
    if record is None:
        return None
    after = {**record, **{name: new for name, (old, new) in (change['changes'] or {}).items()}}
    if 'updated_at' in after:
        after['updated_at'] = change['changed_at']
    return after


class Worker:
    def __init__(self, db, settings, clock=utc_now):
        from .services import build_services

        self.db = db
        self.settings = settings
        services = build_services(db, settings)
        self.catalog, self.store = services.catalog, services.store
        self.clock = clock
        self.lease = dt.timedelta(seconds=settings.webhook_timeout_s * 2 + 1)  # a send, with room to record it
        self.stopping = threading.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max(1, settings.webhook_concurrency), thread_name_prefix='webhook'
        )
        self.read_hook = db.reader(['text', 'json', 'integer'])
        self.read_claim = db.reader(['text', 'text', 'text', 'text', 'text', 'integer', 'json', 'text', 'text'])

    def now(self):
        return values.format_timestamp(self.clock())

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, once=False):
        """Fan out and deliver until SIGTERM (or, `once`, until nothing is due)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
            signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        wait = OUTAGE_WAITS[0]
        try:
            while not self.stopping.is_set():
                try:
                    busy = self.step()
                except Unavailable as exc:
                    if once:
                        raise
                    # NOTE: a database restart, failover or full pool is not the worker's end: what is due stays
                    # due in the database, so waiting and trying again loses nothing.
                    log.warning('database unavailable (%s); trying again in %.1f s', exc.detail, wait)
                    self.stopping.wait(wait)
                    wait = min(wait * 2, OUTAGE_WAITS[1])
                    continue
                wait = OUTAGE_WAITS[0]
                if once and not busy:
                    break
                if not busy:
                    self.stopping.wait(self.settings.webhook_poll_s)
        finally:
            self.pool.shutdown(wait=True)

    def step(self):
        """One round: fan out what is new, run the rules on it, send what is due. Whether there was anything to do."""
        fanned = self.fan_out()
        ran = self.run_rules()
        sent = self.deliver_due()
        return bool(fanned or ran or sent)

    # -- fan-out -----------------------------------------------------------------------------------

    def fan_out(self):
        """Fan out every organization whose changes are ahead of its cursor: how many changes were read."""
        return sum(self.fan_out_org(org, cursor) for org, cursor in self.due('webhook_cursors'))

    def due(self, cursors):
        """(organization, cursor) of each organization whose numbered changes are ahead of its cursor (of
        sqlbuild.CURSOR_TABLES), once what was committed is numbered (crmapi.history)."""
        self.store.history.number_all()
        with self.db.transaction() as tx:
            return tx.rows(*sqlbuild.build_fanout_due(self.db.dialect, cursors))

    def fan_out_org(self, org, cursor):
        d = self.db.dialect
        with self.db.transaction() as tx:
            changes = [
                self.store.history._wire(r) for r in tx.rows(*sqlbuild.build_change_feed(d, org, cursor, FANOUT_BATCH))
            ]
            hooks = [self.read_hook(r) for r in tx.rows(*sqlbuild.build_enabled_webhooks(d, org))]
        if not changes:
            return 0
        rows = self.delivery_rows(org, changes, hooks)
        with self.db.transaction(write=True) as tx:
            locked = tx.one(*sqlbuild.build_fanout_lock(d, org))
            if locked is None or locked[0] != cursor:
                return 0  # another worker is at it, or was: its rows are in
            webhooks.queue(self.db, rows)
            tx.execute(*sqlbuild.build_fanout_advance(d, org, changes[-1]['seq']))
        return len(changes)

    def delivery_rows(self, org, changes, hooks):
        """The delivery rows of `changes` (in seq order) for the webhooks `hooks` that want them."""
        rows, states, now = [], {}, self.now()
        for change in changes:
            if change['resource'] in webhooks.NOT_EVENTS:
                continue
            kind = webhooks.event_type(change['resource'], change['operation'])
            wanted = [
                hook_id
                for hook_id, events, since in hooks
                if change['seq'] > since and webhooks.matches(events or [], kind)
            ]
            record = self.record_after(org, change, states)
            if not wanted:
                continue
            body = webhooks.event_body(kind, change, record)
            rows += [webhooks.delivery_row(org, change, kind, body, now, webhook_id=hook_id) for hook_id in wanted]
        return rows

    def record_after(self, org, change, states):
        """The record as `change` left it: carried by the change, or replayed from the record's history.

        NOTE: `states` carries each record through one batch, so a burst of updates to one record reads its
        history once.
        """
        key = (change['resource'], change['record_id'])
        if change['operation'] in EVENT_RECORD or (change['record'] is not None and not change['changes']):
            state = change['record']
        elif key in states:
            state = apply(states[key], change)
        else:
            state = self.replay(org, change)
        states[key] = state
        return state

    def replay(self, org, change):
        """The record after `change` from its history: the last full record up to it, then the changes since."""
        older, _ = self.store.history.of_record(org, change['resource'], change['record_id'], 0, FANOUT_BATCH)
        older = [c for c in reversed(older) if c['seq'] <= change['seq']]
        start = next((i for i in range(len(older) - 1, -1, -1) if older[i]['record'] is not None), None)
        if start is None:
            return self.current(org, change)
        state = older[start]['record']
        for later in older[start + 1 :]:
            state = apply(state, later)
        return state

    def current(self, org, change):
        """The record as it is now: its history was pruned (or it was written around the API)."""
        principal = Principal.system(org)
        try:
            return self.store.get(self.catalog.resolve(change['resource'], principal), principal, change['record_id'])
        except CrmError:
            return None

    # -- rules -------------------------------------------------------------------------------------

    def run_rules(self):
        """Hand every organization's changes past its rules cursor to its rules: how many changes were read."""
        read = 0
        for org, cursor in self.due('automation_cursors'):
            try:
                read += self.run_rules_org(org, cursor)
            except Exception:  # NOTE: nor webhooks nor other organizations wait on it: logged, tried next round
                log.exception('automation rules of organization %s failed after change %s', org, cursor)
        return read

    def run_rules_org(self, org, cursor):
        """Run the rules on a batch of the organization's changes after `cursor`, then move the cursor past them.

        NOTE: several workers may read the same batch: each (rule, change) acts at most once whatever the
        number of hands (crmapi.rules), and the cursor only moves from where this batch began (a worker that
        finds it moved leaves it). A crash before the cursor moves hands the batch over again, as harmlessly.
        """
        changes = self.store.history.feed(org, cursor, RULES_BATCH)
        enabled = rules.enabled_rules(self.store, Principal.system(org))
        watched, states = {r['trigger']['resource'] for r in enabled}, {}
        for change in changes:
            if change['resource'] in watched:
                record = self.record_after(org, change, states)
                for run in rules.run_for_change(self.store, change, rules.depth_of(change), org, enabled, record):
                    if run['status'] != 'applied':
                        log.info(
                            'rule %s on change %s: %s: %s', run['rule_id'], change['id'], run['status'], run['error']
                        )
        if not changes:
            return 0
        with self.db.transaction(write=True) as tx:
            tx.execute(*sqlbuild.build_rules_advance(self.db.dialect, org, cursor, changes[-1]['seq']))
        return len(changes)

    # -- delivery ----------------------------------------------------------------------------------

    def claim(self, limit):
        """Lease up to `limit` due deliveries: [(delivery, url, secret)]; the secret is None for a rule action's
        whose rule was deleted (its secret with it)."""
        d, now = self.db.dialect, self.clock()
        with self.db.transaction() as tx:
            if not tx.rows(*sqlbuild.build_due_deliveries(d, values.format_timestamp(now), 1)):
                return []
        with self.db.transaction(write=True) as tx:
            claimed = [
                dict(zip(sqlbuild.CLAIMED, self.read_claim(r)))
                for r in tx.rows(
                    *sqlbuild.build_claim_deliveries(
                        d, values.format_timestamp(now), values.format_timestamp(now + self.lease), limit
                    )
                )
            ]
            if not claimed:
                return []
            targets = {
                hook_id: (url, secret)
                for hook_id, url, secret in tx.rows(
                    *sqlbuild.build_delivery_targets(d, {c['webhook_id'] for c in claimed if c['webhook_id']})
                )
            }
            rule_ids = {c['rule_id'] for c in claimed if c['rule_id']}
            keys = dict(tx.rows(*sqlbuild.build_rule_secrets(d, rule_ids))) if rule_ids else {}
        out = [(c, *targets[c['webhook_id']]) for c in claimed if c['webhook_id'] in targets]
        return out + [(c, c['url'], keys.get(c['rule_id'])) for c in claimed if c['rule_id']]

    def deliver_due(self):
        """Send a batch of due deliveries, several at once, and record the attempts: how many were sent."""
        claimed = self.claim(max(1, self.settings.webhook_concurrency) * 4)
        if not claimed:
            return 0
        s, gone = self.settings, (None, 0, 'not sent: its automation rule was deleted')
        futures = [
            self.pool.submit(
                webhooks.send,
                url,
                webhooks.message_id(delivery),
                delivery['payload'].encode(),
                secret,
                s.webhook_timeout_s,
                s.webhook_allow_private,
            )
            if secret
            else None
            for delivery, url, secret in claimed
        ]
        results = [f.result() if f else gone for f in futures]
        self.record([(delivery, *result, secret is None) for (delivery, _, secret), result in zip(claimed, results)])
        return len(claimed)

    def record(self, attempts):
        """Record each attempt [(delivery, code, duration_ms, error, last)], and what it says of its webhook
        (`last`: no retry can succeed)."""
        d, at = self.db.dialect, self.clock()
        now, schedule = values.format_timestamp(at), self.settings.webhook_retry_schedule
        window = values.format_timestamp(at - dt.timedelta(seconds=self.settings.webhook_disable_after_s))
        with self.db.transaction(write=True) as tx:
            for delivery, code, duration, error, last in attempts:
                tries = delivery['attempts'] + 1
                entry = {'at': now, 'status_code': code, 'duration_ms': duration, 'error': error}
                attempt_log = orjson.dumps([*(delivery['attempt_log'] or [])[-(MAX_LOG - 1) :], entry]).decode()
                hook = delivery['webhook_id']  # NOTE: None for a rule's action: no webhook to mark or disable
                if error is None:
                    state, due, delivered = 'succeeded', now, now
                    if hook:
                        tx.execute(*sqlbuild.build_webhook_healthy(d, hook))
                else:
                    delivered = None
                    state = 'failed' if last or tries > len(schedule) else 'pending'
                    delay = schedule[tries - 1] * random.uniform(1 - JITTER, 1 + JITTER) if state == 'pending' else 0
                    due = values.format_timestamp(at + dt.timedelta(seconds=delay))
                    if hook:
                        self.failing(tx, hook, now, window, error)
                tx.execute(
                    *sqlbuild.build_delivery_attempted(
                        d, delivery['id'], state, tries, due, code, duration, error, attempt_log, now, delivered
                    )
                )

    def failing(self, tx, webhook_id, now, window, error):
        """Count the webhook failing from now (unless it already is); disable it once that is over the window."""
        d = self.db.dialect
        tx.execute(*sqlbuild.build_webhook_failing(d, webhook_id, now))
        reason = (
            f'Disabled at {now}: every delivery failed for {self.settings.webhook_disable_after_s:g} seconds; '
            f'the last error: {error}'
        )[:1000]
        if tx.execute(*sqlbuild.build_webhook_disable(d, webhook_id, window, reason, now)):
            log.warning('webhook %s disabled: %s', webhook_id, reason)
