"""The send path on both dispatchers: each test runs once with the thread pool and once with
Celery (API.md section 13), on a real redis-server, real Celery worker processes and a real
aiosmtpd sink, and must see the same answers, statuses, messages, log lines and webhooks.

The API is the Flask test client of an app built by `create_app()` in this process; with
`DISPATCHER=celery` it only records and hands over, and a `celery -A mailservice.celery_worker
worker` process with two prefork children sends, reading the same settings from its
environment. One sink, one webhook receiver and one worker serve every test of a dispatcher;
each test tells its own messages by their Message-ID (`<request_id@domain>`).
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from mail_server import EXTENSION, METRICS, create_app
from mailservice.config import Settings, settings_from_mapping
from mailservice.testing.celery_worker import CeleryWorker
from mailservice.testing.ports import free_port
from mailservice.testing.redis_server import RedisServer
from mailservice.testing.smtp_servers import Received, SmtpServer
from mailservice.testing.webhook_receiver import WebhookReceiver, verify
from tests.conftest import API_KEY, SENDER, wait_for, write_senders

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SECRET = "send-path-webhook-secret"
DISPATCHERS = ("thread", "celery")
# Redis databases: the thread pool's store, the Celery deployment's store and its broker.
DATABASES = {"thread": (2, None), "celery": (3, 4)}
FINAL = ("sent", "failed")


@dataclass
class SendPath:
    """One dispatcher's deployment: the API's test client, the sink, the logs, the receiver."""

    dispatcher: str
    app: Flask
    client: FlaskClient
    sink: SmtpServer
    receiver: WebhookReceiver
    logs: tuple[Path, ...]  # the request logs: the API's, and the worker's with Celery
    metrics_port: int  # the worker's WORKER_METRICS_PORT with Celery, else 0

    def send(self, body: dict[str, Any], route: str = "/send-email", **headers: str) -> Any:
        return self.client.post(route, json=body, headers={**AUTH, **headers})

    def final(self, request_id: str, timeout: float = 20.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.client.get(f"/email-status/{request_id}", headers=AUTH).get_json()
            return body if body and body["status"] in FINAL else None

        return wait_for(done, timeout, interval=0.02)

    def arrived(self, request_id: str) -> list[Received]:
        """What the sink got of this request (every attempt shares its Message-ID)."""
        wanted = f"<{request_id}@example.com>"
        return [m for m in list(self.sink.received) if m.message["Message-ID"] == wanted]

    def log_lines(self, request_id: str) -> list[str]:
        lines = []
        for path in self.logs:
            if path.exists():
                lines += [ln for ln in path.read_text().splitlines() if request_id in ln]
        return lines


@pytest.fixture(scope="module")
def redis_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=DISPATCHERS)
def path(
    request: pytest.FixtureRequest,
    redis_module: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SendPath]:
    dispatcher = request.param
    folder = tmp_path_factory.mktemp(f"send-{dispatcher}")
    sink = SmtpServer().start()
    receiver = WebhookReceiver(SECRET).start()
    store_db, broker_db = DATABASES[dispatcher]
    base = f"redis://127.0.0.1:{redis_module.port}"
    for db in (store_db, broker_db):
        if db is not None:
            redis.Redis(port=redis_module.port, db=db).flushdb()
    senders = write_senders(folder / "data.csv", sink.port)
    env = {
        "SENDERS_FILE": str(senders),
        "EMAIL_LOG": str(folder / "email_log.txt"),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(sink.port),
        "SMTP_SECURITY": "none",
        "SMTP_TIMEOUT": "5",
        "SMTP_DATA_TIMEOUT": "10",
        "MAX_RECIPIENTS": "10",
        "WORKERS": "2",
        "RETRY_BACKOFF": "0.1",
        "MAX_ATTEMPTS": "3",
        "RATE_LIMIT": "",
        "LEASE_SECONDS": "5",
        "STATUS_STORE_URL": f"{base}/{store_db}",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_PRIVATE": "1",
        "WEBHOOK_BACKOFF": "0.2",
        "PIN_CPUS": "0",
        "SENDER_PAUSE_SECONDS": "1",
    }
    worker = None
    metrics_port = 0
    logs = [folder / "email_log.txt"]
    if dispatcher == "celery":
        env |= {
            "DISPATCHER": "celery",
            "CELERY_BROKER_URL": f"{base}/{broker_db}",
            "CELERY_VISIBILITY_TIMEOUT": "120",
            "CELERY_TASK_TIME_LIMIT": "60",
        }
        metrics_port = free_port()
        worker_env = env | {
            "EMAIL_LOG": str(folder / "worker_log.txt"),
            "WORKER_METRICS_PORT": str(metrics_port),
        }
        logs.append(folder / "worker_log.txt")
        worker = CeleryWorker(folder, worker_env, concurrency=2).start()
    settings: Settings = settings_from_mapping(env)
    app = create_app(settings)
    app.config["TESTING"] = True
    yield SendPath(dispatcher, app, app.test_client(), sink, receiver, tuple(logs), metrics_port)
    app.extensions[EXTENSION].shutdown(5)
    app.extensions[EXTENSION].store.close()
    if worker is not None:
        worker.stop()
    receiver.stop()
    sink.stop()


def message(**fields: Any) -> dict[str, Any]:
    return {"recipient": "user@example.com", "subject": "Hi", "body": "Hello", **fields}


def delivered(path: SendPath, body: dict[str, Any], route: str = "/send-email") -> dict[str, Any]:
    answer = path.send(body, route)
    assert answer.status_code == 202, answer.get_json()
    status = path.final(answer.get_json()["request_id"])
    assert status["status"] == "sent", status
    return status


def test_a_send_is_delivered_once_with_its_message_id(path):
    status = delivered(path, message(subject="Once"))
    request_id = status["request_id"]
    got = wait_for(lambda: path.arrived(request_id))
    assert len(got) == 1
    assert got[0].mail_from == SENDER
    assert got[0].message["Subject"] == "Once"
    assert status["attempts"] == 1


def test_the_status_answer_and_history_are_the_same_on_both(path):
    status = delivered(path, message())
    assert status["sender"] == SENDER and status["recipients"] == ["user@example.com"]
    history = path.app.extensions[EXTENSION].store.get(status["request_id"]).history
    assert [entry.status for entry in history] == ["queued", "sending", "sent"]


def test_the_request_log_has_the_queued_and_the_sent_line(path):
    request_id = delivered(path, message())["request_id"]
    lines = wait_for(lambda: (got := path.log_lines(request_id)) and len(got) >= 2 and got)
    assert [line.rsplit("Status: ", 1)[1] for line in lines] == ["queued", "sent"]
    # With Celery the worker sent it: the sent line is its own log's, on its host.
    assert any(request_id in line for line in path.logs[-1].read_text().splitlines()[-50:])
    if path.dispatcher == "celery":
        api_log = path.logs[0].read_text()
        assert f"Request ID: {request_id}" in api_log and "Status: sent" not in api_log


def test_bcc_goes_in_the_envelope_and_never_in_the_headers(path):
    body = message(to=["a@example.com"], cc=["c@example.com"], bcc=["hidden@example.com"])
    body.pop("recipient")
    request_id = delivered(path, body)["request_id"]
    (got,) = wait_for(lambda: path.arrived(request_id))
    assert sorted(got.rcpt_tos) == ["a@example.com", "c@example.com", "hidden@example.com"]
    assert got.message["Bcc"] is None and "hidden" not in got.content.decode()


def test_html_with_an_attachment_arrives_whole(path):
    pdf = b"%PDF-1.4 tiny"
    body = message(
        body=None,
        text="Hello",
        html="<p>Hello</p>",
        attachments=[
            {
                "filename": "invoice.pdf",
                "content": base64.b64encode(pdf).decode(),
                "content_type": "application/pdf",
            }
        ],
    )
    request_id = delivered(path, body)["request_id"]
    (got,) = wait_for(lambda: path.arrived(request_id))
    parts = {part.get_filename(): part for part in got.message.iter_attachments()}
    assert got.message.get_body(("plain",)).get_content().strip() == "Hello"
    assert parts["invoice.pdf"].get_content() == pdf
    assert got.message.get_body(("html",)).get_content().strip() == "<p>Hello</p>"


def test_a_template_is_rendered_before_it_is_handed_over(path):
    variables = {
        "app_name": "Acme",
        "link": "https://acme.example/r?t=1",
        "name": "Ada",
        "code": "1",
    }
    body = {"to": "ada@example.com", "template": "reset-password", "variables": variables}
    request_id = delivered(path, body)["request_id"]
    (got,) = wait_for(lambda: path.arrived(request_id))
    assert "Acme" in got.message["Subject"]
    assert "https://acme.example/r?t=1" in got.message.get_body(("plain",)).get_content()


def test_a_batch_is_delivered_each_once(path):
    messages = [message(recipient=f"b{n}@example.com", subject=f"B{n}") for n in range(5)]
    answer = path.client.post("/send-email/batch", json={"messages": messages}, headers=AUTH)
    assert answer.status_code == 202, answer.get_json()
    ids = [item["request_id"] for item in answer.get_json()["messages"]]
    for request_id in ids:
        assert path.final(request_id)["status"] == "sent"
    for request_id in ids:
        assert len(wait_for(lambda rid=request_id: path.arrived(rid))) == 1


def test_an_older_services_waiting_route_answers_with_the_outcome(path):
    # The seed Flask service's /mail answers when the message is sent: with Celery, the API
    # process waits on the store for the worker's outcome.
    seed = {"recipient": "seed@example.com", "subject": "Email Subject", "body": "Email Body"}
    answer = path.client.post("/mail", json=seed, headers={**AUTH, "Accept": "*/*"})
    assert answer.status_code == 200
    assert answer.get_data(as_text=True) == "message Sent"
    request_id = answer.headers["X-Request-Id"]
    assert len(path.arrived(request_id)) == 1  # already there when /mail answers


def test_a_451_is_retried_with_the_same_message_id_and_then_sent(path):
    path.sink.handler.script("DATA", "451 4.3.0 try again later")
    status = delivered(path, message(subject="Retried"))
    assert status["attempts"] == 2
    got = wait_for(lambda: path.arrived(status["request_id"]))
    assert len(got) == 1  # the 451 kept nothing
    history = path.app.extensions[EXTENSION].store.get(status["request_id"]).history
    assert [e.status for e in history] == ["queued", "sending", "retrying", "sending", "sent"]


def test_a_550_ends_failed_with_the_servers_reason(path):
    path.sink.handler.script("RCPT", "550 5.1.1 no such user")
    answer = path.send(message(recipient="nobody@example.com"))
    status = path.final(answer.get_json()["request_id"])
    assert status["status"] == "failed"
    assert "5.1.1" in status["error"]
    assert status["refused"] == {"nobody@example.com": "550 5.1.1 no such user"}


def test_a_recipient_refused_as_unknown_is_suppressed_and_never_asked_again(path):
    gone = f"gone-{path.dispatcher}@example.com"
    path.sink.handler.refuse[gone] = "550 5.1.1 no such user"
    first = delivered(path, message(recipient=[gone, "user@example.com"]))
    assert first["refused"] == {gone: "550 5.1.1 no such user"}
    # The worker (with Celery) recorded it; the next send, sent by a worker too, skips it.
    again = path.send(message(recipient=[gone]))
    status = path.final(again.get_json()["request_id"])
    assert status["status"] == "failed"
    assert status["refused"] == {gone: "suppressed: 550 5.1.1 no such user"}
    assert path.sink.handler.asked.count(gone) == 1, "the server was asked once"


def test_an_idempotency_key_repeat_is_one_request_and_one_message(path):
    headers = {"Idempotency-Key": f"send-path-{path.dispatcher}"}
    first = path.send(message(subject="Idem"), **headers)
    second = path.send(message(subject="Idem"), **headers)
    assert first.status_code == 202 and second.status_code == 202
    request_id = first.get_json()["request_id"]
    assert second.get_json()["request_id"] == request_id
    assert path.final(request_id)["status"] == "sent"
    assert len(wait_for(lambda: path.arrived(request_id))) == 1


def test_the_callback_url_gets_the_signed_final_status(path):
    answer = path.send(message(callback_url=path.receiver.url(f"/hook/{path.dispatcher}")))
    request_id = answer.get_json()["request_id"]
    assert path.final(request_id)["status"] == "sent"

    def hit() -> Any:
        hits = [
            h for h in list(path.receiver.hits) if json.loads(h.body)["request_id"] == request_id
        ]
        return hits

    (got,) = wait_for(hit, timeout=20)
    assert verify(SECRET, got.headers, got.body)
    assert json.loads(got.body)["status"] == "sent"
    record = wait_for(lambda: (r := path.app.extensions[EXTENSION].store.get(request_id)) and
                      r.webhook == "delivered" and r)  # fmt: skip
    assert record.webhook == "delivered"


def test_the_outcomes_are_counted_where_they_happen(path):
    # The thread pool counts in the API process (/metrics); a Celery worker counts in its
    # children and serves their sum at WORKER_METRICS_PORT.
    delivered(path, message(subject="Counted"))

    def sent_total() -> float:
        if path.dispatcher == "thread":
            text = path.app.extensions[METRICS].render().decode()
        else:
            url = f"http://127.0.0.1:{path.metrics_port}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        values = [
            ln.split()[-1] for ln in text.splitlines() if ln.startswith("mail_requests_sent_total")
        ]
        return float(values[0]) if values else 0.0

    assert wait_for(lambda: sent_total() >= 1, timeout=15)


def test_a_long_poll_answers_once_the_request_is_sent(path):
    # With Celery the API process never sees the outcome's event: its poller reads the store.
    path.sink.handler.script("DATA", ("SLEEP", 2))
    answer = path.send(message(subject="Waited for"))
    assert answer.status_code == 202
    request_id = answer.get_json()["request_id"]
    got: list[Any] = []
    poll = threading.Thread(
        target=lambda: got.append(path.client.get(f"/email-status/{request_id}?wait=30"))
    )
    poll.start()
    poll.join(20)  # answered when sent, not when its 30 s are over
    assert got, "no answer within 20 s of a 30 s wait"
    assert got[0].status_code == 200
    assert got[0].get_json()["status"] == "sent"
    assert len(path.arrived(request_id)) == 1


def test_a_sender_over_its_limit_waits_for_the_pause_without_spending_the_attempt(path):
    # The gate's pause is in the store's Redis, which the API process and the workers share.
    path.sink.handler.script("MAIL", "550 5.4.5 Daily user sending limit exceeded.")
    answer = path.send(message(subject="Held"))
    assert answer.status_code == 202
    request_id = answer.get_json()["request_id"]

    def held() -> dict[str, Any] | None:
        body = path.client.get(f"/email-status/{request_id}", headers=AUTH).get_json()
        return body if body["status"] == "retrying" else None

    status = wait_for(held, timeout=20, interval=0.02)
    assert status["error"].startswith("sender paused: 550 5.4.5 Daily user sending limit")
    assert status["attempts"] == 0
    final = path.final(request_id)
    assert final["status"] == "sent" and final["attempts"] == 1
    assert len(path.arrived(request_id)) == 1
