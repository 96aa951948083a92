"""The request bodies as the OpenAPI document (`api/openapi.py`) describes them.

`SendRequest` (api/schemas.py) is the core body's model, and its generated JSON Schema is
the document's `SendRequest`. What that schema cannot say by itself, because custom
validators enforce it (a tag's characters, the `to` alias, a subject's or a template's
absence), is added by `send_request_schema()` from `SEND_FIELDS`, never a rule of its own.

The other bodies are translated field by field into a SendRequest by their routes
(`legacy_routes.SeedShape`, `batch_routes`, `v1_routes`) rather than validated by a model of
their own; the models here describe those bodies, member by member, for the document only.
Every request is still parsed and validated exactly as before.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mailservice.api.client_fields import MAX_METADATA_KEYS, MAX_TAGS
from mailservice.api.schemas import MAX_EXTRA_HEADERS

EMAIL = {"format": "email"}
ONE_OR_MORE_ADDRESSES = {
    "anyOf": [
        {"type": "string", **EMAIL},
        {"type": "array", "items": {"type": "string", **EMAIL}, "minItems": 1},
    ]
}
KEY_DOC = "The API key, when it is not sent in a header (Authorization: Bearer, X-API-Key)."
DRY_RUN_DOC = (
    "true: validate and build the message, record and send nothing, and answer 200 with the "
    "envelope and the message that would go out."
)

# Additions to SendRequest's generated properties: descriptions, and the formats and bounds
# that its validators enforce (API.md section 3 has every rule).
SEND_FIELDS: dict[str, dict[str, Any]] = {
    "recipient": {
        "description": "One address or a list of them (alias `to`); to + cc + bcc at most "
        "MAX_RECIPIENTS.",
        **ONE_OR_MORE_ADDRESSES,
    },
    "cc": {"items": {"type": "string", **EMAIL}},
    "bcc": {"items": {"type": "string", **EMAIL}, "description": "In the envelope only."},
    "template": {
        "description": "Instead of subject and the content: a template's name (GET /templates).",
    },
    "variables": {"description": "Only with template: the values it renders with."},
    "subject": {"description": "Required unless template is given (then refused)."},
    "body": {"description": "The content; plain text unless is_html."},
    "is_html": {"description": "Only with body."},
    "text": {"description": "Instead of body: the text/plain part."},
    "html": {"description": "Instead of body: the text/html part."},
    "text_alternative": {
        "description": "false sends an HTML-only message without a text/plain part rendered "
        "from its HTML."
    },
    "from_name": {"description": "Display name for the key's sender; no @, < or >."},
    "from": {"description": "Must be the key's own address (403 otherwise)."},
    "reply_to": {"description": "One address."},
    "headers": {
        "description": "Extra headers: X-..., List-Unsubscribe, List-Unsubscribe-Post, "
        "In-Reply-To, References.",
        "maxProperties": MAX_EXTRA_HEADERS,
    },
    "attachments": {"description": "At most MAX_ATTACHMENTS files or inline parts."},
    "tags": {
        "description": "The client's own labels, kept with the status.",
        "maxItems": MAX_TAGS,
        "uniqueItems": True,
        "items": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    },
    "metadata": {
        "description": "The client's own data, kept with the status; at most 1024 bytes.",
        "maxProperties": MAX_METADATA_KEYS,
        "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,40}$"},
    },
    "callback_url": {
        "description": "An http:// or https:// URL that gets a signed POST of the final status.",
        "anyOf": [{"type": "string", "format": "uri", "maxLength": 2048}, {"type": "null"}],
    },
    "send_at": {
        "description": "When to send it: an ISO 8601 date-time with an offset, at most "
        "MAX_SCHEDULE_DAYS ahead; now or past sends at once.",
    },
    "expires_at": {
        "description": "When it is too late to send: an ISO 8601 date-time with an offset, "
        "after now and after send_at; not handed to the SMTP server by then, it ends expired.",
    },
    "key": {"description": KEY_DOC},
    "dry_run": {"description": DRY_RUN_DOC},
}
SEND_EXAMPLES = [
    {"recipient": "ada@example.com", "subject": "Welcome", "body": "Hello Ada."},
    {
        "to": ["ada@example.com"],
        "cc": ["grace@example.com"],
        "subject": "Your invoice",
        "text": "Your invoice is attached.",
        "html": "<p>Your invoice is attached.</p>",
        "tags": ["invoice"],
        "metadata": {"customer": "42"},
        "attachments": [
            {"filename": "invoice.txt", "content": "SW52b2ljZSA0Mgo=", "content_type": "text/plain"}
        ],
    },
    {
        "to": "ada@example.com",
        "template": "reset-password",
        "variables": {"app_name": "Acme", "name": "Ada", "code": "482913",
                      "link": "https://acme.example/reset?token=abc"},
    },
]  # fmt: skip
ATTACHMENT_FIELDS: dict[str, dict[str, Any]] = {
    # base64 text in a JSON body (OpenAPI 3.1 section 4.8.24.3), not a binary stream.
    "content": {"format": None, "contentEncoding": "base64", "description": "The file, base64."},
    "content_type": {"description": "type/subtype, such as application/pdf."},
    "content_id": {"description": "Makes it an inline part the HTML shows as cid:<content_id>."},
}


# A field whose addition holds `anyOf` has its generated type replaced whole.
TYPING = ("type", "items", "anyOf")


def _overlay(schema: dict[str, Any], fields: dict[str, dict[str, Any]]) -> None:
    for name, extra in fields.items():
        prop = schema["properties"][name]
        if "anyOf" in extra:
            for keyword in TYPING:
                prop.pop(keyword, None)
        for keyword, value in extra.items():
            if value is None:  # a keyword of the generated schema that is wrong here
                prop.pop(keyword, None)
            else:
                prop[keyword] = value


def send_request_schema(generated: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """SendRequest's generated schema with SEND_FIELDS added: `to` documented as the alias it
    is (exactly one of `recipient` and `to`), and AttachmentField's `content` as base64."""
    schema = copy.deepcopy(generated)
    _overlay(schema, SEND_FIELDS)
    schema["properties"]["to"] = dict(schema["properties"]["recipient"], title="To")
    schema["required"] = [name for name in schema["required"] if name != "recipient"]
    schema["oneOf"] = [{"required": ["recipient"]}, {"required": ["to"]}]
    schema["examples"] = SEND_EXAMPLES
    if not schema["required"]:
        del schema["required"]
    if "AttachmentField" in defs:
        _overlay(defs["AttachmentField"], ATTACHMENT_FIELDS)
    return schema


def batch_message_schema(send_schema: dict[str, Any]) -> dict[str, Any]:
    """A batch's message: the SendRequest body without `key` (one batch, one credential) and
    `dry_run` (a batch is a dry run as a whole)."""
    schema = copy.deepcopy(send_schema)
    del schema["properties"]["key"]
    del schema["properties"]["dry_run"]
    schema["title"] = "BatchMessage"
    schema["description"] = (
        "One message of a batch: a SendRequest body without `key` and `dry_run`, which go at "
        "the top of the batch."
    )
    schema.pop("examples")
    return schema


# -- bodies without a model of their own ------------------------------------------------------


def closed(*examples: dict[str, Any]) -> ConfigDict:
    """A body model's config: no member beyond those declared, and examples of the body."""
    return ConfigDict(extra="forbid", json_schema_extra={"examples": list(examples)})


Addresses = Annotated[str | list[str], Field(json_schema_extra=ONE_OR_MORE_ADDRESSES)]
Subject = Annotated[str, Field(min_length=1, max_length=998)]
Key = Annotated[str | None, Field(description=KEY_DOC)]
DryRun = Annotated[bool, Field(description=DRY_RUN_DOC)]
OwnAddress = Annotated[str | None, Field(description="Must be the key's own address.")]
UserId = Annotated[
    str | int | None, Field(description="Kept as the status's metadata `user_id`, as text.")
]
ADA = "ada@example.com"


class BatchBody(BaseModel):
    """POST /send-email/batch: up to BATCH_MAX messages, each a SendRequest without `key`."""

    model_config = closed(
        {
            "messages": [
                {"to": ADA, "subject": "Hi", "body": "Hello Ada."},
                {"to": "grace@example.com", "subject": "Hi", "body": "Hello Grace."},
            ]
        }
    )
    messages: list[dict[str, Any]] = Field(min_length=1)
    key: Key = None
    dry_run: DryRun = False


class MailBody(BaseModel):
    """POST /mail: the Flask /mail microservice's body; `body` is plain text."""

    model_config = closed({"recipient": ADA, "subject": "Hi", "body": "Hello Ada."})
    recipient: Addresses
    subject: Subject
    body: str
    key: Key = None
    dry_run: DryRun = False


class MessageParts(BaseModel):
    """`message` of the `email_to` body: text and/or html."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"anyOf": [{"required": ["text"]}, {"required": ["html"]}]},
    )
    text: str | None = None
    html: str | None = None


class EmailToBody(BaseModel):
    """POST /send-email[/] with `email_to`: the FastAPI and Celery services' body."""

    model_config = closed({"email_to": ADA, "subject": "Hi", "message": {"html": "<p>Hi</p>"}})
    email_to: Addresses
    email_from: OwnAddress = None
    subject: Subject
    message: MessageParts
    key: Key = None
    dry_run: DryRun = False


class SmtpBody(BaseModel):
    """POST /smtp/send-email: the FastAPI OAuth2 service's body; `message` is plain text."""

    model_config = closed({"to": ADA, "subject": "Hi", "message": "Hello Ada."})
    to: Addresses
    subject: Subject
    message: str
    key: Key = None
    dry_run: DryRun = False


class V1MailBody(BaseModel):
    """POST /api/v1/mail/...: `message` is HTML (a text alternative is rendered from it)."""

    model_config = closed(
        {"email_to": [ADA], "subject": "Hi", "message": "<p>Hi</p>", "user_id": 42}
    )
    email_to: Addresses
    email_from: OwnAddress = None
    subject: Subject
    message: str
    user_id: UserId = None
    key: Key = None
    dry_run: DryRun = False


class V1SmsBody(BaseModel):
    """POST /api/v1/sms/send-email-sms/: a text to <digits>@<the carrier's gateway>."""

    model_config = closed(
        {"message": "Your code is 482913", "phone_number": "555-123-4567", "provider": "Verizon"}
    )
    message: str = Field(min_length=1, description="The text; not only whitespace.")
    phone_number: str = Field(
        description="7 to 15 digits, which spaces, hyphens, dots and parentheses may separate.",
        json_schema_extra={"pattern": "^[0-9 ().-]+$"},
    )
    provider: str = Field(description="The carrier's name, any case (AT&T, Verizon, ...).")
    user_id: UserId = None
    key: Key = None
    dry_run: DryRun = False


class TokenForm(BaseModel):
    """POST /token, application/x-www-form-urlencoded; other form fields are ignored."""

    username: str = Field(description="The sender's address.")
    password: str = Field(description="Its API key.")
    grant_type: Literal["password"] = "password"


class LoginForm(BaseModel):
    """POST /login, application/x-www-form-urlencoded: the operator's ADMIN_TOKEN."""

    token: str = Field(description="ADMIN_TOKEN.")


BODY_MODELS: tuple[type[BaseModel], ...] = (
    BatchBody,
    MailBody,
    EmailToBody,
    SmtpBody,
    V1MailBody,
    V1SmsBody,
    TokenForm,
    LoginForm,
)
