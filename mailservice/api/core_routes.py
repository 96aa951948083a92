"""The core routes (API.md sections 3, 4 and 8) as one blueprint: send, status, health.

    POST /send-email[/]       202: recorded and queued, or scheduled for its send_at (the older
                              FastAPI services' `email_to` body is told apart and answered in
                              their shape); with "dry_run": true, 200 and what would be sent
                              (api/dry_run.py)
    GET  /email-status/<id>   the status; no message content, ever; `?wait=N` answers once it is
                              final or N seconds passed (the long poll, events/status_watch.py)
    GET  /healthz, /readyz    alive; store reachable and room for more

The blueprint is made per app (`core_blueprint(rate_limited)`), because the rate limit's
decorator belongs to that app's Limiter.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable

from flask import Blueprint, Response, jsonify, request

from mailservice.api import dry_run
from mailservice.api.http_input import json_body
from mailservice.api.legacy_routes import is_email_to_shape, send_email_to
from mailservice.api.request_path import (
    accept_send,
    accepted_answer,
    authenticate,
    problem,
    service,
    validate_send,
)
from mailservice.errors import ApiError, FieldError
from mailservice.events.status_watch import WAIT_MAX

# What `?wait=` takes: an unsigned decimal number, an exponent allowed ("2", "0.5", "1e1");
# float() alone would also take "nan", "inf", " 2" and "1_0".
NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def core_blueprint(rate_limited: Callable[[Callable], Callable]) -> Blueprint:
    """The core routes, the send route under `rate_limited`."""
    core = Blueprint("core", __name__)

    @core.post("/send-email")
    @core.post("/send-email/")
    @rate_limited
    def send_email() -> Response:
        body = json_body()
        sender = authenticate(body)
        if is_email_to_shape(body):  # the FastAPI and Celery services' body (API.md section 7)
            return send_email_to(body, sender)
        if dry_run.requested(body):
            return dry_run.answer(validate_send(body, sender), sender)
        return accepted_answer(*accept_send(body, lambda: validate_send(body, sender), sender))

    @core.get("/email-status/<request_id>")
    def email_status(request_id: str) -> Response:
        wait = wait_seconds()
        try:
            canonical = str(uuid.UUID(request_id))
        except ValueError:
            return problem(404, "No request has this id.")
        stack = service().stack
        # A long poll waits in this HTTP thread, never in the sending pool.
        record = stack.store.get(canonical) if wait is None else stack.watch.wait(canonical, wait)
        if record is None:
            return problem(404, "No request has this id (or its status has expired).")
        return jsonify(record.public())

    @core.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @core.get("/readyz")
    def readyz() -> Response:
        svc = service()
        svc.store.ping()  # StoreError -> 503
        svc.pool.check_room()  # Unavailable -> 503
        return jsonify(status="ready", unfinished=svc.pool.unfinished())

    return core


def wait_seconds() -> float | None:
    """`?wait=N`: N seconds, a number more than 0 and at most WAIT_MAX; None when absent."""
    given = request.args.getlist("wait")
    if not given:
        return None
    raw = given[0]
    seconds = float(raw) if len(given) == 1 and NUMBER.fullmatch(raw) else math.nan
    if not 0 < seconds <= WAIT_MAX:  # nan (not a number, or given twice) fails both
        raise ApiError(
            400,
            "The request has invalid fields.",
            [FieldError("wait", f"must be a number of seconds, more than 0, at most {WAIT_MAX:g}")],
        )
    return seconds
