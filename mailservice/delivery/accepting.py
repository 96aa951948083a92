"""Accepting a request: an id, a room check, the record in the store (the 202 promise), then
the dispatcher.

`Acceptor.accept()` is the one way in for every route: the request is recorded as `queued`
with its `MessageSpec` (and its Idempotency-Key, in the same atomic step) before anything else
happens; only then is `Accepted` announced and the request handed to the dispatcher. If the
store cannot record it, nothing is sent and the caller gets the StoreError (a 503).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from mailservice.delivery.dispatcher import Dispatcher
from mailservice.delivery.message_spec import MessageSpec
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
    ) -> StatusRecord | IdempotencyClaim:
        """Record the request as queued and dispatch it; Unavailable or StoreError if not.

        With `idempotency` (scope, fingerprint) already used, nothing is created and the
        earlier claim is returned instead of a record. `extras` are the client's own, kept
        with the status.
        """
        extras = extras or RequestExtras()
        payload = spec.to_json()
        self.dispatcher.check_room(sys.getsizeof(payload))
        request_id = str(uuid.uuid4())
        now = utcnow()
        recipients = tuple(spec.recipients)
        record = StatusRecord(
            request_id=request_id,
            status=EmailStatus.QUEUED,
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
        )
        claim = IdempotencyClaim(*idempotency, request_id) if idempotency else None
        earlier = self.store.create(record, payload, claim)
        if earlier is not None:
            return earlier
        self.events.emit(Accepted(record))
        self.dispatcher.submit(record, payload, sender)
        return record
