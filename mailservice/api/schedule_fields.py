"""A send request's `send_at` and `expires_at` (API.md section 3, "Scheduled sends and
expiry"): ISO 8601 date-times with an offset, checked against the time of the request.

`OffsetDateTime` is the annotated type `SendRequest` declares for both: a string only (a
number is no time), parsed by `datetime.fromisoformat`, with an offset (`Z`, `+02:00`): a time
without one names no moment, so it is refused rather than guessed to be UTC. The value kept is
in UTC. The rules between the two and the clock (`send_at` at most MAX_SCHEDULE_DAYS ahead,
`expires_at` after now and after `send_at`) need the time of the request and the setting,
which the validation context carries (`SCHEDULE`, a `ScheduleRule`). Errors name the field and
never echo its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator

from mailservice.stores.contract import EmailStatus, utcnow

# The validation context's key (`SendRequest.model_validate(body, context=...)`) of the
# ScheduleRule; without it the rule is the default one at the time of validation.
SCHEDULE = "schedule"
DEFAULT_MAX_DAYS = 30  # MAX_SCHEDULE_DAYS's default
MAX_TEXT = 64  # characters: an ISO 8601 date-time with fractions and an offset is about 35
DAY_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class ScheduleRule:
    """The time a request is validated at, and MAX_SCHEDULE_DAYS."""

    now: datetime
    max_days: int = DEFAULT_MAX_DAYS


def parse_moment(value: Any) -> datetime:
    """An ISO 8601 date-time string with an offset, as UTC; ValueError saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string, such as 2026-12-01T09:00:00Z")
    if len(value) > MAX_TEXT:
        raise ValueError(f"is not an ISO 8601 date-time (longer than {MAX_TEXT} characters)")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            "is not an ISO 8601 date-time, such as 2026-12-01T09:00:00Z or "
            "2026-12-01T10:00:00+01:00"
        ) from None
    if moment.utcoffset() is None:
        raise ValueError("needs an offset (Z or +02:00): a time without one names no moment")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 moved past the range by its offset
        raise ValueError("is out of the range of dates") from None


OffsetDateTime = Annotated[datetime, BeforeValidator(parse_moment)]


def rule_of(context: Any) -> ScheduleRule:
    """The validation context's ScheduleRule, or the default one now."""
    rule = context.get(SCHEDULE) if isinstance(context, Mapping) else None
    return rule if isinstance(rule, ScheduleRule) else ScheduleRule(utcnow())


def check_send_at(send_at: datetime, rule: ScheduleRule) -> datetime:
    """At most `max_days` ahead (compared in seconds: a timedelta of a huge setting overflows).
    Now or in the past is no error: the request is sent at once."""
    if (send_at - rule.now).total_seconds() > rule.max_days * DAY_SECONDS:
        raise ValueError(f"is more than {rule.max_days} days ahead (MAX_SCHEDULE_DAYS)")
    return send_at


def check_expires_at(
    expires_at: datetime, send_at: datetime | None, rule: ScheduleRule
) -> datetime:
    """After now, and after `send_at` when there is one: a request that could only expire
    is refused rather than accepted to no end."""
    if expires_at <= rule.now:
        raise ValueError("must be in the future")
    if send_at is not None and expires_at <= send_at:
        raise ValueError("must be after send_at")
    return expires_at


def repeat_status(body: Any, now: datetime | None = None) -> EmailStatus:
    """What the 202 of a repeated Idempotency-Key says of a request (or a batch's message):
    `scheduled` while the body's `send_at` is still ahead, else `queued`. Read from the body
    (the same as the first one's), which need not pass validation today."""
    raw = body.get("send_at") if isinstance(body, Mapping) else None
    if raw is None:
        return EmailStatus.QUEUED
    try:
        send_at = parse_moment(raw)
    except ValueError:
        return EmailStatus.QUEUED
    return EmailStatus.SCHEDULED if send_at > (now or utcnow()) else EmailStatus.QUEUED
