"""Where each request's status lives: the store interface, its backends and `store_from_url`.

A record is created when a request is accepted (with the message `payload`, the validated
request as JSON, kept until the request is final) and saved again at every state change. Once
final the payload is dropped and the status is kept for `ttl` seconds. The store knows nothing
of SMTP or HTTP. Backends are chosen by URL scheme through `STORE_BACKENDS`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mailservice.errors import ConfigError


class EmailStatus(StrEnum):
    """A request's state: queued -> sending -> (retrying -> sending ->) sent | failed."""

    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (EmailStatus.SENT, EmailStatus.FAILED)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """One request's status; `pending` are the recipients still to be delivered to and
    `owner` the process whose lease covers the work (internal, never shown)."""

    request_id: str
    status: EmailStatus
    sender: str
    recipients: tuple[str, ...]
    pending: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    attempts: int = 0
    error: str | None = None
    refused: dict[str, str] = field(default_factory=dict)
    owner: str = ""

    def public(self) -> dict[str, Any]:
        """The JSON of GET /email-status/<id> (API.md section 4): no content, no internals."""
        return {
            "request_id": self.request_id,
            "status": str(self.status),
            "error": self.error,
            "attempts": self.attempts,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "refused": dict(self.refused),
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "updated_at": self.updated_at.isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key in use: `scope` names the API key and Idempotency-Key (digested),
    `fingerprint` the request it was first used for, `request_id` what that request got."""

    scope: str
    fingerprint: str
    request_id: str


IDEMPOTENCY_TTL = 24 * 3600

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
    }


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
    )


class OutageLog:
    """Logs a backend's outage once when it starts and once when it ends, not once a call."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._down = False
        self._lock = threading.Lock()

    def failed(self, exc: Exception) -> None:
        with self._lock:
            first, self._down = not self._down, True
        if first:
            self._logger.warning(
                "status store unreachable: %s (answering 503 until it returns)", exc
            )

    def succeeded(self) -> None:
        if self._down:  # read without the lock: the common case costs nothing
            with self._lock:
                was_down, self._down = self._down, False
            if was_down:
                self._logger.warning("status store reachable again")


class StatusStore(ABC):
    """The interface every backend implements; `tests/test_status_store.py` is its contract.

    `durable` says whether an accepted request outlives this process in the store. A durable
    store also keeps leases: each record names its `owner`, each owner renews its lease with
    `heartbeat()`, and unfinished records whose owner's lease ran out can be `claim()`ed by
    another process. `save()` writes only while the record's owner still holds it, so two
    processes never both send one request.
    """

    durable = False

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl

    @abstractmethod
    def create(
        self, record: StatusRecord, payload: str, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyClaim | None:
        """Record a newly accepted request with its message, in one step with its
        Idempotency-Key if any. Returns the earlier claim, creating nothing, when that key
        was already used; StoreError if the store can't be written."""

    @abstractmethod
    def save(self, record: StatusRecord) -> bool:
        """Write a changed record if `record.owner` still owns it (False, writing nothing,
        if another process took it over). A final record drops its payload and expires
        after `ttl`."""

    @abstractmethod
    def get(self, request_id: str) -> StatusRecord | None:
        """The record, or None when unknown or expired."""

    @abstractmethod
    def payload(self, request_id: str) -> str | None:
        """The message of an unfinished request, or None."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    def heartbeat(self, owner: str, lease_seconds: float) -> None:  # noqa: B027
        """Renew `owner`'s lease on its records; 0 gives them up at once."""

    def orphans(self, limit: int) -> list[str]:
        """Unfinished requests whose owner's lease ran out (none where nothing outlives a
        process)."""
        return []

    def claim(self, request_id: str, owner: str) -> tuple[StatusRecord, str] | None:
        """Take over an orphaned request: its record (now owned by `owner`) and payload, or
        None if it is finished or someone else holds it."""
        return None

    def purge_expired(self) -> None:  # noqa: B027
        """Delete what has expired, for backends that don't expire by themselves."""

    def durability_warnings(self) -> list[str]:
        """What in the backend's setup can lose accepted requests (logged at start-up)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


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
        self._expiry: deque[tuple[float, str]] = deque()
        self._claims: dict[str, IdempotencyClaim] = {}
        self._claim_expiry: deque[tuple[float, str]] = deque()

    def _purge(self, now: float) -> None:
        while self._expiry and (self._expiry[0][0] <= now or len(self._expiry) > self.max_finished):
            _, request_id = self._expiry.popleft()
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
        with self._lock:
            now = self._clock()
            self._purge(now)
            if idempotency is not None:
                earlier = self._claims.get(idempotency.scope)
                if earlier is not None:
                    return earlier
                self._claims[idempotency.scope] = idempotency
                self._claim_expiry.append((now + IDEMPOTENCY_TTL, idempotency.scope))
            self._records[record.request_id] = record
            self._payloads[record.request_id] = payload
            return None

    def save(self, record: StatusRecord) -> bool:
        with self._lock:
            now = self._clock()
            self._purge(now)
            self._records[record.request_id] = record
            if record.status.final:
                self._payloads.pop(record.request_id, None)
                self._expiry.append((now + self.ttl, record.request_id))
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


StoreFactory = Callable[[str, int], StatusStore]


def _memory(url: str, ttl: int) -> StatusStore:
    query = parse_qs(urlsplit(url).query)
    try:
        max_finished = int(query.get("max", [MEMORY_MAX_FINISHED])[0])
    except ValueError as exc:
        raise ConfigError(f"STATUS_STORE_URL {url!r}: max must be a number") from exc
    if max_finished < 1:
        raise ConfigError(f"STATUS_STORE_URL {url!r}: max must be positive")
    return MemoryStatusStore(ttl, max_finished=max_finished)


def _redis(url: str, ttl: int) -> StatusStore:
    from mailservice.stores.redis_store import (
        RedisStatusStore,  # imported on use: redis is a backend detail
    )

    return RedisStatusStore.from_url(url, ttl)


def _sqlite(url: str, ttl: int) -> StatusStore:
    from mailservice.stores.sqlite_store import SqliteStatusStore

    return SqliteStatusStore.from_url(url, ttl)


STORE_BACKENDS: dict[str, StoreFactory] = {
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
    "sqlite": _sqlite,
}


def store_from_url(url: str, ttl: int) -> StatusStore:
    """The store a STATUS_STORE_URL names; ConfigError for an unknown scheme."""
    scheme = urlsplit(url).scheme.lower()
    factory = STORE_BACKENDS.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}://" for name in STORE_BACKENDS)
        raise ConfigError(f"STATUS_STORE_URL scheme {scheme!r} is not supported (use {known})")
    return factory(url, ttl)
