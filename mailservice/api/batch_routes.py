"""Batches (API.md section 3, "Batches") as one blueprint:

    POST /send-email/batch   {"messages": [<section 3's body>, ...]}: one answer per message,
                             in order (an accepted one `queued`, or `scheduled` for its
                             send_at); 202 all accepted, 207 some, 400 none

Each message is validated on its own by the single route's own steps (`validate_send`, then
`prepared`), so whatever a message of `/send-email` may hold, a batch's message may too, and
is refused for the same reasons. The accepted ones are recorded together, in one store round
trip (`Acceptor.accept_many`). The batch counts against the key's RATE_LIMIT once per message.
An Idempotency-Key covers the whole batch: the claim keeps each message's id in its place
(`IdempotencyClaim.of_batch`), and a repeat rebuilds the first answer from it, working the
refused messages' problems out again from the body, which the fingerprint says is the same;
also a repeat of which no message passes today, found by a read-only look-up (`repeat_of`).
A top-level `"dry_run": true` makes the whole batch a dry run (`api/dry_run.py`): each message
is checked the same way and answered with its preview, and nothing is recorded or claimed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify

from mailservice.api import dry_run
from mailservice.api.http_input import idempotency, idempotency_key, json_body, presented_key
from mailservice.api.rate_limit import SendLimit
from mailservice.api.request_path import (
    authenticate,
    credential_digest,
    prepared,
    problem,
    problem_body,
    repeat_of,
    route_rule,
    service,
    validate_send,
)
from mailservice.api.schedule_fields import repeat_status
from mailservice.delivery.accepting import RequestExtras
from mailservice.delivery.message_spec import MessageSpec
from mailservice.errors import ApiError, FieldError
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, IdempotencyClaim

BATCH_FIELDS = ("messages", "key", dry_run.FIELD)
INVALID = "The request has invalid fields."
# A message's own `key` is refused: one batch has one credential, given once; and its own
# `dry_run`: a batch is a dry run as a whole or not at all.
BATCH_WIDE = {
    "key": "is not a known field: the key goes in a header or at the top of the batch",
    dry_run.FIELD: "is not a known field: dry_run goes at the top of the batch",
}
NOT_ACCEPTED_FIRST = (
    "This message was not accepted when this batch was first sent with this Idempotency-Key "
    "(the service's settings have changed since); send it again under a new key."
)


@dataclass(frozen=True, slots=True)
class Refused:
    """A message that will not be sent, and why: its problem as /send-email would answer."""

    status: int
    detail: str
    errors: tuple[FieldError, ...] = ()

    def body(self) -> dict[str, Any]:
        return problem_body(self.status, self.detail, list(self.errors))


Prepared = tuple[MessageSpec, RequestExtras]


def message_count() -> int:
    """What a request to this route costs against RATE_LIMIT: one per message, at most
    BATCH_MAX; a body that is not a batch (refused later) costs 1, as any request does."""
    try:
        messages = json_body().get("messages")
    except ApiError:
        return 1
    if not isinstance(messages, list):
        return 1
    return max(1, min(len(messages), service().settings.batch_max))


def batch_messages(body: dict[str, Any]) -> list[Any]:
    """The list of messages; 400 naming the field for any other shape, an empty or an over-long
    list, a field other than `messages`, `key` and `dry_run` at the top, or one of the wrong
    type."""
    errors = [FieldError(name, "is not a known field") for name in body if name not in BATCH_FIELDS]
    if "key" in body and not isinstance(body["key"], str):
        errors.append(FieldError("key", "must be a string"))
    if (flag_error := dry_run.flag_error(body)) is not None:
        errors.append(flag_error)
    messages = body.get("messages")
    limit = service().settings.batch_max
    if messages is None:
        errors.append(FieldError("messages", "is required: a list of messages"))
    elif not isinstance(messages, list):
        errors.append(FieldError("messages", "must be a list of messages"))
    elif not messages:
        errors.append(FieldError("messages", "needs at least one message"))
    elif len(messages) > limit:
        errors.append(FieldError("messages", f"at most {limit} messages (BATCH_MAX)"))
    if errors:
        raise ApiError(400, 'The body must be {"messages": [...]}.', errors)
    return messages


def check_message(message: Any, sender: Sender) -> Prepared | Refused:
    """One message through the single route's own steps; its problem when it is refused."""
    if not isinstance(message, dict):
        return Refused(400, f"A message must be a JSON object, not {type(message).__name__}.")
    batch_wide = [FieldError(name, why) for name, why in BATCH_WIDE.items() if name in message]
    rest = {name: value for name, value in message.items() if name not in BATCH_WIDE}
    try:
        ready = prepared(validate_send(rest, sender))
    except ApiError as exc:
        if batch_wide and exc.status != 400:  # a 400 answers before a 403, as on /send-email
            return Refused(400, INVALID, tuple(batch_wide))
        return Refused(exc.status, exc.detail, (*batch_wide, *exc.errors))
    if batch_wide:
        return Refused(400, INVALID, tuple(batch_wide))
    return ready


def answer(items: list[dict[str, Any]], dry: bool = False) -> Response:
    """202 when every message was accepted, 207 when some were, 400 (a problem) when none;
    for a dry run (`dry`), 200 when every message passed, 207 when some did, the same 400."""
    accepted = sum("request_id" in item for item in items)
    if accepted == 0:
        errors: list[FieldError] = []
        for index, item in enumerate(items):
            own = [
                FieldError(f"messages.{index}.{error['field']}", error["message"])
                for error in item.get("errors", [])
            ]
            errors += own or [FieldError(f"messages.{index}", item["detail"])]
        return problem(
            400, "No message of the batch was accepted.", errors, members={"messages": items}
        )
    response = jsonify(dry_run=True, messages=items) if dry else jsonify(messages=items)
    every = 200 if dry else 202
    response.status_code = every if accepted == len(items) else 207
    return response


def accepted(request_id: str, status: EmailStatus) -> dict[str, Any]:
    """An accepted message's item: `queued`, or `scheduled` for its send_at."""
    return {"request_id": request_id, "status": str(status)}


def repeated(
    claim: IdempotencyClaim, checked: list[Prepared | Refused], messages: list[Any]
) -> list[dict[str, Any]]:
    """The first answer again, from the claim's places and the refused messages' problems
    (an accepted one's status from its body, `repeat_status`)."""
    places = claim.places
    if len(places) != len(checked):  # the same fingerprint, another batch: cannot happen
        raise ApiError(409, "This Idempotency-Key was used for a different request.")
    items = []
    for place, outcome, message in zip(places, checked, messages, strict=True):
        if place is not None:
            items.append(accepted(place, repeat_status(message)))
        elif isinstance(outcome, Refused):
            items.append(outcome.body())
        else:
            items.append(Refused(409, NOT_ACCEPTED_FIRST).body())
    return items


def accept_batch() -> Response:
    """The route's steps, in the order of API.md section 3."""
    body = json_body()
    sender = authenticate(body)
    messages = batch_messages(body)
    checked = [check_message(message, sender) for message in messages]
    if body.get(dry_run.FIELD) is True:
        return dry_run_batch(checked, sender)
    if all(isinstance(outcome, Refused) for outcome in checked):
        # Nothing to create, so the store is not asked to: unless this repeats a batch that
        # was accepted under its Idempotency-Key (the settings changed since), which gets the
        # first answer again.
        earlier = repeat_of(body)
        if earlier is not None:
            return answer(repeated(earlier, checked, messages))
        return answer([outcome.body() for outcome in checked if isinstance(outcome, Refused)])
    value = idempotency_key()
    claim = None
    if value is not None:
        claim = idempotency(body, credential_digest(presented_key(body) or ""), value)
    result = service().acceptor.accept_many(
        [None if isinstance(outcome, Refused) else outcome for outcome in checked],
        sender,
        claim,
        source=route_rule(),
    )
    if isinstance(result, IdempotencyClaim):
        if claim is None or result.fingerprint != claim[1]:
            raise ApiError(409, "This Idempotency-Key was used for a different request.")
        return answer(repeated(result, checked, messages))
    return answer(
        [
            accepted(record.request_id, record.status)
            if record is not None
            else refused_body(outcome)
            for record, outcome in zip(result, checked, strict=True)
        ]
    )


def dry_run_batch(checked: list[Prepared | Refused], sender: Sender) -> Response:
    """A dry run's answer: each passing message's preview, each refused one's problem, in
    order. Its Idempotency-Key's form is checked, as a real batch checks it after the
    messages; nothing is claimed, no earlier batch is looked up, no room is asked for."""
    items = [
        outcome.body() if isinstance(outcome, Refused) else dry_run.preview(outcome[0], sender)
        for outcome in checked
    ]
    if not all(isinstance(outcome, Refused) for outcome in checked):
        idempotency_key()  # as a real batch: not when no message passed (that is its 400)
    return answer(items, dry=True)


def refused_body(outcome: Prepared | Refused) -> dict[str, Any]:
    assert isinstance(outcome, Refused)  # a place the Acceptor left empty was refused here
    return outcome.body()


def batch_blueprint(rate_limited: SendLimit) -> Blueprint:
    """POST /send-email/batch under the send routes' budget, charged once per message."""
    batch = Blueprint("batch", __name__)

    @batch.post("/send-email/batch")
    @rate_limited.per_message(message_count)
    def send_batch() -> Response:
        return accept_batch()

    return batch
