"""DispatchQueue on its own (no threads, no SMTP): turns, caps, pauses and probes."""

from __future__ import annotations

import logging
import threading

from mailservice.delivery.dispatch_queue import DispatchQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def taken(queue: DispatchQueue, n: int) -> list[str]:
    return [queue.get()[1] for _ in range(n)]


def test_lanes_are_served_in_turn():
    queue: DispatchQueue[str, str] = DispatchQueue(lane_cap=10)
    for i in range(3):
        queue.put("a", f"a{i}")
    queue.put("b", "b0")
    assert taken(queue, 4) == ["a0", "b0", "a1", "a2"]
    assert len(queue) == 0


def test_a_lane_never_holds_more_than_its_cap():
    queue: DispatchQueue[str, str] = DispatchQueue(lane_cap=2)
    for i in range(4):
        queue.put("slow", f"s{i}")
    queue.put("other", "o0")
    assert sorted(taken(queue, 3)) == ["o0", "s0", "s1"]
    got: list[tuple[str, str] | None] = []
    waiter = threading.Thread(target=lambda: got.append(queue.get()))
    waiter.start()
    waiter.join(0.2)
    assert got == []  # the lane is at its cap: the next job waits for a thread to come back
    queue.done("slow", True)
    waiter.join(2)
    assert got == [("slow", "s2")]


def test_failures_in_a_row_pause_the_lane_then_one_probe_goes_alone(caplog):
    clock = Clock()
    queue: DispatchQueue[str, str] = DispatchQueue(
        lane_cap=4, pause_seconds=10, breaker_failures=3, clock=clock
    )
    for i in range(6):
        queue.put("dead", f"d{i}")
    with caplog.at_level(logging.WARNING, logger="mailservice.delivery.dispatch_queue"):
        for _ in range(3):
            queue.get()
            queue.done("dead", False)
    assert "failed to connect or greet 3 times in a row" in caplog.text
    assert queue.paused("dead")
    queue.put("alive", "a0")
    assert queue.get() == ("alive", "a0")  # other lanes are not held up
    queue.done("alive", True)
    clock.now = 10.0
    assert queue.get() == ("dead", "d3")  # the probe
    blocked: list[object] = []
    waiter = threading.Thread(target=lambda: blocked.append(queue.get()))
    waiter.start()
    waiter.join(0.2)
    assert blocked == []  # nothing else of the lane goes while the probe is out
    queue.done("dead", False)  # the probe failed: paused twice as long
    clock.now = 29.0
    waiter.join(0.2)
    assert blocked == []
    clock.now = 30.0
    queue.put("alive", "a1")  # wakes the waiter, which now finds the lane's probe due
    waiter.join(2)
    assert blocked in ([("dead", "d4")], [("alive", "a1")])


def test_a_probe_that_gets_an_answer_resumes_the_whole_lane():
    clock = Clock()
    queue: DispatchQueue[str, str] = DispatchQueue(
        lane_cap=4, pause_seconds=5, breaker_failures=1, clock=clock
    )
    for i in range(4):
        queue.put("s", f"s{i}")
    queue.get()
    queue.done("s", False)
    clock.now = 5.0
    assert queue.get() == ("s", "s1")
    queue.done("s", True)
    assert not queue.paused("s")
    assert taken(queue, 2) == ["s2", "s3"]  # together, no probe needed


def test_an_answer_resets_the_count_of_failures():
    queue: DispatchQueue[str, str] = DispatchQueue(lane_cap=4, breaker_failures=3)
    for i in range(5):
        queue.put("s", f"s{i}")
    for answered in (False, False, True, False, False):
        queue.get()
        queue.done("s", answered)
    assert not queue.paused("s")


def test_stop_wakes_waiting_threads_with_none():
    queue: DispatchQueue[str, str] = DispatchQueue(lane_cap=1)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(queue.get()))
    waiter.start()
    queue.stop()
    waiter.join(2)
    assert got == [None]
