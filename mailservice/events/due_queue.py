"""A queue of work that becomes due at a time, for threads that take each piece when it is due.

The webhook notifier keeps every try and retry of every target here, and the thread pool's
retry scheduler (delivery/retry_scheduler.py) every request waiting out its backoff: an entry in
a heap, not a sleeping thread. `take()` blocks until the earliest entry
is due (or the queue is closed), `done()` says a taken one was dealt with, and `idle()` waits
until nothing due now is waiting or in hand (a drain's flush). Ties go first come, first served.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class DueQueue(Generic[T]):
    """Entries due `delay` seconds after they are put; thread-safe, one condition."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._in_hand = 0
        self.closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def put(self, delay: float, item: T) -> bool:
        """Queue `item`, due in `delay` seconds; False (dropped) once closed."""
        with self._cond:
            if self.closed:
                return False
            heapq.heappush(self._heap, (self._clock() + delay, next(self._order), item))
            self._cond.notify()
            return True

    def take(self) -> T | None:
        """The earliest entry once it is due, waiting for it; None once closed."""
        with self._cond:
            while not self.closed:
                wait = self._heap[0][0] - self._clock() if self._heap else None
                if wait is not None and wait <= 0:
                    self._in_hand += 1
                    return heapq.heappop(self._heap)[2]
                self._cond.wait(wait)
            return None

    def remove(self, match: Callable[[T], bool]) -> list[T]:
        """Take the waiting entries `match` picks out of the queue (a canceled request's job
        need not wait out its delay to be let go); those taken. Rare: it walks the heap."""
        with self._cond:
            taken = [entry for entry in self._heap if match(entry[2])]
            if taken:
                self._heap = [entry for entry in self._heap if not match(entry[2])]
                heapq.heapify(self._heap)
                self._cond.notify_all()  # idle() may be waiting on one of them
            return [item for _, _, item in taken]

    def done(self) -> None:
        """A taken entry was dealt with (a retry it made is in the queue again)."""
        with self._cond:
            self._in_hand -= 1
            self._cond.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait up to `timeout` s until no entry is in hand or due now; whether none was."""

        def quiet() -> bool:
            due_now = bool(self._heap) and self._heap[0][0] <= self._clock()
            return self.closed or (self._in_hand == 0 and not due_now)

        with self._cond:
            return self._cond.wait_for(quiet, timeout)

    def close(self) -> list[T]:
        """Drop every waiting entry and wake the takers; the entries dropped, in due order."""
        with self._cond:
            dropped = [item for _, _, item in sorted(self._heap)]
            self.closed = True
            self._heap.clear()
            self._cond.notify_all()
            return dropped
