"""The store contract: a request's record, its statuses, and the interface every backend implements.

A record is created when a request is accepted (with the message `payload`, the stored message
spec, kept until the request is final; a batch's records all in one step, `create_many`) and
saved again at every state change; it carries its own `history` of those changes. Once final the
payload is dropped (a failed request's is kept apart for `failed_content_ttl`, for a manual
retry) and the status is kept for `ttl` seconds. A request accepted for later is `scheduled`
until `due()` lists it. The store knows nothing of SMTP or HTTP. What the operator's dashboard
reads (the recent list, the counts by status, the sends per minute) are bounded queries whose
value types live in `stores/listing.py`. Each sender account's suppression list is the
interface's part `stores/suppressions.SuppressionStore`. `tests/test_status_store.py` is the
contract's test suite, run on every backend.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from mailservice.stores.suppressions import SuppressionStore

if TYPE_CHECKING:  # listing.py builds on the record defined here
    from mailservice.stores.listing import MinuteSends, RecentPage, Search


class EmailStatus(StrEnum):
    """A request's state: (scheduled ->) queued -> sending -> (retrying -> sending ->) sent |
    failed; one not yet handed to the SMTP server may end expired or canceled instead."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


# The statuses a request ends in: its payload goes (kept apart for a while when failed, see
# StatusStore) and its status expires after the store's `ttl`.
FINAL_STATUSES = frozenset(
    {EmailStatus.SENT, EmailStatus.FAILED, EmailStatus.EXPIRED, EmailStatus.CANCELED}
)


class WebhookState(StrEnum):
    """Where a request's webhook stands (API.md section 4): `pending` from acceptance until it
    is `delivered` (every target answered 2xx) or `failed` (a target's tries ran out)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def utcnow() -> datetime:
    return datetime.now(UTC)


# A request's history holds one entry per state change: queued, then a sending and a retrying
# per attempt, then the end, so 2 * MAX_ATTEMPTS + 2 with the defaults; past this bound the
# first entry (when it was accepted) and the newest ones are kept.
HISTORY_MAX = 32


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One state change of a request: the status it entered, when, after how many attempts,
    and the error it carried then (a retry's reason, a failure's)."""

    status: EmailStatus
    at: datetime
    attempts: int = 0
    error: str | None = None


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
    metadata: dict[str, str] = field(default_factory=dict)  # the client's own, shown as given
    tags: tuple[str, ...] = ()  # the client's own labels, shown as given
    callback_url: str | None = None  # the request's own webhook target (internal, never shown)
    webhook: WebhookState | None = None  # None: no webhook for this request
    # Its state changes, oldest first (shown on the dashboard, not in GET /email-status): a
    # record stored before the history existed has none.
    history: tuple[HistoryEntry, ...] = ()
    # UTC, like created_at. `send_at`: when a `scheduled` request falls due (`due()`);
    # `expires_at`: when a request not yet handed to the SMTP server ends `expired` instead.
    # None: at once, and never. Both in public(), as the client gave them (in UTC).
    send_at: datetime | None = None
    expires_at: datetime | None = None

    def noted(self) -> StatusRecord:
        """This record with its current state appended to its history (once: a record whose
        newest entry already says so is returned as it is), bounded by HISTORY_MAX."""
        entry = HistoryEntry(self.status, self.updated_at, self.attempts, self.error)
        if self.history and self.history[-1] == entry:
            return self
        history = (*self.history, entry)
        if len(history) > HISTORY_MAX:
            history = (history[0], *history[-(HISTORY_MAX - 1) :])
        return replace(self, history=history)

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
            "metadata": dict(self.metadata),
            "tags": list(self.tags),
            "webhook": None if self.webhook is None else str(self.webhook),
            "created_at": shown_moment(self.created_at),
            "updated_at": shown_moment(self.updated_at),
            "send_at": None if self.send_at is None else shown_moment(self.send_at),
            "expires_at": None if self.expires_at is None else shown_moment(self.expires_at),
        }


def shown_moment(moment: datetime) -> str:
    """A time as the API writes it: ISO 8601 in UTC with a Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key in use: `scope` names the API key and Idempotency-Key (digested),
    `fingerprint` the request it was first used for, `request_id` what that request got.

    A batch's claim (`of_batch`) covers the whole batch: its `request_id` holds one place per
    message of the batch, in order, joined by commas: the id the message got, or nothing for
    a message that was refused (no UUID holds a comma). What a repeat answers is rebuilt from
    these places; the refused messages' problems are worked out again from the body, which
    the fingerprint says is the same. Stored like any claim, it needs no column of its own.
    """

    scope: str
    fingerprint: str
    request_id: str

    @classmethod
    def of_batch(
        cls, scope: str, fingerprint: str, places: Sequence[str | None]
    ) -> IdempotencyClaim:
        """The claim of a batch whose messages got `places` (an id, or None when refused)."""
        return cls(scope, fingerprint, ",".join(place or "" for place in places))

    @property
    def places(self) -> tuple[str | None, ...]:
        """A batch's places, as given to `of_batch`."""
        return tuple(place or None for place in self.request_id.split(","))


IDEMPOTENCY_TTL = 24 * 3600
FAILED_CONTENT_TTL = 24 * 3600  # seconds a failed request's content is kept (manual retry)


def due_at(record: StatusRecord) -> datetime:
    """When a scheduled record falls due: its send_at; ValueError when it has none."""
    if record.send_at is None:
        raise ValueError(f"scheduled request {record.request_id} has no send_at")
    return record.send_at


def check_schedule(record: StatusRecord) -> None:
    """ValueError for a scheduled record without send_at (before a backend writes anything)."""
    if record.status is EmailStatus.SCHEDULED:
        due_at(record)


class OutageLog:
    """Logs a backend's outage once when it starts and once when it ends, not once a call.
    The lines name the status store unless told otherwise (the broker's hand-over uses it)."""

    def __init__(
        self,
        logger: logging.Logger,
        down: str = "status store unreachable: %s (answering 503 until it returns)",
        up: str = "status store reachable again",
    ) -> None:
        self._logger = logger
        self._down_line, self._up_line = down, up
        self._down = False
        self._lock = threading.Lock()

    def failed(self, exc: Exception) -> None:
        with self._lock:
            first, self._down = not self._down, True
        if first:
            self._logger.warning(self._down_line, exc)

    def succeeded(self) -> None:
        if self._down:  # read without the lock: the common case costs nothing
            with self._lock:
                was_down, self._down = self._down, False
            if was_down:
                self._logger.warning(self._up_line)


class StatusStore(SuppressionStore, ABC):
    """The interface every backend implements; `tests/test_status_store.py` is its contract.

    `durable` says whether an accepted request outlives this process in the store. A durable
    store keeps, across restarts: every record with its payload while unfinished; the
    scheduled requests' index by send_at (`due()`); a failed request's content for
    `kept_seconds` (`kept_payload()`); final statuses for `ttl`; Idempotency-Keys; counters;
    and leases: each record names its `owner`, each owner renews its lease with
    `heartbeat()`, and unfinished records whose owner's lease ran out can be `claim()`ed by
    another process (never a scheduled one: it waits for `due()`). `save()` writes only while
    the record's owner still holds it, so two processes never both send one request;
    `replace()` writes over what its caller read, whoever owns it (cancel, manual retry, the
    due scheduler), so that of a cancel and the owner's save of `sending` one wins; a final
    status is never replaced by another. `take()` hands an unfinished request on from the
    owner named in a hand-over (a task on a broker) to the one that received it, whether that
    owner's lease is alive or not. A final record whose webhook is still `pending` is
    found by `webhook_orphans()` and taken over by `claim_webhook()` in the same way, so that a
    webhook outlives the process that owed it. A durable store keeps each account's
    suppression list too (`SuppressionStore`), shared by every process.
    """

    durable = False

    def __init__(self, ttl: int, failed_content_ttl: int = FAILED_CONTENT_TTL) -> None:
        if failed_content_ttl < 0:
            raise ValueError("failed_content_ttl must be 0 or more seconds")
        self.ttl = ttl
        self.failed_content_ttl = failed_content_ttl

    @property
    def kept_seconds(self) -> int:
        """How long a failed request's content is kept: `failed_content_ttl`, never longer
        than its status (whose `ttl` may be shorter)."""
        return min(self.ttl, self.failed_content_ttl)

    def create(
        self, record: StatusRecord, payload: str, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyClaim | None:
        """Record a newly accepted request with its message, in one step with its
        Idempotency-Key if any. Returns the earlier claim, creating nothing, when that key
        was already used; StoreError if the store can't be written. A batch of one: every
        backend has one way in, `create_many()`."""
        return self.create_many([(record, payload)], idempotency)

    @abstractmethod
    def create_many(
        self,
        items: Sequence[tuple[StatusRecord, str]],
        idempotency: IdempotencyClaim | None = None,
    ) -> IdempotencyClaim | None:
        """`create()` for a batch: every (record, payload) of `items` and the Idempotency-Key,
        all or none, in one round trip to the store (one lock, one transaction, one script).
        Returns the earlier claim, creating nothing, when that key was already used;
        StoreError (nothing created) if the store can't be written."""

    @abstractmethod
    def idempotency_claim(self, scope: str) -> IdempotencyClaim | None:
        """The unexpired claim of an Idempotency-Key's `scope`, or None; reads only, in one
        round trip. For a repeat that is answered without `create()` (its body would no
        longer be accepted), to tell whether it is a repeat at all."""

    @abstractmethod
    def save(self, record: StatusRecord) -> bool:
        """Write a changed record if `record.owner` still owns it (False, writing nothing,
        if another process took it over, or when the stored record is final and `record`'s
        status another: a canceled or expired request never goes back to `sending`, a final
        status is never replaced; saved again with the same status, as a webhook's outcome
        is, it is written). A final record drops its payload and expires after `ttl`; a
        failed one keeps its payload apart for `kept_seconds` (`kept_payload()`). ValueError
        for a scheduled record without send_at, as in `create()`."""

    def replace(self, record: StatusRecord, expected: StatusRecord, restore: bool = False) -> bool:
        """Compare and set, whoever owns the record: write `record` (its owner as given) only
        if the stored record still has `expected`'s status and updated_at, that is if nothing
        changed it since `expected` was read; False, writing nothing, otherwise or when it is
        unknown. What follows from the new status is as in `save()`, a final status staying.
        `restore` is the one way back from `failed` (a manual retry): the content that
        `kept_payload()` holds becomes the payload again in the same atomic step; False when
        none is kept any more. It is how a request is canceled (by any process), retried by
        hand (failed -> queued, owned by the retrying process) and taken up when due
        (scheduled -> queued, owned by the taker). ValueError for a `record` of another id, or
        one to restore to a final status."""
        if record.request_id != expected.request_id:
            raise ValueError("replace() takes a record and what was read of that same record")
        if restore and record.status.final:
            raise ValueError("restore brings a request back to an unfinished status")
        check_schedule(record)
        return self._replace(record, expected, restore)

    @abstractmethod
    def _replace(self, record: StatusRecord, expected: StatusRecord, restore: bool) -> bool:
        """`replace()` once its arguments are checked: one atomic step, one round trip."""

    @abstractmethod
    def get(self, request_id: str) -> StatusRecord | None:
        """The record, or None when unknown or expired."""

    @abstractmethod
    def get_many(self, request_ids: Sequence[str]) -> dict[str, StatusRecord]:
        """`get()` for several ids at once (the memory store under one lock, SQLite one
        SELECT per 500 ids, Redis one pipeline): the record of each id that is known and
        unexpired, the others left out; nothing read for an empty list. For the long poll's
        watch, which reads every waited id each round (events/status_watch.py)."""

    @abstractmethod
    def payload(self, request_id: str) -> str | None:
        """The message of an unfinished request, or None."""

    @abstractmethod
    def kept_payload(self, request_id: str) -> str | None:
        """The message of a failed request, kept apart for `kept_seconds` after it failed (so
        that `payload()`, `claim()` and `take()` never see a failed request as unfinished), or
        None: unknown, not failed, or kept no longer."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    # -- what the operator's dashboard reads: bounded, never a scan of every record ---------

    @abstractmethod
    def recent(
        self, limit: int, before: str | None = None, search: Search | None = None
    ) -> RecentPage:
        """The newest requests, newest first (by `created_at`, then id), at most `limit` of
        them, older than the cursor `before` (a page's `before`, see listing.py) when given,
        and matching `search` when given. Only the newest `listing.RECENT_WINDOW` requests are
        listed or searched, so that one call reads a bounded number of records; an expired one
        is left out. ValueError for a malformed cursor."""

    @abstractmethod
    def counts(self) -> dict[EmailStatus, int]:
        """Requests by status, every status present: how many are scheduled, queued, sending or
        retrying now, and how many ended in each final status since the store's counters
        began. Kept as counters changed in the same atomic step as each write, read in one
        call."""

    def sends_per_minute(self, now: datetime | None = None) -> list[MinuteSends]:
        """How many requests ended sent and failed in each of the last `CHART_MINUTES` minutes
        (UTC, by the final status's `updated_at`), oldest first, the current minute last."""
        from mailservice.stores.listing import MinuteSends, chart_minutes

        minutes = chart_minutes(now or utcnow())
        found = self._finished_in(minutes)
        return [
            MinuteSends(
                minute,
                found.get((minute, EmailStatus.SENT), 0),
                found.get((minute, EmailStatus.FAILED), 0),
            )
            for minute in minutes
        ]

    @abstractmethod
    def _finished_in(self, minutes: Sequence[str]) -> dict[tuple[str, EmailStatus], int]:
        """The per-minute counters of requests that became final (every final status), for the
        given minutes (`listing.minute_of` keys), in one call; counters are kept `MINUTES_KEPT`
        minutes."""

    def heartbeat(self, owner: str, lease_seconds: float) -> None:
        """Renew `owner`'s lease on its records; 0 gives them up at once."""

    def orphans(self, limit: int) -> list[str]:
        """Unfinished requests whose owner's lease ran out (none where nothing outlives a
        process), scheduled ones never: recovery would send them before their time."""
        return []

    def claim(self, request_id: str, owner: str) -> tuple[StatusRecord, str] | None:
        """Take over an orphaned request: its record (now owned by `owner`) and payload, or
        None if it is finished, scheduled or someone else holds it."""
        return None

    @abstractmethod
    def due(self, now: datetime, limit: int) -> list[str]:
        """Ids of the `scheduled` requests whose send_at is `now` or earlier, earliest first
        (then by id), at most `limit`, in one round trip through an index by send_at. Only
        listed: a request leaves the index when `replace()` (or `save()`) changes its status."""

    @abstractmethod
    def take(self, request_id: str, from_owner: str, owner: str) -> tuple[StatusRecord, str] | None:
        """Take over an unfinished request handed out by `from_owner` (a task on a broker carries
        that name): its record, now owned by `owner`, and its payload; None, changing nothing, if it
        is unknown, finished (no payload), or owned by anyone but `from_owner` or `owner` now.
        Atomic: of two takers with the same hand-over, one gets it. Whether `from_owner`'s lease
        is alive does not matter. A taker that already owns it gets it again: a client that
        retries a call whose reply was lost must not find its own request gone."""

    def webhook_orphans(self, limit: int, owner: str) -> list[str]:
        """Final requests whose webhook is still `pending` and whose owner's lease ran out, or
        whose owner is `owner` (what that process no longer holds in memory); at most `limit`,
        none where nothing outlives a process. One call does a bounded amount of work, and
        successive calls on one store object go on from where the last one stopped, starting
        over once they reached the end: ids its caller skips (the webhooks it holds) never
        hide the others for good."""
        return []

    def claim_webhook(self, request_id: str, owner: str) -> StatusRecord | None:
        """Take over a final request's pending webhook: its record, now owned by `owner`, or
        None if its webhook is no longer pending, it is not final, or a live process holds it.
        Atomic: of two claimants, one gets it."""
        return None

    def purge_expired(self) -> None:
        """Delete what has expired, for backends that don't expire by themselves."""

    def durability_warnings(self) -> list[str]:
        """What in the backend's setup can lose accepted requests (logged at start-up)."""
        return []

    def close(self) -> None:
        """Release connections."""
