"""Failed authentications: counted per client address (and per username on /token), answered
429 with Retry-After past AUTH_FAIL_LIMIT (API.md sections 1 and 6; issue 9).

The per-key RATE_LIMIT never slows a guesser, who presents a new key with every try; this
module counts the failures instead, by who fails. The rule:

- Per client address (`request.remote_addr`; an IPv6 address by its /64, the block one
  subscriber gets). Every 401 on every route counts one: a wrong, expired or missing key or
  token on the send and waiting routes, a wrong username or password on /token. An address
  with AUTH_FAIL_LIMIT failures in its current window gets 429 on every route that
  authenticates, whatever it presents, a correct key included: were a correct key let through
  there, its 202 among the 429s would tell the guesser which guess was right, and nothing would
  be slowed. No other address is touched: a correct key from an address that has not failed
  that often always works.
- Per username on /token, as well. Failures for one username from every address are counted,
  so that guesses spread over many addresses are noticed. Past the limit that username is
  under attack, and then /token refuses it (429) only to the addresses that have themselves
  failed for it within their window. An attacker at A cannot lock the real user at B out of
  /token: B has not failed for that username, so B's correct password works. Attackers spread
  over many addresses get one guess per address per window at a username under attack, instead
  of AUTH_FAIL_LIMIT each.
- A success resets nothing: a client holding one valid key of its own could otherwise clear
  its address's count between guesses at other keys. Counts end with their window (a fixed
  window from the first failure, as the rate limiter's; Retry-After says when it ends).

The counts live in RATE_LIMIT_STORAGE_URL: `memory://` for one process, `redis://` shared by
every process, with the rate limiter's short Redis timeouts. While Redis is unreachable each
process counts in memory (the outage is logged once) and tries Redis again every
RECHECK_SECONDS, so guessing stays slowed and no request waits on a dead Redis more than once
in that time. Usernames are stored as digests and keys never: nothing secret is stored.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from flask import Flask, current_app, request
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string

from mailservice.api.rate_limit import REDIS_OPTIONS
from mailservice.config import Settings
from mailservice.errors import ApiError

logger = logging.getLogger(__name__)

EXTENSION = "auth_guard"
NAMESPACE = "mail-authfail"
RECHECK_SECONDS = 5.0

T = TypeVar("T")


@functools.lru_cache(maxsize=4096)
def client_id(address: str | None) -> str:
    """Who a failure is counted against: the IPv4 address, or the /64 of an IPv6 address (one
    subscriber's block, which would otherwise hold 2**64 fresh addresses)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # not an IP (a Unix socket's peer): count it as given
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def username_id(username: str) -> str:
    """A username as counted: case-folded and digested (bounded, and no client text in keys)."""
    return hashlib.sha256(username.strip().casefold().encode("utf-8", "replace")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _Wait:
    """How long a refused client waits, and whether a username's count refused it."""

    seconds: int
    by_user: bool


class AuthGuard:
    """Counts failed authentications and says who must wait; see the module docstring.

    `check()` before a credential is evaluated raises ApiError 429 for a client that must wait;
    `failed()` after a credential was refused counts the failure. A guard built with an empty
    limit does nothing.
    """

    def __init__(
        self, limit: str, storage_url: str = "memory://", clock: Callable[[], float] = time.time
    ) -> None:
        self._items: list[RateLimitItem] = parse_many(limit) if limit.strip() else []
        self._clock = clock
        self._storage: Storage | None = None
        self._fallback: Storage | None = None
        if self._items:
            redis = storage_url.startswith(("redis", "rediss"))
            self._storage = storage_from_string(  # type: ignore[assignment]
                storage_url, wrap_exceptions=True, **(REDIS_OPTIONS if redis else {})
            )
            if not isinstance(self._storage, MemoryStorage):
                self._fallback = MemoryStorage()
        self._down_since: float | None = None
        self._down_lock = threading.Lock()

    def __repr__(self) -> str:
        limits = ";".join(str(item) for item in self._items) or "off"
        return f"AuthGuard({limits}, storage={type(self._storage).__name__})"

    @property
    def enabled(self) -> bool:
        return bool(self._items)

    # -- the two calls of the request path ---------------------------------------------------

    def check(self, address: str | None, username: str | None = None) -> None:
        """Raise ApiError 429 with Retry-After when this client must wait before trying again."""
        wait = self.waiting(address, username)
        if wait is None:
            return
        if wait.by_user:
            detail = (
                "Too many failed logins for this username, from this address among others; "
                f"try again in {wait.seconds} s."
            )
        else:
            detail = (
                f"Too many failed authentications from this address; try again in {wait.seconds} s."
            )
        raise ApiError(429, detail, headers={"Retry-After": str(wait.seconds)})

    def retry_after(self, address: str | None) -> int | None:
        """Seconds this client address must wait before trying again, None when it may try
        now: `check()` for a caller that answers in its own protocol (the SMTP listener)."""
        wait = self.waiting(address)
        return None if wait is None else wait.seconds

    def waiting(self, address: str | None, username: str | None = None) -> _Wait | None:
        """How long this client must wait, and why; None when it may try now."""
        if not self._items:
            return None
        client = client_id(address)
        user = None if username is None else username_id(username)
        return self._with_storage(lambda storage: self._wait(storage, client, user))

    def failed(self, address: str | None, username: str | None = None) -> None:
        """Count one failed authentication from this address (and, on /token, for a username)."""
        if not self._items:
            return
        client = client_id(address)
        user = None if username is None else username_id(username)
        self._with_storage(lambda storage: self._count(storage, client, user))

    # -- counting ----------------------------------------------------------------------------

    def _count(self, storage: Storage, client: str, user: str | None) -> None:
        # A fixed window, as limits' FixedWindowRateLimiter keeps one, but with the count at
        # hand for the log line that says when a client starts to be refused.
        for item in self._items:
            count = storage.incr(item.key_for(NAMESPACE, "addr", client), item.get_expiry())
            if count == item.amount:
                logger.warning(
                    "authentication: %d failures from %s (AUTH_FAIL_LIMIT %s); refusing it "
                    "until its window ends",
                    count,
                    client,
                    item,
                )
            if user is not None:
                storage.incr(item.key_for(NAMESPACE, "user", user), item.get_expiry())
                storage.incr(item.key_for(NAMESPACE, "pair", user, client), item.get_expiry())

    def _wait(self, storage: Storage, client: str, user: str | None) -> _Wait | None:
        """How long this client must wait, or None when it may try now."""
        waits: list[_Wait] = []
        for item in self._items:
            addr_key = item.key_for(NAMESPACE, "addr", client)
            if storage.get(addr_key) >= item.amount:
                waits.append(_Wait(self._seconds_until(storage.get_expiry(addr_key)), False))
                continue
            if user is None:
                continue
            user_key = item.key_for(NAMESPACE, "user", user)
            pair_key = item.key_for(NAMESPACE, "pair", user, client)
            if storage.get(user_key) >= item.amount and storage.get(pair_key) > 0:
                # Free again when the username's window or this address's part in it ends.
                ends = min(storage.get_expiry(user_key), storage.get_expiry(pair_key))
                waits.append(_Wait(self._seconds_until(ends), True))
        return max(waits, key=lambda w: w.seconds) if waits else None

    def _seconds_until(self, moment: float) -> int:
        return max(1, math.ceil(moment - self._clock()))

    # -- the storage and its outages ---------------------------------------------------------

    def _with_storage(self, operation: Callable[[Storage], T]) -> T:
        """Run `operation` on the shared storage, or on this process's memory while it is down."""
        assert self._storage is not None
        if self._fallback is None or not self._is_down():
            try:
                return operation(self._storage)
            except StorageError as exc:
                if self._fallback is None:
                    raise
                self._mark_down(exc)
        return operation(self._fallback)

    def _is_down(self) -> bool:
        """True while the shared storage is marked down; tries it again every RECHECK_SECONDS."""
        with self._down_lock:
            if self._down_since is None:
                return False
            if self._clock() - self._down_since < RECHECK_SECONDS:
                return True
            self._down_since = self._clock()  # one request tries; the others keep counting
        assert self._storage is not None
        if self._storage.check():
            with self._down_lock:
                self._down_since = None
            logger.warning("authentication failures: the rate limit storage is reachable again")
            return False
        return True

    def _mark_down(self, exc: StorageError) -> None:
        with self._down_lock:
            first = self._down_since is None
            self._down_since = self._clock()
        if first:
            logger.warning(
                "authentication failures: the rate limit storage is unreachable (%s); counting "
                "in this process's memory until it is back",
                exc.storage_error,
            )


# -- the Flask side ------------------------------------------------------------------------------


def init_auth_guard(app: Flask, settings: Settings) -> AuthGuard:
    """Put an AuthGuard for AUTH_FAIL_LIMIT on `app.extensions["auth_guard"]`."""
    guard = AuthGuard(settings.auth_fail_limit, settings.rate_limit_storage_url)
    app.extensions[EXTENSION] = guard
    return guard


def check_client(username: str | None = None) -> None:
    """Before a credential is evaluated: 429 when this request's client must wait."""
    current_app.extensions[EXTENSION].check(request.remote_addr, username)


def count_failure(username: str | None = None) -> None:
    """After a credential was refused (a 401): count it against the client."""
    current_app.extensions[EXTENSION].failed(request.remote_addr, username)
