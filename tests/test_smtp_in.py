"""The SMTP submission listener (mailservice/smtp_in/) with real clients nobody here wrote:
Python's smtplib, Django's SMTP EmailBackend and swaks, over STARTTLS with a test certificate,
to a real aiosmtpd sink; what arrives is compared with what was submitted (minus Bcc, plus a
Message-ID where it had none). Then every refusal, and the store down at DATA."""

from __future__ import annotations

import base64
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import replace
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from mail_server import SMTP_IN
from mailservice.smtp_in.listener import SmtpListener, plain_auth_allowed
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, OTHER_SENDER, SENDER, wait_final, wait_for

QUEUED = re.compile(r"2\.0\.0 queued as ([0-9a-f-]{36})")


class Listening:
    """An app with its listener started, the sink its sender sends to, and a TLS context
    that trusts the test certificate."""

    def __init__(self, app: Flask, sink: SmtpServer, cert: Path) -> None:
        self.app = app
        self.sink = sink
        self.cert = cert
        self.listener: SmtpListener = app.extensions[SMTP_IN]
        self.port = self.listener.port

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self, login: bool = True, tls: bool = True) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=10)
        if tls:
            smtp.starttls(context=self.context())
        if login:
            smtp.login(SENDER, API_KEY)
        return smtp

    def status(self, request_id: str) -> dict[str, Any]:
        return wait_final(self.app.test_client(), request_id)


@pytest.fixture
def listen(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, tls_files: tuple[Path, Path]
) -> Callable[..., Listening]:
    def start(**overrides: Any) -> Listening:
        cert, key = tls_files
        values: dict[str, Any] = {
            "smtp_listen": f"127.0.0.1:{free_port()}",
            "smtp_listen_cert": str(cert),
            "smtp_listen_key": str(key),
        }
        values.update(overrides)
        app = make_app(smtp_server.port, **values)
        app.extensions[SMTP_IN].start()
        return Listening(app, smtp_server, cert)

    return start


# -- what is submitted, and how it is compared ------------------------------------------------


def message(kind: str, message_id: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Test Sender <{SENDER}>"
    msg["To"] = "you@example.org"
    msg["Subject"] = f"A {kind} message, café"
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content("Hello from the plain part.\nSecond line, ünïcode.\n")
    if kind in ("html", "attachment"):
        msg.add_alternative("<p>Hello <b>from</b> the HTML part.</p>\n", subtype="html")
    if kind == "attachment":
        msg.add_attachment(bytes(range(256)) * 8, maintype="application",
                           subtype="octet-stream", filename="data.bin")  # fmt: skip
    return msg


def wire(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def expected(submitted: bytes, request_id: str, domain: str = "example.com") -> bytes:
    """What must arrive: the submitted bytes without their Bcc field, and with a Message-ID
    at the end of the header when it had none."""
    head, _, body = wire(submitted).partition(b"\r\n\r\n")
    lines: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                lines.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            lines.append(line)
    if not any(line.lower().startswith(b"message-id:") for line in lines):
        lines.append(f"Message-ID: <{request_id}@{domain}>".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def shape(msg: Message) -> tuple[Any, ...]:
    """The headers that matter (decoded) and every leaf part: type, file name, content."""
    headers = tuple(
        str(make_header(decode_header(str(msg.get(name, "")))))
        for name in ("From", "To", "Cc", "Subject")
    )
    parts = tuple(
        (part.get_content_type(), part.get_filename(), part.get_payload(decode=True))
        for part in msg.walk()
        if not part.is_multipart()
    )
    return headers, parts


def parsed(data: bytes) -> Message:
    return message_from_bytes(data, policy=policy.default)


KINDS = ("plain", "html", "attachment")


# -- real clients -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_smtplib_over_starttls_relays_what_was_submitted(listen, kind: str):
    service = listen()
    msg = message(kind)
    msg["Bcc"] = "hidden@example.net"
    data = msg.as_bytes(policy=policy.SMTP)
    with service.client() as smtp:
        assert smtp.mail(SENDER)[0] == 250
        assert smtp.rcpt("you@example.org")[0] == 250
        assert smtp.rcpt("hidden@example.net")[0] == 250
        code, reply = smtp.data(data)
    assert code == 250, reply
    request_id = QUEUED.search(reply.decode()).group(1)
    status = service.status(request_id)
    assert status["status"] == "sent"
    assert sorted(status["recipients"]) == ["hidden@example.net", "you@example.org"]
    [got] = service.sink.received
    assert got.content == expected(data, request_id)
    assert b"hidden@example.net" not in got.content
    assert sorted(got.rcpt_tos) == ["hidden@example.net", "you@example.org"]
    assert shape(got.message) == shape(parsed(data))


@pytest.mark.parametrize("kind", KINDS)
def test_django_smtp_backend_over_starttls(listen, kind: str, monkeypatch: pytest.MonkeyPatch):
    django_settings = pytest.importorskip("django.conf").settings
    from django.core import mail as django_mail
    from django.core.mail.backends.smtp import EmailBackend

    service = listen()
    if not django_settings.configured:
        django_settings.configure(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend")
    # Django's backend verifies with ssl.create_default_context(): trust the test CA there.
    monkeypatch.setenv("SSL_CERT_FILE", str(service.cert))
    backend = EmailBackend(host="127.0.0.1", port=service.port, username=SENDER,
                           password=API_KEY, use_tls=True, timeout=10)  # fmt: skip
    email = django_mail.EmailMultiAlternatives(
        subject=f"A {kind} message, café",
        body="Hello from the plain part.\nSecond line, ünïcode.\n",
        from_email=f"Test Sender <{SENDER}>",
        to=["you@example.org"],
        bcc=["hidden@example.net"],
        connection=backend,
    )
    if kind != "plain":
        email.attach_alternative("<p>Hello <b>from</b> the HTML part.</p>", "text/html")
    if kind == "attachment":
        email.attach("data.bin", bytes(range(256)) * 8, "application/octet-stream")
    submitted = parsed(wire(email.message().as_bytes()))
    assert email.send() == 1
    [got] = wait_for(lambda: service.sink.received)
    assert sorted(got.rcpt_tos) == ["hidden@example.net", "you@example.org"]
    assert shape(got.message) == shape(submitted)
    assert got.message["Message-ID"]  # Django's own, kept
    assert "Bcc" not in got.message


SWAKS = shutil.which("swaks")


@pytest.mark.skipif(SWAKS is None, reason="swaks (Debian package) is not installed")
@pytest.mark.parametrize("kind", KINDS)
def test_swaks_over_starttls_with_auth_plain(listen, kind: str, tmp_path: Path):
    service = listen()
    msg = message(kind)
    msg["Bcc"] = "hidden@example.net"
    data = msg.as_bytes(policy=policy.SMTP)
    (tmp_path / "message.eml").write_bytes(data)
    run = subprocess.run(
        [
            str(SWAKS), "--server", f"127.0.0.1:{service.port}", "--tls", "--tls-verify",
            "--tls-ca-path", str(service.cert), "--auth", "PLAIN", "--auth-user", SENDER,
            "--auth-password", API_KEY, "--from", SENDER, "--to", "you@example.org",
            "--data", "@" + str(tmp_path / "message.eml"), "--ehlo", "client.test",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    request_id = QUEUED.search(run.stdout).group(1)
    assert service.status(request_id)["status"] == "sent"
    [got] = service.sink.received
    # swaks ends the data with CRLF "." CRLF after the file's own last CRLF: one blank line.
    assert got.content == expected(data, request_id) + b"\r\n"
    assert shape(got.message) == shape(parsed(wire(data) + b"\r\n"))


# -- once per Message-ID ------------------------------------------------------------------------


def test_the_same_message_id_resubmitted_is_sent_once(listen):
    service = listen()
    data = message("plain", "<once@client.test>").as_bytes(policy=policy.SMTP)
    replies = []
    for _ in range(2):  # a client retrying after its connection dropped, on a new one
        with service.client() as smtp:
            smtp.mail(SENDER)
            smtp.rcpt("you@example.org")
            replies.append(smtp.data(data))
    first, second = (QUEUED.search(reply.decode()).group(1) for _, reply in replies)
    assert first == second
    assert service.status(first)["status"] == "sent"
    with service.client() as smtp:  # another message, to know the first would have arrived
        smtp.sendmail(SENDER, ["you@example.org"], message("plain").as_bytes(policy=policy.SMTP))
    wait_for(lambda: len(service.sink.received) >= 2)
    ids = [got.message["Message-ID"] for got in service.sink.received]
    assert ids.count("<once@client.test>") == 1 and len(ids) == 2


def test_the_same_message_id_to_other_recipients_is_sent_to_each(listen):
    # Postfix as a smarthost client splits one message into transactions of at most
    # smtp_destination_recipient_limit recipients, each with the same Message-ID.
    service = listen()
    data = message("plain", "<split@client.test>").as_bytes(policy=policy.SMTP)
    ids = []
    for rcpts in (
        ["a@example.org", "b@example.org"],
        ["c@example.org"],
        ["b@EXAMPLE.org", "a@example.ORG"],
    ):
        with service.client() as smtp:
            smtp.mail(SENDER)
            for rcpt in rcpts:
                smtp.rcpt(rcpt)
            code, reply = smtp.data(data)
        assert code == 250, reply
        ids.append(QUEUED.search(reply.decode()).group(1))
    assert ids[0] != ids[1]
    assert ids[2] == ids[0]  # the same recipients in another order and case: a resubmission
    wait_for(lambda: len(service.sink.received) >= 2)
    assert service.status(ids[1])["status"] == "sent"
    delivered = sorted(r for got in service.sink.received for r in got.rcpt_tos)
    assert delivered == ["a@example.org", "b@example.org", "c@example.org"]


# -- bounds on sessions ------------------------------------------------------------------------


def greeting(port: int) -> tuple[int, bytes]:
    """A new connection's first reply (smtplib's connect())."""
    smtp = smtplib.SMTP(timeout=10)
    try:
        return smtp.connect("127.0.0.1", port)
    except smtplib.SMTPServerDisconnected:
        return (0, b"")
    finally:
        smtp.close()


def test_sessions_past_the_process_and_the_client_limits_are_421_4_7_0(listen):
    service = listen(smtp_listen_max_sessions=3, smtp_listen_max_sessions_per_client=2)
    first, second = service.client(login=False), service.client(login=False)
    code, text = greeting(service.port)  # a third from the same address
    assert (code, text[:5]) == (421, b"4.7.0"), text
    service.listener.bounds = replace(service.listener.bounds, max_per_client=5)
    third = service.client(login=False)
    code, text = greeting(service.port)  # a fourth in the process
    assert (code, text[:5]) == (421, b"4.7.0"), text
    first.quit()
    wait_for(lambda: greeting(service.port)[0] == 220)  # a place again once one has gone
    for smtp in (second, third):
        smtp.login(SENDER, API_KEY)
        smtp.quit()


def closed_with_421(smtp: smtplib.SMTP) -> bool:
    try:
        return smtp.noop()[0] == 421
    except smtplib.SMTPServerDisconnected:
        return True


def test_a_session_without_a_login_in_time_is_421_and_closed(listen):
    service = listen()
    service.listener.bounds = replace(service.listener.bounds, login_seconds=0.3)
    logged_in = service.client()
    idle = service.client(login=False)  # connected later: its deadline comes later
    wait_for(lambda: closed_with_421(idle))
    idle.close()
    assert logged_in.noop()[0] == 250  # past its deadline, but logged in in time
    logged_in.quit()


def test_aiosmtpd_counts_the_commands_of_a_session(listen):
    service = listen()
    with service.client(login=False) as smtp:
        replies = [smtp.docmd("NOOP")[0] for _ in range(21)]
    assert replies[:20] == [250] * 20 and replies[20] == 421
    with service.client() as smtp:  # MAIL, RCPT and RSET are not counted: connections reuse
        for _ in range(30):
            assert smtp.mail(SENDER)[0] == 250 and smtp.rcpt("you@example.org")[0] == 250
            assert smtp.rset()[0] == 250


# -- shutdown -------------------------------------------------------------------------------------


def test_shutdown_answers_250_to_what_it_recorded_and_421_to_what_it_did_not(listen):
    # A DATA ending while stop() waits for the submissions in progress must not be
    # recorded and then told 421: the client would send it again, and it would go twice.
    service = listen()
    handler = service.listener.handler
    real = handler.submission.submit
    entered, release = threading.Event(), threading.Event()
    recorded: list[str] = []

    def held(*args: Any) -> str:
        entered.set()
        release.wait(10)
        reply = real(*args)
        recorded.append(reply)
        return reply

    handler.submission.submit = held  # type: ignore[method-assign]
    data = message("plain").as_bytes(policy=policy.SMTP)
    first, second = service.client(), service.client()
    for smtp in (first, second):
        smtp.mail(SENDER)
        smtp.rcpt("you@example.org")
    replies: dict[str, tuple[int, bytes]] = {}

    def submit(name: str, smtp: smtplib.SMTP) -> None:
        replies[name] = smtp.data(data)

    threads = [threading.Thread(target=submit, args=("first", first))]
    threads[0].start()
    assert entered.wait(10)  # the first is being recorded
    threads.append(threading.Thread(target=service.listener.stop))
    threads[1].start()
    wait_for(lambda: handler.closing)  # stop() has begun
    submit("second", second)  # its DATA ends while stop() waits for the first
    release.set()
    for thread in threads:
        thread.join(20)
    first.close()
    second.close()
    assert recorded == [f"250 {replies['first'][1].decode()}"]  # the one recorded, told so
    assert replies["second"][:1] == (421,) and replies["second"][1].startswith(b"4.3.2")


# -- logins ---------------------------------------------------------------------------------------


def test_a_wrong_login_is_535_and_the_failed_login_limit_then_refuses_all(listen):
    # smtplib's login() tries PLAIN, then LOGIN: two failures a call.
    service = listen(auth_fail_limit="4/minute")
    for user, password in ((SENDER, "wrong-key"), (OTHER_SENDER, API_KEY)):
        with service.client(login=False) as smtp:
            with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
                smtp.login(user, password)
            assert caught.value.smtp_code == 535
    with service.client(login=False) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            smtp.login(SENDER, API_KEY)  # the right login, from an address past the limit
        assert caught.value.smtp_code == 454
        assert b"Too many failed logins" in caught.value.smtp_error


def test_a_slow_failed_login_guard_does_not_stall_other_sessions(listen):
    # The guard's storage may be Redis at its socket timeout: while one AUTH waits on it,
    # another session's NOOP must be answered (the guard runs off the listener's loop).
    service = listen(auth_fail_limit="10/minute")
    guard = service.listener.handler.guard
    real = guard.retry_after
    entered, release = threading.Event(), threading.Event()
    released: list[bool] = []

    def slow(address: str | None) -> int | None:
        entered.set()
        released.append(release.wait(10))  # False: released by its own deadline only
        return real(address)

    guard.retry_after = slow  # type: ignore[method-assign]
    other = service.client(login=False)
    logins: list[tuple[int, bytes]] = []

    def log_in() -> None:
        with service.client(login=False) as smtp:
            logins.append(smtp.login(SENDER, API_KEY))

    login = threading.Thread(target=log_in)
    login.start()
    assert entered.wait(10)
    assert other.noop()[0] == 250
    release.set()
    login.join(20)
    other.quit()
    assert released == [True]
    assert [code for code, _ in logins] == [235]


def test_auth_plain_and_login_as_clients_send_them(listen):
    service = listen()
    with service.client(login=False) as smtp:
        smtp.ehlo()
        assert smtp.docmd("AUTH", "PLAIN !!not-base64")[:1] == (501,)
        assert smtp.docmd("AUTH", "PLAIN " + base64.b64encode(b"no-nul").decode())[0] == 501
        smtp.user, smtp.password = SENDER, API_KEY
        assert smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)[0] == 235
    with service.client(login=False) as smtp:
        smtp.ehlo()
        plain = base64.b64encode(f"\0{SENDER}\0{API_KEY}".encode()).decode()
        assert smtp.docmd("AUTH", "PLAIN")[0] == 334  # the response asked for
        assert smtp.docmd(plain)[0] == 235


def test_plain_auth_is_for_loopback_or_allow_plain_only():
    assert plain_auth_allowed("127.0.0.1", False) and plain_auth_allowed("::1", False)
    assert plain_auth_allowed("::ffff:127.0.0.1", False)
    assert not plain_auth_allowed("192.0.2.2", False) and not plain_auth_allowed(None, False)
    assert plain_auth_allowed("192.0.2.2", True)


def outside_address() -> str | None:
    """An address of this machine that is not loopback, to connect from off-loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_auth_before_starttls_is_refused_off_loopback(listen):
    address = outside_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    service = listen(smtp_listen=f"0.0.0.0:{free_port()}")
    with smtplib.SMTP(address, service.port, local_hostname="client.test", timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")  # not even offered in clear
        assert smtp.docmd("AUTH", "PLAIN AGZvbwBiYXI=")[0] == 538
        context = ssl.create_default_context(cafile=str(service.cert))
        context.check_hostname = False  # the test certificate names 127.0.0.1, not this one
        smtp.starttls(context=context)
        smtp.ehlo()
        assert smtp.has_extn("auth")
        assert smtp.login(SENDER, API_KEY)[0] == 235
    with smtplib.SMTP("127.0.0.1", service.port, timeout=10) as smtp:  # loopback: allowed
        assert smtp.login(SENDER, API_KEY)[0] == 235


def test_a_listener_no_remote_client_can_log_in_to_is_a_warning(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
):
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "mailservice.smtp_in"]

    caplog.set_level("WARNING", logger="mailservice.smtp_in")
    make_app(smtp_server.port, smtp_listen=f"0.0.0.0:{free_port()}")
    assert ["no remote client can log in" in text for text in warnings()] == [True]
    caplog.clear()
    make_app(smtp_server.port, smtp_listen=f"127.0.0.1:{free_port()}")
    make_app(smtp_server.port, smtp_listen=f"0.0.0.0:{free_port()}", smtp_listen_allow_plain=True)
    assert warnings() == []  # loopback only, or plain AUTH allowed: as meant


# -- refusals: the right reply, and nothing sent ---------------------------------------------------


def test_mail_from_or_from_header_of_another_address_is_550_5_7_1(listen):
    service = listen()
    with service.client() as smtp:
        code, reply = smtp.mail(OTHER_SENDER)
        assert (code, reply[:5]) == (550, b"5.7.1")
        smtp.rset()
        assert smtp.mail(SENDER)[0] == 250
        smtp.rcpt("you@example.org")
        foreign = message("plain")
        foreign.replace_header("From", OTHER_SENDER)
        code, reply = smtp.data(foreign.as_bytes(policy=policy.SMTP))
        assert (code, reply[:5]) == (550, b"5.7.1")
    assert service.sink.received == []


def test_too_many_recipients_is_452_and_the_data_refused_whole(listen):
    service = listen(max_recipients=2)
    with service.client() as smtp:
        smtp.mail(SENDER)
        assert smtp.rcpt("a@example.org")[0] == 250
        assert smtp.rcpt("b@example.org")[0] == 250
        code, reply = smtp.rcpt("c@example.org")
        assert (code, reply[:5]) == (452, b"4.5.3")
        code, reply = smtp.data(message("plain").as_bytes(policy=policy.SMTP))
        assert (code, reply[:5]) == (554, b"5.5.3")
    assert service.sink.received == []


def test_a_message_over_max_request_bytes_is_552(listen):
    service = listen(max_request_bytes=20_000, queue_max_bytes=1_000_000)
    with service.client() as smtp:
        assert smtp.ehlo()[0] == 250 and smtp.esmtp_features["size"] == "20000"
        assert smtp.mail(SENDER, ["SIZE=30000"])[0] == 552  # told ahead
        smtp.rset()
        smtp.mail(SENDER)
        smtp.rcpt("you@example.org")
        big = message("plain")
        big.set_content(("y" * 70 + "\n") * 400)
        assert smtp.data(big.as_bytes(policy=policy.SMTP))[0] == 552  # found out
    assert service.sink.received == []


FROM = b"From: sender@example.com\r\n"


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (FROM + b"Subject: a\0b\r\n\r\nbody\r\n", b"5.6.0 The message has a NUL"),
        (FROM + b"\r\n" + b"x" * 999 + b"\r\n", b"5.6.0 The message has a line"),
        (FROM + b"\r\n" + b"x" * 5000 + b"\r\n", b"5.6.0 The message has a line"),
        (b"Subject: none\r\n\r\nbody\r\n", b"5.6.0 The message has no From:"),
    ],
)  # fmt: skip
def test_bad_content_is_554_5_6_0_and_nothing_sent(listen, data: bytes, reply: bytes):
    service = listen()
    with service.client() as smtp:
        smtp.mail(SENDER)
        smtp.rcpt("you@example.org")
        code, text = smtp.data(data)
    assert code == 554 and text.startswith(reply), text
    assert service.sink.received == []


def test_over_the_rate_limit_mail_from_is_450_4_7_0(listen):
    service = listen(rate_limit="2/minute")
    with service.client() as smtp:
        for _ in range(2):
            smtp.sendmail(SENDER, ["you@example.org"], message("plain").as_bytes())
        code, reply = smtp.mail(SENDER)
        assert (code, reply[:5]) == (450, b"4.7.0")
    # The same budget as the HTTP routes: this key is over it there too.
    response = service.app.test_client().post(
        "/send-email", json={"recipient": "you@example.org", "subject": "s", "body": "b"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )  # fmt: skip
    assert response.status_code == 429


def test_store_down_at_data_is_451_and_nothing_is_sent(listen, tmp_path: Path):
    from mailservice.testing.redis_server import RedisServer

    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        service = listen(status_store_url=redis.url)
        with service.client() as smtp:
            smtp.mail(SENDER)
            smtp.rcpt("you@example.org")
            redis.stop()
            code, reply = smtp.data(message("plain").as_bytes(policy=policy.SMTP))
        assert (code, reply[:5]) == (451, b"4.3.0")
        assert service.sink.received == []
    finally:
        redis.stop()
