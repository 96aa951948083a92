"""The steps every send route shares: the `Service` on `app.extensions`, problem answers,
authentication, validation and acceptance.

`mail_server` (the core routes) and `legacy_routes` (the seed systems' routes, API.md section 7)
both build on these, so that each route is a short sequence of the same checks in the
contract's order: key (401) -> fields (400/403) -> recorded (202, or 503).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

from flask import Response, current_app, g, jsonify, request
from pydantic import ValidationError

from mailservice.api import jwt_auth
from mailservice.api.attachment_fields import (
    check_count,
    check_inline_parts,
    check_total,
    spec_attachments,
)
from mailservice.api.auth_guard import check_client, count_failure
from mailservice.api.callback_url import check_callback_target
from mailservice.api.client_fields import request_extras
from mailservice.api.http_input import (
    bearer_credential,
    idempotency,
    idempotency_key,
    presented_key,
    reject_key_in_url,
)
from mailservice.api.schedule_fields import SCHEDULE, ScheduleRule, repeat_status
from mailservice.api.schemas import SPECIAL_USE_RECIPIENTS, SendRequest, validation_errors
from mailservice.api.tokens import TokenIssuer
from mailservice.config import Settings
from mailservice.delivery.accepting import Acceptor, RequestExtras
from mailservice.delivery.dispatcher import Dispatcher
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.recovery import LeaseKeeper
from mailservice.delivery.stack import DeliveryStack
from mailservice.delivery.suppression import SuppressionFilter
from mailservice.errors import ApiError, FieldError
from mailservice.events.request_log import RequestLog
from mailservice.events.webhooks import WebhookNotifier
from mailservice.senders import Sender, SenderDirectory, key_digest
from mailservice.stores.contract import EmailStatus, IdempotencyClaim, StatusStore, utcnow
from mailservice.templating import RenderError, TemplateLibrary

EXTENSION = "mail_service"


@dataclass(frozen=True, slots=True)
class Service:
    """What the routes need, kept on `app.extensions["mail_service"]`: the process's delivery
    stack and the HTTP side's own parts."""

    settings: Settings
    senders: SenderDirectory
    stack: DeliveryStack
    tokens: TokenIssuer
    templates: TemplateLibrary
    # The other ways in (the SMTP listener's stop), closed before the stack drains, so that
    # nothing is accepted into a dispatcher that has stopped taking work.
    stop_first: tuple[Callable[[], None], ...] = ()

    @property
    def store(self) -> StatusStore:
        return self.stack.store

    @property
    def pool(self) -> Dispatcher:
        return self.stack.dispatcher

    @property
    def acceptor(self) -> Acceptor:
        return self.stack.acceptor

    @property
    def request_log(self) -> RequestLog:
        return self.stack.request_log

    @property
    def leases(self) -> LeaseKeeper:
        return self.stack.leases

    @property
    def webhooks(self) -> WebhookNotifier:
        return self.stack.webhooks

    @property
    def suppression(self) -> SuppressionFilter | None:
        return self.stack.attempt.suppression

    def shutdown(self, drain_seconds: float) -> int:
        """Stop accepting, send for up to `drain_seconds`, give up the lease; jobs left."""
        for stop in self.stop_first:
            stop()
        return self.stack.shutdown(drain_seconds)


def service() -> Service:
    return current_app.extensions[EXTENSION]


def problem(
    status: int,
    detail: str,
    errors: list[FieldError] | None = None,
    members: dict[str, Any] | None = None,
    **headers: str,
) -> Response:
    """An application/problem+json answer; `members` are extension members (e.g. request_id)."""
    response = jsonify(problem_body(status, detail, errors) | (members or {}))
    response.status_code = status
    response.mimetype = "application/problem+json"
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def problem_body(
    status: int, detail: str, errors: list[FieldError] | None = None
) -> dict[str, Any]:
    """The members of a problem (RFC 9457, API.md section 6); `errors` only on a 400."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if status == 400:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors or []]
    return body


# -- the request path ------------------------------------------------------------------------


def jwt_key_digest(credential: str) -> bytes | None:
    """The key digest an HS256 JWT stands for (`jwt_auth`), worked out once per request: the
    rate limiter, the credential check and the Idempotency-Key all ask."""
    cache: dict[str, bytes | None] = g.setdefault("jwt_key_digests", {})
    if credential not in cache:
        cache[credential] = jwt_auth.key_digest_of(credential, service().senders.jwt_secrets())
    return cache[credential]


def authenticate(body: dict[str, Any]) -> Sender:
    """The sender of the presented key, Bearer token or Bearer JWT; 401 when unknown, bad or
    expired.

    429 instead, before the credential is looked at, for a client address past AUTH_FAIL_LIMIT
    failed authentications (`auth_guard`); every 401 here counts as one.
    """
    reject_key_in_url()
    check_client()
    svc = service()
    sender = svc.senders.authenticate(presented_key(body))
    if sender is None and (bearer := bearer_credential()) is not None:
        sender = svc.tokens.sender_of(bearer)
        # Last: trying a JWT costs one HMAC per sender (jwt_auth).
        if sender is None and (digest := jwt_key_digest(bearer)) is not None:
            sender = svc.senders.by_key_digest(digest)
    if sender is None:
        count_failure()
        raise ApiError(
            401,
            "A valid API key, unexpired token or HS256 JWT is required "
            "(Authorization: Bearer <key, token or JWT>, or X-API-Key).",
            headers={"WWW-Authenticate": 'Bearer realm="mail"'},
        )
    return sender


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1 if value is not None else 0


def validate_send(body: dict[str, Any], sender: Sender) -> SendRequest:
    """The validated request, a template rendered (`render_template`); 400 for bad fields or
    a template that cannot be rendered, 403 for a foreign From address."""
    limit = service().settings.max_recipients
    total = sum(_count(body.get(name)) for name in ("recipient", "to", "cc", "bcc"))
    if total > limit:
        raise ApiError(
            400,
            f"At most {limit} recipients (to + cc + bcc) per message.",
            [FieldError("recipient", f"{total} recipients; the limit is {limit}")],
        )
    settings = service().settings
    check_count(body, settings.max_attachments)
    context = {
        SPECIAL_USE_RECIPIENTS: settings.allow_special_use_recipients,
        SCHEDULE: ScheduleRule(utcnow(), settings.max_schedule_days),
    }
    try:
        send = SendRequest.model_validate(body, context=context)
    except ValidationError as exc:
        raise ApiError(400, "The request has invalid fields.", validation_errors(exc)) from exc
    check_total(send.attachments, settings.max_attachment_bytes)
    if send.template is not None:
        send = render_template(send)
    if send.from_ is not None and send.from_.lower() != sender.email.lower():
        raise ApiError(403, "`from` must be the address of the key's own sender.")
    check_callback_target(send.callback_url, settings, service().webhooks.client.lookup)
    return send


def render_template(send: SendRequest) -> SendRequest:
    """The request as if written by hand: `template` and `variables` replaced by the subject,
    text and html the template renders, so that delivery never hears of templates; 400
    naming `template`, `variables` or `variables.<name>` when it cannot be rendered."""
    try:
        rendered = service().templates.render(send.template or "", send.variables or {})
    except RenderError as exc:
        raise ApiError(400, exc.detail, [FieldError(exc.field, exc.message)]) from exc
    # Not validated again: the library checked the parts as SendRequest checks hand-written ones.
    return send.model_copy(
        update={
            "template": None,
            "variables": None,
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
        }
    )


def credential_digest(credential: str) -> bytes:
    """The digest of the key a credential stands for: a token or a JWT stands for its
    sender's key, so that it shares the key's rate limit and Idempotency-Keys."""
    digest = key_digest(credential)
    svc = service()
    if svc.senders.by_key_digest(digest) is not None:  # a key: no token to check
        return digest
    return svc.tokens.key_digest(credential) or jwt_key_digest(credential) or digest


def accept(
    body: dict[str, Any],
    validate: Callable[[], SendRequest],
    sender: Sender,
    metadata: dict[str, str] | None = None,
) -> str:
    """Validate the request (`validate`: the route's `validate_send`) and record it (the 202
    promise), once per Idempotency-Key; its request_id.

    A repeated Idempotency-Key with the same body gets the first request's id and sends
    nothing, also when the body would no longer pass (a template removed, the settings changed
    since: `repeat_of`); with another body it is a 409. `metadata` is the route's own (the
    /api/v1 routes' user_id), merged with the client's (`client_fields.request_extras`).
    """
    return accept_send(body, validate, sender, metadata)[0]


def accept_send(
    body: dict[str, Any],
    validate: Callable[[], SendRequest],
    sender: Sender,
    metadata: dict[str, str] | None = None,
) -> tuple[str, EmailStatus]:
    """`accept()`, with the status its 202 says: `scheduled` for a request recorded to be
    sent at its `send_at`, else `queued`; a repeat's from its body (`repeat_status`)."""
    try:
        spec, extras = prepared(validate(), metadata)
    except ApiError:
        earlier = repeat_of(body)
        if earlier is None:
            raise
        return earlier.request_id, repeat_status(body)
    value = idempotency_key()
    claim = None
    if value is not None:
        claim = idempotency(body, credential_digest(presented_key(body) or ""), value)
    result = service().acceptor.accept(spec, sender, claim, extras, source=route_rule())
    if isinstance(result, IdempotencyClaim):
        if claim is None or result.fingerprint != claim[1]:
            raise ApiError(409, "This Idempotency-Key was used for a different request.")
        return result.request_id, repeat_status(body)
    return result.request_id, result.status


def repeat_of(body: dict[str, Any]) -> IdempotencyClaim | None:
    """The claim of this request's Idempotency-Key when the key was first used for this very
    route and body, read without claiming anything; None otherwise. For a repeat that would
    be refused today, which is answered as the first request was all the same."""
    try:
        value = idempotency_key()
    except ApiError:  # a malformed key was never used: the request's own problem answers
        return None
    if value is None:
        return None
    scope, fingerprint = idempotency(body, credential_digest(presented_key(body) or ""), value)
    claim = service().store.idempotency_claim(scope)  # StoreError: 503, as it cannot tell
    return claim if claim is not None and claim.fingerprint == fingerprint else None


def prepared(
    send: SendRequest, metadata: dict[str, str] | None = None
) -> tuple[MessageSpec, RequestExtras]:
    """What the Acceptor takes for a validated request, its MessageSpec and the client's
    extras; ApiError 400 where they cannot be made. Every route and every message of a batch
    goes through here after `validate_send`."""
    extras = request_extras(send.tags, send.metadata, metadata or {})
    extras = replace(
        extras, callback_url=send.callback_url, send_at=send.send_at, expires_at=send.expires_at
    )
    return message_spec(send), extras


def message_spec(send: SendRequest) -> MessageSpec:
    """The plain value delivery works from: the validated request without the HTTP model.

    400 for inline attachments in a message without an HTML body (checked on the spec, which
    holds the HTML however the request gave it).
    """
    if send.subject is None:  # a template's request that render_template() has not rendered
        raise ValueError("message_spec() takes a request with its template rendered")
    spec = MessageSpec(
        recipient=tuple(send.recipient),
        subject=send.subject,
        cc=tuple(send.cc),
        bcc=tuple(send.bcc),
        body=send.body,
        is_html=send.is_html,
        text=send.text,
        html=send.html,
        from_name=send.from_name,
        reply_to=send.reply_to,
        headers=dict(send.headers),
        text_alternative=send.text_alternative,
        attachments=spec_attachments(send.attachments),
    )
    check_inline_parts(spec)
    return spec


def route_rule() -> str:
    """The rule of the route this request matched (`/send-email`, never the raw path, which
    may hold ids): where an accepted request came in, as its `Accepted` event says."""
    rule = request.url_rule
    return rule.rule if rule is not None else ""


def accepted_answer(
    request_id: str, status: EmailStatus = EmailStatus.QUEUED, **members: Any
) -> Response:
    """The 202 of API.md section 3 (the same again for a repeated Idempotency-Key); `status`
    is `queued`, or `scheduled` for a request recorded to be sent at its `send_at`."""
    response = jsonify(
        message="Email request is being processed",
        request_id=request_id,
        status=str(status),
        **members,
    )
    response.status_code = 202
    response.headers["Location"] = f"/email-status/{request_id}"
    return response
