"""The seed systems' routes (API.md section 7), each driven by the example its document shows.

Every test sends the seed's example request as it stands (adding only a key) to the service,
which sends to a real aiosmtpd server; the answer's shape and the message received are checked.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from mail_server import EXTENSION
from tests.conftest import API_KEY, OTHER_SENDER, SENDER, send, wait_final, wait_for

AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The example requests of the seeds' documents (000 and 004), verbatim.
SEED_000_EXAMPLE = {
    "recipient": "example@example.com",
    "subject": "Email Subject",
    "body": "Email Body Text",
}
SEED_004_EXAMPLE = {
    "to": "recipient@example.com",
    "subject": "Email Subject",
    "message": "Email body text",
}


def token_for(client, username: str = SENDER, password: str = API_KEY) -> str:
    answer = client.post(
        "/token", data={"username": username, "password": password, "grant_type": "password"}
    )
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["access_token"]


# -- seed 000: POST /mail, waits for the outcome -----------------------------------------------


def test_seed_000_mail_example_waits_and_answers_message_sent(client, smtp_server):
    # The Flask /mail service returned the text `message Sent`, which its clients compare.
    answer = client.post("/mail", json=SEED_000_EXAMPLE, headers={**AUTH, "Accept": "*/*"})
    assert answer.status_code == 200
    assert answer.mimetype == "text/plain"
    assert answer.get_data(as_text=True) == "message Sent"
    request_id = answer.headers["X-Request-Id"]
    [received] = smtp_server.received  # the outcome is known when /mail answers
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["example@example.com"]
    assert received.message["Subject"] == "Email Subject"
    assert received.message.get_content().strip() == "Email Body Text"
    assert client.get(f"/email-status/{request_id}").get_json()["status"] == "sent"


@pytest.mark.parametrize(
    "accept", [None, "text/plain", "text/html", "text/plain, application/json"]
)
def test_seed_000_mail_answers_text_unless_accept_prefers_json(client, smtp_server, accept):
    headers = {**AUTH, "Accept": accept} if accept else AUTH
    answer = client.post("/mail", json=SEED_000_EXAMPLE, headers=headers)
    assert answer.status_code == 200
    assert answer.mimetype == "text/plain"
    assert answer.get_data(as_text=True) == "message Sent"
    assert answer.headers["Vary"] == "Accept"


@pytest.mark.parametrize("accept", ["application/json", "application/json, text/plain;q=0.5"])
def test_seed_000_mail_answers_json_when_accept_prefers_it(client, smtp_server, accept):
    answer = client.post("/mail", json=SEED_000_EXAMPLE, headers={**AUTH, "Accept": accept})
    assert answer.status_code == 200
    body = answer.get_json()
    assert body == {"message": "message Sent", "request_id": answer.headers["X-Request-Id"]}
    assert client.get(f"/email-status/{body['request_id']}").get_json()["status"] == "sent"


def test_seed_000_mail_refused_at_data_is_502_with_the_smtp_reason(client, smtp_server):
    smtp_server.handler.script("DATA", "550 5.7.1 message rejected as spam")
    answer = client.post("/mail", json=SEED_000_EXAMPLE, headers=AUTH)
    assert answer.status_code == 502
    assert answer.mimetype == "application/problem+json"
    body = answer.get_json()
    assert "550" in body["detail"] and "spam" in body["detail"]
    assert client.get(f"/email-status/{body['request_id']}").get_json()["status"] == "failed"


def test_seed_000_mail_with_an_unknown_field_is_400_naming_it(client, smtp_server):
    answer = client.post(
        "/mail",
        json={"recipient": "a@example.com", "subject": "S", "body": "B", "cc": ["b@example.com"]},
        headers=AUTH,
    )
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == [{"field": "cc", "message": "is not a known field"}]
    assert smtp_server.received == []


def test_seed_000_mail_without_a_key_is_401(client, smtp_server):
    answer = client.post("/mail", json={"recipient": "a@example.com", "subject": "S", "body": "B"})
    assert answer.status_code == 401
    assert smtp_server.received == []


def test_waiting_route_answers_504_with_request_id_and_the_send_goes_on(make_app, smtp_server):
    # The DATA reply comes after 2 s, which the client waits for (SMTP_DATA_TIMEOUT), while
    # the route waits only SMTP_TIMEOUT + WAIT_MARGIN (0.6 s).
    smtp_server.handler.script("DATA", ("SLEEP", 2))
    app = make_app(smtp_server.port, smtp_timeout=0.5, wait_margin=0.1, retry_backoff=1.0)
    client = app.test_client()
    answer = client.post("/mail", json=SEED_000_EXAMPLE, headers=AUTH)
    assert answer.status_code == 504
    body = answer.get_json()
    assert answer.headers["Location"] == f"/email-status/{body['request_id']}"
    status = wait_final(client, body["request_id"])
    assert status["status"] == "sent"
    assert status["attempts"] == 1


def test_a_waiting_route_whose_request_is_canceled_meanwhile_answers_not_sent(
    make_app, smtp_server
):
    # One sending thread, held 2 s at MAIL by a first message: /mail's request waits queued
    # behind it, and its sender cancels it (DELETE) while the route waits for the outcome.
    app = make_app(smtp_server.port, workers=1)
    client = app.test_client()
    smtp_server.handler.script("MAIL", ("SLEEP", 2.0))
    first = send(client).get_json()["request_id"]
    store = app.extensions[EXTENSION].store
    wait_for(lambda: store.get(first).status == "sending")
    answers = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            app.test_client().post("/mail", json=SEED_000_EXAMPLE, headers=AUTH)
        )
    )
    waiting.start()

    def queued() -> str | None:
        ids = [r.request_id for r in store.recent(10).records if r.status == "queued"]
        return ids[0] if ids else None

    request_id = wait_for(queued)
    assert client.delete(f"/email-status/{request_id}", headers=AUTH).status_code == 200
    waiting.join(20)
    (answer,) = answers
    assert answer.status_code == 502, answer.get_data(as_text=True)  # never "message Sent"
    body = answer.get_json()
    assert body["detail"] == "The message was not sent: canceled by its sender"
    assert body["request_id"] == request_id
    assert wait_final(client, first)["status"] == "sent"
    assert [r.rcpt_tos for r in smtp_server.received] == [["user@example.com"]]  # the first


# -- seed 001: the core POST /send-email with `key` in the body -------------------------------


def test_seed_001_send_email_example_is_accepted_and_sent(make_app, smtp_server, tmp_path):
    senders = tmp_path / "seed-001.csv"
    senders.write_text(
        "key,email,app_password,smtp_host,smtp_port,smtp_security\n"
        f"user1_key,example1@gmail.com,,127.0.0.1,{smtp_server.port},none\n",
        encoding="utf-8",
    )
    client = make_app(smtp_server.port, senders_file=str(senders)).test_client()
    example = {
        "subject": "Welcome to Our Service",
        "recipient": "user@example.com",
        "body": "<h1>Hello!</h1> Thanks for joining us.",
        "is_html": True,
        "key": "user1_key",
    }
    answer = client.post("/send-email", json=example)
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["message"] == "Email request is being processed"
    assert wait_final(client, body["request_id"])["status"] == "sent"
    [received] = smtp_server.received
    assert received.mail_from == "example1@gmail.com"
    assert received.rcpt_tos == ["user@example.com"]
    assert received.message["Subject"] == "Welcome to Our Service"
    # is_html: the HTML, with the text alternative message building renders from it.
    assert received.message.get_content_type() == "multipart/alternative"
    assert "<h1>Hello!</h1>" in received.message.get_body(("html",)).get_content()
    assert "Hello!" in received.message.get_body(("plain",)).get_content()


# -- seeds 002/003: {email_to, email_from, subject, message: {text, html}} --------------------


@pytest.mark.parametrize("path", ["/send-email/", "/send-email"])
def test_seeds_002_003_email_to_example_is_accepted_with_result(client, smtp_server, path):
    example = {
        "email_to": "user@example.com",
        "email_from": SENDER,
        "subject": "Verify your email",
        "message": {"text": "Your code is 1234", "html": "<p>Your code is <b>1234</b></p>"},
    }
    answer = client.post(path, json=example, headers=AUTH)
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["result"] == body["request_id"]
    assert body["message"] == "Email request is being processed"
    assert body["status"] == "queued"
    assert answer.headers["Location"] == f"/email-status/{body['request_id']}"
    assert wait_final(client, body["request_id"])["status"] == "sent"
    [received] = smtp_server.received
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["user@example.com"]
    message = received.message
    assert message["Subject"] == "Verify your email"
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content().strip() == "Your code is 1234"
    assert "<b>1234</b>" in message.get_body(("html",)).get_content()


def test_seed_002_without_email_from_and_with_text_only_is_sent(client, smtp_server):
    example = {"email_to": "user@example.com", "subject": "Hi", "message": {"text": "Hello"}}
    answer = client.post("/send-email/", json=example, headers=AUTH)
    assert answer.status_code == 202
    assert wait_final(client, answer.get_json()["result"])["status"] == "sent"
    assert smtp_server.received[0].message.get_content().strip() == "Hello"


def test_seed_002_foreign_email_from_is_403(client, smtp_server):
    example = {
        "email_to": "user@example.com",
        "email_from": OTHER_SENDER,
        "subject": "Hi",
        "message": {"text": "Hello"},
    }
    answer = client.post("/send-email/", json=example, headers=AUTH)
    assert answer.status_code == 403
    assert "`email_from`" in answer.get_json()["detail"]
    assert smtp_server.received == []


def test_seed_002_errors_name_the_seed_fields(client, smtp_server):
    example = {
        "email_to": "not an address",
        "subject": "Hi\r\nBcc: victim@example.com",
        "message": {"text": "Hello", "attachment": "x"},
    }
    answer = client.post("/send-email/", json=example, headers=AUTH)
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == [
        {"field": "message.attachment", "message": "is not a known field"}
    ]
    del example["message"]["attachment"]
    answer = client.post("/send-email/", json=example, headers=AUTH)
    assert answer.status_code == 400
    assert {e["field"] for e in answer.get_json()["errors"]} == {"email_to", "subject"}
    answer = client.post(
        "/send-email/", json={"email_to": "u@example.com", "subject": "Hi"}, headers=AUTH
    )
    assert [e["field"] for e in answer.get_json()["errors"]] == ["message"]
    assert smtp_server.received == []


def test_seed_bodies_with_nul_content_or_format_characters_name_the_seed_fields(
    client, smtp_server
):
    """Issue 9: NUL in the content and format characters in the subject are refused on the
    drop-in routes too, and each error names the field as the seed's client wrote it."""
    email_to = {
        "email_to": "user@example.com",
        "subject": "Pay \u202eexe.pdf",
        "message": {"text": "Hello", "html": "<p>a\0b</p>"},
    }
    answer = client.post("/send-email/", json=email_to, headers=AUTH)
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == [
        {"field": "subject", "message": "must not contain format character U+202E"},
        {"field": "message.html", "message": "must not contain NUL (U+0000)"},
    ]
    token = token_for(client)
    answer = client.post(
        "/smtp/send-email",
        json={**SEED_004_EXAMPLE, "message": "Hello\0"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == [
        {"field": "message", "message": "must not contain NUL (U+0000)"}
    ]
    answer = client.post("/mail", json={**SEED_000_EXAMPLE, "body": "\0"}, headers=AUTH)
    assert [e["field"] for e in answer.get_json()["errors"]] == ["body"]
    assert smtp_server.received == []


# -- seed 004: POST /token, then POST /smtp/send-email with the Bearer token ------------------


def test_seed_004_example_with_a_token_waits_and_answers_sent(client, smtp_server):
    token = token_for(client)
    answer = client.post(
        "/smtp/send-email", json=SEED_004_EXAMPLE, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200
    body = answer.get_json()
    assert body == {"status": "Email sent successfully", "request_id": body["request_id"]}
    [received] = smtp_server.received
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["recipient@example.com"]
    assert received.message["Subject"] == "Email Subject"
    assert received.message.get_content().strip() == "Email body text"


def test_seed_004_send_failure_is_400_with_detail(client, smtp_server):
    smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
    token = token_for(client)
    answer = client.post(
        "/smtp/send-email", json=SEED_004_EXAMPLE, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 400
    body = answer.get_json()
    assert "550" in body["detail"]
    assert body["request_id"]


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic dXNlcjpwdw=="])
def test_seed_004_missing_or_bad_token_is_401(client, smtp_server, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    answer = client.post("/smtp/send-email", json=SEED_004_EXAMPLE, headers=headers)
    assert answer.status_code == 401
    assert answer.get_json()["detail"]
    assert smtp_server.received == []


def test_token_from_token_route_works_on_the_core_send_email(client, smtp_server):
    token = token_for(client)
    response = send(client, key=token)
    assert response.status_code == 202
    assert wait_final(client, response.get_json()["request_id"])["status"] == "sent"


def test_a_token_counts_against_its_keys_rate_limit(make_app, smtp_server):
    client = make_app(smtp_server.port, rate_limit="2/minute").test_client()
    assert send(client).status_code == 202
    assert send(client, key=token_for(client)).status_code == 202
    assert send(client, key=token_for(client)).status_code == 429  # a fresh token buys nothing


# -- seed 000's credentials.json as the senders source ----------------------------------------


def test_credentials_json_sender_logs_in_and_sends(make_app, start_smtp, tmp_path: Path):
    server = start_smtp(logins={"me@example.com": "app-password"})
    credentials = tmp_path / "credentials.json"
    credentials.write_text(
        json.dumps(
            {
                "smtp_host": "127.0.0.1",
                "smtp_port": server.port,
                "user": "me@example.com",
                "password": "app-password",
            }
        ),
        encoding="utf-8",
    )
    app = make_app(server.port, senders_file=str(credentials), credentials_key="cred-key-123")
    client = app.test_client()
    answer = client.post("/mail", json=SEED_000_EXAMPLE, headers={"X-API-Key": "cred-key-123"})
    assert answer.status_code == 200
    assert server.logins_seen == ["me@example.com"]
    [received] = server.received
    assert received.mail_from == "me@example.com"
    assert received.rcpt_tos == ["example@example.com"]


def test_idempotency_key_on_a_waiting_route_answers_the_same_outcome_once(client, smtp_server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "reset-99"}
    first = client.post("/mail", json=SEED_000_EXAMPLE, headers=headers)
    again = client.post("/mail", json=SEED_000_EXAMPLE, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.get_data() == again.get_data() == b"message Sent"
    assert first.headers["X-Request-Id"] == again.headers["X-Request-Id"]
    assert len(smtp_server.received) == 1
    other = client.post("/mail", json={**SEED_000_EXAMPLE, "subject": "other"}, headers=headers)
    assert other.status_code == 409


def test_a_waiting_routes_repeat_that_would_be_refused_now_answers_the_outcome(
    make_app, smtp_server, tmp_path
):
    url = f"sqlite:///{tmp_path / 'status.db'}"
    first_app = make_app(smtp_server.port, status_store_url=url, allow_special_use_recipients=True)
    strict = make_app(smtp_server.port, status_store_url=url).test_client()
    body = {**SEED_000_EXAMPLE, "recipient": "ada@example.test"}
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "reset-100"}
    first = first_app.test_client().post("/mail", json=body, headers=headers)
    assert first.status_code == 200
    assert (
        strict.post("/mail", json=body, headers={**headers, "Idempotency-Key": "new"}).status_code
        == 400
    )
    again = strict.post("/mail", json=body, headers=headers)
    assert again.status_code == 200 and again.get_data() == b"message Sent"
    assert again.headers["X-Request-Id"] == first.headers["X-Request-Id"]
    assert len(smtp_server.received) == 1


def test_idempotency_key_on_the_email_to_shape_replays_the_202(client, smtp_server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "welcome-5"}
    body = {"email_to": "user@example.com", "subject": "Hi", "message": {"text": "t"}}
    first = client.post("/send-email/", json=body, headers=headers)
    again = client.post("/send-email/", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.get_json() == again.get_json()
    assert first.get_json()["result"] == first.get_json()["request_id"]
    wait_final(client, first.get_json()["request_id"])
    assert len(smtp_server.received) == 1
