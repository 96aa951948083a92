"""Demo mode: an embedded aiosmtpd catcher that keeps every message in `outbox/` as `.eml`.

Used by `python mail_server.py --demo` (and `make run`) so that a newcomer can send mail with
no SMTP account: the service sends to the catcher over plain SMTP on 127.0.0.1:8025. Webhooks
may reach this machine (WEBHOOK_ALLOW_PRIVATE), and a WEBHOOK_SECRET and an ADMIN_TOKEN that
are not set are made up (`demo_secrets`) and printed in the banner.
"""

from __future__ import annotations

import itertools
import secrets
import socket
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpProtocol
from aiosmtpd.smtp import Envelope, Session

from mailservice.config import Settings
from mailservice.errors import ConfigError
from mailservice.senders import Sender, SenderDirectory

DEMO_SENDER = "demo@example.com"


class OutboxHandler:
    """aiosmtpd handler that writes each message to a `.eml` file."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count(1)

    async def handle_DATA(self, server: SmtpProtocol, session: Session, envelope: Envelope) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.outbox / f"{stamp}-{next(self._counter):06d}.eml"
        content = envelope.original_content or b""
        # Written under another name and renamed, so that a .eml file is never seen half-written.
        partial = path.with_suffix(".part")
        partial.write_bytes(content)
        partial.replace(path)
        return "250 OK: kept in outbox"


def start_catcher(host: str, port: int, outbox: Path) -> Controller:
    """Start the catcher on host:port; the caller stops it. ConfigError if it cannot listen."""
    controller = Controller(OutboxHandler(outbox), hostname=host, port=port)
    try:
        # Bind once first: Controller.start() reports a failed bind only after its 5 s timeout.
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
        controller.start()
    except OSError as exc:  # port in use or host not local: a setting to change, not a crash
        raise ConfigError(
            f"the demo SMTP catcher cannot listen on {host}:{port} "
            f"(set SMTP_HOST/SMTP_PORT): {exc.strerror or exc}"
        ) from exc
    return controller


def demo_webhook_secret() -> str:
    """A fresh WEBHOOK_SECRET for a demo run that set none, so that `callback_url` works; the
    banner prints it for the receiver to check signatures with."""
    return "demo-webhook-" + secrets.token_urlsafe(24)


def demo_secrets(settings: Settings) -> tuple[Settings, list[str]]:
    """The demo's settings with a WEBHOOK_SECRET (so that `callback_url` works) and an
    ADMIN_TOKEN (so that the operator's pages open) made up where none is set, and the banner
    lines that print them."""
    lines: list[str] = []
    if not settings.webhook_secret:
        settings = replace(settings, webhook_secret=demo_webhook_secret())
        lines.append(f"Demo webhook secret: {settings.webhook_secret}")
    if not settings.admin_token:
        settings = replace(settings, admin_token="demo-admin-" + secrets.token_urlsafe(18))
        lines.append(f"Demo admin token: {settings.admin_token}")
    return settings, lines


def demo_senders(host: str, port: int) -> tuple[str, SenderDirectory]:
    """A fresh demo key and the directory that maps it to the demo sender."""
    key = "demo-" + secrets.token_urlsafe(18)
    sender = Sender(
        email=DEMO_SENDER,
        password="",
        smtp_host=host,
        smtp_port=port,
        smtp_security="none",
        name="Demo Sender",
    )
    return key, SenderDirectory([(key, sender)])
