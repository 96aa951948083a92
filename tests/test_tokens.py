"""Access tokens: the TokenIssuer itself, and POST /token (OAuth2 password grant)."""

from __future__ import annotations

import base64
import logging
import time

import pytest

from mail_server import EXTENSION, create_app
from mailservice.api.tokens import TokenIssuer
from mailservice.config import Settings
from mailservice.senders import Sender, SenderDirectory, key_digest
from tests.conftest import API_KEY, OTHER_KEY, SENDER, send, write_senders

SECRET = "a-test-secret-of-enough-length"
AN_HOUR_AGO = time.time() - 3600


def directory() -> SenderDirectory:
    sender = Sender(SENDER, "pw", "127.0.0.1", 25, "none")
    return SenderDirectory([(API_KEY, sender)])


def test_a_token_stands_for_its_key_without_containing_it():
    senders = directory()
    issuer = TokenIssuer(SECRET, 60, senders)
    token = issuer.issue(API_KEY)
    assert issuer.sender_of(token) is senders.authenticate(API_KEY)
    assert issuer.key_digest(token) == key_digest(API_KEY)
    payload = base64.urlsafe_b64decode(token.split(".")[0] + "==")
    assert API_KEY.encode() not in payload
    assert key_digest(API_KEY).hex().encode() not in payload  # no offline guessing of the key


def test_an_expired_token_is_refused():
    senders = directory()
    old = TokenIssuer(SECRET, 60, senders, clock=lambda: AN_HOUR_AGO).issue(API_KEY)
    assert TokenIssuer(SECRET, 60, senders).sender_of(old) is None


def test_a_token_signed_with_another_secret_or_tampered_is_refused():
    senders = directory()
    issuer = TokenIssuer(SECRET, 60, senders)
    foreign = TokenIssuer("another-secret", 60, senders).issue(API_KEY)
    assert issuer.sender_of(foreign) is None
    token = issuer.issue(API_KEY)
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad in (tampered, "", "not.a.token", API_KEY, "\u00e9\u00e9.\u00e9"):
        assert issuer.sender_of(bad) is None


def test_a_token_of_a_key_no_longer_listed_is_refused():
    token = TokenIssuer(SECRET, 60, directory()).issue(API_KEY)
    other = SenderDirectory([(OTHER_KEY, Sender("o@example.org", "", "h", 25, "none"))])
    assert TokenIssuer(SECRET, 60, other).sender_of(token) is None


def test_an_unset_secret_is_generated_and_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="mailservice.api.tokens"):
        issuer = TokenIssuer.with_secret_or_random("", 60, directory())
    assert "TOKEN_SECRET is not set" in caplog.text
    assert issuer.sender_of(issuer.issue(API_KEY)) is not None
    assert SECRET not in repr(issuer)


# -- POST /token -----------------------------------------------------------------------------


def post_token(client, **form: str):
    return client.post("/token", data=form)


def test_token_route_answers_an_oauth2_bearer_token(client):
    answer = post_token(client, username=SENDER, password=API_KEY, grant_type="password")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body == {
        "access_token": body["access_token"],
        "token_type": "bearer",
        "expires_in": 3600,
    }
    assert answer.headers["Cache-Control"] == "no-store"
    assert API_KEY not in body["access_token"]


def test_token_route_takes_the_username_with_a_domain_in_any_case(client):
    answer = post_token(client, username="sender@EXAMPLE.com", password=API_KEY)
    assert answer.status_code == 200  # grant_type left out, as FastAPI's form allows


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (
            {"username": SENDER, "password": API_KEY, "grant_type": "client_credentials"},
            400,
            "unsupported_grant_type",
        ),
        ({"username": SENDER, "grant_type": "password"}, 400, "invalid_request"),
        (
            {"username": SENDER, "password": "wrong-key", "grant_type": "password"},
            401,
            "invalid_grant",
        ),
        (
            {"username": "other@example.org", "password": API_KEY, "grant_type": "password"},
            401,
            "invalid_grant",
        ),
        ({"username": "SENDER@example.com", "password": API_KEY}, 401, "invalid_grant"),
    ],
)
def test_token_route_refusals_are_rfc_6749_errors(client, form, status, error):
    answer = post_token(client, **form)
    assert answer.status_code == status
    assert answer.get_json()["error"] == error
    assert API_KEY not in answer.get_data(as_text=True)


def test_token_route_takes_only_a_form_body(client):
    answer = client.post("/token", json={"username": SENDER, "password": API_KEY})
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid_request"
    answer = client.post(f"/token?password={API_KEY}", data={"username": SENDER})
    assert answer.get_json()["error"] == "invalid_request"


def test_a_token_from_another_secret_is_401_on_the_api(client, smtp_server):
    forged = TokenIssuer("not-the-service-secret", 3600, directory()).issue(API_KEY)
    assert send(client, key=forged).status_code == 401


def test_an_expired_token_is_401_on_the_api(tmp_path, smtp_server):
    senders = write_senders(tmp_path / "data.csv", smtp_server.port)
    settings = Settings(
        senders_file=str(senders),
        email_log=str(tmp_path / "email_log.txt"),
        smtp_security="none",
        rate_limit="",
        token_secret=SECRET,
        token_ttl=60,
        workers=1,
    )
    app = create_app(settings)
    service = app.extensions[EXTENSION]
    try:
        expired = TokenIssuer(SECRET, 60, service.senders, clock=lambda: AN_HOUR_AGO)
        client = app.test_client()
        assert send(client, key=expired.issue(API_KEY)).status_code == 401
        fresh = client.post("/token", data={"username": SENDER, "password": API_KEY})
        assert send(client, key=fresh.get_json()["access_token"]).status_code == 202
    finally:
        service.pool.drain(5)
        service.request_log.close()
