"""One delivery attempt of one request, as plain code: no threads, no queue, no Flask.

`DeliveryAttempt.run(state, sender)` records `sending` under this process's ownership (nothing
is handed to a server that the store does not know is being sent), builds the message and its
envelope from the stored `MessageSpec` (`outgoing()`, which a dry run answers with), runs one
SMTP transaction and returns what comes next: another attempt after a delay (`Retry`), the end
(`Final`: also `expired`, before `sending` is recorded, for a request whose `expires_at` has
come, and instead of a retry that would start after it), a wait for the store that refused
`sending` (`WaitForStore`, no attempt spent), or nothing more for this process (`Dropped`:
another one owns the request now, or it ended elsewhere). A dispatcher (the thread pool, a
Celery task) acts on that answer; `save_retry()` and `save_final()` record the statuses it
carries, and `save_final()` announces the end (the `Finished` event) once the store has it.
Each SMTP transaction is announced too (`Attempted`: its time, what the server made of it,
whether a retry follows), here, the one place that knows. With a `SuppressionFilter`
(`suppression.py`), the recipients on the sender account's suppression list leave the
transaction first, and its "no such user" refusals join the list after it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime

from mailservice.delivery.account_gate import AccountGate
from mailservice.delivery.account_hold import AccountHold
from mailservice.delivery.message_spec import MessageSpec, PayloadError
from mailservice.delivery.outgoing import outgoing
from mailservice.delivery.relays import Relays
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.delivery.steps import (
    AttemptState,
    Dropped,
    Hold,
    Next,
    Outcome,
    WaitForStore,
)
from mailservice.delivery.suppression import SuppressionFilter
from mailservice.delivery.transitions import (
    JITTER,
    Final,
    Retry,
    after_failure,
    begin,
    delivered,
    expire,
    expired,
    finish,
)
from mailservice.errors import (
    ConnectFailed,
    PermanentDelivery,
    PossiblyDelivered,
    StoreError,
    TransientDelivery,
)
from mailservice.events.bus import Attempted, EventBus, Finished
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, StatusRecord, StatusStore, utcnow

# The step types live in delivery/steps.py; the dispatchers import them from here.
__all__ = [
    "AttemptState", "DeliveryAttempt", "Dropped", "Final", "Hold", "Next", "Outcome", "Retry",
    "WaitForStore", "log_retry", "log_unrecorded",
]  # fmt: skip

logger = logging.getLogger(__name__)

# An attempt put off because the store could not record `sending` waits this long (doubling
# per refusal in a row, up to the maximum).
STORE_WAIT_FIRST = 0.25
STORE_WAIT_MAX = 5.0


def log_unrecorded(record: StatusRecord) -> None:
    """The service log's line for a final status given up on at shutdown, the store still
    refusing it (every dispatcher writes this one)."""
    logger.error(
        "the final status (%s) of request_id=%s could not be recorded: the store is "
        "unreachable; recovery may send it again, with the same Message-ID",
        record.status,
        record.request_id,
    )


def log_retry(step: Retry) -> None:
    """The service log's line for an attempt that failed and will be tried again (every
    dispatcher writes this one)."""
    logger.info(
        "attempt %d failed request_id=%s: %s; retry in %.1fs",
        step.record.attempts,
        step.record.request_id,
        step.record.error,
        step.delay,
    )


class DeliveryAttempt:
    """Runs attempts against one store and SMTP client, under one retry policy."""

    def __init__(
        self,
        store: StatusStore,
        smtp: SmtpClient,
        events: EventBus,
        *,
        max_attempts: int = 5,
        retry_backoff: float = 2.0,
        jitter: Callable[[float, float], float] = random.uniform,
        clock: Callable[[], float] = time.monotonic,
        gate: AccountGate | None = None,
        relays: Relays | None = None,
        suppression: SuppressionFilter | None = None,
    ) -> None:
        self.store = store
        self.suppression = suppression
        self.smtp = smtp
        self.relays = relays or Relays()  # a sender's second server (delivery/relays.py)
        self.events = events
        self.hold = AccountHold(gate, store, events, clock) if gate is not None else None
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self._jitter = jitter
        self._clock = clock

    def run(self, state: AttemptState, sender: Sender) -> Outcome:
        """One attempt: record `sending`, build, send; what comes next. A request whose
        `expires_at` has come ends `expired` instead, before anything is recorded or sent."""
        try:
            payload = state.payload or self.store.payload(state.request_id)
            if payload is None:  # ended (canceled, say) or taken over: nothing to send
                return Outcome(self._dropped(state), None)
            now = utcnow()
            if expired(state.record, now):
                return Outcome(Final(self._expire(state, now)), None)
            if self.hold is not None and (step := self.hold.before(state, sender, now)):
                return Outcome(self._held(state, step), None)
            record = begin(state.record, now)
            owned = self.store.save(record)
        except StoreError:
            return Outcome(self._wait_for_store(state), None)
        if not owned:
            return Outcome(self._released(state, sender, self._dropped(state)), None)
        state.record, state.store_waits, state.deferred = record, 0, {}
        try:
            spec = MessageSpec.from_json(payload)
        except PayloadError as exc:
            reason = f"the stored request cannot be read: {exc}"
            return Outcome(self._released(state, sender, self.failed(state, reason)), None)
        if self.suppression is not None:  # suppressed recipients leave the transaction
            record = state.record = self.suppression.screen(record, sender.account)
            if not record.pending:  # nobody left: no SMTP connection at all
                ended = finish(record, EmailStatus.SENT, None, now=utcnow(),
                               possibly_delivered=state.possibly_delivered)  # fmt: skip
                return Outcome(self._released(state, sender, Final(ended)), None)
        # The same transaction a dry run shows (delivery/outgoing.py).
        out = outgoing(spec, sender, state.request_id, record.created_at, record.pending)
        started = self._clock()
        try:
            outcome = self.relays.send(
                self.smtp,
                sender,
                out.mail_from,
                list(out.rcpt_to),
                out.data,
                out.smtputf8,
            )
        except PermanentDelivery as exc:
            if limited := self._limited(state, sender, exc.reason, "permanent", started):
                return limited
            return self._attempted(started, "permanent", self.failed(state, exc.reason), True)
        except TransientDelivery as exc:
            state.possibly_delivered |= isinstance(exc, PossiblyDelivered)
            connect = isinstance(exc, ConnectFailed)
            kind = "connect" if connect else "transient"
            if limited := self._limited(state, sender, exc.reason, kind, started):
                return limited
            step = self._after_failure(state, exc.reason)
            return self._attempted(started, "transient", step, not connect)
        if self.hold is not None:
            if not outcome.accepted and (step := self.hold.after_rcpt(state, sender, outcome,
                                                                      started)):  # fmt: skip
                return Outcome(self._held(state, step), True)  # every recipient still pending
            self.hold.answered(sender)
        state.record = delivered(record, outcome.refused, outcome.deferred)
        if self.suppression is not None:
            self.suppression.learn(sender.account, outcome.refused, state.request_id)
        state.deferred = dict(outcome.deferred)
        # Someone took it; else a deferred recipient makes it worth another try; else every
        # recipient was refused.
        kind = "sent" if outcome.accepted else "transient" if outcome.deferred else "permanent"
        if outcome.deferred:
            reason = "; ".join(f"{a}: {r}" for a, r in outcome.deferred.items())
            return self._attempted(started, kind, self._after_failure(state, reason), True)
        final = Final(finish(state.record, EmailStatus.SENT, None, now=utcnow()))
        return self._attempted(started, kind, final, True)

    def _held(self, state: AttemptState, step: Hold | Final | str) -> Next:
        """The gate's step as the attempt's answer (its DROPPED: another process owns it)."""
        return self._dropped(state) if isinstance(step, str) else step

    def _released(self, state: AttemptState, sender: Sender, step: Next) -> Next:
        """The gate let the request through, but it is not sent after all: if it was the
        account's probe, the next request is."""
        if self.hold is not None:
            self.hold.released(state, sender)
        return step

    def _limited(
        self, state: AttemptState, sender: Sender, reason: str, kind: str, started: float
    ) -> Outcome | None:
        """The gate's judgement of a failed transaction: the message waits for its account's
        pause, that attempt not counted; None: the failure takes its usual course."""
        if self.hold is None:
            return None
        step = self.hold.after_failure(state, sender, reason, kind, started)
        return None if step is None else Outcome(self._held(state, step), kind != "connect")

    def _dropped(self, state: AttemptState) -> Dropped:
        """Why the store would not let this attempt begin: the request ended meanwhile (a
        cancel wins over `sending` in the store), or another process owns it now."""
        ended = self._ended(state.request_id)
        if ended is not None:
            return Dropped(f"{ended.status} before it was sent", ended)
        return Dropped("taken over by another process")

    def _ended(self, request_id: str) -> StatusRecord | None:
        """The request's final record when the store has one (None too when it cannot say)."""
        try:
            stored = self.store.get(request_id)
        except StoreError:
            return None
        return stored if stored is not None and stored.status.final else None

    def _attempted(self, started: float, kind: str, step: Retry | Final, answered: bool) -> Outcome:
        """Announce the SMTP transaction that ended (`Attempted`); what comes next."""
        seconds = self._clock() - started
        self.events.emit(Attempted(step.record, seconds, kind, isinstance(step, Retry)))
        return Outcome(step, answered)

    def failed(self, state: AttemptState, reason: str) -> Final:
        """The end of a request that cannot go on (permanent failure, shutdown, a bug)."""
        return Final(
            finish(
                state.record,
                EmailStatus.FAILED,
                reason,
                now=utcnow(),
                deferred=state.deferred,
                possibly_delivered=state.possibly_delivered,
            )
        )

    def _expire(self, state: AttemptState, now: datetime) -> StatusRecord:
        return expire(
            state.record,
            now=now,
            deferred=state.deferred,
            possibly_delivered=state.possibly_delivered,
        )

    def _after_failure(self, state: AttemptState, reason: str) -> Retry | Final:
        return after_failure(
            state.record,
            reason,
            max_attempts=self.max_attempts,
            backoff=self.retry_backoff,
            jitter=self._jitter(*JITTER),
            now=utcnow(),
            deferred=state.deferred,
            possibly_delivered=state.possibly_delivered,
        )

    def _wait_for_store(self, state: AttemptState) -> WaitForStore:
        state.store_waits += 1
        delay = min(STORE_WAIT_MAX, STORE_WAIT_FIRST * 2 ** (state.store_waits - 1))
        return WaitForStore(delay * self._jitter(*JITTER))

    def save_retry(self, record: StatusRecord) -> bool | None:
        """Record `retrying`: True, False when another process owns the request now, None
        when the store refused (the next attempt records `sending` before it sends)."""
        try:
            return self.store.save(record)
        except StoreError:
            return None

    def save_final(self, record: StatusRecord) -> None:
        """Record a final status and announce it; StoreError when the store refused it."""
        if self.store.save(record):
            self.events.emit(Finished(record))
            return
        ended = self._ended(record.request_id)
        if ended is not None:  # it ended meanwhile (a cancel, say): its end stays, no alarm
            line = "request_id=%s had ended %s before its final status (%s) was recorded"
            logger.info(line, record.request_id, ended.status, record.status)
            return
        logger.warning(
            "request_id=%s was taken over by another process before its final status (%s) "
            "was recorded",
            record.request_id,
            record.status,
        )
