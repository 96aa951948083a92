"""The suppression lists' admin routes in the OpenAPI document (API.md section 3, "Suppression
list"): their body and answer models and their rows of the `Operation` table, which
`api/openapi.py` joins to the others. Tagged Operator: the conformance run with ADMIN_TOKEN
takes them past their door.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mailservice.api.answers import Answer, Timestamp
from mailservice.api.openapi_routes import (
    INTERNAL,
    NO_OPERATOR,
    TOO_MANY,
    Operation,
    Reply,
    json,
    problem,
)
from mailservice.api.suppression_routes import PAGE_DEFAULT, ROUTE
from mailservice.stores.suppressions import REASON_MAX, SUPPRESSION_PAGE_MAX

OPERATOR = "Operator"
EMAIL = {"format": "email"}


class SuppressionEntry(Answer):
    """One suppressed address of one sender's list."""

    sender: str = Field(description="The sender's address (its account), lower-cased.")
    address: str = Field(description="The suppressed recipient, lower-cased whole.")
    reason: str = Field(description="The refusal that put it there ('550 5.1.1 ...'), or the "
                        "operator's reason.")  # fmt: skip
    created_at: str = Timestamp
    expires_at: str = Timestamp


class SuppressionList(Answer):
    """GET /admin/suppressions: a page of entries in (sender, address) order."""

    entries: list[SuppressionEntry]
    next: str | None = Field(description="The `after` of the next page; null on the last.")


class SuppressionBody(BaseModel):
    """POST /admin/suppressions: an address to suppress for SUPPRESSION_DAYS."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"sender": "sender@example.com",
                                         "address": "gone@example.net"}]},
    )  # fmt: skip
    sender: str = Field(description="An address of the senders file.", json_schema_extra=EMAIL)
    address: str = Field(description="The recipient to suppress.", json_schema_extra=EMAIL)
    reason: str | None = Field(
        None, max_length=REASON_MAX, description="Why (default 'added by the operator')."
    )


SUPPRESSION_MODELS: tuple[type[BaseModel], ...] = (SuppressionEntry, SuppressionList)
SUPPRESSION_BODIES: tuple[type[BaseModel], ...] = (SuppressionBody,)

INVALID = problem("A missing or malformed field or parameter; `errors` names it.",
                  "InvalidProblem")  # fmt: skip
ERRORS = {
    400: INVALID,
    401: NO_OPERATOR,
    404: problem("No sender of the senders file has this address."),
    429: TOO_MANY,
    500: INTERNAL,
    503: problem("The status store is unreachable.", "Problem", "Retry-After"),
}
SENDER = {"name": "sender", "description": "An address of the senders file.",
          "schema": {"type": "string", **EMAIL}}  # fmt: skip

SUPPRESSION_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        ROUTE,
        "GET",
        "listSuppressions",
        "A page of the suppression lists",
        OPERATOR,
        {200: json("The entries, and the next page's cursor.", "SuppressionList"), **ERRORS},
        auth="operator",
        description="One sender's list with `sender`, else every sender's; expired entries "
        "are never listed.",
        query=(
            {**SENDER, "description": "Only this sender's list."},
            {
                "name": "limit",
                "description": f"Entries on a page ({PAGE_DEFAULT} unless given).",
                "schema": {"type": "integer", "minimum": 1, "maximum": SUPPRESSION_PAGE_MAX},
            },
            {
                "name": "after",
                "description": "The `next` of the page before.",
                "schema": {"type": "string"},
            },
        ),
    ),
    Operation(
        ROUTE,
        "POST",
        "addSuppression",
        "Suppress an address for one sender",
        OPERATOR,
        {
            201: json("On the list for SUPPRESSION_DAYS (renewed if it was).", "SuppressionEntry"),
            **ERRORS,
            413: problem("The body is larger than MAX_REQUEST_BYTES."),
            415: problem("Not application/json, or a charset other than UTF-8."),
        },
        body={"application/json": "SuppressionBody"},
        auth="operator",
    ),
    Operation(
        ROUTE,
        "DELETE",
        "removeSuppression",
        "Take an address off a sender's list",
        OPERATOR,
        {
            204: Reply("Removed: the next send to it is attempted."),
            **ERRORS,
            404: problem("No sender has this address, or the address is not on its list."),
        },
        auth="operator",
        query=(
            {**SENDER, "required": True},
            {
                "name": "address",
                "description": "The address to take off.",
                "required": True,
                "schema": {"type": "string", **EMAIL},
            },
        ),
    ),
)
