"""SMTP submission (issue 17, API.md section 14): apps that only speak SMTP send through the
service as HTTP clients do, with their sender's address and API key as the login.

`listener` owns the sessions (aiosmtpd, login, envelope checks); `submission` turns one DATA
into an accepted request (no asyncio). `build_listener()` wires them from the settings; the
entry points start it (mail_server.start_smtp_listener) and `Service.shutdown()` stops it
before the delivery stack drains.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable

from mailservice.api.auth_guard import AuthGuard
from mailservice.config import Settings
from mailservice.config_values import listen_address
from mailservice.delivery.accepting import Acceptor
from mailservice.errors import ConfigError
from mailservice.senders import SenderDirectory
from mailservice.smtp_in.handler import SubmissionHandler
from mailservice.smtp_in.listener import SessionBounds, SmtpListener
from mailservice.smtp_in.login import plain_auth_allowed
from mailservice.smtp_in.submission import Submission

logger = logging.getLogger(__name__)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The STARTTLS context of SMTP_LISTEN_CERT and SMTP_LISTEN_KEY; None without them."""
    if not settings.smtp_listen_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.smtp_listen_cert, settings.smtp_listen_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"SMTP_LISTEN_CERT/SMTP_LISTEN_KEY cannot be loaded: {exc}") from exc
    return context


def build_listener(
    settings: Settings,
    senders: SenderDirectory,
    acceptor: Acceptor,
    guard: AuthGuard,
    charge: Callable[[bytes], int | None],
) -> SmtpListener:
    """The listener of SMTP_LISTEN (not started); `charge` is the key's RATE_LIMIT."""
    host, port = listen_address(settings.smtp_listen)
    loopback = host == "localhost" or plain_auth_allowed(host, False)
    if not loopback and not settings.smtp_listen_cert and not settings.smtp_listen_allow_plain:
        # Not an error: a local client can still log in. But it is seldom what was meant.
        logger.warning(
            "SMTP_LISTEN=%s is reachable from other machines, but without SMTP_LISTEN_CERT/"
            "SMTP_LISTEN_KEY (STARTTLS) or SMTP_LISTEN_ALLOW_PLAIN no remote client can log in",
            settings.smtp_listen,
        )
    handler = SubmissionHandler(
        senders,
        Submission(acceptor),
        guard,
        charge,
        settings.max_recipients,
        allow_plain=settings.smtp_listen_allow_plain,
        special_use=settings.allow_special_use_recipients,
    )
    return SmtpListener(
        handler,
        host,
        port,
        tls_context=tls_context(settings),
        data_size_limit=settings.max_request_bytes,
        hostname=settings.smtp_ehlo_name or socket.getfqdn(),
        bounds=SessionBounds(
            max_sessions=settings.smtp_listen_max_sessions,
            max_per_client=settings.smtp_listen_max_sessions_per_client,
        ),
    )
