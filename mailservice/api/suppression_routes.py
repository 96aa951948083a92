"""The operator's API of the suppression lists (API.md section 3, "Suppression list").

    GET    /admin/suppressions?sender=&limit=&after=   a page of entries, in (sender, address)
                                                       order; without `sender`, every sender's
    POST   /admin/suppressions                         {"sender", "address", "reason"?}: 201
    DELETE /admin/suppressions?sender=&address=        204; 404 when it was not on the list

Every route needs `Authorization: Bearer <ADMIN_TOKEN>` (401 otherwise, counted against
AUTH_FAIL_LIMIT as every refused credential is; 429 past it). The dashboard's session cookie
is not taken: these are calls for scripts, and a write must not ride on a browser's cookie.
`sender` is an address of the senders file (404 when no sender has it): the list is kept per
sender account, so two keys with one address share it. Addresses are compared and stored
lower-cased whole. The store's errors are 503 (api/problems.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from email_validator import EmailNotValidError
from flask import Blueprint, Response, jsonify, request

from mailservice.addresses import validate_address
from mailservice.api.admin_api import require_admin_token
from mailservice.api.http_input import json_body
from mailservice.api.request_path import service
from mailservice.errors import ApiError, FieldError
from mailservice.stores.contract import utcnow
from mailservice.stores.suppressions import REASON_MAX, SUPPRESSION_PAGE_MAX, normalized

ROUTE = "/admin/suppressions"
PAGE_DEFAULT = 50
OPERATOR_REASON = "added by the operator"  # an entry added without a reason
BODY_FIELDS = ("sender", "address", "reason")


def invalid(name: str, message: str) -> ApiError:
    return ApiError(400, f"Invalid {name}: {message}.", [FieldError(name, message)])


def text_field(source: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = source.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, "must be a non-empty string")
    return value


def account_of(value: str) -> str:
    """The account of a sender of the senders file; 404 when none has this address."""
    sender = service().senders.by_email(value.strip())
    if sender is None:
        raise ApiError(404, "No sender of the senders file has this address.")
    return sender.account


def address_of(value: str, name: str = "address") -> str:
    """A recipient's address as the list keeps it; 400 when it is not one."""
    try:
        result = validate_address(value.strip(), special_use=True, strict=True)
        return normalized(result.ascii_email or result.normalized)
    except (EmailNotValidError, ValueError) as exc:
        raise invalid(name, f"is not a valid email address: {exc}") from exc


def reason_of(body: dict[str, Any]) -> str:
    reason = text_field(body, "reason", required=False)
    if reason is None:
        return OPERATOR_REASON
    if len(reason) > REASON_MAX or not reason.isprintable():
        raise invalid("reason", f"must be at most {REASON_MAX} printable characters")
    return reason


def limit_of(raw: str | None) -> int:
    if raw is None:
        return PAGE_DEFAULT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= SUPPRESSION_PAGE_MAX:
        raise invalid("limit", f"must be a whole number from 1 to {SUPPRESSION_PAGE_MAX}")
    return int(raw)


def suppression_blueprint() -> Blueprint:
    admin = Blueprint("suppressions", __name__)

    @admin.get(ROUTE)
    def listing() -> Response:
        require_admin_token()
        sender = request.args.get("sender")
        account = None if sender is None else account_of(text_field(request.args, "sender"))
        limit = limit_of(request.args.get("limit"))
        try:
            page = service().store.suppressions(account, limit, request.args.get("after"))
        except ValueError as exc:
            raise invalid("after", "is not the `next` cursor of a page of this list") from exc
        entries = [entry.public() for entry in page.entries]
        return jsonify({"entries": entries, "next": page.after})

    @admin.post(ROUTE)
    def add() -> tuple[Response, int]:
        require_admin_token()
        body = json_body()
        unknown = sorted(set(body) - set(BODY_FIELDS))
        if unknown:
            raise invalid(unknown[0], "is not a member of this body")
        sender = text_field(body, "sender")
        address = address_of(text_field(body, "address") or "")
        reason = reason_of(body)
        account = account_of(sender or "")
        days = service().settings.suppression_days
        until = utcnow() + timedelta(days=days)
        entry = service().store.suppress(account, address, reason, until)
        return jsonify(entry.public()), 201

    @admin.delete(ROUTE)
    def remove() -> Response:
        require_admin_token()
        sender = text_field(request.args, "sender")
        address = address_of(text_field(request.args, "address") or "")
        if not service().store.unsuppress(account_of(sender or ""), address):
            raise ApiError(404, "This address is not on this sender's suppression list.")
        return Response(status=204)

    return admin
