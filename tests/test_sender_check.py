"""The sender check (delivery/sender_check.py, GET /senders/check, `mail_server.py --check`)
against real aiosmtpd servers: each result from a real failure, nothing ever sent, the
deadline over many hung servers, the operator's door, and the command's exit codes."""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from mailservice.config import Settings
from mailservice.delivery.sender_check import (
    CheckResult,
    SenderCheck,
    ServerCheck,
    _redacted,
    check_one,
    login_targets,
)
from mailservice.delivery.smtp_client import SmtpClient, SmtpTarget
from mailservice.senders import Sender, SenderDirectory, load_senders
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import SilentServer, SmtpServer
from tests.conftest import API_KEY, wait_for

SENDER = "sender@example.com"
PASSWORD = "app-pw-Zq81!x"
WRONG = "not-the-pw-Yk27#q"
ROOT = Path(__file__).parent.parent
ADMIN_TOKEN = "admin-token-for-sender-check-0123"


def target(port: int, security: str = "none", password: str = "") -> SmtpTarget:
    return SmtpTarget("127.0.0.1", port, security, SENDER, password)


@pytest.fixture
def server_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def trusting(tls_files: tuple[Path, Path]) -> SmtpClient:
    """A client that trusts the test certificate (SMTP_CA_FILE)."""
    return SmtpClient(timeout=2.0, ca_file=str(tls_files[0]))


@pytest.fixture
def client() -> SmtpClient:
    return SmtpClient(timeout=2.0)


def assert_nothing_sent(server: SmtpServer) -> None:
    assert server.received == [] and server.handler.transactions == 0  # no MAIL FROM


# -- each result, from a real server -----------------------------------------------------------


def test_a_good_login_is_ok_and_nothing_is_sent(client, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    check = check_one(client, target(server.port, password=PASSWORD))
    assert check == ServerCheck(
        SENDER, f"127.0.0.1:{server.port}", "none", CheckResult.OK, check.detail
    )
    assert check.detail.startswith("235")
    assert server.logins_seen == [SENDER]
    assert_nothing_sent(server)
    assert client.open_connections() == 0


@pytest.mark.parametrize("password", ["", WRONG], ids=["ok", "auth_failed"])
def test_the_session_ends_with_quit_whatever_the_result(client, start_smtp, password):
    server = start_smtp(logins={SENDER: PASSWORD})
    check_one(client, target(server.port, password=password))
    assert server.handler.connections == 1
    wait_for(lambda: server.handler.disconnections == 1, timeout=5)
    assert server.handler.quits == 1


def test_a_wrong_password_is_auth_failed_and_the_password_is_not_shown(client, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    check = check_one(client, target(server.port, password=WRONG))
    assert check.result is CheckResult.AUTH_FAILED
    assert "535" in check.detail and WRONG not in check.detail
    assert_nothing_sent(server)


def test_a_server_offering_no_auth_for_a_login_is_auth_failed(client, smtp_server):
    check = check_one(client, target(smtp_server.port, password=PASSWORD))
    assert check.result is CheckResult.AUTH_FAILED
    assert "no AUTH" in check.detail


def test_a_good_login_over_starttls_with_a_trusted_certificate_is_ok(
    trusting, start_smtp, server_tls
):
    server = start_smtp(tls_context=server_tls, logins={SENDER: PASSWORD})
    check = check_one(trusting, target(server.port, "starttls", PASSWORD))
    assert check.result is CheckResult.OK, check
    assert server.logins_seen == [SENDER]
    assert_nothing_sent(server)


def test_a_good_login_over_implicit_tls_is_ok(trusting, start_smtp, server_tls):
    server = start_smtp(tls_context=server_tls, implicit_tls=True, logins={SENDER: PASSWORD})
    check = check_one(trusting, target(server.port, "ssl", PASSWORD))
    assert check.result is CheckResult.OK, check
    assert_nothing_sent(server)


@pytest.mark.parametrize(
    ("security", "implicit_tls"), [("ssl", True), ("starttls", False)], ids=["ssl", "starttls"]
)
def test_an_untrusted_certificate_is_tls_failed_and_no_login_is_tried(
    client, start_smtp, server_tls, security, implicit_tls
):
    server = start_smtp(
        tls_context=server_tls, implicit_tls=implicit_tls, logins={SENDER: PASSWORD}
    )
    check = check_one(client, target(server.port, security, PASSWORD))  # trusts no test CA
    assert check.result is CheckResult.TLS_FAILED
    assert "not trusted" in check.detail
    assert server.logins_seen == []
    assert_nothing_sent(server)


def test_implicit_tls_to_a_plain_server_is_tls_failed(client, smtp_server):
    check = check_one(client, target(smtp_server.port, "ssl"))
    assert check.result is CheckResult.TLS_FAILED
    assert "TLS handshake" in check.detail


def test_starttls_not_offered_is_starttls_missing_and_no_login_is_tried(client, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    check = check_one(client, target(server.port, "starttls", PASSWORD))
    assert check.result is CheckResult.STARTTLS_MISSING
    assert server.logins_seen == []
    assert_nothing_sent(server)


def test_a_closed_port_is_unreachable(client):
    check = check_one(client, target(free_port()))  # nothing listens there
    assert check.result is CheckResult.UNREACHABLE
    assert "cannot connect" in check.detail


def test_a_server_that_never_greets_is_unreachable():
    server = SilentServer().start()
    try:
        check = check_one(SmtpClient(timeout=0.3), target(server.port))
        assert check.result is CheckResult.UNREACHABLE
        assert server.connections == 1
    finally:
        server.stop()


def test_a_421_greeting_is_unreachable_with_the_servers_reply(client, greeting_server):
    check = check_one(client, target(greeting_server.port))
    assert check.result is CheckResult.UNREACHABLE
    assert "421" in check.detail


def test_the_password_is_redacted_plain_and_as_auth_sends_it():
    login = target(25, password=PASSWORD)
    plain = base64.b64encode(f"\0{SENDER}\0{PASSWORD}".encode()).decode()
    alone = base64.b64encode(PASSWORD.encode()).decode()
    text = f"501 cannot decode {plain} or {alone} or {PASSWORD}"
    assert _redacted(login, text) == "501 cannot decode *** or *** or ***"


# -- the senders file's logins, many at once ---------------------------------------------------


def senders_file(path: Path, rows: list[str]) -> Path:
    header = "key,email,app_password,smtp_host,smtp_port,smtp_security,smtp_host2,smtp_port2\n"
    path.write_text(header + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def directory(tmp_path: Path, rows: list[str]) -> SenderDirectory:
    return load_senders(Settings(senders_file=str(senders_file(tmp_path / "data.csv", rows))))


def test_each_distinct_login_and_server_is_checked_once_the_second_server_too(
    tmp_path, client, start_smtp
):
    first, second = start_smtp(logins={SENDER: PASSWORD}), start_smtp()
    dead = free_port()
    senders = directory(
        tmp_path,
        [
            f"key-one-0123456789,{SENDER},{PASSWORD},127.0.0.1,{first.port},none,"
            f"127.0.0.1,{second.port}",
            # Another key of the same sender: the same logins, not checked again.
            f"key-two-0123456789,{SENDER},{PASSWORD},127.0.0.1,{first.port},none,"
            f"127.0.0.1,{second.port}",
            f"key-three-01234567,other@example.org,,127.0.0.1,{dead},none,,",
        ],
    )
    report = SenderCheck(senders, client, deadline=10).run()
    assert [(c.sender, c.server, c.result) for c in report.checks] == [
        (SENDER, f"127.0.0.1:{first.port}", CheckResult.OK),
        (SENDER, f"127.0.0.1:{second.port}", CheckResult.AUTH_FAILED),  # it offers no AUTH
        ("other@example.org", f"127.0.0.1:{dead}", CheckResult.UNREACHABLE),
    ]
    assert not report.ok
    assert first.handler.connections == 1 and second.handler.connections == 1
    assert_nothing_sent(first)
    assert_nothing_sent(second)


def test_many_hung_servers_are_bounded_by_the_pool_and_the_deadline():
    """Twenty logins to a server that never greets, each allowed 30 s: the check answers at
    its deadline, with no more than eight connections ever opened."""
    server = SilentServer().start()
    try:
        senders = SenderDirectory(
            (f"key-{n:02d}-0123456789", Sender(f"s{n}@example.com", "", "127.0.0.1",
                                                server.port, "none"))
            for n in range(20)
        )  # fmt: skip
        report = SenderCheck(senders, SmtpClient(timeout=30.0), deadline=0.5).run()
        assert len(report.checks) == 20 and not report.ok
        assert {c.result for c in report.checks} == {CheckResult.UNREACHABLE}
        details = {c.detail for c in report.checks}
        # Only the deadline can have ended them: each login had 30 s of its own.
        assert details == {
            "no answer within the check's 0.5 s",
            "not checked: the check's 0.5 s ran out first",
        }
        assert server.connections <= 8
    finally:
        server.stop()


def test_login_targets_of_keys_sharing_a_sender_are_one():
    sender = Sender(SENDER, PASSWORD, "smtp.example.com", 587, "starttls")
    senders = SenderDirectory([("key-a-0123456789", sender), ("key-b-0123456789", sender)])
    assert login_targets(senders) == [SmtpTarget.for_sender(sender)]
    assert senders.senders() == [sender]


# -- GET /senders/check ------------------------------------------------------------------------


@pytest.fixture
def checked_app(
    make_app: Callable[..., Flask], start_smtp: Callable[..., SmtpServer]
) -> Iterator[tuple[Flask, SmtpServer]]:
    server = start_smtp(logins={SENDER: PASSWORD})
    yield make_app(server.port, password=WRONG, admin_token=ADMIN_TOKEN, smtp_timeout=2.0), server


def test_the_route_needs_the_admin_token(checked_app):
    app, server = checked_app
    answer = app.test_client().get("/senders/check")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="admin"'
    with_key = app.test_client().get(
        "/senders/check", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert with_key.status_code == 401  # a sender's key is no operator's credential
    # Nor the dashboard's session: a cross-site <img> must not make us log in everywhere.
    browser = app.test_client()
    assert browser.post("/login", data={"token": ADMIN_TOKEN}).status_code in (302, 303)
    assert browser.get("/dashboard").status_code == 200  # the session works there
    assert browser.get("/senders/check").status_code == 401
    assert server.logins_seen == []


def test_the_route_reports_each_login_and_shows_no_password(checked_app):
    app, server = checked_app
    answer = app.test_client().get(
        "/senders/check", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert answer.status_code == 200  # the check ran, whatever it found
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.get_json()
    assert body["ok"] is False
    server_name = f"127.0.0.1:{server.port}"
    assert [(c["sender"], c["server"], c["security"], c["result"]) for c in body["senders"]] == [
        (SENDER, server_name, "none", "auth_failed"),
        ("other@example.org", server_name, "none", "auth_failed"),
    ]
    assert "535" in body["senders"][0]["detail"]
    assert WRONG not in answer.get_data(as_text=True)
    assert_nothing_sent(server)


def test_the_route_answers_ok_when_every_login_is(make_app, smtp_server):
    app = make_app(smtp_server.port, admin_token=ADMIN_TOKEN, smtp_timeout=2.0)
    body = (
        app.test_client()
        .get("/senders/check", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        .get_json()
    )
    assert body["ok"] is True
    assert {c["result"] for c in body["senders"]} == {"ok"}
    assert_nothing_sent(smtp_server)


# -- python mail_server.py --check -------------------------------------------------------------


def run_check(tmp_path: Path, senders: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SENDERS_FILE": str(senders), "SMTP_TIMEOUT": "2", "LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, str(ROOT / "mail_server.py"), "--check"],
        cwd=tmp_path,  # no .env of the checkout's
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_exits_0_when_every_login_is_ok(tmp_path, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    senders = senders_file(
        tmp_path / "data.csv",
        [f"key-one-0123456789,{SENDER},{PASSWORD},127.0.0.1,{server.port},none,,"],
    )
    done = run_check(tmp_path, senders)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.split()[:4] == ["ok", SENDER, "at", f"127.0.0.1:{server.port}"]
    assert_nothing_sent(server)


def test_the_command_exits_1_naming_the_problem(tmp_path, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    dead = free_port()
    senders = senders_file(
        tmp_path / "data.csv",
        [
            f"key-one-0123456789,{SENDER},{PASSWORD},127.0.0.1,{server.port},none,127.0.0.1,{dead}",
            f"key-two-0123456789,other@example.org,{WRONG},127.0.0.1,{server.port},none,,",
        ],
    )
    done = run_check(tmp_path, senders)
    assert done.returncode == 1, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "ok",
        "unreachable",
        "auth_failed",
    ]
    assert PASSWORD not in done.stdout + done.stderr and WRONG not in done.stdout + done.stderr
    assert_nothing_sent(server)


def test_the_command_exits_2_on_a_configuration_error(tmp_path):
    done = run_check(tmp_path, tmp_path / "missing.csv")
    assert done.returncode == 2
    assert "configuration error" in done.stderr and "not found" in done.stderr
