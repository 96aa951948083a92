"""What the dashboard shows, as plain values: a search parsed, the snapshot of the service's
state (counts, sends per minute, one page of recent requests) and a request's history.

The page's first render and its refreshes (`/dashboard/data`) show the same `snapshot()`, so
that the script only puts new values where the template put the first ones. No Flask here but
`ApiError` for a bad query parameter; every value stays text for the template's autoescape and
the script's textContent to show.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mailservice.delivery.gate_backends import Pause
from mailservice.errors import ApiError, FieldError
from mailservice.stores.contract import EmailStatus, StatusRecord, StatusStore
from mailservice.stores.listing import PAGE_MAX, Search, parse_cursor

PAGE_DEFAULT = 25
QUERY_MAX = 320  # characters of a search: an address is at most 254
TAG = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the tag rule of api/client_fields.py
CHART_WIDTH, CHART_HEIGHT, BAR_WIDTH = 600, 120, 8  # the SVG's geometry, 10 per minute


@dataclass(frozen=True, slots=True)
class Query:
    """A search box's text, understood: an id (exact), a recipient, a tag, or nothing.
    `problem` says why a text that is none of these finds nothing."""

    text: str = ""
    request_id: str | None = None
    search: Search | None = None
    problem: str | None = None


def parse_query(raw: str) -> Query:
    """A UUID is a request id, a text with `@` a recipient, a tag otherwise."""
    text = raw.strip()
    if not text:
        return Query()
    if len(text) > QUERY_MAX:
        return Query(text[:QUERY_MAX], problem=f"A search is at most {QUERY_MAX} characters.")
    try:
        return Query(text, request_id=str(uuid.UUID(text)))
    except ValueError:
        pass
    if "@" in text:
        return Query(text, search=Search(recipient=text))
    if TAG.fullmatch(text):
        return Query(text, search=Search(tag=text))
    return Query(text, problem="Search by a request id, a recipient's address or a tag.")


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return PAGE_DEFAULT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= PAGE_MAX:
        raise ApiError(
            400,
            "The request has invalid fields.",
            [FieldError("limit", f"must be a whole number from 1 to {PAGE_MAX}")],
        )
    return int(raw)


def parse_before(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        parse_cursor(raw)
    except ValueError:
        raise ApiError(
            400,
            "The request has invalid fields.",
            [FieldError("before", "must be the `next` cursor of a page")],
        ) from None
    return raw


def shown_time(moment: datetime, precise: bool = False) -> str:
    """A time as the dashboard shows it: UTC, to the second (`precise`: the millisecond)."""
    if precise:
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def row(record: StatusRecord) -> dict[str, Any]:
    """One request as a row of the list."""
    return {
        "request_id": record.request_id,
        "created": shown_time(record.created_at),
        "sender": record.sender,
        "recipients": list(record.recipients),
        "status": str(record.status),
        "attempts": record.attempts,
        "error": record.error or "",
        "tags": list(record.tags),
    }


def snapshot(
    store: StatusStore,
    query: Query,
    limit: int,
    before: str | None,
    paused: Mapping[str, Pause] | None = None,
) -> dict[str, Any]:
    """Everything the page shows of the service's state, in one JSON-able value; `paused`:
    the sender accounts paused now (delivery/account_gate.py)."""
    counts = store.counts()
    sends = store.sends_per_minute()
    records: list[StatusRecord] = []
    next_cursor = None
    if query.request_id is not None:
        found = store.get(query.request_id)
        records = [found] if found is not None else []
    elif query.problem is None:
        page = store.recent(limit, before, query.search)
        records, next_cursor = list(page.records), page.before
    return {
        "counts": {str(status): counts[status] for status in EmailStatus},
        "paused": [
            {
                "sender": account,
                "reason": pause.reason,
                "until": shown_time(datetime.fromtimestamp(pause.until, UTC)),
            }
            for account, pause in sorted((paused or {}).items())
        ],
        "sends": [{"minute": m.minute, "sent": m.sent, "failed": m.failed} for m in sends],
        "requests": [row(record) for record in records],
        "next": next_cursor,
        "query": query.text,
        "problem": query.problem,
    }


def chart_bars(sends: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The chart's bars: each minute's sent bar, its failed bar stacked on top, and a label;
    dashboard.js draws the same from the same numbers."""
    top = max([1, *(s["sent"] + s["failed"] for s in sends)])
    bars = []
    for index, minute in enumerate(sends):
        sent_h = minute["sent"] / top * CHART_HEIGHT
        failed_h = minute["failed"] / top * CHART_HEIGHT
        bars.append(
            {
                "x": index * (CHART_WIDTH // len(sends)) + 1,
                "sent_y": round(CHART_HEIGHT - sent_h, 2),
                "sent_h": round(sent_h, 2),
                "failed_y": round(CHART_HEIGHT - sent_h - failed_h, 2),
                "failed_h": round(failed_h, 2),
                "label": bar_label(minute),
            }
        )
    return {
        "bars": bars,
        "top": top,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "bar_width": BAR_WIDTH,
        "total": sum(s["sent"] + s["failed"] for s in sends),
    }


def bar_label(minute: Mapping[str, Any]) -> str:
    return f"{minute['minute'][11:]} UTC: {minute['sent']} sent, {minute['failed']} failed"


def history(record: StatusRecord) -> list[dict[str, Any]]:
    """A request's state changes, oldest first; a record stored before histories were kept
    shows what it has: its current state."""
    entries = record.history or (record.noted().history[-1],)
    return [
        {
            "at": shown_time(entry.at, precise=True),
            "status": str(entry.status),
            "attempts": entry.attempts,
            "error": entry.error or "",
        }
        for entry in entries
    ]
