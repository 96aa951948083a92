"""A one-thread scheduler for retries: runs a callback for each item when its delay is over.

Waiting for a backoff must not hold a sending thread, so the pool hands a failed job to this
scheduler, whose single thread takes each job from a `DueQueue` when it is due and gives it
back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from mailservice.events.due_queue import DueQueue

T = TypeVar("T")


class RetryScheduler(Generic[T]):
    """Runs callbacks at a later monotonic time on one thread, in due order."""

    def __init__(self, run: Callable[[T], None], clock: Callable[[], float]) -> None:
        self._run = run
        self._due: DueQueue[T] = DueQueue(clock)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, delay: float, job: T) -> bool:
        """Run `job` after `delay` seconds; False once stopped."""
        if not self._due.put(delay, job):
            return False
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="retry", daemon=True)
                self._thread.start()
        return True

    def remove(self, match: Callable[[T], bool]) -> list[T]:
        """Take the waiting jobs `match` picks out, unrun; those taken."""
        return self._due.remove(match)

    def _loop(self) -> None:
        while (job := self._due.take()) is not None:
            try:
                self._run(job)
            finally:
                self._due.done()

    def stop(self) -> list[T]:
        """Stop and return the jobs that were still waiting."""
        left = self._due.close()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        return left
