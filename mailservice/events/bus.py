"""What happens to a request, announced to whoever subscribes: `Accepted`, `Attempted`,
`Finished` and `WebhookTried`.

An event about a request's status is emitted only after the process that owns the request has
saved the record it describes: `Accepted` once the store has created it (the 202 promise),
`Finished` once the store has taken its final status under this process's ownership. A process
that lost the request to another emits nothing; the new owner will. The other two tell what
only the code that did it knows, as it happens: `Attempted` when one attempt's SMTP
transaction ended (delivery/attempt.py, before the status it leads to is saved), and
`WebhookTried` when one webhook try ended (events/webhooks.py). Subscribers (the request log
first, then the metrics, the webhooks and the failure notices) are called in order on the
emitting thread, must be quick, and ignore the events they have no use for; one that raises is
logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from mailservice.stores.contract import StatusRecord

logger = logging.getLogger(__name__)

# What the server made of one attempt's message (`Attempted.outcome`): it took the message for
# at least one recipient; a failure worth another attempt (a 4xx, a dropped connection, a
# time-out, every recipient deferred); a failure for good (a 5xx, every recipient refused).
ATTEMPT_OUTCOMES = ("sent", "transient", "permanent")
# How one webhook try ended (`WebhookTried.outcome`): a 2xx; failed with tries left; failed,
# the target's last.
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed")


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request was recorded as `queued` (or `scheduled`, for its send_at); `source` says
    where it came in: the API route's rule (`/send-email`), `failure-notice` for an ADMIN_EMAIL
    notice, or `retry` for a failed request sent again by hand (delivery/lifecycle.py)."""

    record: StatusRecord
    source: str = ""


@dataclass(frozen=True, slots=True)
class Attempted:
    """One attempt's SMTP transaction ended after `seconds` (connecting included) with
    `outcome` (one of ATTEMPT_OUTCOMES); `retry`: another attempt follows. `record` is the
    status the attempt leads to, not yet saved."""

    record: StatusRecord
    seconds: float
    outcome: str
    retry: bool


@dataclass(frozen=True, slots=True)
class Finished:
    """A request's final status (`sent`, `failed`, `expired` or `canceled`) was recorded."""

    record: StatusRecord


@dataclass(frozen=True, slots=True)
class WebhookTried:
    """One try of a request's webhook to `target` (`callback_url` or `WEBHOOK_URL`) ended with
    `outcome` (one of WEBHOOK_OUTCOMES)."""

    record: StatusRecord
    target: str
    outcome: str


Event = Accepted | Attempted | Finished | WebhookTried
Subscriber = Callable[[Event], None]


class EventBus:
    """Calls every subscriber with every event, in the order they subscribed."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._flushes: list[Callable[[], object]] = []

    def subscribe(self, subscriber: Subscriber, flush: Callable[[], object] | None = None) -> None:
        """Add a subscriber; `flush`, if given, finishes what it has queued (see `flush()`)."""
        self._subscribers.append(subscriber)
        if flush is not None:
            self._flushes.append(flush)

    def flush(self) -> None:
        """Let every subscriber that queues work finish it (a dispatcher's drain calls this, so
        that what ended is written out when the drain returns)."""
        for flush in self._flushes:
            flush()

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:  # one subscriber's bug must not cost the others their event
                logger.exception(
                    "event subscriber %r failed request_id=%s", subscriber, event.record.request_id
                )
