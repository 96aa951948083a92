"""What one SMTP transaction of a request carries: `outgoing()` gives the envelope and the bytes
after DATA.

A delivery attempt (`attempt.DeliveryAttempt.run`) sends exactly this, and a dry run (API.md
section 3, "Dry run") answers exactly this without sending: one function builds both, so the
preview a client reads cannot drift from what the SMTP server gets. MAIL FROM is the key's
sender address, RCPT TO every recipient still to be sent to (on a new request: to, cc and bcc,
each once; bcc is in the envelope only, never a header), and the data is `wire_bytes()` of
`build_message()`. Whether the transaction needs SMTPUTF8 follows from the message's policy:
`build_message()` takes the UTF-8 one when an address needs it. A message submitted whole
(the SMTP listener) goes out as its prepared bytes (delivery/raw_message.py), needing SMTPUTF8
when its headers or an address are not ASCII (RFC 6531, 6532).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mailservice.delivery.message import build_message, wire_bytes
from mailservice.delivery.message_spec import MessageSpec
from mailservice.senders import Sender


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One transaction's envelope and data."""

    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes  # the message as DATA sends it, before dot-stuffing
    smtputf8: bool  # UTF-8 headers: MAIL FROM needs SMTPUTF8


def outgoing(
    spec: MessageSpec,
    sender: Sender,
    request_id: str,
    created_at: datetime,
    rcpt_to: Sequence[str] | None = None,
) -> Outgoing:
    """The transaction of the request `request_id` made at `created_at` (its Message-ID and
    Date); `rcpt_to` the recipients still pending, by default all of the spec's."""
    recipients = tuple(spec.recipients if rcpt_to is None else rcpt_to)
    if spec.raw is not None:  # submitted whole: relayed as prepared (delivery/raw_message.py)
        head = spec.raw.partition(b"\r\n\r\n")[0]
        utf8 = not head.isascii() or not all(a.isascii() for a in (sender.email, *recipients))
        return Outgoing(sender.email, recipients, spec.raw, utf8)
    msg = build_message(spec, sender, request_id, created_at)
    return Outgoing(sender.email, recipients, wire_bytes(msg), bool(msg.policy.utf8))
