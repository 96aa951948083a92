"""The SQLite status store (`sqlite:///path/to/file.db`): the durable choice for one machine.

Standard library sqlite3 in WAL mode with `synchronous=NORMAL`: a committed request survives a
crash or `kill -9` of the process (not a power cut in the last moments before a checkpoint).
Several processes on the machine may share the file: leases live in the `owners` table, and
every check-and-write (owner check, compare-and-set of `replace`, take-over, Idempotency-Key)
is one SQL statement or one `BEGIN IMMEDIATE` transaction; a final request's pending webhook is
found through the partial index `requests_webhook_pending` (each call going on after the last
one's last row, in `updated_at` order) and taken over like an unfinished request, and the
scheduled requests through `requests_scheduled` (by send_at). A failed request's content waits
in `kept_payload` until `kept_until`. Expired statuses and kept content are deleted by
`purge_expired()`. The dashboard's reads (`sqlite_listing.py`) go through an
index and the counters that the schema's triggers keep in the same statement as each write.
The file's schema version and its migrations live in `sqlite_schema.py`, the UPDATE statements
of `save()` and `replace()` in `sqlite_writes.py`, the suppression lists (the `suppressions`
table) in `sqlite_suppressions.py`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import mailservice.stores.sqlite_listing as sqlite_listing
from mailservice.errors import ConfigError, StoreError
from mailservice.stores.codec import (
    RECORD_FIELDS,
    moment_to_text,
    record_from_fields,
    record_to_fields,
)
from mailservice.stores.contract import (
    FAILED_CONTENT_TTL,
    IDEMPOTENCY_TTL,
    EmailStatus,
    IdempotencyClaim,
    OutageLog,
    StatusRecord,
    StatusStore,
    WebhookState,
    check_schedule,
)
from mailservice.stores.listing import RecentPage, Search, check_limit, parse_cursor
from mailservice.stores.sqlite_schema import open_database
from mailservice.stores.sqlite_suppressions import PURGE as PURGE_SUPPRESSIONS
from mailservice.stores.sqlite_suppressions import SqliteSuppressions
from mailservice.stores.sqlite_writes import FORGET_KEPT, KEPT_OF, replace_update, save_update

logger = logging.getLogger(__name__)

COLUMNS = ", ".join(RECORD_FIELDS)
LIVE_OWNERS = "SELECT owner FROM owners WHERE lease_until > :now"
# Final (only a final save sets `expires_at`), unexpired, webhook pending, owner dead or the
# asker, after the last call's last row (:after_at, :after_id). INDEXED BY: the planner, knowing
# no row counts, chose requests_expiry, which would scan every status of STATUS_TTL; the partial
# index holds only the pending webhooks.
WEBHOOK_ORPHANS = (
    "SELECT request_id, updated_at FROM requests INDEXED BY requests_webhook_pending"
    f" WHERE webhook = '{WebhookState.PENDING}' AND expires_at > :now"
    " AND (updated_at, request_id) > (:after_at, :after_id)"
    f" AND (owner = :owner OR owner NOT IN ({LIVE_OWNERS}))"
    " ORDER BY updated_at, request_id LIMIT :limit"
)
CLAIM_OF = "SELECT fingerprint, request_id FROM idempotency WHERE scope = ? AND expires_at > ?"
# The scheduled requests due by :now (codec.moment_to_text), earliest first, through the
# partial index of schema version 5 (INDEXED BY: no plan may sort or scan the table instead).
DUE = (
    "SELECT request_id FROM requests INDEXED BY requests_scheduled"
    f" WHERE status = '{EmailStatus.SCHEDULED}' AND send_at <= :now"
    " ORDER BY send_at, request_id LIMIT :limit"
)
NOT_SCHEDULED = f"status <> '{EmailStatus.SCHEDULED}'"  # what recovery may claim
SCAN_START = ("", "")  # before every row: updated_at is never empty
GET_MANY_CHUNK = 500  # ids per SELECT of get_many(): under SQLite's oldest limit of 999 variables
BUSY_TIMEOUT = 10.0  # seconds any statement, and the start-up, waits for another process's lock


class SqliteStatusStore(StatusStore):
    """Status records in one SQLite file; one connection per store, behind a lock."""

    durable = True

    def __init__(
        self, path: str, ttl: int, clock=time.time, failed_content_ttl: int = FAILED_CONTENT_TTL
    ) -> None:
        super().__init__(ttl, failed_content_ttl)
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._outage = OutageLog(logger)  # a full disk, a locked or broken file
        self._failed_writing = False  # the last failure was a write's (see _transaction)
        self._webhook_scan = SCAN_START  # where webhook_orphans() goes on
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = open_database(path, timeout=BUSY_TIMEOUT)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"STATUS_STORE_URL: cannot open SQLite file {path}: {exc}") from exc
        self._lists = SqliteSuppressions(self._transaction, clock)

    @classmethod
    def from_url(
        cls, url: str, ttl: int, failed_content_ttl: int = FAILED_CONTENT_TTL
    ) -> SqliteStatusStore:
        """`sqlite:///relative.db` or `sqlite:////absolute/path.db`."""
        path = urlsplit(url).path.removeprefix("/")
        if not path:
            raise ConfigError("STATUS_STORE_URL: give a file, e.g. sqlite:///mail.db")
        return cls(path, ttl, failed_content_ttl=failed_content_ttl)

    @contextmanager
    def _transaction(
        self, immediate: bool = False, writes: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; BEGIN IMMEDIATE ... COMMIT when `immediate`.

        A full disk refuses writes while reads go on: only a write that succeeds ends an
        outage a write began (`writes`, implied by `immediate`), so that the outage is logged
        once when it starts and once when it ends, not again at every read in between.
        """
        writes = writes or immediate
        with self._lock:
            try:
                if immediate:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield self._db
                        self._db.execute("COMMIT")
                    except BaseException:
                        # A failed COMMIT (SQLITE_FULL) may or may not have rolled back by
                        # itself; a transaction left open would refuse every BEGIN after it.
                        if self._db.in_transaction:
                            self._db.execute("ROLLBACK")
                        raise
                else:
                    yield self._db
            except sqlite3.Error as exc:
                self._failed_writing = writes
                self._outage.failed(exc)
                raise StoreError(f"sqlite: {exc}") from exc
            if writes or not self._failed_writing:
                self._outage.succeeded()

    def create_many(
        self,
        items: Sequence[tuple[StatusRecord, str]],
        idempotency: IdempotencyClaim | None = None,
    ) -> IdempotencyClaim | None:
        now = self._clock()
        for record, _ in items:
            check_schedule(record)
        rows = [
            (record.request_id, *record_to_fields(record).values(), payload)
            for record, payload in items
        ]
        with self._transaction(immediate=True) as db:
            if idempotency is not None:
                row = db.execute(CLAIM_OF, (idempotency.scope, now)).fetchone()
                if row is not None:
                    return IdempotencyClaim(idempotency.scope, row[0], row[1])
                db.execute(
                    "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?)",
                    (
                        idempotency.scope,
                        idempotency.fingerprint,
                        idempotency.request_id,
                        now + IDEMPOTENCY_TTL,
                    ),
                )
            db.executemany(
                f"INSERT INTO requests (request_id, {COLUMNS}, payload) "
                f"VALUES (?, {', '.join('?' * len(RECORD_FIELDS))}, ?)",
                rows,
            )
        return None

    def idempotency_claim(self, scope: str) -> IdempotencyClaim | None:
        with self._transaction() as db:
            row = db.execute(CLAIM_OF, (scope, self._clock())).fetchone()
        return None if row is None else IdempotencyClaim(scope, row[0], row[1])

    def save(self, record: StatusRecord) -> bool:
        check_schedule(record)
        now, ttl, kept = self._clock(), self.ttl, self.kept_seconds
        sql, params = save_update(record, now, ttl=ttl, kept_seconds=kept)
        with self._transaction(writes=True) as db:
            return db.execute(sql, params).rowcount == 1

    def _replace(self, record: StatusRecord, expected: StatusRecord, restore: bool) -> bool:
        now, ttl, kept = self._clock(), self.ttl, self.kept_seconds
        sql, params = replace_update(record, expected, restore, now, ttl=ttl, kept_seconds=kept)
        with self._transaction(writes=True) as db:
            return db.execute(sql, params).rowcount == 1

    def get(self, request_id: str) -> StatusRecord | None:
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {COLUMNS} FROM requests WHERE request_id = ?"
                " AND (expires_at IS NULL OR expires_at > ?)",
                (request_id, self._clock()),
            ).fetchone()
        return None if row is None else record_from_fields(request_id, row)

    def get_many(self, request_ids: Sequence[str]) -> dict[str, StatusRecord]:
        ids = list(dict.fromkeys(request_ids))
        found: dict[str, StatusRecord] = {}
        if not ids:
            return found
        now = self._clock()
        with self._transaction() as db:
            for start in range(0, len(ids), GET_MANY_CHUNK):
                chunk = ids[start : start + GET_MANY_CHUNK]
                rows = db.execute(
                    f"SELECT request_id, {COLUMNS} FROM requests"
                    f" WHERE request_id IN ({', '.join('?' * len(chunk))})"
                    " AND (expires_at IS NULL OR expires_at > ?)",
                    (*chunk, now),
                ).fetchall()
                for request_id, *fields in rows:
                    found[request_id] = record_from_fields(request_id, fields)
        return found

    def payload(self, request_id: str) -> str | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT payload FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        return None if row is None else row[0]

    def kept_payload(self, request_id: str) -> str | None:
        params = {"id": request_id, "now": self._clock()}
        with self._transaction() as db:
            row = db.execute(KEPT_OF, params).fetchone()
            if row is None or row[1]:
                return None if row is None else row[0]
            # Read past its time: deleted now rather than at the next purge_expired().
            db.execute(f"{FORGET_KEPT} AND request_id = :id", params)
        return None

    def ping(self) -> None:
        with self._transaction() as db:
            db.execute("SELECT 1").fetchone()

    def heartbeat(self, owner: str, lease_seconds: float) -> None:
        with self._transaction(writes=True) as db:
            db.execute(
                "INSERT INTO owners VALUES (?, ?)"
                " ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until",
                (owner, self._clock() + lease_seconds),
            )

    def orphans(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT request_id FROM requests WHERE payload IS NOT NULL AND {NOT_SCHEDULED}"
                f" AND owner NOT IN ({LIVE_OWNERS}) ORDER BY created_at LIMIT :limit",
                {"now": self._clock(), "limit": limit},
            ).fetchall()
        return [row[0] for row in rows]

    def claim(self, request_id: str, owner: str) -> tuple[StatusRecord, str] | None:
        with self._transaction(immediate=True) as db:
            cursor = db.execute(
                "UPDATE requests SET owner = :owner WHERE request_id = :id"
                f" AND payload IS NOT NULL AND {NOT_SCHEDULED}"
                f" AND (owner = :owner OR owner NOT IN ({LIVE_OWNERS}))",
                {"owner": owner, "id": request_id, "now": self._clock()},
            )
            if cursor.rowcount != 1:
                return None
            row = db.execute(
                f"SELECT {COLUMNS}, payload FROM requests WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        record = record_from_fields(request_id, row[:-1])
        return None if record is None else (record, row[-1])

    def take(self, request_id: str, from_owner: str, owner: str) -> tuple[StatusRecord, str] | None:
        # The owner lives in its own column only (no JSON column repeats it): the row read
        # back in the same transaction is the record as taken.
        with self._transaction(immediate=True) as db:
            cursor = db.execute(
                "UPDATE requests SET owner = :owner WHERE request_id = :id"
                " AND payload IS NOT NULL AND owner IN (:from_owner, :owner)",
                {"owner": owner, "id": request_id, "from_owner": from_owner},
            )
            if cursor.rowcount != 1:
                return None
            row = db.execute(
                f"SELECT {COLUMNS}, payload FROM requests WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        record = record_from_fields(request_id, row[:-1])
        return None if record is None else (record, row[-1])

    def due(self, now: datetime, limit: int) -> list[str]:
        if limit <= 0:
            return []
        with self._transaction() as db:
            rows = db.execute(DUE, {"now": moment_to_text(now), "limit": limit}).fetchall()
        return [row[0] for row in rows]

    def webhook_orphans(self, limit: int, owner: str) -> list[str]:
        if limit <= 0:
            return []
        with self._transaction() as db:
            after_at, after_id = self._webhook_scan
            rows = db.execute(
                WEBHOOK_ORPHANS,
                {
                    "now": self._clock(),
                    "owner": owner,
                    "limit": limit,
                    "after_at": after_at,
                    "after_id": after_id,
                },
            ).fetchall()
            # Fewer than asked for: the end was reached, and the next call starts over.
            self._webhook_scan = (rows[-1][1], rows[-1][0]) if len(rows) == limit else SCAN_START
        return [row[0] for row in rows]

    def claim_webhook(self, request_id: str, owner: str) -> StatusRecord | None:
        with self._transaction(immediate=True) as db:
            cursor = db.execute(
                "UPDATE requests SET owner = :owner WHERE request_id = :id"
                f" AND webhook = '{WebhookState.PENDING}' AND expires_at > :now"
                f" AND (owner = :owner OR owner NOT IN ({LIVE_OWNERS}))",
                {"owner": owner, "id": request_id, "now": self._clock()},
            )
            if cursor.rowcount != 1:
                return None
            row = db.execute(
                f"SELECT {COLUMNS} FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        return record_from_fields(request_id, row)

    def recent(
        self, limit: int, before: str | None = None, search: Search | None = None
    ) -> RecentPage:
        check_limit(limit)
        cursor = None if before is None else parse_cursor(before)
        with self._transaction() as db:
            return sqlite_listing.recent(db, limit, cursor, search or Search(), self._clock())

    def counts(self) -> dict[EmailStatus, int]:
        with self._transaction() as db:
            return sqlite_listing.counts(db)

    def _finished_in(self, minutes: Sequence[str]) -> dict[tuple[str, EmailStatus], int]:
        with self._transaction() as db:
            return sqlite_listing.finished_in(db, minutes)

    def purge_expired(self) -> None:
        now = self._clock()
        with self._transaction(writes=True) as db:
            db.execute("DELETE FROM requests WHERE expires_at <= ?", (now,))
            db.execute(FORGET_KEPT, {"now": now})
            db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
            db.execute(PURGE_SUPPRESSIONS, {"now": now})
            db.execute("DELETE FROM owners WHERE lease_until <= ?", (now - 86400,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
