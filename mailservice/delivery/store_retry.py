"""Status writes the store could not take, retried on one thread until it takes them.

A final status that cannot be written must not be treated as written: the request would look
unfinished, and recovery would send it again. So the pool hands such a write to `StoreRetry`,
which keeps it (in memory, in order) and tries again with a backoff of `first_delay` doubling to
`max_delay` until the store answers. One write is tried per round, not every waiting one, so an
outage costs one failed call per backoff, and the outage is logged once when writes start
waiting and once when the store has taken them all.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from mailservice.errors import StoreError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StoreRetry(Generic[T]):
    """Calls `write(item)` for each item put, in order, until it no longer raises StoreError."""

    def __init__(
        self,
        write: Callable[[T], None],
        first_delay: float = 0.1,
        max_delay: float = 5.0,
    ) -> None:
        self._write = write
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._delayed = 0  # writes that waited during the current outage

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> None:
        """Keep `item` until `write` takes it; the first of an outage is logged."""
        with self._cond:
            if self._stopped:
                return
            self._items.append(item)
            if self._delayed == 0:
                logger.warning(
                    "the status store refused a status write: keeping it, and those after it, "
                    "in memory and retrying until the store takes them"
                )
            self._delayed += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="store-retry", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        delay = self.first_delay
        while True:
            with self._cond:
                while not self._items and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                item = self._items[0]
            try:
                self._write(item)
            except StoreError:
                with self._cond:
                    self._cond.wait(delay)  # stop() wakes it early
                delay = min(delay * 2, self.max_delay)
                continue
            except Exception:  # this thread's boundary: a bug drops one item, not the thread
                logger.exception("status write failed for good")
            delay = self.first_delay
            with self._cond:
                self._items.popleft()
                if not self._items:
                    logger.warning("the status store took the %d delayed write(s)", self._delayed)
                    self._delayed = 0
                    self._cond.notify_all()

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every kept write to be taken; True if it was."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items, timeout)

    def stop(self) -> list[T]:
        """Stop retrying; the items the store never took."""
        with self._cond:
            self._stopped = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return left
