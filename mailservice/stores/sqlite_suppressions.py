"""The SQLite store's suppression lists: the `suppressions` table of schema version 6.

One statement per call, through the store's own connection and lock (`transaction`, which
turns sqlite3 errors into StoreError). An expired row is never answered; `purge_expired()`
deletes them (`PURGE`). The listing walks the primary key (account, address) from the cursor.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from mailservice.stores.suppressions import (
    Suppression,
    SuppressionPage,
    cursor_of,
    epoch,
    from_epoch,
)

Transaction = Callable[..., AbstractContextManager[sqlite3.Connection]]

UPSERT = (
    "INSERT INTO suppressions (account, address, reason, created_at, until)"
    " VALUES (:account, :address, :reason, :created_at, :until)"
    " ON CONFLICT (account, address) DO UPDATE SET reason = excluded.reason,"
    " created_at = excluded.created_at, until = excluded.until"
)
COLUMNS = "account, address, reason, created_at, until"
PURGE = "DELETE FROM suppressions WHERE until <= :now"
CHUNK = 500  # addresses per SELECT: under SQLite's oldest limit of 999 variables


class SqliteSuppressions:
    """The suppression lists in the store's file."""

    def __init__(self, transaction: Transaction, clock: Callable[[], float] = time.time) -> None:
        self._transaction = transaction
        self._clock = clock

    def suppress(self, entry: Suppression) -> None:
        params = {
            "account": entry.account,
            "address": entry.address,
            "reason": entry.reason,
            "created_at": epoch(entry.created_at),
            "until": epoch(entry.until),
        }
        with self._transaction(writes=True) as db:
            db.execute(UPSERT, params)

    def suppressed(self, account: str, addresses: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        now = self._clock()
        with self._transaction() as db:
            for start in range(0, len(addresses), CHUNK):
                chunk = list(addresses[start : start + CHUNK])
                rows = db.execute(
                    "SELECT address, reason FROM suppressions WHERE account = ? AND until > ?"  # noqa: S608
                    f" AND address IN ({', '.join('?' * len(chunk))})",
                    (account, now, *chunk),
                ).fetchall()
                found.update((row[0], row[1]) for row in rows)
        return found

    def suppressions(
        self, account: str | None, limit: int, after: tuple[str, str] | None
    ) -> SuppressionPage:
        where = ["until > :now"]
        params: dict[str, object] = {"now": self._clock(), "limit": limit + 1}
        if account is not None:
            where.append("account = :account")
            params["account"] = account
        if after is not None:
            where.append("(account, address) > (:after_account, :after_address)")
            params["after_account"], params["after_address"] = after
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM suppressions WHERE {' AND '.join(where)}"  # noqa: S608
                " ORDER BY account, address LIMIT :limit",
                params,
            ).fetchall()
        entries = [
            Suppression(row[0], row[1], row[2], from_epoch(row[3]), from_epoch(row[4]))
            for row in rows
        ]
        if len(entries) > limit:
            last = entries[limit - 1]
            return SuppressionPage(tuple(entries[:limit]), cursor_of(last.account, last.address))
        return SuppressionPage(tuple(entries))

    def unsuppress(self, account: str, address: str) -> bool:
        with self._transaction(writes=True) as db:
            cursor = db.execute(
                "DELETE FROM suppressions WHERE account = ? AND address = ? AND until > ?",
                (account, address, self._clock()),
            )
        return cursor.rowcount == 1
