"""GET /email-status/<id>?wait=N (API.md section 4): the parameter's bounds, and an answer as
soon as the request is final (in this process or another on the same store)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mail_server import EXTENSION
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import STATUS_KEYS, send, wait_final, wait_for

UNKNOWN = "00000000-0000-4000-8000-000000000000"


class LongPoll:
    """One GET /email-status/<id>?wait=N through the test client, on a thread of its own."""

    def __init__(self, client: FlaskClient, request_id: str, wait: float = 30) -> None:
        self.answer: Any = None
        self.thread = threading.Thread(
            target=lambda: setattr(
                self, "answer", client.get(f"/email-status/{request_id}?wait={wait}")
            )
        )
        self.thread.start()

    def result(self, timeout: float = 20.0) -> Any:
        """The answer; fails if it is not in within `timeout` (less than the wait asked)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"no answer within {timeout} s"
        return self.answer


BAD_WAITS = ["0", "-1", "30.5", "31", "abc", "", "nan", "inf", "1e3", "1_0", " 5", "0x1"]


@pytest.mark.parametrize("value", BAD_WAITS)
def test_a_wait_that_is_not_a_number_from_0_to_30_is_400_naming_it(
    client: FlaskClient, value: str
) -> None:
    for request_id in (send(client).get_json()["request_id"], UNKNOWN):
        answer = client.get(f"/email-status/{request_id}", query_string={"wait": value})
        assert answer.status_code == 400, value
        assert answer.mimetype == "application/problem+json"
        assert [error["field"] for error in answer.get_json()["errors"]] == ["wait"]


def test_wait_given_twice_is_400(client: FlaskClient) -> None:
    request_id = send(client).get_json()["request_id"]
    answer = client.get(f"/email-status/{request_id}?wait=1&wait=2")
    assert answer.status_code == 400
    assert answer.get_json()["errors"][0]["field"] == "wait"


def test_without_wait_or_for_an_unknown_id_the_answer_is_at_once(client: FlaskClient) -> None:
    assert client.get(f"/email-status/{UNKNOWN}?wait=30").status_code == 404
    assert client.get("/email-status/not-a-uuid?wait=30").status_code == 404
    request_id = send(client).get_json()["request_id"]
    assert client.get(f"/email-status/{request_id}").status_code == 200


def test_a_final_request_is_answered_at_once(client: FlaskClient) -> None:
    request_id = send(client).get_json()["request_id"]
    wait_final(client, request_id)
    poll = LongPoll(client, request_id, wait=30)
    answer = poll.result(timeout=10)
    assert answer.status_code == 200
    body = answer.get_json()
    assert set(body) == STATUS_KEYS and body["status"] == "sent"


def test_a_request_in_progress_is_answered_when_it_is_sent(
    app: Flask, client: FlaskClient, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.script("DATA", ("SLEEP", 3))  # the message waits at DATA
    request_id = send(client).get_json()["request_id"]
    poll = LongPoll(client, request_id, wait=30)
    watch = app.extensions[EXTENSION].stack.watch
    wait_for(lambda: watch.waiting == 1)
    answer = poll.result(timeout=20)  # well before the 30 s asked: it ended meanwhile
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "sent"
    assert answer.get_json()["attempts"] == 1
    assert watch.waiting == 0


def test_a_request_another_process_sends_wakes_a_waiter_here(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    # Two apps on one SQLite file, as two gunicorn workers: one sends, the other's client waits.
    store = f"sqlite:///{tmp_path / 'status.db'}"
    sender = make_app(smtp_server.port, status_store_url=store)
    waiter = make_app(
        smtp_server.port, status_store_url=store, email_log=str(tmp_path / "other_log.txt")
    )
    smtp_server.handler.script("DATA", ("SLEEP", 3))
    request_id = send(sender.test_client()).get_json()["request_id"]
    poll = LongPoll(waiter.test_client(), request_id, wait=30)
    answer = poll.result(timeout=20)
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "sent"


def test_a_waiter_answers_its_current_status_when_time_is_up(
    client: FlaskClient, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.script("DATA", ("SLEEP", 4))
    request_id = send(client).get_json()["request_id"]
    answer = client.get(f"/email-status/{request_id}?wait=0.5")
    assert answer.status_code == 200
    assert answer.get_json()["status"] in ("queued", "sending")
