"""Building a request's message with the standard library's `email` package: `build_message()`.

Policy `default` (API.md section 3) with CRLF line ends for the wire, 7-bit safe bodies, a
header registry that makes each header class once, and the UTF-8 policy (8bit bodies) when an
address needs SMTPUTF8. The extra headers (List-Unsubscribe, References, X-...) are folded at
whitespace only (`WhitespaceFoldedHeader`): the policy would fold a long token such as a URL
into RFC 2047 encoded words, which no longer read as a URL. An HTML-only request gets a
text/plain alternative rendered from its HTML, unless it asks for none (`text_alternative`).
Attachments and inline parts are added by `delivery/attachments.py`. `wire_bytes()` is the
message as sent, `as_bytes()` made faster.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from email import policy as email_policy
from email.generator import BytesGenerator
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime
from io import BytesIO
from typing import Any

from inscriptis import get_text
from inscriptis.model.config import ParserConfig

from mailservice.delivery.attachments import add_attachments, set_boundaries
from mailservice.delivery.message_spec import MessageSpec
from mailservice.senders import Sender


class CachedHeaderRegistry(HeaderRegistry):
    """The standard header registry, but each header class is made once, not per header, and
    the MIME headers every message repeats are parsed once, not per message.

    `HeaderRegistry.__getitem__` builds a new class with `type()` on every call, which made up
    almost half the cost of building a message; the classes it builds depend only on the
    header name, so they are kept. `Content-Type: text/plain; charset="utf-8"`,
    `Content-Transfer-Encoding: 7bit` and `MIME-Version: 1.0` come again in every message and
    part, and parsing them cost a third of a multipart message: their header objects, which
    nothing changes once made (a new value is a new object), are kept for a bounded number of
    values. A multipart Content-Type holds a random boundary and is never kept.
    """

    REPEATED = frozenset({"content-type", "content-transfer-encoding", "mime-version"})
    MAX_KEPT = 64

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}
        self._kept: dict[tuple[str, str], object] = {}

    def __getitem__(self, name: str) -> type:
        cls = self._classes.get(name)
        if cls is None:
            cls = self._classes[name] = super().__getitem__(name)
        return cls

    def __call__(self, name: str, value: Any) -> Any:
        if name.lower() not in self.REPEATED or not isinstance(value, str):
            return self[name](name, value)
        key = (name, value)
        header = self._kept.get(key)
        if header is None:
            header = self[name](name, value)
            if len(self._kept) < self.MAX_KEPT and "boundary" not in value.lower():
                self._kept[key] = header
        return header


# Policy `default` (API.md section 3), with CRLF line ends for the wire and the cached registry.
# Bodies are 7-bit safe (cte_type 7bit: quoted-printable or base64 for non-ASCII text), so a
# message goes to any server without BODY=8BITMIME (RFC 6152), whatever the server offers; the
# UTF-8 policy of SMTPUTF8 messages keeps 8bit, which goes with BODY=8BITMIME (RFC 6531).
_WIRE = email_policy.default.clone(linesep="\r\n", header_factory=CachedHeaderRegistry())
MESSAGE_POLICY = _WIRE.clone(cte_type="7bit")
UTF8_POLICY = _WIRE.clone(utf8=True)

# RFC 5322 2.1.1: no line of a message longer than 998 octets, CRLF excluded.
MAX_LINE_OCTETS = 998
# A header value as runs of whitespace, each with the word after it.
_WORDS = re.compile(r"[ \t]*[^ \t]+|[ \t]+$")


class WhitespaceFoldedHeader(str):
    """An ASCII header value that folds only at its own whitespace, never into encoded words.

    The policy's header classes fold an unstructured value whose token is longer than a line
    (a URL in List-Unsubscribe, a long id in References) into RFC 2047 encoded words, which
    break it (RFC 2369, RFC 8058). This value is written as given, with a line break before
    whitespace where a line would pass the policy's `max_line_length`; a word longer than that
    stays whole on its line. Unfolding gives the value back exactly. The policy calls `fold()`
    of any header value that has a `name`.
    """

    name: str

    def __new__(cls, name: str, value: str) -> WhitespaceFoldedHeader:
        if not value.isascii() or "\r" in value or "\n" in value:
            raise ValueError(f"header {name} must be ASCII on one line to be folded as is")
        self = super().__new__(cls, value)
        self.name = name
        return self

    @classmethod
    def fits(cls, name: str, value: str) -> bool:
        """True when the value is ASCII and each word fits on a line of 998 octets."""
        if not value.isascii():
            return False
        longest = max((len(word) for word in value.split()), default=0)
        return len(name) + 2 + longest <= MAX_LINE_OCTETS

    def fold(self, *, policy: email_policy.Policy) -> str:
        maxlen = policy.max_line_length or sys.maxsize
        lines = [f"{self.name}:"]
        for index, word in enumerate(_WORDS.findall(self)):
            if index == 0:
                word = " " + word.lstrip(" \t")  # the separator after the colon is not value
            if index and len(lines[-1]) + len(word) > maxlen and not word.isspace():
                lines.append(word)  # the break goes before whitespace (RFC 5322 2.2.3)
            else:
                lines[-1] += word
        return policy.linesep.join(lines) + policy.linesep


def _address(addr_spec: str, display_name: str = "") -> Address:
    # Given as username and domain: Address(addr_spec=...) re-parses the address (slow) and
    # raises NonASCIILocalPartDefect for an international local part even under a utf8 policy;
    # the address is validated already.
    username, _, domain = addr_spec.rpartition("@")
    return Address(display_name=display_name, username=username, domain=domain)


def build_message(
    request: MessageSpec, sender: Sender, request_id: str, date: datetime
) -> EmailMessage:
    """The message of one request, with a Message-ID that every attempt shares."""
    # Every address in a header counts: under the ASCII policy a non-ASCII local part of
    # Reply-To became an encoded word inside the addr-spec, an address nobody can reply to.
    addresses = [sender.email, *request.recipients, request.reply_to or ""]
    smtputf8 = not all(a.isascii() for a in addresses)
    msg = EmailMessage(policy=UTF8_POLICY if smtputf8 else MESSAGE_POLICY)
    msg["From"] = _address(sender.email, request.from_name or sender.name)
    msg["To"] = tuple(_address(a) for a in request.recipient)
    if request.cc:
        msg["Cc"] = tuple(_address(a) for a in request.cc)
    if request.reply_to:
        msg["Reply-To"] = _address(request.reply_to)
    msg["Subject"] = request.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = f"<{request_id}@{sender.domain}>"
    for name, value in request.headers.items():
        # A value that is not ASCII needs encoded words, and one with a word too long for any
        # line is folded by the policy: that is the only way to send it at all.
        fits = WhitespaceFoldedHeader.fits(name, value)
        msg[name] = WhitespaceFoldedHeader(name, value) if fits else value
    if request.body is not None:
        html, text = (request.body, None) if request.is_html else (None, request.body)
    else:
        html, text = request.html, request.text
    if html is not None and text is None and request.text_alternative:
        text = text_of_html(html)  # an HTML-only message is a spam sign (MIME_HTML_ONLY)
    if html is None:
        msg.set_content(text or "")
    elif text is None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")  # the last part is the one preferred
    if request.attachments:
        add_attachments(msg, request.attachments)
    set_boundaries(msg)
    return msg


def text_of_html(html: str) -> str:
    """The plain-text rendering of an HTML body (inscriptis: layout kept, links as
    `[text](url)`), for the text/plain alternative of an HTML-only message."""
    return get_text(html, ParserConfig(display_links=True))


class WireGenerator(BytesGenerator):
    """The standard BytesGenerator, but a text's line ends are converted in one pass.

    `Generator._write_lines` splits a body on its line ends and writes each line and each
    line end on its own: for a 100 KB attachment (1,800 base64 lines) that loop was most of
    the cost of `as_bytes()`. Replacing every line end at once writes the same bytes:
    splitting on NLCRE (`\r\n`, else `\r`, else `\n`) and joining with the line end is what
    the three replacements do in that order, and the stock method also leaves a text's last
    line without one. `str.replace` is used rather than `NLCRE.sub`, which was 6 times slower.
    """

    def _write_lines(self, lines: str) -> None:
        if lines:
            self.write(lines.replace("\r\n", "\n").replace("\r", "\n").replace("\n", self._NL))


def wire_bytes(msg: EmailMessage) -> bytes:
    """`msg.as_bytes()`, the same bytes, made by the WireGenerator."""
    out = BytesIO()
    WireGenerator(out, mangle_from_=False, policy=msg.policy).flatten(msg, unixfrom=False)
    return out.getvalue()
