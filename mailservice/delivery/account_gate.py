"""The sender accounts' gate: pacing and the circuit breaker of each SMTP account.

Our users relay through their own accounts, which have limits (Gmail's daily limit, SES's
messages a second, a relay's `421 too many messages`). `DeliveryAttempt` asks the gate before
each attempt (`ask`) and tells it how the attempt went (`judge`, `succeeded`):

- **Pacing.** A sender with a `rate` or `daily_limit` (data.csv) gets a slot for each request
  (gate_backends.py): a request over the pace waits, holding no thread, and is neither failed
  nor counted as an attempt. On a Redis store every process shares the counts.
- **Breaker.** A reply that says the account is over its limit (`account_limit()`: the
  enhanced code x.4.5, `4.7.0` with a rate text, `421`/`454` with a throttling text) pauses
  the account for the time the reply names, else `SENDER_PAUSE_SECONDS`; so do
  `SENDER_BREAKER_FAILURES` transient failures in a row (not connection failures: those pause
  the server, dispatch_queue.py). The message that met the limit waits for the pause too,
  without that attempt counting. When the pause ends one probe goes first; its success ends the
  pause, its failure starts one twice as long (up to MAX_PAUSE_FACTOR times the setting).
  Waiting messages show `retrying` with the reason. Other accounts are not slowed.

An account without a rate or daily limit costs one backend read a second at most (`_paused`,
cached), not one a message. While the backend (Redis) is unreachable the gate goes on with a
memory backend of this process's own, logged once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mailservice.delivery.gate_backends import GateBackend, MemoryGateBackend, Pause
from mailservice.errors import GateError
from mailservice.senders import Sender
from mailservice.stores.contract import OutageLog

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_PAUSE_FACTOR = 16
NAMED_PAUSE_MAX = 86400.0  # a reply's "try again in ..." is believed up to a day
PROBE_POLL = 5.0  # seconds between asks while a probe is out
CACHE_SECONDS = 1.0  # how long an unlimited account's pause state is believed

# The enhanced status code right after the reply's code (RFC 3463), not any dotted number of
# its text (an address like 5.4.5.9 is not one).
_ENHANCED = re.compile(r"^\d{3}[ -]([245])\.(\d{1,3})\.(\d{1,3})\b")
# Words of a reply about sending too much. Not "try again later" alone: Gmail's 421 4.3.0
# "Temporary System Problem. Try again later" is the server's, not the account's.
_RATE_TEXT = re.compile(r"rate|limit|too many|throttl|slow down|exceeded|quota", re.IGNORECASE)
_NAMED_TIME = re.compile(
    r"\b(?:in|after)\s+(\d{1,6})\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b",
    re.IGNORECASE,
)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class LimitReply:
    """A reply that says the account is over its limit; `seconds`: the wait it names."""

    seconds: float | None


def account_limit(reason: str) -> LimitReply | None:
    """Whether an SMTP reply ("<code> <enhanced code> <text> (at <step>)") says the account is
    over its limit, and the wait it names."""
    code = reason[:3]
    enhanced = _ENHANCED.search(reason)
    detail = (enhanced.group(2), enhanced.group(3)) if enhanced else None
    rate_text = _RATE_TEXT.search(reason) is not None
    limited = (
        detail == ("4", "5")  # x.4.5: Gmail's daily sending limit, congestion
        or (
            detail == ("7", "0") and enhanced is not None and enhanced.group(1) == "4" and rate_text
        )
        or (code in ("421", "454") and rate_text)  # a relay's or SES's throttling
    )
    if not limited:
        return None
    named = _NAMED_TIME.search(reason)
    if named is None:
        return LimitReply(None)
    seconds = int(named.group(1)) * _UNITS[named.group(2)[0].lower()]
    return LimitReply(min(max(seconds, 1.0), NAMED_PAUSE_MAX))


class AccountGate:
    """The gate of every sender account of one process (see the module's docstring)."""

    def __init__(
        self,
        backend: GateBackend,
        *,
        pause_seconds: float = 300.0,
        failures: int = 5,
        probe_timeout: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._local = MemoryGateBackend()  # while the backend is unreachable
        self._outage = OutageLog(
            logger,
            "sender gate's Redis unreachable: %s (pacing and pauses of this process only)",
            "sender gate's Redis reachable again",
        )
        self.pause_seconds = pause_seconds
        self.failures = failures
        self.probe_timeout = probe_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: dict[str, int] = {}  # transient failures in a row, per account
        self._known: dict[str, tuple[float, bool]] = {}  # account: (read at, paused)

    def ask(self, sender: Sender, request_id: str) -> tuple[float, str | None]:
        """(0, None): go now. (seconds, None): over the pace, ask again then. (seconds,
        reason): paused or over the daily limit; the reason is for the request's status."""
        account = sender.account
        interval = sender.rate.seconds / sender.rate.count if sender.rate else 0.0
        daily = sender.daily_limit or 0
        if not interval and not daily and not self._paused(account):
            return 0.0, None
        poll = PROBE_POLL * random.uniform(0.75, 1.25)  # the waiting do not ask in step
        args = (account, request_id, interval, daily, self.probe_timeout, poll)
        return self._call(lambda b: b.reserve(*args))

    def judge(self, sender: Sender, reason: str, kind: str) -> float | None:
        """After a failed transaction (`kind`: "connect", "transient" or "permanent"): the
        seconds the account is now paused for when the reply says it is over its limit (the
        message waits them out uncounted), else None."""
        account = sender.account
        limit = account_limit(reason) if kind != "connect" else None
        if limit is not None:
            with self._lock:
                self._runs[account] = 0
            return self._pause(account, limit.seconds, f"sender paused: {reason}")
        if kind != "permanent" and self._paused(account):
            pause = self._call(lambda b: b.paused(account))
            if pause is not None and pause.ended:  # the probe failed, unanswered or 4xx
                self._pause(account, None, pause.reason)
                return None
        if kind == "permanent":  # the server answered the account: its pause, if over, ends
            self.succeeded(sender)
            return None
        if kind != "transient":
            return None  # connection failures pause the server, not the account
        with self._lock:
            run = self._runs[account] = self._runs.get(account, 0) + 1
            if run < self.failures:
                return None
            self._runs[account] = 0
        self._pause(account, None, f"sender paused after {run} transient failures: {reason}")
        return None  # this message retries as usual; the ones after it wait

    def succeeded(self, sender: Sender) -> None:
        """The account's server answered a transaction (took the message, or said something
        of its recipients): the run of failures ends, and a pause that has ended is over. A
        pause still running stays: the message was on its way before it began."""
        account = sender.account
        with self._lock:
            self._runs.pop(account, None)
        if not self._paused(account):
            return
        ended = self._call(lambda b: b.resume(account))
        if ended is not None:
            with self._lock:
                self._known[account] = (self._clock(), False)
            logger.warning("sender %s: its probe was accepted; sending resumes", account)

    def release(self, sender: Sender, request_id: str) -> None:
        """The request let through will not be sent after all: if it was the probe, the next
        request to ask is."""
        if self._paused(sender.account):
            self._call(lambda b: b.release(sender.account, request_id))

    def pauses(self, accounts: list[str]) -> dict[str, Pause]:
        """The accounts paused now (for the metrics and the dashboard): one backend call."""
        return self._call(lambda b: b.paused_many(accounts))

    def _pause(self, account: str, named: float | None, reason: str) -> float:
        """Pause the account: for the time the reply names, else twice the last pause (its
        probe failed), else SENDER_PAUSE_SECONDS."""
        previous = self._call(lambda b: b.paused(account))
        if previous is not None and not previous.ended:
            # Met by messages already on their way: the same pause (its end, roughly, on our
            # clock: only shown in their status).
            return max(0.05, previous.until - time.time())
        if named is not None:
            seconds = named
        elif previous is not None:  # the probe failed: twice as long
            seconds = min(previous.seconds * 2, self.pause_seconds * MAX_PAUSE_FACTOR)
        else:
            seconds = self.pause_seconds
        self._call(lambda b: b.pause(account, seconds, reason))
        with self._lock:
            self._known[account] = (self._clock(), True)
        logger.warning(
            "sender %s paused for %gs: %s; its messages wait without spending attempts",
            account,
            seconds,
            reason.removeprefix("sender paused: "),
        )
        return seconds

    def _paused(self, account: str) -> bool:
        """Whether the account has a pause (ended or not), read at most once a second."""
        now = self._clock()
        with self._lock:
            known = self._known.get(account)
        if known is not None and now - known[0] < CACHE_SECONDS:
            return known[1]
        paused = self._call(lambda b: b.paused(account)) is not None
        with self._lock:
            self._known[account] = (now, paused)
        return paused

    def _call(self, call: Callable[[GateBackend], T]) -> T:
        try:
            result = call(self._backend)
        except GateError as exc:
            self._outage.failed(exc)
            return call(self._local)
        self._outage.succeeded()
        return result
