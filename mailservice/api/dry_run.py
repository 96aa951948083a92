"""Dry runs (API.md section 3, "Dry run"): `"dry_run": true` on any send route answers what
would be sent, and sends nothing.

A route asks `requested(body)` once the credential is known (a `dry_run` that is not a JSON
boolean is 400 naming it), validates the request with its own steps as a real send would
(`validate_send`, or its seed shape's translation, then `prepared`: every 400 and 403 of a
real send answers a dry run too, a template is rendered), and then answers `answer()` instead
of accepting. The preview is the transaction `delivery.outgoing` builds for an attempt, with a
fresh request id (the Message-ID) and the time now (the Date), so it is byte for byte what
the SMTP server would get but for those two values (and the MIME boundaries, random per
build).

The sender account's suppression list is read (only read) as an attempt reads it before its
transaction (delivery/suppression.py): a suppressed recipient leaves the envelope and is named
in `suppressed`, so the envelope is the one the SMTP server would get; a list that cannot be
read leaves every recipient in, as an attempt sends to them all then.

Nothing is recorded or handed to the dispatcher, no Idempotency-Key is claimed or looked up
(its form is still checked: a malformed one is 400, as on a real send), no event is emitted:
no request-log line, delivery metric or webhook. The rate limit has counted the request
already: its decorator runs before the view, for a dry run as for any request.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Response, jsonify

from mailservice.api.http_input import idempotency_key
from mailservice.api.request_path import prepared, service
from mailservice.api.schemas import SendRequest
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.outgoing import outgoing
from mailservice.errors import ApiError, FieldError
from mailservice.senders import Sender
from mailservice.stores.contract import utcnow

FIELD = "dry_run"
NOT_A_BOOLEAN = "must be true or false"


def flag_error(body: dict[str, Any]) -> FieldError | None:
    """The error of a `dry_run` that is present and not a JSON boolean (null included)."""
    if FIELD in body and not isinstance(body[FIELD], bool):
        return FieldError(FIELD, NOT_A_BOOLEAN)
    return None


def requested(body: dict[str, Any]) -> bool:
    """Whether the body asks for a dry run; 400 naming `dry_run` when it is not a boolean."""
    error = flag_error(body)
    if error is not None:
        raise ApiError(400, "The request has invalid fields.", [error])
    return body.get(FIELD) is True


def preview(spec: MessageSpec, sender: Sender) -> dict[str, Any]:
    """One message's dry-run object: its request id, envelope and message as text.

    The id and time are made as the Acceptor makes a new request's (a UUID 4, now in UTC); no
    request ever has this id. The message is ASCII, or UTF-8 under SMTPUTF8 (build_message
    never writes other 8-bit data), so it decodes as UTF-8.
    """
    request_id = str(uuid.uuid4())
    suppression = service().suppression
    found = suppression.lookup(sender.account, spec.recipients) if suppression else {}
    rcpt_to = [address for address in spec.recipients if address not in found]
    out = outgoing(spec, sender, request_id, utcnow(), rcpt_to)
    return {
        "dry_run": True,
        "request_id": request_id,
        "envelope": {"mail_from": out.mail_from, "rcpt_to": list(out.rcpt_to)},
        "suppressed": found,
        "message": out.data.decode("utf-8"),
    }


def answer(send: SendRequest, sender: Sender, metadata: dict[str, str] | None = None) -> Response:
    """The 200 of a dry run of one validated request. `metadata` is the route's own (the /api/v1
    routes' user_id): it is checked with the client's as a real send checks it (`prepared`)."""
    spec, _ = prepared(send, metadata)
    body = preview(spec, sender)
    idempotency_key()  # its form, as a real send checks it after the fields; nothing claimed
    return jsonify(body)
