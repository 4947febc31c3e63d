"""Automation rules (issue 12): the rule shape, the condition evaluator and the runner.

A rule is `trigger` {"resource", "on": [operations], "fields": [names]}, `conditions` (a `filters` array of
the list query language over the trigger's resource) and `actions` (update, create_task, add_tag, webhook).
`check_rule` is the store's hook for rule writes (a 400 naming the member that does not fit), `written` the one
after them (the rules cursor, a rule's secret); `run_for_change` is what `crmapi worker` calls for each change of
the feed (see crmapi/worker.py for the cursor and the depth a change carries).

A rule's webhook actions are signed like webhooks (Standard Webhooks, crmapi.webhooks) with ONE secret per rule:
made by the server when the rule first has a webhook action, in the answer of that write only, kept for the rule's
life (deleting the rule deletes it). NOTE: per rule, not per action: a receiver verifies whatever the rule sends
with one key, and editing an action's URL (or adding one) does not hand out new secrets.

NOTE: `matches`/`holds` are THE Python evaluator of the list query language: rule conditions use it, and
tests/test_properties.py checks it against the SQL that lists run, on both databases.
"""

import dataclasses
import datetime as dt
import logging
from urllib.parse import urlsplit

import orjson

from . import query
from . import search
from . import sqlbuild
from . import values
from . import webhooks
from .accounts import Principal
from .errors import BadRequest
from .errors import CrmError
from .errors import InvalidValue
from .errors import RecordNotFound
from .errors import Unavailable
from .errors import UnknownResource
from .query import Filter
from .query import ListQuery
from .sqlbuild import SCOPE

log = logging.getLogger('crmapi.rules')
RULES, RUNS, TASKS = 'automation_rules', 'automation_runs', 'tasks'
OPERATIONS = ('created', 'updated', 'archived', 'restored', 'deleted')
TRIGGER_KEYS = ('resource', 'on', 'fields')
ACTIONS = {  # type -> (required members, optional members)
    'update': (('set',), ()),
    'create_task': (('text',), ('due_in_days', 'assignee_id')),
    'add_tag': (('tag_id',), ()),
    'webhook': (('url',), ()),
}
TASK_LINKS = {'deals': 'deal_id', 'contacts': 'contact_id', 'companies': 'company_id'}
MAX_ACTIONS = 20
MAX_DUE_DAYS = 3650
MAX_URL = 2048
MAX_DEPTH = 3  # a change made at this depth (a user's is 0) triggers no rule


# -- the evaluator: the list query language in Python -------------------------------------------------

NEGATED = {'neq': 'eq', 'not_in': 'in', 'not_contains': 'contains'}
ORDER = {'gt': lambda v, x: v > x, 'gte': lambda v, x: v >= x, 'lt': lambda v, x: v < x, 'lte': lambda v, x: v <= x}


def fold(text):
    """Case and accents folded as lists fold them (crmapi.search.fold: the text operators' SQL compares its output)."""
    return search.fold(text)


def matches(kind, v, op, x):
    """Whether a field of `kind` holding `v` passes `op` with the filter value `x` (both in values.check's
    canonical form; a tuple for in/not_in), exactly as a list's SQL decides."""
    if op in ('is_empty', 'is_not_empty'):
        empty = v is None or (kind == 'text' and v == '') or (kind == 'array' and v == [])
        return empty == (op == 'is_empty')
    if op in NEGATED:
        # NOTE: the complement of the positive operator: a NULL field fails every positive test on a value,
        # so a negation keeps it ("a deal without a status is not 'won'").
        return not matches(kind, v, NEGATED[op], x)
    if op == 'in':
        return any(matches(kind, v, 'eq', item) for item in x)
    if op == 'eq' and x is None:
        return v is None
    if v is None:
        return False
    if op == 'eq':
        return x in v if kind == 'array' else v == x
    if op in ORDER:
        return ORDER[op](v, x)
    if op == 'contains':
        return fold(x) in fold(v)
    if op == 'starts_with':
        return fold(v).startswith(fold(x))
    if op == 'ends_with':
        return fold(v).endswith(fold(x))
    raise ValueError(f'unknown operator {op!r}')


def holds(filters, record):
    """Whether `record` ({field: canonical value}) passes parsed `filters`, folded left to right: a
    filter's logicalOp joins the next one to what came before (no precedence), as in lists."""
    if not filters:
        return True

    def test(f):
        return matches(f.column.kind, record[f.column.name], f.op, f.value)

    result = test(filters[0])
    for previous, f in zip(filters, filters[1:]):
        result = (result or test(f)) if previous.logical == 'or' else (result and test(f))
    return result


def canonical(info, record):
    """A record as read ({field: JSON value}) in the form filter values are checked into (dates, Decimals)."""
    out = {}
    for name, column in info.columns.items():
        try:
            out[name] = values.check(column, record.get(name))
        except InvalidValue:  # NOTE: stored before a rule was made stricter: compared as it is
            out[name] = record.get(name)
    return out


# -- the shape -----------------------------------------------------------------------------------------


def _bad(field, detail):
    return InvalidValue(detail, field=field)


def check_rule(store, principal, rule, stored=None):
    """The store's hook for a rule write: `rule` as the write leaves it fits the shape, or a 400 naming the
    member that does not (`trigger.on`, `conditions`, `actions[1].set.amount`). `stored`: the rule before.

    NOTE: a webhook action's URL is resolved and checked (SSRF) when it is new to the rule only, so a rule
    whose host does not resolve today can still be edited or disabled; each delivery checks it again anyway.
    """
    info = trigger_resource(store, principal, rule.get('trigger'))
    parse_conditions(info, rule.get('conditions'))
    check_actions(store, principal, info, rule.get('actions'))
    known = {a.get('url') for a in (stored or {}).get('actions') or () if isinstance(a, dict)}
    for index, action in enumerate(rule['actions']):
        if action['type'] == 'webhook' and action['url'] not in known:
            try:
                webhooks.target(action['url'], store.webhook_allow_private)
            except webhooks.Refused as exc:
                raise _bad(f'actions[{index}].url', f'The webhook url {exc}') from None


def trigger_resource(store, principal, trigger):
    """The resource (TableInfo) a valid trigger watches."""
    if not isinstance(trigger, dict):
        raise _bad('trigger', """Field 'trigger' is an object {"resource", "on", "fields"}""")
    unknown = sorted(set(trigger) - set(TRIGGER_KEYS))
    if unknown:
        raise _bad(f'trigger.{unknown[0]}', f"A trigger has no member '{unknown[0]}': it takes resource, on, fields")
    slug, info = trigger.get('resource'), None
    if isinstance(slug, str):
        try:
            info = store.catalog.resolve(slug, principal)
        except UnknownResource:
            pass
    if info is None or info.spec.read_only:
        raise _bad(
            'trigger.resource',
            f'Trigger resource {slug!r} is not a resource of this organization with writable records',
        )
    on = trigger.get('on')
    if (
        not isinstance(on, list)
        or not on
        or not all(isinstance(o, str) and o in OPERATIONS for o in on)
        or len(set(on)) != len(on)
    ):
        raise _bad(
            'trigger.on', f"Trigger 'on' is a non-empty array of distinct operations among {', '.join(OPERATIONS)}"
        )
    fields = trigger.get('fields')
    if fields is not None:
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
            raise _bad('trigger.fields', "Trigger 'fields' is a non-empty array of field names")
        missing = next((f for f in fields if f not in info.columns or f == SCOPE), None)
        if missing is not None:
            raise _bad('trigger.fields', f"Resource '{info.slug}' has no field '{missing}'")
    return info


def parse_conditions(info, conditions):
    """`conditions` as parsed Filters over `info`: the list query language's `filters`, its errors too."""
    if conditions is None:
        return ()
    try:
        return tuple(query.parse_filters({'filters': orjson.dumps(conditions).decode()}, info, query.Limits()))
    except BadRequest as exc:
        raise _bad(
            'conditions',
            f"Field 'conditions' is a filters array of the list query language over '{info.slug}': {exc.detail}",
        ) from None


def check_actions(store, principal, info, actions):
    if not isinstance(actions, list) or not 1 <= len(actions) <= MAX_ACTIONS:
        raise _bad('actions', f"Field 'actions' is an array of 1 to {MAX_ACTIONS} actions")
    for index, action in enumerate(actions):
        where = f'actions[{index}]'
        if not isinstance(action, dict) or action.get('type') not in ACTIONS:
            raise _bad(f'{where}.type', f'Each action is an object whose type is one of {", ".join(ACTIONS)}')
        required, optional = ACTIONS[action['type']]
        extra = sorted(set(action) - {'type', *required, *optional})
        if extra:
            raise _bad(
                f'{where}.{extra[0]}',
                f"An action of type '{action['type']}' has no member '{extra[0]}'; "
                f'it takes {", ".join((*required, *optional))}',
            )
        missing = next((m for m in required if action.get(m) is None), None)
        if missing is not None:
            raise _bad(f'{where}.{missing}', f"An action of type '{action['type']}' needs '{missing}'")
        CHECKS[action['type']](store, principal, info, action, where)


def _check_update(store, principal, info, action, where):
    changes = action['set']
    if not isinstance(changes, dict) or not changes:
        raise _bad(f'{where}.set', 'An update action sets an object of fields: {"field": value}')
    unwritable = next((name for name in changes if name not in info.writable), None)
    if unwritable is not None:
        raise _bad(f'{where}.set.{unwritable}', f"Resource '{info.slug}' has no writable field '{unwritable}'")
    try:
        store.prepare(info, changes, creating=False)
    except BadRequest as exc:
        raise _bad(f'{where}.set.{exc.members.get("field")}', exc.detail) from None


def _check_task(store, principal, info, action, where):
    text = action['text']
    if not isinstance(text, str) or not text.strip():
        raise _bad(f'{where}.text', "A task's text is a non-empty string")
    try:
        values.check_stored(store.catalog.resolve(TASKS).columns['text'], text)
    except InvalidValue as exc:
        raise _bad(f'{where}.text', exc.detail) from None
    days = action.get('due_in_days')
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= MAX_DUE_DAYS):
        raise _bad(f'{where}.due_in_days', f"'due_in_days' is a whole number from 0 to {MAX_DUE_DAYS}")
    if action.get('assignee_id') is not None:
        _check_exists(store, principal, 'crm_users', action['assignee_id'], f'{where}.assignee_id')


def _check_tag(store, principal, info, action, where):
    column = info.columns.get('tags')
    if column is None or column.references != 'tags':
        raise _bad(f'{where}.type', f"Records of '{info.slug}' have no tags")
    _check_exists(store, principal, 'tags', action['tag_id'], f'{where}.tag_id')


def _check_webhook(store, principal, info, action, where):
    url = action['url']
    parts = urlsplit(url) if isinstance(url, str) and len(url) <= MAX_URL and url.isprintable() else None
    if parts is None or ' ' in url or parts.scheme not in ('http', 'https') or not parts.hostname:
        raise _bad(f'{where}.url', f'A webhook url is an absolute http(s) URL of at most {MAX_URL} characters')


def _check_exists(store, principal, slug, record_id, field):
    try:
        if not isinstance(record_id, str):
            raise RecordNotFound('not an id')
        store.get(store.catalog.resolve(slug), principal, record_id)
    except RecordNotFound:
        raise _bad(field, f'{field} refers to {slug} {record_id!r}, which does not exist') from None


CHECKS = {'update': _check_update, 'create_task': _check_task, 'add_tag': _check_tag, 'webhook': _check_webhook}


def written(store, tx, principal, records):
    """The store's hook after rules are written, in the write's transaction: the organization's rules cursor
    (at the changes committed so far, if it has none: its first rule starts with the changes after it), a secret for
    each rule that has a webhook action and none yet: the records, with `secret` in the ones that got one (their
    answer is the only one that shows it)."""
    d, out = store.db.dialect, []
    since = store.history.number(tx, principal.org_id)
    tx.execute(*sqlbuild.build_webhook_cursor_init(d, principal.org_id, since, 'automation_cursors'))
    for record in records:
        if any(isinstance(a, dict) and a.get('type') == 'webhook' for a in record.get('actions') or ()):
            secret = webhooks.new_secret()
            if tx.execute(*sqlbuild.build_rule_secret_insert(d, record['id'], secret)):
                record = {**record, 'secret': secret}
        out.append(record)
    return out


# -- the runner ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RulePrincipal(Principal):
    """The server acting for a rule: an administrator without a user, recorded as `rule:<id>` with its depth."""

    actor: str = 'system'
    depth: int = 0

    @property
    def rule_id(self):
        return self.actor.removeprefix('rule:')


def rule_principal(org_id, rule_id, depth):
    return RulePrincipal(org_id, None, True, None, True, f'rule:{rule_id}', depth)


def run_for_change(store, change, depth, org_id=None, enabled=None, record=None):
    """Run every enabled rule of the organization that `change` (as the feed gives it) triggers and whose
    conditions the record passes: the automation_runs rows this call wrote.

    `depth`: how many rules led to the change (0: a user's; a change carries it as `depth`). A (rule, change)
    acts at most once, however often this is called. `org_id`: the change's organization (the feed's).
    `enabled`: the organization's enabled rules, if the caller has read them; `record`: the record as the change
    left it, if the caller knows it (the worker replays it from the history), else the record as it is now.
    """
    org_id = org_id or change[SCOPE]
    system = Principal.system(org_id)
    runs = []
    for rule in enabled_rules(store, system) if enabled is None else enabled:
        if triggers(rule['trigger'], change):
            run = run_rule(store, system, rule, change, depth, record)
            if run is not None:
                runs.append(run)
    return runs


def depth_of(change):
    """The depth of a change of the feed: 0 for a user's."""
    return change.get('depth') or 0


def enabled_rules(store, principal):
    info = store.catalog.resolve(RULES)
    lq = ListQuery(
        equals=(Filter(info.columns['enabled'], 'eq', True), Filter(info.columns['problem'], 'eq')),
        sorts=(query.Sort(info.columns['id']),),
    )
    return list(store.export(info, principal, lq))


def triggers(trigger, change):
    """Whether a change is of the trigger's resource and operations and, with `fields`, changed one of them
    (a created record: set one of them; a deleted one always passes)."""
    if change['resource'] != trigger['resource'] or change['operation'] not in trigger['on']:
        return False
    fields = trigger.get('fields')
    if not fields or change['operation'] == 'deleted':
        return True
    if change['operation'] == 'created':
        record = change.get('record') or {}
        return any(record.get(f) not in (None, '', []) for f in fields)
    return any(f in (change.get('changes') or {}) for f in fields)


def run_rule(store, principal, rule, change, depth, record=None):
    """One rule for one change: the run row written, or None (conditions not met, or run before).

    NOTE: the actions and the run row commit together, and UNIQUE (rule_id, change_id) lets one run in: a crash
    before the commit leaves nothing (the change is handed over again), and of two workers running the same
    (rule, change) the second's run fails and takes its actions down with it.
    """
    runs = store.catalog.resolve(RUNS)
    if _run_of(store, principal, runs, rule['id'], change['id']) is not None:
        return None
    row = {
        'rule_id': rule['id'],
        'change_id': change['id'],
        'resource': change['resource'],
        'record_id': change['record_id'],
        'depth': depth,
    }
    try:
        info = store.catalog.resolve(change['resource'], principal)
        record = record or _record_after(store, principal, info, change)
        if record is None or not holds(parse_conditions(info, rule['conditions']), canonical(info, record)):
            return None
        if depth >= MAX_DEPTH:
            return _write_run(
                store,
                principal,
                runs,
                {
                    **row,
                    'status': 'stopped',
                    'error': (
                        f'Not run: the change was made at depth {depth} (by a chain of {depth} rules); changes made at '
                        f'depth {MAX_DEPTH} trigger no rule'
                    ),
                },
            )
        acting = rule_principal(principal.org_id, rule['id'], depth + 1)
        with store.db.transaction(write=True):
            results = [ACTIONS_RUN[a['type']](store, acting, info, record, a, change) for a in rule['actions']]
            return _write_run(store, principal, runs, {**row, 'status': 'applied', 'results': results})
    except Unavailable:
        raise  # NOTE: the database, not the rule: the worker hands the change over again later
    except CrmError as exc:
        error = exc.detail
    except Exception as exc:  # NOTE: a bug must not stop every later change: logged, and the run says so
        log.exception('rule %s failed on change %s', rule['id'], change['id'])
        error = f'Internal error ({type(exc).__name__}); the worker logged it'
    if _run_of(store, principal, runs, rule['id'], change['id']) is not None:
        return None  # NOTE: another worker ran it first: its run stands, ours was rolled back
    return _write_run(store, principal, runs, {**row, 'status': 'failed', 'error': error}, quiet=True)


def _record_after(store, principal, info, change):
    """The record after the change: a deleted one's last state; otherwise as it is now (None: gone since)."""
    if change['operation'] == 'deleted':
        return change.get('record')
    try:
        return store.get(info, principal, change['record_id'])
    except RecordNotFound:
        return None


def _run_of(store, principal, runs, rule_id, change_id):
    lq = ListQuery(
        end=0,
        equals=(Filter(runs.columns['rule_id'], 'eq', rule_id), Filter(runs.columns['change_id'], 'eq', change_id)),
    )
    found = store.list(runs, principal, lq, count='none')[0]
    return found[0] if found else None


def _write_run(store, principal, runs, row, quiet=False):
    """Insert one run of the principal's organization; UNIQUE (rule_id, change_id) makes a second run of the same (rule, change) fail (and,
    inside the actions' transaction, roll them back). `quiet`: a run already there is not an error."""
    row = {
        'id': store.history.new_ids(runs.spec.id_prefix, 1)[0],
        'results': None,
        'error': None,
        **row,
        'created_at': store.clock(),
    }
    try:
        return store.insert_managed(runs, principal.org_id, [row])[0]
    except CrmError:
        if quiet:
            return None
        raise


def _do_update(store, principal, info, record, action, change):
    store.update(info, principal, record['id'], action['set'])
    return {'type': 'update', 'record_id': record['id']}


def _do_create_task(store, principal, info, record, action, change):
    body = {'text': action['text']}
    if action.get('due_in_days') is not None:
        body['due_date'] = (store.clock().date() + dt.timedelta(days=action['due_in_days'])).isoformat()
    if action.get('assignee_id') is not None:
        body['assignee_id'] = action['assignee_id']
    if info.slug in TASK_LINKS:
        body[TASK_LINKS[info.slug]] = record['id']
    task = store.create(store.catalog.resolve(TASKS), principal, body)
    return {'type': 'create_task', 'task_id': task['id']}


def _do_add_tag(store, principal, info, record, action, change):
    tags = store.get(info, principal, record['id'])['tags'] or []
    if action['tag_id'] not in tags:
        store.update(info, principal, record['id'], {'tags': [*tags, action['tag_id']]})
    return {'type': 'add_tag', 'record_id': record['id'], 'tag_id': action['tag_id']}


def _do_webhook(store, principal, info, record, action, change):
    """Queue a delivery of the change (a webhook event's body) to the URL, in the run's transaction: the worker
    sends it signed with the rule's secret, on the webhooks' retry schedule; webhook_deliveries shows it."""
    kind = webhooks.event_type(change['resource'], change['operation'])
    row = webhooks.delivery_row(
        principal.org_id,
        change,
        kind,
        webhooks.event_body(kind, change, record),
        values.format_timestamp(store.clock()),
        rule_id=principal.rule_id,
        url=action['url'],
    )
    webhooks.queue(store.db, [row])
    return {'type': 'webhook', 'url': action['url'], 'delivery_id': row[0]}


ACTIONS_RUN = {'update': _do_update, 'create_task': _do_create_task, 'add_tag': _do_add_tag, 'webhook': _do_webhook}
