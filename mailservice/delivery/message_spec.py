"""What one request asks to send, as delivery needs it: a plain value, stored as versioned JSON.

The HTTP layer validates a request and builds a `MessageSpec` from it; from then on nothing in
delivery knows the HTTP request model. The spec is what the store keeps until the request is
final (`to_json()`, `{"v": 1, ...}`) and what every attempt builds its message from
(`from_json()`). A stored text that does not load (a corrupt row, an unknown version) raises
`PayloadError`, and the request fails with that reason rather than being retried for ever.

Version 0 is the request as the HTTP model dumped it before specs were versioned (same
members, `recipient` for the To list, an ignored `from`); it still loads, so requests recorded
by an older release are sent after an upgrade.

`text_alternative` joined version 1 later, without a new version: a stored text without it
loads as its default (true), which is what every request asked before, so texts of either kind
load in either release that knows the member. A release older than the member refuses a text
that has it as an unknown member; roll back only with no such requests unsent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PAYLOAD_VERSION = 1


class PayloadError(ValueError):
    """A stored message that cannot be loaded."""


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """The validated content and addressing of one message (no sender: that is the key's)."""

    recipient: tuple[str, ...]  # To
    subject: str
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    body: str | None = None
    is_html: bool = False
    text: str | None = None
    html: str | None = None
    from_name: str | None = None
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # An HTML-only message also gets a text/plain part rendered from its HTML.
    text_alternative: bool = True

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient (to, cc, bcc), each once, in order."""
        return list(dict.fromkeys([*self.recipient, *self.cc, *self.bcc]))

    def to_json(self) -> str:
        """The stored form: one JSON object with the format version."""
        return json.dumps(
            {
                "v": PAYLOAD_VERSION,
                "recipient": self.recipient,
                "cc": self.cc,
                "bcc": self.bcc,
                "subject": self.subject,
                "body": self.body,
                "is_html": self.is_html,
                "text": self.text,
                "html": self.html,
                "from_name": self.from_name,
                "reply_to": self.reply_to,
                "headers": self.headers,
                "text_alternative": self.text_alternative,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> MessageSpec:
        """The spec a stored text holds; PayloadError when it holds none this release reads."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"the stored message is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PayloadError("the stored message is not a JSON object")
        version = data.pop("v", 0)
        if version not in (0, PAYLOAD_VERSION):
            raise PayloadError(f"the stored message has format version {version!r}")
        data.pop("from", None)  # version 0 kept the checked From; the sender's address rules
        try:
            spec = cls(
                recipient=_addresses(data.pop("recipient")),
                subject=_text(data.pop("subject")),
                cc=_addresses(data.pop("cc", [])),
                bcc=_addresses(data.pop("bcc", [])),
                body=_optional_text(data.pop("body", None)),
                is_html=_flag(data.pop("is_html", False)),
                text=_optional_text(data.pop("text", None)),
                html=_optional_text(data.pop("html", None)),
                from_name=_optional_text(data.pop("from_name", None)),
                reply_to=_optional_text(data.pop("reply_to", None)),
                headers=_headers(data.pop("headers", {})),
                text_alternative=_flag(data.pop("text_alternative", True)),
            )
        except KeyError as exc:
            raise PayloadError(f"the stored message lacks {exc}") from exc
        if data:
            unknown = ", ".join(sorted(data))
            raise PayloadError(f"the stored message has unknown members: {unknown}")
        return spec


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise PayloadError("the stored message has a member that should be text")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise PayloadError("the stored message has a member that should be true or false")
    return value


def _addresses(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise PayloadError("the stored message has an address list that is not a list of text")
    return tuple(value)


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise PayloadError("the stored message has headers that are not text")
    return value
