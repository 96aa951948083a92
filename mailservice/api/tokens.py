"""Access tokens of `POST /token` (API.md section 7): signed, expiring, and holding no key.

A token is an itsdangerous `URLSafeTimedSerializer` signature (under TOKEN_SECRET, with a
timestamp checked against TOKEN_TTL) over `{"kid": ...}`, where `kid` is an HMAC, keyed by the
same secret, of the key's SHA-256 digest. So a token names its key without containing it, and a
token seen in a log or a proxy does not let anyone test guesses of a weak key offline. A token
stops working when it expires, when the secret changes, or when its key leaves the senders file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer

from mailservice.senders import Sender, SenderDirectory, key_digest

logger = logging.getLogger(__name__)

SALT = "mail-service.access-token"


class ClockedSigner(TimestampSigner):
    """A TimestampSigner that reads an injected clock (tests make tokens that have expired)."""

    def __init__(self, *args: Any, clock: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


class TokenIssuer:
    """Issues tokens for keys and finds the sender a presented token stands for."""

    def __init__(
        self,
        secret: str,
        ttl: int,
        senders: SenderDirectory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("a token secret is required")
        self.ttl = ttl
        self._secret = secret.encode("utf-8", "surrogatepass")
        self._senders = senders
        self._serializer = URLSafeTimedSerializer(
            secret, salt=SALT, signer=ClockedSigner, signer_kwargs={"clock": clock}
        )
        self._digest_of_kid = {self._kid(digest): digest for digest in senders.key_digests()}

    @classmethod
    def with_secret_or_random(cls, secret: str, ttl: int, senders: SenderDirectory) -> TokenIssuer:
        """An issuer with TOKEN_SECRET, or with a random secret (and a warning) when unset."""
        if not secret:
            logger.warning(
                "TOKEN_SECRET is not set: /token tokens are signed with a random secret of this "
                "process; they stop working at restart and other processes refuse them"
            )
            secret = secrets.token_urlsafe(32)
        return cls(secret, ttl, senders)

    def __repr__(self) -> str:
        return f"TokenIssuer(ttl={self.ttl})"

    def _kid(self, digest: bytes) -> str:
        return hmac.new(self._secret, digest, hashlib.sha256).hexdigest()

    def issue(self, key: str) -> str:
        """A token for this (already authenticated) key."""
        return self._serializer.dumps({"kid": self._kid(key_digest(key))})

    def key_digest(self, token: str) -> bytes | None:
        """The digest of the key a valid, unexpired token stands for; None otherwise."""
        try:
            payload = self._serializer.loads(token, max_age=self.ttl)
        except (BadSignature, ValueError):  # also expired; ValueError: undecodable text
            return None
        kid = payload.get("kid") if isinstance(payload, dict) else None
        return self._digest_of_kid.get(kid) if isinstance(kid, str) else None

    def sender_of(self, token: str) -> Sender | None:
        """The sender of a valid, unexpired token's key; None otherwise."""
        digest = self.key_digest(token)
        return None if digest is None else self._senders.by_key_digest(digest)
