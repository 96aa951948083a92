"""The HTTP contract of POST /send-email and GET /email-status (API.md sections 2, 3, 4 and 6)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from mail_server import EXTENSION
from tests.conftest import API_KEY, OTHER_KEY, SENDER, STATUS_KEYS, send, wait_final, wait_for

PROBLEM = "application/problem+json"
VALID = {"recipient": "user@example.com", "subject": "Hi", "body": "Hello"}


def with_(**fields: Any) -> dict[str, Any]:
    """The valid body with some fields changed (None removes one)."""
    body = {**VALID, **fields}
    return {k: v for k, v in body.items() if v is not None}


def post_raw(client, data: bytes | str, content_type: str = "application/json", **kw):
    headers = {"Authorization": f"Bearer {API_KEY}", **kw.pop("headers", {})}
    return client.post("/send-email", data=data, content_type=content_type, headers=headers, **kw)


def assert_problem(response, status: int) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with this status and no secret or traceback."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = json.loads(response.get_data())
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert_clean(response)
    if status == 400:
        assert isinstance(body["errors"], list)
    else:
        assert "errors" not in body
    return body


def assert_clean(response) -> None:
    text = response.get_data(as_text=True)
    assert API_KEY not in text
    assert OTHER_KEY not in text
    assert "Traceback" not in text
    assert 'File "' not in text


def error_fields(body: dict[str, Any]) -> list[str]:
    return [error["field"] for error in body["errors"]]


# -- accepted requests -----------------------------------------------------------------------


def test_accepted_send_answers_202_with_body_and_location(client):
    response = send(client)
    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {"message", "request_id", "status"}
    assert body["message"] == "Email request is being processed"
    assert body["status"] == "queued"
    assert str(uuid.UUID(body["request_id"], version=4)) == body["request_id"]
    assert response.headers["Location"] == f"/email-status/{body['request_id']}"
    assert_clean(response)


def test_seed_body_with_key_field_is_accepted_and_delivered(client, smtp_server):
    seed_body = {
        "subject": "Welcome to Our Service",
        "recipient": "user@example.com",
        "body": "<h1>Hello!</h1> Thanks for joining us.",
        "is_html": True,
        "key": API_KEY,
    }
    response = send(client, seed_body, key="")
    assert response.status_code == 202
    assert wait_final(client, response.get_json()["request_id"])["status"] == "sent"
    [received] = smtp_server.received
    assert received.message["Subject"] == "Welcome to Our Service"
    # The HTML, last of multipart/alternative after the text rendered from it (API.md section 3).
    assert received.message.get_content_type() == "multipart/alternative"
    assert "<h1>Hello!</h1>" in received.message.get_body(("html",)).get_content()
    assert API_KEY.encode() not in received.content


def test_key_field_is_not_kept_with_the_stored_request(make_app, smtp_server):
    app = make_app(smtp_server.port, retry_backoff=10.0)
    client = app.test_client()
    smtp_server.handler.script("DATA", "451 4.3.0 later")  # keeps the request unfinished
    response = send(client, {**VALID, "key": API_KEY}, key="")
    request_id = response.get_json()["request_id"]
    wait_for(lambda: client.get(f"/email-status/{request_id}").get_json()["status"] == "retrying")
    store = app.extensions[EXTENSION].store
    payload = store.payload(request_id)
    assert payload is not None
    assert "Hello" in payload
    assert API_KEY not in payload
    assert API_KEY not in repr(store.get(request_id))


def test_key_in_x_api_key_header_is_accepted(client):
    response = send(client, key="", headers={"X-API-Key": API_KEY})
    assert response.status_code == 202


def test_bearer_key_is_accepted(client):
    response = send(client, key=API_KEY)
    assert response.status_code == 202


def test_bearer_wins_over_json_key_field(client):
    response = send(client, {**VALID, "key": "wrong-key"}, key=API_KEY)
    assert response.status_code == 202


def test_status_reports_the_sender_of_the_key_used(client):
    response = send(client, key=OTHER_KEY)
    assert response.status_code == 202
    status = wait_final(client, response.get_json()["request_id"])
    assert status["sender"] == "other@example.org"


# -- 401 -----------------------------------------------------------------------------------


def test_missing_key_is_401_problem(client):
    response = send(client, key="")
    body = assert_problem(response, 401)
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert body["title"] == "Unauthorized"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},
        {"X-API-Key": "not-a-key"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {API_KEY}"},
    ],
)
def test_unknown_key_is_401_problem(client, headers):
    response = send(client, key="", headers=headers)
    assert_problem(response, 401)


def test_unknown_key_in_json_field_is_401_and_not_echoed(client):
    response = send(client, {**VALID, "key": "secret-guess-123"}, key="")
    assert_problem(response, 401)
    assert "secret-guess-123" not in response.get_data(as_text=True)


@pytest.mark.parametrize("name", ["key", "api_key", "apikey", "token"])
def test_key_in_url_query_is_400(client, name):
    response = client.post(
        f"/send-email?{name}={API_KEY}", json=VALID, headers={"X-API-Key": API_KEY}
    )
    assert_problem(response, 400)


# -- check order: 415, 413, 400, 401, fields -------------------------------------------------


@pytest.fixture
def small_client(make_app, smtp_server):
    return make_app(smtp_server.port, max_request_bytes=300).test_client()


def test_wrong_content_type_is_415_problem(client):
    response = post_raw(client, json.dumps(VALID), content_type="text/plain")
    assert_problem(response, 415)


def test_missing_content_type_is_415_problem(client):
    response = client.post("/send-email", data=json.dumps(VALID), headers={"X-API-Key": API_KEY})
    assert_problem(response, 415)


def test_form_content_type_is_415_problem(client):
    response = client.post(
        "/send-email", data={"recipient": "user@example.com"}, headers={"X-API-Key": API_KEY}
    )
    assert_problem(response, 415)


def test_non_utf8_charset_is_415(client):
    response = post_raw(
        client, json.dumps(VALID).encode("utf-16"), content_type="application/json; charset=utf-16"
    )
    assert_problem(response, 415)


def test_oversized_body_is_413_problem(small_client):
    response = post_raw(small_client, json.dumps(with_(body="x" * 1000)))
    assert_problem(response, 413)


def test_415_comes_before_413(small_client):
    response = post_raw(small_client, "x" * 1000, content_type="text/plain")
    assert_problem(response, 415)


def test_413_comes_before_400(small_client):
    response = post_raw(small_client, "{" * 1000)
    assert_problem(response, 413)


def test_400_json_comes_before_401(client):
    response = client.post("/send-email", data="{not json", content_type="application/json")
    assert_problem(response, 400)


def test_401_comes_before_field_errors(client):
    response = send(client, {"recipent": "x", "subject": 5}, key="")
    assert_problem(response, 401)


def test_401_comes_before_403(client):
    response = send(client, with_(**{"from": "someone@evil.example"}), key="bad-key")
    assert_problem(response, 401)


# -- 400: the body is not one strict JSON object ---------------------------------------------

BAD_JSON = {
    "malformed": b'{"recipient": "user@example.com",',
    "empty": b"",
    "array": b'[{"recipient": "user@example.com"}]',
    "null": b"null",
    "number": b"42",
    "string": b'"hello"',
    "duplicate_keys": b'{"recipient": "a@example.com", "subject": "Hi", "body": "x",'
    b' "recipient": "b@example.com"}',
    "nan": b'{"recipient": "user@example.com", "subject": "Hi", "body": "x", "n": NaN}',
    "infinity": b'{"recipient": "user@example.com", "subject": "Hi", "body": "x", "n": Infinity}',
    "minus_infinity": b'{"recipient": "user@example.com", "subject": "Hi", "body": "x",'
    b' "n": -Infinity}',
    "lone_surrogate": b'{"recipient": "user@example.com", "subject": "\\ud800", "body": "x"}',
    "lone_surrogate_in_key": b'{"recipient": "user@example.com", "subject": "Hi", "body": "x",'
    b' "\\udfff": 1}',
    "nesting_33": b'{"recipient": "user@example.com", "subject": "Hi", "body": "x", "x": '
    + b"[" * 33
    + b"]" * 33
    + b"}",
    "brackets_100000": b"[" * 100_000 + b"]" * 100_000,
    "objects_100000": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "brackets_in_field_100000": b'{"recipient": "user@example.com", "x": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}",
    "non_utf8": b'{"recipient": "user@example.com", "subject": "\xff\xfe", "body": "x"}',
    "latin1": '{"recipient": "user@example.com", "subject": "Grüße", "body": "x"}'.encode(
        "latin-1"
    ),
    "utf16_without_charset": json.dumps(VALID).encode("utf-16"),
    "trailing_garbage": json.dumps(VALID).encode() + b" {}",
}


@pytest.mark.parametrize("raw", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_body_that_is_not_one_strict_json_object_is_400(client, smtp_server, raw):
    response = post_raw(client, raw)
    assert_problem(response, 400)


def test_nesting_of_exactly_32_levels_is_not_a_json_error(client):
    # 32 levels including the top-level object: the parser accepts it; the field is unknown.
    raw = b'{"recipient": "user@example.com", "subject": "Hi", "body": "x", "x": '
    raw += b"[" * 31 + b"]" * 31 + b"}"
    body = assert_problem(post_raw(client, raw), 400)
    assert error_fields(body) == ["x"]


# -- 400: invalid fields ----------------------------------------------------------------------

BAD_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "missing_recipient": (with_(recipient=None), "recipient"),
    "missing_subject": (with_(subject=None), "subject"),
    "missing_content": (with_(body=None), "body"),
    "typo_recipent": ({**with_(recipient=None), "recipent": "user@example.com"}, "recipent"),
    "unknown_field": (with_(priority="high"), "priority"),
    "subject_number": (with_(subject=5), "subject"),
    "subject_empty": (with_(subject=""), "subject"),
    "subject_999_chars": (with_(subject="x" * 999), "subject"),
    "body_number": (with_(body=12), "body"),
    "is_html_string": (with_(is_html="yes"), "is_html"),
    "is_html_number": (with_(is_html=1), "is_html"),
    "recipient_number": (with_(recipient=5), "recipient"),
    "recipient_empty_list": (with_(recipient=[]), "recipient"),
    "cc_string": (with_(cc="cc@example.com"), "cc"),
    "invalid_address": (with_(recipient="not-an-address"), "recipient"),
    "two_at_signs": (with_(recipient="a@b@example.com"), "recipient"),
    "address_list_in_one_string": (
        with_(recipient="user@example.com, evil@example.net"),
        "recipient",
    ),
    "address_with_crlf_bcc": (with_(recipient="user@example.com\r\nBcc: x@evil.net"), "recipient"),
    "address_with_display_name": (with_(recipient="User <user@example.com>"), "recipient"),
    "local_part_65": (with_(recipient="a" * 65 + "@example.com"), "recipient"),
    "address_over_254": (
        with_(recipient="a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com"),
        "recipient",
    ),
    "invalid_cc": (with_(cc=["ok@example.com", "nope"]), "cc"),
    "invalid_bcc": (with_(bcc=["nope@"]), "bcc"),
    "invalid_reply_to": (with_(reply_to="reply"), "reply_to"),
    "subject_cr": (with_(subject="Hi\rBcc: x@evil.net"), "subject"),
    "subject_lf": (with_(subject="Hi\nBcc: x@evil.net"), "subject"),
    "subject_crlf": (with_(subject="Hi\r\nBcc: x@evil.net"), "subject"),
    "subject_nul": (with_(subject="Hi\0there"), "subject"),
    "subject_u2028": (with_(subject="Hi\u2028there"), "subject"),
    "subject_u2029": (with_(subject="Hi\u2029there"), "subject"),
    "subject_u0085": (with_(subject="Hi\u0085there"), "subject"),
    "subject_escape": (with_(subject="Hi\x1bthere"), "subject"),
    "subject_encoded_word": (with_(subject="=?utf-8?q?x?="), "subject"),
    "subject_encoded_word_b": (with_(subject="Hi =?UTF-8?B?SGk=?= there"), "subject"),
    "from_name_lf": (with_(from_name="Evil\nBcc: x@evil.net"), "from_name"),
    "from_name_cr": (with_(from_name="Evil\rX"), "from_name"),
    "from_name_u2028": (with_(from_name="Evil\u2028X"), "from_name"),
    "from_name_encoded_word": (with_(from_name="=?utf-8?q?Boss?="), "from_name"),
    "header_value_crlf": (with_(headers={"X-Tag": "a\r\nBcc: x@evil.net"}), "headers"),
    "header_value_nul": (with_(headers={"X-Tag": "a\0b"}), "headers"),
    "header_value_u0085": (with_(headers={"X-Tag": "a\u0085b"}), "headers"),
    "header_value_encoded_word": (with_(headers={"X-Tag": "=?utf-8?q?x?="}), "headers"),
    "header_value_number": (with_(headers={"X-Tag": 5}), "headers"),
    "header_bcc": (with_(headers={"Bcc": "x@evil.net"}), "headers"),
    "header_content_type": (with_(headers={"Content-Type": "text/html"}), "headers"),
    "header_from": (with_(headers={"From": "boss@example.com"}), "headers"),
    "header_subject": (with_(headers={"Subject": "other"}), "headers"),
    "header_name_with_colon": (with_(headers={"X-A: b\r\nBcc": "x"}), "headers"),
    "header_name_x_only": (with_(headers={"X-": "x"}), "headers"),
    "headers_21": (with_(headers={f"X-H{i}": "v" for i in range(21)}), "headers"),
    "headers_duplicate_case": (with_(headers={"X-Tag": "a", "x-tag": "b"}), "headers"),
    "headers_list": (with_(headers=["X-Tag: a"]), "headers"),
    "body_and_text": (with_(text="plain"), "body"),
    "body_and_html": (with_(html="<p>x</p>"), "body"),
    "is_html_with_text": ({**with_(body=None), "text": "x", "is_html": True}, "body"),
    "key_not_string": (with_(key=5), "key"),
}


@pytest.mark.parametrize(("body", "field"), BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_invalid_field_is_400_naming_the_field(client, body, field):
    response = send(client, body)
    problem = assert_problem(response, 400)
    fields = error_fields(problem)
    assert fields, problem
    assert any(f == field or f.startswith(f"{field}.") for f in fields), fields
    # Field paths are the user's (recipient.1, headers.X-Tag), never pydantic's type names.
    assert not any(re.search(r"[\[\]()]|function|str\b", f) for f in fields), fields
    for error in problem["errors"]:
        assert error["message"]


def test_longest_valid_address_is_accepted(client):
    # 64 octets of local part, 254 in all: both limits of RFC 5321 reached, not passed.
    address = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    assert len(address) == 254
    assert send(client, with_(recipient=address)).status_code == 202


def test_international_address_is_accepted(client):
    assert send(client, with_(recipient="用户@例子.广告")).status_code == 202


def test_one_bad_address_is_one_error(client):
    response = send(client, with_(recipient="not-an-address"))
    problem = assert_problem(response, 400)
    assert len(problem["errors"]) == 1, problem["errors"]
    assert problem["errors"][0]["field"] in ("recipient", "recipient.0")
    assert "valid list" not in problem["errors"][0]["message"]


@pytest.mark.parametrize("address", ["x@host.local", "x@relay.internal"])
@pytest.mark.parametrize("field", ["recipient", "cc", "bcc", "reply_to"])
def test_a_special_use_domain_is_400_for_recipients_by_default(client, field, address):
    value = address if field in ("recipient", "reply_to") else [address]
    response = send(client, with_(**{field: value}))
    problem = assert_problem(response, 400)
    assert error_fields(problem) in ([field], [f"{field}.0"])


def test_allow_special_use_recipients_accepts_them(make_app, smtp_server):
    client = make_app(smtp_server.port, allow_special_use_recipients=True).test_client()
    body = with_(recipient="x@host.local", cc=["y@relay.internal"], bcc=["z@ci.test"])
    response = send(client, body | {"reply_to": "r@Desk.LOCAL"})
    assert response.status_code == 202, response.get_json()
    assert wait_final(client, response.get_json()["request_id"])["status"] == "sent"
    [received] = smtp_server.received
    assert received.rcpt_tos == ["x@host.local", "y@relay.internal", "z@ci.test"]
    assert received.message["Reply-To"] == "r@desk.local"
    # Still addresses: a malformed one is refused all the same.
    assert_problem(send(client, with_(recipient="x@-host.local")), 400)


@pytest.mark.parametrize("value", ["false", 0, None])
def test_text_alternative_must_be_a_boolean(client, value):
    body = with_(body="<p>x</p>", is_html=True) | {"text_alternative": value}
    problem = assert_problem(send(client, body), 400)
    assert error_fields(problem) == ["text_alternative"]


def test_text_alternative_false_reaches_the_stored_spec(client):
    from mailservice.api.request_path import message_spec
    from mailservice.api.schemas import SendRequest

    body = {"recipient": "a@example.com", "subject": "s", "html": "<p>x</p>"}
    assert message_spec(SendRequest.model_validate(body)).text_alternative is True
    off = SendRequest.model_validate(body | {"text_alternative": False})
    assert message_spec(off).text_alternative is False


def test_bad_address_in_a_list_is_named_by_position(client):
    response = send(client, with_(recipient=["ok@example.com", "bad"]))
    problem = assert_problem(response, 400)
    assert error_fields(problem) == ["recipient.1"]


def test_invalid_field_error_does_not_echo_the_value(client):
    response = send(client, with_(recipient="secret-value-not-an-address"))
    assert_problem(response, 400)
    assert "secret-value-not-an-address" not in response.get_data(as_text=True)


def test_twenty_allowed_headers_are_accepted(client, smtp_server):
    headers = {f"X-H{i}": "v" for i in range(16)}
    headers |= {
        "List-Unsubscribe": "<mailto:unsub@example.com>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "In-Reply-To": "<a@example.com>",
        "References": "<a@example.com>",
    }
    response = send(client, with_(headers=headers))
    assert response.status_code == 202
    assert wait_final(client, response.get_json()["request_id"])["status"] == "sent"
    message = smtp_server.received[0].message
    assert message["List-Unsubscribe"] == "<mailto:unsub@example.com>"
    assert message["X-H15"] == "v"


@pytest.mark.parametrize(
    ("to", "cc", "bcc"),
    [(["a@example.com"] * 51, [], []), ([], ["c@example.com"] * 30, ["b@example.com"] * 20)],
    ids=["to_51", "to_1_cc_30_bcc_20"],
)
def test_more_than_max_recipients_is_400(client, to, cc, bcc):
    to = to or ["first@example.com"]
    response = send(client, with_(recipient=to, cc=cc, bcc=bcc))
    problem = assert_problem(response, 400)
    assert "recipient" in error_fields(problem)


def test_exactly_max_recipients_is_accepted(client):
    to = [f"to{i}@example.com" for i in range(20)]
    cc = [f"cc{i}@example.com" for i in range(20)]
    bcc = [f"bcc{i}@example.com" for i in range(10)]
    response = send(client, with_(recipient=to, cc=cc, bcc=bcc))
    assert response.status_code == 202


def test_max_recipients_setting_is_honoured(make_app, smtp_server):
    client = make_app(smtp_server.port, max_recipients=2).test_client()
    response = send(
        client, with_(recipient=["a@example.com"], cc=["b@example.com"], bcc=["c@x.com"])
    )
    assert_problem(response, 400)
    assert send(client, with_(recipient=["a@example.com"], cc=["b@example.com"])).status_code == 202


def test_to_is_an_alias_of_recipient(client, smtp_server):
    response = send(client, {"to": ["a@example.com"], "subject": "Hi", "body": "x"})
    assert response.status_code == 202
    wait_final(client, response.get_json()["request_id"])
    assert smtp_server.received[0].rcpt_tos == ["a@example.com"]


# -- 403: from ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "from_",
    ["boss@example.com", "other@example.org", "sender@example.com.evil.net"],
)
def test_foreign_from_address_is_403(client, from_):
    response = send(client, with_(**{"from": from_}))
    assert_problem(response, 403)


def test_from_with_smuggled_second_address_is_rejected(client):
    response = send(client, with_(**{"from": f"{SENDER}, evil@example.net"}))
    assert response.status_code in (400, 403)
    assert_problem(response, response.status_code)


def test_own_from_address_is_accepted(client):
    response = send(client, with_(**{"from": SENDER}))
    assert response.status_code == 202


def test_from_may_be_a_sender_on_a_special_use_domain():
    # `from` must be the key's own sender, and senders may use special-use domains.
    from mailservice.api.schemas import SendRequest

    body = {"recipient": "a@example.com", "subject": "s", "body": "b", "from": "me@relay.local"}
    assert SendRequest.model_validate(body).from_ == "me@relay.local"


def test_own_from_address_in_other_case_is_accepted(client):
    response = send(client, with_(**{"from": SENDER.upper()}))
    assert response.status_code == 202


# -- GET /email-status ------------------------------------------------------------------------


def test_status_has_exactly_the_documented_keys_and_no_content(client):
    response = send(
        client,
        with_(subject="Secret subject 4711", body="Secret body 0815", cc=["cc@example.com"]),
    )
    request_id = response.get_json()["request_id"]
    queued = client.get(f"/email-status/{request_id}")
    assert queued.status_code == 200
    assert set(queued.get_json()) == STATUS_KEYS
    status = wait_final(client, request_id)
    assert set(status) == STATUS_KEYS
    assert status["request_id"] == request_id
    assert status["status"] == "sent"
    assert status["error"] is None
    assert status["sender"] == SENDER
    assert status["recipients"] == ["user@example.com", "cc@example.com"]
    assert status["refused"] == {}
    assert status["created_at"].endswith("Z")
    assert status["updated_at"] >= status["created_at"]
    text = client.get(f"/email-status/{request_id}").get_data(as_text=True)
    assert "Secret subject" not in text
    assert "Secret body" not in text


def test_status_of_unknown_uuid_is_404_problem(client):
    response = client.get(f"/email-status/{uuid.uuid4()}")
    assert_problem(response, 404)


@pytest.mark.parametrize("request_id", ["not-a-uuid", "1234", "x" * 300, "%00", "..%2F..%2Fetc"])
def test_status_of_malformed_id_is_404_problem(client, request_id):
    response = client.get(f"/email-status/{request_id}")
    assert_problem(response, 404)


def test_status_accepts_the_uuid_in_upper_case(client):
    request_id = send(client).get_json()["request_id"]
    response = client.get(f"/email-status/{request_id.upper()}")
    assert response.status_code == 200
    assert response.get_json()["request_id"] == request_id


# -- other routes --------------------------------------------------------------------------


def test_unknown_route_is_404_problem(client):
    assert_problem(client.get("/no-such-route"), 404)


def test_wrong_method_is_405_problem_with_allow(client):
    response = client.get("/send-email")
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_put_on_status_is_405_problem(client):
    # DELETE is a cancel (test_lifecycle_routes.py): it needs the sending key.
    response = client.put(f"/email-status/{uuid.uuid4()}")
    assert_problem(response, 405)
    assert {"GET", "DELETE"} <= set(response.headers["Allow"].split(", "))
    assert client.delete(f"/email-status/{uuid.uuid4()}").status_code == 401


# -- nothing rejected is ever sent --------------------------------------------------------------


def test_rejected_requests_send_nothing(client, smtp_server):
    answers = []
    for raw in BAD_JSON.values():
        answers.append(post_raw(client, raw))
    for body, _ in BAD_FIELDS.values():
        answers.append(send(client, body))
    answers.append(send(client, key=""))
    answers.append(send(client, key="wrong"))
    answers.append(send(client, with_(**{"from": "boss@example.com"})))
    answers.append(post_raw(client, json.dumps(VALID), content_type="text/plain"))
    assert all(400 <= a.status_code < 500 for a in answers)
    for answer in answers:
        assert_clean(answer)

    final = send(client, with_(subject="the accepted one"))
    assert final.status_code == 202
    wait_for(lambda: smtp_server.received)
    assert wait_final(client, final.get_json()["request_id"])["status"] == "sent"
    assert [r.message["Subject"] for r in smtp_server.received] == ["the accepted one"]
    assert smtp_server.handler.transactions == 1
