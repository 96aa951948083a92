"""The SMTP submission listener (SMTP_LISTEN, API.md section 14): aiosmtpd's protocol on an
asyncio loop in a thread of the service process, with the service's own login and checks.

A session: EHLO; STARTTLS (SMTP_LISTEN_CERT/KEY); AUTH PLAIN or LOGIN with the sender's
address and its API key (before STARTTLS only from a loopback address, or from any with
SMTP_LISTEN_ALLOW_PLAIN); MAIL FROM the key's own address, charged to the key's RATE_LIMIT;
at most MAX_RECIPIENTS RCPT TO; DATA up to MAX_REQUEST_BYTES (advertised as SIZE), handed to
`Submission` on an executor thread, whose reply ends the transaction. Failed logins count
against the client address in the same AuthGuard as the HTTP 401s (AUTH_FAIL_LIMIT), checked
on a thread of their own (smtp_in/login.py).

Why not aiosmtpd's `Controller`: it forwards `server_kwargs` to the SMTP protocol, not to
`create_server`, so it cannot bind with SO_REUSEPORT; and it checks that it started by
connecting to its own port, which under SO_REUSEPORT the kernel may hand to another worker.
`SmtpListener` binds the loop's server itself, `reuse_port` when every gunicorn worker runs
one (mail_server.start_smtp_listener says when), and stops in order: no new connections and
no new MAIL or DATA (421, before anything is recorded), the submissions in progress finished
and their 250 sent, then every other session told 421. A session whose submission is still
running at the deadline is closed without a 421: it may be recorded, and a 421 would make the
client send it again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP

from mailservice.errors import ConfigError
from mailservice.smtp_in.handler import SHUTTING_DOWN, SubmissionHandler
from mailservice.smtp_in.login import NO_BUILTIN_AUTH, plain_auth_allowed

logger = logging.getLogger(__name__)

STOP_SECONDS = 10.0  # for the submissions in progress to be recorded at shutdown
STOP_LIMIT = STOP_SECONDS + 5  # the whole stop(): gunicorn's graceful_timeout leaves room
# Per session, aiosmtpd's count of each command (421 4.7.0 past it). MAIL, RCPT, DATA and RSET
# are not counted ("*" is all but unbounded): a reused connection sends many messages, and
# each is charged to RATE_LIMIT already.
COMMAND_CALL_LIMIT = {
    "AUTH": 5, "NOOP": 20, "EHLO": 10, "HELO": 10, "STARTTLS": 3, "HELP": 5, "VRFY": 5,
    "EXPN": 5, "*": 10**9,
}  # fmt: skip
TOO_MANY_SESSIONS = "421 4.7.0 Too many connections; try again later"
LOGIN_TOO_LATE = "421 4.7.0 No login in time; closing"


@dataclass(frozen=True, slots=True)
class SessionBounds:
    """SMTP_LISTEN_MAX_SESSIONS in this process, SMTP_LISTEN_MAX_SESSIONS_PER_CLIENT from one
    address, and the seconds from connect to a successful AUTH."""

    max_sessions: int = 100
    max_per_client: int = 10
    login_seconds: float = 60.0


class SubmissionSmtp(SMTP):
    """aiosmtpd's protocol, with AUTH before STARTTLS decided per connection (its
    `auth_require_tls` is one setting for all) and long lines left to `prepare_raw`, which
    answers them 554 5.6.0 (aiosmtpd's own limit, 1001 octets, answers 500 instead)."""

    line_length_limit = 8192  # longer lines still get aiosmtpd's 500; none is relayed

    def __init__(
        self,
        handler: SubmissionHandler,
        sessions: set[SubmissionSmtp],
        bounds: SessionBounds,
        **kwargs: Any,
    ) -> None:
        # The handler's auth_PLAIN/auth_LOGIN replace aiosmtpd's; its authenticator, called
        # only by its own mechanisms, refuses.
        super().__init__(handler, authenticator=lambda *_: NO_BUILTIN_AUTH, **kwargs)
        self._handler_ref = handler
        self._sessions = sessions
        self._bounds = bounds
        self.client_host: str | None = None
        self._login_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # called again after STARTTLS, with the TLS transport
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        # Read by aiosmtpd at EHLO (AUTH advertised or not) and at AUTH (538 or not).
        self._auth_require_tls = not plain_auth_allowed(host, self._handler_ref.allow_plain)
        if not first:
            return
        self.client_host = host
        from_client = sum(1 for session in self._sessions if session.client_host == host)
        if (
            len(self._sessions) >= self._bounds.max_sessions
            or from_client >= self._bounds.max_per_client
        ):
            logger.warning("smtp submission: too many connections; refused one from %s", host)
            # Written before the greeting's task runs: once closed, its 220 goes nowhere.
            transport.write(TOO_MANY_SESSIONS.encode("ascii") + b"\r\n")
            transport.close()
            return
        self._sessions.add(self)
        self._login_timer = self.loop.call_later(self._bounds.login_seconds, self._login_due)

    def _login_due(self) -> None:
        if self.session is not None and self.session.authenticated:
            return
        if self.transport is not None and not self.transport.is_closing():
            logger.info("smtp submission: no login in time from %s", self.client_host)
            self.transport.write(LOGIN_TOO_LATE.encode("ascii") + b"\r\n")
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
        self._sessions.discard(self)
        self._handler_ref.replying.discard(self)
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        try:
            await super().smtp_DATA(arg)  # the handler's reply pushed, when it had one
        finally:
            self._handler_ref.replying.discard(self)

    async def push(self, status: str | bytes) -> None:
        await super().push(status)
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if text.startswith("421") and self.transport is not None:
            self.transport.close()  # RFC 5321 3.8: a 421 ends the session


class SmtpListener:
    """The listener on `host:port`; `start(reuse_port)`, `stop()`; see the module docstring."""

    def __init__(
        self,
        handler: SubmissionHandler,
        host: str,
        port: int,
        *,
        tls_context: ssl.SSLContext | None,
        data_size_limit: int,
        hostname: str,
        bounds: SessionBounds | None = None,
    ) -> None:
        self.handler = handler
        self.bounds = bounds or SessionBounds()
        self.host = host
        self.port = port
        self._smtp_kwargs: dict[str, Any] = {
            "tls_context": tls_context,
            "data_size_limit": data_size_limit,
            "hostname": hostname,
            "auth_required": True,
            "enable_SMTPUTF8": True,  # UTF-8 headers (RFC 6532) are relayed as they came
            "decode_data": False,
            "command_call_limit": COMMAND_CALL_LIMIT,
        }
        self._sessions: set[SubmissionSmtp] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SmtpListener({self.host}:{self.port})"

    def start(self, reuse_port: bool = False) -> None:
        """Bind and serve in a thread; ConfigError when the address cannot be bound."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[OSError] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(self._protocol, self.host, self.port, reuse_port=reuse_port)
                )
            except OSError as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="smtp-in", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            loop.close()
            raise ConfigError(
                f"SMTP_LISTEN={self.host}:{self.port} cannot listen ({failure[0]}); "
                "set it to a free port"
            )
        logger.info("smtp submission listening on %s:%d", self.host, self.port)

    def _protocol(self) -> SMTP:
        assert self._loop is not None
        return SubmissionSmtp(
            self.handler, self._sessions, self.bounds, loop=self._loop, **self._smtp_kwargs
        )

    def stop(self) -> None:
        """No new connections, submissions in progress recorded, sessions closed with 421."""
        if self._thread is None or self._loop is None:
            return
        loop = self._loop
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(STOP_LIMIT)
        except TimeoutError:
            logger.warning("smtp submission: sessions still open at shutdown")
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join()
        self._thread = None
        self.handler.executor.shutdown(wait=True)  # nothing accepted is left half-way
        self.handler.auth_executor.shutdown(wait=True)
        loop.close()
        logger.info("smtp submission stopped")

    async def _close(self) -> None:
        assert self._server is not None
        handler = self.handler
        handler.closing = True  # first: a DATA ending from now on is 421, never recorded
        self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_SECONDS
        # Until every submission begun is recorded and its 250 pushed (which happens on this
        # loop after the executor's future is done, hence the polling).
        await _until(lambda: not (handler.in_flight or handler.replying), deadline)
        for session in list(self._sessions):
            transport = session.transport
            if transport is None or transport.is_closing():
                continue
            if session in handler.replying:
                logger.warning("smtp submission: a submission still running at shutdown")
            else:
                transport.write(SHUTTING_DOWN.encode("ascii") + b"\r\n")
            transport.close()
        # A TLS session closes once its close_notify is answered: give the clients a moment,
        # then drop the rest, so that no transport outlives the loop.
        await _until(lambda: not self._sessions, loop.time() + 1.0)
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.abort()
        await _until(lambda: not self._sessions, loop.time() + 1.0)
        this = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not this]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until(condition: Callable[[], bool], deadline: float) -> None:
    """Poll `condition` on the running loop until it holds or the loop's clock passes
    `deadline` (what it waits for is done by callbacks of this loop, not by a future)."""
    loop = asyncio.get_running_loop()
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.02)
