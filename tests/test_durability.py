"""A 202 is a promise: kill -9, restarts, shutdown, overload and repeats lose nothing."""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mailservice.testing.ports import free_port
from mailservice.testing.service_process import ServiceProcess
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, send, wait_final, wait_for, write_senders

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def message(i: int) -> dict[str, Any]:
    return {"recipient": f"user{i}@example.com", "subject": f"n{i}", "body": "hello"}


@pytest.fixture(params=["sqlite", "redis"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'status.db'}"
    return request.getfixturevalue("redis_server").url


def service_env(tmp_path: Path, smtp_port: int, store_url: str, **extra: str) -> dict[str, str]:
    senders = write_senders(tmp_path / "data.csv", smtp_port)
    return {
        "SENDERS_FILE": str(senders),
        "SMTP_SECURITY": "none",
        "SMTP_TIMEOUT": "2",
        "STATUS_STORE_URL": store_url,
        "RATE_LIMIT": "",
        "EMAIL_LOG": str(tmp_path / "email_log.txt"),
        "RETRY_BACKOFF": "0.2",
        "MAX_ATTEMPTS": "100",
        "LEASE_SECONDS": "1.5",
        "QUEUE_MAX": "1000",
        "DRAIN_SECONDS": "2",
        "SMTP_SERVER_PAUSE": "0.5",
        **extra,
    }


def message_ids(server: SmtpServer) -> Counter[str]:
    return Counter(str(r.message["Message-ID"]) for r in server.received)


def test_kill_9_then_restart_delivers_every_accepted_request_once(tmp_path, durable_url):
    smtp_port = free_port()  # nothing listens yet: every attempt fails transiently
    env = service_env(tmp_path, smtp_port, durable_url)
    first = ServiceProcess(tmp_path, env).start()
    accepted = []
    for i in range(300):
        status, _, body = first.request("POST", "/send-email", message(i), AUTH)
        assert status == 202
        accepted.append(body["request_id"])
    first.stop(signal.SIGKILL)

    server = SmtpServer(port=smtp_port).start()
    # Two processes come up on the same store and compete for the orphans.
    second = ServiceProcess(tmp_path, env).start()
    third = ServiceProcess(tmp_path, env).start()
    try:
        wait_for(lambda: len(server.received) >= 300, timeout=60)
        for request_id in accepted[::30]:
            _, _, status = third.request("GET", f"/email-status/{request_id}")
            assert status["status"] == "sent"
        counts = message_ids(server)
        assert len(counts) == 300
        assert max(counts.values()) == 1, "no request was sent twice"
        assert set(counts) == {f"<{r}@example.com>" for r in accepted}
    finally:
        assert second.stop() == 0
        assert third.stop() == 0
        server.stop()


def test_sigterm_drains_then_leaves_the_rest_recorded_for_the_next_process(tmp_path, durable_url):
    smtp_port = free_port()
    env = service_env(tmp_path, smtp_port, durable_url, DRAIN_SECONDS="0.5")
    first = ServiceProcess(tmp_path, env).start()
    ids = [
        first.request("POST", "/send-email", message(i), AUTH)[2]["request_id"] for i in range(5)
    ]
    assert first.stop(signal.SIGTERM) == 0
    assert "5 request(s) left unsent" in first.output

    server = SmtpServer(port=smtp_port).start()
    second = ServiceProcess(tmp_path, env).start()
    try:
        wait_for(lambda: len(server.received) == 5, timeout=30)
        assert set(message_ids(server)) == {f"<{r}@example.com>" for r in ids}
    finally:
        assert second.stop() == 0
        server.stop()


def test_sigterm_with_memory_store_logs_each_unsent_request_as_failed(tmp_path):
    env = service_env(tmp_path, free_port(), "memory://", DRAIN_SECONDS="0.5")
    process = ServiceProcess(tmp_path, env).start()
    ids = [
        process.request("POST", "/send-email", message(i), AUTH)[2]["request_id"] for i in range(3)
    ]
    assert process.stop(signal.SIGTERM) == 0
    log = (tmp_path / "email_log.txt").read_text()
    for request_id in ids:
        assert re.search(
            rf"Request ID: {request_id}, .* Status: failed \(shutdown before send\)", log
        )


def test_sigterm_finishes_sends_in_progress(tmp_path, smtp_server):
    smtp_server.handler.script("DATA", ("SLEEP", 1.0))
    env = service_env(tmp_path, smtp_server.port, "memory://", DRAIN_SECONDS="10")
    process = ServiceProcess(tmp_path, env).start()
    status, _, body = process.request("POST", "/send-email", message(1), AUTH)
    assert status == 202
    wait_for(lambda: smtp_server.handler.transactions >= 1)
    assert process.stop(signal.SIGTERM) == 0
    assert len(smtp_server.received) == 1
    assert f"Request ID: {body['request_id']}" in (tmp_path / "email_log.txt").read_text()
    assert "Status: sent" in (tmp_path / "email_log.txt").read_text()


def test_queue_max_answers_503_with_retry_after(make_app):
    app = make_app(free_port(), queue_max=3, max_attempts=100, retry_backoff=5)
    client = app.test_client()
    assert [send(client).status_code for _ in range(3)] == [202, 202, 202]
    full = send(client)
    assert full.status_code == 503
    assert full.headers["Retry-After"].isdigit()
    assert full.mimetype == "application/problem+json"
    assert client.get("/readyz").status_code == 503


def test_smtp_down_at_start_then_up_delivers(make_app):
    port = free_port()
    app = make_app(port, max_attempts=50, retry_backoff=0.1)
    client = app.test_client()
    request_id = send(client).get_json()["request_id"]
    wait_for(lambda: client.get(f"/email-status/{request_id}").get_json()["attempts"] >= 2)
    server = SmtpServer(port=port).start()
    try:
        status = wait_final(client, request_id)
        assert status["status"] == "sent"
        assert status["attempts"] >= 2
        assert len(server.received) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("store", ["memory", "sqlite", "redis"])
def test_idempotency_key_returns_the_first_answer_and_sends_once(
    store, make_app, smtp_server, tmp_path, request
):
    url = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp_path / 'idem.db'}",
    }.get(store) or request.getfixturevalue("redis_server").url
    client = make_app(smtp_server.port, status_store_url=url).test_client()
    headers = {"Idempotency-Key": "order-42-welcome"}
    first = send(client, headers=headers)
    again = send(client, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.get_json() == again.get_json()
    wait_final(client, first.get_json()["request_id"])
    other = send(client, {**message(2)}, headers=headers)
    assert other.status_code == 409
    assert other.mimetype == "application/problem+json"
    assert len(smtp_server.received) == 1
    bad = send(client, headers={"Idempotency-Key": "x" * 256})
    assert bad.status_code == 400


def test_a_repeat_that_would_be_refused_now_gets_the_first_answer(make_app, smtp_server, tmp_path):
    """Two processes on one store: the first renders a template the second lacks. A repeat
    on the second is told apart by its key and body before its fields are checked, and gets
    the first 202; it sends nothing."""
    folder = tmp_path / "templates" / "welcome"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Welcome {{ name }}\n", encoding="utf-8")
    (folder / "body.txt").write_text("Hello {{ name }}\n", encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'status.db'}"
    first_app = make_app(smtp_server.port, status_store_url=url, templates_dir=str(folder.parent))
    first_client = first_app.test_client()
    other_client = make_app(smtp_server.port, status_store_url=url).test_client()
    body = {"recipient": "ada@example.com", "template": "welcome", "variables": {"name": "Ada"}}
    headers = {"Idempotency-Key": "welcome-ada"}
    first = send(first_client, body, headers=headers)
    assert first.status_code == 202
    refused = send(other_client, body)
    assert refused.status_code == 400 and refused.get_json()["errors"][0]["field"] == "template"
    again = send(other_client, body, headers=headers)
    assert again.status_code == 202 and again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    changed = send(other_client, {**body, "variables": {"name": "Bob"}}, headers=headers)
    assert changed.status_code == 400, "another body under the key: its fields answer first"
    assert wait_final(first_client, first.get_json()["request_id"])["status"] == "sent"
    assert [r.message["Subject"] for r in smtp_server.received] == ["Welcome Ada"]


def test_idempotency_key_is_shared_across_processes(tmp_path, smtp_server, redis_server):
    env = service_env(tmp_path, smtp_server.port, redis_server.url)
    first = ServiceProcess(tmp_path, env).start()
    second = ServiceProcess(tmp_path, env).start()
    try:
        headers = {**AUTH, "Idempotency-Key": "signup-7"}
        a = first.request("POST", "/send-email", message(7), headers)
        b = second.request("POST", "/send-email", message(7), headers)
        assert a[0] == b[0] == 202
        assert a[2] == b[2]
        wait_for(lambda: len(smtp_server.received) == 1)
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
    assert len(smtp_server.received) == 1


def test_kill_9_during_data_sends_each_request_at_most_twice_with_one_message_id(
    tmp_path, durable_url
):
    server = SmtpServer().start()
    # Every DATA of the first process is slow: it dies with messages handed over but
    # unconfirmed, the case where the server may already have the message.
    server.handler.script("DATA", *[("SLEEP", 3.0)] * 8)
    env = service_env(tmp_path, server.port, durable_url, SMTP_TIMEOUT="10")
    first = ServiceProcess(tmp_path, env).start()
    accepted = [
        first.request("POST", "/send-email", message(i), AUTH)[2]["request_id"] for i in range(20)
    ]
    wait_for(lambda: server.handler.transactions >= 1)
    first.stop(signal.SIGKILL)
    second = ServiceProcess(tmp_path, env).start()
    try:
        expected = {f"<{r}@example.com>" for r in accepted}
        wait_for(lambda: set(message_ids(server)) >= expected, timeout=60)
        counts = message_ids(server)
        assert set(counts) == expected, "every accepted request was delivered"
        assert max(counts.values()) <= 2, "at most twice, and a copy has the same Message-ID"
    finally:
        assert second.stop() == 0
        server.stop()
