"""Real SMTP servers for tests: an aiosmtpd sink that records, and ways to make it misbehave.

`SmtpServer` wraps an aiosmtpd `Controller` on a free loopback port with a `ScriptedHandler`:
each hook (MAIL, RCPT, DATA) answers from a script queue before behaving normally, so a test
says `server.handler.script("DATA", "451 4.3.0 try later")` and the next DATA gets that answer.
A scripted `DROP` closes the connection; `("SLEEP", seconds)` delays the reply; at DATA,
`("KEEP", seconds)` keeps the message first and then delays the 250 (a server that has it but
answers late). `GreetingServer` answers every connection with one line (a 421) and closes it;
`SilentServer` accepts connections and never says a word. `SmtpServer(eight_bit_mime=False)`
does not offer 8BITMIME in its EHLO answer (a server of RFC 6152's "7-bit only" kind),
`handler.ehlo_names` records the name each client gave in EHLO, `handler.asked` every RCPT TO
address (refused ones too), and `handler.quits` counts the sessions ended with QUIT.
`CountingController` is aiosmtpd's Controller with sessions that tell their handler of each
connection opened and closed; the bench's counting sink (bench/sink.py) runs on it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from mailservice.testing.ports import free_port

DROP = "DROP"


@dataclass
class Received:
    """One message as the server got it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)  # when its DATA came in

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.content, policy=policy.default)  # type: ignore[return-value]


class ScriptedHandler:
    """Records messages; answers MAIL/RCPT/DATA from per-hook scripts first."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.rejected: list[Received] = []  # messages whose DATA got a scripted answer
        self.scripts: dict[str, deque[Any]] = {
            "MAIL": deque(), "RCPT": deque(), "DATA": deque(), "AUTH": deque(),
        }  # fmt: skip
        self.refuse: dict[str, str] = {}  # recipient -> reply, every time
        self.asked: list[str] = []  # every RCPT TO address, accepted or refused, in order
        self.connections = 0
        self.disconnections = 0
        self.open_sessions: set[SmtpProtocol] = set()
        self.transactions = 0
        self.eight_bit_mime = True  # False: EHLO does not offer 8BITMIME
        self.ehlo_names: list[str] = []  # the name each EHLO gave, in order
        self.quits = 0  # sessions the client ended with QUIT
        self._lock = threading.Lock()

    def connection_opened(self, session: SmtpProtocol) -> None:
        with self._lock:
            self.connections += 1
            self.open_sessions.add(session)

    def connection_closed(self, session: SmtpProtocol) -> None:
        with self._lock:
            self.disconnections += 1
            self.open_sessions.discard(session)

    def script(self, hook: str, *replies: Any) -> None:
        """Queue replies for the next calls of a hook: an SMTP reply, DROP, or ("SLEEP", s)."""
        self.scripts[hook].extend(replies)

    async def _scripted(self, hook: str, server: SmtpProtocol) -> str | None:
        while self.scripts[hook]:
            reply = self.scripts[hook].popleft()
            if isinstance(reply, tuple) and reply[0] == "SLEEP":
                await asyncio.sleep(reply[1])
                continue
            if reply == DROP:
                server.transport.close()
                return "421 dropped"
            return reply
        return None

    async def handle_EHLO(
        self, server: SmtpProtocol, session: Session, envelope: Envelope, hostname: str, responses
    ) -> list[str]:
        session.host_name = hostname
        with self._lock:
            self.ehlo_names.append(hostname)
        if not self.eight_bit_mime:
            responses = [r for r in responses if r[4:].upper() != "8BITMIME"]
        return responses

    async def handle_QUIT(self, server: SmtpProtocol, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self.quits += 1
        return "221 Bye"

    async def handle_MAIL(
        self, server: SmtpProtocol, session: Session, envelope: Envelope, address: str, options
    ) -> str:
        with self._lock:
            self.transactions += 1
        reply = await self._scripted("MAIL", server)
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SmtpProtocol, session: Session, envelope: Envelope, address: str, options
    ) -> str:
        with self._lock:
            self.asked.append(address)
        if address in self.refuse:
            return self.refuse[address]
        reply = await self._scripted("RCPT", server)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SmtpProtocol, session: Session, envelope: Envelope) -> str:
        message = Received(
            envelope.mail_from,
            list(envelope.rcpt_tos),
            envelope.original_content or b"",
            list(envelope.mail_options),
        )
        head = self.scripts["DATA"][0] if self.scripts["DATA"] else None
        if isinstance(head, tuple) and head[0] == "KEEP":
            self.scripts["DATA"].popleft()
            with self._lock:
                self.received.append(message)
            await asyncio.sleep(head[1])
            return "250 OK: queued"
        reply = await self._scripted("DATA", server)
        if reply is not None:
            with self._lock:
                self.rejected.append(message)
            return reply
        with self._lock:
            self.received.append(message)
        return "250 OK: queued"


class CountingSmtp(SmtpProtocol):
    """aiosmtpd's SMTP protocol that tells its handler of each connection: the handler's
    `connection_opened(session)` and `connection_closed(session)`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.event_handler.connection_opened(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.event_handler.connection_closed(self)
        super().connection_lost(error)


class CountingController(Controller):
    """aiosmtpd's Controller whose sessions are CountingSmtp."""

    def factory(self) -> SmtpProtocol:
        return CountingSmtp(self.handler, **self.SMTP_kwargs)


class SmtpServer:
    """A real aiosmtpd server on 127.0.0.1 for one test."""

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        logins: dict[str, str] | None = None,
        idle_timeout: float = 300,
        smtputf8: bool = False,
        eight_bit_mime: bool = True,
        port: int | None = None,
    ) -> None:
        self.handler = ScriptedHandler()
        self.handler.eight_bit_mime = eight_bit_mime
        self.port = port or free_port()
        kwargs: dict[str, Any] = {"timeout": idle_timeout, "enable_SMTPUTF8": smtputf8}
        if logins is not None:
            kwargs["authenticator"] = self._authenticator(logins)
            kwargs["auth_require_tls"] = tls_context is not None and not implicit_tls
        if tls_context is not None and not implicit_tls:
            kwargs["tls_context"] = tls_context
            kwargs["require_starttls"] = require_starttls
        self.controller = CountingController(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=tls_context if implicit_tls else None,
            server_hostname="localhost",
            ready_timeout=5,
            **kwargs,
        )
        self.logins_seen: list[str] = []

    def _authenticator(self, logins: dict[str, str]):
        def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
            scripted = self.handler.scripts["AUTH"]
            if scripted:  # a reply of the script's ("454 4.7.0 Too many login attempts")
                return AuthResult(success=False, handled=False, message=scripted.popleft())
            if isinstance(auth_data, LoginPassword):
                user = auth_data.login.decode()
                self.logins_seen.append(user)
                if logins.get(user) == auth_data.password.decode():
                    return AuthResult(success=True)
            return AuthResult(success=False, handled=False)

        return authenticate

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> SmtpServer:
        self.controller.start()
        # Controller.start() opens one probe connection (over TLS for implicit TLS); wait until
        # it is gone and forget it, so that `connections` counts only the client's.
        handler = self.handler
        deadline = time.monotonic() + 5
        while handler.disconnections < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        with handler._lock:
            handler.connections -= handler.disconnections
            handler.disconnections = 0
        return self

    def close_sessions(self, timeout: float = 2.0) -> None:
        """Close every open client connection from the server side and wait until they are."""
        handler = self.handler

        def close_all() -> None:
            for session in list(handler.open_sessions):
                if session.transport is not None:
                    session.transport.close()

        loop = self.controller.loop
        if loop.is_closed() or not loop.is_running():
            return
        loop.call_soon_threadsafe(close_all)
        deadline = time.monotonic() + timeout
        while handler.open_sessions and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop_listening(self, timeout: float = 2.0) -> None:
        """Refuse new connections from now on (the sessions open stay open)."""
        loop, closed = self.controller.loop, threading.Event()

        def close() -> None:
            if self.controller.server is not None:
                self.controller.server.close()
            closed.set()

        if loop.is_closed() or not loop.is_running():
            return
        loop.call_soon_threadsafe(close)
        closed.wait(timeout)

    def stop(self) -> None:
        # The listener first: a client busy sending reconnects at once to every session
        # closed, and close_sessions() would wait in vain while the server kept serving.
        with contextlib.suppress(Exception):
            self.stop_listening()
        # Open sessions left to the loop's shutdown leak their sockets (a ResourceWarning).
        with contextlib.suppress(Exception):
            self.close_sessions()
        with contextlib.suppress(Exception):
            self.controller.stop()


class _Listener:
    """A TCP listener on a free loopback port whose thread hands each connection to
    `take(conn)`."""

    def __init__(self, backlog: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)  # how soon the thread sees stop()
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def take(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.take(conn)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class GreetingServer(_Listener):
    """Answers every connection with one line (e.g. `421 busy`) and closes it."""

    def __init__(self, greeting: bytes = b"421 4.3.2 too busy, try later\r\n") -> None:
        super().__init__(backlog=16)
        self.greeting = greeting
        self.connections = 0

    def take(self, conn: socket.socket) -> None:
        self.connections += 1
        with conn, contextlib.suppress(OSError):
            conn.sendall(self.greeting)


class SilentServer(_Listener):
    """Accepts TCP connections and never greets: a hung SMTP server. Holds what it accepted
    until stopped, so the client waits for its own time-out."""

    def __init__(self) -> None:
        super().__init__(backlog=64)
        self.accepted: list[socket.socket] = []

    @property
    def connections(self) -> int:
        return len(self.accepted)

    def take(self, conn: socket.socket) -> None:
        self.accepted.append(conn)

    def stop(self) -> None:
        super().stop()
        for conn in self.accepted:
            conn.close()
