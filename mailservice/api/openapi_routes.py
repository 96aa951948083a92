"""Every route of the app as the OpenAPI document describes it: a declarative table.

One `Operation` per route and method of `app.url_map` (HEAD and OPTIONS, which Flask answers
by itself, aside); tests/test_openapi.py fails naming any route the table lacks. An operation
names its body and answers by model name (`api/request_bodies.py`, `api/answers.py`);
`api/openapi.py` turns the table (with the operator's rows of `openapi_operator_routes.py`)
and the models into the document. A new route is a new row here, or there for an operator's
page, in the same commit as the route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mailservice.events.status_watch import WAIT_MAX, WAITERS_MAX

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
    query: tuple[dict[str, object], ...] = ()  # its query parameters, as OpenAPI objects


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
# The operator's routes' 401 (api/admin_api.py, /metrics).
NO_OPERATOR = problem("No operator's credential (ADMIN_TOKEN as a Bearer token).", "Problem",
                      "WWW-Authenticate")  # fmt: skip
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
ACCEPTED = json(
    "Recorded and queued, or scheduled for its send_at.",
    ("Accepted", "AcceptedWithResult"),
    "Location",
)
# Cancel and retry: the key's own requests only; no body is read.
LIFECYCLE_ERRORS = {
    400: problem("A key in the URL."),
    401: UNAUTHORIZED,
    404: problem("No request of this key has this id, or its status has expired."),
    429: TOO_MANY,
    500: INTERNAL,
    503: UNAVAILABLE,
}
REQUEST_ID: dict[str, dict[str, object]] = {"request_id": {"type": "string", "format": "uuid"}}
CANCEL = Operation(
    "/email-status/<request_id>", "DELETE", "cancelEmail", "Cancel a request", "Status",
    {200: json("Canceled: the status, `canceled`.", "StatusAnswer"), **LIFECYCLE_ERRORS,
     409: problem("It is sending or has ended (`detail` names its status).")},
    auth="sender", rate_limited=True, path_schemas=REQUEST_ID,
    description="A scheduled, queued or retrying request of the key's sender ends "
    "canceled and is never sent.",
)  # fmt: skip
RETRY = Operation(
    "/email-status/<request_id>/retry", "POST", "retryEmail", "Send a failed request again",
    "Status",
    {202: json("Queued again: the status, `queued`.", "StatusAnswer", "Location"),
     **LIFECYCLE_ERRORS,
     409: problem("It is not failed, its expires_at has passed, its content is no longer "
                  "kept (FAILED_CONTENT_TTL), or the webhook of its failure is still pending.")},
    auth="sender", rate_limited=True, path_schemas=REQUEST_ID,
    description="A failed request of the key's sender whose content is still kept goes "
    "back to queued with its attempts reset.",
)  # fmt: skip
SENDING = "Sending"
OLDER = "Older services (drop-in)"
V1_CREATED = json("Sent or queued; `result` is the older service's text.", "V1Result", "Location")
DRY_RUN = json("A dry run: what would be sent; nothing was recorded or sent.", "DryRun")
DRY_RUN_DOC = ' With `"dry_run": true`, 200 and what would be sent, at once.'
# The /api/v1 routes that wait for the outcome.
V1_WAITING = {200: DRY_RUN, 201: V1_CREATED, 400: NOT_SENT_OR_INVALID, 504: WAIT_TIMEOUT,
              **SENDER_ERRORS}  # fmt: skip


def send_email(rule: str, operation_id: str) -> Operation:
    return Operation(
        rule, "POST", operation_id, "Send one message", SENDING,
        {200: DRY_RUN, 202: ACCEPTED, 400: INVALID, **SENDER_ERRORS},
        body={"application/json": ("SendRequest", "EmailToBody")},
        auth="sender", rate_limited=True, idempotent=True, links=(202,),
        description="The core body (API.md section 3), or the FastAPI and Celery services' "
        "`email_to` body, which is answered with `result` as well." + DRY_RUN_DOC,
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
            200: json("A dry run of which every message passed.", "DryRunBatch"),
            202: json("Every message was accepted.", "BatchAnswer"),
            207: json(
                "Some messages were accepted (or passed, in a dry run); the others' items are "
                "problems.",
                ("BatchAnswer", "DryRunBatch"),
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
        'counts against RATE_LIMIT once per message. A top-level `"dry_run": true` makes '
        "the whole batch a dry run: 200 (or 207) with each message's preview.",
    ),
    Operation(
        "/email-status/<request_id>",
        "GET",
        "getEmailStatus",
        "A request's status",
        "Status",
        {
            200: json(
                "The status; never any message content. With `wait`: once it is final, or "
                "the current one when the wait is over.",
                "StatusAnswer",
            ),
            400: problem(
                f"`wait` is not a number more than 0, at most {WAIT_MAX:g}.", "InvalidProblem"
            ),
            404: problem("No request has this id, or its status has expired."),
            500: INTERNAL,
            503: problem("The status store is unreachable.", "Problem", "Retry-After"),
        },
        path_schemas={"request_id": {"type": "string", "format": "uuid"}},
        description="Needs no key: the id is a random UUID and the answer holds no content. "
        "`wait` makes it a long poll (API.md section 4).",
        query=(
            {
                "name": "wait",
                "description": "Seconds to wait for a final status (sent, failed, expired, "
                "canceled) before answering; answered at once when it is final already, or "
                f"when {WAITERS_MAX:,} requests wait in the process (under gunicorn, long polls "
                "past 256 a worker queue for a thread first). Absent: answered at once.",
                "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": WAIT_MAX},
            },
        ),
    ),
    CANCEL,
    RETRY,
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
                "Sent: the text `message Sent`, or JSON when Accept prefers it; a dry run: "
                "its JSON, whatever Accept says.",
                {"text/plain": "MailSentText", "application/json": ("MailSent", "DryRun")},
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
        description="Waits for the outcome." + DRY_RUN_DOC,
    ),
    Operation(
        "/smtp/send-email",
        "POST",
        "smtpSendEmail",
        "The FastAPI OAuth2 service's send",
        OLDER,
        {
            200: json("Sent, or a dry run's answer.", ("SmtpSent", "DryRun")),
            400: NOT_SENT_OR_INVALID,
            504: WAIT_TIMEOUT,
            **SENDER_ERRORS,
        },
        body={"application/json": "SmtpBody"},
        auth="sender",
        rate_limited=True,
        idempotent=True,
        description="Waits for the outcome; a /token token authenticates it." + DRY_RUN_DOC,
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
        {200: DRY_RUN, 201: V1_CREATED, 400: INVALID, **SENDER_ERRORS},
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
        V1_WAITING,
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
        V1_WAITING,
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
)
