"""Idempotency-Key: a retried POST gets the first answer instead of writing twice.

The key's row is inserted before the write and completed after it, in the write's own
transaction: either both are stored or neither is, and a concurrent retry with the same key
waits on the row and then replays the answer.

A key belongs to the user whose token sent it: another user's identical key is another key (the
row's id is `<user id>/<key>`), so a replay never hands one user an answer made for another.
Authorization runs before a keyed write reaches here (crmapi.app.AuthMiddleware), so a replay is
refused exactly as the write would be.
"""

import hashlib
import re

import orjson

from . import sqlbuild
from . import values
from .errors import InvalidParam
from .errors import KeyReused

_KEY = re.compile(r'[\x21-\x7e]{1,200}\Z')


def fingerprint(method, path, body):
    canonical = values.ascii_json(body, sort_keys=True, separators=(',', ':'), default=str)
    return hashlib.sha256(f'{method} {path}\n{canonical}'.encode()).hexdigest()


class Idempotency:
    def __init__(self, db, catalog, clock):
        self.db = db
        self.info = catalog.internal['idempotency_keys']
        self.clock = clock

    def run(self, principal, key, fp, action):
        """`action()` -> (status, body, headers), run once per key; returns it and whether it was replayed."""
        if not _KEY.match(key):
            raise InvalidParam('Idempotency-Key is 1 to 200 printable ASCII characters', param='Idempotency-Key')
        d, org = self.db.dialect, principal.org_id
        # NOTE: user ids have a fixed shape without '/', so '<user>/<key>' cannot collide across users.
        key = f'{principal.user_id}/{key}'
        row = {'id': key, 'fingerprint': fp, 'created_at': self.clock()}
        with self.db.transaction(write=True) as tx:
            if tx.one(*sqlbuild.build_insert(d, self.info, org, row, if_absent=True)) is None:
                stored = dict(
                    zip(sqlbuild.output_columns(self.info), tx.one(*sqlbuild.build_get(d, self.info, org, key)))
                )
                if stored['fingerprint'] != fp:
                    raise KeyReused('This Idempotency-Key was used for a different request', param='Idempotency-Key')
                response, headers = (
                    orjson.loads(v) if isinstance(v, str) else v for v in (stored['response'], stored['headers'])
                )
                location = {'Location': stored['location']} if stored['location'] else {}
                return (stored['status'], response, {**(headers or {}), **location}), True
            status, body, headers = action()
            others = {name: value for name, value in headers.items() if name != 'Location'}
            tx.execute(
                *sqlbuild.build_update(
                    d,
                    self.info,
                    org,
                    key,
                    {
                        'status': status,
                        'response': body,
                        'location': headers.get('Location'),
                        'headers': others or None,
                    },
                )
            )
            return (status, body, headers), False
