"""The operator's credential (api/admin_auth.py): Bearer ADMIN_TOKEN or a signed session cookie
that holds no token and ends with SESSION_SECONDS or a new token; closed when no token is set."""

from __future__ import annotations

import pytest
from flask import Flask, Response

from mailservice.api.admin_auth import SESSION_SECONDS, AdminAuth
from mailservice.errors import ApiError

TOKEN = "admin-token-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def request_with(headers: dict[str, str] | None = None, cookie: str | None = None):
    app = Flask(__name__)
    environ = {"HTTP_COOKIE": f"{AdminAuth.COOKIE}={cookie}"} if cookie else {}
    return app.test_request_context("/", headers=headers or {}, environ_base=environ)


@pytest.mark.parametrize(
    ("authorization", "admitted"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer {TOKEN}x", False),
        (f"Basic {TOKEN}", False),
        ("Bearer ", False),
        ("Bearer t\u00f6ken", False),  # not ASCII: compared as bytes, no TypeError
    ],
)
def test_bearer_admin_token(authorization: str, admitted: bool) -> None:
    auth = AdminAuth(TOKEN)
    with request_with({"Authorization": authorization}) as ctx:
        assert auth.is_admin(ctx.request) is admitted


def test_a_session_cookie_admits_until_it_ends_and_holds_no_token() -> None:
    clock = Clock()
    auth = AdminAuth(TOKEN, clock=clock)
    value = auth.session_value()
    assert TOKEN not in value
    with request_with(cookie=value) as ctx:
        assert auth.is_admin(ctx.request)
        clock.now += SESSION_SECONDS + 1
        assert not auth.is_admin(ctx.request), "a session ends"


def test_a_new_token_ends_every_session_and_a_forged_cookie_is_refused() -> None:
    value = AdminAuth(TOKEN).session_value()
    with request_with(cookie=value) as ctx:
        assert not AdminAuth("another-token-9876543210").is_admin(ctx.request)
    with request_with(cookie=value[:-2] + "xx") as ctx:
        assert not AdminAuth(TOKEN).is_admin(ctx.request)


def test_without_a_token_nothing_is_admitted_and_the_answer_says_why() -> None:
    auth = AdminAuth("")
    with request_with({"Authorization": "Bearer "}, cookie=AdminAuth(TOKEN).session_value()) as ctx:
        assert not auth.is_admin(ctx.request)
        with pytest.raises(ApiError) as refused:
            auth.require(ctx.request)
    assert refused.value.status == 401 and "ADMIN_TOKEN is not set" in refused.value.detail
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_session_cookie_is_httponly_strict_and_secure_unless_told() -> None:
    auth = AdminAuth(TOKEN)
    for secure in (True, False):
        response = Response()
        auth.set_session(response, secure=secure)
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert ("Secure" in cookie) is secure
    assert TOKEN not in repr(auth)
