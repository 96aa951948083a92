"""delivery/relays.py without Flask or threads of its own: which of a sender's two servers a
transaction goes to, against real aiosmtpd servers, a 421 greeter, a silent server and ports
with nothing listening; the failback time on an injected clock."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from mailservice.delivery.attempt import AttemptState, DeliveryAttempt
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.relays import Relays
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.delivery.transitions import Final, Retry
from mailservice.errors import ConnectFailed, PermanentDelivery, TransientDelivery
from mailservice.events.bus import EventBus
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, StatusRecord, utcnow
from mailservice.stores.memory_store import MemoryStatusStore
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import GreetingServer, SilentServer
from tests.conftest import SENDER, ManualClock, wait_for

FAILBACK = 60.0
LOGGER = "mailservice.delivery.relays"


def two_servers(first: int, second: int, password: str = "") -> Sender:
    return Sender(
        SENDER, password, "127.0.0.1", first, "none", smtp_host2="127.0.0.1", smtp_port2=second
    )


@pytest.fixture
def smtp() -> Iterator[SmtpClient]:
    client = SmtpClient(5.0)
    yield client
    client.close_all()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def relays(clock: ManualClock) -> Relays:
    return Relays(FAILBACK, clock=clock)


def send(relays: Relays, smtp: SmtpClient, sender: Sender, n: int = 0) -> None:
    data = f"Message-ID: <m{n}@example.com>\r\nSubject: Hi\r\n\r\nHello\r\n".encode()
    relays.send(smtp, sender, SENDER, ["user@example.com"], data, False)


def ids(server) -> list[str]:
    return [str(m.message["Message-ID"]) for m in server.received]


# -- the first server cannot be reached ----------------------------------------------------


def test_a_closed_first_port_sends_through_the_second_in_the_same_call(
    relays, smtp, smtp_server, caplog
):
    first = free_port()  # nothing listens there
    sender = two_servers(first, smtp_server.port)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        send(relays, smtp, sender)
    assert ids(smtp_server) == ["<m0@example.com>"]
    assert relays.failed_over(sender)
    [line] = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert f"SMTP server 127.0.0.1:{first} cannot be reached" in line
    assert f"moves to the second server 127.0.0.1:{smtp_server.port} for 60s" in line


def test_later_messages_go_straight_to_the_second_until_the_failback_time(
    relays, smtp, smtp_server, clock, caplog
):
    greeter = GreetingServer().start()  # 421 at connect
    try:
        sender = two_servers(greeter.port, smtp_server.port)
        with caplog.at_level(logging.INFO, logger=LOGGER):
            for n in range(5):
                send(relays, smtp, sender, n)
            clock.advance(FAILBACK - 1)
            send(relays, smtp, sender, 5)
        assert greeter.connections == 1  # only the first message tried it
        assert len(smtp_server.received) == 6
        assert len([r for r in caplog.records if r.name == LOGGER]) == 1  # the move, once
    finally:
        greeter.stop()


def test_after_the_failback_time_the_first_is_tried_again_and_kept(
    relays, smtp, start_smtp, clock, caplog
):
    second = start_smtp()
    port = free_port()
    sender = two_servers(port, second.port)
    send(relays, smtp, sender, 0)
    first = start_smtp(port=port)  # the first server is back
    send(relays, smtp, sender, 1)  # still within the failback time
    assert ids(first) == [] and len(second.received) == 2
    clock.advance(FAILBACK)
    caplog.clear()  # the move to the second is behind us
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for n in range(2, 5):
            send(relays, smtp, sender, n)
    assert ids(first) == ["<m2@example.com>", "<m3@example.com>", "<m4@example.com>"]
    assert len(second.received) == 2
    assert not relays.failed_over(sender)
    [line] = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert line == (
        f"SMTP server 127.0.0.1:{port} answers again: delivery moves back to it from "
        f"127.0.0.1:{second.port}"
    )


def test_a_failed_probe_falls_to_the_second_and_waits_the_failback_time_again(
    relays, smtp, smtp_server, clock
):
    greeter = GreetingServer().start()
    try:
        sender = two_servers(greeter.port, smtp_server.port)
        send(relays, smtp, sender, 0)
        clock.advance(FAILBACK)
        send(relays, smtp, sender, 1)  # the probe: 421 again, then the second
        assert greeter.connections == 2
        send(relays, smtp, sender, 2)
        clock.advance(FAILBACK - 1)
        send(relays, smtp, sender, 3)
        assert greeter.connections == 2  # a new failback time started at the probe
        clock.advance(1)
        send(relays, smtp, sender, 4)
        assert greeter.connections == 3
        assert len(smtp_server.received) == 5
        assert relays.failed_over(sender)
    finally:
        greeter.stop()


def test_one_message_probes_the_first_while_the_others_go_to_the_second(clock, smtp_server):
    silent = SilentServer().start()  # accepts and never greets: a probe waits its time-out
    smtp = SmtpClient(1.0)
    relays = Relays(FAILBACK, clock=clock)
    try:
        sender = two_servers(silent.port, smtp_server.port)
        send(relays, smtp, sender, 0)  # 1 s to time out, then the second
        assert silent.connections == 1
        clock.advance(FAILBACK)
        probe = threading.Thread(target=send, args=(relays, smtp, sender, 1))
        probe.start()
        wait_for(lambda: silent.connections == 2)  # the probe waits for a greeting
        for n in range(2, 5):
            send(relays, smtp, sender, n)  # meanwhile: straight to the second
        assert silent.connections == 2
        assert len(smtp_server.received) == 4
        probe.join(10)
        assert len(smtp_server.received) == 5  # the probe timed out and fell to the second
        assert silent.connections == 2
    finally:
        smtp.close_all()
        silent.stop()


def test_a_current_second_that_cannot_be_reached_tries_the_first(relays, smtp, start_smtp, caplog):
    second = start_smtp()
    port = free_port()
    sender = two_servers(port, second.port)
    send(relays, smtp, sender, 0)
    assert relays.failed_over(sender)
    second.stop()
    first = start_smtp(port=port)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        send(relays, smtp, sender, 1)
    assert ids(first) == ["<m1@example.com>"]
    assert not relays.failed_over(sender)
    assert "moves back to it" in caplog.text


def test_both_unreachable_is_one_connect_failed_naming_both(relays, smtp):
    first, second = free_port(), free_port()
    with pytest.raises(ConnectFailed) as failed:
        send(relays, smtp, two_servers(first, second))
    assert f"(first server 127.0.0.1:{first})" in failed.value.reason
    assert f"(second server 127.0.0.1:{second})" in failed.value.reason


def test_a_sender_without_a_second_server_gets_its_connect_failure(relays, smtp):
    sender = Sender(SENDER, "", "127.0.0.1", free_port(), "none")
    with pytest.raises(ConnectFailed) as failed:
        send(relays, smtp, sender)
    assert "second server" not in failed.value.reason
    assert not relays.failed_over(sender)


# -- a failure once connected is that server's answer ---------------------------------------


@pytest.mark.parametrize(
    ("hook", "reply", "error"),
    [
        ("MAIL", "451 4.3.0 try later", TransientDelivery),
        ("DATA", "554 5.7.1 rejected", PermanentDelivery),
    ],
)
def test_a_reply_after_connecting_does_not_fail_over(relays, smtp, start_smtp, hook, reply, error):
    first, second = start_smtp(), start_smtp()
    first.handler.script(hook, reply)
    sender = two_servers(first.port, second.port)
    with pytest.raises(error) as failed:
        send(relays, smtp, sender)
    assert not isinstance(failed.value, ConnectFailed)
    assert reply in failed.value.reason
    assert second.handler.connections == 0
    assert not relays.failed_over(sender)


def test_passwords_never_reach_the_log(relays, smtp, caplog):
    sender = two_servers(free_port(), free_port(), password="s3cret-app-password")
    with caplog.at_level(logging.DEBUG, logger=LOGGER), pytest.raises(ConnectFailed):
        send(relays, smtp, sender)
    assert "cannot be reached" in caplog.text
    assert "s3cret" not in caplog.text


# -- in a DeliveryAttempt ----------------------------------------------------------------------

SPEC = MessageSpec(recipient=("user@example.com",), subject="Hi", body="Hello")


def attempt_with(relays: Relays, smtp: SmtpClient) -> tuple[DeliveryAttempt, AttemptState]:
    store = MemoryStatusStore(60)
    now = utcnow()
    recipients = ("user@example.com",)
    record = StatusRecord(
        "r1", EmailStatus.QUEUED, SENDER, recipients, recipients, now, now, owner="me"
    )
    store.create(record, SPEC.to_json())
    attempt = DeliveryAttempt(store, smtp, EventBus(), max_attempts=3, relays=relays)
    return attempt, AttemptState(record, SPEC.to_json())


def test_an_attempt_that_fails_over_is_sent_on_its_first_attempt_and_answered(
    relays, smtp, smtp_server
):
    attempt, state = attempt_with(relays, smtp)
    greeter = GreetingServer().start()
    try:
        outcome = attempt.run(state, two_servers(greeter.port, smtp_server.port))
    finally:
        greeter.stop()
    assert isinstance(outcome.next, Final)
    assert outcome.next.record.status is EmailStatus.SENT
    assert outcome.next.record.attempts == 1
    assert outcome.answered is True  # the lane of the first server is not paused for it
    assert len(smtp_server.received) == 1


def test_an_attempt_with_both_servers_down_is_a_normal_retry_not_answered(relays, smtp):
    attempt, state = attempt_with(relays, smtp)
    outcome = attempt.run(state, two_servers(free_port(), free_port()))
    assert isinstance(outcome.next, Retry)
    assert outcome.next.record.attempts == 1
    assert "second server" in outcome.next.record.error
    assert outcome.answered is False
