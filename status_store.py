"""Where each request's status lives: the store interface, its backends and `store_from_url`.

A record is created when a request is accepted (with the message `payload`, the validated
request as JSON, kept until the request is final) and saved again at every state change. Once
final the payload is dropped and the status is kept for `ttl` seconds. The store knows nothing
of SMTP or HTTP. Backends are chosen by URL scheme through `STORE_BACKENDS`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from errors import ConfigError


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
    """One request's status; `pending` are the recipients still to be delivered to."""

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


class StatusStore(ABC):
    """The interface every backend implements; `tests/test_status_store.py` is its contract.

    `durable` says whether an accepted request outlives this process in the store.
    """

    durable = False

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl

    @abstractmethod
    def create(self, record: StatusRecord, payload: str) -> None:
        """Record a newly accepted request with its message; StoreError if it can't."""

    @abstractmethod
    def save(self, record: StatusRecord) -> None:
        """Write a changed record; a final one drops its payload and expires after `ttl`."""

    @abstractmethod
    def get(self, request_id: str) -> StatusRecord | None:
        """The record, or None when unknown or expired."""

    @abstractmethod
    def payload(self, request_id: str) -> str | None:
        """The message of an unfinished request, or None."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    def durability_warnings(self) -> list[str]:
        """What in the backend's setup can lose accepted requests (logged at start-up)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryStatusStore(StatusStore):
    """A dict behind one lock. For one process; everything is gone when it exits."""

    def __init__(self, ttl: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, StatusRecord] = {}
        self._payloads: dict[str, str] = {}
        self._expiry: deque[tuple[float, str]] = deque()

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, request_id = self._expiry.popleft()
            record = self._records.get(request_id)
            if record is not None and record.status.final:
                del self._records[request_id]

    def create(self, record: StatusRecord, payload: str) -> None:
        with self._lock:
            self._purge(self._clock())
            self._records[record.request_id] = record
            self._payloads[record.request_id] = payload

    def save(self, record: StatusRecord) -> None:
        with self._lock:
            now = self._clock()
            self._purge(now)
            self._records[record.request_id] = record
            if record.status.final:
                self._payloads.pop(record.request_id, None)
                self._expiry.append((now + self.ttl, record.request_id))

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
    return MemoryStatusStore(ttl)


def _redis(url: str, ttl: int) -> StatusStore:
    from redis_store import RedisStatusStore  # imported on use: redis is a backend detail

    return RedisStatusStore.from_url(url, ttl)


STORE_BACKENDS: dict[str, StoreFactory] = {"memory": _memory, "redis": _redis, "rediss": _redis}


def store_from_url(url: str, ttl: int) -> StatusStore:
    """The store a STATUS_STORE_URL names; ConfigError for an unknown scheme."""
    scheme = urlsplit(url).scheme.lower()
    factory = STORE_BACKENDS.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}://" for name in STORE_BACKENDS)
        raise ConfigError(f"STATUS_STORE_URL scheme {scheme!r} is not supported (use {known})")
    return factory(url, ttl)
