"""The MIME parts of a message's attachments: `add_attachments()`, called by `build_message()`.

The structure is the one mail clients expect (RFC 2046, RFC 2387):

- inline parts (an attachment with a `content_id`) go into a multipart/related around the
  HTML part, so that the HTML shows them as `cid:<content_id>`; with a text part that is
  `alternative[text, related[html, inline...]]`, the text alternative untouched;
- every other attachment makes the whole message `mixed[body, attachment...]`.

Each part is base64 (the message stays 7-bit safe). An inline part has `Content-ID:
<content_id>` and `Content-Disposition: inline; filename=...`, a regular one
`Content-Disposition: attachment; filename=...`. A non-ASCII filename is written as an RFC 2231
parameter (`filename*=utf-8''...`, with continuations when long), which mail clients decode,
never as RFC 2047 encoded words, and also in a message with UTF-8 headers (SMTPUTF8), where the
policy would write raw UTF-8 inside the quotes. The API refuses inline parts without an HTML body
(API.md section 3); a spec from elsewhere that has them gets them in the multipart/mixed, still
inline, where clients show them after the text.
"""

from __future__ import annotations

import base64
import secrets
from email import policy as email_policy
from email.message import EmailMessage, MIMEPart
from email.utils import quote

from mailservice.delivery.message_spec import Attachment


class Rfc2231ParameterHeader(str):
    """A parameter header (Content-Disposition) whose non-ASCII values are always folded as
    RFC 2231 parameters.

    The policy writes `filename*=utf-8''%E8...` under an ASCII policy but raw UTF-8 in quotes
    under the UTF-8 one (RFC 6532), which many clients do not read in a parameter. This value is
    parsed and folded by the same header classes under the policy with `utf8` off, whatever the
    message's policy; the policy calls `fold()` of any header value that has a `name`.
    """

    name: str

    def __new__(cls, name: str, value: str) -> Rfc2231ParameterHeader:
        self = super().__new__(cls, value)
        self.name = name
        return self

    def fold(self, *, policy: email_policy.Policy) -> str:
        ascii_policy = policy.clone(utf8=False)
        header = ascii_policy.header_factory(self.name, str(self))  # type: ignore[attr-defined]
        return str(header.fold(policy=ascii_policy))


class TokenHeader(str):
    """A header whose value is one token (`Content-ID: <...>`), written whole on its line.

    The policy treats Content-ID as unstructured text and folds a token longer than a line into
    RFC 2047 encoded words, after which no `cid:` URL matches it. A content_id is at most 255
    characters, so the line stays far below 998 octets.
    """

    name: str

    def __new__(cls, name: str, value: str) -> TokenHeader:
        self = super().__new__(cls, value)
        self.name = name
        return self

    def fold(self, *, policy: email_policy.Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


def add_attachments(msg: EmailMessage, attachments: tuple[Attachment, ...]) -> None:
    """Add the attachments' parts to a message whose body is set."""
    html = _html_part(msg)
    inline = [a for a in attachments if a.content_id is not None] if html is not None else []
    regular = [a for a in attachments if a.content_id is None or html is None]
    if html is not None and inline:
        html.make_related()
        # RFC 2387 asks for the type of the related body's root part.
        html.set_param("type", "text/html")
        for attachment in inline:
            html.attach(_part(attachment, msg.policy))
    if regular:
        msg.make_mixed()
        for attachment in regular:
            msg.attach(_part(attachment, msg.policy))


def set_boundaries(msg: EmailMessage) -> None:
    """Give every multipart of the message a boundary of `_boundary()`'s kind."""
    for part in msg.walk():
        if part.is_multipart() and part.get_boundary() is None:
            part.set_boundary(_boundary())


def _boundary() -> str:
    """A boundary no part can hold: `=_` occurs in neither base64 nor quoted-printable, and 128
    random bits are not in a text written before them.

    Without one, the generator makes its own, compiles a regular expression for it and searches
    the whole encoded text of the multipart for it: a quarter of building a message with a 100
    KB attachment, and a tenth of a plain multipart/alternative one.
    """
    return f"=_{secrets.token_hex(16)}"


def _html_part(msg: EmailMessage) -> EmailMessage | None:
    """The text/html part: the message itself, or the HTML of its multipart/alternative."""
    if msg.get_content_type() == "text/html":
        return msg
    for part in msg.iter_parts():
        if part.get_content_type() == "text/html":
            return part  # type: ignore[return-value]
    return None


def _part(attachment: Attachment, policy: email_policy.Policy) -> MIMEPart:
    part = MIMEPart(policy=policy)
    part["Content-Type"] = attachment.content_type
    part["Content-Transfer-Encoding"] = "base64"
    # One call, lines of 76 characters (RFC 2045 6.8), as set_content() makes them 57 bytes
    # at a time in Python: that loop cost a quarter of a build with a 100 KB attachment.
    part.set_payload(base64.encodebytes(attachment.content).decode("ascii"))
    disposition = "attachment" if attachment.content_id is None else "inline"
    value = f'{disposition}; filename="{quote(attachment.filename)}"'
    part["Content-Disposition"] = Rfc2231ParameterHeader("Content-Disposition", value)
    if attachment.content_id is not None:
        part["Content-ID"] = TokenHeader("Content-ID", f"<{attachment.content_id}>")
    return part
