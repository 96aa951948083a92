"""The pool that delivers accepted requests: attempts, retries with backoff, drain.

`WorkerPool.accept()` records a request as `queued` (the 202 promise), logs it and puts it in
the `DispatchQueue` lane of its SMTP server, from which `workers` threads take it. Each attempt
first records `sending` (nothing is handed to a server that the store does not know is being
sent), builds the message from the recorded content, sends it with `SmtpClient` and records the
outcome. A transient failure schedules the next attempt on a `RetryScheduler`, so no thread
sleeps through a backoff. A final status the store refuses is kept and retried by `StoreRetry`
until the store takes it; the job stays in memory (and counts against QUEUE_MAX) till then.

Content is held once: a job keeps the request as the JSON text the store was given (the memory
store keeps the same object), builds the message from it for each attempt and lets the built
bytes go after it. With a durable store a job waiting for a retry keeps no content at all and
reads it back from the store. `QUEUE_MAX` bounds the jobs held, `QUEUE_MAX_BYTES` their content.
The pool knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mailservice.api.schemas import SendRequest
from mailservice.delivery.dispatch_queue import DispatchQueue
from mailservice.delivery.message import build_message
from mailservice.delivery.retry_scheduler import RetryScheduler
from mailservice.delivery.smtp_client import SmtpClient, SmtpTarget
from mailservice.delivery.store_retry import StoreRetry
from mailservice.errors import (
    ConnectFailed,
    PermanentDelivery,
    PossiblyDelivered,
    StoreError,
    TransientDelivery,
    Unavailable,
)
from mailservice.events.request_log import RequestLog
from mailservice.senders import Sender
from mailservice.stores.contract import (
    EmailStatus,
    IdempotencyClaim,
    StatusRecord,
    StatusStore,
    utcnow,
)

logger = logging.getLogger(__name__)

# An attempt put off because the store could not record `sending` waits this long (doubling
# per failure in a row, up to the maximum) and spends no attempt.
STORE_WAIT_FIRST = 0.25
STORE_WAIT_MAX = 5.0


@dataclass(slots=True, eq=False)
class Job:
    """One accepted request in this process: its sender, latest record and, while it waits
    in memory, its content (`payload`: the validated request as JSON, `size` bytes)."""

    sender: Sender | None
    record: StatusRecord
    payload: str | None
    size: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    deferred: dict[str, str] = field(default_factory=dict)  # 4xx at RCPT, last attempt
    store_waits: int = 0  # attempts put off in a row because the store was down
    possibly_delivered: bool = False  # an attempt got no reply to the end of DATA

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def server(self) -> tuple[str, int]:
        assert self.sender is not None
        return (self.sender.smtp_host, self.sender.smtp_port)


class WorkerPool:
    """Delivers accepted requests with `workers` threads; holds at most `queue_max` of them
    and `queue_max_bytes` of their content."""

    def __init__(
        self,
        store: StatusStore,
        smtp: SmtpClient,
        request_log: RequestLog,
        *,
        workers: int = 8,
        queue_max: int = 10000,
        queue_max_bytes: int = 256 * 1024 * 1024,
        max_attempts: int = 5,
        retry_backoff: float = 2.0,
        server_threads: int = 0,
        server_pause: float = 30.0,
        owner: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.owner = owner or new_owner_id()
        self.smtp = smtp
        self.request_log = request_log
        self.workers = workers
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self._queue: DispatchQueue[tuple[str, int], Job] = DispatchQueue(
            server_threads or workers, server_pause, clock=clock
        )
        self._retries = RetryScheduler(self._submit, clock)
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

    # -- accepting -------------------------------------------------------------------------

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

    def room(self) -> int:
        """How many more requests this process may hold."""
        with self._cond:
            if not self._accepting or self._held >= self.queue_max_bytes:
                return 0
            return self.queue_max - len(self._jobs)

    def check_room(self, size: int = 0) -> None:
        """Raise Unavailable when this process takes no more requests (draining or full)."""
        with self._cond:
            self._check_room(size)

    def _check_room(self, size: int) -> None:  # the caller holds self._cond
        if not self._accepting:
            raise Unavailable("the service is shutting down")
        if len(self._jobs) >= self.queue_max:
            raise Unavailable(f"{len(self._jobs)} requests are waiting (QUEUE_MAX)")
        if self._held + size > self.queue_max_bytes:
            raise Unavailable(f"{self._held} bytes of messages are waiting (QUEUE_MAX_BYTES)")

    def accept(
        self,
        request: SendRequest,
        sender: Sender,
        idempotency: tuple[str, str] | None = None,
    ) -> StatusRecord | IdempotencyClaim:
        """Record the request as queued and schedule it; Unavailable or StoreError if not.

        With `idempotency` (scope, fingerprint) already used, nothing is created and the
        earlier claim is returned instead of a record.
        """
        request_id = str(uuid.uuid4())
        payload = request.model_dump_json(by_alias=True)
        size = sys.getsizeof(payload)
        with self._cond:
            self._check_room(size)
            now = utcnow()
            recipients = tuple(request.recipients)
            record = StatusRecord(
                request_id=request_id,
                status=EmailStatus.QUEUED,
                sender=sender.email,
                recipients=recipients,
                pending=recipients,
                created_at=now,
                updated_at=now,
                owner=self.owner,
            )
            job = Job(sender, record, payload, size)
            self._jobs[request_id] = job
            self._held += size
        claim = IdempotencyClaim(*idempotency, request_id) if idempotency else None
        try:
            earlier = self.store.create(record, payload, claim)
        except StoreError:
            self._forget(job)
            raise
        if earlier is not None:
            self._forget(job)
            return earlier
        self.request_log.write(request_id, sender.email, recipients, "queued", when=now)
        self._submit(job)
        return record

    def resume(self, record: StatusRecord, payload: str, sender: Sender | None) -> None:
        """Take up a recorded request another process left unfinished (already claimed)."""
        job = Job(sender, replace(record, owner=self.owner), payload, sys.getsizeof(payload))
        with self._cond:
            if record.request_id in self._jobs:
                return
            self._jobs[record.request_id] = job
            self._held += job.size
        if sender is None:
            self._finish(job, EmailStatus.FAILED, "its sender is no longer configured")
            return
        logger.info("resuming request_id=%s (status %s)", record.request_id, record.status)
        self._submit(job)

    def _forget(self, job: Job) -> None:
        """The job leaves this process: its content and its place are given back."""
        with self._cond:
            if self._jobs.pop(job.request_id, None) is not None:
                self._held -= job.size
            job.payload, job.size = None, 0
            self._cond.notify_all()

    def _drop_content(self, job: Job) -> None:
        """A durable store has the content: keep only the id while the job waits."""
        with self._cond:
            self._held -= job.size
            job.payload, job.size = None, 0

    def _submit(self, job: Job) -> None:
        if self.store.durable and job.payload is not None and self._queue.paused(job.server):
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
                answered = self._attempt(job)
            except Exception as exc:  # the one catch-all: a bug must not kill the thread
                logger.exception("unexpected error request_id=%s", job.request_id)
                self._finish(job, EmailStatus.FAILED, f"internal error: {type(exc).__name__}")
            finally:
                self._queue.done(server, answered)
                with self._cond:
                    self._sending -= 1
                    self._in_flight.discard(job.request_id)
                    self._cond.notify_all()

    def _attempt(self, job: Job) -> bool | None:
        """One delivery attempt; whether the server answered (None: no connection tried)."""
        assert job.sender is not None
        try:
            payload = job.payload or self.store.payload(job.request_id)
            record = replace(
                job.record,
                status=EmailStatus.SENDING,
                attempts=job.record.attempts + 1,
                updated_at=utcnow(),
            )
            owned = payload is not None and self.store.save(record)
        except StoreError:
            self._wait_for_store(job)
            return None
        if not owned:
            logger.warning("request_id=%s was taken over by another process", job.request_id)
            self._forget(job)
            return None
        job.record, job.store_waits, job.deferred = record, 0, {}
        request = SendRequest.model_validate_json(payload)
        msg = build_message(request, job.sender, job.request_id, record.created_at)
        try:
            outcome = self.smtp.send(
                SmtpTarget.for_sender(job.sender),
                job.sender.email,
                list(record.pending),
                msg.as_bytes(),
                bool(msg.policy.utf8),  # UTF-8 headers need SMTPUTF8 on the wire
            )
        except PermanentDelivery as exc:
            self._finish(job, EmailStatus.FAILED, exc.reason)
            return True
        except TransientDelivery as exc:
            job.possibly_delivered |= isinstance(exc, PossiblyDelivered)
            self._retry_or_fail(job, exc.reason)
            return not isinstance(exc, ConnectFailed)
        refused = {**record.refused, **outcome.refused}
        job.record = replace(record, refused=refused, pending=tuple(outcome.deferred))
        job.deferred = dict(outcome.deferred)
        if outcome.deferred:
            self._retry_or_fail(job, "; ".join(f"{a}: {r}" for a, r in outcome.deferred.items()))
        else:
            self._finish(job, EmailStatus.SENT, None)
        return True

    def _wait_for_store(self, job: Job) -> None:
        """The store could not record `sending`: try the attempt again later, uncounted."""
        job.store_waits += 1
        delay = min(STORE_WAIT_MAX, STORE_WAIT_FIRST * 2 ** (job.store_waits - 1))
        if not self._retries.schedule(delay * random.uniform(0.75, 1.25), job):
            self._abandon(job)

    def _retry_or_fail(self, job: Job, reason: str) -> None:
        record = job.record
        if record.attempts >= self.max_attempts:
            self._finish(job, EmailStatus.FAILED, f"{reason} (after {record.attempts} attempts)")
            return
        job.record = replace(record, status=EmailStatus.RETRYING, error=reason, updated_at=utcnow())
        try:
            if not self.store.save(job.record):
                logger.warning("request_id=%s was taken over by another process", job.request_id)
                self._forget(job)
                return
        except StoreError:
            pass  # the next attempt records `sending` before it sends, or waits for the store
        if self.store.durable:
            self._drop_content(job)
        delay = self.retry_backoff * 2 ** (record.attempts - 1) * random.uniform(0.75, 1.25)
        logger.info(
            "attempt %d failed request_id=%s: %s; retry in %.1fs",
            record.attempts,
            record.request_id,
            reason,
            delay,
        )
        if not self._retries.schedule(delay, job):  # draining: no more attempts
            self._abandon(job)

    def _finish(self, job: Job, status: EmailStatus, error: str | None) -> None:
        record = job.record
        delivered = [
            r for r in record.recipients if r not in record.pending + tuple(record.refused)
        ]
        if status is EmailStatus.FAILED and delivered:
            # Someone has the message: it was sent; the rest are listed as refused.
            refused = dict(record.refused)
            # Each with its own last "<code> <text>" where it has one (API.md section 4).
            refused.update(
                {r: job.deferred.get(r) or error or "not delivered" for r in record.pending}
            )
            record = replace(record, refused=refused, pending=())
            status, error = EmailStatus.SENT, None
        elif status is EmailStatus.SENT and not delivered:
            status = EmailStatus.FAILED
            error = "every recipient was refused: " + "; ".join(
                f"{a}: {r}" for a, r in record.refused.items()
            )
        if status is EmailStatus.FAILED and job.possibly_delivered:
            error = f"{error}; an earlier attempt was possibly delivered (same Message-ID)"
        job.record = replace(record, status=status, error=error, updated_at=utcnow())
        self.request_log.write(
            record.request_id,
            record.sender,
            record.recipients,
            str(status),
            reason=error if status is EmailStatus.FAILED else None,
        )
        job.done.set()  # a waiting route has its answer; the store may still be catching up
        try:
            self._write_final(job)
        except StoreError:
            self._unsaved.put(job)  # never dropped before the store has it

    def _write_final(self, job: Job) -> None:
        """Record a final status, then let the job go; StoreError when the store can't."""
        if not self.store.save(job.record):
            logger.warning(
                "request_id=%s was taken over by another process before its final status (%s) "
                "was recorded",
                job.request_id,
                job.record.status,
            )
        self._forget(job)

    def wait(self, request_id: str, timeout: float) -> StatusRecord | None:
        """The final record of a request, waiting up to `timeout`; None if not final by then."""
        with self._cond:
            job = self._jobs.get(request_id)
        if job is None:
            record = self.store.get(request_id)
            return record if record is not None and record.status.final else None
        return job.record if job.done.wait(timeout) else None

    # -- stopping --------------------------------------------------------------------------

    def drain(self, seconds: float) -> int:
        """Stop accepting, keep sending for up to `seconds`, stop; the number of jobs left."""
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
            logger.error(
                "the final status (%s) of request_id=%s could not be recorded: the store is "
                "unreachable; recovery may send it again, with the same Message-ID",
                job.record.status,
                job.request_id,
            )
            self._forget(job)
        with self._cond:
            # A job still being sent is finished by its own thread (closing its connection
            # below ends the send); abandoning it here too gave it two final log lines.
            left = [j for j in self._jobs.values() if j.request_id not in self._in_flight]
            in_flight = len(self._jobs) - len(left)
        for job in left:
            self._abandon(job)
        self.smtp.close_all()
        self.request_log.flush()  # every line of what ended is in the file when drain returns
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
        self._finish(job, EmailStatus.FAILED, "shutdown before send")


def server_threads(workers: int, servers: int) -> int:
    """The default cap on threads one SMTP server may hold: all of them when every sender
    uses one server, else half, so that a server that hangs leaves the others the rest."""
    return workers if servers <= 1 else max(1, math.ceil(workers / 2))


def new_owner_id() -> str:
    """A name for this process's leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
