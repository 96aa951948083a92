"""StoreRetry on its own: writes kept in order until the store takes them, the outage logged
once at its start and once at its end."""

from __future__ import annotations

import logging
import threading

from mailservice.delivery.store_retry import StoreRetry
from mailservice.errors import StoreError
from tests.conftest import wait_for


class FlakyStore:
    """Refuses every write while `down` is set."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.written: list[int] = []
        self.refused = 0

    def write(self, item: int) -> None:
        if self.down.is_set():
            self.refused += 1
            raise StoreError("down")
        self.written.append(item)


def test_writes_wait_in_order_until_the_store_returns(caplog):
    store = FlakyStore()
    store.down.set()
    retry: StoreRetry[int] = StoreRetry(store.write, first_delay=0.01, max_delay=0.05)
    with caplog.at_level(logging.WARNING, logger="mailservice.delivery.store_retry"):
        for item in range(5):
            retry.put(item)
        wait_for(lambda: store.refused >= 5)
        assert len(retry) == 5 and store.written == []
        store.down.clear()
        assert retry.wait_empty(5)
    assert store.written == [0, 1, 2, 3, 4]
    ours = [r for r in caplog.records if r.name == "mailservice.delivery.store_retry"]
    lines = [r.getMessage() for r in ours]  # other loggers (a late thread) are not ours
    assert len(lines) == 2, lines  # one when writes start waiting, one when all are taken
    assert lines[1] == "the status store took the 5 delayed write(s)"
    assert retry.stop() == []


def test_one_write_is_tried_per_round_not_every_waiting_one():
    store = FlakyStore()
    store.down.set()
    retry: StoreRetry[int] = StoreRetry(store.write, first_delay=0.05, max_delay=0.05)
    for item in range(100):
        retry.put(item)
    wait_for(lambda: store.refused >= 3)
    assert store.refused < 50  # rounds, not items: an outage costs one failed call a round
    assert retry.stop() == list(range(100))  # what the store never took is handed back


def test_a_bug_in_one_write_does_not_stop_the_others(caplog):
    written: list[int] = []

    def write(item: int) -> None:
        if item == 1:
            raise ValueError("bug")
        written.append(item)

    retry: StoreRetry[int] = StoreRetry(write)
    with caplog.at_level(logging.ERROR, logger="mailservice.delivery.store_retry"):
        for item in range(3):
            retry.put(item)
        wait_for(lambda: written == [0, 2])
    assert "status write failed for good" in caplog.text
    retry.stop()
