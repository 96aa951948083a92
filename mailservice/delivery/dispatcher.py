"""The dispatcher interface: what accepting and recovery need from whatever runs the attempts.

The thread pool (`worker_pool.WorkerPool`, at the repository's root) implements it for one
machine; a Celery dispatcher can implement it for many. A dispatcher is handed requests that
are already recorded (`submit`, `resume`), says how much more it takes (`check_room`, `room`;
`check_open`: whether it takes anything), tells a waiting caller the final status (`wait`),
shows its state (`stats`, read by the metrics at scrape time) and stops (`drain`).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from mailservice.senders import Sender
from mailservice.stores.contract import StatusRecord, StatusStore

# A waiting caller polls the store for a request this process does not hold: first after
# this long, doubling up to the maximum.
STORE_POLL_FIRST = 0.02
STORE_POLL_MAX = 0.25


@dataclass(frozen=True, slots=True)
class DispatcherStats:
    """A dispatcher's state at one moment, in this process."""

    unfinished: int  # requests held that have not ended: what QUEUE_MAX bounds
    held_bytes: int  # message content held in memory: what QUEUE_MAX_BYTES bounds
    busy: int  # sending threads in the middle of an attempt
    threads: int  # sending threads in all


class Dispatcher(ABC):
    """Runs delivery attempts for recorded requests."""

    owner: str  # the name its leases go by in the store

    @abstractmethod
    def check_room(self, size: int = 0) -> None:
        """Raise Unavailable when it takes no more requests (full, or `size` more bytes of
        content would be too many, or draining)."""

    @abstractmethod
    def check_open(self) -> None:
        """Raise Unavailable when draining: it takes nothing more, not even for later (a
        scheduled request, which takes no room until due)."""

    @abstractmethod
    def room(self) -> int:
        """How many more requests it may take (for recovery)."""

    @abstractmethod
    def unfinished(self) -> int:
        """Requests it holds that have not ended."""

    @abstractmethod
    def stats(self) -> DispatcherStats:
        """Its state now; reads only, and takes no longer than a lock."""

    @abstractmethod
    def submit(self, record: StatusRecord, payload: str, sender: Sender) -> None:
        """Deliver a request just recorded as `queued` (its stored spec is `payload`)."""

    @abstractmethod
    def resume(self, record: StatusRecord, payload: str, sender: Sender | None) -> None:
        """Take up a request another process left unfinished (already claimed); a request
        whose sender is gone ends `failed`."""

    @abstractmethod
    def wait(self, request_id: str, timeout: float) -> StatusRecord | None:
        """The final status of a request, waiting up to `timeout`; None if not final by then."""

    def on_event(self, event: object) -> None:  # noqa: B027 - most dispatchers hear nothing
        """An EventBus subscriber: what this process announces (the thread pool lets go of a
        request canceled here at once, not when its retry or hold was due)."""

    @abstractmethod
    def drain(self, seconds: float) -> int:
        """Stop taking requests, keep sending for up to `seconds`, stop; how many were left."""


def final_in_store(store: StatusStore, request_id: str, timeout: float) -> StatusRecord | None:
    """The request's final status as the store has it, polling for up to `timeout`; None if
    it is unknown or not final by then. For a request held by another process (a repeat of a
    waiting route's Idempotency-Key there), or one whose answer came before the store had its
    final status. StoreError when the store cannot be read."""
    deadline = time.monotonic() + timeout
    delay = STORE_POLL_FIRST
    while True:
        record = store.get(request_id)
        if record is None or record.status.final:
            return record
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, STORE_POLL_MAX)


def new_owner_id() -> str:
    """A name for this process's leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
