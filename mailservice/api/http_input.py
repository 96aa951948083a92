"""Reading a request: its JSON body (strictly, once per request) and the API key it presents.

The body is parsed at most once and kept on `flask.g`, so the rate limiter (which needs the key
before the view runs) and the view share one parse; a body error is kept too and raised again
in the view, in the contract's order: 415 content type, 413 size, 400 JSON.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import g, request
from werkzeug.exceptions import RequestEntityTooLarge

from mailservice.api.strict_json import parse_json_object
from mailservice.errors import ApiError

URL_KEY_PARAMETERS = ("key", "api_key", "apikey", "token", "access_token")
# Members of a body that are not part of an Idempotency-Key's fingerprint: the credential, and
# `dry_run` (a dry run claims no key, so a fingerprint only ever sees it false or absent).
UNSIGNED = ("key", "dry_run")


def _parse_body() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise ApiError(415, "Send the body as JSON with Content-Type: application/json.")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ApiError(415, "The JSON body must be UTF-8.")
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise ApiError(413, "The request body is too large (MAX_REQUEST_BYTES).") from exc
    return parse_json_object(raw)


def json_body() -> dict[str, Any]:
    """The body as one strict JSON object, parsed once per request; ApiError otherwise."""
    if "json_body" not in g:
        try:
            g.json_body = _parse_body()
        except ApiError as exc:
            g.json_body = exc
    if isinstance(g.json_body, ApiError):
        raise g.json_body
    return g.json_body


def bearer_credential() -> str | None:
    """The credential of `Authorization: Bearer` (an API key or a /token token), if any."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def header_key() -> str | None:
    """The credential of `Authorization: Bearer` or, failing that, `X-API-Key`."""
    return bearer_credential() or request.headers.get("X-API-Key", "").strip() or None


def presented_key(body: dict[str, Any] | None) -> str | None:
    """The API key: Authorization: Bearer, then X-API-Key, then the JSON field `key`."""
    key = header_key()
    if key is None and body is not None and isinstance(body.get("key"), str):
        key = body["key"]
    return key


def reject_key_in_url() -> None:
    """API keys are never accepted in the URL (they end up in proxy and access logs)."""
    if any(name.lower() in URL_KEY_PARAMETERS for name in request.args):
        raise ApiError(400, "API keys are never accepted in the URL; use a header.")


def idempotency_key() -> str | None:
    """The request's Idempotency-Key header, or None without one; 400 if malformed."""
    value = request.headers.get("Idempotency-Key")
    if value is not None and (
        not 1 <= len(value) <= 255 or not (value.isascii() and value.isprintable())
    ):
        raise ApiError(400, "Idempotency-Key must be 1 to 255 printable ASCII characters.")
    return value


def idempotency(body: dict[str, Any], key_digest: bytes, value: str) -> tuple[str, str]:
    """(scope, fingerprint) of an Idempotency-Key `value`.

    The scope is the API key and Idempotency-Key together (digested); the fingerprint is the
    route and the body as canonical JSON (without `UNSIGNED`), so a retry that only re-spaces
    the JSON matches.
    """
    scope = hashlib.sha256(key_digest + b"\0" + value.encode()).hexdigest()
    canonical = json.dumps({k: v for k, v in body.items() if k not in UNSIGNED}, sort_keys=True)
    fingerprint = hashlib.sha256(f"{request.path}\0{canonical}".encode()).hexdigest()
    return scope, fingerprint
