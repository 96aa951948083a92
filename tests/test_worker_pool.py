"""Delivery outcomes against misbehaving servers: retries, permanent failures, refusals, drain."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from mail_server import EXTENSION
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import DROP
from tests.conftest import OTHER_KEY, send, wait_final, wait_for


def status_of(client, request_id: str) -> dict[str, Any]:
    return client.get(f"/email-status/{request_id}").get_json()


def accepted_id(response) -> str:
    assert response.status_code == 202, response.get_json()
    return response.get_json()["request_id"]


def to(*recipients: str) -> dict[str, Any]:
    return {"recipient": list(recipients), "subject": "Hi", "body": "Hello"}


# -- transient failures are retried ------------------------------------------------------------


def test_transient_451_at_data_is_retried_then_sent(make_app, smtp_server):
    client = make_app(smtp_server.port, retry_backoff=0.5).test_client()
    smtp_server.handler.script("DATA", "451 4.3.0 try later")
    request_id = accepted_id(send(client))
    retrying = wait_for(
        lambda: (s := status_of(client, request_id))["status"] == "retrying" and s, timeout=5
    )
    assert retrying["attempts"] == 1
    assert retrying["error"].startswith("451 4.3.0 try later")
    status = wait_final(client, request_id)
    assert status["status"] == "sent"
    assert status["attempts"] == 2
    assert status["error"] is None
    assert len(smtp_server.received) == 1
    assert smtp_server.handler.transactions == 2
    # Every attempt carries the same message, so a receiver can recognise a duplicate.
    [first] = smtp_server.handler.rejected
    assert first.content == smtp_server.received[0].content
    assert first.message["Message-ID"] == f"<{request_id}@example.com>"


def test_421_greeting_is_retried_up_to_max_attempts_then_failed(make_app, greeting_server):
    client = make_app(greeting_server.port, max_attempts=3).test_client()
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "failed"
    assert "421" in status["error"]
    assert status["attempts"] == 3
    assert greeting_server.connections == 3


def test_dropped_connection_during_data_is_retried_then_sent(make_app, smtp_server):
    client = make_app(smtp_server.port).test_client()
    smtp_server.handler.script("DATA", DROP)
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "sent"
    assert status["attempts"] == 2
    assert len(smtp_server.received) == 1


def test_server_slower_than_smtp_timeout_before_data_is_retried(make_app, smtp_server):
    client = make_app(smtp_server.port, smtp_timeout=1.0).test_client()
    smtp_server.handler.script("MAIL", ("SLEEP", 3))
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "sent"
    assert status["attempts"] == 2
    assert len(smtp_server.received) == 1
    assert smtp_server.handler.connections == 2


def test_end_of_data_reply_slower_than_smtp_timeout_is_waited_for(make_app, smtp_server):
    # RFC 5321 4.5.3.2.6: the reply to the final "." gets SMTP_DATA_TIMEOUT, not SMTP_TIMEOUT;
    # giving up after SMTP_TIMEOUT sent the message again each time.
    client = make_app(smtp_server.port, smtp_timeout=1.0).test_client()
    smtp_server.handler.script("DATA", ("KEEP", 2.5))
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "sent"
    assert status["attempts"] == 1
    assert len(smtp_server.received) == 1
    assert smtp_server.handler.connections == 1


def test_no_reply_to_end_of_data_is_possibly_delivered_and_retried_with_one_message_id(
    make_app, smtp_server
):
    client = make_app(
        smtp_server.port, smtp_timeout=1.0, smtp_data_timeout=0.3, retry_backoff=1.0
    ).test_client()
    smtp_server.handler.script("DATA", ("KEEP", 1.5))
    request_id = accepted_id(send(client))
    retrying = wait_for(lambda: (s := status_of(client, request_id))["status"] == "retrying" and s)
    assert retrying["error"].startswith("possibly delivered: no reply to the end of DATA")
    status = wait_final(client, request_id)
    assert status["status"] == "sent"
    assert status["attempts"] == 2
    ids = Counter(str(r.message["Message-ID"]) for r in smtp_server.received)
    assert ids == {f"<{request_id}@example.com>": 2}  # the copy can be recognised


def test_possibly_delivered_on_every_attempt_says_so_when_failed(make_app, smtp_server):
    client = make_app(
        smtp_server.port, smtp_timeout=1.0, smtp_data_timeout=0.2, max_attempts=2
    ).test_client()
    smtp_server.handler.script("DATA", ("KEEP", 1.0), ("KEEP", 1.0))
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "failed"
    assert status["error"].startswith("possibly delivered: no reply to the end of DATA")
    assert status["error"].endswith("an earlier attempt was possibly delivered (same Message-ID)")


def test_nothing_listening_is_retried_then_failed(make_app):
    client = make_app(free_port(), max_attempts=3).test_client()
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "failed"
    assert status["attempts"] == 3
    assert "connect" in status["error"]


def test_max_attempts_is_honoured_exactly(make_app, smtp_server):
    client = make_app(smtp_server.port, max_attempts=4).test_client()
    smtp_server.handler.script("DATA", *["452 4.3.1 out of space"] * 10)
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "failed"
    assert status["attempts"] == 4
    assert smtp_server.handler.transactions == 4
    assert "452 4.3.1 out of space" in status["error"]
    assert "4 attempts" in status["error"]
    assert smtp_server.received == []


def test_max_attempts_of_one_means_no_retry(make_app, smtp_server):
    client = make_app(smtp_server.port, max_attempts=1).test_client()
    smtp_server.handler.script("DATA", "451 4.3.0 try later")
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "failed"
    assert status["attempts"] == 1
    assert smtp_server.handler.transactions == 1


# -- permanent failures are not ---------------------------------------------------------------


def test_permanent_550_at_data_fails_at_once(make_app, smtp_server):
    client = make_app(smtp_server.port).test_client()
    smtp_server.handler.script("DATA", "550 5.7.1 content rejected")
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "failed"
    assert status["attempts"] == 1
    assert status["error"].startswith("550 5.7.1 content rejected")
    assert smtp_server.handler.transactions == 1


def test_permanent_550_at_mail_from_fails_at_once(make_app, smtp_server):
    client = make_app(smtp_server.port).test_client()
    smtp_server.handler.script("MAIL", "550 5.7.1 sender not allowed")
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "failed"
    assert status["attempts"] == 1
    assert "550 5.7.1 sender not allowed" in status["error"]
    assert smtp_server.handler.transactions == 1


def test_connection_is_usable_after_a_permanent_failure(make_app, smtp_server):
    client = make_app(smtp_server.port, workers=1).test_client()
    smtp_server.handler.script("DATA", "554 5.6.0 no")
    first = wait_final(client, accepted_id(send(client)))
    second = wait_final(client, accepted_id(send(client)))
    assert (first["status"], second["status"]) == ("failed", "sent")
    assert second["attempts"] == 1
    assert len(smtp_server.received) == 1


# -- recipients ------------------------------------------------------------------------------


def test_some_recipients_refused_is_sent_with_refused_listed(make_app, smtp_server):
    client = make_app(smtp_server.port).test_client()
    smtp_server.handler.refuse["nobody@example.com"] = "550 5.1.1 no such user"
    body = to("a@example.com", "nobody@example.com")
    body["cc"] = ["c@example.com"]
    status = wait_final(client, accepted_id(send(client, body)))
    assert status["status"] == "sent"
    assert status["attempts"] == 1
    assert status["refused"] == {"nobody@example.com": "550 5.1.1 no such user"}
    [received] = smtp_server.received
    assert received.rcpt_tos == ["a@example.com", "c@example.com"]


def test_all_recipients_refused_is_failed(make_app, smtp_server):
    client = make_app(smtp_server.port).test_client()
    smtp_server.handler.refuse["x@example.com"] = "550 5.1.1 no such user"
    smtp_server.handler.refuse["y@example.com"] = "553 5.1.3 bad address"
    status = wait_final(client, accepted_id(send(client, to("x@example.com", "y@example.com"))))
    assert status["status"] == "failed"
    assert status["attempts"] == 1
    assert "550 5.1.1 no such user" in status["error"]
    assert status["refused"] == {
        "x@example.com": "550 5.1.1 no such user",
        "y@example.com": "553 5.1.3 bad address",
    }
    assert smtp_server.received == []


def test_deferred_recipient_is_retried_alone(make_app, smtp_server):
    client = make_app(smtp_server.port).test_client()
    smtp_server.handler.script("RCPT", "451 4.2.1 mailbox busy")
    body = to("deferred@example.com", "accepted@example.com")
    status = wait_final(client, accepted_id(send(client, body)))
    assert status["status"] == "sent"
    assert status["attempts"] == 2
    assert status["refused"] == {}
    envelopes = [r.rcpt_tos for r in smtp_server.received]
    assert envelopes == [["accepted@example.com"], ["deferred@example.com"]]
    copies = Counter(rcpt for envelope in envelopes for rcpt in envelope)
    assert copies == {"accepted@example.com": 1, "deferred@example.com": 1}
    # Both copies are one message: same Message-ID.
    assert len({r.message["Message-ID"] for r in smtp_server.received}) == 1


def test_retry_after_data_failure_does_not_resend_to_accepted(make_app, smtp_server):
    # A 4xx after DATA means nobody got it: the retry goes to everyone again, once each.
    client = make_app(smtp_server.port).test_client()
    smtp_server.handler.script("DATA", "451 4.3.0 later")
    status = wait_final(client, accepted_id(send(client, to("a@example.com", "b@example.com"))))
    assert status["status"] == "sent"
    [received] = smtp_server.received
    assert received.rcpt_tos == ["a@example.com", "b@example.com"]


def test_deferred_recipient_that_never_accepts_is_listed_as_refused(make_app, smtp_server):
    client = make_app(smtp_server.port, max_attempts=2).test_client()
    smtp_server.handler.refuse["slow@example.com"] = "451 4.2.1 still busy"  # every time
    status = wait_final(client, accepted_id(send(client, to("slow@example.com", "ok@example.com"))))
    # Someone has the message, so it is sent; the one never reached is reported.
    assert status["status"] == "sent"
    assert status["attempts"] == 2
    assert list(status["refused"]) == ["slow@example.com"]
    # The contract's form: "<code> <text>", the recipient's own last reply.
    assert status["refused"]["slow@example.com"] == "451 4.2.1 still busy"
    assert [r.rcpt_tos for r in smtp_server.received] == [["ok@example.com"]]


# -- the pool's threads ---------------------------------------------------------------------


def test_backoff_does_not_hold_a_worker_thread(make_app, start_smtp):
    failing, healthy = start_smtp(), start_smtp()
    failing.handler.script("DATA", *["451 4.3.0 try later"] * 20)
    client = make_app(
        failing.port, other_port=healthy.port, workers=1, retry_backoff=60.0, max_attempts=5
    ).test_client()
    stuck = accepted_id(send(client))
    wait_for(lambda: status_of(client, stuck)["status"] == "retrying", timeout=5)
    quick = accepted_id(send(client, key=OTHER_KEY))
    # The stuck one's next attempt is at least 45 s away (60 s backoff, jitter 0.75): the
    # quick one is sent long before, by the only thread, which the backoff does not hold.
    status = wait_final(client, quick)
    assert status["status"] == "sent"
    assert len(healthy.received) == 1
    # Still waiting for its next attempt: the healthy send did not queue behind its backoff.
    assert status_of(client, stuck)["status"] == "retrying"
    assert status_of(client, stuck)["attempts"] == 1


def test_many_requests_are_all_delivered_once(make_app, smtp_server):
    client = make_app(smtp_server.port, workers=4).test_client()
    ids = [accepted_id(send(client, to(f"user{i}@example.com"))) for i in range(40)]
    for request_id in ids:
        assert wait_final(client, request_id)["status"] == "sent"
    rcpts = sorted(r.rcpt_tos[0] for r in smtp_server.received)
    assert rcpts == sorted(f"user{i}@example.com" for i in range(40))
    assert smtp_server.handler.connections <= 4


def test_queue_max_answers_503_with_retry_after(make_app, smtp_server):
    smtp_server.handler.script("DATA", *["451 4.3.0 later"] * 10)
    client = make_app(smtp_server.port, queue_max=2, retry_backoff=5.0).test_client()
    accepted_id(send(client))
    accepted_id(send(client))
    response = send(client)
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0


# -- drain --------------------------------------------------------------------------------------


def test_drain_returns_zero_when_idle(make_app, smtp_server):
    app = make_app(smtp_server.port)
    assert app.extensions[EXTENSION].pool.drain(5) == 0


def test_drain_waits_for_work_in_progress(make_app, smtp_server):
    app = make_app(smtp_server.port)
    client = app.test_client()
    smtp_server.handler.script("DATA", ("SLEEP", 0.3))
    request_id = accepted_id(send(client))
    assert app.extensions[EXTENSION].pool.drain(5) == 0
    assert status_of(client, request_id)["status"] == "sent"


def test_drain_marks_a_job_stuck_retrying_failed_and_logs_it(make_app, smtp_server, tmp_path: Path):
    app = make_app(smtp_server.port, retry_backoff=10.0)
    client = app.test_client()
    smtp_server.handler.script("DATA", "451 4.3.0 try later")
    request_id = accepted_id(send(client))
    wait_for(lambda: status_of(client, request_id)["status"] == "retrying", timeout=5)
    pool = app.extensions[EXTENSION].pool
    assert pool.drain(0) == 1
    status = status_of(client, request_id)
    assert status["status"] == "failed"
    assert status["error"] == "shutdown before send"
    lines = (tmp_path / "email_log.txt").read_text(encoding="utf-8").splitlines()
    final = [line for line in lines if request_id in line and "queued" not in line]
    assert len(final) == 1
    assert final[0].endswith("Status: failed (shutdown before send)")
    assert pool.unfinished() == 0


def test_after_drain_new_requests_get_503(make_app, smtp_server):
    app = make_app(smtp_server.port)
    app.extensions[EXTENSION].pool.drain(0)
    response = send(app.test_client())
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert smtp_server.handler.transactions == 0


def test_drain_deadline_during_a_send_logs_one_final_line(make_app, smtp_server, tmp_path: Path):
    # The send outlasts drain(0)'s grace: whatever the outcome, one final status and one final line.
    app = make_app(smtp_server.port, smtp_timeout=5.0)
    client = app.test_client()
    smtp_server.handler.script("DATA", ("SLEEP", 1.5))
    request_id = accepted_id(send(client))
    wait_for(lambda: smtp_server.handler.transactions == 1, timeout=5)
    pool = app.extensions[EXTENSION].pool
    pool.drain(0)
    pool.join(10)  # the worker has finished with the request
    app.extensions[EXTENSION].request_log.flush()  # and its line is in the file
    lines = (tmp_path / "email_log.txt").read_text(encoding="utf-8").splitlines()
    final = [line for line in lines if request_id in line and "Status: queued" not in line]
    assert len(final) == 1, final
    status = status_of(client, request_id)
    if status["status"] == "sent":
        assert final[0].endswith("Status: sent")
    else:
        assert status["status"] == "failed"
        assert final[0].endswith(f"Status: failed ({status['error']})")
    assert pool.unfinished() == 0


def test_421_at_mail_on_a_reused_connection_reconnects_transparently(make_app, smtp_server):
    client = make_app(smtp_server.port, workers=1).test_client()
    assert wait_final(client, accepted_id(send(client)))["status"] == "sent"
    smtp_server.handler.script("MAIL", "421 4.3.2 closing idle connection")
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "sent"
    assert status["attempts"] == 1
    assert smtp_server.handler.connections == 2
    assert len(smtp_server.received) == 2


def test_421_at_mail_on_a_fresh_connection_is_retried(make_app, smtp_server):
    client = make_app(smtp_server.port).test_client()
    smtp_server.handler.script("MAIL", "421 4.3.2 busy")
    status = wait_final(client, accepted_id(send(client)))
    assert status["status"] == "sent"
    assert status["attempts"] == 2


def test_server_that_comes_up_later_gets_the_message(make_app, start_smtp):
    port = free_port()
    client = make_app(port, retry_backoff=0.3, max_attempts=5).test_client()
    request_id = accepted_id(send(client))
    wait_for(lambda: status_of(client, request_id)["status"] == "retrying", timeout=5)
    server = start_smtp(port=port)
    status = wait_final(client, request_id)
    assert status["status"] == "sent"
    assert status["attempts"] >= 2
    assert len(server.received) == 1


def test_waiting_for_a_request_another_process_holds_reads_the_store_until_final(
    make_app, smtp_server, tmp_path
):
    """A waiting route's repeat can land on a process that never held the request: it waits
    for the final status in the store, not for an answer of its own that never comes."""
    import threading
    from dataclasses import replace

    from mailservice.stores.contract import EmailStatus, StatusRecord, utcnow

    url = f"sqlite:///{tmp_path / 'status.db'}"
    service = make_app(smtp_server.port, status_store_url=url).extensions[EXTENSION]
    other = make_app(smtp_server.port, status_store_url=url).extensions[EXTENSION]
    now = utcnow()
    record = StatusRecord(
        request_id="77777777-7777-4777-8777-000000000001",
        status=EmailStatus.SENDING,
        sender="sender@example.com",
        recipients=("a@example.com",),
        pending=("a@example.com",),
        created_at=now,
        updated_at=now,
        owner=other.pool.owner,
    )
    other.store.create(record, "{}")
    final = replace(record, status=EmailStatus.SENT, pending=(), attempts=1)
    timer = threading.Timer(0.3, other.store.save, args=(final,))
    timer.start()
    try:
        assert service.pool.wait(record.request_id, 10.0) == final
    finally:
        timer.join()
    assert service.pool.wait("77777777-7777-4777-8777-00000000ffff", 0.2) is None, "unknown"


def test_a_request_resumed_from_sending_past_its_expiry_says_it_was_possibly_delivered(
    make_app, smtp_server
):
    # Left `sending` by a process that died mid-attempt (recovery resumes it here): it may have
    # been handed to the server, so its expiry must not say it never was.
    from datetime import timedelta

    from mailservice.delivery.message_spec import MessageSpec
    from mailservice.stores.contract import EmailStatus, StatusRecord, utcnow

    service = make_app(smtp_server.port).extensions[EXTENSION]
    now = utcnow()
    record = StatusRecord(
        request_id="77777777-7777-4777-8777-000000000002",
        status=EmailStatus.SENDING,
        sender="sender@example.com",
        recipients=("a@example.com",),
        pending=("a@example.com",),
        created_at=now - timedelta(minutes=5),
        updated_at=now - timedelta(minutes=1),
        attempts=1,
        owner=service.pool.owner,
        expires_at=now - timedelta(seconds=1),
    )
    payload = MessageSpec(recipient=("a@example.com",), subject="Hi", body="x").to_json()
    service.store.create(record, payload)
    service.pool.resume(record, payload, service.senders.by_email("sender@example.com"))
    ended = wait_for(lambda: (r := service.store.get(record.request_id)).status.final and r)
    assert ended.status is EmailStatus.EXPIRED
    assert ended.error == (
        "expired: its process stopped during an attempt; an earlier attempt was possibly "
        "delivered (same Message-ID)"
    )
    assert smtp_server.received == []
