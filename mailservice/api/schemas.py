"""The pydantic models of request bodies (API.md section 3), once `strict_json` has parsed them.

`SendRequest` validates the fields; every
header value is checked for control and format characters, line separators and encoded words,
a display name also for address syntax, and the content for NUL; offending input is rejected,
never cleaned. Recipients on special-use domains are refused unless the validation context
says `SPECIAL_USE_RECIPIENTS: True`; `send_at` and `expires_at` are checked against the
context's `schedule_fields.SCHEDULE` rule (the time of the request, MAX_SCHEDULE_DAYS).
`validation_errors()` turns a pydantic error into field errors for the problem answer.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from email_validator import EmailNotValidError
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mailservice.addresses import validate_address
from mailservice.api.attachment_fields import Attachments
from mailservice.api.callback_url import CallbackUrl
from mailservice.api.client_fields import Metadata, Tags
from mailservice.api.schedule_fields import (
    OffsetDateTime,
    check_expires_at,
    check_send_at,
    rule_of,
)
from mailservice.errors import FieldError
from mailservice.template_files import check_template_name
from mailservice.templating import check_variables

# The validation context's switch (`SendRequest.model_validate(body, context=...)`) that accepts
# recipients on special-use domains: ALLOW_SPECIAL_USE_RECIPIENTS.
SPECIAL_USE_RECIPIENTS = "allow_special_use_recipients"
MAX_EXTRA_HEADERS = 20
ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[a-z]\?[^?\s]*\?=", re.IGNORECASE)
# Characters no header value may hold (API.md section 3): controls (Cc) but TAB, which folding
# whitespace allows; format characters (Cf: bidi overrides such as U+202E, zero-width U+200B,
# U+FEFF, soft hyphen, tags), which make a subject or display name read other than it is; and
# the line and paragraph separators (Zl, Zp), on which EmailMessage raises.
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
# A display name that reads as an address (`"ceo@bank.com" <ceo@bank.com>`) impersonates one.
ADDRESS_SYNTAX = re.compile(r"[@<>]")
TYPE_TAG = re.compile(r"str|constrained-str|(list|function-[a-z-]+)\[.*\]")
# Header names are case-insensitive (RFC 5322): x-campaign is as good as X-Campaign.
HEADER_NAME = re.compile(r"[Xx]-[A-Za-z0-9][A-Za-z0-9-]{0,74}")
ALLOWED_HEADERS = {
    "list-unsubscribe": "List-Unsubscribe",
    "list-unsubscribe-post": "List-Unsubscribe-Post",
    "in-reply-to": "In-Reply-To",
    "references": "References",
}


def check_header_value(value: str) -> str:
    """Reject control and format characters, line separators and RFC 2047 encoded words."""
    # str.isprintable() is False for every character of those categories (and for TAB, space
    # other than U+0020, private use...): one C loop clears nearly every real value, and only
    # the rest are looked at character by character.
    if not value.isprintable():
        for ch in value:
            category = unicodedata.category(ch)
            if category in FORBIDDEN_CATEGORIES and ch != "\t":
                kind = "format" if category == "Cf" else "control"
                raise ValueError(f"must not contain {kind} character U+{ord(ch):04X}")
    if ENCODED_WORD.search(value):
        raise ValueError("must not contain an RFC 2047 encoded word (=?charset?q?...?=)")
    return value


def check_display_name(value: str) -> str:
    """A display name (`from_name`) may not hold `@`, `<` or `>`: it must not read as an address."""
    found = ADDRESS_SYNTAX.search(value)
    if found is not None:
        raise ValueError(f"must not contain {found.group()!r}: a display name is not an address")
    return value


def check_content(value: str) -> str:
    """Message content may not hold NUL (RFC 5322 section 2.3, RFC 2045 section 2.7)."""
    if "\0" in value:
        raise ValueError("must not contain NUL (U+0000)")
    return value


def _checked_address(value: str, special_use: bool) -> str:
    if len(value) > 320:
        raise ValueError("is too long to be an email address")
    check_header_value(value)
    try:
        # strict: enforce the 64-octet local part of RFC 5321 (API.md section 3).
        result = validate_address(value, special_use=special_use, strict=True)
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address: {exc}") from exc
    return result.ascii_email or result.normalized


@functools.lru_cache(maxsize=4096)
def check_address(value: str) -> str:
    """One addr-spec, normalised; ASCII form of an international domain where possible.

    Cached: the same addresses come again and again (and a lone recipient string is checked
    before and after it becomes a list); a ValueError is not cached, only raised again.
    """
    return _checked_address(value, special_use=False)


@functools.lru_cache(maxsize=4096)
def check_address_special_use(value: str) -> str:
    """`check_address`, but a special-use domain (`.local`, `.internal`, `.test`) is allowed."""
    return _checked_address(value, special_use=True)


def _address_check(info: ValidationInfo) -> Callable[[str], str]:
    """The recipients' check the validation context asks for (ALLOW_SPECIAL_USE_RECIPIENTS)."""
    context = info.context
    allow = isinstance(context, dict) and context.get(SPECIAL_USE_RECIPIENTS) is True
    return check_address_special_use if allow else check_address


def _address(value: str, info: ValidationInfo) -> str:
    return _address_check(info)(value)


def _as_list(value: Any, info: ValidationInfo) -> Any:
    """One address may be given as a string; it is checked here so that an error about it
    names the field itself (`recipient`), not a list item (`recipient.0`)."""
    return [_address_check(info)(value)] if isinstance(value, str) else value


HeaderText = Annotated[StrictStr, AfterValidator(check_header_value)]
# A recipient or reply_to: special-use domains only when the validation context allows them.
Address = Annotated[StrictStr, AfterValidator(_address)]
# `from`, which must be the key's own sender, whose domain the operator chose.
SenderAddress = Annotated[StrictStr, AfterValidator(check_address_special_use)]
DisplayName = Annotated[HeaderText, AfterValidator(check_display_name), Field(max_length=200)]
Text = Annotated[StrictStr, Field(max_length=50_000_000), AfterValidator(check_content)]


class SendRequest(BaseModel):
    """The body of POST /send-email; see API.md section 3."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # One address or a list: a string is made a list first rather than using a union, whose
    # errors would name pydantic's member types and add a spurious "should be a list".
    recipient: Annotated[list[Address], BeforeValidator(_as_list)] = Field(
        validation_alias=AliasChoices("recipient", "to")
    )
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    # Before subject, which may be left out only for a template (validated in this order).
    template: Annotated[StrictStr, AfterValidator(check_template_name)] | None = None
    variables: Annotated[dict[StrictStr, Any], AfterValidator(check_variables)] | None = None
    subject: Annotated[HeaderText, Field(min_length=1, max_length=998)] | None = Field(
        default=None, validate_default=True
    )
    body: Text | None = None
    is_html: StrictBool = False
    text: Text | None = None
    html: Text | None = None
    from_name: DisplayName | None = None
    from_: SenderAddress | None = Field(default=None, alias="from")
    reply_to: Address | None = None
    headers: dict[StrictStr, Annotated[HeaderText, Field(max_length=998)]] = Field(
        default_factory=dict
    )
    # false: an HTML-only message gets no text/plain alternative rendered from its HTML.
    text_alternative: StrictBool = True
    attachments: Attachments = Field(default_factory=list)
    tags: Tags = Field(default_factory=list)  # the client's own: kept with the status only
    metadata: Metadata = Field(default_factory=dict)  # the same (client_fields)
    callback_url: CallbackUrl | None = None  # its target is checked with the settings (400)
    # When to send it, and when it is too late to (schedule_fields); send_at first, as the
    # check of expires_at reads it.
    send_at: OffsetDateTime | None = None
    expires_at: OffsetDateTime | None = None
    key: StrictStr | None = Field(default=None, repr=False, exclude=True)
    # A dry run (api/dry_run.py, which reads it from the body before validation): not content.
    dry_run: StrictBool = Field(default=False, exclude=True)

    @field_validator("recipient", mode="after")
    @classmethod
    def _recipient_list(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one address")
        return value

    # A template gives the subject and the content; these validators run on a field only when
    # it is given (subject also when it is not) and see `template` when it was valid.
    @field_validator("variables", mode="after")
    @classmethod
    def _variables_need_template(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("template") is None:
            raise ValueError("go with template")
        return value

    @field_validator("subject", mode="after")
    @classmethod
    def _subject_or_template(cls, value: str | None, info: ValidationInfo) -> str | None:
        with_template = info.data.get("template") is not None
        if value is None and not with_template:
            raise PydanticCustomError("missing", "Field required (or give a template)")
        if value is not None and with_template:
            raise ValueError("is the template's: give either template or subject")
        return value

    @field_validator("body", "is_html", "text", "html", mode="after")
    @classmethod
    def _content_or_template(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("template") is not None:
            raise ValueError(f"is the template's: give either template or {info.field_name}")
        return value

    @field_validator("headers", mode="after")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_EXTRA_HEADERS:
            raise ValueError(f"at most {MAX_EXTRA_HEADERS} extra headers")
        canonical: dict[str, str] = {}
        for name, header_value in value.items():
            known = ALLOWED_HEADERS.get(name.lower())
            if known is None and not HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"header {name[:80]!r} is not allowed: use X-... or "
                    "List-Unsubscribe, List-Unsubscribe-Post, In-Reply-To, References"
                )
            canonical_name = known or name
            if canonical_name.lower() in (n.lower() for n in canonical):
                raise ValueError(f"header {name[:80]!r} is given twice")
            canonical[canonical_name] = header_value
        return canonical

    @field_validator("send_at", mode="after")
    @classmethod
    def _send_at_in_reach(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return None if value is None else check_send_at(value, rule_of(info.context))

    @field_validator("expires_at", mode="after")
    @classmethod
    def _expires_at_ahead(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        return check_expires_at(value, info.data.get("send_at"), rule_of(info.context))

    @model_validator(mode="after")
    def _content(self) -> SendRequest:
        if self.template is not None:  # checked field by field above
            return self
        if self.body is None and self.text is None and self.html is None:
            raise ValueError("give the content as body, or as text and/or html")
        if self.body is not None and (self.text is not None or self.html is not None):
            raise ValueError("give either body or text/html, not both")
        if self.is_html and self.body is None:
            raise ValueError("is_html goes with body")
        return self

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient (to, cc, bcc), each once, in order."""
        return list(dict.fromkeys([*self.recipient, *self.cc, *self.bcc]))


def validation_errors(exc: ValidationError) -> list[FieldError]:
    """Field errors without echoing input values (they may hold a key)."""
    errors = []
    for error in exc.errors(include_input=False, include_url=False):
        # Union members and validators add type tags to the location (`str`,
        # `list[function-after[check_address(), str]]`); keep only the user's field path.
        loc = [str(part) for part in error["loc"] if not TYPE_TAG.fullmatch(str(part))]
        name = ".".join(loc) or "body"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a known field"
        errors.append(FieldError(field=name, message=message))
    return errors
