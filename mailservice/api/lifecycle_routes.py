"""Cancel and manual retry (API.md section 4, "Cancel and retry") as one blueprint:

    DELETE /email-status/<id>        200 canceled (it was scheduled, queued or retrying)
    POST   /email-status/<id>/retry  202 queued again (it was failed, its content still kept)

Both take the sending key as the send routes do (a key, a /token token or a JWT, in
`Authorization: Bearer` or `X-API-Key`; they read no body), count against its RATE_LIMIT, and
answer with the status body. 404 for an id that is malformed, unknown or another sender's:
the same answer, so that nobody learns another sender's request exists; 409 naming the status
when it cannot be done. The decisions and the store's compare-and-set are in
`delivery/lifecycle.py`.

The blueprint is made per app (`lifecycle_blueprint(rate_limited)`), as the core one is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from flask import Blueprint, Response, jsonify

from mailservice.api.request_path import authenticate, service
from mailservice.delivery.lifecycle import Lifecycle, Refused, Unknown
from mailservice.errors import ApiError
from mailservice.senders import Sender
from mailservice.stores.contract import StatusRecord

NOT_FOUND = "No request of this key has this id (or its status has expired)."


def lifecycle() -> Lifecycle:
    """This process's Lifecycle: its store, events and dispatcher (cheap to make)."""
    svc = service()
    return Lifecycle(
        svc.store,
        svc.stack.events,
        svc.pool,
        deployment_webhook=svc.acceptor.deployment_webhook,
    )


def run(request_id: str, change: Callable[[Lifecycle, str, Sender], StatusRecord]) -> StatusRecord:
    """Authenticate (401, 429), then `change` the request: 404 or 409 as ApiError."""
    sender = authenticate({})  # the key in a header: these routes have no body
    try:
        canonical = str(uuid.UUID(request_id))
    except ValueError:
        raise ApiError(404, NOT_FOUND) from None
    try:
        return change(lifecycle(), canonical, sender)
    except Unknown:
        raise ApiError(404, NOT_FOUND) from None
    except Refused as exc:
        raise ApiError(409, exc.detail) from None


def lifecycle_blueprint(rate_limited: Callable[[Callable], Callable]) -> Blueprint:
    """The cancel and retry routes, each under `rate_limited` (the send routes' budget)."""
    routes = Blueprint("lifecycle", __name__)

    @routes.delete("/email-status/<request_id>")
    @rate_limited
    def cancel(request_id: str) -> Response:
        record = run(request_id, Lifecycle.cancel)
        return jsonify(record.public())

    @routes.post("/email-status/<request_id>/retry")
    @rate_limited
    def retry(request_id: str) -> Response:
        record = run(request_id, Lifecycle.retry)
        response = jsonify(record.public())
        response.status_code = 202
        response.headers["Location"] = f"/email-status/{record.request_id}"
        return response

    return routes
