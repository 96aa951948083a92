"""The client's own fields of a send request, `tags` and `metadata` (API.md section 3): their
rules, and how they become the `RequestExtras` kept with the status.

Both are labels and data the client keeps with a request: shown by GET /email-status/<id> and
in webhooks, never written into the message (a header would show them to every recipient).
`Tags` and `Metadata` are the annotated types `SendRequest` declares; their errors name the
field (`tags.2` for one tag, `metadata` for the object) and never echo a value. A metadata key
is named in a message only once it is known to match the key rule, so no client text of any
length or character set is ever echoed. `request_extras()` merges the route's own metadata (the
`/api/v1` routes' `user_id`) with the client's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, StrictStr

from mailservice.delivery.accepting import RequestExtras
from mailservice.errors import ApiError, FieldError

MAX_TAGS = 10
TAG = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_METADATA_KEYS = 20
METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,40}")
MAX_METADATA_BYTES = 1024  # keys and values together, as UTF-8
# C0 controls, DEL and C1 controls: metadata reaches logs, dashboards and webhook receivers,
# where a line break or an escape sequence would forge or garble what they show.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_tag_count(value: Any) -> Any:
    """At most MAX_TAGS, checked before each tag is, so a long list gets one error, not many."""
    if isinstance(value, list) and len(value) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags; {len(value)} given")
    return value


def check_tag(value: str) -> str:
    """One tag: 1 to 64 of A-Z, a-z, 0-9, `_` and `-`."""
    if not TAG.fullmatch(value):
        raise ValueError("must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")
    return value


def check_distinct(value: list[str]) -> list[str]:
    """Each tag once (compared as given: `Invoice` and `invoice` are two tags)."""
    for index, tag in enumerate(value):
        if tag in value[:index]:
            raise ValueError(f"tag {index} repeats tag {value.index(tag)}")
    return value


def check_metadata(value: Any) -> dict[str, str]:
    """An object of at most MAX_METADATA_KEYS string values, MAX_METADATA_BYTES in all."""
    if not isinstance(value, dict):
        raise ValueError("must be an object whose values are strings")
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"at most {MAX_METADATA_KEYS} keys; {len(value)} given")
    size = 0
    for position, (key, item) in enumerate(value.items()):
        if not METADATA_KEY.fullmatch(key):
            raise ValueError(
                f"key {position} must be 1 to 40 characters of A-Z, a-z, 0-9, '_', '.' and '-'"
            )
        if not isinstance(item, str):
            raise ValueError(f"the value of {key!r} must be a string")
        if (found := CONTROL.search(item)) is not None:
            raise ValueError(
                f"the value of {key!r} must not contain control character U+{ord(found[0]):04X}"
            )
        size += len(key.encode("utf-8")) + len(item.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ValueError(
            f"holds {size} bytes (keys and values, UTF-8); at most {MAX_METADATA_BYTES}"
        )
    return value


Tags = Annotated[
    list[Annotated[StrictStr, AfterValidator(check_tag)]],
    BeforeValidator(check_tag_count),
    AfterValidator(check_distinct),
]
# The whole object in one validator: a key that breaks the rule must not become part of an
# error's location (pydantic would put it there, whatever its length or characters).
Metadata = Annotated[dict[str, str], BeforeValidator(check_metadata)]


def request_extras(
    tags: Sequence[str], metadata: Mapping[str, str], route_metadata: Mapping[str, str]
) -> RequestExtras:
    """The client's tags and metadata merged with the route's own metadata (the /api/v1
    routes' `user_id`); a key given by both is 400 rather than one value silently lost."""
    clash = sorted(route_metadata.keys() & metadata.keys())
    if clash:
        raise ApiError(
            400,
            "The request has invalid fields.",
            [FieldError("metadata", f"{clash[0]!r} is set by this route; choose another key")],
        )
    return RequestExtras(metadata={**route_metadata, **metadata}, tags=tuple(tags))
