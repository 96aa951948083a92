"""A one-thread scheduler for retries: runs a callback for each item when its delay is over.

Waiting for a backoff must not hold a sending thread, so the pool hands a failed job to this
scheduler, whose single thread sleeps until the earliest due item and then gives it back.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class RetryScheduler(Generic[T]):
    """Runs callbacks at a later monotonic time on one thread, in due order."""

    def __init__(self, run: Callable[[T], None], clock: Callable[[], float]) -> None:
        self._run = run
        self._clock = clock
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def schedule(self, delay: float, job: T) -> bool:
        """Run `job` after `delay` seconds; False once stopped."""
        with self._cond:
            if self._stopped:
                return False
            heapq.heappush(self._heap, (self._clock() + delay, next(self._seq), job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="retry", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > self._clock()):
                    timeout = self._heap[0][0] - self._clock() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, job = heapq.heappop(self._heap)
            self._run(job)

    def stop(self) -> list[T]:
        """Stop and return the jobs that were still waiting."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
            left = [job for _, _, job in self._heap]
            self._heap.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return left
