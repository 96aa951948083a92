"""ADMIN_EMAIL failure notices: a short plain-text message to the operator when a request fails
for good (API.md section 4, "Failure notices").

`FailureNotifier.on_event` subscribes to the EventBus. On a `Finished` event whose record is
`failed` it builds a notice (`notice_spec`: request id, sender, recipients, reason, refused
addresses, attempts, times; never the failed message's subject or body, which the record does
not hold) and accepts it as a new request through the same `Acceptor`, sent as the failed
request's own sender, so it is recorded, logged, retried and recovered like any other.

It lives in delivery, not events, because it sends: it needs the Acceptor, and events may not
import delivery. The handler runs on a sending thread, so it only decides and accepts (one store
write and a submit); a store or pool that refuses is logged, never raised into the bus.

A notice never triggers another: it carries the tag `mail:failure-notice` (client tags cannot
hold a colon), and a failed request with that tag gets no notice. The tag, not memory, marks
it, so a notice recovered by another process after a restart is recognised there too.
Requests a drain ends (`shutdown before send`) get none: the pool is stopping and takes no
more, and the service's log counts them.
"""

from __future__ import annotations

import logging
from datetime import datetime

from mailservice.delivery.accepting import Acceptor, RequestExtras
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.notice_policy import HeldBack, NoticeWindow, reason_class
from mailservice.errors import StoreError, Unavailable
from mailservice.events.bus import Event, Finished
from mailservice.senders import SenderDirectory
from mailservice.stores.contract import EmailStatus, StatusRecord

logger = logging.getLogger(__name__)

NOTICE_TAG = "mail:failure-notice"
NOTICE_SOURCE = "failure-notice"  # where a notice came in, as its `Accepted` event says
SUBJECT_PREFIX = "[mail-service]"
# Reason classes that get no notice: the pool is draining and would refuse it.
SILENT_CLASSES = frozenset({"shutdown"})


def _line(value: str) -> str:
    """One line of text: a reason from an SMTP server must not forge lines of the notice."""
    return "".join(" " if ord(ch) < 32 or ord(ch) == 127 else ch for ch in value)


def _time(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def notice_spec(record: StatusRecord, admin_email: str, kind: str, held: HeldBack) -> MessageSpec:
    """The notice about one failed request, to `admin_email`."""
    lines = [
        "A request failed for good; it will not be tried again.",
        "",
        f"Request ID:   {record.request_id}",
        f"Sender:       {_line(record.sender)}",
        f"Recipients:   {_line(', '.join(record.recipients))}",
        f"Reason class: {kind}",
        f"Reason:       {_line(record.error or 'none given')}",
    ]
    refused = [f"{_line(a)}: {_line(r)}" for a, r in record.refused.items()]
    lines.append(f"Refused:      {refused[0] if refused else 'none'}")
    lines.extend(f"              {entry}" for entry in refused[1:])
    lines += [
        f"Attempts:     {record.attempts}",
        f"Accepted at:  {_time(record.created_at)}",
        f"Failed at:    {_time(record.updated_at)}",
    ]
    if held.count:
        lines += ["", f"And {held.count} more failures of this kind since the last notice:"]
        lines.extend(f"  {request_id}" for request_id in held.request_ids)
        if held.count > len(held.request_ids):
            lines.append(f"  ... and {held.count - len(held.request_ids)} more")
    lines += [
        "",
        f"Its status: GET /email-status/{record.request_id}",
        "This notice holds no subject or body of the message. Failures of one kind from one",
        "sender get at most one notice a minute; the rest are counted in the next one.",
    ]
    return MessageSpec(
        recipient=(admin_email,),
        subject=f"{SUBJECT_PREFIX} delivery failed: {kind} ({record.request_id})",
        body="\n".join(lines) + "\n",
        # RFC 3834: an automatic message; well-behaved responders send no auto-reply to it.
        headers={"Auto-Submitted": "auto-generated"},
    )


class FailureNotifier:
    """Sends ADMIN_EMAIL a notice for each request that ends `failed`, within the window."""

    def __init__(
        self,
        admin_email: str,
        senders: SenderDirectory,
        acceptor: Acceptor,
        window: NoticeWindow | None = None,
    ) -> None:
        self.admin_email = admin_email
        self.senders = senders
        self.acceptor = acceptor
        self.window = window or NoticeWindow()

    def on_event(self, event: Event) -> None:
        """The EventBus subscriber: a notice for a failed request's `Finished` event."""
        record = event.record
        if not isinstance(event, Finished) or record.status is not EmailStatus.FAILED:
            return
        if NOTICE_TAG in record.tags:
            logger.warning(
                "failure notice request_id=%s failed too (%s); no notice is sent about it",
                record.request_id,
                record.error,
            )
            return
        kind = reason_class(record.error)
        if kind in SILENT_CLASSES:
            return
        sender = self.senders.by_email(record.sender)
        if sender is None:
            logger.warning(
                "no failure notice for request_id=%s: its sender %s is no longer configured",
                record.request_id,
                record.sender,
            )
            return
        key = (sender.email, kind)
        held = self.window.admit(key, record.request_id)
        if held is None:
            logger.info(
                "failure notice for request_id=%s held back: %s had one for %s within the minute",
                record.request_id,
                sender.email,
                kind,
            )
            return
        extras = RequestExtras(
            metadata={"failed_request_id": record.request_id}, tags=(NOTICE_TAG,)
        )
        try:
            notice = self.acceptor.accept(
                notice_spec(record, self.admin_email, kind, held),
                sender,
                extras=extras,
                source=NOTICE_SOURCE,
            )
        except (StoreError, Unavailable) as exc:
            self.window.give_back(key, record.request_id, held)
            logger.warning(
                "failure notice for request_id=%s not accepted (%s); it is counted in the next one",
                record.request_id,
                exc,
            )
            return
        logger.info(
            "failure notice request_id=%s queued for failed request_id=%s (%s)",
            notice.request_id,
            record.request_id,
            kind,
        )
