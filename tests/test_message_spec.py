"""MessageSpec: the plain, versioned value delivery works from, and what it does with a stored
text it cannot read."""

from __future__ import annotations

import base64
import dataclasses
import json
import sys

import pytest

from mailservice.delivery.message_spec import (
    PAYLOAD_VERSION,
    Attachment,
    MessageSpec,
    PayloadError,
)

SPEC = MessageSpec(
    recipient=("a@example.com",),
    cc=("c@example.com",),
    bcc=("b@example.com", "a@example.com"),
    subject="Reset your password",
    text="Open the link",
    html="<p>Open the link</p>",
    from_name="Accounts",
    reply_to="help@example.com",
    headers={"X-Campaign": "reset"},
)


def test_round_trip_with_the_format_version():
    text = SPEC.to_json()
    assert json.loads(text)["v"] == PAYLOAD_VERSION
    assert MessageSpec.from_json(text) == SPEC


def test_text_alternative_false_round_trips():
    spec = MessageSpec(recipient=("a@example.com",), subject="Hi", html="<p>x</p>")
    assert spec.text_alternative is True
    off = MessageSpec.from_json(dataclasses.replace(spec, text_alternative=False).to_json())
    assert off.text_alternative is False


def test_a_version_1_text_stored_before_text_alternative_loads_with_it_on():
    # What a release before the member stored: version 1 without text_alternative.
    stored = json.dumps(
        {
            "v": 1, "recipient": ["a@example.com"], "cc": [], "bcc": [], "subject": "Hi",
            "body": "<p>Hello</p>", "is_html": True, "text": None, "html": None,
            "from_name": None, "reply_to": None, "headers": {},
        }
    )  # fmt: skip
    assert MessageSpec.from_json(stored).text_alternative is True


PDF = b"%PDF-1.4\n" + bytes(range(256)) + b"\n%%EOF\n"
WITH_ATTACHMENTS = dataclasses.replace(
    SPEC,
    subject="Rechnung 🧾",
    attachments=(
        Attachment("Rechnung März 2026.pdf", "application/pdf", PDF),
        Attachment("logo.png", "image/png", b"\x89PNG\r\n\x1a\n\x00", "logo@example.com"),
    ),
)


def stored_attachment(**members: object) -> str:
    """A version 1 text with one stored attachment, its members replaced (None: left out)."""
    attachment = {"filename": "a.pdf", "content_type": "application/pdf", "content": "JQ=="}
    attachment.update(members)  # type: ignore[arg-type]
    attachment = {name: value for name, value in attachment.items() if value is not None}
    return json.dumps({"v": 1, "recipient": [], "subject": "x", "attachments": [attachment]})


def test_attachments_round_trip_with_their_bytes_as_base64_text():
    text = WITH_ATTACHMENTS.to_json()
    stored = json.loads(text)["attachments"]
    assert stored[0] == {
        "filename": "Rechnung März 2026.pdf",
        "content_type": "application/pdf",
        "content": base64.b64encode(PDF).decode(),
        "content_id": None,
    }
    assert stored[1]["content_id"] == "logo@example.com"
    loaded = MessageSpec.from_json(text)
    assert loaded == WITH_ATTACHMENTS
    assert loaded.attachments[0].content == PDF


def test_a_text_with_attachments_is_ascii_so_the_held_string_stays_one_byte_a_character():
    big = dataclasses.replace(
        WITH_ATTACHMENTS, attachments=(Attachment("請求書.pdf", "application/pdf", PDF * 2000),)
    )
    text = big.to_json()
    assert text.isascii()
    # One emoji would have made every character of the string, base64 included, four bytes.
    assert sys.getsizeof(text) < len(text) + 100
    assert MessageSpec.from_json(text).attachments[0].filename == "請求書.pdf"


def test_without_attachments_the_member_is_not_written_and_older_texts_load_with_none():
    text = SPEC.to_json()
    assert "attachments" not in json.loads(text)  # a rollback can still read these
    assert MessageSpec.from_json(text).attachments == ()


def test_an_attachments_content_is_not_in_its_repr():
    assert "PDF-1.4" not in repr(WITH_ATTACHMENTS)


def test_recipients_are_to_cc_bcc_each_once():
    assert SPEC.recipients == ["a@example.com", "c@example.com", "b@example.com"]


def test_version_0_the_http_model_as_older_releases_stored_it_still_loads():
    stored = json.dumps(
        {
            "recipient": ["a@example.com"], "cc": [], "bcc": [], "subject": "Hi", "body": "Hello",
            "is_html": False, "text": None, "html": None, "from_name": None,
            "from": "s@example.com", "reply_to": None, "headers": {},
        }
    )  # fmt: skip
    spec = MessageSpec.from_json(stored)
    assert (spec.recipient, spec.subject, spec.body) == (("a@example.com",), "Hi", "Hello")


@pytest.mark.parametrize(
    ("stored", "says"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"v": 99, "recipient": [], "subject": "x"}', "format version 99"),
        ('{"v": 1, "subject": "x"}', "lacks 'recipient'"),
        ('{"v": 1, "recipient": "a@example.com", "subject": "x"}', "address list"),
        ('{"v": 1, "recipient": [], "subject": 5}', "should be text"),
        ('{"v": 1, "recipient": [], "subject": "x", "colour": "red"}', "unknown members"),
        ('{"v": 1, "recipient": [], "subject": "x", "attachments": {}}', "not a list"),
        ('{"v": 1, "recipient": [], "subject": "x", "attachments": ["a.pdf"]}', "not an object"),
        (stored_attachment(size=1), "not an object"),
        (stored_attachment(filename=None), "without 'filename'"),
        (stored_attachment(content="JVBERi0\n"), "not base64"),
        (stored_attachment(content="JVBERi0"), "not base64"),  # padding missing
        (stored_attachment(content="é"), "not base64"),
        (stored_attachment(content_type=7), "should be text"),
        (stored_attachment(content_id=["logo"]), "should be text"),
        ('{"v": 1, "recipient": [], "subject": "x", "text_alternative": 0}', "true or false"),
    ],
)
def test_a_stored_text_that_does_not_load_says_why(stored, says):
    with pytest.raises(PayloadError, match=says):
        MessageSpec.from_json(stored)
