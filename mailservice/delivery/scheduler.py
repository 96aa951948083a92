"""The due scheduler: scheduled requests handed to this process's dispatcher when they fall due.

A scheduled request waits in the store alone (its index by send_at, `StatusStore.due`), never
as a timer in memory or a long ETA on a broker, so that any process on the store may send it
and a restart loses nothing. Every process that accepts or sends (an API process, each Celery
worker child) runs one `DueScheduler` thread, started by the stack's `start()`. Every
SCHEDULE_POLL_SECONDS it asks the store for what has fallen due, at most what its dispatcher
has room for (`room()`: a scheduled request counts against QUEUE_MAX only once due) and at
most DUE_BATCH at a time, and takes each whose content still fits (`check_room(size)`:
QUEUE_MAX_BYTES too, as for a new request; the round ends at the first that does not, the
rest left scheduled for a later round) with `replace()`, a compare-and-set on the record it
read: `scheduled` -> `queued`, owned by this process, noted in its history
(`transitions.taken_when_due`). Of two processes that find one request, one takes it; the
other's replace changes nothing. The taken request goes to the dispatcher as an accepted one
does (`submit`; `resume` when its sender left the senders file, which ends it failed). One
taken after its `expires_at` ends `expired` instead, in the same replace, and is announced
(`Finished`: its log line, webhook and metrics) by this process, which owns it then.

The first round runs at start, so what fell due while no process ran is taken then; a round
that took a whole batch is followed by the next at once. A store that cannot be asked is
logged once when it goes and once when it is back (`OutageLog`), and asked again each round.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from datetime import datetime

from mailservice.delivery.dispatcher import Dispatcher
from mailservice.delivery.transitions import taken_when_due
from mailservice.errors import StoreError, Unavailable
from mailservice.events.bus import EventBus, Finished
from mailservice.senders import SenderDirectory
from mailservice.stores.contract import EmailStatus, OutageLog, StatusStore, utcnow

logger = logging.getLogger(__name__)

SCHEDULE_POLL_SECONDS = 1.0  # how late after its send_at a request may be taken, at most
DUE_BATCH = 100  # requests taken in one round at most: each is three store round trips
STOP_WAIT = 5.0  # seconds stop() waits for a round under way


class DueScheduler:
    """Takes due scheduled requests from `store` for `dispatcher`; see the module's docstring."""

    def __init__(
        self,
        store: StatusStore,
        dispatcher: Dispatcher,
        senders: SenderDirectory,
        events: EventBus,
        *,
        poll_seconds: float = SCHEDULE_POLL_SECONDS,
        batch: int = DUE_BATCH,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.senders = senders
        self.events = events
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._clock = clock
        self._outage = OutageLog(
            logger,
            down="due scheduler: the status store cannot be asked: %s (asking again each round)",
            up="due scheduler: the status store answers again",
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Take what is due now, then keep at it on a thread of its own."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="due-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking requests (before the dispatcher drains): what is not yet due, or not
        taken, stays scheduled in the store for the next process."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            again = False
            try:
                listed, taken, limit = self.take_due()
                again = taken > 0 and listed >= limit  # a full batch: more may be due
                self._outage.succeeded()
            except StoreError as exc:
                self._outage.failed(exc)
            except Exception:  # the thread must outlive a bug in one round
                logger.exception("due scheduler: a round failed")
            if not again:
                self._stop.wait(self.poll_seconds)

    def take_due(self) -> tuple[int, int, int]:
        """One round: how many due requests the store listed, how many this process took,
        and the round's limit. StoreError when the store cannot be asked."""
        limit = min(self.batch, self.dispatcher.room())
        if limit <= 0:
            return 0, 0, 0
        now = self._clock()
        listed = self.store.due(now, limit)
        taken = 0
        for request_id in listed:
            if self._stop.is_set():
                break  # stopping: the rest stay scheduled for the next process
            try:
                taken += self._take(request_id, now)
            except Unavailable:  # full (QUEUE_MAX_BYTES) or draining: the rest wait
                limit = taken  # what fit was this round's limit
                break
        if taken:
            logger.info("due scheduler: took %d scheduled request(s) that fell due", taken)
        return len(listed), taken, limit

    def _take(self, request_id: str, now: datetime) -> bool:
        """Take one due request (or end it expired); whether it went to the dispatcher."""
        record = self.store.get(request_id)
        if record is None or record.status is not EmailStatus.SCHEDULED:
            return False  # taken, canceled or gone since it was listed
        payload = self.store.payload(request_id)
        if payload is None:  # no scheduled request lacks it: left alone, and said so
            logger.warning("due scheduler: request_id=%s has no content; left", request_id)
            return False
        taken = taken_when_due(record, now, self.dispatcher.owner)
        if not taken.status.final:
            self.dispatcher.check_room(sys.getsizeof(payload))  # Unavailable: left scheduled
        if not self.store.replace(taken, record):
            return False  # another process took it, or it changed meanwhile
        if taken.status.final:  # its expires_at came first
            logger.info("request_id=%s was past its expires_at when it was taken", request_id)
            self.events.emit(Finished(taken))
            return False
        sender = self.senders.by_email(taken.sender)
        if sender is None:
            self.dispatcher.resume(taken, payload, None)  # ends it failed, as recovery does
        else:
            self.dispatcher.submit(taken, payload, sender)
        return True
