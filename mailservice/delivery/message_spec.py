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

`attachments` joined version 1 the same way, for the same reason: a text without it loads as
no attachments, which is what every earlier request had. It is written only when there are
attachments, so a rollback to a release before the member refuses only the requests that hold
attachments (which that release could not send), not every request stored since the upgrade.
The content is kept as base64 text (RFC 4648, no line breaks); a stored attachment that is not
an object of those members, or whose content is not strict base64, is a `PayloadError`.

`raw` joined version 1 the same way: the bytes of a message submitted whole over SMTP
(delivery/raw_message.py), base64 like an attachment's content, written only for such
messages.

A text with attachments (or `raw`) is written ASCII-only (`\\uXXXX` escapes): Python keeps a
string at 1, 2 or 4 bytes a character, by its widest character (PEP 393), so one emoji in the
subject would make the held payload, base64 included, four times its size in memory.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

PAYLOAD_VERSION = 1
ATTACHMENT_MEMBERS = frozenset({"filename", "content_type", "content", "content_id"})


class PayloadError(ValueError):
    """A stored message that cannot be loaded."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attached file; with a `content_id`, an inline part the HTML shows as `cid:<id>`."""

    filename: str
    content_type: str  # type/subtype (RFC 2045), lower case
    content: bytes = field(repr=False)  # decoded; never in a log line
    content_id: str | None = None  # without < >; the part's Content-ID is <content_id>

    def stored(self) -> dict[str, str | None]:
        """The stored form: the content as base64 text."""
        return {
            "filename": self.filename,
            "content_type": self.content_type,
            "content": base64.b64encode(self.content).decode("ascii"),
            "content_id": self.content_id,
        }


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
    # Files attached (multipart/mixed) or, with a content_id, inline parts of the HTML
    # (multipart/related); see delivery/attachments.py.
    attachments: tuple[Attachment, ...] = ()
    # A message submitted whole (the SMTP listener, delivery/raw_message.py): relayed as these
    # bytes, to `recipient` (the envelope's RCPT TOs); the other members are not used to build
    # it (`subject` is kept for the log).
    raw: bytes | None = field(default=None, repr=False)

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient (to, cc, bcc), each once, in order."""
        return list(dict.fromkeys([*self.recipient, *self.cc, *self.bcc]))

    def to_json(self) -> str:
        """The stored form: one JSON object with the format version."""
        stored: dict[str, Any] = {
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
        }
        if self.attachments:  # only then: see the module docstring (rollback)
            stored["attachments"] = [a.stored() for a in self.attachments]
        if self.raw is not None:  # the same: only messages submitted whole carry it
            stored["raw"] = base64.b64encode(self.raw).decode("ascii")
        ascii_only = bool(self.attachments) or self.raw is not None
        return json.dumps(stored, ensure_ascii=ascii_only, separators=(",", ":"))

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
                attachments=_attachments(data.pop("attachments", [])),
                raw=_raw(data.pop("raw", None)),
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


def _raw(value: Any) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(_text(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError("the stored message's raw content is not base64") from exc


def _attachments(value: Any) -> tuple[Attachment, ...]:
    if not isinstance(value, list):
        raise PayloadError("the stored message has attachments that are not a list")
    return tuple(_attachment(item) for item in value)


def _attachment(value: Any) -> Attachment:
    if not isinstance(value, dict) or set(value) - ATTACHMENT_MEMBERS:
        raise PayloadError(
            "the stored message has an attachment that is not an object of "
            "filename, content_type, content and content_id"
        )
    try:
        filename, content_type, content = (
            _text(value[name]) for name in ("filename", "content_type", "content")
        )
    except KeyError as exc:
        raise PayloadError(f"the stored message has an attachment without {exc}") from exc
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: not ASCII
        raise PayloadError("the stored message has an attachment that is not base64") from exc
    return Attachment(filename, content_type, data, _optional_text(value.get("content_id")))
