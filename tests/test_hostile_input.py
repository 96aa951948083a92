"""Hostile input: malformed and malicious requests get the right 4xx and nothing is sent.

The catalogue (`CATALOGUE`) is one list of raw requests, each with the status it must get and a
word its answer must mention (the field or the reason). Every case is checked for: the exact
status, an application/problem+json body with a matching `status`, no traceback, and no key or
password in the answer; and the SMTP server must receive nothing for it. Further tests run the
whole catalogue in sequence before one valid send (exactly one message arrives), check the logs
for secrets, the delivery of international addresses, constant-time keys, and a hypothesis
property: no JSON value, nor any byte string, makes the API answer 5xx.
"""

from __future__ import annotations

import base64
import json
import logging
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mail_server import EXTENSION, create_app
from mailservice.api import schemas
from mailservice.config import Settings
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import (
    API_KEY,
    OTHER_KEY,
    OTHER_SENDER,
    SENDER,
    send,
    wait_final,
    wait_for,
    write_senders,
)

PASSWORD = "sup3r-secret-pass"
UNKNOWN_KEY = "unknown-key-5555555555"
SECRETS = (API_KEY, OTHER_KEY, PASSWORD, UNKNOWN_KEY)
PROBLEM = "application/problem+json"
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # the default of MAX_REQUEST_BYTES
QUERY = ":query"  # pseudo-header of a case: the URL's query string

VALID: dict[str, Any] = {"recipient": "user@example.com", "subject": "Hi", "body": "Hello"}


def body(**fields: Any) -> dict[str, Any]:
    """The valid body with some fields replaced (a value of ... drops the field)."""
    result = {**VALID, **fields}
    return {name: value for name, value in result.items() if value is not ...}


def raw(text: str) -> bytes:
    return text.encode("utf-8")


def nested(depth: int) -> bytes:
    """A body whose deepest value is `depth` levels down (the top object is level 1)."""
    inner = '{"a": ' * (depth - 1) + "1" + "}" * (depth - 1)
    return raw(
        '{"recipient": "user@example.com", "subject": "Hi", "body": "x", "n": ' + inner + "}"
    )


# -- the catalogue ---------------------------------------------------------------------------

# Each line break or encoded word, put into each header-bearing field.
INJECTIONS = {
    "CR": "\r",
    "LF": "\n",
    "CRLF": "\r\n",
    "U+2028": "\u2028",
    "U+2029": "\u2029",
    "U+0085": "\u0085",
    "NUL": "\0",
    # Format characters (Cf): a right-to-left override, a zero-width space, a BOM (issue 9).
    "U+202E": "\u202e",
    "U+200B": "\u200b",
    "U+FEFF": "\ufeff",
    "qword": "=?utf-8?q?=0D=0ABcc:_eve@evil.example?=",
    "bword": "=?UTF-8?B?DQpCY2M6IGV2ZUBldmlsLmV4YW1wbGU=?=",
}


def _text_value(injection: str) -> str:
    if injection.startswith("=?"):
        return f"Hello {injection}"
    return f"Hello{injection}Bcc: eve@evil.example"


def _address_value(injection: str) -> str:
    if injection.startswith("=?"):
        return f"{injection}@example.com"
    return f"user@example.com{injection}Bcc: eve@evil.example"


TEXT_FIELDS: dict[str, Callable[[str], dict[str, Any]]] = {
    "subject": lambda v: body(subject=v),
    "from_name": lambda v: body(from_name=v),
    "headers.X-Custom": lambda v: body(headers={"X-Custom": v}),
    "headers.In-Reply-To": lambda v: body(headers={"In-Reply-To": v}),
    "headers.References": lambda v: body(headers={"References": v}),
    "headers.List-Unsubscribe": lambda v: body(headers={"List-Unsubscribe": v}),
    "headers.second-value": lambda v: body(headers={"X-Ok": "fine", "X-Evil": v}),
}
ADDRESS_FIELDS: dict[str, Callable[[str], dict[str, Any]]] = {
    "recipient": lambda v: body(recipient=v),
    "to": lambda v: body(recipient=..., to=v),
    "recipient.1": lambda v: body(recipient=["user@example.com", v]),
    "cc": lambda v: body(cc=[v]),
    "bcc": lambda v: body(bcc=["ok@example.com", v]),
    "reply_to": lambda v: body(reply_to=v),
    # An address that isn't one is a 400 before `from` is compared with the sender (403).
    "from": lambda v: body(**{"from": v.replace("user@example.com", SENDER)}),
}

# The error each field must report: its path as the user wrote it (list items by index).
INJECTION_FIELDS = {"headers.second-value": "headers.X-Evil", "cc": "cc.0", "bcc": "bcc.1"}


def injection_error(field: str, injection: str) -> str:
    """The field error (as it appears in the answer's JSON) an injection must produce."""
    if injection.startswith("=?"):
        message = "must not contain an RFC 2047 encoded word"
    else:
        kind = "format" if unicodedata.category(injection[0]) == "Cf" else "control"
        message = f"must not contain {kind} character U+{ord(injection[0]):04X}"
    return json.dumps({"field": INJECTION_FIELDS.get(field, field), "message": message})[:-2]


INJECTION_CASES = [
    pytest.param(
        build(maker(injection)), {}, 400, injection_error(field, injection), id=f"{field}-{name}"
    )
    for fields, maker in ((TEXT_FIELDS, _text_value), (ADDRESS_FIELDS, _address_value))
    for field, build in fields.items()
    for name, injection in INJECTIONS.items()
]


def field_error(field: str, message: str) -> str:
    """The start of a field error as it appears in the answer's JSON."""
    return json.dumps({"field": field, "message": message})[:-2]


NUL_IN_CONTENT = "must not contain NUL (U+0000)"
# Display names that read as an address, or not as they are written (issue 9).
IMPERSONATING_NAMES = {
    "quoted-address": ('"ceo@bank.com" <ceo@bank.com>', "'@'"),
    "bare-address": ("ceo@bank.com", "'@'"),
    "angle-open": ("CEO <", "'<'"),
    "angle-close": ("CEO > Finance", "'>'"),
    "rtl-override": ("Bank\u202eKO", "format character U+202E"),
    "rtl-override-and-at": ("moc.knab\u202e@ceo", "format character U+202E"),
    "zero-width": ("C\u200bEO", "format character U+200B"),
    "bom": ("\ufeffCEO", "format character U+FEFF"),
    "word-joiner": ("CE\u2060O", "format character U+2060"),
}

LONG_LOCAL = "a" * 65 + "@example.com"
# 64 + 1 + 190 = 255 octets: every part is valid, the whole is one too long.
LONG_ADDRESS = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com"
assert len(LONG_ADDRESS) == 255

CATALOGUE = [
    *INJECTION_CASES,
    # -- line breaks sent as raw UTF-8 bytes rather than JSON escapes
    pytest.param(
        raw('{"recipient": "user@example.com", "subject": "a\u2028b", "body": "x"}'),
        {},
        400,
        "subject",
        id="subject-raw-utf8-U+2028",
    ),
    pytest.param(
        raw('{"recipient": "user@example.com", "subject": "a\u0085Bcc: e@x.example", "body": "x"}'),
        {},
        400,
        "subject",
        id="subject-raw-utf8-U+0085",
    ),
    # -- NUL in the content (issue 9, finding 8): RFC 5322 and RFC 2045 forbid it in a part
    *[
        pytest.param(
            body(**fields), {}, 400, field_error(field, NUL_IN_CONTENT), id=f"content-nul-{field}"
        )
        for field, fields in {
            "body": {"body": "Hello\0world"},
            "text": {"body": ..., "text": "\0"},
            "html": {"body": ..., "text": "plain", "html": "<p>a\0b</p>"},
        }.items()
    ],
    pytest.param(
        raw('{"recipient": "user@example.com", "subject": "Hi", "body": "a\\u0000b"}'),
        {},
        400,
        field_error("body", NUL_IN_CONTENT),
        id="content-nul-json-escape",
    ),
    # -- display names that impersonate (issue 9, finding 9)
    *[
        pytest.param(
            body(from_name=name),
            {},
            400,
            field_error("from_name", f"must not contain {reason}"),
            id=f"from_name-{ident}",
        )
        for ident, (name, reason) in IMPERSONATING_NAMES.items()
    ],
    pytest.param(
        body(subject="Invoice \u202efdp.exe"),
        {},
        400,
        field_error("subject", "must not contain format character U+202E"),
        id="subject-rtl-override-filename",
    ),
    # -- header names and counts
    *[
        pytest.param(body(headers={name: "x"}), {}, 400, "not allowed", id=f"header-name-{ident}")
        for ident, name in {
            "Bcc": "Bcc",
            "Content-Type": "Content-Type",
            "From": "From",
            "Message-ID": "Message-ID",
            "space": "X-Bad Name",
            "colon": "X-A:B",
            "non-ASCII": "X-Ünïcode",
            "CRLF": "X-A\r\nBcc",
            "empty": "",
            "X-only": "X-",
        }.items()
    ],
    pytest.param(
        body(headers={"X-Dup": "1", "X-DUP": "2"}), {}, 400, "twice", id="header-name-twice"
    ),
    pytest.param(
        body(headers={f"X-H{i}": "v" for i in range(21)}), {}, 400, "at most 20", id="headers-21"
    ),
    pytest.param(
        body(headers={f"X-H{i}": "v" for i in range(10_000)}),
        {},
        400,
        "at most 20",
        id="headers-10000",
    ),
    # -- size and counts
    pytest.param(
        raw(json.dumps(body(body="x" * MAX_REQUEST_BYTES))), {}, 413, "too large", id="body-10MiB+"
    ),
    pytest.param(
        body(recipient=[f"user{i}@example.com" for i in range(10_000)]),
        {},
        400,
        "10000 recipients",
        id="recipients-10000",
    ),
    pytest.param(
        body(
            recipient=[f"to{i}@example.com" for i in range(17)],
            cc=[f"cc{i}@example.com" for i in range(17)],
            bcc=[f"bcc{i}@example.com" for i in range(17)],
        ),
        {},
        400,
        "51 recipients",
        id="recipients-51-over-to-cc-bcc",
    ),
    pytest.param(
        body(recipient=["user@example.com"] * 51), {}, 400, "51 recipients", id="recipients-51-same"
    ),
    pytest.param(body(subject="x" * 999), {}, 400, "subject", id="subject-999-chars"),
    # -- JSON that is not one plain UTF-8 object
    pytest.param(nested(33), {}, 400, "deeper than 32", id="nesting-33"),
    pytest.param(
        raw("[" * 100_000 + "]" * 100_000), {}, 400, "deeper than 32", id="nesting-100000-arrays"
    ),
    pytest.param(
        raw('{"a": ' * 100_000 + "1" + "}" * 100_000),
        {},
        400,
        "deeper than 32",
        id="nesting-100000-objects",
    ),
    pytest.param(
        raw('{"recipient": "user@example.com", "subject": "Hi", "subject": "Hi", "body": "x"}'),
        {},
        400,
        "duplicate key",
        id="duplicate-key",
    ),
    pytest.param(
        raw(
            f'{{"key": "{UNKNOWN_KEY}", "recipient": "user@example.com", "subject": "Hi", '
            f'"body": "x", "key": "{API_KEY}"}}'
        ),
        {"Authorization": None},
        400,
        "duplicate key",
        id="duplicate-key-smuggles-key",
    ),
    *[
        pytest.param(
            raw(f'{{"recipient": "user@example.com", "subject": "Hi", "body": "x", "n": {c}}}'),
            {},
            400,
            "not valid json",
            id=f"constant-{c}",
        )
        for c in ("NaN", "Infinity", "-Infinity")
    ],
    pytest.param(
        raw('{"recipient": "user@example.com", "subject": "\\ud800", "body": "x"}'),
        {},
        400,
        "surrogate",
        id="lone-surrogate-in-subject",
    ),
    pytest.param(
        raw('{"recipient": "user@example.com", "subject": "Hi", "body": "x", "\\udfff": 1}'),
        {},
        400,
        "surrogate",
        id="lone-surrogate-in-key-name",
    ),
    pytest.param(
        json.dumps(body(subject="café")).replace("\\u00e9", "\xe9").encode("latin-1"),
        {},
        400,
        "utf-8",
        id="latin-1-body",
    ),
    pytest.param(json.dumps(VALID).encode("utf-16"), {}, 400, "utf-8", id="utf-16-with-bom"),
    pytest.param(json.dumps(VALID).encode("utf-16-le"), {}, 400, "json", id="utf-16-le"),
    # RFC 8259 forbids a BOM in JSON text; the contract asks for strict parsing, so 400.
    pytest.param(json.dumps(VALID).encode("utf-8-sig"), {}, 400, "json", id="utf-8-with-bom"),
    pytest.param(b"", {}, 400, "not valid json", id="empty-body"),
    pytest.param(b"   \r\n", {}, 400, "not valid json", id="whitespace-body"),
    pytest.param(b"\0" * 64, {}, 400, "not valid json", id="nul-bytes-body"),
    pytest.param([VALID], {}, 400, "must be an object", id="top-level-array"),
    pytest.param("recipient", {}, 400, "must be an object", id="top-level-string"),
    pytest.param(42, {}, 400, "must be an object", id="top-level-number"),
    pytest.param(None, {}, 400, "must be an object", id="top-level-null"),
    pytest.param(True, {}, 400, "must be an object", id="top-level-true"),
    pytest.param(
        raw(json.dumps(VALID) + '{"recipient": "eve@evil.example"}'),
        {},
        400,
        "extra data",
        id="trailing-object",
    ),
    pytest.param(raw(json.dumps(VALID) + "garbage"), {}, 400, "extra data", id="trailing-garbage"),
    pytest.param(raw(json.dumps(VALID)[:-1]), {}, 400, "not valid json", id="truncated-object"),
    # -- content type
    pytest.param(VALID, {"Content-Type": None}, 415, "content-type", id="no-content-type"),
    pytest.param(VALID, {"Content-Type": "text/plain"}, 415, "content-type", id="text-plain"),
    pytest.param(
        VALID,
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "content-type",
        id="form-urlencoded",
    ),
    pytest.param(
        VALID, {"Content-Type": "application/json; charset=utf-16"}, 415, "utf-8", id="utf-16-type"
    ),
    pytest.param(
        VALID,
        {"Content-Type": "application/json; charset=latin-1"},
        415,
        "utf-8",
        id="latin-1-type",
    ),
    # -- wrong types
    *[
        pytest.param(body(**{field: value}), {}, 400, field, id=f"type-{field}-{ident}")
        for field, ident, value in (
            ("subject", "number", 42),
            ("subject", "list", ["Hi"]),
            ("subject", "null", None),
            ("subject", "object", {"text": "Hi"}),
            ("recipient", "number", 42),
            ("recipient", "object", {"address": "user@example.com"}),
            ("recipient", "numbers", [1, 2]),
            ("recipient", "null", None),
            ("recipient", "empty-list", []),
            ("recipient", "nested-list", [["user@example.com"]]),
            ("is_html", "string", "true"),
            ("is_html", "number", 1),
            ("headers", "list", [["X-A", "b"]]),
            ("headers", "string", "X-A: b"),
            ("headers", "number-value", {"X-A": 1}),
            ("cc", "string", "cc@example.com"),
            ("bcc", "object", {"a": "bcc@example.com"}),
            ("body", "number", 1),
            ("body", "list", ["Hello"]),
            ("from_name", "number", 7),
            ("reply_to", "list", ["r@example.com"]),
            ("from", "list", [SENDER]),
        )
    ],
    pytest.param(body(subject=...), {}, 400, "subject", id="missing-subject"),
    pytest.param(body(recipient=...), {}, 400, "recipient", id="missing-recipient"),
    pytest.param(body(body=...), {}, 400, "content", id="missing-content"),
    pytest.param(body(subject=""), {}, 400, "subject", id="empty-subject"),
    pytest.param(body(text="plain"), {}, 400, "either body or text", id="body-and-text"),
    # Both spellings of the recipient at once: refuse rather than silently drop one of them.
    pytest.param(body(to="other@example.com"), {}, 400, "to", id="recipient-and-to"),
    # -- addresses that are not exactly one valid addr-spec
    *[
        pytest.param(body(recipient=address), {}, 400, "recipient", id=f"address-{ident}")
        for ident, address in {
            "no-at": "user.example.com",
            "two-at": "user@host@example.com",
            "space": "us er@example.com",
            "display-name": "Bob <bob@example.com>",
            "no-dot": "a@b",
            "quoted-local-part": '"x"@example.com',
            "quoted-local-part-with-at": '"eve@evil.example"@example.com',
            "local-part-65": LONG_LOCAL,
            "address-255": LONG_ADDRESS,
            "comment": "a(comment)@example.com",
            "two-in-one": "bob@example.com, eve@evil.example",
            "two-with-semicolon": "bob@example.com;eve@evil.example",
            "crlf-bcc": "bob@example.com\r\nBcc: eve@evil.example",
            "ip-literal": "user@[127.0.0.1]",
            "trailing-dot": "user@example.com.",
            "empty": "",
            "only-at": "@",
            "localhost": "root@localhost",
            "huge": "a" * 100_000 + "@example.com",
        }.items()
    ],
    pytest.param(body(cc=["Eve <eve@evil.example>"]), {}, 400, "cc", id="address-cc-display"),
    pytest.param(body(reply_to="a@b"), {}, 400, "reply_to", id="address-reply_to-no-dot"),
    # -- who may send as whom
    pytest.param(body(**{"from": "eve@evil.example"}), {}, 403, "from", id="from-foreign"),
    pytest.param(body(**{"from": OTHER_SENDER}), {}, 403, "from", id="from-other-keys-sender"),
    pytest.param(
        body(**{"from": f"{SENDER}, eve@evil.example"}), {}, 400, "from", id="from-two-addresses"
    ),
    pytest.param(body(**{"from": f"Eve <{SENDER}>"}), {}, 400, "from", id="from-display-name-form"),
    # `email_from` is the seed field of the drop-in route (API.md section 7), which isn't on this
    # branch; on POST /send-email it is an unknown field.
    pytest.param(body(email_from="eve@evil.example"), {}, 400, "email_from", id="email_from"),
    # -- keys
    pytest.param(VALID, {QUERY: {"key": API_KEY}}, 400, "url", id="key-in-query"),
    pytest.param(VALID, {QUERY: {"api_key": API_KEY}}, 400, "url", id="api_key-in-query"),
    pytest.param(
        VALID,
        {QUERY: {"access_token": API_KEY}, "Authorization": None},
        400,
        "url",
        id="access_token-in-query-only",
    ),
    pytest.param(VALID, {"Authorization": None}, 401, "api key", id="missing-key"),
    pytest.param(
        VALID, {"Authorization": f"Bearer {UNKNOWN_KEY}"}, 401, "api key", id="unknown-key"
    ),
    pytest.param(
        VALID, {"Authorization": None, "X-API-Key": UNKNOWN_KEY}, 401, "api key", id="unknown-x-key"
    ),
    pytest.param(
        VALID,
        {"Authorization": "Basic " + base64.b64encode(f"{SENDER}:{API_KEY}".encode()).decode()},
        401,
        "api key",
        id="basic-auth",
    ),
    pytest.param(VALID, {"Authorization": "Bearer "}, 401, "api key", id="empty-bearer"),
    pytest.param(body(key=123), {"Authorization": None}, 401, "api key", id="key-number"),
    pytest.param(body(key=[API_KEY]), {"Authorization": None}, 401, "api key", id="key-list"),
    pytest.param(body(key=UNKNOWN_KEY), {"Authorization": None}, 401, "api key", id="key-unknown"),
    pytest.param(
        body(key=API_KEY + "\0"), {"Authorization": None}, 401, "api key", id="key-nul-suffix"
    ),
    # -- Idempotency-Key
    pytest.param(VALID, {"Idempotency-Key": "k" * 256}, 400, "idempotency", id="idem-256"),
    pytest.param(VALID, {"Idempotency-Key": ""}, 400, "idempotency", id="idem-empty"),
    pytest.param(VALID, {"Idempotency-Key": "k\x01k"}, 400, "idempotency", id="idem-control"),
    # -- unknown fields
    pytest.param(body(recipent="user@example.com"), {}, 400, "recipent", id="unknown-recipent"),
    pytest.param(body(subjet="typo"), {}, 400, "subjet", id="unknown-subjet"),
    pytest.param(body(Bcc="eve@evil.example"), {}, 400, "bcc", id="unknown-capital-Bcc"),
    pytest.param(body(password=PASSWORD), {}, 400, "password", id="unknown-password-field"),
]


# -- running a case --------------------------------------------------------------------------


def post(client: FlaskClient, payload: Any, headers: dict[str, Any]):
    """POST /send-email with the case's body and the test key, unless the case says otherwise."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent: dict[str, Any] = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {API_KEY}",
    }
    for name, value in headers.items():
        if value is None:
            sent.pop(name, None)
        else:
            sent[name] = value
    query = sent.pop(QUERY, None)
    return client.post("/send-email", data=data, headers=sent, query_string=query)


def assert_problem(response, status: int, mentions: str = "") -> dict[str, Any]:
    """The answer is a problem+json of `status` that shows no secret and mentions the reason."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text[:500]
    assert response.mimetype == PROBLEM
    answer = json.loads(text)
    assert answer["status"] == status
    assert {"type", "title", "detail"} <= answer.keys()
    assert "Traceback" not in text
    shown = text + "".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in SECRETS:
        assert secret not in shown
    if status == 400:
        assert isinstance(answer["errors"], list)
    assert mentions.lower() in json.dumps(answer, ensure_ascii=False).lower()
    return answer


@pytest.fixture(scope="module")
def auth_server() -> Iterator[SmtpServer]:
    """One AUTH-checking SMTP server for the catalogue (one per case would cost seconds)."""
    server = SmtpServer(logins={SENDER: PASSWORD, OTHER_SENDER: PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def catalogue_app(
    auth_server: SmtpServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flask]:
    folder = tmp_path_factory.mktemp("hostile")
    senders = write_senders(folder / "data.csv", auth_server.port, password=PASSWORD)
    app = create_app(
        Settings(
            senders_file=str(senders),
            email_log=str(folder / "email_log.txt"),
            smtp_host="127.0.0.1",
            smtp_port=auth_server.port,
            smtp_security="none",
            smtp_timeout=2.0,
            workers=2,
            rate_limit="",
            # The module's cases fail authentication on purpose, more than AUTH_FAIL_LIMIT
            # times from one address; the guard against that is tested in test_auth_guard.py.
            auth_fail_limit="",
        )
    )
    app.config["TESTING"] = True
    yield app
    app.extensions[EXTENSION].shutdown(0)
    app.extensions[EXTENSION].store.close()


@pytest.fixture
def auth_smtp(start_smtp: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp(logins={SENDER: PASSWORD, OTHER_SENDER: PASSWORD})


def test_catalogue_has_at_least_40_distinct_cases():
    ids = [case.id for case in CATALOGUE]
    assert len(ids) == len(set(ids)) >= 40


@pytest.mark.parametrize(("payload", "headers", "status", "mentions"), CATALOGUE)
def test_hostile_request_gets_its_4xx_and_sends_nothing(
    catalogue_app: Flask, auth_server: SmtpServer, payload, headers, status, mentions
):
    pool = catalogue_app.extensions[EXTENSION].pool
    wait_for(lambda: pool.unfinished() == 0)  # a case wrongly accepted fails alone
    before = len(auth_server.received)
    response = post(catalogue_app.test_client(), payload, headers)
    assert_problem(response, status, mentions)
    assert pool.unfinished() == 0
    assert len(auth_server.received) == before


# -- after the catalogue ---------------------------------------------------------------------


def run_catalogue(client: FlaskClient) -> None:
    for case in CATALOGUE:
        payload, headers, status, mentions = case.values
        assert_problem(post(client, payload, headers), status, mentions)


def test_after_every_hostile_case_one_valid_send_is_the_only_message(make_app, auth_smtp):
    app = make_app(auth_smtp.port, password=PASSWORD)
    client = app.test_client()
    run_catalogue(client)
    response = send(client, body(recipient="only@example.com"))
    assert response.status_code == 202
    assert wait_final(client, response.get_json()["request_id"])["status"] == "sent"
    assert app.extensions[EXTENSION].pool.unfinished() == 0
    [received] = auth_smtp.received
    assert received.rcpt_tos == ["only@example.com"]
    assert auth_smtp.logins_seen == [SENDER]
    assert client.get("/healthz").status_code == 200


def test_no_key_or_password_in_logs_email_log_or_status(
    make_app, start_smtp, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # OTHER_SENDER's login is refused (535): its configured password is not the server's.
    server = start_smtp(logins={SENDER: PASSWORD, OTHER_SENDER: "the-servers-own-pass"})
    caplog.set_level(logging.DEBUG)
    app = make_app(server.port, password=PASSWORD)
    client = app.test_client()
    run_catalogue(client)
    response = send(client, key=OTHER_KEY)
    assert response.status_code == 202
    status = wait_final(client, response.get_json()["request_id"])
    assert status["status"] == "failed"
    assert "535" in status["error"]
    status_text = client.get(f"/email-status/{status['request_id']}").get_data(as_text=True)
    app.extensions[EXTENSION].request_log.close()
    email_log = (tmp_path / "email_log.txt").read_text(encoding="utf-8")
    assert "Status: failed (login refused: 535" in email_log
    # The SMTP server under test (aiosmtpd, logger "mail.log") is not the service: it may log
    # the base64 AUTH exchange it received. What the service logs may not carry it either.
    service_lines = "\n".join(
        record.getMessage() + (record.exc_text or "")
        for record in caplog.records
        if not record.name.startswith("mail.log")
    )
    assert any(record.levelno == logging.DEBUG for record in caplog.records)
    credentials = f"\0{OTHER_SENDER}\0{PASSWORD}".encode()
    encoded = [base64.b64encode(v).decode() for v in (PASSWORD.encode(), credentials)]
    for secret in (*SECRETS, *encoded):
        assert secret not in status_text
        assert secret not in email_log
        assert secret not in service_lines
    for secret in SECRETS:
        assert secret not in caplog.text


def test_10000_recipients_are_refused_before_any_address_is_validated(catalogue_app, monkeypatch):
    calls: list[str] = []
    real = schemas.validate_address

    def counting(value: str, **kwargs: Any):
        calls.append(value)
        return real(value, **kwargs)

    monkeypatch.setattr(schemas, "validate_address", counting)
    models: list[object] = []
    real_model = schemas.SendRequest.model_validate

    def counting_model(value: object, **kwargs: Any):
        models.append(value)
        return real_model(value, **kwargs)

    monkeypatch.setattr(schemas.SendRequest, "model_validate", counting_model)
    response = send(
        catalogue_app.test_client(),
        body(recipient=[f"user{i}@example.com" for i in range(10_000)]),
    )
    assert_problem(response, 400, "10000 recipients; the limit is 50")
    # The count is checked on the raw body: no address is validated and the request model
    # is never built, so the work does not grow with the list (counted, not timed).
    assert calls == []
    assert models == []


def test_error_field_of_a_bad_list_item_is_its_path(catalogue_app):
    response = send(
        catalogue_app.test_client(), body(recipient=["user@example.com", "bad\r\n@example.com"])
    )
    answer = assert_problem(response, 400)
    assert {"field": "recipient.1", "message": "must not contain control character U+000D"} in (
        answer["errors"]
    )
    assert all("function-" not in e["field"] and "[" not in e["field"] for e in answer["errors"])


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "presented",
    [
        API_KEY[:-1] + chr(ord(API_KEY[-1]) + 1),
        API_KEY[:-1],
        API_KEY[:1],
        API_KEY + "0",
        API_KEY.upper(),
        API_KEY + "\0",
        OTHER_KEY[:-1] + API_KEY[-1],
    ],
    ids=["last-char", "prefix", "first-char", "suffix", "upper", "nul-suffix", "other-mixed"],
)
def test_near_miss_keys_are_refused(catalogue_app, auth_server, presented: str):
    before = len(auth_server.received)
    client = catalogue_app.test_client()
    assert_problem(send(client, key=presented), 401, "api key")
    assert_problem(send(client, body(key=presented), key=""), 401, "api key")
    assert len(auth_server.received) == before


def test_the_exact_key_is_accepted_in_header_and_body(catalogue_app, auth_server):
    client = catalogue_app.test_client()
    assert send(client).status_code == 202
    assert send(client, body(key=API_KEY), key="").status_code == 202
    assert send(client, key="", headers={"X-API-Key": OTHER_KEY}).status_code == 202


def test_keys_are_compared_with_compare_digest(catalogue_app, monkeypatch):
    from mailservice import senders

    compared: list[int] = []
    real = senders.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(len(a))
        return real(a, b)

    monkeypatch.setattr(senders.hmac, "compare_digest", spy)
    client = catalogue_app.test_client()
    assert send(client, key=API_KEY[:-1]).status_code == 401
    assert send(client, key=UNKNOWN_KEY).status_code == 401
    # Digests of equal length are compared, whatever the length of the presented key.
    assert compared == [32, 32]


# -- legal but hostile-looking values --------------------------------------------------------

SMUGGLED = "\r\n.\r\nMAIL FROM:<eve@evil.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"


@pytest.mark.parametrize(
    "end_of_data",
    ["\r\n.\r\n", "\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\n"],
    ids=["CRLF.CRLF", "LF.LF", "LF.CRLF", "CR.CRLF", "CRLF.LF"],
)
def test_values_that_only_look_like_headers_or_smtp_are_sent_as_data(
    make_app, auth_smtp, end_of_data: str
):
    """Legal values stay values: a display name with an address in it, a header value that
    reads like a header, a body that tries to end DATA and start a second transaction (SMTP
    smuggling). One message, to one recipient, from the key's sender, body intact."""
    client = make_app(auth_smtp.port, password=PASSWORD).test_client()
    payload = body(
        from_name='Eve, "Admin" (IT); Bcc: eve',  # specials only: quoted, never parsed
        subject="Re: =? not an encoded word ?=",
        headers={"X-Note": "Bcc: eve@evil.example"},
        body="Hello" + SMUGGLED.replace("\r\n.\r\n", end_of_data) + "Bye\r\n.\r\n",
    )
    response = send(client, payload)
    assert response.status_code == 202
    assert wait_final(client, response.get_json()["request_id"])["status"] == "sent"
    [received] = auth_smtp.received
    assert auth_smtp.handler.transactions == 1
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["user@example.com"]
    message = received.message
    assert [a.addr_spec for a in message["From"].addresses] == [SENDER]
    assert message["From"].addresses[0].display_name == payload["from_name"]
    assert [a.addr_spec for a in message["To"].addresses] == ["user@example.com"]
    assert message["Bcc"] is None
    assert message["X-Note"] == "Bcc: eve@evil.example"
    # Line ends come out as CRLF (dot-stuffed on the wire, unstuffed here); no line is lost.
    assert message.get_content().splitlines() == payload["body"].splitlines()


def test_printable_unicode_tab_and_nbsp_stay_allowed_in_header_values(catalogue_app):
    """The format-character rule refuses what renders invisibly or reorders text, not
    ordinary non-ASCII text, emoji, TAB (folding whitespace) or a no-break space."""
    payload = body(
        subject="Zoë\tÜnal \u00a0🎉 ✓ «Café» 日本語",
        from_name='Zoë Ünal (Café), "Support"',
        headers={"X-Note": "a\tb\u00a0c"},
        body="line\u200bwith zero-width space and \u202e in the content is fine",
    )
    assert send(catalogue_app.test_client(), payload).status_code == 202


# -- international addresses ----------------------------------------------------------------


def test_idn_recipient_is_accepted_and_sent_in_its_ascii_form(make_app, auth_smtp):
    client = make_app(auth_smtp.port, password=PASSWORD).test_client()
    response = send(client, body(recipient="user@bücher.example", cc=["Ops@Bücher.Example"]))
    assert response.status_code == 202
    status = wait_final(client, response.get_json()["request_id"])
    assert status["status"] == "sent"
    [received] = auth_smtp.received
    assert received.rcpt_tos == ["user@xn--bcher-kva.example", "Ops@xn--bcher-kva.example"]
    assert "SMTPUTF8" not in [o.upper() for o in received.mail_options]
    assert received.message["To"] == "user@xn--bcher-kva.example"


def test_non_ascii_local_part_is_accepted_and_its_delivery_outcome_is_clear(make_app, auth_smtp):
    """aiosmtpd doesn't offer SMTPUTF8 unless asked: the request must end in a clear `failed`
    naming SMTPUTF8 (or `sent` with SMTPUTF8, should the server offer it), never a crash."""
    client = make_app(auth_smtp.port, password=PASSWORD).test_client()
    response = send(client, body(recipient="jörg@example.com"))
    assert response.status_code == 202
    status = wait_final(client, response.get_json()["request_id"])
    if status["status"] == "sent":
        [received] = auth_smtp.received
        assert received.rcpt_tos == ["jörg@example.com"]
        assert "SMTPUTF8" in [o.upper() for o in received.mail_options]
    else:
        assert status["status"] == "failed"
        assert "SMTPUTF8" in status["error"]
        assert auth_smtp.received == []
    assert client.get("/healthz").status_code == 200


# -- properties ------------------------------------------------------------------------------

FIELD_NAMES = [
    "recipient", "to", "cc", "bcc", "subject", "body", "is_html", "text", "html", "from_name",
    "from", "reply_to", "headers", "key",
]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
addresses = st.sampled_from(
    ["user@example.com", "a@b", "user@bücher.example", "jörg@example.com", SENDER, ""]
)
field_values = (
    json_values
    | addresses
    | st.lists(addresses, max_size=3)
    | st.text(alphabet=st.sampled_from("ab\r\n\0\u2028=?q"), max_size=8)
    | st.dictionaries(st.sampled_from(["X-A", "Bcc", "References", "X-B c"]), st.text(max_size=5))
)
near_valid_bodies = st.fixed_dictionaries(
    {"recipient": addresses, "subject": st.text(max_size=20), "body": st.text(max_size=20)},
    optional={n: field_values for n in FIELD_NAMES if n not in ("recipient", "subject", "body")},
)
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_not_5xx(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code != 202:
        assert response.mimetype == PROBLEM
        assert "Traceback" not in response.get_data(as_text=True)


@pytest.fixture
def property_client(make_app, smtp_server: SmtpServer) -> FlaskClient:
    """One app for every example of a property (built once per test, not per example)."""
    return make_app(smtp_server.port).test_client()


@PROPERTY
@given(
    payload=json_values
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), field_values)
    | near_valid_bodies
)
def test_random_json_never_gets_a_5xx(property_client: FlaskClient, payload: Any):
    assert_not_5xx(post(property_client, payload, {}))


@PROPERTY
@given(data=st.binary(max_size=200))
def test_random_bytes_never_get_a_5xx(property_client: FlaskClient, data: bytes):
    assert_not_5xx(post(property_client, data, {}))


def test_property_app_delivers_what_it_accepts(property_client: FlaskClient, smtp_server):
    """The 202 path the properties reach does deliver (so they exercise it for real)."""
    response = send(property_client, body(recipient=["user@example.com", "user@bücher.example"]))
    assert response.status_code == 202
    assert wait_final(property_client, response.get_json()["request_id"])["status"] == "sent"
    wait_for(lambda: smtp_server.received)


def test_lowercase_x_header_name_is_accepted_and_sent(client, smtp_server):
    body = {"recipient": "user@example.com", "subject": "s", "body": "b"}
    answer = send(client, {**body, "headers": {"x-campaign": "spring"}})
    assert answer.status_code == 202
    wait_final(client, answer.get_json()["request_id"])
    assert smtp_server.received[-1].message["X-Campaign"] == "spring"
