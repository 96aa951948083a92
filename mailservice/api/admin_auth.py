"""The operator's credential, ADMIN_TOKEN, for the operator's pages (the dashboard, /metrics).

An operator presents either `Authorization: Bearer <ADMIN_TOKEN>` (scripts, Prometheus's
`authorization` scrape setting) or the session cookie `AdminAuth.COOKIE` that the dashboard's
login form sets with `session_cookie()`: an itsdangerous signature, under a key derived from the
token, of the time of login, valid for `SESSION_SECONDS`. The cookie holds no token, and
changing ADMIN_TOKEN ends every session. Without ADMIN_TOKEN every operator page is 401 (demo
mode makes one up and prints it). API keys are not operator credentials: a sender's key must
not show every sender's requests.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from flask import Request, Response
from itsdangerous import BadSignature

from mailservice.api.tokens import ClockedSigner
from mailservice.errors import ApiError

EXTENSION = "mail_admin"  # app.extensions key of the app's AdminAuth (create_app puts it there)
SESSION_SECONDS = 12 * 3600
SALT = b"mail-service.admin-session"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="admin"'}


class AdminAuth:
    """Checks an operator's credential; `token` empty means no operator page is open."""

    COOKIE = "mail_admin"

    def __init__(self, token: str, clock: Callable[[], float] = time.time) -> None:
        self._token = token.encode("utf-8", "surrogatepass")
        self._clock = clock
        # A key of its own, not the token itself: the cookie must not be a way to test guesses
        # of the token offline any more than any HMAC is.
        key = hmac.new(self._token, SALT, hashlib.sha256).digest()
        self._signer = ClockedSigner(key, salt=SALT, clock=clock)

    def __repr__(self) -> str:
        return f"AdminAuth(enabled={self.enabled})"

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def token_matches(self, presented: str) -> bool:
        """Whether `presented` is ADMIN_TOKEN (compared in constant time; never when unset)."""
        candidate = presented.encode("utf-8", "surrogatepass")
        return self.enabled and hmac.compare_digest(candidate, self._token)

    def session_value(self) -> str:
        """A new session cookie's value: the signed time of login."""
        return self._signer.sign(b"admin").decode("ascii")

    def session_valid(self, value: str) -> bool:
        if not self.enabled or not value:
            return False
        try:
            self._signer.unsign(value.encode("utf-8", "surrogatepass"), max_age=SESSION_SECONDS)
        except BadSignature:  # SignatureExpired is one too
            return False
        return True

    def is_admin(self, request: Request) -> bool:
        """Whether the request carries ADMIN_TOKEN as a Bearer credential or a valid session."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credential.strip()):
            return True
        return self.session_valid(request.cookies.get(self.COOKIE, ""))

    def require(self, request: Request) -> None:
        """ApiError 401 unless the request is an operator's."""
        if self.is_admin(request):
            return
        detail = (
            "This page needs the operator's credential: Authorization: Bearer <ADMIN_TOKEN>, "
            "or log in at /login."
            if self.enabled
            else "ADMIN_TOKEN is not set: the operator's pages are closed."
        )
        raise ApiError(401, detail, headers=dict(CHALLENGE))

    def set_session(self, response: Response, secure: bool) -> None:
        """Log the response's client in: an HttpOnly, SameSite=Strict cookie for the session.

        `secure`: send it over HTTPS only; the dashboard passes False only for plain HTTP to a
        loopback address (demo mode, a tunnel), where a Secure cookie would never come back.
        """
        response.set_cookie(
            self.COOKIE,
            self.session_value(),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Strict",
            secure=secure,
            path="/",
        )

    def clear_session(self, response: Response) -> None:
        response.delete_cookie(self.COOKIE, path="/", httponly=True, samesite="Strict")
