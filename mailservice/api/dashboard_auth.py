"""The dashboard's door: ADMIN_TOKEN checked through `AdminAuth`, the login form and logout,
the headers every dashboard answer carries, and its errors as pages.

    GET  /login    the form (a logged-in operator goes on to /dashboard)
    POST /login    form field `token`: 303 to /dashboard with the session cookie, or 401
    POST /logout   ends the session: 303 to /login

An operator is let in by `Authorization: Bearer <ADMIN_TOKEN>` (scripts) or the session cookie
the login sets (`AdminAuth.set_session`: HttpOnly, SameSite=Strict, and Secure unless the page
was asked for over plain HTTP from a loopback name, where a Secure cookie would never come
back). A wrong token, at the form or as a Bearer credential, counts as a failed authentication
(api/auth_guard.py), and a client past AUTH_FAIL_LIMIT gets 429 here as on every route that
authenticates; a request without any credential (a browser's first visit, a page left open
after its session ended) counts nothing. Cross-site requests: the cookie is SameSite=Strict,
and the two forms refuse (403) a POST whose Origin is another host's.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
)

from mailservice.api.admin_auth import EXTENSION as ADMIN_EXTENSION
from mailservice.api.admin_auth import AdminAuth
from mailservice.api.auth_guard import check_client, count_failure
from mailservice.api.request_path import problem
from mailservice.errors import ApiError, StoreError

EXTENSION = ADMIN_EXTENSION  # app.extensions key of the AdminAuth (shared with /metrics)
OUTBOX_EXTENSION = "mail_outbox"  # app.extensions key of demo mode's Outbox, when there is one
TOKEN_MAX = 1024  # characters of a token the form compares; longer is wrong anyway
# Every dashboard answer: scripts only from this origin (dashboard.js), no inline script or
# style, nothing framed or framing. A page that needs more (the message preview) sets its own.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with the
    # login form, which the Origin check could not tell from another site's.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def admin_auth() -> AdminAuth:
    return current_app.extensions[EXTENSION]


def require_operator() -> None:
    """Before a dashboard page or its data: 429 for a client past AUTH_FAIL_LIMIT, 401 unless
    the request is an operator's; a wrong Bearer token counts as a failed authentication."""
    check_client()
    auth = admin_auth()
    if auth.is_admin(request):
        return
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credential.strip() and auth.enabled:
        count_failure()
    auth.require(request)


def same_origin() -> bool:
    """Whether a form POST comes from a page of this host: its Origin names this host, or a
    client that sends no Origin (curl) says nothing of a cross-site page either."""
    origin = request.headers.get("Origin")
    if origin is None:
        return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
    # Hosts compared, not schemes: behind a proxy that ends TLS the app sees http while the
    # browser says https, and another site can only differ in its host.
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:  # `http://[::1`: no browser sends it, and nothing proves it ours
        return False


def loopback_name(host: str) -> bool:
    """Whether `host` (a Host header, with or without a port) names this machine's loopback."""
    try:
        name = (urlsplit("//" + host).hostname or "").rstrip(".")
    except ValueError:  # a malformed Host (`[::1`): not a loopback name we can tell
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cookie_secure() -> bool:
    """A Secure cookie unless the page was asked for over plain HTTP by a loopback name."""
    return not (request.scheme == "http" and loopback_name(request.host))


def login_page(status: int, message: str = "", headers: dict[str, str] | None = None) -> Response:
    """The login form, or the page that says the operator's pages are closed."""
    auth = admin_auth()
    if not auth.enabled:
        return render_page("closed.html", 401, headers)
    return render_page("login.html", status, headers, message=message)


def render_page(
    template: str, status: int = 200, headers: dict[str, str] | None = None, **context: object
) -> Response:
    """A dashboard page: the template with the context every page shares."""
    body = render_template(
        f"dashboard/{template}",
        logged_in=admin_auth().is_admin(request),
        has_outbox=current_app.extensions.get(OUTBOX_EXTENSION) is not None,
        **context,
    )
    response = make_response(body, status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def add_door(blueprint: Blueprint, json_endpoints: tuple[str, ...]) -> None:
    """The login and logout routes, the headers and the error pages, on `blueprint`; errors of
    the endpoints named in `json_endpoints` stay problem+json."""

    @blueprint.get("/login")
    def login_form() -> Response:
        if admin_auth().is_admin(request):
            return redirect("/dashboard", 303)
        return login_page(200)

    @blueprint.post("/login")
    def login() -> Response:
        if not same_origin():
            raise ApiError(403, "A login must come from this service's own page.")
        auth = admin_auth()
        if not auth.enabled:
            return login_page(401)
        check_client()
        token = request.form.get("token", "")
        if len(token) > TOKEN_MAX or not auth.token_matches(token):
            count_failure()
            return login_page(401, "That is not the admin token.")
        response = redirect("/dashboard", 303)
        auth.set_session(response, secure=cookie_secure())
        return response

    @blueprint.post("/logout")
    def logout() -> Response:
        if not same_origin():
            raise ApiError(403, "A logout must come from this service's own page.")
        response = redirect("/login", 303)
        admin_auth().clear_session(response)
        return response

    @blueprint.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def shown(exc: ApiError) -> Response:
        if request.endpoint in json_endpoints:
            headers = {name.replace("-", "_"): value for name, value in exc.headers.items()}
            return problem(exc.status, exc.detail, exc.errors, **headers)
        if exc.status == 401:
            return login_page(401, headers=exc.headers)
        return render_page(
            "error.html", exc.status, exc.headers, code=exc.status, detail=exc.detail
        )

    @blueprint.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return shown(exc)

    @blueprint.errorhandler(StoreError)
    def store_error(exc: StoreError) -> Response:
        return shown(
            ApiError(503, "The status store is unreachable.", headers={"Retry-After": "5"})
        )
