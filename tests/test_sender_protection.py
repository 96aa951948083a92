"""Each sender's account protected (issue 16), end to end on real aiosmtpd servers: a reply
that says the account is over its limit pauses that account (its messages wait, spending no
attempt, then one probe goes first), another account goes on; pacing holds across two
processes sharing a Redis store."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailservice.testing.service_process import ServiceProcess
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, OTHER_KEY, SENDER, send, wait_final, wait_for

DAILY_LIMIT = "550 5.4.5 Daily user sending limit exceeded."
RATE_LIMIT = "421 4.7.0 Try again later, closing connection. (rate limit)"


def status(client: Any, request_id: str) -> dict[str, Any]:
    return client.get(f"/email-status/{request_id}").get_json()


def accepted(response: Any) -> str:
    assert response.status_code == 202, response.get_json()
    return response.get_json()["request_id"]


@pytest.mark.parametrize("reply", [DAILY_LIMIT, RATE_LIMIT])
def test_a_paused_sender_sends_nothing_while_paused_then_resumes_and_others_go_on(
    make_app: Callable[..., Any], start_smtp: Callable[..., SmtpServer], reply: str
) -> None:
    limited, other = start_smtp(), start_smtp()
    # One sending thread, so that no second message is on its way when the first meets the
    # limit (those would meet it too, and wait in the same pause).
    app = make_app(limited.port, other_port=other.port, sender_pause_seconds=1.0, workers=1)
    client = app.test_client()
    # The first message meets the limit, and so does the probe after the first pause: the
    # second pause is twice as long, and only the probe went in between.
    limited.handler.script("MAIL", reply, reply)
    ours = [accepted(send(client)) for _ in range(5)]
    wait_for(lambda: limited.handler.transactions >= 1)
    theirs = [accepted(send(client, key=OTHER_KEY)) for _ in range(3)]
    assert all(wait_final(client, r)["status"] == "sent" for r in theirs)  # not slowed
    held = wait_for(lambda: (s := status(client, ours[0]))["status"] == "retrying" and s)
    assert held["error"].startswith("sender paused: " + reply[:9])
    assert held["attempts"] == 0  # meeting the limit spent no attempt
    assert limited.handler.transactions == 1 and limited.received == []
    wait_for(lambda: limited.handler.transactions >= 2, timeout=10)  # the probe, alone
    assert limited.handler.transactions == 2 and limited.received == []
    finals = [wait_final(client, r, timeout=20) for r in ours]
    assert [f["status"] for f in finals] == ["sent"] * 5
    assert [f["attempts"] for f in finals] == [1] * 5
    assert limited.handler.transactions == 7  # two refusals, then each message once
    assert len(other.received) == 3


def test_a_limit_reply_at_rcpt_holds_the_message_with_every_recipient(
    make_app: Callable[..., Any], smtp_server: SmtpServer
) -> None:
    client = make_app(smtp_server.port, sender_pause_seconds=0.5).test_client()
    smtp_server.handler.script("RCPT", DAILY_LIMIT, DAILY_LIMIT)
    body = {"recipient": ["a@example.com", "b@example.com"], "subject": "Hi", "body": "Hello"}
    request_id = accepted(send(client, body))
    final = wait_final(client, request_id, timeout=20)
    assert final["status"] == "sent" and final["refused"] == {}
    assert final["attempts"] == 1
    [message] = smtp_server.received
    assert sorted(message.rcpt_tos) == ["a@example.com", "b@example.com"]


def test_the_pause_shows_in_the_log_and_the_metrics(
    make_app: Callable[..., Any], smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(smtp_server.port, sender_pause_seconds=30.0, admin_token="t" * 32)
    client = app.test_client()
    smtp_server.handler.script("MAIL", DAILY_LIMIT)
    request_id = accepted(send(client))
    wait_for(lambda: status(client, request_id)["status"] == "retrying")
    assert f"sender {SENDER} paused for 30s: {DAILY_LIMIT}" in caplog.text
    operator = {"Authorization": "Bearer " + "t" * 32}
    metrics = client.get("/metrics", headers=operator)
    lines = metrics.get_data(as_text=True).splitlines()
    assert f'mail_sender_paused{{sender="{SENDER}"}} 1.0' in lines
    [paused] = client.get("/dashboard/data", headers=operator).get_json()["paused"]
    assert paused["sender"] == SENDER
    assert paused["reason"] == f"sender paused: {DAILY_LIMIT} (at MAIL FROM)"
    page = client.get("/dashboard", headers=operator).get_data(as_text=True)
    assert "Senders paused" in page and SENDER in page


# -- pacing across two processes on Redis ------------------------------------------------------

RATE = 10  # messages a second for the paced sender
COUNT = 40


def post(port: int, key: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"recipient": "user@example.com", "subject": "Paced", "body": "Hi"})
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request("POST", "/send-email", body, headers)
        answer = conn.getresponse()
        assert answer.status == 202, answer.read()
        return json.loads(answer.read())["request_id"]
    finally:
        conn.close()


@pytest.mark.redis
def test_pacing_holds_across_two_processes_on_redis(
    tmp_path: Path, smtp_server: SmtpServer, redis_server: Any
) -> None:
    senders = tmp_path / "data.csv"
    senders.write_text(
        "key,email,app_password,smtp_host,smtp_port,smtp_security,rate\n"
        f"{API_KEY},{SENDER},,127.0.0.1,{smtp_server.port},none,{RATE}/second\n"
    )
    env = {
        "SENDERS_FILE": str(senders),
        "STATUS_STORE_URL": redis_server.url,
        "RATE_LIMIT": "",
        "WORKERS": "4",
    }
    services = [
        ServiceProcess(tmp_path, {**env, "EMAIL_LOG": str(tmp_path / f"log{n}.txt")}).start()
        for n in range(2)
    ]
    try:
        for n in range(COUNT):  # alternately: each process paces its half against the other's
            post(services[n % 2].port, API_KEY)
        wait_for(lambda: len(smtp_server.received) >= COUNT, timeout=30)
    finally:
        for service in services:
            service.stop()
    times = sorted(r.at for r in smtp_server.received)
    assert len(times) == COUNT
    rate = (COUNT - 1) / (times[-1] - times[0])
    assert RATE * 0.9 <= rate <= RATE * 1.1, rate  # within 10% of the limit
    # Never faster: no second holds more than the rate allows (one more at a window's edge).
    assert max(sum(1 for t in times if start <= t < start + 1.0) for start in times) <= RATE + 1


def app_at_its_daily_limit(
    make_app: Callable[..., Any], smtp_server: SmtpServer, tmp_path: Path
) -> Any:
    """An app whose sender may send one message a day, that message sent."""
    senders = tmp_path / "limited.csv"
    senders.write_text(
        "key,email,app_password,smtp_host,smtp_port,smtp_security,daily_limit\n"
        f"{API_KEY},{SENDER},,127.0.0.1,{smtp_server.port},none,1\n"
    )
    app = make_app(smtp_server.port, senders_file=str(senders))
    client = app.test_client()
    assert wait_final(client, accepted(send(client)))["status"] == "sent"
    return app


def test_a_message_that_would_expire_waiting_for_the_daily_limit_ends_expired_at_once(
    make_app: Callable[..., Any], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    app = app_at_its_daily_limit(make_app, smtp_server, tmp_path)
    client = app.test_client()
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    body = {"recipient": "user@example.com", "subject": "Code", "body": "123", "expires_at": soon}
    final = wait_final(client, accepted(send(client, body)))
    assert final["status"] == "expired"  # not held until tomorrow, then expired
    assert len(smtp_server.received) == 1


def test_a_held_request_canceled_here_lets_go_of_its_place_at_once(
    make_app: Callable[..., Any], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    from mail_server import EXTENSION

    app = app_at_its_daily_limit(make_app, smtp_server, tmp_path)
    client = app.test_client()
    pool = app.extensions[EXTENSION].pool
    held = accepted(send(client))  # over the daily limit: held until the next UTC day
    wait_for(lambda: status(client, held)["status"] == "retrying")
    assert pool.unfinished() == 1
    answer = client.delete(f"/email-status/{held}", headers={"Authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 200 and answer.get_json()["status"] == "canceled"
    assert wait_for(lambda: pool.unfinished() == 0, timeout=5)  # not at midnight
    assert len(smtp_server.received) == 1


def test_a_temporary_refusal_of_the_login_pauses_the_account_and_fails_nothing(
    make_app: Callable[..., Any], start_smtp: Callable[..., SmtpServer]
) -> None:
    server = start_smtp(logins={SENDER: "app-password"})
    client = make_app(server.port, password="app-password", sender_pause_seconds=0.5).test_client()
    # smtplib tries PLAIN, then LOGIN: the server refuses both, as a throttled account is.
    server.handler.script("AUTH", *["454 4.7.0 Too many login attempts, try again later"] * 2)
    request_id = accepted(send(client))
    held = wait_for(lambda: (s := status(client, request_id))["status"] == "retrying" and s)
    assert held["error"].startswith("sender paused: 454 4.7.0 Too many login attempts")
    assert held["attempts"] == 0  # not a refused login: the account, for now
    final = wait_final(client, request_id, timeout=20)
    assert final["status"] == "sent" and final["attempts"] == 1
