"""Drop-in routes for the second FastAPI and Celery service (email-service-v2), which mounts
its routes under `/api/v1` (API.md section 7), as one blueprint.

    POST /api/v1/mail/send-email/      queued: 201 {"result": "<id>, Task passed to Celery"}
    POST /api/v1/mail/send-async/      waits: 201 {"result": "Email sent @ <time>"}; 400
    POST /api/v1/sms/send-email-sms/   a text message through the carrier's email-to-SMS
                                       gateway; waits: 201 {"result": "Text sent @ <time>"}; 400

Every answer adds `request_id`. The bodies are translated into the core SendRequest as in
`legacy_routes` (its SeedShape and waiting helpers), so every core check applies and errors
name this service's fields. The mail body's `message` is one string, sent as HTML (message
building adds its plain-text alternative); the text message is plain text with no subject, as
the older service sent it. `user_id` (a string, an integer or null) is kept as the request's
metadata, `{"user_id": "<as text>"}` in its status, never written into the message (every
recipient would see a header). A body with `"dry_run": true` is answered 200 with what would
be sent (`api/dry_run.py`), on every route.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify

from mailservice.api import dry_run
from mailservice.api.http_input import json_body
from mailservice.api.legacy_routes import EVERY_SEED, SeedShape, send_and_answer
from mailservice.api.request_path import accept, authenticate
from mailservice.api.schemas import SendRequest
from mailservice.api.sms_gateways import gateway_domain, phone_digits
from mailservice.errors import ApiError, FieldError
from mailservice.senders import Sender

MAIL = SeedShape(
    {
        "email_to": "recipient",
        "email_from": "from",
        "subject": "subject",
        "message": "html",
        **EVERY_SEED,
    },
    content="message",
)
# phone_number becomes the gateway address (recipient); the subject is set here.
SMS = SeedShape({"phone_number": "recipient", "message": "text", **EVERY_SEED}, content="message")
# The core needs a subject to validate; the text message goes without one (see _sms_request).
SMS_SUBJECT = "text message"


def _invalid(*errors: FieldError) -> ApiError:
    return ApiError(400, "The request has invalid fields.", list(errors))


def without_user_id(body: dict[str, Any]) -> dict[str, Any]:
    """The body without `user_id`, which must be a string, an integer or null (module doc)."""
    rest = dict(body)
    value = rest.pop("user_id", None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
        raise _invalid(FieldError("user_id", "must be a string, an integer or null"))
    return rest


def user_id_metadata(body: dict[str, Any]) -> dict[str, str]:
    """`user_id` (checked by without_user_id) as the request's metadata, shown in its status."""
    value = body.get("user_id")
    return {} if value is None else {"user_id": str(value)}


def _validate_mail(body: dict[str, Any], sender: Sender) -> SendRequest:
    return MAIL.validate(without_user_id(body), sender)


def _sms_validator(gateways: dict[str, str]) -> Callable[[dict[str, Any], Sender], SendRequest]:
    def validate(body: dict[str, Any], sender: Sender) -> SendRequest:
        return _sms_request(body, sender, gateways)

    return validate


def _sms_request(body: dict[str, Any], sender: Sender, gateways: dict[str, str]) -> SendRequest:
    """The text message as a SendRequest to `<digits>@<gateway domain>`; 400 naming
    `phone_number`, `provider` or `message` when one is missing or wrong."""
    rest = without_user_id(body)
    provider, phone_number = rest.pop("provider", None), rest.pop("phone_number", None)
    errors: list[FieldError] = []
    domain = None
    if not isinstance(provider, str):
        errors.append(FieldError("provider", "is required: the carrier's name, a string"))
    elif (domain := gateway_domain(provider, gateways)) is None:
        errors.append(FieldError("provider", "is not a carrier this service knows (SMS_GATEWAYS)"))
    digits = None
    if not isinstance(phone_number, str):
        errors.append(FieldError("phone_number", "is required: a string of digits"))
    else:
        try:
            digits = phone_digits(phone_number)
        except ValueError as exc:
            errors.append(FieldError("phone_number", str(exc)))
    message = rest.get("message")
    if message is None or (isinstance(message, str) and not message.strip()):
        errors.append(FieldError("message", "is required and must not be empty"))
    core = SMS.to_core(rest)  # unknown fields first, as on every route
    if errors:
        raise _invalid(*errors)
    core |= {"recipient": f"{digits}@{domain}", "subject": SMS_SUBJECT}
    # The older service sent the bare text, no Subject; a gateway shows a subject before it.
    return SMS.validate_core(core, sender).model_copy(update={"subject": ""})


def _now() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"


def _created(request_id: str, result: str) -> Response:
    """201 with the `result` the older service's clients read, plus `request_id`."""
    response = jsonify(result=result, request_id=request_id)
    response.status_code = 201
    response.headers["Location"] = f"/email-status/{request_id}"
    return response


def v1_blueprint(
    rate_limited: Callable[[Callable], Callable], gateways: dict[str, str]
) -> Blueprint:
    """The /api/v1 routes under the send routes' shared budget; `gateways` from
    `sms_gateways.gateway_table(settings.sms_gateways)`."""
    v1 = Blueprint("v1", __name__, url_prefix="/api/v1")
    validate_sms = _sms_validator(gateways)

    @v1.post("/mail/send-email/")
    @rate_limited
    def send_email() -> Response:
        body = json_body()
        sender = authenticate(body)
        if dry_run.requested(body):
            return dry_run.answer(_validate_mail(body, sender), sender, user_id_metadata(body))
        request_id = accept(
            body, lambda: _validate_mail(body, sender), sender, user_id_metadata(body)
        )
        return _created(request_id, f"{request_id}, Task passed to Celery")

    @v1.post("/mail/send-async/")
    @rate_limited
    def send_async() -> Response:
        return send_and_answer(
            _validate_mail,
            400,
            "The email could not be sent",
            lambda request_id: _created(request_id, f"Email sent @ {_now()}"),
            user_id_metadata,
        )

    @v1.post("/sms/send-email-sms/")
    @rate_limited
    def send_email_sms() -> Response:
        return send_and_answer(
            validate_sms,
            400,
            "The text message could not be sent",
            lambda request_id: _created(request_id, f"Text sent @ {_now()}"),
            user_id_metadata,
        )

    return v1
