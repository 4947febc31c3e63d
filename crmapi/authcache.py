"""Verified API tokens, kept by each process so that a known token costs no database round trip.

A token's answer can change only when the token is revoked, its user is changed (disabled, demoted,
deleted) or it expires. Expiry is checked on every request against the cached `expires_at`. The rest
goes through one number in the database, `auth_generation`, that every such write increments in its own
transaction (history.record for CRM users, Accounts.revoke_token for tokens). Each process reads that
number at most once a second, and at once after a change made by the process itself, and drops every
cached token when it has moved: a revoked token or a disabled user is refused by every worker and host
within one second of the commit (the next request, in the process that made the change).
"""

import threading
import time
from dataclasses import dataclass

RECHECK_S = 1.0  # the bound: how old the generation a cached answer is trusted under may be
MAX_TOKENS = 10_000  # cached per process; past it the cache starts again (an attacker's tokens are never cached)
_changes_here = [0]  # changes this process committed: the next request reads the generation at once


def changed_here():
    """This process committed a change to tokens or users (call after the commit)."""
    _changes_here[0] += 1


@dataclass
class Verified:
    principal: object
    expires_at: object
    touch_at: object  # when the token's use is to be recorded again (its last use + a minute; None: now)
    generation: int


class TokenCache:
    def __init__(self, read_generation, clock=time.monotonic):
        self.read_generation = read_generation
        self.clock = clock
        self.tokens = {}
        self.generation = None
        self.checked_at = float('-inf')
        self.seen_here = None
        self.lock = threading.Lock()

    def current(self):
        """The generation to trust cached tokens under: read again when a second has passed (or this process
        changed something since), and then every token cached under another one is dropped."""
        if self.clock() - self.checked_at < RECHECK_S and self.seen_here == _changes_here[0]:
            return self.generation
        with self.lock:
            started, here = self.clock(), _changes_here[0]
            if started - self.checked_at >= RECHECK_S or self.seen_here != here:
                # NOTE: the time and this process's changes are taken before the read: anything committed
                # after them is seen by the next read, which then comes at the latest a second later.
                generation = self.read_generation()
                if generation != self.generation:
                    self.tokens.clear()
                    self.generation = generation
                self.checked_at, self.seen_here = started, here
            return self.generation

    def get(self, digest, generation):
        found = self.tokens.get(digest)
        return found if found is not None and found.generation == generation else None

    def lookup(self, digest):
        """(the cached Verified of `digest` or None, the current generation): `get` under `current()`, one call."""
        generation = self.current()
        found = self.tokens.get(digest)
        return (found if found is not None and found.generation == generation else None), generation

    def put(self, digest, verified):
        """Keep a verified token under the generation read before it was verified (so a change committed
        between the two makes it stale at the next read)."""
        if len(self.tokens) >= MAX_TOKENS:
            self.tokens.clear()
        self.tokens[digest] = verified
