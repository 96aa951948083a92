"""The service's answers as pydantic models, for the OpenAPI document (`api/openapi.py`).

The routes build their answers themselves (`jsonify`, `problem()`); these models say what
those answers hold, member by member, so that the document is generated from them and the
schemathesis test (tests/test_openapi_conformance.py) holds every live answer against them.
Every model is closed (`extra="forbid"`, so `additionalProperties: false`): an answer that
grows a member the document does not name fails that test rather than drifting silently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mailservice.stores.contract import EmailStatus, WebhookState

RequestId = Field(
    description="The request's id, a UUID (version 4).", json_schema_extra={"format": "uuid"}
)
Timestamp = Field(
    description="ISO 8601 in UTC with a Z, such as 2026-11-22T04:01:25.397935Z.",
    json_schema_extra={"format": "date-time"},
)


class Answer(BaseModel):
    """A closed answer model: no member beyond those declared."""

    model_config = ConfigDict(extra="forbid")


# -- problems (RFC 9457, API.md section 6) -----------------------------------------------------


class FieldProblem(Answer):
    """One field at fault; the value itself is never echoed."""

    field: str = Field(description="The field as the client sent it: `recipient`, "
                       "`attachments.2.content`, `messages.0.subject`, `email_to`.")  # fmt: skip
    message: str


class Problem(Answer):
    """An error answer, `application/problem+json` (RFC 9457)."""

    type: Literal["about:blank"]
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="What went wrong, in a sentence.")


class InvalidProblem(Problem):
    """A 400: `errors` names each field at fault (empty when no field is)."""

    errors: list[FieldProblem]


class OutcomeProblem(Problem):
    """A waiting route's answer when the message was not sent (502 on /mail) or its outcome
    is not known in time (504): the request was accepted and has a status."""

    request_id: str = RequestId


class FailedProblem(InvalidProblem):
    """A waiting route's 400 when the message was accepted but not sent."""

    request_id: str = RequestId


# -- sending -----------------------------------------------------------------------------------


AcceptedStatus = Literal["queued", "scheduled"]
ACCEPTED_STATUS = Field(
    description="queued, or scheduled: recorded to be sent at its send_at (API.md section 3)."
)


class Accepted(Answer):
    """202: the request is recorded and queued (or scheduled); `Location` names its status."""

    message: Literal["Email request is being processed"]
    request_id: str = RequestId
    status: AcceptedStatus = ACCEPTED_STATUS


class AcceptedWithResult(Accepted):
    """202 to the FastAPI and Celery services' `email_to` body: `result` is the request id."""

    result: str = RequestId


class Queued(Answer):
    """A batch's accepted message."""

    request_id: str = RequestId
    status: AcceptedStatus = ACCEPTED_STATUS


BatchItem = Queued | InvalidProblem | Problem


class BatchAnswer(Answer):
    """202 (every message accepted) or 207 (some): one item per message, in order."""

    messages: list[BatchItem]


class BatchProblem(InvalidProblem):
    """400: no message of the batch was accepted; `messages` holds each one's problem."""

    messages: list[InvalidProblem | Problem]


class Envelope(Answer):
    """The SMTP envelope a send would use."""

    mail_from: str = Field(description="MAIL FROM: the key's sender address.")
    rcpt_to: list[str] = Field(
        description="RCPT TO: every recipient, bcc included, each once, but those on the "
        "sender's suppression list (empty: no transaction would be made)."
    )


class DryRun(Answer):
    """200 to a send with `"dry_run": true`: what would be sent; nothing was recorded or sent."""

    dry_run: Literal[True]
    request_id: str = Field(
        description="The id this dry run made for the Message-ID; no request has it.",
        json_schema_extra={"format": "uuid"},
    )
    envelope: Envelope
    suppressed: dict[str, str] = Field(
        description="The recipients left out of the envelope as on the sender's suppression "
        "list, each with the reply that put it there; a real send lists them in `refused`."
    )
    message: str = Field(
        description="The message exactly as DATA would send it (CRLF line ends, before "
        "dot-stuffing), decoded as UTF-8."
    )


class DryRunBatch(Answer):
    """200 (every message passed) or 207 (some did) to a batch with `"dry_run": true`: one
    item per message, in order."""

    dry_run: Literal[True]
    messages: list[DryRun | InvalidProblem | Problem]


# -- status, templates, health ----------------------------------------------------------------


class StatusAnswer(Answer):
    """GET /email-status/<id>: a request's status; never any message content."""

    request_id: str = RequestId
    status: EmailStatus
    error: str | None = Field(description="Null, or why the last attempt failed.")
    attempts: int = Field(ge=0, description="SMTP attempts started.")
    sender: str
    recipients: list[str] = Field(description="to, cc and bcc, each once.")
    refused: dict[str, str] = Field(description="Each refused address and its reason.")
    metadata: dict[str, str]
    tags: list[str]
    webhook: WebhookState | None = Field(
        description="Null without a webhook target; else pending until delivered or failed."
    )
    created_at: str = Timestamp
    updated_at: str = Timestamp
    send_at: str | None = Field(
        description="Null, or when it is (or was) to be sent, as given, in UTC with a Z.",
        json_schema_extra={"format": "date-time"},
    )
    expires_at: str | None = Field(
        description="Null, or when it ends expired if not yet sent, as given, in UTC with a Z.",
        json_schema_extra={"format": "date-time"},
    )


class TemplateInfo(Answer):
    name: str
    parts: list[Literal["subject", "text", "html"]]
    variables: list[str] = Field(description="The top-level names its parts use, sorted.")
    source: Literal["shipped", "deployment"]


class TemplateList(Answer):
    """GET /templates: every template, by name."""

    templates: list[TemplateInfo]


class Health(Answer):
    status: Literal["ok"]


class Ready(Answer):
    status: Literal["ready"]
    unfinished: int = Field(ge=0, description="Requests this process holds.")


# -- the older services' answers (API.md section 7) -------------------------------------------


class MailSent(Answer):
    """/mail's JSON answer, for a client whose Accept prefers application/json."""

    message: Literal["message Sent"]
    request_id: str = RequestId


class SmtpSent(Answer):
    """/smtp/send-email: the message was sent."""

    status: Literal["Email sent successfully"]
    request_id: str = RequestId


class V1Result(Answer):
    """201 of the /api/v1 routes: the older service's `result` text, plus the request id."""

    result: str = Field(
        description="`<request_id>, Task passed to Celery`, or `Email sent @ <time>` / "
        "`Text sent @ <time>` (YYYY-MM-DD HH:MM:SS, UTC)."
    )
    request_id: str = RequestId


class TokenAnswer(Answer):
    """POST /token: an OAuth2 bearer token (RFC 6749 section 5.1)."""

    access_token: str
    token_type: Literal["bearer"]
    expires_in: int = Field(ge=1, description="Seconds: TOKEN_TTL.")


class OAuthError(Answer):
    """An RFC 6749 section 5.2 error of POST /token."""

    error: Literal["invalid_request", "unsupported_grant_type", "invalid_grant"]
    error_description: str


class DashboardState(Answer):
    """GET /dashboard/data: what the dashboard shows (API.md section 11)."""

    counts: dict[str, int]
    paused: list[dict[str, str]] = Field(
        description="The sender accounts paused now, each `{sender, reason, until}` (API.md "
        "section 3, Protecting the sender's account)."
    )
    sends: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    next: str | None
    query: str
    problem: str | None


class ServerCheckAnswer(Answer):
    """One login of GET /senders/check on one server (API.md section 3, Sender check)."""

    sender: str = Field(description="The sender's address: its SMTP login.")
    server: str = Field(description="The SMTP server, `host:port` (an IPv6 host in brackets).")
    security: Literal["starttls", "ssl", "none"]
    result: Literal["ok", "auth_failed", "tls_failed", "unreachable", "starttls_missing"]
    detail: str = Field(description="The server's reply or the error; never a password.")


class SenderCheckAnswer(Answer):
    """GET /senders/check: every sender's login tried, nothing sent."""

    senders: list[ServerCheckAnswer]
    ok: bool = Field(description="true when every result is `ok`.")


ANSWER_MODELS: tuple[type[BaseModel], ...] = (
    FieldProblem,
    Problem,
    InvalidProblem,
    OutcomeProblem,
    FailedProblem,
    Accepted,
    AcceptedWithResult,
    Queued,
    BatchAnswer,
    BatchProblem,
    Envelope,
    DryRun,
    DryRunBatch,
    StatusAnswer,
    TemplateInfo,
    TemplateList,
    Health,
    Ready,
    MailSent,
    SmtpSent,
    V1Result,
    TokenAnswer,
    OAuthError,
    DashboardState,
    ServerCheckAnswer,
    SenderCheckAnswer,
)
