"""Dry runs (API.md section 3, "Dry run"): `"dry_run": true` on every send route answers the
envelope and the exact message that would be sent, and records, sends, claims and announces
nothing; the rate limit counts it, and every check of a real send still answers.

The messages are compared with what a real aiosmtpd server receives for the same body, sent
for real by the same app.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mail_server import EXTENSION
from mailservice.testing.smtp_servers import Received, SmtpServer
from tests.conftest import API_KEY, OTHER_SENDER, SENDER, send, wait_final

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROBLEM = "application/problem+json"
DRY_RUN_KEYS = {"dry_run", "request_id", "envelope", "suppressed", "message"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()
PLAIN = {
    "to": ["ada@example.com"],
    "cc": ["grace@example.com"],
    "subject": "Your invoice",
    "body": "Hello Ada,\n\n.a line that starts with a dot\nBye.",
    "from_name": "Billing",
    "reply_to": "billing@example.com",
    "headers": {"X-Campaign": "march", "List-Unsubscribe": "<https://example.com/u/1>"},
}
BODIES: dict[str, dict[str, Any]] = {
    "plain": PLAIN,
    "html and text": {
        "to": "ada@example.com",
        "subject": "Welcome",
        "text": "Welcome, Ada.",
        "html": "<p>Welcome, <b>Ada</b>.</p>",
    },
    "html only, text rendered": {
        "to": "ada@example.com",
        "subject": "Welcome",
        "body": "<h1>Welcome</h1><p>Read <a href='https://example.com'>this</a>.</p>",
        "is_html": True,
    },
    "template": {
        "to": "ada@example.com",
        "template": "reset-password",
        "variables": {
            "app_name": "Acme",
            "name": "Ada",
            "code": "482913",
            "link": "https://acme.example/reset?token=abc",
        },
    },
    "attachments": {
        "to": "ada@example.com",
        "subject": "Your files",
        "text": "Attached.",
        "html": '<p>Attached. <img src="cid:logo"></p>',
        "attachments": [
            {
                "filename": "notes.txt",
                "content": base64.b64encode(b"notes\n").decode(),
                "content_type": "text/plain",
            },
            {"filename": "report.pdf", "content": PNG, "content_type": "application/pdf"},
            {
                "filename": "logo.png",
                "content": PNG,
                "content_type": "image/png",
                "content_id": "logo",
            },
        ],
    },
    "bcc": {
        "to": "ada@example.com",
        "cc": ["grace@example.com"],
        "bcc": ["audit@example.com", "ada@example.com"],
        "subject": "Copy",
        "body": "Hello.",
    },
}


def dry(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "dry_run": True}


def headers_end(data: bytes) -> int:
    return data.index(b"\r\n\r\n")


def header_value(data: bytes, name: bytes) -> bytes:
    found = re.search(rb"^" + name + rb": (.*)\r\n", data[: headers_end(data)], re.MULTILINE)
    assert found is not None, name
    return found.group(1)


def with_real_values(preview: bytes, real: bytes) -> bytes:
    """The dry run's bytes with the values that differ by request put as the real message has
    them: the Message-ID and Date headers (the request's id and time), and the MIME
    boundaries (random for every message built), in the order they occur. Nothing else."""
    out = preview
    for name in (b"Message-ID", b"Date"):
        old, new = header_value(out, name), header_value(real, name)
        out = out.replace(name + b": " + old + b"\r\n", name + b": " + new + b"\r\n", 1)
    boundary = re.compile(rb'boundary="([^"]+)"')
    ours, theirs = boundary.findall(out), boundary.findall(real)
    assert len(ours) == len(theirs)
    for old, new in zip(ours, theirs, strict=True):
        out = out.replace(old, new)
    return out


@pytest.fixture
def events(app: Flask) -> list[Any]:
    """Every event the app's bus emits from now on."""
    seen: list[Any] = []
    app.extensions[EXTENSION].stack.events.subscribe(seen.append)
    return seen


def nothing_recorded(client: FlaskClient, app: Flask, *request_ids: str) -> None:
    """No status for these ids and none at all in the store."""
    for request_id in request_ids:
        assert client.get(f"/email-status/{request_id}").status_code == 404
    store = app.extensions[EXTENSION].store
    assert not any(store.counts().values())
    assert store.recent(10).records == ()


def real_send(client: FlaskClient, smtp_server: SmtpServer, body: dict[str, Any]) -> Received:
    """Send `body` for real; what the server received (the only message it has)."""
    answer = send(client, body)
    assert answer.status_code == 202, answer.get_json()
    assert wait_final(client, answer.get_json()["request_id"])["status"] == "sent"
    [received] = smtp_server.received  # the dry run before it sent nothing
    return received


# -- the preview is what is sent ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(BODIES))
def test_the_dry_run_is_byte_identical_to_what_the_server_receives(
    client: FlaskClient, app: Flask, smtp_server: SmtpServer, events: list[Any], name: str
) -> None:
    """The same body as a dry run and for real: the envelope is the server's, and the message
    is the received bytes exactly once the dry run's Message-ID and Date values (its own
    request id and time) and its MIME boundaries are replaced by the real message's."""
    body = BODIES[name]
    answer = send(client, dry(body))
    assert answer.status_code == 200, answer.get_json()
    assert answer.mimetype == "application/json"
    preview = answer.get_json()
    assert set(preview) == DRY_RUN_KEYS and preview["dry_run"] is True
    data = preview["message"].encode("utf-8")
    assert header_value(data, b"Message-ID") == f"<{preview['request_id']}@example.com>".encode()
    nothing_recorded(client, app, preview["request_id"])
    assert events == []
    received = real_send(client, smtp_server, body)
    assert preview["envelope"] == {"mail_from": received.mail_from, "rcpt_to": received.rcpt_tos}
    assert preview["envelope"]["mail_from"] == SENDER
    assert with_real_values(data, received.content) == received.content


def test_bcc_is_in_the_envelope_only(client: FlaskClient, smtp_server: SmtpServer) -> None:
    preview = send(client, dry(BODIES["bcc"])).get_json()
    # to, cc and bcc, each once, in that order: ada is in to and bcc.
    assert preview["envelope"]["rcpt_to"] == [
        "ada@example.com",
        "grace@example.com",
        "audit@example.com",
    ]
    data = preview["message"].encode()
    head = data[: headers_end(data)].lower()
    assert b"\r\nbcc:" not in head and b"audit@example.com" not in data
    assert header_value(data, b"Cc") == b"grace@example.com"


def test_an_international_address_needs_smtputf8_and_is_previewed_as_sent(
    make_app: Callable[..., Flask], start_smtp: Callable[..., SmtpServer]
) -> None:
    server = start_smtp(smtputf8=True)
    client = make_app(server.port).test_client()
    body = {"to": "josé@example.com", "subject": "Olá", "body": "Olá, José."}
    preview = send(client, dry(body)).get_json()
    assert "josé@example.com" in preview["message"]  # UTF-8 headers, not encoded words
    received = real_send(client, server, body)
    assert "SMTPUTF8" in received.mail_options
    assert preview["envelope"]["rcpt_to"] == received.rcpt_tos == ["josé@example.com"]
    data = preview["message"].encode("utf-8")
    assert with_real_values(data, received.content) == received.content


def test_a_batch_dry_run_previews_each_message_as_a_real_batch_sends_it(
    client: FlaskClient, app: Flask, smtp_server: SmtpServer, events: list[Any]
) -> None:
    messages = [BODIES["plain"], BODIES["attachments"]]
    answer = client.post(
        "/send-email/batch", json={"messages": messages, "dry_run": True}, headers=AUTH
    )
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    assert set(result) == {"dry_run", "messages"} and result["dry_run"] is True
    previews = result["messages"]
    assert all(set(item) == DRY_RUN_KEYS for item in previews)
    nothing_recorded(client, app, *(item["request_id"] for item in previews))
    assert events == []
    real = client.post("/send-email/batch", json={"messages": messages}, headers=AUTH)
    assert real.status_code == 202
    for item in real.get_json()["messages"]:
        assert wait_final(client, item["request_id"])["status"] == "sent"
    by_subject = {r.message["Subject"]: r for r in smtp_server.received}
    assert len(by_subject) == 2
    for body, item in zip(messages, previews, strict=True):
        received = by_subject[body["subject"]]
        assert item["envelope"]["rcpt_to"] == received.rcpt_tos
        data = item["message"].encode()
        assert with_real_values(data, received.content) == received.content


# -- nothing happens, but the rate limit counts ------------------------------------------------


def test_a_dry_run_writes_no_request_log_line(app: Flask, client: FlaskClient) -> None:
    preview = send(client, dry(PLAIN)).get_json()["request_id"]
    real = send(client, PLAIN).get_json()["request_id"]
    wait_final(client, real)
    lines = Path(app.extensions[EXTENSION].settings.email_log).read_text(encoding="utf-8")
    assert real in lines
    assert preview not in lines


def test_dry_runs_count_against_the_rate_limit(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    client = make_app(smtp_server.port, rate_limit="2/minute").test_client()
    for _ in range(2):
        answer = send(client, dry(PLAIN))
        assert answer.status_code == 200
    assert answer.headers["X-RateLimit-Remaining"] == "0"
    refused = send(client, PLAIN)
    assert refused.status_code == 429
    assert smtp_server.received == []


def test_a_dry_run_claims_no_idempotency_key(
    client: FlaskClient, app: Flask, smtp_server: SmtpServer
) -> None:
    key = {"Idempotency-Key": "order-42"}
    preview = send(client, dry(PLAIN), headers=key)
    assert preview.status_code == 200
    real = send(client, PLAIN, headers=key)
    assert real.status_code == 202, real.get_json()
    request_id = real.get_json()["request_id"]
    assert request_id != preview.get_json()["request_id"]
    assert wait_final(client, request_id)["status"] == "sent"
    # The key is the real send's: a repeat gets its id, and `"dry_run": false` is the same body.
    again = send(client, {**PLAIN, "dry_run": False}, headers=key)
    assert again.status_code == 202 and again.get_json()["request_id"] == request_id
    # A dry run under a used key looks nothing up: it is a dry run all the same.
    assert send(client, dry(PLAIN), headers=key).status_code == 200
    assert len(smtp_server.received) == 1


def test_a_malformed_idempotency_key_is_400_in_a_dry_run_too(client: FlaskClient) -> None:
    answer = send(client, dry(PLAIN), headers={"Idempotency-Key": "x" * 256})
    assert answer.status_code == 400 and answer.mimetype == PROBLEM


def test_dry_run_false_is_a_real_send(client: FlaskClient, smtp_server: SmtpServer) -> None:
    answer = send(client, {**PLAIN, "dry_run": False})
    assert answer.status_code == 202
    assert wait_final(client, answer.get_json()["request_id"])["status"] == "sent"


# -- every check of a real send answers a dry run ----------------------------------------------


def field_errors(answer: Any) -> set[str]:
    assert answer.status_code == 400, answer.get_json()
    assert answer.mimetype == PROBLEM
    return {error["field"] for error in answer.get_json()["errors"]}


@pytest.mark.parametrize("value", ["true", 1, 0, None, [], {}])
def test_a_dry_run_flag_that_is_not_a_boolean_is_400_naming_it(
    client: FlaskClient, smtp_server: SmtpServer, value: Any
) -> None:
    assert field_errors(send(client, {**PLAIN, "dry_run": value})) == {"dry_run"}
    batch = {"messages": [PLAIN], "dry_run": value}
    assert field_errors(client.post("/send-email/batch", json=batch, headers=AUTH)) == {"dry_run"}
    assert smtp_server.received == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject": None}, "subject"),
        ({"to": ["not an address"]}, "to.0"),
        ({"headers": {"Bcc": "x@example.com"}}, "headers"),
        ({"recipent": "typo@example.com"}, "recipent"),
        ({"template": "no-such-template", "subject": None, "body": None}, "template"),
    ],
)
def test_bad_fields_are_400_in_a_dry_run(
    client: FlaskClient, change: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**PLAIN, **change}.items() if v is not None}
    assert field in field_errors(send(client, dry(body)))


def test_a_dry_run_needs_a_key_and_the_keys_own_from(client: FlaskClient) -> None:
    assert send(client, dry(PLAIN), key="").status_code == 401
    assert send(client, dry(PLAIN), key="wrong-key-0000000000").status_code == 401
    assert send(client, dry({**PLAIN, "from": OTHER_SENDER})).status_code == 403
    assert send(client, dry({**PLAIN, "from": SENDER})).status_code == 200


def test_a_batch_dry_run_answers_each_message_as_a_real_batch_would(
    client: FlaskClient, app: Flask
) -> None:
    bad = {"to": "ada@example.com", "body": "no subject"}
    some = {"messages": [PLAIN, bad, {**PLAIN, "dry_run": True}], "dry_run": True}
    answer = client.post("/send-email/batch", json=some, headers=AUTH)
    assert answer.status_code == 207, answer.get_json()
    good, refused, own_flag = answer.get_json()["messages"]
    assert set(good) == DRY_RUN_KEYS
    assert [e["field"] for e in refused["errors"]] == ["subject"]
    assert [e["field"] for e in own_flag["errors"]] == ["dry_run"]  # it goes at the top
    none = client.post("/send-email/batch", json={"messages": [bad], "dry_run": True}, headers=AUTH)
    assert field_errors(none) == {"messages.0.subject"}
    nothing_recorded(client, app, good["request_id"])


# -- the older services' routes -----------------------------------------------------------------


def token(client: FlaskClient) -> str:
    form = {"username": SENDER, "password": API_KEY, "grant_type": "password"}
    return client.post("/token", data=form).get_json()["access_token"]


SMS = {"message": "Your code is 482913", "phone_number": "555-123-4567", "provider": "Verizon"}
# Route, body, its content field and a field of its own that the core calls otherwise.
LEGACY = [
    ("/mail", {"recipient": "ada@example.com", "subject": "Hi", "body": "Hello"}, "recipient"),
    ("/send-email/", {"email_to": "ada@example.com", "subject": "Hi",
                      "message": {"text": "Hello"}}, "email_to"),
    ("/smtp/send-email", {"to": "ada@example.com", "subject": "Hi", "message": "Hello"}, "to"),
    ("/api/v1/mail/send-email/", {"email_to": ["ada@example.com"], "subject": "Hi",
                                  "message": "<p>Hello</p>", "user_id": 42}, "email_to"),
    ("/api/v1/mail/send-async/", {"email_to": "ada@example.com", "subject": "Hi",
                                  "message": "<p>Hello</p>"}, "email_to"),
    ("/api/v1/sms/send-email-sms/", SMS, "phone_number"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "own_field"), LEGACY)
def test_every_older_route_answers_a_dry_run_with_its_json(
    client: FlaskClient,
    app: Flask,
    smtp_server: SmtpServer,
    events: list[Any],
    path: str,
    body: dict[str, Any],
    own_field: str,
) -> None:
    # A waiting route answers at once, and /mail answers JSON whatever Accept says.
    headers = {"Authorization": f"Bearer {token(client)}", "Accept": "text/plain"}
    answer = client.post(path, json=dry(body), headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    preview = answer.get_json()
    assert set(preview) == DRY_RUN_KEYS and preview["dry_run"] is True
    assert preview["envelope"]["mail_from"] == SENDER
    expected = "5551234567@vzwpix.com" if body is SMS else "ada@example.com"
    assert preview["envelope"]["rcpt_to"] == [expected]
    assert "user_id" not in preview["message"]
    nothing_recorded(client, app, preview["request_id"])
    assert events == [] and smtp_server.received == []
    # Its own field errors still name its fields, and the flag is a boolean here too.
    wrong = {**body, own_field: 12}
    assert own_field in field_errors(client.post(path, json=dry(wrong), headers=headers))
    flag = {**body, "dry_run": "yes"}
    assert field_errors(client.post(path, json=flag, headers=headers)) == {"dry_run"}


def test_an_older_routes_dry_run_is_the_message_it_sends(
    client: FlaskClient, smtp_server: SmtpServer
) -> None:
    body = {"email_to": "ada@example.com", "subject": "Hi", "message": "<p>Hello</p>"}
    preview = client.post("/api/v1/mail/send-async/", json=dry(body), headers=AUTH).get_json()
    answer = client.post("/api/v1/mail/send-async/", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.get_json()
    [received] = smtp_server.received
    data = preview["message"].encode()
    assert with_real_values(data, received.content) == received.content


def test_every_send_body_of_the_document_takes_dry_run(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    for name in ("SendRequest", "BatchBody", "MailBody", "EmailToBody", "SmtpBody",
                 "V1MailBody", "V1SmsBody"):  # fmt: skip
        assert schemas[name]["properties"]["dry_run"]["type"] == "boolean", name
    assert "dry_run" not in schemas["BatchMessage"]["properties"]  # it goes at the top
    assert "DryRun" in schemas and "DryRunBatch" in schemas
