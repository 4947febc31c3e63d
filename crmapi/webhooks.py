"""Webhooks: the resource's policy (who, what URL, which events), SSRF checks, signing and one delivery.

An organization's administrators register endpoints; every matching change the history records after the
webhook was made is POSTed to it as `{type, timestamp, data}` with the Standard Webhooks headers
(https://www.standardwebhooks.com): `webhook-id` (the change's stable id), `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the decoded `whsec_` secret.
The worker (crmapi/worker.py) fans changes out into `webhook_deliveries` and sends them.
"""

import base64
import hashlib
import hmac
import http.client
import ipaddress
import re
import secrets
import socket
import ssl
import time
from urllib.parse import urlsplit

import orjson

from . import history
from . import sqlbuild
from . import values
from .errors import Conflict
from .errors import InvalidValue
from .errors import RecordNotFound
from .store import new_id

RESOURCE, DELIVERIES = 'webhooks', 'webhook_deliveries'
SECRET_PREFIX = 'whsec_'
SECRET_BYTES = 32
MAX_URL = 2000
MAX_EVENTS = 100
MAX_RESPONSE = 64 * 1024  # what is read of an answer (and thrown away)
ACTIONS = ('created', 'updated', 'archived', 'restored', 'deleted', 'merged')
# History operations -> event actions. NOTE: a contact merged into another is gone: `deleted` (its data says
# merged_into and names the target); a user disabled or enabled is archived or restored.
EVENT_OF = {
    'created': 'created',
    'updated': 'updated',
    'archived': 'archived',
    'restored': 'restored',
    'deleted': 'deleted',
    'merged': 'merged',
    'merged_into': 'deleted',
    'disabled': 'archived',
    'enabled': 'restored',
}
NOT_EVENTS = frozenset({RESOURCE, DELIVERIES})  # webhook edits themselves are not events
_PATTERN = re.compile(r'(\*|[a-z][a-z0-9_]{0,62})\.(\*|[a-z_]+)\Z')
# NOTE: cloud metadata services: the link-local 169.254.169.254 (refused with all of 169.254.0.0/16 and
# fe80::/10), AWS's IPv6 fd00:ec2::254 and Alibaba's 100.100.100.200 (private-looking, but never allowed).
METADATA = tuple(
    ipaddress.ip_network(n) for n in ('169.254.0.0/16', 'fe80::/10', 'fd00:ec2::254/128', '100.100.100.200/32')
)


class Refused(Exception):
    """A target the SSRF policy does not allow, or cannot check; str(exc) says why."""


# -- secrets and signatures ----------------------------------------------------------------------


def new_secret():
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret):
    """The HMAC key a `whsec_` secret stands for: its decoded bytes."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret, msg_id, timestamp, body):
    """The `webhook-signature` header of a message (body: bytes)."""
    mac = hmac.new(secret_key(secret), f'{msg_id}.{timestamp}.'.encode() + body, hashlib.sha256).digest()
    return 'v1,' + base64.b64encode(mac).decode()


# -- events --------------------------------------------------------------------------------------


def event_type(resource, operation):
    return f'{resource}.{EVENT_OF.get(operation, operation)}'


def matches(patterns, event):
    """Whether an event type is one of `patterns`: `*`, `contacts.*`, `*.created` or `contacts.created`."""
    resource, _, action = event.partition('.')
    return any(p == '*' or p in (event, f'{resource}.*', f'*.{action}') for p in patterns)


def check_events(events, known):
    """`events`: a non-empty array of patterns naming resources `known(name)` says exist, and ACTIONS."""
    if not isinstance(events, list) or not events or len(events) > MAX_EVENTS:
        raise InvalidValue(
            f"Field 'events' is an array of 1 to {MAX_EVENTS} event types such as "
            '"contacts.created", "deals.*" or "*"',
            field='events',
        )
    for pattern in events:
        m = _PATTERN.match(pattern) if isinstance(pattern, str) else None
        if pattern == '*':
            continue
        if m is None or (m.group(2) != '*' and m.group(2) not in ACTIONS):
            raise InvalidValue(
                f"Field 'events': {str(pattern)[:80]!r} is not an event type: <resource>.<action> "
                f'(action: {", ".join(ACTIONS)} or *), or *',
                field='events',
            )
        if m.group(1) != '*' and not known(m.group(1)):
            raise InvalidValue(f"Field 'events': no resource '{m.group(1)}' records changes", field='events')
    return list(dict.fromkeys(events))


def event_body(kind, change, record):
    """The JSON body of an event: `{type, timestamp, data}`, data the change with the record after it."""
    event = {'type': kind, 'timestamp': change['changed_at'], 'data': {**change, 'record': record}}
    return orjson.dumps(event).decode()


def delivery_row(org_id, change, kind, body, now, webhook_id=None, rule_id=None, url=None):
    """A pending delivery (sqlbuild.DELIVERY_COLUMNS) of `change` to a webhook, or to a rule's webhook action
    (`rule_id`, `url`)."""
    return (
        new_id('whd_'),
        org_id,
        webhook_id,
        change['id'],
        change['seq'],
        kind,
        body,
        'pending',
        0,
        now,
        now,
        now,
        rule_id,
        url,
    )


def message_id(delivery):
    """A delivery's `webhook-id`, the same on every attempt: a webhook's is the change's id (one message per change
    and endpoint); a rule action's is its own, as several rules (or actions) may send one change to one URL."""
    return delivery['change_id'] if delivery['rule_id'] is None else delivery['id']


def queue(db, rows):
    """Insert delivery rows, in the caller's transaction (or one of their own)."""
    with db.transaction(write=True) as tx:
        for part in sqlbuild.row_chunks(rows, len(sqlbuild.DELIVERY_COLUMNS)):
            tx.execute(*sqlbuild.build_insert_deliveries(db.dialect, part))


# -- SSRF ----------------------------------------------------------------------------------------


def address_refusal(address, allow_private):
    """Why a webhook may not connect to `address` (an IP address string), or None."""
    ip = ipaddress.ip_address(address.split('%', 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return 'an unspecified address'
    if ip.is_link_local or any(ip in net for net in METADATA if net.version == ip.version):
        return 'a link-local or cloud metadata address'
    if ip.is_multicast:
        return 'a multicast address'
    if ip.is_loopback:
        return None if allow_private else 'a loopback address'
    if ip.is_reserved:
        return 'a reserved address'
    if not ip.is_global:
        return None if allow_private else 'a private address'
    return None


def target(url, allow_private):
    """(scheme, host, port, path, address) of a webhook URL, resolved now and checked: every address the name
    resolves to must be allowed (Refused otherwise), and the first one is the one to connect to.

    NOTE: the name is resolved the way the connection would (getaddrinfo), so every spelling of an address
    (2130706433, 0177.0.0.1, [::ffff:127.0.0.1], a name in DNS) is checked as what it really is.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ('https', 'http') or (scheme == 'http' and not allow_private):
        raise Refused('must be an https URL' if not allow_private else 'must be an http or https URL')
    if parts.username is not None or parts.password is not None:
        raise Refused('must not carry credentials (the signature authenticates the sender)')
    host = parts.hostname
    try:
        port = parts.port or (443 if scheme == 'https' else 80)
    except ValueError:
        raise Refused('has an invalid port') from None
    if not host:
        raise Refused('has no host')
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise Refused(f'has a host that does not resolve ({exc})') from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        reason = address_refusal(address, allow_private)
        if reason:
            raise Refused(f'resolves to {reason} ({address})')
    path = (parts.path or '/') + (f'?{parts.query}' if parts.query else '')
    return scheme, host, port, path, addresses[0]


def check_url(url, allow_private):
    # NOTE: urlsplit drops a leading space, tabs and line breaks where http.client refuses them: such a URL would be
    # stored as sent and delivered elsewhere, or fail every delivery (a rule's webhook action refuses them too).
    if not isinstance(url, str) or not url or len(url) > MAX_URL or not url.isprintable() or ' ' in url:
        raise InvalidValue(
            f"Field 'url' is an https URL of at most {MAX_URL} characters, without spaces or control characters",
            field='url',
        )
    try:
        target(url, allow_private)
    except Refused as exc:
        raise InvalidValue(f"Field 'url' {exc}", field='url') from None
    return url


# -- one delivery --------------------------------------------------------------------------------


class _Pinned(http.client.HTTPConnection):
    """HTTP to the address that was checked, whatever the name resolves to by now."""

    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    """HTTPS to the checked address; the certificate is verified for the name (SNI too)."""

    def __init__(self, host, port, address, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


_TLS = ssl.create_default_context()


def send(url, msg_id, body, secret, timeout, allow_private, now=time.time):
    """POST one message: (status code or None, duration in ms, error or None). Redirects are not followed."""
    started = time.perf_counter()
    timestamp = str(int(now()))
    headers = {
        'content-type': 'application/json',
        'user-agent': 'crmapi-webhooks',
        'webhook-id': msg_id,
        'webhook-timestamp': timestamp,
        'webhook-signature': sign(secret, msg_id, timestamp, body),
    }
    conn = None
    try:
        scheme, host, port, path, address = target(url, allow_private)
        conn = (
            _PinnedTLS(host, port, address, timeout, _TLS)
            if scheme == 'https'
            else _Pinned(host, port, address, timeout)
        )
        conn.request('POST', path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(MAX_RESPONSE)
        code, error = response.status, None
        if not 200 <= code < 300:
            error = f'HTTP {code}' + (' (redirects are not followed)' if 300 <= code < 400 else '')
    except Refused as exc:
        code, error = None, f'refused: the URL {exc}'
    except TimeoutError:
        code, error = None, f'timeout after {timeout:g} s'
    except (OSError, http.client.HTTPException) as exc:
        code, error = None, f'{type(exc).__name__}: {exc}'[:500]
    finally:
        if conn is not None:
            conn.close()
    return code, round((time.perf_counter() - started) * 1000), error


# -- the resource --------------------------------------------------------------------------------


class Webhooks:
    """Creating, changing and re-keying webhooks; redelivering a delivery. Reads go the generic way."""

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings

    @property
    def db(self):
        return self.store.db

    def info(self, principal, slug=RESOURCE):
        return self.store.catalog.resolve(slug, principal)

    def known(self, principal):
        """Whether a name is a resource whose changes are events (custom objects of the organization too)."""

        def known(name):
            if name == history.RESOURCE:
                return True
            info = self.store.catalog.tables.get(name)
            if info is not None:
                return not info.spec.read_only and name not in NOT_EVENTS
            return any(d['slug'] == name for d in self.store.catalog.custom.definitions(principal.org_id))

        return known

    def _checked(self, principal, changes):
        if 'url' in changes:
            check_url(changes['url'], self.settings.webhook_allow_private)
        if 'events' in changes:
            changes['events'] = check_events(changes['events'], self.known(principal))
        return changes

    def create(self, principal, body, lenient=False):
        """The new webhook with its secret: the only answer that ever shows it."""
        store, info = self.store, self.info(principal)
        store._check_writable(info, principal)
        row = self._checked(principal, store.prepare(info, body, True, lenient))
        secret, d = new_secret(), self.db.dialect
        with store.history.recorded(principal) as tx:
            since = store.history.number(tx, principal.org_id)
            row = {
                'id': new_id(info.spec.id_prefix),
                **row,
                'since_seq': since,
                **store._stamp(info, {}, 'created_at', 'updated_at'),
            }
            record = store._insert(tx, info, principal.org_id, [row])[0][0]
            store._count(tx, info, principal, 1)
            tx.execute(*sqlbuild.build_webhook_secret_insert(d, record['id'], secret))
            tx.execute(*sqlbuild.build_webhook_cursor_init(d, principal.org_id, since))
            tx.changes.append(history.created(info.slug, record))
        return {**record, 'secret': secret}

    def update(self, principal, record_id, body, lenient=False):
        info = self.info(principal)
        self.store._check_writable(info, principal)
        changes = self._checked(principal, self.store.prepare(info, body, False, lenient))
        record = self.store.update(info, principal, record_id, {**body, **changes}, lenient)
        return self._reenabled(principal, record, changes)

    def update_many(self, principal, items, lenient=False):
        info = self.info(principal)
        self.store._check_writable(info, principal)
        checked = [
            self._checked(principal, self.store.prepare(info, item, False, lenient)) if isinstance(item, dict) else {}
            for item in items
        ]
        items = [{**item, **changes} if isinstance(item, dict) else item for item, changes in zip(items, checked)]
        records = self.store.update_many(info, principal, items, lenient)
        return [self._reenabled(principal, r, c) for r, c in zip(records, checked)]

    def _reenabled(self, principal, record, changes):
        """Enabling a webhook clears why it was disabled and its failure count."""
        if changes.get('enabled') is True and (record['disabled_reason'] or record['failing_since']):
            with self.db.transaction(write=True) as tx:
                tx.execute(*sqlbuild.build_webhook_enabled_again(self.db.dialect, principal.org_id, record['id']))
            record = {**record, 'disabled_reason': None, 'failing_since': None}
        return record

    def rotate_secret(self, principal, record_id):
        """A new secret for the webhook, shown once; the old one signs nothing more."""
        info = self.info(principal)
        self.store._check_writable(info, principal)
        secret = new_secret()
        with self.db.transaction(write=True) as tx:
            if not tx.execute(*sqlbuild.build_webhook_secret_set(self.db.dialect, principal.org_id, record_id, secret)):
                raise RecordNotFound(f"No webhooks record with id '{record_id}'", param='id')
        return {**self.store.get(info, principal, record_id), 'secret': secret}

    def redeliver(self, principal, delivery_id):
        """Send a delivery again, now, with a fresh round of retries (the same webhook-id and body)."""
        info = self.info(principal, DELIVERIES)
        self.store.get(info, principal, delivery_id)  # 404 for another organization's, or none
        now = values.format_timestamp(self.store.clock())
        with self.db.transaction(write=True) as tx:
            if not tx.execute(*sqlbuild.build_redeliver(self.db.dialect, principal.org_id, delivery_id, now)):
                raise Conflict(
                    'This delivery is being sent right now: redeliver it once the attempt is over', param='id'
                )
        return self.store.get(info, principal, delivery_id)
