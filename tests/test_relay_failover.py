"""Relay failover through the whole service on the thread-pool dispatcher: a senders file with
`smtp_host2`, `create_app()`, bursts of real sends, real aiosmtpd sinks that go away and come
back. Every message is counted by its Message-ID (`<request_id@example.com>`)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from mail_server import EXTENSION
from mailservice.config import settings_from_mapping
from mailservice.errors import ConfigError
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import GreetingServer, SmtpServer
from tests.conftest import API_KEY, SENDER, wait_for

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BURST = 200


@pytest.fixture
def failover_app(tmp_path: Path, make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    """Apps whose one sender has a first and a second SMTP server (conftest's make_app:
    drained after the test, before the servers stop)."""

    def factory(first: int, second: int, **overrides: Any) -> Flask:
        senders = tmp_path / "failover.csv"
        senders.write_text(
            "key,email,app_password,smtp_host,smtp_port,smtp_security,smtp_host2,smtp_port2\n"
            f"{API_KEY},{SENDER},,127.0.0.1,{first},none,127.0.0.1,{second}\n",
            encoding="utf-8",
        )
        return make_app(first, senders_file=str(senders), **{"workers": 4, **overrides})

    return factory


def send_many(app: Flask, count: int) -> list[str]:
    client = app.test_client()
    ids = []
    for n in range(count):
        body = {"recipient": "user@example.com", "subject": f"Hi {n}", "body": "Hello"}
        answer = client.post("/send-email", json=body, headers=AUTH)
        assert answer.status_code == 202, answer.get_json()
        ids.append(answer.get_json()["request_id"])
    return ids


def finals(app: Flask, ids: list[str], timeout: float = 60.0) -> list[Any]:
    """Every request's final record, once all of them are final."""
    store = app.extensions[EXTENSION].store

    def all_final() -> list[Any] | None:
        records = [store.get(i) for i in ids]
        return records if all(r is not None and r.status.final for r in records) else None

    return wait_for(all_final, timeout, interval=0.05)


def arrivals(*sinks: SmtpServer) -> Counter[str]:
    """How many times each Message-ID reached any of the sinks."""
    return Counter(str(m.message["Message-ID"]) for s in sinks for m in list(s.received))


def message_ids(ids: list[str]) -> Counter[str]:
    return Counter(f"<{i}@example.com>" for i in ids)


def failovers(app: Flask) -> float:
    for line in app.extensions[EXTENSION].stack.metrics.render().decode().splitlines():
        if line.startswith("mail_relay_failovers_total "):
            return float(line.split()[1])
    raise AssertionError("mail_relay_failovers_total is not exposed")


@pytest.mark.parametrize("first_server", ["nothing listening", "421 greeter"])
def test_a_burst_with_the_first_server_down_is_delivered_once_by_the_second(
    failover_app, smtp_server, first_server
):
    greeter = GreetingServer().start() if first_server == "421 greeter" else None
    try:
        first = greeter.port if greeter else free_port()
        app = failover_app(first, smtp_server.port)
        ids = send_many(app, BURST)
        records = finals(app, ids)
    finally:
        if greeter:
            greeter.stop()
    assert {r.status.value for r in records} == {"sent"}
    assert {r.attempts for r in records} == {1}  # no attempt spent on the first server
    assert arrivals(smtp_server) == message_ids(ids)  # each exactly once
    assert failovers(app) == 1
    if greeter:
        # Only the messages already on their way when the first failure came tried it.
        assert greeter.connections <= app.extensions[EXTENSION].settings.workers


def test_the_first_server_stopped_mid_burst_loses_nothing(failover_app, start_smtp, caplog):
    first, second = start_smtp(), start_smtp()
    app = failover_app(first.port, second.port)

    def stop_first_midway() -> None:
        wait_for(lambda: len(first.received) >= BURST // 4, timeout=30)
        first.stop()

    stopper = threading.Thread(target=stop_first_midway)
    stopper.start()
    with caplog.at_level(logging.WARNING, logger="mailservice.delivery.relays"):
        ids = send_many(app, BURST)
        stopper.join(30)
        records = finals(app, ids)
    assert {r.status.value for r in records} == {"sent"}
    seen = arrivals(first, second)
    assert set(seen) == set(message_ids(ids))  # nothing lost
    # Each exactly once, across both; except that a session cut after the final "." (the
    # server kept the message, its 250 never left) is "possibly delivered", retried with the
    # same Message-ID (API.md section 4): those, and only those, may have come twice.
    possibly = {
        f"<{r.request_id}@example.com>"
        for r in records
        if any((h.error or "").startswith("possibly delivered") for h in r.history)
    }
    assert {m for m, n in seen.items() if n > 1} <= possibly
    assert max(seen.values()) <= 2
    assert len(possibly) <= app.extensions[EXTENSION].settings.workers  # those on their way
    assert len(first.received) >= BURST // 4 and len(second.received) > 0
    assert caplog.text.count("delivery moves to the second server") == 1
    assert failovers(app) == 1


def test_after_the_failback_time_new_messages_go_to_the_first_again(
    failover_app, start_smtp, caplog
):
    second = start_smtp()
    port = free_port()  # the first server: away for now
    app = failover_app(port, second.port, relay_failback_seconds=0.5)
    early = send_many(app, 5)
    finals(app, early)
    assert arrivals(second) == message_ids(early)
    first = start_smtp(port=port)  # back

    def one_reaches_the_first() -> bool:
        [request_id] = send_many(app, 1)
        finals(app, [request_id])
        return f"<{request_id}@example.com>" in arrivals(first)

    with caplog.at_level(logging.WARNING, logger="mailservice.delivery.relays"):
        wait_for(one_reaches_the_first, timeout=15, interval=0.1)
        later = send_many(app, 20)
        finals(app, later)
    assert message_ids(later) <= arrivals(first)
    assert not set(message_ids(later)) & set(arrivals(second))
    assert caplog.text.count("answers again: delivery moves back to it") == 1


def test_relay_failback_seconds_is_read_and_checked():
    assert settings_from_mapping({"RELAY_FAILBACK_SECONDS": "12.5"}).relay_failback_seconds == 12.5
    assert settings_from_mapping({}).relay_failback_seconds == 300.0
    for bad in ("0", "-1", "inf", "soon"):
        with pytest.raises(ConfigError, match="RELAY_FAILBACK_SECONDS"):
            settings_from_mapping({"RELAY_FAILBACK_SECONDS": bad})
