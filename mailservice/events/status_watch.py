"""The long poll's waiting room: `GET /email-status/<id>?wait=N` waits here (API.md section 4).

A waiter registers its request id, then reads the record (registered first, so that a request
that ends between the read and the wait still wakes it), and blocks on its own Event for at
most N seconds. Two things wake it as soon as the request is final:

- this process's `Finished` event (the watch is an EventBus subscriber; delivery/stack.py
  subscribes it last, so that the log line, the metrics and the webhook's queueing come first);
- one poller thread, for requests that end in another process (another gunicorn worker, a
  Celery worker, a cancel elsewhere): every POLL_SECONDS it reads every waited id with one
  `store.get_many()` (each id at most once a round, READ_MAX per call) and wakes the waiters of
  those that are final or gone. It starts with the first waiter and sleeps, reading nothing,
  while nobody waits.

It lives in events/ because it is a subscriber of the bus that reads the store, as the webhooks
are; it knows nothing of delivery. It holds no thread of its own per waiter: each waits in the
HTTP thread that serves it (under gunicorn one of the worker's long-poll threads, see
mailservice/serving/long_poll.py), never in the sending pool. At most WAITERS_MAX wait at once
in a process; past that a request is answered at once with its current status (not a 503: the
client asked for a status and gets one). `close()` (the process stopping) wakes every waiter,
which answers the current status at once, and answers later ones without waiting.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from mailservice.errors import StoreError
from mailservice.events.bus import Event, Finished
from mailservice.stores.contract import StatusRecord, StatusStore

logger = logging.getLogger(__name__)

WAIT_MAX = 30.0  # seconds: the most `?wait=` may ask for
POLL_SECONDS = 0.5  # how often the poller reads the waited ids from the store
WAITERS_MAX = 1000  # waiters at once per process; past it, answered at once
READ_MAX = 500  # ids per get_many() call of one round
CLOSE_WAIT_SECONDS = 10.0  # how long close() waits for a round in progress to end


@dataclass(eq=False, slots=True)
class _Waiter:
    """One waiting request: woken with the record that ended its wait (`settled`: a final
    record, or None when the record is gone), or woken unsettled by `close()`."""

    request_id: str
    woken: threading.Event = field(default_factory=threading.Event)
    settled: bool = False
    record: StatusRecord | None = None


class StatusWatch:
    """Waiters on requests' final statuses in one process; see the module's docstring."""

    def __init__(
        self,
        store: StatusStore,
        poll_seconds: float = POLL_SECONDS,
        waiters_max: int = WAITERS_MAX,
    ) -> None:
        self._store = store
        self._poll_seconds = poll_seconds
        self._waiters_max = waiters_max
        self._lock = threading.Lock()
        self._someone_waits = threading.Condition(self._lock)
        self._waiting: dict[str, set[_Waiter]] = {}
        self._count = 0
        self._closed = False
        self._stop = threading.Event()  # the poller's sleep between rounds, cut short by close()
        self._poller: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """How many requests wait now (for tests and the docs' bound)."""
        return self._count

    def wait(self, request_id: str, seconds: float) -> StatusRecord | None:
        """The request's record as soon as it is final, or its current one after `seconds`;
        None when unknown (or gone meanwhile). Answered at once when it is final already, when
        WAITERS_MAX requests wait already, or once the watch is closed. StoreError when the
        store cannot be read, as for a plain read."""
        waiter = self._enter(request_id)
        try:
            record = self._store.get(request_id)
            if waiter is None or record is None or record.status.final:
                return record
            if waiter.woken.wait(seconds) and waiter.settled:
                return waiter.record
            return self._store.get(request_id)  # time is up, or the process stops: as it is now
        finally:
            if waiter is not None:
                self._leave(waiter)

    def on_event(self, event: Event) -> None:
        """A Finished event wakes the request's waiters with its record (on the emitting
        thread: a dictionary look-up when nobody waits for it)."""
        if isinstance(event, Finished) and event.record.request_id in self._waiting:
            with self._lock:
                self._wake(event.record.request_id, event.record)

    def close(self) -> None:
        """Wake every waiter (each answers its current status) and answer later ones at once;
        the poller ends before this returns. For a process that stops: its HTTP threads must
        end promptly."""
        with self._lock:
            self._closed = True
            for waiters in self._waiting.values():
                for waiter in waiters:
                    waiter.woken.set()
            self._waiting.clear()
            self._someone_waits.notify_all()
            poller = self._poller
        self._stop.set()
        # The store closes after the watch when the process stops: a round still reading it
        # then would fail on a closed client, so the poller's end is waited for (a round lasts
        # at most the store's own timeout).
        if poller is not None and poller is not threading.current_thread():
            poller.join(CLOSE_WAIT_SECONDS)

    # -- waiters --------------------------------------------------------------------------

    def _enter(self, request_id: str) -> _Waiter | None:
        with self._lock:
            if self._closed or self._count >= self._waiters_max:
                return None
            waiter = _Waiter(request_id)
            self._waiting.setdefault(request_id, set()).add(waiter)
            self._count += 1
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll, name="status-watch", daemon=True)
                self._poller.start()
            self._someone_waits.notify()
            return waiter

    def _leave(self, waiter: _Waiter) -> None:
        with self._lock:
            self._count -= 1
            waiters = self._waiting.get(waiter.request_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiting[waiter.request_id]

    def _wake(self, request_id: str, record: StatusRecord | None) -> None:
        """Settle and wake every waiter of `request_id` (the lock held)."""
        for waiter in self._waiting.pop(request_id, ()):
            waiter.record, waiter.settled = record, True
            waiter.woken.set()

    # -- the poller -------------------------------------------------------------------------

    def _poll(self) -> None:
        """Every POLL_SECONDS while someone waits: read the waited ids, wake the finished."""
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._someone_waits.wait()
                if self._closed:
                    return
                ids = list(self._waiting)
            try:
                self._round(ids)
            except Exception:  # the poller must outlive any one round's failure
                logger.exception("status watch: a polling round failed")
            if self._stop.wait(self._poll_seconds):
                return

    def _round(self, ids: list[str]) -> None:
        for start in range(0, len(ids), READ_MAX):
            chunk = ids[start : start + READ_MAX]
            try:
                found = self._store.get_many(chunk)
            except StoreError:  # the store logs its outage; waiters time out and read again
                return
            with self._lock:
                for request_id in chunk:
                    record = found.get(request_id)
                    if record is None or record.status.final:
                        self._wake(request_id, record)
