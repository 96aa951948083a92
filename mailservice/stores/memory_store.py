"""The memory store (`memory://`): a dict behind one lock, for one process."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from mailservice.stores.contract import (
    FAILED_CONTENT_TTL,
    IDEMPOTENCY_TTL,
    EmailStatus,
    IdempotencyClaim,
    StatusRecord,
    StatusStore,
    check_schedule,
    due_at,
)
from mailservice.stores.listing import (
    MINUTES_KEPT,
    RECENT_WINDOW,
    RecentPage,
    Search,
    check_limit,
    created_micros,
    minute_of,
    page_of,
    parse_cursor,
    sort_key,
)
from mailservice.stores.memory_suppressions import MemorySuppressions

MEMORY_MAX_FINISHED = 100_000


class MemoryStatusStore(StatusStore):
    """A dict behind one lock. For one process; everything is gone when it exits.

    Finished statuses are kept for `ttl` seconds but at most `max_finished` of them (the
    oldest go first), and as many Idempotency-Keys, so that memory stays bounded however many
    requests a day brings; `memory://?max=N` sets it. The dashboard's reads have their own
    bounded structures, changed under the same lock as the records: the newest
    RECENT_WINDOW ids sorted by creation, the counters by status and those per minute. A
    failed request's content waits apart from the payloads, with its deadline; scheduled
    requests are a list sorted by send_at. The suppression lists are `MemorySuppressions`.
    """

    def __init__(
        self,
        ttl: int,
        clock: Callable[[], float] = time.monotonic,
        max_finished: int = MEMORY_MAX_FINISHED,
        failed_content_ttl: int = FAILED_CONTENT_TTL,
    ) -> None:
        super().__init__(ttl, failed_content_ttl)
        self.max_finished = max_finished
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, StatusRecord] = {}
        self._payloads: dict[str, str] = {}
        # Final request id -> when its status expires, oldest first: one entry per status,
        # moved to the end when a final record is saved again (its webhook's outcome), so
        # that `max_finished` counts statuses and a status expires `ttl` after its last save,
        # as on the durable stores.
        self._expiry: OrderedDict[str, float] = OrderedDict()
        # Failed request id -> (deadline, its content), soonest first (one kept_seconds each).
        self._kept: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._claims: dict[str, IdempotencyClaim] = {}
        self._claim_expiry: deque[tuple[float, str]] = deque()
        self._recent: list[tuple[int, str]] = []  # (created, id) ascending, RECENT_WINDOW at most
        self._scheduled: list[tuple[int, str]] = []  # (send_at, id) ascending, scheduled ones
        self._counts: Counter[EmailStatus] = Counter()
        self._finished: dict[str, Counter[EmailStatus]] = {}  # minute -> final statuses
        self._lists = MemorySuppressions()

    def _counted(self, old: StatusRecord | None, new: StatusRecord) -> None:
        """The counters after `old` (None: a new request) became `new`; under the lock."""
        if old is not None and old.status is new.status:
            return
        if old is not None and not old.status.final and self._counts[old.status] > 0:
            self._counts[old.status] -= 1
        self._counts[new.status] += 1
        if new.status.final and (old is None or not old.status.final):
            minute = minute_of(new.updated_at)
            bucket = self._finished.get(minute)
            if bucket is None:  # a new minute: the time to drop those too old to show
                oldest = minute_of(new.updated_at - timedelta(minutes=MINUTES_KEPT))
                for gone in [m for m in self._finished if m < oldest]:
                    del self._finished[gone]
                bucket = self._finished[minute] = Counter()
            bucket[new.status] += 1

    def _purge(self, now: float) -> None:
        while self._expiry and (
            next(iter(self._expiry.values())) <= now or len(self._expiry) > self.max_finished
        ):
            request_id, _ = self._expiry.popitem(last=False)
            record = self._records.get(request_id)
            if record is not None and record.status.final:
                del self._records[request_id]
                self._kept.pop(request_id, None)
        while self._kept and next(iter(self._kept.values()))[0] <= now:
            self._kept.popitem(last=False)
        while self._claim_expiry and (
            self._claim_expiry[0][0] <= now or len(self._claim_expiry) > self.max_finished
        ):
            self._claims.pop(self._claim_expiry.popleft()[1], None)

    def create_many(
        self,
        items: Sequence[tuple[StatusRecord, str]],
        idempotency: IdempotencyClaim | None = None,
    ) -> IdempotencyClaim | None:
        with self._lock:
            now = self._clock()
            self._purge(now)
            if idempotency is not None:
                earlier = self._claims.get(idempotency.scope)
                if earlier is not None:
                    return earlier
                self._claims[idempotency.scope] = idempotency
                self._claim_expiry.append((now + IDEMPOTENCY_TTL, idempotency.scope))
            for record, _ in items:
                check_schedule(record)  # ValueError before anything is written
            for record, payload in items:
                old = self._records.get(record.request_id)
                self._unscheduled(old)
                self._scheduled_in(record)
                self._counted(old, record)
                self._records[record.request_id] = record
                self._payloads[record.request_id] = payload
                if old is None:
                    bisect.insort(self._recent, sort_key(record))
            del self._recent[: max(0, len(self._recent) - RECENT_WINDOW)]
            return None

    def idempotency_claim(self, scope: str) -> IdempotencyClaim | None:
        with self._lock:
            self._purge(self._clock())
            return self._claims.get(scope)

    def save(self, record: StatusRecord) -> bool:
        check_schedule(record)
        with self._lock:
            now = self._clock()
            self._purge(now)
            earlier = self._records.get(record.request_id)
            if earlier is None:
                # Evicted or expired (a webhook outcome saved after ?max=N or STATUS_TTL took
                # the status): nothing to change, as SQLite and Redis find no row either;
                # writing it would bring it back and count it twice.
                return False
            if earlier.owner != record.owner:
                return False  # taken over (`take()`): the owner check of the durable stores
            if earlier.status.final and record.status is not earlier.status:
                return False  # canceled or expired meanwhile: a final status stays
            self._write(earlier, record, now)
            return True

    def _replace(self, record: StatusRecord, expected: StatusRecord, restore: bool) -> bool:
        request_id = record.request_id
        with self._lock:
            now = self._clock()
            self._purge(now)
            stored = self._records.get(request_id)
            if stored is None or stored.status is not expected.status:
                return False
            if stored.updated_at != expected.updated_at:
                return False  # changed since it was read
            if restore:
                kept = self._kept.pop(request_id, None)
                if kept is None:
                    return False
                self._payloads[request_id] = kept[1]
                self._expiry.pop(request_id, None)  # unfinished again: it expires no more
            elif stored.status.final and record.status is not stored.status:
                return False
            self._write(stored, record, now)
            return True

    def _write(self, old: StatusRecord, new: StatusRecord, now: float) -> None:
        """Store `new` in place of `old` with what follows from its status; under the lock."""
        request_id = new.request_id
        self._unscheduled(old)
        self._scheduled_in(new)
        self._counted(old, new)
        self._records[request_id] = new
        if new.status.final:
            payload = self._payloads.pop(request_id, None)
            if new.status is not EmailStatus.FAILED or self.kept_seconds <= 0:
                self._kept.pop(request_id, None)
            elif payload is not None:  # saved failed again (a webhook's outcome): kept as it is
                self._kept[request_id] = (now + self.kept_seconds, payload)
                self._kept.move_to_end(request_id)
            self._expiry[request_id] = now + self.ttl
            self._expiry.move_to_end(request_id)

    def _scheduled_in(self, record: StatusRecord) -> None:
        if record.status is EmailStatus.SCHEDULED:
            bisect.insort(self._scheduled, (created_micros(due_at(record)), record.request_id))

    def _unscheduled(self, record: StatusRecord | None) -> None:
        if record is None or record.status is not EmailStatus.SCHEDULED or record.send_at is None:
            return
        key = (created_micros(record.send_at), record.request_id)
        at = bisect.bisect_left(self._scheduled, key)
        if at < len(self._scheduled) and self._scheduled[at] == key:
            del self._scheduled[at]

    def due(self, now: datetime, limit: int) -> list[str]:
        micros = created_micros(now)
        with self._lock:
            # Sorted: the first `limit` entries, less those not yet due (a tail of them).
            return [i for at, i in self._scheduled[: max(0, limit)] if at <= micros]

    def get(self, request_id: str) -> StatusRecord | None:
        with self._lock:
            self._purge(self._clock())
            return self._records.get(request_id)

    def get_many(self, request_ids: Sequence[str]) -> dict[str, StatusRecord]:
        if not request_ids:
            return {}
        with self._lock:
            self._purge(self._clock())
            found = ((i, self._records.get(i)) for i in request_ids)
            return {request_id: record for request_id, record in found if record is not None}

    def payload(self, request_id: str) -> str | None:
        with self._lock:
            return self._payloads.get(request_id)

    def kept_payload(self, request_id: str) -> str | None:
        with self._lock:
            self._purge(self._clock())
            kept = self._kept.get(request_id)
            return None if kept is None else kept[1]

    def take(self, request_id: str, from_owner: str, owner: str) -> tuple[StatusRecord, str] | None:
        with self._lock:
            record = self._records.get(request_id)
            payload = self._payloads.get(request_id)
            if record is None or payload is None or record.owner not in (from_owner, owner):
                return None
            taken = self._records[request_id] = replace(record, owner=owner)
            return taken, payload

    def ping(self) -> None:
        return None

    def recent(
        self, limit: int, before: str | None = None, search: Search | None = None
    ) -> RecentPage:
        check_limit(limit)
        cursor = parse_cursor(before) if before is not None else None
        found: list[StatusRecord] = []
        with self._lock:
            self._purge(self._clock())
            end = len(self._recent) if cursor is None else bisect.bisect_left(self._recent, cursor)
            for position in range(end - 1, -1, -1):
                record = self._records.get(self._recent[position][1])
                if record is not None and (search is None or search.matches(record)):
                    found.append(record)
                    if len(found) > limit:
                        break
        return page_of(found, limit)

    def counts(self) -> dict[EmailStatus, int]:
        with self._lock:
            return {status: self._counts[status] for status in EmailStatus}

    def _finished_in(self, minutes: Sequence[str]) -> dict[tuple[str, EmailStatus], int]:
        with self._lock:
            return {
                (minute, status): count
                for minute in minutes
                for status, count in self._finished.get(minute, Counter()).items()
            }
