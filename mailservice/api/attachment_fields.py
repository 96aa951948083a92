"""The `attachments` field of a send request (API.md section 3): its model and every check.

`AttachmentField` checks one attachment on its own: strict base64 content (decoded here, once),
a filename fit for a MIME parameter and a file system, a `type/subtype` content type, and an
optional Content-ID token. The checks that depend on the settings or span attachments run in
`request_path.validate_send`, so that their errors still name an attachment by index
(`attachments.2.content`): `check_count()` before the model is validated (so a body of
thousands of attachments is refused before one is decoded), `check_total()` after it
(MAX_ATTACHMENT_BYTES, each content_id once). `check_inline_parts()` refuses inline parts in a
message without an HTML body, on the finished `MessageSpec`, so it sees an HTML body however it
was given.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from mailservice.delivery.message_spec import Attachment, MessageSpec
from mailservice.errors import ApiError, FieldError

FIELD = "attachments"
MAX_FILENAME = 255  # characters; common file systems allow 255 (bytes or UTF-16 units)
# RFC 2045 section 5.1: type "/" subtype, each a token (no space, controls or tspecials);
# RFC 6838 section 4.2 bounds each name at 127 characters.
MEDIA_NAME = r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]{1,127}"
CONTENT_TYPE = re.compile(rf"{MEDIA_NAME}/{MEDIA_NAME}")
# A Content-ID's id without its < >: RFC 5322 atext plus "." and "@" (a msg-id is
# dot-atom "@" dot-atom), so that `cid:<id>` in the HTML matches it (RFC 2392).
CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]{1,255}")
# Types whose bodies may not be base64 (RFC 2045 section 6.4, RFC 2046 section 5): a client
# would take the encoded part for the structure itself.
COMPOSITE_TYPES = ("multipart", "message")


def decode_content(value: Any) -> bytes:
    """Strict base64 (RFC 4648): the alphabet, padding, no line breaks or spaces."""
    if not isinstance(value, str):
        raise ValueError("must be a string of base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: a non-ASCII character
        raise ValueError(
            "is not valid base64 (RFC 4648 alphabet with padding, no line breaks or spaces)"
        ) from exc


def _check_header_value(value: str) -> str:
    # Imported here: schemas imports this module for SendRequest's field.
    from mailservice.api.schemas import check_header_value

    return check_header_value(value)


def check_filename(value: str) -> str:
    """A name a client can save as it is: no path, no controls, not `.` or `..`."""
    _check_header_value(value)  # control and format characters, separators, encoded words
    if "\t" in value:  # allowed in header values as folding whitespace, not in a file name
        raise ValueError("must not contain control character U+0009")
    if "/" in value or "\\" in value:
        raise ValueError("must not contain a path separator (/ or \\)")
    if value in (".", ".."):
        raise ValueError("must be a file name, not . or ..")
    return value


def check_content_type(value: str) -> str:
    """`type/subtype` of RFC 2045 tokens, no parameters; returned in lower case."""
    if not CONTENT_TYPE.fullmatch(value):
        raise ValueError("must be type/subtype (RFC 2045), such as application/pdf")
    lowered = value.lower()
    if lowered.partition("/")[0] in COMPOSITE_TYPES:
        raise ValueError(
            "must not be multipart/* or message/* (they cannot be base64); "
            "use application/octet-stream"
        )
    return lowered


def check_content_id(value: str) -> str:
    """1 to 255 characters of a Content-ID token, without < >."""
    if not CONTENT_ID.fullmatch(value):
        raise ValueError(
            "must be 1 to 255 of A-Z a-z 0-9 and !#$%&'*+-/=?^_`{|}~.@ (no spaces, < > or ;)"
        )
    return _check_header_value(value)  # no RFC 2047 encoded word either


class AttachmentField(BaseModel):
    """One item of `attachments`: a file, or with `content_id` an inline part of the HTML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filename: Annotated[
        StrictStr, Field(min_length=1, max_length=MAX_FILENAME), AfterValidator(check_filename)
    ]
    content: Annotated[bytes, BeforeValidator(decode_content), Field(repr=False)]
    content_type: Annotated[StrictStr, AfterValidator(check_content_type)]
    content_id: Annotated[StrictStr, AfterValidator(check_content_id)] | None = None


def _an_object(value: Any) -> Any:
    # Otherwise pydantic's message names the model class ("instance of AttachmentField").
    if not isinstance(value, dict):
        raise ValueError("must be an object with filename, content and content_type")
    return value


Attachments = list[Annotated[AttachmentField, BeforeValidator(_an_object)]]


def check_count(body: dict[str, Any], limit: int) -> None:
    """400 for more than MAX_ATTACHMENTS attachments, before any is validated."""
    value = body.get(FIELD)
    count = len(value) if isinstance(value, list) else 0
    if count > limit:
        raise ApiError(
            400,
            f"At most {limit} attachments per message.",
            [FieldError(FIELD, f"{count} attachments; the limit is {limit} (MAX_ATTACHMENTS)")],
        )


def check_total(attachments: Attachments, max_bytes: int) -> None:
    """400 naming the attachment by index: the first past MAX_ATTACHMENT_BYTES (decoded, all
    together), and each content_id given before."""
    errors: list[FieldError] = []
    total = 0
    seen: dict[str, int] = {}
    for index, attachment in enumerate(attachments):
        total += len(attachment.content)
        if total > max_bytes and total - len(attachment.content) <= max_bytes:
            errors.append(
                FieldError(
                    f"{FIELD}.{index}.content",
                    f"brings the attachments to {total} bytes decoded; "
                    f"the limit is {max_bytes} (MAX_ATTACHMENT_BYTES)",
                )
            )
        cid = attachment.content_id
        if cid is not None and cid in seen:
            errors.append(
                FieldError(
                    f"{FIELD}.{index}.content_id",
                    f"is also the content_id of {FIELD}.{seen[cid]}; each must be unique",
                )
            )
        elif cid is not None:
            seen[cid] = index
    if errors:
        raise ApiError(400, "The request has invalid fields.", errors)


def spec_attachments(attachments: Attachments) -> tuple[Attachment, ...]:
    """The attachments as delivery keeps them."""
    return tuple(
        Attachment(a.filename, a.content_type, a.content, a.content_id) for a in attachments
    )


def check_inline_parts(spec: MessageSpec) -> None:
    """400 for a content_id in a message without an HTML body: nothing could refer to it."""
    has_html = spec.html is not None or (spec.body is not None and spec.is_html)
    if has_html:
        return
    errors = [
        FieldError(
            f"{FIELD}.{index}.content_id",
            "needs an html body (html, or body with is_html) to show it as cid:",
        )
        for index, attachment in enumerate(spec.attachments)
        if attachment.content_id is not None
    ]
    if errors:
        raise ApiError(400, "The request has invalid fields.", errors)
