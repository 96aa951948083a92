"""Several processes on one Redis: shared status, shared rate limit, and Redis outages."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from mailservice.testing.redis_server import RedisServer
from mailservice.testing.service_process import ServiceProcess
from tests.conftest import API_KEY, OTHER_KEY, send, wait_final, wait_for, write_senders

pytestmark = pytest.mark.redis

MESSAGE = {"recipient": "user@example.com", "subject": "Hi", "body": "Hello"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    """A redis-server of this test's own, which the test may stop and start again."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_redis_store_records_and_reports_a_send(make_app, smtp_server, redis_server):
    app = make_app(smtp_server.port, status_store_url=redis_server.url)
    client = app.test_client()
    response = send(client)
    assert response.status_code == 202
    status = wait_final(client, response.get_json()["request_id"])
    assert status["status"] == "sent"
    assert len(smtp_server.received) == 1


def test_two_processes_share_status_and_rate_limit(tmp_path, smtp_server, redis_server):
    senders = write_senders(tmp_path / "data.csv", smtp_server.port)
    env = {
        "SENDERS_FILE": str(senders),
        "SMTP_SECURITY": "none",
        "STATUS_STORE_URL": redis_server.url,
        "RATE_LIMIT": "5/minute",
        "RATE_LIMIT_STORAGE_URL": redis_server.url.replace("/0", "/1"),
        "EMAIL_LOG": str(tmp_path / "email_log.txt"),
        "TOKEN_SECRET": "shared-secret-for-both",
    }
    first = ServiceProcess(tmp_path, env).start()
    second = ServiceProcess(tmp_path, env).start()
    try:
        status, headers, body = first.request("POST", "/send-email", MESSAGE, AUTH)
        assert status == 202
        request_id = body["request_id"]

        def sent_seen_by_second() -> bool:
            code, _, seen = second.request("GET", f"/email-status/{request_id}")
            return code == 200 and seen["status"] == "sent"

        wait_for(sent_seen_by_second)
        codes = [status]
        for i in range(9):
            process = second if i % 2 == 0 else first
            code, headers, _ = process.request("POST", "/send-email", MESSAGE, AUTH)
            codes.append(code)
            assert "X-RateLimit-Limit" in headers
            if code == 429:
                assert int(headers["Retry-After"]) >= 0
        assert codes.count(202) == 5, codes
        assert codes.count(429) == 5, codes
        wait_for(lambda: len(smtp_server.received) == 5)
    finally:
        assert first.stop() == 0
        assert second.stop() == 0


def test_redis_outage_is_503_then_service_resumes_without_restart(
    make_app, smtp_server, own_redis, caplog
):
    app = make_app(smtp_server.port, status_store_url=own_redis.url)
    client = app.test_client()
    first = send(client)
    assert first.status_code == 202
    request_id = first.get_json()["request_id"]
    wait_final(client, request_id)

    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="mailservice.stores.redis_store"):
        for _ in range(5):
            refused = send(client)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"].isdigit()
            assert refused.mimetype == "application/problem+json"
        assert client.get(f"/email-status/{request_id}").status_code == 503
        assert client.get("/readyz").status_code == 503
    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_lines) == 1, "an outage is logged once, not once per request"

    own_redis.start()
    assert client.get(f"/email-status/{request_id}").status_code in (200, 404)
    again = send(client)
    assert again.status_code == 202
    assert wait_final(client, again.get_json()["request_id"])["status"] == "sent"
    assert client.get("/readyz").status_code == 200
    # Nothing was accepted while Redis was away: only the two accepted requests arrived.
    wait_for(lambda: len(smtp_server.received) == 2)


def test_rate_limit_on_redis_storage_that_is_down_falls_back_to_memory(
    make_app, smtp_server, own_redis
):
    app = make_app(smtp_server.port, rate_limit="2/minute", rate_limit_storage_url=own_redis.url)
    client = app.test_client()
    own_redis.stop()
    codes = [send(client).status_code for _ in range(3)]
    assert codes == [202, 202, 429]


def test_rate_limit_headers_and_429_problem(make_app, smtp_server):
    app = make_app(smtp_server.port, rate_limit="3/minute")
    client = app.test_client()
    answers = [send(client) for _ in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    for answer in answers:
        assert answer.headers["X-RateLimit-Limit"] == "3"
        assert "X-RateLimit-Remaining" in answer.headers
        assert "X-RateLimit-Reset" in answer.headers
    limited = answers[-1]
    assert limited.mimetype == "application/problem+json"
    assert limited.get_json()["status"] == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert API_KEY not in limited.get_data(as_text=True)
    # Another key has its own budget.
    assert send(client, key=OTHER_KEY).status_code == 202


def test_rate_limit_without_key_counts_per_address(make_app, smtp_server):
    app = make_app(smtp_server.port, rate_limit="2/minute")
    client = app.test_client()
    codes = [send(client, key="").status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    assert send(client).status_code == 202, "a keyed request has its own budget"


def test_key_in_json_body_is_limited_per_key(make_app, smtp_server):
    app = make_app(smtp_server.port, rate_limit="1/minute")
    client = app.test_client()
    body = {**MESSAGE, "key": API_KEY}
    assert send(client, body, key="").status_code == 202
    assert send(client, body, key="").status_code == 429
    assert send(client, {**MESSAGE, "key": OTHER_KEY}, key="").status_code == 202
