"""Building a request's message with the standard library's `email` package: `build_message()`.

Policy `default` (API.md section 3) with CRLF line ends for the wire, a header registry that
makes each header class once, and the UTF-8 policy when an address needs SMTPUTF8.
"""

from __future__ import annotations

from datetime import datetime
from email import policy as email_policy
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime

from mailservice.delivery.message_spec import MessageSpec
from mailservice.senders import Sender


class CachedHeaderRegistry(HeaderRegistry):
    """The standard header registry, but each header class is made once, not per header.

    `HeaderRegistry.__getitem__` builds a new class with `type()` on every call, which made up
    almost half the cost of building a message; the classes it builds depend only on the
    header name, so they are kept.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        cls = self._classes.get(name)
        if cls is None:
            cls = self._classes[name] = super().__getitem__(name)
        return cls


# Policy `default` (API.md section 3), with CRLF line ends for the wire and the cached registry.
MESSAGE_POLICY = email_policy.default.clone(linesep="\r\n", header_factory=CachedHeaderRegistry())
UTF8_POLICY = MESSAGE_POLICY.clone(utf8=True)


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
        msg[name] = value
    if request.body is not None:
        msg.set_content(request.body, subtype="html" if request.is_html else "plain")
    elif request.text is not None and request.html is not None:
        msg.set_content(request.text)
        msg.add_alternative(request.html, subtype="html")
    elif request.html is not None:
        msg.set_content(request.html, subtype="html")
    else:
        msg.set_content(request.text or "")
    return msg
