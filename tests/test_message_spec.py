"""MessageSpec: the plain, versioned value delivery works from, and what it does with a stored
text it cannot read."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mailservice.delivery.message_spec import PAYLOAD_VERSION, MessageSpec, PayloadError

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
        ('{"v": 1, "recipient": [], "subject": "x", "attachments": []}', "unknown members"),
        ('{"v": 1, "recipient": [], "subject": "x", "text_alternative": 0}', "true or false"),
    ],
)
def test_a_stored_text_that_does_not_load_says_why(stored, says):
    with pytest.raises(PayloadError, match=says):
        MessageSpec.from_json(stored)
