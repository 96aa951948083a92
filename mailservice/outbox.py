"""Demo mode's outbox read back for the dashboard: the newest captured messages, and one
message's headers, parts and attachments for a preview.

The catcher (`demo.py`) writes each message as `outbox/<UTC time>-<counter>.eml`; only names of
that form are read, so a request can never name another file. The list reads at most
`LIST_MAX` messages' heads (`HEAD_BYTES` each); a preview reads one message whole, at most
`PREVIEW_MAX_BYTES`. Nothing here renders or runs the message: the dashboard shows the HTML
part escaped into a sandboxed iframe.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.errors import MessageError
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path

logger = logging.getLogger(__name__)

NAME = re.compile(r"(\d{8}T\d{12})Z-\d{6}\.eml")
LIST_MAX = 50
HEAD_BYTES = 64 * 1024
PREVIEW_MAX_BYTES = 32 * 1024 * 1024  # MAX_REQUEST_BYTES' default, base64'd, and room to spare
SHOWN_HEADERS = ("From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID")
# Errors the email package raises on a malformed message or header (an unknown charset is a
# LookupError): the message is shown as unreadable rather than failing the page.
UNREADABLE = (MessageError, ValueError, LookupError, TypeError)


@dataclass(frozen=True, slots=True)
class Captured:
    """One message of the outbox, as the list shows it."""

    name: str
    received: datetime
    sender: str
    to: str
    subject: str


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class Preview:
    """One message opened: its headers, its text and HTML parts (None when absent), its
    attachments, and whether it could be read at all."""

    captured: Captured
    headers: tuple[tuple[str, str], ...]
    text: str | None
    html: str | None
    attachments: tuple[Attachment, ...]
    readable: bool = True


def received_at(name: str) -> datetime | None:
    """When the catcher wrote the file `name`, or None when it is not one of its names."""
    match = NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match[1], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:  # the pattern's digits, but no date (20260230...): not the catcher's
        return None


def _header(message: EmailMessage, name: str) -> str:
    try:
        return str(message.get(name, ""))
    except UNREADABLE:
        return "(unreadable)"


class Outbox:
    """The folder the demo catcher writes to."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def newest(self, limit: int = LIST_MAX) -> list[Captured]:
        """The newest `limit` messages, newest first (names sort by time)."""
        try:
            with os.scandir(self.folder) as entries:
                names = heapq.nlargest(
                    limit, (e.name for e in entries if NAME.fullmatch(e.name) and e.is_file())
                )
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            try:
                with (self.folder / name).open("rb") as file:
                    head = file.read(HEAD_BYTES)
            except OSError:  # removed since the listing
                continue
            message = BytesHeaderParser(policy=policy.default).parsebytes(head)
            found.append(self._captured(name, message))  # type: ignore[arg-type]
        return found

    def preview(self, name: str) -> Preview | None:
        """The message `name`, or None when there is no such message."""
        if received_at(name) is None:
            return None
        path = self.folder / name
        try:
            with path.open("rb") as file:
                data = file.read(PREVIEW_MAX_BYTES + 1)
        except OSError:
            return None
        message: EmailMessage = BytesParser(policy=policy.default).parsebytes(data)  # type: ignore[assignment]
        captured = self._captured(name, message)
        headers = tuple((h, _header(message, h)) for h in SHOWN_HEADERS if h in message)
        if len(data) > PREVIEW_MAX_BYTES:
            return Preview(captured, headers, None, None, (), readable=False)
        try:
            return Preview(
                captured,
                headers,
                _content(message, "plain"),
                _content(message, "html"),
                tuple(_attachments(message)),
            )
        except UNREADABLE as exc:
            logger.warning("outbox: %s cannot be read for a preview: %s", name, exc)
            return Preview(captured, headers, None, None, (), readable=False)

    @staticmethod
    def _captured(name: str, message: EmailMessage) -> Captured:
        return Captured(
            name=name,
            received=received_at(name) or datetime.min.replace(tzinfo=UTC),
            sender=_header(message, "From"),
            to=_header(message, "To"),
            subject=_header(message, "Subject"),
        )


def _content(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    return str(part.get_content())


def _attachments(message: EmailMessage) -> list[Attachment]:
    found = []
    for part in message.walk():
        filename = part.get_filename()
        if filename and not part.is_multipart():
            payload = part.get_payload(decode=True) or b""
            found.append(Attachment(str(filename), part.get_content_type(), len(payload)))
    return found
