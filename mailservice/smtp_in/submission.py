"""From one SMTP transaction's DATA to an accepted request, or the reply that refuses it.

`Submission.submit()` is the listener's only way into the service, and it does what the send
routes do after their key check: the message is checked and prepared
(delivery/raw_message.py), recorded through the `Acceptor` (the same promise as the HTTP 202:
the reply `250 2.0.0 queued as <request_id>` comes only once the store has the request), and
handed to the dispatcher. Nothing here is asyncio: the listener runs it on its executor, as a
blocking call, so that one slow store call holds one thread, not every session.

A message that carries its own Message-ID is claimed under it and its envelope recipients,
per key, with the store's Idempotency-Key claim (24 hours, API.md section 3): an SMTP client
that lost the connection after the final "." and submits the same message again gets the first
request's id and nothing is sent twice. The recipients are part of the scope, not of the
fingerprint, because one Message-ID to other recipients is a new message that must be sent,
not a conflict: Postfix as a smarthost client splits a message into transactions of at most
smtp_destination_recipient_limit recipients, all with its Message-ID, and scripts loop over
recipients with one message. A message without one gets `<request_id@the sender's domain>`,
which no earlier message can have.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence

from mailservice.delivery.accepting import Acceptor
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.raw_message import RawMessageError, prepare_raw
from mailservice.errors import StoreError, Unavailable
from mailservice.senders import Sender
from mailservice.stores.contract import IdempotencyClaim

logger = logging.getLogger(__name__)

SOURCE = "smtp"  # the Accepted event's source: the metrics' label and the log's
# The claims of Message-IDs live beside the HTTP Idempotency-Keys; this prefix keeps a
# Message-ID and an Idempotency-Key of the same text apart.
SCOPE_PREFIX = b"smtp-message-id\0"
FINGERPRINT = "smtp"  # the same scope seen again is the same message, whatever its bytes

STORE_DOWN = "451 4.3.0 The service cannot record the message now; try again later"
BUSY = "451 4.3.2 The service takes no more messages now; try again later"


def envelope_recipients(recipients: Sequence[str]) -> list[str]:
    """The recipients as one set: domains lower-cased (local parts are the receiver's to
    compare), each once, sorted; so that the RCPT TOs of a resubmission in another order or
    case are the same."""
    normal = set()
    for address in recipients:
        local, at, domain = address.rpartition("@")
        normal.add(f"{local}{at}{domain.lower()}" if at else address)
    return sorted(normal)


def message_id_scope(key_digest: bytes, message_id: str, recipients: Sequence[str]) -> str:
    """The idempotency scope of a Message-ID submitted with a key (its digest) to these
    envelope recipients."""
    parts = [message_id, *envelope_recipients(recipients)]
    text = "\0".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(SCOPE_PREFIX + key_digest + b"\0" + text).hexdigest()


class Submission:
    """Turns a DATA into an accepted request; see the module docstring."""

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor

    def submit(
        self, data: bytes, sender: Sender, key_digest: bytes, recipients: Sequence[str]
    ) -> str:
        """The reply to the final "." of DATA: 250 with the request id once recorded, 5xx
        for a message that must not be relayed, 451 when the store or the pool cannot take
        it (nothing is recorded then, and the client keeps the message and tries again)."""
        request_id = str(uuid.uuid4())
        try:
            prepared = prepare_raw(data, sender, request_id)
        except RawMessageError as exc:
            logger.info("smtp submission refused: %s", exc.reply)
            return exc.reply
        spec = MessageSpec(recipient=tuple(recipients), subject=prepared.subject, raw=prepared.data)
        own_id = prepared.message_id != f"<{request_id}@{sender.domain}>"
        claim = None
        if own_id:
            claim = (message_id_scope(key_digest, prepared.message_id, recipients), FINGERPRINT)
        try:
            result = self.acceptor.accept(spec, sender, claim, source=SOURCE, request_id=request_id)
        except StoreError as exc:
            logger.warning("smtp submission: the store failed (%s); answered 451", exc)
            return STORE_DOWN
        except Unavailable as exc:
            logger.warning("smtp submission: %s; answered 451", exc)
            return BUSY
        if isinstance(result, IdempotencyClaim):
            logger.info(
                "smtp submission: Message-ID seen before with these recipients; nothing sent "
                "again request_id=%s",
                result.request_id,
            )
            return f"250 2.0.0 queued as {result.request_id}"
        return f"250 2.0.0 queued as {result.request_id}"
