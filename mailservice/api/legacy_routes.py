"""Drop-in routes for the five older email services (API.md section 7), as one blueprint.

Each older service's body ("seed shape" below: the shape a client of that service sends) is
translated, field by field, into the core `SendRequest` and then takes the core's path
(`request_path`): the same key check, the same validation (header injection, addresses,
recipient limits, 403 for a foreign From), the same `Acceptor.accept()`. Unknown fields are a
400 as in the core API, and field errors name the older service's own fields.

    POST /mail               the Flask /mail microservice: waits; 200 text/plain `message Sent`
                             (JSON when Accept prefers it)
    POST /send-email[/]      the Flask data.csv service (core shape) and the FastAPI and Celery
                             services (`email_to` shape, answered here): 202
    POST /token              the FastAPI OAuth2 service: password grant -> a Bearer token
    POST /smtp/send-email    the same: waits; 200 {"status": "Email sent successfully", ...}

A route that waits holds the request at most SMTP_TIMEOUT + WAIT_MARGIN seconds and then
answers 504 with the request_id; the send goes on and GET /email-status/<id> tells.

Every body takes `dry_run` too (each shape maps it onto the core's): a dry run is validated as
the real send would be and answered at once, 200 with the JSON of `api/dry_run.py` on every
route, the waiting and the text-answering ones included (there is no outcome to wait for).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, request

from mailservice.api import dry_run
from mailservice.api.auth_guard import check_client, count_failure
from mailservice.api.http_input import json_body
from mailservice.api.request_path import (
    accept,
    accepted_answer,
    authenticate,
    problem,
    service,
    validate_send,
)
from mailservice.api.schemas import SendRequest
from mailservice.errors import ApiError, FieldError
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, StatusRecord


@dataclass(frozen=True, slots=True)
class SeedShape:
    """How one seed system's body maps onto SendRequest: seed field -> core field.

    A dotted seed field (`message.text`) is a member of a nested object; `content` is the seed
    field that errors about the message content as a whole are reported under.
    """

    fields: Mapping[str, str]
    content: str = "body"

    def to_core(self, body: dict[str, Any]) -> dict[str, Any]:
        """The core body; ApiError 400 naming every unknown or misshapen field."""
        core: dict[str, Any] = {}
        errors: list[FieldError] = []
        for name, value in body.items():
            members = {f for f in self.fields if f.startswith(f"{name}.")}
            if name in self.fields:
                core[self.fields[name]] = value
            elif not members:
                errors.append(FieldError(name, "is not a known field"))
            elif isinstance(value, dict):
                for member, member_value in value.items():
                    path = f"{name}.{member}"
                    if path in members:
                        core[self.fields[path]] = member_value
                    else:
                        errors.append(FieldError(path, "is not a known field"))
            elif value is not None:
                parts = " and/or ".join(sorted(m.partition(".")[2] for m in members))
                errors.append(FieldError(name, f"must be an object with {parts}"))
        if errors:
            raise ApiError(400, "The request has invalid fields.", errors)
        return core

    def validate(self, body: dict[str, Any], sender: Sender) -> SendRequest:
        """The validated SendRequest; errors name the seed's fields, not the core's."""
        return self.validate_core(self.to_core(body), sender)

    def validate_core(self, core: dict[str, Any], sender: Sender) -> SendRequest:
        """Validate a core body made from this seed's; errors name the seed's fields."""
        try:
            return validate_send(core, sender)
        except ApiError as exc:
            seed_name = {"body": self.content} | {core: seed for seed, core in self.fields.items()}
            detail = exc.detail
            for core, seed in seed_name.items():
                detail = detail.replace(f"`{core}`", f"`{seed}`")
            errors = [
                FieldError(seed_name.get(e.field.split(".")[0], e.field), e.message)
                for e in exc.errors
            ]
            raise ApiError(exc.status, detail, errors, exc.headers) from exc


# What every seed body takes besides its own fields: the key, and a dry run's flag.
EVERY_SEED = {"key": "key", dry_run.FIELD: dry_run.FIELD}
MAIL = SeedShape({"recipient": "recipient", "subject": "subject", "body": "body", **EVERY_SEED})
EMAIL_TO = SeedShape(
    {
        "email_to": "recipient",
        "email_from": "from",
        "subject": "subject",
        "message.text": "text",
        "message.html": "html",
        **EVERY_SEED,
    },
    content="message",
)
SMTP_API = SeedShape(
    {"to": "recipient", "subject": "subject", "message": "body", **EVERY_SEED}, content="message"
)


def is_email_to_shape(body: dict[str, Any]) -> bool:
    """The FastAPI and Celery services post to /send-email(/) too; their bodies are told apart
    by `email_to`."""
    return "email_to" in body


def send_email_to(body: dict[str, Any], sender: Sender) -> Response:
    """The FastAPI and Celery services' body: 202 as in API.md section 3, plus
    `"result": "<request_id>"`; a dry run's answer without it."""
    if dry_run.requested(body):
        return dry_run.answer(EMAIL_TO.validate(body, sender), sender)
    request_id = accept(body, lambda: EMAIL_TO.validate(body, sender), sender)
    return accepted_answer(request_id, result=request_id)


# A route's translation of its body: the validated request (ApiError 400/403 otherwise).
Validate = Callable[[dict[str, Any], Sender], SendRequest]
# What of a route's body is kept with the status as metadata.
MetadataOf = Callable[[dict[str, Any]], dict[str, str]]


def send_and_wait(
    validate: Validate, metadata_of: MetadataOf | None = None
) -> StatusRecord | Response:
    """Accept the request and wait for its outcome; a 504 answer when it isn't known in time,
    and a dry run's answer at once."""
    body = json_body()
    sender = authenticate(body)
    svc = service()
    metadata = metadata_of(body) if metadata_of else None
    if dry_run.requested(body):
        return dry_run.answer(validate(body, sender), sender, metadata)
    request_id = accept(body, lambda: validate(body, sender), sender, metadata)
    final = svc.pool.wait(request_id, svc.settings.smtp_timeout + svc.settings.wait_margin)
    if final is None:
        return problem(
            504,
            f"The outcome is not known yet; the send goes on and GET /email-status/{request_id} "
            "tells.",
            members={"request_id": request_id},
            Location=f"/email-status/{request_id}",
        )
    return final


def send_and_answer(
    validate: Validate,
    failed: int,
    failed_text: str,
    sent: Callable[[str], Response],
    metadata_of: MetadataOf | None = None,
) -> Response:
    """A waiting route's answer: `sent(request_id)` when sent, problem `failed` when it ended
    any other way (failed, expired, or canceled by its sender while the route waited: the older
    services knew only sent and failed, and a client must never read "sent" for those)."""
    outcome = send_and_wait(validate, metadata_of)
    if isinstance(outcome, Response):
        return outcome
    if outcome.status is not EmailStatus.SENT:
        reason = outcome.error or f"{outcome.status.value} by its sender"
        return problem(
            failed, f"{failed_text}: {reason}", members={"request_id": outcome.request_id}
        )
    return sent(outcome.request_id)


MAIL_SENT = "message Sent"


def mail_sent(request_id: str) -> Response:
    """/mail's answer: the text the Flask /mail service returned, which its clients compare,
    or JSON for a client whose Accept prefers application/json; the id in X-Request-Id."""
    if request.accept_mimetypes.best_match(["text/plain", "application/json"]) == (
        "application/json"
    ):
        response = jsonify(message=MAIL_SENT, request_id=request_id)
    else:
        response = Response(MAIL_SENT, mimetype="text/plain")
    response.headers["X-Request-Id"] = request_id
    response.headers["Vary"] = "Accept"
    return response


# -- /token: OAuth2 password grant (RFC 6749 section 4.3) --------------------------------------


def _oauth_error(status: int, error: str, description: str) -> Response:
    """An RFC 6749 section 5.2 error: what OAuth2 client libraries parse."""
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mail"'
    return response


def _issue_token() -> Response:
    if request.mimetype != "application/x-www-form-urlencoded":
        return _oauth_error(
            400, "invalid_request", "Send the form as application/x-www-form-urlencoded."
        )
    if request.args:
        return _oauth_error(400, "invalid_request", "Parameters go in the body, not the URL.")
    form = request.form
    if any(len(form.getlist(name)) > 1 for name in ("grant_type", "username", "password")):
        return _oauth_error(400, "invalid_request", "A parameter is given more than once.")
    # FastAPI's OAuth2PasswordRequestForm (seed 004) lets clients leave grant_type out.
    if form.get("grant_type", "password") != "password":
        return _oauth_error(400, "unsupported_grant_type", "Only grant_type=password is supported.")
    username, password = form.get("username", ""), form.get("password", "")
    if not username or not password:
        return _oauth_error(400, "invalid_request", "username and password are required.")
    # Past AUTH_FAIL_LIMIT failures from this address, or for this username from addresses
    # that have failed for it (never from others: see auth_guard), a 429 problem answer.
    check_client(username)
    svc = service()
    sender = svc.senders.authenticate(password)
    if sender is None or not sender.is_address(username):
        count_failure(username)
        return _oauth_error(
            401, "invalid_grant", "The username (sender address) or password (API key) is wrong."
        )
    response = jsonify(
        access_token=svc.tokens.issue(password),
        token_type="bearer",  # noqa: S106 - the OAuth2 token type, not a secret
        expires_in=svc.tokens.ttl,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


# -- the routes ------------------------------------------------------------------------------


def legacy_blueprint(rate_limited: Callable[[Callable], Callable]) -> Blueprint:
    """/mail, /token and /smtp/send-email; every send route shares one per-key budget."""
    legacy = Blueprint("legacy", __name__)

    @legacy.post("/mail")
    @rate_limited
    def mail() -> Response:
        return send_and_answer(MAIL.validate, 502, "The message was not sent", mail_sent)

    @legacy.post("/smtp/send-email")
    @rate_limited
    def smtp_send_email() -> Response:
        return send_and_answer(
            SMTP_API.validate,
            400,
            "The email could not be sent",
            lambda request_id: jsonify(status="Email sent successfully", request_id=request_id),
        )

    @legacy.post("/token")
    @rate_limited  # counted per client address; failed logins also count in auth_guard
    def token() -> Response:
        return _issue_token()

    return legacy
