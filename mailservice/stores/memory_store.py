"""The memory store (`memory://`): a dict behind one lock, for one process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from mailservice.stores.contract import IDEMPOTENCY_TTL, IdempotencyClaim, StatusRecord, StatusStore

MEMORY_MAX_FINISHED = 100_000


class MemoryStatusStore(StatusStore):
    """A dict behind one lock. For one process; everything is gone when it exits.

    Finished statuses are kept for `ttl` seconds but at most `max_finished` of them (the
    oldest go first), and as many Idempotency-Keys, so that memory stays bounded however many
    requests a day brings; `memory://?max=N` sets it.
    """

    def __init__(
        self,
        ttl: int,
        clock: Callable[[], float] = time.monotonic,
        max_finished: int = MEMORY_MAX_FINISHED,
    ) -> None:
        super().__init__(ttl)
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
        self._claims: dict[str, IdempotencyClaim] = {}
        self._claim_expiry: deque[tuple[float, str]] = deque()

    def _purge(self, now: float) -> None:
        while self._expiry and (
            next(iter(self._expiry.values())) <= now or len(self._expiry) > self.max_finished
        ):
            request_id, _ = self._expiry.popitem(last=False)
            record = self._records.get(request_id)
            if record is not None and record.status.final:
                del self._records[request_id]
        while self._claim_expiry and (
            self._claim_expiry[0][0] <= now or len(self._claim_expiry) > self.max_finished
        ):
            self._claims.pop(self._claim_expiry.popleft()[1], None)

    def create(
        self, record: StatusRecord, payload: str, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyClaim | None:
        return self.create_many([(record, payload)], idempotency)

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
            for record, payload in items:
                self._records[record.request_id] = record
                self._payloads[record.request_id] = payload
            return None

    def idempotency_claim(self, scope: str) -> IdempotencyClaim | None:
        with self._lock:
            self._purge(self._clock())
            return self._claims.get(scope)

    def save(self, record: StatusRecord) -> bool:
        with self._lock:
            now = self._clock()
            self._purge(now)
            self._records[record.request_id] = record
            if record.status.final:
                self._payloads.pop(record.request_id, None)
                self._expiry[record.request_id] = now + self.ttl
                self._expiry.move_to_end(record.request_id)
            return True

    def get(self, request_id: str) -> StatusRecord | None:
        with self._lock:
            self._purge(self._clock())
            return self._records.get(request_id)

    def payload(self, request_id: str) -> str | None:
        with self._lock:
            return self._payloads.get(request_id)

    def ping(self) -> None:
        return None
