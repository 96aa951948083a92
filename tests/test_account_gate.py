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
from tests.conftest import wait_for

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
    assert gate.judge(me, limit, False) == 0.3
    wait, why = gate.ask(me, "r1")
    assert wait > 0 and why is not None and why.startswith("sender paused: 421 4.7.0")
    # A message already on its way meets the same limit: the same pause, not a longer one.
    assert gate.judge(me, limit, False) <= 0.3
    assert wait_for(lambda: gate.ask(me, "probe") == (0.0, None), timeout=5)
    # The probe's failure (a limit again, naming no time) doubles the pause.
    assert gate.judge(me, limit, False) == 0.6
    assert list(gate.pauses([me.account])) == [me.account]
    gate.succeeded(me)
    assert gate.pauses([me.account]) == {}


def test_a_run_of_transient_failures_pauses_the_account_but_not_other_replies():
    gate = AccountGate(MemoryGateBackend(), pause_seconds=10.0, failures=3)
    me, other = sender(), sender(email="b@x.test")
    for _ in range(5):  # connection failures pause the server (dispatch_queue), not this
        assert gate.judge(me, "cannot connect", connect_failed=True) is None
    assert gate.judge(me, "550 5.7.1 denied (at RCPT TO)", False) is None
    assert gate.pauses([me.account]) == {}
    for _ in range(3):
        assert gate.judge(me, "451 4.3.0 try later (at end of DATA)", False) is None
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
    gate.judge(me, "421 4.7.0 rate limit exceeded (at MAIL FROM)", False)
    assert wait_for(lambda: gate.ask(me, "probe") == (0.0, None), timeout=5)
    assert gate.judge(me, "451 4.3.0 try later (at end of DATA)", False) is None
    pause = gate.pauses([me.account])[me.account]
    assert pause.seconds == 0.4  # not left waiting for the lost probe's time-out
