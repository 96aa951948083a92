"""HS256 JWTs as Bearer credentials (mailservice/api/jwt_auth.py, API.md section 2).

The older FastAPI services' clients sign a JWT themselves (PyJWT in the first, python-jose in
the second, both HS256) and send it as `Authorization: Bearer`; the service sends as the sender
under whose secret (its `jwt_secret`, else its API key) the signature verifies, and refuses
every other JWT with 401.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from mailservice.api.jwt_auth import key_digest_of, looks_like_jwt
from mailservice.config import Settings
from mailservice.errors import ConfigError
from mailservice.senders import Sender, SenderDirectory, key_digest, load_senders
from tests.conftest import API_KEY, OTHER_KEY, OTHER_SENDER, SENDER, wait_final

# The first FastAPI service's SECRET_KEY, put in its sender's jwt_secret column.
SECRET_KEY = "first-service-SECRET_KEY-shared-with-its-clients"
EMAIL_TO = {
    "email_to": "user@example.com",
    "email_from": SENDER,
    "subject": "Test Email",
    "message": {"text": "The plain text portion", "html": "<p>The HTML portion</p>"},
}


def sign(payload: dict[str, Any], secret: str, algorithm: str = "HS256") -> str:
    """A JWT as the clients make it (PyJWT's encode); API keys are often under 32 bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(payload, secret, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def write_jwt_senders(path: Path, port: int) -> Path:
    """API_KEY's sender with a jwt_secret (SECRET_KEY), OTHER_KEY's without one."""
    path.write_text(
        "key,email,app_password,smtp_host,smtp_port,smtp_security,name,jwt_secret\n"
        f"{API_KEY},{SENDER},,127.0.0.1,{port},none,Test Sender,{SECRET_KEY}\n"
        f"{OTHER_KEY},{OTHER_SENDER},,127.0.0.1,{port},none,,\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def jwt_client(make_app, smtp_server, tmp_path):
    senders = write_jwt_senders(tmp_path / "jwt-senders.csv", smtp_server.port)
    return make_app(smtp_server.port, senders_file=str(senders)).test_client()


def test_first_fastapi_client_jwt_signed_with_its_secret_key_sends(jwt_client, smtp_server):
    # Its create_token(): PyJWT, HS256, these claims, an exp seven days ahead.
    token = sign(
        {
            "username": "TesttheService",
            "exp": int(time.time()) + 7 * 86400,
            "iss": "your-issuer",
            "sub": "user-12345",
        },
        SECRET_KEY,
    )
    answer = jwt_client.post("/send-email/", headers=bearer(token), json=EMAIL_TO)
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["result"] == body["request_id"]
    assert wait_final(jwt_client, body["request_id"])["status"] == "sent"
    [received] = smtp_server.received
    assert received.mail_from == SENDER


def test_jwt_signed_with_a_senders_api_key_sends_as_that_sender(jwt_client, smtp_server):
    # OTHER_KEY's sender has no jwt_secret: its API key is the secret (the second service's
    # clients sign {"test": "data"} with their API_KEY, no expiry).
    token = sign({"test": "data"}, OTHER_KEY)
    body = {**EMAIL_TO, "email_from": OTHER_SENDER}
    answer = jwt_client.post("/send-email/", headers=bearer(token), json=body)
    assert answer.status_code == 202
    assert wait_final(jwt_client, answer.get_json()["request_id"])["status"] == "sent"
    assert [m.mail_from for m in smtp_server.received] == [OTHER_SENDER]


def test_jwt_of_another_sender_never_sends_as_the_first(jwt_client, smtp_server):
    # Signed with OTHER_KEY, claiming SENDER's address: it is OTHER_SENDER's JWT, so 403.
    token = sign({"sub": SENDER}, OTHER_KEY)
    answer = jwt_client.post("/send-email/", headers=bearer(token), json=EMAIL_TO)
    assert answer.status_code == 403
    # Once a sender has a jwt_secret, its API key no longer signs JWTs for it.
    answer = jwt_client.post("/send-email/", headers=bearer(sign({}, API_KEY)), json=EMAIL_TO)
    assert answer.status_code == 401
    assert smtp_server.received == []


def _unsigned(payload: str) -> str:
    # {"alg":"none","typ":"JWT"}, as PyJWT writes an unsecured JWT: no signature at all.
    return f"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(_unsigned("eyJ0ZXN0IjoiZGF0YSJ9"), id="alg-none"),
        pytest.param(sign({"test": "data"}, SECRET_KEY, "HS512"), id="HS512"),
        pytest.param(sign({"test": "data"}, SECRET_KEY, "HS384"), id="HS384"),
        pytest.param(sign({"test": "data"}, "not-the-secret-of-anyone"), id="bad-signature"),
        pytest.param(sign({"test": "data"}, SECRET_KEY)[:-4] + "AAAA", id="tampered"),
        pytest.param(sign({"exp": int(time.time()) - 60}, SECRET_KEY), id="expired"),
        pytest.param(sign({"nbf": int(time.time()) + 600}, SECRET_KEY), id="not-yet-valid"),
        pytest.param(sign({"aud": "someone-else"}, SECRET_KEY), id="audience"),
    ],
)
def test_a_jwt_that_is_not_hs256_signed_by_a_sender_and_current_is_401(
    jwt_client, smtp_server, token
):
    answer = jwt_client.post("/send-email/", headers=bearer(token), json=EMAIL_TO)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="mail"'
    assert smtp_server.received == []


def test_the_first_clients_hard_coded_expired_token_is_401(jwt_client):
    # Verbatim from its tests/test_email.py: exp 1688254650 (2023-07-01), so long expired.
    token = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6IlRlc3R0aGVTZXJ2aWNlIiwiZXhwIjox"
        "Njg4MjU0NjUwLCJpc3MiOiJ5b3VyLWlzc3VlciIsInN1YiI6InVzZXItMTIzNDUifQ.8bZgW0xObI7HePQkbe"
        "MqVktjSsioHdicKM8u72sCatY"
    )
    assert jwt_client.post("/send-email/", headers=bearer(token), json=EMAIL_TO).status_code == 401


def test_failed_jwts_count_as_failed_authentications(make_app, smtp_server, tmp_path):
    senders = write_jwt_senders(tmp_path / "jwt-senders.csv", smtp_server.port)
    client = make_app(
        smtp_server.port, senders_file=str(senders), auth_fail_limit="2/minute"
    ).test_client()
    expired = sign({"exp": int(time.time()) - 60}, SECRET_KEY)
    for _ in range(2):
        assert (
            client.post("/send-email/", headers=bearer(expired), json=EMAIL_TO).status_code == 401
        )
    good = sign({"test": "data"}, SECRET_KEY)
    answer = client.post("/send-email/", headers=bearer(good), json=EMAIL_TO)
    assert answer.status_code == 429
    assert smtp_server.received == []


def test_a_jwt_counts_against_its_senders_rate_limit(make_app, smtp_server, tmp_path):
    senders = write_jwt_senders(tmp_path / "jwt-senders.csv", smtp_server.port)
    client = make_app(smtp_server.port, senders_file=str(senders), rate_limit="2/minute")
    client = client.test_client()
    key = {"Authorization": f"Bearer {API_KEY}"}
    assert client.post("/send-email/", headers=key, json=EMAIL_TO).status_code == 202
    first = sign({"n": 1}, SECRET_KEY)
    assert client.post("/send-email/", headers=bearer(first), json=EMAIL_TO).status_code == 202
    fresh = sign({"n": 2}, SECRET_KEY)  # a fresh JWT buys nothing
    assert client.post("/send-email/", headers=bearer(fresh), json=EMAIL_TO).status_code == 429


def test_a_jwt_is_accepted_only_as_bearer(jwt_client, smtp_server):
    token = sign({"test": "data"}, SECRET_KEY)
    answer = jwt_client.post("/send-email/", headers={"X-API-Key": token}, json=EMAIL_TO)
    assert answer.status_code == 401


# -- the module and the senders file -----------------------------------------------------------


def test_only_three_segment_hs256_credentials_are_tried():
    assert looks_like_jwt(sign({}, SECRET_KEY))
    assert not looks_like_jwt(sign({}, SECRET_KEY, "HS512"))
    assert not looks_like_jwt(_unsigned("e30"))  # empty signature
    assert not looks_like_jwt(API_KEY)
    assert not looks_like_jwt("a.b.c")  # not JSON
    assert not looks_like_jwt(sign({"pad": "x" * 9000}, SECRET_KEY))  # past MAX_LENGTH


def test_key_digest_of_names_the_matching_secrets_key():
    secrets = [(b"secret-one", b"digest-one"), (b"secret-two", b"digest-two")]
    assert key_digest_of(sign({}, "secret-two"), secrets) == b"digest-two"
    assert key_digest_of(sign({}, "secret-one"), secrets) == b"digest-one"
    assert key_digest_of(sign({}, "secret-three"), secrets) is None


def test_jwt_secrets_are_the_jwt_secret_else_the_key_and_never_shown():
    with_secret = Sender("a@example.com", "pw", "h", 25, "none", jwt_secret=SECRET_KEY)
    without = Sender("b@example.com", "pw", "h", 25, "none")
    directory = SenderDirectory([(API_KEY, with_secret), (OTHER_KEY, without)])
    assert directory.jwt_secrets() == [
        (SECRET_KEY.encode(), key_digest(API_KEY)),
        (OTHER_KEY.encode(), key_digest(OTHER_KEY)),
    ]
    for shown in (repr(with_secret), repr(directory)):
        assert SECRET_KEY not in shown and API_KEY not in shown


def test_two_senders_with_one_jwt_secret_stop_start_up(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(
        "key,email,app_password,jwt_secret\n"
        f"{API_KEY},{SENDER},,shared-secret\n"
        f"{OTHER_KEY},{OTHER_SENDER},,shared-secret\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="same JWT secret"):
        load_senders(Settings(senders_file=str(path)))
    # A jwt_secret equal to another sender's key is just as ambiguous.
    path.write_text(
        f"key,email,app_password,jwt_secret\n{API_KEY},{SENDER},,{OTHER_KEY}\n"
        f"{OTHER_KEY},{OTHER_SENDER},,\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=f"senders file {path}.*same JWT secret"):
        load_senders(Settings(senders_file=str(path)))
