"""Cancel (DELETE /email-status/<id>) and manual retry (POST /email-status/<id>/retry), API.md
section 4 "Cancel and retry", on every store with real SMTP servers: what can be canceled and
what not, a cancel raced against the send (never both canceled and delivered), a 550 fixed and
retried, the content kept for FAILED_CONTENT_TTL, and who may ask (404 for another key's)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mail_server import EXTENSION, create_app
from mailservice.api.answers import StatusAnswer
from mailservice.config import settings_from_mapping
from mailservice.delivery.message_spec import MessageSpec
from mailservice.stores.contract import EmailStatus, StatusRecord, WebhookState, utcnow
from mailservice.testing.celery_worker import CeleryWorker
from mailservice.testing.smtp_servers import SmtpServer
from mailservice.testing.webhook_receiver import WebhookReceiver
from tests.conftest import (
    API_KEY,
    OTHER_KEY,
    SENDER,
    STATUS_KEYS,
    celery_env,
    send,
    wait_for,
)
from tests.test_jwt_auth import sign

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FINAL = ("sent", "failed", "expired", "canceled")
RACE_ROUNDS = 30
RETRY_RACE_ROUNDS = 10
SECRET = "whk-lifecycle-secret-0123456789"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'status.db'}"
    return request.getfixturevalue("redis_server").url


def cancel(client: FlaskClient, request_id: str, headers: dict[str, str] = AUTH) -> Any:
    return client.delete(f"/email-status/{request_id}", headers=headers)


def retry(client: FlaskClient, request_id: str, headers: dict[str, str] = AUTH) -> Any:
    return client.post(f"/email-status/{request_id}/retry", headers=headers)


def status(client: FlaskClient, request_id: str) -> dict[str, Any]:
    return client.get(f"/email-status/{request_id}").get_json()


def wait_status(client: FlaskClient, request_id: str, wanted: str, timeout: float = 15.0) -> None:
    wait_for(lambda: status(client, request_id)["status"] == wanted, timeout)


def wait_final(client: FlaskClient, request_id: str, timeout: float = 15.0) -> dict[str, Any]:
    return wait_for(lambda: (s := status(client, request_id))["status"] in FINAL and s, timeout)


def accepted(client: FlaskClient, **fields: Any) -> str:
    answer = send(
        client, {"recipient": "user@example.com", "subject": "Hi", "body": "Hello", **fields}
    )
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["request_id"]


def message_ids(sink: SmtpServer) -> list[str]:
    return [received.message["Message-ID"] for received in sink.received]


def message_id(request_id: str) -> str:
    return f"<{request_id}@example.com>"


def idle(app: Flask) -> None:
    """Wait until the pool holds nothing: every job ended or was dropped."""
    wait_for(lambda: app.extensions[EXTENSION].pool.unfinished() == 0, timeout=20)


def history(app: Flask, request_id: str) -> list[str]:
    record = app.extensions[EXTENSION].store.get(request_id)
    return [str(entry.status) for entry in record.history]


def create_scheduled(app: Flask, callback_url: str | None = None) -> str:
    """A scheduled request an hour ahead, written straight into the app's store."""
    now = utcnow()
    request_id = str(uuid.uuid4())
    record = StatusRecord(
        request_id=request_id,
        status=EmailStatus.SCHEDULED,
        sender=SENDER,
        recipients=("user@example.com",),
        pending=("user@example.com",),
        created_at=now,
        updated_at=now,
        owner=app.extensions[EXTENSION].pool.owner,
        callback_url=callback_url,
        webhook=WebhookState.PENDING if callback_url else None,
        send_at=now + timedelta(hours=1),
    ).noted()
    spec = MessageSpec(recipient=("user@example.com",), subject="Later", body="Hello")
    app.extensions[EXTENSION].store.create(record, spec.to_json())
    return request_id


# -- cancel -------------------------------------------------------------------------------------


def test_a_scheduled_request_is_canceled_and_leaves_the_due_index(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str, tmp_path: Path
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url)
    client = app.test_client()
    request_id = create_scheduled(app)
    answer = cancel(client, request_id)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert set(body) == STATUS_KEYS
    StatusAnswer.model_validate(body)  # the document's answer model
    assert (body["request_id"], body["status"], body["error"]) == (request_id, "canceled", None)
    assert status(client, request_id)["status"] == "canceled"
    store = app.extensions[EXTENSION].store
    assert store.due(utcnow() + timedelta(days=1), 10) == []
    assert store.payload(request_id) is None
    assert history(app, request_id) == ["scheduled", "canceled"]
    app.extensions[EXTENSION].request_log.flush()
    log = (tmp_path / "email_log.txt").read_text()
    assert f"Request ID: {request_id}," in log and "Status: canceled" in log
    again = cancel(client, request_id)
    assert again.status_code == 409 and "canceled" in again.get_json()["detail"]
    assert smtp_server.received == []


@pytest.mark.parametrize("expiring", [False, True], ids=["plain", "expired-before-its-turn"])
def test_a_queued_request_is_canceled_and_never_sent(
    make_app: Callable[..., Flask],
    smtp_server: SmtpServer,
    store_url: str,
    caplog: pytest.LogCaptureFixture,
    expiring: bool,
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app(smtp_server.port, status_store_url=store_url, workers=1)
    client = app.test_client()
    smtp_server.handler.script("MAIL", ("SLEEP", 3.0))  # the first holds the one thread
    first = accepted(client)
    wait_status(client, first, "sending")
    # Expiring: its expires_at comes too while it waits its turn (the cancel's end stays).
    fields = {"expires_at": (utcnow() + timedelta(seconds=1)).isoformat()} if expiring else {}
    second = accepted(client, **fields)
    assert status(client, second)["status"] == "queued"
    answer = cancel(client, second)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["status"] == "canceled"
    assert wait_final(client, first)["status"] == "sent"
    idle(app)  # the canceled job left the pool (and QUEUE_MAX) when its turn came
    assert message_ids(smtp_server) == [message_id(first)]
    assert status(client, second)["status"] == "canceled"
    assert status(client, second)["attempts"] == 0
    lines = [r for r in caplog.records if second in r.getMessage()]
    assert lines and all(r.levelno < logging.WARNING for r in lines), "nothing alarming"


def test_a_retrying_request_is_canceled_and_not_tried_again(
    make_app: Callable[..., Flask],
    smtp_server: SmtpServer,
    store_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app(smtp_server.port, status_store_url=store_url, retry_backoff=3.0)
    client = app.test_client()
    smtp_server.handler.script("RCPT", "451 4.3.0 try later")
    request_id = accepted(client)
    wait_status(client, request_id, "retrying")
    answer = cancel(client, request_id)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["status"], body["attempts"], body["error"]) == ("canceled", 1, None)
    idle(app)  # its next attempt found it canceled and dropped it
    assert smtp_server.received == []
    assert smtp_server.handler.transactions == 1, "no second attempt"
    assert history(app, request_id) == ["queued", "sending", "retrying", "canceled"]
    lines = [r for r in caplog.records if request_id in r.getMessage()]
    assert all(r.levelno < logging.WARNING for r in lines), [r.getMessage() for r in lines]


def test_sending_and_final_requests_cannot_be_canceled(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url)
    client = app.test_client()
    smtp_server.handler.script("MAIL", ("SLEEP", 2.0))
    request_id = accepted(client)
    wait_status(client, request_id, "sending")
    answer = cancel(client, request_id)
    assert answer.status_code == 409
    assert answer.mimetype == "application/problem+json"
    assert "sending" in answer.get_json()["detail"]
    assert wait_final(client, request_id)["status"] == "sent"
    answer = cancel(client, request_id)
    assert answer.status_code == 409 and "sent" in answer.get_json()["detail"]
    assert status(client, request_id)["status"] == "sent"
    assert message_ids(smtp_server) == [message_id(request_id)]


def test_another_keys_request_unknown_and_malformed_ids_are_the_same_404(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url)
    client = app.test_client()
    request_id = create_scheduled(app)
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    answers = [
        cancel(client, request_id, other),
        retry(client, request_id, other),
        cancel(client, str(uuid.uuid4())),
        retry(client, str(uuid.uuid4())),
        cancel(client, "not-an-id"),
        retry(client, "not-an-id"),
    ]
    assert [a.status_code for a in answers] == [404] * 6
    assert len({a.data for a in answers}) == 1, "never tells another key's request apart"
    assert status(client, request_id)["status"] == "scheduled"
    assert cancel(client, request_id, headers={}).status_code == 401


def test_a_token_a_jwt_and_x_api_key_cancel_as_the_key_does(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    app = make_app(smtp_server.port, token_secret="token-secret-0123456789")
    client = app.test_client()
    grant = {"username": SENDER, "password": API_KEY, "grant_type": "password"}
    token = client.post("/token", data=grant).get_json()["access_token"]
    credentials = [
        {"Authorization": f"Bearer {token}"},
        {"Authorization": f"Bearer {sign({'test': 'data'}, API_KEY)}"},
        {"X-API-Key": API_KEY},
    ]
    for headers in credentials:
        request_id = create_scheduled(app)
        answer = cancel(client, request_id, headers)
        assert answer.status_code == 200, (headers, answer.get_json())


def test_rate_limit_and_auth_fail_limit_apply_as_to_sends(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    app = make_app(smtp_server.port, rate_limit="3/minute", auth_fail_limit="2/minute")
    client = app.test_client()
    accepted(client)  # one of the key's budget of 3, shared with the sends
    assert cancel(client, str(uuid.uuid4())).status_code == 404
    assert retry(client, str(uuid.uuid4())).status_code == 404
    limited = cancel(client, str(uuid.uuid4()))
    assert limited.status_code == 429 and "Retry-After" in limited.headers
    bad = {"Authorization": "Bearer wrong-key-000000000"}
    assert [cancel(client, str(uuid.uuid4()), bad).status_code for _ in range(2)] == [401, 401]
    assert cancel(client, str(uuid.uuid4()), bad).status_code == 429


def test_cancel_raced_against_the_send_is_never_both(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url)
    client = app.test_client()
    outcomes: dict[str, int] = {}
    for round_ in range(RACE_ROUNDS):
        request_id = accepted(client)
        if round_ % 2:  # every other round a little later: both sides win some rounds
            time.sleep(0.0005)
        answer = cancel(client, request_id)
        assert answer.status_code in (200, 409), answer.get_json()
        outcomes[request_id] = answer.status_code
    idle(app)
    arrived = message_ids(smtp_server)
    for request_id, code in outcomes.items():
        final = wait_final(client, request_id)["status"]
        copies = arrived.count(message_id(request_id))
        if code == 200:
            assert (final, copies) == ("canceled", 0), request_id
        else:
            assert (final, copies) == ("sent", 1), request_id
    assert len(arrived) == list(outcomes.values()).count(409)


def test_cancel_raced_against_a_retrys_next_attempt_is_never_both(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url, retry_backoff=0.004)
    client = app.test_client()
    outcomes: dict[str, int] = {}
    for round_ in range(RETRY_RACE_ROUNDS):
        smtp_server.handler.script("RCPT", "451 4.3.0 try later")
        request_id = accepted(client)

        def first_attempt_over(request_id: str = request_id) -> bool:
            now = status(client, request_id)
            return now["attempts"] >= 2 or now["status"] in ("retrying", "sent")

        wait_for(first_attempt_over, interval=0.002)
        if round_ % 2:  # every other round about when the retry is due
            time.sleep(0.004)
        answer = cancel(client, request_id)  # retrying, or its next attempt began
        assert answer.status_code in (200, 409), answer.get_json()
        outcomes[request_id] = answer.status_code
        wait_final(client, request_id)  # before the next round scripts the next 451
    idle(app)
    arrived = message_ids(smtp_server)
    for request_id, code in outcomes.items():
        final = wait_final(client, request_id)["status"]
        expected = ("canceled", 0) if code == 200 else ("sent", 1)
        assert (final, arrived.count(message_id(request_id))) == expected, request_id


def test_store_outage_is_a_503(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    from mailservice.testing.redis_server import RedisServer

    folder = tmp_path / "redis"
    folder.mkdir()
    redis = RedisServer(folder).start()
    try:
        app = make_app(smtp_server.port, status_store_url=redis.url)
        request_id = create_scheduled(app)
    finally:
        redis.stop()
    answer = cancel(app.test_client(), request_id)
    assert answer.status_code == 503 and "Retry-After" in answer.headers


def test_a_canceled_request_gets_its_webhook(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    hooks = WebhookReceiver(SECRET).start()
    try:
        app = make_app(
            smtp_server.port,
            status_store_url=store_url,
            webhook_secret=SECRET,
            webhook_allow_private=True,
            webhook_backoff=0.05,
        )
        client = app.test_client()
        request_id = create_scheduled(app, callback_url=hooks.url())
        assert cancel(client, request_id).status_code == 200
        wait_for(lambda: status(client, request_id)["webhook"] == "delivered")
        assert len(hooks.hits) == 1 and hooks.hits[0].signed
        body = hooks.hits[0].json
        assert (body["request_id"], body["status"]) == (request_id, "canceled")
    finally:
        hooks.stop()


# -- manual retry ---------------------------------------------------------------------------------


def test_a_550_fixed_and_retried_is_delivered(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str, tmp_path: Path
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url)
    client = app.test_client()
    smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
    request_id = accepted(client)
    failed = wait_final(client, request_id)
    assert failed["status"] == "failed" and "550" in failed["error"]
    answer = retry(client, request_id)
    assert answer.status_code == 202, answer.get_json()
    assert answer.headers["Location"] == f"/email-status/{request_id}"
    body = answer.get_json()
    assert set(body) == STATUS_KEYS
    StatusAnswer.model_validate(body)
    assert (body["status"], body["attempts"], body["error"], body["refused"]) == (
        "queued", 0, None, {},
    )  # fmt: skip
    sent = wait_final(client, request_id)
    assert (sent["status"], sent["attempts"], sent["refused"]) == ("sent", 1, {})
    assert message_ids(smtp_server) == [message_id(request_id)]
    assert history(app, request_id) == ["queued", "sending", "failed", "queued", "sending", "sent"]
    app.extensions[EXTENSION].request_log.flush()
    lines = [x for x in (tmp_path / "email_log.txt").read_text().splitlines() if request_id in x]
    assert [line.rpartition("Status: ")[2][:6] for line in lines] == [
        "queued", "failed", "queued", "sent",
    ]  # fmt: skip
    again = retry(client, request_id)
    assert again.status_code == 409 and "sent" in again.get_json()["detail"]


@pytest.mark.parametrize("durable", ["sqlite", "redis"])
def test_a_failed_request_is_retried_by_the_next_process_after_a_restart(
    make_app: Callable[..., Flask],
    smtp_server: SmtpServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    durable: str,
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'status.db'}"
        if durable == "sqlite"
        else request.getfixturevalue("redis_server").url
    )
    first = make_app(smtp_server.port, status_store_url=url)
    smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
    request_id = accepted(first.test_client())
    assert wait_final(first.test_client(), request_id)["status"] == "failed"
    first.extensions[EXTENSION].shutdown(5)  # the process stops; its failed content is kept
    first.extensions[EXTENSION].store.close()
    client = make_app(smtp_server.port, status_store_url=url).test_client()
    answer = retry(client, request_id)
    assert answer.status_code == 202, answer.get_json()
    again = wait_final(client, request_id)
    assert (again["status"], again["attempts"]) == ("sent", 1)
    assert message_ids(smtp_server) == [message_id(request_id)]


def test_a_failed_request_whose_content_is_gone_cannot_be_retried(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url, failed_content_ttl=0)
    assert app.extensions[EXTENSION].store.failed_content_ttl == 0
    client = app.test_client()
    smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
    request_id = accepted(client)
    assert wait_final(client, request_id)["status"] == "failed"
    answer = retry(client, request_id)
    assert answer.status_code == 409
    assert "FAILED_CONTENT_TTL" in answer.get_json()["detail"]
    assert status(client, request_id)["status"] == "failed"
    assert smtp_server.received == []


def test_a_failed_request_past_its_expires_at_cannot_be_retried(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url)
    client = app.test_client()
    smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
    expires_at = utcnow() + timedelta(seconds=1)
    request_id = accepted(client, expires_at=expires_at.isoformat())
    failed = wait_final(client, request_id)
    assert failed["status"] == "failed" and "550" in failed["error"]
    wait_for(lambda: utcnow() > expires_at, timeout=10)
    answer = retry(client, request_id)
    assert answer.status_code == 409, answer.get_json()
    assert "expires_at has passed" in answer.get_json()["detail"]
    kept = status(client, request_id)
    assert (kept["status"], kept["error"]) == ("failed", failed["error"])  # its reason kept
    assert app.extensions[EXTENSION].store.kept_payload(request_id) is not None
    assert smtp_server.received == []


def test_a_retry_waits_for_the_failures_webhook_and_reports_its_new_end(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    gate = threading.Event()
    hooks = WebhookReceiver(SECRET, gate=gate).start()
    try:
        app = make_app(
            smtp_server.port,
            status_store_url=store_url,
            webhook_secret=SECRET,
            webhook_allow_private=True,
        )
        client = app.test_client()
        smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
        request_id = accepted(client, callback_url=hooks.url())
        assert wait_final(client, request_id)["status"] == "failed"
        wait_for(lambda: hooks.arrived >= 1)  # the failure's webhook, held by the receiver
        answer = retry(client, request_id)
        assert answer.status_code == 409 and "webhook" in answer.get_json()["detail"]
        gate.set()
        wait_for(lambda: status(client, request_id)["webhook"] == "delivered")
        answer = retry(client, request_id)
        assert answer.status_code == 202 and answer.get_json()["webhook"] == "pending"
        assert wait_final(client, request_id)["status"] == "sent"
        wait_for(lambda: status(client, request_id)["webhook"] == "delivered")
        assert [hit.json["status"] for hit in hooks.hits] == ["failed", "sent"]
        assert message_ids(smtp_server) == [message_id(request_id)]
    finally:
        gate.set()
        hooks.stop()


def test_a_request_that_is_not_failed_is_not_retried(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    app = make_app(smtp_server.port)
    client = app.test_client()
    request_id = create_scheduled(app)
    answer = retry(client, request_id)
    assert answer.status_code == 409 and "scheduled" in answer.get_json()["detail"]
    assert status(client, request_id)["status"] == "scheduled"


# -- Celery -------------------------------------------------------------------------------------


def test_a_celery_worker_skips_a_canceled_request_expires_a_late_one_and_sends_a_retry(
    tmp_path: Path, smtp_server: SmtpServer, redis_server: Any
) -> None:
    env = celery_env(
        tmp_path, smtp_server.port, redis_server.port, 5, 6,
        SMTP_TIMEOUT="5", RATE_LIMIT="", LEASE_SECONDS="5",
        CELERY_VISIBILITY_TIMEOUT="120", CELERY_TASK_TIME_LIMIT="60",
    )  # fmt: skip
    app = create_app(settings_from_mapping(env))
    app.config["TESTING"] = True
    worker = None
    try:
        client = app.test_client()
        canceled = accepted(client)  # handed to the broker, where no worker takes it yet
        assert cancel(client, canceled).status_code == 200
        # Another waits in the broker past its expires_at: the worker must not send it.
        expires_at = utcnow() + timedelta(seconds=1)
        late = accepted(client, expires_at=expires_at.isoformat())
        wait_for(lambda: utcnow() > expires_at, timeout=10)
        worker_env = env | {"EMAIL_LOG": str(tmp_path / "worker_log.txt")}
        worker = CeleryWorker(tmp_path, worker_env, concurrency=1).start()
        sent = accepted(client)  # its task comes after the others', on one child
        assert wait_final(client, sent, timeout=60)["status"] == "sent"
        wait_for(lambda: "skipped" in worker.output, timeout=30)  # the canceled one's task
        ended = wait_final(client, late, timeout=30)
        assert (ended["status"], ended["error"]) == ("expired", "expired before it could be sent")
        assert message_ids(smtp_server) == [message_id(sent)]
        assert status(client, canceled)["status"] == "canceled"

        # A manual retry on Celery: refused for good, the cause fixed, retried, sent once.
        smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
        fixed = accepted(client)
        assert wait_final(client, fixed, timeout=30)["status"] == "failed"
        answer = retry(client, fixed)
        assert answer.status_code == 202, answer.get_json()
        again = wait_final(client, fixed, timeout=60)
        assert (again["status"], again["attempts"]) == ("sent", 1)
        assert message_ids(smtp_server) == [message_id(sent), message_id(fixed)]
    finally:
        app.extensions[EXTENSION].shutdown(5)
        app.extensions[EXTENSION].store.close()
        if worker is not None:
            worker.stop()


def test_a_retry_accepted_while_the_pool_still_forgets_the_failure_is_sent(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    # The pool announces a final status (Finished) before it forgets the job: a retry that
    # lands then (a long poll woken by that event, its client retrying at once) must take the
    # job's place, not find it held and be left queued for ever.
    from mailservice.events.bus import Finished

    app = make_app(smtp_server.port)
    client = app.test_client()
    answers: list[Any] = []

    def retry_on_failure(event: object) -> None:
        if isinstance(event, Finished) and event.record.status is EmailStatus.FAILED:
            answers.append(retry(client, event.record.request_id))

    app.extensions[EXTENSION].stack.events.subscribe(retry_on_failure)
    smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
    request_id = accepted(client)
    wait_for(lambda: answers)
    assert answers[0].status_code == 202, answers[0].get_json()
    assert wait_final(client, request_id)["status"] == "sent"
    assert message_ids(smtp_server) == [message_id(request_id)]
    wait_for(lambda: app.extensions[EXTENSION].pool.unfinished() == 0)
