"""Every route of the app as the OpenAPI document describes it: a declarative table.

One `Operation` per route and method of `app.url_map` (HEAD and OPTIONS, which Flask answers
by itself, aside); tests/test_openapi.py fails naming any route the table lacks. An operation
names its body and answers by model name (`api/request_bodies.py`, `api/answers.py`);
`api/openapi.py` turns the table and the models into the document. A new route is a new row
here, in the same commit as the route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Auth = Literal["sender", "operator", "none"]
# A reply's content: media type -> schema name, or several names (one of them).
Content = dict[str, str | tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented answer: its content and the headers it always carries."""

    description: str
    content: Content = field(default_factory=dict)
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """One route and method. `rate_limited`: under RATE_LIMIT, whose headers every answer then
    carries; `idempotent`: takes an Idempotency-Key; `links`: a reply whose request_id a
    status read takes."""

    rule: str
    method: str
    operation_id: str
    summary: str
    tag: str
    replies: dict[int, Reply]
    body: Content | None = None
    auth: Auth = "none"
    rate_limited: bool = False
    idempotent: bool = False
    description: str = ""
    path_schemas: dict[str, dict[str, object]] = field(default_factory=dict)
    links: tuple[int, ...] = ()


def problem(description: str, schema: str | tuple[str, ...] = "Problem", *headers: str) -> Reply:
    return Reply(description, {"application/problem+json": schema}, headers)


def json(description: str, schema: str | tuple[str, ...], *headers: str) -> Reply:
    return Reply(description, {"application/json": schema}, headers)


INTERNAL = problem("An unexpected error: a bug, logged with its traceback in the service's log.")
UNAVAILABLE = problem(
    "The process is full (QUEUE_MAX, QUEUE_MAX_BYTES), draining, or the store is unreachable.",
    "Problem",
    "Retry-After",
)
INVALID = problem("Invalid JSON or fields, or a key in the URL; `errors` names the fields.",
                  "InvalidProblem")  # fmt: skip
NOT_SENT_OR_INVALID = problem(
    "Invalid JSON or fields (`errors`), or accepted and not sent (`request_id`, and `detail` "
    "says why).",
    ("InvalidProblem", "FailedProblem"),
)
UNAUTHORIZED = problem("No valid key, token or JWT.", "Problem", "WWW-Authenticate")
TOO_MANY = problem("Past RATE_LIMIT, or this client is past AUTH_FAIL_LIMIT failed "
                   "authentications.", "Problem", "Retry-After")  # fmt: skip
SENDER_ERRORS = {
    401: UNAUTHORIZED,
    403: problem("`from` or `email_from` is not the key's own address."),
    409: problem("This Idempotency-Key was used for a different request."),
    413: problem("The body is larger than MAX_REQUEST_BYTES."),
    415: problem("Not application/json, or a charset other than UTF-8."),
    429: TOO_MANY,
    500: INTERNAL,
    503: UNAVAILABLE,
}
WAIT_TIMEOUT = problem(
    "The outcome is not known within SMTP_TIMEOUT + WAIT_MARGIN; the send goes on.",
    "OutcomeProblem",
    "Location",
)
ACCEPTED = json("Recorded and queued.", ("Accepted", "AcceptedWithResult"), "Location")
SENDING = "Sending"
OLDER = "Older services (drop-in)"
V1_CREATED = json("Sent or queued; `result` is the older service's text.", "V1Result", "Location")


def send_email(rule: str, operation_id: str) -> Operation:
    return Operation(
        rule, "POST", operation_id, "Send one message", SENDING,
        {202: ACCEPTED, 400: INVALID, **SENDER_ERRORS},
        body={"application/json": ("SendRequest", "EmailToBody")},
        auth="sender", rate_limited=True, idempotent=True, links=(202,),
        description="The core body (API.md section 3), or the FastAPI and Celery services' "
        "`email_to` body, which is answered with `result` as well.",
    )  # fmt: skip


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
SEE_OTHER = Reply("Done: go on to the page the Location names.", {}, ("Location",))


def operator_page(rule: str, operation_id: str, summary: str, **replies: Reply) -> Operation:
    found = {int(code.removeprefix("r")): reply for code, reply in replies.items()}
    return Operation(
        rule, "GET", operation_id, summary, OPERATOR, {200: PAGE, **found, **PAGE_ERRORS},
        auth="operator",
    )  # fmt: skip


OPERATIONS: tuple[Operation, ...] = (
    send_email("/send-email", "sendEmail"),
    send_email("/send-email/", "sendEmailTrailingSlash"),
    Operation(
        "/send-email/batch",
        "POST",
        "sendBatch",
        "Send up to BATCH_MAX messages",
        SENDING,
        {
            202: json("Every message was accepted.", "BatchAnswer"),
            207: json(
                "Some messages were accepted; the others' items are problems.", "BatchAnswer"
            ),
            400: problem(
                "No message was accepted (`messages` lists their problems), or the "
                "body is not a batch.",
                ("BatchProblem", "InvalidProblem"),
            ),
            **{status: reply for status, reply in SENDER_ERRORS.items() if status != 403},
        },
        body={"application/json": "BatchBody"},
        auth="sender",
        rate_limited=True,
        idempotent=True,
        description="Each message is a SendRequest body, validated on its own. The batch "
        "counts against RATE_LIMIT once per message.",
    ),
    Operation(
        "/email-status/<request_id>",
        "GET",
        "getEmailStatus",
        "A request's status",
        "Status",
        {
            200: json("The status; never any message content.", "StatusAnswer"),
            404: problem("No request has this id, or its status has expired."),
            500: INTERNAL,
            503: problem("The status store is unreachable.", "Problem", "Retry-After"),
        },
        path_schemas={"request_id": {"type": "string", "format": "uuid"}},
        description="Needs no key: the id is a random UUID and the answer holds no content.",
    ),
    Operation(
        "/templates",
        "GET",
        "listTemplates",
        "The templates a send may name",
        "Templates",
        {
            200: json("Every template, by name.", "TemplateList"),
            400: INVALID,
            401: UNAUTHORIZED,
            429: TOO_MANY,
            500: INTERNAL,
        },
        auth="sender",
    ),
    Operation(
        "/healthz",
        "GET",
        "healthz",
        "Alive",
        "Health",
        {200: json("The process runs.", "Health"), 500: INTERNAL},
    ),
    Operation(
        "/readyz",
        "GET",
        "readyz",
        "Ready for requests",
        "Health",
        {
            200: json("The store answers and the process takes requests.", "Ready"),
            500: INTERNAL,
            503: UNAVAILABLE,
        },
    ),
    Operation(
        "/mail",
        "POST",
        "mail",
        "The Flask /mail microservice's send",
        OLDER,
        {
            200: Reply(
                "Sent: the text `message Sent`, or JSON when Accept prefers it.",
                {"text/plain": "MailSentText", "application/json": "MailSent"},
                ("X-Request-Id", "Vary"),
            ),
            400: INVALID,
            502: problem("Accepted and not sent; `detail` says why.", "OutcomeProblem"),
            504: WAIT_TIMEOUT,
            **SENDER_ERRORS,
        },
        body={"application/json": "MailBody"},
        auth="sender",
        rate_limited=True,
        idempotent=True,
        description="Waits for the outcome.",
    ),
    Operation(
        "/smtp/send-email",
        "POST",
        "smtpSendEmail",
        "The FastAPI OAuth2 service's send",
        OLDER,
        {
            200: json("Sent.", "SmtpSent"),
            400: NOT_SENT_OR_INVALID,
            504: WAIT_TIMEOUT,
            **SENDER_ERRORS,
        },
        body={"application/json": "SmtpBody"},
        auth="sender",
        rate_limited=True,
        idempotent=True,
        description="Waits for the outcome; a /token token authenticates it.",
    ),
    Operation(
        "/token",
        "POST",
        "token",
        "An access token (OAuth2 password grant)",
        OLDER,
        {
            200: json("A bearer token for TOKEN_TTL seconds.", "TokenAnswer", "Cache-Control"),
            400: json(
                "Not a form, parameters in the URL or given twice, username or password "
                "missing, or another grant_type.",
                "OAuthError",
                "Cache-Control",
            ),
            401: json(
                "The username (sender address) or password (API key) is wrong.",
                "OAuthError",
                "Cache-Control",
                "WWW-Authenticate",
            ),
            413: problem("The body is larger than MAX_REQUEST_BYTES."),
            429: TOO_MANY,
            500: INTERNAL,
        },
        body={"application/x-www-form-urlencoded": "TokenForm"},
        rate_limited=True,
    ),
    Operation(
        "/api/v1/mail/send-email/",
        "POST",
        "v1SendEmail",
        "email-service-v2: queue a message",
        OLDER,
        {201: V1_CREATED, 400: INVALID, **SENDER_ERRORS},
        body={"application/json": "V1MailBody"},
        auth="sender",
        rate_limited=True,
        idempotent=True,
        links=(201,),
    ),
    Operation(
        "/api/v1/mail/send-async/",
        "POST",
        "v1SendAsync",
        "email-service-v2: send and wait",
        OLDER,
        {201: V1_CREATED, 400: NOT_SENT_OR_INVALID, 504: WAIT_TIMEOUT, **SENDER_ERRORS},
        body={"application/json": "V1MailBody"},
        auth="sender",
        rate_limited=True,
        idempotent=True,
        links=(201,),
    ),
    Operation(
        "/api/v1/sms/send-email-sms/",
        "POST",
        "v1SendSms",
        "email-service-v2: a text through the carrier's email-to-SMS gateway",
        OLDER,
        {201: V1_CREATED, 400: NOT_SENT_OR_INVALID, 504: WAIT_TIMEOUT, **SENDER_ERRORS},
        body={"application/json": "V1SmsBody"},
        auth="sender",
        rate_limited=True,
        idempotent=True,
        links=(201,),
    ),
    Operation(
        "/openapi.json",
        "GET",
        "openapi",
        "This document",
        "Docs",
        {200: json("The OpenAPI 3.1 document.", "OpenApiDocument"), 500: INTERNAL},
    ),
    Operation(
        "/docs",
        "GET",
        "docs",
        "This document, browsable (Swagger UI)",
        "Docs",
        {
            200: Reply("The page.", {"text/html": "Text"}, ("Content-Security-Policy",)),
            500: INTERNAL,
        },
    ),
    Operation(
        "/docs/<asset>",
        "GET",
        "docsAsset",
        "The docs page's scripts and style sheet",
        "Docs",
        {
            200: Reply(
                "The file, from the installed package.",
                {"text/css": "Text", "text/javascript": "Text"},
            ),
            404: problem("No such asset."),
            500: INTERNAL,
        },
    ),
    operator_page(
        "/", "dashboard", "The dashboard", r400=page_error("A malformed `?before=` or `?limit=`.")
    ),
    operator_page(
        "/dashboard",
        "dashboardPage",
        "The dashboard (the same page as /)",
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
            401: problem(
                "No operator's credential (ADMIN_TOKEN as a Bearer token).",
                "Problem",
                "WWW-Authenticate",
            ),
            429: TOO_MANY,
            500: INTERNAL,
        },
        auth="operator",
    ),
)
