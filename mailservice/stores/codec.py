"""A record as flat text fields, for backends that store strings (Redis hashes, SQLite rows).

`RECORD_FIELDS` is the one list of a record's stored fields; `record_to_fields()` and
`record_from_fields()` are the one codec every such backend uses. A field's stored name is its
attribute's, except `expires_at`, stored as `deliver_by`: SQLite's `expires_at` column is the
status's own TTL, not the request's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from mailservice.stores.contract import EmailStatus, HistoryEntry, StatusRecord, WebhookState

# A record as flat text fields, for backends that store strings (Redis hashes, SQLite rows).
RECORD_FIELDS = (
    "status",
    "sender",
    "recipients",
    "pending",
    "created_at",
    "updated_at",
    "attempts",
    "error",
    "refused",
    "owner",
    "metadata",
    "tags",
    "callback_url",
    "webhook",
    "history",
    "send_at",
    "deliver_by",  # the record's `expires_at`
)


def record_to_fields(record: StatusRecord) -> dict[str, str]:
    """The record as RECORD_FIELDS -> text."""
    return {
        "status": str(record.status),
        "sender": record.sender,
        "recipients": json.dumps(record.recipients),
        "pending": json.dumps(record.pending),
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "attempts": str(record.attempts),
        "error": "" if record.error is None else record.error,
        "refused": json.dumps(record.refused),
        "owner": record.owner,
        "metadata": json.dumps(record.metadata),
        "tags": json.dumps(record.tags),
        "callback_url": record.callback_url or "",
        "webhook": "" if record.webhook is None else str(record.webhook),
        "history": history_to_text(record.history),
        "send_at": moment_to_text(record.send_at),
        "deliver_by": moment_to_text(record.expires_at),
    }


def moment_to_text(moment: datetime | None) -> str:
    """An optional time as ISO text in UTC ('' for None): the same offset everywhere, so that
    stored times sort as text in time order (SQLite's index of scheduled requests)."""
    return "" if moment is None else moment.astimezone(UTC).isoformat()


def moment_from_text(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def history_to_text(history: Sequence[HistoryEntry]) -> str:
    """A history as JSON: one [status, ISO time, attempts, error or null] per entry."""
    return json.dumps(
        [[str(e.status), e.at.isoformat(), e.attempts, e.error] for e in history],
        separators=(",", ":"),
    )


def history_from_text(text: str | None) -> tuple[HistoryEntry, ...]:
    return tuple(
        HistoryEntry(EmailStatus(status), datetime.fromisoformat(at), int(attempts), error)
        for status, at, attempts, error in json.loads(text or "[]")
    )


def record_from_fields(request_id: str, values: Sequence[str | None]) -> StatusRecord | None:
    """The record from values in RECORD_FIELDS order; None if it has no status (unknown)."""
    fields = dict(zip(RECORD_FIELDS, values, strict=True))
    if not fields["status"]:
        return None
    return StatusRecord(
        request_id=request_id,
        status=EmailStatus(fields["status"]),
        sender=fields["sender"] or "",
        recipients=tuple(json.loads(fields["recipients"] or "[]")),
        pending=tuple(json.loads(fields["pending"] or "[]")),
        created_at=datetime.fromisoformat(fields["created_at"] or ""),
        updated_at=datetime.fromisoformat(fields["updated_at"] or ""),
        attempts=int(fields["attempts"] or 0),
        error=fields["error"] or None,
        refused=json.loads(fields["refused"] or "{}"),
        owner=fields["owner"] or "",
        # Records made before a field existed have none: each reads as its default.
        metadata=json.loads(fields["metadata"] or "{}"),
        tags=tuple(json.loads(fields["tags"] or "[]")),
        callback_url=fields["callback_url"] or None,
        webhook=WebhookState(fields["webhook"]) if fields["webhook"] else None,
        history=history_from_text(fields["history"]),
        send_at=moment_from_text(fields["send_at"]),
        expires_at=moment_from_text(fields["deliver_by"]),
    )
