"""The thread-pool dispatcher: `workers` threads in one process run the delivery attempts.

Requests come in recorded (`submit()` from accepting, `resume()` from recovery) and wait in the
`DispatchQueue` lane of their SMTP server, from which the threads take them. Each thread runs
one `DeliveryAttempt` and follows its answer: a retry goes to the `RetryScheduler` (no thread
sleeps through a backoff), a final status is saved and announced, and a final status the store
refuses is kept by `StoreRetry` until the store takes it, the request keeping its place here
till then.

Content is held once: a request's stored spec is the same text the store was given (the memory
store keeps that very object); each attempt builds its message and lets it go. With a durable
store a request waiting for a retry keeps only its id here and reads its spec back. `QUEUE_MAX`
bounds the requests held, `QUEUE_MAX_BYTES` their content. The pool knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mailservice.delivery.attempt import (
    AttemptState,
    DeliveryAttempt,
    Final,
    Hold,
    Next,
    Retry,
    WaitForStore,
    log_retry,
    log_unrecorded,
)
from mailservice.delivery.dispatch_queue import DispatchQueue
from mailservice.delivery.dispatcher import (
    Dispatcher,
    DispatcherStats,
    final_in_store,
    new_owner_id,
)
from mailservice.delivery.retry_scheduler import RetryScheduler
from mailservice.delivery.store_retry import StoreRetry
from mailservice.errors import StoreError, Unavailable
from mailservice.events.bus import Finished
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, StatusRecord

logger = logging.getLogger(__name__)

# A request held longer than this for its sender's account, on a durable store, keeps only its
# id here, as a retry does: a paused account's backlog is not held in memory twice.
HOLD_CONTENT_SECONDS = 5.0


@dataclass(slots=True, eq=False)
class Job:
    """One request in this process: its sender, its attempt state and the bytes it holds."""

    sender: Sender | None
    state: AttemptState
    size: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def request_id(self) -> str:
        return self.state.request_id

    @property
    def server(self) -> tuple[str, int]:
        assert self.sender is not None
        return (self.sender.smtp_host, self.sender.smtp_port)


class WorkerPool(Dispatcher):
    """Delivers recorded requests with `workers` threads; holds at most `queue_max` of them
    and `queue_max_bytes` of their content."""

    def __init__(
        self,
        attempt: DeliveryAttempt,
        *,
        workers: int = 8,
        queue_max: int = 10000,
        queue_max_bytes: int = 256 * 1024 * 1024,
        server_threads: int = 0,
        server_pause: float = 30.0,
        owner: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempt = attempt
        self.store = attempt.store
        self.smtp = attempt.smtp
        self.owner = owner or new_owner_id()
        self.workers = workers
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self._queue: DispatchQueue[tuple[str, int], Job] = DispatchQueue(
            server_threads or workers, server_pause, clock=clock
        )
        self._retries = RetryScheduler(self._enqueue, clock)
        self._unsaved: StoreRetry[Job] = StoreRetry(self._write_final)
        self._jobs: dict[str, Job] = {}
        self._held = 0  # bytes of content held by jobs
        self._sending = 0
        self._in_flight: set[str] = set()
        self._cond = threading.Condition()
        self._accepting = True
        self._threads = [
            threading.Thread(target=self._run, name=f"send-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- taking requests -------------------------------------------------------------------

    def unfinished(self) -> int:
        with self._cond:
            return len(self._jobs)

    def busy(self) -> int:
        """Threads in the middle of an attempt."""
        with self._cond:
            return self._sending

    def held_bytes(self) -> int:
        """Bytes of message content this process holds in memory."""
        with self._cond:
            return self._held

    def stats(self) -> DispatcherStats:
        with self._cond:  # one moment's values, not four
            return DispatcherStats(len(self._jobs), self._held, self._sending, self.workers)

    def room(self) -> int:
        with self._cond:
            if not self._accepting or self._held >= self.queue_max_bytes:
                return 0
            return self.queue_max - len(self._jobs)

    def check_open(self) -> None:
        if not self._accepting:  # a flag set once, under the lock, read without it
            raise Unavailable("the service is shutting down")

    def check_room(self, size: int = 0) -> None:
        with self._cond:
            if not self._accepting:
                raise Unavailable("the service is shutting down")
            if len(self._jobs) >= self.queue_max:
                raise Unavailable(f"{len(self._jobs)} requests are waiting (QUEUE_MAX)")
            if self._held + size > self.queue_max_bytes:
                raise Unavailable(f"{self._held} bytes of messages are waiting (QUEUE_MAX_BYTES)")

    def submit(self, record: StatusRecord, payload: str, sender: Sender) -> None:
        if self._hold(Job(sender, AttemptState(record, payload), sys.getsizeof(payload))):
            self._enqueue(self._jobs[record.request_id])

    def resume(self, record: StatusRecord, payload: str, sender: Sender | None) -> None:
        state = AttemptState.resumed(replace(record, owner=self.owner), payload)
        job = Job(sender, state, sys.getsizeof(payload))
        if not self._hold(job):
            return
        if sender is None:
            self._end(job, self.attempt.failed(state, "its sender is no longer configured").record)
            return
        logger.info("resuming request_id=%s (status %s)", record.request_id, record.status)
        self._enqueue(job)

    def _hold(self, job: Job) -> bool:
        with self._cond:
            held = self._jobs.get(job.request_id)
            if held is not None and not held.done.is_set():
                return False  # it is being sent here already
            if held is not None:
                # It ended and is still being forgotten (its Finished event runs first): a
                # manual retry of it, accepted meanwhile, takes its place.
                self._held -= held.size
                held.size = 0
            self._jobs[job.request_id] = job
            self._held += job.size
            return True

    def _forget(self, job: Job) -> None:
        """The job leaves this process: its content and its place are given back."""
        with self._cond:
            if self._jobs.get(job.request_id) is job:  # not a retry that took its place
                del self._jobs[job.request_id]
                self._held -= job.size
            job.state.payload, job.size = None, 0
            self._cond.notify_all()

    def _drop_content(self, job: Job) -> None:
        """A durable store has the content: keep only the id while the job waits."""
        with self._cond:
            self._held -= job.size
            job.state.payload, job.size = None, 0

    def on_event(self, event: object) -> None:
        """A request canceled in this process while its job waits out a retry's backoff or a
        hold for its sender's account (up to a day): the cancel is in the store already, so
        the job is let go at once, with its place in QUEUE_MAX. A job in an attempt or in a
        lane finds the request ended when it runs, as before."""
        if not isinstance(event, Finished) or event.record.status is not EmailStatus.CANCELED:
            return
        with self._cond:
            job = self._jobs.get(event.record.request_id)
        if job is None:
            return
        for waiting in self._retries.remove(lambda candidate: candidate is job):
            waiting.state.record = event.record
            waiting.done.set()  # a waiting route has its answer
            self._forget(waiting)

    def _enqueue(self, job: Job) -> None:
        if self.store.durable and job.state.payload is not None and self._queue.paused(job.server):
            self._drop_content(job)  # it may wait long for a paused server: the store has it
        self._queue.put(job.server, job)

    # -- delivering ------------------------------------------------------------------------

    def _run(self) -> None:
        while (taken := self._queue.get()) is not None:
            server, job = taken
            with self._cond:
                self._sending += 1
                self._in_flight.add(job.request_id)
            answered: bool | None = None
            try:
                assert job.sender is not None
                outcome = self.attempt.run(job.state, job.sender)
                answered = outcome.answered
                self._follow(job, outcome.next)
            except Exception as exc:  # the one catch-all: a bug must not kill the thread
                logger.exception("unexpected error request_id=%s", job.request_id)
                reason = f"internal error: {type(exc).__name__}"
                self._end(job, self.attempt.failed(job.state, reason).record)
            finally:
                self._queue.done(server, answered)
                with self._cond:
                    self._sending -= 1
                    self._in_flight.discard(job.request_id)
                    self._cond.notify_all()

    def _follow(self, job: Job, step: Next) -> None:
        if isinstance(step, Final):
            self._end(job, step.record)
        elif isinstance(step, Retry):
            job.state.record = step.record
            if self.attempt.save_retry(step.record) is False:
                logger.warning("request_id=%s was taken over by another process", job.request_id)
                self._forget(job)
                return
            if self.store.durable:
                self._drop_content(job)
            log_retry(step)
            self._later(job, step.delay)
        elif isinstance(step, WaitForStore):
            self._later(job, step.delay)
        elif isinstance(step, Hold):  # for its sender's account: no thread held meanwhile
            if self.store.durable and step.delay > HOLD_CONTENT_SECONDS:
                self._drop_content(job)
            self._later(job, step.delay)
        elif step.ended is not None:  # canceled or expired elsewhere: its end is announced
            logger.info("request_id=%s: %s", job.request_id, step.reason)
            job.state.record = step.ended
            job.done.set()  # a waiting route has its answer
            self._forget(job)
        else:
            logger.warning("request_id=%s: %s", job.request_id, step.reason)
            self._forget(job)

    def _later(self, job: Job, delay: float) -> None:
        if not self._retries.schedule(delay, job):  # draining: no more attempts
            self._abandon(job)

    def _end(self, job: Job, record: StatusRecord) -> None:
        job.state.record = record
        job.done.set()  # a waiting route has its answer; the store may still be catching up
        try:
            self._write_final(job)
        except StoreError:
            self._unsaved.put(job)  # never dropped before the store has it

    def _write_final(self, job: Job) -> None:
        self.attempt.save_final(job.state.record)
        self._forget(job)

    def wait(self, request_id: str, timeout: float) -> StatusRecord | None:
        with self._cond:
            job = self._jobs.get(request_id)
        if job is None:  # another process has it, or this one is done with it
            return final_in_store(self.store, request_id, timeout)
        return job.state.record if job.done.wait(timeout) else None

    # -- stopping --------------------------------------------------------------------------

    def drain(self, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        with self._cond:
            self._accepting = False
            while self._jobs and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
        self._retries.stop()
        self._queue.stop()
        with self._cond:
            while self._sending and (remaining := deadline + 1 - time.monotonic()) > 0:
                self._cond.wait(remaining)
        self._unsaved.wait_empty(max(0.0, deadline + 1 - time.monotonic()))
        for job in self._unsaved.stop():
            log_unrecorded(job.state.record)
            self._forget(job)
        with self._cond:
            # A job still being sent is finished by its own thread (closing its connection
            # below ends the send); abandoning it here too gave it two final log lines.
            left = [j for j in self._jobs.values() if j.request_id not in self._in_flight]
            in_flight = len(self._jobs) - len(left)
        for job in left:
            self._abandon(job)
        self.smtp.close_all()
        self.attempt.events.flush()  # every line of what ended is in the file when drain returns
        return len(left) + in_flight

    def join(self, timeout: float) -> None:
        """Wait for the sending threads to end (after drain)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _abandon(self, job: Job) -> None:
        """A job left at shutdown: recorded for recovery, or failed where nothing keeps it."""
        if self.store.durable:
            logger.info("left for recovery request_id=%s", job.request_id)
            return
        self._end(job, self.attempt.failed(job.state, "shutdown before send").record)


def server_threads(workers: int, servers: int) -> int:
    """The default cap on threads one SMTP server may hold: all of them when every sender
    uses one server, else half, so that a server that hangs leaves the others the rest."""
    return workers if servers <= 1 else max(1, math.ceil(workers / 2))
