"""The Celery dispatcher: recorded requests go to Celery worker processes through a broker.

Every process of a `DISPATCHER=celery` deployment has one: the API processes, which hand over
what they accept, and each worker process, which hands over its retries and what its recovery
takes up. Handing over is publishing a task `deliver(request_id, from_owner)` (the `Handoff`
thread, which waits out a broker outage); nothing of the message travels on the broker, only
the id, and the worker reads the content from the store when it takes the request over from
`from_owner` (`StatusStore.take`), so a task that comes twice, or late, does nothing.

It holds no content (a worker's task reads it from the store for its one attempt), so
QUEUE_MAX and QUEUE_MAX_BYTES do not bound what is accepted: the broker is the queue, and the
store has every request. An
accepted request is refused (503) only when the store is down or the process is draining.
`room()` (QUEUE_MAX) bounds what one round of recovery takes up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

from mailservice.delivery.attempt import AttemptState, DeliveryAttempt
from mailservice.delivery.dispatcher import (
    Dispatcher,
    DispatcherStats,
    final_in_store,
    new_owner_id,
)
from mailservice.delivery.handoff import Handoff, Handover
from mailservice.errors import StoreError, Unavailable
from mailservice.senders import Sender
from mailservice.stores.contract import StatusRecord

logger = logging.getLogger(__name__)


class CeleryDispatcher(Dispatcher):
    """Hands requests to the broker with `publish`; `threads`: the attempts this process runs
    at once (a prefork worker child: 1; an API process: 0)."""

    def __init__(
        self,
        attempt: DeliveryAttempt,
        publish: Callable[[Handover], None],
        *,
        queue_max: int = 10000,
        threads: int = 0,
        owner: str = "",
    ) -> None:
        self.attempt = attempt
        self.store = attempt.store
        self.owner = owner or new_owner_id()
        self.queue_max = queue_max
        self.threads = threads
        self.handoff = Handoff(publish)
        self._lock = threading.Lock()
        self._busy = 0
        self._accepting = True

    def unfinished(self) -> int:
        return len(self.handoff)

    def stats(self) -> DispatcherStats:
        with self._lock:
            busy = self._busy
        return DispatcherStats(len(self.handoff), 0, busy, self.threads)

    def room(self) -> int:
        # Not less while hand-overs wait for the broker: a batch is refused (503) only when
        # the store is, as a single request is. QUEUE_MAX bounds one recovery round's take.
        return self.queue_max if self._accepting else 0

    def check_room(self, size: int = 0) -> None:
        self.check_open()

    def check_open(self) -> None:
        if not self._accepting:
            raise Unavailable("the service is shutting down")

    def submit(self, record: StatusRecord, payload: str, sender: Sender) -> None:
        self.later(record.request_id)

    def resume(self, record: StatusRecord, payload: str, sender: Sender | None) -> None:
        state = AttemptState.resumed(record, None)
        if sender is None:
            final = self.attempt.failed(state, "its sender is no longer configured").record
            try:
                self.attempt.save_final(final)
            except StoreError as exc:  # still this process's: the next round tries again
                logger.warning("request_id=%s: %s", record.request_id, exc)
            return
        logger.info("resuming request_id=%s (status %s)", record.request_id, record.status)
        self.later(record.request_id, possibly_delivered=state.possibly_delivered)

    def later(self, request_id: str, delay: float = 0.0, possibly_delivered: bool = False) -> None:
        """Hand the request (owned by this process) over, after `delay` seconds."""
        handover = Handover(request_id, self.owner, possibly_delivered)
        if not self.handoff.put(handover, delay):
            logger.info("left for recovery request_id=%s", request_id)

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Around an attempt this process runs (a worker's task): counted as busy."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def wait(self, request_id: str, timeout: float) -> StatusRecord | None:
        return final_in_store(self.store, request_id, timeout)

    def drain(self, seconds: float) -> int:
        self._accepting = False
        left = self.handoff.close(seconds)
        if left:
            logger.info("%d request(s) left for recovery: the broker did not take them", left)
        self.attempt.smtp.close_all()
        self.attempt.events.flush()
        return left
