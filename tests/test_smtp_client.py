"""SmtpClient on its own, against real aiosmtpd servers: no Flask, no pool, no store.

What one transaction reports (accepted, refused and deferred recipients), how each failure is
classified, the transparent reconnect of a reused connection, the end-of-DATA time-out, and
one connection per thread. tests/test_mailer.py checks the same bytes through the HTTP API.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailservice.delivery.smtp_client import (
    DeliveryOutcome,
    SmtpClient,
    SmtpTarget,
    _address_literal,
)
from mailservice.errors import (
    ConnectFailed,
    PermanentDelivery,
    PossiblyDelivered,
    TransientDelivery,
)
from mailservice.senders import Sender
from mailservice.testing.smtp_servers import DROP, GreetingServer, SilentServer, SmtpServer
from tests.conftest import wait_for

SENDER = "sender@example.com"
PASSWORD = "app-pw-Zq81!x"
DATA = b"Subject: hi\r\n\r\nHello\r\n"


def target(server: SmtpServer | GreetingServer | SilentServer, **kw: str) -> SmtpTarget:
    """Plain SMTP to a test server, no login unless a password is given."""
    values = {"security": "none", "username": SENDER, "password": "", **kw}
    return SmtpTarget("127.0.0.1", server.port, **values)


@pytest.fixture
def make_client() -> Iterator[Callable[..., SmtpClient]]:
    """SmtpClients closed after the test (generous time-outs unless a test asks otherwise)."""
    clients: list[SmtpClient] = []

    def make(timeout: float = 5.0, data_timeout: float = 5.0, **kw: str) -> SmtpClient:
        client = SmtpClient(timeout=timeout, data_timeout=data_timeout, **kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close_all()


@pytest.fixture
def smtp(make_client: Callable[..., SmtpClient]) -> SmtpClient:
    return make_client()


def send(
    client: SmtpClient,
    server: SmtpServer | GreetingServer | SilentServer,
    recipients: list[str] | None = None,
    data: bytes = DATA,
    smtputf8: bool = False,
) -> DeliveryOutcome:
    return client.send(target(server), SENDER, recipients or ["user@example.com"], data, smtputf8)


# -- one transaction ---------------------------------------------------------------------------


def test_a_send_reports_every_recipient_accepted(smtp, smtp_server):
    outcome = send(smtp, smtp_server, ["a@example.com", "b@example.com"])
    assert outcome == DeliveryOutcome(("a@example.com", "b@example.com"), {}, {})
    [received] = smtp_server.received
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["a@example.com", "b@example.com"]
    assert received.content == DATA


def test_refused_and_deferred_recipients_are_reported_and_the_rest_sent_once(smtp, smtp_server):
    smtp_server.handler.refuse["gone@example.com"] = "550 5.1.1 no such user"
    smtp_server.handler.refuse["full@example.com"] = "452 4.2.2 mailbox full"
    outcome = send(smtp, smtp_server, ["gone@example.com", "ok@example.com", "full@example.com"])
    assert outcome.accepted == ("ok@example.com",)
    assert outcome.refused == {"gone@example.com": "550 5.1.1 no such user"}
    assert outcome.deferred == {"full@example.com": "452 4.2.2 mailbox full"}
    [received] = smtp_server.received
    assert received.rcpt_tos == ["ok@example.com"]


def test_every_recipient_refused_sends_no_data_and_raises_nothing(smtp, smtp_server):
    smtp_server.handler.refuse["gone@example.com"] = "550 5.1.1 no such user"
    outcome = send(smtp, smtp_server, ["gone@example.com"])
    assert outcome == DeliveryOutcome((), {"gone@example.com": "550 5.1.1 no such user"}, {})
    assert smtp_server.received == [] and smtp_server.handler.rejected == []
    # The transaction was reset, so the connection serves the next message.
    assert send(smtp, smtp_server).accepted == ("user@example.com",)
    assert smtp.sessions_opened == 1


def test_a_line_starting_with_a_dot_arrives_intact(smtp, smtp_server):
    data = b"Subject: dots\r\n\r\n.hidden\r\n..two\r\n.\r\nend"  # and no final CRLF
    send(smtp, smtp_server, data=data)
    [received] = smtp_server.received
    assert received.content == data + b"\r\n"


def test_smtputf8_is_asked_for_when_the_server_offers_it(smtp, start_smtp):
    server = start_smtp(smtputf8=True)
    send(smtp, server, ["用户@例子.广告"], smtputf8=True)
    [received] = server.received
    assert received.rcpt_tos == ["用户@例子.广告"]
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(received.mail_options)


EIGHT_BIT = "Subject: hi\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n".encode()


def test_ascii_data_declares_no_body_type(smtp, smtp_server):
    send(smtp, smtp_server)
    [received] = smtp_server.received
    assert received.mail_options == []


def test_8bit_data_declares_body_8bitmime_to_a_server_that_offers_it(smtp, smtp_server):
    send(smtp, smtp_server, data=EIGHT_BIT)
    [received] = smtp_server.received
    assert received.mail_options == ["BODY=8BITMIME"]
    assert received.content == EIGHT_BIT


def test_8bit_data_to_a_server_without_8bitmime_is_permanent_before_mail_from(smtp, start_smtp):
    server = start_smtp(eight_bit_mime=False)
    with pytest.raises(PermanentDelivery, match="8BITMIME"):
        send(smtp, server, data=EIGHT_BIT)
    assert server.handler.transactions == 0
    assert send(smtp, server).accepted == ("user@example.com",)  # ASCII still goes


def test_smtputf8_without_server_support_is_permanent_before_mail_from(smtp, smtp_server):
    with pytest.raises(PermanentDelivery, match="SMTPUTF8"):
        send(smtp, smtp_server, ["用户@例子.广告"], smtputf8=True)
    assert smtp_server.handler.transactions == 0


# -- classification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "reply", "error"),
    [
        ("MAIL", "550 5.7.1 sender refused", PermanentDelivery),
        ("MAIL", "451 4.3.0 try later", TransientDelivery),
        ("RCPT", "421 4.3.2 closing", TransientDelivery),
        ("DATA", "554 5.6.0 content refused", PermanentDelivery),
        ("DATA", "451 4.3.0 queue full", TransientDelivery),
    ],
    ids=["mail-5xx", "mail-4xx", "rcpt-421", "data-5xx", "data-4xx"],
)
def test_replies_are_classified_by_their_first_digit(smtp, smtp_server, hook, reply, error):
    smtp_server.handler.script(hook, reply)
    with pytest.raises(error) as caught:
        send(smtp, smtp_server)
    assert type(caught.value) is error  # a 4xx at DATA is not "possibly delivered"
    assert reply in caught.value.reason
    assert smtp_server.received == []
    # Whatever the reply, the client is fit for the next message.
    assert send(smtp, smtp_server).accepted == ("user@example.com",)


def test_a_5xx_at_the_end_of_data_keeps_the_connection(smtp, smtp_server):
    smtp_server.handler.script("DATA", "554 5.6.0 content refused")
    with pytest.raises(PermanentDelivery, match="at end of DATA"):
        send(smtp, smtp_server)
    send(smtp, smtp_server)
    assert smtp.sessions_opened == smtp_server.handler.connections == 1


def test_a_drop_at_rcpt_is_transient(smtp, smtp_server):
    smtp_server.handler.script("RCPT", DROP)
    with pytest.raises(TransientDelivery):
        send(smtp, smtp_server)
    assert smtp_server.received == []


def test_a_server_that_never_greets_is_connect_failed(make_client):
    server = SilentServer().start()
    try:
        with pytest.raises(ConnectFailed):
            send(make_client(timeout=0.3), server)
        assert server.connections == 1
    finally:
        server.stop()


def test_a_421_greeting_is_connect_failed(smtp, greeting_server):
    with pytest.raises(ConnectFailed, match="421"):
        send(smtp, greeting_server)


def test_a_554_greeting_is_permanent(smtp):
    server = GreetingServer(b"554 5.3.2 no service here\r\n").start()
    try:
        with pytest.raises(PermanentDelivery, match="554"):
            send(smtp, server)
    finally:
        server.stop()


def test_nothing_listening_is_connect_failed(smtp, smtp_server):
    smtp_server.stop()
    with pytest.raises(ConnectFailed, match="cannot connect"):
        send(smtp, smtp_server)


def test_a_refused_login_is_permanent(smtp, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    with pytest.raises(PermanentDelivery, match="login refused: 535"):
        smtp.send(target(server, password="wrong"), SENDER, ["u@example.com"], DATA, False)
    assert server.handler.transactions == 0
    smtp.send(target(server, password=PASSWORD), SENDER, ["u@example.com"], DATA, False)
    assert server.logins_seen[-1] == SENDER and len(server.received) == 1


def test_starttls_not_offered_is_permanent_and_no_login_is_tried(smtp, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    with pytest.raises(PermanentDelivery, match="STARTTLS"):
        smtp.send(
            target(server, security="starttls", password=PASSWORD),
            SENDER,
            ["u@example.com"],
            DATA,
            False,
        )
    assert server.logins_seen == []


# -- a reused connection -----------------------------------------------------------------------


def test_421_at_mail_on_a_reused_connection_reconnects_transparently(smtp, smtp_server):
    send(smtp, smtp_server)
    smtp_server.handler.script("MAIL", "421 4.4.2 idle too long, closing")
    outcome = send(smtp, smtp_server)
    assert outcome.accepted == ("user@example.com",)
    assert len(smtp_server.received) == 2
    assert smtp.sessions_opened == smtp_server.handler.connections == 2


def test_a_connection_the_server_closed_while_idle_is_replaced(smtp, smtp_server):
    send(smtp, smtp_server)
    smtp_server.close_sessions()
    assert send(smtp, smtp_server).accepted == ("user@example.com",)
    assert len(smtp_server.received) == 2
    assert smtp.sessions_opened == 2


def test_421_at_mail_on_a_fresh_connection_is_transient_not_a_loop(smtp, smtp_server):
    smtp_server.handler.script("MAIL", "421 4.3.2 closing", "421 4.3.2 closing")
    with pytest.raises(TransientDelivery, match="421"):
        send(smtp, smtp_server)
    assert smtp_server.handler.transactions == 1  # one MAIL FROM, no reconnect
    assert smtp.sessions_opened == 1


# -- the end of DATA ---------------------------------------------------------------------------


def test_a_late_reply_to_the_final_dot_within_data_timeout_is_waited_for(make_client, smtp_server):
    # The command time-out is shorter than the server's delay; the end of DATA has its own.
    client = make_client(timeout=0.3, data_timeout=10.0)
    smtp_server.handler.script("DATA", ("KEEP", 1.0))
    assert send(client, smtp_server).accepted == ("user@example.com",)
    assert len(smtp_server.received) == 1
    # And the command time-out is back for the next message on the same connection.
    send(client, smtp_server)
    assert client.sessions_opened == 1


def test_no_reply_to_the_final_dot_within_data_timeout_is_possibly_delivered(
    make_client, smtp_server
):
    client = make_client(timeout=5.0, data_timeout=0.3)
    smtp_server.handler.script("DATA", ("KEEP", 3.0))
    with pytest.raises(PossiblyDelivered, match=r"within 0\.3s"):
        send(client, smtp_server)
    assert len(smtp_server.received) == 1  # the server has it: a retry would make a copy
    # The connection is in no known state: the next message gets a new one.
    send(client, smtp_server)
    assert client.sessions_opened == 2


def test_a_drop_after_the_final_dot_is_possibly_delivered(smtp, smtp_server):
    smtp_server.handler.script("DATA", DROP)
    with pytest.raises(PossiblyDelivered):
        send(smtp, smtp_server)


# -- connections per thread --------------------------------------------------------------------


def send_in_thread(client: SmtpClient, server: SmtpServer, count: int) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(count):
                send(client, server)
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and errors == []


def test_one_connection_per_thread_is_reused(smtp, smtp_server):
    for _ in range(3):
        send(smtp, smtp_server)
    assert smtp.sessions_opened == 1
    send_in_thread(smtp, smtp_server, 3)
    send_in_thread(smtp, smtp_server, 2)
    assert smtp.sessions_opened == smtp_server.handler.connections == 3
    assert len(smtp_server.received) == 8


def test_one_connection_per_server_login(smtp, start_smtp):
    first, second = start_smtp(), start_smtp()
    for _ in range(2):
        send(smtp, first)
        send(smtp, second)
    assert smtp.sessions_opened == 2
    assert first.handler.connections == second.handler.connections == 1


def test_close_all_closes_every_threads_connection(smtp, smtp_server):
    send(smtp, smtp_server)
    send_in_thread(smtp, smtp_server, 1)
    assert len(smtp_server.handler.open_sessions) == 2
    smtp.close_all()
    wait_for(lambda: not smtp_server.handler.open_sessions)
    assert smtp_server.handler.disconnections == 2


def test_target_for_a_sender_is_its_server_and_login_and_hides_the_password():
    sender = Sender(SENDER, PASSWORD, "smtp.example.com", 587, "starttls", "Name")
    login = SmtpTarget.for_sender(sender)
    assert login == SmtpTarget("smtp.example.com", 587, "starttls", SENDER, PASSWORD)
    assert login.key == ("smtp.example.com", 587, "starttls", SENDER)
    assert PASSWORD not in repr(login)


# -- the EHLO name -----------------------------------------------------------------------------


def test_the_ehlo_name_is_smtp_ehlo_name_when_set(make_client, smtp_server, monkeypatch):
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "vm")
    send(make_client(ehlo_name="relay-client.example.com"), smtp_server)
    assert smtp_server.handler.ehlo_names == ["relay-client.example.com"]


def test_without_a_setting_the_ehlo_name_is_the_machines_fqdn(
    make_client, smtp_server, monkeypatch
):
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "mailer.example.net")
    send(make_client(), smtp_server)
    assert smtp_server.handler.ehlo_names == ["mailer.example.net"]


def test_a_short_host_name_gives_the_connections_address_literal(
    make_client, smtp_server, monkeypatch
):
    # Our machines' getfqdn() is `vm`: a name without a dot, which some relays refuse.
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "vm")
    client = make_client()
    send(client, smtp_server)
    send(client, smtp_server)  # the reused connection says EHLO once
    assert smtp_server.handler.ehlo_names == ["[127.0.0.1]"]


def test_the_address_literal_over_implicit_tls(start_smtp, make_client, tls_files, monkeypatch):
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = start_smtp(tls_context=context, implicit_tls=True)
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "vm")
    client = make_client(ca_file=str(Path(cert)))
    client.send(target(server, security="ssl"), SENDER, ["user@example.com"], DATA, False)
    client.close_all()  # before the server stops: a TLS session it closes leaks its socket
    assert server.handler.ehlo_names == ["[127.0.0.1]"]
    assert len(server.received) == 1


@pytest.mark.parametrize(
    ("family", "address", "literal"),
    [
        (socket.AF_INET, "127.0.0.1", "[127.0.0.1]"),
        (socket.AF_INET6, "::1", "[IPv6:::1]"),
        (socket.AF_INET6, "::ffff:127.0.0.1", "[127.0.0.1]"),
    ],
    ids=["ipv4", "ipv6", "ipv4_mapped"],
)
def test_an_address_literal_is_written_as_rfc_5321_says(family, address, literal):
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            pytest.skip(f"{address} cannot be bound on this machine")
        assert _address_literal(sock) == literal
