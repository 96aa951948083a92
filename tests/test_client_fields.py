"""`tags` and `metadata` (API.md sections 3 and 4): kept with the status on every store, shown by
GET /email-status/<id>, never written into the message; every bad value a 400 naming the
field, and nothing sent."""

from __future__ import annotations

from typing import Any

import pytest

from mailservice.api.client_fields import request_extras
from mailservice.errors import ApiError
from tests.conftest import send, wait_final, wait_for

VALID = {"recipient": "user@example.com", "subject": "Hi", "body": "Hello"}
TAGS = ["invoice", "eu-west_2", "Invoice"]  # case matters: Invoice and invoice are two tags
METADATA = {"order.id": "ord_7781-zq", "customer": "Zoë Ünver", "note": "tab\tis-no-control?"}


def store_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{request.getfixturevalue('tmp_path') / 'status.db'}"
    return request.getfixturevalue("redis_server").url


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_tags_and_metadata_round_trip_through_the_status_and_stay_out_of_the_message(
    kind, request, make_app, smtp_server
) -> None:
    metadata = {**METADATA, "note": "plain note"}
    client = make_app(smtp_server.port, status_store_url=store_url(kind, request)).test_client()
    answer = send(client, {**VALID, "tags": TAGS, "metadata": metadata})
    assert answer.status_code == 202, answer.get_json()
    request_id = answer.get_json()["request_id"]

    queued = client.get(f"/email-status/{request_id}").get_json()
    assert queued["tags"] == TAGS and queued["metadata"] == metadata
    final = wait_final(client, request_id)
    assert final["status"] == "sent"
    assert final["tags"] == TAGS and final["metadata"] == metadata, "kept with the final status"

    [received] = smtp_server.received
    message = received.message
    assert message["Subject"] == "Hi" and message.get_content().strip() == "Hello"
    raw = received.content.decode("utf-8", "replace")
    for text in [*TAGS, *metadata, *metadata.values(), "eu-west", "ord_7781"]:
        assert text not in raw, f"{text!r} was written into the message"
    assert {name.lower() for name in message} <= {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }, "no header of its own for tags or metadata"


def test_limits_exactly_reached_are_accepted(client, smtp_server) -> None:
    tags = [f"t{i}" for i in range(9)] + ["x" * 64]
    metadata = {f"k{i:02d}": "v" * 40 for i in range(19)}  # 19 * 43 = 817 bytes
    metadata["K" * 40] = "é" * 83 + "v"  # 40 + 167 bytes: 1024 in all, counted as UTF-8
    assert len(metadata) == 20
    assert sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items()) == 1024
    answer = send(client, {**VALID, "tags": tags, "metadata": metadata})
    assert answer.status_code == 202, answer.get_json()
    status = wait_final(client, answer.get_json()["request_id"])
    assert status["tags"] == tags and status["metadata"] == metadata


def test_without_them_the_status_shows_empty_ones(client) -> None:
    status = client.get(f"/email-status/{send(client).get_json()['request_id']}").get_json()
    assert status["tags"] == [] and status["metadata"] == {}


BAD: dict[str, tuple[dict[str, Any], str, str]] = {
    "tags not a list": ({"tags": "invoice"}, "tags", "valid list"),
    "tags null": ({"tags": None}, "tags", "valid list"),
    "eleven tags": ({"tags": [f"t{i}" for i in range(11)]}, "tags", "at most 10"),
    "a tag twice": ({"tags": ["a", "b", "a"]}, "tags", "repeats"),
    "empty tag": ({"tags": [""]}, "tags.0", "1 to 64"),
    "tag too long": ({"tags": ["ok", "x" * 65]}, "tags.1", "1 to 64"),
    "tag with a space": ({"tags": ["two words"]}, "tags.0", "1 to 64"),
    "tag with a dot": ({"tags": ["a.b"]}, "tags.0", "1 to 64"),
    "non-ASCII tag": ({"tags": ["café"]}, "tags.0", "1 to 64"),
    "tag with a line break": ({"tags": ["a\r\nBcc: x@evil.example"]}, "tags.0", "1 to 64"),
    "tag a number": ({"tags": [7]}, "tags.0", "valid string"),
    "metadata a list": ({"metadata": [["k", "v"]]}, "metadata", "an object"),
    "metadata a string": ({"metadata": "k=v"}, "metadata", "an object"),
    "metadata null": ({"metadata": None}, "metadata", "an object"),
    "value a number": ({"metadata": {"order": 42}}, "metadata", "'order' must be a string"),
    "value null": ({"metadata": {"order": None}}, "metadata", "'order' must be a string"),
    "value an object": ({"metadata": {"o": {"id": "1"}}}, "metadata", "'o' must be a string"),
    "21 keys": ({"metadata": {f"k{i}": "v" for i in range(21)}}, "metadata", "at most 20"),
    "1025 bytes": ({"metadata": {"k": "v" * 1024}}, "metadata", "1025 bytes"),
    "1025 bytes of UTF-8": ({"metadata": {"k": "é" * 511 + "vv"}}, "metadata", "1025 bytes"),
    "empty key": ({"metadata": {"": "v"}}, "metadata", "key 0 must be 1 to 40"),
    "key too long": ({"metadata": {"ok": "v", "k" * 41: "v"}}, "metadata", "key 1 must be"),
    "key with a space": ({"metadata": {"user id": "v"}}, "metadata", "key 0 must be"),
    "NUL in a value": ({"metadata": {"k": "a\x00b"}}, "metadata", "U+0000"),
    "line break in a value": ({"metadata": {"k": "a\nb"}}, "metadata", "U+000A"),
    "escape in a value": ({"metadata": {"k": "\x1b[31m"}}, "metadata", "U+001B"),
    "C1 control in a value": ({"metadata": {"k": "a\x85b"}}, "metadata", "U+0085"),
    "DEL in a value": ({"metadata": {"k": "a\x7fb"}}, "metadata", "U+007F"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_tags_and_metadata_are_400_naming_the_field(client, case) -> None:
    fields, name, message = BAD[case]
    answer = send(client, {**VALID, **fields})
    assert answer.status_code == 400, answer.get_json()
    assert answer.mimetype == "application/problem+json"
    errors = answer.get_json()["errors"]
    assert [e["field"] for e in errors] == [name]
    assert message in errors[0]["message"]


def test_errors_never_echo_a_bad_key_or_value(client) -> None:
    secret = "sk_live_" + "z" * 30
    for fields in (
        {"metadata": {secret + " ": "v"}},
        {"metadata": {"k": secret + "\n"}},
        {"tags": [secret + "!"]},
    ):
        answer = send(client, {**VALID, **fields})
        assert answer.status_code == 400
        assert secret not in answer.get_data(as_text=True)


def test_rejected_tags_and_metadata_send_nothing(client, smtp_server) -> None:
    for fields, _, _ in BAD.values():
        assert send(client, {**VALID, **fields, "subject": "refused"}).status_code == 400
    accepted = send(client, {**VALID, "subject": "the accepted one", "tags": ["ok"]})
    assert accepted.status_code == 202
    wait_for(lambda: smtp_server.received)
    assert wait_final(client, accepted.get_json()["request_id"])["status"] == "sent"
    assert [r.message["Subject"] for r in smtp_server.received] == ["the accepted one"]
    assert smtp_server.handler.transactions == 1


def test_route_metadata_merges_with_the_clients_and_a_clash_is_refused() -> None:
    extras = request_extras(["a"], {"order": "1"}, {"user_id": "7"})
    assert dict(extras.metadata) == {"user_id": "7", "order": "1"}
    assert extras.tags == ("a",)
    with pytest.raises(ApiError) as refused:
        request_extras([], {"user_id": "8"}, {"user_id": "7"})
    assert refused.value.status == 400
    assert [e.field for e in refused.value.errors] == ["metadata"]
    assert "user_id" in refused.value.errors[0].message
