"""A request's status transitions, as pure functions of its record: no store, no SMTP, no clock.

    (scheduled ->) queued -> sending -> (retrying -> sending ->) sent | failed
    queued | sending -> retrying (held for the sender's account: paused, or over its limit)
    scheduled | queued | retrying -> expired, once its expires_at came before it was sent
    sending -> expired, when a failed attempt's retry would start after its expires_at, or
        when it is recovered from a process that died mid-attempt (possibly delivered)

`taken_when_due()` is a scheduled request's way to `queued` when it falls due, `begin()` starts
an attempt, `delivered()` takes in what the server said of each recipient, `after_failure()`
decides between another attempt and the end, and `finish()` settles the final status: a
message someone received is `sent` (the others listed in `refused`), a message nobody received
is `failed`. `expire()` is the end of a request whose `expires_at` came before it could be
handed to the SMTP server: `expired()` says when, checked before an attempt starts, when a
scheduled request is taken, and by `after_failure()` for the retry it would otherwise wait for.
Each change of status is noted in the record's history (`StatusRecord.noted`). The caller
passes the time and the jitter in, so each function gives the same answer for the same
arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from mailservice.stores.contract import EmailStatus, StatusRecord

JITTER = (0.75, 1.25)  # a retry's delay is its backoff times a factor in this range
# The error of a request that expired before any attempt was made (API.md section 4); after
# failed attempts it is "expired: <the last one's reason>".
EXPIRED_UNSENT = "expired before it could be sent"
EXPIRED_INTERRUPTED = "expired: its process stopped during an attempt"


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after `delay` seconds; `record` is the `retrying` status to save."""

    record: StatusRecord
    delay: float


@dataclass(frozen=True, slots=True)
class Final:
    """The request has ended; `record` is its final status to save."""

    record: StatusRecord


Step = Retry | Final


def expired(record: StatusRecord, now: datetime) -> bool:
    """Whether the request's `expires_at` has come: it must not be handed to a server now."""
    return record.expires_at is not None and now >= record.expires_at


def expire(
    record: StatusRecord,
    *,
    now: datetime,
    deferred: Mapping[str, str] | None = None,
    possibly_delivered: bool = False,
) -> StatusRecord:
    """The final status of a request whose `expires_at` came before it was sent: `expired`,
    with the last attempt's reason when there was one (`sent` all the same when an earlier
    attempt delivered it to some recipients, as `finish()` settles a failure)."""
    if record.attempts and record.error:
        reason = f"expired: {record.error}"
    elif record.attempts:  # an attempt began and left no reason: its process stopped in it
        reason = EXPIRED_INTERRUPTED
    else:
        reason = EXPIRED_UNSENT
    return finish(
        record,
        EmailStatus.EXPIRED,
        reason,
        now=now,
        deferred=deferred,
        possibly_delivered=possibly_delivered,
    )


def taken_when_due(record: StatusRecord, now: datetime, owner: str) -> StatusRecord:
    """A scheduled request taken up by `owner` when due: `queued`, or `expired` when its
    `expires_at` came first."""
    taken = replace(record, owner=owner, updated_at=now)
    if expired(taken, now):
        return expire(taken, now=now)
    return replace(taken, status=EmailStatus.QUEUED).noted()


def held(record: StatusRecord, reason: str, now: datetime, uncount: bool = False) -> StatusRecord:
    """A request that waits for its sender's account (paused, or over its daily limit):
    `retrying` with the reason, its attempts as they were (`uncount`: the attempt that met
    the account's limit is not counted either)."""
    attempts = record.attempts - 1 if uncount and record.attempts else record.attempts
    return replace(
        record, status=EmailStatus.RETRYING, error=reason, attempts=attempts, updated_at=now
    ).noted()


def begin(record: StatusRecord, now: datetime) -> StatusRecord:
    """The `sending` status of the next attempt."""
    return replace(
        record, status=EmailStatus.SENDING, attempts=record.attempts + 1, updated_at=now
    ).noted()


def delivered(
    record: StatusRecord, refused: Mapping[str, str], deferred: Mapping[str, str]
) -> StatusRecord:
    """After a transaction: refused recipients recorded, the deferred ones still pending."""
    return replace(record, refused={**record.refused, **refused}, pending=tuple(deferred))


def retry_delay(attempts: int, backoff: float, jitter: float) -> float:
    """Seconds before the attempt after `attempts` failed ones: doubling, times the jitter."""
    return backoff * 2 ** (attempts - 1) * jitter


def after_failure(
    record: StatusRecord,
    reason: str,
    *,
    max_attempts: int,
    backoff: float,
    jitter: float,
    now: datetime,
    deferred: Mapping[str, str],
    possibly_delivered: bool,
) -> Step:
    """A transient failure (or recipients deferred): another attempt, or the end if none is
    left, or if the next one would start after the request's `expires_at` (expired now, not
    after a wait)."""
    if record.attempts >= max_attempts:
        return Final(
            finish(
                record,
                EmailStatus.FAILED,
                f"{reason} (after {record.attempts} attempts)",
                now=now,
                deferred=deferred,
                possibly_delivered=possibly_delivered,
            )
        )
    delay = retry_delay(record.attempts, backoff, jitter)
    # In seconds, not as a timedelta: a backoff doubled many times overflows one.
    if record.expires_at is not None and (record.expires_at - now).total_seconds() <= delay:
        return Final(
            expire(
                replace(record, error=reason),
                now=now,
                deferred=deferred,
                possibly_delivered=possibly_delivered,
            )
        )
    retrying = replace(record, status=EmailStatus.RETRYING, error=reason, updated_at=now).noted()
    return Retry(retrying, delay)


def finish(
    record: StatusRecord,
    status: EmailStatus,
    error: str | None,
    *,
    now: datetime,
    deferred: Mapping[str, str] | None = None,
    possibly_delivered: bool = False,
) -> StatusRecord:
    """The final status: `sent` when someone has the message, else `failed` (or `expired`)
    with the reason."""
    deferred = deferred or {}
    delivered_to = [r for r in record.recipients if r not in record.pending + tuple(record.refused)]
    unsent = status in (EmailStatus.FAILED, EmailStatus.EXPIRED)
    if unsent and delivered_to:
        # Someone has the message: it was sent; each of the rest is listed as refused with its
        # own last "<code> <text>" where it has one (API.md section 4).
        refused = dict(record.refused)
        refused.update({r: deferred.get(r) or error or "not delivered" for r in record.pending})
        record = replace(record, refused=refused, pending=())
        status, error = EmailStatus.SENT, None
    elif status is EmailStatus.SENT and not delivered_to:
        status = EmailStatus.FAILED
        error = "every recipient was refused: " + "; ".join(
            f"{a}: {r}" for a, r in record.refused.items()
        )
    if status in (EmailStatus.FAILED, EmailStatus.EXPIRED) and possibly_delivered:
        error = f"{error}; an earlier attempt was possibly delivered (same Message-ID)"
    return replace(record, status=status, error=error, updated_at=now).noted()
