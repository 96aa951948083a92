"""The pool that delivers accepted requests: attempts, retries with backoff, drain.

`WorkerPool.accept()` records a request as `queued` (the 202 promise), logs it and hands it to a
`ThreadPoolExecutor`. Each attempt marks the record `sending`, builds the message once, sends it
with `SmtpClient` and records the outcome. A transient failure schedules the next attempt on a
`RetryScheduler`, so no worker thread sleeps through a backoff. The pool knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from errors import PermanentDelivery, StoreError, TransientDelivery, Unavailable
from mailer import SmtpClient, SmtpTarget, build_message
from request_log import RequestLog
from retry_scheduler import RetryScheduler
from schemas import SendRequest
from senders import Sender
from status_store import EmailStatus, IdempotencyClaim, StatusRecord, StatusStore, utcnow

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    """One accepted request in this process: its validated body, sender and latest record."""

    request: SendRequest
    sender: Sender
    record: StatusRecord
    data: bytes | None = None
    smtputf8: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    deferred: dict[str, str] = field(default_factory=dict)  # 4xx at RCPT, last attempt

    @property
    def request_id(self) -> str:
        return self.record.request_id


class WorkerPool:
    """Delivers accepted requests with `workers` threads; holds at most `queue_max` of them."""

    def __init__(
        self,
        store: StatusStore,
        smtp: SmtpClient,
        request_log: RequestLog,
        *,
        workers: int = 8,
        queue_max: int = 10000,
        max_attempts: int = 5,
        retry_backoff: float = 2.0,
        owner: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.owner = owner or new_owner_id()
        self.smtp = smtp
        self.request_log = request_log
        self.workers = workers
        self.queue_max = queue_max
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="send")
        self._retries = RetryScheduler(self._submit, clock)
        self._jobs: dict[str, Job] = {}
        self._sending = 0
        self._in_flight: set[str] = set()
        self._cond = threading.Condition()
        self._accepting = True

    # -- accepting -------------------------------------------------------------------------

    def unfinished(self) -> int:
        with self._cond:
            return len(self._jobs)

    def room(self) -> int:
        """How many more requests this process may hold."""
        with self._cond:
            return self.queue_max - len(self._jobs) if self._accepting else 0

    def check_room(self) -> None:
        """Raise Unavailable when this process takes no more requests (draining or full)."""
        with self._cond:
            self._check_room()

    def _check_room(self) -> None:  # the caller holds self._cond
        if not self._accepting:
            raise Unavailable("the service is shutting down")
        if len(self._jobs) >= self.queue_max:
            raise Unavailable(f"{len(self._jobs)} requests are waiting (QUEUE_MAX)")

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
        with self._cond:
            self._check_room()
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
            job = Job(request, sender, record)
            self._jobs[request_id] = job
        claim = IdempotencyClaim(*idempotency, request_id) if idempotency else None
        try:
            earlier = self.store.create(record, request.model_dump_json(by_alias=True), claim)
        except StoreError:
            self._forget(request_id)
            raise
        if earlier is not None:
            self._forget(request_id)
            return earlier
        self.request_log.write(request_id, sender.email, recipients, "queued", when=now)
        self._submit(job)
        return record

    def resume(self, record: StatusRecord, payload: str, sender: Sender | None) -> None:
        """Take up a recorded request another process left unfinished (already claimed)."""
        if sender is None:
            reason = "its sender is no longer configured"
            self._record_final(
                replace(
                    record,
                    owner=self.owner,
                    status=EmailStatus.FAILED,
                    error=reason,
                    updated_at=utcnow(),
                )
            )
            return
        request = SendRequest.model_validate_json(payload)
        job = Job(request, sender, replace(record, owner=self.owner))
        with self._cond:
            if record.request_id in self._jobs:
                return
            self._jobs[record.request_id] = job
        logger.info("resuming request_id=%s (status %s)", record.request_id, record.status)
        self._submit(job)

    def _forget(self, request_id: str) -> None:
        with self._cond:
            self._jobs.pop(request_id, None)
            self._cond.notify_all()

    def _submit(self, job: Job) -> None:
        try:
            self._executor.submit(self._attempt, job)
        except RuntimeError:  # executor shut down: the job stays recorded as it is
            logger.warning("pool stopped before request_id=%s could be sent", job.request_id)

    # -- delivering ------------------------------------------------------------------------

    def _save(self, record: StatusRecord) -> bool:
        """Record a change; False when another process has taken the request over."""
        try:
            if self.store.save(record):
                return True
        except StoreError:
            logger.exception(
                "could not record status %s request_id=%s", record.status, record.request_id
            )
            return True  # keep going: this process still holds the job
        logger.warning("request_id=%s was taken over by another process", record.request_id)
        return False

    def _attempt(self, job: Job) -> None:
        with self._cond:
            self._sending += 1
            self._in_flight.add(job.request_id)
        try:
            self._deliver(job)
        except Exception as exc:  # the one catch-all: a bug must not kill the worker thread
            logger.exception("unexpected error request_id=%s", job.request_id)
            self._finish(job, EmailStatus.FAILED, f"internal error: {type(exc).__name__}")
        finally:
            with self._cond:
                self._sending -= 1
                self._in_flight.discard(job.request_id)
                self._cond.notify_all()

    def _deliver(self, job: Job) -> None:
        record = replace(
            job.record,
            status=EmailStatus.SENDING,
            attempts=job.record.attempts + 1,
            updated_at=utcnow(),
        )
        job.record = record
        job.deferred = {}
        if not self._save(record):
            self._forget(record.request_id)
            return
        if job.data is None:
            msg = build_message(job.request, job.sender, job.request_id, record.created_at)
            job.data = msg.as_bytes()
            job.smtputf8 = bool(msg.policy.utf8)  # UTF-8 headers need SMTPUTF8 on the wire
        try:
            outcome = self.smtp.send(
                SmtpTarget.for_sender(job.sender),
                job.sender.email,
                list(record.pending),
                job.data,
                job.smtputf8,
            )
        except PermanentDelivery as exc:
            self._finish(job, EmailStatus.FAILED, exc.reason)
            return
        except TransientDelivery as exc:
            self._retry_or_fail(job, exc.reason)
            return
        refused = {**record.refused, **outcome.refused}
        job.record = replace(record, refused=refused, pending=tuple(outcome.deferred))
        job.deferred = dict(outcome.deferred)
        if outcome.deferred:
            self._retry_or_fail(job, "; ".join(f"{a}: {r}" for a, r in outcome.deferred.items()))
        else:
            self._finish(job, EmailStatus.SENT, None)

    def _retry_or_fail(self, job: Job, reason: str) -> None:
        record = job.record
        if record.attempts >= self.max_attempts:
            self._finish(job, EmailStatus.FAILED, f"{reason} (after {record.attempts} attempts)")
            return
        job.record = replace(record, status=EmailStatus.RETRYING, error=reason, updated_at=utcnow())
        self._save(job.record)
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
        record = replace(record, status=status, error=error, updated_at=utcnow())
        job.record = record
        self._record_final(record)
        with self._cond:
            self._jobs.pop(record.request_id, None)
            self._cond.notify_all()
        job.done.set()

    def _record_final(self, record: StatusRecord) -> None:
        """Save a final record and write its log line."""
        self._save(record)
        self.request_log.write(
            record.request_id,
            record.sender,
            record.recipients,
            str(record.status),
            reason=record.error if record.status is EmailStatus.FAILED else None,
        )

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
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._cond:
            while self._sending and (remaining := deadline + 1 - time.monotonic()) > 0:
                self._cond.wait(remaining)
            # A job still being sent is finished by its own worker (closing its connection
            # below ends the send); abandoning it here too gave it two final log lines.
            left = [j for j in self._jobs.values() if j.request_id not in self._in_flight]
            in_flight = len(self._jobs) - len(left)
        for job in left:
            self._abandon(job)
        self.smtp.close_all()
        self.request_log.flush()  # every line of what ended is in the file when drain returns
        return len(left) + in_flight

    def _abandon(self, job: Job) -> None:
        """A job left at shutdown: recorded for recovery, or failed where nothing keeps it."""
        if self.store.durable:
            logger.info("left for recovery request_id=%s", job.request_id)
            return
        self._finish(job, EmailStatus.FAILED, "shutdown before send")


def new_owner_id() -> str:
    """A name for this process's leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
