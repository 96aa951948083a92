"""The listener's aiosmtpd handler (API.md section 14): AUTH (smtp_in/login.py), MAIL FROM the
key's own address charged to its RATE_LIMIT, RCPT within MAX_RECIPIENTS, and DATA handed to
`Submission` on an executor thread, a bounded number at a time. Blocking calls (store,
limiter, the failed-login guard) never run on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from email_validator import EmailNotValidError

from mailservice.addresses import validate_address
from mailservice.api.auth_guard import AuthGuard
from mailservice.senders import SenderDirectory
from mailservice.smtp_in.login import Login, LoginCheck, read_login, read_plain
from mailservice.smtp_in.submission import Submission

EXECUTOR_THREADS = 8  # blocking store and limiter calls, off the loop
SHUTTING_DOWN = "421 4.3.2 Service shutting down"


def _peer_host(session: Session) -> str | None:
    peer: Any = session.peer
    return peer[0] if isinstance(peer, tuple) and peer else None


@dataclass
class SubmissionHandler:
    """aiosmtpd's handler (AUTH, MAIL, RCPT, DATA); see the module docstring.

    `guard`: the AuthGuard of AUTH_FAIL_LIMIT; `charge(key_digest)`: the key's RATE_LIMIT,
    None within it or the seconds to wait; `special_use`: ALLOW_SPECIAL_USE_RECIPIENTS.
    """

    senders: SenderDirectory
    submission: Submission
    guard: AuthGuard
    charge: Callable[[bytes], int | None]
    max_recipients: int
    allow_plain: bool = False
    special_use: bool = False
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(EXECUTOR_THREADS, "smtp-in")
    )
    # One thread: the failed logins of an address are counted in the order they came.
    auth_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, "smtp-in-auth")
    )
    in_flight: set[asyncio.Future[str]] = field(default_factory=set)
    # Sessions between their DATA's submission and its reply pushed: never told 421.
    replying: set[SMTP] = field(default_factory=set)
    closing: bool = False  # stop() began: no new transaction is started
    # DATAs being submitted at once: at most one per executor thread, the others wait here,
    # so that no more messages are being prepared (copied) than threads can take.
    data_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(EXECUTOR_THREADS)
    )

    def __post_init__(self) -> None:
        self.login_check = LoginCheck(self.senders, self.guard, self.allow_plain)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH PLAIN, awaited by aiosmtpd in place of its own (see smtp_in/login.py)."""
        return await self._login(server, await read_plain(server, args))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH LOGIN, awaited by aiosmtpd in place of its own (see smtp_in/login.py)."""
        return await self._login(server, await read_login(server, args))

    async def _login(self, server: SMTP, credentials: LoginPassword | None) -> AuthResult:
        if credentials is None:  # a 501 was answered already
            return AuthResult(success=False, handled=True)
        session = server.session
        assert session is not None
        peer, tls = _peer_host(session), session.ssl is not None
        # The guard's storage calls block: on their own thread, never on the loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.auth_executor, self.login_check.check, peer, tls, credentials
        )

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if self.closing:
            return SHUTTING_DOWN
        login: Login = session.auth_data
        if not login.sender.is_address(address):
            return f"550 5.7.1 MAIL FROM must be this login's own address, {login.sender.email}"
        wait = await self._off_loop(self.charge, login.key_digest)
        if wait is not None:
            return f"450 4.7.0 Rate limit reached for this key (RATE_LIMIT); try in {wait} s"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            envelope.too_many = True  # type: ignore[attr-defined]  # DATA refuses it whole
            return f"452 4.5.3 Too many recipients: at most {self.max_recipients} a message"
        try:
            validate_address(address, special_use=self.special_use)
        except EmailNotValidError:
            return "553 5.1.3 Not a valid recipient address"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if getattr(envelope, "too_many", False):
            # Sent to the first MAX_RECIPIENTS only, the others would be lost silently by
            # clients that ignore a 452 (Django's backend does): nothing is sent instead.
            return (
                f"554 5.5.3 Too many recipients: at most {self.max_recipients} a message; "
                "nothing was sent"
            )
        if self.closing:  # nothing recorded: the client keeps the message and tries again
            return SHUTTING_DOWN
        self.replying.add(server)  # until SubmissionSmtp.smtp_DATA has pushed the reply
        login: Login = session.auth_data
        data = envelope.original_content or b""
        rcpts = list(envelope.rcpt_tos)
        async with self.data_slots:
            return await self._off_loop(
                self.submission.submit, data, login.sender, login.key_digest, rcpts
            )

    async def _off_loop(self, call: Callable[..., Any], *args: Any) -> Any:
        """A blocking call (store, limiter) on the executor, tracked for a clean stop."""
        future = asyncio.get_running_loop().run_in_executor(self.executor, call, *args)
        self.in_flight.add(future)
        try:
            return await asyncio.shield(future)  # a dropped session does not cancel a record
        finally:
            self.in_flight.discard(future)
