"""The long poll's StatusWatch on real stores: woken by this process's Finished event, by its
poller for a request another process finished, answering the current status when time is up,
bounded by WAITERS_MAX, and woken at once when the process stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

from mailservice.events.bus import EventBus, Finished
from mailservice.events.status_watch import StatusWatch
from mailservice.stores.contract import EmailStatus, StatusRecord, StatusStore
from mailservice.stores.memory_store import MemoryStatusStore
from tests.conftest import wait_for
from tests.test_status_store import new_record, open_store

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@dataclass
class Waiting:
    """One wait() on a thread of its own: its answer once it returned."""

    thread: threading.Thread
    answer: list[StatusRecord | None]

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self, timeout: float = 10.0) -> StatusRecord | None:
        self.thread.join(timeout)
        assert self.done, f"still waiting after {timeout} s"
        return self.answer[0]


def start_wait(watch: StatusWatch, request_id: str, seconds: float) -> Waiting:
    answer: list[StatusRecord | None] = []
    thread = threading.Thread(target=lambda: answer.append(watch.wait(request_id, seconds)))
    thread.start()
    return Waiting(thread, answer)


class CountingStore(MemoryStatusStore):
    """The memory store, noting the ids of every get_many() call (to see the poller's reads)."""

    def __init__(self) -> None:
        super().__init__(ttl=60)
        self.reads: list[tuple[str, ...]] = []

    def get_many(self, request_ids: Sequence[str]) -> dict[str, StatusRecord]:
        self.reads.append(tuple(request_ids))
        return super().get_many(request_ids)


def queued(store: StatusStore, index: int = 1) -> StatusRecord:
    record = new_record(f"77777777-7777-4777-8777-{index:012d}")
    store.create(record, "{}")
    return record


def sent(record: StatusRecord) -> StatusRecord:
    return replace(record, status=EmailStatus.SENT, pending=(), attempts=1)


@pytest.fixture(params=["sqlite", "redis"])
def two_processes(request: pytest.FixtureRequest) -> Iterator[tuple[StatusStore, StatusStore]]:
    """Two store objects on one durable store: this process's and another's."""
    ours, theirs = open_store(request.param, request), open_store(request.param, request)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_this_process_s_finished_event_wakes_the_waiter_at_once() -> None:
    store = MemoryStatusStore(ttl=60)
    watch = StatusWatch(store, poll_seconds=3600)  # one round at the start, then none
    bus = EventBus()
    bus.subscribe(watch.on_event)
    record = queued(store)
    waiting = start_wait(watch, record.request_id, 30)
    wait_for(lambda: watch.waiting == 1)
    final = sent(record)
    assert store.save(final)
    bus.emit(Finished(final))
    assert waiting.result() == final
    assert watch.waiting == 0
    watch.close()


def test_the_poller_finds_a_request_another_process_finished(two_processes: Any) -> None:
    ours, theirs = two_processes
    watch = StatusWatch(ours, poll_seconds=0.05)
    record = queued(ours)
    waiting = start_wait(watch, record.request_id, 30)
    wait_for(lambda: watch.waiting == 1)
    final = sent(record)
    assert theirs.save(final)  # no event here: the other process emits it
    assert waiting.result() == final
    watch.close()


def test_when_time_is_up_the_answer_is_the_current_status(two_processes: Any) -> None:
    ours, theirs = two_processes
    watch = StatusWatch(ours, poll_seconds=0.05)
    record = queued(ours)
    assert watch.wait(record.request_id, 0.2) == record  # time up: still queued
    waiting = start_wait(watch, record.request_id, 30)
    wait_for(lambda: watch.waiting == 1)
    sending = replace(record, status=EmailStatus.SENDING, attempts=1)
    assert theirs.save(sending)
    assert not waiting.done, "an unfinished status does not end the wait"
    watch.close()  # ends the wait before its time: the status is read again, not the first read
    assert waiting.result() == sending


def test_a_final_or_unknown_request_is_answered_without_waiting() -> None:
    store = MemoryStatusStore(ttl=60)
    watch = StatusWatch(store, poll_seconds=3600)
    record = queued(store)
    final = sent(record)
    store.save(final)
    assert watch.wait(record.request_id, 30) == final
    assert watch.wait(UNKNOWN, 30) is None
    assert watch.waiting == 0
    watch.close()


def test_past_waiters_max_a_request_is_answered_at_once_with_its_current_status() -> None:
    store = MemoryStatusStore(ttl=60)
    watch = StatusWatch(store, poll_seconds=0.05, waiters_max=2)
    first, second, third = (queued(store, i) for i in range(3))
    waitings = [start_wait(watch, r.request_id, 30) for r in (first, second)]
    wait_for(lambda: watch.waiting == 2)
    assert watch.wait(third.request_id, 30) == third  # not a third waiter: at once, queued
    assert not any(w.done for w in waitings)
    store.save(sent(first))  # the poller finds it (no event): room for one more
    assert waitings[0].result() == sent(first)
    late = start_wait(watch, third.request_id, 30)
    wait_for(lambda: watch.waiting == 2)
    watch.close()
    assert waitings[1].result() == second and late.result() == third


def test_close_wakes_every_waiter_and_later_waits_do_not_wait() -> None:
    store = MemoryStatusStore(ttl=60)
    watch = StatusWatch(store, poll_seconds=3600)
    records = [queued(store, i) for i in range(5)]
    waitings = [start_wait(watch, r.request_id, 30) for r in records for _ in range(2)]
    wait_for(lambda: watch.waiting == 10)
    watch.close()
    assert [w.result() for w in waitings] == [r for r in records for _ in range(2)]
    assert watch.wait(records[0].request_id, 30) == records[0]
    assert watch.waiting == 0


def test_one_read_per_round_for_every_waited_id_and_none_while_nobody_waits() -> None:
    store = CountingStore()
    watch = StatusWatch(store, poll_seconds=0.02)
    records = [queued(store, i) for i in range(3)]
    waitings = [start_wait(watch, r.request_id, 30) for r in records]
    wait_for(lambda: watch.waiting == 3)
    ids = {r.request_id for r in records}
    wait_for(lambda: any(set(read) == ids for read in store.reads))
    for record in records:
        store.save(sent(record))
    assert [w.result() for w in waitings] == [sent(r) for r in records]
    assert all(len(read) == len(set(read)) for read in store.reads), "each id once a round"
    reads = len(store.reads)
    idle = threading.Event()
    idle.wait(0.5)  # 25 rounds' worth of time: the poller, with nobody waiting, reads nothing
    assert len(store.reads) == reads
    watch.close()


@pytest.mark.redis
def test_a_request_gone_while_waited_for_answers_none(redis_server: Any) -> None:
    from mailservice.stores import store_from_url
    from mailservice.stores.redis_store import KEY_PREFIX

    store = store_from_url(redis_server.url, ttl=60)
    watch = StatusWatch(store, poll_seconds=0.02)
    record = queued(store)
    waiting = start_wait(watch, record.request_id, 30)
    wait_for(lambda: watch.waiting == 1)
    store.client.delete(KEY_PREFIX + record.request_id)  # type: ignore[attr-defined]
    assert waiting.result() is None  # the route answers 404, as for an expired status
    watch.close()
    store.close()


class SlowStore(CountingStore):
    """get_many() takes a while: a polling round is in progress when the watch closes."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.Event()
        self.in_flight = 0

    def get_many(self, request_ids: Sequence[str]) -> dict[str, StatusRecord]:
        self.in_flight += 1
        self.reading.set()
        threading.Event().wait(0.3)
        try:
            return super().get_many(request_ids)
        finally:
            self.in_flight -= 1


def test_close_returns_after_the_round_in_progress_so_the_store_can_close_next() -> None:
    # The process closes the store right after the watch: a round still reading would fail
    # on a closed client and log a traceback into whatever runs next.
    store = SlowStore()
    watch = StatusWatch(store, poll_seconds=0.01)
    record = queued(store)
    waiting = start_wait(watch, record.request_id, 30)
    assert store.reading.wait(10)
    watch.close()
    assert store.in_flight == 0
    assert waiting.result() == record
