"""The sender accounts' gate on its own (delivery/account_gate.py, gate_backends.py): which
replies say an account is over its limit, and the backends' contract on memory and on a real
redis-server (pace slots, daily limits, pauses and their one probe)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mailservice.delivery.account_gate import AccountGate, account_limit
from mailservice.delivery.gate_backends import GateBackend, MemoryGateBackend, RedisGateBackend
from mailservice.senders import Rate, Sender
from tests.conftest import ManualClock, wait_for

PROBE_TIMEOUT, PROBE_POLL = 60.0, 5.0


@pytest.mark.parametrize(
    ("reply", "seconds"),
    [
        ("550 5.4.5 Daily user sending limit exceeded. (at MAIL FROM)", None),
        ("421 4.7.0 Try again later, closing connection. (rate limit) (at MAIL FROM)", None),
        ("454 Throttling failure: Maximum sending rate exceeded. (at end of DATA)", None),
        ("421 4.7.0 too many messages, try again in 90 seconds (at RCPT TO)", 90.0),
        ("451 4.4.5 quota exceeded, retry after 2 minutes (at MAIL FROM)", 120.0),
    ],
)
def test_replies_that_say_the_account_is_over_its_limit(reply: str, seconds: float | None):
    limit = account_limit(reply)
    assert limit is not None
    assert limit.seconds == seconds


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.1.1 No such user (at RCPT TO)",
        "451 4.3.0 try later (at end of DATA)",
        "421 4.3.2 Service shutting down (at MAIL FROM)",  # the server, not the account
        "450 4.7.0 greylisted (at RCPT TO)",  # 4.7.0 without a rate text
        "550 5.7.1 relaying denied (at RCPT TO)",
    ],
)
def test_replies_that_do_not(reply: str):
    assert account_limit(reply) is None


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[GateBackend]:
    if request.param == "memory":
        yield MemoryGateBackend()
        return
    server = request.getfixturevalue("redis_server")
    import redis

    client = redis.Redis.from_url(server.url)
    yield RedisGateBackend(client)
    client.close()


def reserve(backend: GateBackend, request_id: str, interval=0.0, daily=0) -> Any:
    return backend.reserve("a@x.test", request_id, interval, daily, PROBE_TIMEOUT, PROBE_POLL)


def test_a_rate_gives_each_request_the_next_slot_and_keeps_it(backend: GateBackend):
    first, second, third = (reserve(backend, f"r{n}", interval=0.5) for n in range(3))
    assert first == (0.0, None)
    assert 0.0 < second[0] <= 0.5 and second[1] is None  # over the pace: no reason to show
    assert 0.5 < third[0] <= 1.0
    again = reserve(backend, "r2", interval=0.5)
    assert 0.0 < again[0] <= third[0]  # the same slot, not one more behind the others
    assert wait_for(lambda: reserve(backend, "r1", interval=0.5) == (0.0, None), timeout=5)
    # Another account has a pace of its own.
    assert backend.reserve("b@x.test", "r9", 0.5, 0, PROBE_TIMEOUT, PROBE_POLL) == (0.0, None)


def test_a_daily_limit_counts_what_went_today(backend: GateBackend):
    assert reserve(backend, "r1", daily=2) == (0.0, None)
    assert reserve(backend, "r2", daily=2) == (0.0, None)
    wait, why = reserve(backend, "r3", daily=2)
    assert why == "daily limit of 2 reached"
    assert 0 < wait <= 86400


def test_a_pause_lets_one_probe_go_when_it_ends_and_a_resume_ends_it(backend: GateBackend):
    backend.pause("a@x.test", 0.3, "sender paused: 550 5.4.5")
    wait, why = reserve(backend, "r1")
    assert 0 < wait <= 0.3 and why == "sender paused: 550 5.4.5"
    assert wait_for(lambda: reserve(backend, "r1") == (0.0, None), timeout=5)  # the probe
    assert reserve(backend, "r2") == (PROBE_POLL, "sender paused: 550 5.4.5 (its probe is out)")
    paused = backend.paused("a@x.test")
    assert paused is not None and paused.seconds == 0.3
    ended = backend.resume("a@x.test")
    assert ended is not None and ended.reason == "sender paused: 550 5.4.5"
    assert backend.paused("a@x.test") is None
    assert reserve(backend, "r2") == (0.0, None)


def sender(**fields: Any) -> Sender:
    base = {"email": "A@x.test", "password": "", "smtp_host": "h", "smtp_port": 25}
    return Sender(**{**base, "smtp_security": "none", **fields})


def test_the_gate_pauses_on_a_limit_and_doubles_after_a_failed_probe():
    gate = AccountGate(MemoryGateBackend(), pause_seconds=0.3, failures=3)
    me = sender()
    limit = "421 4.7.0 rate limit exceeded (at MAIL FROM)"
    assert gate.ask(me, "r1") == (0.0, None)
    assert gate.judge(me, limit, "transient") == 0.3
    wait, why = gate.ask(me, "r1")
    assert wait > 0 and why is not None and why.startswith("sender paused: 421 4.7.0")
    # A message already on its way meets the same limit: the same pause, not a longer one.
    assert gate.judge(me, limit, "transient") <= 0.3
    assert wait_for(lambda: gate.ask(me, "probe") == (0.0, None), timeout=5)
    # The probe's failure (a limit again, naming no time) doubles the pause.
    assert gate.judge(me, limit, "transient") == 0.6
    assert list(gate.pauses([me.account])) == [me.account]
    gate.succeeded(me)  # sent before this pause: it stays
    assert list(gate.pauses([me.account])) == [me.account]
    assert wait_for(lambda: gate.ask(me, "probe 2") == (0.0, None), timeout=5)
    gate.succeeded(me)  # the second probe is accepted: the pause is over
    assert gate.pauses([me.account]) == {}


def test_a_run_of_transient_failures_pauses_the_account_but_not_other_replies():
    gate = AccountGate(MemoryGateBackend(), pause_seconds=10.0, failures=3)
    me, other = sender(), sender(email="b@x.test")
    for _ in range(5):  # connection failures pause the server (dispatch_queue), not this
        assert gate.judge(me, "cannot connect", "connect") is None
    assert gate.judge(me, "550 5.7.1 denied (at RCPT TO)", "transient") is None
    assert gate.pauses([me.account]) == {}
    for _ in range(3):
        assert gate.judge(me, "451 4.3.0 try later (at end of DATA)", "transient") is None
    assert list(gate.pauses([me.account, other.account])) == [me.account]
    assert gate.ask(other, "r1") == (0.0, None)  # another account is not slowed


def test_an_unlimited_account_is_not_asked_about_for_every_message():
    class Counting(MemoryGateBackend):
        calls = 0

        def paused(self, account: str) -> Any:
            Counting.calls += 1
            return super().paused(account)

        def reserve(self, *args: Any) -> Any:
            Counting.calls += 1
            return super().reserve(*args)

    gate = AccountGate(Counting(), clock=lambda: 100.0)  # no time passes: one read
    me = sender()
    for n in range(50):
        assert gate.ask(me, f"r{n}") == (0.0, None)
        gate.succeeded(me)
    assert Counting.calls == 1
    limited = sender(rate=Rate(1000, 1.0))
    gate.ask(limited, "r1")
    assert Counting.calls == 2  # an account with a rate is asked each time


def test_a_probe_that_fails_for_another_reason_pauses_again_for_longer():
    gate = AccountGate(MemoryGateBackend(), pause_seconds=0.2, failures=3)
    me = sender()
    gate.judge(me, "421 4.7.0 rate limit exceeded (at MAIL FROM)", "transient")
    assert wait_for(lambda: gate.ask(me, "probe") == (0.0, None), timeout=5)
    assert gate.judge(me, "451 4.3.0 try later (at end of DATA)", "transient") is None
    pause = gate.pauses([me.account])[me.account]
    assert pause.seconds == 0.4  # not left waiting for the lost probe's time-out


# -- found by review: the breaker's probe, the pace after a pause, what is not a limit ----------


def test_a_success_sent_before_the_pause_does_not_end_it():
    gate = AccountGate(MemoryGateBackend(), pause_seconds=300.0)
    me = sender()
    assert gate.judge(me, "421 4.7.0 rate limit exceeded (at MAIL FROM)", "transient") == 300.0
    gate.succeeded(me)  # a message of the same account on its way before the pause
    wait, _ = gate.ask(me, "next")
    assert wait > 0


def test_after_a_pause_the_backlog_keeps_the_pace(backend: GateBackend):
    go = lambda rid: reserve(backend, rid, interval=0.2)  # noqa: E731
    assert go("r0") == (0.0, None)
    for n in range(1, 6):
        assert go(f"r{n}")[0] > 0
    backend.pause("a@x.test", 0.5, "sender paused: 421 rate")
    assert wait_for(lambda: go("r1") == (0.0, None), timeout=5)  # the probe
    assert backend.resume("a@x.test") is not None
    sent_now = [rid for rid in ("r2", "r3", "r4", "r5") if go(rid) == (0.0, None)]
    assert len(sent_now) <= 1, sent_now  # the pace again, not the whole backlog at once


def test_the_probe_is_not_held_back_by_its_own_probe_flag():
    clock = ManualClock()
    backend = MemoryGateBackend(clock=clock)
    go = lambda rid: backend.reserve("a", rid, 10.0, 0, PROBE_TIMEOUT, PROBE_POLL)  # noqa: E731
    for n in range(5):
        go(f"old{n}")
    backend.pause("a", 20.0, "sender paused: 421 rate")
    clock.now += 20
    wait, why = go("new")  # the probe, given a pace slot
    assert why is None and wait > 0
    clock.now += wait
    assert go("new") == (0.0, None)  # it goes: it is the probe


def test_a_probe_not_sent_after_all_lets_the_next_request_be_the_probe():
    clock = ManualClock()
    backend = MemoryGateBackend(clock=clock)
    backend.pause("a", 1.0, "sender paused: 421 rate")
    clock.now += 1
    assert backend.reserve("a", "p1", 0, 0, PROBE_TIMEOUT, PROBE_POLL) == (0.0, None)
    assert backend.reserve("a", "p2", 0, 0, PROBE_TIMEOUT, PROBE_POLL)[0] == PROBE_POLL
    backend.release("a", "p1")
    assert backend.reserve("a", "p2", 0, 0, PROBE_TIMEOUT, PROBE_POLL) == (0.0, None)


def test_a_content_refusal_of_the_probe_does_not_pause_again():
    gate = AccountGate(MemoryGateBackend(), pause_seconds=0.05)
    me = sender()
    gate.judge(me, "421 4.7.0 rate limit exceeded (at MAIL FROM)", "transient")
    assert wait_for(lambda: gate.ask(me, "probe") == (0.0, None), timeout=5)
    gate.judge(me, "554 5.7.1 message content rejected (at end of DATA)", "permanent")
    # The server answered the account: the pause is over (not doubled, not left waiting for
    # the probe's time-out), although this one message is refused.
    assert gate.pauses([me.account]) == {}
    assert gate.ask(me, "next") == (0.0, None)


@pytest.mark.parametrize(
    "reason",
    [
        "server does not support SMTPUTF8 for international addresses",
        "login refused: 535 5.7.8 bad credentials",
    ],
)
def test_permanent_failures_do_not_count_towards_the_breaker(reason: str):
    gate = AccountGate(MemoryGateBackend(), pause_seconds=300.0, failures=5)
    me = sender()
    for _ in range(5):
        gate.judge(me, reason, "permanent")
    assert gate.pauses([me.account]) == {}


@pytest.mark.parametrize(
    "reply",
    [
        "421 4.3.0 Temporary System Problem. Try again later (at MAIL FROM)",
        "451 Temporary failure, client 5.4.5.9 unknown (at MAIL FROM)",
    ],
)
def test_neither_a_plain_try_again_later_nor_an_address_is_a_limit(reply: str):
    assert account_limit(reply) is None


def test_the_pauses_of_many_accounts_are_read_at_once(backend: GateBackend):
    backend.pause("a@x.test", 30.0, "sender paused: 421 rate")
    backend.pause("c@x.test", 60.0, "sender paused: 550 5.4.5")
    found = backend.paused_many(["a@x.test", "b@x.test", "c@x.test"])
    assert sorted(found) == ["a@x.test", "c@x.test"]
    assert found["c@x.test"].reason == "sender paused: 550 5.4.5" and not found["c@x.test"].ended
    assert backend.paused_many([]) == {}
