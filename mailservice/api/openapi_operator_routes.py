"""The operator's routes in the OpenAPI document: the dashboard's pages, its data, login and
logout, its static files, /metrics and /senders/check (API.md sections 3, 10 and 11), as rows
of the same `Operation` table as `openapi_routes.py`, which `api/openapi.py` joins. Their
pages answer HTML, a 401 included (the login form); /metrics, /senders/check and
/dashboard/data answer problem+json.
"""

from __future__ import annotations

from mailservice.api.dashboard_view import PAGE_DEFAULT, PAGE_MAX
from mailservice.api.openapi_routes import (
    INTERNAL,
    INVALID,
    NO_OPERATOR,
    TOO_MANY,
    UNAUTHORIZED,
    UNAVAILABLE,
    Operation,
    Reply,
    json,
    problem,
)

OPERATOR = "Operator"
PAGE = Reply("The page.", {"text/html": "Text"}, ("Content-Security-Policy",))


def page_error(description: str, *headers: str) -> Reply:
    """An operator page's error: a page too (the login form for a 401)."""
    return Reply(description, {"text/html": "Text"}, headers)


PAGE_ERRORS = {
    401: page_error(
        "No operator's credential: the login form (or, with ADMIN_TOKEN unset, a page that "
        "says the operator's pages are closed).",
        "WWW-Authenticate",
    ),
    429: page_error("This client is past AUTH_FAIL_LIMIT failed authentications.", "Retry-After"),
    500: INTERNAL,
    503: page_error("The status store is unreachable.", "Retry-After"),
}
# The dashboard's search and paging (API.md section 11), on its pages and its data alike.
DASHBOARD_QUERY: tuple[dict[str, object], ...] = (
    {
        "name": "q",
        "description": "A request id, a recipient (with `@`) or a tag.",
        "schema": {"type": "string"},
    },
    {
        "name": "before",
        "description": "The `next` cursor of the page before.",
        "schema": {"type": "string"},
    },
    {
        "name": "limit",
        "description": f"Requests on a page ({PAGE_DEFAULT} unless given).",
        "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX},
    },
)
SEE_OTHER = Reply("Done: go on to the page the Location names.", {}, ("Location",))


def operator_page(
    rule: str,
    operation_id: str,
    summary: str,
    query: tuple[dict[str, object], ...] = (),
    **replies: Reply,
) -> Operation:
    found = {int(code.removeprefix("r")): reply for code, reply in replies.items()}
    return Operation(
        rule, "GET", operation_id, summary, OPERATOR, {200: PAGE, **found, **PAGE_ERRORS},
        auth="operator", query=query,
    )  # fmt: skip


OPERATOR_OPERATIONS: tuple[Operation, ...] = (
    operator_page(
        "/",
        "dashboard",
        "The dashboard",
        DASHBOARD_QUERY,
        r400=page_error("A malformed `?before=` or `?limit=`."),
    ),
    operator_page(
        "/dashboard",
        "dashboardPage",
        "The dashboard (the same page as /)",
        DASHBOARD_QUERY,
        r400=page_error("A malformed `?before=` or `?limit=`."),
    ),
    Operation(
        "/dashboard/data",
        "GET",
        "dashboardData",
        "What the dashboard shows, as JSON (its script polls it)",
        OPERATOR,
        {
            200: json(
                "Counts, sends per minute and a page of the recent requests.", "DashboardState"
            ),
            400: INVALID,
            401: UNAUTHORIZED,
            429: TOO_MANY,
            500: INTERNAL,
            503: UNAVAILABLE,
        },
        auth="operator",
        query=DASHBOARD_QUERY,
    ),
    operator_page(
        "/dashboard/requests/<request_id>",
        "dashboardRequest",
        "One request and its history",
        r404=page_error("No request has this id."),
    ),
    operator_page(
        "/dashboard/outbox",
        "dashboardOutbox",
        "Demo mode's captured messages",
        r404=page_error("Not in demo mode: there is no outbox."),
    ),
    operator_page(
        "/dashboard/outbox/<name>",
        "dashboardOutboxMessage",
        "One captured message, its HTML shown in a sandboxed frame",
        r404=page_error("No such message, or not in demo mode."),
    ),
    Operation(
        "/dashboard/static/<filename>",
        "GET",
        "dashboardAsset",
        "The dashboard's script and style sheet (no credential needed)",
        OPERATOR,
        {
            200: Reply("The file.", {"text/css": "Text", "text/javascript": "Text"}),
            404: problem("No such file."),
            500: INTERNAL,
        },
    ),
    Operation(
        "/login",
        "GET",
        "loginForm",
        "The operator's login form",
        OPERATOR,
        {200: PAGE, 303: SEE_OTHER, 401: PAGE_ERRORS[401], 500: INTERNAL},
    ),
    Operation(
        "/login",
        "POST",
        "login",
        "Log in with ADMIN_TOKEN: a session cookie (HttpOnly, SameSite=Strict)",
        OPERATOR,
        {
            303: Reply(
                "Logged in: on to /dashboard, with the session cookie.",
                {},
                ("Location", "Set-Cookie"),
            ),
            401: page_error("Not the admin token (the form again), or ADMIN_TOKEN is unset."),
            403: page_error("The form was not posted from this service's own page (Origin)."),
            429: PAGE_ERRORS[429],
            500: INTERNAL,
        },
        body={"application/x-www-form-urlencoded": "LoginForm"},
    ),
    Operation(
        "/logout",
        "POST",
        "logout",
        "End the operator's session",
        OPERATOR,
        {
            303: Reply("Logged out: on to /login.", {}, ("Location",)),
            403: page_error("Not posted from this service's own page (Origin)."),
            500: INTERNAL,
        },
    ),
    Operation(
        "/metrics",
        "GET",
        "metrics",
        "Prometheus metrics (text format 0.0.4)",
        OPERATOR,
        {
            200: Reply("The metrics.", {"text/plain": "Text"}),
            401: NO_OPERATOR,
            429: TOO_MANY,
            500: INTERNAL,
        },
        auth="operator",
    ),
    Operation(
        "/senders/check",
        "GET",
        "checkSenders",
        "Log in to every sender's SMTP server, sending nothing",
        OPERATOR,
        {
            200: json(
                "The check ran: each sender's login on each server, `ok` or the problem.",
                "SenderCheckAnswer",
                "Cache-Control",
            ),
            401: NO_OPERATOR,
            429: TOO_MANY,
            500: INTERNAL,
        },
        auth="operator",
        description="Connects, says EHLO, STARTTLS and logs in as a send would, then QUIT: "
        "never MAIL FROM. Each distinct (login, server) once, at most 8 at a time, within "
        "twice SMTP_TIMEOUT in all.",
    ),
)
