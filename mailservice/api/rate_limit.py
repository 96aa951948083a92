"""Per-key rate limiting with flask-limiter (API.md sections 1 and 6).

Requests are counted per API key (by a digest, so no key is stored in the limiter's storage),
or per client address when they present none. The storage is `RATE_LIMIT_STORAGE_URL`; when a
Redis storage is unreachable each process falls back to counting in memory rather than failing
or letting everything through. Every answer of a limited route carries the X-RateLimit-*
headers; a 429 adds Retry-After. Every send route shares one budget per key (`SendLimit`); a
batch is charged once per message through flask-limiter's `cost` (`SendLimit.per_message`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, request
from flask_limiter import Limiter
from limits import parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, RateLimiter
from redis.exceptions import RedisError

from mailservice.api.http_input import json_body, presented_key
from mailservice.config import Settings
from mailservice.errors import ApiError
from mailservice.senders import key_digest

logger = logging.getLogger(__name__)

KEY_PREFIX = "mail"
SEND_SCOPE = "send"
REDIS_OPTIONS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}

# A presented credential -> the digest of the key it counts against (a token counts against
# its key's budget, so that fresh tokens cannot buy more sending).
BudgetOf = Callable[[str], bytes]


def rate_limit_key(budget_of: BudgetOf = key_digest) -> str:
    """`key:<digest>` for a request that presents a key, `addr:<ip>` for one that doesn't."""
    try:
        body: dict[str, Any] | None = json_body()
    except ApiError:
        body = None  # the view answers the body error; count it against the address
    key = presented_key(body)
    if key:
        return "key:" + budget_of(key).hex()[:32]
    return f"addr:{request.remote_addr or 'unknown'}"


class SendLimit:
    """The decorator that puts a route under RATE_LIMIT, one budget per key shared by every
    send route (scope `send`); `per_message(cost)` charges that same budget `cost()` for each
    request (a batch: one per message). A request that would pass the limit is refused whole
    (429) and, as with a single request (fixed window), its cost still counts."""

    def __init__(self, limiter: Limiter, limit: str) -> None:
        self._limiter = limiter
        self._limit = limit
        self._shared = limiter.shared_limit(limit, scope=SEND_SCOPE) if limit else None
        self._items = parse_many(limit) if limit else []
        self._fallback: RateLimiter | None = None  # this process's counts while storage is down

    def __call__(self, view: Callable) -> Callable:
        return self._shared(view) if self._shared is not None else view

    def per_message(self, cost: Callable[[], int]) -> Callable[[Callable], Callable]:
        """The same budget, charged `cost()` per request; `cost` runs before the view, so it
        reads the body as the limiter's key does (`json_body`, parsed once)."""
        if not self._limit:
            return lambda view: view
        # Another shared limit of the same scope and limit string: flask-limiter keys its
        # counter by both, so the two decorators count into one budget.
        return self._limiter.shared_limit(self._limit, scope=SEND_SCOPE, cost=cost)

    def charge(self, digest: bytes, cost: int = 1) -> int | None:
        """Charge a key's budget outside a Flask request (the SMTP listener): None within
        RATE_LIMIT, else the seconds until the window ends. The counter is the one the
        send routes count into (flask-limiter's key: prefix, `key:<digest>`, scope), so a
        key sending over HTTP and SMTP has one budget. With the storage unreachable it
        counts in this process's memory, as flask-limiter's in-memory fallback does."""
        args = (KEY_PREFIX, "key:" + digest.hex()[:32], SEND_SCOPE)
        for item in self._items:
            try:
                limiter = self._limiter.limiter
                allowed = limiter.hit(item, *args, cost=cost)
            except (StorageError, RedisError, OSError) as exc:
                if self._fallback is None:
                    logger.warning("rate limit (SMTP): storage unreachable (%s); in memory", exc)
                    self._fallback = FixedWindowRateLimiter(MemoryStorage())
                limiter = self._fallback
                allowed = limiter.hit(item, *args, cost=cost)
            if not allowed:
                reset = limiter.get_window_stats(item, *args).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None


def init_rate_limit(app: Flask, settings: Settings, budget_of: BudgetOf = key_digest) -> SendLimit:
    """Attach a Limiter to the app; the decorator that puts a route under RATE_LIMIT."""
    storage = settings.rate_limit_storage_url
    limiter = Limiter(
        lambda: rate_limit_key(budget_of),
        app=app,
        storage_uri=storage,
        storage_options=REDIS_OPTIONS if storage.startswith(("redis", "rediss")) else {},
        strategy="fixed-window",
        headers_enabled=True,
        in_memory_fallback_enabled=True,
        key_prefix=KEY_PREFIX,
        enabled=bool(settings.rate_limit),
    )
    return SendLimit(limiter, settings.rate_limit)
