"""What happens to a request, announced to whoever subscribes: `Accepted` and `Finished`.

An event is emitted only after the process that owns the request has saved the record it
describes: `Accepted` once the store has created it (the 202 promise), `Finished` once the
store has taken its final status under this process's ownership. A process that lost the
request to another emits nothing; the new owner will. Subscribers (the request log first,
then the webhooks; metrics and notices later) are called in order on the emitting thread and
must be quick; one that raises is logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from mailservice.stores.contract import StatusRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request was recorded as `queued`."""

    record: StatusRecord


@dataclass(frozen=True, slots=True)
class Finished:
    """A request's final status (`sent` or `failed`) was recorded."""

    record: StatusRecord


Event = Accepted | Finished
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
