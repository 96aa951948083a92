"""Figures a row is made of: the sink waited for with a deadline, rates and CPU per message."""

from __future__ import annotations

import time

from bench.sink import SinkProcess, SinkStats


def wait_for_sink(sink: SinkProcess, expected: int, timeout: float, stall: float) -> SinkStats:
    """The sink's counts once it has `expected` messages, at the deadline, or after a stall."""
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    while True:
        stats = sink.stats()
        now = time.monotonic()
        if stats.messages >= expected:
            return stats
        if stats.messages != last_count:
            last_count, last_change = stats.messages, now
        if now > deadline or now - last_change > stall:
            return stats
        time.sleep(0.05)


def per_second(count: int, start: float | None, end: float | None) -> float | None:
    if not count or start is None or end is None or end <= start:
        return None
    return count / (end - start)


def per_message(seconds: float, messages: int) -> float | None:
    """CPU microseconds per message."""
    return seconds * 1e6 / messages if messages else None
