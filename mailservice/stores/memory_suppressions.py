"""The memory store's suppression lists: a dict and a sorted list behind one lock, bounded."""

from __future__ import annotations

import bisect
import heapq
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from mailservice.stores.suppressions import Suppression, SuppressionPage, cursor_of

MEMORY_MAX_SUPPRESSIONS = 100_000  # entries of every account together; the soonest to expire go


class MemorySuppressions:
    """Entries by (account, address), the same keys sorted for the listing, and a heap by
    expiry that purges them: memory stays bounded by `max_entries` however many refusals
    come (past it, the entry that would expire soonest goes first)."""

    def __init__(
        self,
        max_entries: int = MEMORY_MAX_SUPPRESSIONS,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.max_entries = max_entries
        self._now = now
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], Suppression] = {}
        self._sorted: list[tuple[str, str]] = []
        # (until, key): a key renewed since stays with its old `until` and is skipped then.
        self._expiry: list[tuple[datetime, tuple[str, str]]] = []

    def _drop(self, key: tuple[str, str]) -> None:
        del self._entries[key]
        at = bisect.bisect_left(self._sorted, key)
        del self._sorted[at]

    def _purge(self, now: datetime) -> None:
        """Expired entries, then the soonest to expire past `max_entries`; under the lock."""
        while self._expiry and (self._expiry[0][0] <= now or len(self._entries) > self.max_entries):
            until, key = heapq.heappop(self._expiry)
            entry = self._entries.get(key)
            if entry is not None and entry.until == until:
                self._drop(key)

    def suppress(self, entry: Suppression) -> None:
        key = (entry.account, entry.address)
        with self._lock:
            if key not in self._entries:
                bisect.insort(self._sorted, key)
            self._entries[key] = entry
            heapq.heappush(self._expiry, (entry.until, key))
            self._purge(self._now())
            # Renewals leave stale heap items behind: rebuilt once they outnumber the entries.
            if len(self._expiry) > 2 * len(self._entries) + 16:
                self._expiry = [(e.until, k) for k, e in self._entries.items()]
                heapq.heapify(self._expiry)

    def suppressed(self, account: str, addresses: Sequence[str]) -> dict[str, str]:
        now = self._now()
        with self._lock:
            found = ((a, self._entries.get((account, a))) for a in addresses)
            return {a: e.reason for a, e in found if e is not None and e.until > now}

    def suppressions(
        self, account: str | None, limit: int, after: tuple[str, str] | None
    ) -> SuppressionPage:
        now = self._now()
        found: list[Suppression] = []
        with self._lock:
            self._purge(now)
            start = (account, "") if after is None and account is not None else after
            at = 0 if start is None else bisect.bisect_right(self._sorted, start)
            for key in self._sorted[at:]:
                if account is not None and key[0] != account:
                    break
                found.append(self._entries[key])
                if len(found) > limit:
                    break
        if len(found) > limit:
            last = found[limit - 1]
            return SuppressionPage(tuple(found[:limit]), cursor_of(last.account, last.address))
        return SuppressionPage(tuple(found))

    def unsuppress(self, account: str, address: str) -> bool:
        now = self._now()
        with self._lock:
            entry = self._entries.get((account, address))
            if entry is None:
                return False
            self._drop((account, address))
            return entry.until > now
