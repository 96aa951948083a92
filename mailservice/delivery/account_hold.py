"""The sender gate's part of one attempt (delivery/account_gate.py): before it, whether the
sender's account may send now; after the server answered, what that says of the account.

`DeliveryAttempt` asks `before()` once the request is known to be unexpired, and, when the
gate let it through but it is not sent after all, `released()`. After a transaction it asks
`after_failure()` or `after_rcpt()`, and calls `answered()` when the server answered for the
recipients. A request that must wait for its account is held (`Hold`): no attempt spent, no
thread kept. Its status shows `retrying` when the wait is a pause or the daily limit (with the
reason and until when, written once per pause, not at every poll while a probe is out); a
pace wait of a moment writes nothing. A hold never outlasts the request's `expires_at`: it
ends `expired` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mailservice.delivery.account_gate import AccountGate, account_limit
from mailservice.delivery.smtp_client import DeliveryOutcome
from mailservice.delivery.steps import AttemptState, Hold
from mailservice.delivery.transitions import Final, expire, held
from mailservice.errors import StoreError
from mailservice.events.bus import Attempted, EventBus
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, StatusRecord, StatusStore, utcnow

DROPPED = "dropped"  # the store would not take the held status: another process owns it


class AccountHold:
    """The gate's steps of an attempt, against one store and event bus."""

    def __init__(
        self, gate: AccountGate, store: StatusStore, events: EventBus, clock: Callable[[], float]
    ) -> None:
        self.gate = gate
        self.store = store
        self.events = events
        self._clock = clock

    def before(self, state: AttemptState, sender: Sender, now: datetime) -> Hold | Final | None:
        """None: go now. A Hold, or the request's end when it would expire waiting.
        StoreError when the held status cannot be recorded is not raised: the wait is the
        same, and the status shows it at the next hold."""
        wait, why = self.gate.ask(sender, state.request_id)
        if wait <= 0:
            return None
        return self._hold(state, wait, why, now)

    def released(self, state: AttemptState, sender: Sender) -> None:
        self.gate.release(sender, state.request_id)

    def after_failure(
        self, state: AttemptState, sender: Sender, reason: str, kind: str, started: float
    ) -> Hold | Final | str | None:
        """After a failed transaction (`kind` "connect", "transient" or "permanent"): a Hold
        (or the end, or DROPPED) when the reply says the account is over its limit, the
        attempt not counted; None: the failure takes its usual course."""
        pause = self.gate.judge(sender, reason, kind)
        if pause is None:
            return None
        return self._limited(state, f"sender paused: {reason}", pause, started)

    def after_rcpt(
        self, state: AttemptState, sender: Sender, outcome: DeliveryOutcome, started: float
    ) -> Hold | Final | str | None:
        """Nobody took the message at RCPT: when a reply says the account is over its limit
        (Gmail's 5.4.5 at RCPT), the message waits with every recipient still pending."""
        replies = [*outcome.refused.values(), *outcome.deferred.values()]
        at_limit = next((r for r in replies if account_limit(r) is not None), None)
        if at_limit is None:
            return None
        pause = self.gate.judge(sender, at_limit, "transient")
        return None if pause is None else self._limited(state, f"sender paused: {at_limit}",
                                                        pause, started)  # fmt: skip

    def answered(self, sender: Sender) -> None:
        """The server answered for the recipients (it took the message, or said something of
        each): the account works."""
        self.gate.succeeded(sender)

    def _limited(
        self, state: AttemptState, reason: str, pause: float, started: float
    ) -> Hold | Final | str:
        step = self._hold(state, pause, reason, utcnow(), uncount=True)
        if isinstance(step, Hold):
            record = state.record
            self.events.emit(Attempted(record, self._clock() - started, "transient", True))
        return step

    def _hold(
        self, state: AttemptState, wait: float, why: str | None, now: datetime,
        uncount: bool = False,
    ) -> Hold | Final | str:  # fmt: skip
        record = state.record
        if record.expires_at is not None and (record.expires_at - now).total_seconds() <= wait:
            return Final(expire(record, now=now, deferred=state.deferred,
                                possibly_delivered=state.possibly_delivered))  # fmt: skip
        if why is None:  # over the pace: a moment, not worth a write
            return Hold(wait)
        if "(its probe is out)" not in why:
            until = (now + timedelta(seconds=wait)).astimezone(UTC)
            why = f"{why}; until {until:%Y-%m-%dT%H:%M:%SZ}"
        if _shows(record, why) and not uncount:
            return Hold(wait)  # the same wait as last time: no write, no history entry
        record = held(record, why, now, uncount=uncount)
        try:
            if not self.store.save(record):
                return DROPPED
        except StoreError:
            return Hold(wait)  # still ours: the next attempt records `sending` first
        state.record = record
        return Hold(wait)


def _shows(record: StatusRecord, why: str) -> bool:
    """Whether the record already shows this wait."""
    return record.status is EmailStatus.RETRYING and record.error == why
