"""The SQLite store's reads for the dashboard (listing.py), each bounded by an index or a table
of counters that the schema's triggers keep (sqlite_schema.py, versions 4 and 5).

The recent list ends at the row RECENT_WINDOW from the newest (one index walk, `LIMIT 1
OFFSET`); a page is the rows between its cursor and there, newest first, through the index
`requests_created`, with a search matched on the stored JSON text (`listing.json_needle`).
The functions take the store's connection under its lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mailservice.stores.codec import RECORD_FIELDS, record_from_fields
from mailservice.stores.contract import EmailStatus
from mailservice.stores.listing import RECENT_WINDOW, RecentPage, Search, from_micros, page_of

NEWEST_FIRST = "ORDER BY created_at DESC, request_id DESC"
RECENT_EDGE = f"SELECT created_at, request_id FROM requests {NEWEST_FIRST} LIMIT 1 OFFSET :skip"
RECENT = (
    f"SELECT request_id, {', '.join(RECORD_FIELDS)} FROM requests INDEXED BY requests_created"
    " WHERE (created_at, request_id) < (:at, :id)"
    " AND (created_at, request_id) >= (:edge_at, :edge_id)"
    " AND (expires_at IS NULL OR expires_at > :now)"
    " AND (:recipient = '' OR instr(lower(recipients), :recipient) > 0)"
    " AND (:tag = '' OR instr(tags, :tag) > 0)"
    f" {NEWEST_FIRST} LIMIT :limit"
)
NEWEST = ("~", "")  # after every row: created_at starts with a digit
OLDEST = ("", "")  # before every row


def recent(
    db: sqlite3.Connection,
    limit: int,
    cursor: tuple[int, str] | None,
    search: Search,
    now: float,
) -> RecentPage:
    """One page of the recent list (StatusStore.recent) after `cursor`."""
    at, request_id = NEWEST if cursor is None else (from_micros(cursor[0]).isoformat(), cursor[1])
    edge = db.execute(RECENT_EDGE, {"skip": RECENT_WINDOW - 1}).fetchone() or OLDEST
    rows = db.execute(
        RECENT,
        {
            "at": at,
            "id": request_id,
            "edge_at": edge[0],
            "edge_id": edge[1],
            "now": now,
            "recipient": search.recipient_needle,
            "tag": search.tag_needle,
            "limit": limit + 1,
        },
    ).fetchall()
    found = [record_from_fields(row[0], row[1:]) for row in rows]
    return page_of([record for record in found if record is not None], limit)


def counts(db: sqlite3.Connection) -> dict[EmailStatus, int]:
    rows = dict(db.execute("SELECT status, n FROM status_counts").fetchall())
    return {status: int(rows.get(str(status), 0)) for status in EmailStatus}


def finished_in(
    db: sqlite3.Connection, minutes: Sequence[str]
) -> dict[tuple[str, EmailStatus], int]:
    if not minutes:
        return {}
    rows = db.execute(
        "SELECT minute, status, n FROM finished_per_minute WHERE minute BETWEEN ? AND ?",
        (min(minutes), max(minutes)),
    ).fetchall()
    wanted = set(minutes)
    return {(m, EmailStatus(status)): int(n) for m, status, n in rows if m in wanted}
