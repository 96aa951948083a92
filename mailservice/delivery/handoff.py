"""Handing requests to the broker: one thread publishes each recorded request's task, in order,
and keeps trying while the broker is away.

A request is recorded in the store before it is handed over (the 202 promise does not wait for
the broker), so a broker that is down costs nothing but time: `put()` only queues the id, and
the thread publishes it when the broker answers again, waiting `BACKOFF_FIRST` seconds after a
refusal, doubling up to `BACKOFF_MAX`, and trying the same request again before any later one.
The outage is logged once when it starts and once when it ends. A hand-over may be due later
(`delay`: a retry's backoff); it then waits here, not as a countdown on the broker, whose Redis
transport redelivers long-delayed tasks early and twice.

What is still here at `close()` stays recorded in the store under this process's lease; once
the lease is given up, another process's recovery hands it over again (delivery/recovery.py).
Each entry is a request id with the owner that hands it over: the task carries that name, and
the worker takes the request over only from it (`StatusStore.take`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailservice.events.due_queue import DueQueue
from mailservice.stores.contract import OutageLog

logger = logging.getLogger(__name__)

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0
# While the broker stays away, a reminder this often: how long, how many wait, the last error
# (a refusal that is not an outage, e.g. a vhost without permissions, shows here too).
REMIND_EVERY = 300.0


@dataclass(frozen=True, slots=True)
class Handover:
    """One task to publish: deliver `request_id`, taken over from `from_owner`.
    `possibly_delivered`: an earlier attempt got no reply to the end of DATA (the final error
    says so, as the thread pool's does)."""

    request_id: str
    from_owner: str
    possibly_delivered: bool = False


class Handoff:
    """Publishes hand-overs with `publish` on a thread of its own; thread-safe."""

    def __init__(
        self, publish: Callable[[Handover], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._publish = publish
        self._due: DueQueue[Handover] = DueQueue(clock)
        self._outage = OutageLog(
            logger,
            down="broker unreachable: %s (accepted requests wait here until it returns)",
            up="broker reachable again",
        )
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._held = 0  # hand-overs put and not yet published or left
        self._left_count = 0  # left at close, for recovery
        self._thread = threading.Thread(target=self._run, name="handoff", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        with self._lock:
            return self._held

    def put(self, handover: Handover, delay: float = 0.0) -> bool:
        """Publish `handover` after `delay` seconds; False (not taken) once closed."""
        with self._lock:
            if not self._due.put(delay, handover):
                return False
            self._held += 1
            return True

    def _run(self) -> None:
        while (handover := self._due.take()) is not None:
            try:
                self._publish_until_taken(handover)
            finally:
                self._due.done()

    def _publish_until_taken(self, handover: Handover) -> None:
        backoff = BACKOFF_FIRST
        since = remind = time.monotonic()
        while True:
            try:
                self._publish(handover)
            except Exception as exc:  # kombu's errors differ by transport; all mean "not yet"
                self._outage.failed(exc)
                if time.monotonic() - remind >= REMIND_EVERY:
                    remind = time.monotonic()
                    logger.warning(
                        "broker still unreachable after %.0f s, %d request(s) waiting: %s",
                        remind - since,
                        len(self),
                        exc,
                    )
                if self._stopping.wait(backoff):
                    self._left(handover)
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self._outage.succeeded()
            with self._lock:
                self._held -= 1
            return

    def _left(self, handover: Handover) -> None:
        with self._lock:
            self._held -= 1
            self._left_count += 1
        logger.debug("left for recovery request_id=%s", handover.request_id)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s until nothing due now is waiting; whether nothing was."""
        return self._due.idle(timeout)

    def close(self, timeout: float) -> int:
        """Publish what is due for up to `timeout` s, then stop; how many were left (they stay
        recorded, for recovery)."""
        self.flush(timeout)
        self._stopping.set()
        for handover in self._due.close():
            self._left(handover)
        self._thread.join(timeout=BACKOFF_MAX + 1)
        with self._lock:
            return self._left_count + self._held
