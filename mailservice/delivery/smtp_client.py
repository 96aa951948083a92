"""Talking SMTP: `SmtpClient`, one reused connection per thread and server login.

`SmtpClient` keeps one open connection per thread and server login, reuses it for the next
message, and reconnects once, transparently, when a reused connection turns out to have been
closed by the server before MAIL FROM. It drives the SMTP transaction step by step with
smtplib's own commands so that it knows which recipients were refused and whether a failure
came before or after the message was handed over. Failures are raised as `TransientDelivery` or
`PermanentDelivery` (see errors.py); a failure to connect or greet is a `ConnectFailed`, and no
reply to the final "." of DATA within `data_timeout` is a `PossiblyDelivered`. MAIL FROM
declares `BODY=8BITMIME` for 8-bit data (SMTPUTF8 messages; build_message's others are 7-bit
safe) and refuses, before MAIL FROM, to send 8-bit data to a server that does not offer it.
The EHLO name is SMTP_EHLO_NAME, else the machine's fully qualified name, else the address
literal of the connection's own end (RFC 5321 4.1.1.1, 4.1.3). `check()` opens a connection
as a send would, logs in and QUITs: the sender check (sender_check.py) is built on it, and the
handshake's failures have types of their own (`LoginRefused`, `TlsFailed`, `TlsRejected`,
`StartTlsMissing`) so that the check names them without reading messages.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import smtplib
import socket
import ssl
import threading
from dataclasses import dataclass, field, replace

from mailservice.config import Settings
from mailservice.errors import (
    ConnectFailed,
    LoginRefused,
    PermanentDelivery,
    PossiblyDelivered,
    StartTlsMissing,
    TemporaryLoginFailure,
    TlsFailed,
    TlsRejected,
    TransientDelivery,
)
from mailservice.senders import Sender


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """A server and the login to use on it; the password is never shown."""

    host: str
    port: int
    security: str
    username: str
    password: str = field(repr=False)

    @classmethod
    def for_sender(cls, sender: Sender) -> SmtpTarget:
        return cls(
            sender.smtp_host,
            sender.smtp_port,
            sender.smtp_security,
            sender.email,
            sender.password,
        )

    @classmethod
    def second_for(cls, sender: Sender) -> SmtpTarget | None:
        """The sender's second server (`smtp_host2`), same login and security; None without."""
        if not sender.smtp_host2:
            return None
        return replace(cls.for_sender(sender), host=sender.smtp_host2, port=sender.smtp_port2)

    @property
    def key(self) -> tuple[str, int, str, str]:
        return (self.host, self.port, self.security, self.username)


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What the server said of each recipient of one transaction."""

    accepted: tuple[str, ...]
    refused: dict[str, str]  # 5xx at RCPT: permanent
    deferred: dict[str, str]  # 4xx at RCPT: worth another attempt


def describe_reply(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return f"{code} {' '.join(text.split())}".strip()


def _classify(
    code: int,
    reply: bytes | str,
    step: str,
    transient: type[TransientDelivery] = TransientDelivery,
) -> TransientDelivery | PermanentDelivery:
    reason = f"{describe_reply(code, reply)} (at {step})"
    return PermanentDelivery(reason) if 500 <= code < 600 else transient(reason)


def _address_literal(sock: socket.socket | None) -> str:
    """The EHLO name of a host without a domain name: its address on this connection, as an
    address literal (RFC 5321 4.1.3): `[192.0.2.1]`, `[IPv6:2001:db8::1]`."""
    if sock is None:  # pragma: no cover - a connected SMTP has its socket
        return "[127.0.0.1]"
    ip = ipaddress.ip_address(sock.getsockname()[0].partition("%")[0])  # no IPv6 scope id
    if ip.version == 6 and ip.ipv4_mapped is not None:  # IPv4 on a dual-stack socket
        ip = ip.ipv4_mapped
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


# A line of the message that starts with "." gets another (RFC 5321 4.5.2), as smtplib does.
_LEADING_DOT = re.compile(rb"(?m)^\.")


class SmtpClient:
    """Sends over one reused connection per thread and server login."""

    def __init__(
        self,
        timeout: float,
        ca_file: str = "",
        data_timeout: float = 600.0,
        ehlo_name: str = "",
    ) -> None:
        self.timeout = timeout
        self.data_timeout = data_timeout
        # The system's CAs, plus SMTP_CA_FILE: create_default_context(cafile=...) alone would
        # trust only the file and refuse every public relay.
        self._ssl_context = ssl.create_default_context()
        if ca_file:
            self._ssl_context.load_verify_locations(cafile=ca_file)
        self._local = threading.local()
        # SMTP_EHLO_NAME, else the machine's FQDN if it is one (looked up once: getfqdn may ask
        # DNS); with neither, each connection's own address literal (`_ehlo_name`).
        fqdn = "" if ehlo_name else socket.getfqdn()
        self._ehlo_name = ehlo_name or (fqdn if "." in fqdn.strip(".") else "")
        self._all: set[smtplib.SMTP] = set()
        self._all_lock = threading.Lock()
        self.sessions_opened = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> SmtpClient:
        """The client of SMTP_TIMEOUT, SMTP_CA_FILE, SMTP_DATA_TIMEOUT and SMTP_EHLO_NAME."""
        return cls(
            settings.smtp_timeout,
            settings.smtp_ca_file,
            settings.smtp_data_timeout,
            settings.smtp_ehlo_name,
        )

    def _connections(self) -> dict[tuple[str, int, str, str], smtplib.SMTP]:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _open(self, target: SmtpTarget) -> smtplib.SMTP:
        conn = self._connect(target)
        try:
            self._handshake(conn, target)
        except BaseException:
            self._close(conn)
            raise
        with self._all_lock:
            self._all.add(conn)
            self.sessions_opened += 1
        return conn

    def _connect(self, target: SmtpTarget) -> smtplib.SMTP:
        """A connection greeted with 220 (over TLS for `ssl`), before EHLO."""
        # Connected apart from construction: the EHLO name may be the socket's own address,
        # known only once connected. A placeholder local_hostname keeps smtplib from calling
        # getfqdn() for every connection.
        if target.security == "ssl":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                local_hostname="localhost", timeout=self.timeout, context=self._ssl_context
            )
        else:
            conn = smtplib.SMTP(local_hostname="localhost", timeout=self.timeout)
        # The name TLS checks the certificate against, in SMTP_SSL and starttls(): smtplib sets
        # it only when the host is given to the constructor, not to connect().
        conn._host = target.host
        try:
            code, reply = conn.connect(target.host, target.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            conn.local_hostname = self._ehlo_name or _address_literal(conn.sock)
        except smtplib.SMTPConnectError as exc:
            conn.close()
            raise _classify(exc.smtp_code, exc.smtp_error, "connect", ConnectFailed) from exc
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise TlsRejected(f"TLS certificate not trusted: {exc.verify_message}") from exc
        except ssl.SSLError as exc:  # an OSError too: a TLS failure, not a refused connection
            conn.close()
            reason = f"TLS handshake with {target.host}:{target.port} failed: {exc}"
            raise TlsFailed(reason) from exc
        except (OSError, smtplib.SMTPException) as exc:
            conn.close()
            raise ConnectFailed(f"cannot connect to {target.host}:{target.port}: {exc}") from exc
        return conn

    def _handshake(self, conn: smtplib.SMTP, target: SmtpTarget) -> tuple[int, bytes] | None:
        """EHLO, STARTTLS and EHLO again for `starttls`, and the login when there is a
        password: the server's reply to the login, or None without one."""
        try:
            conn.ehlo()
            if target.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise StartTlsMissing(
                        "server does not offer STARTTLS (SMTP_SECURITY=starttls); "
                        "refusing to log in over a plain connection"
                    )
                self._starttls(conn)
                conn.ehlo()
            if target.password:
                return conn.login(target.username, target.password)
            return None
        except smtplib.SMTPAuthenticationError as exc:
            if 400 <= exc.smtp_code < 500:  # "454 4.7.0 Too many login attempts": try later
                raise TemporaryLoginFailure(
                    f"{describe_reply(exc.smtp_code, exc.smtp_error)} (at AUTH)"
                ) from exc
            raise LoginRefused(
                f"login refused: {describe_reply(exc.smtp_code, exc.smtp_error)}"
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise LoginRefused("server offers no AUTH for the configured login") from exc
        except smtplib.SMTPResponseException as exc:
            raise _classify(exc.smtp_code, exc.smtp_error, "handshake", ConnectFailed) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise ConnectFailed(f"connection lost during handshake: {exc}") from exc

    def _starttls(self, conn: smtplib.SMTP) -> None:
        """STARTTLS, its failures told apart: a refusal (4xx, 5xx) or a broken handshake is a
        TLS problem, not a lost connection."""
        try:
            conn.starttls(context=self._ssl_context)
        except ssl.SSLCertVerificationError as exc:
            raise TlsRejected(f"TLS certificate not trusted: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            raise TlsFailed(f"TLS handshake failed after STARTTLS: {exc}") from exc
        except smtplib.SMTPResponseException as exc:
            reason = f"{describe_reply(exc.smtp_code, exc.smtp_error)} (at STARTTLS)"
            if 500 <= exc.smtp_code < 600:
                raise TlsRejected(reason) from exc
            raise TlsFailed(reason) from exc

    def check(self, target: SmtpTarget) -> str:
        """Connect, greet, STARTTLS and log in as a send's new connection does, then QUIT:
        never MAIL FROM, and never one of the reused connections. Raises what that
        connection would (errors.py); returns the server's reply to the login."""
        conn = self._connect(target)
        try:
            login = self._handshake(conn, target)
        finally:
            self._close(conn)
        if login is None:
            return "connected; no password, so no login"
        return describe_reply(*login)

    def _close(self, conn: smtplib.SMTP) -> None:
        with self._all_lock:
            self._all.discard(conn)
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            conn.close()

    def _discard(self, target: SmtpTarget) -> None:
        conn = self._connections().pop(target.key, None)
        if conn is not None:
            self._close(conn)

    def _checkout(self, target: SmtpTarget) -> tuple[smtplib.SMTP, bool]:
        conns = self._connections()
        conn = conns.get(target.key)
        if conn is not None:
            return conn, False
        conn = conns[target.key] = self._open(target)
        return conn, True

    def _mail_from(self, target: SmtpTarget, sender: str, options: list[str]) -> smtplib.SMTP:
        """MAIL FROM, reconnecting once if a reused connection was closed while idle."""
        for _ in range(2):
            conn, fresh = self._checkout(target)
            if "SMTPUTF8" in options and not conn.has_extn("smtputf8"):
                # Checked before MAIL FROM: smtplib's mail() would raise SMTPNotSupportedError,
                # an OSError, which reads as a dropped connection and would be retried.
                raise PermanentDelivery(
                    "server does not support SMTPUTF8 for international addresses"
                )
            if options == ["BODY=8BITMIME"] and not conn.has_extn("8bitmime"):
                raise PermanentDelivery("server does not offer 8BITMIME for an 8-bit message")
            try:
                code, reply = conn.mail(sender, options)
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                code, reply = 421, str(exc).encode()
            if code == 250:
                return conn
            if code == 421 and not fresh:
                self._discard(target)
                continue
            self._reset_or_discard(target, code)
            raise _classify(code, reply, "MAIL FROM")
        raise AssertionError("unreachable")  # pragma: no cover

    def _reset_or_discard(self, target: SmtpTarget, code: int) -> None:
        conn = self._connections().get(target.key)
        if conn is None:
            return
        if code == 421:
            self._discard(target)
            return
        try:
            conn.rset()
        except (OSError, smtplib.SMTPException):
            self._discard(target)

    def send(
        self, target: SmtpTarget, sender: str, recipients: list[str], data: bytes, smtputf8: bool
    ) -> DeliveryOutcome:
        """One SMTP transaction; raises Transient/PermanentDelivery for the whole message."""
        if smtputf8:
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        elif not data.isascii():  # build_message makes none (7-bit safe bodies); others may
            options = ["BODY=8BITMIME"]
        else:
            options = []
        conn = self._mail_from(target, sender, options)
        try:
            accepted: list[str] = []
            refused: dict[str, str] = {}
            deferred: dict[str, str] = {}
            for rcpt in recipients:
                code, reply = conn.rcpt(rcpt)
                if code in (250, 251):
                    accepted.append(rcpt)
                elif code == 421:
                    raise _classify(code, reply, "RCPT TO")
                elif 500 <= code < 600:
                    refused[rcpt] = describe_reply(code, reply)
                else:
                    deferred[rcpt] = describe_reply(code, reply)
            if not accepted:
                conn.rset()
                return DeliveryOutcome((), refused, deferred)
            code, reply = self._data(conn, data)
            if code != 250:  # the transaction is over: nothing to RSET
                raise _classify(code, reply, "end of DATA")
            return DeliveryOutcome(tuple(accepted), refused, deferred)
        except smtplib.SMTPDataError as exc:
            self._reset_or_discard(target, exc.smtp_code)
            raise _classify(exc.smtp_code, exc.smtp_error, "DATA") from exc
        except TransientDelivery:  # PossiblyDelivered too: the connection is in no known state
            self._discard(target)
            raise
        except (OSError, smtplib.SMTPException) as exc:
            self._discard(target)
            raise TransientDelivery(f"connection lost: {exc or type(exc).__name__}") from exc

    def _data(self, conn: smtplib.SMTP, data: bytes) -> tuple[int, bytes]:
        """DATA as smtplib's `data()` does it, but the reply to the final "." gets
        `data_timeout` (RFC 5321 4.5.3.2.6: 10 minutes), not the command timeout: a server
        that takes long to accept a message has it, and giving up early makes copies."""
        code, reply = conn.docmd("data")
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        quoted = _LEADING_DOT.sub(b"..", data)
        if not quoted.endswith(b"\r\n"):
            quoted += b"\r\n"
        conn.send(quoted + b".\r\n")
        if conn.sock is not None:
            conn.sock.settimeout(self.data_timeout)
        try:
            return conn.getreply()
        except smtplib.SMTPServerDisconnected as exc:  # time-out or drop after the final "."
            raise PossiblyDelivered(
                f"possibly delivered: no reply to the end of DATA within {self.data_timeout:g}s "
                f"({exc})"
            ) from exc
        finally:
            if conn.sock is not None:
                conn.sock.settimeout(self.timeout)

    def open_connections(self) -> int:
        """Connections of every thread open now (the metrics read it at scrape time)."""
        with self._all_lock:
            return len(self._all)

    def close_all(self) -> None:
        """Close every connection of every thread (at shutdown, once the workers stopped)."""
        with self._all_lock:
            conns, self._all = list(self._all), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()
