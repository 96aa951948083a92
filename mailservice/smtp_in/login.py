"""The listener's AUTH (API.md section 14): PLAIN and LOGIN read from the session, then the
sender's address and API key checked, with the failed-login guard of AUTH_FAIL_LIMIT.

aiosmtpd calls its `authenticator` synchronously, on the event loop, from its own
`auth_PLAIN`/`auth_LOGIN`: the guard's storage calls (Redis, with its socket timeouts) would
stall every session of the listener. So the handler has `auth_PLAIN`/`auth_LOGIN` of its own
(aiosmtpd awaits a handler's `auth_<MECH>` in place of its built-in one), which read the
credentials here and run `LoginCheck.check` on one executor thread: one thread, so that the
failed logins of one address are counted in the order they came.
"""

from __future__ import annotations

import binascii
import ipaddress
import logging
from base64 import b64decode
from dataclasses import dataclass, field

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from mailservice.api.auth_guard import AuthGuard
from mailservice.senders import Sender, SenderDirectory, key_digest

logger = logging.getLogger(__name__)

ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
# aiosmtpd's built-in mechanisms are shadowed by the handler's; this is what they would say.
NO_BUILTIN_AUTH = AuthResult(success=False, handled=False)


@dataclass(frozen=True, slots=True)
class Login:
    """A session's login: the key's sender and the key's digest (never the key)."""

    sender: Sender
    key_digest: bytes = field(repr=False)


def plain_auth_allowed(peer_host: str | None, allow_plain: bool) -> bool:
    """AUTH before STARTTLS: only from a loopback address, or from any with
    SMTP_LISTEN_ALLOW_PLAIN (a trusted LAN; behind a local TLS proxy every client is loopback)."""
    if allow_plain:
        return True
    try:
        ip = ipaddress.ip_address(peer_host or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


async def _decoded(server: SMTP, args: list[str], challenge: str) -> bytes | None:
    """The mechanism's first response: on the AUTH line, or asked for; None once answered."""
    if len(args) == 1:
        blob = await server.challenge_auth(challenge)
        return None if blob is MISSING else blob  # challenge_auth answered 501 itself
    try:
        return b64decode(args[1].encode(), validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 Can't decode base64")
        return None


async def read_plain(server: SMTP, args: list[str]) -> LoginPassword | None:
    """AUTH PLAIN (RFC 4616: authzid NUL authcid NUL password); None once answered."""
    blob = await _decoded(server, args, "")
    if blob is None:
        return None
    parts = blob.split(b"\0")
    if len(parts) != 3:
        await server.push("501 5.5.2 Can't split auth value")
        return None
    return LoginPassword(parts[1], parts[2])


async def read_login(server: SMTP, args: list[str]) -> LoginPassword | None:
    """AUTH LOGIN: the username (on the line or asked for), then the password asked for."""
    username = await _decoded(server, args, SMTP.AuthLoginUsernameChallenge)
    if username is None:
        return None
    password = await server.challenge_auth(SMTP.AuthLoginPasswordChallenge)
    if password is MISSING:
        return None
    assert isinstance(password, bytes)
    return LoginPassword(username, password)


@dataclass
class LoginCheck:
    """The check of one login (blocking: the guard's storage); see the module docstring."""

    senders: SenderDirectory
    guard: AuthGuard
    allow_plain: bool = False

    def check(self, peer: str | None, tls: bool, credentials: LoginPassword) -> AuthResult:
        """PLAIN and LOGIN: username the sender's address, password its API key."""
        if not tls and not plain_auth_allowed(peer, self.allow_plain):
            # SubmissionSmtp already refuses this; kept here so that no version of aiosmtpd
            # can let a key cross the network in clear.
            return AuthResult(success=False, handled=False, message=ENCRYPTION_REQUIRED)
        wait = self.guard.retry_after(peer)
        if wait is not None:
            return AuthResult(
                success=False,
                handled=False,
                message=f"454 4.7.0 Too many failed logins from this address; try in {wait} s",
            )
        username = credentials.login.decode("utf-8", "replace")
        key = credentials.password.decode("utf-8", "replace")
        sender = self.senders.authenticate(key)
        if sender is None or not sender.is_address(username):
            self.guard.failed(peer)
            logger.info("smtp login refused from %s", peer)
            # handled=False: aiosmtpd answers 535; True would leave the client waiting.
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=Login(sender, key_digest(key)))
