"""The `callback_url` field of a send request (API.md section 3): its form, and its target.

`CallbackUrl` is the field's type in `SendRequest`: an absolute `http://` or `https://` URL
of at most 2048 ASCII characters with a host, no `user:password@` part (put a receiver's token
in the path or query, which logs never show) and no space or control character. Its check
needs no settings, so it runs with the other fields.

`check_callback_target()` runs after them, with the settings: a callback URL is refused when
WEBHOOK_SECRET is unset (nothing could sign it), and, unless WEBHOOK_ALLOW_PRIVATE, when its
host resolves to a loopback, private, link-local, multicast, unspecified or reserved address
(every address it resolves to is checked; the rule is `webhook_client.not_allowed`). A name
that does not exist is refused too; a resolver that fails for the moment is not (the address
is checked again when each try connects).

The lookups run on the request's thread, so they are bounded: one HTTP request (a batch of
100 included) gets WEBHOOK_TIMEOUT seconds of lookups in all, kept on Flask's `g` with each
distinct host's answer, so that a host is looked up once per request. A lookup that runs out
of that time, or finds no time left, counts as a resolver that failed for the moment: the
message is accepted, and every try checks its host again.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

from flask import g
from pydantic import AfterValidator, StrictStr

from mailservice.config import Settings
from mailservice.errors import ApiError, FieldError, WebhookError
from mailservice.events.name_lookup import NameLookup
from mailservice.events.webhook_client import DEFAULT_PORTS, refuse_private

MAX_LENGTH = 2048
FIELD = "callback_url"
# The resolver said the name does not exist; other failures (EAI_AGAIN) may pass.
NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def check_callback_url(value: str) -> str:
    """The URL if it has the form of a webhook target; ValueError saying why not."""
    if len(value) > MAX_LENGTH:
        raise ValueError(f"must be at most {MAX_LENGTH} characters")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("must be ASCII without spaces or control characters (an international "
                         "domain in its xn-- form)")  # fmt: skip
    parts = urlsplit(value)
    if parts.scheme.lower() not in DEFAULT_PORTS:
        raise ValueError("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError("must not hold user:password@ (put a token in the path or query)")
    if not parts.hostname:
        raise ValueError("must name a host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    return value


CallbackUrl = Annotated[StrictStr, AfterValidator(check_callback_url)]


def _refused(message: str) -> ApiError:
    return ApiError(400, "The request has invalid fields.", [FieldError(FIELD, message)])


@dataclass(slots=True)
class _Lookups:
    """One HTTP request's lookups: when their time is up, and each host's answer (its
    addresses; None: not known now; a string: why the name does not resolve)."""

    deadline: float
    answers: dict[str, list[str] | str | None] = field(default_factory=dict)


def _answer(host: str, port: int, lookup: NameLookup, budget: float) -> list[str] | str | None:
    lookups: _Lookups = g.setdefault("callback_lookups", _Lookups(time.monotonic() + budget))
    key = host.lower()
    if key not in lookups.answers:
        try:
            found: list[str] | str | None = lookup.addresses(
                host, port, lookups.deadline - time.monotonic()
            )
        except TimeoutError:  # a slow name server, or no time left: each try checks again
            found = None
        except (socket.gaierror, UnicodeError) as exc:
            no_such_name = isinstance(exc, UnicodeError) or exc.errno in NO_SUCH_NAME
            found = f"its host {host} does not resolve" if no_such_name else None
        lookups.answers[key] = found
    return lookups.answers[key]


def check_callback_target(url: str | None, settings: Settings, lookup: NameLookup) -> None:
    """ApiError 400 naming `callback_url` when it may not be called (see the module's
    docstring); nothing for no URL. `lookup` resolves its host (within the request's time)."""
    if url is None:
        return
    if not settings.webhook_secret:
        raise _refused("webhooks are not configured (WEBHOOK_SECRET is not set)")
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    found = _answer(host, port, lookup, settings.webhook_timeout)
    if isinstance(found, str):
        raise _refused(found)
    if found is None or settings.webhook_allow_private:
        return
    try:
        refuse_private(host, found)
    except WebhookError as exc:
        raise _refused(f"{exc.reason}, which webhooks may not reach") from exc
