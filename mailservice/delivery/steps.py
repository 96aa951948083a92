"""What one delivery attempt answers, as plain values: the state a dispatcher keeps of a
request between attempts, and the step that comes next (delivery/attempt.py makes them; the
thread pool and the Celery task runner act on them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailservice.delivery.transitions import Final, Retry
from mailservice.stores.contract import EmailStatus, StatusRecord


@dataclass(slots=True, eq=False)
class AttemptState:
    """What a dispatcher keeps of one request between its attempts."""

    record: StatusRecord
    payload: str | None  # the stored spec while it is held in memory; None: read the store's
    deferred: dict[str, str] = field(default_factory=dict)  # 4xx at RCPT, last attempt
    possibly_delivered: bool = False  # an attempt got no reply to the end of DATA
    store_waits: int = 0  # attempts put off in a row because the store refused `sending`

    @classmethod
    def resumed(cls, record: StatusRecord, payload: str | None) -> AttemptState:
        """A request recovered from a process that stopped: one it left `sending` may have
        been handed to the SMTP server (both dispatchers' `resume`)."""
        return cls(record, payload, possibly_delivered=record.status is EmailStatus.SENDING)

    @property
    def request_id(self) -> str:
        return self.record.request_id


@dataclass(frozen=True, slots=True)
class WaitForStore:
    """The store could not record `sending`: try the attempt again after `delay`, uncounted."""

    delay: float


@dataclass(frozen=True, slots=True)
class Hold:
    """The sender's account may not send now (over its pace, paused, over its daily limit,
    delivery/account_gate.py): try again after `delay`, no attempt spent."""

    delay: float


@dataclass(frozen=True, slots=True)
class Dropped:
    """Nothing more to do here: another process owns the request, or it ended elsewhere
    (`ended`: its final record as the store has it, canceled or expired by whoever announced
    it; nothing alarming, nothing to announce again)."""

    reason: str
    ended: StatusRecord | None = None


Next = Retry | Final | WaitForStore | Hold | Dropped


@dataclass(frozen=True, slots=True)
class Outcome:
    """What comes next, and whether the SMTP server answered (None: no connection tried)."""

    next: Next
    answered: bool | None
