"""Each older service's client, unchanged but for its base URL, against this service.

Every test sends the request that older client's own code sends (method, path, headers, body
shape; the addresses are test ones) and checks what that client reads from the answer. The
clients, as found in their code:

- the Flask /mail microservice: `POST /mail` {recipient, subject, body}; compares the text
  `message Sent`. It sent no key: it adds one.
- the Flask service with keys in data.csv: `POST /send-email` {subject, recipient, body,
  is_html, key}; reads `request_id`, then `GET /email-status/<id>`.
- email-service (FastAPI and Celery): `POST /send-email/` with `Authorization: Bearer <JWT>`
  (PyJWT, HS256, signed with its SECRET_KEY: username, exp, iss, sub) and
  {email_to, email_from, subject, message: {text, html}}; prints `response.json()`.
- email-service-v2: `Authorization: Bearer <JWT>` (python-jose, HS256, `{"test": "data"}`
  signed with its API_KEY, no expiry); `POST /api/v1/mail/send-email/` or `send-async/` with
  {email_to, email_from, subject, message: "<html>", user_id: null}; `POST
  /api/v1/sms/send-email-sms/` with {message, phone_number, provider: "At&T", user_id: 0};
  reads `result`.
- the FastAPI service with an OAuth2 password flow: `POST /token` (form), then `POST
  /smtp/send-email` {to, subject, message} with the Bearer token; reads `status` or `detail`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from mailservice.api.sms_gateways import BUILT_IN, gateway_table
from mailservice.config import Settings, settings_from_mapping
from mailservice.errors import ConfigError
from tests.conftest import API_KEY, SENDER, wait_final
from tests.test_jwt_auth import SECRET_KEY, sign

V2_API_KEY = "v2-API_KEY-shared-with-the-auth-service"
V2_SENDER = "SMTP_service@lyourAPP.net"  # the email_from of its tests/test_email.py
HTML = "<html><body><h1>EMAIL TESTING</h1><p>Sent by the notification service.</p></body></html>"


def write_senders(path: Path, port: int) -> Path:
    """SENDER: API_KEY, and SECRET_KEY as its jwt_secret (email-service's clients); V2_SENDER:
    the v2 clients' API_KEY as its key."""
    path.write_text(
        "key,email,app_password,smtp_host,smtp_port,smtp_security,name,jwt_secret\n"
        f"{API_KEY},{SENDER},,127.0.0.1,{port},none,Test Sender,{SECRET_KEY}\n"
        f"{V2_API_KEY},{V2_SENDER},,127.0.0.1,{port},none,,\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def build(make_app, smtp_server, tmp_path):
    def factory(**overrides):
        senders = write_senders(tmp_path / "older-clients.csv", smtp_server.port)
        return make_app(smtp_server.port, senders_file=str(senders), **overrides).test_client()

    return factory


@pytest.fixture
def client(build):
    return build()


def v2_token() -> str:
    # python-jose's jwt.encode({"test": "data"}, API_KEY, algorithm="HS256") writes the same
    # bytes as PyJWT's: header {"alg":"HS256","typ":"JWT"}, compact JSON.
    return sign({"test": "data"}, V2_API_KEY)


def v2_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {v2_token()}", "Content-Type": "application/json"}


def v2_email() -> dict[str, object]:
    # Email(...).dict() of its tests/test_email.py: message is one HTML string.
    return {
        "email_to": "user@example.com",
        "email_from": V2_SENDER,
        "subject": "EMAIL TESTING",
        "message": HTML,
        "user_id": None,
    }


# -- the Flask /mail microservice ----------------------------------------------------------------


def test_flask_mail_client_compares_message_sent(client, smtp_server):
    answer = client.post(
        "/mail",
        json={"recipient": "example@example.com", "subject": "Email Subject", "body": "Body"},
        headers={"X-API-Key": API_KEY, "Accept": "*/*"},  # requests' default Accept
    )
    assert answer.status_code == 200
    assert answer.get_data(as_text=True) == "message Sent"
    assert answer.mimetype == "text/plain"
    assert re.fullmatch(r"[0-9a-f-]{36}", answer.headers["X-Request-Id"])
    [received] = smtp_server.received
    assert received.rcpt_tos == ["example@example.com"]


# -- the Flask service with keys in data.csv ------------------------------------------------------


def test_flask_data_csv_client_reads_request_id_then_status(client, smtp_server):
    answer = client.post(
        "/send-email",
        json={
            "subject": "Welcome to Our Service",
            "recipient": "user@example.com",
            "body": "<h1>Hello!</h1> Thanks for joining us.",
            "is_html": True,
            "key": API_KEY,
        },
    )
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["message"] == "Email request is being processed"
    status = wait_final(client, body["request_id"])
    assert status["request_id"] == body["request_id"] and status["status"] == "sent"


# -- email-service: POST /send-email/ with its own JWT -------------------------------------------


def test_email_service_client_with_its_pyjwt_token(client, smtp_server):
    payload = {"username": "TesttheService", "exp": int(time.time()) + 7 * 86400}
    token = sign({**payload, "iss": "your-issuer", "sub": "user-12345"}, SECRET_KEY)
    answer = client.post(
        "/send-email/",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        json={
            "email_to": "user@example.com",
            "email_from": SENDER,
            "subject": "Test Email",
            "message": {"text": "This is a test Email, the plain text portion", "html": HTML},
        },
    )
    assert answer.status_code == 202
    assert answer.get_json()["result"] == answer.get_json()["request_id"]
    assert wait_final(client, answer.get_json()["request_id"])["status"] == "sent"
    [received] = smtp_server.received
    assert received.mail_from == SENDER
    assert received.message.get_content_type() == "multipart/alternative"


# -- email-service-v2: /api/v1 -------------------------------------------------------------------


def test_v2_send_email_is_queued_and_answers_201_with_result(client, smtp_server):
    answer = client.post("/api/v1/mail/send-email/", headers=v2_headers(), json=v2_email())
    assert answer.status_code == 201
    body = answer.get_json()
    assert body == {
        "result": f"{body['request_id']}, Task passed to Celery",
        "request_id": body["request_id"],
    }
    assert answer.headers["Location"] == f"/email-status/{body['request_id']}"
    assert wait_final(client, body["request_id"])["status"] == "sent"
    [received] = smtp_server.received
    assert received.mail_from == "SMTP_service@lyourapp.net"  # the domain normalised
    assert received.rcpt_tos == ["user@example.com"]
    assert received.message["Subject"] == "EMAIL TESTING"
    # message is HTML; message building adds the text alternative rendered from it.
    assert received.message.get_content_type() == "multipart/alternative"
    assert "<h1>EMAIL TESTING</h1>" in received.message.get_body(("html",)).get_content()
    assert (
        "Sent by the notification service." in received.message.get_body(("plain",)).get_content()
    )


def test_v2_send_async_waits_and_answers_201_email_sent(client, smtp_server):
    answer = client.post("/api/v1/mail/send-async/", headers=v2_headers(), json=v2_email())
    assert answer.status_code == 201
    body = answer.get_json()
    assert re.fullmatch(r"Email sent @ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", body["result"])
    assert len(smtp_server.received) == 1  # sent before the answer
    assert client.get(f"/email-status/{body['request_id']}").get_json()["status"] == "sent"


def test_v2_send_async_failure_is_400_with_detail(client, smtp_server):
    smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
    answer = client.post("/api/v1/mail/send-async/", headers=v2_headers(), json=v2_email())
    assert answer.status_code == 400
    body = answer.get_json()
    assert body["detail"].startswith("The email could not be sent: ") and "550" in body["detail"]
    assert body["request_id"]


def test_v2_text_message_goes_to_the_carriers_gateway(client, smtp_server):
    payload = {
        "message": "Sent to you by my Notification Micro service... Now it sends Text messages!",
        "phone_number": "5555550123",
        "provider": "At&T",
        "user_id": 0,
    }
    answer = client.post("/api/v1/sms/send-email-sms/", headers=v2_headers(), json=payload)
    assert answer.status_code == 201
    body = answer.get_json()
    assert re.fullmatch(r"Text sent @ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", body["result"])
    assert body["request_id"]
    [received] = smtp_server.received
    assert received.rcpt_tos == ["5555550123@mms.att.net"]
    assert received.mail_from == "SMTP_service@lyourapp.net"
    assert received.message.get_content_type() == "text/plain"
    assert received.message.get_content().strip() == payload["message"]
    assert received.message["Subject"] == ""
    status = client.get(f"/email-status/{body['request_id']}").get_json()
    assert status["metadata"] == {"user_id": "0"}  # kept with the status as metadata
    assert b"user_id" not in received.content  # and never written into the message


def test_v2_user_id_is_kept_as_metadata_and_none_leaves_it_empty(client, smtp_server):
    queued = client.post(
        "/api/v1/mail/send-email/", headers=v2_headers(), json={**v2_email(), "user_id": 42}
    ).get_json()
    wait_final(client, queued["request_id"])
    assert client.get(f"/email-status/{queued['request_id']}").get_json()["metadata"] == {
        "user_id": "42"
    }
    plain = client.post("/api/v1/mail/send-email/", headers=v2_headers(), json=v2_email())
    status = client.get(f"/email-status/{plain.get_json()['request_id']}").get_json()
    assert status["metadata"] == {}


@pytest.mark.parametrize(
    ("provider", "phone", "address"),
    [
        ("verizon", "(555) 555-0123", "5555550123@vzwpix.com"),
        ("T-Mobile", "555.555.0123", "5555550123@tmomail.net"),
        ("ATT", "555 555 0123", "5555550123@mms.att.net"),
        ("u.s. cellular", "5555550123", "5555550123@mms.uscc.net"),
    ],
)
def test_v2_providers_are_case_and_punctuation_insensitive(
    client, smtp_server, provider, phone, address
):
    payload = {"message": "hi", "phone_number": phone, "provider": provider, "user_id": "u-1"}
    answer = client.post("/api/v1/sms/send-email-sms/", headers=v2_headers(), json=payload)
    assert answer.status_code == 201, answer.get_json()
    assert smtp_server.received[0].rcpt_tos == [address]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"provider": "Carrier Pigeon"}, "provider"),
        ({"provider": None}, "provider"),
        ({"phone_number": "555-CALL-NOW"}, "phone_number"),
        ({"phone_number": "+1 555 555 0123"}, "phone_number"),
        ({"phone_number": "12345"}, "phone_number"),
        ({"phone_number": 5555550123}, "phone_number"),
        ({"message": ""}, "message"),
        ({"message": {"text": "hi"}}, "message"),
        ({"user_id": [1]}, "user_id"),
        ({"user_id": True}, "user_id"),
        ({"subject": "extra"}, "subject"),
    ],
)
def test_v2_text_message_errors_are_400_naming_the_field(client, smtp_server, change, field):
    payload = {"message": "hi", "phone_number": "5555550123", "provider": "Verizon"} | change
    answer = client.post("/api/v1/sms/send-email-sms/", headers=v2_headers(), json=payload)
    assert answer.status_code == 400
    assert answer.mimetype == "application/problem+json"
    assert [e["field"] for e in answer.get_json()["errors"]] == [field]
    assert smtp_server.received == []


def test_v2_mail_errors_name_its_fields_and_a_foreign_email_from_is_403(client, smtp_server):
    answer = client.post(
        "/api/v1/mail/send-email/",
        headers=v2_headers(),
        json={**v2_email(), "email_to": "nobody", "message": "a\0b"},
    )
    assert answer.status_code == 400
    assert {e["field"] for e in answer.get_json()["errors"]} == {"email_to", "message"}
    answer = client.post(
        "/api/v1/mail/send-email/",
        headers=v2_headers(),
        json={**v2_email(), "email_from": SENDER},
    )
    assert answer.status_code == 403
    assert "`email_from`" in answer.get_json()["detail"]
    assert smtp_server.received == []


@pytest.mark.parametrize(
    "path", ["/api/v1/mail/send-email/", "/api/v1/mail/send-async/", "/api/v1/sms/send-email-sms/"]
)
def test_v2_routes_without_a_valid_jwt_are_401(client, smtp_server, path):
    expired = sign({"exp": int(time.time()) - 60}, V2_API_KEY)
    for headers in ({}, {"Authorization": f"Bearer {expired}"}):
        assert client.post(path, headers=headers, json=v2_email()).status_code == 401
    assert smtp_server.received == []


def test_v2_idempotency_key_replays_the_201(client, smtp_server):
    headers = {**v2_headers(), "Idempotency-Key": "welcome-7"}
    first = client.post("/api/v1/mail/send-email/", headers=headers, json=v2_email())
    again = client.post("/api/v1/mail/send-email/", headers=headers, json=v2_email())
    assert first.status_code == again.status_code == 201
    assert first.get_json() == again.get_json()
    wait_final(client, first.get_json()["request_id"])
    assert len(smtp_server.received) == 1


# -- SMS_GATEWAYS --------------------------------------------------------------------------------


def test_sms_gateways_add_and_override_carriers(build, smtp_server):
    client = build(sms_gateways="Verizon=vtext.com, Acme Wireless=SMS.acme-wireless.com")
    for provider in ("verizon", "ACME wireless"):
        payload = {"message": "hi", "phone_number": "5555550123", "provider": provider}
        answer = client.post("/api/v1/sms/send-email-sms/", headers=v2_headers(), json=payload)
        assert answer.status_code == 201
    assert [m.rcpt_tos for m in smtp_server.received] == [
        ["5555550123@vtext.com"],
        ["5555550123@sms.acme-wireless.com"],
    ]


@pytest.mark.parametrize(
    "value", ["verizon", "verizon=", "=vtext.com", "a=vtext.com,", "a=x.com,A=y.com", "a=no_dot"]
)
def test_a_malformed_sms_gateways_stops_start_up_naming_it(value):
    with pytest.raises(ConfigError, match="SMS_GATEWAYS"):
        settings_from_mapping({"SMS_GATEWAYS": value})
    with pytest.raises(ConfigError, match="SMS_GATEWAYS"):
        gateway_table(Settings(sms_gateways=value).sms_gateways)


def test_the_built_in_table_is_the_older_services_choice_of_gateway():
    assert BUILT_IN["att"] == "mms.att.net"
    assert BUILT_IN["verizon"] == "vzwpix.com"
    assert BUILT_IN["tmobile"] == "tmomail.net"
    assert BUILT_IN["sprint"] == "pm.sprint.com"
    assert BUILT_IN["googleprojectfi"] == "msg.fi.google.com"
    assert gateway_table("") == BUILT_IN


# -- the FastAPI service with an OAuth2 password flow --------------------------------------------


def test_oauth2_client_gets_a_token_then_reads_status(client, smtp_server):
    token = client.post(
        "/token", data={"username": SENDER, "password": API_KEY, "grant_type": "password"}
    ).get_json()["access_token"]
    answer = client.post(
        "/smtp/send-email",
        headers={"Authorization": f"Bearer {token}"},
        json={"to": "recipient@example.com", "subject": "Email Subject", "message": "Email body"},
    )
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "Email sent successfully"
