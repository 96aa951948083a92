"""What the operator's dashboard reads from a store, and the bounds that keep each read small.

`StatusStore.recent()` answers a `RecentPage`: the newest requests, newest first, in the order
(`created_at`, request id) descending, which every backend keeps an index for (a sorted list in
memory, an index on `created_at` in SQLite, the sorted set `mail:recent` in Redis). Only the
newest `RECENT_WINDOW` requests are listed or searched: one call reads at most that many
records, however many the store holds. A page's `before` is the cursor of the next (older)
page: `<created_at in epoch microseconds>_<request id>`, the same on every backend.

A `Search` matches a request having the recipient (compared without regard to ASCII letter
case, as addresses are in practice) and the tag (exactly, as tags are kept). Backends that
store recipients and tags as JSON text match them as text: `json_needle()` is the quoted
JSON form of one value, which can only match a whole element of such a list.

`StatusStore.sends_per_minute()` reads counters per minute (`minute_of()`: UTC,
`YYYY-MM-DDTHH:MM`), counted when a request becomes final and kept `MINUTES_KEPT` minutes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mailservice.stores.contract import StatusRecord

RECENT_WINDOW = 10_000  # the newest requests the list and its search cover
PAGE_MAX = 100  # rows one recent() call may answer
CHART_MINUTES = 60  # the chart's minutes, the current one last
MINUTES_KEPT = 120  # per-minute counters older than this are dropped
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """`text` with A-Z lowered and nothing else changed (SQLite's lower() and Lua's
    string.lower() do the same, so that every backend compares alike)."""
    return text.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class Search:
    """What the recent list is narrowed to; a field left None matches every request."""

    recipient: str | None = None
    tag: str | None = None

    def matches(self, record: StatusRecord) -> bool:
        if self.recipient is not None:
            wanted = ascii_lower(self.recipient)
            if not any(ascii_lower(r) == wanted for r in record.recipients):
                return False
        return self.tag is None or self.tag in record.tags

    @property
    def recipient_needle(self) -> str:
        """The recipient as the lowered JSON text of a stored recipient list holds it."""
        return "" if self.recipient is None else json_needle(ascii_lower(self.recipient))

    @property
    def tag_needle(self) -> str:
        return "" if self.tag is None else json_needle(self.tag)


def json_needle(value: str) -> str:
    """One list element as `json.dumps` of the list writes it (quoted, ASCII escapes)."""
    return json.dumps(value)


@dataclass(frozen=True, slots=True)
class RecentPage:
    """One page of the recent list; `before` is the next page's cursor, None on the last."""

    records: tuple[StatusRecord, ...]
    before: str | None = None


def created_micros(moment: datetime) -> int:
    """A creation time as whole microseconds since the epoch (exact: no float on the way)."""
    return (moment - EPOCH) // _MICROSECOND


# The last microsecond a datetime can hold: a cursor past it names no time (OverflowError).
MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + micros * _MICROSECOND


def sort_key(record: StatusRecord) -> tuple[int, str]:
    """Where a record stands in the recent list (the list is this key, descending)."""
    return created_micros(record.created_at), record.request_id


def cursor_of(record: StatusRecord) -> str:
    """The cursor of the page after the one `record` ends."""
    micros, request_id = sort_key(record)
    return f"{micros}_{request_id}"


def parse_cursor(cursor: str) -> tuple[int, str]:
    """(microseconds, request id) of a cursor; ValueError when it is not one."""
    micros, sep, request_id = cursor.partition("_")
    if not sep or not micros.isascii() or not micros.isdigit() or int(micros) > MAX_MICROS:
        raise ValueError("not a cursor of the recent list")
    if not request_id or len(request_id) > 64 or not request_id.isascii():
        raise ValueError("not a cursor of the recent list")
    return int(micros), request_id


def page_of(found: list[StatusRecord], limit: int) -> RecentPage:
    """A page from up to `limit` + 1 records found in order: the extra one, if found, says
    that there is a next page."""
    if len(found) > limit:
        return RecentPage(tuple(found[:limit]), cursor_of(found[limit - 1]))
    return RecentPage(tuple(found))


def check_limit(limit: int) -> int:
    """A page size between 1 and PAGE_MAX; ValueError otherwise."""
    if not 1 <= limit <= PAGE_MAX:
        raise ValueError(f"a page holds 1 to {PAGE_MAX} requests")
    return limit


@dataclass(frozen=True, slots=True)
class MinuteSends:
    """Requests that ended in one minute (UTC, `YYYY-MM-DDTHH:MM`)."""

    minute: str
    sent: int
    failed: int


def minute_of(moment: datetime) -> str:
    """The per-minute counter a final status saved at `moment` counts in."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def chart_minutes(now: datetime) -> list[str]:
    """The chart's minutes, oldest first, ending with `now`'s."""
    return [minute_of(now - timedelta(minutes=back)) for back in range(CHART_MINUTES - 1, -1, -1)]
