"""A message submitted whole (the SMTP listener's DATA): checked, then relayed as received.

`prepare_raw(data, sender, request_id)` checks a submitted message and gives the bytes that go
out, headers and MIME intact but for two changes: a `Message-ID` is added when it has none or
an empty one (`<request_id@the sender's domain>`, the service's own rule, so every attempt
carries the same one; the empty field is dropped, not left beside it), and `Bcc:` and
`Resent-Bcc:` are removed (their addresses are in the envelope only). Line ends become CRLF.
Nothing is decoded or re-encoded: the body's bytes are the client's.

It refuses, with an SMTP reply (`RawMessageError.reply`), what must not be relayed: a NUL
anywhere, a line over 998 octets (RFC 5322 2.1.1: such a line is not encoded, whatever its
part says), no header block, no `From:`, more than one `From:` or `Message-ID:` field, a
`From:`, `Sender:`, `Resent-From:` or `Resent-Sender:` that is not the key's own address, and
more than one address in any of them. The HTTP routes never come here: their messages are
built by delivery/message.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import getaddresses

from mailservice.senders import Sender

MAX_LINE = 998  # octets, without the CRLF (RFC 5322 2.1.1)
_LINE_END = re.compile(rb"\r\n|\r|\n")
# A header field's name at the start of a line, then the colon (RFC 5322 2.2).
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# The fields that name the message's author or its sender, resent ones too (RFC 5322 3.6.6):
# each must be the login's own address, as From: is.
_AUTHOR_FIELDS = {
    "from": "From",
    "sender": "Sender",
    "resent-from": "Resent-From",
    "resent-sender": "Resent-Sender",
}


class RawMessageError(ValueError):
    """A submitted message refused; `reply` is the SMTP reply that says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """What goes out, and what the status and the log show of it."""

    data: bytes  # CRLF line ends, before dot-stuffing
    message_id: str  # with its angle brackets, as the header has it
    subject: str  # decoded, for the log only (never shown in a status)


def prepare_raw(data: bytes, sender: Sender, request_id: str) -> PreparedMessage:
    """The message to relay for `sender`, or RawMessageError."""
    if b"\0" in data:
        raise RawMessageError("554 5.6.0 The message has a NUL character")
    lines = _LINE_END.split(data)
    if lines and lines[-1] == b"":
        lines.pop()
    if any(len(line) > MAX_LINE for line in lines):
        raise RawMessageError(f"554 5.6.0 The message has a line over {MAX_LINE} octets")
    try:
        blank = lines.index(b"")
    except ValueError:
        blank = len(lines)  # headers only, no body
    fields = _fields(lines[:blank])
    if not fields:
        raise RawMessageError("554 5.6.0 The message has no header")
    _check_from(fields, sender)
    ids = [_unfolded(raw) for name, raw in fields if name == "message-id"]
    if len(ids) > 1:
        raise RawMessageError("554 5.6.0 The message has more than one Message-ID: header")
    message_id = ids[0] if ids else ""
    # An empty Message-ID goes with the Bcc fields: the one added below takes its place.
    dropped = {"bcc", "resent-bcc"} | ({"message-id"} if not message_id else set())
    kept = [raw for name, raw in fields if name not in dropped]
    if not message_id:
        message_id = f"<{request_id}@{sender.domain}>"
        kept.append([b"Message-ID: " + message_id.encode("ascii")])
    subject = next((_unfolded(raw) for name, raw in fields if name == "subject"), "")
    out = [line for raw in kept for line in raw] + lines[blank:]
    return PreparedMessage(b"\r\n".join(out) + b"\r\n", message_id, _decoded(subject))


def _fields(header_lines: list[bytes]) -> list[tuple[str, list[bytes]]]:
    """(lower-case name, its lines) of each header field, folded lines kept with theirs."""
    fields: list[tuple[str, list[bytes]]] = []
    for line in header_lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
            continue
        match = _FIELD.match(line)
        if match is None:
            raise RawMessageError("554 5.6.0 The message has a malformed header line")
        fields.append((match.group(1).decode("ascii").lower(), [line]))
    return fields


def _unfolded(raw: list[bytes]) -> str:
    """A field's value, unfolded (UTF-8 allowed, RFC 6532)."""
    text = b"".join(raw).decode("utf-8", "replace")
    return text.partition(":")[2].strip()


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError):  # a malformed encoded-word: the text as it came
        return value


def _check_from(fields: list[tuple[str, list[bytes]]], sender: Sender) -> None:
    froms = [_unfolded(raw) for name, raw in fields if name == "from"]
    if not froms:
        raise RawMessageError("554 5.6.0 The message has no From: header")
    if len(froms) > 1:
        raise RawMessageError("554 5.6.0 The message has more than one From: header")
    for name in _AUTHOR_FIELDS:
        for value in (_unfolded(raw) for n, raw in fields if n == name):
            addresses = [address for _, address in getaddresses([value]) if address]
            if len(addresses) != 1:
                raise RawMessageError(f"554 5.6.0 {_AUTHOR_FIELDS[name]}: must hold one address")
            if not sender.is_address(addresses[0]):
                raise RawMessageError(
                    f"550 5.7.1 {_AUTHOR_FIELDS[name]}: must be this login's own address, "
                    f"{sender.email}"
                )
