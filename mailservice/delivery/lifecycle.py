"""Cancel and manual retry: what a sender may do to a request it sent, decided on the record
the store has (API.md section 4, "Cancel and retry").

Both read the record, work out the new one, and write it with `store.replace()`, a
compare-and-set on the status and updated_at just read, whoever owns the request. So of a
cancel and the owner's save of `sending` exactly one wins: either the cancel is written and
the owner's save is refused (its attempt is `Dropped`, nothing is sent), or the save came first
and the cancel, reading again, finds `sending` and is refused. A compare-and-set lost to such a
change is tried again on a fresh read, a few times.

The process that canceled or retried a request becomes its owner: its lease covers the
canceled request's webhook, and the retried request's attempts, which its own dispatcher
makes. A cancel is announced (`Finished`) once the store took it, as any end is; a retry
(`Accepted`, source "retry") likewise, and then it is handed to the dispatcher; its recipients
refused as unknown leave the sender's suppression list first (`suppression.forget_refused`).
Nothing here
knows of HTTP: the routes (api/lifecycle_routes.py) map `Unknown` to 404 and `Refused` to 409.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from mailservice.delivery.dispatcher import Dispatcher
from mailservice.delivery.suppression import forget_refused
from mailservice.delivery.transitions import expired
from mailservice.events.bus import Accepted, EventBus, Finished
from mailservice.senders import Sender
from mailservice.stores.contract import (
    EmailStatus,
    StatusRecord,
    StatusStore,
    WebhookState,
    utcnow,
)

# What a cancel takes: a request not yet handed to the SMTP server, nor ended.
CANCELABLE = frozenset({EmailStatus.SCHEDULED, EmailStatus.QUEUED, EmailStatus.RETRYING})
# Reads and compare-and-sets per call: each one lost means the request changed meanwhile,
# which it does a few times per attempt at most.
TRIES = 5
RETRY_SOURCE = "retry"  # the Accepted event's source for a manual retry


class Unknown(Exception):
    """No such request for this sender: unknown, expired, or another sender's (never told
    apart, so that nobody learns that another sender's request exists)."""


class Refused(Exception):
    """The request is in a state that does not allow it; `detail` says which and why."""

    def __init__(self, status: EmailStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def cancel_record(record: StatusRecord, owner: str) -> StatusRecord:
    """The canceled status of `record`, owned by `owner`, noted in its history; no error (a
    retrying request's last reason is in its history)."""
    return replace(
        record, status=EmailStatus.CANCELED, error=None, owner=owner, updated_at=utcnow()
    ).noted()


def retry_record(record: StatusRecord, owner: str, webhook: WebhookState | None) -> StatusRecord:
    """The `queued` status of a failed request retried by hand: a new run, attempts 0, no
    error, nothing refused, every recipient pending, owned by `owner`, noted in its history
    after the failure; `webhook` is the new run's (pending when it has a target)."""
    return replace(
        record,
        status=EmailStatus.QUEUED,
        attempts=0,
        error=None,
        refused={},
        pending=record.recipients,
        owner=owner,
        webhook=webhook,
        updated_at=utcnow(),
    ).noted()


class Lifecycle:
    """Cancel and manual retry against one process's store, events and dispatcher.

    `deployment_webhook`: WEBHOOK_URL is set, so a retried request's new end is owed a webhook
    as a new request's is (the Acceptor's rule)."""

    def __init__(
        self,
        store: StatusStore,
        events: EventBus,
        dispatcher: Dispatcher,
        *,
        deployment_webhook: bool = False,
    ) -> None:
        self.store = store
        self.events = events
        self.dispatcher = dispatcher
        self.deployment_webhook = deployment_webhook

    def _read(self, request_id: str, sender: Sender) -> StatusRecord:
        record = self.store.get(request_id)  # StoreError: the caller's 503
        if record is None or record.sender.lower() != sender.email.lower():
            raise Unknown(request_id)
        return record

    def cancel(self, request_id: str, sender: Sender) -> StatusRecord:
        """Cancel a scheduled, queued or retrying request of `sender`: its canceled record,
        stored and announced. Unknown, Refused (sending or final), StoreError."""
        for _ in range(TRIES):
            record = self._read(request_id, sender)
            if record.status not in CANCELABLE:
                raise Refused(record.status, cancel_refusal(record.status))
            new = cancel_record(record, self.dispatcher.owner)
            if self.store.replace(new, record):
                self.events.emit(Finished(new))
                return new
        raise Refused(record.status, changing(record.status))

    def retry(self, request_id: str, sender: Sender) -> StatusRecord:
        """Send a failed request of `sender` again: its queued record, stored with its kept
        content as the payload, announced and handed to the dispatcher. Unknown, Refused (not
        failed, past its expires_at, content no longer kept, its webhook still owed),
        Unavailable (no room), StoreError."""
        for _ in range(TRIES):
            record = self._read(request_id, sender)
            if record.status is not EmailStatus.FAILED:
                raise Refused(
                    record.status,
                    f"Only a failed request can be retried; this one is {record.status}.",
                )
            if expired(record, utcnow()):  # it could only end expired, its content deleted
                raise Refused(record.status, PAST_EXPIRY)
            if record.webhook is WebhookState.PENDING:
                # Its outcome is still to be saved over the failed record, which would undo
                # the retry: the webhook of the failure goes first.
                raise Refused(record.status, WEBHOOK_PENDING)
            payload = self.store.kept_payload(request_id)
            if payload is None:
                raise Refused(record.status, CONTENT_GONE)
            self.dispatcher.check_room(sys.getsizeof(payload))  # Unavailable: 503
            webhook = (
                WebhookState.PENDING if record.callback_url or self.deployment_webhook else None
            )
            new = retry_record(record, self.dispatcher.owner, webhook)
            if self.store.replace(new, record, restore=True):
                forget_refused(self.store, sender.account, record.refused)  # the cause is fixed
                self.events.emit(Accepted(new, RETRY_SOURCE))
                self.dispatcher.submit(new, payload, sender)
                return new
            # Lost: changed meanwhile, or its content expired since it was read; a new read
            # tells which.
        raise Refused(record.status, changing(record.status))


WEBHOOK_PENDING = (
    "The webhook of this request's failure is still being delivered (webhook: pending); "
    "retry it once the webhook is delivered or failed."
)
PAST_EXPIRY = (
    "This request's expires_at has passed: it cannot be retried; send it again as a new "
    "request, with a new expires_at."
)
CONTENT_GONE = (
    "This request's content is no longer kept (FAILED_CONTENT_TTL): it cannot be retried; "
    "send it again as a new request."
)


def cancel_refusal(status: EmailStatus) -> str:
    """Why a request in `status` cannot be canceled (a 409's detail)."""
    if status is EmailStatus.SENDING:
        return (
            "The request is sending: it is being handed to the SMTP server and can no longer "
            "be canceled."
        )
    return f"The request is {status}: it has ended and can no longer be canceled."


def changing(status: EmailStatus) -> str:
    return f"The request kept changing (last seen {status}); ask for its status and try again."
