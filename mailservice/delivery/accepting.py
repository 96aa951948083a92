"""Accepting a request: an id, a room check, the record in the store (the 202 promise), then
the dispatcher.

`Acceptor.accept()` is the one way in for every route: the request is recorded as `queued`
with its `MessageSpec` (and its Idempotency-Key, in the same atomic step) before anything else
happens; only then is `Accepted` announced and the request handed to the dispatcher. If the
store cannot record it, nothing is sent and the caller gets the StoreError (a 503).
`Acceptor.accept_many()` does the same for a batch, with one store call for all of it
(`StatusStore.create_many`): all of it is recorded, or none.

A request whose `send_at` is still ahead is recorded as `scheduled` instead and announced,
but not handed to the dispatcher: it waits in the store, holding no room (QUEUE_MAX counts
it only once due), until the scheduler of some process takes it (delivery/scheduler.py).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mailservice.delivery.dispatcher import Dispatcher
from mailservice.delivery.message_spec import MessageSpec
from mailservice.errors import Unavailable
from mailservice.events.bus import Accepted, EventBus
from mailservice.senders import Sender
from mailservice.stores.contract import (
    EmailStatus,
    IdempotencyClaim,
    StatusRecord,
    StatusStore,
    WebhookState,
    utcnow,
)


@dataclass(frozen=True, slots=True)
class RequestExtras:
    """What a client keeps with a request besides its message: shown in its status and in
    webhooks, never written into the message."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    callback_url: str | None = None  # the request's own webhook target
    # When to send it (None: at once) and when it is too late to (None: never), in UTC:
    # the record's, not the message's.
    send_at: datetime | None = None
    expires_at: datetime | None = None


class Acceptor:
    """Records accepted requests and hands them to the dispatcher.

    `deployment_webhook`: a deployment-wide webhook target exists (WEBHOOK_URL), so every
    request's webhook starts `pending`; otherwise only those with their own `callback_url`.
    """

    def __init__(
        self,
        store: StatusStore,
        dispatcher: Dispatcher,
        events: EventBus,
        *,
        deployment_webhook: bool = False,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.events = events
        self.deployment_webhook = deployment_webhook

    def accept(
        self,
        spec: MessageSpec,
        sender: Sender,
        idempotency: tuple[str, str] | None = None,
        extras: RequestExtras | None = None,
        source: str = "",
        request_id: str | None = None,
    ) -> StatusRecord | IdempotencyClaim:
        """Record the request as queued and dispatch it (or as scheduled, to wait for its
        send_at); Unavailable or StoreError if not.

        With `idempotency` (scope, fingerprint) already used, nothing is created and the
        earlier claim is returned instead of a record. `extras` are the client's own, kept
        with the status. `source` names where it came in (the `Accepted` event's).
        `request_id`: the id chosen by the caller (a fresh uuid4 string), for a message that
        carries it before it is recorded (the SMTP listener's Message-ID); None: a fresh one.
        """
        record, payload = self._queued(spec, sender, extras or RequestExtras(), request_id)
        if record.status is EmailStatus.SCHEDULED:
            self.dispatcher.check_open()  # it takes no room until due, but not while draining
        else:
            self.dispatcher.check_room(sys.getsizeof(payload))
        claim = IdempotencyClaim(*idempotency, record.request_id) if idempotency else None
        earlier = self.store.create(record, payload, claim)
        if earlier is not None:
            return earlier
        self._dispatch(record, payload, sender, source)
        return record

    def accept_many(
        self,
        messages: Sequence[tuple[MessageSpec, RequestExtras] | None],
        sender: Sender,
        idempotency: tuple[str, str] | None = None,
        source: str = "",
    ) -> list[StatusRecord | None] | IdempotencyClaim:
        """`accept()` for a batch: room for all of it that goes at once, one store call for all
        of it, then each is announced and dispatched in order; the records, place by place.

        A `None` place is a message the caller refused: nothing is recorded for it, and the
        Idempotency-Key's claim keeps it as an empty place (`IdempotencyClaim.of_batch`), so
        that a repeat can tell which message got which id. With `idempotency` already used,
        nothing is created and the earlier claim is returned.
        """
        places = [
            None if message is None else self._queued(message[0], sender, message[1])
            for message in messages
        ]
        items = [place for place in places if place is not None]
        # The scheduled ones take no room until due.
        at_once = [payload for record, payload in items if record.status is EmailStatus.QUEUED]
        self.dispatcher.check_open()
        if at_once:
            self.dispatcher.check_room(sum(sys.getsizeof(payload) for payload in at_once))
        room = self.dispatcher.room()
        if room < len(at_once):
            raise Unavailable(f"a batch of {len(at_once)} requests, room for {room} (QUEUE_MAX)")
        claim = None
        if idempotency:
            ids = [None if place is None else place[0].request_id for place in places]
            claim = IdempotencyClaim.of_batch(*idempotency, ids)
        earlier = self.store.create_many(items, claim)
        if earlier is not None:
            return earlier
        for record, payload in items:
            self._dispatch(record, payload, sender, source)
        return [None if place is None else place[0] for place in places]

    def _queued(
        self,
        spec: MessageSpec,
        sender: Sender,
        extras: RequestExtras,
        request_id: str | None = None,
    ) -> tuple[StatusRecord, str]:
        """A new request's record, `queued` under a fresh id (`scheduled` when its send_at
        is still ahead), and its stored spec."""
        now = utcnow()
        recipients = tuple(spec.recipients)
        later = extras.send_at is not None and extras.send_at > now
        record = StatusRecord(
            request_id=request_id or str(uuid.uuid4()),
            status=EmailStatus.SCHEDULED if later else EmailStatus.QUEUED,
            sender=sender.email,
            recipients=recipients,
            pending=recipients,
            created_at=now,
            updated_at=now,
            owner=self.dispatcher.owner,
            metadata=dict(extras.metadata),
            tags=extras.tags,
            callback_url=extras.callback_url,
            webhook=(
                WebhookState.PENDING if extras.callback_url or self.deployment_webhook else None
            ),
            send_at=extras.send_at,  # kept when past too: its status shows what was asked
            expires_at=extras.expires_at,
        ).noted()  # its history begins: queued, or scheduled
        return record, spec.to_json()

    def _dispatch(self, record: StatusRecord, payload: str, sender: Sender, source: str) -> None:
        """The request is recorded: announce it, then hand it to the dispatcher (a scheduled
        one is the scheduler's to hand over when due)."""
        self.events.emit(Accepted(record, source))
        if record.status is not EmailStatus.SCHEDULED:
            self.dispatcher.submit(record, payload, sender)
