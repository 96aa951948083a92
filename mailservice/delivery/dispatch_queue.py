"""The sending threads' queue: one lane per SMTP server, served in turn, capped and paused.

Jobs wait in the lane of the SMTP server they go to, and a sending thread asks `get()` for the
next one. Three rules keep one bad server from delaying everyone else's mail:

- Lanes are served round-robin, so a server with a long backlog does not make another wait
  behind all of it.
- A lane never holds more than `lane_cap` threads at once: a server that accepts connections and
  never answers can hold that many threads for a time-out, and the others keep the rest.
- A lane whose server failed to connect or greet `breaker_failures` times in a row is paused for
  `pause_seconds`: its jobs wait in the queue, holding no thread and spending no attempt. When
  the pause is over one job alone probes the server; if it fails, the pause doubles (up to
  `MAX_PAUSE_FACTOR` times the first), and the first success ends the pause for every job.

Outcomes come back through `done(key, answered)`: True when the server answered (whatever it
said), False when it could not be reached or did not greet, None when no connection was tried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

BREAKER_FAILURES = 3
MAX_PAUSE_FACTOR = 16


@dataclass(slots=True)
class _Lane(Generic[T]):
    jobs: deque[T] = field(default_factory=deque)
    busy: int = 0
    failures: int = 0  # connection failures in a row
    pause: float = 0.0  # length of the current pause; 0 while the server answers
    paused_until: float = 0.0
    probing: bool = False  # the one job sent after a pause is on its way


class DispatchQueue(Generic[K, T]):
    """Jobs by lane (an SMTP server), handed to threads in turn within each lane's limits."""

    def __init__(
        self,
        lane_cap: int,
        pause_seconds: float = 30.0,
        breaker_failures: int = BREAKER_FAILURES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lane_cap = max(1, lane_cap)
        self.pause_seconds = pause_seconds
        self.breaker_failures = breaker_failures
        self._clock = clock
        self._lanes: dict[K, _Lane[T]] = {}
        self._turn = 0
        self._queued = 0
        self._cond = threading.Condition()
        self._stopped = False

    def __len__(self) -> int:
        with self._cond:
            return self._queued

    def put(self, key: K, job: T) -> None:
        with self._cond:
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
            lane.jobs.append(job)
            self._queued += 1
            self._cond.notify()

    def get(self) -> tuple[K, T] | None:
        """The next job a thread may take, waiting for one; None once stopped."""
        with self._cond:
            while not self._stopped:
                now = self._clock()
                picked = self._pick(now)
                if picked is not None:
                    return picked
                self._cond.wait(self._next_wake(now))
            return None

    def _pick(self, now: float) -> tuple[K, T] | None:
        keys = list(self._lanes)
        for offset in range(len(keys)):
            index = (self._turn + offset) % len(keys)
            key = keys[index]
            lane = self._lanes[key]
            if not lane.jobs or lane.busy >= self.lane_cap:
                continue
            if lane.pause:
                if now < lane.paused_until or lane.busy or lane.probing:
                    continue  # paused, or its one probe has to come first
                lane.probing = True
            self._turn = index + 1
            lane.busy += 1
            self._queued -= 1
            return key, lane.jobs.popleft()
        return None

    def _next_wake(self, now: float) -> float | None:
        """Seconds until a paused lane with jobs may probe (None: wait for a put or done)."""
        ends = [
            lane.paused_until
            for lane in self._lanes.values()
            if lane.jobs and lane.pause and not lane.busy and lane.paused_until > now
        ]
        return max(0.0, min(ends) - now) if ends else None

    def done(self, key: K, answered: bool | None) -> None:
        """A thread finished a job of `key`'s lane; `answered` as in the module docstring."""
        with self._cond:
            lane = self._lanes[key]
            lane.busy -= 1
            # While a probe is out nothing else of the lane is, so this is the probe's outcome.
            was_probe, lane.probing = lane.probing, False
            if answered is True:
                if lane.pause:
                    logger.warning("SMTP server %s answers again; sending resumes", _name(key))
                lane.failures, lane.pause, lane.paused_until = 0, 0.0, 0.0
            elif answered is False:
                lane.failures += 1
                if was_probe and lane.pause:
                    longest = self.pause_seconds * MAX_PAUSE_FACTOR
                    self._pause(key, lane, min(lane.pause * 2, longest))
                elif not lane.pause and lane.failures >= self.breaker_failures:
                    self._pause(key, lane, self.pause_seconds)
            self._cond.notify_all()

    def _pause(self, key: K, lane: _Lane[T], seconds: float) -> None:
        lane.pause = seconds
        lane.paused_until = self._clock() + seconds
        logger.warning(
            "SMTP server %s failed to connect or greet %d times in a row: not connecting for "
            "%gs; %d message(s) wait for it without spending attempts",
            _name(key),
            lane.failures,
            seconds,
            len(lane.jobs),
        )

    def paused(self, key: K) -> bool:
        """True while `key`'s server is paused (its probe not yet answered)."""
        with self._cond:
            lane = self._lanes.get(key)
            return lane is not None and bool(lane.pause)

    def stop(self) -> None:
        """Wake every waiting thread with None and drop the queued jobs (their owner keeps
        track of them)."""
        with self._cond:
            self._stopped = True
            for lane in self._lanes.values():
                lane.jobs.clear()
            self._queued = 0
            self._cond.notify_all()


def _name(key: object) -> str:
    if isinstance(key, tuple) and len(key) == 2:
        return f"{key[0]}:{key[1]}"
    return str(key)
