"""Name lookups with a time limit: an answer, the resolver's own error, a lookup that takes too
long, and the bound on lookups waiting while slow ones hold every thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from mailservice.events.name_lookup import NameLookup


@pytest.fixture
def held() -> Iterator[threading.Event]:
    release = threading.Event()
    yield release
    release.set()  # lookups still held end with the test


def test_an_answer_and_the_resolvers_own_error_come_back() -> None:
    lookup = NameLookup()
    try:
        assert lookup.addresses("127.0.0.1", 80, 5.0) == ["127.0.0.1"]
        with pytest.raises(socket.gaierror):
            lookup.addresses("nonexistent.invalid", 80, 5.0)
    finally:
        lookup.close()


def test_a_lookup_that_takes_too_long_is_a_timeout_and_too_many_waiting_fail_at_once(
    held: threading.Event,
) -> None:
    asked: list[str] = []

    def slow(host: str, port: int) -> list[str]:
        asked.append(host)
        held.wait(30)
        return ["192.0.2.1"]

    lookup = NameLookup(threads=1, queue_max=1, resolve=slow)
    with pytest.raises(TimeoutError, match=r"resolving a\.example took longer than 0\.1 s"):
        lookup.addresses("a.example", 80, 0.1)  # holds the one thread
    with pytest.raises(TimeoutError, match="took longer"):
        lookup.addresses("b.example", 80, 0.1)  # waits in the queue, then gives up
    with pytest.raises(TimeoutError, match="too many lookups waiting"):
        lookup.addresses("c.example", 80, 10.0)  # the queue is full: at once, not in 10 s
    assert asked == ["a.example"]
    with pytest.raises(TimeoutError, match="no time left"):
        lookup.addresses("d.example", 80, 0.0)
    lookup.close()
