"""ADMIN_EMAIL failure notices (API.md section 4): the notice and the notifier without Flask,
then end to end against a real aiosmtpd server that refuses recipients. The reason classes and
the window have their own tests (test_notice_policy.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from mail_server import EXTENSION, NOTICES
from mailservice.delivery.accepting import RequestExtras
from mailservice.delivery.failure_notices import NOTICE_TAG, FailureNotifier, notice_spec
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.notice_policy import HeldBack, NoticeWindow
from mailservice.errors import StoreError, Unavailable
from mailservice.events.bus import Accepted, Finished
from mailservice.senders import Sender, SenderDirectory
from mailservice.stores.contract import EmailStatus, StatusRecord
from mailservice.testing.smtp_servers import Received, SmtpServer
from tests.conftest import OTHER_KEY, OTHER_SENDER, SENDER, ManualClock, send, wait_final, wait_for
from tests.test_worker_pool import accepted_id

ADMIN = "admin@example.net"
NOBODY = "nobody@example.com"  # the test server refuses it with 550 at RCPT
BUSY = "busy@example.com"  # the test server defers it with 450 at RCPT, every time
SECRET_SUBJECT = "Quarterly figures XYZZY"
SECRET_BODY = "body canary PLUGH, never in a notice"


# -- the notice and the notifier, without Flask ------------------------------------------------

WHEN = datetime(2026, 11, 22, 4, 1, 25, tzinfo=UTC)
REFUSED_ERROR = f"every recipient was refused: {NOBODY}: 550 5.1.1 no such user"


def failed(request_id: str = "r1", error: str = REFUSED_ERROR, **changes: Any) -> StatusRecord:
    record = StatusRecord(
        request_id=request_id,
        status=EmailStatus.FAILED,
        sender=SENDER,
        recipients=(NOBODY, "cc@example.com"),
        pending=(),
        created_at=WHEN,
        updated_at=WHEN.replace(second=26),
        attempts=1,
        error=error,
        refused={NOBODY: "550 5.1.1 no such user", "cc@example.com": "550 gone"},
    )
    return replace(record, **changes)


class RecordingAcceptor:
    """Stands in for the Acceptor (whose store and pool the end-to-end tests below use): keeps
    what it is asked to accept, or raises `refusal`."""

    def __init__(self) -> None:
        self.accepted: list[tuple[MessageSpec, Sender, RequestExtras]] = []
        self.sources: list[str] = []
        self.refusal: Exception | None = None

    def accept(
        self,
        spec: MessageSpec,
        sender: Sender,
        idempotency: Any = None,
        extras: Any = None,
        source: str = "",
    ) -> StatusRecord:
        if self.refusal is not None:
            raise self.refusal
        self.accepted.append((spec, sender, extras))
        self.sources.append(source)
        return replace(failed(f"notice-{len(self.accepted)}"), status=EmailStatus.QUEUED)


@pytest.fixture
def notifier() -> FailureNotifier:
    sender = Sender(SENDER, "pw", "127.0.0.1", 2525, "none", name="Alerts")
    return FailureNotifier(
        ADMIN,
        SenderDirectory([("key-1", sender)]),
        RecordingAcceptor(),  # type: ignore[arg-type]  # duck-typed stand-in
        NoticeWindow(clock=ManualClock()),
    )


def test_notice_holds_the_facts_on_lines_no_reason_can_forge() -> None:
    record = failed(error="550 no\r\nRequest ID: forged\x00 (at end of DATA)")
    spec = notice_spec(record, ADMIN, "rejected", HeldBack(2, ("r7", "r8")))
    assert spec.recipient == (ADMIN,)
    assert spec.subject == "[mail-service] delivery failed: rejected (r1)"
    assert spec.headers == {"Auto-Submitted": "auto-generated"}
    assert spec.body is not None and not spec.is_html
    lines = spec.body.splitlines()
    assert [line for line in lines if line.startswith("Request ID:")] == ["Request ID:   r1"]
    assert "Reason:       550 no  Request ID: forged  (at end of DATA)" in lines
    assert f"Recipients:   {NOBODY}, cc@example.com" in lines
    assert f"Refused:      {NOBODY}: 550 5.1.1 no such user" in lines
    assert "              cc@example.com: 550 gone" in lines
    assert "Attempts:     1" in lines
    assert "Accepted at:  2026-11-22T04:01:25Z" in lines
    assert "Failed at:    2026-11-22T04:01:26Z" in lines
    assert "And 2 more failures of this kind since the last notice:" in lines
    assert lines[lines.index("And 2 more failures of this kind since the last notice:") + 1 :][
        :2
    ] == ["  r7", "  r8"]
    assert "\x00" not in spec.body


def test_notifier_sends_as_the_failed_requests_sender_with_the_notice_tag(notifier) -> None:
    notifier.on_event(Finished(failed()))
    [(spec, sender, extras)] = notifier.acceptor.accepted
    assert sender.email == SENDER and sender.name == "Alerts"
    assert spec.recipient == (ADMIN,)
    assert extras.tags == (NOTICE_TAG,)
    assert dict(extras.metadata) == {"failed_request_id": "r1"}
    assert notifier.acceptor.sources == ["failure-notice"]  # what the metrics count it under


def test_notifier_ignores_what_is_not_a_failure(notifier) -> None:
    notifier.on_event(Accepted(replace(failed(), status=EmailStatus.QUEUED, error=None)))
    notifier.on_event(Finished(replace(failed(), status=EmailStatus.SENT, error=None)))
    assert notifier.acceptor.accepted == []


def test_a_failed_notice_gets_no_notice_by_its_tag(notifier, caplog) -> None:
    # The tag is on the stored record, so a notice recovered by another process is known too.
    with caplog.at_level(logging.WARNING):
        notifier.on_event(Finished(failed("n1", tags=(NOTICE_TAG,))))
    assert notifier.acceptor.accepted == []
    assert "failure notice request_id=n1 failed too" in caplog.text


def test_requests_a_drain_ends_get_no_notice(notifier) -> None:
    notifier.on_event(Finished(failed(error="shutdown before send")))
    assert notifier.acceptor.accepted == []
    assert len(notifier.window) == 0  # not counted either


def test_a_sender_no_longer_configured_gets_no_notice_and_is_logged(notifier, caplog) -> None:
    record = failed(sender="gone@example.com", error="its sender is no longer configured")
    with caplog.at_level(logging.WARNING):
        notifier.on_event(Finished(record))
    assert notifier.acceptor.accepted == []
    assert "no failure notice for request_id=r1: its sender gone@example.com is no longer" in (
        caplog.text
    )


@pytest.mark.parametrize(
    "refusal", [Unavailable("the service is shutting down"), StoreError("redis is down")]
)
def test_a_notice_the_service_refuses_is_logged_and_counted_in_the_next(
    notifier, caplog, refusal: Exception
) -> None:
    notifier.acceptor.refusal = refusal
    with caplog.at_level(logging.WARNING):
        notifier.on_event(Finished(failed("r1")))  # must not raise into the bus
    assert f"failure notice for request_id=r1 not accepted ({refusal})" in caplog.text
    notifier.acceptor.refusal = None
    notifier.on_event(Finished(failed("r2")))  # at once: the admin heard nothing yet
    [(spec, _, _)] = notifier.acceptor.accepted
    assert spec.body is not None
    assert "And 1 more failures of this kind since the last notice:\n  r1\n" in spec.body


# -- end to end: a real aiosmtpd server refuses, the notice arrives ----------------------------


def notifier_of(app: Flask) -> FailureNotifier:
    return app.extensions[NOTICES]


def settled(app: Flask, server: SmtpServer) -> list[Received]:
    """What the server received once every request (notices included) has ended.

    A notice is accepted inside its failed request's Finished event, before that request leaves
    the pool, so the pool is never empty between a failure and its notice.
    """
    wait_for(lambda: app.extensions[EXTENSION].pool.unfinished() == 0)
    return list(server.received)


def text_of(notice: Received) -> str:
    """The notice's text/plain content, with the wire's CRLF as LF."""
    return notice.message.get_content().replace("\r\n", "\n")


def request_id_of(notice: Received) -> str:
    return notice.message["Subject"].rpartition("(")[2].rstrip(")")


@pytest.fixture
def refusing_server(smtp_server: SmtpServer) -> SmtpServer:
    smtp_server.handler.refuse[NOBODY] = "550 5.1.1 no such user"
    smtp_server.handler.refuse[BUSY] = "450 4.2.1 mailbox busy"
    return smtp_server


@pytest.fixture
def notifying_app(make_app: Callable[..., Flask], refusing_server: SmtpServer) -> Flask:
    return make_app(refusing_server.port, admin_email=ADMIN)


def failing(recipient: str = NOBODY) -> dict[str, Any]:
    return {"recipient": recipient, "subject": SECRET_SUBJECT, "body": SECRET_BODY}


def test_a_failed_request_sends_one_notice_to_admin_email_as_its_sender(
    notifying_app, refusing_server
) -> None:
    client = notifying_app.test_client()
    request_id = accepted_id(send(client, failing()))
    assert wait_final(client, request_id)["status"] == "failed"
    [notice] = settled(notifying_app, refusing_server)
    assert notice.mail_from == SENDER
    assert notice.rcpt_tos == [ADMIN]
    message = notice.message
    assert message["From"].addresses[0].addr_spec == SENDER
    assert message["To"] == ADMIN
    assert message["Subject"] == f"[mail-service] delivery failed: refused ({request_id})"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "text/plain"
    text = text_of(notice)
    assert f"Request ID:   {request_id}\n" in text
    assert f"Sender:       {SENDER}\n" in text
    assert f"Recipients:   {NOBODY}\n" in text
    assert "Reason class: refused\n" in text
    assert f"Reason:       every recipient was refused: {NOBODY}: 550 5.1.1 no such user\n" in text
    assert f"Refused:      {NOBODY}: 550 5.1.1 no such user\n" in text
    assert "Attempts:     1\n" in text
    raw = notice.content.decode("utf-8", "replace")
    for secret in (SECRET_SUBJECT, SECRET_BODY, "XYZZY", "PLUGH"):
        assert secret not in text and secret not in raw
    # The notice is a request of its own: tagged, linked to the failure, sent.
    notice_id = message["Message-ID"].strip("<>").partition("@")[0]
    status = wait_final(client, notice_id)
    assert status["status"] == "sent"
    assert status["tags"] == [NOTICE_TAG]
    assert status["metadata"] == {"failed_request_id": request_id}
    assert status["recipients"] == [ADMIN]


def test_five_failures_in_a_minute_give_one_notice_and_the_next_counts_four(
    notifying_app, refusing_server
) -> None:
    clock = ManualClock()
    notifier_of(notifying_app).window.clock = clock
    client = notifying_app.test_client()
    first = [accepted_id(send(client, failing())) for _ in range(5)]
    for request_id in first:
        assert wait_final(client, request_id)["status"] == "failed"
    [notice] = settled(notifying_app, refusing_server)
    noticed = request_id_of(notice)
    assert noticed in first

    clock.advance(60)
    sixth = accepted_id(send(client, failing()))
    assert wait_final(client, sixth)["status"] == "failed"
    notices = settled(notifying_app, refusing_server)
    assert len(notices) == 2
    assert request_id_of(notices[1]) == sixth
    text = text_of(notices[1])
    assert "And 4 more failures of this kind since the last notice:\n" in text
    listed = {line.strip() for line in text.splitlines() if line.startswith("  ")}
    assert listed == set(first) - {noticed}


def test_two_classes_or_two_senders_get_separate_notices(notifying_app, refusing_server) -> None:
    notifier_of(notifying_app).window.clock = ManualClock()  # time stands still: one minute
    client = notifying_app.test_client()
    ids = [
        accepted_id(send(client, failing(NOBODY))),  # refused, SENDER
        accepted_id(send(client, failing(BUSY))),  # transient after 3 attempts, SENDER
        accepted_id(send(client, failing(NOBODY), key=OTHER_KEY)),  # refused, OTHER_SENDER
    ]
    for request_id in ids:
        assert wait_final(client, request_id)["status"] == "failed"
    settled(notifying_app, refusing_server)
    held_back = accepted_id(send(client, failing(NOBODY)))  # refused, SENDER again
    assert wait_final(client, held_back)["status"] == "failed"
    notices = settled(notifying_app, refusing_server)
    got = {(n.mail_from, n.message["Subject"].split(": ")[1].split(" ")[0]) for n in notices}
    assert got == {(SENDER, "refused"), (SENDER, "transient"), (OTHER_SENDER, "refused")}
    assert len(notices) == 3
    assert {request_id_of(n) for n in notices} == set(ids)


def test_a_notice_that_fails_triggers_no_further_notice(
    notifying_app, refusing_server, caplog
) -> None:
    refusing_server.handler.refuse[ADMIN] = "550 5.1.1 no admin here"
    # No window: only the tag can keep a failed notice from getting a notice of its own.
    notifier_of(notifying_app).window.interval = 0
    client = notifying_app.test_client()
    with caplog.at_level(logging.WARNING):
        request_id = accepted_id(send(client, failing()))
        assert wait_final(client, request_id)["status"] == "failed"
        assert settled(notifying_app, refusing_server) == []
    assert refusing_server.handler.transactions == 2  # the request and its notice, no third
    assert "failed too" in caplog.text
    service = notifying_app.extensions[EXTENSION]
    assert service.request_log.flush()
    with open(service.request_log.path, encoding="utf-8") as log:
        lines = log.read().splitlines()
    assert sum("Status: queued" in line for line in lines) == 2
    [notice_end] = [line for line in lines if f"Recipient: {ADMIN}," in line and "failed" in line]
    assert "Status: failed (every recipient was refused: admin@example.net: 550" in notice_end


def test_without_admin_email_no_notice_is_sent(make_app, refusing_server) -> None:
    app = make_app(refusing_server.port)
    assert NOTICES not in app.extensions
    client = app.test_client()
    request_id = accepted_id(send(client, failing()))
    assert wait_final(client, request_id)["status"] == "failed"
    assert settled(app, refusing_server) == []
    assert refusing_server.handler.transactions == 1
