"""A request budget per API token: a token bucket in memory, O(1) per request, no database.

`CRMAPI_RATE_LIMIT=600/60` gives every API token 600 requests per 60 seconds: a bucket of 600
(the burst) that refills at 10 a second. Buckets live in the worker process, so a host with W
workers lets one token make at most W x 600 requests a minute (the kernel spreads connections over
the workers); a cluster multiplies that by its hosts. The answer headers follow
draft-ietf-httpapi-ratelimit-headers-06: `RateLimit-Limit`, `RateLimit-Remaining`,
`RateLimit-Reset` (seconds until the bucket is full again) and `RateLimit-Policy` (`600;w=60`).
"""

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus

from .errors import CrmError


class TooManyRequests(CrmError):
    """The token spent its budget; `Retry-After` says when the next request will be accepted."""

    status, title = HTTPStatus.TOO_MANY_REQUESTS, 'Too many requests'

    def __init__(self, detail, headers, **members):
        super().__init__(detail, **members)
        self.headers = headers


def parse_rate(raw):
    """`600/60` -> (600, 60.0); `0` or `0/60` -> None (no limit). Anything else is a ValueError."""
    text = raw.strip()
    if text == '0':
        return None
    count, slash, seconds = text.partition('/')
    try:
        limit, window = int(count), float(seconds)
    except ValueError:
        limit = window = None
    if not slash or limit is None or limit < 0 or not (0 < window < math.inf):
        raise ValueError(f'CRMAPI_RATE_LIMIT is <requests>/<seconds> (e.g. 600/60), or 0 for none, not {raw!r}')
    return None if limit == 0 else (limit, window)


@dataclass(frozen=True)
class Decision:
    """One request's outcome and what the RateLimit headers say about the bucket after it."""

    allowed: bool
    limit: int
    window: float
    remaining: int
    reset: int  # whole seconds until the bucket is full again
    retry_after: int  # whole seconds until one more request fits (0 when allowed)

    def headers(self):
        fields = {
            'RateLimit-Limit': str(self.limit),
            'RateLimit-Remaining': str(self.remaining),
            'RateLimit-Reset': str(self.reset),
            'RateLimit-Policy': f'{self.limit};w={self.window:g}',
        }
        if not self.allowed:
            fields['Retry-After'] = str(self.retry_after)
        return fields


class TokenBuckets:
    """Thread-safe buckets by key, each `limit` deep, refilling `limit` per `window` seconds.

    NOTE: buckets are kept in least-recently-used order; one untouched for a whole window is full
    again, exactly like a bucket never seen, so it is dropped from the front. Memory follows the
    tokens active within one window, and each request costs O(1) (amortised).
    """

    def __init__(self, limit, window, clock=time.monotonic):
        self.limit, self.window = limit, window
        self.rate = limit / window
        self.clock = clock
        self.buckets = OrderedDict()  # key -> (tokens left, time of the last refill)
        self.lock = threading.Lock()

    def take(self, key):
        """Spend one request of `key`'s budget, if there is one; the Decision either way."""
        with self.lock:
            now = self.clock()
            self._forget_idle(now)
            tokens, then = self.buckets.pop(key, (self.limit, now))
            tokens = min(self.limit, tokens + (now - then) * self.rate)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self.buckets[key] = (tokens, now)
        return Decision(
            allowed,
            self.limit,
            self.window,
            int(tokens),
            math.ceil((self.limit - tokens) / self.rate),
            0 if allowed else max(1, math.ceil((1 - tokens) / self.rate)),
        )

    def _forget_idle(self, now):
        while self.buckets:
            key, (_, then) = next(iter(self.buckets.items()))
            if now - then < self.window:
                return
            del self.buckets[key]
